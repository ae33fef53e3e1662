from __future__ import annotations

from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
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


@task(
    name="poses",
    cache_key_fn=stage_cache_key(("manifest", "out_dir")),
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_deterministic,
)
def poses_task(params: PosesParams, manifest: str, out_dir: str) -> dict[str, Any]:
    """Pose lattices of every manifest image not yet in ``out_dir`` (incremental); returns the run summary."""
    if params.runner == "dask":
        raise NotImplementedError(
            "poses.runner: dask runs at the flow level (flows/poses.py -> flows/_dask.py: the batches on a Dask "
            "cluster); this task is the local runner"
        )
    return poses.run_poses_with(params, manifest, out_dir).to_dict()
