"""BBC Sound Effects (the BBC's archive of ~33k effects, released through BBC RemArc).

Source: https://sound-effects.bbcrewind.co.uk (the `BBCSoundEffects.csv` listing and the WAV files,
kept in one folder beside it or in `wav/`). Licence: the RemArc licence allows personal, educational
and research use only; no commercial use, no redistribution of the audio. The listing's category is
the label and its description the caption; listed files that are not there are `not_found` rows.
"""

from __future__ import annotations

from pathlib import Path

from sonify.sources.corpora.bbc_sfx import read_listing
from sonify.sources.recipes import missing, require, row

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
