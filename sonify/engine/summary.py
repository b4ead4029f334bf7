"""The closing summary of a run: where every row of every table went, per stage and table.

Each output table's rows are accounted for: `rows = passed + dropped + errors`, where `passed`
rows go on to the next stage, `dropped` rows are decisions (the filter's, with their reasons) and
`errors` are error rows by reason. A stage's first output holds one row per input row, so its line also
shows the rows that came in; `missing` is input without an output row yet (a failed partition: re-run).
Its other outputs are derived (rows in: `derived`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sonify.engine.executor import StageRun

HEADER = (f"{'stage':<10} {'table':<18} {'rows in':>8} {'rows':>7} {'passed':>7} {'dropped':>7} {'errors':>7} {'missing':>7}"
          f"  {'parts (new/skip/fail)':<21} {'time':>6}  why (drops and errors by reason)")


def table_outcome(counts: dict) -> dict:
    """rows = passed + dropped + errors, from one table's counts (`executor.table_counts`)."""
    errors = sum(counts["errors"].values())
    dropped = sum(counts.get("dropped", {}).values())
    return {"rows": counts["rows"], "passed": counts["rows"] - errors - dropped, "dropped": dropped, "errors": errors}


def stage_lines(r: StageRun) -> list[str]:
    """The stage's lines; its first table is the keyed one (`Stage.outputs[0]`: one row per input row)."""
    keyed = next(iter(r.tables), None)
    missing = max(r.rows_in - (r.tables[keyed]["rows"] if keyed else 0), 0)
    lines = []
    for i, (table, c) in enumerate(r.tables.items()):
        o = table_outcome(c)
        rows_in = str(r.rows_in) if table == keyed else "derived"
        why = [f"dropped: {', '.join(f'{k}={v}' for k, v in c['dropped'].items())}"] if c.get("dropped") else []
        if c["errors"]:
            why.append(f"errors: {', '.join(f'{k}={v}' for k, v in c['errors'].items())}")
        first = i == 0
        parts = f"{r.computed}/{r.skipped}/{len(r.failed)}" if first else ""
        lines.append(f"{r.stage if first else '':<10} {table:<18} {rows_in:>8} {o['rows']:>7} {o['passed']:>7} {o['dropped']:>7} "
                     f"{o['errors']:>7} {(str(missing) if first else ''):>7}  {parts:<21} {(f'{r.seconds:.1f}s' if first else ''):>6}"
                     f"  {'; '.join(why) or '-'}")
    for f in r.failed:
        lines.append(f"  FAILED partition {f} (re-run to retry)")
    if r.duplicates_dropped:
        lines.append(f"  note: {r.duplicates_dropped} duplicate input ids dropped in stage {r.stage}")
    if r.stale_removed:
        lines.append(f"  note: {r.stale_removed} stale partition files removed in stage {r.stage} (inputs or config changed)")
    return lines


def format_summary(runs: list[StageRun]) -> str:
    lines = [HEADER]
    for r in runs:
        lines += stage_lines(r)
    return "\n".join(lines)


def save_summary(runs: list[StageRun], run_dir: str | Path) -> Path:
    path = Path(run_dir) / "summary.json"
    path.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return path
