"""``das-tune``: a thin shell over the Python API (parsing, progress, tables, exit codes).

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 a failure during the run
(one line for a known failure such as a diverged loss, else the traceback).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from typer._click import exceptions as click_errors  # typer's own copy of click

from das_tune.errors import RunFailure, UserError, shorten
from das_tune.search import EXECUTORS
from das_tune.spec.study import DEFAULT_STORAGE, SAMPLER_NAMES


class _App(typer.Typer):
    """Typer, with its usage errors (a bad option, a bad value) as one ``error:`` line and exit 2
    instead of a multi-line box, like every other bad input."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as help_page:
            help_page.show()
            raise SystemExit(2) from None
        except click_errors.ClickException as error:
            _error_line(error.format_message())
            raise SystemExit(error.exit_code) from None
        except typer.Abort:
            raise SystemExit(130) from None
        raise SystemExit(code if isinstance(code, int) else 0)


# A path the user gave that cannot be used is bad input (exit 2); anything else the file system refuses fails the run.
_BAD_PATH = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT}


def _os_error(error: OSError) -> tuple[int, str]:
    """An OSError as (exit code, one line naming the path)."""
    where = shorten(str(error.filename)) if error.filename else "a file"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 1, f"no space left on the device of {where}: free some and run the same command again (finished work is kept)"
    return (2 if error.errno in _BAD_PATH else 1), f"{where}: {error.strerror or error}"


def _error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {rich_escape(' '.join(str(message).split()))}", soft_wrap=True, highlight=False)


app = _App(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DAS (Dynamic Architecture Skipping) as a declarative Optuna search.",
)
# Piped or captured output (scripts, CI logs) has no terminal width to fit: rich's default of 80 columns
# would cut names and paths, so such output gets room enough for any table das-tune prints.
PIPED_WIDTH = 200
out = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"das-tune {version('das-tune')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print das-tune's version and exit.")
    ] = False,
) -> None:
    """DAS (Dynamic Architecture Skipping) as a declarative Optuna search."""

