"""The ``evaluate`` stage end to end on tiny models and a tiny PoseScenes world.

Data: synth -> ingest -> poses (ground truth) -> pairs, built with the stages' own library functions.
Models: ``build_tiny_models`` (random 32 px SD + primary adapter); the "trained" secondary adapter is a copy
of the primary adapter (a legit input: evaluation must treat it like any other adapter directory) or, where
a test needs one that *is* more stable, an adapter whose weights are all zero (it adds nothing to the U-Net,
so every pose of a (prompt, seed) gives the base model's image: zero drift by construction). Judges: small
random world judges saved where ``world.shipped_dir`` says, so ``pose_judge: auto`` picks them as for the
built-in world. MLflow: a SQLite store in tmp. Everything runs 1 prompt x 2 seeds x 2 poses x 2 DDIM steps at 32 px.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pytest
import torch
from _params import stage_options, write_params
from PIL import Image

from posescene.config import Params, load_params
from posescene.errors import ConfigError, InputDataError, ModelLoadError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads that
    wait for each other make every tiny kernel ~100x slower (measured: 0.2 vs 20 images/s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny data, models and judges (shared read-only; each test writes its own reports/train dirs)."""
    from diffusers import T2IAdapter

    from posescene.data.ingest import ingest_source
    from posescene.data.pairs import write_pairs
    from posescene.data.poses import run_poses
    from posescene.data.synth import generate
    from posescene.evaluation.judges import KeypointEstimator, SceneClassifier
    from posescene.world.architectures import build_tiny_models

    root = tmp_path_factory.mktemp("evaluate")
    synth = generate(
        root / "synth", n_scenes=4, poses_per_scene=3, size=32, seed=0, first_scene=0, coupling=0.0, progress=False
    )
    ingest_source(synth, root / "ingested", **stage_options(ingest_source, "ingest"), progress=False)
    run_poses(root / "ingested" / "manifest.parquet", root / "lattices", **stage_options(run_poses, "poses"),
              progress=False)  # fmt: skip
    write_pairs(root / "lattices", root / "pairs.parquet", root / "ingested", strategy="scene", heldout_fraction=0.3,
                max_pairs_per_group=30, seed=0)  # fmt: skip
    pipeline, primary = build_tiny_models(root / "tiny", seed=0)
    torch.manual_seed(0)
    KeypointEstimator(widths=(8, 8, 8), resolution=32).save_pretrained(root / "judges" / "keypoint_estimator")
    SceneClassifier(widths=(8, 8, 8), resolution=32).save_pretrained(root / "judges" / "scene_classifier")
    still = T2IAdapter.from_pretrained(primary)
    with torch.no_grad():
        for weight in still.parameters():
            weight.zero_()
    still.save_pretrained(root / "still_adapter", safe_serialization=True)
    params = {
        "seed": 0,
        "ingest": {"out_dir": str(root / "ingested")},
        "poses": {"out_dir": str(root / "lattices")},
        "pairs": {"out": str(root / "pairs.parquet")},
        "model": {"base": str(pipeline), "primary_adapter": str(primary), "resolution": 32},
        "world": {"shipped_dir": str(root / "judges"), "pipeline_dir": str(pipeline)},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "evaluate-test"},
        "evaluate": {
            "n_prompts": 1,
            "n_poses": 2,
            "seeds": [0, 1],
            "scales": [0.0, 0.5, 1.0],
            "secondary_scales": [0.5, 1.0],
            "alternatives": {
                "mask_margins": [0.1],
                "masked_scales": [1.5],
                "steps_fractions": [0.5],
                "both_weights": [0.5],
                "inpaint_margin": 0.15,
                "placebo_scale": 0.75,
            },
            "steps": 2,
            "guidance_scale": 2.0,
            "batch_size": 8,
            "device": "cpu",
            "bootstrap_samples": 50,
            "store": str(root / "store"),  # finished batches (posescene.shards), shared by this module's tests
        },
        "ops": {"lock_path": str(root / "posescene.lock")},
        "train": {"secondary_role": "replace"},  # the adapter drawn alone; a correction has its own test
    }
    write_params(root / "params.yaml", params)  # params.yaml's defaults with the above
    return {"root": root, "params": root / "params.yaml", "primary": primary, "still": root / "still_adapter"}


