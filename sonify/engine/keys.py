"""Randomness keyed by content, never by processing order (the ids that name rows: `sonify.engine.ids`).

`keyed_rng` gives each purpose its own counter-based (Philox) stream, and
`unit_hash` turns a string into a stable number in [0, 1): so a row's outcome does not depend on
which worker, batch or partition processed it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def keyed_rng(*key: object) -> np.random.Generator:
    """A Philox generator keyed by `key` (e.g. seed, image id, variant, concept index, purpose)."""
    digest = hashlib.sha256("\x00".join(str(k) for k in key).encode()).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) from a string."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2.0**64


def unit_hash_sql(expr: str) -> str:
    """`unit_hash` of a SQL string expression, computed by DuckDB (work lists never leave it)."""
    return f"(CAST(('0x' || substr(sha1({expr}), 1, 16)) AS UBIGINT)::DOUBLE / 18446744073709551616.0)"
