"""The vision-language pre-training of minilm_vl: captions from training questions, a resumable run on a
tiny model, weights that load into the backbone, and the packaged weights."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from das_tune.backbones import build_backbone
from das_tune.backbones.bert import load_encoder
from das_tune.backbones.vl_bert import PACKAGED_WEIGHTS
from das_tune.jobs.pretrain import COLOURS, SHAPES, CaptionSampler, Pretraining, PretrainModel, PretrainSpec, Scene, scene_attributes
from das_tune.progress import Reporter

# two steps of the stem alone, then two of everything: the resume below crosses the change
TINY = PretrainSpec(steps=4, align_steps=2, batch_size=8, checkpoint_every=2, eval_every=2, eval_images=16, tiny=True)


def test_scene_attributes_are_read_off_questions_and_answers():
    rows = [
        ("what color is the triangle?", "blue", 1),
        ("is there not a red shape?", "no", 2),
        ("does the image contain a circle?", "yes", 2),
        ("is there a green shape?", "no", 3),
        ("is no rectangle present?", "yes", 3),
        ("what shape is present?", "rectangle", 4),
    ]
    scenes = scene_attributes(rows)
    assert scenes[1] == Scene("blue", "triangle")
    assert scenes[2] == Scene("red", "circle")
    assert 3 not in scenes  # only absent attributes
    assert scenes[4] == Scene(None, "rectangle")


def test_captions_match_or_contradict_the_scene():
    sampler = CaptionSampler(random.Random(0))
    scene = Scene("teal", "circle")
    for _ in range(50):
        caption, matched = sampler.matching(scene)
        words = set(caption.split())
        said = {w for w in words if w in COLOURS + SHAPES}
        assert said and (said <= {"teal", "circle"}) == bool(matched)
        masked, targets = sampler.masked(scene, "[MASK]")
        assert targets and set(targets) <= {"teal", "circle"} and masked.count("[MASK]") == len(targets)
    caption, _ = sampler.matching(Scene(None, "triangle"))
    assert not {w for w in caption.split() if w in COLOURS}


def test_alignment_scores_an_image_s_colour_among_colours_and_its_shape_among_shapes():
    torch.manual_seed(0)
    words = list(range(1000, 1000 + len(COLOURS + SHAPES)))  # one word piece each, "teal" two
    pieces = [[w] for w in words]
    pieces[COLOURS.index("teal")] = [words[COLOURS.index("teal")], 999]
    model = PretrainModel(load_encoder(None, True, 2), 64, 2, pieces)
    embedding = model.encoder.embeddings.word_embeddings.weight.detach()
    red, circle = COLOURS.index("red"), SHAPES.index("circle")
    teal, triangle = COLOURS.index("teal"), SHAPES.index("triangle")
    teal_word = (embedding[words[teal]] + embedding[999]) / 2
    image = torch.stack([  # [images, tokens, dim]: tokens showing the caption words
        torch.stack([embedding[words[red]], embedding[words[len(COLOURS) + circle]]]),
        torch.stack([teal_word, embedding[words[len(COLOURS) + triangle]]]),
    ])
    right = model.alignment(image, torch.tensor([[red, circle], [teal, triangle]]))
    assert right["align_colour_accuracy"] == 1 and right["align_shape_accuracy"] == 1
    wrong = model.alignment(image, torch.tensor([[teal, triangle], [red, circle]]))
    assert wrong["align_colour_accuracy"] == 0 and wrong["align_shape_accuracy"] == 0
    assert wrong["align_loss"] > right["align_loss"]
    unknown = model.alignment(image, torch.tensor([[red, -100], [teal, -100]]))  # shapes not known: not scored
    assert "align_shape_accuracy" not in unknown and unknown["align_loss"].isfinite()


class StopAfter(Reporter):
    """Stops the run like a kill after ``steps`` training steps (a KeyboardInterrupt, as Ctrl-C)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def advance(self, loss=None, probabilities=None) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise KeyboardInterrupt


def weights_of(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.slow
def test_pretraining_resumes_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path):
    whole = Pretraining(TINY, tmp_path / "whole", Reporter()).run()
    with pytest.raises(KeyboardInterrupt):
        Pretraining(TINY, tmp_path / "cut", StopAfter(3)).run()  # checkpoint at step 2, stopped in step 4
    assert not (tmp_path / "cut" / "minilm_vl.safetensors").exists()
    resumed = Pretraining(TINY, tmp_path / "cut", Reporter())
    resumed_path = resumed.run()
    assert resumed.step == 4
    expected, metadata = weights_of(whole)
    got, _ = weights_of(resumed_path)
    assert expected.keys() == got.keys() and any(".lora_A" in k for k in got) and "image_tokens.stem.0.weight" in got
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    log = json.loads((tmp_path / "cut" / "log.json").read_text())
    assert [e["step"] for e in log["entries"]] == [2, 4]
    assert {"itm_accuracy", "mlm_accuracy", "align_loss"} <= log["entries"][-1]["eval"].keys()
    assert {"mlm_colour_accuracy", "mlm_shape_accuracy"} & log["entries"][-1]["eval"].keys()
    assert metadata["lora_rank"] == "8"


