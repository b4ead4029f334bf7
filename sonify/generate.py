"""Generate images from sound: `python -m sonify.generate --checkpoint DIR --audio a.wav [b.wav ...]`.

Loads AST, the trained transformer (EMA weights when present) with its null-audio token, and the
VAE. Several inputs are mixed after loudness normalisation to `--lufs` plus a per-input offset
(`--offsets 0 -6`: the paper's semantic-mixing and loudness-interpolation ablations), or played
one after another with `--sequential`. Classifier-free guidance against the null token, DPM-Solver
steps, a seed and an image count; writes PNGs and a grid.
"""

from __future__ import annotations

import argparse
import sys

from sonify.engine.cli import command, command_parser, out_folder, positive_int, report_errors
from sonify.training.sampling import generate


@command
def main(argv=None) -> int:
    p = command_parser("generate", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", required=True, help="a checkpoint-N folder, or the training output_dir (latest)")
    p.add_argument("--audio", nargs="+", required=True)
    p.add_argument("--offsets", nargs="*", type=float, help="loudness offset in dB per input (default 0 each)")
    p.add_argument("--sequential", action="store_true",
                   help="play the inputs one after another instead of mixing (any number: one AST slot of --seconds each)")
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=positive_int, default=4)
    p.add_argument("--lufs", type=float, default=-23.0, help="loudness each input is normalised to before offsets")
    p.add_argument("--seconds", type=float, default=5.0, help="each input is cut or padded to this length")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=out_folder, default="generated")
    a = p.parse_args(argv)
    if a.sequential and len(a.audio) < 2:     # one input in sequence is that input alone: surely not what was meant
        print("sonify.generate: --sequential plays the inputs one after another: give at least 2 --audio files", file=sys.stderr)
        return 2

    def draw() -> None:
        paths = generate(a.checkpoint, a.audio, a.out, a.offsets, a.sequential, a.guidance, a.steps, a.seed, a.num_images,
                         a.lufs, a.seconds, not a.no_ema, a.device)
        print(f"wrote {len(paths) - 1} images and a grid to {a.out}")
    return report_errors("generate", draw, (OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
