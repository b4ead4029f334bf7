"""`python -m sonify.bench models`: the default models at full size on this CPU, and the paper's build projected.

Every model is its `shape:<hub id>` (published architecture, random weights, loaded through
`from_pretrained`), so the sizes and FLOPs are the real ones; the outputs mean nothing.
  params      counted on the meta device (the full 7B VLM never materialises)
  GFLOP/item  counted with torch.utils.flop_counter on one item; the VLMs component by component
              (vision tower + projector, language model, head) on the meta device at full depth
  s/item      measured on this CPU in fp32 (bf16 is no faster on it)
  stage/bare  the stage's PartitionWorker on one partition against bare model calls on the same
              batches decoded beforehand (embed, features, latents: target <= 1.05; concepts)
Scaled, not measured at full depth: the VLM runs with one language-model layer and its full vision
tower, that layer's time is taken with hooks and multiplied to the full depth, and a full reply is
extrapolated from the per-token cost of a few tokens; the DiT training step is timed with 1 and 2
blocks and scaled per block to 28. The paper's build is then projected from the counted FLOPs, the
published dense bf16 peaks and the utilisation stated in pipelines/bench/paper_scale.yaml.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from sonify.bench.common import best_of, demo_config, peak_rss_mib
from sonify.engine.cli import command_parser
from sonify.engine import model_ids
from sonify.models.frontends import FRONTENDS
from sonify.stages import STAGES

LLAVA, CLAP, AST, PIXART = model_ids.VLM, model_ids.CLAP, model_ids.AST, model_ids.PIXART
SMOLVLM = "HuggingFaceTB/SmolVLM-Instruct"
PARTS = ("embed", "features", "latents", "concepts", "train_dit")
UPSTREAM = tuple(STAGES)[:list(STAGES).index("mix") + 1]   # the stages whose tables the encoder parts read


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def n_params(spec: str, component: str | None = None) -> int:
    from sonify.models.shape import meta_model

    return sum(p.numel() for p in meta_model(spec, component).parameters())


class LayerClock:
    """Wall time spent inside `modules` (forward hooks), to scale a reduced-depth model per layer."""

    def __init__(self, modules):
        self.seconds, self._t0 = 0.0, None
        for m in modules:
            m.register_forward_pre_hook(self._start)
            m.register_forward_hook(self._stop)

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t0


def language_model(model):
    inner = model.model
    return getattr(inner, "language_model", None) or inner.text_model


def vlm_flops(spec: str, reduced: str, image_size: tuple[int, int], prompt_tokens: int, shape_dir: str,
              shared_tokens: int = 0, processor_kwargs: dict | None = None) -> dict:
    """FLOPs of one VLM call at full depth on the meta device: vision + prefill, and one more decoded token;
    `prefix`: the prefill of the image and the first `shared_tokens` template tokens alone (what the
    prompts of one image share, `HFVLM.generate_prompts`)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from sonify.models.loading import load_pretrained
    from sonify.models.shape import meta_model

    from sonify.models.vlm import apply_processor_settings

    proc = load_pretrained(AutoProcessor, reduced, shape_dir, role="vlms")   # the processor of a reduced build
    apply_processor_settings(proc, reduced, processor_kwargs or {})
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
                                    add_generation_prompt=True)
    inputs = proc(images=[Image.new("RGB", image_size)], text=[text], return_tensors="pt")
    image_token = getattr(proc, "image_token", "<image>")
    n_image = int((inputs["input_ids"] == proc.tokenizer.convert_tokens_to_ids(image_token)).sum())
    model = meta_model(spec)
    inner, lm = model.model, language_model(model)
    px = inputs["pixel_values"].to("meta")

    def vision():
        if hasattr(inner, "vision_tower"):       # LLaVA: CLIP penultimate layer, CLS dropped, MLP projector
            hidden = inner.vision_tower(px, output_hidden_states=True).hidden_states[-2][:, 1:]
            inner.multi_modal_projector(hidden)
        else:  # Idefics3: SigLIP on every tile, pixel-shuffle connector; called part by part because its
            # patch-mask helper reads values, which the meta device has not (position ids are a lookup)
            vm, tiles = inner.vision_model, px.flatten(0, 1)
            patches = vm.embeddings.patch_embedding(tiles).flatten(2).transpose(1, 2)
            hidden = vm.post_layernorm(vm.encoder(inputs_embeds=patches).last_hidden_state)
            inner.connector(hidden)

    width = lm.config.hidden_size
    L = n_image + prompt_tokens

    def lm_pass(n):
        return lambda: model.lm_head(lm(inputs_embeds=torch.empty(1, n, width, device="meta")).last_hidden_state[:, -1:])

    with torch.no_grad():
        f_vision = count_flops(vision)
        f_prefill = count_flops(lm_pass(L))
        f_token = count_flops(lm_pass(L + 1)) - f_prefill   # no-cache difference: linear parts exact
        f_prefix = count_flops(lm_pass(n_image + shared_tokens))
    return {"image_tokens": n_image, "vision": f_vision, "prefill": f_prefill, "token": f_token, "prefix": f_prefix,
            "params": sum(p.numel() for p in model.parameters()), "layers": lm.config.num_hidden_layers}


