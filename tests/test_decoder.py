"""The decoder family (Llama, Mistral, Qwen2 blocks in ``model.layers``) on tiny random models: whole layers
and attention / MLP blocks as candidates, really not run when skipped, costed by the CostModel, loaded
from a local folder, and bad folders refused in one line."""

from __future__ import annotations

import pytest
import torch

from das_tune.backbones import build_backbone
from das_tune.backbones.decoder import DecoderBackbone
from das_tune.backbones.flops import CostModel, count_flops
from das_tune.errors import UserError

FAMILIES = ("llama", "mistral", "qwen2")
LAYERS = 4
SKIP = {"layer": ["L1", "L3"], "sublayer": ["A0", "F2", "A3"]}


def tiny(name: str, granularity: str = "layer", **options) -> DecoderBackbone:
    torch.manual_seed(0)
    return build_backbone(name, tiny=True, num_layers=LAYERS, granularity=granularity, **options).eval()


@pytest.fixture(scope="module")
def models():
    return {(name, g): tiny(name, g) for name in FAMILIES for g in ("layer", "sublayer")}


def text_inputs(model: DecoderBackbone) -> dict[str, torch.Tensor]:
    # longer than the tiny Mistral / Qwen2 sliding window (16), with padding in the second row
    return model.preprocess(["the red square is on the left of the blue circle " * 3, "a short one"])


def ran_blocks(model: DecoderBackbone, inputs: dict[str, torch.Tensor]) -> list[str]:
    """``A<i>`` / ``F<i>`` of every attention and MLP projection that ran in one forward pass."""
    ran, hooks = [], []
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "gate_proj")) and ".layers." in name:
            i = int(name.split(".layers.")[1].split(".")[0])
            kind = "A" if name.endswith("q_proj") else "F"
            hooks.append(module.register_forward_hook(lambda m, a, o, key=f"{kind}{i}": ran.append(key)))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return sorted(set(ran))


def all_blocks() -> set[str]:
    return {f"{kind}{i}" for i in range(LAYERS) for kind in "AF"}


@pytest.mark.parametrize("name", FAMILIES)
def test_candidates_are_layers_or_attention_and_mlp_blocks_in_model_order(models, name):
    assert models[name, "layer"].layer_names == [f"L{i}" for i in range(LAYERS)]
    assert models[name, "sublayer"].layer_names == [f"{kind}{i}" for i in range(LAYERS) for kind in "AF"]
    # a skipped layer replaces two adapters (192), a skipped block one (96)
    assert {m.skip_adapter.down.out_features for m in models[name, "layer"].candidates().values()} == {192}
    assert {m.skip_adapter.down.out_features for m in models[name, "sublayer"].candidates().values()} == {96}


