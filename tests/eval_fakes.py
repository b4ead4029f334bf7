"""Tiny fake benchmark copies in each dataset's public layout, with videos PyAV encodes here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"dog barking": (200, 40, 40), "rain": (40, 40, 200), "people marching, band": (40, 200, 40),
          "wood": (150, 100, 50), "metal": (180, 180, 190), "water": (20, 120, 200)}


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


def fake_vggsound(root: Path, per_class: int = 3, missing: int = 1) -> Path:
    """`vggsound.csv` (headerless, a quoted label with a comma) and `video/<ytid>_<start:06d>.mp4`; `missing` listed clips absent."""
    from sonify.sources.corpora.vggsound import clip_name

    lines, k = [], 0
    for ci, label in enumerate(["dog barking", "rain", "people marching, band"]):
        for j in range(per_class + 1):
            ytid, start = f"y{ci}{j}-_a{k}", 10 * j
            split = "train" if j == per_class else "test"
            lines.append(f'{ytid},{start},"{label}",{split}')
            if not (split == "test" and ci == 0 and j < missing):
                make_video(root / "video" / f"{clip_name(ytid, start)}.mp4", seconds=2.0, color=COLORS[label], tone=300 + 200 * ci)
            k += 1
    (root / "vggsound.csv").write_text("\n".join(lines) + "\n")
    return root


def fake_greatesthits(root: Path) -> Path:
    """`<stamp>_denoised.mp4`, `<stamp>_times.txt` (time material action reaction) and train.txt / test.txt."""
    stamps = ["2015-02-16-16-49-06", "2015-02-16-17-02-11", "2015-02-17-10-00-00"]
    times = {stamps[0]: [(0.4, "wood", "hit", "static"), (0.6, "wood", "hit", "static"), (1.5, "metal", "scratch", "static")],
             stamps[1]: [(0.5, "None", "hit", "static"), (1.0, "water", "hit", "rigid-motion"), (2.4, "metal", "hit", "static")],
             stamps[2]: [(1.0, "wood", "hit", "static")]}
    for i, stamp in enumerate(stamps):
        make_video(root / f"{stamp}_denoised.mp4", seconds=3.0, color=COLORS["wood"], tone=500 + 100 * i)
        (root / f"{stamp}_times.txt").write_text("".join(f"{t:.4f} {m} {a} {r}\n" for t, m, a, r in times[stamp]))
    (root / "test.txt").write_text(f"{stamps[0]}\n{stamps[1]}\n")
    (root / "train.txt").write_text(f"{stamps[2]}\n")
    return root


def fake_landscapes(root: Path) -> Path:
    """`<split>/<class>/<name>.mp4`."""
    make_video(root / "test" / "raining" / "r1.mp4", seconds=2.5, color=COLORS["rain"])
    make_video(root / "test" / "thunder" / "t1.mp4", seconds=1.0, color=(90, 90, 90), tone=200.0)
    make_video(root / "train" / "raining" / "r2.mp4", seconds=1.0, color=COLORS["rain"])
    return root


def fake_vegas(root: Path) -> Path:
    """`<class>/video/<name>.mp4`, one of them without a sound track."""
    make_video(root / "dog" / "video" / "d1.mp4", seconds=1.5, color=COLORS["dog barking"])
    make_video(root / "drum" / "video" / "x1.mp4", seconds=1.5, color=(10, 10, 10), audio=False)
    return root
