"""Every id of `sonify.engine.ids`: the Python function and its SQL twin agree on generated values
(awkward ones included), parse(build(x)) == x, and the values are those earlier runs wrote."""

from __future__ import annotations

import hashlib
import random

import duckdb
import pytest

from sonify.engine import ids

NAMES = ["tiny:vlm", "llava-hf/llava-1.5-7b-hf", "THUDM/cogvlm-chat-hf", "demo-import", "my_import:v2", "a'quote", "ünïcode/名前",
         "models/x-y_z:1", ""]
IMAGE_IDS = ["0d76d1f028e6e34f", "a-b-c", "with_underscore_", "x:y", "12345", "sp ace", "-lead", "trail-", "a/b/c.jpg", "_"]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice("ab-_:/.'x9 é") for _ in range(rng.randint(1, 12)))


@pytest.fixture(scope="module")
def values():
    rng = random.Random(7)
    names = NAMES + [_random_text(rng) for _ in range(40)]
    image_ids = IMAGE_IDS + [_random_text(rng) for _ in range(40)]
    return names, image_ids


def _lit(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _table(rows: list[dict]) -> duckdb.DuckDBPyConnection:
    import pyarrow as pa

    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist(rows))
    return con


def test_definitions_are_the_values_earlier_runs_wrote():
    """Written from the documented formats (README/docs/layout), not by calling the functions twice."""
    assert ids.stable_id("demo_folder", "awkward/cmyk.jpg") == hashlib.sha1(b"demo_folder\x00awkward/cmyk.jpg").hexdigest()[:16]
    assert ids.variant_key("demo-import") == hashlib.sha1(b"demo-import").hexdigest()[:8] == "2f4cfe80"
    assert ids.variant_id("demo-import", "0d76d1f028e6e34f") == "2f4cfe80-0d76d1f028e6e34f"   # a mix id of the demo's release
    assert ids.concept_id("2f4cfe80-0d76d1f028e6e34f", 2) == "2f4cfe80-0d76d1f028e6e34f-2"
    assert ids.chunk_id("f00d", 3) == "f00d-00003"
    assert ids.ablation_id("v-i-0", "softmax") == "v-i-0:softmax"
    assert ids.sample_key_of_variant("2f4cfe80-0d76d1f028e6e34f") == "0d76d1f028e6e34f_2f4cfe80"


def test_python_and_sql_twins_agree_and_parsing_inverts_building(values):
    names, image_ids = values
    rows = []
    for n in names:
        for i, img in enumerate(image_ids):
            vid = ids.variant_id(n, img)
            rows.append({"variant": n, "image_id": img, "index": i % 12, "mode": ["ssr", "raw", "argmax", "softmax"][i % 4],
                         "vid": vid, "cid": ids.concept_id(vid, i % 12), "chunk": ids.chunk_id(img, i * 7919), "chunk_index": i * 7919,
                         "stable": ids.stable_id(n, img), "key": ids.variant_key(n)})
            assert ids.parse_variant_id(vid) == (ids.variant_key(n), img)
            assert ids.parse_concept_id(ids.concept_id(vid, i % 12)) == (vid, i % 12)
            assert ids.parse_chunk_id(ids.chunk_id(img, i * 7919)) == (img, i * 7919)
            assert ids.parse_ablation_id(ids.ablation_id(vid, "raw")) == (vid, "raw")
            assert ids.parse_sample_key(ids.sample_key(img, ids.variant_key(n))) == (img, ids.variant_key(n))
            assert ids.sample_key_of_variant(vid) == ids.sample_key(img, ids.variant_key(n))
    con = _table(rows)
    q = f"""SELECT {ids.stable_id_sql('variant', 'image_id')} = stable,
                   {ids.variant_key_sql('variant')} = key,
                   {ids.variant_id_sql('variant', 'image_id')} = vid,
                   {ids.variant_id_from_key_sql(ids.variant_key_sql('variant'), 'image_id')} = vid,
                   {ids.variant_key_of_sql('vid')} = key,
                   {ids.image_id_of_variant_sql('vid')} = image_id,
                   {ids.concept_id_sql('vid', 'index')} = cid,
                   {ids.parent_of_indexed_sql('cid')} = vid,
                   {ids.index_of_indexed_sql('cid')} = index,
                   {ids.chunk_id_sql('image_id', 'chunk_index')} = chunk,
                   {ids.parent_of_indexed_sql('chunk')} = image_id,
                   {ids.index_of_indexed_sql('chunk')} = chunk_index,
                   {ids.ablation_id_sql('cid', 'mode')} = cid || ':' || mode,
                   {ids.sample_key_sql('image_id', 'key')} = image_id || '_' || key,
                   {ids.sample_key_of_variant_sql('vid')} = image_id || '_' || key,
                   variant, image_id
            FROM t"""
    checks = ["stable_id", "variant_key", "variant_id", "variant_id_from_key", "variant_key_of", "image_id_of_variant",
              "concept_id", "parent_of_concept", "index_of_concept", "chunk_id", "parent_of_chunk", "index_of_chunk", "ablation_id", "sample_key",
              "sample_key_of_variant"]
    for row in con.sql(q).fetchall():
        bad = [c for c, ok in zip(checks, row[:len(checks)]) if not ok]
        assert not bad, f"SQL twin disagrees for variant {row[-2]!r}, image {row[-1]!r}: {bad}"
    for idx in (0, 7, 99999, 123456):
        assert con.sql(f"SELECT {ids.chunk_id_sql(_lit('a-b_c'), str(idx))}").fetchall()[0][0] == ids.chunk_id("a-b_c", idx)


def test_python_and_sql_sample_keys_agree_with_ablation_python(values):
    names, image_ids = values
    rows = [{"cid": ids.concept_id(ids.variant_id(n, i), 1), "mode": "argmax"} for n in names[:5] for i in image_ids]
    got = _table(rows).sql(f"SELECT {ids.ablation_id_sql('cid', 'mode')} FROM t").fetchall()
    assert [g[0] for g in got] == [ids.ablation_id(r["cid"], r["mode"]) for r in rows]


@pytest.mark.parametrize("parse, text", [(ids.parse_variant_id, "nodash"), (ids.parse_variant_id, "-abc"),
                                         (ids.parse_concept_id, "v-i-x"), (ids.parse_chunk_id, "f"),
                                         (ids.parse_ablation_id, "v-i-0"), (ids.parse_sample_key, "img_")])
def test_parsing_refuses_what_no_builder_makes(parse, text):
    with pytest.raises(ValueError, match="is not a"):
        parse(text)
