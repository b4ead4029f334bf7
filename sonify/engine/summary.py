"""The closing summary of a run: rows in, ok, errors by reason, time, per stage and table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sonify.engine.executor import StageRun


def format_summary(runs: list[StageRun]) -> str:
    lines = [f"{'stage':<10} {'table':<14} {'rows in':>8} {'rows':>8} {'ok':>8} {'errors':>7}  {'parts (new/skip/fail)':<22} {'time':>7}  errors by reason"]
    for r in runs:
        for i, (table, c) in enumerate(r.tables.items()):
            n_err = sum(c["errors"].values())
            reasons = ", ".join(f"{k}={v}" for k, v in c["errors"].items()) or "-"
            if "kept" in c:
                dropped = ", ".join(f"{k}={v}" for k, v in c["dropped"].items()) or "none"
                reasons += f"; kept={c['kept']}, dropped: {dropped}"
            parts = f"{r.computed}/{r.skipped}/{len(r.failed)}" if i == 0 else ""
            rows_in = str(r.rows_in) if i == 0 else ""
            secs = f"{r.seconds:.1f}s" if i == 0 else ""
            lines.append(f"{r.stage if i == 0 else '':<10} {table:<14} {rows_in:>8} {c['rows']:>8} {c['ok']:>8} {n_err:>7}  {parts:<22} {secs:>7}  {reasons}")
        for f in r.failed:
            lines.append(f"  FAILED partition {f} (re-run to retry)")
        if r.duplicates_dropped:
            lines.append(f"  note: {r.duplicates_dropped} duplicate input ids dropped in stage {r.stage}")
        if r.stale_removed:
            lines.append(f"  note: {r.stale_removed} stale partition files removed in stage {r.stage} (inputs or config changed)")
    return "\n".join(lines)


def save_summary(runs: list[StageRun], run_dir: str | Path) -> Path:
    path = Path(run_dir) / "summary.json"
    path.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return path
