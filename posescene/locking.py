"""An inter-process lock around runs that write posescene data, models or the registry.

Why: a nightly scheduled pipeline that overruns, a person's manual ``prefect deployment run`` and a
``dvc repro`` in the same checkout would otherwise write ``data/``, ``build/`` and the MLflow registry
at the same time. One lock file per checkout (``ops.lock_path``) serialises them. It is an OS advisory
lock (``flock`` via :mod:`filelock`), so a crashed run releases it automatically: there are no stale
locks to clean up by hand. Beside it a small JSON file records who holds it and since when, so the
run that waits (or gives up) can say so.

The lock is re-entrant within one execution context (a :class:`contextvars.ContextVar` records the
locks held): the pipeline flow holds it and its stage subflows, which take it too when run on their
own, pass straight through. Two independent runs (other processes, or other threads that did not
inherit the context) exclude each other.

Plain library: no Prefect import (the Prefect global-concurrency layer lives in ``flows/_ops.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from posescene.errors import PosesceneError
from posescene.io import write_json_atomic

# Resolved lock paths held in the current context (re-entrancy for subflows of a locked pipeline).
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("posescene_locks_held", default=frozenset())


class LockTimeoutError(PosesceneError):
    """Another posescene run held the lock for longer than we were willing to wait."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock: written beside the lock file while it is held."""

    pid: int
    host: str
    since: str  # ISO 8601, UTC
    what: str  # e.g. "flow pipeline (run 'sassy-otter')"

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on {self.host}) since {self.since}"


def holder_path(lock_path: str | Path) -> Path:
    """The JSON sidecar naming the current holder (the lock file itself is truncated by waiters)."""
    lock_path = Path(lock_path)
    return lock_path.with_name(lock_path.name + ".holder.json")


def read_holder(lock_path: str | Path) -> LockHolder | None:
    """The recorded holder, or None when nobody recorded one (or the record is unreadable)."""
    try:
        raw = json.loads(holder_path(lock_path).read_text())
        return LockHolder(**raw)
    except (OSError, ValueError, TypeError):
        return None


def is_held_here(lock_path: str | Path) -> bool:
    """True when the current context already holds ``lock_path`` (so acquiring it again is a no-op)."""
    return str(Path(lock_path).resolve()) in _HELD.get()


def _timeout_message(lock_path: Path, waited: float, holder: LockHolder | None) -> str:
    who = holder.describe() if holder else "another process (no holder record)"
    return (
        f"another posescene run holds the lock {lock_path}: {who}. Gave up after waiting {waited:.0f} s "
        "(ops.lock_timeout_s). Wait for that run to finish (a crashed run releases the lock by itself), "
        "or raise ops.lock_timeout_s to queue behind it."
    )


@contextlib.contextmanager
def exclusive_lock(
    lock_path: str | Path,
    timeout: float = 0.0,
    what: str = "posescene run",
    on_wait: Callable[[str], None] | None = None,
    poll_interval: float = 0.2,
) -> Iterator[LockHolder | None]:
    """Hold the posescene lock at ``lock_path`` for the body; re-entrant within one context.

    ``timeout``: seconds to wait for another holder (< 0: forever, 0: fail at once). On timeout a
    :class:`LockTimeoutError` names the holder and since when it holds the lock. ``on_wait`` is called
    once with a human-readable line when we have to wait (flows pass their run logger's ``warning``).
    Yields this run's :class:`LockHolder` record, or None when the context already held the lock.
    """
    lock_path = Path(lock_path).resolve()
    key = str(lock_path)
    if key in _HELD.get():
        yield None
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, thread_local=False, is_singleton=False)
    start = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = read_holder(lock_path)
        if timeout == 0:
            raise LockTimeoutError(_timeout_message(lock_path, 0.0, holder)) from None
        if on_wait is not None:
            who = holder.describe() if holder else "another process"
            limit = "indefinitely" if timeout < 0 else f"up to {timeout:g} s"
            on_wait(f"another posescene run holds the lock {lock_path}: {who}; waiting {limit}")
        try:
            lock.acquire(timeout=timeout, poll_interval=poll_interval)
        except Timeout:
            raise LockTimeoutError(
                _timeout_message(lock_path, time.monotonic() - start, read_holder(lock_path) or holder)
            ) from None
    me = LockHolder(
        pid=os.getpid(),
        host=socket.gethostname(),
        since=datetime.now(UTC).isoformat(timespec="seconds"),
        what=what,
    )
    token = _HELD.set(_HELD.get() | {key})
    try:
        write_json_atomic(holder_path(lock_path), asdict(me))
        yield me
    finally:
        try:
            _HELD.reset(token)
        except ValueError:  # exited in another context (a generator moved across threads): nothing to undo here
            pass
        with contextlib.suppress(OSError):
            if read_holder(lock_path) == me:
                holder_path(lock_path).unlink()
        lock.release()
