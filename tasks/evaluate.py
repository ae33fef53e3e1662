"""Prefect task of the ``evaluate`` stage: scene drift across poses, pose fidelity and the promotion gate."""

from __future__ import annotations

from typing import Any

from prefect import task

from posescene.config import Params


@task(name="evaluate")
def evaluate_task(params: Params) -> dict[str, Any]:
    """Generate, measure, gate and write ``evaluate.out_dir``; returns the ``metrics.json`` dict.

    No cache key: a run moves registry aliases, so "same inputs" does not mean "nothing to do" (the
    champion may have changed since). No retries: it is deterministic, a failure is a missing model or
    bad params, and the generation is the expensive part.
    """
    from posescene.evaluation.evaluate import evaluate

    result = evaluate(params, progress=False)
    return {} if result is None else result.metrics  # {}: a rank other than 0 of a sharded evaluation
