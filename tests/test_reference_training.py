"""Training as the reference (DoubtedSteam/DAS) does: accumulation, lr groups, init, dropout, NLVR2, F30K, studies."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn

from das_tune.backbones import build_backbone
from das_tune.backbones.adapters import Adapter
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.search import oneshot
from das_tune.search.prepare import prepare_search
from das_tune.spec.study import OBSERVATION_PRESETS, load_study_spec
from das_tune.tasks import build_task
from das_tune.tasks.f30k import retrieval_loss
from das_tune.tasks.heads import RetrievalHead
from das_tune.training import loop
from das_tune.training.components import build_components


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second intra-op thread only slows them down on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def dropout_off(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def tiny_vqa(backbone: str = "minilm_vl"):
    task = build_task("easyvqa", tiny=True)
    model = build_backbone(backbone, tiny=True)
    task.attach(model)
    return task, dropout_off(model)


# -- gradient accumulation ------------------------------------------------------------------------
def test_accumulating_k_micro_batches_is_one_k_times_batch():
    task, model = tiny_vqa()
    model.set_skipped(["En2"])
    examples = task.examples("train")[:12]
    big = task.collate(examples, model)
    micro = [task.collate(examples[i : i + 4], model) for i in range(0, 12, 4)]
    spec = load_study_spec("easyvqa_minilm").search
    one, many = copy.deepcopy(model), model
    whole = loop.Trainer(one, spec, steps_per_epoch=1, epochs=1)
    accumulated = loop.Trainer(many, spec.model_copy(update={"accumulate": 3}), steps_per_epoch=3, epochs=1)

    whole.backward(task, big, 0)
    for step, batch in enumerate(micro):
        accumulated.backward(task, batch, step)
    grads = {n: p.grad.clone() for n, p in one.named_parameters() if p.grad is not None}
    assert grads and set(grads) == {n for n, p in many.named_parameters() if p.grad is not None}
    for name, param in many.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6)

    whole.step_if_window_ends(0)
    for step in range(2):
        assert not accumulated.ends_window(step)
    accumulated.step_if_window_ends(2)  # one optimizer step for the window, the same as the big batch's
    assert accumulated.scheduler.last_epoch == whole.scheduler.last_epoch == 1
    # Adam's first step moves a weight by about lr·sign(grad): one whose gradient is at rounding level
    # (the two sums of the same gradients differ there) may move either way, so those are not compared
    for (name, a), (_, b) in zip(one.named_parameters(), many.named_parameters()):
        compared = grads[name].abs() > 1e-6 if name in grads else torch.ones_like(a, dtype=torch.bool)
        torch.testing.assert_close(a[compared], b[compared], rtol=1e-4, atol=1e-6, msg=name)


def test_last_window_of_an_epoch_is_shorter():
    _, model = tiny_vqa()
    spec = load_study_spec("easyvqa_minilm").search.model_copy(update={"accumulate": 4})
    trainer = loop.Trainer(model, spec, steps_per_epoch=10, epochs=2)
    assert [trainer.window_size(s) for s in range(10)] == [4] * 8 + [2] * 2
    assert [s for s in range(10) if trainer.ends_window(s)] == [3, 7, 9]
    assert trainer.scheduler.lr_lambdas[0](0) == pytest.approx(1.0)  # 6 optimizer steps, warm-up 1


def test_search_draws_a_subnet_per_micro_batch_and_observes_every_n_micro_batches(tmp_path, monkeypatch):
    spec = load_study_spec("easyvqa_minilm", {
        "tiny": True, "storage": f"sqlite:///{tmp_path / 'db.sqlite'}", "output_dir": str(tmp_path),
        "search.accumulate": 4, "search.observe_every": 3, "search.max_steps_per_epoch": 8,
        "search.warmup_epochs": 1, "search.search_epochs": 1,
    })
    parts = build_components(spec)
    run = prepare_search(spec, parts, fresh=True, reporter=Reporter())
    draws = []
    real_draw = run.policy.draw
    monkeypatch.setattr(run.policy, "draw", lambda *a: draws.append(1) or real_draw(*a))
    oneshot.run(run)
    assert len(draws) == 8  # every search micro-batch trains its own subnet
    rounds = {t.user_attrs["round"] for t in run.study.trials}  # after micro-batches 9, 12 and 15 of 16
    assert rounds == {0, 1, 2} and len(run.study.trials) == 3 * spec.search.round_size
    state = torch.load(spec.run_dir / "search_state.pt", weights_only=False)
    assert state["trainer"]["scheduler"]["last_epoch"] == 2 * 2  # two epochs of 8 micro-batches in windows of 4


# -- parameter groups -----------------------------------------------------------------------------
def reference_name(name: str) -> str:
    """Our METER parameter name under the reference's module names (meter_module_search.py)."""
    for ours, theirs in [
        (r"^text_fusion\.(\d+)\.layer\.", r"cross_modal_text_layers.\1."),
        (r"^image_fusion\.(\d+)\.layer\.", r"cross_modal_image_layers.\1."),
        (r"^text_fusion\.(\d+)\.skip_adapter\.", r"adapter_list_l.\1.0."),
        (r"^image_fusion\.(\d+)\.skip_adapter\.", r"adapter_list_v.\1.0."),
        (r"^text_layers\.(\d+)\.skip_adapter\.", r"adapter_list_encoder.\1.0."),
        (r"^(text|image)_pooler\.", r"cross_modal_\1_pooler."),
        (r"^task_head\.", "vqa_classifier."),
    ]:
        name = re.sub(ours, theirs, name)
    return name