def vlm_image_flops(f: dict, prompts: int, reply_tokens: int, shared: bool = True) -> tuple[float, float]:
    """(vision + prefill, decode) FLOPs per image for `prompts` prompts: with the image prefill shared, the
    vision tower and the prefix run once and each prompt prefills only its own tokens (the difference of
    two no-cache passes: exact for the linear layers, attention over the prefix counted as if recomputed)."""
    if shared:
        return f["vision"] + f["prefix"] + prompts * (f["prefill"] - f["prefix"]), reply_tokens * f["token"]
    return prompts * (f["vision"] + f["prefill"]), reply_tokens * f["token"]


def main(argv=None) -> None:
    ap = command_parser("bench models", __doc__, settings=False)
    ap.add_argument("--images", type=int, default=24, help="demo images the upstream stages run on")
    ap.add_argument("--items", type=int, default=6, help="rows per encoder stage (embed: this many chunks and texts)")
    ap.add_argument("--vae-items", type=int, default=2)
    ap.add_argument("--vlm-images", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=4, help="new tokens per prompt in the timed VLM runs")
    ap.add_argument("--dit-batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="*", choices=PARTS, default=list(PARTS),
                    help="measure only these (the projection needs all)")
    ap.add_argument("--shape-dir", default=None, help="where shape models are built (default: a temp dir)")
    ap.add_argument("--frontend", choices=FRONTENDS, default="torch",
                    help="CLAP's and AST's audio front end (stages.embed/features.frontend)")
    ap.add_argument("--projection", default=str(Path(__file__).resolve().parents[2] / "pipelines" / "bench" / "paper_scale.yaml"))
    a = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    proj = OmegaConf.load(a.projection)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sonify-bench-models-") as tmp:
        shape_dir = a.shape_dir or str(Path(tmp) / "shapes")
        base = ("run.progress=false", f"demo_data.num_images={a.images}", f"models.tiny_dir={shape_dir}",
                f"stages.embed.frontend={a.frontend}", f"stages.features.frontend={a.frontend}")
        from sonify.engine.executor import run_stage
        from sonify.sources.demo import ensure_demo_data
        from sonify.stages import get_stage

        cfg = demo_config(tmp, *base)
        ensure_demo_data(cfg.demo_data.dir, a.images, 0)
        for name in UPSTREAM:                                     # tiny models: only their tables are needed
            run_stage(get_stage(name), cfg, progress_bar=False)
        ctx = dict(tmp=tmp, base=base, a=a)
        parts = {
            "embed": lambda: _embed(ctx),
            "features": lambda: _encoder(ctx, "features", f"models.ast=shape:{AST}", AST, None, "AST (5 s mixture)", a.items),
            "latents": lambda: _encoder(ctx, "latents", f"models.vae=shape:{PIXART}", PIXART, "vae", "VAE encoder (512 px)",
                                        a.vae_items, "stages.latents.resolution=512"),
            "concepts": lambda: _concepts(ctx, shape_dir, proj),
            "train_dit": lambda: _dit(a, shape_dir),
        }
        for name in PARTS:
            if name in a.only:
                rows += parts[name]()
    _print(rows, proj, a, complete=set(a.only) == set(PARTS))
    print(f"peak RSS {peak_rss_mib():.0f} MiB; torch threads {torch.get_num_threads()}")


