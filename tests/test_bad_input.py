"""Bad input on a finished run: exit 2, one line on stderr, the storage and the run folder unchanged
(byte for byte); failures of a run (NaN losses) are exit 1 with one clear line."""

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import FINISHED_RUN, FINISHED_STUDY, run_cli
from PIL import Image

pytestmark = pytest.mark.slow


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(result, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """Bad files, kept out of the checked folder."""
    folder = tmp_path_factory.mktemp("bad-files")
    (folder / "afile").write_text("not a folder\n")
    (folder / "latin1.yaml").write_bytes("name: caf\xe9\nspace: minilm_vqa\n".encode("latin-1"))
    (folder / "twice.yaml").write_text("name: twice\nspace: minilm_vqa\nspace: minilm_vqa\n")
    Image.new("RGB", (64, 64), "red").save(folder / "red.png")
    (folder / "questions.jsonl").write_text('{"question": "what color is the shape?", "image": "red.png"}\n')
    return folder


RUN_INPUTS = [
    (["--set", "search.lr=[1,"], "not valid YAML"),
    (["--seed", "-1"], "seed"),
    (["--seed", "18446744073709551616"], "seed"),
    (["--seed", "abc"], "--seed"),
    (["--set", "sampler.options.das.round_size=0"], "round_size"),
    (["--sampler", "tpe", "--set", "sampler.options.tpe.n_startup_trials=abc"], "n_startup_trials"),
    (["--storage", "sqlite:///{elsewhere}/afile/x.db"], "afile"),
    (["--storage", "sqlite:////proc/x.db"], "cannot be opened"),  # a multi-line database error
    (["--set", "output_dir=/proc/x"], "output_dir"),
    (["--set", "study_name=../../x"], "study_name"),
    (["--sampler", ""], "unknown sampler ''"),
    (["--set", "search.observe_every=1000"], "no observation would run"),
    (["--set", "search.round_size=100"], "only 15"),
    (["--no-such-option"], "No such option"),  # the CLI framework's usage box, as one line
    (["--study", "{elsewhere}/latin1.yaml"], "not UTF-8"),
    (["--study", "{elsewhere}/twice.yaml"], "duplicate key 'space'"),
]


@pytest.mark.parametrize("args, message", RUN_INPUTS, ids=[" ".join(a) for a, _ in RUN_INPUTS])
def test_bad_run_input_changes_nothing(finished_run, elsewhere, args, message):
    args = [a.format(elsewhere=elsewhere) for a in args]
    before = checksums(finished_run)
    assert_refused(run_cli(*FINISHED_RUN, *args, cwd=finished_run), message)
    assert checksums(finished_run) == before


OTHER_INPUTS = [
    (["dashboard", "--port", "99999"], "--port"),
    (["bench", "--space", "minilm_vqa", "--tiny", "--out", "{elsewhere}/afile/sub"], "is a file"),
    (["retrain", "runs/" + FINISHED_STUDY, "--skip", "En1,FV0"], "FV0"),
    (["retrain", "runs/" + FINISHED_STUDY, "--set", "retrain.epochs=0"], "retrain.epochs"),
    (["export", "runs/" + FINISHED_STUDY, "--out", "{elsewhere}/afile/sub"], "afile"),  # a file in the way
    (["predict", "runs/" + FINISHED_STUDY, "--jsonl", "{elsewhere}/questions.jsonl", "--out", "{elsewhere}/afile/a.jsonl"], "afile"),
    (["predict", "runs/" + FINISHED_STUDY, "--jsonl", "{elsewhere}/questions.jsonl", "--out", "{elsewhere}/afile"], "--overwrite"),
    (["predict", "runs/" + FINISHED_STUDY, "--jsonl", "{elsewhere}/questions.jsonl", "--out", "{elsewhere}"], "is a folder"),
    (["pretrain", "minilm_vl", "--tiny", "--out", "{elsewhere}/afile"], "afile"),
]


@pytest.mark.parametrize("args, message", OTHER_INPUTS, ids=[f"{a[0]} {m}" for a, m in OTHER_INPUTS])
def test_bad_input_to_other_commands_changes_nothing(finished_run, elsewhere, args, message):
    args = [a.format(elsewhere=elsewhere) for a in args]
    before = checksums(finished_run)
    assert_refused(run_cli(*args, cwd=finished_run), message)
    assert checksums(finished_run) == before


DAMAGE = {
    "subnet.json": lambda data: data[: len(data) // 2],
    "metrics.json": lambda data: b"{NaN" + data,
    "search_state.pt": lambda data: data[: len(data) // 3],
    "adapters.safetensors": lambda data: data[: len(data) - 100],
}


@pytest.mark.parametrize("name", DAMAGE)
def test_a_damaged_run_folder_is_reported_not_built_on(finished_run, tmp_path, name):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "runs" / FINISHED_STUDY / name
    path.write_bytes(DAMAGE[name](path.read_bytes()))
    before = checksums(tmp_path)
    assert_refused(run_cli(*FINISHED_RUN, cwd=tmp_path), name, "--fresh")
    if name != "search_state.pt":  # retrain RUN_DIR reads the artifacts, not the search
        assert_refused(run_cli("retrain", str(path.parent), cwd=tmp_path), name)
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("sampler", ["das", "random"])
def test_nan_search_is_a_failure_with_one_line(tmp_path, sampler):
    result = run_cli("run", "--space", "minilm_vqa", "--tiny", "--sampler", sampler, "--set", "search.lr=1e30", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "diverged" in lines[-1] and "search.lr" in lines[-1]
    assert (tmp_path / "runs" / f"easyvqa_minilm-{sampler}-seed0-tiny" / "study.yaml").exists()  # the run got as far as its folder
    assert not (tmp_path / "runs" / f"easyvqa_minilm-{sampler}-seed0-tiny" / "metrics.json").exists()


def test_nan_retrain_writes_no_metrics(tmp_path):
    result = run_cli("retrain", "--study", "easyvqa_minilm", "--skip", "En1,En2", "--tiny", "--set", "retrain.lr=1e30", cwd=tmp_path)
    assert result.returncode == 1 and "diverged" in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not list(tmp_path.rglob("metrics.json"))
