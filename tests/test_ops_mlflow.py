"""A REAL `mlflow server` on 127.0.0.1: register the adapter (candidate), promote it (champion), load it fresh.

The registry workflow end to end against a tracking server (SQLite backend, proxied local artifact store):
training's ``log_and_register`` -> the evaluation stage's promotion gate -> a new Python process that knows
only ``models:/<name>@champion`` loads the pyfunc and generates an image from a prompt and a pose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _ops_servers import VENV_BIN, free_port, http_ok, start, stop, tail, wait_until
from _params import write_params

pytestmark = pytest.mark.e2e

MODEL_NAME = "posescene-test-adapter"

# Runs in a fresh interpreter that knows only the registry URI. It is started early and imports the heavy
# libraries while the test registers and promotes (not posescene: the pyfunc must bring that in itself),
# then reads the model URI on stdin.
LOAD_AND_PREDICT = """
import base64, io, json, sys
import diffusers, mlflow.pyfunc, pandas as pd, torch
from PIL import Image

assert "posescene" not in sys.modules
model = mlflow.pyfunc.load_model(sys.stdin.readline().strip())
# An upright figure in a 32 x 32 frame (18 OpenPose points; null = not visible).
keypoints = [[16, 6], [16, 10], [12, 10], [11, 15], [10, 19], [20, 10], [21, 15], [22, 19], [14, 18],
             [14, 24], [14, 30], [18, 18], [18, 24], [18, 30], [15, 5], [17, 5], None, None]
out = model.predict(pd.DataFrame({"prompt": ["a person waving on a beach"], "keypoints": [json.dumps(keypoints)],
                                  "seed": [3]}))
image = Image.open(io.BytesIO(base64.b64decode(out["image"][0])))
print(json.dumps({"format": image.format, "size": list(image.size), "mode": image.mode,
                  "extrema": image.convert("L").getextrema()}))
"""


class Server:
    """A started server process; ``url`` once :meth:`ready` returned (the test overlaps the start-up)."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def ready(self, timeout: float = 120) -> str:
        try:
            wait_until(lambda: http_ok(self.url + "/health"), timeout, "mlflow server", self.proc)
        except Exception:
            pytest.fail(f"mlflow server did not start:\n{tail(self.log)}")
        return self.url


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`mlflow server` with a SQLite store and a local artifact root, on a free port; always stopped."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    # No job-execution (huey) consumer processes: the registry needs none, and they cost start-up time.
    env = {"MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = start(cmd, root / "server.log", env=env)
    try:
        yield Server(proc, f"http://127.0.0.1:{port}", root / "server.log")
    finally:
        stop(proc)


def test_register_promote_and_load_champion(
    mlflow_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = subprocess.Popen(
        [sys.executable, "-c", LOAD_AND_PREDICT],
        env={**_clean_env(), "MLFLOW_TRACKING_URI": mlflow_server.url, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _registry_workflow(mlflow_server, tmp_path, monkeypatch, fresh)
    finally:
        if fresh.poll() is None:
            fresh.kill()
            fresh.wait(10)


def _registry_workflow(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: subprocess.Popen
) -> None:
    import mlflow
    from mlflow import MlflowClient

    from posescene import tracking
    from posescene.config import load_params
    from posescene.evaluation import promotion as gate
    from posescene.evaluation.evaluate import champion_adapter_dir
    from posescene.evaluation.promotion import CANDIDATE_ALIAS, CHAMPION_ALIAS
    from posescene.serving.pyfunc import log_and_register
    from posescene.world.architectures import build_tiny_models

    mlflow_server = server.url
    t0 = time.monotonic()
    monkeypatch.chdir(tmp_path)  # git/dvc provenance tags and any stray ./mlruns stay in tmp
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pipeline_dir, adapter_dir = build_tiny_models(tmp_path / "models", seed=0)
    params_file = tmp_path / "params.yaml"
    write_params(
        params_file,
        {
            "model": {"base": str(pipeline_dir), "primary_adapter": str(adapter_dir), "resolution": 32},
            "evaluate": {"steps": 2, "guidance_scale": 1.0, "device": "cpu"},
            # a correction of the primary: the registered model carries the primary too, through the server
            "train": {"secondary_role": "correct"},
            "mlflow": {"tracking_uri": mlflow_server, "experiment": "ops-test", "registered_model": MODEL_NAME},
        },
    )
    params = load_params(params_file)
    server.ready()  # started by the fixture, overlapping the imports and model building above

    # 1. Training's registration step: the adapter becomes a pyfunc version aliased `candidate`.
    with tracking.start_run(params, run_name="train") as run:
        version = log_and_register(adapter_dir, params)
        train_run_id = run.info.run_id
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    candidate = client.get_model_version_by_alias(MODEL_NAME, CANDIDATE_ALIAS)
    assert str(candidate.version) == str(version) and candidate.run_id == train_run_id
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)

    # 2. The evaluation stage's gate. The decisions stand in for a measured evaluation (the checks themselves
    # are test_frontier's and test_evaluate's business); the registry side (tags, description, alias move) is
    # the real code. First a failing decision: rejected, no champion.
    failing = gate.Decision("fail", [gate.Check("drift vs primary", False, 1.1, 1.0, "drift ratio 1.05 [1.0, 1.1]")])
    worse = gate.apply(client, MODEL_NAME, failing, candidate=candidate, champion=None, trained_run_id=train_run_id,
                       tags={"verdict": "Worse than turning the primary down"}, description="first")  # fmt: skip
    assert worse.status == "rejected" and worse.lines == [failing.checks[0].line()]
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    passing = gate.Decision("pass", [gate.Check("drift vs primary", True, 0.8, 1.0, "drift ratio 0.7 [0.6, 0.8]")])
    better = gate.apply(client, MODEL_NAME, passing, candidate=candidate, champion=None, trained_run_id=train_run_id,
                        tags={"verdict": "Pareto-better"}, description="how to load it")  # fmt: skip
    assert better.promoted and better.candidate_version == str(version), better.lines
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    assert str(champion.version) == str(version) and champion.description == "how to load it"
    assert champion.tags["eval.verdict"] == "Pareto-better" and champion.tags["eval.decision"] == "promoted"
    # the next evaluation re-evaluates the champion: its adapter comes back through the server
    found = champion_adapter_dir(MODEL_NAME, champion, None, mlflow_server)
    assert found is not None and (found[0] / "config.json").is_file()
    assert found[1] is True  # trained as a correction: the evaluation draws it added to the primary
    assert champion_adapter_dir(MODEL_NAME, champion, champion, mlflow_server) is None  # the candidate itself
    t_registry = time.monotonic() - t0

    # 3. A fresh process loads the champion through the server (artifacts proxied by it) and predicts.
    stdout, stderr = fresh.communicate(f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}\n", timeout=180)
    assert fresh.returncode == 0, stderr[-4000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["format"] == "PNG" and out["size"] == [32, 32] and out["mode"] == "RGB", out
    low, high = out["extrema"]
    assert high > low  # an image, not a blank frame
    print(f"registry steps {t_registry:.1f} s, fresh load + predict {time.monotonic() - t0 - t_registry:.1f} s")


def _clean_env() -> dict[str, str]:
    """This process's environment without MLflow run state that a child would otherwise attach to."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT"))}
