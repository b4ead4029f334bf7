"""The silent-image rule: captions naming a thing that cannot sound (whole words, plurals too)."""

from __future__ import annotations

import re

from sonify.engine.config import resolve_text


def keyword_pattern(words: list[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})(?:s|es)?\b", re.IGNORECASE)



def read_keywords(setting: str) -> list[str]:
    text = resolve_text(setting)
    return [w.strip().lower() for w in text.splitlines() if w.strip() and not w.strip().startswith("#")]
