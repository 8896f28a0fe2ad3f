"""Using a run's subnet: load_subnet, predict, evaluate and export (safetensors, ONNX, Hugging Face), on
tiny models retrained in-process; the CLI in subprocesses."""

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import das_tune
import das_tune.training.retrain as retrain_module
from das_tune.artifacts import atomic
from das_tune.artifacts.results import FoundBy
from das_tune.artifacts.run_folder import save_spec
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.spec.study import load_study_spec
from das_tune.subnet.export import full_weight_bytes
from das_tune.subnet.portable import read_config
from das_tune.training.components import build_components

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "export_speed.py"

PRUNE_SPACE = """description: MiniLM layers removed outright, as layer-pruning tools do
backbone: minilm
candidates: [En0, En1, En2, En3, En4, En5]
num_skip: 2
skip_adapter_width: 0
"""
PRUNE_STUDY = """description: MiniLM on SST-2, plain layer removal, LoRA on the kept layers
space: {space}
backbone: {{name: minilm, options: {{petl: lora, max_text_len: 32}}}}
task: {{name: sst2}}
retrain: {{epochs: 1, batch_size: 8, lr: 1.0e-3}}
"""


def retrain_in_process(study, overrides, skipped):
    """Retrain ``skipped`` as ``das-tune retrain`` does; returns the run folder and the trained subnet."""
    spec = load_study_spec(study, overrides)
    parts = build_components(spec)
    save_spec(spec)
    trained = {}
    train = retrain_module._train

    def keep_model(spec, parts, subnet, *args):
        trained["model"] = subnet
        return train(spec, parts, subnet, *args)

    retrain_module._train = keep_model
    try:
        retrain_module.retrain(spec, parts, frozenset(skipped), FoundBy(sampler="given by the test"), Reporter())
    finally:
        retrain_module._train = train
    return spec.run_dir, trained["model"].eval(), parts.task


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return retrain_in_process("easyvqa_minilm", {"tiny": True, "output_dir": str(out)}, {"En1", "En3"})


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A run on a real (tiny, random) BERT checkpoint folder: its layers come from that folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from das_tune.backbones.processing import minilm_path

    out = tmp_path_factory.mktemp("checkpoint")
    folder = out / "tiny-bert"
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    overrides = {
        "output_dir": str(out / "runs"), "backbone.checkpoint": str(folder), "retrain.epochs": 1,
        "retrain.batch_size": 4, "retrain.max_steps_per_epoch": 4,
        "task.options": {"train_limit": 16, "val_limit": 8, "test_limit": 16},
    }
    run_dir, model, task = retrain_in_process("easyvqa_minilm", overrides, {"En0", "En4"})
    return run_dir, model, task, folder


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    (out / "prune.yaml").write_text(PRUNE_SPACE)
    (out / "study.yaml").write_text(PRUNE_STUDY.format(space=out / "prune.yaml"))
    return retrain_in_process(str(out / "study.yaml"), {"tiny": True, "output_dir": str(out / "runs")}, {"En1", "En3"})


def first_batch(task, model, split="test", size=8):
    return next(iter(task.loader(split, model.backbone if hasattr(model, "backbone") else model, size)))["inputs"]


def test_load_subnet_gives_the_retrained_logits(tiny_run):
    run_dir, trained, task = tiny_run
    model = das_tune.load_subnet(run_dir)
    assert not model.training and model.skipped == ["En1", "En3"]
    assert [layer.layer is None for layer in model.backbone.layers] == [False, True, False, True, False, False]
    inputs = first_batch(task, trained)
    with torch.no_grad():
        assert torch.equal(model(**inputs), trained(**inputs))


