"""`python -m sonify.bench frontends`: CPU-ms per item of the CPU work in front of every model.

One process, one torch thread, the same inputs for both sides, in one run (CPU time of the
process, `time.process_time`, so other load on a shared machine counts less than in wall time):
  CLAP  a 5 s chunk at 48 kHz (zero-padded as the embed stage passes it) -> (1, 1001, 64) log-mel:
        `ClapFeatureExtractor` (numpy, one rfft per frame) vs `ClapFrontend` (torch, batched)
  AST   a 5 s mixture at 16 kHz -> (498, 128) filterbanks (the features stage's clip length):
        `ASTFeatureExtractor` (numpy Kaldi emulation) vs `ASTFrontend`
Target: torch <= 1/5 of transformers. Also, for the BENCHMARKS projection, the decodes the stages
do per item (no baseline): a 5 s chunk of a 44.1 kHz stereo FLAC decoded and resampled to 48 kHz
mono (embed) and to 16 kHz (mix), a 5 s 16 kHz FLAC mixture read (features), and an SA-1B-sized
JPEG (2250 x 1500) decoded to RGB at most 1024 on the longer side (concepts) and to a 512 px
centre crop (latents); then the projection of that CPU work for the paper's build
(`pipelines/bench/paper_scale.yaml`: items, and cores per 8-GPU node).
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np

from sonify.engine.cli import command_parser

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes"


def cpu_ms_per_item(fn, items: int, repeats: int) -> float:
    """Least CPU time of `repeats` calls of `fn` (each over `items` items), per item, in ms; one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / items * 1000.0


def _signal(rate: int, seconds: float, rng) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (t % 1 < 0.7) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def frontend_rows(batch: int, repeats: int) -> list[dict]:
    from transformers import ASTFeatureExtractor, ClapFeatureExtractor

    from sonify.models.encoders import kaldi_frames
    from sonify.models.frontends import ASTFrontend, ClapFrontend, ast_mel_filters_as_designed

    rng = np.random.default_rng(0)
    clap = ClapFeatureExtractor.from_pretrained(SHAPES / "laion__clap-htsat-unfused")
    with ast_mel_filters_as_designed():
        ast = ASTFeatureExtractor.from_pretrained(SHAPES / "MIT__ast-finetuned-audioset-10-10-0.4593",
                                                  max_length=kaldi_frames(5 * 16000))
    chunks = [_signal(48000, 5.0, rng) for _ in range(batch)]
    mixes = [_signal(16000, 5.0, rng) for _ in range(batch)]
    cf, af = ClapFrontend(clap), ASTFrontend(ast)
    rows = []
    for name, ref, mine in (
            ("CLAP 5 s @ 48 kHz", lambda: clap(chunks, sampling_rate=48000), lambda: cf(chunks)),
            ("AST 5 s @ 16 kHz", lambda: ast(mixes, sampling_rate=16000), lambda: af(mixes))):
        t_ref, t_torch = cpu_ms_per_item(ref, batch, repeats), cpu_ms_per_item(mine, batch, repeats)
        rows.append({"item": name, "transformers_ms": t_ref, "torch_ms": t_torch, "ratio": t_ref / t_torch})
    return rows