def _params(world: dict[str, Path], name: str, secondary: Path | None, **overrides: Any) -> Params:
    """Params for one test: its own reports, train dir (holding ``secondary``) and registered model."""
    case = world["root"] / name
    train = case / "train"
    if secondary is not None:
        shutil.rmtree(train / "secondary_adapter", ignore_errors=True)
        shutil.copytree(secondary, train / "secondary_adapter")
    return load_params(
        world["params"],
        {
            "evaluate.out_dir": str(case / "reports"),
            "train.out_dir": str(train),
            "mlflow.registered_model": f"adapter-{name}",
            **overrides,
        },
    )


def _register(params: Params) -> str:
    """What training does at its end: log the secondary adapter as a pyfunc version aliased ``candidate``."""
    import mlflow

    from posescene import tracking
    from posescene.serving.pyfunc import log_and_register

    tracking.configure(params.mlflow)
    with mlflow.start_run(run_name="train"):
        return str(log_and_register(Path(params.train.out_dir) / "secondary_adapter", params))


def _client(params: Params) -> Any:
    from mlflow import MlflowClient

    uri = params.mlflow.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias(params: Params, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(params).get_model_version_by_alias(params.mlflow.registered_model, alias).version)
    except MlflowException:
        return None


def test_evaluate_writes_the_frontier_verdict_gate_and_report(world: dict[str, Path]) -> None:
    from posescene.evaluation.evaluate import evaluate

    ablation = [{"name": "still", "adapter": str(world["still"])}]  # an ablation arm: scale 1 only
    params = _params(world, "outputs", world["primary"], **{"evaluate.ablations": ablation})
    version = _register(params)
    result = evaluate(params, progress=False)
    out = Path(params.evaluate.out_dir)
    arms = ["base", "primary_s50", "primary_s100", "secondary_s50", "secondary_s100", "still_s100", "mask_m10",
            "masked_s150", "steps_f50", "both_w50", "inpaint_m15", "placebo_s75"]  # fmt: skip
    assert result.arm_keys == arms and result.images.shape[:3] == (2, 2, len(arms))
    # one prompt, two seeds: the bootstrap's outer unit is the prompt
    assert (result.frontier.n_prompts, result.frontier.n_sets) == (1, 2)
    assert result.frontier.curves["mask"] == ["mask_m10", "primary_s100"]
    assert result.frontier.curves["masked"] == ["base", "mask_m10", "masked_s150"]  # the mask's arm is its scale 1
    assert result.frontier.curves["steps"] == ["base", "steps_f50", "primary_s100"]

    summary = json.loads((out / "metrics.json").read_text())
    # the decision leads the file (what `dvc metrics show` lists first)
    assert list(summary)[:2] == ["verdict", "gate"] and summary["verdict"]["text"] == result.verdict
    assert summary["comparisons"]["still"]["reference"] == "primary"  # every ablation arm's own comparison
    for candidate in ("still", "both", "placebo", "secondary"):
        key = f"{candidate}_vs_alternatives"
        assert key in result.frontier.comparisons and result.frontier.comparisons[key].best_alternative
    assert summary["new_noise_drift"]["drift"] > 0 and "to_base_far" in summary["arms"]["primary_s100"]
    assert list(summary["arms"]) == arms
    for name, arm in summary["arms"].items():
        for key in ("drift", "fidelity_norm"):
            if arm[f"{key}_low"] is not None:
                assert arm[f"{key}_low"] <= arm[key] <= arm[f"{key}_high"], (name, key, arm)
    # every arm of a set starts from the set's noise: the base model ignores the pose, so its scene cannot drift
    assert summary["arms"]["base"]["drift"] == pytest.approx(0.0, abs=1e-3)
    assert summary["arms"]["primary_s100"]["drift"] > summary["arms"]["base"]["drift"]
    # the secondary adapter is a copy of the primary: the same images, the same numbers
    for key in ("drift", "fidelity_norm", "oks"):
        assert summary["arms"]["secondary_s100"][key] == pytest.approx(summary["arms"]["primary_s100"][key], abs=1e-6)
    assert {"chance", "ceiling", "measure"} <= set(summary["fidelity"])
    assert summary["run"]["n_images"] == 2 * 2 * len(arms)
    # what only this run has lives in run.json, so metrics.json and report.md are the same bytes on every rerun
    this_run = json.loads((out / "run.json").read_text())
    assert this_run["images_per_s"] > 0 and this_run["mlflow_run_id"] == result.mlflow_run_id
    assert not {"seconds", "images_per_s", "mlflow_run_id"} & set(summary["run"])

    drift = pacsv.read_csv(out / "drift.csv").to_pylist()
    assert len(drift) == len(arms) * 2 and {"arm", "set", "pose_i", "pose_j", "rmse", "rmse_pair_mask"} <= set(drift[0])
    fidelity = pacsv.read_csv(out / "fidelity.csv").to_pylist()
    assert len(fidelity) == 4 * len(arms) and {"oks", "keypoint_error", "pck@0.1box"} <= set(fidelity[0])
    curves = sorted(p.name for p in (out / "plots" / "frontier").iterdir())
    assert curves == [f"{c}.csv" for c in sorted(["primary", "secondary", "still", "mask", "masked", "steps", "both",
                                                  "inpaint", "placebo"])]  # fmt: skip
    assert result.frontier.comparisons["still"].delta_drift is not None  # on the primary's curve like the secondary
    frontier = pacsv.read_csv(out / "plots" / "frontier" / "primary.csv").to_pylist()
    assert [r["scale"] for r in frontier] == [0.0, 0.5, 1.0]  # the base model is every curve's scale-0 point
    assert {"fidelity_norm", "fidelity_norm_low", "drift", "drift_high"} <= set(frontier[0])
    with Image.open(out / "plots" / "frontier.png") as plot:
        assert plot.format == "PNG" and plot.width > 400
    grids = sorted((out / "grids").glob("set_*.png"))
    assert len(grids) == 2
    with Image.open(grids[0]) as grid:  # a header row of pose maps + one row per arm
        assert grid.height > (1 + len(arms)) * 96

    report = (out / "report.md").read_text()
    assert report.splitlines()[2] == f"**Verdict: {result.verdict}**"
    assert "plots/frontier.png" in report and "| chance |" in report and "| ceiling (real images) |" in report
    assert "### Power" in report and "grids/set_0.png" in report and "| still | primary |" in report
    assert "## Against every alternative" in report and "| still | alternatives |" in report
    assert "Power of the gate" in report and "drift / new noise" in report
    # random tiny judges: the primary is not clearly above chance, so nothing can be concluded or promoted
    assert result.promotion.status == "not_evaluated" and "**Not evaluated**" in report
    assert _alias(params, "champion") is None and _alias(params, "candidate") == version

    # the MLflow run has the metrics and the report; the version carries the evaluation and explains itself
    client = _client(params)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["posescene.promotion"] == "not_evaluated"
    assert run.data.metrics["arms.primary_s100.drift"] == pytest.approx(summary["arms"]["primary_s100"]["drift"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "plots", "grids"} <= logged and ".gitkeep" not in logged
    v = client.get_model_version(params.mlflow.registered_model, version)
    assert v.tags["eval.decision"] == "not_evaluated" and v.tags["eval.run_id"] == result.mlflow_run_id
    assert "Base model:" in v.description and "@champion" in v.description and result.verdict in v.description

    from flows.evaluate import evaluate_markdown

    markdown = evaluate_markdown(result.metrics, params)
    assert result.verdict in markdown and result.mlflow_run_id in markdown


def test_an_all_zero_adapter_is_not_promoted(world: dict[str, Path]) -> None:
    """The trivial solution: an adapter that adds nothing (the base model) has zero drift. It must not pass."""
    from posescene.evaluation.evaluate import evaluate

    params = _params(world, "still", world["still"])
    _register(params)
    result = evaluate(params, progress=False)
    assert result.metrics["arms"]["secondary_s100"]["drift"] == pytest.approx(0.0, abs=1e-6)
    assert result.metrics["arms"]["primary_s100"]["drift"] > 1e-4
    assert not result.promotion.promoted and _alias(params, "champion") is None


def test_an_all_zero_correction_is_the_primary_and_is_not_promoted(world: dict[str, Path]) -> None:
    """train.secondary_role correct: the candidate is P-Ad + S-Ad. A correction that adds nothing is the primary
    itself, so it draws the primary's images and must not pass the gate. An ablation run says its role: the same
    adapter as a correction is the primary again, as a replacement it is the base model."""
    from posescene.evaluation.evaluate import evaluate

    ablations = [{"name": "as_correction", "adapter": str(world["still"]), "role": "correct"},
                 {"name": "as_replacement", "adapter": str(world["still"])}]  # fmt: skip
    params = _params(world, "still-correction", world["still"],
                     **{"train.secondary_role": "correct", "evaluate.ablations": ablations})  # fmt: skip
    _register(params)
    result = evaluate(params, progress=False)
    arms = result.metrics["arms"]
    for arm, same_as in (("secondary_s100", "primary_s100"), ("as_correction_s100", "primary_s100"),
                         ("as_replacement_s100", "base")):  # fmt: skip
        for key in ("drift", "fidelity_norm"):
            assert arms[arm][key] == pytest.approx(arms[same_as][key], abs=1e-6), (arm, key)
    assert not result.promotion.promoted and _alias(params, "champion") is None


def test_evaluation_refuses_scenes_the_world_was_trained_on(world: dict[str, Path], tmp_path: Path) -> None:
    from posescene.evaluation.evaluate import evaluate

    record = {"generator": "posescene.synth", "seed": 0, "parts": {"unet": [[0, 4]]}}
    judges = tmp_path / "judges"
    shutil.copytree(world["root"] / "judges", judges)
    (judges / "training_data.json").write_text(json.dumps(record))
    params = _params(world, "leak", world["primary"], **{"world.shipped_dir": str(judges)})
    with pytest.raises(InputDataError, match=r"unet \(trained on seed 0 scenes \[\[0, 4\]\]\)"):
        evaluate(params, progress=False)


def test_bad_params_fail_early(world: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from posescene.cli import app
    from posescene.evaluation.evaluate import evaluate

    for key, value, where in (
        ("evaluate.n_poses", 1, "n_poses"),
        ("evaluate.adapters", ["primary", "tertiary"], "adapters"),
        ("evaluate.scales", [0.5, 1.0], "scales"),
        ("evaluate.promotion.drift_margin", 1.5, "drift_margin"),
        ("evaluate.promotion.fidelity_floor", -1, "fidelity_floor"),
        ("evaluate.fidelity", "pck", "fidelity"),
        ("evaluate.promotion.metric", "lpips", "metric"),
        ("evaluate.pose_judge", "oracle", "pose_judge"),
        ("evaluate.nposes", 2, "nposes"),
        ("evaluate.alternatives.masked_scales", [1.0], "masked_scales"),
        ("evaluate.alternatives.mask_margins", [], "masked_scales"),
    ):
        with pytest.raises(ConfigError, match=where):
            load_params(world["params"], {key: value})

    out = tmp_path / "reports"
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"train.out_dir": str(tmp_path / "untrained")}, ModelLoadError, "secondary adapter does not exist"),
        ({"pairs.out": str(tmp_path / "none.parquet")}, InputDataError, "no pairs file"),
        ({"evaluate.ablations": [{"name": "primary", "adapter": str(world["still"])}]}, ConfigError, "is taken"),
        ({"world.shipped_dir": str(tmp_path / "no-judges")}, ModelLoadError, "keypoint_estimator"),
        ({"evaluate.clip_model": str(tmp_path / "no-clip")}, ModelLoadError, "clip_model"),
        ({"evaluate.lpips_weights": str(tmp_path / "lpips.pt")}, ModelLoadError, "lpips_weights"),
        ({"mlflow.tracking_uri": "sqlite:////proc/no/such/dir/mlflow.db"}, ConfigError, "MLflow tracking"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"evaluate.device": "cuda"}, ConfigError, "CUDA is not available"))
    for overrides, error, message in cases:
        params = _params(
            world, "bad", world["primary"], **{"evaluate.out_dir": str(out), "mlflow.experiment": "bad", **overrides}
        )
        with pytest.raises(error, match=message):
            evaluate(params, progress=False)
    # every mistake surfaced while loading: no MLflow run was started (that happens once everything is loaded)
    # and nothing was written
    assert not out.exists()
    client = _client(load_params(world["params"]))
    experiment = client.get_experiment_by_name("bad")
    assert experiment is None or not client.search_runs([experiment.experiment_id])

    result = CliRunner().invoke(app, ["evaluate", "--params", str(world["params"]), "--set", "evaluate.n_poses=1"])
    assert result.exit_code == 2 and "n_poses" in result.output


