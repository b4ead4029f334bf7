"""Lineage: after any change, `stage=all` recomputes exactly what depends on it, and every table and
file on disk stays consistent with its upstream tables (no stale row, no file that no row owns)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ALL_STAGES, copy_run

from sonify.engine.config import load_config
from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.stages import get_stage, stage_names
from sonify.training.data import expand_shards


def run_all(cfg) -> dict[str, int]:
    """Every stage once; returns the partitions each one computed."""
    computed = {}
    for stage in ALL_STAGES:
        run = run_stage(get_stage(stage), cfg, progress_bar=False)
        assert not run.failed, (stage, run.failed)
        computed[stage] = run.computed
    return computed


def rows(store: TableStore, table: str) -> list[dict]:
    return store.read(table).to_pylist() if store.exists(table) else []


def owned_files(run_dir: Path, store: TableStore) -> set[Path]:
    """Every file a row or a stage owns: partitions, per-partition stats, files named by rows, stage outputs."""
    owned = {run_dir / n for n in ("config.yaml", "summary.json", ".lock")}
    for table_dir in (run_dir / "manifests").iterdir():
        for f in store.files(table_dir.name):
            owned.add(f)
    for stage in ALL_STAGES:
        cls = get_stage(stage)
        parts = set.intersection(*(store.partitions(t) for t in cls.outputs))
        owned |= {run_dir / "stats" / stage / f"{p}.json" for p in parts}
    for table in ("mixes", "audio_features", "image_latents", "shard_index"):
        for r in rows(store, table):
            if r.get("path"):
                owned.add(run_dir / r["path"])
                if table == "shard_index":
                    owned.add((run_dir / r["path"]).with_suffix(".json"))
    for name in ("audio_embeddings", "concept_embeddings"):
        owned |= {run_dir / "matrices" / f"{name}{s}" for s in (".npy", ".ids.parquet", ".json")}
    owned.add(run_dir / "matrices" / "audio_embeddings.f32.npy")   # the pool as retrieve workers map it
    owned |= {run_dir / "release" / n for n in ("release.parquet", "release.jsonl")}
    owned |= {run_dir / "shards" / n for n in ("train.txt", "val.txt")}
    return owned


def assert_consistent(cfg) -> None:
    """Each table agrees with the tables it was made from, and the run folder holds nothing else."""
    run_dir = Path(cfg.run.dir)
    store = TableStore(run_dir)
    ok = lambda table: {r["id"]: r for r in rows(store, table) if r["status"] == "ok"}
    images, kept = ok("images"), {i for i, r in ok("kept_images").items() if r["kept"]}
    assert set(r["id"] for r in rows(store, "kept_images")) == set(images)
    concepts = ok("concepts")
    texts = {f"{c['id']}-{n}": t["text"] for c in concepts.values() if c["image_id"] in kept for n, t in enumerate(c["concepts"])}
    assert {r["id"]: r["text"] for r in rows(store, "concept_embeddings")} == texts
    chunks = {r["id"] for r in rows(store, "audio_chunks") if r["status"] == "ok"}
    assert {r["id"] for r in rows(store, "audio_embeddings")} == chunks
    matches = ok("matches")
    assert set(matches) == set(ok("concept_embeddings"))
    assert all(m["chunk_id"] in ok("audio_embeddings") for m in matches.values())
    # every mixture is made of exactly the current matches of its variant
    by_variant: dict[str, dict[int, str]] = {}
    for m in matches.values():
        by_variant.setdefault(m["id"].rsplit("-", 1)[0], {})[m["concept_index"]] = m["chunk_id"]
    mixes = {r["id"]: r for r in rows(store, "mixes")}
    assert set(mixes) == set(by_variant)
    for vid, mix in mixes.items():
        assert {c["concept_index"]: c["chunk_id"] for c in mix["components"]} == by_variant[vid]
    ok_mixes = {i: m for i, m in mixes.items() if m["status"] == "ok"}
    release = pq.read_table(run_dir / "release" / "release.parquet").to_pylist()
    assert {r["mix_id"]: r["flac_sha256"] for r in release} == {i: m["flac_sha256"] for i, m in ok_mixes.items()}
    features = ok("audio_features")
    assert {r["id"] for r in rows(store, "audio_features")} == set(ok_mixes)
    latents = ok("image_latents")
    assert {r["id"] for r in rows(store, "image_latents")} == kept
    for table in (features, latents):
        for r in table.values():
            assert hashlib.sha256((run_dir / r["path"]).read_bytes()).hexdigest() == r["sha256"]
    # every shard sample is the current mixture's features and its image's latents; nothing else is listed
    index = {r["id"]: r for r in rows(store, "shard_index") if r["status"] == "ok"}
    expected = {f"{m['image_id']}_{i.split('-', 1)[0]}" for i, m in ok_mixes.items() if i in features and m["image_id"] in latents}
    assert set(index) == expected
    seen = set()
    for url in expand_shards(str(run_dir / "shards" / "train.txt")) + expand_shards(str(run_dir / "shards" / "val.txt")):
        with tarfile.open(url) as tf:
            for member in tf.getmembers():
                key, kind = member.name.split(".", 1)
                sample = index[key]
                data = tf.extractfile(member).read()
                if kind == "ast.npy":
                    assert data == (run_dir / features[sample["mix_id"]]["path"]).read_bytes()
                elif kind == "latent.npy":
                    assert data == (run_dir / latents[sample["image_id"]]["path"]).read_bytes()
                elif kind == "json":
                    meta = json.loads(data)
                    summed = [c for c in ok_mixes[sample["mix_id"]]["components"] if c["included"]]
                    assert [c["chunk_id"] for c in meta["components"]] == [c["chunk_id"] for c in summed]
                elif kind == "flac":
                    assert data == (run_dir / ok_mixes[sample["mix_id"]]["path"]).read_bytes()
                seen.add(key)
    assert seen == set(index)
    # the whole run folder: no file that no row (or stage) owns
    on_disk = {p for p in run_dir.rglob("*") if p.is_file() and not p.is_relative_to(run_dir / "data")}
    orphans = sorted(str(p.relative_to(run_dir)) for p in on_disk - owned_files(run_dir, store))
    assert not orphans, orphans


def computed_stages(computed: dict[str, int]) -> set[str]:
    return {s for s, n in computed.items() if n}


UPSTREAM_OF_MIX = {"images", "audio", "concepts", "filter", "embed_audio", "embed_text"}


@pytest.mark.parametrize("change, recomputed", [
    (["stages.retrieve.k=3"], {"retrieve", "mix", "features", "shards"}),
    (["stages.mix.lufs_min=-30", "stages.mix.lufs_max=-28"], {"mix", "features", "shards"}),
    (["stages.shards.samples_per_shard=3"], {"shards"}),
    (["stages.shards.val_fraction=0.5"], {"shards"}),
])
def test_a_config_change_recomputes_exactly_its_dependents(full_run, tmp_path, change, recomputed):
    cfg = copy_run(full_run, tmp_path, *change)
    assert computed_stages(run_all(cfg)) == recomputed
    assert_consistent(cfg)
    assert computed_stages(run_all(cfg)) == set()   # and a re-run does nothing


def test_a_prompt_file_a_keyword_file_and_a_model_change(full_run, tmp_path):
    prompt = tmp_path / "concepts.txt"
    prompt.write_text((Path(__file__).parents[1] / "prompts" / "concepts.txt").read_text())
    cfg = copy_run(full_run, tmp_path, f"stages.concepts.concepts_prompt={prompt}")
    assert computed_stages(run_all(cfg)) == set()   # the same text from another file: the same lineage
    prompt.write_text(prompt.read_text() + "\nName each object once.")
    assert computed_stages(run_all(cfg)) == set(ALL_STAGES) - {"images", "audio", "embed_audio"}
    assert_consistent(cfg)
    shutil.rmtree(tmp_path / "runs")
    keywords = tmp_path / "keywords.txt"
    keywords.write_text("logo\nicon\ncar\n")   # 'car' now drops images whose caption names a car
    cfg = copy_run(full_run, tmp_path, f"stages.filter.keywords={keywords}")
    assert computed_stages(run_all(cfg)) == {"filter", "embed_text", "retrieve", "mix", "features", "latents", "shards"}
    assert_consistent(cfg)
    keywords.write_text("logo\nicon\ncar\nbird\n")   # the file's content, not its name, is the lineage
    assert computed_stages(run_all(cfg)) == {"filter", "embed_text", "retrieve", "mix", "features", "latents", "shards"}
    assert_consistent(cfg)
    # the same AST, now from a local folder: a model of another identity (its files are hashed)
    ast_copy = tmp_path / "ast_copy"
    shutil.copytree(Path(cfg.models.tiny_dir) / "ast", ast_copy)
    other = load_config([*full_run[1], f"run.root={tmp_path / 'runs'}", f"stages.filter.keywords={keywords}",
                         f"models.ast={ast_copy}"], stage_names())
    assert computed_stages(run_all(other)) == {"features", "shards"}
    assert_consistent(other)
    (ast_copy / "config.json").write_text((ast_copy / "config.json").read_text().replace('"hidden_act"', '"_note": 1, "hidden_act"'))
    assert computed_stages(run_all(other)) == {"features", "shards"}   # new files at the same path are seen


def _fraction(cfg, stage: str, computed: int) -> float:
    cls = get_stage(stage)
    return computed / max(1, len(TableStore(cfg.run.dir).partitions(cls.outputs[0])))


def test_adding_and_removing_data_recomputes_only_what_it_touches(tmp_path, demo_dir):
    """Grow the image folder, then the audio pool, then shrink the images: new rows land in new partitions."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    args = ["pipeline=demo", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={data}", "demo_data.enabled=false",
            "run.executor=local", "run.progress=false", "models.vlms=[]", f"models.tiny_dir={tmp_path / 'tiny'}",
            "stages.images.partition_rows=4", "stages.concepts.partition_rows=4", "stages.filter.partition_rows=4",
            "stages.embed.partition_rows=4", "stages.retrieve.partition_rows=4", "stages.mix.partition_rows=4",
            "stages.features.partition_rows=4", "stages.latents.partition_rows=4"]
    cfg = load_config(args, stage_names())
    run_all(cfg)
    store = TableStore(cfg.run.dir)
    before = {t: store.partitions(t) for t in ("images", "audio_files", "audio_embeddings", "concepts", "mixes", "image_latents")}

    # +2 images with imported concepts: only new partitions, no audio embedded again
    imports = pq.read_table(data / "concepts_import.parquet").to_pylist()
    for n in (0, 3):
        src = data / "images" / f"scene_{n:03d}.{'png' if n % 3 == 0 else 'jpg'}"
        new = f"new_{n}{src.suffix}"
        shutil.copy(src, data / "images" / new)
        imports.append({**next(r for r in imports if r["relpath"] == src.name), "relpath": new})
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(imports), data / "concepts_import.parquet")
    computed = run_all(cfg)
    assert computed["audio"] == computed["embed_audio"] == 0
    for stage in ("images", "concepts", "filter", "embed_text", "mix", "features", "latents"):
        assert 0 < computed[stage] <= 2, (stage, computed)
    assert before["images"] <= store.partitions("images") and before["image_latents"] <= store.partitions("image_latents")
    assert_consistent(cfg)

    # +1 audio file: only its chunks are embedded; retrieval sees a new pool and recomputes in full
    pool_before = store.partitions("audio_embeddings")
    shutil.copy(data / "audio" / "dog_bark_16000hz_1ch.wav", data / "audio" / "zz_new_dog.wav")
    computed = run_all(cfg)
    assert computed["audio"] == 1 and computed["embed_audio"] == 1 and pool_before < store.partitions("audio_embeddings")
    assert computed["images"] == computed["concepts"] == computed["embed_text"] == computed["latents"] == 0
    assert computed["retrieve"] == len(store.partitions("matches"))
    assert_consistent(cfg)

    # -1 image: its rows leave every table; only the partitions that held it are recomputed
    (data / "images" / "new_3.png").unlink()
    computed = run_all(cfg)
    assert computed["images"] == 1 and computed["audio"] == computed["embed_audio"] == 0
    assert not [r for r in rows(store, "images") if r["uri"] == "new_3.png"]
    assert_consistent(cfg)


