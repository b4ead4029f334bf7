"""Joining or starting Ray: the one place that knows how a run reaches its cluster."""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

# Ray lines a sonify run has no use for, by the logger that emits them: a local Ray keeps its
# default token auth (announced on every start), sonify turns Ray Data's bars off on purpose (one
# bar per stage instead) and prints its own stage times.
RAY_QUIET = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this Ray cluster",),
    "ray.data._internal.progress": ("Progress bars disabled",),
    "ray.data._internal.execution.streaming_executor": ("execution finished in",),
}


class DropMessages(logging.Filter):
    """Drop records whose message contains one of `parts`; everything else passes."""

    def __init__(self, parts: tuple[str, ...]):
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(p in msg for p in self.parts)


def quiet_ray_logs() -> None:
    """Attach the filters once per process (Ray Data reconfigures handlers, never logger filters)."""
    for name, parts in RAY_QUIET.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(parts))


def ray_address(configured: str | None = None) -> str | None:
    """The cluster to join: `ray.address` when set, else RAY_ADDRESS; None means a Ray of our own."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None, **local_options) -> None:
    """Join `address`, or start a Ray of our own (`address="local"`: never the cluster that
    `<ray temp dir>/ray_current_cluster` names, a stale or foreign head left on the machine)."""
    import ray

    quiet_ray_logs()
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", logging_level=logging.WARNING, **local_options)


def connect_ray(cfg: DictConfig) -> bool:
    """Start or join Ray; True when this call connected (and the caller should shut it down).

    Local means local: without `ray.address` or RAY_ADDRESS this starts its own Ray
    (`address="local"`), never the cluster that `<ray temp dir>/ray_current_cluster` names (a stale
    or foreign head left on the machine). Which of the two it did is said in one line."""
    import ray

    address = ray_address(cfg.ray.address)
    if ray.is_initialized():
        return False
    if address:
        init_ray(address)
        print(f"ray: joined the cluster at {address} ({'ray.address' if cfg.ray.address else 'RAY_ADDRESS'})", flush=True)
    else:
        init_ray(None, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory, include_dashboard=False)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"ray: started a local Ray for this run ({cpus} CPUs; set ray.address or RAY_ADDRESS to join a cluster)",
              flush=True)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # sonify shows one bar per stage instead
    ctx.print_on_execution_start = False
    return True
