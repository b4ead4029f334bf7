import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sonify.engine.config import SourceConf
from sonify.media.image import ImageRejected, inspect_image, load_rgb
from sonify.sources import SourcePaths
from sonify.sources.images import list_images, read_image_bytes
from sonify.stages.images import ImagesStage


def _by_name(rows):
    return {r["uri"].rsplit("/", 1)[-1].rsplit("#", 1)[-1]: r for r in rows}


def test_images_stage_on_demo_sources(make_cfg):
    cfg = make_cfg()
    work = ImagesStage.work_list(cfg, None)
    rows = ImagesStage(cfg).process_batch(work)["images"].to_pylist()
    assert len(rows) == work.num_rows and len({r["id"] for r in rows}) == len(rows)
    by = _by_name(rows)
    for name, mode in [("gray.png", "L"), ("gray_alpha.png", "LA"), ("rgba.png", "RGBA"), ("palette.gif", "P"),
                       ("cmyk.jpg", "CMYK"), ("deep16.png", "I;16")]:
        assert by[name]["status"] == "ok" and by[name]["mode"] == mode, name
    rot = by["exif_rotated.jpg"]
    assert (rot["width"], rot["height"], rot["exif_orientation"]) == (120, 200, 6)
    assert by["corrupt.jpg"]["error"].startswith("corrupt:")
    assert by["truncated.jpg"]["error"].startswith("truncated:")
    assert by["empty.png"]["error"].startswith("empty:")
    assert by["huge.png"]["error"].startswith("decompression_bomb:")
    sa = [r for r in rows if r["source"] == "demo_sa1b"]
    assert len(sa) == 6 and all(r["status"] == "ok" and r["format"] == "JPEG" and r["tar_offset"] > 0 for r in sa)
    assert all(len(r["sha256"]) == 64 for r in rows if r["status"] == "ok")


def test_header_only_check_misses_truncation_but_full_catches_it(demo_dir):
    data = (demo_dir / "images/broken/truncated.jpg").read_bytes()
    assert inspect_image(data, 10**8, full_decode=False).format == "JPEG"
    with pytest.raises(ImageRejected) as e:
        inspect_image(data, 10**8, full_decode=True)
    assert e.value.reason == "truncated"


def test_configurable_pixel_limit(make_cfg, tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000)).save(p)
    listing = pa.Table.from_pylist([{"id": "b", "source": "s", "uri": str(p), "tar_offset": None, "nbytes": None, "list_error": None}])
    ok = ImagesStage(make_cfg()).process_batch(listing)["images"].to_pylist()[0]
    assert ok["status"] == "ok"
    bomb = ImagesStage(make_cfg("stages.images.max_pixels=1000000")).process_batch(listing)["images"].to_pylist()[0]
    assert bomb["error"].startswith("decompression_bomb:") and "1000000" in bomb["error"]


@pytest.mark.parametrize("name", ["gray.png", "gray_alpha.png", "rgba.png", "palette.gif", "cmyk.jpg", "deep16.png", "exif_rotated.jpg"])
def test_load_rgb_turns_every_mode_into_bounded_upright_rgb(demo_dir, name):
    im = load_rgb((demo_dir / "images/awkward" / name).read_bytes(), 10**8, max_side=100)
    assert im.mode == "RGB" and max(im.size) <= 100
    if name == "exif_rotated.jpg":
        assert im.size[1] > im.size[0]  # portrait after applying orientation 6
    if name == "deep16.png":
        assert np.asarray(im).max() > 200  # 16-bit range scaled, not clipped to black


def test_load_rgb_alpha_composited_on_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert load_rgb(buf.getvalue(), 10**6).getpixel((0, 0)) == (255, 255, 255)


