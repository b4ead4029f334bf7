"""Training batches read from the WebDataset shards, resumable by position alone.

An epoch's plan is a pure function of (seed, epoch, shard list, ranks, loader workers): the shards
are permuted by (seed, epoch) and dealt to `ranks x workers` streams (or, with fewer shards than
streams, every stream reads every shard and takes every S-th sample: a split by samples). A stream
reads its shards in windows of `shuffle_window` shards and visits each window's samples in a
permutation keyed by (seed, epoch, the window's shards), so samples mix within and across shards.
A stream's position is (window, offset into the window's permutation): resuming indexes that one
window's tar headers (member offsets, no data read) and seeks to the next sample, without reading,
let alone decoding, anything consumed. Per-sample randomness (the latent drawn from the stored mean
and std, conditioning dropout) is keyed by (seed, epoch, sample key).

Every item a stream yields carries its stream (role), its position after the item, and the read
errors and decoded samples since its previous item, so counts made inside DataLoader workers reach
the training loop; each stream ends with a tail item (no batch) that carries its last counts.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sonify.engine.errors import ConfigError
from sonify.engine.keys import keyed_rng

log = logging.getLogger("sonify.train")


def expand_shards(pattern: str) -> list[str]:
    """A shard list file (`train.txt`: one name a line, relative to the file's folder), a glob, a brace
    pattern (`train-{000000..000009}.tar`) or a comma-separated list of these."""
    import braceexpand
    from pathlib import Path

    urls = []
    for part in pattern.split(","):
        part = part.strip()
        if part.endswith(".txt"):
            path = Path(part)
            if not path.is_file():
                raise ConfigError(f"shard list {part} does not exist (the shards stage writes <run>/shards/train.txt and val.txt)")
            names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            urls.extend(str(path.parent / n) for n in names)
            continue
        for p in braceexpand.braceexpand(part):
            urls.extend(sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p])
    return urls


@dataclass
class Batch:
    keys: list[str]
    latents: torch.Tensor       # (B, C, H, W), sampled and scaled
    tokens: torch.Tensor        # (B, T, D) AST time series, zero padded
    mask: torch.Tensor          # (B, T) 1 for real frames
    drop: torch.Tensor          # (B,) bool: conditioning dropped (use the null token)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (what DataLoader(pin_memory=True) calls), so `to(device, non_blocking=True)`
        copies asynchronously; `drop` stays where it is: the conditioner reads it on the host."""
        return Batch(self.keys, self.latents.pin_memory(), self.tokens.pin_memory(), self.mask.pin_memory(), self.drop)

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(self.keys, *(x.to(device, non_blocking=non_blocking) for x in (self.latents, self.tokens, self.mask)), self.drop)


@dataclass
class Item:
    """What a stream yields: a batch (None for the tail), its stream, its position after it, counts since its last item."""
    batch: Optional[Batch]
    role: int
    pos: tuple[int, int]
    errors: int
    decoded: int

    def pin_memory(self) -> "Item":
        return Item(self.batch.pin_memory() if self.batch is not None else None, self.role, self.pos, self.errors, self.decoded)


@dataclass(frozen=True)
class Stream:
    """The shards one (rank, loader worker) reads in an epoch, taking permutation positions `sel::of` of each window."""
    shards: tuple[str, ...]
    sel: int = 0
    of: int = 1


def plan_streams(urls: list[str], seed: int, epoch: int, streams: int) -> list[Stream]:
    """The epoch's `streams` streams, stream s = rank x workers + worker: shards dealt round-robin in a
    keyed order, or, with fewer shards than streams, every stream on every shard with every S-th sample."""
    order = keyed_rng(seed, "shards", epoch).permutation(len(urls))
    shuffled = tuple(urls[i] for i in order)
    if len(shuffled) >= streams:
        return [Stream(shuffled[s::streams]) for s in range(streams)]
    return [Stream(shuffled, s, streams) for s in range(streams)]


_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.(.+)$")   # WebDataset's rule: the key ends at the first dot of the basename


def index_shard(url: str) -> tuple[list[tuple[str, dict[str, tuple[int, int]]]], Optional[Exception]]:
    """(key, {extension: (data offset, size)}) per sample from the tar headers alone (data is skipped by
    seek), and the error that stopped the scan, if any: samples indexed before it are kept."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(url, "r:") as tf:
            for m in tf:
                match = _MEMBER.match(m.name) if m.isfile() else None
                if match:
                    samples.setdefault(match.group(1), {})[match.group(2)] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError, ValueError) as e:
        return list(samples.items()), e
    return list(samples.items()), None


def read_members(f, members: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    out = {}
    for ext, (offset, size) in members.items():
        f.seek(offset)
        out[ext] = f.read(size)
        if len(out[ext]) != size:
            raise EOFError(f"member .{ext} is truncated ({len(out[ext])} of {size} bytes)")
    return out


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


def decode_sample(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """(latent mean and std stacked, AST time series) of one sample, as float32."""
    return load_npy(sample["latent.npy"]).astype(np.float32), load_npy(sample["ast.npy"]).astype(np.float32)


def collate(samples: list[dict], seed: int, epoch, scaling: float, cond_dropout: float, max_frames: int, fixed: bool = False) -> Batch:
    """`fixed`: tokens padded to `max_frames` whatever the batch holds (one shape every step: no recompiles)."""
    lat, toks, drops, keys = [], [], [], []
    for s in samples:
        rng = keyed_rng(seed, epoch, s["__key__"])
        moments, ast = decode_sample(s)
        mean, std = moments[0], moments[1]
        lat.append(mean + std * rng.standard_normal(mean.shape, dtype=np.float32))
        toks.append(ast[:max_frames])
        drops.append(bool(rng.random() < cond_dropout))
        keys.append(s["__key__"])
    t_max = max_frames if fixed else max(t.shape[0] for t in toks)
    tokens = np.zeros((len(toks), t_max, toks[0].shape[1]), np.float32)
    mask = np.zeros((len(toks), t_max), np.float32)
    for i, t in enumerate(toks):
        tokens[i, :t.shape[0]] = t
        mask[i, :t.shape[0]] = 1.0
    return Batch(keys, torch.from_numpy(np.stack(lat)) * scaling, torch.from_numpy(tokens), torch.from_numpy(mask),
                 torch.tensor(drops))


def _index_window(shards: tuple[str, ...], first: int, stream: Stream, count: bool):
    """The samples of one window, and the unreadable shards among them that this stream owns (counted once:
    under a split by samples every stream indexes every shard, and shard i belongs to stream i mod S)."""
    entries, errors = [], 0
    for i, url in enumerate(shards):
        found, err = index_shard(url)
        entries.extend((url, key, members) for key, members in found)
        if err is not None and count and (first + i) % stream.of == stream.sel:
            errors += 1
            log.warning("skipping unreadable shard data in %s (%d samples indexed before it): %s", url, len(found), err)
    return entries, errors


def stream_items(stream: Stream, start, role: int, epoch, cfg, scaling: float, cond_dropout: float):
    """One stream's items from position `start` = (window, offset): earlier windows are not opened, and the
    window it stops in is indexed by its tar headers and read from the offset on."""
    k = max(1, cfg.shuffle_window)
    windows = [stream.shards[i:i + k] for i in range(0, len(stream.shards), k)]
    w0, off0 = start
    if w0 > len(windows):          # the tail was consumed: nothing left
        return
    errors, buf = 0, []
    for wi in range(w0, len(windows)):
        entries, errs = _index_window(windows[wi], wi * k, stream, count=wi > w0 or off0 == 0)
        errors += errs
        perm = keyed_rng(cfg.seed, "window", epoch, *(Path(u).name for u in windows[wi])).permutation(len(entries))
        mine = perm[stream.sel::stream.of]
        handles: dict = {}
        try:
            for j in range(off0 if wi == w0 else 0, len(mine)):
                url, key, members = entries[mine[j]]
                try:
                    if "latent.npy" not in members or "ast.npy" not in members:
                        raise KeyError("it lacks latent.npy or ast.npy")
                    f = handles[url] if url in handles else handles.setdefault(url, open(url, "rb"))
                    buf.append({"__key__": key, **read_members(f, {e: members[e] for e in ("latent.npy", "ast.npy")})})
                except (KeyError, OSError, EOFError) as e:
                    errors += 1
                    log.warning("skipping sample %s in %s: %s", key, url, e)
                if len(buf) == cfg.per_device_batch:
                    pos = (wi, j + 1) if j + 1 < len(mine) else (wi + 1, 0)
                    yield Item(collate(buf, cfg.seed, epoch, scaling, cond_dropout, cfg.max_audio_frames, getattr(cfg, "compile", False)), role, pos, errors, len(buf))
                    errors, buf = 0, []
        finally:
            for f in handles.values():
                f.close()
    if buf and not cfg.drop_last:
        yield Item(collate(buf, cfg.seed, epoch, scaling, cond_dropout, cfg.max_audio_frames, getattr(cfg, "compile", False)), role, (len(windows), 0), errors, len(buf))
        errors = 0
    yield Item(None, role, (len(windows) + 1, 0), errors, 0)


class Position:
    """One rank's data position: the epoch, each of its streams' (window, offset), and the stream of the
    last item consumed (a DataLoader takes from its workers in turn, so this says whose item comes next)."""

    def __init__(self, workers: int, state: Optional[dict] = None):
        state = state or {"epoch": 0, "streams": [[0, 0]] * workers, "last_role": workers - 1}
        self.epoch = int(state["epoch"])
        self.streams = [tuple(p) for p in state["streams"]]
        self.last_role = int(state["last_role"])

    def consume(self, item: Item) -> None:
        self.streams[item.role] = item.pos
        self.last_role = item.role

    def next_epoch(self) -> None:
        self.__init__(len(self.streams), {"epoch": self.epoch + 1, "streams": [[0, 0]] * len(self.streams),
                                          "last_role": len(self.streams) - 1})

    def state(self) -> dict:
        return {"epoch": self.epoch, "streams": [list(p) for p in self.streams], "last_role": self.last_role}


def _as_is(batch):
    """The items are collated already (module-level: picklable under the spawn start method)."""
    return batch


class EpochItems(torch.utils.data.IterableDataset):
    """One rank's streams for DataLoader workers. The DataLoader takes from its workers in turn, so worker
    i plays stream (i + rotate) mod W: a resumed loader starts with the stream whose item was due next."""

    def __init__(self, streams: list[Stream], pos: Position, cfg, scaling: float):
        super().__init__()
        self.streams, self.starts, self.epoch = streams, list(pos.streams), pos.epoch
        self.rotate = (pos.last_role + 1) % len(streams)
        self.cfg, self.scaling = cfg, scaling

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        role = ((info.id if info else 0) + self.rotate) % len(self.streams)
        yield from stream_items(self.streams[role], self.starts[role], role, self.epoch, self.cfg, self.scaling, self.cfg.cond_dropout)


def loader(streams: list[Stream], pos: Position, cfg, scaling: float, pin: bool = False):
    """This rank's items from `pos` on: from DataLoader workers, or in-process with a prefetch thread;
    `pin`: batches in page-locked memory (pinned by the DataLoader's thread or the prefetch thread)."""
    if cfg.loader_workers > 0:
        return iter(torch.utils.data.DataLoader(EpochItems(streams, pos, cfg, scaling), batch_size=None,
                                                num_workers=cfg.loader_workers, collate_fn=_as_is, pin_memory=pin))
    items = stream_items(streams[0], pos.streams[0], 0, pos.epoch, cfg, scaling, cfg.cond_dropout)
    if pin:
        items = (it.pin_memory() for it in items)
    return prefetch(items, cfg.prefetch) if cfg.prefetch > 0 else items


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
    for url in urls:
        found, err = index_shard(url)
        try:
            for _, members in found:
                if "latent.npy" in members and "ast.npy" in members:
                    with open(url, "rb") as f:
                        s = read_members(f, {e: members[e] for e in ("latent.npy", "ast.npy", "json") if e in members})
                    lat, ast = load_npy(s["latent.npy"]), load_npy(s["ast.npy"])
                    meta = json.loads(s["json"]) if "json" in s else {}
                    return {"latent_shape": tuple(lat.shape[1:]), "ast_dim": int(ast.shape[1]), "ast_frames": int(ast.shape[0]), "url": url,
                            "scaling_factor": float(meta.get("scaling_factor") or 0.18215)}
        except (OSError, EOFError, ValueError) as e:   # try the next shard
            err = e
        if err is not None:
            log.warning("cannot read %s: %s", url, err)
    raise ValueError(f"no readable sample in {len(urls)} shards")


def fixed_batches(urls: list[str], cfg, scaling: float, max_batches: int) -> list[Batch]:
    """The first `max_batches` batches of the `val` shards in one fixed order, conditioning kept: the same
    batches at every validation, so the validation loss is comparable across steps."""
    out: list[Batch] = []
    if max_batches <= 0:
        return out
    for item in stream_items(Stream(tuple(urls)), (0, 0), 0, "val", cfg, scaling, 0.0):
        if item.batch is not None:
            out.append(item.batch)
            if len(out) >= max_batches:
                break
    return out