def test_first_steps_train_the_stem_alone(tmp_path):
    run = Pretraining(TINY.model_copy(update={"steps": 2}), tmp_path, Reporter())
    stem_before = {k: v.clone() for k, v in run.model.image_tokens.state_dict().items()}
    others_before = {k: v.clone() for k, v in run.model.named_parameters() if v.requires_grad and "image_tokens" not in k}
    run.run()
    assert any(not torch.equal(v, stem_before[k]) for k, v in run.model.image_tokens.state_dict().items())
    for key, value in run.model.named_parameters():
        if key in others_before and key != "align_scale":  # LoRA factors, ITM and MLM heads: untouched
            assert torch.equal(value, others_before[key]), key
    assert {"align_loss"} == {k for k in run.log[-1]["train"] if k.endswith("_loss")}


@pytest.mark.slow
def test_pretrain_command_writes_weights_that_minilm_vl_loads(cli, tmp_path):
    out = tmp_path / "pt"
    args = ["pretrain", "minilm_vl", "--tiny", "--steps", "2", "--align-steps", "1", "--batch-size", "8", "--checkpoint-every", "1",
            "--out", str(out), "--quiet"]
    result = cli(*args, check=True)
    assert result.stdout.strip().endswith("minilm_vl.safetensors")
    again = cli(*args, check=True)  # finished: resumes at the end and writes the same weights
    assert again.returncode == 0
    bad = cli("pretrain", "minilm_vl", "--tiny", "--steps", "0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "steps" in bad.stderr and not (tmp_path / "bad").exists()

    tensors, metadata = weights_of(out / "minilm_vl.safetensors")
    torch.manual_seed(0)
    plain = build_backbone("minilm_vl", tiny=True)
    torch.manual_seed(0)
    loaded = build_backbone("minilm_vl", tiny=True, vl_weights=str(out / "minilm_vl.safetensors"))
    torch.testing.assert_close(loaded.image_tokens.stem[0].weight, tensors["image_tokens.stem.0.weight"])
    key = "encoder.layer.2.attention.self.query"
    delta = float(metadata["lora_scale"]) * tensors[f"{key}.lora_B"] @ tensors[f"{key}.lora_A"]
    torch.testing.assert_close(
        loaded.layers[2].layer.attention.self.query.weight, plain.layers[2].layer.attention.self.query.weight + delta
    )
    assert not any(p.requires_grad for p in loaded.image_tokens.parameters())  # part of the frozen backbone
    assert all(p.requires_grad for p in plain.image_tokens.parameters())  # no pre-training: the stem trains


def test_packaged_weights_are_small_load_by_default_and_come_with_their_log():
    assert PACKAGED_WEIGHTS.is_file() and PACKAGED_WEIGHTS.stat().st_size < 8_000_000
    tensors, metadata = weights_of(PACKAGED_WEIGHTS)
    model = build_backbone("minilm_vl")
    torch.testing.assert_close(model.image_tokens.position, tensors["image_tokens.position"].float())
    assert not any(p.requires_grad for p in model.image_tokens.parameters())
    plain = build_backbone("minilm_vl", vl_weights=None)
    key = "encoder.layer.0.attention.self.value"
    delta = float(metadata["lora_scale"]) * tensors[f"{key}.lora_B"].float() @ tensors[f"{key}.lora_A"].float()
    torch.testing.assert_close(
        model.layers[0].layer.attention.self.value.weight, plain.layers[0].layer.attention.self.value.weight + delta
    )
    log = json.loads(PACKAGED_WEIGHTS.with_suffix(".log.json").read_text())
    assert log["entries"][-1]["step"] == log["spec"]["steps"] == int(metadata["steps"])
    final = log["entries"][-1]["eval"]  # on held-out training images: chance is 1/11 words; 0.5, log 2
    assert final["mlm_accuracy"] > 0.95 and final["itm_accuracy"] > 0.95 and final["itm_loss"] < 0.1
    assert final["mlm_colour_accuracy"] > 0.95 and final["mlm_shape_accuracy"] > 0.95  # the stem carries both


def test_readme_pretraining_numbers_are_the_packaged_log():
    from test_main_job_readme import NUMBER, leaves, shown_as

    readme = (Path(__file__).resolve().parents[1] / "docs" / "pretraining.md").read_text()
    paragraph = re.search(r"<!-- pretraining -->(.*?)<!-- /pretraining -->", readme, re.S)
    numbers = NUMBER.findall(paragraph.group(1))
    assert len(numbers) >= 10
    values = list(leaves(json.loads(PACKAGED_WEIGHTS.with_suffix(".log.json").read_text())))
    strays = [n for n in numbers if not shown_as(n, values)]
    assert not strays, f"numbers in README's pre-training paragraph that are not in the packaged log: {strays}"
