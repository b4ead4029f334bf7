"""Turn a VLM's free-text reply into up to three sounding concepts (object, sound, query text).

VLMs answer the concepts prompt in many shapes: `1. Dog - The sound of barking`,
`1) Water splashing: ...`, bullets, **bold** markdown, a Python-list string, one line with
`1. a 2. b`, preambles and closing sentences. Anything with no list at all is a parse error,
never an exception.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

ITEM_LINE = re.compile(r"^\s*(?:\(?\d{1,2}[.):]|[-*•+–]|\[\d{1,2}\])\s+(?P<body>.+?)\s*$")
INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")
SEPARATORS = re.compile(r"\s+[-–—]\s+|\s*:\s+|\s*:$|\s+[-–—]$")
MARKDOWN = re.compile(r"\*\*|__|`|(?<!\w)\*(?!\s)|(?<=\S)\*(?!\w)")
SOUND_PREFIX = re.compile(r"^(?:(?:the|a|an)\s+)?(?:sound|noise)s?\s+of\s+", re.I)


@dataclass(frozen=True)
class Concept:
    object: str
    sound: str
    text: str          # the CLAP query


@dataclass
class ParseResult:
    concepts: list[Concept] = field(default_factory=list)
    items_found: int = 0     # list items seen before keeping the first `max_concepts`
    error: str | None = None


def _clean(s: str) -> str:
    s = MARKDOWN.sub("", s).strip()
    s = s.strip(" \t\"'“”‘’")
    return re.sub(r"\s+", " ", s).rstrip(" .;,")


def _python_list(text: str) -> list[str] | None:
    t = text.strip()
    m = re.search(r"\[.*\]", t, re.S)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(0))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, tuple, list)) for v in value):
        out = []
        for v in value:
            out.append(" - ".join(map(str, v)) if isinstance(v, (tuple, list)) else v)
        return out
    return None


def _split_inline(item: str) -> list[str]:
    """'dog - barks 2. car - honks' (numbered items run together on one line) -> two items."""
    parts = INLINE_NUMBER.split(" " + item)
    return [p for p in parts if p.strip()] if len(parts) > 1 else [item]


def _items(text: str) -> list[str]:
    lines = text.splitlines()
    items = [m.group("body") for m in map(ITEM_LINE.match, lines) if m]
    if items:
        return [piece for item in items for piece in _split_inline(item)]
    listed = _python_list(text)
    if listed:
        return listed
    for line in lines:  # "1. dog - barks 2. car - honks" on one unnumbered-looking line
        parts = INLINE_NUMBER.split(line)
        if len(parts) >= 3:
            return [p for p in parts[1:] if p.strip()]
    return []


def split_item(item: str) -> tuple[str, str]:
    """'Dog - The sound of barking' -> ('Dog', 'The sound of barking'); no separator -> (item, item).

    A list marker still on the item ('1. Dog - ...', as imported lists sometimes hold) is dropped.
    """
    marked = ITEM_LINE.match(item)
    body = _clean(marked.group("body") if marked else item)
    m = SEPARATORS.search(body)
    if m and m.start() > 0:
        obj, sound = _clean(body[: m.start()]), _clean(body[m.end():])
        if obj and sound:
            return obj, sound
        if obj:
            return obj, obj
    return body, body


def make_text(obj: str, sound: str, template: str) -> str:
    return re.sub(r"\s+", " ", template.format(object=obj, sound=sound)).strip()


def parse_concepts(reply: str | None, max_concepts: int = 3, template: str = "{sound}") -> ParseResult:
    if not reply or not reply.strip():
        return ParseResult(error="parse_error: empty reply")
    seen, concepts = set(), []
    for raw in _items(reply):
        obj, sound = split_item(raw)
        if not obj or len(obj) > 200:
            continue
        key = (obj.lower(), sound.lower())
        if key in seen:
            continue
        seen.add(key)
        concepts.append(Concept(obj, sound, make_text(obj, sound, template)))
    if not concepts:
        return ParseResult(error="parse_error: no list of concepts in the reply")
    return ParseResult(concepts=concepts[:max_concepts], items_found=len(concepts))
