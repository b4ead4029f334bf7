"""The torch CLAP and AST front ends against transformers' extractors (their numpy path: torchaudio is
not installed, so `ASTFeatureExtractor` uses its Kaldi emulation), on the demo's recordings and on
generated ones: several rates, mono and stereo (downmixed as the stages do), 1 s, 5 s and 12 s.

Figures reached on this machine: CLAP log-mel max |diff| 7.6e-06 dB over the bins above the -100 dB
floor; AST 1.2e-07 (normalised log units, every bin). The bound asserted is the issue's 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from sonify.media.audio import load_chunk
from sonify.models.frontends import ASTFrontend, ClapFrontend, keyed_crop

SHAPES = "sonify/models/shapes"
CLAP_FLOOR_DB = -100.0          # 10 log10 of the extractor's mel floor 1e-10
LENGTHS = (1, 5, 12)


@pytest.fixture(scope="module")
def extractors():
    from transformers import ASTFeatureExtractor, ClapFeatureExtractor

    from sonify.models.frontends import ast_mel_filters_as_designed

    clap = ClapFeatureExtractor.from_pretrained(f"{SHAPES}/laion__clap-htsat-unfused")
    with ast_mel_filters_as_designed():
        ast = ASTFeatureExtractor.from_pretrained(f"{SHAPES}/MIT__ast-finetuned-audioset-10-10-0.4593")
    return clap, ast


@pytest.fixture(scope="module")
def recordings(demo_dir, tmp_path_factory):
    """(name, path) of the demo's audio files and of generated ones at rates the demo lacks."""
    out = tmp_path_factory.mktemp("frontend_audio")
    rng = np.random.default_rng(7)
    for sr, ch in ((32000, 2), (96000, 1), (11025, 2)):
        t = np.arange(int(12.5 * sr)) / sr
        mono = 0.3 * np.sin(2 * np.pi * (300 + 50 * t) * t) * (t % 1 < 0.6) + 0.01 * rng.standard_normal(t.size)
        data = np.stack([mono * (1 - 0.3 * c) for c in range(ch)], axis=1)
        sf.write(out / f"gen_{sr}_{ch}ch.wav", data.astype(np.float32), sr, subtype="FLOAT")
    files = [p for p in sorted((demo_dir / "audio").iterdir()) + sorted(out.iterdir()) if p.suffix in (".wav", ".flac", ".ogg")]
    usable = []
    for p in files:
        try:
            frames = sf.info(p).frames
            load_chunk(str(p), 0, frames, 16000)
        except Exception:                 # the demo's corrupt and truncated files: not audio, no features
            continue
        if frames > 0:
            usable.append(p)
    assert {sf.info(p).channels for p in usable} == {1, 2} and len({sf.info(p).samplerate for p in usable}) >= 5
    return usable


def few(paths):
    """One recording per (rate, channels), at most five: the default run; the whole set is `slow`."""
    seen, out = set(), []
    for p in paths:
        info = sf.info(p)
        if (info.samplerate, info.channels) not in seen and len(out) < 5:
            seen.add((info.samplerate, info.channels))
            out.append(p)
    return out


def clips_at(paths, rate):
    for p in paths:
        info = sf.info(p)
        for sec in LENGTHS:
            n = min(info.frames, int(sec * info.samplerate))
            yield f"{p.name}@{sec}s", load_chunk(str(p), 0, n, rate)


@pytest.mark.parametrize("subset", [few, pytest.param(list, marks=pytest.mark.slow)], ids=["few", "all"])
def test_clap_log_mel_equals_the_extractor(extractors, recordings, subset):
    fe = extractors[0]
    front = ClapFrontend(fe)
    names, clips = zip(*[(k, keyed_crop(c, fe.nb_max_samples, k)) for k, c in clips_at(subset(recordings), 48000)])
    got = front(list(clips)).numpy()
    worst = 0.0
    for name, clip, mine in zip(names, clips, got):
        ref = fe([clip], sampling_rate=48000, return_tensors="np")["input_features"][0]
        assert ref.shape == mine.shape == (1, 1001, 64), name
        above = ref > CLAP_FLOOR_DB
        worst = max(worst, float(np.abs(ref - mine)[above].max(initial=0.0)))
        assert np.all(mine[~above] <= CLAP_FLOOR_DB + 1e-3), name           # floored bins stay floored
    assert worst <= 1e-3, worst


@pytest.mark.parametrize("subset", [few, pytest.param(list, marks=pytest.mark.slow)], ids=["few", "all"])
def test_ast_filterbanks_equal_the_extractor(extractors, recordings, subset):
    fe = extractors[1]
    front = ASTFrontend(fe)
    names, clips = zip(*clips_at(subset(recordings), 16000))
    got = front(list(clips)).numpy()
    ref = np.stack([fe([c], sampling_rate=16000, return_tensors="np")["input_values"][0] for c in clips])
    assert got.shape == ref.shape == (len(clips), 1024, 128)
    assert float(np.abs(ref - got).max()) <= 1e-3


