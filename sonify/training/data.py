"""Training batches streamed from the WebDataset shards.

The sample stream is a pure function of (seed, epoch, shard list, rank, world size): shards are
shuffled per epoch by the seed, split across ranks (nodes) and loader workers, and read in order.
Per-sample randomness (the latent drawn from the stored mean and std, conditioning dropout) is keyed
by (seed, epoch, sample key), so a resumed run that skips the batches it already consumed sees
exactly the batches an uninterrupted run would. A shard that fails to read is logged and skipped,
and counted.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from sonify.engine.keys import keyed_rng

log = logging.getLogger("sonify.train")


def expand_shards(pattern: str) -> list[str]:
    """A list file (`.txt`, one shard per line relative to it: what the shards stage writes), a glob,
    a brace pattern (`train-{000000..000009}.tar`) or a comma-separated list."""
    import braceexpand
    from pathlib import Path

    if pattern.endswith(".txt"):
        listing = Path(pattern)
        if not listing.is_file():
            return []
        return [str(listing.parent / line.strip()) for line in listing.read_text().splitlines() if line.strip()]
    urls = []
    for part in pattern.split(","):
        for p in braceexpand.braceexpand(part.strip()):
            urls.extend(sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p])
    return urls


class SkippedShards:
    """Counts and logs read failures instead of dying on them (never silent)."""

    def __init__(self):
        self.count = 0

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        log.warning("skipping unreadable shard data (%d so far): %s", self.count, exn)
        return True


@dataclass
class Batch:
    keys: list[str]
    latents: torch.Tensor       # (B, C, H, W), sampled and scaled
    tokens: torch.Tensor        # (B, T, D) AST time series, zero padded
    mask: torch.Tensor          # (B, T) 1 for real frames
    drop: torch.Tensor          # (B,) bool: conditioning dropped (use the null token)


_NPY_HEADER = re.compile(r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([^)]*)\), \}")


def load_npy(data: bytes) -> np.ndarray:
    """`np.load` for the .npy members the stages write, without parsing the header with `ast` each time
    (numpy's parser compiles it: a third of the decode time of small arrays); other headers fall back to np.load."""
    if data[:6] == b"\x93NUMPY" and data[6] in (1, 2):
        start = 10 if data[6] == 1 else 12
        length = int.from_bytes(data[8:start], "little")
        m = _NPY_HEADER.match(data[start:start + length].decode("latin1"))
        if m:
            shape = tuple(int(x) for x in m.group(3).split(",") if x.strip())
            count = int(np.prod(shape)) if shape else 1
            arr = np.frombuffer(data, dtype=np.dtype(m.group(1)), count=count, offset=start + length)
            return arr.reshape(shape, order="F" if m.group(2) == "True" else "C")
    return np.load(io.BytesIO(data))


def collate(samples: list[dict], seed: int, epoch: int, scaling: float, cond_dropout: float, max_frames: int) -> Batch:
    lat, toks, drops, keys = [], [], [], []
    for s in samples:
        rng = keyed_rng(seed, epoch, s["__key__"])
        moments = load_npy(s["latent.npy"]).astype(np.float32)
        mean, std = moments[0], moments[1]
        lat.append(mean + std * rng.standard_normal(mean.shape, dtype=np.float32))
        toks.append(load_npy(s["ast.npy"]).astype(np.float32)[:max_frames])
        drops.append(bool(rng.random() < cond_dropout))
        keys.append(s["__key__"])
    t_max = max(t.shape[0] for t in toks)
    tokens = np.zeros((len(toks), t_max, toks[0].shape[1]), np.float32)
    mask = np.zeros((len(toks), t_max), np.float32)
    for i, t in enumerate(toks):
        tokens[i, :t.shape[0]] = t
        mask[i, :t.shape[0]] = 1.0
    return Batch(keys, torch.from_numpy(np.stack(lat)) * scaling, torch.from_numpy(tokens), torch.from_numpy(mask),
                 torch.tensor(drops))


def epoch_batches(urls: list[str], epoch: int, cfg, rank: int, world: int, skipped: SkippedShards, scaling: float):
    """Batches of one epoch for one rank (a generator; memory bounded by the batch and the loader's buffers)."""
    import webdataset as wds

    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(urls))
    mine = [urls[i] for i in order][rank::world]          # split by node, deterministic
    if not mine:
        return
    ds = wds.WebDataset(mine, shardshuffle=False, empty_check=False, nodesplitter=None,
                        workersplitter=wds.split_by_worker, handler=skipped)
    buf = []
    for sample in ds:
        if "latent.npy" not in sample or "ast.npy" not in sample:
            skipped(ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} lacks latent.npy or ast.npy"))
            continue
        buf.append(sample)
        if len(buf) == cfg.per_device_batch:
            yield collate(buf, cfg.seed, epoch, scaling, cfg.cond_dropout, cfg.max_audio_frames)
            buf = []
    if buf and not cfg.drop_last:
        yield collate(buf, cfg.seed, epoch, scaling, cfg.cond_dropout, cfg.max_audio_frames)


def _as_is(batch):
    """The batches are collated already (module-level: picklable under the spawn start method)."""
    return batch


class EpochBatches(torch.utils.data.IterableDataset):
    """One epoch of batches for a DataLoader with workers: `wds.split_by_worker` gives each worker its
    share of this rank's shards, and the DataLoader takes from the workers in turn, so the order is a
    function of (seed, epoch, number of workers). Read errors are logged in the worker processes."""

    def __init__(self, urls: list[str], epoch: int, cfg, rank: int, world: int, scaling: float):
        super().__init__()
        self.args = (urls, epoch, cfg, rank, world)
        self.scaling = scaling

    def __iter__(self):
        urls, epoch, cfg, rank, world = self.args
        yield from epoch_batches(urls, epoch, cfg, rank, world, SkippedShards(), self.scaling)


def loader(urls: list[str], epoch: int, cfg, rank: int, world: int, skipped: SkippedShards, scaling: float):
    """This rank's batches of one epoch: in-process (with a prefetch thread) or from DataLoader workers."""
    if cfg.loader_workers > 0:
        dl = torch.utils.data.DataLoader(EpochBatches(urls, epoch, cfg, rank, world, scaling), batch_size=None,
                                         num_workers=cfg.loader_workers, collate_fn=_as_is)
        return iter(dl)
    batches = epoch_batches(urls, epoch, cfg, rank, world, skipped, scaling)
    return prefetch(batches, cfg.prefetch) if cfg.prefetch > 0 else batches


def prefetch(batches, depth: int = 2):
    """Produce batches on a background thread (decoding overlaps the model step); order is unchanged."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def peek_sample(urls: list[str]) -> dict:
    """The first readable sample's shapes, to check the config against the shards before training."""
    import webdataset as wds

    for url in urls:
        try:
            for s in wds.WebDataset([url], shardshuffle=False, empty_check=False, nodesplitter=None):
                lat = np.load(io.BytesIO(s["latent.npy"]))
                ast = np.load(io.BytesIO(s["ast.npy"]))
                meta = json.loads(s["json"]) if "json" in s else {}
                return {"latent_shape": tuple(lat.shape[1:]), "ast_dim": int(ast.shape[1]), "url": url,
                        "scaling_factor": float(meta.get("scaling_factor") or 0.18215)}
        except Exception as e:  # try the next shard
            log.warning("cannot read %s: %s", url, e)
    raise ValueError(f"no readable sample in {len(urls)} shards")
