"""Prefect task of the ``bootstrap`` stage: train the built-in world (minutes on a CPU; frozen in DVC)."""

from __future__ import annotations

from typing import Any

from prefect import task

from posescene.config import Params
from posescene.world.bootstrap import bootstrap


@task(name="bootstrap")
def bootstrap_task(params: Params, out_dir: str, resume: bool = False) -> dict[str, Any]:
    """No cache key and no retries: retraining is always deliberate, and a failure is not an I/O flake
    (``resume`` continues from the stage checkpoints instead)."""
    return bootstrap(params, out_dir=out_dir, resume=resume)
