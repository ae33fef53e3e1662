"""Prefect task of the ``train`` stage: fine-tune the secondary adapter (posescene.train)."""

from __future__ import annotations

from typing import Any

from prefect import task

from posescene.config import Params
from posescene.train import train


@task(name="train")
def train_task(params: Params, resume: bool = True, resume_from: str | None = None) -> dict[str, Any]:
    """No cache key (DVC decides when to retrain) and no retries: a rerun resumes from the last checkpoint
    by itself, and a divergence needs a human to lower train.lr, not the same run again."""
    result = train(params, resume=resume, resume_from=resume_from)
    return {
        "metrics": result.metrics,
        "adapter_dir": str(result.adapter_dir),
        "mlflow_run_id": result.run_id,
        "mlflow_run_link": result.run_link,
        "model_version": result.model_version,
        "resumed_from_step": result.resumed_from,
    }
