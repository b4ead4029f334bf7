"""Listing a tar source (SA-1B style) over processes: the serial listing exactly, computed by several processes."""

import logging

from sonify.bench.listing import make_sa1b_tars
from sonify.engine.config import SourceConf
from sonify.sources.images import list_images
from sonify.sources.parallel import process_map


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
    rel = serial.column("relpath").to_pylist()
    assert rel[:2] == ["sa_000000.tar#sa_0.jpg", "sa_000000.tar#sa_1.jpg"] and rel[20] == "sa_000001.tar#sa_20.jpg"
    assert rel[2000] == "sa_000100.tar" and serial.column("list_error")[2000].as_py().startswith("unreadable_tar")
    assert rel[2001] == "sa_000101.tar#sa_2020.jpg"


def _square(x):
    import time

    time.sleep(0.02)     # real work takes time: every process gets some
    return x * x


def test_process_map_keeps_order_and_runs_few_items_here():
    import os

    out, cpu = process_map(_square, range(50), 2)
    assert out == [x * x for x in range(50)] and len(cpu) == 2 and os.getpid() not in cpu
    out, cpu = process_map(_square, range(3), 8)     # too few to pay for processes
    assert out == [0, 1, 4] and list(cpu) == [os.getpid()]
