"""What a model name stands for, as a string that changes when the model does (part of fingerprints).

A Hugging Face id stands for itself at a revision (`id@revision`, default `main`). A local folder
stands for its contents: every config-like file in full, and every weight file by name, size and a
checksum of its first and last MiB (weights are too large to hash whole on every run; new weights
at the same path change these). A tiny or shape model stands for its builder's name and version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CONFIG_SUFFIXES = {".json", ".jinja", ".txt", ".model", ".yaml", ".py"}
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5"}
SAMPLE = 1 << 20


def _sample_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE))
        if size > SAMPLE:
            f.seek(max(SAMPLE, size - SAMPLE))
            h.update(f.read(SAMPLE))
    return h.hexdigest()[:16]


def model_identity(name: str) -> str:
    """A stable description of the model `name` names (see the module docstring)."""
    if name.split(":", 1)[0] in ("tiny", "shape"):
        from sonify.models import tiny

        return f"{name}#v{tiny.VERSION}"
    path = Path(name)
    if not path.exists():
        return name if "@" in name else f"{name}@main"
    if path.is_file():
        return f"file:{path.name}:{path.stat().st_size}:{_sample_digest(path)}"
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if f.suffix in WEIGHT_SUFFIXES:
            h.update(f"{rel}:{f.stat().st_size}:{_sample_digest(f)}\n".encode())
        elif f.suffix in CONFIG_SUFFIXES and f.stat().st_size < (16 << 20):
            h.update(rel.encode() + b"\n" + f.read_bytes())
    return f"local:{h.hexdigest()[:16]}"
