"""Generated data for `python -m sonify.bench scale`, made once and kept under the bench's work folder.

Images: small JPEG scenes, one folder per size holding hard links to the first N (ids depend on the
source name and relpath, so every size is its own set). Concepts: an import table per size, three
varied sounding objects per image, as a released table holds them. Audio: a pool of long 16 kHz
mono WAV files cut by the `audio` stage into 5 s chunks; a few distinct recordings are hard-linked
under many names so the pool's disk footprint stays small while every name is its own file to the
pipeline (the work per chunk is the same; the embeddings of two copies are equal).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

IMAGE_SOURCE = "bench_images"
AUDIO_SOURCE = "bench_pool"
POOL_RATE = 16000                  # the paper's pool (A.7) is 16 kHz mono
CHUNKS_PER_FILE = 120              # 10 minutes of 5 s chunks per file
DISTINCT_RECORDINGS = 24           # the rest of the pool's files are hard links to these
KINDS = ("barks", "chirps", "rain", "engine", "bell", "clicks", "wind")
OBJECTS = ["dog", "car", "bird", "rain", "bell", "crowd", "keyboard", "wind", "water", "train", "guitar", "door",
           "clock", "cat", "horse", "baby", "phone", "fire", "river", "boat", "plane", "drum", "siren", "cow"]
SOUNDS = ["barking loudly", "engine humming", "chirping at dawn", "falling on a tin roof", "ringing twice",
          "cheering in a stadium", "typing quickly", "howling through trees", "splashing on stones", "rattling on tracks",
          "strummed softly", "slamming shut", "ticking steadily", "purring", "galloping on gravel", "crying", "ringing",
          "crackling", "rushing past", "creaking at the dock", "roaring overhead", "rolling", "wailing", "mooing"]


def _marker(folder: Path, params: dict) -> bool:
    m = folder / ".bench.json"
    return m.exists() and json.loads(m.read_text()) == params


def _mark(folder: Path, params: dict) -> None:
    (folder / ".bench.json").write_text(json.dumps(params))


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:   # a filesystem without hard links: a copy does the same
        import shutil
        shutil.copyfile(src, dst)


def images(work: Path, n: int) -> Path:
    """A folder of `n` small JPEGs (64-256 px, scenes of gradients and shapes); the first `n` of one set."""
    from sonify.sources.demo import _jpeg_bytes, _scene

    every = work / "data" / "images" / "all"
    every.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = every / f"img_{i:06d}.jpg"
        if not p.exists():
            rng = np.random.default_rng([7, i])
            p.write_bytes(_jpeg_bytes(_scene(rng, int(rng.integers(64, 257)), int(rng.integers(64, 257)))))
    out = work / "data" / "images" / f"n{n}"
    if not _marker(out, {"n": n}):
        out.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _link(every / f"img_{i:06d}.jpg", out / f"img_{i:06d}.jpg")
        _mark(out, {"n": n})
    return out


def concepts_import(work: Path, n: int, variant: int) -> Path:
    """One released variant's concepts: three sounding objects and a caption per image (about 1 in 20
    captions of variant 0 names a silent keyword, so the filter drops those images)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / "data" / f"concepts_n{n}_v{variant}.parquet"
    if path.exists():
        return path
    rows = []
    for i in range(n):
        rng = np.random.default_rng([11, variant, i])
        objs = rng.choice(len(OBJECTS), size=3, replace=False)
        items = [f"{OBJECTS[o].capitalize()} - A {OBJECTS[o]} {SOUNDS[int(rng.integers(len(SOUNDS)))]}" for o in objs]
        caption = (f"A simple logo of a {OBJECTS[objs[0]]}." if i % 20 == 7 and variant == 0
                   else f"A photo with a {OBJECTS[objs[0]]} and a {OBJECTS[objs[1]]}.")
        rows.append({"source": IMAGE_SOURCE, "relpath": f"img_{i:06d}.jpg", "concepts": items, "caption": caption})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _recording(seed: int, seconds: int) -> np.ndarray:
    """Segments of 2-12 s of the demo's synthetic sound kinds, one after another."""
    from sonify.sources.demo import _signal

    rng = np.random.default_rng([13, seed])
    total, parts = seconds * POOL_RATE, []
    while sum(len(p) for p in parts) < total:
        n = int(rng.uniform(2, 12) * POOL_RATE)
        parts.append(_signal(KINDS[int(rng.integers(len(KINDS)))], POOL_RATE, n, rng) * rng.uniform(0.3, 1.0))
    return np.clip(np.concatenate(parts)[:total], -1, 1).astype(np.float32)


def audio_pool(work: Path, chunks: int) -> tuple[Path, int]:
    """A folder of files that the `audio` stage cuts into about `chunks` 5 s chunks; (folder, exact chunk count)."""
    import soundfile as sf

    per_file = min(CHUNKS_PER_FILE, chunks)
    files = max(1, round(chunks / per_file))
    distinct = min(files, DISTINCT_RECORDINGS)
    out = work / "data" / "audio" / f"c{chunks}"
    params = {"files": files, "per_file": per_file, "distinct": distinct, "rate": POOL_RATE}
    if not _marker(out, params):
        recordings = work / "data" / "audio" / f"recordings_{per_file}"
        recordings.mkdir(parents=True, exist_ok=True)
        for d in range(distinct):
            p = recordings / f"rec_{d:03d}.wav"
            if not p.exists():
                tmp = p.with_suffix(".tmp.wav")
                sf.write(tmp, _recording(d, per_file * 5), POOL_RATE, subtype="PCM_16")
                tmp.rename(p)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            _link(recordings / f"rec_{i % distinct:03d}.wav", out / f"f{i:05d}.wav")
        _mark(out, params)
    return out, files * per_file
