"""The stage registry: every posescene stage, in pipeline order, with what it writes and how it runs.

One table read by the pipeline flow (which stages run, in which order), the data flow (the data half), the
deployments (one ``<stage>/on-demand`` each), the generic stage task (``tasks/stage.py``: each stage's library entry
point with its retry and cache policy) and the docs; ``dvc.yaml`` has one stage per entry with the same outputs
(``tests/test_layering.py`` checks both agree). Each stage's flow is ``flows.<name>.<name>_flow``; ``python -m
flows.<name>`` runs it alone.

Plain data, no Prefect import, so reading the table (the CLI, the docs test) costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TaskPolicy:
    """How the orchestration runs a stage's library entry point ``entry`` (``"module:function"``, called as
    ``function(params, *, progress, **options) -> summary``): its retries and its result cache.

    ``cache``: the ``params.yaml`` keys (dotted) whose values decide the result; ``cache_paths``: the keys naming
    files and directories it reads and writes, fingerprinted (a hit means "same inputs, output intact"); no
    ``cache`` (None): never cached (a run that moves registry aliases or resumes from checkpoints by itself).
    ``uncached_with``: options that make a call uncached (a pose runner on a cluster: its result is not a
    function of the local files). ``retries`` after ``retry_delay_s``; ``retry_on``: ``"any"`` failure, or only
    a crash of the ``"machinery"`` (a killed worker), never a posescene error; ``retry_when``: a predicate on
    ``params`` (``"module:function"``) outside which the stage is not retried (ingest: only a hub download flakes).
    """

    entry: str
    cache: tuple[str, ...] | None = None
    cache_paths: tuple[str, ...] = ()
    uncached_with: tuple[str, ...] = ()
    retries: int = 0  # deterministic local work: a failure is a bug or a bad input, a retry would fail the same way
    retry_delay_s: float = 0.0
    retry_on: Literal["any", "machinery"] = "any"
    retry_when: str | None = None
    progress: bool = True  # a tqdm bar; False: the entry point's plain progress lines (the evaluation's)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its name (= flow module and DVC stage), outputs, and role."""

    name: str
    outputs: tuple[str, ...]  # what dvc.yaml lists under outs/metrics/plots, default params
    summary: str
    task: TaskPolicy  # the generic task's policy (tasks/stage.py)
    data: bool = False  # part of the data half (flows/data.py): runs on a CPU machine before training
    pipeline: bool = True  # run by the pipeline flow and `dvc repro`; False: frozen, run on request only


REGISTRY: tuple[Stage, ...] = (
    Stage(
        "synth",
        ("data/synth",),
        "render the built-in PoseScenes world (images + captions)",
        data=True,
        task=TaskPolicy("posescene.data.synth:synth", cache=("seed", "synth"), cache_paths=("synth.out_dir",)),
    ),
    Stage(
        "ingest",
        ("data/ingested",),
        "validate the image source into a manifest",
        data=True,
        task=TaskPolicy(
            "posescene.data.ingest:ingest",
            cache=("ingest",),
            cache_paths=("ingest.source", "ingest.out_dir"),
            retries=2,  # a hub download can flake; local files fail the same way every time
            retry_delay_s=30,
            retry_when="posescene.data.ingest:is_hub_source",
        ),
    ),
    Stage(
        "poses",
        ("data/lattices",),
        "detect keypoint lattices per image (incremental)",
        data=True,
        task=TaskPolicy(
            "posescene.data.poses:poses",
            cache=("poses",),
            cache_paths=("ingest.out_dir", "poses.out_dir"),
            uncached_with=("runner",),
            retries=1,  # incremental: a retry redoes only the batches a killed worker had not written
            retry_delay_s=5,
            retry_on="machinery",
        ),
    ),
    Stage(
        "pairs",
        ("data/pairs.parquet",),
        "same-scene, different-pose training tuples",
        data=True,
        task=TaskPolicy(
            "posescene.data.pairs:pairs",
            cache=("seed", "pairs"),
            cache_paths=("poses.out_dir", "ingest.out_dir", "pairs.out"),
        ),
    ),
    Stage(
        "render",
        ("data/maps",),
        "grayscale pose maps from the lattices",
        data=True,
        task=TaskPolicy(
            "posescene.data.render:render", cache=("render",), cache_paths=("poses.out_dir", "render.out_dir")
        ),
    ),
    Stage(
        "bootstrap",
        ("models/world",),
        "retrain the shipped world (frozen; about 3 hours from scratch on an idle 2-core CPU over resumed runs, "
        "an estimated half hour on one H200 with bootstrap.device / --device cuda; resumable)",
        pipeline=False,
        # retraining is always deliberate (never cached) and a failure no flake (``resume`` continues instead)
        task=TaskPolicy("posescene.world.bootstrap:bootstrap"),
    ),
    Stage(
        "world",
        ("build/world/pipeline",),
        "the shipped world as a diffusers pipeline directory",
        task=TaskPolicy(
            "posescene.world.pipeline:world", cache=("world",), cache_paths=("world.shipped_dir", "world.pipeline_dir")
        ),
    ),
    Stage(
        "cache",
        ("data/cache",),
        "frozen VAE latents and text states",
        task=TaskPolicy(
            "posescene.data.cache:cache",
            cache=("model.base", "model.resolution", "cache"),
            cache_paths=("pairs.out", "ingest.out_dir", "model.base", "cache.out_dir"),
        ),
    ),
    Stage(
        "train",
        ("build/train/secondary_adapter", "build/train/validation", "build/train/metrics.json", "build/train/loss.csv"),
        "fine-tune the secondary adapter; registers @candidate",
        task=TaskPolicy("posescene.training.train:train"),  # DVC decides when to retrain; a rerun resumes by itself
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
        task=TaskPolicy("posescene.evaluation.evaluate:evaluate", progress=False),  # moves aliases: never cached
    ),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in REGISTRY}
# The stages the pipeline flow and `dvc repro` run, in order (bootstrap is frozen).
PIPELINE_STAGES: tuple[str, ...] = tuple(stage.name for stage in REGISTRY if stage.pipeline)
DATA_STAGES: tuple[str, ...] = tuple(stage.name for stage in REGISTRY if stage.data)
