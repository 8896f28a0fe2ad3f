"""A target on a retrained front: "the cheapest subnet within 1 point of the full model".

A rule is ``METRIC OP BOUND`` with OP one of ``>= > <= <`` and BOUND a number or ``full`` plus or minus
a number (``accuracy>=full-0.01``: at most 0.01 below the retrained full model), and/or a cost cap
``--max-gmacs X`` (at most X additional GMACs, the front's x axis: negative means cheaper than the
original model). The pick is the cheapest retrained point (fewest additional GMACs; ties: the better
metric) that meets every part; the full model is a point too.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from das_tune.artifacts.results import FrontPoint, TargetResult
from das_tune.errors import UserError

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_RULE = re.compile(
    rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*(?:(full)\s*(?:([+-])\s*({_NUMBER}))?|([+-]?(?:{_NUMBER})))\s*$"
)
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """A parsed target: a metric bound (absolute, or relative to the full model) and/or a GMACs cap."""

    metric: str | None = None
    op: str | None = None
    relative: bool = False  # the bound is the full model's value plus ``bound``
    bound: float = 0.0
    max_gmacs: float | None = None

    @property
    def text(self) -> str:
        parts = []
        if self.metric is not None:
            bound = f"full{self.bound:+g}" if self.relative and self.bound else ("full" if self.relative else f"{self.bound:g}")
            parts.append(f"{self.metric}{self.op}{bound}")
        if self.max_gmacs is not None:
            parts.append(f"additional GMACs <= {self.max_gmacs:g}")
        return " and ".join(parts)

    def threshold(self, full: FrontPoint) -> float | None:
        if self.metric is None:
            return None
        return full.value + self.bound if self.relative else self.bound

    def check_metric(self, metric: str) -> None:
        """Bad input before anything runs: the rule must name the task's metric."""
        if self.metric is not None and self.metric != metric:
            raise UserError(f"--target {self.text!r}: this task's metric is {metric!r}, not {self.metric!r}")

    def meets(self, point: FrontPoint, full: FrontPoint) -> bool:
        if self.max_gmacs is not None and point.additional_gmacs > self.max_gmacs:
            return False
        return self.metric is None or _OPS[self.op](point.value, self.threshold(full))


def parse_target(rule: str | None, max_gmacs: float | None = None) -> Target | None:
    """``"accuracy>=full-0.01"`` and/or a GMACs cap → a Target (None when neither is given)."""
    if rule is None and max_gmacs is None:
        return None
    if rule is None:
        return Target(max_gmacs=max_gmacs)
    match = _RULE.match(rule)
    if match is None:
        raise UserError(f"--target {rule!r}: expected METRIC OP BOUND, e.g. accuracy>=full-0.01 or accuracy>=0.9 (OP: >=, >, <=, <)")
    metric, op, full, sign, offset, number = match.groups()
    if full:
        bound = float(offset or 0.0) * (-1 if sign == "-" else 1)
        return Target(metric=metric, op=op, relative=True, bound=bound, max_gmacs=max_gmacs)
    return Target(metric=metric, op=op, bound=float(number), max_gmacs=max_gmacs)


def choose(target: Target, full: FrontPoint, ladder: list[FrontPoint]) -> TargetResult:
    """The cheapest retrained point that meets ``target``, and why; or why none does."""
    points = sorted([full, *ladder], key=lambda p: (p.additional_gmacs, -p.value))
    meeting = [p for p in points if target.meets(p, full)]
    threshold = target.threshold(full)
    where = f" (full model: {full.metric} {full.value:.4f}, so the bound is {threshold:.4f})" if target.relative else ""
    if not meeting:
        best = max(points, key=lambda p: p.value)
        return TargetResult(
            rule=target.text, met=False, pick=None,
            reason=f"no retrained subnet meets {target.text}{where}; the best is {best.name} with {best.metric} {best.value:.4f} "
                   f"at {best.additional_gmacs:+.4f} additional GMACs",
        )
    pick = meeting[0]
    cheaper = [p for p in points if p.additional_gmacs < pick.additional_gmacs]
    missed = ", ".join(f"{p.name} ({p.metric} {p.value:.4f}, {p.additional_gmacs:+.4f} GMACs)" for p in cheaper)
    reason = (
        f"{pick.name} (skip {pick.skipped or 'nothing'}) is the cheapest retrained subnet that meets {target.text}{where}: "
        f"{pick.metric} {pick.value:.4f} at {pick.additional_gmacs:+.4f} additional GMACs"
        + (f"; the cheaper ones miss it: {missed}" if missed else "")
    )
    return TargetResult(rule=target.text, met=True, pick=pick.name, skipped=pick.skipped, reason=reason)
