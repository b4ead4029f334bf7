"""Shared fixtures: demo data made once per session, configs pointed at temp dirs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; read at import by huggingface_hub

import pytest

from sonify.config import load_config
from sonify.demo_data import ensure_demo_data
from sonify.stages import stage_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    return ensure_demo_data(tmp_path_factory.mktemp("demo_data"), num_images=12, seed=0)


@pytest.fixture
def make_cfg(tmp_path, demo_dir):
    """Demo pipeline config over the session's demo data, writing under tmp_path, local executor."""

    def make(*overrides: str):
        return load_config([
            "pipeline=demo", f"run.root={tmp_path / 'runs'}", f"demo_data.dir={demo_dir}",
            "demo_data.enabled=false", "run.executor=local", "run.progress=false", *overrides,
        ], stage_names())

    return make


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