def test_ast_max_length_cuts_and_pads_like_the_extractor(extractors):
    from transformers import ASTFeatureExtractor

    from sonify.models.frontends import ast_mel_filters_as_designed

    with ast_mel_filters_as_designed():
        fe = ASTFeatureExtractor(**{**extractors[1].to_dict(), "max_length": 498})
    x = np.random.default_rng(1).standard_normal(7 * 16000).astype(np.float32) * 0.1
    clips = [x, x[:3 * 16000], x[:5 * 16000]]                  # longer, shorter, exactly the 498 frames of 5 s
    ref = fe(clips, sampling_rate=16000, return_tensors="np")["input_values"]
    assert float(np.abs(ASTFrontend(fe)(clips).numpy() - ref).max()) <= 1e-3


def test_clap_padding_modes_and_repeated_frames(extractors):
    from transformers import ClapFeatureExtractor

    x = np.random.default_rng(2).standard_normal(48000 * 3 + 123).astype(np.float32) * 0.2
    for padding, clip in (("repeatpad", x), ("repeat", x[:48000 * 2]), ("pad", x)):   # x: not whole hops; 2 s: frames reused
        fe = ClapFeatureExtractor(**{**extractors[0].to_dict(), "padding": padding})
        front = ClapFrontend(fe)
        ref = fe([clip], sampling_rate=48000, return_tensors="np")["input_features"]
        mine = front([clip]).numpy()
        above = ref > CLAP_FLOOR_DB
        assert float(np.abs(ref - mine)[above].max()) <= 1e-3, (padding, clip.size)
    src = ClapFrontend(extractors[0]).frame_sources(240000)     # 5 s at 48 kHz: 500 hops, repeated once
    assert sum(s != t for t, s in enumerate(src)) == 497 and src[600] == 100


def test_keyed_crop_is_fixed_by_the_key():
    x = np.arange(20, dtype=np.float32)
    a, b = keyed_crop(x, 8, "chunk-a"), keyed_crop(x, 8, "chunk-a")
    assert np.array_equal(a, b) and a.size == 8 and np.array_equal(a, x[int(a[0]):int(a[0]) + 8])
    assert len({int(keyed_crop(x, 8, f"chunk-{i}")[0]) for i in range(40)}) > 5   # offsets spread over the overflow
    assert keyed_crop(x, 30, "k") is x


def test_fused_checkpoints_ask_for_the_reference(extractors):
    from transformers import ClapFeatureExtractor

    fe = ClapFeatureExtractor(**{**extractors[0].to_dict(), "truncation": "fusion"})
    with pytest.raises(ValueError, match="frontend=transformers"):
        ClapFrontend(fe)


def test_frontend_setting_is_in_the_fingerprint(make_cfg):
    from sonify.stages import get_stage

    for stage, key in (("embed_audio", "embed"), ("features", "features")):
        a = get_stage(stage).lineage(make_cfg())
        b = get_stage(stage).lineage(make_cfg(f"stages.{key}.frontend=transformers"))
        assert a != b, stage


@pytest.mark.parametrize("key", ["stages.embed.frontend", "stages.features.frontend"])
def test_bad_frontend_is_one_line_naming_the_choices(key, capsys):
    from sonify.run import main

    assert main(["pipeline=demo", "stage=images", f"{key}=numpy"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"key '{key}'" in err and "torch, transformers" in err


@pytest.mark.slow
@pytest.mark.parametrize("role", ["clap", "ast"])
def test_full_size_shape_embeddings_match_the_reference(role, recordings, tmp_path_factory):
    """The published CLAP and AST architectures (random weights, the same for both front ends): the
    embeddings from the torch features are within cosine 0.9999 of those from the extractor's."""
    import torch

    shape_dir = tmp_path_factory.mktemp("shape_models")
    torch.manual_seed(0)
    if role == "clap":
        from sonify.models.clap import ClapEmbedder

        ref = ClapEmbedder("shape:laion/clap-htsat-unfused", shape_dir, "cpu", "float32", 4, frontend="transformers")
        mine = ClapEmbedder("shape:laion/clap-htsat-unfused", shape_dir, "cpu", "float32", 4, frontend="torch")
        names, clips = zip(*list(clips_at(recordings[:4], 48000)))
        a, b = ref.embed_audio(list(clips), list(names)), mine.embed_audio(list(clips), list(names))
    else:
        from sonify.models.encoders import ASTEncoder

        ref = ASTEncoder("shape:MIT/ast-finetuned-audioset-10-10-0.4593", shape_dir, 498, "mean", "cpu", "float32", 4, "transformers")
        mine = ASTEncoder("shape:MIT/ast-finetuned-audioset-10-10-0.4593", shape_dir, 498, "mean", "cpu", "float32", 4, "torch")
        clips = [c for _, c in clips_at(recordings[:4], 16000)]
        a, b = np.stack([f.ravel() for f in ref.encode(clips)]), np.stack([f.ravel() for f in mine.encode(clips)])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999, cos.min()
