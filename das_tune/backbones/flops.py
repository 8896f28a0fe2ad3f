"""FLOPs, parameter counts and latency of backbones and their subnets.

Counts come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; LayerNorm,
softmax and other element-wise work are not counted). The paper's "FLOPs" are multiply-adds (GMACs),
so every figure here is given both ways: ``macs = flops // 2``. Counts are of ``features`` (the backbone
without its task head), in eval mode without gradients; meta-device models and inputs work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from das_tune.backbones.adapters import Adapter, SkippableLayer
from das_tune.backbones.base import evaluating
from das_tune.backbones.cost import Cost
from das_tune.backbones.layered import LayerSkipBackbone


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch 2.13's counter has no formula for the CPU SDPA kernel: without this, attention counts as 0.
CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def _count(run: Callable[[], object], model: nn.Module) -> int:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM) as counter, evaluating(model):
        run()
    return counter.get_total_flops()


def count_flops(backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs (2 per multiply-add) of one ``features`` pass."""
    return _count(lambda: backbone.features(**inputs), backbone)


def _record_calls(backbone: nn.Module, inputs: dict[str, torch.Tensor], kinds: tuple[type, ...]) -> list:
    """``(module, args, kwargs)`` of every call to a module of ``kinds`` in one ``features`` pass."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda mod, args, kwargs, out: calls.append((mod, args, kwargs)), with_kwargs=True)
        for m in backbone.modules() if isinstance(m, kinds)
    ]
    try:
        with evaluating(backbone):
            backbone.features(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _numel(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class CostModel:
    """Cheap per-trial costs of a skip set, from one full count plus one count per candidate layer.

    Skipping a layer changes the cost by a fixed amount (its block out, its skip-adapter in; shapes do
    not change), so the cost of a skip set is the base plus the sum of its layers' deltas. "additional"
    figures are relative to the original model without adapters (the paper's Table A convention).
    Parameter counts exclude the task head.
    """

    def __init__(self, backbone: LayerSkipBackbone, inputs: dict[str, torch.Tensor] | None = None) -> None:
        inputs = backbone.example_inputs() if inputs is None else inputs
        previous = backbone.skipped
        try:
            backbone.set_skipped([])
            self.base_flops = count_flops(backbone, inputs)
            calls = _record_calls(backbone, inputs, (SkippableLayer, Adapter))
        finally:
            backbone.set_skipped(previous)
        adapters = [(m, a) for m, a, k in calls if isinstance(m, Adapter)]
        self.original_flops = self.base_flops - _count(lambda: [m(*a) for m, a in adapters], backbone)
        # Each layer is counted alone, on the input it saw in the full pass.
        self.delta_flops = {
            m.name: _skip_flops(m, a[0]) - _count(lambda: m.layer(*a, **k), m)
            for m, a, k in calls if isinstance(m, SkippableLayer)
        }
        head = backbone.task_head
        self.base_params = _numel(backbone) - _numel(head)
        self.base_trainable = _numel(backbone, True) - _numel(head, True)
        self.layers = backbone.candidates()

    def cost(self, skipped: Iterable[str]) -> Cost:
        """Costs of the subnet exported with ``skipped`` removed, for the inputs given at construction."""
        skipped = set(skipped)
        flops = self.base_flops + sum(self.delta_flops[name] for name in skipped)
        params, trainable = self.base_params, self.base_trainable
        for name, layer in self.layers.items():
            dropped = layer.layer if name in skipped else layer.skip_adapter
            params -= _numel(dropped)
            trainable -= _numel(dropped, True)
        additional = flops - self.original_flops
        return Cost(
            macs=flops // 2, flops=flops, additional_macs=additional // 2, additional_flops=additional,
            params=params, trainable_params=trainable,
        )


def _skip_flops(layer: SkippableLayer, x: torch.Tensor) -> int:
    """FLOPs of a skipped layer: its skip-adapter's, none for plain layer removal (width 0)."""
    return 0 if layer.skip_adapter is None else _count(lambda: layer.skip_adapter(x), layer)


@dataclass(frozen=True)
class Timing:
    """Seconds of repeated passes: the median and the interquartile range."""

    median: float
    q25: float
    q75: float

    def overlaps(self, other: Timing) -> bool:
        """Whether the two interquartile ranges overlap: a difference of medians then is within the noise."""
        return self.q25 <= other.q75 and other.q25 <= self.q75


def measure_latency(
    model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 20, warmup: int = 3
) -> Timing:
    """Seconds of one ``features`` pass over ``repeats`` timed passes (eval, no gradients; CUDA synchronised)."""
    sync = torch.cuda.synchronize if any(t.is_cuda for t in inputs.values()) else (lambda: None)
    times = []
    with evaluating(model):
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model.features(**inputs)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    q25, median, q75 = statistics.quantiles(times, n=4)
    return Timing(median=median, q25=q25, q75=q75)
