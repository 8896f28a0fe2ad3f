"""Tasks for a decoder: ScienceQA multiple choice scored by the answers' likelihood, GLUE through the LM head;
the built-in llama studies end to end in subprocesses (search, retrain, evaluate, predict); bad input."""

from __future__ import annotations

import json

import pytest
import torch

from das_tune.backbones import build_backbone
from das_tune.errors import UserError
from das_tune.tasks import build_task
from das_tune.tasks.synthetic import write_scienceqa


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("llama", tiny=True, num_layers=2).eval()


def test_each_choice_is_scored_by_its_answer_tokens_mean_log_probability(backbone):
    task = build_task("scienceqa", tiny=True)
    task.attach(backbone)
    problems = list(task.examples("val")[:3])
    batch = task.collate(problems, backbone)
    with torch.no_grad():
        logits = task.logits(backbone, batch)
        for i, problem in enumerate(problems):
            for j, answer in enumerate(problem.answers()):
                prompt, target = backbone.token_ids(problem.prompt()), backbone.token_ids(" " + answer)
                ids = torch.tensor([prompt + target])
                log_probs = backbone.token_logits(ids).log_softmax(-1)[0]
                expected = torch.stack([log_probs[len(prompt) + k - 1, t] for k, t in enumerate(target)]).mean()
                assert torch.isclose(logits[i, j], expected, atol=1e-5)
            assert (logits[i, len(problem.choices):] == torch.finfo(logits.dtype).min).all()  # no such choice
    metrics = task.evaluate(backbone, iter([batch]))
    assert set(metrics) == {"accuracy", "loss"} and 0 <= metrics["accuracy"] <= 1


def test_a_problem_with_an_image_needs_a_vision_encoder(backbone, tmp_path):
    write_scienceqa(tmp_path)
    problems = json.loads((tmp_path / "problems.json").read_text())
    problems["3"]["image"] = "image.png"
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(UserError, match=r"1 problems have an image \(e.g. 3\).*no vision encoder.*text_only=true"):
        build_task("scienceqa", data_dir=tmp_path).attach(backbone)
    text_only = build_task("scienceqa", data_dir=tmp_path, text_only=True)
    text_only.attach(backbone)
    assert "3" not in {p.id for split in ("train", "val", "test") for p in text_only.examples(split)}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["1"].pop("choices"), "problem 1: expected question, choices"),
        (lambda p: p["1"].update(answer=7), "problem 1: expected 2-8 choices and an answer index"),
    ],
)
def test_bad_problems_are_one_line(change, message, tmp_path):
    write_scienceqa(tmp_path)
    problems = json.loads((tmp_path / "problems.json").read_text())
    change(problems)
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(UserError, match=message):
        build_task("scienceqa", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["sst2_lm", "mnli_lm"])
def test_classification_through_the_lm_head_starts_as_the_lm_next_token_logits(backbone, name):
    task = build_task(name, tiny=True)
    task.attach(backbone)
    examples = list(task.examples("val")[:4])
    batch = task.collate(examples, backbone)
    assert batch["inputs"]["input_ids"].shape[0] == 4
    words = [backbone.token_ids(" " + word)[0] for word in task.words]
    with torch.no_grad():
        logits = backbone(**batch["inputs"])
        lm = backbone.token_logits(**batch["inputs"])
    last = batch["inputs"]["attention_mask"].sum(1) - 1
    assert torch.allclose(logits, lm[torch.arange(4), last][:, words], atol=1e-5)
    assert task.loss(backbone, batch).requires_grad


@pytest.mark.parametrize("name", ["scienceqa", "sst2_lm", "sst2"])
def test_a_bfloat16_decoder_trains_every_head_in_float32(name):
    model = build_backbone("qwen2", tiny=True, num_layers=2, dtype="bfloat16", petl="lora")
    task = build_task(name, tiny=True)
    task.attach(model)
    batch = next(iter(task.loader("train", model, 4)))
    task.loss(model, batch).backward()
    lora = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert lora[0].dtype == torch.bfloat16 and all(p.grad is not None for p in lora)
    assert all(p.dtype == torch.float32 for p in model.task_head.parameters())
    assert set(task.evaluate(model, iter([batch]))) == {task.metric, "loss"}


def test_the_decoder_tasks_refuse_an_encoder():
    encoder = build_backbone("minilm", tiny=True)
    for name in ("scienceqa", "sst2_lm"):
        with pytest.raises(UserError, match="use a decoder backbone"):
            build_task(name, tiny=True).attach(encoder)


# -- end to end, as a user runs it --------------------------------------------------------------------
SHORT = ["--set", "search.max_steps_per_epoch=2", "--set", "search.search_epochs=1", "--set", "retrain.max_steps_per_epoch=2"]
QUESTIONS = [
    {"question": "What colour is the kite?", "choices": ["red", "blue"], "context": "The kite is blue."},
    {"question": "What colour is the cup?", "choices": ["green", "yellow", "red"]},
]


@pytest.mark.slow
@pytest.mark.parametrize("study", ["llama_layers", "llama_sublayers"])
def test_tiny_studies_search_retrain_evaluate_and_predict(study, cli, tmp_path):
    cli("run", "--study", study, "--tiny", "--quiet", *SHORT, check=True, timeout=1200)
    run_dir = tmp_path / "runs" / f"{study}-das-seed0-tiny"
    subnet = json.loads((run_dir / "subnet.json").read_text())
    assert len(subnet["skipped"]) == (4 if study == "llama_layers" else 8)
    assert {name[0] for name in subnet["skipped"]} <= ({"L"} if study == "llama_layers" else {"A", "F"})
    if study == "llama_sublayers":  # evaluate and predict do not depend on the granularity: once is enough
        return
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluated = cli("evaluate", str(run_dir), "--quiet", check=True)
    assert float(evaluated.stdout.split()[-1]) == pytest.approx(metrics["test"]["accuracy"])
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    predicted = cli("predict", str(run_dir), "--jsonl", "q.jsonl", "--quiet", check=True)
    answers = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [a["label"] in "ABC"[: len(q["choices"])] for a, q in zip(answers, QUESTIONS)] == [True, True]
    assert [len(a["top"]) for a in answers] == [2, 3]  # a question's own choices only


def bad_space(tmp_path):
    names = ", ".join(f"L{i}" for i in range(40))
    (tmp_path / "deep.yaml").write_text(f"description: more layers than the model\nbackbone: llama\ncandidates: [{names}]\nnum_skip: 2\n")
    return str(tmp_path / "deep.yaml")


def bert_folder(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "bert")
    write_scienceqa(tmp_path / "scienceqa")
    return ["--set", f"backbone.checkpoint={tmp_path / 'bert'}", "--set", f"task.data_dir={tmp_path / 'scienceqa'}"]


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda t: ["--study", "llama_layers", "--tiny", "--set", f"space={bad_space(t)}"], "do not exist in backbone 'llama'"),
        (lambda t: ["--study", "llama_layers", *bert_folder(t)], "a 'bert' model, not a decoder"),
        (lambda t: ["--study", "llama_layers"], "backbone.checkpoint = checkpoints/llama-7b"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, cli, tmp_path):
    result = cli("run", *args(tmp_path), "--quiet")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