def test_evaluate_reproduces_metrics_json(tiny_run, cli):
    run_dir = tiny_run[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = cli("evaluate", str(run_dir), "--quiet", check=True)
    assert float(test.stdout) == pytest.approx(metrics["value"], abs=1e-9)
    val = das_tune.evaluate(run_dir, split="val")
    assert val.value == pytest.approx(metrics["val"]["accuracy"], abs=1e-9) and val.recorded == metrics["val"]["accuracy"]
    shown = cli("evaluate", str(run_dir), check=True).stdout
    assert "test accuracy" in shown and "metrics.json" in shown


def test_predict_answers_an_image_and_a_question(tiny_run, cli, tmp_path):
    run_dir, _, task = tiny_run
    examples = task.examples("test")[:3]
    for i, example in enumerate(examples):
        example.image.save(tmp_path / f"{i}.png")
    model = das_tune.load_subnet(run_dir)
    expected = [model.predict(question=e.question, image=tmp_path / f"{i}.png") for i, e in enumerate(examples)]
    assert all(p.label in task.answers and 0 < p.score <= 1 for p in expected)
    assert expected[0].top[0].label == expected[0].label and len(expected[0].top) == 5

    one = cli("predict", str(run_dir), "--image", "0.png", "--question", examples[0].question, "--quiet", check=True)
    assert one.stdout.strip() == expected[0].label

    (tmp_path / "batch.jsonl").write_text(
        "".join(json.dumps({"question": e.question, "image": f"{i}.png"}) + "\n" for i, e in enumerate(examples))
    )
    batch = cli("predict", str(run_dir), "--jsonl", "batch.jsonl", "--out", "answers.jsonl", check=True)
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [line["label"] for line in lines] == [p.label for p in expected]
    assert "3/3" in batch.stderr  # the progress bar


def test_export_folder_loads_without_the_checkpoint(checkpoint_run, cli, tmp_path):
    run_dir, trained, task, checkpoint = checkpoint_run
    shown = cli("export", str(run_dir), "--out", "subnet", check=True).stdout
    assert "full model" in shown
    folder = tmp_path / "subnet"
    shutil.rmtree(checkpoint)  # the original checkpoint (and its tokenizer) is gone
    with pytest.raises(UserError, match="checkpoint"):
        das_tune.load_subnet(run_dir)

    model = das_tune.load_subnet(folder)
    inputs = first_batch(task, model)
    with torch.no_grad():
        assert torch.equal(model(**inputs), trained(**inputs))
    assert not any(key.startswith(("layers.0.layer.", "layers.4.layer.")) for key in load_file(folder / "model.safetensors"))
    assert (folder / "model.safetensors").stat().st_size < full_weight_bytes(read_config(folder))
    mask = atomic.umask()  # shipped to another user or container: the modes the user's umask gives, not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")] if p.is_dir()} == {0o777 & ~mask}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()} == {0o666 & ~mask}
    assert model.predict(question="what shape is it?", image=task.examples("test")[0].image).label in task.answers


def test_onnx_export_matches_pytorch(tiny_run, cli, tmp_path):
    import onnxruntime

    run_dir, trained, task = tiny_run
    shown = cli("export", str(run_dir), "--out", "onnx", "--format", "onnx", check=True)
    assert "onnxruntime" in shown.stdout and "largest difference" in shown.stdout
    assert shown.stderr == ""  # torch's exporter warnings about what does not concern this export are filtered
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    for size in (1, 5):
        inputs = first_batch(task, trained, size=size)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        with torch.no_grad():
            expected = trained(**inputs).numpy()
        assert np.abs(got - expected).max() < 1e-4


def test_hf_format_loads_with_automodel(text_run, cli, tmp_path, capfd):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from das_tune.subnet.portable import build_head

    run_dir, trained, _ = text_run
    cli("export", str(run_dir), "--out", "hf", "--format", "hf", check=True)
    folder = tmp_path / "hf"
    refused = cli("predict", str(folder), "--sentence", "a fine film")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "AutoModel" in refused.stderr
    assert "add_pooling_layer=False" in refused.stderr  # loaded as the line says, nothing is newly initialised
    hf_logging.disable_progress_bar()
    capfd.readouterr()
    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
    assert capfd.readouterr().err == ""
    assert encoder.config.num_hidden_layers == 4
    extra = json.loads((folder / "das_tune_head.json").read_text())
    head = build_head(extra["head"])
    head.load_state_dict(load_file(folder / "das_tune_head.safetensors"))
    tokens = AutoTokenizer.from_pretrained(folder)(["a fine film", "dull, long and loud"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        logits = head((hidden * mask).sum(1) / mask.sum(1))
        assert torch.allclose(logits, trained(**tokens), atol=1e-5)
    assert extra["labels"] == ["negative", "positive"]
    with pytest.raises(UserError, match=r"a Hugging Face folder \(das-tune export --format hf\), not a das-tune subnet"):
        das_tune.load_subnet(folder)  # one line saying what the folder is and how to load it


def test_text_subnet_predicts_from_a_sentence(text_run):
    model = das_tune.load_subnet(text_run[0])
    assert model.predict(sentence="a fine film").label in ("negative", "positive")
    with pytest.raises(UserError, match="question is not one of its inputs"):
        model.predict(question="what is it?")


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "."], "not a das-tune run folder"),
        (["predict", ".", "--sentence", "hello"], "not a das-tune run folder"),
        (["export", ".", "--out", "x"], "not a das-tune run folder"),
        (["predict", "{tiny}", "--image", "missing.png", "--question", "what?"], "missing.png: no such file"),
        (["predict", "{text}", "--question", "what is it?"], "question is not one of its inputs"),
        (["export", "{tiny}", "--out", "x", "--format", "hf"], "not a BERT-family text encoder"),
        (["export", "{tiny}", "--out", "x", "--format", "tflite"], "expected one of safetensors, onnx, hf"),
        (["evaluate", "{tiny}", "--split", "train"], "expected one of val, test"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tiny_run, text_run, cli, tmp_path):
    args = [a.format(tiny=tiny_run[0], text=text_run[0]) for a in args]
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


BAD_JSONL = {
    "an image as a number": ('{"question": "what?", "image": "red.png"}\n\n{"question": "what?", "image": 5}\n', "line 3: field 'image'"),
    "an image as an object": ('{"question": "what?", "image": {"path": "red.png"}}\n', "line 1: field 'image'"),
    "a question as a list": ('{"question": ["what?"], "image": "red.png"}\n', "line 1: field 'question'"),
    "a blank question": ('{"question": "what?", "image": "red.png"}\n{"question": "  ", "image": "red.png"}\n', "line 2: field 'question'"),
    "not JSON": ('{"question": "what?", "image": "red.png"}\n{"question": "what?",\n', "line 2: not JSON"),
    "not UTF-8": ('{"question": "what?", "image": "red.png"}\n{"question": "caf\xe9", "image": "red.png"}\n'.encode("latin-1"),
                  "line 2: not UTF-8"),
    "a decompression bomb": ('{"question": "what?", "image": "bomb.png"}\n', "line 1: image"),
}


@pytest.mark.parametrize("name", BAD_JSONL)
def test_bad_predict_inputs_name_the_file_its_line_and_the_field(name, tiny_run, cli, tmp_path):
    text, message = BAD_JSONL[name]
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    Image.new("1", (15000, 12000)).save(tmp_path / "bomb.png")  # 180 megapixels in 22 kB
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = cli("predict", str(tiny_run[0]), "--jsonl", "in.jsonl", "--out", "answers.jsonl")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert f"--jsonl in.jsonl {message}" in lines[0]
    assert not (tmp_path / "answers.jsonl").exists()


def test_a_decompression_bomb_is_refused_in_one_line(tiny_run, cli, tmp_path):
    Image.new("1", (15000, 12000)).save(tmp_path / "bomb.png")
    result = cli("predict", str(tiny_run[0]), "--question", "what?", "--image", "bomb.png")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "bomb.png" in lines[0] and "too large" in lines[0], result.stderr[-3000:]
    for question in ("", " ", "x" * 20_000):  # and questions that are no question
        result = cli("predict", str(tiny_run[0]), "--question", question, "--image", "bomb.png")
        assert result.returncode == 2 and "field 'question'" in result.stderr, result.stderr[-3000:]


def first_matrix(weights):
    return next(name for name, tensor in weights.items() if tensor.dim() == 2 and tensor.shape[0] > 1)


DAMAGED_WEIGHTS = {  # how the adapters are damaged, whether metrics.json keeps its checksums, what the refusal says
    "changed": (lambda t: t + 1e-3, True, "adapters.safetensors: damaged or changed since it was written"),
    "a row short (a run without checksums)": (lambda t: t[:-1], False, "has shape"),
    "all NaN (a run without checksums)": (lambda t: torch.full_like(t, float("nan")), False, "holds NaN or infinite values"),
}


@pytest.mark.parametrize("damage", DAMAGED_WEIGHTS)
def test_damaged_weights_are_refused_in_one_line_by_every_reader(damage, tiny_run, cli, tmp_path):
    change, checksums, message = DAMAGED_WEIGHTS[damage]
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["checksums"]) == {"adapters.safetensors", "subnet.json", "study.yaml"}
    if not checksums:
        del metrics["checksums"]
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        das_tune.load_subnet(run_dir)  # a run without checksums still reads
    weights = load_file(run_dir / "adapters.safetensors")
    name = first_matrix(weights)
    save_file({**weights, name: change(weights[name]).contiguous()}, run_dir / "adapters.safetensors")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    for args in (["evaluate", "run"], ["predict", "run", "--question", "what?", "--image", "red.png"], ["export", "run", "--out", "x"]):
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0] and "--fresh" in lines[0], result.stderr[-3000:]
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match=message):
        das_tune.load_subnet(run_dir)


