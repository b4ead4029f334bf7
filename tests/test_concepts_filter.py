"""Stages `concepts` and `filter`: the tiny VLM through real generate, imports, provenance, decisions."""

import importlib.util
import json
import shutil

import pyarrow as pa
import pytest

from sonify.concepts.keywords import keyword_pattern
from sonify.engine.errors import ConfigError
from sonify.engine.executor import run_stage
from sonify.engine.partitions import work_table
from sonify.engine.store import TableStore
from sonify.stages import get_stage
from sonify.engine.ids import variant_key
from sonify.stages.concepts import ConceptsStage
from sonify.stages.filter import FilterStage


@pytest.fixture
def ingested(make_cfg):
    """A config whose images stage has run; the concepts stage settings come from demo.yaml."""
    def make(*overrides):
        cfg = make_cfg(*overrides)
        run_stage(get_stage("images"), cfg, progress_bar=False)
        return cfg
    return make


def _concepts(cfg):
    return TableStore(cfg.run.dir).read("concepts").to_pylist()


def test_tiny_vlm_runs_real_generate_and_noise_becomes_parse_errors(ingested, tmp_path):
    cfg = ingested(f"models.tiny_dir={tmp_path / 'tiny'}", "stages.concepts.imports=[]")
    run = run_stage(get_stage("concepts"), cfg, progress_bar=False)
    rows = _concepts(cfg)
    n_images = TableStore(cfg.run.dir).read("images").filter(pa.compute.equal(pa.compute.field("status"), "ok")).num_rows
    assert n_images > 0 and run.rows_in == len(rows) == n_images
    assert all(r["variant"] == "tiny:vlm" and r["origin"] == "generate" for r in rows)
    assert all(r["status"] == "error" and r["error"].startswith("parse_error:") and r["raw"] for r in rows)
    assert rows[0]["prompt"].startswith("As a numbered list, provide one to up to three sound(s)")  # recorded with every row
    caps = TableStore(cfg.run.dir).read("captions").to_pylist()
    assert len(caps) == n_images and all(c["status"] == "ok" and c["prompt"].startswith("Provide a short and concise description") for c in caps)


def test_imported_concepts_feed_the_filter(ingested):
    cfg = ingested("models.vlms=[]")
    run_stage(get_stage("concepts"), cfg, progress_bar=False)
    rows = {r["id"]: r for r in _concepts(cfg)}
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert ok and all(r["variant"] == "demo-import" and r["origin"] == "import" for r in ok)
    five = [r for r in ok if r["items_found"] == 5]
    assert len(five) == 1 and five[0]["n_concepts"] == 3
    assert [r["error"].split(":")[0] for r in rows.values() if r["status"] == "error"].count("unknown_image") == 1
    sa = [r for r in ok if r["raw"].startswith(("1.", "2.", "3.", "4.", "5.", "6."))]
    assert sa and all(not c["object"][0].isdigit() for r in sa for c in r["concepts"])  # "1. Dog - ..." parsed
    run_stage(get_stage("filter"), cfg, progress_bar=False)
    kept = {r["id"]: r for r in TableStore(cfg.run.dir).read("kept_images").to_pylist()}
    images = {r["id"]: r for r in TableStore(cfg.run.dir).read("images").to_pylist() if r["status"] == "ok"}
    assert set(kept) == set(images)  # one decision per decoded image
    by_uri = {images[i]["uri"].rsplit("/", 1)[-1]: k for i, k in kept.items()}
    assert by_uri["logo_acme.png"]["reason"] == "keyword:logo" and not by_uri["logo_acme.png"]["kept"]
    assert by_uri["logo_icon.png"]["reason"] in ("keyword:icon", "keyword:logo")
    assert by_uri["scene_001.jpg"]["reason"] == "no_concepts" and not by_uri["scene_001.jpg"]["kept"]  # imported with no concepts
    assert by_uri["scene_002.jpg"]["kept"] and by_uri["scene_002.jpg"]["variants"] == ["demo-import"]
    assert by_uri["gray.png"]["kept"]  # its caption says "signal" and "design": not keywords


