"""The shape shared by the stages that run one encoder over rows and keep one .npy per row.

A subclass says how to decode a row (`decode`, raising to make an error row), how to encode a batch
of decoded inputs (`encode`, one model call), and what a result row holds (`result`). Decoding is its
own step (`decode_batch`), which the executor runs on CPU threads while the model encodes the batch
before (`sonify.engine.prefetch`). This base owns the loop: decode failures become error rows with their reasons (the row is bad), a model
failure raises (the machine or model is: the executor retries the partition), and results are
saved atomically in the partition's folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from sonify.engine.errors import error_text
from sonify.engine.files import save_npy
from sonify.engine.schemas import STATUS_ERROR, STATUS_OK
from sonify.engine.store import rows_to_table
from sonify.media.image import ImageRejected
from sonify.stages.base import Stage


class EncoderStage(Stage):
    def base(self, row: dict) -> dict:
        """Columns every output row carries, result or error."""
        raise NotImplementedError

    def decode(self, row: dict) -> Any:
        raise NotImplementedError

    def encode(self, inputs: list) -> list[np.ndarray]:
        raise NotImplementedError

    def result(self, row: dict, array: np.ndarray) -> tuple[str, dict]:
        """(path of the .npy inside the partition's folder, the row's result columns)."""
        raise NotImplementedError

    def decode_batch(self, batch: pa.Table, pmap=map) -> list[tuple]:
        """Per row (True, input) or (False, reason, detail): CPU work only, so the executor runs it on
        worker threads ahead of the model (`sonify.engine.prefetch`)."""
        def one(r: dict) -> tuple:
            try:
                return (True, self.decode(r))
            except ImageRejected as e:
                return (False, e.reason, e.detail)
            except Exception as e:
                return (False, "decode_error", f"{type(e).__name__}: {e}")

        return list(pmap(one, batch.to_pylist()))

    def process_batch(self, batch: pa.Table, decoded: list[tuple] | None = None) -> dict[str, pa.Table]:
        rows, out, good, inputs = batch.to_pylist(), {}, [], []
        fail = lambda r, reason, detail: {**self.base(r), "status": STATUS_ERROR, "error": error_text(reason, detail)}
        for r, d in zip(rows, decoded if decoded is not None else self.decode_batch(batch)):
            if d[0]:
                inputs.append(d[1])
                good.append(r)
            else:
                out[r["id"]] = fail(r, d[1], d[2])
        arrays = self.encode(inputs) if good else []   # a model failure raises: the executor retries the partition
        for r, a in zip(good, arrays):
            if not np.all(np.isfinite(a)):
                out[r["id"]] = fail(r, "bad_features", "NaN or inf in the model output")
                continue
            name, columns = self.result(r, a)
            rel, target = self.owned_path(name)
            digest = save_npy(target, a.astype(np.float16))
            out[r["id"]] = {**self.base(r), **columns, "path": rel, "sha256": digest, "status": STATUS_OK, "error": None}
        table = self.outputs[0]
        return {table: rows_to_table(table, [out[r["id"]] for r in rows])}
