"""Tiny random models: built from configs, saved in HF format, loaded back through the real path."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from sonify.engine.errors import ModelNotAvailable
from sonify.models.loading import load_pretrained
from sonify.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def test_tiny_clap_embeds_audio_and_text(tiny_dir):
    from transformers import ClapModel, ClapProcessor

    model = load_pretrained(ClapModel, "tiny:clap", tiny_dir, role="clap")
    proc = load_pretrained(ClapProcessor, "tiny:clap", tiny_dir, role="clap")
    feats = proc(audio=[np.random.default_rng(0).standard_normal(240000).astype(np.float32)], sampling_rate=48000, return_tensors="pt")
    assert tuple(feats["input_features"].shape) == (1, 1, 1001, 64)  # 5 s repeat-padded to the 10 s window
    with torch.no_grad():
        a = model.get_audio_features(**feats).pooler_output
        t = model.get_text_features(**proc(text=["the sound of rain"], return_tensors="pt")).pooler_output
    assert a.shape == t.shape == (1, 32)


def test_tiny_vlm_generates_through_chat_template(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = load_pretrained(AutoProcessor, "tiny:vlm", tiny_dir, role="vlms")
    model = load_pretrained(AutoModelForImageTextToText, "tiny:vlm", tiny_dir, role="vlms")
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
                                      add_generation_prompt=True)
    assert prompt == "USER: <image>\nDescribe. ASSISTANT:"
    inputs = proc(images=[Image.new("RGB", (50, 40)), Image.new("RGB", (20, 70))], text=[prompt, prompt + " x"],
                  return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= inputs["input_ids"].shape[1] + 5


def test_tiny_ast_vae_dit_forward(tiny_dir):
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import ASTFeatureExtractor, ASTModel

    ast = load_pretrained(ASTModel, "tiny:ast", tiny_dir, role="ast")
    fe = load_pretrained(ASTFeatureExtractor, "tiny:ast", tiny_dir, role="ast")
    x = fe([np.zeros(80000, np.float32)], sampling_rate=16000, return_tensors="pt")
    assert ast(**x).last_hidden_state.shape[-1] == 32
    vae = load_pretrained(AutoencoderKL, "tiny:vae", tiny_dir, role="vae", subfolder="vae")
    assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 32, 32)
    dit = load_pretrained(PixArtTransformer2DModel, "tiny:dit", tiny_dir, role="dit", subfolder="transformer")
    out = dit(torch.zeros(1, 4, 16, 16), encoder_hidden_states=torch.zeros(1, 3, 32), timestep=torch.tensor([1]),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert out.shape == (1, 8, 16, 16)  # learned sigma: 2 x latent channels, like PixArt-alpha


def test_tiny_models_are_deterministic(tmp_path):
    a, b = build_tiny("dit", tmp_path / "a"), build_tiny("dit", tmp_path / "b")
    digest = lambda p: hashlib.sha256((p / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert digest(a) == digest(b)


def test_unknown_tiny_kind_names_choices(tmp_path):
    with pytest.raises(ValueError, match="valid choices: clap, vlm, ast, vae, dit"):
        build_tiny("gpt", tmp_path)


def test_unreachable_model_id_says_how_to_provide_it(tmp_path):
    from transformers import ClapModel

    with pytest.raises(ModelNotAvailable) as e:
        load_pretrained(ClapModel, "laion/clap-htsat-unfused", tmp_path, role="clap")
    msg = str(e.value)
    assert "\n" not in msg and "could not be fetched" in msg and "models.clap=DIR" in msg


def test_broken_local_model_dir_is_reported(tmp_path):
    from transformers import ClapModel

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailable, match="could not be loaded"):
        load_pretrained(ClapModel, str(tmp_path), tmp_path, role="clap")