def test_generate_cli_with_lattice_poses_and_both_adapters(world: dict[str, Path], tmp_path: Path) -> None:
    """``posescene generate``: poses from the lattices dataset, the secondary and both adapters."""
    from typer.testing import CliRunner

    from posescene.cli import app
    from posescene.data.poses import read_lattices

    image_ids = [r["image_id"] for r in read_lattices(world["root"] / "lattices").to_pylist() if r["has_person"]][:2]
    args = ["generate", str(tmp_path / "out"), "-p", "a person on a beach", "--params", str(world["params"]),
            "--image-id", image_ids[0], "--image-id", image_ids[1], "--seed", "3", "--model", "secondary",
            "--model", "both", "--secondary", str(world["still"]), "--steps", "2", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [(r["model"], r["pose"]) for r in index] == [("secondary", 0), ("secondary", 1), ("both", 0), ("both", 1)]
    images = {r["file"]: Image.open(tmp_path / "out" / r["file"]).convert("RGB") for r in index}
    # the all-zero secondary adapter adds nothing: both poses give the same image from the same noise
    a, b = (images[f"secondary/p0_s3_pose{j}.png"].tobytes() for j in (0, 1))
    assert a == b
    assert (tmp_path / "out" / "grid_p0_s3.png").exists()


# metrics.json fields bound to the run, not to the images: wall time, throughput and the MLflow run's id
def assert_same_outputs(out1: Path, out2: Path) -> None:
    """Two evaluations' CSVs and metrics.json are byte-identical (run-bound values live in run.json)."""
    for name in ("drift.csv", "fidelity.csv", "metrics.json"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name


def test_two_processes_give_the_images_and_metrics_of_one(world: dict[str, Path], tmp_path: Path) -> None:
    """A sharded evaluation (2 CPU ranks under torchrun, as `accelerate launch` on GPUs) draws the batches one
    process draws, byte for byte: the same store entries, the same CSVs, the same metrics.json. Each process runs
    torch at 1 thread (the bytes on a CPU depend on it)."""
    import os
    import subprocess
    import sys

    import numpy as np

    from posescene.evaluation.evaluate import evaluate

    one = _params(world, "one_process", world["primary"], **{"evaluate.store": str(tmp_path / "one")})
    _register(one)
    result = evaluate(one, progress=False)
    assert result is not None

    two = tmp_path / "two"
    overrides = {"evaluate.out_dir": str(two / "reports"), "train.out_dir": str(two / "train"),
                 "mlflow.registered_model": "adapter-two_processes", "evaluate.store": str(two / "store")}  # fmt: skip
    shutil.copytree(world["primary"], two / "train" / "secondary_adapter")
    _register(load_params(world["params"], overrides))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["-m", "posescene.cli", "evaluate", "--params", str(world["params"]), "--no-progress"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    proc = subprocess.run([*launch, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-12000:]
    assert "rank 1/2" in proc.stderr and "rank 0/2" in proc.stderr  # both ranks drew (progress lines)

    def entries(root: Path) -> dict[str, Any]:
        return {p.name: np.load(p)["images"] for p in sorted(root.rglob("*.npz"))}

    ones, twos = entries(tmp_path / "one"), entries(two / "store")
    assert sorted(ones) == sorted(twos) and len(ones) >= 4
    assert all(np.array_equal(ones[k], twos[k]) for k in ones)
    out1, out2 = Path(one.evaluate.out_dir), Path(overrides["evaluate.out_dir"])
    assert_same_outputs(out1, out2)


def test_a_killed_evaluation_resumes_without_losing_a_batch(world: dict[str, Path], tmp_path: Path) -> None:
    """SIGKILL mid-run (no clean-up runs): the batches already in the store survive, the rerun draws only the rest
    (the survivors are not rewritten) and ends with the CSVs and metrics of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def command(name: str) -> tuple[list[str], dict[str, str]]:
        case = tmp_path / name
        overrides = {"evaluate.out_dir": str(case / "reports"), "train.out_dir": str(case / "train"),
                     "mlflow.registered_model": f"adapter-{name}", "evaluate.store": str(case / "store"),
                     "evaluate.batch_size": "2"}  # fmt: skip
        shutil.copytree(world["primary"], case / "train" / "secondary_adapter")
        _register(load_params(world["params"], overrides))
        args = [sys.executable, "-m", "posescene.cli", "evaluate", "--params", str(world["params"]), "--no-progress"]
        for key, value in overrides.items():
            args += ["--set", f"{key}={value}"]
        return args, overrides

    whole, whole_o = command("uninterrupted")
    done = subprocess.run(whole, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]

    killed, killed_o = command("killed")
    store = Path(killed_o["evaluate.store"])
    proc = subprocess.Popen(killed, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(store.rglob("*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivors = {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")}
    total = len(list(Path(whole_o["evaluate.store"]).rglob("*.npz")))
    assert 2 <= len(survivors) < total, (len(survivors), total)  # killed mid-run, with finished batches kept
    assert not (Path(killed_o["evaluate.out_dir"]) / "metrics.json").exists()

    resumed = subprocess.run(killed, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert all(p.stat().st_mtime_ns == t for p, t in survivors.items())  # not redrawn
    out1, out2 = Path(whole_o["evaluate.out_dir"]), Path(killed_o["evaluate.out_dir"])
    assert_same_outputs(out1, out2)
