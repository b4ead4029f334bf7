"""Train the audio-conditioned PixArt DiT: `python -m sonify.train_dit [config=train_demo] key=value ...`.

Configs are `pipelines/train_<name>.yaml` over the defaults below (the paper's: AdamW, lr 3.16e-5,
weight decay 3e-2, global batch 640). `trainer=local` runs in this process (one CPU or GPU);
`trainer=ray` runs Ray Train's TorchTrainer with `num_workers` DDP workers (`use_gpu`), on a local
Ray or the cluster in RAY_ADDRESS. `shards=` and `val_shards=` take the shards stage's list files
(`<run>/shards/train.txt`, `val.txt`) or a glob. Checkpoints are `<output_dir>/checkpoint-<step>/` with
`transformer/` and `transformer_ema/` (loaded by diffusers' `from_pretrained`), `conditioner/` and
`conditioner_ema/` (the null-audio token), and `training_state.pt` (optimizer, LR scheduler, the EMA's counters, step
and every rank's data position); `resume=latest` continues each rank exactly where it stopped, mid-epoch
included, without reading what it consumed. `val_every` steps: validation loss and image grid.
"""

from __future__ import annotations

import json
import logging
import sys

from sonify.engine.errors import SonifyError
from sonify.engine.settings import describe
from sonify.training.config import TrainConf, load_train_config
from sonify.training.loop import run_ray, train_loop


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("keys (key=value) and their defaults; pipelines/train_<config>.yaml sets some of them:")
        print("\n".join(describe(TrainConf)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_train_config(argv)
        if cfg.dit.startswith("tiny:"):
            print("model: a tiny random PixArt built from a config (demo only; outputs are not meaningful)")
        metrics = run_ray(cfg) if cfg.trainer == "ray" else train_loop(cfg)
    except SonifyError as e:
        print(f"sonify.train_dit: {e}", file=sys.stderr)
        return 2
    print(f"done: {json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()})}; "
          f"checkpoints in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
