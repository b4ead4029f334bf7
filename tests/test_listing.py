"""Listing a tar source (SA-1B style) over processes: the serial listing exactly, computed by several processes."""

import logging

from sonify.bench.listing import make_sa1b_tars
from sonify.engine.config import SourceConf
from sonify.sources.images import list_images
from sonify.engine.processes import process_map


def test_200_sa1b_tars_listed_by_several_processes_give_the_serial_listing(tmp_path, caplog):
    make_sa1b_tars(tmp_path / "sa1b", 200, 20)   # enough headers that both processes get work
    (tmp_path / "sa1b" / "sa_000100.tar").write_bytes(b"not a tar at all" * 64)    # an error row in the middle
    conf = lambda workers: SourceConf(name="sa", kind="tar", path=str(tmp_path / "sa1b"), list_workers=workers)
    with caplog.at_level(logging.DEBUG, logger="sonify.sources.images"):
        serial = list_images(conf(1), [".jpg"])
        parallel = list_images(conf(2), [".jpg"])
    serial_pids, parallel_pids = (set(r.cpu_by_pid) for r in caplog.records if hasattr(r, "cpu_by_pid"))
    assert len(serial_pids) == 1 and len(parallel_pids) == 2 and not serial_pids & parallel_pids
    assert parallel.equals(serial) and serial.num_rows == 199 * 20 + 1
    rel = serial.column("uri").to_pylist()
    assert rel[:2] == ["sa_000000.tar#sa_0.jpg", "sa_000000.tar#sa_1.jpg"] and rel[20] == "sa_000001.tar#sa_20.jpg"
    assert rel[2000] == "sa_000100.tar" and serial.column("list_error")[2000].as_py().startswith("unreadable_tar")
    assert rel[2001] == "sa_000101.tar#sa_2020.jpg"


def test_a_folder_of_folders_listed_by_several_processes_gives_the_serial_listing(tmp_path, caplog):
    """Sub-folders walked by processes and merged back: the same rows, the same order, the same reasons."""
    import os

    from sonify.sources.audio import list_audio

    root, outside = tmp_path / "corpus", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "o.jpg").write_bytes(b"x")
    for d in range(12):
        sub = root / f"d{d:02d}" / "inner"
        sub.mkdir(parents=True)
        for n in range(30):
            (sub / f"{n}.jpg").write_bytes(b"x")
            (sub.parent / f"{n}.wav").write_bytes(b"x")
    (root / "top.jpg").write_bytes(b"x")
    (root / "zz.jpg").write_bytes(b"x")
    (root / "d03" / "folder.jpg").mkdir()                       # a folder named like an image: not_a_file
    os.mkfifo(root / "d05" / "pipe.jpg")                         # a FIFO: not_a_file, never opened
    (root / "d07" / "away.jpg").symlink_to(outside / "o.jpg")  # outside_root
    (root / "d08" / "out").symlink_to(outside)                 # a folder outside: outside_root, not entered
    (root / "d09" / "again").symlink_to(root / "d00")          # a folder inside: listed where it is
    (root / "d10" / "empty").mkdir()
    conf = lambda workers: SourceConf(name="c", kind="folder", path=str(root), list_workers=workers)
    with caplog.at_level(logging.DEBUG, logger="sonify.sources"):
        serial, parallel = list_images(conf(1), [".jpg"]), list_images(conf(2), [".jpg"])
        serial_audio, parallel_audio = list_audio(conf(1), [".wav"]), list_audio(conf(2), [".wav"])
    pids = [set(r.cpu_by_pid) for r in caplog.records if hasattr(r, "cpu_by_pid")]
    # only the parallel walks log, and their walking ran in worker processes; how the pool spreads
    # 12 sub-folders over its 2 workers is the scheduler's choice (one worker may take them all
    # on a loaded machine), so the count of distinct pids is not asserted
    assert len(pids) == 2 and all(p and os.getpid() not in p for p in pids)
    assert parallel.equals(serial) and parallel_audio.equals(serial_audio)
    # images: 2 good files at the top and 4 error rows; audio: the folder link outside is its error row too
    assert serial.num_rows == 12 * 30 + 2 + 4 and serial_audio.num_rows == 12 * 30 + 1
    errors = dict(zip(serial.column("uri").to_pylist(), serial.column("list_error").to_pylist()))
    assert errors["d03/folder.jpg"].startswith("not_a_file") and errors["d05/pipe.jpg"].startswith("not_a_file")
    assert errors["d07/away.jpg"].startswith("outside_root") and errors["d08/out"].startswith("outside_root")
    rel = serial.column("uri").to_pylist()
    assert rel[0] == "d00/inner/0.jpg" and rel[-1] == "zz.jpg" and rel.index("top.jpg") == len(rel) - 2


def _square(x):
    return x * x


_MET = False   # per worker process: has its first call met the other process's at the barrier


def _square_once_met(barrier, x):
    """x * x; a process's first call waits at the barrier for the other process's first call (not a
    sleep): while one waits the pool hands the next group to the other, so both compute some items."""
    global _MET
    if not _MET:
        barrier.wait(60)
        _MET = True
    return x * x


def test_process_map_keeps_order_and_runs_few_items_here():
    import functools
    import multiprocessing as mp
    import os

    with mp.get_context("spawn").Manager() as manager:
        out, cpu = process_map(functools.partial(_square_once_met, manager.Barrier(2)), range(50), 2)
    assert out == [x * x for x in range(50)] and len(cpu) == 2 and os.getpid() not in cpu
    out, cpu = process_map(_square, range(3), 8)     # too few to pay for processes
    assert out == [0, 1, 4] and list(cpu) == [os.getpid()]