@pytest.mark.parametrize("granularity", ["layer", "sublayer"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_skipped_layer_or_block_is_not_executed(models, name, granularity):
    model = models[name, granularity]
    inputs = text_inputs(model)
    assert set(ran_blocks(model, inputs)) == all_blocks()
    skip = SKIP[granularity]
    gone = {f"{kind}{s[1:]}" for s in skip for kind in "AF"} if granularity == "layer" else set(skip)
    model.set_skipped(skip)
    try:
        assert set(ran_blocks(model, inputs)) == all_blocks() - gone
        with torch.no_grad():
            expected = model(**inputs)
        subnet = model.export(skip)
        assert set(ran_blocks(subnet, inputs)) == all_blocks() - gone
        with torch.no_grad():
            assert torch.equal(subnet(**inputs), expected)
    finally:
        model.set_skipped([])
    with torch.no_grad():
        assert not torch.allclose(model(**inputs), expected)  # skipping changed the output


@pytest.mark.parametrize("granularity", ["layer", "sublayer"])
@pytest.mark.parametrize("name", FAMILIES)
def test_flops_fall_by_the_skipped_blocks_cost(name, granularity):
    model = tiny(name, granularity, skip_adapter_width=0)  # plain removal: a skipped block costs nothing
    inputs = model.example_inputs()
    costs = CostModel(model, inputs)
    full = count_flops(model, inputs)
    for skip in ([SKIP[granularity][0]], SKIP[granularity]):
        subnet_flops = count_flops(model.export(skip), inputs)
        block_costs = [-costs.delta_flops[s] for s in skip]
        assert all(cost > 0 for cost in block_costs)
        assert full - subnet_flops == sum(block_costs)
        assert costs.cost(skip).flops == subnet_flops
    adapted = tiny(name, granularity)  # skip-adapters in, parallel adapters out: the CostModel still adds up
    assert CostModel(adapted, inputs).cost(SKIP[granularity]).flops == count_flops(adapted.export(SKIP[granularity]), inputs)
    if granularity == "layer":  # a layer's cost is its attention block's plus its MLP block's
        blocks = CostModel(tiny(name, "sublayer", skip_adapter_width=0), inputs).delta_flops
        assert costs.delta_flops["L2"] == blocks["A2"] + blocks["F2"]


def test_the_lm_head_and_greedy_generation_follow_the_skip_set(models):
    model = models["llama", "layer"]
    inputs = text_inputs(model)
    with torch.no_grad():
        logits = model.token_logits(**inputs)
    assert logits.shape == (*inputs["input_ids"].shape, model.lm_config.vocab_size)
    prompt = inputs["input_ids"][:1, :6]
    full = model.generate(prompt, max_new_tokens=6)
    model.set_skipped(["L0", "L2"])
    try:
        skipped = model.generate(prompt, max_new_tokens=6)
        assert torch.equal(model.generate(prompt, max_new_tokens=6, use_cache=False), skipped)
    finally:
        model.set_skipped([])
    assert not torch.equal(full, skipped)


def test_lora_trains_only_lora_and_skip_adapters():
    model = tiny("qwen2", petl="lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "skip_adapter" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and any("v_proj.lora_B" in n for n in trainable)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_local_folder_loads_the_same_model(name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from das_tune.backbones.processing import minilm_path

    built = tiny(name)
    folder = tmp_path / name
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(type(built).tiny_config(LAYERS)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    loaded = build_backbone(name, checkpoint=str(folder)).eval()
    assert loaded.layer_names == built.layer_names
    inputs = text_inputs(built)
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs), built(**inputs), atol=1e-6)


def test_a_folder_that_is_not_a_decoder_is_one_line(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a decoder"):
        build_backbone("llama", checkpoint=str(tmp_path / "bert"))
    with pytest.raises(UserError, match="no config.json"):
        build_backbone("llama", checkpoint=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="needs checkpoint=PATH"):
        build_backbone("llama")
    with pytest.raises(UserError, match="unknown dtype"):
        build_backbone("llama", tiny=True, num_layers=2, dtype="float8")


# -- training-free baselines (ShortGPT's Block Influence, angular distance, last-k) on decoders ------------
@pytest.mark.parametrize("granularity, idle", [("layer", ["L2"]), ("sublayer", ["A1", "F3"])])
def test_training_free_baselines_pick_the_blocks_that_do_nothing(granularity, idle):
    from das_tune.bench.baselines import METHODS, layer_scores, sample_batches
    from das_tune.spec.spaces import SkipSpace
    from das_tune.tasks import build_task

    model = tiny("mistral", granularity, petl="lora")  # LoRA starts at zero: a block with zero outputs adds nothing
    outputs = {"L": ("o_proj", "down_proj"), "A": ("o_proj",), "F": ("down_proj",)}  # what each kind of block adds
    with torch.no_grad():
        for name in idle:
            for param_name, param in model.causal_lm.model.layers[int(name[1:])].named_parameters():
                if any(out in param_name for out in outputs[name[0]]):
                    param.zero_()
    task = build_task("scienceqa", tiny=True)
    task.attach(model)
    space = SkipSpace(candidates=tuple(model.layer_names), num_skip=len(idle))
    batches = sample_batches(task, model, batch_size=4, num_batches=2)
    for method in ("block_influence", "angular"):
        scores = layer_scores(method, space, model, task, batches)
        assert set(scores) == set(model.layer_names)
        # input == output: 0 up to float rounding (arccos is steep at 1: ~1e-4 for a cosine 1e-8 short of 1)
        assert all(scores[name] == pytest.approx(0.0, abs=1e-3) for name in idle)
        assert space.top(scores) == frozenset(idle)
    assert space.top(layer_scores("last_k", space, model, task, batches)) == frozenset(model.layer_names[-len(idle):])
    assert set(METHODS) == {"block_influence", "angular", "last_k", "first_k"}


def test_llama_7b_layer_gmacs_on_the_meta_device_match_the_analytic_count():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decoder_flops.py"
    spec = importlib.util.spec_from_file_location("decoder_flops", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(lengths=(1024,), out=None) < 0.02  # attention is 4 % of a layer here: it must be counted
    assert benchmark.matmul_params(benchmark.llama_7b().candidates()["L5"].layer) == 4 * 4096**2 + 3 * 4096 * 11008 + 4 * 8 * 4096
