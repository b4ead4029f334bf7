"""Small offline benchmark copies in each corpus's public layout, with PyAV-written videos with sound: the data
of `python -m sonify.evaluate demo` (and of the tests). The pictures are a flat colour per class with a bar
sweeping across; the sound a sine per class. Shapes, names and lists are the real ones; the content is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_video(path: Path, seconds=2.0, fps=8, size=(48, 32), rate=16000, color=(200, 30, 30), tone=440.0, audio=True):
    """An MPEG-4 video with a bar sweeping across a flat colour and (optionally) an AAC sine tone."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        a = c.add_stream("aac", rate=rate) if audio else None
        if a is not None:
            a.layout = "mono"
        n = int(seconds * fps)
        for i in range(n):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[:] = color
            img[:, : (i * size[0]) // n] = 255
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(int(seconds * rate)) / rate
            x = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
            for s in range(0, x.size, 1024):
                f = av.AudioFrame.from_ndarray(x[None, s:s + 1024], format="fltp", layout="mono")
                f.sample_rate = rate
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def _look(i: int) -> dict:
    """A distinct colour and tone for the i-th class."""
    rng = np.random.default_rng(i)
    return {"color": tuple(int(c) for c in rng.integers(20, 230, 3)), "tone": 220.0 + 110.0 * i}


def vggsound_layout(root: Path, clips: dict[str, int], seconds: float = 6.0, train_per_class: int = 1) -> Path:
    """`vggsound.csv` (headerless ytid,start,label,split; labels with commas quoted) and `video/<ytid>_<start:06d>.mp4`:
    `clips[label]` test clips and `train_per_class` train rows (listed, not written) per class."""
    from sonify.sources.corpora.vggsound import clip_name

    lines = []
    for ci, (label, n) in enumerate(clips.items()):
        for j in range(n + train_per_class):
            ytid, start = f"v{ci:02d}{j:02d}-_x", 10 * j
            split = "test" if j < n else "train"
            lines.append(f'{ytid},{start},"{label}",{split}')
            if split == "test":
                make_video(root / "video" / f"{clip_name(ytid, start)}.mp4", seconds=seconds, **_look(ci))
    (root / "vggsound.csv").write_text("\n".join(lines) + "\n")
    return root


def greatesthits_layout(root: Path, hits: dict[str, list[tuple[float, str]]], splits: dict[str, str], seconds: float = 6.0) -> Path:
    """`<stamp>_denoised.mp4`, `<stamp>_times.txt` (time material action reaction) and the `train.txt` / `test.txt` lists."""
    for i, (stamp, events) in enumerate(hits.items()):
        make_video(root / f"{stamp}_denoised.mp4", seconds=seconds, **_look(20 + i))
        (root / f"{stamp}_times.txt").write_text("".join(f"{t:.4f} {m} hit static\n" for t, m in events))
    for split in sorted(set(splits.values())):
        (root / f"{split}.txt").write_text("".join(f"{s}\n" for s, sp in splits.items() if sp == split))
    return root


def class_folder_layout(root: Path, videos: list[tuple[str, str, str]], seconds: float = 10.0) -> Path:
    """`[<split>/]<class>/<name>.mp4` (Landscapes, Into The Wild) for (split or '', class, name) triples."""
    labels = sorted({c for _, c, _ in videos})
    for split, label, name in videos:
        make_video(root / split / label / f"{name}.mp4", seconds=seconds, **_look(40 + labels.index(label)))
    return root
