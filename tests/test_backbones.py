"""Skippable backbones on tiny random models: the skip switch, export, freezing, FLOPs, METER loading."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from das_tune.backbones import build_backbone
from das_tune.backbones.adapters import SkippableLayer
from das_tune.backbones.flops import CUSTOM, CostModel, count_flops
from das_tune.backbones.meter import TINY as METER_TINY
from das_tune.backbones.meter import MeterCore
from das_tune.backbones.meter_checkpoint import load_meter_checkpoint
from das_tune.backbones.processing import minilm_vocab_size
from das_tune.errors import UserError

NAMES = {
    "minilm_vl": [f"En{i}" for i in range(6)],
    "minilm": [f"En{i}" for i in range(6)],
    "vilt": [f"En{i}" for i in range(12)],
    "meter": [f"FL{i}" for i in range(6)] + [f"FV{i}" for i in range(6)] + [f"LEn{i}" for i in range(12)],
}
SKIP = {"minilm_vl": ["En1", "En4"], "minilm": ["En2"], "vilt": ["En3"], "meter": ["FL2", "FV0", "LEn6"]}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def models():
    return {name: build_backbone(name, tiny=True).eval() for name in NAMES}


def inputs_for(model, batch=2):
    inputs = model.example_inputs(batch)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
    return inputs


def run(model, inputs):
    torch.manual_seed(1)  # ViLT samples image patches at random
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize("name", NAMES)
def test_layer_names_match_the_full_model(models, name):
    assert models[name].layer_names == NAMES[name]


@pytest.mark.parametrize("name", NAMES)
def test_skipped_layer_is_not_executed(models, name):
    model = models[name]
    ran = []
    hooks = [m.layer.register_forward_hook(lambda mod, a, o, n=m.name: ran.append(n))
             for m in model.modules() if isinstance(m, SkippableLayer)]
    try:
        model.set_skipped(SKIP[name])
        assert model.skipped == frozenset(SKIP[name])
        run(model, inputs_for(model))
        assert sorted(ran) == sorted(set(NAMES[name]) - set(SKIP[name]))
    finally:
        for hook in hooks:
            hook.remove()
        model.set_skipped([])


@pytest.mark.parametrize("name", NAMES)
def test_export_equals_supernet_and_is_smaller(models, name):
    model = models[name]
    inputs = inputs_for(model)
    model.set_skipped(SKIP[name])
    try:
        expected = run(model, inputs)
        subnet = model.export(SKIP[name])
    finally:
        model.set_skipped([])
    torch.testing.assert_close(run(subnet, inputs), expected)
    assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in model.parameters())
    assert not {id(p) for p in subnet.parameters()} & {id(p) for p in model.parameters()}
    with pytest.raises(UserError):
        subnet.set_skipped([])


# The reference's filter (meter_module_search.py / vilt_module_search.py): names containing one of these
# train, except METER's encoders (text_transformer, vit_model: here vision, text_embeddings and the
# RoBERTa layers inside text_layers.N.layer). Our BERT-family models have no reference: adapters and
# the image tokens.
REFERENCE_TRAINABLE = re.compile(r"classifier|pooler|token_type_embeddings|rank_output|adapter")
METER_ENCODERS = re.compile(r"^(vision\.|text_embeddings\.|text_layers\.\d+\.layer\.)")


@pytest.mark.parametrize("name", NAMES)
def test_trainable_parameters_follow_the_reference(models, name):
    model = models[name]
    names = {n for n, _ in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if name == "meter":
        expected = {n for n in names if REFERENCE_TRAINABLE.search(n) and not METER_ENCODERS.search(n)}
        assert {"text_pooler.dense.weight", "token_type_embeddings.weight", "token4classifier"} <= expected
    elif name == "vilt":
        expected = {n for n in names if REFERENCE_TRAINABLE.search(n)}
        assert {"pooler.dense.weight", "embeddings.token_type_embeddings.weight"} <= expected
    else:
        expected = {n for n in names if re.search(r"adapter|image_tokens", n)}
    assert trainable == expected
    assert set(model.trainable_state_dict()) == trainable


def test_flops_fall_by_each_skipped_layers_cost(models):
    model = models["minilm_vl"]
    inputs = model.example_inputs()
    costs = CostModel(model, inputs)
    full = count_flops(model, inputs)
    assert costs.cost([]).flops == full
    for skip in (["En0"], ["En1", "En4"], ["En0", "En2", "En3", "En5"]):
        subnet = model.export(skip)
        assert count_flops(subnet, inputs) == costs.cost(skip).flops
        assert costs.cost(skip).params == sum(p.numel() for p in subnet.parameters())
        assert costs.cost(skip).trainable_params == len(torch.cat([p.flatten() for p in subnet.trainable_parameters()]))
    layer = model.layers[1]
    x = torch.randn(1, 32, model.feature_dim)
    with torch.no_grad():
        block = count_flops_of(lambda: layer.layer(x, None))
        skip = count_flops_of(lambda: layer.skip_adapter(x))
    assert costs.delta_flops["En1"] == skip - block < 0
    assert costs.cost([]).additional_flops > 0 and costs.cost([]).macs * 2 == full


def count_flops_of(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=CUSTOM) as counter:
        fn()
    return counter.get_total_flops()


def test_minilm_vl_preprocess_and_train_step():
    model = build_backbone("minilm_vl", tiny=True, task_head=torch.nn.Linear(32, 13))
    images = [Image.fromarray(np.full((64, 64, 3), i * 40, dtype=np.uint8)) for i in range(3)]
    inputs = model.preprocess(["what color is the shape?", "is there a circle?", "what shape"], images)
    assert inputs["pixel_values"].shape == (3, 3, 64, 64)
    model.set_skipped(["En3"])
    model(**inputs).sum().backward()
    assert model.layers[3].skip_adapter.down.weight.grad is not None
    assert all(p.grad is None for p in model.layers[3].layer.parameters())
    with pytest.raises(UserError):
        model.preprocess(["no image"])
    with pytest.raises(UserError, match="unknown layer"):
        model.set_skipped(["FL0"])


def test_lora_petl_trains_only_lora():
    model = build_backbone("minilm", tiny=True, petl="lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and all("lora_" in n or "adapter" in n for n in trainable)


def test_unknown_backbone_option_and_missing_checkpoint_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone("resnet")
    with pytest.raises(UserError, match="option"):
        build_backbone("minilm_vl", tiny=True, colour="red")
    with pytest.raises(UserError, match="meter_clip16_288_roberta_pretrain.ckpt"):
        build_backbone("meter", checkpoint=str(tmp_path / "meter.ckpt"))
    with pytest.raises(UserError, match="checkpoint=PATH"):
        build_backbone("meter")
    with pytest.raises(UserError, match="checkpoint"):
        build_backbone("bert", checkpoint=str(tmp_path / "nothing"))


# -- the official METER checkpoint layout --------------------------------------------------------------

def official_layout(core: MeterCore) -> dict[str, torch.Tensor]:
    """``core``'s weights under the official checkpoint's key names (q|k|v stacked as CLIP does)."""
    state, out = core.state_dict(), {}
    clip = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "self_attn.out_proj": "attn.out_proj"}
    for key, value in state.items():
        if key.startswith("text_embeddings."):
            out["text_transformer.embeddings." + key.removeprefix("text_embeddings.")] = value
        elif key.startswith("text_layers."):
            out["text_transformer.encoder.layer." + key.removeprefix("text_layers.")] = value
        elif key.startswith("vision.layers.") and "_proj." in key and "out_proj" not in key:
            continue
        elif key.startswith("vision.layers."):
            _, _, i, rest = key.split(".", 3)
            for ours, theirs in clip.items():
                rest = rest.replace(ours, theirs)
            out[f"vit_model.visual.transformer.resblocks.{i}.{rest}"] = value
        elif key.startswith("vision."):
            rest = key.removeprefix("vision.")
            for ours, theirs in {"embeddings.patch_embedding.": "conv1.", "embeddings.class_embedding": "class_embedding",
                                 "embeddings.position_embedding.weight": "positional_embedding",
                                 "pre_norm.": "ln_pre.", "post_norm.": "ln_post."}.items():
                rest = rest.replace(ours, theirs)
            out["vit_model.visual." + rest] = value
        else:
            out[key] = value
    for i in range(len(core.vision.layers)):
        for kind in ("weight", "bias"):
            parts = [state[f"vision.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"vit_model.visual.transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out


class LightningModule:  # pickled under a Lightning module name, as the official file is
    pass


LightningModule.__module__ = "pytorch_lightning"


def test_meter_checkpoint_layout_loads_through_the_key_mapping(tmp_path, monkeypatch, caplog):
    sizes = {**METER_TINY, "text": {**METER_TINY["text"], "vocab_size": minilm_vocab_size()}}
    source = MeterCore(sizes, 64)
    path = tmp_path / "meter.ckpt"
    state = official_layout(source)
    state["surprise.weight"] = torch.zeros(1)
    fake = types.ModuleType("pytorch_lightning")
    fake.LightningModule = LightningModule
    monkeypatch.setitem(sys.modules, "pytorch_lightning", fake)
    torch.save({"state_dict": state, "hyper_parameters": LightningModule(), "epoch": 3}, path)
    monkeypatch.delitem(sys.modules, "pytorch_lightning")

    target = MeterCore(sizes, 64)
    report = load_meter_checkpoint(target, path)
    assert report.missing == [] and report.unexpected == ["surprise.weight"]
    assert "surprise.weight" in caplog.text
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    model = build_backbone("meter", tiny=True, checkpoint=str(path))
    torch.testing.assert_close(model.text_fusion[2].layer.crossattention.self.key.weight,
                               source.cross_modal_text_layers[2].crossattention.self.key.weight)
    torch.testing.assert_close(model.pretrained_itm["weight"], source.itm_score.fc.weight)
    assert build_backbone("meter", tiny=True).pretrained_itm is None

    del state["cross_modal_text_pooler.dense.weight"]
    torch.save(state, path)  # a plain state_dict file
    with pytest.raises(UserError, match="cross_modal_text_pooler.dense.weight"):
        load_meter_checkpoint(MeterCore(sizes, 64), path)
    assert load_meter_checkpoint(MeterCore(sizes, 64), path, strict=False).missing == [
        "cross_modal_text_pooler.dense.weight"
    ]
