"""The data-parallel one-shot search: one supernet trained on ``search.workers`` workers.

The executor ``data_parallel`` of the registry, chosen when ``search.workers > 1``. Each worker (a
rank of a PyTorch process group, launched by Ray Train's ``TorchTrainer``: gloo on CPU, NCCL on GPUs)
runs the shared warm-up and the one-shot loop of :class:`OneShotSearch` on a
:class:`DataParallelSupernet`, with three changes:

* **the same subnet on every rank.** Every rank holds the same seeded generator and the same skip
  probabilities, so every step draws the same subnet everywhere; nothing has to be sent for it;
* **one global batch, split.** Every rank builds the same global batch (the order depends only on
  the seed and the epoch) and trains on its rows ``rank::workers``; each rank's loss is weighted by
  its share of the rows and the gradients are averaged (one all-reduce per step), so a step equals
  one process's step on the whole batch, whatever the split;
* **one observation round, on rank 0.** Only rank 0 holds the study: it asks the round's trials,
  scores them on the observation batch and tells them, then broadcasts the new skip probabilities;
  every rank checks that it holds the same probabilities and draws as rank 0 after each round.

Losses must be means over the examples of a batch (classification, VQA), so that the weighted
shares add up to the whole batch's loss; every rank reports the whole batch's loss (so a NaN stops
every rank at the same step).

Resume and one writer, as in the one-shot search: the driver holds the study's lease and the run
folder's lock for the whole fit (``runner.exclusive``; its Ray workers end with it). Rank 0 writes
the checkpoints (``run_dir`` must be storage every worker reads, as on one machine), gathering every
rank's own torch generator and open accumulation window's gradients into them, and recovers the
study's interrupted round exactly as the one-shot loop does; so a killed search resumes to the same
trials — with the same number of workers. A checkpoint of another number of workers is refused
(``checks.check_resumable``), or ``--fresh`` starts again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from das_tune.artifacts.run_folder import CHECKPOINT, RANKS_KEY, RAY_TRAIN_FOLDER, write_checkpoint
from das_tune.errors import RunFailure, UserError
from das_tune.progress import Reporter
from das_tune.samplers import sampler_from_record, sampler_record, skip_policy
from das_tune.search.base import SearchRun
from das_tune.search.oneshot import OneShotSearch
from das_tune.search.prepare import prepare_search
from das_tune.search.supernet import Supernet, warm_up
from das_tune.spec.study import StudySpec
from das_tune.tasks.base import Batch
from das_tune.training import loop
from das_tune.training.components import Components


def rows_of(batch: Batch, rank: int, workers: int) -> tuple[Batch, int, int]:
    """Rank ``rank``'s rows of ``batch`` (every ``workers``-th from ``rank``), their count and the batch's."""
    total = _batch_rows(batch)
    part = {key: _take(value, total, rank, workers) for key, value in batch.items()}
    return part, len(range(rank, total, workers)), total


def _batch_rows(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
        if isinstance(value, Mapping):
            return _batch_rows(value)
    raise ValueError("a batch without tensors cannot be split between workers")


def _take(value: Any, total: int, rank: int, workers: int) -> Any:
    """The rows of one batch field (tensors and lists of ``total`` rows, nested mappings of them)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total:
        return value[rank::workers]
    if isinstance(value, (list, tuple)) and len(value) == total:
        return type(value)(value[rank::workers])
    if isinstance(value, Mapping):
        return {key: _take(v, total, rank, workers) for key, v in value.items()}
    return value


def average_gradients(parameters: list[torch.nn.Parameter], workers: int) -> None:
    """Average the gradients of ``parameters`` over the ranks in one all-reduce. Parameters without a
    gradient (the layers the step's subnet skips, the same on every rank) are left without one."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= workers
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class DataParallelSupernet(Supernet):
    """One rank's copy of the supernet: the same weights as rank 0's, a split batch per step, averaged
    gradients; rank 0 alone writes the checkpoints."""

    def __init__(self, spec: StudySpec, parts: Components, *, rank: int, workers: int) -> None:
        super().__init__(spec, parts)
        self.rank, self.workers = rank, workers  # before any restore: it checks the checkpoint's workers
        for p in self.model.trainable_parameters():  # start from rank 0's weights, as DDP does
            dist.broadcast(p.data, 0)

    def train_step(self, batch: Batch, step: int) -> float:
        """This rank's rows of micro-batch ``step``, weighted by their share; the gradients are averaged
        over the ranks when the accumulation window ends, just before the optimizer steps."""
        self.model.train()
        part, mine, total = rows_of(batch, self.rank, self.workers)
        if mine:
            loss = self.task.loss(self.model, part) * (mine * self.workers / total)
        else:  # fewer rows than workers: a zero share, with the same gradients' shapes as the others
            loss = self.task.loss(self.model, batch) * 0.0
        (loss / self.trainer.window_size(step)).backward()
        if self.trainer.ends_window(step):
            average_gradients(self.model.trainable_parameters(), self.workers)
        self.trainer.step_if_window_ends(step)
        total_loss = loss.detach().clone()  # the whole batch's loss, the same on every rank (a NaN stops them all)
        dist.all_reduce(total_loss)
        return total_loss.item() / self.workers

    def save(self, filename: str = CHECKPOINT) -> None:
        """Rank 0 writes the checkpoint, with every rank's own part of the state: its torch generator
        (dropout draws differ per rank) and an open accumulation window's gradients (its rows' share)."""
        state = self.state()
        mine = {"torch_rng": state["torch_rng"], "cuda_rng": state["cuda_rng"],
                "grads": {n: g.cpu() for n, g in state["trainer"]["grads"].items()}}
        ranks = [None] * self.workers if self.rank == 0 else None
        dist.gather_object(mine, ranks, dst=0)
        if self.rank == 0:
            write_checkpoint(self.run_dir / filename, {**state, RANKS_KEY: ranks})

    def restore(self, fallback: Path | None = None) -> bool:
        dist.barrier()  # rank 0 has written what the others read
        own = super().restore(fallback)
        ranks = self.restored_extra.get(RANKS_KEY)
        if ranks is not None and len(ranks) == self.workers:
            torch.set_rng_state(ranks[self.rank]["torch_rng"])
            loop.set_cuda_rng_state(ranks[self.rank].get("cuda_rng"))
            self.trainer.load_grads(ranks[self.rank]["grads"])
        return own


class DataParallelSearch(OneShotSearch):
    """One rank of the data-parallel one-shot loop; only rank 0's ``search`` holds the study."""

    def __init__(self, search: SearchRun, net: DataParallelSupernet) -> None:
        self.rank, self.workers = net.rank, net.workers
        super().__init__(search, net)
        self._share_policy()

    def _probabilities(self) -> dict[str, float] | None:
        return super()._probabilities() if self.rank == 0 else None  # the others get rank 0's

    def _observation_round(self) -> None:
        if self.rank == 0:
            super()._observation_round()
        else:
            self.net.position.rounds += 1
        self._share_policy()

    def _log_choice(self, epoch: int) -> None:
        if self.rank == 0:
            super()._log_choice(epoch)

    def _restore(self, start: Path | None) -> None:
        super()._restore(start)
        self._share_policy()

    def _share_policy(self) -> None:
        """Rank 0's skip probabilities on every rank; then check every rank holds the same policy and
        generator state (a diverged rank would train other subnets than the ones observed)."""
        shared = [self.probabilities]
        dist.broadcast_object_list(shared, src=0)
        self.probabilities = shared[0]
        policy = json.dumps([self.probabilities, str(self.net.rng.bit_generator.state)], sort_keys=True)
        digest = hashlib.sha256(policy.encode()).hexdigest()
        digests: list[str | None] = [None] * self.workers
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel ranks diverged: rank {digests.index(digest)} holds another skip policy than rank 0")


