"""Tasks: the real on-disk formats read back, metrics by hand, clear errors, easy-VQA learnable."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest
import torch

from das_tune.backbones import build_backbone
from das_tune.errors import UserError
from das_tune.tasks import TASKS, build_task, synthetic
from das_tune.tasks.metrics import accuracy, retrieval_recalls, vqa_score

VISION_TASKS = ("vqav2", "nlvr2", "f30k", "easyvqa")
TEXT_TASKS = ("sst2", "mnli")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only slows them down on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def vl():
    return build_backbone("minilm_vl", tiny=True)


@pytest.fixture(scope="module")
def text_model():
    return build_backbone("minilm", tiny=True)


def with_head(backbone, task):
    torch.manual_seed(0)
    task.attach(backbone)
    return backbone


# -- registry -------------------------------------------------------------------------------------
def test_registry_names():
    assert set(TASKS) == {"vqav2", "nlvr2", "f30k", "mnli", "sst2", "easyvqa", "scienceqa", "sst2_lm", "mnli_lm"}


def test_unknown_task_and_option_are_user_errors():
    with pytest.raises(UserError, match="unknown task 'coco'.*vqav2"):
        build_task("coco")
    with pytest.raises(UserError, match="no option.*batch_size"):
        build_task("sst2", tiny=True, batch_size=3)


# -- the real formats read back -------------------------------------------------------------------
def test_vqav2_reads_write_vqa_files(tmp_path):
    synthetic.write_vqav2(tmp_path)
    task = build_task("vqav2", data_dir=tmp_path)
    # 16 + 4 train images, 8 held-out images halved into val and test; 3 questions each.
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [60, 12, 12]
    assert task.num_answers == len(synthetic.VQA_ANSWERS)
    assert task.answer_ids == {a: i for i, a in enumerate(synthetic.VQA_ANSWERS)}
    table = pa.ipc.open_file(str(tmp_path / "vqav2_train.arrow")).read_all()
    first = task.examples("train")[1]
    assert first.question == table["questions"][0][1].as_py()
    assert first.labels == table["answer_labels"][0][1].as_py()
    assert first.image.size == (32, 32)
    val_ids = {e.question_id for e in task.examples("val")}
    assert not val_ids & {e.question_id for e in task.examples("test")}


def test_vqav2_soft_targets_and_loss_scale(tmp_path, vl):
    synthetic.write_vqav2(tmp_path)
    task = build_task("vqav2", data_dir=tmp_path, num_answers=3129, train_limit=4)
    batch = task.collate(task.examples("train"), vl)
    colour_question = task.examples("train")[0]
    expected = torch.zeros(3129)
    expected[colour_question.labels] = torch.tensor(colour_question.scores)
    assert torch.equal(batch["targets"][0], expected)
    logits = torch.zeros(4, 3129)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"])
    assert task.criterion(logits, batch["targets"]).item() == pytest.approx(bce.item() * 3129)


def test_nlvr2_reads_write_nlvr2_files(tmp_path, vl):
    synthetic.write_nlvr2(tmp_path)
    task = build_task("nlvr2", data_dir=tmp_path)
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [48, 16, 16]
    table = pa.ipc.open_file(str(tmp_path / "nlvr2_dev.arrow")).read_all()
    example = task.examples("val")[3]
    assert example.sentence == table["questions"][1][1].as_py()
    assert example.label == (table["answers"][1][1].as_py() == "True")
    batch = task.collate(task.examples("train")[:3], vl)
    assert set(batch) == {"inputs", "inputs_right", "targets"}
    assert not torch.equal(batch["inputs"]["pixel_values"], batch["inputs_right"]["pixel_values"])
    assert task.build_head(vl.feature_dim)[0].in_features == 2 * vl.feature_dim


def test_f30k_reads_karpathy_files_and_groups_negatives(tmp_path, vl):
    synthetic.write_f30k(tmp_path)
    task = build_task("f30k", data_dir=tmp_path, negatives=2)
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [60, 20, 30]
    examples = task.examples("train")[:5]
    assert {e.image_row for e in examples} == {0}
    batch = task.collate(examples[:2], vl)
    assert batch["targets"].tolist() == [1, 0, 0, 1, 0, 0]
    assert batch["inputs"]["input_ids"].shape[0] == 6
    # Negatives are captions of other images, fixed per example outside training.
    val = task.examples("val")[0]
    assert task._negative_captions(val) == task._negative_captions(val)
    assert val.caption not in task._negative_captions(val)


def test_glue_reads_tsv_files_and_holds_out_val(tmp_path, text_model):
    synthetic.write_mnli(tmp_path / "MNLI")
    task = build_task("mnli", data_dir=tmp_path, val_size=10)  # the GLUE root works too
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [86, 10, 24]
    again = build_task("mnli", data_dir=tmp_path / "MNLI", val_size=10)
    assert task.examples("val") == again.examples("val")
    train_pairs = {(e.text, e.pair) for e in task.examples("train")}
    batch = task.collate(task.examples("val")[:4], text_model)
    assert batch["targets"].tolist() == [e.label for e in task.examples("val")[:4]]
    assert len(train_pairs) > 1 and task.examples("test")[0].pair is not None

    synthetic.write_sst2(tmp_path / "SST-2")
    sst2 = build_task("sst2", data_dir=tmp_path / "SST-2", val_size=16)
    assert sst2.examples("test")[0].pair is None and sst2.examples("train")[0].label in (0, 1)


@pytest.mark.parametrize("name", [*VISION_TASKS, *TEXT_TASKS])
def test_tiny_task_trains_and_evaluates(name, vl, text_model):
    task = build_task(name, tiny=True)
    model = with_head(text_model if name in TEXT_TASKS else vl, task)
    batch = next(iter(task.loader("train", model, 4, shuffle=True)))
    loss = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    model.train()
    result = task.evaluate(model, itertools.islice(iter(task.loader("val", model, 8)), 2))
    assert model.training  # evaluate restores the mode
    assert task.metric in result and "loss" in result
    assert all(0.0 <= v <= 1.0 for k, v in result.items() if k != "loss")
    if name == "f30k":
        assert set(result) == {"ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10", "loss"}


def test_observation_batches_are_fixed_and_cycle(vl):
    task = build_task("vqav2", tiny=True)
    first = list(itertools.islice(task.observation_batches(vl, 4, num_batches=2), 3))
    again = next(task.observation_batches(vl, 4, num_batches=2))
    assert torch.equal(first[0]["inputs"]["input_ids"], again["inputs"]["input_ids"])
    assert torch.equal(first[2]["targets"], first[0]["targets"])
    assert not torch.equal(first[1]["targets"], first[0]["targets"])


# -- metrics by hand ------------------------------------------------------------------------------
def test_vqa_score_gives_partial_credit():
    targets = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.6, 0.9], [0.3, 0.0, 0.0]])
    logits = torch.tensor([[0.1, 2.0, 0.0], [0.0, 0.0, 5.0], [0.0, 3.0, 0.0]])
    assert vqa_score(logits, targets).tolist() == pytest.approx([0.3, 0.9, 0.0])
    assert accuracy(logits, torch.tensor([1, 1, 1])).tolist() == [1.0, 0.0, 1.0]


def test_retrieval_recalls_on_a_hand_made_matrix():
    # 3 images, 4 texts: texts 0, 1 describe image 0; text 2 image 1; text 3 image 2.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.0],
            [0.2, 0.7, 0.6, 0.1],
            [0.0, 0.3, 0.5, 0.4],
        ]
    )
    recalls = retrieval_recalls(scores, torch.tensor([0, 0, 1, 2]))
    # IR@1: text 0 -> image 0 (hit), 1 -> 1 (miss), 2 -> 0 (miss), 3 -> 2 (hit).
    assert recalls["ir_r1"] == pytest.approx(2 / 4)
    # IR@5 covers all 3 images.
    assert recalls["ir_r5"] == recalls["ir_r10"] == 1.0
    # TR@1: image 0 -> text 0 (hit), image 1 -> text 1 (miss), image 2 -> text 2 (miss).
    assert recalls["tr_r1"] == pytest.approx(1 / 3)
    assert recalls["tr_r5"] == 1.0


# -- bad input ------------------------------------------------------------------------------------
def test_missing_folder_and_file_name_the_expected_files(tmp_path):
    with pytest.raises(UserError, match="does not exist.*vqav2_train.arrow, vqav2_trainable_val.arrow"):
        build_task("vqav2", data_dir=tmp_path / "nowhere")
    synthetic.write_nlvr2(tmp_path)
    (tmp_path / "nlvr2_test1.arrow").unlink()
    with pytest.raises(UserError, match="lacks nlvr2_test1.arrow"):
        build_task("nlvr2", data_dir=tmp_path)
    with pytest.raises(UserError, match="needs a data folder.*train.tsv, dev.tsv"):
        build_task("sst2")


def test_wrong_columns_name_the_file_and_the_columns(tmp_path):
    synthetic.write_f30k(tmp_path)
    path = tmp_path / "f30k_caption_karpathy_val.arrow"
    schema = pa.schema([("image", pa.binary()), ("captions", pa.list_(pa.string()))])
    synthetic.write_arrow(path, {"image": [b"x"], "captions": [["a"]]}, schema)
    with pytest.raises(UserError, match=r"karpathy_val\.arrow lacks the column\(s\) caption, image_id") as err:
        build_task("f30k", data_dir=tmp_path)
    assert "\n" not in str(err.value)
    path.write_text("not arrow")
    with pytest.raises(UserError, match="not a readable Arrow IPC file"):
        build_task("f30k", data_dir=tmp_path)


def test_unknown_labels_are_user_errors(tmp_path):
    synthetic.write_sst2(tmp_path)
    synthetic.write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["fine .", "1"], ["meh .", "positive"]])
    with pytest.raises(UserError, match=r"dev.tsv line 3: unknown label 'positive'.*expected one of 0, 1"):
        build_task("sst2", data_dir=tmp_path, val_size=8)
    synthetic.write_tsv(tmp_path / "dev.tsv", ["text", "label"], [["fine .", "1"]])
    with pytest.raises(UserError, match="dev.tsv lacks the column.*sentence"):
        build_task("sst2", data_dir=tmp_path, val_size=8)

    synthetic.write_nlvr2(tmp_path)
    rows = {
        "image_0": [b""], "image_1": [b""], "questions": [["x"]], "answers": [["Maybe"]], "identifier": ["dev-0-0"]
    }
    synthetic.write_arrow(tmp_path / "nlvr2_dev.arrow", rows, synthetic.NLVR2_SCHEMA)
    with pytest.raises(UserError, match=r"nlvr2_dev.arrow: unknown answer label\(s\) \['Maybe'\]"):
        build_task("nlvr2", data_dir=tmp_path)


def test_inconsistent_answer_vocabulary_is_a_user_error(tmp_path):
    synthetic.write_vqav2(tmp_path)
    row = {
        "image": [synthetic.image_bytes("red", "square")], "questions": [["what color?"]],
        "answers": [[["red"]]], "answer_labels": [[[5]]], "answer_scores": [[[1.0]]],
        "image_id": [99], "question_id": [[999]], "split": ["val"],
    }
    synthetic.write_arrow(tmp_path / "vqav2_rest_val.arrow", row, synthetic.VQA_SCHEMA)
    with pytest.raises(UserError, match="vqav2_rest_val.arrow: answer 'red' has label 5, but 0 elsewhere"):
        build_task("vqav2", data_dir=tmp_path)
    synthetic.write_vqav2(tmp_path)
    with pytest.raises(UserError, match="labels run from 0 to 7; expected labels 0..3"):
        build_task("vqav2", data_dir=tmp_path, num_answers=4)


# -- easy-VQA (the real, offline data) ------------------------------------------------------------
def test_easyvqa_splits_are_fixed_and_disjoint_by_image():
    task = build_task("easyvqa", train_limit=300, val_limit=100, test_limit=50)
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [300, 100, 50]
    assert not {e.image_id for e in task.examples("train")} & {e.image_id for e in task.examples("val")}
    assert len(task.answers) == 13 and task.examples("val")[0].image.size == (64, 64)
    again = build_task("easyvqa", train_limit=300, val_limit=100, test_limit=50)
    assert [e.question for e in again.examples("train")] == [e.question for e in task.examples("train")]
    with pytest.raises(UserError, match="expected no data_dir"):
        build_task("easyvqa", data_dir="somewhere")


def test_tiny_model_overfits_a_few_easyvqa_examples(vl):
    task = build_task("easyvqa", train_limit=8, val_limit=8, test_limit=8)
    model = with_head(vl, task)
    batch = task.collate(task.examples("train"), model)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    first = task.loss(model, batch).item()
    for _ in range(120):
        optimizer.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
    result = task.evaluate(model, iter([batch]))
    assert result["loss"] < 0.35 * first
    assert result["accuracy"] >= 7 / 8


def test_easyvqa_reports_accuracy_by_answer_kind_by_hand():
    task = build_task("easyvqa", train_limit=8, val_limit=8, test_limit=40)
    answer = {i: a for i, a in enumerate(task.answers)}
    examples = task.examples("test")
    kinds = {"yes/no": {"yes", "no"}, "shape": {"circle", "rectangle", "triangle"}}

    class AlwaysYesOrCircle(torch.nn.Module):
        """Answers "yes" to the first half of the questions and "circle" to the rest."""

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # tasks find the model's device from a parameter

        def forward(self, **inputs):
            n = len(inputs["targets_for_the_test"])
            chosen = [task.answers.index("yes")] * (n // 2) + [task.answers.index("circle")] * (n - n // 2)
            return torch.nn.functional.one_hot(torch.tensor(chosen), len(task.answers)).float()

    batch = {"inputs": {"targets_for_the_test": [e.label for e in examples]}, "targets": torch.tensor([e.label for e in examples])}
    result = task.evaluate(AlwaysYesOrCircle(), iter([batch]))

    said = ["yes"] * (len(examples) // 2) + ["circle"] * (len(examples) - len(examples) // 2)
    expected = {}
    for kind in ("yes/no", "shape", "colour"):
        members = [i for i, e in enumerate(examples) if kinds.get(kind, set()) and answer[e.label] in kinds[kind]
                   or kind == "colour" and all(answer[e.label] not in k for k in kinds.values())]
        expected[f"accuracy[{kind}]"] = sum(said[i] == answer[examples[i].label] for i in members) / len(members)
    assert {k: v for k, v in result.items() if "[" in k} == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(sum(s == answer[e.label] for s, e in zip(said, examples)) / len(examples))
    assert 0 < expected["accuracy[yes/no]"] < 1 and expected["accuracy[colour]"] == 0  # the numbers test something
