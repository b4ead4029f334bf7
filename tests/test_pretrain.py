"""Contrastive pre-training of the audio projector (A.11): the loss falls, DiT training starts from its weights,
and a run killed in either phase resumes to the weights of an uninterrupted run."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sonify.training.config import load_train_config
from sonify.training.loop import train_loop


@pytest.fixture(scope="module")
def demo_shards(full_run):
    cfg, _ = full_run
    return str(Path(cfg.run.dir) / "shards" / "train.txt"), cfg.models.tiny_dir


def _cfg(demo_shards, out, *extra):
    shards, tiny = demo_shards
    return load_train_config(["config=train_demo", f"shards={shards}", "val_shards=", f"output_dir={out}", f"tiny_dir={tiny}",
                              "progress=false", "projector.pretrain=contrastive", "projector.text_encoder=tiny:t5",
                              "projector.lr=1e-2", "log_every=100", *extra])


def _projector(path):
    from diffusers import PixArtTransformer2DModel

    return {k: v for k, v in PixArtTransformer2DModel.from_pretrained(path).state_dict().items() if k.startswith("caption_projection")}


def test_info_nce_is_the_symmetric_clip_loss():
    """Against CLIP's formula written out: mean of the two cross-entropies of the cosine logits / temperature."""
    from sonify.training.pretrain import info_nce

    g = torch.Generator().manual_seed(0)
    a, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    an, tn = a / a.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    logits = (an @ tn.T) / 0.1
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(5)) + torch.nn.functional.cross_entropy(logits.T, torch.arange(5)))
    assert float(info_nce(a, t, torch.eye(5), 0.1)) == pytest.approx(float(ref), rel=1e-6)
    same = torch.eye(5)
    same[0, 1] = same[1, 0] = 1.0                              # two samples sharing a text are positives of each other
    assert float(info_nce(a, t, same, 0.1)) != pytest.approx(float(ref))


def test_pretraining_lowers_its_loss_and_hands_its_weights_to_dit_training(demo_shards, tmp_path):
    from safetensors.torch import load_file

    from sonify.training.data import expand_shards
    from sonify.training.dit import load_dit
    from sonify.training.pretrain import FOLDER, pretrain_projector

    cfg = _cfg(demo_shards, tmp_path / "o", "projector.pretrain_steps=30", "checkpoint_every=1000", "steps=1")
    model = load_dit(cfg.dit, cfg.tiny_dir, cfg.ast_dim, cfg.dit_subfolder)
    fresh = {k: v.clone() for k, v in model.caption_projection.state_dict().items()}
    losses = pretrain_projector(cfg, model, expand_shards(cfg.shards), "cpu")["losses"]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    saved = load_file(tmp_path / "o" / FOLDER / "projector.safetensors")
    assert any(not torch.equal(saved[k], fresh[k]) for k in fresh)
    assert (tmp_path / "o" / FOLDER / "text_cache.npy").is_file()
    # DiT training starts from the pre-trained projector: with lr 0 its first checkpoint still holds exactly those weights
    train_loop(_cfg(demo_shards, tmp_path / "o", "projector.pretrain_steps=30", "steps=1", "checkpoint_every=1", "lr=0",
                    "warmup_steps=0"))
    got = _projector(tmp_path / "o" / "checkpoint-1" / "transformer")
    for k, v in saved.items():
        assert torch.equal(got[f"caption_projection.{k}"], v), k


@pytest.mark.slow
def test_a_run_killed_in_either_phase_resumes_to_the_uninterrupted_weights(demo_shards, tmp_path, monkeypatch):
    import sonify.training.pretrain as pretrain

    steps = ["projector.pretrain_steps=4", "steps=2", "checkpoint_every=2"]
    train_loop(_cfg(demo_shards, tmp_path / "whole", *steps))
    whole = _projector(tmp_path / "whole" / "checkpoint-2" / "transformer")

    real, calls = pretrain.audio_tokens, []

    def killed_after_three(*a, **k):    # pre-training dies on its 4th batch, after its checkpoint at step 2
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pretrain, "audio_tokens", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_loop(_cfg(demo_shards, tmp_path / "split", *steps))
    monkeypatch.setattr(pretrain, "audio_tokens", real)
    assert not (tmp_path / "split" / pretrain.FOLDER / "projector.safetensors").exists()
    train_loop(_cfg(demo_shards, tmp_path / "split", "projector.pretrain_steps=4", "steps=1", "checkpoint_every=1"))   # DiT phase, then killed
    train_loop(_cfg(demo_shards, tmp_path / "split", *steps, "resume=latest"))
    split = _projector(tmp_path / "split" / "checkpoint-2" / "transformer")
    assert pretrain.json.loads((tmp_path / "split" / pretrain.FOLDER / "losses.json").read_text())["steps"] == 4
    for k in whole:
        assert torch.equal(whole[k], split[k]), k