# Options every command shares.
Storage = Annotated[str | None, typer.Option(help=f"Optuna storage URL or journal file (default: the study's, {DEFAULT_STORAGE})")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; print only the result path.")]
Seed = Annotated[int | None, typer.Option(help="Seed of the sampler, the data order and the adapters.")]
Tiny = Annotated[bool, typer.Option(help="Tiny random backbone of the same family and a few batches of data.")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Override any study field: --set search.warmup_epochs=2")]


def _quiet_libraries() -> None:
    # environment, not imports: a refused command line never waits for transformers (optuna: _quiet_optuna)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_optuna() -> None:
    """Optuna's INFO lines off; called once the command line is checked, as this imports optuna."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def exits_cleanly(command):
    """Bad input → exit 2 with one line; any other failure → exit 1 with its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _quiet_libraries()
        try:
            return command(*args, **kwargs)
        except UserError as error:
            _error_line(str(error))
            raise typer.Exit(2) from None
        except RunFailure as failure:
            _error_line(str(failure))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted: progress is saved; run the same command again to resume")
            raise typer.Exit(130) from None
        except OSError as error:  # the file system said no: a path in the way, no permission, a full disk
            code, line = _os_error(error)
            _error_line(line)
            raise typer.Exit(code) from None
        except Exception:
            err.print_exception(max_frames=8)
            raise typer.Exit(1) from None

    return wrapper


def _overrides(storage: str | None, seed: int | None, tiny: bool, sets: list[str] | None, **fields: Any) -> dict[str, Any]:
    from das_tune.spec.study import parse_overrides

    overrides = {key: value for key, value in fields.items() if value is not None}
    if storage is not None:
        overrides["storage"] = storage
    if seed is not None:
        overrides["seed"] = seed
    if tiny:
        overrides["tiny"] = True
    overrides.update(parse_overrides(sets or []))
    return overrides


def _load_spec(study: str | None, space: str | None, overrides: dict[str, Any]):
    from das_tune.spec.study import default_study_for_space, load_study_spec

    if study is None and space is None:
        raise UserError("say what to run: --study NAME|FILE or --space NAME (see `das-tune studies`)")
    if study is None:
        study = default_study_for_space(space)
    if space is not None:
        overrides.setdefault("space", space)
    return load_study_spec(study, overrides)


NUM_SKIP_HELP = "How many layers to skip: a number, or a range (1-3, 2,4,6,8) for one search of every size and the accuracy-GMACs front."
EXECUTOR_HELP = "; ".join(f"{name}: {entry.about}" for name, entry in EXECUTORS.items()) + " (chosen when --workers > 1)."
TARGET_HELP = "With a num_skip range: pick the cheapest retrained subnet meeting e.g. 'accuracy>=full-0.01' (exit 1 if none)."
MAX_GMACS_HELP = "With a num_skip range: the pick has at most this many additional GMACs (negative: cheaper than the original model)."
BENCH_NUM_SKIP_HELP = (
    "How many layers to skip (default: the space's); a range (1-3) compares one search of the range with das_per_size, "
    "DAS searching each size on its own."
)
BENCH_SAMPLERS_HELP = (
    f"Comma-separated samplers (searches on one supernet): {', '.join(SAMPLER_NAMES)}, or das_std (DAS with standardised advantages; "
    "das is the reference rule), das_angular (das_std whose gates start from the angular distances of the warm-up "
    "supernet; das_angular@1: a prior of 1 gate unit per sd of the distances), or asha (ASHA of Ray Tune racing short "
    "trainings of distinct subsets; budget: the ray section of the study); with a range also das_per_size."
)
BENCH_METHODS_HELP = "Comma-separated training-free methods: block_influence, angular, last_k, first_k ('' for none)."
BENCH_SEEDS_HELP = "Search seeds: a count (5: seeds 0-4), a range (5-9) or a list (0,3,7); later pieces add to the same results."
SUPERNET_STEPS_HELP = (
    "With --ground-truth: also train supernets (random subnets, drawn as search.warmup_draw says) of these step counts "
    "(90,300,900) per seed and report how their loss on the whole val split ranks the reference subsets (Kendall τ, "
    "sparse τ, AUC, top-3 recall); 2x300: the mean loss of two 300-step supernets of different seeds (consecutive "
    "supernet seeds paired)."
)
SUPERNET_SEEDS_HELP = "Seeds of those supernets, as --seeds (default: the search seeds); a few seeds cost far less than ten."
REFERENCE_METHOD_HELP = (
    "The method the verdict judges and every other is compared with (paired tests); one of --samplers or --methods."
)
GROUND_TRUTH_HELP = (
    "Also retrain the reference subsets (every subset of a small space, else a random sample): regret, percentile, top 10 %, Kendall τ."
)


@app.command()
@exits_cleanly
def run(
    study: Annotated[str | None, typer.Option(help="A built-in study name or a study YAML file.")] = None,
    space: Annotated[str | None, typer.Option(help="A search space; its built-in study is used.")] = None,
    sampler: Annotated[str | None, typer.Option(help=f"One of {', '.join(SAMPLER_NAMES)}.")] = None,
    num_skip: Annotated[str | None, typer.Option(help=NUM_SKIP_HELP)] = None,
    executor: Annotated[str | None, typer.Option(help=EXECUTOR_HELP)] = None,
    address: Annotated[str | None, typer.Option(help="An existing Ray cluster to run on ('auto' or host:port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-parallel workers of the one-shot search (DDP; 1: one process).")] = None,
    fresh: Annotated[bool, typer.Option(help="Delete the study and its run folder's progress and start again.")] = False,
    target: Annotated[str | None, typer.Option(help=TARGET_HELP)] = None,
    max_gmacs: Annotated[float | None, typer.Option(help=MAX_GMACS_HELP)] = None,
    storage: Storage = None,
    seed: Seed = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Search which layers to skip, retrain the chosen subnet, write artifacts and a report.

    With a range of --num-skip: one search for every size, each size's pick and the full model
    retrained, the front in front.json / front.png / front.md, and --target / --max-gmacs applied."""
    from das_tune.jobs.target import parse_target

    overrides = _overrides(storage, seed, tiny, set_, num_skip=num_skip)
    if sampler is not None:
        overrides["sampler.name"] = sampler
    if executor is not None:
        overrides["search.executor"] = executor
    if address is not None:
        overrides["ray.address"] = address
    if workers is not None:
        overrides["search.workers"] = workers
    spec = _load_spec(study, space, overrides)
    rule = parse_target(target, max_gmacs)
    if spec.load_space().is_range:
        _run_front(spec, fresh, rule, quiet)
        return
    if rule is not None:
        raise UserError("--target and --max-gmacs choose from a front: give a range of --num-skip, e.g. 1-3")
    from das_tune.jobs.runner import run as run_study
    from das_tune.progress import reporter

    _quiet_optuna()
    with reporter(quiet, err) as progress:
        done = run_study(spec, fresh=fresh, reporter=progress)
    _report(spec, done, quiet)


def _run_front(spec, fresh: bool, rule, quiet: bool) -> None:
    from das_tune.jobs.front import run_front
    from das_tune.progress import reporter
    from das_tune.report.front import FRONT_JSON, FRONT_PNG, speedup_label

    _quiet_optuna()
    with reporter(quiet, err) as progress:
        front = run_front(spec, fresh=fresh, reporter=progress, target=rule)
    if quiet:
        print(spec.run_dir)
    else:
        table = Table("subnet", "skipped", f"test {front.metric}", "additional GMACs", "FLOPs saved", "speedup", "Pareto",
                      title=f"das-tune: {front.study_name} (num_skip {', '.join(map(str, front.num_skip))})")
        for p in [front.full, *front.ladder]:
            table.add_row(p.name, ", ".join(p.skipped) or "(none)", f"{p.value:.4f}", f"{p.additional_gmacs:+.4f}",
                          f"{p.flops_saved:.1%}", speedup_label(p), "yes" if p.pareto else "")
        out.print(table)
        for name in (FRONT_JSON, FRONT_PNG):
            print(spec.run_dir / name)
    if front.missing:
        err.print(f"no pick for num_skip {', '.join(map(str, front.missing))}: never observed", highlight=False)
    if front.target is not None:
        verdict = "target met" if front.target.met else "[bold red]target not met[/]"
        err.print(f"{verdict}: {front.target.reason}", soft_wrap=True, highlight=False)
        if not front.target.met:
            raise SystemExit(1)  # a failure, said above in one line (no traceback)


@app.command()
@exits_cleanly
def retrain(
    run_dir: Annotated[Path | None, typer.Argument(help="A run folder written by `das-tune run`.")] = None,
    study: Annotated[str | None, typer.Option(help="A study (with --skip) instead of a run folder.")] = None,
    skip: Annotated[str | None, typer.Option(help="Comma-separated layers to skip, e.g. FL2,FV0; 'none' keeps every layer.")] = None,
    storage: Storage = None,
    seed: Seed = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Retrain a given subnet without searching: a run folder's, or --skip on a study.

    The run folder's own artifacts are kept: a retrain of another budget or subnet goes to its own
    folder RUN_DIR/retrain-<subnet>-<budget hash> (the same budget and subnet again: the existing result)."""
    overrides = _overrides(storage, seed, tiny, set_)
    layers = _skip_list(skip) if skip is not None else None
    if run_dir is None and (study is None or layers is None):
        raise UserError("give a run folder, or --study with --skip LAYER,LAYER (or --skip none)")
    from das_tune.jobs.runner import retrain_run, retrain_subset
    from das_tune.progress import reporter

    _quiet_optuna()
    with reporter(quiet, err) as progress:
        if run_dir is not None:
            spec, done = retrain_run(run_dir, skip=layers, overrides=overrides, reporter=progress)
        else:
            spec, done = retrain_subset(study, layers, overrides=overrides, reporter=progress)
    _report(spec, done, quiet)


def _skip_list(skip: str) -> list[str]:
    return [] if skip.strip().lower() == "none" else [name.strip() for name in skip.split(",")]


@app.command()
@exits_cleanly
def bench(
    space: Annotated[str | None, typer.Option(help="A search space; its built-in study is used.")] = None,
    study: Annotated[str | None, typer.Option(help="A built-in study name or a study YAML file.")] = None,
    num_skip: Annotated[str | None, typer.Option(help=BENCH_NUM_SKIP_HELP)] = None,
    samplers: Annotated[str, typer.Option(help=BENCH_SAMPLERS_HELP)] = "das,das_std,random,tpe",
    methods: Annotated[str, typer.Option(help=BENCH_METHODS_HELP)] = "block_influence,angular,last_k,first_k",
    seeds: Annotated[str, typer.Option(help=BENCH_SEEDS_HELP)] = "5",
    retrain_seeds: Annotated[int, typer.Option(help="Every pick and reference subset is retrained at seeds 0..N-1; the mean counts.")] = 2,
    ground_truth: Annotated[bool, typer.Option(help=GROUND_TRUTH_HELP)] = False,
    reference_size: Annotated[int, typer.Option(help="Subsets in the reference sample of a large space.")] = 40,
    supernet_steps: Annotated[str, typer.Option(help=SUPERNET_STEPS_HELP)] = "",
    supernet_seeds: Annotated[str | None, typer.Option(help=SUPERNET_SEEDS_HELP)] = None,
    reference_method: Annotated[str, typer.Option(help=REFERENCE_METHOD_HELP)] = "das",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: bench/<space>-skip<num_skip>, -tiny for --tiny).")
    ] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL or journal file (default: sqlite:///<out>/bench.db)")] = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Compare DAS with baseline samplers and training-free layer scores: same warm-up, budget and seeds."""
    from das_tune.spec.study import default_study_for_space

    overrides = _overrides(storage, None, tiny, set_, num_skip=num_skip)
    _load_spec(study, space, overrides)  # bad input fails here, before anything runs
    from das_tune.bench import BenchConfig, BenchResults, SupernetBudget, parse_seeds, run_bench
    from das_tune.bench.report import rankable_line, rich_table, truth_line
    from das_tune.jobs.checks import check_writable_folder
    from das_tune.progress import reporter

    _quiet_optuna()
    if out_dir is not None:
        check_writable_folder(out_dir, "--out")
    config = BenchConfig(
        study=study or default_study_for_space(space),
        samplers=tuple(s.strip() for s in samplers.split(",") if s.strip()),
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        seeds=parse_seeds(seeds), retrain_seeds=retrain_seeds, ground_truth=ground_truth,
        reference_size=reference_size, overrides=overrides, out=out_dir, supernet_budgets=SupernetBudget.parse(supernet_steps),
        supernet_seeds=None if supernet_seeds is None else parse_seeds(supernet_seeds), reference=reference_method.strip(),
    )
    with reporter(quiet, err) as progress:
        results = run_bench(config, progress)
    for warning in results.warnings:
        err.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    files = results.files
    if quiet:
        print(Path(files.out) / files.json_name)
        return
    if isinstance(results, BenchResults):  # a range's ladder has its table in results.md only
        if results.runs:
            out.print(rich_table(results))
        elif results.ground_truth is not None:  # a ground truth alone
            print(f"{truth_line(results.ground_truth)}\n{rankable_line(results.ground_truth)}")
    folder = Path(files.out)
    print(f"results: {folder / files.markdown} (the tables), {folder / files.json_name} (every number)")
    if files.plots:
        print(f"plots: {', '.join(str(folder / name) for name in files.plots)}")


RunDir = Annotated[Path, typer.Argument(help="A run folder (runs/<study>-<sampler>-seed<k>) or an exported subnet folder.")]


@app.command("evaluate")
@exits_cleanly
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `das-tune run` or `das-tune retrain`.")],
    split: Annotated[str, typer.Option(help="val or test")] = "test",
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Evaluate a run's subnet again: on its own data, or on other data with --set task.data_dir=PATH."""
    from das_tune.spec.study import parse_overrides
    from das_tune.subnet.evaluation import evaluate

    overrides = parse_overrides(set_ or [])
    with _status(quiet, f"evaluating {run_dir} on {split}"):
        result = evaluate(run_dir, split, overrides)
    if quiet:
        print(result.value)
        return
    table = Table(title=f"das-tune evaluate: {run_dir}", show_header=False)
    table.add_row(f"{split} {result.metric}", f"{result.value:.4f}")
    if result.recorded is not None:
        table.add_row(f"metrics.json {split} {result.metric}", f"{result.recorded:.4f}")
    table.add_row(f"{split} loss", f"{result.metrics['loss']:.4f}")
    table.add_row("examples", f"{result.examples:,}")
    out.print(table)


@app.command("predict")
@exits_cleanly
def predict_command(
    run_dir: RunDir,
    question: Annotated[str | None, typer.Option(help="VQA: the question.")] = None,
    image: Annotated[Path | None, typer.Option(help="Vision-language tasks: the image file.")] = None,
    image2: Annotated[Path | None, typer.Option(help="NLVR2: the second image file.")] = None,
    sentence: Annotated[str | None, typer.Option(help="SST-2, NLVR2: the sentence.")] = None,
    premise: Annotated[str | None, typer.Option(help="MNLI: the premise.")] = None,
    hypothesis: Annotated[str | None, typer.Option(help="MNLI: the hypothesis.")] = None,
    caption: Annotated[str | None, typer.Option(help="Flickr30K: the caption to match with --image.")] = None,
    jsonl: Annotated[Path | None, typer.Option(help="Batch: a JSON object of inputs per line (image paths relative to the file).")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Batch: write the predictions here as JSON lines (default: stdout).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    top: Annotated[int, typer.Option(min=1, help="How many labels to list, best first.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch: inputs per forward pass.")] = 32,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Answer with a run's subnet: one input from flags, or a JSONL file of them (--jsonl)."""
    from das_tune.spec.study import parse_overrides
    from das_tune.subnet.load import load_subnet, summarize
    from das_tune.subnet.predict import task_inputs

    given = {"question": question, "image": image, "image2": image2, "sentence": sentence,
             "premise": premise, "hypothesis": hypothesis, "caption": caption}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None}
    if jsonl is not None and given:
        raise UserError("give either --jsonl FILE or the inputs of one example (--question, --image, ...), not both")
    if jsonl is None and not given:
        raise UserError("give the inputs of one example (e.g. --question TEXT --image FILE) or --jsonl FILE")
    if out_file is not None:
        _check_out_file(out_file, overwrite)
    task = summarize(run_dir).task
    inputs = task_inputs(task)
    if jsonl is None:
        inputs.check(task, given)  # before the model loads, as every --jsonl row is
    rows = _read_jsonl(jsonl, inputs, task) if jsonl is not None else [given]
    with _status(quiet, f"loading {run_dir}"):
        model = load_subnet(run_dir, parse_overrides(set_ or []))
    if jsonl is None:
        _print_prediction(model.predict(top=top, **rows[0]), quiet)
        return
    from das_tune.progress import reporter

    with reporter(quiet, err) as progress:
        progress.phase("predict", len(rows))
        predictions = model.predict_batch(
            rows, top=top, batch_size=batch_size, on_batch=lambda n: [progress.advance() for _ in range(n)]
        )
    lines = "".join(p.model_dump_json() + "\n" for p in predictions)
    if out_file is None:
        print(lines, end="")
        return
    from das_tune.artifacts import atomic

    atomic.write_text(out_file, lines)
    if not quiet:
        err.print(f"{len(predictions)} predictions written to {out_file}")


def _check_out_file(path: Path, overwrite: bool) -> None:
    """``--out FILE`` can be written, before any work is done: not a folder, not replaced unasked."""
    from das_tune.jobs.checks import check_writable_folder

    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; expected a file path")
    if path.exists() and not overwrite:
        raise UserError(f"--out {path}: exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, "--out")


def _read_jsonl(path: Path, inputs, task: str) -> list[dict[str, Any]]:
    """The inputs in a --jsonl file (image paths relative to it), each checked; a bad one is named by its line."""
    import json

    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as error:
        raise UserError(f"--jsonl {path}: cannot be read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(f"--jsonl {path} line {line}: not UTF-8 text") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"--jsonl {path} line {number}: not JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise UserError(f"--jsonl {path} line {number}: nested too deeply") from None
        if not isinstance(row, dict):
            raise UserError(f"--jsonl {path} line {number}: expected a JSON object of inputs, e.g. {{\"question\": ..., \"image\": ...}}")
        row = _relative_images(row, inputs.images, path.parent)
        try:
            inputs.check(task, row)
        except UserError as error:
            raise UserError(f"--jsonl {path} line {number}: {error}") from None
        rows.append(row)
    if not rows:
        raise UserError(f"--jsonl {path}: no inputs in it")
    return rows


def _relative_images(row: dict[str, Any], fields: tuple[str, ...], folder: Path) -> dict[str, Any]:
    return {k: str(folder / v) if k in fields and isinstance(v, str) and not Path(v).is_absolute() else v for k, v in row.items()}


def _print_prediction(prediction, quiet: bool) -> None:
    if quiet:
        print(prediction.label)
        return
    table = Table("label", "score")
    for entry in prediction.top:
        table.add_row(entry.label, f"{entry.score:.4f}")
    out.print(table)


@app.command("export")
@exits_cleanly
def export_command(
    run_dir: RunDir,
    out_dir: Annotated[Path, typer.Option("--out", help="A new folder to write.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="safetensors (load_subnet loads it), onnx, or hf (BERT-family encoders, Llama-family decoders; plain layer removal).",
        ),
    ] = "safetensors",
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Write a run's subnet as a self-contained folder, without the skipped layers' weights."""
    from das_tune.spec.study import parse_overrides
    from das_tune.subnet.export import export_subnet

    _quiet_transformers()
    with _status(quiet, f"exporting {run_dir} as {format}") as status:
        result = export_subnet(run_dir, out_dir, format, parse_overrides(set_ or []), on_step=status.update if status else None)
    if quiet:
        print(result.out)
        return
    table = Table(title=f"das-tune export: {result.out} ({result.format})", show_header=False)
    for name, size in result.files.items():
        table.add_row(name, _megabytes(size))
    sizes = f"{_megabytes(result.subnet_weight_bytes)} / {_megabytes(result.full_weight_bytes)} ({result.weight_ratio:.1%})"
    table.add_row("weights: subnet / full model", sizes)
    if result.onnx is not None:
        check = result.onnx
        table.add_row("ONNX vs PyTorch, largest difference", f"{check.max_abs_diff:.2e} (tolerance {check.tolerance:g})")
        latency = f"{check.torch_ms:.2f} ms / {check.onnxruntime_ms:.2f} ms"
        table.add_row(f"latency batch {check.batch_sizes[0]}, CPU: PyTorch / onnxruntime", latency)
    out.print(table)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _status(quiet: bool, message: str):
    """A spinner on stderr for work without steps; nothing with --quiet."""
    import contextlib

    return contextlib.nullcontext() if quiet else err.status(message)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()


@app.command()
@exits_cleanly
def pretrain(
    backbone: Annotated[str, typer.Argument(help="The backbone to pre-train: minilm_vl.")] = "minilm_vl",
    out: Annotated[Path, typer.Option(help="Folder for the checkpoint, the log and the weights.")] = Path("pretrain/minilm_vl"),
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (half matching, half masked words).")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate of the stem and the LoRA deltas.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints (and log entries).")] = None,
    align_steps: Annotated[int | None, typer.Option(help="First steps: the stem alone, aligned to its caption words.")] = None,
    fresh: Annotated[bool, typer.Option(help="Discard the folder's checkpoint and start again.")] = False,
    seed: Seed = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
) -> None:
    """Vision-language pre-training of minilm_vl on easy-VQA's training images (resumable: run it again)."""
    from das_tune.jobs.checks import check_writable_folder
    from das_tune.jobs.pretrain import PretrainSpec
    from das_tune.jobs.pretrain import pretrain as run_pretraining
    from das_tune.progress import reporter
    from das_tune.spec import yaml_reader

    if backbone != "minilm_vl":
        raise UserError(f"pretrain: unknown backbone {backbone!r}; expected minilm_vl")
    fields = dict(steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every, align_steps=align_steps, seed=seed)
    fields = {k: v for k, v in fields.items() if v is not None}
    if "checkpoint_every" in fields:
        fields["eval_every"] = fields["checkpoint_every"]
    spec = yaml_reader.parse(PretrainSpec, {**fields, "tiny": tiny}, "pretrain")
    check_writable_folder(out, "--out")
    with reporter(quiet, err) as progress:
        weights = run_pretraining(spec, out, progress, fresh=fresh)
    print(weights)


@app.command()
@exits_cleanly
def dashboard(
    storage: Annotated[str, typer.Option(help="Optuna storage URL or journal file.")] = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=0, max=65535)] = 8080,
    quiet: Quiet = False,
) -> None:
    """Start optuna-dashboard on the storage (Ctrl-C to stop)."""
    from das_tune.report.dashboard import serve

    _quiet_optuna()
    serve(storage, host=host, port=port, quiet=quiet)


@app.command()
@exits_cleanly
def spaces() -> None:
    """List the built-in search spaces."""
    from das_tune.spec.resources import builtin_names
    from das_tune.spec.spaces import load_space

    table = Table("space", "candidates", "num_skip", "description")
    for name in builtin_names("search_spaces"):
        space = load_space(name)
        candidates = f"{len(space.candidates)} ({space.candidates[0]}…{space.candidates[-1]})"
        table.add_row(name, candidates, space.num_skip_label, space.description)
    out.print(table)


@app.command()
@exits_cleanly
def studies() -> None:
    """List the built-in studies."""
    from das_tune.spec.resources import builtin_names
    from das_tune.spec.study import load_study_spec

    table = Table("study", "space", "backbone", "task", "sampler", "description")
    for name in builtin_names("studies"):
        spec = load_study_spec(name)
        table.add_row(name, spec.space, spec.backbone.name, spec.task.name, spec.sampler.name, spec.description)
    out.print(table)


def _report(spec, done, quiet: bool) -> None:
    if quiet:
        print(done.artifacts)
        return
    metrics = done.metrics
    tiny = " — tiny: a random model on a few examples, not a result" if spec.tiny else ""
    table = Table(title=f"das-tune: {spec.resolved_study_name}{tiny}", show_header=False)
    table.add_row("skipped layers", ", ".join(metrics.skipped) or "(none)")
    if done.tie_break is not None:
        table.add_row("chosen by a tie-break", done.tie_break)
    table.add_row(f"test {metrics.metric}", f"{metrics.value:.4f}")
    table.add_row("additional GMACs (paper's 'FLOPs')", f"{metrics.additional_gmacs:+.4f}")
    table.add_row("FLOPs saved vs full model with adapters", f"{metrics.flops_saved:.1%}")
    table.add_row("trainable params", f"{metrics.trainable_params:,}")
    table.add_row(rich_escape("latency full → subnet (batch 1, median [interquartile range])"), _latency(metrics))
    if metrics.search_seconds is not None:
        table.add_row("search wall-clock", f"{metrics.search_seconds:.0f} s")
    table.add_row("retrain wall-clock", f"{metrics.retrain_seconds:.0f} s")
    table.add_row("artifacts", str(done.artifacts))
    out.print(table)


def _latency(metrics) -> str:
    from das_tune.report.front import speedup_label

    full, subnet = metrics.latency_full_iqr_ms, metrics.latency_subnet_iqr_ms
    if full is None or subnet is None:  # a metrics.json written before the spread was kept
        return f"{metrics.latency_full_ms:.2f} ms → {metrics.latency_subnet_ms:.2f} ms ({metrics.speedup:.2f}×)"
    return (f"{metrics.latency_full_ms:.2f} [{full[0]:.2f}–{full[1]:.2f}] ms → {metrics.latency_subnet_ms:.2f} "
            f"[{subnet[0]:.2f}–{subnet[1]:.2f}] ms: {speedup_label(metrics)}")


if __name__ == "__main__":  # pragma: no cover - the console script is `app`
    app()
