"""Sublayer candidates on tiny random models: each layer's attention (A<i>) and feed-forward (F<i>)
block is its own candidate — really not run when skipped, costed alone, exported like whole layers —
and the sublayer spaces, studies and a search run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from das_tune.backbones import build_backbone
from das_tune.backbones.flops import CostModel, count_flops
from das_tune.backbones.sublayers import vilt_sublayers
from das_tune.errors import UserError
from das_tune.spec.spaces import load_space
from das_tune.spec.study import default_study_for_space, load_study_spec

LAYERS = {"minilm_vl": 6, "minilm": 6, "bert": 12, "vilt": 12}
SKIP = {"minilm_vl": ["A1", "F1", "F4"], "minilm": ["A0", "F5"], "bert": ["A3", "F7"], "vilt": ["A2", "F2", "A11"]}
# the module inside each kind of block that does the block's real work
INNER = {"A": lambda block: getattr(block, "self", None) or block.attention, "F": lambda block: block.intermediate}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_backbone(name, tiny=True, granularity="sublayer").eval() for name in LAYERS}


def inputs_for(model, batch=2):
    inputs = model.example_inputs(batch)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
    return inputs


def run(model, inputs):
    torch.manual_seed(1)  # ViLT samples image patches at random
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize("name", LAYERS)
def test_candidates_are_attention_and_feed_forward_blocks_in_model_order(models, name):
    n = LAYERS[name]
    assert models[name].layer_names == [f"{kind}{i}" for i in range(n) for kind in "AF"]
    widths = {layer.skip_adapter.down.out_features for layer in models[name].candidates().values()}
    assert widths == {96}  # one parallel adapter's width: what a skipped block replaces


@pytest.mark.parametrize("name", LAYERS)
def test_a_skipped_block_is_not_executed(models, name):
    model = models[name]
    ran = []
    hooks = []
    for layer in model.candidates().values():
        inner = INNER[layer.name[0]](layer.layer)
        hooks.append(inner.register_forward_hook(lambda mod, a, o, n=layer.name: ran.append(n)))
    try:
        model.set_skipped(SKIP[name])
        run(model, inputs_for(model))
        assert sorted(ran) == sorted(set(model.layer_names) - set(SKIP[name]))
    finally:
        for hook in hooks:
            hook.remove()
        model.set_skipped([])


@pytest.mark.parametrize("name", LAYERS)
def test_skipping_a_block_changes_the_output_and_export_equals_the_supernet(models, name):
    model = models[name]
    inputs = inputs_for(model)
    full = run(model, inputs)
    model.set_skipped(SKIP[name])
    try:
        expected = run(model, inputs)
        subnet = model.export(SKIP[name])
    finally:
        model.set_skipped([])
    assert not torch.allclose(full, expected)
    torch.testing.assert_close(run(subnet, inputs), expected)
    assert not {id(p) for p in subnet.parameters()} & {id(p) for p in model.parameters()}
    kept = subnet.candidates()
    assert all(kept[n].layer is None for n in SKIP[name])
    assert all(kept[n].skip_adapter is None for n in kept if n not in SKIP[name])
    with pytest.raises(UserError):
        subnet.set_skipped([])


@pytest.mark.parametrize("name", ["minilm_vl", "vilt"])
def test_flops_and_params_fall_by_each_skipped_blocks_cost(models, name):
    model = models[name]
    inputs = inputs_for(model, batch=1)
    torch.manual_seed(1)
    costs = CostModel(model, inputs)
    for skip in (["A0"], ["F3"], SKIP[name]):
        subnet = model.export(skip)
        torch.manual_seed(1)
        assert count_flops(subnet, inputs) == costs.cost(skip).flops
        assert costs.cost(skip).params == sum(p.numel() for p in subnet.parameters())
    assert costs.delta_flops["A0"] < 0 and costs.delta_flops["F0"] < 0 and costs.delta_flops["A0"] != costs.delta_flops["F0"]
    # a layer's two blocks and their two 96-wide skip-adapters cost what the whole layer and its 192-wide one do
    whole = build_backbone(name, tiny=True)
    torch.manual_seed(1)
    layer_costs = CostModel(whole, inputs)
    for i in range(LAYERS[name]):
        assert costs.delta_flops[f"A{i}"] + costs.delta_flops[f"F{i}"] == layer_costs.delta_flops[f"En{i}"]
    assert costs.cost([]).flops == layer_costs.cost([]).flops


def test_backbones_that_cannot_split_their_layers_say_so():
    with pytest.raises(UserError, match="granularity"):
        build_backbone("minilm", tiny=True, granularity="head")
    with pytest.raises(UserError, match="option"):
        build_backbone("meter", tiny=True, granularity="sublayer")


@pytest.mark.parametrize("space, study, n, num_skip, subsets", [
    ("minilm_vqa_sublayers", "easyvqa_minilm_sublayers", 12, 4, 495),
    ("roberta_sublayers", "roberta_sublayers", 24, 4, 10626),
    ("vilt_sublayers", "vilt_sublayers", 24, 2, 276),
])
def test_builtin_sublayer_spaces_and_their_studies(space, study, n, num_skip, subsets):
    s = load_space(space)
    assert (len(s.candidates), s.num_skip, s.num_subsets, s.granularity) == (n, num_skip, subsets, "sublayer")
    assert s.groups["A"] == tuple(f"A{i}" for i in range(n // 2)) and s.groups["F"] == tuple(f"F{i}" for i in range(n // 2))
    assert default_study_for_space(space) == study
    spec = load_study_spec(study)
    assert spec.space == space and spec.name == study


def test_a_study_extends_another_and_replaces_only_what_it_declares(tmp_path):
    base = load_study_spec("easyvqa_minilm")
    variant = load_study_spec("easyvqa_minilm_sublayers")
    assert variant.retrain == base.retrain and variant.task == base.task and variant.backbone == base.backbone
    # it declares its search's warm-up and the sampler's option, and inherits the rest of both
    assert variant.search == base.search.model_copy(update={"warmup_epochs": 10}) != base.search
    assert variant.sampler.name == base.sampler.name and variant.sampler.options == {"das": {"standardize": False}} != base.sampler.options
    (tmp_path / "mine.yaml").write_text("extends: easyvqa_minilm\nsearch: {lr: 0.5}\nbackbone: {options: {patch_size: 8}}\n")
    mine = load_study_spec(tmp_path / "mine.yaml")
    assert mine.name == "mine" and mine.search.lr == 0.5 and mine.search.batch_size == base.search.batch_size
    assert mine.backbone.options == {**base.backbone.options, "patch_size": 8}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(UserError, match="extends"):
        load_study_spec(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere\n")
    with pytest.raises(UserError, match="'nowhere' is not a built-in study"):
        load_study_spec(tmp_path / "orphan.yaml")


@pytest.mark.slow
def test_sublayer_search_runs_end_to_end(cli, tmp_path):
    result = cli("run", "--space", "minilm_vqa_sublayers", "--tiny", "--quiet", check=True)
    run_dir = tmp_path / "runs" / "easyvqa_minilm_sublayers-das-seed0-tiny"
    assert result.stdout.strip() == str(run_dir)  # the run folder, absolute (StudySpec.run_dir)
    subnet = json.loads((run_dir / "subnet.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert subnet["space"] == "minilm_vqa_sublayers" and len(subnet["skipped"]) == 4
    assert all(name[0] in "AF" for name in subnet["skipped"]) and metrics["skipped"] == subnet["skipped"]
    assert metrics["latency_subnet_ms"] > 0 and metrics["trainable_params"] > 0
    assert metrics["flops_saved"] > 0 and set(subnet["probabilities"]) == set(load_space("minilm_vqa_sublayers").candidates)


def test_vilt_blocks_keep_the_layers_parallel_adapters_and_compose_to_the_adapted_layer():
    whole = build_backbone("vilt", tiny=True).eval()
    block = whole.candidates()["En0"].layer  # the AdaptedBlock: x + attn(norm1(x)) + adapter0(x), then the MLP's likewise
    dim = whole.feature_dim
    attention, feed_forward = vilt_sublayers(block.block, 0, dim, 96, (block.adapter0, block.adapter1))
    x = torch.randn(2, 5, dim)
    with torch.no_grad():
        torch.testing.assert_close(feed_forward.layer(attention.layer(x, None)), block(x, None))
        without = vilt_sublayers(block.block, 0, dim, 96)
        assert not torch.allclose(without[1].layer(without[0].layer(x, None)), block(x, None))
