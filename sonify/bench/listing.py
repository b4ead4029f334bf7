"""Listing a tar image source (SA-1B style: uncompressed tars of JPEG + JSON) in processes, against one at a time.

    python -m sonify.bench listing [--tars 200] [--images-per-tar 500] [--workers 0] [--repeats 3]
                                   [--folders 200] [--files-per-folder 500]

Then a folder source of `--folders` sub-folders (`--folders 0`: none), walked by processes against
the serial walk, in the same run, over the same files.

Baselines in the same run, same tars, same `tarfile` header parsing: the source listed serially
(`list_workers=1`), and the former way, `_list_tar` over a thread pool (threads share the GIL while
`tarfile` parses headers in Python). SA-1B is 1,000 tars of ~11K images; the listing is its first step.

Wall times depend on the cores free: on a machine others load, extra processes get no more CPU (the
kernel shares it per session), so the CPU seconds are printed too: the serial listing's, and for the
processes the driver's plus the busiest worker's (the critical path), whose ratio is the speed-up
with a free core per worker (a projection from measured CPU seconds, labelled as such).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from sonify.bench.common import bench_args, best_of_interleaved


def make_sa1b_tars(folder: Path, tars: int, images_per_tar: int) -> list[Path]:
    """`sa_NNNNNN.tar` files as SA-1B ships them: per image a JPEG and its JSON annotations (tiny payloads:
    listing reads headers only)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (120, 80, 40)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in range(tars):
        path = folder / f"sa_{t:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(images_per_tar):
                n = t * images_per_tar + i
                ann = json.dumps({"image": {"image_id": n, "file_name": f"sa_{n}.jpg", "width": 8, "height": 6},
                                  "annotations": []}).encode()
                for name, data in ((f"sa_{n}.jpg", jpeg), (f"sa_{n}.json", ann)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def main(argv=None) -> None:
    a = bench_args("listing", __doc__, argv, tars=200, images_per_tar=500, workers=(0, "processes (0: one per core)"), repeats=3,
                   folders=(200, "a folder source of this many sub-folders (0: skip)"), files_per_folder=500)

    from sonify.engine.config import SourceConf
    from sonify.sources.images import _list_tar, list_images

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        root = Path(tmp) / "sa1b"
        tars = make_sa1b_tars(root, a.tars, a.images_per_tar)
        conf = lambda workers: SourceConf(name="sa1b", kind="tar", path=str(root), list_workers=workers)
        one_tar = partial(_list_tar, "sa1b", base=str(root), exts={".jpg"})
        threads = max(2, a.workers or os.cpu_count() or 1)

        def threaded():
            with ThreadPoolExecutor(max_workers=threads) as pool:
                return [r for part in pool.map(one_tar, tars) for r in part]

        t = best_of_interleaved({"serial": lambda: list_images(conf(1), [".jpg"]), "threads": threaded,
                                 "processes": lambda: list_images(conf(a.workers), [".jpg"])}, a.repeats)
        # CPU seconds of warm runs (after the timed ones: imports and caches are no part of the listing)
        cpu = {name: cpu_seconds(lambda: list_images(conf(w), [".jpg"])) for name, w in (("serial", 1), ("processes", a.workers))}
        assert cpu["processes"][0].equals(cpu["serial"][0]) and cpu["serial"][0].num_rows == a.tars * a.images_per_tar
    n = a.tars * a.images_per_tar
    print(f"{a.tars} tars x {a.images_per_tar} images (JPEG + JSON: {2 * n} members), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, best of {a.repeats}; the listings are identical")
    print(f"{'how':<28} {'seconds':>8} {'images/s':>10} {'vs serial':>10}")
    for name, label in (("serial", "serial (list_workers=1)"), ("threads", f"threads ({threads}, the former way)"),
                        ("processes", f"processes (list_workers={a.workers})")):
        print(f"{label:<28} {t[name]:>8.2f} {n / t[name]:>10.0f} {t['serial'] / t[name]:>9.2f}x")
    (_, serial_cpu, _), (_, driver_cpu, workers_cpu) = cpu["serial"], cpu["processes"]
    path = driver_cpu + max(workers_cpu.values())
    print(f"CPU seconds: serial {serial_cpu:.2f}; processes: driver {driver_cpu:.2f} + workers "
          f"{' / '.join(f'{c:.2f}' for c in sorted(workers_cpu.values()))} (critical path {path:.2f}); "
          f"projected with a free core per worker: {serial_cpu / path:.2f}x vs serial")
    if a.folders:
        folders(a)


def folders(a) -> None:
    """A folder of `a.folders` sub-folders of `a.files_per_folder` empty `.jpg` files: serial walk vs processes."""
    from sonify.engine.config import SourceConf
    from sonify.sources.images import list_images

    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        root = Path(tmp) / "images"
        for d in range(a.folders):
            sub = root / f"{d:06d}"
            sub.mkdir(parents=True)
            for n in range(a.files_per_folder):
                (sub / f"{n}.jpg").touch()
        conf = lambda workers: SourceConf(name="img", kind="folder", path=str(root), list_workers=workers)
        t = best_of_interleaved({"serial": lambda: list_images(conf(1), [".jpg"]),
                                 "processes": lambda: list_images(conf(a.workers), [".jpg"])}, a.repeats)
        same = list_images(conf(a.workers), [".jpg"]).equals(list_images(conf(1), [".jpg"]))
        assert same
    n = a.folders * a.files_per_folder
    print(f"\nfolder source: {a.folders} sub-folders x {a.files_per_folder} files, best of {a.repeats}; the listings are identical")
    print(f"{'how':<28} {'seconds':>8} {'files/s':>10} {'vs serial':>10}")
    for name, label in (("serial", "serial (list_workers=1)"), ("processes", f"processes (list_workers={a.workers})")):
        print(f"{label:<28} {t[name]:>8.2f} {n / t[name]:>10.0f} {t['serial'] / t[name]:>9.2f}x")


def cpu_seconds(listing):
    """(the listing, this process's CPU seconds for it, CPU seconds per process that listed tars, from the
    source's own debug record)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("sonify.sources.images")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        cpu = time.process_time()
        table = listing()
        cpu = time.process_time() - cpu
    finally:
        logger.removeHandler(handler)
    by_pid = next(r.cpu_by_pid for r in records if hasattr(r, "cpu_by_pid"))
    own = by_pid.pop(os.getpid(), 0.0)      # serial: the tars were listed here, inside `cpu`
    return table, cpu - own if by_pid else cpu, by_pid or {os.getpid(): own}


if __name__ == "__main__":
    main()