def test_several_vlms_give_one_variant_each(ingested, tmp_path):
    from sonify.models.tiny import build_tiny

    copy = tmp_path / "second-vlm"
    shutil.copytree(build_tiny("vlm", tmp_path / "tiny"), copy)
    cfg = ingested(f"models.tiny_dir={tmp_path / 'tiny'}", f"models.vlms=[tiny:vlm,{copy}]",
                   "stages.concepts.generation={max_new_tokens: 4}", "stages.concepts.caption_generation={max_new_tokens: 4}")
    run_stage(get_stage("concepts"), cfg, progress_bar=False)
    rows = [r for r in _concepts(cfg) if not (r["error"] or "").startswith("unknown_image")]
    per_image = {}
    for r in rows:
        per_image.setdefault(r["image_id"], set()).add(r["variant"])
        assert r["id"] == f"{variant_key(r['variant'])}-{r['image_id']}"
    imported = {x["image_id"] for x in rows if x["origin"] == "import"}
    assert imported and len(imported) < len(per_image)   # both kinds of image are there to check
    for image_id, vlms in per_image.items():   # every image: both VLMs, plus the import where it has one
        assert vlms == {"tiny:vlm", str(copy)} | ({"demo-import"} if image_id in imported else set()), image_id


def test_parseable_replies_become_concepts(ingested, monkeypatch, tmp_path):
    from sonify.models import vlm as vlm_module

    def fake_generate(self, images, prompt, generation):
        if prompt.startswith("Provide a short"):
            return ["A dog on a beach."] * len(images)
        return ["Sure!\n1. **Dog** - The sound of a dog barking\n2) Waves: crashing waves"] * len(images)

    monkeypatch.setattr(vlm_module.HFVLM, "generate", fake_generate)
    monkeypatch.setattr(vlm_module.HFVLM, "generate_prompts", lambda self, images, asks: [fake_generate(self, images, p, g) for p, g in asks])
    cfg = ingested(f"models.tiny_dir={tmp_path / 'tiny'}", "stages.concepts.imports=[]")
    run_stage(get_stage("concepts"), cfg, progress_bar=False)
    rows = _concepts(cfg)
    assert rows and all(r["status"] == "ok" and [c["object"] for c in r["concepts"]] == ["Dog", "Waves"] for r in rows)
    # the CLAP query is the line as the VLM wrote it, without its marker or markdown (object kept)
    assert [c["text"] for c in rows[0]["concepts"]] == ["Dog - The sound of a dog barking", "Waves: crashing waves"]


def test_image_gone_after_ingest_is_an_error_row(ingested, tmp_path, demo_dir):
    cfg = ingested(f"models.tiny_dir={tmp_path / 'tiny'}", "stages.concepts.imports=[]")
    work = work_table(ConceptsStage.work_list(cfg, TableStore(cfg.run.dir))).slice(0, 3)
    rows = work.to_pylist()
    bad = tmp_path / "truncated_now.jpg"
    bad.write_bytes((demo_dir / "images/broken/truncated.jpg").read_bytes())
    rows[0]["uri"], rows[0]["tar_offset"] = str(bad), None
    rows[1]["uri"], rows[1]["tar_offset"] = str(tmp_path / "deleted.jpg"), None
    out = ConceptsStage(cfg).process_batch(pa.Table.from_pylist(rows, schema=work.schema))
    c = out["concepts"].to_pylist()
    assert c[0]["error"].startswith("truncated:") and c[1]["error"].startswith("unreadable:")
    assert c[2]["error"].startswith("parse_error:")  # the good one went through the model
    assert [r["id"] for r in c] == [r["id"] for r in rows]


def test_import_formats_jsonl_with_image_ids_and_structs(ingested, tmp_path):
    cfg = ingested("models.vlms=[]")
    images = [r for r in TableStore(cfg.run.dir).read("images").to_pylist() if r["status"] == "ok"][:2]
    path = tmp_path / "released.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"image_id": images[0]["id"], "concepts": [{"object": "Dog", "sound": "barking"}], "caption": "a dog"},
        {"image_id": images[1]["id"], "concepts": "1. Car - honking\n2. Bell - ringing", "caption": "a street sign"},
    ]))
    cfg2 = ingested("models.vlms=[]", f"stages.concepts.imports=[{{name: released, path: '{path}'}}]")
    run_stage(get_stage("concepts"), cfg2, progress_bar=False)
    rows = {r["image_id"]: r for r in _concepts(cfg2)}
    assert rows[images[0]["id"]]["concepts"] == [{"object": "Dog", "sound": "barking", "text": "Dog - barking"}]
    assert [c["object"] for c in rows[images[1]["id"]]["concepts"]] == ["Car", "Bell"]
    assert [c["text"] for c in rows[images[1]["id"]]["concepts"]] == ["Car - honking", "Bell - ringing"]
    run_stage(get_stage("filter"), cfg2, progress_bar=False)
    kept = {r["id"]: r for r in TableStore(cfg2.run.dir).read("kept_images").to_pylist()}
    assert kept[images[0]["id"]]["kept"] and kept[images[1]["id"]]["reason"] == "keyword:sign"


