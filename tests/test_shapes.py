"""`shape:<hub id>` models: the real checkpoints' published architectures with random weights.

Every number asserted here is written out from the model cards and papers (LLaVA-1.5: CLIP ViT-L/14
at 336 px + Vicuna-7B; LAION-CLAP: HTS-AT + RoBERTa, 48 kHz, 64 mel bins, 10 s; AST: 16 kHz, 128 mel
bins, 16 x 16 patches with stride 10, 1024 frames; PixArt-alpha XL/2: 28 blocks of width 1152,
16 heads, T5 4096-d captions; SD VAE: 4 latent channels, factor 8, 0.18215; SmolVLM-Instruct:
SigLIP 384 px + SmolLM2-1.7B, 81 tokens per image tile), never read back from the repo's files.
The default tests use the meta device or one-layer models; full-width builds are `slow`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sonify.models.shape import available, build_shape, diffusers_config, hf_config, meta_model, parse_spec

LLAVA = "llava-hf/llava-1.5-7b-hf"
CLAP = "laion/clap-htsat-unfused"
AST = "MIT/ast-finetuned-audioset-10-10-0.4593"
PIXART = "PixArt-alpha/PixArt-XL-2-512x512"
SMOLVLM = "HuggingFaceTB/SmolVLM-Instruct"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def shape_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def test_every_default_model_has_a_shape():
    assert set(available()) >= {LLAVA, CLAP, AST, PIXART, SMOLVLM}


def test_llava_full_config_on_meta_device():
    cfg = hf_config(LLAVA)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.intermediate_size) == (32, 4096, 32, 11008)
    assert t.vocab_size == 32064 and t.max_position_embeddings == 4096
    assert (v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.patch_size, v.image_size) == (24, 1024, 16, 14, 336)
    assert (336 // 14) ** 2 == 576 == cfg.image_seq_length          # 24 x 24 patches, CLS dropped ("default")
    assert cfg.image_token_index == 32000 and cfg.vision_feature_layer == -2
    assert cfg.vision_feature_select_strategy == "default"
    model = meta_model(LLAVA)
    assert next(model.parameters()).device.type == "meta"
    assert 7.0e9 < n_params(model) < 7.1e9                            # "7B": 7.06B with the CLIP tower


def test_depth_override_keeps_widths():
    cfg = hf_config(f"{LLAVA}?text_layers=1&vision_layers=2")
    assert (cfg.text_config.num_hidden_layers, cfg.vision_config.num_hidden_layers) == (1, 2)
    assert (cfg.text_config.hidden_size, cfg.vision_config.hidden_size) == (4096, 1024)
    assert diffusers_config(f"{PIXART}?layers=1", "transformer")["num_layers"] == 1
    assert hf_config(f"{CLAP}?audio_layers=1").audio_config.depths == [1, 1, 1, 1]


@pytest.mark.parametrize("spec, message", [
    ("nobody/model", "unknown shape model 'nobody/model'; valid choices: "),
    (f"{LLAVA}?layers=1", "has no override 'layers'; valid choices: text_layers, vision_layers"),
    (f"{LLAVA}?text_layers=0", "must be a positive integer"),
])
def test_bad_shape_names_say_why(spec, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_spec(spec)


def test_clap_ast_pixart_smolvlm_configs_on_meta_device():
    clap = hf_config(CLAP)
    a, t = clap.audio_config, clap.text_config
    assert (a.depths, a.num_attention_heads, a.patch_embeds_hidden_size, a.hidden_size) == ([2, 2, 6, 2], [4, 8, 16, 32], 96, 768)
    assert (a.spec_size, a.num_mel_bins, a.window_size, a.enable_fusion) == (256, 64, 8, False)
    assert (t.num_hidden_layers, t.hidden_size, t.vocab_size, clap.projection_dim) == (12, 768, 50265, 512)
    assert 150e6 < n_params(meta_model(CLAP)) < 160e6

    ast = hf_config(AST)
    assert (ast.num_hidden_layers, ast.hidden_size, ast.num_attention_heads, ast.patch_size) == (12, 768, 12, 16)
    assert (ast.frequency_stride, ast.time_stride, ast.max_length, ast.num_mel_bins) == (10, 10, 1024, 128)
    pos = meta_model(AST).audio_spectrogram_transformer.embeddings.position_embeddings
    assert tuple(pos.shape) == (1, 12 * 101 + 2, 768)                # 12 x 101 patch grid + cls + distillation

    dit = meta_model(PIXART, "transformer")
    c = dit.config
    assert (c.num_layers, c.num_attention_heads, c.attention_head_dim) == (28, 16, 72)
    assert c.num_attention_heads * c.attention_head_dim == 1152
    assert (c.caption_channels, c.sample_size, c.patch_size, c.in_channels, c.out_channels) == (4096, 64, 2, 4, 8)
    assert 600e6 < n_params(dit) < 620e6                              # PixArt-alpha: 0.6B
    vae = meta_model(PIXART, "vae").config
    assert (tuple(vae.block_out_channels), vae.latent_channels, vae.scaling_factor) == ((128, 256, 512, 512), 4, 0.18215)

    smol = hf_config(SMOLVLM)
    assert (smol.text_config.num_hidden_layers, smol.text_config.hidden_size) == (24, 2048)
    assert (smol.vision_config.num_hidden_layers, smol.vision_config.hidden_size, smol.vision_config.image_size) == (27, 1152, 384)
    assert smol.scale_factor == 3 and ((384 // 14) ** 2) // 3 ** 2 == 81
    assert 2.2e9 < n_params(meta_model(SMOLVLM)) < 2.3e9              # "2B" (2.25B)


def test_clap_shape_loads_with_published_processor(shape_dir):
    from transformers import ClapModel, ClapProcessor

    from sonify.models.loading import load_pretrained

    spec = f"shape:{CLAP}?text_layers=1&audio_layers=1"
    proc = load_pretrained(ClapProcessor, spec, shape_dir, role="clap")
    fe = proc.feature_extractor
    assert (fe.sampling_rate, fe.feature_size, fe.padding, fe.nb_max_samples) == (48000, 64, "repeatpad", 480000)
    feats = proc(audio=[np.zeros(5 * 48000, np.float32) + 0.01], sampling_rate=48000, return_tensors="pt")
    assert tuple(feats["input_features"].shape) == (1, 1, 1001, 64)   # 5 s repeat-padded to the 10 s window
    tok = proc.tokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 50264)
    model = load_pretrained(ClapModel, spec, shape_dir, role="clap")
    with torch.no_grad():
        a = model.get_audio_features(**feats).pooler_output
        t = model.get_text_features(**proc(text=["a dog barking"], return_tensors="pt")).pooler_output
    assert a.shape == t.shape == (1, 512)


@pytest.mark.parametrize("seconds, time_patches", [(5, 49), (10, 99)])
def test_ast_crop_on_the_real_grid(shape_dir, seconds, time_patches):
    from sonify.models.encoders import ASTEncoder, kaldi_frames

    frames = kaldi_frames(seconds * 16000)                              # 25 ms windows, 10 ms hop
    assert frames == {5: 498, 10: 998}[seconds]
    enc = ASTEncoder(f"shape:{AST}?layers=1", shape_dir, frames, device="cpu", dtype="float32")
    assert (enc.f_dim, enc.t_max, enc.rate, enc.dim) == (12, time_patches, 16000, 768)
    assert enc.fe.num_mel_bins == 128
    assert tuple(enc.model.embeddings.position_embeddings.shape) == (1, 2 + 12 * time_patches, 768)
    out = enc.encode([np.random.default_rng(0).standard_normal(seconds * 16000).astype(np.float32) * 0.1])
    assert out[0].shape == (time_patches, 768)


def test_shape_build_is_deterministic_and_cached(shape_dir, tmp_path):
    a = build_shape(f"{AST}?layers=1", shape_dir)
    b = build_shape(f"{AST}?layers=1", tmp_path)
    read = lambda p: (p / "model.safetensors").read_bytes()
    assert read(a) == read(b)
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert build_shape(f"{AST}?layers=1", shape_dir) == a and (a / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_vae_shape_encodes_512_px_to_64x64_latents(shape_dir):
    from sonify.models.encoders import VAEEncoder

    enc = VAEEncoder(f"shape:{PIXART}", shape_dir, device="cpu", dtype="float32")
    assert enc.scaling_factor == 0.18215
    mean, std = enc.encode([Image.new("RGB", (512, 512), (120, 60, 30))])
    assert mean.shape == std.shape == (1, 4, 64, 64)


@pytest.mark.slow
def test_llava_576_image_tokens_and_left_padding(shape_dir):
    from sonify.models.vlm import HFVLM

    vlm = HFVLM(f"shape:{LLAVA}?text_layers=1&vision_layers=1", str(shape_dir), device="cpu", dtype="float32")
    proc, model = vlm.processor, vlm.model
    assert proc.tokenizer.convert_tokens_to_ids("<image>") == 32000 and proc.tokenizer.padding_side == "left"
    prompts = [vlm.prompt_text("Name the sounds."), vlm.prompt_text("List, as a numbered list, what sounds this image makes.")]
    assert prompts[0] == "USER: <image>\nName the sounds. ASSISTANT:"
    images = [Image.new("RGB", (640, 480), (200, 30, 30)), Image.new("RGB", (300, 500), (30, 30, 200))]

    def first_logits(ims, texts):
        inputs = proc(images=ims, text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True)
        return inputs, out.logits[0]

    batch_inputs, batch = first_logits(images, prompts)
    assert [int((row == 32000).sum()) for row in batch_inputs["input_ids"]] == [576, 576]
    assert batch_inputs["attention_mask"][0, 0] == 0 and batch_inputs["attention_mask"][1, 0] == 1   # left padded
    for i in range(2):
        _, alone = first_logits([images[i]], [prompts[i]])
        torch.testing.assert_close(batch[i], alone[0], atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_pixart_shape_with_audio_projector_loads_plainly(shape_dir, tmp_path):
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import load_file

    from sonify.training.dit import load_dit

    spec = f"shape:{PIXART}?layers=1"
    folder = build_shape(spec[len("shape:"):], shape_dir, "transformer")
    before = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    dit = load_dit(spec, str(shape_dir), ast_dim=768)
    assert dit.caption_projection.linear_1.in_features == 768 and dit.caption_projection.linear_2.out_features == 1152
    dit.save_pretrained(tmp_path / "audio_dit")
    plain = PixArtTransformer2DModel.from_pretrained(tmp_path / "audio_dit")
    after = plain.state_dict()
    kept = [k for k in before if not k.startswith("caption_projection.")]
    assert len(kept) > 20 and all(torch.equal(before[k], after[k]) for k in kept)
    assert not torch.equal(before["caption_projection.linear_2.weight"], after["caption_projection.linear_2.weight"])
    out = plain(torch.zeros(1, 4, 64, 64), encoder_hidden_states=torch.zeros(1, 49, 768), timestep=torch.tensor([10]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert out.shape == (1, 8, 64, 64)


@pytest.mark.slow
def test_smolvlm_shape_runs_through_the_concepts_stage(make_cfg, shape_dir):
    """The stage's batch callable on 2 images: SigLIP tiles, chat template, generate, then the parser."""
    from sonify.engine.executor import run_stage
    from sonify.engine.partitions import work_table
    from sonify.engine.store import TableStore
    from sonify.stages import get_stage
    from sonify.stages.concepts import ConceptsStage

    spec = f"shape:{SMOLVLM}?text_layers=1&vision_layers=1"
    cfg = make_cfg(f"models.tiny_dir={shape_dir}", f"models.vlms=[{spec}]", "stages.concepts.imports=[]",
                   "stages.concepts.generation.max_new_tokens=6", "stages.concepts.caption_generation.max_new_tokens=4")
    run_stage(get_stage("images"), cfg, progress_bar=False)
    work = work_table(ConceptsStage.work_list(cfg, TableStore(cfg.run.dir))).slice(0, 2)
    stage = ConceptsStage(cfg)
    assert stage.vlms[spec].processor.tokenizer.convert_tokens_to_ids("<image>") == 49153
    out = stage.process_batch(work)
    rows, caps = out["concepts"].to_pylist(), out["captions"].to_pylist()
    assert [r["id"] for r in rows] == work.column("id").to_pylist()
    assert all(r["variant"] == spec and r["origin"] == "generate" and r["raw"] is not None for r in rows)
    assert all(r["status"] == "ok" or r["error"].startswith("parse_error:") for r in rows)   # the parser saw each reply
    assert all(c["status"] == "ok" and c["caption"] is not None for c in caps)

