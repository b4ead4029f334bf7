"""`shape:<hub id>` models: the published architecture of a real checkpoint, with random weights.

No weights can be downloaded here, but the real checkpoints' configs are public. Each default
model keeps its published `config.json`, processor settings and chat template under
`sonify/models/shapes/<org>__<name>/` (sources in that folder's README). A shape model is built
from those files exactly, seeded, saved in Hugging Face format and then loaded by the same
`from_pretrained` as a real checkpoint, so every code path that depends on real sizes (AST's
12 x 101 patch grid, LLaVA's 576 image tokens, PixArt-XL-2's 1152 width) runs here.

`shape:<id>?text_layers=1&vision_layers=1` keeps every width and cuts the depth of the named
sub-configs (names per model in its `sonify_shape.json`), so a 7B model can be exercised with one
layer. Tokenizers are small offline BPEs that keep the real special tokens at their real ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import parse_qsl

import torch

from sonify.engine.files import atomic_path

SHAPE_PREFIX = "shape:"
SHAPES_DIR = Path(__file__).parent / "shapes"
MARKER = "sonify_shape_built.json"
VERSION = 1


def available() -> list[str]:
    return sorted(p.name.replace("__", "/", 1) for p in SHAPES_DIR.iterdir() if (p / "sonify_shape.json").exists())


def parse_spec(spec: str) -> tuple[str, dict[str, int], Path, dict]:
    """'org/name?key=value&...' -> (hub id, depth overrides, published folder, sonify_shape.json)."""
    hub_id, _, query = spec.partition("?")
    folder = SHAPES_DIR / hub_id.replace("/", "__", 1)
    if not (folder / "sonify_shape.json").exists():
        raise ValueError(f"unknown shape model {hub_id!r}; valid choices: {', '.join(available())}")
    meta = json.loads((folder / "sonify_shape.json").read_text())
    overrides = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in meta["depth"]:
            raise ValueError(f"shape:{hub_id} has no override {key!r}; valid choices: {', '.join(meta['depth'])}")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"shape:{hub_id} override {key}={value!r} must be a positive integer")
        overrides[key] = int(value)
    return hub_id, overrides, folder, meta


def _cut(obj, path: str, depth: int):
    """Set the depth at dotted `path` (attribute or dict key) to min(published, depth); lists per stage."""
    *parents, last = path.split(".")
    for p in parents:
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    get = (lambda: obj[last]) if isinstance(obj, dict) else (lambda: getattr(obj, last))
    old = get()
    new = [min(d, depth) for d in old] if isinstance(old, (list, tuple)) else min(old, depth)
    if isinstance(obj, dict):
        obj[last] = new
    else:
        setattr(obj, last, new)


def hf_config(spec: str):
    """The transformers config of a shape model (with overrides), without building anything."""
    from transformers import AutoConfig

    _, overrides, folder, meta = parse_spec(spec)
    cfg = AutoConfig.from_pretrained(folder)
    for key, depth in overrides.items():
        _cut(cfg, meta["depth"][key], depth)
    return cfg


def diffusers_config(spec: str, component: str) -> dict:
    """A diffusers component's config dict (with overrides that address `component.`)."""
    _, overrides, folder, meta = parse_spec(spec)
    cfg = json.loads((folder / component / "config.json").read_text())
    for key, depth in overrides.items():
        comp, _, path = meta["depth"][key].partition(".")
        if comp == component:
            _cut(cfg, path, depth)
    return cfg


def _tokenizer_object(special_ids: dict[str, int]):
    """A byte-level BPE with each special token at its published id; unused ids are unreachable fillers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from sonify.models.tiny import _bpe

    trained = _bpe([], vocab_size=400)
    learned = sorted(trained.get_vocab().items(), key=lambda kv: kv[1])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(trained.to_str())["model"]["merges"]]
    taken = set(special_ids.values())
    vocab, next_id = dict(special_ids), 0
    for token, _ in learned:
        while next_id in taken:
            next_id += 1
        vocab[token] = next_id
        taken.add(next_id)
    top = max(taken)
    for i in range(top + 1):
        if i not in taken:
            vocab[f"<sonify_unused_{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _tokenizer(cls, folder: Path, meta: dict, **extra):
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("tokenizer_class", None)
    tok = cls(tokenizer_object=_tokenizer_object(meta["special_ids"]), **settings, **extra)
    tok.add_special_tokens({"additional_special_tokens": [t for t in meta["special_ids"]
                                                           if t not in tok.all_special_tokens]})
    return tok


def _chat_template(folder: Path) -> str | None:
    path = folder / "chat_template.jinja"
    return path.read_text() if path.exists() else None


def _build_model(cls, cfg, dtype: str):
    return cls._from_config(cfg, dtype=getattr(torch, dtype))


def _clap(spec: str, folder: Path, meta: dict, out: Path) -> None:
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    _build_model(ClapModel, hf_config(spec), meta["build_dtype"]).save_pretrained(out)
    fe = ClapFeatureExtractor.from_pretrained(folder)
    ClapProcessor(feature_extractor=fe, tokenizer=_tokenizer(RobertaTokenizerFast, folder, meta)).save_pretrained(out)


def _ast(spec: str, folder: Path, meta: dict, out: Path) -> None:
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    _build_model(ASTForAudioClassification, hf_config(spec), meta["build_dtype"]).save_pretrained(out)
    ASTFeatureExtractor.from_pretrained(folder).save_pretrained(out)


def _image_processor(pil_cls, folder: Path):
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        settings.pop(key, None)
    return pil_cls(**settings)


def _vlm(model_cls, processor_cls, pil_cls, tokenizer_cls, spec: str, folder: Path, meta: dict, out: Path) -> None:
    """A VLM folder: random weights of the real architecture, and the processor saved from the
    reference folder's settings (image processor, tokenizer, chat template)."""
    _build_model(model_cls, hf_config(spec), meta["build_dtype"]).save_pretrained(out)
    proc_settings = json.loads((folder / "processor_config.json").read_text())
    proc_settings.pop("processor_class", None)
    processor_cls(image_processor=_image_processor(pil_cls, folder),
                  tokenizer=_tokenizer(tokenizer_cls, folder, meta), chat_template=_chat_template(folder),
                  **proc_settings).save_pretrained(out)


