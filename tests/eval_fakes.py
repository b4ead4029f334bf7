"""Tiny fake benchmark copies in each dataset's public layout, with videos PyAV encodes here."""

from __future__ import annotations

from pathlib import Path

from sonify.evaluation.demo_data import make_video

COLORS = {"dog barking": (200, 40, 40), "rain": (40, 40, 200), "people marching, band": (40, 200, 40),
          "wood": (150, 100, 50), "metal": (180, 180, 190), "water": (20, 120, 200)}


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


def fake_intothewild(root: Path) -> Path:
    """`<class>/<name>.mp4` with no split folder (Into The Wild has no published layout)."""
    make_video(root / "city traffic" / "c1.mp4", seconds=2.0, color=(120, 120, 40), tone=350.0)
    make_video(root / "fire crackling" / "f1.mp4", seconds=1.0, color=(230, 120, 20), tone=700.0)
    return root


def vggsound_csv_only(root: Path, clips: dict[str, int], train_per_class: int = 2) -> Path:
    """A `vggsound.csv` with `clips[label]` test rows and some train rows per class, and no videos (every clip not_found)."""
    lines = []
    for ci, (label, n) in enumerate(clips.items()):
        for j in range(n + train_per_class):
            lines.append(f'c{ci:03d}_{j:03d},{10 * j},"{label}",{"test" if j < n else "train"}')
    root.mkdir(parents=True, exist_ok=True)
    (root / "vggsound.csv").write_text("\n".join(lines) + "\n")
    return root
