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


def processor_settings(table, name: str) -> dict:
    """The image-processor settings `stages.concepts.processor_kwargs` gives the VLM `name`: keyed by
    its entry in `models.vlms` or by its hub id (without a `shape:`/`tiny:` prefix or `?` depths)."""
    table = dict(table or {})
    hub = name.split(":", 1)[1] if name.split(":", 1)[0] in ("shape", "tiny") else name
    for key in (name, hub, hub.partition("?")[0]):
        if key in table:
            return dict(table[key])
    return {}


def apply_processor_settings(processor, name: str, settings: dict) -> None:
    """Set the image processor's own settings (dicts such as `size` are merged key by key): for a tiling
    processor (Idefics3/SmolVLM) `size.longest_edge` sets how many 384 px tiles an image becomes."""
    image_processor = getattr(processor, "image_processor", None)
    for key, value in settings.items():
        if image_processor is None or not hasattr(image_processor, key):
            raise ConfigError(f"stages.concepts.processor_kwargs: the image processor of {name!r} has no setting {key!r}")
        current = getattr(image_processor, key)
        if isinstance(value, dict) and current is not None:   # merged into a dict or a SizeDict, keeping its type
            items = current.items() if hasattr(current, "items") else vars(current).items()
            merged = {k: v for k, v in items if v is not None} | dict(value)
            value = merged if isinstance(current, dict) else type(current)(**merged)
        setattr(image_processor, key, value)


class HFVLM:
    """transformers `AutoModelForImageTextToText` + `AutoProcessor` + the model's chat template."""

    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 model_batch: int = 8, processor_kwargs: dict | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = name
        self.model_batch = int(model_batch)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = load_pretrained(AutoProcessor, name, tiny_dir, role="vlms", trust_remote_code=trust_remote_code)
        apply_processor_settings(self.processor, name, processor_kwargs or {})
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


    def generate_prompts(self, images: list[Image.Image], asks: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
        """Replies to several (prompt, generation) asks about the same images, per ask one reply per image.

        The chat template puts the image first, so every prompt of an image shares its image tokens and
        the template's opening: that prefix goes through the vision tower and the prefill once per batch
        (`_shared_prefix`), and each prompt continues from a copy of its KV cache. Greedy replies equal
        those of separate `generate` calls up to float rounding (the prefill runs in two GEMM shapes)."""
        per_image = in_fixed_batches(lambda batch: list(zip(*self._shared_prefix(batch, asks))), list(images), self.model_batch)
        return [list(replies) for replies in zip(*per_image)] if per_image else [[] for _ in asks]

    def split_prefix(self, inputs: list[dict]):
        """(prefix ids, prefix mask, per ask its suffix ids) of prepared inputs of several prompts over the same
        images, or None where they share no prefix that holds every image token (then each ask runs alone)."""
        import torch

        rows = [[x["input_ids"][r][x["attention_mask"][r].bool()] for x in inputs] for r in range(inputs[0]["input_ids"].shape[0])]
        image_token = getattr(self.model.config, "image_token_id", None) or getattr(self.model.config, "image_token_index", None)
        prefixes, suffixes = [], None
        for seqs in rows:
            n = min(len(s) for s in seqs) - 1                    # every ask keeps at least one token of its own
            same = torch.stack([s[:n] for s in seqs]).eq(seqs[0][:n]).all(0)
            cut = int(same.long().cumprod(0).sum())
            if image_token is not None and bool((torch.cat([s[cut:] for s in seqs]) == image_token).any()):
                return None
            tails = [s[cut:] for s in seqs]
            if suffixes is not None and any(not torch.equal(a, b) for a, b in zip(suffixes, tails)):
                return None                                       # the prompts' tails must not depend on the image
            suffixes = tails
            prefixes.append(seqs[0][:cut])
        width = max(len(p) for p in prefixes)
        pad = int(self.processor.tokenizer.pad_token_id)
        ids = torch.full((len(prefixes), width), pad, dtype=inputs[0]["input_ids"].dtype, device=self.device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prefixes):                          # left padding, as the processor pads
            ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
        return ids, mask, suffixes

    def _shared_prefix(self, images: list[Image.Image], asks: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
        import copy

        import torch

        inputs = [self.prepare(images, prompt) for prompt, _ in asks]
        split = self.split_prefix(inputs)
        if split is None:
            return [self.generate_from(x, gen) for x, (_, gen) in zip(inputs, asks)]
        ids, mask, suffixes = split
        vision = {k: v for k, v in inputs[0].items() if k not in ("input_ids", "attention_mask")}
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)   # as `generate` derives them
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **vision)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        replies = []
        for k, (suffix, (_, gen)) in enumerate(zip(suffixes, asks)):
            full = {"input_ids": torch.cat([ids, suffix.expand(ids.shape[0], -1)], dim=1),
                    "attention_mask": torch.cat([mask, torch.ones(ids.shape[0], len(suffix), dtype=mask.dtype, device=mask.device)], dim=1)}
            own = cache if k == len(asks) - 1 else copy.deepcopy(cache)
            replies.append(self.generate_from({**full, "cache": own}, gen))
        return replies


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

    def __init__(self, name: str, tiny_dir: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 processor_kwargs: dict | None = None):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("stages.concepts.backend=vllm needs vLLM: pip install 'sonify[vllm]' (GPU machines only)") from None
        from transformers import AutoProcessor

        from sonify.models.loading import resolve_model

        self.name = name
        path = resolve_model(name, tiny_dir)
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        apply_processor_settings(self.processor, name, processor_kwargs or {})
        # prefix caching: the prompts of one image share its image tokens and the template's opening
        self.llm = LLM(model=path, dtype="auto" if dtype == "auto" else dtype, trust_remote_code=trust_remote_code,
                       limit_mm_per_prompt={"image": 1}, enable_prefix_caching=True,
                       mm_processor_kwargs=processor_kwargs or None)

    def generate(self, images: list[Image.Image], prompt: str, generation: dict[str, Any]) -> list[str]:
        return self.generate_prompts(images, [(prompt, generation)])[0]

    def generate_prompts(self, images: list[Image.Image], asks: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
        """Every (image, ask) pair in one submission, an image's asks next to each other, so vLLM's prefix
        cache serves the later asks of an image from the first one's image prefill."""
        from vllm import SamplingParams

        requests, params = [], []
        for im in images:
            for prompt, generation in asks:
                conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
                text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
                requests.append({"prompt": text, "multi_modal_data": {"image": im}})
                params.append(SamplingParams(max_tokens=int(generation.get("max_new_tokens", 96)),
                                             temperature=float(generation.get("temperature", 1.0)) if generation.get("do_sample") else 0.0))
        outputs = self.llm.generate(requests, params)
        texts = [o.outputs[0].text.strip() for o in outputs]
        return [texts[k::len(asks)] for k in range(len(asks))]


def load_vlm(name: str, backend: str, tiny_dir: str, device: str, dtype: str, trust_remote_code: bool, model_batch: int = 8,
             processor_kwargs: dict | None = None):
    if backend == "vllm":
        return VLLMVLM(name, tiny_dir, device, dtype, trust_remote_code, processor_kwargs)
    if "cogvlm" in name.lower() and "cogvlm2" not in name.lower():
        if processor_kwargs:
            raise ConfigError(f"stages.concepts.processor_kwargs: {name!r} builds its own inputs (no processor settings)")
        return CogVLM(name, tiny_dir, device, dtype, trust_remote_code)
    return HFVLM(name, tiny_dir, device, dtype, trust_remote_code, model_batch, processor_kwargs)
