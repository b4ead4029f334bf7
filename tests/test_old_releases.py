"""Releases written before the renames (release version 1: `dataset`, `relpath`, `concept_text`, `similarity`,
`image_relpath`) still rebuild with `sonify.mix`, with the same hashes.

`fixtures/release_v1.parquet` is 6 rows of the release the demo pipeline wrote at commit 2ae2197 (before the
renames) over the demo data that `demo_dir` makes (12 images, seed 0): its hashes are that code's output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from sonify.mix import main as mix_main
from sonify.mixing.release import RELEASE_SCHEMA, LEGACY_NAMES, Release

OLD = Path(__file__).parent / "fixtures" / "release_v1.parquet"


def test_the_fixture_is_an_old_release():
    schema = pq.read_schema(OLD)
    assert schema.metadata[b"sonify.release_version"] == b"1" and "image_relpath" in schema.names
    assert {"dataset", "relpath", "concept_text", "similarity"} <= {f.name for f in schema.field("components").type.value_type}


def test_an_old_release_reads_in_todays_names():
    rows = list(Release(OLD).rows())
    assert len(rows) == 6
    for r in rows:
        assert "image_relpath" not in r and r["image_uri"]
        for c in r["components"]:
            assert set(c) == {f.name for f in RELEASE_SCHEMA.field("components").type.value_type}
            assert c["source"] == "demo_sfx" and c["uri"] and c["text"] and c["cosine"] is not None
    old = pq.read_table(OLD).to_pylist()
    assert [c["relpath"] for r in old for c in r["components"]] == [c["uri"] for r in rows for c in r["components"]]
    assert [c["similarity"] for r in old for c in r["components"]] == [c["cosine"] for r in rows for c in r["components"]]


def test_an_old_release_rebuilds_with_the_same_hashes(tmp_path, demo_dir):
    out = tmp_path / "rebuilt"
    rc = mix_main(["--manifest", str(OLD), "--out", str(out), "--check", "--no-progress", "--workers", "1",
                   "--source", f"demo_sfx={demo_dir / 'audio'}"])
    assert rc == 0
    for r in pq.read_table(OLD).to_pylist():
        assert hashlib.sha256((out / r["path"]).read_bytes()).hexdigest() == r["flac_sha256"], r["mix_id"]


def test_an_old_jsonl_release_rebuilds_too(tmp_path, demo_dir):
    """The JSON Lines copy carries no version: old names are renamed wherever they appear."""
    jsonl = tmp_path / "release.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in pq.read_table(OLD).to_pylist()))
    out = tmp_path / "rebuilt"
    rc = mix_main(["--manifest", str(jsonl), "--out", str(out), "--verify", "--no-progress", "--workers", "1",
                   "--audio-root", f"demo_sfx={demo_dir / 'audio'}"])   # the documented alias of --source
    assert rc == 0


def test_the_old_names_live_in_one_map():
    columns, fields = LEGACY_NAMES["1"]
    assert columns == {"image_relpath": "image_uri"}
    assert fields["dataset"] == "source" and fields["relpath"] == "uri" and fields["concept_text"] == "text"
    assert fields["similarity"] == "cosine"
