"""Ray Tune executor: each trial trains one subnetwork briefly from the shared warm-up checkpoint.

The flow
--------
1. Warm-up (in the driver): the shared :func:`~das_tune.search.supernet.warm_up` (epochs of uniformly
   random subnets), saved once as ``run_dir/warmup_state.pt`` (reused when present, e.g. from a
   one-shot run of the study).
2. Ray Tune: :class:`SkipSearcher` (a Ray Tune ``Searcher``) asks the study, and so its sampler, for
   a skip subset per Ray trial; the trial (``ray_trainable.train_subnet``) loads the warm-up state, trains that subnet
   for ``ray.steps_per_trial`` steps and reports the loss on the task's observation batches every
   ``ray.report_every`` steps, with a checkpoint. A scheduler (``ray.scheduler``: asha, median or null
   for FIFO) stops bad subnets early; ``FailureConfig(max_failures)`` retries a crashed trial from its
   last checkpoint. ``gpus_per_trial: 0.25`` with ``max_concurrent_trials: 4`` packs four trials on one
   GPU (Ray does not cap GPU memory per trial: size the batch so four fit).

What Optuna is told (the rule DAS relies on)
--------------------------------------------
* COMPLETE, value = last loss: only a trial that trained all ``steps_per_trial`` steps;
* PRUNED: a trial the scheduler stopped early (its loss is truncated, not comparable), so DAS's
  reward and TPE's "good" set never count it (Ray's OptunaSearch would tell it COMPLETE);
* FAIL: a trial that errored after its retries, or whose loss is NaN/inf (never left RUNNING).

Resume
------
The experiment lives in ``<ray.storage_path>/<study name>`` (default ``<output_dir>/ray``). Running the
same study again restores it with ``Tuner.restore`` when the study already has trials (an empty study,
e.g. after ``--fresh``, starts a new experiment). Trials that were in flight when the driver died are
marked FAIL when the search starts again (the study's lease says that their process is dead). Each
Ray trial is then told once, under a new Optuna trial with the same skip keys (user attr ``retry_of``)
instead of the finished one (``UpdateFinishedTrialError``): one Ray resumes from its checkpoint is
attached at its first report by its Optuna trial's user attr ``ray_trial_id`` (``SkipSearcher._live``);
one Ray had finished (every step trained, or stopped by the scheduler) before the kill reached Optuna
is told from Ray's saved result (``RaySearch._tell_lost``).
Every checkpoint is kept while the experiment runs (a restored trial may need an older one), each
trial's last one only after it. After the experiment, any of its Optuna trials still RUNNING is marked
FAIL. Ctrl+C: Tune saves the experiment and returns; ``RaySearch.run`` then raises ``KeyboardInterrupt``
(nothing is retrained).

Clusters (``--address HOST:PORT`` or ``auto``)
-----------------------------------------------
The driver connects through ``ray_cluster.ray_session`` (an address that does not answer is bad input)
and uses the cluster's own resources. Every node needs das-tune installed and the study's data and
checkpoint paths; ``ray.storage_path`` must be storage all nodes share (``s3://…``, ``gs://…`` or an
NFS path): the warm-up state is written there once (``<experiment>/warmup_state.pt``) and every trial,
on any node, starts from it and checkpoints next to it, so a trial whose node dies is retried on
another one from its last checkpoint. Only the driver talks to Optuna (the searcher runs there), so a
local SQLite storage is fine. Each trial's user attrs ``node_id`` / ``node_ip`` say where it ran.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import Searcher

from das_tune.backbones.flops import CostModel
from das_tune.progress import Reporter
from das_tune.samplers import SkipPolicy
from das_tune.search.base import STEPS_ATTR, SearchRun
from das_tune.search.ray_cluster import ray_session
from das_tune.search.ray_trainable import WARMUP_FILE, TrialHold, train_subnet
from das_tune.search.supernet import warm_up
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import RaySpec, StudySpec
from das_tune.storage.opener import absolute_url, fail_running

METRIC, MODE = "loss", "min"
PHASE = "ray"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

SCHEDULERS: dict[str, Callable[[RaySpec], TrialScheduler]] = {
    "asha": lambda r: ASHAScheduler(metric=METRIC, mode=MODE, max_t=reports_per_trial(r), grace_period=r.grace_period),
    "median": lambda r: MedianStoppingRule(metric=METRIC, mode=MODE, time_attr="training_iteration", grace_period=r.grace_period),
}


def reports_per_trial(ray_spec: RaySpec) -> int:
    return -(-ray_spec.steps_per_trial // ray_spec.report_every)


def run(search: SearchRun) -> None:
    """The executor (see the module docstring)."""
    RaySearch(search).run()


# -- what Optuna is told ---------------------------------------------------------------------------
def trial_outcome(result: dict | None, error: bool, steps_per_trial: int) -> tuple[TrialState, float | None]:
    """The Optuna state and value of a finished Ray trial (the rule in the module docstring)."""
    if error:
        return TrialState.FAIL, None
    loss = (result or {}).get(METRIC)
    if loss is None:
        return TrialState.PRUNED, None
    if not math.isfinite(loss):
        return TrialState.FAIL, None
    if result.get("step", 0) < steps_per_trial:
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, float(loss)


@dataclass(frozen=True)
class SuggestSkip:
    """Suggest the skip keys on a trial, record the subset, its costs and its round.

    Costs add up per layer (see ``CostModel``), so a base and per-layer deltas stand in for the cost
    model: the searcher is pickled (std pickle) with everything it holds, and the model must not be.
    """

    space: SkipSpace
    policy: SkipPolicy
    base: dict[str, float]
    deltas: dict[str, dict[str, float]]

    @classmethod
    def build(cls, space: SkipSpace, policy: SkipPolicy, costs: CostModel) -> SuggestSkip:
        base = costs.cost([]).trial_attrs()
        deltas = {c: {k: v - base[k] for k, v in costs.cost([c]).trial_attrs().items()} for c in space.candidates}
        return cls(space, policy, base, deltas)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's config for the trainable: its skip keys and its number."""
        skipped = self.space.suggest(trial)
        attrs = {k: v + sum(self.deltas[c][k] for c in skipped) for k, v in self.base.items()}
        attrs["trainable_params"] = int(attrs["trainable_params"])
        for key, value in {**attrs, "round": self.policy.round_of(trial.number), "phase": PHASE}.items():
            trial.set_user_attr(key, value)
        return {**trial.params, "trial_number": trial.number}


