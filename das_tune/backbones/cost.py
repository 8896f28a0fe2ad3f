"""What a subnet costs, as counts (``flops.CostModel`` computes them). Free of torch: ``metrics.json``
carries these counts (``artifacts.results.RetrainMetrics``), and the CLI reads that file before torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CostCounts(BaseModel):
    """MACs, FLOPs and parameters of a subnet; "additional" is relative to the original model without adapters."""

    model_config = ConfigDict(extra="ignore")

    macs: int
    flops: int
    additional_macs: int
    additional_flops: int
    params: int
    trainable_params: int


class Cost(CostCounts):
    """The counts of one skip set, with the figures derived from them (frozen: one per skip set)."""

    model_config = ConfigDict(frozen=True)

    @property
    def additional_gmacs(self) -> float:
        """The paper's "FLOPs" (Table A): additional multiply-accumulates, in G."""
        return self.additional_macs / 1e9

    def trial_attrs(self) -> dict[str, float | int]:
        """What each trial records of its subnet (user attributes, shown in the dashboard)."""
        return {"additional_gmacs": self.additional_gmacs, "trainable_params": self.trainable_params}
