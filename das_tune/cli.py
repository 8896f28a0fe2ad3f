"""``das-tune``: a thin shell over the Python API (parsing, progress, tables, exit codes).

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 a failure during the run
(one line for a known failure such as a diverged loss, else the traceback).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from typer._click import exceptions as click_errors  # typer's own copy of click

from das_tune.errors import RunFailure, UserError
from das_tune.storage import DEFAULT_STORAGE


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


def _error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {rich_escape(' '.join(str(message).split()))}", soft_wrap=True, highlight=False)


app = _App(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DAS (Dynamic Architecture Skipping) as a declarative Optuna search.",
)
out = Console()
err = Console(stderr=True)

# Options every command shares.
Storage = Annotated[Optional[str], typer.Option(help=f"Optuna storage URL or journal file (default: the study's, {DEFAULT_STORAGE})")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; print only the result path.")]
Seed = Annotated[Optional[int], typer.Option(help="Seed of the sampler, the data order and the adapters.")]
Tiny = Annotated[bool, typer.Option(help="Tiny random backbone of the same family and a few batches of data.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any study field: --set search.warmup_epochs=2")]


def _quiet_libraries() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # environment, not imports: the commands that need transformers import it themselves
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
        except Exception:
            err.print_exception(max_frames=8)
            raise typer.Exit(1) from None

    return wrapper


def _overrides(storage: str | None, seed: int | None, tiny: bool, sets: list[str] | None, **fields: Any) -> dict[str, Any]:
    from das_tune.study import parse_overrides

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
    from das_tune.study import default_study_for_space, load_study_spec

    if study is None and space is None:
        raise UserError("say what to run: --study NAME|FILE or --space NAME (see `das-tune studies`)")
    if study is None:
        study = default_study_for_space(space)
    if space is not None:
        overrides.setdefault("space", space)
    return load_study_spec(study, overrides)


@app.command()
@exits_cleanly
def run(
    study: Annotated[Optional[str], typer.Option(help="A built-in study name or a study YAML file.")] = None,
    space: Annotated[Optional[str], typer.Option(help="A search space; its built-in study is used.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="das, random, tpe, cmaes, qmc, gp")] = None,
    num_skip: Annotated[Optional[int], typer.Option(help="How many layers to skip.")] = None,
    executor: Annotated[Optional[str], typer.Option(help="oneshot (supernet, the paper) or ray (Ray Tune trials).")] = None,
    address: Annotated[Optional[str], typer.Option(help="An existing Ray cluster to run on ('auto' or host:port).")] = None,
    fresh: Annotated[bool, typer.Option(help="Delete the study and its run folder's progress and start again.")] = False,
    storage: Storage = None,
    seed: Seed = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Search which layers to skip, retrain the chosen subnet, write artifacts and a report."""
    from das_tune.progress import reporter
    from das_tune.runner import run as run_study

    overrides = _overrides(storage, seed, tiny, set_, num_skip=num_skip)
    if sampler is not None:
        overrides["sampler.name"] = sampler
    if executor is not None:
        overrides["search.executor"] = executor
    if address is not None:
        overrides["ray.address"] = address
    spec = _load_spec(study, space, overrides)
    with reporter(quiet) as progress:
        done = run_study(spec, fresh=fresh, reporter=progress)
    _report(spec, done, quiet)