def reference_lr_multiplier(name: str, head: float, cross_modal: float) -> float:
    """meter_utils.set_schedule: head names × lr_mult_head, else names with "cross_modal" × lr_mult_cross_modal."""
    if any(h in name for h in ["vqa_classifier", "nlvr2_classifier", "mlm_score", "itm_score", "snli_classifier"]):
        return head
    return cross_modal if "cross_modal" in name else 1.0


def test_a_search_checkpoint_carries_the_cuda_generators(tmp_path, monkeypatch):
    """On a GPU machine dropout draws from CUDA's generators: a resumed search restores them too."""
    from das_tune.search.supernet import Supernet

    saved, restored = [torch.tensor([7, 8], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    spec = load_study_spec("easyvqa_minilm", {"tiny": True, "output_dir": str(tmp_path)})
    parts = build_components(spec)
    Supernet(spec, parts).save()
    assert Supernet(spec, parts).restore() and [s.tolist() for s in restored[0]] == [[7, 8]]


def test_meter_parameter_groups_follow_the_reference():
    task, model = tiny_vqa("meter")
    optim = load_study_spec("meter_fusion").search
    groups = loop.parameter_groups(model, optim)
    listed = {n: (g.lr_multiplier, g.weight_decay) for g in groups for n in g.names}
    print("\n".join(f"{n:60} lr x{m:<4g} wd {d:g}" for n, (m, d) in sorted(listed.items())))
    assert set(listed) == {n for n, p in model.named_parameters() if p.requires_grad}
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    for name, (multiplier, decay) in listed.items():
        assert multiplier == reference_lr_multiplier(reference_name(name), 50, 5), name
        assert decay == (0.0 if name.endswith("bias") or name in norms else 0.01), name
    assert listed["text_pooler.dense.weight"] == (5, 0.01) and listed["text_fusion.0.skip_adapter.up.weight"] == (1, 0.01)
    assert listed["task_head.1.weight"] == (50, 0.0) and listed["token4classifier"] == (1, 0.01)
    optimizer, _ = loop.make_optimizer(model, optim, total_steps=10)
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([2.5e-5, 2.5e-5 * 5, 2.5e-5 * 50])


# -- initialisation and regularisation ------------------------------------------------------------
def test_adapter_init_is_normal_002_with_zero_biases():
    adapter = Adapter(768, 96)
    for linear in (adapter.down, adapter.up):
        assert abs(linear.weight.std().item() - 0.02) < 0.001 and abs(linear.weight.mean().item()) < 0.001
        assert torch.count_nonzero(linear.bias) == 0
    assert torch.equal(adapter.norm.weight, torch.ones(768)) and torch.count_nonzero(adapter.norm.bias) == 0


def test_meter_classifier_token_is_the_bos_embedding_after_the_text_transform():
    model = build_backbone("meter", tiny=True).eval()
    with torch.no_grad():
        bos = torch.tensor([[101]])  # the tiny model's BERT vocabulary: [CLS]; RoBERTa's <s> at full size
        torch.testing.assert_close(model.token4classifier, model.text_embeddings(input_ids=bos))
        seen = {}
        model.text_fusion[0].register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
        model.cross_modal_text_transform.weight.mul_(3.0)  # the token does not pass through the transform
        model.features(**model.example_inputs(2))
    expected = model.token4classifier[0, 0] + model.token_type_embeddings.weight[0]
    torch.testing.assert_close(seen["x"][:, 0], expected.expand(2, -1))


def test_dropout_in_meter_fusion_and_vilt_blocks():
    meter = build_backbone("meter", tiny=True)
    inputs = meter.example_inputs(2)
    inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
    meter.train()
    with torch.no_grad():
        fusion = meter.text_fusion[0].layer
        x, y = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
        mx, my = torch.zeros(2, 1, 1, 5), torch.zeros(2, 1, 1, 7)
        assert not torch.equal(fusion(x, y, mx, my), fusion(x, y, mx, my))
        fusion.eval()
        assert torch.equal(fusion(x, y, mx, my), fusion(x, y, mx, my))
    assert fusion.attention.self.dropout == 0.1 and fusion.output.block.dropout.p == 0.1
    vilt = build_backbone("vilt", tiny=True)
    block = vilt.layers[0].layer.block
    assert block.output.dropout.p == 0.1 and block.attention.output.dropout.p == 0.1
    assert block.attention.attention.dropout.p == 0.0  # none on attention probabilities, as the reference


def test_vilt_adapters_read_the_block_input():
    vilt = build_backbone("vilt", tiny=True).eval()
    adapted = vilt.layers[0].layer
    seen = {}
    adapted.adapter0.register_forward_hook(lambda m, args, out: seen.update(a0=args[0]))
    adapted.adapter1.register_forward_hook(lambda m, args, out: seen.update(a1=args[0]))
    x, mask = torch.randn(2, 6, 32), torch.zeros(2, 1, 1, 6)
    with torch.no_grad():
        out = adapted(x, mask)
        block = adapted.block
        after_attention = x + block.attention(block.layernorm_before(x), mask)[0] + adapted.adapter0(x)
    assert torch.equal(seen["a0"], x) and torch.allclose(seen["a1"], after_attention)
    mlp = block.output(block.intermediate(block.layernorm_after(after_attention)), after_attention)
    torch.testing.assert_close(out, mlp + adapted.adapter1(after_attention))


def test_vilt_example_inputs_follow_vilts_convention():
    vilt = build_backbone("vilt", tiny=True)
    assert vilt.example_inputs()["pixel_values"].shape == (1, 3, 64, 96)  # shorter side 64, longer 5/3 of it
    assert vilt.max_image_len == 200


# -- observation ----------------------------------------------------------------------------------
def test_observation_presets_and_modes():
    spec = load_study_spec("meter_fusion")
    assert spec.search.observation == OBSERVATION_PRESETS["reference"]
    assert spec.search.observation.mode == "train" and spec.search.observation_batch_count == 1
    default = load_study_spec("easyvqa_minilm").search
    assert default.observation == OBSERVATION_PRESETS["held_out"] and default.observation_batch_count == 4
    custom = load_study_spec("easyvqa_minilm", {"search.observation": {"mode": "train", "split": "train"}})
    assert custom.search.observation.batches == "cycle" and custom.search.observation.split == "train"
    with pytest.raises(UserError, match="search.observation.*unknown observation preset 'paper'"):
        load_study_spec("easyvqa_minilm", {"search.observation": "paper"})

    task = build_task("easyvqa", tiny=True)
    model = build_backbone("minilm_vl", tiny=True)
    task.attach(model)
    batch = next(task.observation_batches(model, 8, 1))
    train = [loop.observe(model, task, batch, frozenset({"En1"}), "train") for _ in range(2)]
    evals = [loop.observe(model, task, batch, frozenset({"En1"}), "eval") for _ in range(2)]
    assert train[0] != train[1] and evals[0] == evals[1]  # dropout on only in train mode


# -- NLVR2 and Flickr30K --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["meter", "vilt"])
def test_nlvr2_types_its_images_1_and_2_in_a_trainable_three_row_table(name):
    model = build_backbone(name, tiny=True).eval()
    table = model.token_type_embeddings if name == "meter" else model.embeddings.token_type_embeddings
    before = table.weight.detach().clone()
    task = build_task("nlvr2", tiny=True)
    task.attach(model)
    table = model.token_type_embeddings if name == "meter" else model.embeddings.token_type_embeddings
    assert table.num_embeddings == 3 and table.weight.requires_grad
    torch.testing.assert_close(table.weight[:2], before)
    torch.testing.assert_close(table.weight[2], before[1])
    task.attach(model)  # attaching again keeps the table
    assert (model.token_type_embeddings if name == "meter" else model.embeddings.token_type_embeddings) is table

    batch = task.collate(task.examples("train")[:2], model)
    with torch.no_grad():
        torch.manual_seed(1)
        left = model.features(**batch["inputs"], image_token_type=1)
        torch.manual_seed(2)
        right = model.features(**batch["inputs_right"], image_token_type=2)
        table.weight[2] += 1.0  # the right image reads row 2, the left one does not
        torch.manual_seed(1)
        assert torch.allclose(model.features(**batch["inputs"], image_token_type=1), left)
        torch.manual_seed(2)
        assert not torch.allclose(model.features(**batch["inputs_right"], image_token_type=2), right)


def test_f30k_loss_on_a_hand_made_score_matrix():
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])  # image i vs its caption (column 0) and 2 negatives
    itm = torch.zeros(2, 3, 2)
    itm[0, 0] = torch.tensor([0.0, 2.0])  # true pair of image 0: "match" logit 2
    itm[1, 1] = torch.tensor([1.0, 0.0])  # first negative of image 1: "no match" logit 1
    ranking = (-math.log(math.exp(3) / (math.exp(3) + math.exp(1) + 1)) - math.log(1 / (1 + math.exp(2) + math.exp(1)))) / 2
    p_match = math.exp(2) / (1 + math.exp(2))
    p_no = math.exp(1) / (1 + math.exp(1))
    itm_loss = (-math.log(p_match) - math.log(0.5) - math.log(0.5) - math.log(p_no)) / 4
    assert retrieval_loss(itm, scores, itm_weight=0.0).item() == pytest.approx(ranking, rel=1e-6)
    assert retrieval_loss(itm, scores).item() == pytest.approx(ranking + itm_loss, rel=1e-6)


