"""Prefect deployments of posescene: the nightly ``pipeline/nightly`` and one ``<stage>/on-demand`` per stage.

Served by ``posescene serve`` (``flows/cli.py``; or ``python -m flows.deployments``) against the Prefect server named by
PREFECT_API_URL: the serving process polls the server and starts each scheduled or triggered flow run as a
subprocess in its working directory (the project root, so ``params.yaml`` and the relative data paths
resolve as with ``dvc repro``).

Every deployment takes the flow's own parameters: ``params_path`` and ``overrides`` (dotted
``params.yaml`` keys, e.g. ``{"train.steps": 50}``), and for the pipeline also ``stages``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.stages import PIPELINE_STAGES, check_stages, stage_flow
from posescene.config import Params, load_params

PIPELINE_DEPLOYMENT = "nightly"
STAGE_DEPLOYMENT = "on-demand"
TAGS = ["posescene"]

log = logging.getLogger("posescene.deployments")


def build_deployments(
    params_path: str = "params.yaml",
    stages: list[str] | None = None,
    pipeline: bool = True,
    schedule: bool = True,
    cron: str | None = None,
    skip_missing: bool = False,
) -> list[RunnerDeployment]:
    """The deployments to serve.

    ``stages``: which stage deployments (default: all of ``flows.stages.PIPELINE_STAGES``); ``pipeline``: include
    ``pipeline/nightly``; ``schedule=False`` serves it without its cron (trigger by hand only); ``cron``
    replaces ``ops.pipeline_cron``. ``skip_missing`` skips stages whose flow module does not exist yet
    (instead of failing), for partial checkouts.

    Module-path entrypoints (``flows.synth.synth_flow``) because the project is installed: a flow run
    imports its flow the same way wherever the serving process was started.
    """
    from flows.pipeline import pipeline_flow

    params: Params = load_params(params_path)  # fail at start on a bad params file, not at 2 a.m.
    defaults: dict[str, Any] = {"params_path": params_path, "overrides": {}}
    out: list[RunnerDeployment] = []
    if pipeline:
        out.append(
            pipeline_flow.to_deployment(
                name=PIPELINE_DEPLOYMENT,
                schedules=[Cron(cron or params.ops.pipeline_cron, timezone=params.ops.pipeline_timezone)]
                if schedule
                else None,
                parameters={**defaults, "stages": None},
                # A second nightly run while one is still going waits in the queue (not two at once).
                concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
                description="Nightly: ingest new images -> incremental poses -> pairs -> render -> world -> cache "
                "-> train (registers @candidate) -> evaluate (promotes @champion).",
                tags=[*TAGS, "pipeline"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    chosen = list(PIPELINE_STAGES if stages is None else stages)
    check_stages(chosen)
    for name in chosen:
        try:
            flow_obj = stage_flow(name)
        except ModuleNotFoundError:
            if not skip_missing:
                raise
            log.warning("flows/%s.py does not exist (yet): no %s/%s deployment", name, name, STAGE_DEPLOYMENT)
            continue
        out.append(
            flow_obj.to_deployment(
                name=STAGE_DEPLOYMENT,
                parameters=dict(defaults),
                description=f"Run the {name} stage alone (as `python -m flows.{name}` / `dvc repro {name}` do).",
                tags=[*TAGS, "stage"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def ensure_concurrency_limit(name: str, limit: int = 1, *, fresh_server: bool = False) -> bool:
    """Create the global concurrency limit ``name`` on the configured server if missing; True if it exists now.

    Flows occupy it (``flows/run_lock.py``) so that the UI shows a run waiting for another one; without it they
    fall back to the file lock alone. ``fresh_server``: the server was just started, so no run holds a slot on it
    (its slot leases live in the server's memory and died with the previous server); slots the database still
    counts were leaked by a run killed together with that server, and would make every later run wait for
    ``ops.lock_timeout_s`` and fail, so they are freed.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
            if fresh_server and existing.active_slots:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
                leaked = existing.active_slots
                print(f"posescene: freed {leaked} leaked slot(s) of {name!r} (a run killed with a server)")
            return True
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return True


def serve(
    params_path: str = "params.yaml",
    stages: list[str] | None = None,
    pipeline: bool = True,
    schedule: bool = True,
    cron: str | None = None,
    limit: int | None = None,
) -> None:
    """Register the deployments with the server and run them until interrupted (blocks)."""
    from prefect import serve as prefect_serve

    params = load_params(params_path)
    deployments = build_deployments(params_path, stages, pipeline, schedule, cron, skip_missing=stages is None)
    ensure_concurrency_limit(params.ops.concurrency_limit)
    log.info("serving %d deployment(s) from %s", len(deployments), Path.cwd())
    prefect_serve(*deployments, limit=limit)


if __name__ == "__main__":
    serve()
