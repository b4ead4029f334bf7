"""`python -m sonify.bench train --plan --gpu-memory 80GB [141GB ...]`: the training compute plan from a memory budget.

Measures, on this CPU, the bytes autograd keeps per sample per PixArt-XL-2 block under bf16 autocast
(`training/memory.py`: saved-tensor hooks over depth 1 and 2 x batch 1 and 2 at the real width), adds
the weights, gradients, AdamW moments and EMA (fp32), and prints for each GPU memory the largest
micro-batch per GPU without checkpointing, with it on every block, and on every k-th block, the
accumulation that reaches the global batch, and the FLOPs per sample each choice costs (the
recomputed forwards counted). The chosen plan: the least recompute with a micro-batch >= --min-micro.
"""

from __future__ import annotations

from sonify.engine.cli import command_parser


def main(argv=None) -> None:
    ap = command_parser("bench train --plan", __doc__, settings=False)
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--gpu-memory", nargs="+", default=["80GB"], help="per GPU: 80GB (10^9 bytes), 80GiB, ...")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=640)
    ap.add_argument("--min-micro", type=int, default=16, help="the smallest micro-batch the plan accepts (keeps matmuls full)")
    ap.add_argument("--tokens", type=int, default=49, help="AST tokens a sample (the shards' ast.npy length)")
    ap.add_argument("--no-bucket-view", action="store_true", help="count DDP's separate gradient buckets (4 bytes a parameter)")
    ap.add_argument("--mfu", type=float, default=0.40, help="assumed model FLOP utilisation for the projection")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM: 989)")
    ap.add_argument("--steps", type=int, default=500_000)
    a = ap.parse_args(argv)

    import torch

    from sonify.training.memory import choose, measure, options, parse_memory, per_sample_bytes, reserve_bytes, static_bytes

    if a.global_batch % a.gpus:
        raise SystemExit(f"--global-batch {a.global_batch} is not a multiple of --gpus {a.gpus}")
    per_gpu = a.global_batch // a.gpus
    act = measure(a.tokens)
    mb = 1e6
    print(f"measured on this CPU (torch {torch.__version__}, bf16 autocast, PixArt-XL-2 width 1152, 64x64 latents = 1024 tokens, "
          f"{a.tokens} AST tokens):")
    print(f"  activations kept for the backward: {act.block / mb:.1f} MB per sample per block ({act.blocks} blocks), "
          f"{act.rest / mb:.1f} MB per sample for the rest (embeddings, final layer, loss), "
          f"{act.ckpt_input / mb:.2f} MB per sample per checkpointed block (its input); "
          f"{act.fixed / 1e9:.2f} GB batch-independent (bf16 weight copies)")
    print(f"  parameters {act.params / 1e6:.1f}M: weights + gradients + AdamW + EMA in fp32 = "
          f"{static_bytes(act, not a.no_bucket_view) / 1e9:.2f} GB with the bf16 copies"
          f"{'' if a.no_bucket_view else ' (DDP gradient_as_bucket_view: no second gradient copy)'}")
    print(f"  forward FLOPs per sample: {act.flops_block / 1e9:.1f} G per block, {act.flops_rest / 1e9:.1f} G the rest; "
          f"trained sample {act.flops_per_sample(0) / 1e12:.2f} TFLOP without recompute")
    samples = a.steps * a.global_batch
    for text in a.gpu_memory:
        memory = parse_memory(text)
        reserve = reserve_bytes(memory)
        opts = options(act, memory, per_gpu, reserve, not a.no_bucket_view)
        best = choose(opts, a.min_micro)
        print(f"\n{text} per GPU ({memory / 1e9:.1f} GB; reserve {reserve / 1e9:.1f} GB for the CUDA context and allocator slack), "
              f"global batch {a.global_batch} on {a.gpus} GPUs = {per_gpu} samples per GPU per step:")
        print(f"  {'checkpointing':<22} {'blocks':>6} {'GB/sample':>9} {'max micro':>9} {'micro x accum':>13} "
              f"{'TFLOP/sample':>12} {'+FLOPs':>9} {f'{a.gpus}-GPU days':>10}")
        for o in opts:
            name = "off" if o.every is None else ("every block" if o.every == 1 else f"every {o.every}{_th(o.every)} block")
            flops = act.flops_per_sample(o.checkpointed)
            days = samples * flops / (a.gpus * a.peak_tflops * 1e12 * a.mfu) / 86400
            plan = f"{o.micro} x {o.accum}" if o.micro else "-"
            mark = "  <- plan" if o is best else ""
            print(f"  {name:<22} {o.checkpointed:>6} {per_sample_bytes(act, o.checkpointed) / 1e9:>9.3f} {o.max_micro:>9} "
                  f"{plan:>13} {flops / 1e12:>12.2f} {o.recompute:>8.1%} {days:>10.2f}{mark}")
        if best:
            ck = "gradient_checkpointing: false" if best.every is None else \
                f"gradient_checkpointing: true, checkpoint_blocks_every: {best.every}"
            print(f"  plan: per_device_batch: {best.micro}, grad_accum: {best.accum} ({a.gpus} x {best.micro} x {best.accum} = "
                  f"{a.gpus * best.micro * best.accum}), {ck}")
    print(f"\n(days: {a.steps:,} steps x {a.global_batch} samples at an assumed {a.mfu:.0%} MFU of {a.peak_tflops:.0f} TFLOP/s "
          f"per GPU; a projection, not a measurement)")


def _th(k: int) -> str:
    return {1: "st", 2: "nd", 3: "rd"}.get(k % 10 if k % 100 not in (11, 12, 13) else 0, "th")
