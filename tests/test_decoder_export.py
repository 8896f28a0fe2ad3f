"""``das-tune export --format hf`` on decoder runs: a causal LM folder with fewer layers that transformers loads
alone and whose greedy ``generate()`` equals das-tune's own subnet's, with and without the KV cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

import das_tune

pytestmark = pytest.mark.slow

LAYERS = 6
PRUNE_SPACE = """description: tiny decoder blocks removed outright, as layer-pruning tools do
backbone: {family}
granularity: {granularity}
candidates: [{names}]
num_skip: 2
skip_adapter_width: 0
"""
PRUNE_STUDY = """description: a tiny decoder on ScienceQA, plain removal, LoRA on the kept blocks
space: {space}
backbone: {{name: {family}, options: {{petl: lora, num_layers: {layers}}}}}
task: {{name: scienceqa}}
retrain: {{epochs: 1, batch_size: 4, lr: 5.0e-3}}
"""
CASES = {  # family, granularity, skipped: whole layers; a lone attention block and a whole layer (A2 + F2)
    "llama-layers": ("llama", "layer", "L1,L4"),
    "qwen2-layers": ("qwen2", "layer", "L0,L4"),  # the kept layers' layer_types: full, full, sliding, sliding
    "mistral-sublayers": ("mistral", "sublayer", "A1,A2,F2"),
}


def retrained_run(tmp_path, family: str, granularity: str, skip: str, skip_adapters: bool = False):
    names = [f"L{i}" for i in range(LAYERS)] if granularity == "layer" else [f"{k}{i}" for i in range(LAYERS) for k in "AF"]
    space = PRUNE_SPACE.format(family=family, granularity=granularity, names=", ".join(names))
    (tmp_path / "space.yaml").write_text(space.replace("skip_adapter_width: 0\n", "") if skip_adapters else space)
    (tmp_path / "study.yaml").write_text(PRUNE_STUDY.format(space=tmp_path / "space.yaml", family=family, layers=LAYERS))
    args = ["retrain", "--study", "study.yaml", "--skip", skip, "--tiny", "--quiet", "--set", "backbone.options.num_layers=6"]
    run_cli(*args, cwd=tmp_path, check=True, timeout=900)
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


_EXPORTED: dict[str, tuple[str, object, object]] = {}  # case → (case, run folder, hf folder), built once per process


def exported_case(case: str, tmp_path_factory) -> tuple:
    if case not in _EXPORTED:
        family, granularity, skip = CASES[case]
        folder = tmp_path_factory.mktemp(case)
        run_dir = retrained_run(folder, family, granularity, skip)
        run_cli("export", str(run_dir), "--out", "hf", "--format", "hf", "--quiet", cwd=folder, check=True)
        _EXPORTED[case] = case, run_dir, folder / "hf"
    return _EXPORTED[case]


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    return exported_case(request.param, tmp_path_factory)


def test_the_folder_loads_with_fewer_layers_renumbered(exported):
    from transformers import AutoConfig, AutoModelForCausalLM

    case, _, folder = exported
    family, granularity, skip = CASES[case]
    model = AutoModelForCausalLM.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    removed = {int(name[1:]) for name in skip.split(",") if name[0] == "L"} or {2}  # A2 + F2: layer 2 is gone
    kept = [i for i in range(LAYERS) if i not in removed]
    assert config.num_hidden_layers == len(model.model.layers) == len(kept)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(len(kept)))
    extra = json.loads((folder / "das_tune_head.json").read_text())
    assert extra["kept_layers"] == kept and extra["zeroed_blocks"] == (["A1"] if granularity == "sublayer" else [])
    if family == "qwen2":  # the tiny Qwen2 slides from layer 3 on
        assert config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
        assert config.max_window_layers == 2


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_the_subnets(exported, use_cache):
    from transformers import AutoModelForCausalLM

    _, run_dir, folder = exported
    subnet = das_tune.load_subnet(run_dir).backbone
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = subnet.preprocess(["Context: The kite is blue.\nQuestion: What colour is the kite?\nAnswer:"])["input_ids"]
    ours = subnet.generate(prompt, max_new_tokens=12, use_cache=use_cache)
    theirs = hf.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
        use_cache=use_cache, pad_token_id=subnet.pad_id(),
    )
    assert torch.equal(ours, theirs)
    assert ours.shape[1] == prompt.shape[1] + 12
    with torch.no_grad():  # and the logits themselves, not only their arg-max
        assert torch.allclose(hf(input_ids=ours).logits, subnet.token_logits(ours), atol=1e-4)


TRANSFORMERS_ONLY = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(json.loads(sys.argv[2]))
out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=int(sys.argv[3]))
assert "das_tune" not in sys.modules
print(json.dumps(out.tolist()))
"""


# once, on the case whose config changes most (Qwen2's layer_types): every case's folder is compared with
# its subnet in-process above; this checks that nothing of das_tune is needed to load and run one
def test_a_process_with_transformers_alone_generates_the_same_tokens(tmp_path_factory):
    _, run_dir, folder = exported_case("qwen2-layers", tmp_path_factory)
    subnet = das_tune.load_subnet(run_dir).backbone
    prompt = subnet.preprocess(["The box is red. What colour is the box?"])["input_ids"]
    args = [sys.executable, "-c", TRANSFORMERS_ONLY, str(folder), json.dumps(prompt.tolist()), str(subnet.pad_id())]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == subnet.generate(prompt, max_new_tokens=8).tolist()


def test_a_safetensors_export_rebuilds_the_subnet_without_the_checkpoint(tmp_path_factory):
    _, run_dir, folder = exported_case("mistral-sublayers", tmp_path_factory)  # a sublayer rebuild: the most involved
    run_cli("export", str(run_dir), "--out", "st", "--quiet", cwd=folder.parent, check=True)
    rebuilt, subnet = das_tune.load_subnet(folder.parent / "st").backbone, das_tune.load_subnet(run_dir).backbone
    prompt = subnet.preprocess(["Question: What colour is the cup?\nAnswer:"])["input_ids"]
    assert rebuilt.layer_names == subnet.layer_names and rebuilt.skipped == subnet.skipped
    with torch.no_grad():
        assert torch.equal(rebuilt.token_logits(prompt), subnet.token_logits(prompt))


def test_skip_adapters_adapters_and_onnx_are_refused_in_one_line(tmp_path):
    run_dir = retrained_run(tmp_path, "llama", "layer", "L1,L4", skip_adapters=True)
    for fmt, message in (("hf", "have skip-adapters"), ("onnx", "is a decoder, which das-tune does not export to ONNX")):
        result = run_cli("export", str(run_dir), "--out", "x", "--format", fmt, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()
