"""`python -m sonify.bench scale`: the growth fit and projection on curves of known shape, and a smoke run of
every stage through a local Ray at tiny sizes."""

import math

import pytest

from sonify.bench.scale import POOL_STAGES, fixed_and_per_row, growth, summarise
from sonify.stages import STAGES

PAPER = {"images": 1_000_000, "audio_chunks": 500_000}


def test_growth_recovers_the_exponent_of_a_power_law_and_the_parts_of_a_line():
    rows = [100, 300, 1000]
    fit, last = growth(rows, [0.002 * r ** 1.5 for r in rows])
    assert fit == pytest.approx(1.5) and last == pytest.approx(1.5)
    fit, last = growth(rows, [4.0 + 0.01 * r for r in rows])   # a fixed cost bends the log-log line below 1
    assert fit < 1.0 and last < 1.0 and last > fit
    fixed, per_row = fixed_and_per_row(rows, [4.0 + 0.01 * r for r in rows])
    assert fixed == pytest.approx(4.0) and per_row == pytest.approx(0.01)


def _row(stage, rows, seconds):
    return {"stage": stage, "rows": rows, "computed": rows, "seconds": seconds, "driver_mib": 1.0, "worker_mib": 1.0,
            "workers_mib": 2.0, "workers": 2}


def test_summarise_flags_a_superlinear_stage_and_projects_each_kind_of_stage():
    chunks = 1000
    pool = [_row("audio", 10, 5.0), _row("embed_audio", chunks, 20.0)]
    sizes = {}
    for n in (100, 300, 1000):
        sizes[n] = [_row("images", n, 2.0 + 0.01 * n), _row("audio", 10, 0.1), _row("embed_audio", chunks, 0.1),
                    _row("retrieve", 3 * n, 1.0 + 0.001 * 3 * n), _row("mix", 2 * n, 1e-5 * (2 * n) ** 2)]
    summary = summarise(pool, sizes, chunks, PAPER)
    by = {s["stage"]: s for s in summary["stages"]}
    assert summary["missed"] == ["mix"]
    assert by["mix"]["exponent"] == pytest.approx(2.0) and by["mix"]["power"]
    assert by["mix"]["projected_s"] == pytest.approx(1e-5 * 2000 ** 2 * (2_000_000 / 2000) ** 2)
    assert by["images"]["projected_s"] == pytest.approx(2.0 + 0.01 * 1_000_000) and not by["images"]["power"]
    # retrieve: each query scores the whole pool, so its per-row part grows with the pool (500x here)
    assert by["retrieve"]["projected_s"] == pytest.approx(1.0 + 0.001 * 3_000_000 * 500)
    assert by["embed_audio"]["projected_s"] == pytest.approx(20.0 * 500) and by["embed_audio"]["exponent"] is None
    assert by["audio"]["rows"] == pytest.approx(10 * 500) and by["audio"]["projected_s"] == pytest.approx(5.0 * 500)


@pytest.mark.slow
@pytest.mark.ray
def test_the_quick_scale_bench_runs_every_stage_through_ray_and_projects(tmp_path, capsys):
    from sonify.bench.scale import main

    result = main(["--sizes", "20,40,80", "--pool-chunks", "500", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    for n in (20, 40, 80):
        assert [r["stage"] for r in result["sizes"][n]] == list(STAGES)
        image_rows = {r["stage"]: r for r in result["sizes"][n] if r["stage"] not in POOL_STAGES}
        assert all(r["computed"] == r["rows"] > 0 for r in image_rows.values()), image_rows
        assert all(r["computed"] == 0 for r in result["sizes"][n] if r["stage"] in POOL_STAGES)   # the pool was reused
    assert [r["stage"] for r in result["pool"]] == list(POOL_STAGES) and result["pool"][1]["rows"] == 480
    assert max(r["worker_mib"] for r in result["sizes"][80]) > 50 and result["sizes"][80][0]["driver_mib"] > 50
    growth_table = out[out.index("PROJECTED"):]
    for s in result["summary"]["stages"]:
        assert s["stage"] in growth_table
        assert s["pool"] or math.isfinite(s["exponent"])
        assert math.isfinite(s["projected_s"]) and s["projected_s"] > 0
    assert "targets: " in growth_table and "(total)" in growth_table
