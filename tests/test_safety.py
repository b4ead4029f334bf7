"""Hostile inputs: odd files in sources, crafted release manifests, bad settings (issue 13).

Nothing is written outside its folder, nothing hangs, every refusal is one line or an error row."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from sonify.engine.config import SourceConf
from sonify.sources.audio import list_audio
from sonify.sources.images import list_images
from sonify.stages.audio import AudioStage
from sonify.stages.images import ImagesStage

IMAGE_EXTS = [".jpg", ".png"]
AUDIO_EXTS = [".wav", ".flac"]


def _hostile_folder(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A source folder with one good file, a FIFO, a folder named like a media file and a link out of the root."""
    root, outside = tmp_path / f"{kind}_src", tmp_path / f"{kind}_outside"
    root.mkdir()
    outside.mkdir()
    ext = ".jpg" if kind == "images" else ".wav"

    def good(path: Path):
        if kind == "images":
            Image.new("RGB", (32, 24), (200, 10, 10)).save(path, "JPEG")
        else:
            sf.write(path, 0.5 * np.sin(np.linspace(0, 800, 16000)).astype(np.float32), 16000)

    good(root / f"good{ext}")
    os.mkfifo(root / f"fifo{ext}")
    (root / f"folder{ext}").mkdir()
    good(root / f"folder{ext}" / f"inner{ext}")           # a real file inside the oddly named folder: still listed
    good(outside / f"secret{ext}")
    (root / f"link_out{ext}").symlink_to(outside / f"secret{ext}")
    (root / "dir_out").symlink_to(outside)                 # a linked folder leading outside
    (root / f"link_in{ext}").symlink_to(root / f"good{ext}")   # a link that stays inside: fine
    return root, outside


