"""Vision-language model backends: batched image + prompt -> text.

`HFVLM` runs any image-text-to-text model from transformers (LLaVA-1.5 and its kin) through
`AutoProcessor`, the model's chat template and `generate`, with left padding. `CogVLM` is the
paper's second model (remote code, explicit opt-in). `VLLMVLM` serves the same prompts with vLLM
on GPU clusters and is imported only when asked for.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sonify.engine.errors import ConfigError
from sonify.models.device import in_fixed_batches, pick_device, pick_dtype
from sonify.models.loading import load_pretrained


class HFVLM:
    """transformers `AutoModelForImageTextToText` + `AutoProcessor` + the model's chat template."""

    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 model_batch: int = 8):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = name
        self.model_batch = int(model_batch)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = load_pretrained(AutoProcessor, name, tiny_dir, role="vlms", trust_remote_code=trust_remote_code)
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # decoder-only generation needs the prompts right-aligned
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        self.model = load_pretrained(AutoModelForImageTextToText, name, tiny_dir, role="vlms",
                                     dtype=self.dtype, trust_remote_code=trust_remote_code)
        self.model.to(self.device).eval()

    def prompt_text(self, prompt: str) -> str:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def prepare(self, images: list[Image.Image], prompt: str) -> dict:
        text = self.prompt_text(prompt)
        inputs = self.processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}

    def generate_from(self, inputs: dict, generation: dict[str, Any]) -> list[str]:
        import torch

        with torch.inference_mode():
            out = self.model.generate(**inputs, **generation)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def generate(self, images: list[Image.Image], prompt: str, generation: dict[str, Any]) -> list[str]:
        """Replies in fixed-size batches (see `in_fixed_batches`): a reply never depends on its batch-mates."""
        return in_fixed_batches(lambda batch: self.generate_from(self.prepare(batch, prompt), generation),
                                list(images), self.model_batch)


class CogVLM:
    """THUDM/cogvlm-chat-hf: remote code, its own `build_conversation_input_ids`, Vicuna tokenizer.

    Follows the model card; one image per call (the remote code does not batch images).
    """

    TOKENIZER = "lmsys/vicuna-7b-v1.5"

    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        if not trust_remote_code:
            raise ConfigError(f"VLM {name!r} ships remote code; set models.trust_remote_code=true to opt in")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = load_pretrained(AutoTokenizer, self.TOKENIZER, tiny_dir, role="vlms")
        self.model = load_pretrained(AutoModelForCausalLM, name, tiny_dir, role="vlms", dtype=self.dtype,
                                     trust_remote_code=True).to(self.device).eval()

    def generate(self, images: list[Image.Image], prompt: str, generation: dict[str, Any]) -> list[str]:
        import torch

        replies = []
        for image in images:
            inputs = self.model.build_conversation_input_ids(self.tokenizer, query=prompt, history=[], images=[image])
            batch = {"input_ids": inputs["input_ids"][None].to(self.device),
                     "token_type_ids": inputs["token_type_ids"][None].to(self.device),
                     "attention_mask": inputs["attention_mask"][None].to(self.device),
                     "images": [[inputs["images"][0].to(self.device, self.dtype)]]}
            with torch.inference_mode():
                out = self.model.generate(**batch, **generation)
            replies.append(self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return replies


class VLLMVLM:
    """vLLM offline inference with the same chat-template prompts (GPU clusters; `pip install sonify[vllm]`)."""

    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("stages.concepts.backend=vllm needs vLLM: pip install 'sonify[vllm]' (GPU machines only)") from None
        from transformers import AutoProcessor

        from sonify.models.loading import resolve_model

        self.name = name
        path = resolve_model(name, tiny_dir)
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.llm = LLM(model=path, dtype="auto" if dtype == "auto" else dtype, trust_remote_code=trust_remote_code,
                       limit_mm_per_prompt={"image": 1})

    def generate(self, images: list[Image.Image], prompt: str, generation: dict[str, Any]) -> list[str]:
        from vllm import SamplingParams

        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        params = SamplingParams(max_tokens=int(generation.get("max_new_tokens", 96)),
                                temperature=float(generation.get("temperature", 1.0)) if generation.get("do_sample") else 0.0)
        outputs = self.llm.generate([{"prompt": text, "multi_modal_data": {"image": im}} for im in images], params)
        return [o.outputs[0].text.strip() for o in outputs]


def load_vlm(name: str, backend: str, tiny_dir: str, device: str, dtype: str, trust_remote_code: bool, model_batch: int = 8):
    if backend == "vllm":
        return VLLMVLM(name, tiny_dir, device, dtype, trust_remote_code)
    if "cogvlm" in name.lower() and "cogvlm2" not in name.lower():
        return CogVLM(name, tiny_dir, device, dtype, trust_remote_code)
    return HFVLM(name, tiny_dir, device, dtype, trust_remote_code, model_batch)