def test_killed_partial_partition_files_are_not_left_behind(full_run, tmp_path):
    cfg = copy_run(full_run, tmp_path)
    run_dir = Path(cfg.run.dir)
    junk = [run_dir / "mixes" / "part-0000000000000000" / "x" / "y.flac", run_dir / "features" / "ast" / "part-1111111111111111" / "z.npy",
            run_dir / "shards" / "part-2222222222222222" / "train-000009.tar", run_dir / "mixes" / ".tmp-y.flac-1-abc"]
    for j in junk:
        j.parent.mkdir(parents=True, exist_ok=True)
        j.write_bytes(b"left by a killed writer")
    assert computed_stages(run_all(cfg)) == set()
    assert not [j for j in junk if j.exists()]
    assert_consistent(cfg)


def test_runtime_settings_change_nothing(full_run, tmp_path):
    cfg = copy_run(full_run, tmp_path, "stages.mix.batch_size=3", "stages.mix.partition_rows=2", "stages.features.concurrency=5",
                   "stages.retrieve.block_mb=1", "stages.embed.device=cpu", "stages.latents.num_cpus=2")
    assert computed_stages(run_all(cfg)) == set()


def test_npy_and_flac_files_belong_to_their_rows(full_run):
    cfg, _ = full_run
    store = TableStore(cfg.run.dir)
    for table, folder in (("mixes", "mixes"), ("audio_features", "features/ast"), ("image_latents", "features/latents")):
        parts = store.partitions(table)
        for r in rows(store, table):
            if r["status"] == "ok":
                assert r["path"].startswith(folder + "/") and r["path"].split("/")[len(folder.split("/"))] in parts
