"""The end-to-end pipeline: the stages of ``flows.stages.PIPELINE_STAGES``, in order.

``dvc repro`` runs the stages one by one (and skips what is up to date); this flow runs them all in one
Prefect flow run, which is what the nightly deployment schedules. ``overrides`` are dotted params.yaml
keys (``{"train.steps": 50}``).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from flows.stages import PIPELINE_STAGES, check_stages, stage_flow
from flows.summary import publish_pipeline_summary
from posescene.config import load_params


@flow(name="pipeline", log_prints=True)
@exclusive
def pipeline_flow(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Run the stages (all by default, in order) as subflows and return each one's result.

    Holds the posescene run lock for the whole run (``@exclusive``), so an overlapping scheduled or manual
    run queues behind it, and publishes a ``pipeline-summary`` artifact (stage states, times, MLflow links).
    """
    chosen = list(stages or PIPELINE_STAGES)
    check_stages(chosen)
    results: dict[str, Any] = {}
    timings: dict[str, tuple[str, float]] = {}
    error: BaseException | None = None
    try:
        for name in PIPELINE_STAGES:  # registry order, whatever order `stages` names them in
            if name in chosen:
                start = time.monotonic()
                timings[name] = ("running", 0.0)
                try:
                    results[name] = stage_flow(name)(params_path=params_path, overrides=overrides)
                finally:
                    timings[name] = ("completed" if name in results else "failed", time.monotonic() - start)
    except BaseException as exc:
        error = exc
        raise
    finally:
        publish_pipeline_summary(load_params(params_path, overrides), timings, results, error)
    return results


if __name__ == "__main__":
    pipeline_flow()
