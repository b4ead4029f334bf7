"""Runs one stage over its partitions, locally (plain loop) or on a pool of Ray actors (`engine.actors`).

This is the only code that writes outputs, stats and completion state. A partition is finished when
every output table has its file; files appear atomically, so a killed run loses at most the
partitions in flight and a re-run never duplicates a row.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from sonify.engine.errors import (ConfigError, DiskFull, MissingTable, SchemaError, StageContractError, disk_full, disk_full_line,
                                  error_reason, error_reason_sql)
from sonify.engine.files import atomic_write, clean_temp_files
from sonify.engine.partitions import Partition, Plan, PlanReader, plan, planner_connection, write_work
from sonify.engine.prefetch import decode_workers, decoded_batches
from sonify.engine.schemas import STATUS_OK, table_spec
from sonify.engine.store import TableStore

log = logging.getLogger("sonify")

# Failures a retry would repeat: the stage broke its contract (rows, schema), the run cannot work as set up, or the
# code is wrong. They fail the partition at once. Anything else (I/O, CUDA and out-of-memory RuntimeErrors,
# MemoryError, Ray's errors) may be transient: retried `run.max_retries` times after `run.retry_backoff_s`, doubling.
NOT_TRANSIENT = (StageContractError, SchemaError, ConfigError, MissingTable,
                 TypeError, AttributeError, NameError, LookupError, AssertionError, ImportError, NotImplementedError, SyntaxError)


def transient(e: BaseException) -> bool:
    """Whether a partition that raised `e` may succeed when run again."""
    return not isinstance(e, NOT_TRANSIENT)


class PartitionWorker:
    """Processes whole partitions of one stage. A Ray actor runs it (`run`); the local loop calls
    `run_partition`. The stage (and its models) is built once, in `__init__`."""

    def __init__(self, stage_cls: type, cfg: dict, plan_path: str | None = None):
        self.cfg = OmegaConf.create(cfg)
        self.plan_path, self._plan = plan_path, None
        self.stage = stage_cls(self.cfg)
        self.store = TableStore(self.cfg.run.dir)
        self.stats_dir = Path(self.cfg.run.dir) / "stats" / stage_cls.name
        if stage_cls.models:   # model outputs depend on the thread count: it is fixed by config, not by the executor
            import torch
            torch.set_num_threads(int(self.cfg.run.torch_threads))

    @property
    def plan(self) -> PlanReader:
        """The planned rows, read partition by partition; opened on first use, so an actor that Ray
        starts after the stage has finished (and its plan folder is gone) never touches the file."""
        if self._plan is None:
            self._plan = PlanReader(self.plan_path)
        return self._plan

    def run_partition(self, name: str, rows: pa.Table) -> dict:
        t0 = time.perf_counter()
        stats = {"partition": name, "rows_in": rows.num_rows, "failed": None, "attempts": 0}
        retries, backoff = max(0, int(self.cfg.run.max_retries)), float(self.cfg.run.retry_backoff_s)
        while True:
            stats["attempts"] += 1
            try:
                self._run_once(name, rows, stats)
                break
            except Exception as e:   # not the rows' fault (bad rows are error rows): a model, device or I/O failure, or a bug
                if disk_full(e):   # nothing a retry (or this worker) can fix: the stage stops, naming the folder
                    raise DiskFull(disk_full_line(self.cfg.run.dir, self.stage.name)) from None
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                if not transient(e):
                    log.warning("partition %s of stage %s failed, not retried (a retry would repeat it): %s",
                                name, self.stage.name, reason)
                elif stats["attempts"] <= retries:
                    wait = backoff * 2 ** (stats["attempts"] - 1)
                    log.warning("partition %s of stage %s: %s; retry %d of %d in %.1fs", name, self.stage.name, reason,
                                stats["attempts"], retries, wait)
                    time.sleep(wait)
                    continue
                stats["failed"] = reason
                log.debug("partition %s of stage %s failed:\n%s", name, self.stage.name, traceback.format_exc())
                break
        stats["seconds"] = round(time.perf_counter() - t0, 4)
        atomic_write(self.stats_dir / f"{name}.json", json.dumps(stats))
        return stats

    def _run_once(self, name: str, rows: pa.Table, stats: dict) -> None:
        self.stage.partition = name
        if self.stage.files_dir:   # files of an earlier, unfinished attempt at this partition
            shutil.rmtree(Path(self.cfg.run.dir) / self.stage.files_dir / name, ignore_errors=True)
        outputs = self._process(rows)
        for table_name, table in outputs.items():
            self.store.write_partition(table_name, name, table)
        keyed = outputs[self.stage.keyed_output()]
        statuses, errors = keyed.column("status").to_pylist(), keyed.column("error").to_pylist()
        stats["ok"] = sum(s == STATUS_OK for s in statuses)
        stats["errors"] = dict(Counter(error_reason(e) for s, e in zip(statuses, errors) if s != STATUS_OK))
        stats["rows_out"] = {t: v.num_rows for t, v in outputs.items()}

    def _process(self, rows: pa.Table) -> dict[str, pa.Table]:
        bs = rows.num_rows if self.stage.whole_partition else max(1, int(self.stage.conf.batch_size))
        pieces: dict[str, list[pa.Table]] = {t: [] for t in self.stage.outputs}
        batches = [rows.slice(start, bs) for start in range(0, rows.num_rows, bs)]
        if getattr(self.stage, "decode_batch", None) is not None:   # the next batch decodes while the model runs
            done = (self.stage.process_batch(b, d)
                    for b, d in decoded_batches(batches, self.stage.decode_batch, decode_workers(self.stage.conf.num_cpus)))
        else:
            done = (self.stage.process_batch(b) for b in batches)
        for result in done:
            for t in self.stage.outputs:
                pieces[t].append(result[t])
        # empty pieces carry the declared types (e.g. list for a fixed-size embedding): leave them out
        outputs = {t: pa.concat_tables([p for p in v if p.num_rows] or v[:1]) for t, v in pieces.items()}
        got = outputs[self.stage.keyed_output()].column("id").to_pylist()
        want = rows.column("id").to_pylist()
        if sorted(got) != sorted(want):
            raise StageContractError(f"stage {self.stage.name} returned {len(got)} rows for {len(want)} inputs "
                               f"(every input row must yield exactly one result or error row)")
        return outputs

    def run(self, name: str, offset: int, rows: int) -> dict:
        """One partition, read from the plan file (an actor's call: `engine.actors`)."""
        return self.run_partition(name, self.plan.read(int(offset), int(rows)))


@dataclass
class StageRun:
    """What happened in one run of one stage (the printed summary is made from this and the tables)."""
    stage: str
    rows_in: int = 0
    duplicates_dropped: int = 0
    partitions: int = 0
    skipped: int = 0
    rows_computed: int = 0     # input rows of the partitions computed in this run
    computed: int = 0
    failed: list[str] = field(default_factory=list)
    stale_removed: int = 0
    seconds: float = 0.0
    tables: dict = field(default_factory=dict)


def _run_local(cls: type, cfg: DictConfig, plan_path: Path, todo: list[Partition], progress) -> list[dict]:
    worker = PartitionWorker(cls, OmegaConf.to_container(cfg), str(plan_path))
    results = []
    for p in todo:
        results.append(worker.run_partition(p.name, worker.plan.read(p.offset, p.rows)))
        progress(results[-1])
    return results


def _run_ray(cls: type, cfg: DictConfig, plan_path: Path, todo: list[Partition], progress) -> list[dict]:
    """One call per partition on a pool of actors (`engine.actors`); each actor reads its rows from the
    plan file (the run folder is on storage every node sees, as the outputs are)."""
    from sonify.engine.actors import run_on_actors
    from sonify.engine.cluster import ray_address

    conf = cls.settings(cfg)
    check_resources(cls.name, conf, local=ray_address(cfg.ray.address) is None)
    options = {"num_cpus": float(conf.num_cpus), "num_gpus": float(conf.num_gpus),
               **({"accelerator_type": conf.accelerator_type} if conf.accelerator_type else {})}
    results = []

    def done(stats: dict) -> None:
        results.append(stats)
        progress(stats)

    def lost(call: tuple, reason: str) -> None:   # a partition that brings down every worker it runs on
        done({"partition": call[0], "rows_in": call[2], "failed": reason, "attempts": 0})

    run_on_actors(PartitionWorker, (cls, OmegaConf.to_container(cfg), str(plan_path)),
                  [(p.name, p.offset, p.rows) for p in todo], options, int(conf.concurrency), done, lost)
    return results


def check_resources(stage: str, conf, local: bool = False) -> None:
    """Refuse, in one line, a stage that asks for more GPUs per actor, or an accelerator, than the cluster has,
    or, on the local Ray a run starts (no node will ever join it), more CPUs per actor than it has: such an
    actor is never placed and the stage would wait for it forever."""
    import ray

    have = ray.cluster_resources()
    cpus = float(conf.num_cpus)
    if local and cpus > have.get("CPU", 0.0):
        raise ConfigError(f"stages.{stage}.num_cpus={cpus:g} per actor, but this run's local Ray has {have.get('CPU', 0.0):g} "
                          f"CPUs; lower it or raise ray.num_cpus")
    gpus = float(conf.num_gpus)
    if gpus > have.get("GPU", 0.0):
        raise ConfigError(f"stages.{stage}.num_gpus={gpus:g} per actor, but the cluster has {have.get('GPU', 0.0):g} GPUs; "
                          f"lower it or add GPU nodes")
    if conf.accelerator_type and f"accelerator_type:{conf.accelerator_type}" not in have:
        kinds = sorted(k.split(":", 1)[1] for k in have if k.startswith("accelerator_type:")) or ["none"]
        raise ConfigError(f"stages.{stage}.accelerator_type={conf.accelerator_type!r}, but the cluster's accelerators are: "
                          f"{', '.join(kinds)}")


def table_counts(store: TableStore, table: str) -> dict:
    """Rows, ok and errors by reason of a whole table, counted by DuckDB from disk (the source of truth)."""
    if not store.exists(table):
        return {"rows": 0, "ok": 0, "errors": {}}
    con = store.connect(t=table)
    rows, ok = con.execute(f"SELECT count(*), count(*) FILTER (status = '{STATUS_OK}') FROM t").fetchone()
    errors = con.execute(f"SELECT {error_reason_sql('error')} AS r, count(*) AS n FROM t WHERE status != '{STATUS_OK}' "
                         "GROUP BY r ORDER BY n DESC, r").fetchall()
    counts = {"rows": rows, "ok": ok, "errors": {r: n for r, n in errors}}
    if {"kept", "reason"} <= set(table_spec(table).schema.names):   # decision tables: why rows were dropped
        counts["kept"] = con.execute("SELECT count(*) FILTER (kept) FROM t").fetchone()[0]
        counts["dropped"] = dict(con.execute("SELECT reason, count(*) AS n FROM t WHERE NOT kept OR kept IS NULL "
                                             "GROUP BY reason ORDER BY n DESC, reason").fetchall())
    return counts


def remove_unplanned(store: TableStore, cls: type, planned: set[str]) -> int:
    """Remove every partition of the stage that is not planned, with its files and stats; returns how many."""
    stale: set[str] = set()
    for t in cls.outputs:
        gone = store.partitions(t) - planned
        store.remove_partitions(t, gone)
        stale |= gone
    owned = [store.run_dir / "stats" / cls.name]
    if cls.files_dir:
        owned.append(store.run_dir / cls.files_dir)
        clean_temp_files(store.run_dir / cls.files_dir, recursive=True)
    for folder in owned:
        for p in folder.iterdir() if folder.is_dir() else []:
            if p.name.startswith("part-") and p.name.split(".")[0] not in planned:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return len(stale)


def passes(cls: type, todo: list[Partition]) -> list[tuple[object, list[Partition]]]:
    if not cls.pass_column:
        return [(None, todo)]
    lanes: dict[object, list[Partition]] = {}
    for p in todo:
        lanes.setdefault(p.lane, []).append(p)
    return sorted(lanes.items(), key=lambda kv: str(kv[0]))


def error_fraction_exceeded(cls: type, cfg: DictConfig, results: list[dict]) -> str | None:
    """A one-line reason when more than `run.max_error_fraction` of the rows computed are unexpected error rows."""
    done = [r for r in results if not r["failed"]]
    rows = sum(r["rows_in"] for r in done)
    bad = Counter()
    for r in done:
        bad.update({k: v for k, v in r.get("errors", {}).items() if k not in cls.expected_errors})
    if rows < int(cfg.run.error_fraction_min_rows) or sum(bad.values()) <= float(cfg.run.max_error_fraction) * rows:
        return None
    reasons = ", ".join(f"{k}={v}" for k, v in bad.most_common(3))
    return (f"stage {cls.name}: {sum(bad.values())} of {rows} rows are errors ({reasons}), more than run.max_error_fraction="
            f"{cfg.run.max_error_fraction}; nothing kept: fix the cause and re-run")


def run_stage(cls: type, cfg: DictConfig, progress_bar: bool = True, connect=None) -> StageRun:
    """Plan, skip what is finished, run the rest, and count the outputs. `cls` is a stage class
    (`sonify.stages.get_stage`): the engine knows the stage contract, never the stages.
    `connect` is called before the first partition goes to Ray (so a run with nothing to do starts no Ray)."""
    t0 = time.perf_counter()
    stage_name = cls.name
    store = TableStore(cfg.run.dir, str(cfg.run.plan_memory))
    run = StageRun(stage=stage_name)
    with plan_folder(store, stage_name) as plan_dir:
        return _run_planned(cls, cfg, store, run, plan_dir, progress_bar, connect, t0)


@contextmanager
def plan_folder(store: TableStore, stage: str):
    """`<run>/plan/<stage>/`: the stage's work list, plan file and DuckDB spill files, made anew for each
    stage run (one at a time: the run lock) and removed after it."""
    shutil.rmtree(store.run_dir / "plan", ignore_errors=True)
    (store.run_dir / "plan" / stage).mkdir(parents=True)
    try:
        yield store.run_dir / "plan" / stage
    finally:
        shutil.rmtree(store.run_dir / "plan", ignore_errors=True)


def plan_stage(cls: type, cfg: DictConfig, store: TableStore, plan_dir: Path) -> Plan:
    """The stage's work list, streamed to `plan_dir/work.parquet`, planned into `plan_dir/plan.parquet`."""
    write_work(cls.work_list(cfg, store), plan_dir / "work.parquet")   # a DuckDB relation streams; no Python rows
    for t in cls.outputs:
        store.clean_temp_files(t)
    planned = plan(planner_connection(str(cfg.run.plan_memory), plan_dir / "spill"), plan_dir / "work.parquet",
                   plan_dir / "plan.parquet", cls.fingerprint(cfg, store),
                   store.files(cls.keyed_output()), int(cls.settings(cfg).partition_rows),
                   list(cls.content_columns or []) or None, cls.partition_by, cls.pass_column, cls.keep_together)
    (plan_dir / "work.parquet").unlink()
    return planned


def _run_planned(cls, cfg, store, run, plan_dir, progress_bar, connect, t0) -> StageRun:
    stage_name = cls.name
    planned = plan_stage(cls, cfg, store, plan_dir)
    parts = planned.partitions
    run.duplicates_dropped = planned.duplicates
    if run.duplicates_dropped:
        log.warning("stage %s: %d duplicate input ids dropped (kept the first of each)", stage_name, run.duplicates_dropped)
    run.rows_in = planned.rows_in - planned.duplicates
    run.partitions = len(parts)
    run.stale_removed = remove_unplanned(store, cls, {p.name for p in parts})
    done = set.intersection(*(store.partitions(t) for t in cls.outputs))
    todo = parts if cfg.run.force else [p for p in parts if p.name not in done]
    run.skipped = len(parts) - len(todo)

    from tqdm.auto import tqdm
    bar = tqdm(total=len(todo), desc=f"{stage_name}", unit="part", disable=not progress_bar or not todo)

    failures = [0]

    def progress(stats: dict) -> None:
        bar.update(1)
        failures[0] += bool(stats["failed"])
        bar.set_postfix(rows=stats["rows_in"], failed=failures[0])

    if todo:
        if cfg.run.executor != "local" and connect is not None:
            connect()   # Ray starts only when there is work for it
        runner = _run_local if cfg.run.executor == "local" else _run_ray
        results = []
        for value, part in passes(cls, todo):   # one pass per VLM: no worker ever holds two
            results += runner(cls, cfg if value is None else cls.pass_config(cfg, value), planned.path, part, progress)
        run.computed = sum(1 for r in results if not r["failed"])
        run.rows_computed = sum(r["rows_in"] for r in results if not r["failed"])
        run.failed = [f"{r['partition']}: {r['failed']}" for r in results if r["failed"]]
        too_many = error_fraction_exceeded(cls, cfg, results)
        if too_many:   # a broken model or decoder must not quietly turn everything into error rows
            remove_unplanned(store, cls, {p.name for p in parts} - {r["partition"] for r in results})   # tables, files, stats
            run.computed, run.failed = 0, [too_many]
    bar.close()
    if not run.failed:
        cls.finalize(cfg, store)
    run.tables = {t: table_counts(store, t) for t in cls.outputs}
    run.seconds = time.perf_counter() - t0
    return run
