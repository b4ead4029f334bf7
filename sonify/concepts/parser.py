"""Turn a VLM's free-text reply into up to three sounding concepts (object, sound, query text).

VLMs answer the concepts prompt in many shapes, and each family is read here:
- numbered, lettered, parenthesised or bulleted lines (`1. Dog - barking`, `1.Clock:ticking`,
  `a) Dog: barking`, `(2) Car - horn`, `- Dog: barking`, **bold** markdown), also run together
  on one line (`1. a 2. b`);
- a Python-list string, including the paper's Figure 2 LLaVA reply whose single-quoted items hold
  apostrophes (`['Bull - The sound of a bull's charge', ...]`), which `ast.literal_eval` rejects;
- JSON, bare or in a ``` code fence: arrays of strings, of objects (`{"object": .., "sound": ..}`,
  `{"name": ..}`), of pairs, an object holding such an array, or an object of `name: sound`;
- key-value blocks (`Object: Dog` / `Sound: barking`) and `Name: sound` or `Name - sound` lines,
  including a one-line reply with no list marker (`Woman: humming`);
- one line of short comma-separated items, with the sound in parentheses or not
  (`Dog (barking), cat (meowing)`); a sentence ('The image shows a dog, a cat') is not a list;
- preambles, closing sentences and repeated items (kept once).
Anything with no list at all is a parse error, never an exception.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

MARKER = r"(?:\(?\d{1,2}[.):](?!\d)|\(\d{1,2}\)|\(?[A-Za-z][.)](?=\s)|\([A-Za-z]\)|[-*•+–]|\[\d{1,2}\])"
ITEM_LINE = re.compile(rf"^\s*(?:{MARKER}\s+|\(?\d{{1,2}}[.)](?=[^\d\s]))(?P<body>.+?)\s*$")
INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")
SEPARATORS = re.compile(r"\s+[-–—]\s+|\s*:\s*(?=\S)|\s*:$|\s+[-–—]$")
MARKDOWN = re.compile(r"\*\*|__|`|(?<!\w)\*(?!\s)|(?<=\S)\*(?!\w)")
FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.S)
KEY_VALUE = re.compile(r"^\s*(?P<key>[^\s:][^:\n]{0,60}?)(?:\s*:|\s+[-–—])\s*(?P<value>\S.*?)\s*$")
FIELD = re.compile(rf"^\s*(?:{MARKER}\s*)?(?P<field>object|source|item|name|thing|entity|sound(?:\s+\w+)?|noise|audio)"
                   r"\s*\d*\s*[:=]\s*(?P<value>.+?)\s*$", re.I)
OBJECT_KEYS = ("object", "object_name", "name", "item", "source", "entity", "thing", "label", "noun", "concept")
SOUND_KEYS = ("sound", "sounds", "sound_description", "description", "noise", "audio", "sound_made", "makes")
OBJECT_FIELDS = {"object", "source", "item", "name", "thing", "entity"}
# `Key: value` lines whose key is a remark, not a sounding object ('Note: no sound here')
NOT_OBJECTS = re.compile(r"^(?:note|notes|sorry|i|i'm|i’m|answer|response|output|summary|caption|description|image|"
                         r"picture|photo|here|sure|explanation|reason|unfortunately|however|overall|warning|disclaimer)\b",
                         re.I)


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


# ---- structured replies: JSON and Python lists -------------------------------------------------

def _from_value(value) -> list[str] | None:
    """A decoded JSON / Python value as item lines ('Object - sound' or one phrase), or None."""
    if isinstance(value, str):
        return [value] if value.strip() else None
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) and v:
                out.append(" - ".join(v))
            elif isinstance(v, dict):
                out.extend(_from_object(v))
        return out or None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, (list, tuple)) and v]
        if lists and not _from_object(value):
            return _from_value(lists[0])       # {"objects": [...]}, {"sounding_concepts": [...]}
        single = _from_object(value)
        if single:
            return single
        pairs = [f"{k} - {v}" for k, v in value.items() if isinstance(v, str) and v.strip()]
        return pairs or None                   # {"Dog": "barking", "Car": "horn"}
    return None


def _from_object(d: dict) -> list[str]:
    """{"object": "Dog", "sound": "barking"} -> ['Dog - barking']; {"name": "monitor", "bbox": ..} -> ['monitor']."""
    low = {str(k).lower().replace(" ", "_"): v for k, v in d.items()}
    obj = next((low[k] for k in OBJECT_KEYS if isinstance(low.get(k), str) and low[k].strip()), None)
    sound = next((low[k] for k in SOUND_KEYS if isinstance(low.get(k), str) and low[k].strip()), None)
    if obj is None and sound is None:
        return []
    return [f"{obj} - {sound}" if obj and sound else (obj or sound)]


def _json_items(text: str) -> list[str] | None:
    """JSON anywhere in the reply (a code fence first); truncated JSON falls back to its complete
    `"key": "value"` pairs (a reply cut by max_new_tokens)."""
    candidates = [m.group(1) for m in FENCE.finditer(text)] + [text]
    for cand in candidates:
        start = min((i for i in (cand.find("["), cand.find("{")) if i >= 0), default=-1)
        if start < 0:
            continue
        body = cand[start:]
        try:
            value, _ = json.JSONDecoder().raw_decode(body)
        except (ValueError, RecursionError):
            value = None
        if value is not None:
            items = _from_value(value)
            if items:
                return items
        if body.startswith("{") or body.lstrip("[ \n").startswith("{"):
            items = _pairs(body)
            if items:
                return items
    return None


def _pairs(body: str) -> list[str] | None:
    """Objects from `"key": "value"` pairs in order, a new object at each repeated object key."""
    pairs = re.findall(r'"([^"\\]{1,40})"\s*:\s*"([^"\\]*)"', body)
    out, cur = [], {}
    for k, v in pairs:
        key = k.lower().replace(" ", "_")
        if key in cur or (key in OBJECT_KEYS and any(c in OBJECT_KEYS for c in cur)):
            out.extend(_from_object(cur))
            cur = {}
        cur[key] = v
    out.extend(_from_object(cur))
    return out or None


def _python_list(text: str) -> list[str] | None:
    m = re.search(r"\[.*\]", text, re.S)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(0))
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return _quoted_list(m.group(0))
    return _from_value(value) if isinstance(value, (list, tuple)) else None


def _quoted_list(span: str) -> list[str] | None:
    """A list of quoted strings that Python cannot read: "['bull's charge', 'a dog's bark']".
    Items are split at quote-comma-quote, so apostrophes inside words stay in their item."""
    inner = span.strip()[1:-1].strip()
    if len(inner) < 2 or inner[0] not in "'\"" or inner[-1] not in "'\"":
        return None
    parts = re.split(r"""['"]\s*,\s*['"]""", inner[1:-1])
    items = [p.strip() for p in parts if p.strip()]
    return items or None