def test_shapes_pipeline_cheap_parts(tmp_path):
    """pipelines/shapes.yaml names shape models at full width; its ingest, concepts import and filter run."""
    from sonify.engine.config import load_config
    from sonify.engine.executor import run_stage
    from sonify.engine.store import TableStore
    from sonify.sources.demo import ensure_demo_data
    from sonify.stages import get_stage, stage_names
    from sonify.training.config import load_train_config

    cfg = load_config(["pipeline=shapes", f"run.root={tmp_path}", "run.executor=local", "run.progress=false",
                       "stages.concepts.generate=false"], stage_names())
    m = cfg.models
    names = [m.clap, *m.vlms, m.ast, m.vae, m.dit]
    assert all(n.startswith("shape:") for n in names) and len(m.vlms) == 2
    specs = [n[len("shape:"):] for n in names]
    for spec in specs:
        parse_spec(spec)                                                  # every name and override is valid
    llava, smol = (hf_config(s) for s in specs[1:3])
    assert (llava.text_config.hidden_size, llava.vision_config.hidden_size, llava.text_config.num_hidden_layers) == (4096, 1024, 1)
    assert (smol.text_config.hidden_size, smol.vision_config.hidden_size) == (2048, 1152)
    assert diffusers_config(specs[-1], "transformer")["num_attention_heads"] * 72 == 1152
    assert cfg.stages.latents.resolution == 512 and cfg.demo_data.num_images <= 4
    train = load_train_config(["config=train_shapes"])
    assert train.dit == m.dit and train.ast_dim == 768 and train.steps <= 10

    ensure_demo_data(cfg.demo_data.dir, cfg.demo_data.num_images, 0)
    for stage in ("images", "audio", "concepts", "filter"):
        run_stage(get_stage(stage), cfg, progress_bar=False)
    store = TableStore(cfg.run.dir)
    assert 0 < store.read("images").num_rows and 0 < store.read("audio_chunks").num_rows
    kept = store.read("kept_images").to_pylist()
    assert kept and any(r["kept"] for r in kept)