def decode_rows(repeats: int) -> list[dict]:
    import soundfile as sf
    from PIL import Image

    from sonify.media.audio import load_chunk
    from sonify.media.image import center_crop, load_rgb

    rng = np.random.default_rng(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        src = Path(tmp) / "src.flac"
        sf.write(src, np.stack([_signal(44100, 30.0, rng)] * 2, axis=1), 44100, subtype="PCM_16")
        mix = Path(tmp) / "mix.flac"
        sf.write(mix, _signal(16000, 5.0, rng), 16000, subtype="PCM_24")
        n = 5 * 44100
        for name, fn in (("audio chunk -> 48 kHz mono (embed)", lambda: load_chunk(str(src), n, n, 48000, 5.0)),
                         ("audio chunk -> 16 kHz mono (mix)", lambda: load_chunk(str(src), n, n, 16000, 5.0)),
                         ("mixture FLAC read (features)", lambda: sf.read(mix, dtype="float32"))):
            rows.append({"item": name, "ms": cpu_ms_per_item(fn, 1, repeats)})
    y, x = np.mgrid[0:1500, 0:2250]
    pixels = np.stack([(x * 7 + y * 3) % 256, (x ^ y) % 256, (rng.integers(0, 40, x.shape) + y // 6) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    rows.append({"item": "SA-1B JPEG 2250x1500 -> RGB <= 1024 (concepts)",
                 "ms": cpu_ms_per_item(lambda: load_rgb(data, 89_478_485, 1024), 1, repeats)})
    rows.append({"item": "SA-1B JPEG 2250x1500 -> 512 px centre crop (latents)",
                 "ms": cpu_ms_per_item(lambda: center_crop(load_rgb(data, 89_478_485, None), 512), 1, repeats)})
    return rows


def projection(front: list[dict], decode: list[dict], proj) -> None:
    """The CPU work in front of the GPU stages of the paper's build, from the CPU-ms measured above."""
    w = proj.workload
    ms = {r["item"]: r["ms"] for r in decode}
    fe = {r["item"].split()[0]: r for r in front}
    images, vlms = int(w.images), int(w.vlms)
    work = [  # (stage, items, decode ms, front end ms with transformers, front end ms with torch on the GPU)
        ("concepts: JPEG -> <= 1024 px", images * vlms, ms["SA-1B JPEG 2250x1500 -> RGB <= 1024 (concepts)"], 0.0, 0.0),
        ("embed_audio: chunk -> 48 kHz + CLAP", int(w.audio_chunks), ms["audio chunk -> 48 kHz mono (embed)"], fe["CLAP"]["transformers_ms"], 0.0),
        ("features: FLAC + AST", images * vlms, ms["mixture FLAC read (features)"], fe["AST"]["transformers_ms"], 0.0),
        ("latents: JPEG -> 512 crop", images, ms["SA-1B JPEG 2250x1500 -> 512 px centre crop (latents)"], 0.0, 0.0),
    ]
    hw = list(proj.hardware.items())
    print("\nProjected (not measured): CPU hours of the paper's build per 8-GPU node. 'before': the front ends in numpy")
    print("and every decode inside the model actor, one core per GPU, serial with the model; 'now': front ends on the GPU,")
    print("decoding on all the node's cores while the models run (hours the GPUs wait only if longer than the model's).")
    print(f"{'work':<38} {'items':>10} {'CPU-ms/item before':>19} {'now':>6} {'core-h before':>13} {'now':>6} "
          + " ".join(f"{name + ' h before/now':>28}" for name, _ in hw))
    for label, n, dec, ref, mine in work:
        before, now = dec + ref, dec + mine
        cells = [f"{n * before / h.gpus / 3.6e6:>12.2f} / {n * now / int(h.cores) / 3.6e6:<13.3f}" for _, h in hw]
        print(f"{label:<38} {n:>10,} {before:>19.1f} {now:>6.1f} {n * before / 3.6e6:>13.0f} {n * now / 3.6e6:>6.0f} " + " ".join(f"{c:>28}" for c in cells))


def main(argv=None) -> None:
    ap = command_parser("bench frontends", __doc__, settings=False)
    ap.add_argument("--batch", type=int, default=8, help="items per call (the stages' model_batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-decode", action="store_true", help="front ends only (no decodes, no projection)")
    ap.add_argument("--projection", default=str(Path(__file__).resolve().parents[2] / "pipelines" / "bench" / "paper_scale.yaml"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(f"CPU-ms per item, one thread, best of {a.repeats} (batch {a.batch})")
    front = frontend_rows(a.batch, a.repeats)
    for r in front:
        verdict = "ok" if r["ratio"] >= 5 else "below the 5x target"
        print(f"  {r['item']:20s} transformers {r['transformers_ms']:7.2f} ms  torch {r['torch_ms']:6.2f} ms  "
              f"ratio {r['ratio']:5.1f}x ({verdict})")
    if not a.no_decode:
        print("decodes per item (CPU-ms, for the projection):")
        decode = decode_rows(a.repeats)
        for r in decode:
            print(f"  {r['item']:52s} {r['ms']:7.2f} ms")
        from omegaconf import OmegaConf

        projection(front, decode, OmegaConf.load(a.projection))


if __name__ == "__main__":
    main()
