"""Paths that travel (issue 12, item 1): stored source paths are relative to each source's declared root
and resolved at read time, so a run works from any cwd (a `ray job submit` working dir is another one),
and a release manifest rebuilds on a machine where the corpora live elsewhere."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sonify.engine.config import SourceConf, load_config, save_config
from sonify.engine.paths import RAY_JOB_ENV
from sonify.engine.errors import ConfigError
from sonify.engine.executor import run_stage
from sonify.engine.store import TableStore
from sonify.stages import get_stage, stage_names

FIRST, LATER = ("images", "audio"), ("concepts", "filter", "embed_audio", "embed_text", "retrieve", "mix")


@contextlib.contextmanager
def cwd(folder: Path, job: bool = False):
    """Run in `folder` as the process's working dir; `job`: with the variable Ray sets in a submitted job."""
    old, had = os.getcwd(), os.environ.get(RAY_JOB_ENV)
    os.chdir(folder)
    if job:
        os.environ[RAY_JOB_ENV] = "{}"
    try:
        yield
    finally:
        os.chdir(old)
        if had is None:
            os.environ.pop(RAY_JOB_ENV, None)


def _run(args: list[str], stages) -> dict:
    cfg = load_config(args, stage_names())
    save_config(cfg, Path(cfg.run.dir) / "config.yaml")   # as sonify.run does
    runs = {}
    for s in stages:
        runs[s] = run_stage(get_stage(s), cfg, progress_bar=False)
        assert not runs[s].failed, s
    return runs


@pytest.fixture(scope="module")
def two_cwds(tmp_path_factory, demo_dir):
    """The reproduced bug: images and audio run from cwd A with the relative paths `make demo` uses
    (run.root=runs, the data under ./data), the later stages from cwd B as a Ray job would (absolute
    run.root and data); and a reference run of every stage from one cwd."""
    base = tmp_path_factory.mktemp("paths")
    a, b = base / "a", base / "b"
    b.mkdir()
    shutil.copytree(demo_dir, a / "data")
    common = ["pipeline=demo", "demo_data.enabled=false", "run.executor=local", "run.progress=false",
              f"models.tiny_dir={base / 'tiny'}", "stages.mix.release_jsonl=true"]
    with cwd(a):
        _run([*common, "run.root=runs", "demo_data.dir=data"], FIRST)
    with cwd(b, job=True):
        _run([*common, f"run.root={a / 'runs'}", f"demo_data.dir={a / 'data'}"], LATER)
    with cwd(a):
        _run([*common, f"run.root={base / 'ref'}", "demo_data.dir=data"], FIRST + LATER)
    return base, a / "runs" / "demo", base / "ref" / "demo", common


def _rows(run: Path, table: str) -> list[dict]:
    return sorted(TableStore(run).read(table).to_pylist(), key=lambda r: r["id"])


def test_a_later_stage_from_another_cwd_reads_every_input(two_cwds):
    _, moved, ref, _ = two_cwds
    concepts = _rows(moved, "concepts")
    assert concepts and not [r for r in concepts if (r["error"] or "").split(":")[0] in ("unreadable", "not_found")]
    assert sum(r["origin"] == "generate" for r in concepts) >= 12   # the VLM read every decodable image
    for table in ("images", "audio_files", "audio_chunks", "concepts", "captions", "kept_images", "matches", "mixes"):
        assert _rows(moved, table) == _rows(ref, table), table


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_stored_paths_are_relative_to_their_source_roots(two_cwds):
    base, moved, _, _ = two_cwds
    store = TableStore(moved)
    for table in ("images", "audio_files", "audio_chunks", "mixes", "matches", "concepts", "kept_images"):
        for row in store.read(table).to_pylist():
            row.pop("error")   # an error's detail names the file where it was read, for whoever reads the message
            leaked = [s for s in _strings(row) if str(base) in s or os.path.isabs(s)]
            assert not leaked, (table, leaked)
    images = {r["source"]: r for r in store.read("images").to_pylist() if r["status"] == "ok"}
    assert images["demo_sa1b"]["uri"].startswith("sa_000000.tar#")                  # a tar member: tar#member
    audio = store.read("audio_files").to_pylist()
    assert {r["uri"] for r in audio if r["source"] == "demo_labelled"} >= {"labelled/crowd_cheer.flac"}   # a list's entries
    assert all("relpath" not in r for r in audio)
    release = pq.read_table(moved / "release" / "release.parquet").to_pylist()
    jsonl = (moved / "release" / "release.jsonl").read_text()
    assert release and str(base) not in jsonl
    assert not [s for r in release for s in _strings(r) if os.path.isabs(s)]