def test_an_import_larger_than_a_batch_gives_every_variant_once(ingested, tmp_path, monkeypatch):
    """Import files are read a batch at a time (a release names millions of variants): batches of 2
    over 5 JSONL records and a Parquet file give the same work rows as one read."""
    import pyarrow.parquet as pq

    from sonify.stages import concepts as concepts_stage

    cfg = ingested("models.vlms=[]")
    images = [r for r in TableStore(cfg.run.dir).read("images").to_pylist() if r["status"] == "ok"][:5]
    records = [{"image_id": r["id"], "concepts": [{"object": f"thing{n}", "sound": "hum"}], "caption": f"c{n}"}
               for n, r in enumerate(images)]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    pq.write_table(pa.Table.from_pylist([{**r, "concepts": json.dumps(r["concepts"])} for r in records]), tmp_path / "r.parquet")
    imports = f"stages.concepts.imports=[{{name: a, path: '{tmp_path / 'r.jsonl'}'}}, {{name: b, path: '{tmp_path / 'r.parquet'}'}}]"
    cfg2 = ingested("models.vlms=[]", imports)
    whole = work_table(ConceptsStage.work_list(cfg2, TableStore(cfg2.run.dir))).sort_by("id")
    monkeypatch.setattr(concepts_stage, "IMPORT_BATCH_ROWS", 2)
    batched = work_table(ConceptsStage.work_list(cfg2, TableStore(cfg2.run.dir))).sort_by("id")
    assert batched.equals(whole) and batched.num_rows == 10
    assert sorted(batched.column("image_id").to_pylist()) == sorted([r["id"] for r in images] * 2)
    assert not any(batched.column("list_error").to_pylist())


