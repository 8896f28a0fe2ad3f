"""The one-shot (weight-sharing supernet) search, the paper's procedure.

After the shared warm-up (:func:`~das_tune.search.supernet.warm_up`, uniformly random subnets), the
search epochs train, at every step, the subnet the skip policy draws (DAS: ∝ its skip probabilities;
any other sampler: uniform), and every ``observe_every`` steps run a redundancy observation: one round
of the policy's ``round_size`` Optuna trials, each a subset proposed by the sampler, scored without
gradients on one observation batch (as ``search.observation`` declares) and told. Steps are
micro-batches (the reference's ``das_turn`` counts them); the optimizer steps once every ``accumulate``.

Resume is exact: a search killed at any point and run again ends with the same trials (numbers,
subsets, values) and the same choice as one never interrupted. The supernet (``Supernet``) and the
policy are checkpointed (atomically) after every observation round and at every epoch's end; a
resumed search replays the training steps since then, which are deterministic, and round ``r`` is
always trials ``r·K … r·K+K-1``: trials of the round that were told before the stop are kept as they
are, one left RUNNING by the dead process is scored and told now (its subset is the one it had, or
the one its seeded draw gives again), and the missing ones are asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna

from das_tune.errors import RunFailure, UserError
from das_tune.search.base import SearchRun
from das_tune.search.supernet import Supernet, warm_up
from das_tune.tasks.base import Batch
from das_tune.training import loop

PHASE = "search"


def run(search: SearchRun) -> None:
    """The executor: warm up (or start from the run's shared warm-up), then search."""
    start = search.warmup_checkpoint or warm_up(search.spec, search.parts, search.reporter)
    OneShotSearch(search).run(start)


class OneShotSearch:
    def __init__(self, search: SearchRun, net: Supernet | None = None) -> None:
        self.search, self.study, self.policy, self.reporter = search, search.study, search.policy, search.reporter
        spec, parts = search.spec, search.parts
        self.spec, self.model, self.task = spec.search, parts.model, parts.task
        self.net = net or Supernet(spec, parts)
        self.observations: Iterator[Batch] = self.task.observation_batches(
            self.model, self.spec.batch_size, self.spec.observation_batch_count, split=self.spec.observation.split
        )
        self.probabilities = self._probabilities()
        self.net.extra_state = lambda: {"probabilities": self.probabilities}  # the policy the next steps train with
        self._first_round = True

    def run(self, start: Path | None) -> None:
        """Search epochs from ``start`` (the warm-up checkpoint), or from this search's own checkpoint."""
        self._restore(start)
        epochs = self.spec.warmup_epochs + self.spec.search_epochs
        for epoch in range(max(self.net.position.epoch, self.spec.warmup_epochs), epochs):
            self.reporter.phase(f"search {epoch + 1}/{epochs}", self.net.steps_per_epoch)
            self.net.train_epoch(epoch, self._draw, self._after_step)
            self._log_choice(epoch)
        if not self.net.position.finished:  # a finished search's checkpoint is left as it is
            self.net.position.finished = True
            self.net.save()

    def _draw(self) -> frozenset[str]:
        return self.policy.draw(self.probabilities, self.net.rng)

    def _after_step(self, loss: float) -> None:
        if self.net.position.global_step % self.spec.observe_every == 0:
            self._observation_round()
            self.net.save()
        self.reporter.advance(loss, self.probabilities)

    def _observation_round(self) -> None:
        """Score round ``r``'s trials ``r·K … r·K+K-1`` and tell them: kept if told before a stop,
        finished if a dead process left one RUNNING, asked if missing."""
        batch = next(self.observations)
        space = self.search.parts.space
        k, r = self.policy.round_size, self.net.position.rounds
        earlier = {}
        if self._first_round:  # only a new process can find trials of its round already there
            earlier = {t.number: t for t in self.study.get_trials(deepcopy=False) if r * k <= t.number < (r + 1) * k}
            self._first_round = False
        for number in range(r * k, (r + 1) * k):
            old = earlier.get(number)
            if old is not None and old.state.is_finished():
                continue
            trial = optuna.Trial(self.study, old._trial_id) if old is not None else self.study.ask()
            if trial.number != number:
                raise UserError(
                    f"study {self.study.study_name!r} has trials this search did not ask (trial {trial.number} where "
                    f"round {r} expects {number}); pass --fresh, or --set study_name=NEW"
                )
            skipped = space.suggest(trial)
            self.search.record(trial, skipped, PHASE)
            value = loop.observe(self.model, self.task, batch, skipped, self.spec.observation.mode)
            if not math.isfinite(value):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise RunFailure(
                    f"the search diverged: observed loss {value} in round {r} (search.lr = {self.spec.lr:g}); "
                    "lower search.lr and run again with --fresh"
                )
            self.study.tell(trial, self.search.objectives(value, skipped))
        self.net.position.rounds += 1
        self.probabilities = self._probabilities()

    def _probabilities(self) -> dict[str, float] | None:
        return self.policy.probabilities(self.study)

    def _log_choice(self, epoch: int) -> None:
        self.reporter.log(f"epoch {epoch + 1}: current choice {self.policy.describe(self.study)}")

    def _restore(self, start: Path | None) -> None:
        own = self.net.restore(start)
        pos = self.net.position
        saved = self.net.restored_extra.get("probabilities") if own else None  # older checkpoints: none
        self.probabilities = saved or self._probabilities()  # not the study's: it may hold the next round
        for _ in range(pos.rounds % self.spec.observation_batch_count):
            next(self.observations)
        resumed = own and (pos.epoch, pos.step_in_epoch) != (self.spec.warmup_epochs, 0)
        if resumed and not pos.finished:
            self.reporter.log(f"resuming the search at epoch {pos.epoch + 1}, step {pos.step_in_epoch}")
