"""Where a model runs and in which precision: one rule for every model stage."""

from __future__ import annotations


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device



def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def in_fixed_batches(fn, items: list, size: int) -> list:
    """`fn` on batches of exactly `size` items (the last padded with copies of its last item); returns the
    results of the real items. Every model call then has the same shape whatever batch the caller had,
    so a row's floats do not depend on which rows shared its batch (GEMM kernels differ by shape)."""
    out: list = []
    size = max(1, int(size))
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        results = fn(chunk + [chunk[-1]] * (size - len(chunk)))
        out.extend(list(results)[:len(chunk)])
    return out
