"""The stage registry: every posescene stage, in pipeline order, with what it writes.

One list read by the pipeline flow (which stages run, in which order), the data flow (the data half),
the deployments (one ``<stage>/on-demand`` each) and the docs; ``dvc.yaml`` has one stage per entry with
the same outputs (``tests/test_layering.py`` checks both agree). Each stage's flow is
``flows.<name>.<name>_flow``; ``python -m flows.<name>`` runs it alone.

No Prefect import here, so reading the list (the CLI, the docs test) costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its name (= flow module and DVC stage), outputs, and role."""

    name: str
    outputs: tuple[str, ...]  # what dvc.yaml lists under outs/metrics/plots, default params
    summary: str
    data: bool = False  # part of the data half (flows/data.py): runs on a CPU machine before training
    pipeline: bool = True  # run by the pipeline flow and `dvc repro`; False: frozen, run on request only


REGISTRY: tuple[Stage, ...] = (
    Stage("synth", ("data/synth",), "render the built-in PoseScenes world (images + captions)", data=True),
    Stage("ingest", ("data/ingested",), "validate the image source into a manifest", data=True),
    Stage("poses", ("data/lattices",), "detect keypoint lattices per image (incremental)", data=True),
    Stage("pairs", ("data/pairs.parquet",), "same-scene, different-pose training tuples", data=True),
    Stage("render", ("data/maps",), "grayscale pose maps from the lattices", data=True),
    Stage(
        "bootstrap",
        ("models/world",),
        "retrain the shipped world (frozen; about 3 hours from scratch on an idle 2-core CPU over resumed runs, "
        "an estimated half hour on one H200 with bootstrap.device / --device cuda; resumable)",
        pipeline=False,
    ),
    Stage("world", ("build/world/pipeline",), "the shipped world as a diffusers pipeline directory"),
    Stage("cache", ("data/cache",), "frozen VAE latents and text states"),
    Stage(
        "train",
        ("build/train/secondary_adapter", "build/train/validation", "build/train/metrics.json", "build/train/loss.csv"),
        "fine-tune the secondary adapter; registers @candidate",
    ),
    Stage(
        "evaluate",
        (
            "reports/metrics.json",
            "reports/plots/frontier.png",
            "reports/plots/frontier",
            "reports/drift.csv",
            "reports/fidelity.csv",
            "reports/grids",
            "reports/report.md",
        ),
        "drift vs fidelity frontier, matched-fidelity verdict; the promotion gate (@champion)",
    ),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in REGISTRY}
# The stages the pipeline flow and `dvc repro` run, in order (bootstrap is frozen).
PIPELINE_STAGES: tuple[str, ...] = tuple(stage.name for stage in REGISTRY if stage.pipeline)
DATA_STAGES: tuple[str, ...] = tuple(stage.name for stage in REGISTRY if stage.data)


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
