"""Models by name: a Hugging Face id or a local path, loaded with the library's own `from_pretrained`.

`tiny:<kind>` names a tiny random model that `sonify.models.tiny` builds from configs and saves in
Hugging Face format; it is then loaded through this same path, so tests and the offline demo
exercise the real loading code. `shape:<hub id>` names a model with a real checkpoint's published
architecture and random weights (`sonify.models.shape`), built and loaded the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonify.engine.errors import ModelNotAvailable

TINY_PREFIX = "tiny:"
SHAPE_PREFIX = "shape:"


def resolve_model(name: str, tiny_dir: str | Path, subfolder: str | None = None) -> str:
    """A loadable id or path; builds the tiny or shape model first when `name` is 'tiny:<kind>' or 'shape:<id>'."""
    quiet_model_loading()
    if name.startswith(TINY_PREFIX):
        from sonify.models.tiny import build_tiny
        return str(build_tiny(name[len(TINY_PREFIX):], Path(tiny_dir)))
    if name.startswith(SHAPE_PREFIX):
        from sonify.models.shape import build_shape
        return str(build_shape(name[len(SHAPE_PREFIX):], Path(tiny_dir), subfolder))
    return name


def check_local_model(name: str, role: str) -> None:
    """A name written as a path (absolute, or starting with `.` or `~`) must exist: a Hub id never starts so."""
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
        raise ModelNotAvailable(f"models.{role}={name!r}: no such file or folder (give a local model folder, "
                                f"a Hugging Face id, or tiny:<kind>)")


def quiet_model_loading() -> None:
    """No per-file "Loading weights" / "Writing model shards" bars: a stage shows one bar of its own,
    and in Ray workers these bars interleave with it under worker prefixes."""
    import sys

    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    if "diffusers" in sys.modules:   # callers of diffusers models import it first; others need not pay for it
        sys.modules["diffusers"].utils.logging.disable_progress_bar()


def load_pretrained(cls: Any, name: str, tiny_dir: str | Path = "runs/_tiny_models", role: str = "model", **kwargs) -> Any:
    """`cls.from_pretrained(name)`, with a one-line error that says how to provide a missing model."""
    path = resolve_model(name, tiny_dir, kwargs.get("subfolder"))
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if Path(path).exists():
            raise ModelNotAvailable(f"{role} at {path} could not be loaded by {cls.__name__}: {first}") from None
        raise ModelNotAvailable(
            f"{role} {name!r} could not be fetched (offline, or not on the Hugging Face Hub): {first}. "
            f"Download it where the Hub is reachable (`hf download {name} --local-dir DIR`), copy DIR here "
            f"and set models.{role}=DIR") from None
