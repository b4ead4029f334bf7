"""The compute plan: the largest micro-batch a GPU's memory holds, with and without gradient checkpointing.

Activations are measured, not guessed: one forward of the real architecture (PixArt-XL-2's published
config, random weights, 1 and 2 blocks, batch 1 and 2, under bf16 autocast, the training loss included)
on this CPU with a saved-tensor hook that adds up every distinct storage autograd keeps for the backward
(parameters excluded). The differences between the four runs give the bytes per sample of one block,
of everything else (patch embedding, caption projection, final layer, loss), and the batch-independent
part (autocast's bf16 copies of the weights). The attention kernel matters: on the CPU as on the GPU,
bf16 SDPA without a mask runs a flash kernel that keeps the output and the log-sum-exp, not the score matrix.

The plan's memory per GPU (`plan`), for B samples a micro-step:
  static  = P x (4 weights + 4 gradients + 8 AdamW moments + 4 EMA) bytes, fp32 each
            (+ 4 P for DDP's buckets unless `ddp_gradient_as_bucket_view`) + the batch-independent saved bytes
  per sample = (L - n) x block + n x input of a checkpointed block + rest,  n = checkpointed blocks
  + one block's activations x B while a checkpointed block is recomputed in the backward (n > 0)
  + a reserve: the CUDA context and allocator slack (`reserve_gb`, an assumption, not measured here).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SHAPE = Path(__file__).resolve().parents[1] / "models" / "shapes" / "PixArt-alpha__PixArt-XL-2-512x512" / "transformer" / "config.json"
BYTES_PER_PARAM = {"weights": 4, "gradients": 4, "adamw": 8, "ema": 4}


@dataclass
class Activations:
    block: float            # bytes per sample a transformer block keeps for the backward
    rest: float             # bytes per sample of the rest of the model and the loss
    fixed: float            # batch-independent saved bytes (bf16 weight copies) for the whole model
    ckpt_input: float       # bytes per sample a checkpointed block keeps (its hidden-state input)
    params_block: int
    params_rest: int
    blocks: int             # the full model's depth
    flops_block: int = 0    # forward FLOPs per sample of one block (FlopCounterMode's matmuls and convolutions + attention)
    flops_rest: int = 0

    @property
    def params(self) -> int:
        return self.params_rest + self.blocks * self.params_block

    def flops_per_sample(self, checkpointed: int) -> float:
        """Forward + backward (2 x forward) + the recomputed forward of the checkpointed blocks."""
        forward = self.flops_rest + self.blocks * self.flops_block
        return 3 * forward + checkpointed * self.flops_block


def _model(depth: int, ast_dim: int):
    import torch
    from diffusers import PixArtTransformer2DModel

    cfg = {k: v for k, v in json.loads(SHAPE.read_text()).items() if not k.startswith("_")}
    torch.manual_seed(0)
    return PixArtTransformer2DModel.from_config({**cfg, "num_layers": depth, "caption_channels": ast_dim}), cfg


def saved_bytes(model, batch: int, tokens: int, ast_dim: int) -> tuple[int, int, int]:
    """(bytes autocast-bf16 training keeps for the backward, bytes of the first block's hidden-state input,
    forward FLOPs as torch's FlopCounterMode counts them) for one forward and the loss at `batch`; every
    distinct storage counted once, parameters excluded."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sonify.training.forward import noise_scheduler
    from sonify.training.loss import DiffusionLoss

    size, c = model.config.sample_size, model.config.in_channels
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, c, size, size, generator=g)
    noise = torch.randn(batch, c, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.randn(batch, tokens, ast_dim, generator=g)
    mask = torch.ones(batch, tokens)
    sched = noise_scheduler(1000)
    loss_fn = DiffusionLoss(sched.betas)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    block_input = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    def grab(module, args, kwargs):
        block_input.setdefault("bytes", args[0].untyped_storage().nbytes() if args else kwargs["hidden_states"].untyped_storage().nbytes())

    hook = model.transformer_blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    flops = FlopCounterMode(display=False)
    try:
        with flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            noisy = sched.add_noise(x0, noise, t)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred = model(noisy, encoder_hidden_states=cond, encoder_attention_mask=mask, timestep=t,
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            loss = loss_fn(pred, noise, x0, noisy, t)["loss"]
        total = sum(seen.values())
        del loss, pred
    finally:
        hook.remove()
    return total, block_input["bytes"], flops.get_total_flops()


def measure(tokens: int = 49, ast_dim: int = 768) -> Activations:
    """Four forwards at the XL-2 width (depth 1 and 2 x batch 1 and 2) and their differences."""
    import torch

    m1, cfg = _model(1, ast_dim)
    m2, _ = _model(2, ast_dim)
    m1.train()
    m2.train()
    with torch.enable_grad():
        (a11, in1, f1), (a12, _, _) = saved_bytes(m1, 1, tokens, ast_dim), saved_bytes(m1, 2, tokens, ast_dim)
        (a21, _, f2), (a22, _, _) = saved_bytes(m2, 1, tokens, ast_dim), saved_bytes(m2, 2, tokens, ast_dim)
    per_sample_1, per_sample_2 = a12 - a11, a22 - a21
    block = per_sample_2 - per_sample_1
    fixed_1 = a11 - per_sample_1
    fixed_block = (a21 - per_sample_2) - fixed_1
    p1, p2 = sum(p.numel() for p in m1.parameters()), sum(p.numel() for p in m2.parameters())
    depth = int(cfg["num_layers"])
    n, d = (cfg["sample_size"] // cfg["patch_size"]) ** 2, cfg["num_attention_heads"] * cfg["attention_head_dim"]
    # FlopCounterMode does not see the CPU flash-attention kernel: scores and values by hand, 2 x 2 N M D each
    f1, f2 = f1 + attention_flops(n, tokens, d), f2 + 2 * attention_flops(n, tokens, d)
    return Activations(block=block, rest=per_sample_1 - block, fixed=fixed_1 + (depth - 1) * fixed_block, ckpt_input=in1,
                       params_block=p2 - p1, params_rest=p1 - (p2 - p1), blocks=depth, flops_block=f2 - f1, flops_rest=f1 - (f2 - f1))


def attention_flops(n: int, tokens: int, width: int) -> int:
    """Forward FLOPs of one block's attention products: Q K^T and P V (2 N M D each, M keys) for self-attention
    over the N image tokens and cross-attention to the AST tokens."""
    return 4 * n * n * width + 4 * n * tokens * width


@dataclass
class Option:
    every: int | None        # checkpoint every k-th block; None: off
    checkpointed: int
    max_micro: int
    micro: int | None        # the micro-batch the plan uses for the global batch (None: nothing fits)
    accum: int | None
    recompute: float         # extra forward FLOPs as a share of the step (blocks' forward ~ 1/3 of a trained sample)


def static_bytes(a: Activations, bucket_view: bool = True) -> float:
    return a.params * (sum(BYTES_PER_PARAM.values()) + (0 if bucket_view else 4)) + a.fixed


def per_sample_bytes(a: Activations, checkpointed: int) -> float:
    return (a.blocks - checkpointed) * a.block + checkpointed * a.ckpt_input + a.rest + (a.block if checkpointed else 0)


def reserve_bytes(memory: float, context: float = 1e9, slack: float = 0.10) -> float:
    """Memory the plan keeps free: the CUDA context (~1 GB) and allocator fragmentation (10%); assumptions."""
    return context + slack * memory


def options(a: Activations, memory: float, per_gpu: int, reserve: float, bucket_view: bool = True,
            everies=(None, 1, 2, 4, 7, 14)) -> list[Option]:
    """Each checkpointing choice: the largest micro-batch, and the fewest accumulation steps whose micro-batch
    (a divisor of the per-GPU share of the global batch) fits."""
    free = memory - reserve - static_bytes(a, bucket_view)
    out = []
    for every in everies:
        n = 0 if every is None else math.ceil(a.blocks / every)
        biggest = max(0, int(free // per_sample_bytes(a, n)))
        accum = next((k for k in range(1, per_gpu + 1) if per_gpu % k == 0 and per_gpu // k <= biggest), None)
        out.append(Option(every, n, biggest, per_gpu // accum if accum else None, accum, n / a.blocks / 3))
    return out


def choose(opts: list[Option], min_micro: int) -> Option | None:
    """The least recompute whose micro-batch is at least `min_micro` (big enough to keep the GPU's matmuls
    full); else the largest micro-batch."""
    ok = [o for o in opts if o.micro and o.micro >= min_micro]
    if ok:
        return min(ok, key=lambda o: (o.recompute, o.accum))
    fits = [o for o in opts if o.micro]
    return max(fits, key=lambda o: (o.micro, -o.recompute)) if fits else None


def parse_memory(text: str) -> float:
    """'80GB' (10^9 bytes), '80GiB' (2^30), or a number of bytes."""
    t = text.strip().upper()
    for unit, scale in (("GIB", 2**30), ("GB", 1e9), ("MIB", 2**20), ("MB", 1e6)):
        if t.endswith(unit):
            return float(t[:-len(unit)]) * scale
    return float(t)