def _worker(ctx, stage: str, *overrides: str):
    from omegaconf import OmegaConf

    from sonify.engine.executor import PartitionWorker
    from sonify.engine.partitions import work_table
    from sonify.stages import get_stage

    cls = get_stage(stage)
    # one item per model call: FLOPs and seconds per item are then per item, not per padded fixed-shape batch
    single = [f"stages.{cls.conf_key or stage}.model_batch=1"] if cls.models else []
    cfg = demo_config(ctx["tmp"], *ctx["base"], *single, *overrides)
    worker = PartitionWorker(cls, OmegaConf.to_container(cfg))
    return worker, work_table(get_stage(stage).work_list(cfg, worker.store))


def _stage_vs_bare(worker, work, bare, repeats: int) -> tuple[float, float]:
    def stage_run():
        stats = worker.run_partition("bench", work)
        assert not stats["failed"], stats["failed"]

    bare()                                                        # warm-up
    # interleaved, best of each: the load of a shared machine drifts over minutes and would otherwise
    # land on whichever side ran second
    t_stage, t_bare = float("inf"), float("inf")
    for _ in range(repeats):
        t_stage = min(t_stage, best_of(stage_run, 1)[0])
        t_bare = min(t_bare, best_of(bare, 1)[0])
    return t_stage, t_bare


def _embed(ctx) -> list[dict]:
    from sonify.media.audio import load_chunk

    a = ctx["a"]
    wa, work_a = _worker(ctx, "embed_audio", f"models.clap=shape:{CLAP}")
    wt, work_t = _worker(ctx, "embed_text", f"models.clap=shape:{CLAP}")
    work_a, work_t = work_a.slice(0, a.items), work_t.slice(0, a.items)
    clap, bs, tbs = wa.stage.clap, wa.stage.conf.batch_size, wt.stage.conf.text_batch_size
    seconds = float(wa.stage.chunk_seconds)
    rows_a, rows_t = work_a.to_pylist(), work_t.to_pylist()
    clips = [[load_chunk(wa.stage.paths.locate(r), r["start_frame"], r["num_frames"], clap.sampling_rate, seconds) for r in rows_a[s:s + bs]]
             for s in range(0, len(rows_a), bs)]
    texts = [r["text"] or "" for r in rows_t]

    def bare_audio():
        for c in clips:
            clap.embed_audio(c)

    def bare_text():
        for s in range(0, len(texts), tbs):
            wt.stage.clap.embed_text(texts[s:s + tbs])

    ta_stage, ta_bare = _stage_vs_bare(wa, work_a, bare_audio, a.repeats)
    tt_stage, tt_bare = _stage_vs_bare(wt, work_t, bare_text, a.repeats)
    n_audio, n_text = len(rows_a), len(rows_t)
    first = clips[0][0]
    f_audio = count_flops(lambda: clap.embed_audio([first]))
    f_text = count_flops(lambda: clap.embed_text(["the sound of a dog barking"]))
    model = clap.model
    p_audio = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("audio_model", "audio_projection")))
    p_text = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("text_model", "text_projection")))
    del wa, wt
    gc.collect()
    ratio = (ta_stage + tt_stage) / (ta_bare + tt_bare)
    return [dict(stage="embed", model="CLAP audio (10 s window)", params=p_audio, flops=f_audio, seconds=ta_bare / n_audio,
                 ratio=ratio, how=f"measured; stage/bare over {n_audio} chunks (embed_audio) + {n_text} texts (embed_text)",
                 key="clap_audio"),
            dict(stage="embed", model="CLAP text", params=p_text, flops=f_text, seconds=tt_bare / n_text, ratio=None,
                 how="measured", key="clap_text")]


def _encoder(ctx, stage, override, spec, component, label, n, *extra) -> list[dict]:
    a = ctx["a"]
    worker, work = _worker(ctx, stage, override, *extra)
    work = work.slice(0, n)
    st, rows = worker.stage, work.to_pylist()
    bs = max(1, int(st.conf.batch_size))
    decoded = [[st.decode(r) for r in rows[s:s + bs]] for s in range(0, len(rows), bs)]
    t_stage, t_bare = _stage_vs_bare(worker, work, lambda: [st.encode(d) for d in decoded], a.repeats)
    flops = count_flops(lambda: st.encode(decoded[0][:1]))
    del worker, st
    gc.collect()
    return [dict(stage=stage, model=label, params=n_params(spec, component), flops=flops, seconds=t_bare / len(rows),
                 ratio=t_stage / t_bare, how=f"measured over {len(rows)} items", key=stage)]