# -- the executor -----------------------------------------------------------------------------------
def run(search: SearchRun) -> None:
    """The executor: the search of ``search.spec`` on ``search.workers`` Ray Train workers."""
    from das_tune.search.ray_cluster import ray_session

    spec = search.spec
    with ray_session(spec.ray, num_cpus=spec.search.workers):
        _fit(spec, search.warmup_checkpoint, search.reporter)


def _fit(spec: StudySpec, warmup_checkpoint: Path | None, reporter: Reporter) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from das_tune.search.ray_tune import absolute_paths

    spec = absolute_paths(spec)
    gpu = torch.cuda.is_available()
    reporter.log(f"data-parallel search on {spec.search.workers} workers ({'NCCL' if gpu else 'gloo'})")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"spec": spec.model_dump_json(), "warmup": str(warmup_checkpoint.resolve()) if warmup_checkpoint else None},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=spec.search.workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=spec.resolved_study_name, storage_path=str(spec.run_dir / RAY_TRAIN_FOLDER)),
    )
    try:
        trainer.fit()
    except Exception as err:  # a worker's bad input or known failure: as if this process had raised it
        known = _known_cause(err)
        if known is None:
            raise
        raise known from None


def _known_cause(err: BaseException | None) -> Exception | None:
    """The UserError or RunFailure a Ray Train worker raised, found inside Ray's wrapping errors."""
    while err is not None:
        if type(err) in (UserError, RunFailure):
            return err
        cause = getattr(err, "cause", None)  # a RayTaskError's original exception
        if isinstance(cause, (UserError, RunFailure)):
            return cause
        failures = getattr(err, "worker_failures", None) or {}  # Ray Train's WorkerGroupError: by rank
        for rank in sorted(failures):
            known = _known_cause(failures[rank])
            if known is not None:
                return known
        err = err.__cause__ or err.__context__
    return None


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its rank of the warm-up and the search."""
    import ray.train

    context = ray.train.get_context()
    device = f"cuda:{context.get_local_rank()}" if torch.cuda.is_available() else None
    spec = StudySpec.model_validate_json(config["spec"])
    run_rank(spec, context.get_world_rank(), context.get_world_size(), Path(config["warmup"]) if config["warmup"] else None, device)


def run_rank(spec: StudySpec, rank: int, workers: int, warmup_checkpoint: Path | None, device: str | None = None) -> None:
    """Rank ``rank`` of the warm-up and the search (rank 0 with the study), in a process group that is
    already initialised (Ray Train's, or a test's)."""
    from das_tune.training.components import build_components

    loop.seed_everything(spec.seed)
    parts = build_components(spec)
    if device is not None:
        parts.model.to(device)
    search = prepare_search(spec, parts, reporter=Reporter()) if rank == 0 else _follower(spec, parts)
    supernet = lambda: DataParallelSupernet(spec, parts, rank=rank, workers=workers)  # noqa: E731
    start = warmup_checkpoint or warm_up(spec, parts, Reporter(), net=supernet())
    DataParallelSearch(search, supernet()).run(start)


def _follower(spec: StudySpec, parts: Components) -> SearchRun:
    """A rank above 0: the study's skip policy (to draw subnets), no study, storage or cost model."""
    record = sampler_record(spec.sampler.name, spec.seed, spec.sampler.own_options, spec.search.round_size)
    policy = skip_policy(sampler_from_record(record, parts.space), parts.space, spec.search.round_size)
    return SearchRun(spec, parts, study=None, policy=policy, costs=None, reporter=Reporter())  # type: ignore[arg-type]
