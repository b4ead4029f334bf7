"""The engine's process pool: forkserver/spawn workers, a bounded number of tasks in flight, and a worker
that dies costing only its own task (the rebuild's mixtures included)."""

import os
from functools import partial

from sonify.engine.processes import BoundedMap, WorkerDied, process_pool


def _square_or_die(x):
    if x == "die":
        os._exit(3)           # as a segfault in native code or the OOM killer would end it
    if x == "raise":
        raise ValueError("bad item")
    return x * x


def test_workers_are_never_forked():
    with process_pool(1) as pool:
        assert pool._mp_context.get_start_method() in ("forkserver", "spawn")


def test_every_task_comes_back_with_a_bounded_number_in_flight():
    m = BoundedMap(_square_or_die, workers=2, limit=3)
    out = {t: (r, e) for t, r, e in m(iter(range(20)))}
    assert out == {i: (i * i, None) for i in range(20)}
    assert 1 <= m.peak <= 3


def test_a_dying_worker_costs_only_its_task():
    tasks = [1, 2, "die", 3, 4, "raise", 5, 6, 7, 8]
    out = {t: (r, e) for t, r, e in BoundedMap(_square_or_die, workers=2)(tasks)}
    assert set(out) == set(tasks)
    assert isinstance(out["die"][1], WorkerDied) and out["die"][0] is None
    assert isinstance(out["raise"][1], ValueError)
    assert {t: r for t, (r, e) in out.items() if e is None} == {i: i * i for i in range(1, 9)}


def _crash_on(rows, bad, **kw):
    from sonify.mixing.rebuild import _render_batch

    if any(r["mix_id"] == bad for r in rows):
        os._exit(3)
    return _render_batch(rows, **kw)


def test_rebuild_reports_a_mixture_whose_worker_died_and_renders_the_rest(tmp_path):
    from sonify.mixing.rebuild import Renderer

    out = tmp_path / "out"
    rows = []
    for i in range(24):
        (out / f"m{i}.flac").parent.mkdir(parents=True, exist_ok=True)
        (out / f"m{i}.flac").write_bytes(b"x")       # already there and not --force: skipped, status ok
        rows.append({"mix_id": f"m{i}", "path": f"m{i}.flac", "components": []})
    r = Renderer((None, {}), str(out), workers=2, use_ray=False, force=False, check=False, batch=4)
    r.task = partial(_crash_on, bad="m9", **r.task.keywords)
    reports = {x["mix_id"]: x for batch in r.run(rows) for x in batch}
    assert set(reports) == {f"m{i}" for i in range(24)}
    assert reports["m9"]["status"] == "error" and reports["m9"]["error"].startswith("failed: WorkerDied")
    assert all(x["status"] == "ok" and x["skipped"] for k, x in reports.items() if k != "m9")
    assert r.peak <= r.limit == 4
