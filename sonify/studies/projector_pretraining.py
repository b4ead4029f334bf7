"""`projector-pretraining`: the audio projector pre-trained contrastively vs trained from scratch (A.11, Fig. 16).

The paper compares, over epochs, DiT training whose audio projector starts from scratch (its choice)
with one whose projector was first pre-trained against text embeddings (as SonicDiffusion and AudioToken
do). Both variants train here on the same shards with the same seed and settings (a training config,
default the run's demo one, with `--set key=value` overrides); only `projector.pretrain` differs. After
each epoch both generate from the same audio prompts (the run's first mixtures, or `--audio`) from the
same latents: one grid per epoch, and both loss curves (DiT training loss at each epoch's end, and the
pre-training loss). Training resumes where a killed experiment stopped (`resume=latest` per variant).
"""

from __future__ import annotations

from pathlib import Path

NAME = "projector-pretraining"
CHECKPOINT = False     # it trains its own
VARIANTS = {"scratch": "none", "pretrained": "contrastive"}


def add_arguments(p) -> None:
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=200, help="contrastive pre-training steps of the pre-trained variant")
    p.add_argument("--train-config", default="train_demo", help="the training config both variants start from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config overrides (both variants)")
    p.add_argument("--audio", nargs="*", help="audio prompts (default: the run's first --prompts mixtures)")
    p.add_argument("--prompts", type=int, default=4)


def prompts(a, run_dir: Path | None) -> list[str]:
    from sonify.studies.common import StudyError

    if a.audio:
        return list(a.audio)
    if run_dir is None:
        raise StudyError("projector-pretraining: give --audio files or run=<run dir> (its mixtures are the prompts)")
    from sonify.engine.store import TableStore

    mixes = sorted((r["id"], r["path"]) for r in TableStore(run_dir).read("mixes", ["id", "path", "status"]).to_pylist()
                   if r["status"] == "ok")
    if not mixes:
        raise StudyError(f"{run_dir} has no mixtures to use as prompts")
    return [str(Path(run_dir) / p) for _, p in mixes[:a.prompts]]


def count_samples(urls: list[str]) -> int:
    from sonify.training.data import index_shard

    return sum(sum(1 for _, m in index_shard(u)[0] if "latent.npy" in m and "ast.npy" in m) for u in urls)


