"""What one evaluation run produced: the images, the measurements, the frontier and the gate's decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posescene.evaluation.frontier import Frontier, arm_key
from posescene.evaluation.heldout import HeldOut
from posescene.evaluation.promotion import Decision, Promotion


@dataclass
class EvaluationResult:
    heldout: HeldOut
    arms: list[tuple[str, float]]  # (adapter, scale) in generation order; ("base", 0) first
    images: np.ndarray  # (S, P, A, res, res, 3) uint8: set, pose, arm
    frontier: Frontier
    decision: Decision
    verdict: str
    promotion: Promotion
    drift_rows: list[dict[str, Any]] = field(default_factory=list)
    fidelity_rows: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    out_dir: Path = Path("reports")
    mlflow_run_id: str | None = None
    tracking_uri: str = ""
    seconds: float = 0.0
    generation_seconds: float = 0.0
    scene_fraction: float = float("nan")
    checked_scenes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # what metrics.json holds (set when written)

    def as_dict(self) -> dict[str, Any]:
        """The stage's summary: what ``metrics.json`` holds."""
        return self.metrics

    @property
    def arm_keys(self) -> list[str]:
        return [arm_key(a, s) for a, s in self.arms]

    @property
    def images_per_s(self) -> float:
        n = int(np.prod(self.images.shape[:3]))
        return n / self.generation_seconds if self.generation_seconds > 0 else float("nan")