def test_a_parquet_import_names_images_by_id_or_by_path_as_the_listing_does(ingested, tmp_path):
    """Parquet imports are read by DuckDB: an image named by path gets the listing's id, the first 16
    hex digits of sha1(source NUL uri), with the import's image_source when a row has no source. A file
    written before the renames names the path `relpath`: an alias of `uri` (row 3 uses it)."""
    import hashlib

    import pyarrow.parquet as pq

    cfg = ingested("models.vlms=[]")
    images = [r for r in TableStore(cfg.run.dir).read("images").to_pylist() if r["status"] == "ok"][:3]
    rows = [{"image_id": images[0]["id"], "uri": None, "relpath": None, "source": None, "concepts": "1. Dog - barking", "caption": "a dog"},
            {"image_id": None, "uri": images[1]["uri"], "relpath": None, "source": images[1]["source"], "concepts": "1. Car - honking",
             "caption": None},
            {"image_id": "", "uri": None, "relpath": images[2]["uri"], "source": "", "concepts": None, "caption": "x"},
            {"image_id": None, "uri": "nowhere.jpg", "relpath": None, "source": None, "concepts": "1. Bell - ringing", "caption": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    src = images[2]["source"]
    cfg2 = ingested("models.vlms=[]", f"stages.concepts.imports=[{{name: rel, path: '{tmp_path / 'r.parquet'}', image_source: {src}}}]")
    work = {r["image_id"]: r for r in work_table(ConceptsStage.work_list(cfg2, TableStore(cfg2.run.dir))).to_pylist()}
    by_path = hashlib.sha1(f"{src}\x00nowhere.jpg".encode()).hexdigest()[:16]
    assert set(work) == {images[0]["id"], images[1]["id"], images[2]["id"], by_path}
    assert [work[i["id"]]["list_error"] for i in images] == [None] * 3 and work[by_path]["list_error"].startswith("unknown_image")
    assert json.loads(work[images[1]["id"]]["import_json"]) == "1. Car - honking" and work[images[2]["id"]]["import_json"] is None
    assert work[images[0]["id"]]["id"] == f"{variant_key('rel')}-{images[0]['id']}" and work[images[0]["id"]]["import_caption"] == "a dog"


@pytest.mark.parametrize("text, message", [
    ('{"image_id": "a", "concepts": []}\n{"caption": "no image"}\n', "row 2: needs 'image_id' or 'uri'"),
    ('{"image_id": "a", "caption": "x"}\n', "needs a 'concepts' field"),
    ('{"image_id": "a", "concepts": []}\n{"image_id": \n', "line 2"),
])
def test_a_bad_import_file_fails_in_one_line(ingested, tmp_path, text, message):

    (tmp_path / "bad.jsonl").write_text(text)
    cfg = ingested("models.vlms=[]", f"stages.concepts.imports=[{{name: a, path: '{tmp_path / 'bad.jsonl'}'}}]")
    with pytest.raises(ValueError, match=message):
        work_table(ConceptsStage.work_list(cfg, TableStore(cfg.run.dir)))


@pytest.mark.parametrize("rows, message", [
    ([{"image_id": "a", "caption": "x"}], "needs a 'concepts' field"),
    ([{"image_id": "a", "concepts": "x"}, {"image_id": None, "concepts": "y"}], "1 rows have neither 'image_id' nor 'uri'"),
])
def test_a_bad_parquet_import_fails_in_one_line(ingested, tmp_path, rows, message):
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    cfg = ingested("models.vlms=[]", f"stages.concepts.imports=[{{name: a, path: '{tmp_path / 'bad.parquet'}'}}]")
    with pytest.raises(ValueError, match=message):
        work_table(ConceptsStage.work_list(cfg, TableStore(cfg.run.dir)))


@pytest.mark.parametrize("caption, word", [
    ("A company logo", "logo"), ("Two logos side by side", "logo"), ("Road SIGNS at dusk", "sign"),
    ("An emblem and symbols", "emblem"), ("app icons", "icon"), ("the Nike trademark", "trademark"),
])
def test_keywords_match_as_words_with_plurals(caption, word):
    m = keyword_pattern(["logo", "icon", "emblem", "symbol", "trademark", "sign"]).search(caption)
    assert m and m.group(1).lower() == word


@pytest.mark.parametrize("caption", ["a traffic signal", "interior design", "an iconic view", "signature dish", "logotype"])
def test_keywords_do_not_match_inside_other_words(caption):
    assert keyword_pattern(["logo", "icon", "emblem", "symbol", "trademark", "sign"]).search(caption) is None


def test_filter_rules_are_configurable(make_cfg):
    stage = FilterStage(make_cfg("stages.filter.drop_on_keyword=false"))
    assert stage.decide(["v"], ["a logo"])["kept"]
    stage = FilterStage(make_cfg("stages.filter.drop_without_concepts=false"))
    assert stage.decide([], ["a dog"])["kept"]
    stage = FilterStage(make_cfg())
    d = stage.decide(None, None)
    assert not d["kept"] and d["reason"] == "no_concepts"


def test_cogvlm_needs_remote_code_opt_in():
    from sonify.models.vlm import load_vlm

    with pytest.raises(ConfigError, match="models.trust_remote_code=true"):
        load_vlm("THUDM/cogvlm-chat-hf", "hf", "/tmp", "cpu", "float32", False)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_says_how_to_install_it():
    from sonify.models.vlm import load_vlm

    with pytest.raises(ConfigError, match="sonify\\[vllm\\]"):
        load_vlm("tiny:vlm", "vllm", "/tmp", "cpu", "float32", False)


def test_bad_text_template_fails_in_one_line(ingested):
    from sonify.engine.errors import ConfigError
    from sonify.stages.concepts import ConceptsStage

    cfg = ingested("stages.concepts.text_template='{noun} sound'")
    with pytest.raises(ConfigError, match=r"stages.concepts.text_template.*\{line\}, \{object\}, \{sound\}"):
        ConceptsStage.work_list(cfg, TableStore(cfg.run.dir))


def test_caption_vlms_limit_the_keyword_rule_to_the_named_vlms_captions(ingested, demo_dir, tmp_path):
    """The paper (A.2) filters on LLaVA's captions only: a second VLM's caption naming a logo does not drop the image
    when only the first VLM's captions count; with the setting empty, every caption counts."""
    import pyarrow.parquet as pq

    t = pq.read_table(demo_dir / "concepts_import.parquet")
    clean = t.set_column(t.column_names.index("caption"), "caption", pa.array(["a photo"] * t.num_rows))
    pq.write_table(clean, tmp_path / "clean.parquet")
    imports = (f"stages.concepts.imports=[{{name: noisy, path: '{demo_dir / 'concepts_import.parquet'}'}},"
               f"{{name: clean, path: '{tmp_path / 'clean.parquet'}'}}]")
    decisions = {}
    for only in ("[]", "[clean]"):
        cfg = ingested("models.vlms=[]", imports, f"stages.filter.caption_vlms={only}")
        run_stage(get_stage("concepts"), cfg, progress_bar=False)
        run_stage(get_stage("filter"), cfg, progress_bar=False)
        images = {r["id"]: r["uri"].rsplit("/", 1)[-1] for r in TableStore(cfg.run.dir).read("images").to_pylist()}
        decisions[only] = {images[r["id"]]: r for r in TableStore(cfg.run.dir).read("kept_images").to_pylist()}
    assert decisions["[]"]["logo_acme.png"]["reason"] == "keyword:logo"
    assert decisions["[clean]"]["logo_acme.png"]["kept"] and decisions["[clean]"]["logo_acme.png"]["caption_hits"] == []
    with pytest.raises(ConfigError, match=r"stages.filter.caption_vlms.*valid choices: noisy, clean"):
        ingested("models.vlms=[]", imports, "stages.filter.caption_vlms=[llava]")
