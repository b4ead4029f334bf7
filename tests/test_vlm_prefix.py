"""One image prefill for both VLM prompts (`HFVLM.generate_prompts`): the same inputs as separate
calls, the vision tower run once per batch, and the same greedy replies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

PROMPTS = ("Provide a short caption of this image.", "List up to three objects in this image that make a sound.")
GEN = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1}


def images(n: int, sizes=((64, 96), (96, 64), (80, 80))):
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(n)]


def vision_calls(vlm) -> list:
    calls = []
    tower = getattr(vlm.model.model, "vision_tower", None) or vlm.model.model.vision_model
    tower.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from sonify.models.vlm import HFVLM

    return HFVLM("tiny:vlm", str(tmp_path_factory.mktemp("tiny")), "cpu", "float32", model_batch=2)


def test_prefix_and_suffixes_rebuild_the_processor_inputs(tiny_vlm):
    inputs = [tiny_vlm.prepare(images(2), p) for p in PROMPTS]
    ids, mask, suffixes = tiny_vlm.split_prefix(inputs)
    image_token = tiny_vlm.model.config.image_token_id
    assert int((ids == image_token).sum()) == int((inputs[0]["input_ids"] == image_token).sum())   # every image token
    for x, suffix in zip(inputs, suffixes):
        assert torch.equal(torch.cat([ids, suffix.expand(ids.shape[0], -1)], 1), x["input_ids"])
        assert torch.equal(torch.cat([mask, torch.ones_like(suffix).expand(ids.shape[0], -1)], 1), x["attention_mask"])


def test_shared_prefill_replies_equal_separate_calls_with_one_vision_pass(tiny_vlm):
    ims = images(3)
    calls = vision_calls(tiny_vlm)
    separate = [tiny_vlm.generate(ims, p, GEN) for p in PROMPTS]
    n_separate = len(calls)
    shared = tiny_vlm.generate_prompts(ims, [(p, GEN) for p in PROMPTS])
    assert shared == separate
    assert (n_separate, len(calls) - n_separate) == (4, 2)   # 2 batches of 2: twice per prompt vs once per batch


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["llava-hf/llava-1.5-7b-hf?text_layers=2&vision_layers=2",
                                  "HuggingFaceTB/SmolVLM-Instruct?text_layers=1&vision_layers=1"])
def test_shape_vlms_shared_vs_unshared(spec, tmp_path_factory):
    """The published widths at reduced depth; SmolVLM's tiling gives images of other sizes other prefix
    lengths. First-step logits agree within float tolerance; greedy replies are the same."""
    from sonify.models.vlm import HFVLM

    torch.manual_seed(0)
    vlm = HFVLM(f"shape:{spec}", str(tmp_path_factory.mktemp("shape")), "cpu", "float32", model_batch=2)
    ims = images(2, sizes=((336, 500), (500, 336)))
    gen1 = {**GEN, "max_new_tokens": 1, "output_logits": True, "return_dict_in_generate": True}
    inputs = [vlm.prepare(ims, p) for p in PROMPTS]
    ids, mask, suffixes = vlm.split_prefix(inputs)
    with torch.inference_mode():
        whole = [vlm.model.generate(**x, **gen1).logits[0] for x in inputs]
        vision = {k: v for k, v in inputs[0].items() if k not in ("input_ids", "attention_mask")}
        pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = vlm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **vision).past_key_values
        import copy
        for x, suffix, ref in zip(inputs, suffixes, whole):
            full = torch.cat([ids, suffix.expand(ids.shape[0], -1)], 1)
            got = vlm.model.generate(input_ids=full, attention_mask=x["attention_mask"], cache=copy.deepcopy(cache), **gen1).logits[0]
            assert torch.allclose(got, ref, atol=1e-3, rtol=1e-4), float((got - ref).abs().max())
    separate = [vlm.generate(ims, p, GEN) for p in PROMPTS]
    assert vlm.generate_prompts(ims, [(p, GEN) for p in PROMPTS]) == separate


def test_tiling_processor_size_setting(tmp_path):
    """Idefics3's own `size.longest_edge` decides the tiles (max_image_side does not): 1536 (published)
    makes 12 tiles + a global view of an SA-1B image, 768 makes 2 x 2 + 1; 81 tokens per tile."""
    from transformers import AutoProcessor

    from sonify.engine.errors import ConfigError
    from sonify.models.loading import load_pretrained
    from sonify.models.vlm import apply_processor_settings, processor_settings

    spec = "shape:HuggingFaceTB/SmolVLM-Instruct?text_layers=1&vision_layers=1"
    table = {"HuggingFaceTB/SmolVLM-Instruct": {"size": {"longest_edge": 768}}}
    assert processor_settings(table, spec) == processor_settings(table, "HuggingFaceTB/SmolVLM-Instruct") == table["HuggingFaceTB/SmolVLM-Instruct"]
    assert processor_settings(table, "llava-hf/llava-1.5-7b-hf") == {}

    def image_tokens(proc):
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
                                        add_generation_prompt=True)
        x = proc(images=[Image.new("RGB", (1024, 683))], text=[text], return_tensors="pt")   # SA-1B at max_image_side
        return int((x["input_ids"] == proc.tokenizer.convert_tokens_to_ids(proc.image_token)).sum())

    proc = load_pretrained(AutoProcessor, spec, str(tmp_path), role="vlms")
    assert image_tokens(proc) == 13 * 81
    apply_processor_settings(proc, spec, processor_settings(table, spec))
    assert proc.image_processor.size.longest_edge == 768 and image_tokens(proc) == 5 * 81
    with pytest.raises(ConfigError, match="processor_kwargs.*no setting 'sizes'"):
        apply_processor_settings(proc, spec, {"sizes": {"longest_edge": 768}})


def test_processor_settings_are_in_the_fingerprint(make_cfg):
    from sonify.stages import get_stage

    stage = get_stage("concepts")
    assert stage.lineage(make_cfg()) != stage.lineage(make_cfg("stages.concepts.processor_kwargs={'tiny:vlm': {size: {height: 32}}}"))