def _run_stage(stage_cls, make_cfg, listing: pa.Table, table: str, *overrides: str):
    """Process a listing on a thread with a deadline: a hang fails the test instead of blocking the suite."""
    stage = stage_cls(make_cfg(*overrides))
    result = {}
    t = threading.Thread(target=lambda: result.update(rows=stage.process_batch(listing)[table].to_pylist()), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the stage hung"
    return {r["uri"]: r for r in result["rows"]}


@pytest.mark.parametrize("kind", ["images", "audio"])
def test_fifo_folder_and_outside_link_are_error_rows(tmp_path, make_cfg, kind):
    root, _ = _hostile_folder(tmp_path, kind)
    ext = ".jpg" if kind == "images" else ".wav"
    src = SourceConf(name="hostile", kind="folder", path=str(root))
    configured = f"sources.{kind}=[{{name: hostile, kind: folder, path: '{root}'}}]"   # stored paths resolve against it
    if kind == "images":
        listing = list_images(src, IMAGE_EXTS)
        rows = _run_stage(ImagesStage, make_cfg, listing, "images", configured)
    else:
        listing = list_audio(src, AUDIO_EXTS)
        rows = _run_stage(AudioStage, make_cfg, listing, "audio_files", configured)
    assert set(rows) == {f"good{ext}", f"fifo{ext}", f"folder{ext}", f"folder{ext}/inner{ext}", f"link_out{ext}",
                         "dir_out", f"link_in{ext}"}
    for ok in (f"good{ext}", f"folder{ext}/inner{ext}", f"link_in{ext}"):
        assert rows[ok]["status"] == "ok", rows[ok]
    assert rows[f"fifo{ext}"]["error"].startswith("not_a_file:") and "FIFO" in rows[f"fifo{ext}"]["error"]
    assert rows[f"folder{ext}"]["error"].startswith("not_a_file:") and "directory" in rows[f"folder{ext}"]["error"]
    assert rows[f"link_out{ext}"]["error"].startswith("outside_root:")
    assert rows["dir_out"]["error"].startswith("outside_root:")
    assert all(r["status"] == "error" for k, r in rows.items() if k not in (f"good{ext}", f"folder{ext}/inner{ext}", f"link_in{ext}"))


@pytest.mark.parametrize("kind", ["images", "audio"])
def test_follow_outside_links_on_purpose(tmp_path, make_cfg, kind):
    root, _ = _hostile_folder(tmp_path, kind)
    ext = ".jpg" if kind == "images" else ".wav"
    src = SourceConf(name="hostile", kind="folder", path=str(root), follow_outside_links=True)
    lister = list_images if kind == "images" else list_audio
    listing = lister(src, IMAGE_EXTS if kind == "images" else AUDIO_EXTS).to_pylist()
    by = {r["uri"]: r for r in listing}
    assert by[f"link_out{ext}"]["list_error"] is None and by[f"dir_out/secret{ext}"]["list_error"] is None
    assert by[f"fifo{ext}"]["list_error"].startswith("not_a_file:")   # following links never makes a FIFO readable


def test_fifo_listed_by_a_uri_list_is_refused_when_read(tmp_path, make_cfg):
    """List sources name any path: the stages check the file type when they read, without blocking."""
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe.wav")
    img = pa.Table.from_pylist([{"id": "a", "source": "s", "uri": str(tmp_path / "pipe.jpg"),
                                 "tar_offset": None, "nbytes": None, "list_error": None}])
    aud = pa.Table.from_pylist([{"id": "b", "source": "s", "uri": str(tmp_path / "pipe.wav"),
                                 "labels": [], "list_error": None}])
    assert _run_stage(ImagesStage, make_cfg, img, "images")[str(tmp_path / "pipe.jpg")]["error"].startswith("not_a_file:")
    assert _run_stage(AudioStage, make_cfg, aud, "audio_files")[str(tmp_path / "pipe.wav")]["error"].startswith("not_a_file:")


def test_fifo_named_like_a_tar_in_a_tar_source(tmp_path):
    root = tmp_path / "tars"
    root.mkdir()
    os.mkfifo(root / "sa_000001.tar")
    rows = list_images(SourceConf(name="t", kind="tar", path=str(root)), IMAGE_EXTS).to_pylist()
    assert [r["list_error"].split(":")[0] for r in rows] == ["not_a_file"]


def test_a_url_that_drips_bytes_times_out(make_cfg):
    """The socket timeout bounds one read; the deadline bounds the whole body."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def drip():
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b"x")
            except OSError:
                break
            time.sleep(0.05)
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/slow.jpg"
    listing = pa.Table.from_pylist([{"id": "u", "source": "s", "uri": url, "tar_offset": None,
                                     "nbytes": None, "list_error": None}])
    t0 = time.monotonic()
    try:
        stage = ImagesStage(make_cfg("stages.images.url_timeout_s=1"))
        row = stage.process_batch(listing)["images"].to_pylist()[0]
    finally:
        stop.set()
        srv.close()
    assert row["error"].startswith("timeout:") and time.monotonic() - t0 < 10


# --- sonify.mix on crafted manifests -------------------------------------------------------------

def _manifest_rows(n: int = 3) -> list[dict]:
    comp = {"source": "d", "uri": "tone.wav", "source_rate": 16000, "start_frame": 0, "num_frames": 16000,
            "gain_db": -6.0}
    return [{"mix_id": f"m{i}", "path": f"v/m{i}.flac", "sample_rate": 16000, "chunk_seconds": 1.0,
             "mix_gain_db": 0.0, "components": [comp]} for i in range(n)]


@pytest.fixture
def mixdir(tmp_path):
    """An audio root with one tone, and a helper that writes a manifest and runs sonify.mix on it."""
    from sonify.mix import main as mix_main
    from sonify.mixing.release import RELEASE_SCHEMA

    (tmp_path / "audio" / "d").mkdir(parents=True)
    sf.write(tmp_path / "audio" / "d" / "tone.wav", 0.3 * np.sin(np.arange(16000) * 0.2).astype(np.float32), 16000)

    def run(rows, out=None, table=None, capsys=None):
        manifest = tmp_path / "release.parquet"
        pq.write_table(table if table is not None else pa.Table.from_pylist(rows, schema=RELEASE_SCHEMA), manifest)
        return mix_main(["--manifest", str(manifest), "--out", str(out or tmp_path / "out"), "--no-progress",
                         "--workers", "1", "--audio-root", str(tmp_path / "audio")])

    return tmp_path, run


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_output_paths_outside_out_are_refused_one_line_each(mixdir, capsys):
    tmp, run = mixdir
    out = tmp / "work" / "out"
    outside = tmp / "work" / "elsewhere"
    outside.mkdir(parents=True)
    out.mkdir()
    (out / "linked").symlink_to(outside)            # a subfolder of --out that leads elsewhere
    rows = _manifest_rows(5)
    rows[0]["path"] = str(tmp / "work" / "abs.flac")  # absolute
    rows[1]["path"] = "../escaped.flac"               # climbs out
    rows[2]["path"] = "v/../../escaped2.flac"
    rows[3]["path"] = "linked/through_link.flac"      # through the link
    before = {str(p) for p in tmp.rglob("*")}
    assert run(rows, out=out) == 1
    err = capsys.readouterr().err.splitlines()
    refused = [line for line in err if "refused: output path" in line]
    assert len(refused) == 4 and all(f"m{i}:" in refused[i] for i in range(4))
    created = {str(p) for p in tmp.rglob("*")} - before - {str(tmp / "release.parquet")}
    assert all(Path(p).is_relative_to(out) and not Path(p).is_relative_to(out / "linked") for p in created), created
    assert not list(outside.iterdir()) and not (tmp / "work" / "abs.flac").exists()
    assert (out / "v" / "m4.flac").is_file()           # the good row still rendered
    report = {r["mix_id"]: r for r in pq.read_table(out / "render_report.parquet").to_pylist()}
    assert [(report[f"m{i}"]["error"] or "ok").split(":")[0] for i in range(5)] == ["refused"] * 4 + ["ok"]


def test_duplicate_output_paths_are_refused_before_rendering(mixdir, capsys):
    tmp, run = mixdir
    rows = _manifest_rows(3)
    rows[2]["path"] = "v/./m0.flac"                   # the same file as row 0, spelled differently
    assert run(rows) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "claimed by more than one row" in err and "m0" in err and "m2" in err
    assert not _files(tmp / "out")                    # nothing rendered


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.drop_columns(["path"]), "missing column 'path'"),
    (lambda t: t.drop_columns(["components"]), "missing column 'components'"),
    (lambda t: t.drop_columns(["sample_rate"]), "missing column 'sample_rate'"),
    (lambda t: t.set_column(t.schema.get_field_index("sample_rate"), "sample_rate", pa.array(["16k"] * t.num_rows)),
     "column 'sample_rate' has type string"),
    (lambda t: t.set_column(t.schema.get_field_index("path"), "path", pa.array([1] * t.num_rows)),
     "column 'path' has type int64"),
    (lambda t: t.set_column(t.schema.get_field_index("components"), "components", pa.array(["x"] * t.num_rows)),
     "column 'components' has type string"),
    (lambda t: t.set_column(t.schema.get_field_index("path"), "path", pa.array([None] * t.num_rows, pa.string())),
     "column 'path' has 3 empty values"),
    (lambda t: t.set_column(t.schema.get_field_index("components"), "components",
                            pa.array([[{"source": "d", "start_frame": 0, "num_frames": 1, "gain_db": 0.0}]] * t.num_rows)),
     "column 'components.uri' is missing"),
])
def test_malformed_manifest_fails_in_one_line_naming_the_column(mixdir, capsys, change, fragment):
    from sonify.mixing.release import RELEASE_SCHEMA

    tmp, run = mixdir
    table = change(pa.Table.from_pylist(_manifest_rows(3), schema=RELEASE_SCHEMA))
    table = table.replace_schema_metadata(RELEASE_SCHEMA.metadata)
    assert run(None, table=table) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err, err
    assert not (tmp / "out").exists() or not _files(tmp / "out")


def test_malformed_jsonl_manifest_and_out_being_a_file(mixdir, tmp_path, capsys):
    from sonify.mix import main as mix_main

    tmp, run = mixdir
    bad = tmp / "bad.jsonl"
    rows = _manifest_rows(2)
    rows[1]["sample_rate"] = "fast"
    import json
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--no-progress", "--workers", "1", "--audio-root", str(tmp / "audio")]
    assert mix_main(["--manifest", str(bad), "--out", str(tmp / "o1"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'sample_rate'" in err
    bad.write_text("{not json\n")
    assert mix_main(["--manifest", str(bad), "--out", str(tmp / "o1"), *args]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
    (tmp / "a_file").write_text("x")
    assert run(_manifest_rows(1), out=tmp / "a_file") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a folder" in err and (tmp / "a_file").read_text() == "x"


def _killed_mid_write(target: Path) -> None:
    """A writer killed (SIGKILL) inside the one atomic write, as a crash or OOM kill leaves it."""
    code = ("import os, signal, sys; from sonify.engine.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half a flac'); os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)])
    assert proc.returncode == -signal.SIGKILL
    assert [p.name.startswith(".tmp-") for p in target.parent.iterdir()] == [True]


def test_temp_files_of_a_killed_render_are_removed_by_the_next(mixdir):
    tmp, run = mixdir
    _killed_mid_write(tmp / "out" / "v" / "m0.flac")
    assert run(_manifest_rows(2)) == 0
    assert _files(tmp / "out") == {"v/m0.flac", "v/m1.flac", "render_report.parquet"}


def test_temp_files_of_a_killed_mix_stage_are_removed_by_the_next_run(full_run, tmp_path):
    from conftest import copy_run

    from sonify.engine.executor import run_stage
    from sonify.stages import get_stage

    cfg = copy_run(full_run, tmp_path)
    mixes = Path(cfg.run.dir) / "mixes"
    target = next(mixes.rglob("*.flac"))
    odd = target.parent / "x" / "never.flac"
    _killed_mid_write(odd)
    assert not run_stage(get_stage("mix"), cfg, progress_bar=False).failed
    assert not [p for p in mixes.rglob(".tmp-*")] and target.is_file()


# --- bad settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, key", [
    ("stages.retrieve.k=0", "stages.retrieve.k"),
    ("stages.retrieve.k=-1", "stages.retrieve.k"),
    ("stages.images.partition_rows=0", "stages.images.partition_rows"),
    ("stages.mix.partition_rows=-5", "stages.mix.partition_rows"),
    ("stages.embed.batch_size=0", "stages.embed.batch_size"),
    ("stages.audio.concurrency=0", "stages.audio.concurrency"),
    ("stages.audio.chunk_seconds=0", "stages.audio.chunk_seconds"),
    ("stages.images.url_timeout_s=-1", "stages.images.url_timeout_s"),
    ("stages.retrieve.temperature=0", "stages.retrieve.temperature"),
    ("stages.retrieve.block_mb=-1", "stages.retrieve.block_mb"),
    ("stages.mix.sample_rate=0", "stages.mix.sample_rate"),
    ("stages.mix.lufs_max=-30", "stages.mix.lufs_max"),
    ("stages.mix.peak_ceiling_dbfs=3", "stages.mix.peak_ceiling_dbfs"),
    ("stages.shards.val_fraction=1.5", "stages.shards.val_fraction"),
    ("stages.shards.samples_per_shard=0", "stages.shards.samples_per_shard"),
    ("stages.features.input_frames=0", "stages.features.input_frames"),
    ("stages.images.max_pixels=0", "stages.images.max_pixels"),
    ("stages.concepts.max_concepts=0", "stages.concepts.max_concepts"),
    ("stages.audio.chunk_seconds=nan", "stages.audio.chunk_seconds"),
])
def test_bad_numeric_setting_is_one_line_and_exit_2(setting, key, capsys):
    from sonify.run import main

    assert main(["pipeline=demo", "stage=images", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("sonify: bad value") and f"key '{key}'" in err and "valid values" in err


def test_run_root_that_is_a_file_or_unwritable_is_one_line_and_exit_2(tmp_path, capsys):
    from sonify.run import main

    (tmp_path / "a_file").write_text("x")
    for root in (tmp_path / "a_file", tmp_path / "a_file" / "below", Path("/proc/sonify-runs"), Path("/sys/sonify-runs")):
        assert main(["pipeline=demo", "stage=images", f"run.root={root}", "run.executor=local"]) == 2, root
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"sonify: bad value '{root}' for key 'run.root'"), err
    assert (tmp_path / "a_file").read_text() == "x"
    if os.geteuid() != 0:   # root writes through permission bits; /proc and /sys above cover the unwritable case
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert main(["pipeline=demo", "stage=images", f"run.root={ro}", "run.executor=local"]) == 2
