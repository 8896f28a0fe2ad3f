"""The one-shot (weight-sharing supernet) search, the paper's procedure.

After the shared warm-up (:func:`~das_tune.search.supernet.warm_up`, uniformly random subnets), the
search epochs train, at every step, the subnet the skip policy draws (DAS: ∝ its skip probabilities;
any other sampler: uniform), and every ``observe_every`` steps run a redundancy observation: one round
of the policy's ``round_size`` Optuna trials, each a subset proposed by the sampler, scored without
gradients on one observation batch (as ``search.observation`` declares) and told. Steps are
micro-batches (the reference's ``das_turn`` counts them); the optimizer steps once every ``accumulate``.

The supernet is checkpointed after every observation round, so an interrupted search resumes where
it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from das_tune import training
from das_tune.search.base import SearchRun
from das_tune.search.supernet import Supernet, warm_up
from das_tune.tasks.base import Batch

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

    def run(self, start: Path | None) -> None:
        """Search epochs from ``start`` (the warm-up checkpoint), or from this search's own checkpoint."""
        self._restore(start)
        epochs = self.spec.warmup_epochs + self.spec.search_epochs
        for epoch in range(max(self.net.position.epoch, self.spec.warmup_epochs), epochs):
            self.reporter.phase(f"search {epoch + 1}/{epochs}", self.net.steps_per_epoch)
            self.net.train_epoch(epoch, self._draw, self._after_step)
            self._log_choice(epoch)
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
        """Ask trials until the policy's round is full, score each subnet, tell."""
        batch = next(self.observations)
        space = self.search.parts.space
        while True:
            trial = self.study.ask()
            skipped = space.suggest(trial)
            self.search.record(trial, skipped, PHASE)
            loss = training.observe(self.model, self.task, batch, skipped, self.spec.observation.mode)
            self.study.tell(trial, self.search.objectives(loss, skipped))
            if self.policy.closes_round(trial.number):
                break
        self.net.position.rounds += 1
        self.probabilities = self._probabilities()

    def _probabilities(self) -> dict[str, float] | None:
        return self.policy.probabilities(self.study)

    def _log_choice(self, epoch: int) -> None:
        self.reporter.log(f"epoch {epoch + 1}: current choice {self.policy.describe(self.study)}")

    def _restore(self, start: Path | None) -> None:
        own = self.net.restore(start)
        pos = self.net.position
        self.probabilities = self._probabilities()
        for _ in range(pos.rounds % self.spec.observation_batch_count):
            next(self.observations)
        resumed = own and (pos.epoch, pos.step_in_epoch) != (self.spec.warmup_epochs, 0)
        if resumed and not pos.finished:
            self.reporter.log(f"resuming the search at epoch {pos.epoch + 1}, step {pos.step_in_epoch}")
