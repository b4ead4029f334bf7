"""`python -m sonify.bench evaluate --images 32 --batch 16 --scoring 1000`

Full-size feature models with random weights (the real ones load the same way), same run, same images:
  sonify  the evaluation extractors from decoded PIL images: FID's Inception-v3 with clean-fid's
          float bicubic resize to 299, CLIP ViT-B/32 with its image processor, Wav2CLIP on 5 s clips
  bare    the same network's forward on a ready tensor of the same shape (the floor: no resize, no processor)
and the metric arithmetic at the paper's sample size: FID (2048-d), NDB (k=50), R@1/5/10 over
`--scoring` rows. Prints images/s, the sonify/bare ratio, and counted GFLOPs per image.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from sonify.bench.common import bench_args, best_of, peak_rss_mib


def _gflops(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    import torch

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 1e9 / x.shape[0]


def main(argv=None) -> None:
    a = bench_args("evaluate", __doc__, argv, images=32, batch=16, scoring=(1000, "rows for the metric arithmetic (the paper's VGGSound: ~1K)"), repeats=2)

    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from sonify.evaluation import metrics as M
    from sonify.evaluation.features import ClipImageFeatures, InceptionFeatures, Wav2ClipFeatures
    from sonify.models.inception import FIDInceptionV3
    from sonify.models.wav2clip import Wav2CLIP

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)) for _ in range(a.images)]
    tmp = tempfile.mkdtemp(prefix="sonify-bench-eval-")
    FIDInceptionV3().save_pretrained(f"{tmp}/inception")
    CLIPModel(CLIPConfig()).save_pretrained(f"{tmp}/clip")   # CLIPConfig's defaults are ViT-B/32's
    CLIPImageProcessorPil().save_pretrained(f"{tmp}/clip")
    Wav2CLIP().save_pretrained(f"{tmp}/wav2clip")
    import soundfile as sf
    wavs = []
    for i in range(a.images):
        wavs.append(f"{tmp}/a{i}.wav")
        sf.write(wavs[-1], (0.1 * rng.standard_normal(80000)).astype(np.float32), 16000)
    inc = InceptionFeatures(f"{tmp}/inception", tmp, "cpu", a.batch)
    clip = ClipImageFeatures(f"{tmp}/clip", tmp, "cpu", a.batch)
    w2c = Wav2ClipFeatures(f"{tmp}/wav2clip", tmp, "cpu", a.batch, seconds=5.0)
    cases = {
        "inception": (lambda: inc(images), inc.model, torch.rand(a.batch, 3, 299, 299)),
        "clip": (lambda: clip(images), lambda x: clip.model.get_image_features(pixel_values=x), torch.rand(a.batch, 3, 224, 224)),
        "wav2clip": (lambda: w2c(wavs), w2c.model, torch.randn(a.batch, 80000)),
    }
    print(f"{a.images} images ({a.images} 5 s clips for wav2clip), batch {a.batch}, torch threads {torch.get_num_threads()}")
    for name, (run, model, x) in cases.items():
        def bare():
            with torch.inference_mode():
                for _ in range(0, a.images, a.batch):
                    model(x)
        t_s, _ = best_of(run, a.repeats)
        t_b, _ = best_of(bare, a.repeats)
        print(f"{name:10s} sonify {a.images / t_s:7.2f} img/s   bare {a.images / t_b:7.2f} img/s   sonify/bare {t_s / t_b:5.2f}   "
              f"{_gflops(model, x[:1]):6.2f} GFLOP/img")
    d = 2048
    real, fake = rng.standard_normal((a.scoring, d)), rng.standard_normal((a.scoring, d)) + 0.1
    emb = rng.standard_normal((a.scoring, 512))
    for name, fn in {"FID 2048-d": lambda: M.frechet_distance(*M.gaussian_stats(real), *M.gaussian_stats(fake)), "NDB k=50": lambda: M.ndb(real, fake, 50),
                     "R@K": lambda: M.recall_at_k(M.retrieval_ranks(emb, emb + 0.1))}.items():
        t0 = time.perf_counter()
        fn()
        print(f"{name:10s} {time.perf_counter() - t0:6.2f} s for {a.scoring} rows")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
