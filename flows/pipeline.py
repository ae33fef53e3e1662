"""The end-to-end pipeline: synth -> ingest -> poses -> pairs -> render -> world -> cache -> train -> evaluate.

``dvc repro`` runs the stages one by one (and skips what is up to date); this flow runs them all in one
Prefect flow run, which is what the nightly deployment schedules. ``overrides`` are dotted params.yaml
keys (``{"train.steps": 50}``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

STAGES = ("synth", "ingest", "poses", "pairs", "render", "world", "cache", "train", "evaluate")


def _stage_flow(name: str) -> Any:
    module = __import__(f"flows.{name}", fromlist=[f"{name}_flow"])
    return getattr(module, f"{name}_flow")


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Run the stages (all by default, in order) as subflows and return each one's result."""
    chosen = list(stages or STAGES)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    results: dict[str, Any] = {}
    for name in STAGES:
        if name in chosen:
            results[name] = _stage_flow(name)(params_path=params_path, overrides=overrides)
    return results


if __name__ == "__main__":
    pipeline_flow()