def _concepts(ctx, shape_dir: str, proj) -> list[dict]:
    from sonify.media.image import load_rgb
    from sonify.sources.images import read_image_bytes

    a, w = ctx["a"], proj.workload
    out = []
    for spec, reduced, label, key in ((LLAVA, f"shape:{LLAVA}?text_layers=1", "LLaVA-1.5-7B", "llava"),
                                      (SMOLVLM, f"shape:{SMOLVLM}?text_layers=1&vision_layers=1", "SmolVLM-Instruct (2.25B)", "smolvlm")):
        settings = dict(w.get("processor_kwargs", {}).get(spec, {}))
        f = vlm_flops(spec, reduced, tuple(w.sam_image), int(w.prompt_tokens), shape_dir, int(w.shared_prompt_tokens), settings)
        tokens = int(w.reply_tokens.concepts) + int(w.reply_tokens.caption)
        per_image = sum(vlm_image_flops(f, 2, tokens))
        row = dict(stage="concepts", model=label, params=f["params"], flops=per_image, seconds=None, ratio=None, key=key,
                   vlm=f, how=f"FLOPs on meta at full depth: one image prefill ({f['image_tokens']} image + {w.shared_prompt_tokens} "
                              f"template tokens) shared by 2 prompts of {w.prompt_tokens} tokens, + {tokens} reply tokens; not timed (this CPU)")
        if key == "llava":
            row.update(_time_vlm(ctx, reduced, f["layers"], tokens, load_rgb, read_image_bytes))
        out.append(row)
        gc.collect()
    return out


def _time_vlm(ctx, reduced: str, depth: int, reply_tokens: int, load_rgb, read_image_bytes) -> dict:
    """Seconds per image at full depth, scaled from a one-layer language model; stage/bare on the reduced model."""
    a = ctx["a"]
    gen = lambda k: f"{{max_new_tokens: {k}, min_new_tokens: {k}, do_sample: false}}"
    worker, work = _worker(ctx, "concepts", f"models.vlms=[{reduced}]", "stages.concepts.imports=[]",
                           f"stages.concepts.batch_size={a.vlm_images}", f"stages.concepts.generation={gen(a.tokens)}",
                           f"stages.concepts.caption_generation={gen(a.tokens)}")
    work = work.slice(0, a.vlm_images)
    st = worker.stage
    vlm = st.vlms[reduced]
    images = [load_rgb(read_image_bytes(st.paths.locate(r), r["tar_offset"], r["nbytes"]), st.conf.max_pixels, st.conf.max_image_side)
              for r in work.to_pylist()]
    clock = LayerClock(language_model(vlm.model).layers)

    def bare(k):
        g = {**st.generation, "max_new_tokens": k, "min_new_tokens": k}
        vlm.generate_from(vlm.prepare(images, st.caption_prompt), g)
        vlm.generate_from(vlm.prepare(images, st.concepts_prompt), g)

    t_stage, t_bare = _stage_vs_bare(worker, work, lambda: bare(a.tokens), 1)   # one repeat: each run is minutes

    def full_depth(k):
        clock.seconds = 0.0
        t0 = time.perf_counter()
        bare(k)
        return (time.perf_counter() - t0 + (depth - 1) * clock.seconds) / len(images)

    t1, tk = full_depth(1), full_depth(a.tokens)
    per_token = (tk - t1) / (a.tokens - 1) / 2                   # one more token in each of the 2 prompts
    del worker, st, vlm
    return dict(seconds=t1 + (reply_tokens - 2) * per_token, ratio=t_stage / t_bare,
                how=f"scaled: 1 of {depth} LM layers timed x {depth}; {a.tokens} tokens timed, reply of {reply_tokens} "
                    f"extrapolated ({per_token:.2f} s/token); stage/bare on the 1-layer model")


