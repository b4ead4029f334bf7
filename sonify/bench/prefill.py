"""`python -m sonify.bench prefill`: VLM FLOPs per image, image prefill shared by both prompts or not.

Counted with `torch.utils.flop_counter` on the meta device at full depth (the published
architectures, `shape:` models), for an SA-1B-sized image and the token counts of
`pipelines/bench/paper_scale.yaml`: unshared = 2 x (vision + prefill of image + prompt tokens);
shared = vision + prefill of the image and the template's opening once + each prompt's own tokens
(`HFVLM.generate_prompts`); both + the reply tokens. SmolVLM at its published `size.longest_edge`
(1536) and at the value `pipelines/sam.yaml` sets. Nothing is timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sonify.engine.cli import command_parser

PROJECTION = Path(__file__).resolve().parents[2] / "pipelines" / "bench" / "paper_scale.yaml"


def main(argv=None) -> None:
    ap = command_parser("bench prefill", __doc__, settings=False)
    ap.add_argument("--projection", default=str(PROJECTION))
    a = ap.parse_args(argv)
    from omegaconf import OmegaConf

    from sonify.bench.models import LLAVA, SMOLVLM, vlm_flops, vlm_image_flops

    w = OmegaConf.load(a.projection).workload
    reply = int(w.reply_tokens.concepts) + int(w.reply_tokens.caption)
    smol = dict(OmegaConf.to_container(w.processor_kwargs)).get(SMOLVLM, {})
    cases = [("LLaVA-1.5-7B", LLAVA, f"shape:{LLAVA}?text_layers=1", {}),
             ("SmolVLM-Instruct, longest_edge 1536 (published)", SMOLVLM, f"shape:{SMOLVLM}?text_layers=1&vision_layers=1", {}),
             (f"SmolVLM-Instruct, {smol} (sam.yaml)", SMOLVLM, f"shape:{SMOLVLM}?text_layers=1&vision_layers=1", smol)]
    print(f"TFLOP per image ({w.sam_image[0]} x {w.sam_image[1]}), 2 prompts of {w.prompt_tokens} tokens "
          f"({w.shared_prompt_tokens} shared), {reply} reply tokens; counted on the meta device at full depth")
    print(f"{'model':<58} {'image tok':>9} {'vision':>7} {'prefill':>8} {'unshared':>9} {'shared':>7} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="sonify-bench-") as tmp:
        for label, spec, reduced, settings in cases:
            f = vlm_flops(spec, reduced, tuple(w.sam_image), int(w.prompt_tokens), tmp, int(w.shared_prompt_tokens), settings)
            unshared, shared = sum(vlm_image_flops(f, 2, reply, False)), sum(vlm_image_flops(f, 2, reply, True))
            print(f"{label:<58} {f['image_tokens']:>9} {f['vision'] / 1e12:>7.2f} {f['prefill'] / 1e12:>8.2f} "
                  f"{unshared / 1e12:>9.2f} {shared / 1e12:>7.2f} {shared / unshared:>6.2f}")


if __name__ == "__main__":
    main()