def run(a, run_dir: Path | None) -> Path:
    import json

    from sonify.engine.errors import ConfigError
    from sonify.studies.common import StudyError, figure_grid, generation_params, line_plot, study_dir, write_summary, write_table
    from sonify.studies.sources import Images
    from sonify.training.config import load_train_config
    from sonify.training.data import expand_shards
    from sonify.training.loop import train_loop
    from sonify.training.sampling import load_audio

    if a.epochs < 1 or a.pretrain_steps < 1:
        raise StudyError("--epochs and --pretrain-steps must be at least 1")
    audio = prompts(a, run_dir)
    clips = [load_audio(p, 16000, 5.0) for p in audio]
    base = [f"config={a.train_config}", "progress=false", f"seed={a.seed}", "val_every=0"]
    if run_dir is not None:
        base += [f"shards={Path(run_dir) / 'shards' / 'train.txt'}", "val_shards="]
        saved = Path(run_dir) / "config.yaml"
        if saved.is_file():
            from omegaconf import OmegaConf
            base.append(f"tiny_dir={OmegaConf.load(saved).models.tiny_dir}")
    params = {"epochs": a.epochs, "pretrain_steps": a.pretrain_steps, "config": base + list(a.set), "audio": audio,
              **generation_params(a)}
    out = study_dir(run_dir, NAME, a.out, params)
    try:
        probe = load_train_config(base + list(a.set))
    except ConfigError as e:
        raise StudyError(str(e)) from None
    samples = count_samples(expand_shards(probe.shards))
    per_epoch = max(1, samples // probe.global_batch)
    rows, cells, pretrain_losses = [], {}, []
    for variant, mode in VARIANTS.items():
        for epoch in range(1, a.epochs + 1):
            steps = epoch * per_epoch
            cfg = load_train_config(base + list(a.set) + [
                f"output_dir={out / variant}", f"steps={steps}", f"checkpoint_every={per_epoch}", f"log_every={per_epoch}",
                f"keep_checkpoints={a.epochs}", "resume=latest", f"projector.pretrain={mode}",
                f"projector.pretrain_steps={a.pretrain_steps}"])
            ckpt = out / variant / f"checkpoint-{steps}"
            record = out / variant / "epoch_metrics.json"       # the training metrics at each epoch's end
            done = json.loads(record.read_text()) if record.is_file() else {}
            if str(epoch) not in done or not (ckpt / "training_state.pt").is_file():
                done[str(epoch)] = train_loop(cfg)
                record.write_text(json.dumps(done))
            metrics = done[str(epoch)]
            images = Images(str(ckpt), 5.0, a.num_images, a.steps, a.guidance, a.seed, a.device)
            for i, clip in enumerate(clips):
                paths = images.make(clip, out / "images" / f"epoch{epoch}", f"{variant}_prompt{i}")
                cells[(epoch, variant, i)] = paths[0]
                rows.append({"variant": variant, "epoch": epoch, "step": steps, "prompt": audio[i], "loss": metrics.get("loss"),
                             "images": [str(Path(p).relative_to(out)) for p in paths]})
        if mode == "contrastive":
            pretrain_losses = json.loads((out / variant / "projector_pretrain" / "losses.json").read_text())["losses"]
    write_table(rows, out / "data.parquet")
    labels = [f"prompt {i}" for i in range(len(clips))]
    for epoch in range(1, a.epochs + 1):
        figure_grid(out / f"epoch{epoch}.png", [[cells[(epoch, v, i)] for v in VARIANTS] for i in range(len(clips))], labels,
                    list(VARIANTS), f"Epoch {epoch}: projector from scratch vs pre-trained (cf. Fig. 16)")
    figure_grid(out / "figure.png", [[cells[(e, v, i)] for e in range(1, a.epochs + 1)] for v in VARIANTS for i in range(len(clips))],
                [f"{v}, prompt {i}" for v in VARIANTS for i in range(len(clips))], [f"epoch {e}" for e in range(1, a.epochs + 1)],
                "Projector pre-training over epochs (cf. Fig. 16)")
    curve = {v: [r["loss"] for r in rows if r["variant"] == v and r["prompt"] == audio[0]] for v in VARIANTS}
    line_plot(out / "losses.png", list(range(1, a.epochs + 1)), curve, "DiT training loss at each epoch's end", "epoch", "loss")
    line_plot(out / "pretrain_loss.png", list(range(1, len(pretrain_losses) + 1)), {"InfoNCE": pretrain_losses},
              "Contrastive projector pre-training", "step", "loss")
    write_summary(out / "summary.md", "Projector pre-training vs from scratch (A.11, Fig. 16)", [
        f"- training config `{a.train_config}` {' '.join(a.set)}; {samples} training samples, {per_epoch} steps per epoch, "
        f"{a.epochs} epochs, seed {a.seed}; the two variants differ only in `projector.pretrain`",
        f"- pre-trained variant: {a.pretrain_steps} steps of symmetric InfoNCE against pooled T(T5(text)) "
        f"(loss {pretrain_losses[0]:.3f} -> {pretrain_losses[-1]:.3f})",
        "", "| epoch | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS),
        *[f"| {e} | " + " | ".join(f"{curve[v][e - 1]:.4f}" for v in VARIANTS) + " |" for e in range(1, a.epochs + 1)],
        "", "![grid](figure.png)", "", "![losses](losses.png)", "", "![pre-training loss](pretrain_loss.png)", "",
        f"One grid per epoch: `epoch1.png` .. `epoch{a.epochs}.png`. Data: `data.parquet`."])
    return out