class SkipSearcher(Searcher):
    """Ray Tune's ``Searcher`` on an Optuna study: each Ray trial is one asked Optuna trial, told
    COMPLETE, PRUNED (stopped by the scheduler) or FAIL (errored, NaN/inf) by :func:`trial_outcome`."""

    def __init__(self, *, study: optuna.Study, suggest: SuggestSkip, steps_per_trial: int) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.study, self.suggest_skip, self.steps_per_trial = study, suggest, steps_per_trial
        self.trials: dict[str, optuna.Trial] = {}  # Ray trial id → its Optuna trial
        self.told: set[str] = set()
        self.nodes: dict[str, list[str]] = {}  # Ray trial id → the nodes it reported from, in order

    def suggest(self, trial_id: str) -> dict[str, Any]:
        trial = self.study.ask()
        trial.set_user_attr("ray_trial_id", trial_id)
        self.trials[trial_id] = trial
        return self.suggest_skip(trial)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._live(trial_id, result)
        if trial is None:
            return
        self._record_node(trial_id, result)
        if math.isfinite(result[METRIC]):
            trial.report(result[METRIC], result["training_iteration"])

    def _record_node(self, trial_id: str, result: dict) -> None:
        """User attrs ``node_id`` / ``node_ip``: where the trial reported last; ``previous_node_ids``:
        the nodes it ran on before, if it was retried elsewhere (e.g. its node died)."""
        node = result.get("node_id")
        nodes = self.nodes.setdefault(trial_id, [])
        if node is None or (nodes and nodes[-1] == node):
            return
        trial = self.trials[trial_id]
        if nodes:
            trial.set_user_attr("previous_node_ids", list(nodes))
        nodes.append(node)
        trial.set_user_attr("node_id", node)
        trial.set_user_attr("node_ip", result.get("node_ip"))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._live(trial_id, result)
        if trial is None:
            return
        if result:  # Ray may hand a trial's last report only here, not to on_trial_result
            self._record_node(trial_id, result)
            trial.set_user_attr(STEPS_ATTR, result.get("step"))
        state, value = trial_outcome(result, error, self.steps_per_trial)
        self.study.tell(trial, value, state=state)
        self.told.add(trial_id)

    def _live(self, trial_id: str, result: dict | None) -> optuna.Trial | None:
        """The Optuna trial this Ray trial reports to; None once it is told.

        A trial of a restored experiment that the searcher does not hold (interrupted, or its saved
        state was cut short) is attached at its first report by its user attr ``ray_trial_id``: one
        marked FAIL as interrupted gets a new Optuna trial with the same skip keys (user attr
        ``retry_of``); one told after the searcher's last save is not told twice."""
        if trial_id in self.told:
            return None
        if trial_id not in self.trials:
            stored = latest_trials(self.study).get(trial_id)
            if stored is None or stored.state != TrialState.FAIL:
                self.told.add(trial_id)
                return None
            self.trials[trial_id] = retry_trial(self.study, self.suggest_skip, stored, trial_id)
        return self.trials[trial_id]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        """Restore; a trial whose Optuna trial was closed since is dropped or marked told.

        One marked FAIL as interrupted is attached again, as a retry, when Ray reports it (``_live``),
        or told by ``RaySearch._tell_lost`` if Ray finished it. Ray copies this file to the experiment's
        storage without a rename: one cut short by a kill mid-copy is skipped, and every resumed trial is
        attached from the study at its first report."""
        try:
            state = pickle.loads(Path(checkpoint_path).read_bytes())
        except (EOFError, pickle.UnpicklingError):
            return
        self.__dict__.update(state)
        latest = latest_trials(self.study)
        for trial_id in [t for t in self.trials if t not in self.told]:
            if latest[trial_id].state == TrialState.FAIL:
                del self.trials[trial_id]
            elif latest[trial_id].state.is_finished():  # told after the searcher's last save: not twice
                self.told.add(trial_id)