def test_rank_output_starts_from_the_itm_match_row():
    pretrained = {"weight": torch.randn(2, 16), "bias": torch.randn(2)}
    head = RetrievalHead(16, pretrained)
    features = torch.randn(5, 16)
    torch.testing.assert_close(head(features), head.itm(features)[:, 1])
    assert not head.itm.weight.requires_grad and head.rank_output.weight.requires_grad  # as the reference
    fresh = RetrievalHead(16)
    assert fresh.itm.weight.requires_grad
    torch.testing.assert_close(fresh(features), fresh.itm(features)[:, 1])


# -- the built-in studies -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("study", "micro", "accumulate", "lr", "head"),
    [("meter_fusion", 32, 16, 2.5e-5, 50), ("meter_global", 32, 16, 2.5e-5, 50), ("vilt_global", 64, 4, 1e-4, 10)],
)
def test_builtin_studies_state_the_reference_settings(study, micro, accumulate, lr, head):
    spec = load_study_spec(study)
    for optim in (spec.search, spec.retrain):
        assert (optim.batch_size, optim.accumulate, optim.lr, optim.head_lr_multiplier) == (micro, accumulate, lr, head)
        assert optim.total_batch_size == (512 if study.startswith("meter") else 256)
        assert optim.cross_modal_lr_multiplier == 5 and optim.weight_decay == 0.01
    search = spec.search
    assert (search.warmup_epochs + search.search_epochs, search.observe_every, search.round_size) == (3, 10, 3)
    assert search.observation == OBSERVATION_PRESETS["reference"] and spec.retrain.epochs == 10


