"""The one stage task: a stage's library entry point under the retry and cache policy the registry gives it.

``stage_task("pairs", pairs)(params)`` runs ``posescene.data.pairs.pairs(params, progress=...)`` as the Prefect task
``pairs`` and returns its summary as a dict (the flow's artifact and result). The flow imports the entry point
itself (an import ``dvc.yaml``'s dependency test can read) and the registry checks it is the stage's. The policy
is data in :mod:`posescene.stages` (``TaskPolicy``): nothing here is specific to a stage. A policy that depends on
the run (ingest retries only a hub download) takes ``params``: ``stage_task("ingest", ingest, params)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State

from posescene.config import Params
from posescene.errors import PosesceneError
from posescene.stages import BY_NAME, TaskPolicy
from tasks._cache import params_cache_key


def retry_unless_deterministic(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a crash of the machinery (a worker process killed, BrokenProcessPool), never a posescene error.

    Missing weights or an unreadable manifest fail the same way every time; a killed worker does not.
    """
    exc = state.data  # the engine hands the exception over as the Failed state's data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - the result itself is unavailable: let the retry policy decide
            return True
    return not isinstance(exc, PosesceneError | NotImplementedError | ValueError | TypeError)


def _cache_key(policy: TaskPolicy) -> Callable[[TaskRunContext, dict[str, Any]], str | None] | None:
    """The policy's ``cache_key_fn``: None when never cached; a key of None (no cache) for an ``uncached_with`` call."""
    if policy.cache is None:
        return None
    key = params_cache_key(policy.cache, policy.cache_paths)
    if not policy.uncached_with:
        return key

    def key_unless(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        options = parameters.get("options") or {}  # Prefect binds **options as one parameter
        if any(options.get(name) is not None for name in policy.uncached_with):
            return None
        return key(context, parameters)

    return key_unless


def _function(dotted: str) -> Callable[..., Any]:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


@cache
def _task(name: str, entry: Callable[..., Any]) -> Task[..., dict[str, Any]]:
    policy = BY_NAME[name].task
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
    return task(
        name=name,
        cache_key_fn=_cache_key(policy),
        retries=policy.retries,
        retry_delay_seconds=policy.retry_delay_s,
        retry_condition_fn=retry_unless_deterministic if policy.retry_on == "machinery" else None,
    )(run)


def stage_task(name: str, entry: Callable[..., Any], params: Params | None = None) -> Task[..., dict[str, Any]]:
    """The Prefect task of stage ``name`` running ``entry``, the registry's entry point (built once per process).

    A policy with ``retry_when`` retries only when its predicate holds for ``params`` (no ``params``: it does not).
    """
    built = _task(name, entry)
    when = BY_NAME[name].task.retry_when
    if when is not None and (params is None or not _function(when)(params)):
        return built.with_options(retries=0)
    return built
