"""Deterministic tiny random models, built from configs and saved in Hugging Face format.

They have the architecture of the real ones (CLAP, a LLaVA-style VLM, AST, the PixArt VAE and
transformer) at a few hundred kB, so tests and the offline demo run the real code paths. Their
outputs mean nothing. Tokenizers are trained offline with `tokenizers` on a few sentences.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sonify.engine.files import atomic_path

MARKER = "sonify_tiny.json"
KINDS = ("clap", "vlm", "ast", "vae", "dit", "clip", "inception", "wav2clip", "hubert", "t5")
VERSION = 8

_CORPUS = [
    "the sound of a dog barking in the park", "water splashing against the rocks", "a car engine running",
    "birds chirping in the trees", "people talking in a crowded room", "wind blowing through the leaves",
    "1. Dog - The sound of barking", "2. Car: engine humming", "provide a short and concise description",
    "As a numbered list, provide sounds associated with prominent objects visible in the image",
]


def _bpe(special: list[str], vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    return tok


def _clap(out: Path) -> None:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    tok = RobertaTokenizerFast(tokenizer_object=_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
                               bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                               mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=77)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        # audio hidden_size must equal patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        audio_config=dict(patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                          hidden_size=32, window_size=8, spec_size=256, patch_stride=4, num_mel_bins=64, enable_fusion=False),
        projection_dim=32)
    ClapModel(cfg).save_pretrained(out)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(feature_size=64, sampling_rate=48000, frequency_min=50, truncation="rand_trunc", padding="repeatpad"), tokenizer=tok).save_pretrained(out)


VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ ' ' }}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")  # LLaVA-1.5: "USER: <image>\n... ASSISTANT:"


def _vlm(out: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlamaTokenizerFast, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = LlamaTokenizerFast(tokenizer_object=_bpe(["<unk>", "<s>", "</s>", "<pad>", "<image>"]),
                             unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                             padding_side="left", add_bos_token=True, add_eos_token=False)
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    num_tokens = (32 // 8) ** 2
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, image_token="<image>", chat_template=VLM_CHAT_TEMPLATE).save_pretrained(out)
    (out / "sonify_image_tokens.txt").write_text(str(num_tokens))


def _ast(out: Path) -> None:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    num_mel_bins=128, max_length=512, frequency_stride=10, time_stride=10, patch_size=16)
    ASTModel(cfg).save_pretrained(out)
    from sonify.models.frontends import ast_mel_filters_as_designed

    with ast_mel_filters_as_designed():
        ASTFeatureExtractor(num_mel_bins=128, sampling_rate=16000, max_length=512).save_pretrained(out)


def _vae(out: Path) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.18215).save_pretrained(out / "vae")


def _dit(out: Path) -> None:
    from diffusers import PixArtTransformer2DModel

    PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                             num_layers=2, sample_size=32, patch_size=2, cross_attention_dim=32,
                             caption_channels=32, norm_type="ada_norm_single",
                             use_additional_conditions=False).save_pretrained(out / "transformer")


def _clip(out: Path) -> None:
    """CLIP for IIS, AIS, CS and R@K: image tower + PIL processor, and a text tower with a byte-level tokenizer
    and CLIP's 77 positions (Sound2Scene's R@K embeds the class names; the EOS token's state is the pooled one)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

    bpe = _bpe(["<|startoftext|>", "<|endoftext|>"])
    bos, eos = bpe.token_to_id("<|startoftext|>"), bpe.token_to_id("<|endoftext|>")
    bpe.post_processor = TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                            special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", model_max_length=77)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, bos_token_id=bos,
                                      eos_token_id=eos, pad_token_id=eos, num_attention_heads=2, max_position_embeddings=77),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=32)
    CLIPModel(cfg).save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    tok.save_pretrained(out)


def _inception(out: Path) -> None:
    """FID's Inception at 1/64 of its width: 32-d pool features, its batch norms calibrated so they are alive.

    With random weights and the default running statistics (mean 0, variance 1) the narrow layers' ReLUs
    all die and every image gets the zero vector (FID, KID and NDB 0, IS 1 whatever the images). So the
    running statistics are set, once at build time, to those of one batch of smooth random images passed
    in training mode: every layer's input is then normalised, about half of each ReLU's outputs are alive,
    and different images get different features.
    """
    import torch.nn.functional as F

    from sonify.models.inception import FIDInceptionV3

    images = F.interpolate(torch.rand(8, 3, 16, 16), size=(299, 299), mode="bilinear", align_corners=False)
    _calibrate_batch_norms(FIDInceptionV3(width=1 / 64), images).save_pretrained(out)


def _calibrate_batch_norms(model: torch.nn.Module, batch: torch.Tensor) -> torch.nn.Module:
    """Every batch norm's running statistics set to those of `batch` (one training-mode pass); the model in eval mode."""
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None   # a cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


def _wav2clip(out: Path) -> None:
    """Wav2CLIP's ResNet-18 with 4 base channels: 32-d embeddings, the tiny CLIP's width.

    Its batch norms are calibrated like the tiny Inception's, on tones and noise: with the default statistics
    a tone, noise and a square wave all embedded within cosine 0.998 of each other, so AIS and CS said nothing.
    """
    from sonify.models.wav2clip import SAMPLE_RATE, Wav2CLIP

    t = torch.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tones = torch.sin(2 * torch.pi * torch.logspace(2, 3.6, 4)[:, None] * t) * torch.rand(4, 1)
    noise = torch.randn(4, len(t)) * torch.rand(4, 1) * torch.linspace(0, 1, len(t)) ** torch.rand(4, 1)
    _calibrate_batch_norms(Wav2CLIP(width=4), torch.cat([tones, noise])).save_pretrained(out)


def _hubert(out: Path) -> None:
    """HuBERT-base's layout (group-normalised conv front end, conv positions) at width 32."""
    from transformers import HubertConfig, HubertModel

    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).save_pretrained(out)


def _t5(out: Path) -> None:
    """PixArt-alpha's text side as its repo lays it out (`text_encoder/`, `tokenizer/`): a T5 encoder 32 wide,
    the tiny DiT's caption width, so the tiny DiT's caption projection reads its output as PixArt's reads T5-XXL's."""
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<pad>", "</s>", "<unk>"]), pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>", model_max_length=120)
    tok.save_pretrained(out / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(out / "text_encoder")


_BUILDERS = {"t5": _t5, "hubert": _hubert, "clap": _clap, "vlm": _vlm, "ast": _ast, "vae": _vae, "dit": _dit, "clip": _clip, "inception": _inception,
             "wav2clip": _wav2clip}


def build_tiny(kind: str, root: str | Path) -> Path:
    """Build (once) and return the folder of tiny model `kind` under `root`; safe under concurrency."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny model {kind!r}; valid choices: {', '.join(KINDS)}")
    out = Path(root) / kind
    marker = out / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == VERSION:
        return out
    if out.exists():  # an older version
        shutil.rmtree(out, ignore_errors=True)
    state = torch.random.get_rng_state()
    try:
        with atomic_path(out, replace=False) as tmp:  # another worker may win the race: its copy stays
            tmp.mkdir()
            torch.manual_seed(0)
            _BUILDERS[kind](tmp)
            (tmp / MARKER).write_text(json.dumps({"kind": kind, "version": VERSION}))
    finally:
        torch.random.set_rng_state(state)
    return out