def _llava(spec: str, folder: Path, meta: dict, out: Path) -> None:
    from transformers import CLIPImageProcessorPil, LlamaTokenizerFast, LlavaForConditionalGeneration, LlavaProcessor

    _vlm(LlavaForConditionalGeneration, LlavaProcessor, CLIPImageProcessorPil, LlamaTokenizerFast, spec, folder, meta, out)


def _idefics3(spec: str, folder: Path, meta: dict, out: Path) -> None:
    from transformers import GPT2TokenizerFast, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor

    _vlm(Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3ImageProcessorPil, GPT2TokenizerFast, spec, folder, meta, out)


def t5_config(spec: str):
    """PixArt's text encoder config (T5 v1.1 XXL's encoder), with `?text_layers=N`."""
    from transformers import AutoConfig

    _, overrides, folder, meta = parse_spec(spec)
    cfg = AutoConfig.from_pretrained(folder / "text_encoder")
    for key, depth in overrides.items():
        comp, _, path = meta["depth"][key].partition(".")
        if comp == "text_encoder":
            _cut(cfg, path, depth)
    return cfg


def _pixart(spec: str, folder: Path, meta: dict, out: Path, component: str) -> None:
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

    if component == "text_encoder":
        _build_model(T5EncoderModel, t5_config(spec), meta["build_dtype"]).save_pretrained(out)
        return
    if component == "tokenizer":   # an offline BPE with T5's special tokens at their ids (not T5's sentencepiece vocabulary)
        _tokenizer(PreTrainedTokenizerFast, folder / "tokenizer", meta).save_pretrained(out)
        return

    cls = {"transformer": PixArtTransformer2DModel, "vae": AutoencoderKL}[component]
    cls.from_config(diffusers_config(spec, component)).save_pretrained(out)  # published fp32


def _hubert(spec: str, folder: Path, meta: dict, out: Path) -> None:
    from transformers import HubertModel

    _build_model(HubertModel, hf_config(spec), meta["build_dtype"]).save_pretrained(out)


_BUILDERS = {"clap": _clap, "ast": _ast, "llava": _llava, "idefics3": _idefics3, "hubert": _hubert}
_COMPONENTS = {"pixart": (_pixart, ("transformer", "vae", "text_encoder", "tokenizer"))}
ON_REQUEST = {"text_encoder", "tokenizer"}    # built only when asked for by subfolder (T5-XXL is 4.7B parameters)


def _slug(hub_id: str, overrides: dict[str, int]) -> str:
    return hub_id.replace("/", "__", 1) + "".join(f"__{k}-{v}" for k, v in sorted(overrides.items()))


def _build_once(out: Path, build, stamp: dict) -> None:
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    state = torch.random.get_rng_state()
    try:
        with atomic_path(out, replace=False) as tmp:  # another worker may win the race: its copy stays
            tmp.mkdir(parents=True)
            torch.manual_seed(0)
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(stamp))
    finally:
        torch.random.set_rng_state(state)


def build_shape(spec: str, root: str | Path, subfolder: str | None = None) -> Path:
    """Build (once) the shape model `spec` under `root`/shape and return its folder.

    Models with components (PixArt: transformer, vae) build only the `subfolder` asked for.
    """
    hub_id, overrides, folder, meta = parse_spec(spec)
    out = Path(root) / "shape" / _slug(hub_id, overrides)
    stamp = {"spec": spec.partition("?")[0], "overrides": overrides, "version": VERSION}
    if meta["kind"] in _COMPONENTS:
        build, components = _COMPONENTS[meta["kind"]]
        wanted = [subfolder] if subfolder else [c for c in components if c not in ON_REQUEST]
        for comp in wanted:
            if comp not in components:
                raise ValueError(f"shape:{hub_id} has no component {comp!r}; valid choices: {', '.join(components)}")
            _build_once(out / comp, lambda tmp, c=comp: build(spec, folder, meta, tmp, c), {**stamp, "component": comp})
        return out
    _build_once(out, lambda tmp: _BUILDERS[meta["kind"]](spec, folder, meta, tmp), stamp)
    return out


def meta_model(spec: str, component: str | None = None):
    """The full model on the meta device (no memory): for parameter counts and FLOPs of 7B models."""
    _, _, folder, meta = parse_spec(spec)
    with torch.device("meta"):
        if meta["kind"] in _COMPONENTS:
            from diffusers import AutoencoderKL, PixArtTransformer2DModel

            cls = {"transformer": PixArtTransformer2DModel, "vae": AutoencoderKL}[component or "transformer"]
            return cls.from_config(diffusers_config(spec, component or "transformer"))
        from transformers import (ASTForAudioClassification, ClapModel, HubertModel, Idefics3ForConditionalGeneration,
                                  LlavaForConditionalGeneration)

        cls = {"clap": ClapModel, "ast": ASTForAudioClassification, "llava": LlavaForConditionalGeneration,
               "idefics3": Idefics3ForConditionalGeneration, "hubert": HubertModel}[meta["kind"]]
        return cls._from_config(hf_config(spec))