def test_tar_listing_reads_members_by_offset_and_survives_a_broken_tar(tmp_path):
    good = tmp_path / "shards"
    good.mkdir()
    with tarfile.open(good / "a.tar", "w") as tf:
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (10 + i, 10)).save(buf, "JPEG")
            info = tarfile.TarInfo(f"sa_{i}.jpg")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    (good / "b.tar").write_bytes(b"not a tar at all" * 10)
    src = SourceConf(name="sa", kind="tar", path=str(good))
    listing = list_images(src, [".jpg"]).to_pylist()
    members = [r for r in listing if r["list_error"] is None]
    assert len(members) == 3 and {r["uri"] for r in members} == {f"a.tar#sa_{i}.jpg" for i in range(3)}
    for r in members:
        im = Image.open(io.BytesIO(read_image_bytes(SourcePaths([src]).locate(r), r["tar_offset"], r["nbytes"])))
        assert im.size[1] == 10
    broken = [r for r in listing if r["list_error"]]
    assert len(broken) == 1 and broken[0]["list_error"].startswith("unreadable_tar:")


def test_parquet_uri_list_source(tmp_path, make_cfg):
    img = tmp_path / "one.png"
    Image.new("RGB", (5, 7)).save(img)
    pq.write_table(pa.table({"uri": ["one.png", str(tmp_path / "gone.jpg"), None]}), tmp_path / "list.parquet")
    cfg = make_cfg(f"sources.images=[{{name: lst, kind: parquet, path: '{tmp_path / 'list.parquet'}'}}]")
    listing = list_images(cfg.sources.images[0], [".png"])
    assert listing.column("uri").to_pylist() == ["one.png", "gone.jpg"]   # relative to the list's folder, its root
    rows = ImagesStage(cfg).process_batch(listing)["images"].to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[0]["width"] == 5 and rows[1]["error"].startswith("not_found:")


def test_missing_source_path_is_an_error_row():
    rows = list_images(SourceConf(name="x", kind="folder", path="/nonexistent/dir"), [".jpg"]).to_pylist()
    assert len(rows) == 1 and rows[0]["list_error"].startswith("not_found:")


def test_url_list_source_against_a_local_http_server(tmp_path, make_cfg):
    """Images listed by http URL: fetched, checked, and a 404 or a corrupt body is an error row."""
    import functools
    import http.server
    import threading

    Image.new("RGB", (9, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        pq.write_table(pa.table({"uri": [f"{base}/ok.png", f"{base}/missing.png", f"{base}/bad.jpg"]}), tmp_path / "urls.parquet")
        listing = list_images(SourceConf(name="web", kind="parquet", path=str(tmp_path / "urls.parquet")), [".png"])
        rows = ImagesStage(make_cfg()).process_batch(listing)["images"].to_pylist()
    finally:
        server.shutdown()
        server.server_close()
    assert rows[0]["status"] == "ok" and (rows[0]["width"], rows[0]["height"]) == (9, 4)
    assert rows[1]["error"].startswith("unreadable:") and "404" in rows[1]["error"]
    assert rows[2]["error"].startswith("corrupt:")


def test_many_tars_are_listed_in_parallel_with_the_serial_result(tmp_path):
    """Tar sources list several tars at once (processes); the work list is the same as one at a time."""
    import io
    import tarfile

    from sonify.engine.config import SourceConf
    from sonify.sources.images import list_images

    for t in range(24):
        with tarfile.open(tmp_path / f"sa_{t:06d}.tar", "w") as tf:
            for i in range(3):
                data = f"image {t} {i}".encode()
                info = tarfile.TarInfo(f"sa_{t * 10 + i}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (tmp_path / "sa_999999.tar").write_bytes(b"not a tar at all" * 64)
    serial = list_images(SourceConf(name="sa", kind="tar", path=str(tmp_path), list_workers=1), [".jpg"])
    parallel = list_images(SourceConf(name="sa", kind="tar", path=str(tmp_path), list_workers=8), [".jpg"])
    assert parallel.equals(serial) and serial.num_rows == 24 * 3 + 1
    assert [e for e in serial.column("list_error").to_pylist() if e] == [e for e in parallel.column("list_error").to_pylist() if e]
    assert any((e or "").startswith("unreadable_tar") for e in parallel.column("list_error").to_pylist())