def latest_trials(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """Ray trial id → its newest Optuna trial (a retry is newer than the trial it retries)."""
    return {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}


def retry_trial(study: optuna.Study, suggest: SuggestSkip, trial: optuna.Trial | optuna.trial.FrozenTrial, trial_id: str) -> optuna.Trial:
    """A new Optuna trial for Ray trial ``trial_id``, with ``trial``'s skip keys (enqueued) and user attrs."""
    study.enqueue_trial(trial.params)
    retry = study.ask()
    suggest(retry)
    retry.set_user_attr("ray_trial_id", trial_id)
    retry.set_user_attr("retry_of", trial.number)
    return retry


# -- progress --------------------------------------------------------------------------------------
class StudyProgress:
    """Advances a reporter as the study's Ray trials finish, read from the storage.

    Tune pickles its callbacks into the experiment and a restored experiment uses the pickled ones, so
    no callback could reach this run's reporter; the study is where every outcome lands anyway.
    """

    def __init__(self, study: optuna.Study, reporter: Reporter, interval: float = 0.5) -> None:
        self.study, self.reporter, self.interval = study, reporter, interval
        self.seen = set(self._finished())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> StudyProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._update()

    def _finished(self) -> dict[int, optuna.trial.FrozenTrial]:
        """The finished Ray trials, from one read of the storage (two reads could disagree on a trial
        that finished between them)."""
        trials = self.study.get_trials(deepcopy=False, states=_FINISHED)
        return {t.number: t for t in trials if t.user_attrs.get("phase") == PHASE}

    def _poll(self) -> None:
        while not self.stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        finished = self._finished()
        for number in sorted(finished.keys() - self.seen):
            self.seen.add(number)
            self.reporter.advance(finished[number].value)


# -- the executor ----------------------------------------------------------------------------------
class RaySearch:
    """The Ray Tune executor of one search; ``run()`` returns Tune's results.

    For tests and drills (never set by a run): ``fail_trials``, Optuna trial numbers that raise after
    each attempt's first report (the retry path); ``hold``, trials held on one node after their first
    report (so that a test can kill that node mid-trial).
    """

    def __init__(self, search: SearchRun, *, fail_trials: frozenset[int] = frozenset(), hold: TrialHold | None = None) -> None:
        self.search, self.spec, self.study, self.reporter = search, search.spec, search.study, search.reporter
        self.ray = search.spec.ray
        self.fail_trials, self.hold = fail_trials, hold

    @functools.cached_property
    def suggest(self) -> SuggestSkip:
        return SuggestSkip.build(self.search.parts.space, self.search.policy, self.search.costs)

    @property
    def storage_path(self) -> str:
        path = self.ray.storage_path or str(Path(self.spec.output_dir) / "ray")
        return path if "://" in path else str(Path(path).expanduser().resolve())

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.study.study_name}"

    def run(self) -> tune.ResultGrid:
        interrupted = fail_running(self.study, PHASE)  # the lease is ours: their driver is dead
        if interrupted:
            self.reporter.log(f"{interrupted} Ray trials in flight when the last driver stopped: marked FAIL, Ray retries them")
        with ray_session(self.ray):
            start_state = self.warm_up()
            tuner, restored = self._tuner()
            self._share(start_state)
            done = self._tell_lost() if restored else 0
            self.reporter.phase("ray trials", self.ray.num_trials - done)
            with StudyProgress(self.study, self.reporter):
                grid = tuner.fit()
        if _finished(grid) < self.ray.num_trials:  # Tune returns normally after Ctrl+C; its state is saved
            raise KeyboardInterrupt
        self._fail_leftovers()
        _keep_last_checkpoints(self.experiment_path)
        return grid

    def _tell_lost(self) -> int:
        """Tell, as retries, the trials Ray finished (trained every step, or stopped by the scheduler)
        whose outcome a kill lost before Optuna was told: their Optuna trials were marked FAIL as
        interrupted and Ray never reports them again. Return how many trials Ray finished."""
        latest = latest_trials(self.study)
        finished = [t for t in tune.ExperimentAnalysis(self.experiment_path).trials if t.status in (Trial.TERMINATED, Trial.ERROR)]
        for ray_trial in finished:
            stored = latest.get(ray_trial.trial_id)
            if stored is None or stored.state != TrialState.FAIL or ray_trial.status == Trial.ERROR:
                continue
            state, value = trial_outcome(ray_trial.last_result, False, self.ray.steps_per_trial)
            if state != TrialState.FAIL:  # a FAIL outcome (NaN loss) is what Optuna holds already
                self.study.tell(retry_trial(self.study, self.suggest, stored, ray_trial.trial_id), value, state=state)
        return len(finished)

    def warm_up(self) -> dict[str, torch.Tensor]:
        """The trainable state every trial starts from: after the shared warm-up (run once here)."""
        path = self.search.warmup_checkpoint or warm_up(self.spec, self.search.parts, self.reporter)
        if path is None:
            return self.search.parts.model.trainable_state_dict()
        return torch.load(path, weights_only=False)["model"]

    def _share(self, start_state: dict[str, torch.Tensor]) -> None:
        """The warm-up state, written next to the trials' checkpoints: every node reads it there."""
        buffer = io.BytesIO()
        torch.save(start_state, buffer)
        fs, path = pyarrow.fs.FileSystem.from_uri(self.experiment_path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{WARMUP_FILE}") as out:
            out.write(buffer.getvalue())

    # -- Ray ----------------------------------------------------------------------------------------
    def _trainable(self) -> Any:
        fn = tune.with_parameters(
            train_subnet, spec=absolute_paths(self.spec), experiment=self.experiment_path, fail_trials=self.fail_trials, hold=self.hold
        )
        return tune.with_resources(fn, {"cpu": self.ray.cpus_per_trial, "gpu": self.ray.gpus_per_trial})

    def _tuner(self) -> tuple[tune.Tuner, bool]:
        """The experiment restored if this study has one, else a new one; and whether restored."""
        path, trainable = self.experiment_path, self._trainable()
        if tune.Tuner.can_restore(path):
            if self.study.trials:
                self.reporter.log(f"resuming the Ray Tune experiment {path}")
                return tune.Tuner.restore(path, trainable), True
            fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)  # the study was started afresh
            fs.delete_dir(fs_path)
        searcher = SkipSearcher(study=self.study, suggest=self.suggest, steps_per_trial=self.ray.steps_per_trial)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=self._scheduler(), num_samples=self.ray.num_trials,
                max_concurrent_trials=self.ray.max_concurrent_trials, reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=self.study.study_name, storage_path=self.storage_path, verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.ray.max_failures),
                # Every checkpoint is kept until the experiment ends: with num_to_keep, a kill between
                # the deletion of a trial's older checkpoint and the next save of the experiment's state
                # leaves that state naming a deleted checkpoint, and the restored trial errors.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
        return tuner, False

    def _scheduler(self) -> TrialScheduler | None:
        return None if self.ray.scheduler is None else SCHEDULERS[self.ray.scheduler](self.ray)

    def _fail_leftovers(self) -> None:
        """The experiment is over: none of its trials can still be running."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("phase") == PHASE:
                self.study.tell(trial.number, state=TrialState.FAIL)


def _trial_dirname(trial: tune.experiment.Trial) -> str:
    return f"optuna{trial.config['trial_number']}_{trial.trial_id}"


def _keep_last_checkpoints(experiment_path: str) -> None:
    """The experiment is over: each trial folder keeps only its last checkpoint (also the folder of a
    trial that a kill made Ray forget, which nothing will restore)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    for folder in _folders(fs, root):
        for old in sorted(c for c in _folders(fs, folder) if c.rsplit("/", 1)[-1].startswith("checkpoint_"))[:-1]:
            fs.delete_dir(old)


def _folders(fs: pyarrow.fs.FileSystem, path: str) -> list[str]:
    return [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(path)) if i.type == pyarrow.fs.FileType.Directory]


def _finished(grid: tune.ResultGrid) -> int:
    return grid.num_terminated + grid.num_errors


def absolute_paths(spec: StudySpec) -> StudySpec:
    """Workers may run elsewhere (another folder, another node): local paths, the output folder and a
    local storage made absolute."""
    spec = spec.with_paths({field: str(Path(path).resolve()) for field, path in spec.local_paths().items() if Path(path).exists()})
    return spec.model_copy(update={"output_dir": str(Path(spec.output_dir).resolve()), "storage": absolute_url(spec.storage)})
