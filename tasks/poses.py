from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State

from posescene import poses
from posescene.config import PosesParams
from posescene.errors import PosesceneError
from tasks._cache import stage_cache_key


def retry_unless_deterministic(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a crash of the machinery (a worker process killed, BrokenProcessPool), never a posescene error.

    Missing weights or an unreadable manifest fail the same way every time; a killed worker does not,
    and since the stage is incremental a retry only redoes the batches that had not been written.
    """
    exc = state.data  # the engine hands the exception over as the Failed state's data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - the result itself is unavailable: let the retry policy decide
            return True
    return not isinstance(exc, PosesceneError | NotImplementedError | ValueError | TypeError)


Runner = Callable[[str], AbstractContextManager[dict[str, Any]]]
_path_key = stage_cache_key(("manifest", "out_dir"))


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The local runner's results are cached on their inputs and files; a cluster run is never (None: no cache)."""
    return _path_key(context, parameters) if parameters.get("runner") is None else None


@task(
    name="poses",
    cache_key_fn=_cache_key,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_deterministic,
)
def poses_task(params: PosesParams, manifest: str, out_dir: str, runner: Runner | None = None) -> dict[str, Any]:
    """Pose lattices of every manifest image not yet in ``out_dir`` (incremental); returns the run summary.

    ``runner``: where the batches run, decided once by the flow: None for the library's own (this process, or a
    process pool of ``poses.workers``), else ``runner(manifest)``, a context that yields the
    :func:`posescene.poses.run_poses_with` options of another engine (``flows._dask.dask_runner``). A retry
    enters it again (a fresh cluster).
    """
    if runner is None:
        return poses.run_poses_with(params, manifest, out_dir).to_dict()
    with runner(manifest) as options:
        return poses.run_poses_with(params, manifest, out_dir, **options).to_dict()
