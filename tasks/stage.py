"""The one stage task: a stage's library entry point under the retry and cache policy the registry gives it.

``stage_task("pairs", pairs)(params)`` runs ``posescene.pairs.pairs(params, progress=...)`` as the Prefect task
``pairs`` and returns its summary as a dict (the flow's artifact and result). The flow imports the entry point
itself (an import ``dvc.yaml``'s dependency test can read) and the registry checks it is the stage's. The policy
is data in :mod:`posescene.stages` (``TaskPolicy``): nothing here is specific to a stage. The stages with a task
of their own (``tasks/<stage>.py``) are those the registry gives no ``TaskPolicy``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from prefect import Task, task

from posescene.config import Params
from posescene.stages import BY_NAME
from tasks._cache import params_cache_key


@cache
def stage_task(name: str, entry: Callable[..., Any]) -> Task[..., dict[str, Any]]:
    """The Prefect task of stage ``name`` running ``entry``, the registry's entry point (built once per process)."""
    policy = BY_NAME[name].task
    if policy is None:
        raise ValueError(f"stage {name!r} has a task of its own (tasks/{name}.py), no generic policy")
    given = f"{entry.__module__}:{entry.__name__}"
    if given != policy.entry:
        raise ValueError(f"stage {name!r} runs {policy.entry} (posescene/stages.py), not {given}")

    def run(params: Params, **options: Any) -> dict[str, Any]:
        summary = entry(params, progress=policy.progress, **options)
        if summary is None:  # a rank other than 0 of a sharded stage: rank 0 reports
            return {}
        return summary if isinstance(summary, dict) else summary.as_dict()

    run.__name__ = run.__qualname__ = f"{name}_stage"  # Prefect tells tasks apart by their function's name
    run.__doc__ = f"Stage ``{name}``: ``{policy.entry}`` (policy: posescene/stages.py)."
    key = None if policy.cache is None else params_cache_key(policy.cache, policy.cache_paths)
    return task(name=name, cache_key_fn=key, retries=policy.retries)(run)