# ---- line-shaped replies -----------------------------------------------------------------------

def _split_inline(item: str) -> list[str]:
    """'dog - barks 2. car - honks' (numbered items run together on one line) -> two items."""
    parts = INLINE_NUMBER.split(" " + item)
    return [p for p in parts if p.strip()] if len(parts) > 1 else [item]


def _field_blocks(lines: list[str]) -> list[str] | None:
    """Key-value blocks: 'Object: Dog' then 'Sound: barking' (any order, blank lines between)."""
    fields = [m for m in (FIELD.match(MARKDOWN.sub("", line)) for line in lines) if m]
    if len(fields) < 2 or not any(m.group("field").lower() in OBJECT_FIELDS for m in fields):
        return None
    out, obj, sound = [], None, None
    for m in fields:
        is_obj = m.group("field").lower() in OBJECT_FIELDS
        if is_obj and obj is not None or not is_obj and sound is not None:
            out.append(f"{obj} - {sound}" if obj and sound else (obj or sound))
            obj = sound = None
        if is_obj:
            obj = m.group("value")
        else:
            sound = m.group("value")
    if obj or sound:
        out.append(f"{obj} - {sound}" if obj and sound else (obj or sound))
    return out


def _key_value_lines(lines: list[str]) -> list[str] | None:
    """'Dog: barking' or 'Dog - barking' lines with no list marker (one is enough: 'Woman: humming')."""
    out = []
    for line in lines:
        m = KEY_VALUE.match(MARKDOWN.sub("", line))
        if m and len(m.group("key").split()) <= 4 and not re.search(r"[.!?]$", m.group("key")) \
                and not NOT_OBJECTS.match(m.group("key").strip()) and len(m.group("value").split()) <= 16:
            out.append(line.strip())
    return out or None


