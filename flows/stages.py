"""The stage registry's orchestration side: check stage names, find a stage's flow.

The table itself is :mod:`posescene.stages` (names, outputs, library entry points, retry and cache policy); it is
re-read here so that the flows, the deployments and the tests find it where the flows are. Each stage's flow is
``flows.<name>.<name>_flow``; ``python -m flows.<name>`` runs it alone.

No Prefect import here, so reading the list (the CLI, the docs test) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

from posescene.stages import BY_NAME, DATA_STAGES, PIPELINE_STAGES, REGISTRY, Stage

__all__ = ["BY_NAME", "DATA_STAGES", "PIPELINE_STAGES", "REGISTRY", "Stage", "check_stages", "stage_flow"]


def check_stages(names: list[str] | tuple[str, ...], allowed: tuple[str, ...] = PIPELINE_STAGES) -> None:
    """Raise ``ValueError`` naming the unknown stages and the allowed ones."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(allowed)}")


def stage_flow(name: str) -> Any:
    """The Prefect flow object of stage ``name`` (``flows.<name>.<name>_flow``); imports its module."""
    check_stages([name], tuple(BY_NAME))
    module = importlib.import_module(f"flows.{name}")
    return getattr(module, f"{name}_flow")