def _dit(a, shape_dir: str) -> list[dict]:
    import torch

    from sonify.training.dit import AudioConditioner, load_dit
    from sonify.training.loss import DiffusionLoss

    def step_cost(layers: int) -> tuple[float, float]:
        model = load_dit(f"shape:{PIXART}?layers={layers}", shape_dir, ast_dim=768).train()
        cond = AudioConditioner(768)
        opt = torch.optim.AdamW(list(model.parameters()) + list(cond.parameters()), lr=3.16e-5, weight_decay=3e-2)
        from sonify.training.forward import noise_scheduler, predict

        sched = noise_scheduler(1000)
        loss_fn = DiffusionLoss(sched.betas)
        gen = torch.Generator().manual_seed(0)
        b = a.dit_batch
        latents, tokens = torch.randn(b, 4, 64, 64, generator=gen), torch.randn(b, 49, 768, generator=gen) * 0.1
        mask, drop = torch.ones(b, 49), torch.zeros(b, dtype=torch.bool)

        def fwd_bwd():
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, 1000, (b,), generator=gen)
            noisy = sched.add_noise(latents, noise, t)
            pred = predict(model, cond, noisy, tokens, mask, drop, t)   # the trainer's forward
            loss_fn(pred, noise, latents, noisy, t)["loss"].backward()

        def step():
            fwd_bwd()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        seconds, _ = best_of(step, a.repeats)
        flops = count_flops(fwd_bwd)
        opt.zero_grad(set_to_none=True)
        return seconds / b, flops / b

    t1, f1 = step_cost(1)
    t2, f2 = step_cost(2)
    depth = 28
    return [dict(stage="train_dit", model="PixArt-XL-2 + audio projector, 1 step", params=n_params(f"{PIXART}", "transformer"),
                 flops=f1 + (depth - 1) * (f2 - f1), seconds=t1 + (depth - 1) * (t2 - t1), ratio=None, key="dit",
                 how=f"scaled: 1- and 2-block models timed (batch {a.dit_batch}, fwd+bwd+AdamW), x {depth} blocks; per sample")]


def _print(rows: list[dict], proj, a, complete: bool) -> None:
    print("Measured on this CPU (fp32) with shape models (published architecture, random weights):")
    print(f"{'stage':<10} {'model':<38} {'params':>9} {'GFLOP/item':>11} {'s/item':>8} {'stage/bare':>10}  how")
    for r in rows:
        s = f"{r['seconds']:.3f}" if r["seconds"] is not None else "-"
        q = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        print(f"{r['stage']:<10} {r['model']:<38} {r['params'] / 1e6:>8.1f}M {r['flops'] / 1e9:>11.1f} {s:>8} {q:>10}  {r['how']}")
    if not complete:
        return
    by = {r["key"]: r for r in rows}
    w, u = proj.workload, proj.utilisation
    images, vlms = int(w.images), int(w.vlms)
    texts = images * vlms * int(w.concepts_per_image)
    reply = int(w.reply_tokens.concepts) + int(w.reply_tokens.caption)

    def vlm_split(key):                                           # (compute-bound, decode) FLOPs per image
        return vlm_image_flops(by[key]["vlm"], 2, reply)

    work = []
    for key, label in (("llava", "concepts: LLaVA-1.5-7B"), ("smolvlm", "concepts: SmolVLM-Instruct")):
        c, d = vlm_split(key)
        work.append((f"{label} (prefill+vision)", images, images * c, float(u.compute_bound)))
        work.append((f"{label} (decode {reply} tok)", images, images * d, float(u.decode)))
    work += [("embed: CLAP audio", int(w.audio_chunks), int(w.audio_chunks) * by["clap_audio"]["flops"], float(u.compute_bound)),
             ("embed: CLAP text", texts, texts * by["clap_text"]["flops"], float(u.compute_bound)),
             ("features: AST", images * vlms, images * vlms * by["features"]["flops"], float(u.compute_bound)),
             ("latents: VAE 512 px", images, images * by["latents"]["flops"], float(u.compute_bound)),
             ("train_dit: steps x batch", int(w.train_steps) * int(w.train_batch),
              int(w.train_steps) * int(w.train_batch) * by["dit"]["flops"], float(u.compute_bound))]
    hw = list(proj.hardware.items())
    print(f"\nProjected (not measured): the paper's build from counted FLOPs, dense bf16 peaks, utilisation "
          f"{u.compute_bound:.0%} compute-bound / {u.decode:.0%} decode:")
    print(f"{'work':<44} {'items':>12} {'PFLOP':>10} " + " ".join(f"{name + ' h':>20}" for name, _ in hw))
    totals = [0.0] * len(hw)
    for label, n, flops, util in work:
        hours = [flops / (h.gpus * h.peak_tflops * 1e12 * util) / 3600 for _, h in hw]
        totals = [t + x for t, x in zip(totals, hours)]
        print(f"{label:<44} {n:>12,} {flops / 1e15:>10.1f} " + " ".join(f"{x:>20.1f}" for x in hours))
    print(f"{'total':<44} {'':>12} {'':>10} " + " ".join(f"{x:>20.1f}" for x in totals)
          + "   (" + ", ".join(f"{x / 24:.1f} days" for x in totals) + ")")


if __name__ == "__main__":
    main()