def test_bad_pretrain_setting_is_one_line():
    from sonify.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="projector.pretrain'; valid choices: none, contrastive"):
        load_train_config(["projector.pretrain=yes"])


def test_pixart_text_encoder_shape_is_t5_v1_1_xxl_and_feeds_the_caption_projection():
    """T5 v1.1 XXL (Raffel et al. 2020; the v1.1 release): d_model 4096, 24 layers, 64 heads, gated-GELU FFN of
    10240, vocabulary 32128; PixArt-alpha's caption projection takes its 4096-d output."""
    from sonify.models.shape import diffusers_config, t5_config

    t5 = t5_config("PixArt-alpha/PixArt-XL-2-512x512")
    assert (t5.d_model, t5.num_layers, t5.num_heads, t5.d_ff, t5.vocab_size) == (4096, 24, 64, 10240, 32128)
    assert t5.is_gated_act and t5_config("PixArt-alpha/PixArt-XL-2-512x512?text_layers=1").num_layers == 1
    assert diffusers_config("PixArt-alpha/PixArt-XL-2-512x512", "transformer")["caption_channels"] == t5.d_model


@pytest.mark.slow
def test_text_embeddings_with_the_shape_t5_and_its_offline_tokenizer(tmp_path):
    """The real loading path of PixArt's text side (`text_encoder/`, `tokenizer/`), one T5 layer: pooled T(T5(text))
    is 1152 wide (PixArt-XL-2's width) and a text's vector does not depend on its batch."""
    from sonify.training.pretrain import text_embeddings

    spec = "shape:PixArt-alpha/PixArt-XL-2-512x512"
    cfg = load_train_config([f"dit={spec}?layers=1", f"tiny_dir={tmp_path}", f"projector.text_encoder={spec}?text_layers=1",
                             "ast_dim=768", "projector.text_batch=2"])
    both = text_embeddings(cfg, ["Dog - barking", "a bell ringing in a church"], "cpu")
    alone = text_embeddings(cfg, ["a bell ringing in a church"], "cpu")
    assert both.shape == (2, 1152) and np.allclose(both[1], alone[0], atol=1e-5)


def test_text_embeddings_are_the_projected_t5_states_mean_pooled_over_real_tokens(tmp_path):
    """pooled T(T5(text)), recomputed text by text without padding: T5 over the real tokens only, PixArt's caption
    projection, the mean over tokens. Padding to max_length must not move it (masked attention, masked mean)."""
    from diffusers import PixArtTransformer2DModel
    from transformers import AutoTokenizer, T5EncoderModel

    from sonify.models.loading import load_pretrained
    from sonify.training.pretrain import text_embeddings

    cfg = load_train_config(["config=train_demo", f"tiny_dir={tmp_path}", "projector.text_encoder=tiny:t5"])
    texts = ["dog", "a bell ringing in a church, a dog barking far away"]
    got = text_embeddings(cfg, texts, "cpu")
    tok = load_pretrained(AutoTokenizer, "tiny:t5", str(tmp_path), role="text_encoder", subfolder="tokenizer")
    t5 = load_pretrained(T5EncoderModel, "tiny:t5", str(tmp_path), role="text_encoder", subfolder="text_encoder").eval()
    T = load_pretrained(PixArtTransformer2DModel, cfg.dit, str(tmp_path), role="dit", subfolder=cfg.dit_subfolder).caption_projection
    with torch.no_grad():
        for row, text in zip(got, texts):
            ids = tok([text], return_tensors="pt").input_ids
            assert ids.shape[1] < cfg.projector.text_max_tokens                 # padding really happens in the code
            want = T(t5(input_ids=ids).last_hidden_state)[0].mean(0).numpy()
            np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5)
