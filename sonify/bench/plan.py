"""`python -m sonify.bench plan --images 1000000`: the driver's planning at the paper's scale.

Synthetic tables shaped like the paper's run (N images, 2 VLM variants of 3 concepts each, a pool
of 0.5M five-second chunks from 250K clips, outputs cut at `pipelines/sam.yaml`'s partition sizes)
are written once per size; then every stage is planned in a fresh process, as `sonify.run` plans it
(work list, dedupe, digests, partition names, cuts, the plan file), with no partition on disk yet.
Prints seconds and the process's peak RSS per stage at N/10 and N, the growth exponent of the
seconds, and the ratio to a baseline: the same work list streamed into Parquet and sorted by id by
DuckDB under the same memory cap (what any planner must at least do), in the same process.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from sonify.engine.cli import command_parser
from sonify.stages import STAGES as REGISTRY

STAGES = list(REGISTRY)
# `concepts:import`: the concepts stage reproducing a release instead of running the VLMs (one
# Parquet import file per variant)
ROWS = STAGES[:3] + ["concepts:import"] + STAGES[3:]
VLMS = ["llava-hf/llava-1.5-7b-hf", "HuggingFaceTB/SmolVLM-Instruct"]   # pipelines/sam.yaml's two variants
CHUNKS_PER_CLIP = 2   # AudioSet clips are 10 s: two 5 s chunks

# Per table: the SQL of rows [lo, hi) over `range(lo, hi) t(i)`, and the stage whose partition size cuts its files.
# `img(x)`, `clip(x)` name an image or clip id as the real ids are named (16 hex digits of a sha1).
TABLES = {
    "images": ("images", "img", """SELECT {img_i} AS id, 'sa1b' AS source, 'sa_' || i || '.jpg' AS uri,
        100000 AS nbytes, sha256(i::VARCHAR) AS sha256, 'JPEG' AS format, 'RGB' AS mode, 1500 AS width, 2250 AS height,
        1 AS exif_orientation, 'ok' AS status"""),
    "concepts": ("concepts", "var", """SELECT {variant_id} AS id, {img_v} AS image_id, {vlm} AS variant, 'generate' AS origin,
        'p' AS prompt, 'r' AS raw, [{{'object': 'dog', 'sound': 'barking', 'text': 'dog barking ' || j}}
        FOR j IN range(3)] AS concepts, 3 AS n_concepts, 3 AS items_found, 'ok' AS status"""),
    "captions": ("concepts", "var", """SELECT {variant_id} AS id, {img_v} AS image_id, {vlm} AS variant, 'generate' AS origin,
        'p' AS prompt, 'a dog in a park' AS caption, 'ok' AS status"""),
    "kept_images": ("filter", "img", """SELECT {img_i} AS id, true AS kept, ['a', 'b'] AS variants, 2 AS n_variants, 'ok' AS status"""),
    "audio_files": ("audio", "clip", """SELECT {clip_i} AS id, 'audioset' AS source, 'clips/' || i || '.flac' AS uri,
        ['Dog'] AS labels, 'FLAC' AS format, 48000 AS sample_rate, 2 AS channels,
        480000 AS frames, 10.0 AS duration, 900000 AS nbytes, -3.0 AS peak_dbfs, 2 AS num_chunks, 'ok' AS status"""),
    "audio_chunks": ("audio", "chunk", """SELECT {chunk_id} AS id, {clip_c} AS file_id, 'audioset' AS source,
        'clips/' || (i // 2) || '.flac' AS uri, i % 2 AS chunk_index, 48000 AS sample_rate, (i % 2) * 240000 AS start_frame,
        240000 AS num_frames, (i % 2) * 5.0 AS offset, 5.0 AS duration, 0.0 AS padding, -6.0 AS peak_dbfs, -20.0 AS rms_dbfs,
        'ok' AS status"""),
    "concept_embeddings": ("embed_text", "concept", """SELECT {concept_id} AS id,
        {variant_id_c} AS concept_id, {img_c} AS image_id, {vlm_c} AS variant, i % 3 AS concept_index,
        'dog barking ' || (i % 3) AS text, 'clap' AS model, 1.0 AS norm, 'ok' AS status"""),
    "matches": ("retrieve", "concept", """SELECT {concept_id} AS id, {img_c} AS image_id,
        {vlm_c} AS variant, i % 3 AS concept_index, 'dog barking ' || (i % 3) AS text,
        {chunk_pick} AS chunk_id, 0.5 AS cosine, 'ssr' AS mode, 'ok' AS status"""),
    "mixes": ("mix", "var", """SELECT {variant_id} AS id, {img_v} AS image_id, {vlm} AS variant,
        [{{'concept_index': j, 'text': 'dog barking ' || j, 'chunk_id': 'c', 'source': 'audioset',
           'uri': 'clips/1.flac', 'source_rate': 48000, 'start_frame': 0, 'num_frames': 240000, 'offset': 0.0,
           'duration': 5.0, 'cosine': 0.5, 'target_lufs': -23.0, 'measured_lufs': -23.0, 'gain_db': 0.0, 'included': true,
           'reason': NULL}} FOR j IN range(3)] AS components, 3 AS n_components, 16000 AS sample_rate, 5.0 AS duration,
        0.0 AS mix_gain_db, -23.0 AS lufs, -3.0 AS peak_dbfs, 'mixes/x/' || i || '.flac' AS path,
        sha256(i::VARCHAR) AS flac_sha256, 'ok' AS status"""),
    "audio_features": ("features", "var", """SELECT {variant_id} AS id, {img_v} AS image_id, {vlm} AS variant, 'ast' AS model,
        'features/x/' || i || '.npy' AS path, sha256(i::VARCHAR) AS sha256, 50 AS frames, 768 AS dim, 'ok' AS status"""),
    "image_latents": ("latents", "img", """SELECT {img_i} AS id, 'vae' AS model, 'latents/x/' || i || '.npy' AS path,
        sha256(i::VARCHAR) AS sha256, 4 AS channels, 64 AS height, 64 AS width, 512 AS resolution, 0.18215 AS scaling_factor,
        'ok' AS status"""),
}


def _sql(template: str, pool_chunks: int) -> str:
    from sonify.engine.ids import chunk_id_sql, concept_id_sql, variant_id_from_key_sql, variant_key

    def pick(expr):   # the VLM of variant number `expr` (0 or 1)
        return f"(CASE WHEN {expr} = 0 THEN '{VLMS[0]}' ELSE '{VLMS[1]}' END)"

    def key(expr):
        return f"(CASE WHEN {expr} = 0 THEN '{variant_key(VLMS[0])}' ELSE '{variant_key(VLMS[1])}' END)"

    img = lambda x: f"substr(sha1('img' || ({x})), 1, 16)"
    clip = lambda x: f"substr(sha1('clip' || ({x})), 1, 16)"
    args = dict(img_i=img("i"), img_v=img("i // 2"), img_c=img("i // 6"), vk=key("i % 2"), vlm=pick("i % 2"),
                vk_c=key("(i // 3) % 2"), vlm_c=pick("(i // 3) % 2"), clip_i=clip("i"), clip_c=clip("i // 2"))
    args.update(variant_id=variant_id_from_key_sql(args["vk"], args["img_v"]),   # the ids as the stages make them
                variant_id_c=variant_id_from_key_sql(args["vk_c"], args["img_c"]),
                chunk_id=chunk_id_sql(args["clip_c"], "(i % 2)"),
                chunk_pick=chunk_id_sql(clip(f"hash(i) % {pool_chunks // CHUNKS_PER_CLIP}"), "(i % 2)"))
    args["concept_id"] = concept_id_sql(args["variant_id_c"], "(i % 3)")
    return template.format(**args)


def config(root: Path, lists: Path, imports: bool = False):
    from sonify.engine.config import load_config
    from sonify.stages import stage_names

    released = ", ".join(f"{{name: '{vlm}', path: {lists / f'import-{k}.parquet'}}}" for k, vlm in enumerate(VLMS))
    return load_config(["pipeline=sam", f"run.root={root}", "run.executor=local", "run.progress=false",
                        f"sources.images=[{{name: sa1b, kind: parquet, path: {lists / 'images.parquet'}, uri_column: uri}}]",
                        f"sources.audio=[{{name: audioset, kind: parquet, path: {lists / 'audio.parquet'}, uri_column: uri}}]",
                        *(["models.vlms=[]", f"stages.concepts.imports=[{released}]"] if imports else [])],
                       stage_names())


def write_imports(lists: Path, images: int) -> None:
    """A released variant per VLM: every image's three concepts (object, sound) and caption, as Parquet."""
    import duckdb

    for k in range(len(VLMS)):
        path = lists / f"import-{k}.parquet"
        if not path.exists():
            duckdb.sql(f"""COPY (SELECT {_sql('{img_i}', 1)} AS image_id, [{{'object': 'dog ' || j, 'sound': 'barking'}}
                                       FOR j IN range(3)] AS concepts, 'a dog in a park' AS caption
                                FROM range({images}) t(i)) TO '{path}.tmp' (FORMAT parquet)""")
            Path(f"{path}.tmp").rename(path)


def build(root: Path, images: int, pool_chunks: int) -> None:
    """The synthetic run folder: source lists and every stage's tables, each table cut in files as its stage cuts them."""
    import duckdb

    from sonify.engine.store import TableStore
    from sonify.stages import get_stage

    lists = root / "lists"
    if (root / "done").exists():
        write_imports(lists, images)   # a folder built before the import row existed
        return
    lists.mkdir(parents=True, exist_ok=True)
    write_imports(lists, images)
    cfg = config(root / "runs", lists)
    con = duckdb.connect()
    con.execute(f"COPY (SELECT '/data/sa1b/sa_' || i || '.jpg' AS uri FROM range({images}) t(i)) TO '{lists / 'images.parquet'}'")
    con.execute(f"COPY (SELECT '/data/audioset/clips/' || i || '.flac' AS uri FROM range({pool_chunks // CHUNKS_PER_CLIP}) t(i)) "
                f"TO '{lists / 'audio.parquet'}'")
    store = TableStore(cfg.run.dir)
    counts = {"img": images, "var": 2 * images, "concept": 6 * images, "clip": pool_chunks // CHUNKS_PER_CLIP, "chunk": pool_chunks}
    for table, (stage, unit, template) in TABLES.items():
        step = get_stage(stage).settings(cfg).partition_rows
        sql = _sql(template, pool_chunks)
        for lo in range(0, counts[unit], step):
            hi = min(lo + step, counts[unit])
            store.write_partition(table, f"part-{lo:016x}", con.sql(f"{sql} FROM range({lo}, {hi}) t(i)").to_arrow_table())
    # the concept matrix's ids (row per embedded concept), as embed_text's finalize writes them
    from sonify.retrieval.matrices import matrix_paths

    ids = matrix_paths(store, "concept_embeddings")[1]
    ids.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"""COPY (SELECT {_sql('{vk_c}', pool_chunks)} || '-' || {_sql('{img_c}', pool_chunks)} || '-' || (i % 3) AS id,
                         i AS row FROM range({6 * images}) t(i)) TO '{ids}'""")
    (root / "done").touch()


def one(root: Path, stage: str) -> dict:
    """Plan `stage` of the run under `root` in this process; its seconds, the baseline's, and this process's peak RSS."""
    from sonify.bench.common import peak_rss_mib
    from sonify.engine.executor import plan_folder, plan_stage
    from sonify.engine.partitions import planner_connection, write_work
    from sonify.engine.store import TableStore
    from sonify.stages import get_stage

    stage, _, variant = stage.partition(":")
    cfg = config(root / "runs", root / "lists", imports=variant == "import")
    for name in STAGES:   # imports (torch, transformers) are the process's, not the planning's
        get_stage(name)
    cls, store = get_stage(stage), TableStore(cfg.run.dir, str(cfg.run.plan_memory))
    with plan_folder(store, stage) as plan_dir:   # as run_stage plans
        t0 = time.perf_counter()
        planned = plan_stage(cls, cfg, store, plan_dir)
        seconds = time.perf_counter() - t0
        rss = peak_rss_mib()
    with plan_folder(store, stage) as plan_dir:
        t0 = time.perf_counter()
        write_work(cls.work_list(cfg, store), plan_dir / "work.parquet")
        con = planner_connection(str(cfg.run.plan_memory), plan_dir / "spill")
        con.execute("SET threads = 1")   # as the planner writes its plan file
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{plan_dir / 'work.parquet'}') ORDER BY id) TO '{plan_dir / 'sorted.parquet'}'")
        baseline = time.perf_counter() - t0
    return {"stage": stage + (f":{variant}" if variant else ""), "rows": planned.rows_in, "partitions": len(planned.partitions), "seconds": seconds,
            "baseline": baseline, "rss_mib": rss}


def main(argv: list[str]) -> None:
    ap = command_parser("bench plan", __doc__, settings=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1_000_000, help="the larger size; the smaller is a tenth of it")
    ap.add_argument("--pool-chunks", type=int, default=500_000)
    ap.add_argument("--work", default="/tmp/sonify-bench-plan", help="synthetic runs are built here once per size")
    ap.add_argument("--stages", default=",".join(ROWS))
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._one:
        print(json.dumps(one(Path(a._one[0]), a._one[1])))
        return
    sizes = [a.images // 10, a.images]
    results: dict[int, dict[str, dict]] = {}
    for n in sizes:
        root = Path(a.work) / f"{n}"
        t0 = time.perf_counter()
        build(root, n, a.pool_chunks if n == a.images else max(1000, a.pool_chunks // 10))
        print(f"{n} images: synthetic tables ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for stage in a.stages.split(","):
            out = subprocess.run([sys.executable, "-m", "sonify.bench", "plan", "--_one", str(root), stage],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"planning {stage} at {n} images failed:\n{out.stderr[-2000:]}")
            results.setdefault(n, {})[stage] = r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {stage:15s} {r['rows']:>9d} rows  {r['seconds']:7.1f} s  {r['rss_mib']:7.0f} MiB", file=sys.stderr)
    small, big = sizes
    print(f"\nplanning every stage, fresh (no partition on disk); pool {a.pool_chunks // 10} and {a.pool_chunks} chunks")
    print(f"{'stage':15s} {'rows@big':>9s} {'parts':>6s} {'s@small':>8s} {'s@big':>7s} {'MiB@small':>9s} {'MiB@big':>8s} "
          f"{'growth':>6s} {'plan/base':>9s}")
    for stage in a.stages.split(","):
        s, b = results[small][stage], results[big][stage]
        growth = math.log(b["seconds"] / s["seconds"]) / math.log(b["rows"] / s["rows"]) if b["rows"] > s["rows"] else float("nan")
        print(f"{stage:15s} {b['rows']:>9d} {b['partitions']:>6d} {s['seconds']:>8.1f} {b['seconds']:>7.1f} {s['rss_mib']:>9.0f} "
              f"{b['rss_mib']:>8.0f} {growth:>6.2f} {b['seconds'] / b['baseline']:>9.2f}")
    worst = max(results[big].values(), key=lambda r: r["rss_mib"])
    print(f"\npeak driver RSS at {big} images: {worst['rss_mib']:.0f} MiB ({worst['stage']}); "
          f"slowest stage: {max(results[big].values(), key=lambda r: r['seconds'])['stage']}")
