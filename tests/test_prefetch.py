"""Decoding off the model: the next batch decodes while the model runs this one, and the outputs are
those of the plain loop. Ordering is shown with events (the model of batch i waits until batch i+1
has started decoding), never with timings."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from sonify.engine.prefetch import decoded_batches
from sonify.stages.encoder import EncoderStage
from sonify.stages.features import FeaturesStage

WAIT_S = 30.0   # a bound so a regression fails instead of hanging; never reached when decoding runs ahead


class Recorder:
    def __init__(self, n_batches: int):
        self.events: list[tuple[str, int]] = []
        self.started = [threading.Event() for _ in range(n_batches)]
        self.lock = threading.Lock()

    def log(self, what: str, i: int) -> None:
        with self.lock:
            self.events.append((what, i))

    def model(self, i: int) -> None:
        """The model of batch i: runs until batch i+1 has begun decoding (or the bound passes)."""
        self.log("model_start", i)
        if i + 1 < len(self.started):
            self.started[i + 1].wait(WAIT_S)
        self.log("model_end", i)

    def assert_overlapped(self) -> None:
        at = {e: k for k, e in enumerate(self.events)}
        for i in range(len(self.started) - 1):
            assert at[("decode_start", i + 1)] < at[("model_end", i)], self.events


def test_next_batch_decodes_while_the_model_runs():
    rec = Recorder(4)

    def decode(batch, pmap):
        rec.log("decode_start", batch)
        rec.started[batch].set()
        out = pmap(lambda x: x * 10, [batch, batch + 1])
        rec.log("decode_end", batch)
        return out

    got = []
    for batch, decoded in decoded_batches(list(range(4)), decode, workers=2):
        rec.model(batch)
        got.append((batch, decoded))
    assert got == [(b, [b * 10, (b + 1) * 10]) for b in range(4)]
    rec.assert_overlapped()


def test_a_decoder_that_raises_reraises_in_order():
    def decode(batch, pmap):
        if batch == 1:
            raise OSError("disk gone")
        return batch

    it = decoded_batches([0, 1, 2], decode, workers=1)
    assert next(it) == (0, 0)
    with pytest.raises(OSError, match="disk gone"):
        next(it)


class FakeFeatures(FeaturesStage):
    """The features stage with a fake AST and a fake decoder that record events."""
    rec: Recorder = None
    batch_size = 2

    def __init__(self, cfg):
        EncoderStage.__init__(self, cfg)
        self.input_frames = 4

    def decode(self, r):
        i = int(r["id"].split("-")[1])
        if i % self.batch_size == 0:
            self.rec.log("decode_start", i // self.batch_size)
            self.rec.started[i // self.batch_size].set()
        if i == 3:
            raise ValueError("not a FLAC file")
        return np.full((4, 3), float(i), np.float32)

    def encode(self, clips):
        b = int(clips[0][0, 0]) // self.batch_size
        self.rec.model(b)
        return [c * 2 for c in clips]


def test_stage_decodes_ahead_with_the_same_outputs(make_cfg):
    from sonify.engine.executor import PartitionWorker

    n = 8
    cfg = make_cfg(f"stages.features.batch_size={FakeFeatures.batch_size}", "stages.features.num_cpus=2")
    rows = pa.Table.from_pylist([{"id": f"v-{i}", "image_id": f"img{i}", "variant": "v", "path": f"m{i}.flac", "flac_sha256": "x"}
                                 for i in range(n)])
    FakeFeatures.rec = Recorder(n // FakeFeatures.batch_size)
    worker = PartitionWorker(FakeFeatures, OmegaConf.to_container(cfg))
    worker.stage.partition = "p0"
    piped = worker._process(rows)["audio_features"]
    FakeFeatures.rec.assert_overlapped()

    FakeFeatures.rec = Recorder(n // FakeFeatures.batch_size)
    for started in FakeFeatures.rec.started:   # the plain loop decodes after the model: nothing to wait for
        started.set()
    plain = FakeFeatures(cfg)
    plain.partition = "p0"
    tables = [plain.process_batch(rows.slice(s, 2))["audio_features"] for s in range(0, n, 2)]   # as before this change
    assert pa.concat_tables(tables).to_pylist() == piped.to_pylist()
    errors = [r for r in piped.to_pylist() if r["status"] != "ok"]
    assert [(r["id"], r["error"]) for r in errors] == [("v-3", "decode_error: ValueError: not a FLAC file")]