@app.command()
@exits_cleanly
def retrain(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A run folder written by `das-tune run`.")] = None,
    study: Annotated[Optional[str], typer.Option(help="A study (with --skip) instead of a run folder.")] = None,
    skip: Annotated[Optional[str], typer.Option(help="Comma-separated layers to skip, e.g. FL2,FV0; 'none' keeps every layer.")] = None,
    storage: Storage = None,
    seed: Seed = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Retrain a given subnet without searching: a run folder's, or --skip on a study.

    The run folder's own artifacts are kept: a retrain of another budget or subnet goes to its own
    folder RUN_DIR/retrain-<subnet>-<budget hash> (the same budget and subnet again: the existing result)."""
    from das_tune.progress import reporter
    from das_tune.runner import retrain_run, retrain_subset

    overrides = _overrides(storage, seed, tiny, set_)
    layers = _skip_list(skip) if skip is not None else None
    if run_dir is None and (study is None or layers is None):
        raise UserError("give a run folder, or --study with --skip LAYER,LAYER (or --skip none)")
    with reporter(quiet) as progress:
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
    space: Annotated[Optional[str], typer.Option(help="A search space; its built-in study is used.")] = None,
    study: Annotated[Optional[str], typer.Option(help="A built-in study name or a study YAML file.")] = None,
    samplers: Annotated[str, typer.Option(help="Comma-separated samplers to compare (searches on one supernet).")] = "das,random,tpe",
    methods: Annotated[str, typer.Option(help="Comma-separated training-free methods: block_influence, angular, last_k, first_k ('' for none).")] = "block_influence,angular,last_k,first_k",
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1; every method runs once per seed.")] = 5,
    ground_truth: Annotated[bool, typer.Option(help="Also retrain every subset (small spaces): regret, rank, Kendall τ.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: bench/<space>-skip<num_skip>).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL or journal file (default: sqlite:///<out>/bench.db)")] = None,
    tiny: Tiny = False,
    quiet: Quiet = False,
    set_: Sets = None,
) -> None:
    """Compare DAS with baseline samplers and training-free layer scores: same warm-up, budget and seeds."""
    from das_tune.bench import BenchConfig, run_bench
    from das_tune.bench.report import rich_table
    from das_tune.checks import check_writable_folder
    from das_tune.progress import reporter
    from das_tune.study import default_study_for_space

    overrides = _overrides(storage, None, tiny, set_)
    _load_spec(study, space, overrides)  # bad input fails here, before anything runs
    if out_dir is not None:
        check_writable_folder(out_dir, "--out")
    config = BenchConfig(
        study=study or default_study_for_space(space),
        samplers=tuple(s.strip() for s in samplers.split(",") if s.strip()),
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        seeds=seeds, ground_truth=ground_truth, overrides=overrides, out=out_dir,
    )
    with reporter(quiet) as progress:
        results = run_bench(config, progress)
    files = results.files
    if quiet:
        print(Path(files.out) / files.json_name)
        return
    out.print(rich_table(results))
    for name in (files.json_name, files.markdown, *files.plots):
        print(Path(files.out) / name)


@app.command()
@exits_cleanly
def dashboard(
    storage: Annotated[str, typer.Option(help="Optuna storage URL or journal file.")] = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=0, max=65535)] = 8080,
    quiet: Quiet = False,
) -> None:
    """Start optuna-dashboard on the storage (Ctrl-C to stop)."""
    from das_tune.dashboard import serve

    serve(storage, host=host, port=port, quiet=quiet)


@app.command()
@exits_cleanly
def spaces() -> None:
    """List the built-in search spaces."""
    from das_tune.resources import builtin_names
    from das_tune.spaces import load_space

    table = Table("space", "candidates", "num_skip", "description")
    for name in builtin_names("search_spaces"):
        space = load_space(name)
        table.add_row(name, f"{len(space.candidates)} ({space.candidates[0]}…{space.candidates[-1]})", str(space.num_skip), space.description)
    out.print(table)


@app.command()
@exits_cleanly
def studies() -> None:
    """List the built-in studies."""
    from das_tune.resources import builtin_names
    from das_tune.study import load_study_spec

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
    table = Table(title=f"das-tune: {spec.resolved_study_name}", show_header=False)
    table.add_row("skipped layers", ", ".join(metrics.skipped) or "(none)")
    table.add_row(f"test {metrics.metric}", f"{metrics.value:.4f}")
    table.add_row("additional GMACs (paper's 'FLOPs')", f"{metrics.additional_gmacs:+.4f}")
    table.add_row("FLOPs saved vs full model with adapters", f"{metrics.flops_saved:.1%}")
    table.add_row("trainable params", f"{metrics.trainable_params:,}")
    table.add_row("latency full → subnet (batch 1)", f"{metrics.latency_full_ms:.2f} ms → {metrics.latency_subnet_ms:.2f} ms ({metrics.speedup:.2f}×)")
    if metrics.search_seconds is not None:
        table.add_row("search wall-clock", f"{metrics.search_seconds:.0f} s")
    table.add_row("retrain wall-clock", f"{metrics.retrain_seconds:.0f} s")
    table.add_row("artifacts", str(done.artifacts))
    out.print(table)


if __name__ == "__main__":  # pragma: no cover - the console script is `app`
    app()