@pytest.mark.slow
@pytest.mark.parametrize("study", ["meter_fusion", "vilt_global"])
def test_builtin_study_runs_end_to_end_tiny(cli, tmp_path, monkeypatch, study):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: more threads only contend on a busy machine
    cli("run", "--study", study, "--tiny", "--quiet", check=True)
    spec = load_study_spec(tmp_path / "runs" / f"{study}-das-seed0-tiny" / "study.yaml")
    assert spec.search.accumulate in (4, 16) and spec.search.observation.mode == "train"
    assert (tmp_path / "runs" / f"{study}-das-seed0-tiny" / "metrics.json").is_file()


@pytest.mark.slow
def test_table_a_skip_deltas_match_the_paper():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "table_a_flops.py"
    spec = importlib.util.spec_from_file_location("table_a_flops", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with torch.device("meta"):
        meter = build_backbone("meter", random_weights=True, image_size=384, max_text_len=40)
    meter_ratios = bench.rows("METER", bench.CostModel(meter), bench.METER_ROWS)
    vilt = build_backbone("vilt", random_weights=True, image_size=384, max_text_len=40)
    tokens = {}
    vilt.layers[0].register_forward_pre_hook(lambda m, args: tokens.update(n=args[0].shape[1]))
    vilt_ratios = bench.rows("ViLT", bench.CostModel(vilt), bench.VILT_ROWS)
    assert tokens["n"] == 241  # 40 text + CLS + 200 sampled patches of a 384 x 640 image
    assert all(abs(r - 1) < 0.01 for r in meter_ratios), meter_ratios
    assert all(abs(r - 1) < 0.05 for r in vilt_ratios), vilt_ratios
