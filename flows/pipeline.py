"""The end-to-end pipeline: synth -> ingest -> poses -> pairs -> render -> world -> cache -> train -> evaluate.

``dvc repro`` runs the stages one by one (and skips what is up to date); this flow runs them all in one
Prefect flow run, which is what the nightly deployment schedules. ``overrides`` are dotted params.yaml
keys (``{"train.steps": 50}``).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows._ops import exclusive, publish_pipeline_summary
from posescene.config import load_params

STAGES = ("synth", "ingest", "poses", "pairs", "render", "world", "cache", "train", "evaluate")


def _stage_flow(name: str) -> Any:
    module = __import__(f"flows.{name}", fromlist=[f"{name}_flow"])
    return getattr(module, f"{name}_flow")


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
    chosen = list(stages or STAGES)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    results: dict[str, Any] = {}
    timings: dict[str, tuple[str, float]] = {}
    error: BaseException | None = None
    try:
        for name in STAGES:
            if name in chosen:
                start = time.monotonic()
                timings[name] = ("running", 0.0)
                try:
                    results[name] = _stage_flow(name)(params_path=params_path, overrides=overrides)
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
