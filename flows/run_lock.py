"""The run lock of the flows: ``@exclusive`` keeps overlapping posescene runs apart.

``@exclusive`` goes between ``@flow`` and the flow function of every flow that writes data, models or the
registry. It takes, in order:

1. the Prefect global concurrency limit ``ops.concurrency_limit`` (one slot) when a Prefect server is
   configured (``PREFECT_API_URL``): the waiting run shows up in the UI as waiting for the slot.
   Without a server, or when the limit does not exist or the server cannot be reached, this step is
   skipped with a warning: it is a courtesy, not the guarantee;
2. the file lock ``ops.lock_path`` (:mod:`posescene.locking`): the guarantee, also for ``dvc repro``
   and runs that use a different (or no) Prefect server.

Both are re-entrant within one run, so the pipeline flow holds them once and its stage subflows pass.
Under a multi-process launcher (``accelerate launch`` / ``torchrun``: ``WORLD_SIZE`` > 1) only rank 0 takes
them: the other ranks belong to the same run, and making them wait for rank 0's lock while rank 0 waits for
them in the first collective would deadlock until ``ops.lock_timeout_s``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from flows._log import run_logger
from posescene.config import Params, load_params
from posescene.locking import LockTimeoutError, exclusive_lock, read_holder

P = ParamSpec("P")
R = TypeVar("R")

# True while this execution context holds the Prefect concurrency slot (subflows must not ask again:
# with one slot that would deadlock).
_SLOT_HELD: contextvars.ContextVar[bool] = contextvars.ContextVar("posescene_slot_held", default=False)


def prefect_server_configured() -> bool:
    """True when PREFECT_API_URL points at a server (not the temporary ephemeral one)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _run_description(flow_name: str) -> str:
    try:
        from prefect.runtime import flow_run

        name, run_id = flow_run.name, flow_run.id
    except Exception:  # noqa: BLE001
        name, run_id = None, None
    return f"flow {flow_name} (run {name!r}, id {run_id})" if run_id else f"flow {flow_name}"


@contextlib.contextmanager
def prefect_slot(name: str, timeout: float, lock_path: str | None = None) -> Iterator[bool]:
    """Occupy one slot of the Prefect global concurrency limit ``name``; yields whether one was taken.

    Degrades to a no-op (with a warning) without a configured server, when the limit does not exist
    or when the server cannot be reached: the file lock still serialises runs.
    """
    if _SLOT_HELD.get() or not prefect_server_configured():
        yield False
        return
    from prefect.concurrency.sync import concurrency

    with contextlib.ExitStack() as stack:
        try:
            # strict: a missing limit raises (and is reported once, below) instead of Prefect's own warning
            stack.enter_context(
                concurrency(name, occupy=1, timeout_seconds=None if timeout < 0 else timeout, strict=True)
            )
            taken = True
        except TimeoutError as exc:
            holder = read_holder(lock_path) if lock_path else None
            who = f": {holder.describe()}" if holder else " (see Concurrency in the UI)"
            raise LockTimeoutError(
                f"another posescene run holds the Prefect concurrency limit {name!r}{who}. "
                f"Gave up after waiting {timeout:g} s (ops.lock_timeout_s); wait for it to finish or raise the timeout."
            ) from exc
        except Exception as exc:  # noqa: BLE001 - server down or limit missing: the file lock still holds
            run_logger().warning(
                f"Prefect concurrency limit {name!r} not used ({exc}); relying on the file lock. Create it with "
                "`posescene serve` or `source scripts/prefect_server.sh` (docs/operations.md, the run lock)."
            )
            taken = False
        token = _SLOT_HELD.set(True) if taken else None
        try:
            yield taken
        finally:
            if token is not None:
                with contextlib.suppress(ValueError):
                    _SLOT_HELD.reset(token)


def launcher_rank() -> int | None:
    """This process's rank under a multi-process launcher (torchrun, accelerate launch); None when alone."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return int(os.environ.get("RANK", "0"))
    except ValueError:
        pass
    return None


@contextlib.contextmanager
def run_guard(params: Params, flow_name: str) -> Iterator[None]:
    """The Prefect slot, then the file lock, for one run that writes (see the module docstring)."""
    rank = launcher_rank()
    if rank is not None and rank != 0:  # rank 0 of this launch holds them for every rank
        yield
        return
    timeout = params.ops.lock_timeout_s
    start = time.monotonic()
    with prefect_slot(params.ops.concurrency_limit, timeout, params.ops.lock_path):
        remaining = timeout if timeout <= 0 else max(1.0, timeout - (time.monotonic() - start))
        with exclusive_lock(
            params.ops.lock_path, timeout=remaining, what=_run_description(flow_name), on_wait=run_logger().warning
        ):
            yield


def exclusive(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a flow function (``params_path``, ``overrides`` arguments) so it runs under :func:`run_guard`.

    Goes *below* ``@flow`` so that the lock is taken inside the flow run (the wait is logged in the UI)
    and ``functools.wraps`` keeps the signature Prefect derives the deployment parameters from.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        params = load_params(bound.arguments["params_path"], bound.arguments.get("overrides"))
        with run_guard(params, fn.__name__.removesuffix("_flow")):
            return fn(*args, **kwargs)

    return wrapper