def _comma_line(lines: list[str]) -> list[str] | None:
    """A one-line reply of short comma-separated items: 'Dog (barking), car horn, birds chirping'."""
    body = [line.strip() for line in lines if line.strip()]
    if len(body) != 1 or NOT_OBJECTS.match(body[0]) or re.match(r"(?i)^(?:the|this|there|it|in)\b", body[0]):
        return None
    parts = [p.strip() for p in re.split(r",\s*(?:and\s+)?|\s+and\s+(?=[^,]*$)", body[0].rstrip(". ")) if p.strip()]
    if len(parts) < 2 or any(len(p.split()) > 6 for p in parts):
        return None
    return parts


def _items(text: str) -> list[str]:
    lines = text.splitlines()
    stripped = text.strip()
    if stripped.startswith(("[", "{", "```")) or "```" in text:
        structured = _json_items(text) or _python_list(text)
        if structured:
            return structured
    items = [m.group("body") for m in map(ITEM_LINE.match, lines) if m]
    fields = _field_blocks(lines)
    if fields:
        return fields
    if items:
        return [piece for item in items for piece in _split_inline(item)]
    structured = _json_items(text) or _python_list(text)
    if structured:
        return structured
    for line in lines:  # "1. dog - barks 2. car - honks" on one unnumbered-looking line
        parts = INLINE_NUMBER.split(line)
        if len(parts) >= 3:
            return [p for p in parts[1:] if p.strip()]
    return _key_value_lines(lines) or _comma_line(lines) or []


def item_line(item: str) -> str:
    """The item as written, without its list marker, markdown or enclosing quotes."""
    marked = ITEM_LINE.match(item)
    return _clean(marked.group("body") if marked else item)


def split_item(item: str) -> tuple[str, str]:
    """'Dog - The sound of barking' -> ('Dog', 'The sound of barking'); no separator -> (item, item).

    A list marker still on the item ('1. Dog - ...', as imported lists sometimes hold) is dropped.
    """
    body = item_line(item)
    paren = re.match(r"^([^()]+?)\s*\(([^()]+)\)$", body)      # 'Dog (barking)'
    if paren:
        return _clean(paren.group(1)), _clean(paren.group(2))
    m = SEPARATORS.search(body)
    if m and m.start() > 0:
        obj, sound = _clean(body[: m.start()]), _clean(body[m.end():])
        if obj and sound:
            return obj, sound
        if obj:
            return obj, obj
    return body, body


def make_text(obj: str, sound: str, template: str, line: str | None = None) -> str:
    """The CLAP query: `template` with {object}, {sound} and {line} (the item as the VLM wrote it,
    without its list marker; rebuilt as 'object - sound' when only the pair is known)."""
    if line is None:
        line = obj if obj == sound else f"{obj} - {sound}"
    return re.sub(r"\s+", " ", template.format(object=obj, sound=sound, line=line)).strip()


def parse_concepts(reply: str | None, max_concepts: int = 3, template: str = "{line}") -> ParseResult:
    if not reply or not reply.strip():
        return ParseResult(error="parse_error: empty reply")
    seen, concepts = set(), []
    for raw in _items(reply):
        if not isinstance(raw, str):
            continue
        obj, sound = split_item(raw)
        if not obj or len(obj) > 200:
            continue
        key = (obj.lower(), sound.lower())
        if key in seen:
            continue
        seen.add(key)
        concepts.append(Concept(obj, sound, make_text(obj, sound, template, item_line(raw))))
    if not concepts:
        return ParseResult(error="parse_error: no list of concepts in the reply")
    return ParseResult(concepts=concepts[:max_concepts], items_found=len(concepts))