def test_a_changed_export_is_refused_with_a_new_export_as_the_way_out(tiny_run, tmp_path):
    das_tune.export_subnet(tiny_run[0], tmp_path / "x")
    assert read_config(tmp_path / "x").checksums.keys() == {"model.safetensors"}
    weights = load_file(tmp_path / "x" / "model.safetensors")
    name = first_matrix(weights)
    save_file({**weights, name: weights[name] * 2}, tmp_path / "x" / "model.safetensors")
    with pytest.raises(UserError, match=r"model\.safetensors: damaged or changed .* export the run again"):
        das_tune.load_subnet(tmp_path / "x")


def test_export_speed_benchmark_on_a_tiny_run(tiny_run, tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, str(BENCHMARK), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)

    missing = bench()  # the default, the main job's run folder, is not in this empty folder
    assert missing.returncode == 2 and "das-tune run --study easyvqa_minilm" in missing.stderr

    result = bench(str(tiny_run[0]), "--repeats", "2", "--json", "speed.json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("ONNX subnet speed-up over the full model, batch 1")
    measured = json.loads((tmp_path / "speed.json").read_text())
    assert set(measured["latency_ms"]) == {"1", "32"}
    assert all(ms > 0 for row in measured["latency_ms"].values() for ms in row.values())
    sizes = measured["size_bytes"]
    assert sizes["subnet"] < sizes["full"] and sizes["onnx"] > 0
