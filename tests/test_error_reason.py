"""Error reasons: one Python function (`engine.errors.error_reason`) and its SQL twin agree, and the saved
queries under manifests/ take reasons apart with that same expression."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from sonify.engine.errors import error_reason, error_reason_sql, error_text

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def generated_errors(n: int = 2000) -> list[str | None]:
    """Error strings as rows hold them: `error_text` of random reasons and details (colons, spaces, newlines,
    non-ASCII, empty), plus hand-written oddities a reader may meet."""
    rng = np.random.default_rng(23)
    pieces = ["a", "not_found", " ", ":", "::", "x:y", "é", "\n", "ü: v", "http://h:80/p", "", "0", "\t"]
    out: list[str | None] = [None, "", ":", "::", " : ", "reason", "reason:", ":detail", "r: d: e", "é:ü"]
    for _ in range(n):
        reason = "".join(rng.choice(list("abcdefghij_0123456789"), size=rng.integers(1, 12)))
        detail = "".join(rng.choice(pieces, size=rng.integers(0, 6)))
        out.append(error_text(reason, detail))
    return out


def test_python_reason_and_its_sql_twin_agree_on_generated_errors():
    errors = generated_errors()
    con = duckdb.connect()
    con.register("t", pa.table({"i": pa.array(range(len(errors))), "e": pa.array(errors, pa.string())}))
    sql = [r for (r,) in con.execute(f"SELECT {error_reason_sql('e')} FROM t ORDER BY i").fetchall()]
    assert sql == [error_reason(e) for e in errors]
    assert len({error_reason(e) for e in errors}) > 100   # many reasons, many details with colons of their own


def test_saved_queries_use_the_twin_expression():
    twins = {error_reason_sql("error"), error_reason_sql("coalesce(error, '')")}
    found = []
    for path in sorted(MANIFESTS.glob("*.sql")):
        for expr in re.findall(r"split_part\((?:[^()]|\([^()]*\))*\)", path.read_text()):
            if "error" in expr:
                found.append(expr)
                assert expr in twins, f"{path.name}: {expr} is not error_reason_sql's expression"
    assert found   # the saved queries do count errors by reason
