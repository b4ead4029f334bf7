"""BBC Sound Effects' listing `BBCSoundEffects.csv`: `location,description,secs,category,CDNumber,CDName,tracknum`.

`location` is the WAV's file name (e.g. `07070001.wav`); descriptions hold commas inside quotes.
"""

from __future__ import annotations

import csv
from pathlib import Path


def read_listing(path: str | Path) -> list[dict]:
    """Rows: location, description, secs (float or None), category."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = []
        for r in csv.DictReader(f):
            secs = (r.get("secs") or "").strip()
            rows.append({"location": r["location"].strip(), "description": (r.get("description") or "").strip(),
                         "secs": float(secs) if secs else None, "category": (r.get("category") or "").strip()})
        return rows
