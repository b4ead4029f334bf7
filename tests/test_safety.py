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


def _run_stage(stage_cls, make_cfg, listing: pa.Table, table: str):
    """Process a listing on a thread with a deadline: a hang fails the test instead of blocking the suite."""
    stage = stage_cls(make_cfg())
    result = {}
    t = threading.Thread(target=lambda: result.update(rows=stage.process_batch(listing)[table].to_pylist()), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the stage hung"
    return {r["relpath"]: r for r in result["rows"]}


@pytest.mark.parametrize("kind", ["images", "audio"])
def test_fifo_folder_and_outside_link_are_error_rows(tmp_path, make_cfg, kind):
    root, _ = _hostile_folder(tmp_path, kind)
    ext = ".jpg" if kind == "images" else ".wav"
    src = SourceConf(name="hostile", kind="folder", path=str(root))
    if kind == "images":
        listing = list_images(src, IMAGE_EXTS)
        rows = _run_stage(ImagesStage, make_cfg, listing, "images")
    else:
        listing = list_audio(src, AUDIO_EXTS)
        rows = _run_stage(AudioStage, make_cfg, listing, "audio_files")
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
    by = {r["relpath"]: r for r in listing}
    assert by[f"link_out{ext}"]["list_error"] is None and by[f"dir_out/secret{ext}"]["list_error"] is None
    assert by[f"fifo{ext}"]["list_error"].startswith("not_a_file:")   # following links never makes a FIFO readable


def test_fifo_listed_by_a_uri_list_is_refused_when_read(tmp_path, make_cfg):
    """List sources name any path: the stages check the file type when they read, without blocking."""
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe.wav")
    img = pa.Table.from_pylist([{"id": "a", "source": "s", "uri": str(tmp_path / "pipe.jpg"), "relpath": "pipe.jpg",
                                 "tar_offset": None, "nbytes": None, "list_error": None}])
    aud = pa.Table.from_pylist([{"id": "b", "source": "s", "uri": str(tmp_path / "pipe.wav"), "relpath": "pipe.wav",
                                 "labels": [], "list_error": None}])
    assert _run_stage(ImagesStage, make_cfg, img, "images")["pipe.jpg"]["error"].startswith("not_a_file:")
    assert _run_stage(AudioStage, make_cfg, aud, "audio_files")["pipe.wav"]["error"].startswith("not_a_file:")


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
    listing = pa.Table.from_pylist([{"id": "u", "source": "s", "uri": url, "relpath": url, "tar_offset": None,
                                     "nbytes": None, "list_error": None}])
    t0 = time.monotonic()
    try:
        stage = ImagesStage(make_cfg("stages.images.url_timeout_s=1"))
        row = stage.process_batch(listing)["images"].to_pylist()[0]
    finally:
        stop.set()
        srv.close()
    assert row["error"].startswith("timeout:") and time.monotonic() - t0 < 10
