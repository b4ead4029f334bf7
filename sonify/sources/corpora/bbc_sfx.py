"""BBC Sound Effects (the BBC's archive of ~33k effects, released through BBC RemArc).

Source: https://sound-effects.bbcrewind.co.uk (the `BBCSoundEffects.csv` listing and the WAV files,
kept in one folder beside it or in `wav/`). Licence: the RemArc licence allows personal, educational
and research use only; no commercial use, no redistribution of the audio. The listing's category is
the label and its description the caption; listed files that are not there are `not_found` rows.

Layout: BBC Sound Effects' listing `BBCSoundEffects.csv`: `location,description,secs,category,CDNumber,CDName,tracknum`.

`location` is the WAV's file name (e.g. `07070001.wav`); descriptions hold commas inside quotes.

The layout parsing decodes no media; `prepare` is the recipe (`sonify.sources.recipes.run_recipe`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from sonify.sources.recipes import missing, require, row


def read_listing(path: str | Path) -> list[dict]:
    """Rows: location, description, secs (float or None), category."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = []
        for r in csv.DictReader(f):
            secs = (r.get("secs") or "").strip()
            rows.append({"location": r["location"].strip(), "description": (r.get("description") or "").strip(),
                         "secs": float(secs) if secs else None, "category": (r.get("category") or "").strip()})
        return rows


LICENSE = "BBC RemArc licence (personal, educational and research use)"
LISTING = "BBCSoundEffects.csv"


def prepare(root: Path) -> list[dict]:
    rows = []
    for r in read_listing(require(root / LISTING, "the BBC Sound Effects listing")):
        labels = [r["category"]] if r["category"] else []
        rel = next((c for c in (r["location"], f"wav/{r['location']}") if (root / c).is_file()), None)
        item = Path(r["location"]).stem
        if rel is None:
            rows.append(missing(r["location"], item, "listed effect has no WAV file", labels=labels,
                                license=LICENSE, caption=r["description"]))
        else:
            rows.append(row(rel, item, labels, None, LICENSE, r["description"]))
    return rows
