"""Training-free layer scores, the baselines DAS is compared with besides other samplers.

Every method gives each candidate layer a *skippability* score (higher: skip it first); a method's
pick is the ``num_skip`` layers with the highest scores (``SkipSpace.top``), and a subset's score is the sum of its
layers' scores (what Kendall τ compares with the true per-subset results).

* ``block_influence`` (ShortGPT): 1 − cos(input token, output token) of a layer, averaged over the
  tokens of a data sample; a layer that changes its input least is the most skippable.
* ``angular`` ("The Unreasonable Ineffectiveness of the Deeper Layers", for a single layer):
  arccos(cos)/π between a layer's input and output tokens, averaged the same way.
* ``last_k`` / ``first_k``: skip the last / first ``num_skip`` candidates in the space's order.

The similarity methods run on the *warm-up supernet* with every layer kept, not on the pre-trained
model: our backbones carry newly initialised parts (adapters whose up-projection is not zero, and for
the vision-language models a random patch embedding), so before any training the inputs the frozen
layers see are not the ones they will see on the task. The warm-up is shared by every method of a
seed anyway, so this costs nothing extra. The data sample is the observation batches DAS scores on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from das_tune.backbones.base import evaluating
from das_tune.backbones.layered import LayerSkipBackbone
from das_tune.spec.spaces import SkipSpace
from das_tune.tasks.base import Batch, Task

TokenScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def block_influence(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per token: 1 − cos(x_t, y_t) for a layer's input ``x`` and output ``y`` (``[..., dim]``)."""
    return 1.0 - F.cosine_similarity(x, y, dim=-1)


def angular_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per token: arccos(cos(x_t, y_t)) / π, in [0, 1]."""
    return torch.arccos(F.cosine_similarity(x, y, dim=-1).clamp(-1.0, 1.0)) / math.pi


SIMILARITY_METHODS: dict[str, TokenScore] = {"block_influence": block_influence, "angular": angular_distance}
POSITION_METHODS = ("last_k", "first_k")
METHODS = (*SIMILARITY_METHODS, *POSITION_METHODS)


def layer_distances(model: LayerSkipBackbone, task: Task, batches: Iterable[Batch], score: TokenScore) -> dict[str, float]:
    """Each candidate layer's ``score`` between its input and output tokens, averaged over all tokens
    of ``batches``, with every layer kept (forward hooks on the skippable layers)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def record(layer, args, output):
        values = score(args[0].float(), output.float())
        sums[layer.name] = sums.get(layer.name, 0.0) + values.sum().item()
        counts[layer.name] = counts.get(layer.name, 0) + values.numel()

    model.set_skipped(())
    hooks = [layer.register_forward_hook(record) for layer in model.candidates().values()]
    try:
        with evaluating(model):
            for batch in batches:
                task.loss(model, batch)  # the task's own forward (e.g. NLVR2's two passes)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: sums[name] / counts[name] for name in sums}


def layer_scores(method: str, space: SkipSpace, model: LayerSkipBackbone, task: Task, batches: list[Batch]) -> dict[str, float]:
    """Skippability of every candidate of ``space`` by ``method`` (higher: skip first)."""
    if method in SIMILARITY_METHODS:
        distances = layer_distances(model, task, batches, SIMILARITY_METHODS[method])
        return {name: -distances[name] for name in space.candidates}
    position = {name: float(i) for i, name in enumerate(space.candidates)}
    if method == "last_k":
        return position
    if method == "first_k":
        return {name: -i for name, i in position.items()}
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def sample_batches(task: Task, model: LayerSkipBackbone, batch_size: int, num_batches: int) -> list[Batch]:
    """The observation batches DAS scores subnets on (the first ``num_batches`` of the val split)."""
    return list(itertools.islice(task.observation_batches(model, batch_size, num_batches), num_batches))
