"""A REAL Prefect server on 127.0.0.1: serve deployments, trigger runs, overlapping runs, artifacts.

One server per module (``--no-services``: the API is all a served deployment needs; the scheduler
service only pre-creates cron runs), with its own PREFECT_HOME; always stopped by the fixture.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ops_servers import VENV_BIN, free_port, http_ok, start, stop, tail, wait_until
from _params import write_params

pytestmark = pytest.mark.e2e  # real servers, clusters and subprocesses: tens of seconds

# coupling 0: the project here has no world directory whose training record a null coupling would read
TINY = {"synth": {"out_dir": "out/synth", "n_scenes": 2, "poses_per_scene": 2, "size": 32, "coupling": 0.0}}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"]
    proc = start(cmd, home / "server.log", env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: http_ok(url + "/health"), 60, "prefect server", proc)
    except Exception:
        stop(proc)
        pytest.fail(f"Prefect server did not start:\n{tail(home / 'server.log')}")
    yield url
    _drain_prefect_workers(url)
    stop(proc)


def _drain_prefect_workers(url: str) -> None:
    """Send queued logs/events now: after the server stops they would be retried for a minute at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        for worker in (APILogWorker, EventsWorker):
            try:
                worker.drain_all(timeout=10)
            except Exception:  # noqa: BLE001 - best effort
                pass


@pytest.fixture()
def api(prefect_server: str, tmp_path: Path) -> Iterator[str]:
    """Point this process's Prefect client at the test server (results stored under tmp_path)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server, PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        yield prefect_server


def _images(out: Path) -> list[Path]:
    return sorted((out / "images").glob("*.png"))


def test_serve_trigger_and_schedule(api: str, tmp_path: Path) -> None:
    """`posescene serve` registers the deployments; a triggered run completes with the overrides applied."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.deployments import run_deployment

    project = tmp_path / "project"
    project.mkdir()
    write_params(project / "params.yaml", {**TINY, "ops.lock_path": str(project / "build" / "posescene.lock")})
    env = {
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(tmp_path / "client-home"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [str(VENV_BIN / "posescene"), "serve", "--params", "params.yaml", "--stage", "synth", "--cron", "0 3 * * *"]
    log = tmp_path / "serve.log"
    server = start(cmd, log, env=env, cwd=project)
    try:
        with get_client(sync_client=True) as client:

            def registered() -> bool:
                try:
                    client.read_deployment_by_name("synth/on-demand")
                    client.read_deployment_by_name("pipeline/nightly")
                    return True
                except Exception:  # noqa: BLE001 - not there yet
                    return False

            wait_until(registered, 60, "deployments", server)
            nightly = client.read_deployment_by_name("pipeline/nightly")
            assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]
            assert nightly.parameters["params_path"] == "params.yaml"
            assert client.read_global_concurrency_limit_by_name("posescene-pipeline").limit == 1

            run = run_deployment(
                "synth/on-demand", parameters={"overrides": {"synth.n_scenes": 3}}, timeout=90, poll_interval=1
            )
            assert run.state is not None and run.state.is_completed(), (run.state, tail(log))
            assert len(_images(project / "out" / "synth")) == 3 * 2

            # The nightly deployment, triggered by hand on one stage: the pipeline summary artifact appears.
            run = run_deployment(
                "pipeline/nightly",
                parameters={"stages": ["synth"], "overrides": {"synth.out_dir": "out/nightly"}},
                timeout=90,
                poll_interval=1,
            )
            assert run.state is not None and run.state.is_completed(), (run.state, tail(log))
            assert len(_images(project / "out" / "nightly")) == 2 * 2
            summary = ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-summary"]))
            arts = client.read_artifacts(artifact_filter=summary)
            assert arts and "| synth | completed |" in str(arts[0].data)
    finally:
        stop(server)


def test_overlapping_runs_queue_on_slot_and_lock(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run A is mid-write; B (short timeout) fails naming A; C (long timeout) waits for A, then runs."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    import posescene.data.synth
    from flows.deployments import ensure_concurrency_limit
    from flows.synth import synth_flow

    with temporary_settings({PREFECT_API_URL: api}):
        ensure_concurrency_limit("posescene-pipeline")
    params = tmp_path / "params.yaml"
    lock = tmp_path / "build" / "posescene.lock"
    out = tmp_path / "synth"
    write_params(params, {**TINY, "synth.out_dir": str(out), "ops.lock_path": str(lock)})

    real_generate = posescene.data.synth.generate
    a_inside, a_release = threading.Event(), threading.Event()
    spans: list[tuple[str, float, float]] = []

    def generate(*args: Any, **kwargs: Any) -> Path:
        name = threading.current_thread().name
        t0 = time.monotonic()
        if name == "run-a":
            a_inside.set()
            assert a_release.wait(60)
        result = real_generate(*args, **kwargs)
        spans.append((name, t0, time.monotonic()))
        return result

    monkeypatch.setattr(posescene.data.synth, "generate", generate)
    outcome: dict[str, Any] = {}

    def run(name: str, overrides: dict[str, Any]) -> None:
        # Settings live in a context variable: a new thread must enter them again.
        with temporary_settings({PREFECT_API_URL: api, PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}):
            try:
                outcome[name] = synth_flow(str(params), overrides)
            except BaseException as exc:  # noqa: BLE001
                outcome[name] = exc

    a = threading.Thread(target=run, args=("a", {"ops.lock_timeout_s": 5}), name="run-a")
    a.start()
    assert a_inside.wait(60), outcome
    b = threading.Thread(target=run, args=("b", {"ops.lock_timeout_s": 1}), name="run-b")
    b.start()
    b.join(60)
    assert "another posescene run holds" in str(outcome["b"]) and "flow synth" in str(outcome["b"]), outcome["b"]
    c = threading.Thread(target=run, args=("c", {"ops.lock_timeout_s": 60}), name="run-c")
    c.start()
    time.sleep(1.5)
    assert "c" not in outcome  # still waiting for A
    a_release.set()
    a.join(60)
    c.join(60)
    assert outcome["a"]["out_dir"] == str(out) and outcome["c"]["out_dir"] == str(out), outcome
    (_, _, a_end), (c_name, c_start, _) = spans
    assert c_name == "run-c" and c_start >= a_end  # C started writing only after A had finished
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len(_images(out)) == 4
    assert all((out / json.loads(line)["file_name"]).exists() for line in lines)
    assert not lock.with_name(lock.name + ".holder.json").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_fresh_server_frees_the_slots_a_killed_run_leaked(api: str) -> None:
    """A run killed together with its server leaves the limit's slot counted in the database and no lease to
    expire it: every later run would wait ops.lock_timeout_s. A server scripts/prefect_server.sh just started has
    no live holders, so it frees them; on a server that was already up they are left alone (a run may hold them)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.deployments import ensure_concurrency_limit

    name = "posescene-leak-test"
    ensure_concurrency_limit(name)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=1))  # the leak
        ensure_concurrency_limit(name)  # a server that was already up: a live run may hold it
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
        ensure_concurrency_limit(name, fresh_server=True)
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
