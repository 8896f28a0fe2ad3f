"""The contract every skippable backbone keeps.

A backbone is a frozen pre-trained transformer whose named layers (the search spaces' names: ``FL0``,
``FV3``, ``LEn7``, ``En2`` ...) can each be switched to a skip-adapter at run time. Kept layers carry
parameter-efficient adapters. Only adapters, skip-adapters, the task head and a few named extra
modules (e.g. a patch embedding) train; everything else is frozen.

The backbone knows nothing of samplers, studies or tasks: a task hands it a head (``task_head``) and
calls :meth:`preprocess`, :meth:`features` and ``forward``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients; the previous mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class SkippableBackbone(nn.Module, ABC):
    """A frozen transformer with switchable layers.

    Subclasses set ``layer_names`` (ordered, the spaces' naming) and ``feature_dim`` (width of the
    pooled features that :meth:`features` returns), and implement the abstract methods.
    """

    layer_names: list[str]
    feature_dim: int
    # Options a tiny model sets itself (its small sizes, the packaged tokenizer): tiny mode drops
    # them from a study's options, so the tiny model is the same whatever the study declares.
    tiny_ignores: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.task_head: nn.Module | None = None

    # -- the skip switch -------------------------------------------------------------------------
    @abstractmethod
    def set_skipped(self, names: Iterable[str]) -> None:
        """Skip exactly these layers from the next forward on (an empty set restores all)."""

    @property
    @abstractmethod
    def skipped(self) -> frozenset[str]:
        """The layers currently skipped."""

    @abstractmethod
    def export(self, names: Iterable[str]) -> SkippableBackbone:
        """A new backbone in which ``names`` are really gone (their skip-adapters stay).

        The result computes exactly what this supernet computes with ``set_skipped(names)`` and
        shares no parameters with it.
        """

    # -- inputs and outputs -----------------------------------------------------------------------
    @abstractmethod
    def preprocess(
        self,
        texts: list[str],
        images: list[Any] | None = None,
        text_pairs: list[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise texts (and second sentences of pairs) and turn PIL images into tensors with the
        backbone's own tokenizer / image processor. Text-only backbones reject images."""

    @abstractmethod
    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Inputs at the paper's sizes (tiny sizes for tiny models), for FLOPs and latency."""

    @abstractmethod
    def features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape ``[batch, feature_dim]``. Vision-language backbones also take
        ``image_token_type`` (1, or up to ``count`` after :meth:`use_image_token_types`)."""

    def use_image_token_types(self, count: int) -> None:
        """Image token types 1..``count``, trainable, the new ones copies of the last (NLVR2 types its
        two images 1 and 2: a 3-row table with row 2 := row 1)."""
        from das_tune.errors import UserError

        raise UserError(f"{type(self).__name__} takes no images, so it cannot tell two images apart")

    @classmethod
    @abstractmethod
    def build(cls, checkpoint: str | None = None, tiny: bool = False, **options: Any) -> SkippableBackbone:
        """The backbone from a local ``checkpoint``, or a tiny random one of the same family."""

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        pooled = self.features(**inputs)
        return pooled if self.task_head is None else self.task_head(pooled)

    # -- training ---------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def cross_modal_modules(self) -> list[nn.Module]:
        """Modules trained at the cross-modal lr multiplier (the reference's names with "cross_modal")."""
        return []

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changed (adapters, skip-adapters, head, extras): the artifact to save."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}
