"""Joining or starting Ray: the one place that knows how a run reaches its cluster."""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig


def connect_ray(cfg: DictConfig) -> bool:
    """Start or join Ray; True when this call connected (and the caller should shut it down)."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory,
                 include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # sonify shows one bar per stage instead
    ctx.print_on_execution_start = False
    return True
