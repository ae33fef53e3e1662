"""The run lock (posescene.locking, flows/run_lock.exclusive) without a Prefect server: processes and threads."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest
from _params import write_params

from posescene.locking import LockTimeoutError, exclusive_lock, is_held_here, read_holder


def _writer(lock_path: str, log_path: str, tag: str, rounds: int, timeout: float) -> None:
    """Append begin/end markers around a sleep under the lock: interleaving would show as begin-begin."""
    for i in range(rounds):
        with exclusive_lock(lock_path, timeout=timeout, what=f"writer {tag}"):
            with open(log_path, "a") as fh:
                fh.write(f"begin {tag} {i}\n")
                fh.flush()
                time.sleep(0.02)
                fh.write(f"end {tag} {i}\n")


def _hold(lock_path: str, ready: mp.Event, release: mp.Event) -> None:  # type: ignore[type-arg]
    with exclusive_lock(lock_path, what="holder process"):
        ready.set()
        release.wait(30)


def test_two_processes_never_interleave(tmp_path: Path) -> None:
    lock, log = str(tmp_path / "run.lock"), str(tmp_path / "log.txt")
    ctx = mp.get_context("spawn")  # fork copies the test process's threads (Prefect, torch): unsafe
    procs = [ctx.Process(target=_writer, args=(lock, log, tag, 15, 30.0)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = Path(log).read_text().splitlines()
    assert len(lines) == 2 * 2 * 15
    for begin, end in zip(lines[::2], lines[1::2], strict=True):
        assert begin.startswith("begin ") and end == "end " + begin.removeprefix("begin ")


def test_second_run_fails_clearly_then_waits(tmp_path: Path) -> None:
    lock = str(tmp_path / "run.lock")
    ctx = mp.get_context("spawn")  # fork copies the test process's threads (Prefect, torch): unsafe
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        rec = read_holder(lock)
        assert rec is not None and rec.pid == holder.pid and rec.what == "holder process"
        with pytest.raises(LockTimeoutError, match=r"another posescene run holds the lock .*holder process.* since "):
            with exclusive_lock(lock, timeout=0):
                pass
        waits: list[str] = []
        threading.Timer(0.5, release.set).start()
        start = time.monotonic()
        with exclusive_lock(lock, timeout=30, what="second", on_wait=waits.append) as me:
            assert me is not None and read_holder(lock) == me
        assert time.monotonic() - start >= 0.4
        assert len(waits) == 1 and "holder process" in waits[0]
        assert read_holder(lock) is None  # our record is removed on release
    finally:
        release.set()
        holder.join(10)


def test_reentrant_in_context_exclusive_across_threads(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    errors: list[BaseException] = []
    with exclusive_lock(lock, what="outer") as outer:
        assert outer is not None and is_held_here(lock)
        with exclusive_lock(lock) as inner:  # a subflow of a locked pipeline passes straight through
            assert inner is None

        def other() -> None:  # a new thread does not inherit the context: it is another run
            try:
                with exclusive_lock(lock, timeout=0.2):
                    pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], LockTimeoutError)
    assert not is_held_here(lock)


def test_exclusive_decorator_uses_params_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a Prefect server the decorator degrades to the file lock named by ops.lock_path."""
    import flows.run_lock as ops

    monkeypatch.setattr(ops, "prefect_server_configured", lambda: False)
    lock = tmp_path / "locks" / "posescene.lock"
    params = tmp_path / "params.yaml"
    write_params(params, {"ops.lock_path": str(lock), "ops.lock_timeout_s": 0})
    seen: list[bool] = []

    @ops.exclusive
    def fake_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> str:
        seen.append(is_held_here(lock))
        return "ok"

    assert fake_flow(str(params)) == "ok" and seen == [True]
    with exclusive_lock(lock, what="someone else"):
        errors: list[BaseException] = []
        t = threading.Thread(target=lambda: _catch(errors, fake_flow, str(params)))
        t.start()
        t.join()
    assert len(errors) == 1 and "someone else" in str(errors[0])


def _catch(errors: list[BaseException], fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def test_only_rank_zero_of_a_launch_takes_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun/accelerate launch rank 0 holds the lock for the run; rank 1 must not wait for it."""
    import flows.run_lock as ops

    monkeypatch.setattr(ops, "prefect_server_configured", lambda: False)
    lock = tmp_path / "posescene.lock"
    params = tmp_path / "params.yaml"
    write_params(params, {"ops.lock_path": str(lock), "ops.lock_timeout_s": 0})

    @ops.exclusive
    def fake_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> bool:
        return is_held_here(lock)

    monkeypatch.setenv("WORLD_SIZE", "2")
    with exclusive_lock(lock, what="rank 0 of the same launch"):
        errors: list[BaseException] = []
        results: list[bool] = []
        monkeypatch.setenv("RANK", "1")
        t = threading.Thread(target=lambda: results.append(fake_flow(str(params))))
        t.start()
        t.join()
        assert results == [False]  # ran without waiting and without taking the lock
        monkeypatch.setenv("RANK", "0")
        t = threading.Thread(target=lambda: _catch(errors, fake_flow, str(params)))
        t.start()
        t.join()
        assert len(errors) == 1 and isinstance(errors[0], LockTimeoutError)  # rank 0 is an ordinary run
