"""The CLI in subprocesses on tiny models: search, choose, retrain, artifacts, storage, resume, errors."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import run_cli
from safetensors.torch import load_file

from das_tune.samplers import SAMPLER_ATTR

pytestmark = pytest.mark.slow


def study_trials(db):
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = optuna.load_study(study_name="easyvqa_minilm-das-seed0-tiny", storage=storage)
    return study, study.trials


def test_tiny_run_end_to_end(cli, tmp_path):
    result = cli("run", "--study", "easyvqa_minilm", "--tiny", "--quiet", check=True)
    run_dir = tmp_path / "runs" / "easyvqa_minilm-das-seed0-tiny"
    assert result.stdout.strip() == str(run_dir)

    subnet = json.loads((run_dir / "subnet.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert subnet["space"] == "minilm_vqa" and len(subnet["skipped"]) == 2
    assert subnet["sampler"] == "das" and subnet["study_name"] == "easyvqa_minilm-das-seed0-tiny"
    assert metrics["skipped"] == subnet["skipped"] and 0 <= metrics["value"] <= 1
    assert metrics["flops_saved"] > 0 and metrics["additional_macs"] < metrics["macs"]
    weights = load_file(run_dir / "adapters.safetensors")
    backbone_weights = {k: v for k, v in weights.items() if not k.startswith("task_head.")}
    assert len(backbone_weights) < len(weights)  # the task head is saved too ...
    assert sum(v.numel() for v in backbone_weights.values()) == metrics["trainable_params"]  # ... not counted

    study, trials = study_trials(tmp_path / "das_tune.db")
    assert len(trials) >= 3 and len(trials) % 3 == 0
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {"skipped", "round", "phase", "additional_gmacs", "trainable_params"} <= set(trials[0].user_attrs)
    assert study._storage.get_study_system_attrs(study._study_id)[SAMPLER_ATTR]["name"] == "das"

    again = cli("run", "--study", "easyvqa_minilm", "--tiny", check=True)  # resumes: nothing new to do
    assert "resuming study" in again.stderr and "already retrained" in again.stderr
    assert len(study_trials(tmp_path / "das_tune.db")[1]) == len(trials)
    # the run folder with a storage that lacks its study: one line naming both, nothing written to the other storage
    elsewhere = cli("run", "--study", "easyvqa_minilm", "--tiny", "--storage", "other.log")
    assert elsewhere.returncode == 2 and len(elsewhere.stderr.strip().splitlines()) == 1, elsewhere.stderr
    assert "in storage sqlite:///das_tune.db, which other.log does not have: give --storage sqlite:///das_tune.db" in elsewhere.stderr
    assert not (tmp_path / "other.log").exists()

    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    longer = cli("run", "--study", "easyvqa_minilm", "--tiny", "--quiet", "--set", "retrain.epochs=2", check=True)
    own = Path(longer.stdout.strip())  # another budget is retrained in a folder of its own ...
    assert own.parent == run_dir and own.name.startswith("retrain-") and "already retrained" not in longer.stderr
    assert json.loads((own / "metrics.json").read_text())["retrain_budget"]["retrain"]["epochs"] == 2
    assert yaml.safe_load((own / "study.yaml").read_text())["retrain"]["epochs"] == 2
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # ... the run's are kept
    retrained = (own / "metrics.json").read_bytes()
    again = cli("run", "--study", "easyvqa_minilm", "--tiny", "--quiet", "--set", "retrain.epochs=2", check=True)
    assert again.stdout.strip() == str(own) and (own / "metrics.json").read_bytes() == retrained  # reused


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--space", "nope"], "unknown search space 'nope'"),
        (["run", "--study", "easyvqa_minilm", "--sampler", "annealing"], "unknown sampler 'annealing'"),
        (["run", "--study", "easyvqa_minilm", "--num-skip", "6"], "num_skip"),
        (["run", "--study", "easyvqa_minilm", "--set", "search.warmup_epochs=-1"], "search.warmup_epochs"),
        (["run", "--study", "missing.yaml"], "unknown study 'missing.yaml'"),
        (["run", "--study", "easyvqa_minilm", "--set", "sampler.options.das.round_size=4"], "set in one place, search.round_size"),
        (["run", "--study", "easyvqa_minilm", "--executor", "dask"], "search.executor"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli, tmp_path, args, message):
    result = cli(*args, "--tiny")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "das_tune.db").exists()


def test_meter_without_checkpoint_says_which_files_to_put_where(cli, tmp_path):
    result = cli("run", "--space", "meter_fusion")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checkpoint" in result.stderr and not (tmp_path / "das_tune.db").exists()


def test_retrain_a_given_subnet_without_searching(cli, tmp_path):
    cli("retrain", "--study", "easyvqa_minilm", "--skip", "En3,En1", "--tiny", "--quiet", check=True)
    run_dir = tmp_path / "runs" / "easyvqa_minilm-skip-En1+En3-seed0-tiny"  # not a search's run folder
    assert json.loads((run_dir / "metrics.json").read_text())["skipped"] == ["En1", "En3"]
    assert json.loads((run_dir / "subnet.json").read_text())["sampler"] == "given by --skip"
    first = (run_dir / "metrics.json").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "runs" / run_dir.name).mkdir(parents=True)  # an unrelated run of the same name
    again = run_cli("retrain", str(run_dir), "--quiet", "--set", "retrain.epochs=2", cwd=elsewhere, check=True)
    own = Path(again.stdout.strip())
    assert own.parent == run_dir and (run_dir / "metrics.json").read_bytes() == first  # the run's metrics kept
    budget = json.loads((own / "metrics.json").read_text())["retrain_budget"]["retrain"]
    assert budget["epochs"] == 2 and budget["batch_size"] == 4  # the run's tiny budgets are kept
    assert not any((elsewhere / "runs" / run_dir.name).iterdir())
    cli("retrain", "--study", "easyvqa_minilm", "--skip", "none", "--tiny", "--quiet", check=True)
    full = json.loads((tmp_path / "runs" / "easyvqa_minilm-skip-none-seed0-tiny" / "metrics.json").read_text())
    assert full["skipped"] == [] and full["flops_saved"] == 0 and full["additional_macs"] > 0  # adapters only
    bad = cli("retrain", "--study", "easyvqa_minilm", "--skip", "En1,FV0", "--tiny")
    assert bad.returncode == 2 and "FV0" in bad.stderr


def test_journal_file_storage_for_run_and_dashboard(cli, tmp_path):
    cli("run", "--space", "minilm_vqa", "--tiny", "--quiet", "--storage", "journal.log", check=True, timeout=600)
    assert (tmp_path / "journal.log").is_file() and not (tmp_path / "das_tune.db").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log")))
    trials = optuna.load_study(study_name="easyvqa_minilm-das-seed0-tiny", storage=storage).trials
    assert trials and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

    server = subprocess.Popen(
        [sys.executable, "-m", "das_tune.cli", "dashboard", "--storage", "journal.log", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = server.stdout.readline().split("http://")[1].split("/dashboard")[0]
        with urllib.request.urlopen(f"http://{url}/api/studies", timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["easyvqa_minilm-das-seed0-tiny"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    missing = cli("dashboard", "--storage", "nothing.log")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "nothing.log").exists()


def test_piped_output_is_not_cut_to_80_columns_and_the_version_prints(tmp_path):
    studies = run_cli("studies", cwd=tmp_path, timeout=120)
    assert studies.returncode == 0 and "easyvqa_minilm_sublayers" in studies.stdout and "…" not in studies.stdout
    version = run_cli("--version", cwd=tmp_path, timeout=120)
    assert version.returncode == 0 and version.stdout.strip().startswith("das-tune 0.")


def test_the_run_summary_shows_its_labels_whole(capsys, monkeypatch):
    # rich reads "[interquartile range]" as markup and drops it unless escaped
    from types import SimpleNamespace

    from rich.console import Console

    from das_tune import cli
    from das_tune.artifacts.results import RetrainMetrics

    monkeypatch.setattr(cli, "out", Console(width=200))
    committed = Path(__file__).resolve().parents[1] / "bench" / "minilm_vqa-skip3" / "retrain" / "seed0" / "En0+En1+En2"
    done = SimpleNamespace(metrics=RetrainMetrics.read(committed / "metrics.json"), tie_break=None, artifacts="runs/x")
    cli._report(SimpleNamespace(tiny=False, resolved_study_name="x"), done, quiet=False)
    assert "latency full → subnet (batch 1, median [interquartile range])" in capsys.readouterr().out


def test_piped_progress_keeps_each_log_line_whole(cli):
    """Piped (as in a CI log), the progress display's lines are not wrapped at rich's default 80 columns."""
    result = cli("retrain", "--study", "easyvqa_minilm", "--skip", "En3,En1", "--tiny", "--set", "retrain.epochs=1", check=True)
    epoch = [line for line in result.stderr.splitlines() if line.startswith("retrain epoch 1: val accuracy")]
    assert len(epoch) == 1 and epoch[0].rstrip().endswith(")") and "colour" in epoch[0], result.stderr[-2000:]
