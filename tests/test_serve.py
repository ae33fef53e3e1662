"""A REAL `mlflow models serve` scoring server answers a REST request for the registry's champion with a PNG.

The secondary adapter of a tiny 32 px world is logged as training logs it (a model from code with a signature
and an input example), aliased ``champion`` in a temp SQLite registry, served on a free localhost port with
``--env-manager local`` and asked over HTTP exactly as README's "Serve the champion" section shows.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from _ops_servers import VENV_BIN, free_port, http_ok, start, stop, tail, wait_until
from PIL import Image

pytestmark = pytest.mark.e2e

MODEL_NAME = "posescene-serve-test"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _register_champion(tmp_path: Path) -> str:
    """Log + register the tiny adapter as training does, alias it champion; returns the tracking URI."""
    from mlflow import MlflowClient

    from posescene import tracking
    from posescene.config import load_params
    from posescene.serving.pyfunc import log_and_register
    from posescene.world.architectures import build_tiny_models

    pipeline_dir, adapter_dir = build_tiny_models(tmp_path / "models", seed=0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {
        "model.base": str(pipeline_dir),
        "model.primary_adapter": str(adapter_dir),
        "model.resolution": 32,
        "evaluate.steps": 2,
        "evaluate.guidance_scale": 1.0,
        "mlflow.tracking_uri": uri,
        "mlflow.experiment": "serve-test",
        "mlflow.registered_model": MODEL_NAME,
    }
    params = load_params(REPO_ROOT / "params.yaml", overrides)
    with tracking.start_run(params, run_name="train"):
        version = log_and_register(adapter_dir, params)
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(MODEL_NAME, "champion", str(version))
    return uri


def _assert_model_from_code(uri: str, dest: Path) -> None:
    """Logged as code (no pickle to unpickle on load), with a signature and a served input example."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@champion", dst_path=str(dest)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc_flavor = mlmodel["flavors"]["python_function"]
    assert pyfunc_flavor.get("model_code_path"), pyfunc_flavor
    assert not list(local.rglob("*.pkl")), "a pickled python_model was logged"
    assert {c["name"] for c in json.loads(mlmodel["signature"]["inputs"])} >= {"prompt", "keypoints", "seed"}
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"][:2] == ["prompt", "keypoints"], example


def test_mlflow_models_serve_answers_with_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # provenance tags and any stray ./mlruns stay in tmp
    uri = _register_champion(tmp_path)
    _assert_model_from_code(uri, tmp_path / "downloaded")

    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    # the server execs `uvicorn` from PATH: the venv's bin first, as with an activated venv
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = start(cmd, log, env={"MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1", "PATH": path}, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(url + "/ping"), 240, "mlflow models serve", proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{tail(log)}")
        # the request README documents: one row of prompt + keypoints (+ their frame) + seed
        keypoints = [[16, 6], [16, 10], [12, 10], [11, 15], [10, 19], [20, 10], [21, 15], [22, 19], [14, 18],
                     [14, 24], [14, 30], [18, 18], [18, 24], [18, 30], [15, 5], [17, 5], None, None]  # fmt: skip
        body = {
            "dataframe_split": {
                "columns": ["prompt", "keypoints", "width", "height", "seed"],
                "data": [["a person waving on a beach", json.dumps(keypoints), 32, 32, 3]],
            }
        }
        status, answer = _post(url + "/invocations", body)
        assert status == 200, (answer, tail(log))
        image = Image.open(io.BytesIO(base64.b64decode(answer["predictions"][0]["image"])))
        assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
        low, high = image.convert("L").getextrema()
        assert high > low  # an image, not a blank frame
        # the same seed gives the same image (the noise depends only on the seed)
        assert _post(url + "/invocations", body)[1] == answer

        # the signature makes the server reject a request without a prompt, naming the column
        status, error = _post(url + "/invocations", {"dataframe_split": {"columns": ["seed"], "data": [[0]]}})
        assert status == 400 and "prompt" in json.dumps(error), (status, error)
    finally:
        stop(proc)
