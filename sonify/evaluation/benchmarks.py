"""Benchmark clip lists: a local copy of a benchmark -> `clips.parquet` + one WAV and one JPEG per clip.

Each row is (id, class, ground-truth JPEG, conditioning WAV); a clip that cannot be read is an error
row with its reason. The corpus formats are parsed by `sources.corpora.<corpus>`; the clip rules
(where a corpus has no natural clip) are in those modules' docstrings. For every benchmark the
ground-truth image is one decoded frame, and the audio is a `seconds` window centred on it (moved
inside the video where the video is shorter), mono, at `audio_rate`, written as 16-bit WAV.

The paper's protocol (Seeing Sound, Sec. 4): "all the available instances across different splits"
for Greatest Hits, Landscapes, Into The Wild and VEGAS (`split: null`), Landscapes + Into The Wild as
one set (`landscapes_itw`, the union of both clip lists), and ~1K VGGSound test clips class-balanced
"following Sound2Scene", read here as Sound2Scene's 50 classes x 20 clips (an interpretation).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa

from sonify.engine.errors import ConfigError, error_text
from sonify.engine.files import atomic_write
from sonify.engine.keys import keyed_rng
from sonify.evaluation.config import BENCHMARKS, BenchmarkConf, EvalConf

CLIPS_FILE = "clips.parquet"
CLIPS_SCHEMA = pa.schema([
    ("id", pa.string()), ("benchmark", pa.string()), ("label", pa.string()), ("split", pa.string()),
    ("source", pa.string()),         # the corpus the clip comes from (landscapes_itw: landscapes or intothewild)
    ("video", pa.string()),          # path inside that corpus's root
    ("frame_time", pa.float64()),    # seconds into the video of the ground-truth frame
    ("start", pa.float64()), ("seconds", pa.float64()),   # the audio window
    ("image", pa.string()), ("audio", pa.string()),       # written files, relative to the clip list's folder
    ("status", pa.string()), ("error", pa.string()),
])


def balanced_sample(labels: list[str], n: int | None, seed: int, purpose: str) -> list[int]:
    """Indices of a class-balanced sample: classes take turns (in a keyed order), each giving its next clip in a keyed shuffle.

    Class sizes differ by at most one unless a class runs out; the result is sorted and independent of row order.
    """
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    queues = {lab: [idx[j] for j in keyed_rng(seed, purpose, lab).permutation(len(idx))] for lab, idx in by_class.items()}
    order = [sorted(queues)[j] for j in keyed_rng(seed, purpose, "class order").permutation(len(queues))]
    chosen: list[int] = []
    while len(chosen) < n:
        for lab in order:
            if queues[lab] and len(chosen) < n:
                chosen.append(queues[lab].pop(0))
    return sorted(chosen)


def _spec(id_, label, split, video, frame_time=None):
    return {"id": id_, "label": label, "split": split or "", "video": video, "frame_time": frame_time}


def read_class_list(path: str) -> list[str]:
    """Class names, one a line; blank lines and `#` lines (the file's source) skipped."""
    from sonify.evaluation.config import data_file

    p = data_file(path)
    if not p.is_file():
        raise ConfigError(f"benchmarks.vggsound.classes: no file {path} (a file of class names, one a line, or `all`)")
    names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise ConfigError(f"benchmarks.vggsound.classes: {path} lists no class (class names, one a line, or `all`)")
    return names


def per_class_sample(labels: list[str], per_class: int, seed: int, purpose: str) -> list[int]:
    """Indices of `per_class` rows of every class (all of a class with fewer), each class in its own seeded shuffle; sorted."""
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    return sorted(idx[j] for lab, idx in by_class.items() for j in keyed_rng(seed, purpose, lab).permutation(len(idx))[:per_class])


def _vggsound(root: Path, bc: BenchmarkConf, seed: int, notes: list[str]) -> list[dict]:
    from sonify.sources.corpora import vggsound

    csv = root / "vggsound.csv"
    if not csv.exists():
        raise ConfigError(f"no vggsound.csv in --root {root} (VGGSound's headerless CSV: ytid,start,label,split)")
    t = vggsound.read_csv(csv)
    rows = [r for r in t.to_pylist() if bc.split is None or r["split"] == bc.split]
    if bc.classes not in (None, "all"):
        listed = read_class_list(bc.classes)
        known = set(t.column("label").to_pylist())
        if not known & set(listed):
            raise ConfigError(f"benchmarks.vggsound.classes: none of the {len(listed)} classes in {bc.classes} is a label of {csv} "
                              f"(first: {listed[0]!r}); names must be VGGSound's labels exactly, or `all`")
        present = {r["label"] for r in rows}
        absent = [c for c in listed if c not in present]
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        notes.append(f"{len(listed)} listed classes ({bc.classes})"
                     + (f"; {len(absent)} not in the {bc.split or 'whole'} CSV: {shown}" if absent else ""))
        rows = [r for r in rows if r["label"] in set(listed)]
    labels = [r["label"] for r in rows]
    keep = list(range(len(rows)))
    if bc.per_class is not None:
        keep = per_class_sample(labels, bc.per_class, seed, "vggsound")
        short = sorted((lab, labels.count(lab)) for lab in set(labels) if labels.count(lab) < bc.per_class)
        notes.append(f"{len(set(labels))} classes, {bc.per_class} clips each" + (
            f"; fewer where a class has fewer: {', '.join(f'{lab} ({n})' for lab, n in short)}" if short else ""))
    keep = [keep[i] for i in balanced_sample([labels[i] for i in keep], bc.num_clips, seed, "vggsound")]
    out = []
    for r in (rows[i] for i in keep):
        name = vggsound.clip_name(r["ytid"], r["start"])
        found = [p for p in (root / "video" / f"{name}.mp4", root / f"{name}.mp4") if p.exists()]
        out.append(_spec(name, r["label"], r["split"], (found[0] if found else root / "video" / f"{name}.mp4").relative_to(root).as_posix()))
    return out


def _greatesthits(root: Path, bc: BenchmarkConf, seed: int, notes: list[str]) -> list[dict]:
    from sonify.sources.corpora import greatesthits as gh

    splits = gh.split_of(root)
    out = []
    for stamp in gh.recordings(root):
        split = splits.get(stamp, "")
        if bc.split is not None and split != bc.split:
            continue
        for hit in gh.hit_clips(gh.read_times(root / f"{stamp}_times.txt"), bc.min_gap):
            out.append(_spec(f"{stamp}_{int(round(hit['time'] * 1000)):08d}", hit["material"], split,
                             gh.video_path(root, stamp).name, hit["time"]))
    keep = balanced_sample([s["label"] for s in out], bc.num_clips, seed, "greatesthits")
    out = [out[i] for i in keep]
    by_split = {sp: sum(s["split"] == sp for s in out) for sp in sorted({s["split"] for s in out})}
    notes.append(f"{len(out)} kept hits (one instance each) from {len({s['id'].rsplit('_', 1)[0] for s in out})} recordings; "
                 + ", ".join(f"{sp or 'no split'}: {n}" for sp, n in by_split.items()))
    return out


def _windows(root: Path, bc: BenchmarkConf, seed: int, listing, name: str, notes: list[str] | None = None) -> list[dict]:
    from sonify.media.video import VideoRejected, probe
    from sonify.sources.corpora.landscapes import windows

    out = []
    for r in listing(root).to_pylist():
        if bc.split is not None and r["split"] != bc.split:
            continue
        stem = Path(r["relpath"]).with_suffix("").as_posix().replace("/", "__")
        try:
            starts = windows(probe(root / r["relpath"]).duration, bc.seconds, bc.max_clips_per_video)
        except VideoRejected:
            starts = [0.0]   # the error row comes from decoding
        for i, s in enumerate(starts):
            out.append(_spec(f"{stem}_{i:02d}", r["label"], r["split"], r["relpath"], s + bc.seconds / 2))
    keep = balanced_sample([s["label"] for s in out], bc.num_clips, seed, name)
    return [out[i] for i in keep]


def _vegas(root: Path, bc: BenchmarkConf, seed: int, notes: list[str]) -> list[dict]:
    from sonify.sources.corpora import vegas

    rows = [r for r in vegas.list_videos(root).to_pylist() if bc.split is None or r["split"] == bc.split]
    out = [_spec(Path(r["relpath"]).stem, r["label"], r["split"], r["relpath"]) for r in rows]
    keep = balanced_sample([s["label"] for s in out], bc.num_clips, seed, "vegas")
    return [out[i] for i in keep]


def _roots(benchmark: str, root) -> dict[str, Path]:
    """The corpus roots of a benchmark: one folder, or for a union one per part (`{part: folder}`)."""
    from sonify.evaluation.config import UNIONS

    parts = UNIONS.get(benchmark, (benchmark,))
    roots = {k: Path(v) for k, v in root.items()} if isinstance(root, dict) else {parts[0]: Path(root)}
    if set(roots) != set(parts):
        raise ConfigError(f"{benchmark} needs one --root per part: " + " ".join(f"--root {p}=DIR" for p in parts))
    for p in roots.values():
        if not p.is_dir():
            raise ConfigError(f"--root {p} is not a folder")
    return roots


def clip_specs(benchmark: str, root, cfg: EvalConf, notes: list[str] | None = None) -> list[dict]:
    """Every clip of a benchmark as a spec (id, label, split, source, video, frame time, `root`); `notes` gets the summary."""
    from sonify.sources.corpora import landscapes

    notes = [] if notes is None else notes
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid choices: {', '.join(BENCHMARKS)}")
    roots = _roots(benchmark, root)
    bc = getattr(cfg.benchmarks, benchmark)
    out = []
    for source, r in roots.items():
        if source in ("landscapes", "intothewild"):
            specs = _windows(r, bc, cfg.seed, landscapes.list_videos, source, notes)
        else:
            specs = {"vggsound": _vggsound, "greatesthits": _greatesthits, "vegas": _vegas}[source](r, bc, cfg.seed, notes)
        for s in specs:
            out.append(dict(s, source=source, root=r, id=f"{source}__{s['id']}" if len(roots) > 1 else s["id"]))
    if len(roots) > 1:
        notes.append(f"{benchmark}: the union of " + ", ".join(f"{sum(s['source'] == k for s in out)} {k}" for k in roots) + " clips")
    return out


def extract(out: Path, spec: dict, seconds: float, rate: int, quality: int) -> dict:
    """Decode one clip's frame and audio window to files (the video under `spec['root']`); the row, or an error row with the reason."""
    import soundfile as sf

    from sonify.media.video import VideoRejected, audio_window, frame_at, probe

    root = Path(spec.pop("root"))
    row = dict(spec, start=None, seconds=seconds, image=f"frames/{spec['id']}.jpg", audio=f"audio/{spec['id']}.wav",
               status="ok", error=None)
    try:
        info = probe(root / spec["video"])
        t = info.duration / 2 if spec["frame_time"] is None else min(spec["frame_time"], info.duration)
        start = float(np.clip(t - seconds / 2, 0.0, max(0.0, info.duration - seconds)))
        wave = audio_window(root / spec["video"], start, seconds, rate)
        buf = io.BytesIO()
        sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
        atomic_write(out / row["audio"], buf.getvalue())
        buf = io.BytesIO()
        frame_at(root / spec["video"], t).save(buf, format="JPEG", quality=quality)
        atomic_write(out / row["image"], buf.getvalue())
        row.update(frame_time=t, start=start)
    except VideoRejected as e:
        row.update(status="error", error=error_text(e.reason, e.detail), image=None, audio=None)
    return row


def prepare(benchmark: str, root, out: str | Path, cfg: EvalConf) -> pa.Table:
    """Write `<out>/clips.parquet`, `<out>/frames/<id>.jpg` and `<out>/audio/<id>.wav`; `root` is a folder, or
    `{part: folder}` for a union benchmark. The summary lines (counts, short classes) are in the table's `notes` metadata.

    Every file is written again (settings may have changed), and files of clips no longer listed are removed.
    """
    import json

    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    out = Path(out)
    notes: list[str] = []
    specs = clip_specs(benchmark, root, cfg, notes)
    if not specs:
        raise ConfigError(f"{benchmark}: no clip to take from --root {root}" + (f" ({'; '.join(notes)})" if notes else ""))
    bc = getattr(cfg.benchmarks, benchmark)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = [dict(extract(out, s, bc.seconds, cfg.audio_rate, cfg.jpeg_quality), benchmark=benchmark)
            for s in tqdm(specs, desc=f"prepare {benchmark}", unit="clip", disable=not cfg.progress)]
    table = pa.Table.from_pylist(rows, schema=CLIPS_SCHEMA).replace_schema_metadata({"notes": json.dumps(notes)})
    atomic_write(out / CLIPS_FILE, lambda tmp: pq.write_table(table, tmp))
    listed = {r[k] for r in rows for k in ("image", "audio") if r[k]}
    for f in [*(out / "frames").iterdir(), *(out / "audio").iterdir()]:
        if f.relative_to(out).as_posix() not in listed:
            f.unlink()
    return table


def notes_of(table: pa.Table) -> list[str]:
    import json

    meta = table.schema.metadata or {}
    return json.loads(meta.get(b"notes", b"[]"))


def read_listing(path: str | Path, name: str, what: str, command: str) -> tuple[pa.Table, Path]:
    """A listing Parquet (its file, or the folder holding `name`) and the folder its paths are relative to;
    a missing one is a one-line error naming the command that writes it."""
    import pyarrow.parquet as pq

    p = Path(path)
    p = p / name if p.is_dir() else p
    if not p.exists():
        raise ConfigError(f"no {what} at {p}; run `python -m sonify.evaluate {command}` first")
    return pq.read_table(p), p.parent


def read_clips(path: str | Path) -> tuple[pa.Table, Path]:
    """A clip list (its file, or the folder holding `clips.parquet`) and the folder its paths are relative to."""
    return read_listing(path, CLIPS_FILE, "clip list", "prepare")