def _mix(*args: str) -> tuple[int, str]:
    import io
    from contextlib import redirect_stderr

    from sonify.mix import main as mix_main

    err = io.StringIO()
    with redirect_stderr(err):
        code = mix_main(["--no-progress", "--workers", "1", *args])
    return code, err.getvalue()


def test_a_release_rebuilds_after_the_corpora_moved(two_cwds, tmp_path):
    base, moved, _, _ = two_cwds
    manifest = str(moved / "release" / "release.parquet")
    new = tmp_path / "elsewhere" / "corpora"
    shutil.copytree(base / "a" / "data", new)
    ok = [m for m in TableStore(moved).read("mixes").to_pylist() if m["status"] == "ok"]
    hidden = base / "a" / "data.away"
    (base / "a" / "data").rename(hidden)   # the old place is gone: only the new roots can serve
    try:
        pipeline = tmp_path / "here.yaml"
        pipeline.write_text(yaml.safe_dump({"sources": {"audio": [
            {"name": "demo_sfx", "kind": "folder", "path": str(new / "audio")},
            {"name": "demo_labelled", "kind": "csv", "path": str(new / "labelled.csv")}]}}))
        for how, roots in (("flags", ["--source", f"demo_sfx={new / 'audio'}", "--source", f"demo_labelled={new}"]),
                           ("pipeline", ["--pipeline", str(pipeline)])):
            out = tmp_path / how
            code, err = _mix("--manifest", manifest, "--out", str(out), "--check", *roots)
            assert code == 0, err
            for m in ok:   # byte-identical mixtures: mixes/<partition>/<variant key>/<image>.flac -> <variant key>/<image>.flac
                assert hashlib.sha256((out / m["path"].split("/", 2)[2]).read_bytes()).hexdigest() == m["flac_sha256"], how
        assert {c["source"] for r in pq.read_table(manifest).to_pylist() for c in r["components"]} >= {"demo_sfx"}
        code, err = _mix("--manifest", manifest, "--out", str(tmp_path / "x"), "--source", f"demo_labelled={new}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "'demo_sfx'" in lines[0] and "--source demo_sfx=DIR" in lines[0]
        code, err = _mix("--manifest", manifest, "--out", str(tmp_path / "x"), "--source", f"demo_sfx={hidden / 'gone'}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "'demo_sfx'" in lines[0] and "is not a folder" in lines[0]
        assert not (tmp_path / "x").exists() or not list((tmp_path / "x").rglob("*.flac"))
    finally:
        hidden.rename(base / "a" / "data")


def test_moving_the_corpora_recomputes_nothing_and_reads_from_the_new_place(two_cwds, tmp_path):
    """The tables do not depend on where the corpora live: pointed at a moved copy, every partition is kept,
    and a stage that reads the sources (forced) reads them from there."""
    base, moved, _, common = two_cwds
    shutil.copytree(moved, tmp_path / "runs" / "demo")
    shutil.copytree(base / "a" / "data", tmp_path / "corpora")
    args = [*common, f"run.root={tmp_path / 'runs'}", f"demo_data.dir={tmp_path / 'corpora'}"]
    runs = _run(args, ("images", "audio", "embed_audio", "mix"))
    assert all(r.computed == 0 and r.skipped == r.partitions for r in runs.values()), {s: (r.computed, r.skipped) for s, r in runs.items()}
    before = _rows(tmp_path / "runs" / "demo", "mixes")
    hidden = base / "a" / "data.away"
    (base / "a" / "data").rename(hidden)   # the old place is gone: only the new roots can serve
    try:
        forced = _run([*args, "run.force=true"], ("mix",))
    finally:
        hidden.rename(base / "a" / "data")
    assert forced["mix"].computed > 0 and _rows(tmp_path / "runs" / "demo", "mixes") == before


@pytest.mark.parametrize("kind", ["images", "audio"])
def test_bad_inputs_keep_their_reasons_with_relative_storage(tmp_path, kind, make_cfg, demo_dir):
    """Outside links, FIFOs, folders named like media files and missing list entries are still error rows with
    their true reasons when the source is configured by a relative path and the table stores relative paths."""
    ext, good = (".jpg", demo_dir / "images" / "scene_001.jpg") if kind == "images" else (".wav", demo_dir / "audio" / "dog_bark_16000hz_1ch.wav")
    root, outside = tmp_path / "src", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(good, root / f"good{ext}")
    shutil.copy(good, outside / f"secret{ext}")
    os.mkfifo(root / f"fifo{ext}")
    (root / f"folder{ext}").mkdir()
    (root / f"link_out{ext}").symlink_to(outside / f"secret{ext}")
    (tmp_path / "list.csv").write_text(f"uri\nsrc/good{ext}\nsrc/missing{ext}\n{outside / f'secret{ext}'}\n")
    sources = f"[{{name: dir, kind: folder, path: src}}, {{name: lst, kind: csv, path: list.csv, root: src}}]"
    with cwd(tmp_path):
        cfg = make_cfg(f"sources.{kind}={sources}")
    table = "images" if kind == "images" else "audio_files"
    run_stage(get_stage(kind), cfg, progress_bar=False)
    rows = {(r["source"], r["uri"]): r for r in TableStore(cfg.run.dir).read(table).to_pylist()}
    reason = lambda key: (rows[key]["error"] or "ok").split(":")[0]
    assert reason(("dir", f"good{ext}")) == "ok" and reason(("lst", f"good{ext}")) == "ok"
    assert reason(("dir", f"fifo{ext}")) == "not_a_file" and reason(("dir", f"folder{ext}")) == "not_a_file"
    assert reason(("dir", f"link_out{ext}")) == "outside_root"
    assert reason(("lst", f"missing{ext}")) == "not_found"
    # an absolute entry outside the root: an error row naming the `root` setting (it could never be rebuilt)
    assert reason(("lst", str(outside / f"secret{ext}"))) == "outside_root"
    assert "set root: on that source" in rows[("lst", str(outside / f"secret{ext}"))]["error"]
    assert all(not os.path.isabs(u) for (s, u) in rows if u != str(outside / f"secret{ext}"))


def test_the_rules_of_declared_roots(tmp_path):
    from sonify.engine.errors import error_text
    from sonify.sources import SourcePaths, list_entries, list_entry, source_root

    lst = tmp_path / "meta" / "list.csv"
    assert list_entry("a/b.wav", lst, tmp_path / "meta") == "a/b.wav"               # relative to the list's folder
    assert list_entry("../audio/b.wav", lst, tmp_path) == "audio/b.wav"             # ... stored under a declared root
    assert list_entry(str(tmp_path / "audio/b.wav"), lst, tmp_path) == "audio/b.wav"   # absolute inside: relative
    assert list_entry(f"file://{tmp_path}/audio/b.wav", lst, tmp_path) == "audio/b.wav"
    assert list_entry("/elsewhere/b.wav", lst, tmp_path) == "/elsewhere/b.wav"     # absolute outside: its key, and an error
    assert list_entries(["/elsewhere/b.wav", "../../x.wav", "a.wav"], lst, tmp_path, "l")[1][0].startswith("outside_root: ")
    assert list_entries(["/elsewhere/b.wav", "../../x.wav", "a.wav"], lst, tmp_path, "l")[1][1:] == [
        error_text("outside_root", f"../../x.wav is outside the root {tmp_path} of list source 'l': set root: on that source "
                                   "to a folder holding every entry (root: / for any absolute path); stored paths are "
                                   "relative to it, so releases rebuild"), None]
    assert list_entries(["/elsewhere/b.wav"], lst, "/", "l") == (["elsewhere/b.wav"], [None])   # root: / takes any path
    assert list_entry("https://x.org/a.jpg", lst, tmp_path) == "https://x.org/a.jpg"
    (tmp_path / "one.tar").write_bytes(b"")
    assert source_root(SourceConf(name="t", kind="tar", path=str(tmp_path / "one.tar"))) == str(tmp_path)
    assert source_root(SourceConf(name="l", kind="csv", path=str(lst))) == str(tmp_path / "meta")
    assert source_root(SourceConf(name="l", kind="csv", path=str(lst), root="/data")) == "/data"
    assert source_root(SourceConf(name="r", kind="recipe", recipe="fsd50k", root="/data/fsd50k")) == "/data/fsd50k"
    paths = SourcePaths([SourceConf(name="f", kind="folder", path="/corpora/f")], "audio")
    assert paths.resolve("f", "x/y.wav") == "/corpora/f/x/y.wav" and paths.resolve("g", "/abs.wav") == "/abs.wav"
    with pytest.raises(FileNotFoundError, match="source 'g' is not in sources.audio"):
        paths.resolve("g", "x.wav")


def test_relative_source_roots_are_made_absolute_on_the_driver_and_refused_in_a_job(tmp_path):
    over = ["pipeline=demo", f"run.root={tmp_path / 'runs'}", "sources.audio=[{name: a, kind: folder, path: sounds}]"]
    with cwd(tmp_path):
        assert load_config(over).sources.audio[0].path == str(tmp_path / "sounds")
    with cwd(tmp_path, job=True), pytest.raises(ConfigError) as e:
        load_config(over)
    assert "\n" not in str(e.value) and "key 'sources.audio[0].path'" in str(e.value) and "absolute" in str(e.value)
