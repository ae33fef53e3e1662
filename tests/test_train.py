"""The cache and train stages end to end on tiny models (32 px), through the library functions.

One tiny world (synth -> ingest -> poses -> pairs -> render -> cache) and one trained run are shared by
the module; the other tests start runs of their own from it (resume, divergence) in their own dirs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _tables import tiny_trained_world, world_params

from posescene.config import Params, load_params
from posescene.errors import ConfigError, InputDataError, TrainingDivergedError
from tests.conftest import REPO_ROOT

STEPS = 16  # the shared run: checkpoints at 8 and 16 (Adam needs ~15 steps before J reliably drops)
RES = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The CI box has 2 shared cores: more torch threads than free cores makes tiny models ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny models and a tiny PoseScenes dataset taken through every data stage and the cache stage."""
    return tiny_trained_world(tmp_path_factory.mktemp("train-world"), RES)


def tiny_params(world: dict[str, Any], run_dir: Path, **train: Any) -> Params:
    """params.yaml with every path in the tmp world (outputs under ``run_dir``) and tiny training settings."""
    root = world["root"]
    overrides = {
        **world_params(world, RES),
        "train.out_dir": str(run_dir / "out"),
        "train.checkpoint_dir": str(run_dir / "checkpoints"),
        "train.threads": 1,  # the shared 2-core box: one thread (the stage pins its own, whatever the caller's)
        "train.steps": STEPS,
        "train.batch_size": 8,
        "train.lr": 2e-3,
        "train.warmup_steps": 0,
        "train.checkpoint_every": STEPS // 2,
        "train.validate_every": STEPS,
        "train.validation_poses": 2,
        "train.validation_steps": 2,
        "train.log_every": 4,
        "train.diagnose_every": STEPS // 2,
        # the shared run checks the loop with the reading whose losses are all non-zero at initialisation (its
        # diagnostics are all defined); the default reading, distill, has runs of its own below
        "train.balance_reading": "whole",
        # ... and with the first reading (S-Ad a copy of P-Ad, L_diff against the primary on A_0); the default
        # reading, text-correct, and each other reading have runs of their own
        "train.diff_target": "primary",
        "train.secondary_role": "replace",
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "mlflow.experiment": "test-train",
        "mlflow.registered_model": "tiny-secondary",
        **{f"train.{k}": v for k, v in train.items()},
    }
    return load_params(REPO_ROOT / "params.yaml", overrides)


STOCK_DIFFUSERS_SCRIPT = """
import sys
import numpy as np
import torch
from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

adapter_dir, pipeline_dir, res = sys.argv[1], sys.argv[2], int(sys.argv[3])
adapter = T2IAdapter.from_pretrained(adapter_dir)
pipe = StableDiffusionAdapterPipeline.from_pretrained(pipeline_dir, adapter=adapter)
pose = torch.ones(1, 1, res, res)
pose[..., 8:24:4, 14:18] = 0.0
image = pipe("a person on a beach", image=pose, num_inference_steps=2, height=res, width=res,
             generator=torch.Generator().manual_seed(0), output_type="np").images[0]
assert image.shape == (res, res, 3) and np.isfinite(image).all(), image.shape
assert not any(m.startswith("posescene") for m in sys.modules), "posescene was imported"
print("OK")
"""


@pytest.fixture(scope="module")
def trained(world: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The shared run; it also starts the stock-diffusers check of its adapter in a fresh interpreter.

    That check pays a cold ``import diffusers`` (~10-20 s on a busy box), so it runs in the background while
    the other tests run, and the last test collects it.
    """
    from posescene.training.train import train

    params = tiny_params(world, world["root"] / "run")
    result = train(params, progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    stock = subprocess.Popen(
        [sys.executable, "-c", STOCK_DIFFUSERS_SCRIPT, str(result.adapter_dir), str(params.model.base), str(RES)],
        cwd=world["root"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield {"params": params, "result": result, "stock_diffusers": stock}
    if stock.poll() is None:
        stock.kill()
        stock.communicate()


def read_loss_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- cache


def test_cache_holds_every_paired_image_and_caption(world: dict[str, Any]):
    from posescene.data.cache import caption_key, load_cache
    from posescene.data.pairs import read_pairs

    cache = load_cache(world["root"] / "cache", str(world["pipeline"]), RES)
    pairs = read_pairs(world["root"] / "pairs.parquet").to_pydict()
    assert set(cache.image_row) == set(pairs["image_a"]) | set(pairs["image_b"])
    assert set(cache.caption_row) == {caption_key(c) for c in pairs["caption"]}
    assert cache.latents.shape[1:] == (4, RES // 4, RES // 4)  # the tiny VAE's factor is 4
    assert cache.text.shape[1:] == (32, 32)  # 32 tokens x the tiny text encoder's width
    assert torch.isfinite(cache.latents).all() and torch.isfinite(cache.text).all()
    with pytest.raises(InputDataError, match="64 px"):  # a stale cache (other resolution) is refused
        load_cache(world["root"] / "cache", str(world["pipeline"]), 64)


# ------------------------------------------------------------------------------------------- train


def fixed_batch_losses(params: Params, adapter_dirs: list[Path]) -> list[tuple[float, float]]:
    """(L_diff, L_bal) of each S-Ad on every training row at fixed noise and timesteps: no sampling noise."""
    from posescene.data.cache import load_cache
    from posescene.models import load_adapter, load_base
    from posescene.training import objective
    from posescene.training.train import load_train_set, person_boxes, predict_two_branches, read_pair_rows

    base = load_base(params.model.base).freeze()
    primary = load_adapter(params.model.primary_adapter).eval()
    cache = load_cache(params.cache.out_dir, params.model.base, RES)
    data = load_train_set(params, read_pair_rows(params.pairs.out), cache, person_boxes(params.poses.out_dir))
    batch = data.batch(torch.arange(len(data)).numpy(), torch.device("cpu"))
    out = []
    for adapter_dir in adapter_dirs:
        secondary = load_adapter(str(adapter_dir)).eval()
        g = torch.Generator().manual_seed(123)
        sums = torch.zeros(2)
        with torch.no_grad():
            for t_value in (100, 400, 700):
                noise = torch.randn(batch["x0"].shape, generator=g)
                t = torch.full((len(data),), t_value)
                x_t = base.noise_scheduler.add_noise(batch["x0"], noise, t)
                eps_s, eps_p = predict_two_branches(
                    base.unet, primary, secondary, x_t, t, batch["text"], batch["map_a"], batch["map_b"]
                )
                losses = objective.two_branch_losses(noise, eps_s, eps_p, batch["mask"], batch["is_b_row"])
                sums += torch.stack([losses.l_diff, losses.l_bal])
        out.append((float(sums[0] / 3), float(sums[1] / 3)))
    return out


def test_training_lowers_the_objective(trained: dict[str, Any]):
    params, result = trained["params"], trained["result"]
    # S-Ad starts as a copy of P-Ad
    before, after = fixed_batch_losses(params, [Path(params.model.primary_adapter), result.adapter_dir])
    j_before = 2.0  # J with each loss divided by its value at the start
    j_after = after[0] / before[0] + after[1] / before[1]
    assert j_after < j_before - 0.03 and after[0] < before[0], (before, after)

    rows = read_loss_csv(result.out_dir / "loss.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert float(rows[0]["j"]) == pytest.approx(2.0)  # scale balance: J starts at its equilibrium value
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics == pytest.approx(result.metrics)
    assert {"final_pose_sens_whole", "final_pose_sens_person", "final_pose_sens_distill"} <= set(metrics)
    assert (result.out_dir / "validation" / f"step_{STEPS}.png").is_file()


def test_every_run_logs_the_balance_diagnostics(trained: dict[str, Any]):
    """lambda_eff on every step; gradient norms and pose sensitivity at step 1 and every diagnose_every."""
    rows = read_loss_csv(trained["result"].out_dir / "loss.csv")
    # scale mapping: lambda_eff = mean(L_bal) / mean(L_diff); at step 1 the means are the first losses
    assert float(rows[0]["lambda_eff"]) == pytest.approx(float(rows[0]["l_bal"]) / float(rows[0]["l_diff"]), rel=1e-5)
    assert all(float(r["lambda_eff"]) == pytest.approx(float(r["scale_diff"]) / float(r["scale_bal"])) for r in rows)
    diagnosed = [int(r["step"]) for r in rows if r["gnorm_diff"]]
    assert diagnosed == [1, STEPS // 2, STEPS]
    for r in rows:
        if not r["gnorm_diff"]:
            assert not r["pose_sens_whole"]  # measured together, blank in between
            continue
        assert float(r["gnorm_diff"]) > 0 and float(r["gnorm_bal"]) > 0
        ratio = float(r["lambda_eff"]) * float(r["gnorm_diff"]) / float(r["gnorm_bal"])
        assert float(r["gnorm_ratio"]) == pytest.approx(ratio, rel=1e-6)
        assert all(0.0 <= float(r[f"pose_sens_{k}"]) <= 1.0 for k in ("whole", "person", "distill"))
    # at initialisation S-Ad is P-Ad: the distill loss is 0 with its features and not without them
    assert float(rows[0]["pose_sens_distill"]) == 1.0
    # the probe's L_diff, pose-loss fraction and cross-pose drift at the same steps; at initialisation S-Ad is
    # P-Ad, so it has lost none of the primary's pose
    probed = [r for r in rows if r["probe_l_diff"]]
    assert [int(r["step"]) for r in probed] == diagnosed
    assert float(rows[0]["probe_pose_frac"]) == 0.0 and float(rows[0]["probe_drift"]) > 0
    assert not any(r["l_cross"] or r["mu"] or r["pose_frac"] for r in rows)  # readings that are off: blank


def test_every_run_summarises_l_diffs_drop_and_the_effective_primary_scale(trained: dict[str, Any]):
    """metrics.json: L_diff's relative drop on the probe, the pose-loss fraction and the effective primary scale;
    the summary says in words whether S-Ad is only a turned-down primary."""
    result = trained["result"]
    rows = read_loss_csv(result.out_dir / "loss.csv")
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    first = float(rows[0]["probe_l_diff"])
    assert metrics["l_diff_drop"] == pytest.approx(1 - metrics["final_probe_l_diff"] / first, rel=1e-6)
    assert 0 <= metrics["final_probe_pose_frac"] <= 1.5
    assert 0 <= metrics["final_effective_primary_scale"] <= 1 or math.isnan(metrics["final_effective_primary_scale"])
    assert metrics["final_turned_down_primary"] in (0.0, 1.0)
    verdict = "only a turned-down" if metrics["final_turned_down_primary"] else "not a turned-down"
    assert verdict in result.summary and result.as_dict()["summary"] == result.summary
    assert json.loads((result.out_dir / "run.json").read_text())["summary"] == result.summary


@pytest.mark.e2e  # two extra training runs (~17 s here)
def test_resume_equals_an_uninterrupted_run(world: dict[str, Any], trained: dict[str, Any], tmp_path: Path):
    """A run stopped at STEPS/2 and resumed writes exactly the loss curve of the uninterrupted run.

    The first half also measures the diagnostics on every step (the shared run: at 1, 8 and 16): measuring
    them beside the step changes nothing in training.
    """
    from posescene.training.checkpoints import checkpoints
    from posescene.training.train import train

    half = train(tiny_params(world, tmp_path, steps=STEPS // 2, diagnose_every=1), progress=False)  # "crashes"
    assert half.resumed_from == 0
    assert [s for s, _ in checkpoints(tmp_path / "checkpoints")] == [STEPS // 2]
    resumed = train(tiny_params(world, tmp_path), progress=False)
    assert resumed.resumed_from == STEPS // 2
    assert resumed.run_id == half.run_id  # the MLflow run continues too
    uninterrupted = read_loss_csv(trained["result"].out_dir / "loss.csv")
    got = read_loss_csv(resumed.out_dir / "loss.csv")
    assert sum(bool(r["gnorm_diff"]) for r in got) == STEPS // 2 + 1  # every step of the first half, then 16
    assert len(got) == len(uninterrupted)
    for mine, theirs in zip(got, uninterrupted, strict=True):
        both = {k for k in mine if mine[k] and theirs[k]}  # diagnostics: where both runs measured them
        assert {k: mine[k] for k in both} == {k: theirs[k] for k in both}
        # losses on every row (the columns of readings that are off are blank in both)
        assert {k for k in mine if mine[k] and not k.startswith(("gnorm", "pose_sens", "probe_"))} <= both
    a = (trained["result"].adapter_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (resumed.adapter_dir / "diffusion_pytorch_model.safetensors").read_bytes() == a
    # the DVC output's grid is the final step's, the same bytes resumed or not (grids along the way go beside the
    # checkpoints: a resumed run cannot redraw those of the steps before its checkpoint)
    grid = f"validation/step_{STEPS}.png"
    assert (resumed.out_dir / grid).read_bytes() == (trained["result"].out_dir / grid).read_bytes()

    # resuming a finished run whose outputs are gone (DVC removes them first) writes its last grid again
    shutil.rmtree(resumed.out_dir / "validation")
    done = train(tiny_params(world, tmp_path), progress=False)
    assert done.resumed_from == STEPS and (done.out_dir / "validation" / f"step_{STEPS}.png").exists()

    # --no-resume discards this setup's checkpoints and starts over
    again = train(tiny_params(world, tmp_path, steps=1), resume=False, progress=False)
    assert again.resumed_from == 0 and [s for s, _ in checkpoints(tmp_path / "checkpoints")] == [1]


def test_a_retrained_frozen_model_is_not_resumed(world: dict[str, Any], tmp_path: Path):
    """The resume fingerprint reads the frozen weights, not only their paths: a primary adapter retrained in
    place (same path, new weights, as when the world is rebuilt) starts a new run instead of resuming one made
    against the old weights."""
    from posescene.training.train import run_fingerprint

    adapter = tmp_path / "adapter"
    shutil.copytree(world["adapter"], adapter)
    p = tiny_params(world, tmp_path)
    p = p.model_copy(update={"model": p.model.model_copy(update={"primary_adapter": str(adapter)})})
    before = run_fingerprint(p)
    assert run_fingerprint(p) == before
    weights = adapter / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert run_fingerprint(p) != before


def test_bad_params_fail_early_naming_the_key(world: dict[str, Any], tmp_path: Path):
    from typer.testing import CliRunner

    from posescene.cli import app
    from posescene.training.train import train

    with pytest.raises(ConfigError, match=r"train\.balance.*'scale', 'fixed', 'uncertainty'"):
        tiny_params(world, tmp_path, balance="foo")
    with pytest.raises(ConfigError, match=r"train\.balance_reading.*'whole', 'person', 'distill'"):
        tiny_params(world, tmp_path, balance_reading="pose")
    with pytest.raises(ConfigError, match=r"train\.uncertainty_lr"):
        tiny_params(world, tmp_path, uncertainty_lr=0.0)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        tiny_params(world, tmp_path, lr=-1.0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.mixed_precision.*fp16"):
            train(tiny_params(world, tmp_path, mixed_precision="fp16"), progress=False)
    with pytest.raises(InputDataError, match="not a training checkpoint"):
        train(tiny_params(world, tmp_path), resume_from=tmp_path / "nope", progress=False)
    assert not (tmp_path / "out").exists()  # nothing was written

    cli = CliRunner().invoke(app, ["train", "--params", str(REPO_ROOT / "params.yaml"), "--set", "train.balance=foo"])
    assert cli.exit_code == 2 and "train.balance" in cli.output


def test_mlflow_run_and_registered_candidate(trained: dict[str, Any]):
    from mlflow import MlflowClient

    params, result = trained["params"], trained["result"]
    client = MlflowClient(tracking_uri=params.mlflow.tracking_uri, registry_uri=params.mlflow.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.002" and run.data.params["train.balance"] == "scale"
    assert run.data.metrics["final_j"] == pytest.approx(result.metrics["j"])
    history = client.get_metric_history(result.run_id, "l_diff")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "lambda_eff")) == list(range(1, STEPS + 1))
    for key in ("gnorm_ratio", "pose_sens_whole", "pose_sens_person", "pose_sens_distill"):
        assert sorted(m.step for m in client.get_metric_history(result.run_id, key)) == [1, STEPS // 2, STEPS]
    assert "final_pose_sens_person" in run.data.metrics
    name = params.mlflow.registered_model
    assert client.get_model_version(name, str(result.model_version)).run_id == result.run_id
    # every training run registers a version and moves `candidate` to it (other tests here train too)
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert int(client.get_model_version_by_alias(name, "candidate").version) == newest


@pytest.mark.parametrize(
    ("reading", "balance"),
    [("person", "fixed"), ("distill", "uncertainty"), ("distill", "scale")],
    ids=["person-fixed", "distill-unc", "distill-scale"],
)
def test_each_reading_and_balance_trains(
    world: dict[str, Any], trained: dict[str, Any], tmp_path: Path, reading, balance
):
    """The other readings train; fixed weighting applies lambda; uncertainty starts at 1 / L_i, at its own lr."""
    from posescene.training.checkpoints import checkpoints
    from posescene.training.train import train

    # gradient checkpointing on one of them: the gradient-norm diagnostics must work through recomputation
    params = tiny_params(
        world,
        tmp_path,
        steps=3,
        balance_reading=reading,
        balance=balance,
        lambda_diff=7.5,
        gradient_checkpointing=reading == "person",
    )
    result = train(params, progress=False)
    rows = read_loss_csv(result.out_dir / "loss.csv")
    assert len(rows) == 3 and all(
        torch.isfinite(torch.tensor([float(r["l_diff"]), float(r["l_bal"])])).all() for r in rows
    )
    whole = read_loss_csv(trained["result"].out_dir / "loss.csv")[0]
    assert rows[0]["l_diff"] == whole["l_diff"]  # same batch, same L_diff: only L_bal's reading changed
    first = {k: float(v) for k, v in rows[0].items() if v}
    if reading == "distill":
        assert first["l_bal"] == 0.0  # S-Ad starts as P-Ad, its own teacher
        assert float(rows[2]["l_bal"]) > 0.0  # and moves away once L_diff has pulled it
    else:
        assert first["l_bal"] != float(whole["l_bal"])
    if balance == "fixed":
        assert all(float(r["lambda_eff"]) == 7.5 for r in rows)
    elif balance == "scale":  # distill: L_bal over its pose effect (a constant > 0), not over its running mean
        assert 1.0 < first["scale_bal"] < 1e6 and all(r["scale_bal"] == rows[0]["scale_bal"] for r in rows)
        assert first["j"] == pytest.approx(1.0)  # the L_diff term at its mean, no pose lost yet
    else:  # log-variances start at log L_i of the first step and learn at train.uncertainty_lr
        assert first["scale_diff"] == pytest.approx(1 / first["l_diff"], rel=1e-4)
        blob = torch.load(checkpoints(tmp_path / "checkpoints")[-1][1] / "training_state.pt", weights_only=True)
        assert [g["lr"] for g in blob["optimizer"]["param_groups"]] == [params.train.lr, params.train.uncertainty_lr]


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(world: dict[str, Any], tmp_path: Path):
    from posescene.training.checkpoints import checkpoints
    from posescene.training.train import train

    params = tiny_params(world, tmp_path, lr=1e30, checkpoint_every=1, steps=6)
    with pytest.raises(TrainingDivergedError, match=r"non-finite .*train\.lr") as info:
        train(params, progress=False)
    kept = checkpoints(tmp_path / "checkpoints")
    assert kept, "no checkpoint was kept"
    assert str(kept[-1][1]) in str(info.value)
    assert not (tmp_path / "out" / "secondary_adapter").exists()  # no adapter published from a diverged run
    state = json.loads((kept[-1][1] / "trainer_state.json").read_text())
    assert all(torch.isfinite(torch.tensor([row["l_diff"], row["l_bal"]])).all() for row in state["history"])


def test_zero_output_starts_the_correction_at_zero_and_every_zeroed_layer_learns():
    """secondary_role correct: S-Ad starts at zero output (P-Ad + S-Ad = P-Ad) and still gets gradient."""
    from diffusers import T2IAdapter

    from posescene.training.train import zero_output_

    torch.manual_seed(0)
    adapter = T2IAdapter(in_channels=1, channels=[8, 16, 16], num_res_blocks=2, downscale_factor=4)
    with torch.no_grad():  # biases > 0 somewhere, as a trained adapter's are
        for p in adapter.parameters():
            p.add_(0.05)
    x = torch.rand(2, 1, 32, 32)
    assert any(f.abs().sum() > 0 for f in adapter(x))
    zero_output_(adapter)
    features = adapter(x)
    assert all(torch.equal(f, torch.zeros_like(f)) for f in features)
    weights = [torch.randn(f.shape) for f in features]
    sum((f * w).sum() for f, w in zip(features, weights, strict=True)).backward()
    zeroed = [adapter.adapter.conv_in.weight] + [
        m.block2.weight for m in adapter.modules() if type(m).__name__ == "AdapterResnetBlock"
    ]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in zeroed)
    light = T2IAdapter(in_channels=1, channels=[8, 16, 16], num_res_blocks=1, adapter_type="light_adapter")
    with pytest.raises(ConfigError, match="full adapter"):
        zero_output_(light)


def test_caption_readings_encode_action_free_captions_and_the_empty_caption(world: dict[str, Any], tmp_path: Path):
    """caption_actions false: every row's tau(y) is its caption without the action phrase; the empty-caption rows
    draw from a stream of their own, so the noise, timesteps and rows are the default reading's."""
    from posescene.data.cache import load_cache
    from posescene.data.synth import without_actions
    from posescene.models import encode_prompts, load_base
    from posescene.training.train import (
        draw_micro_batch,
        load_train_set,
        person_boxes,
        read_pair_rows,
        with_training_text,
    )

    params = tiny_params(world, tmp_path, caption_actions=False, empty_caption_share=0.5)
    base = load_base(params.model.base).freeze()
    cache = load_cache(params.cache.out_dir, params.model.base, RES)
    plain = load_train_set(params, read_pair_rows(params.pairs.out), cache, person_boxes(params.poses.out_dir))
    assert with_training_text(plain, base, tiny_params(world, tmp_path).train) is plain  # the default: untouched
    data = with_training_text(plain, base, params.train)
    assert any(without_actions(c) != c for c in data.captions)  # the synthetic captions name actions
    rows = [0, 1, len(data) - 1]
    with torch.no_grad():
        expected = encode_prompts(base, [without_actions(data.captions[i]) for i in rows])
        empty = encode_prompts(base, [""])
    assert torch.allclose(data.text[data.text_idx[rows]], expected, atol=1e-6)
    assert torch.allclose(data.text[data.empty_text], empty[0], atol=1e-6)
    cpu, scheduler = torch.device("cpu"), base.noise_scheduler
    batch = draw_micro_batch(data, params, 16, 0, 1, cpu, scheduler)
    default = draw_micro_batch(plain, tiny_params(world, tmp_path), 16, 0, 1, cpu, scheduler)
    for key in ("noise", "t", "x_t", "map_b"):
        assert torch.equal(batch[key], default[key])
    dropped = [bool(torch.equal(row, data.text[data.empty_text])) for row in batch["text"]]
    assert 0 < sum(dropped) < len(dropped)


def test_the_readings_of_issue_25_train_together(world: dict[str, Any], trained: dict[str, Any], tmp_path: Path):
    """Every reading on at once (text target, constraint, high-noise weighting, guided prediction with empty and
    action-free captions, S-Ad as a correction, cross-pose term): it trains and logs what each adds."""
    from posescene.models import load_adapter
    from posescene.training.train import train

    params = tiny_params(
        world,
        tmp_path,
        steps=3,
        balance_reading="distill",
        balance="constraint",
        constraint_epsilon=0.05,
        diff_target="text",
        diff_timestep_power=1.0,
        guided_diff=True,
        empty_caption_share=0.25,
        caption_actions=False,
        secondary_role="correct",
        cross_pose_weight=0.5,
    )
    result = train(params, progress=False)
    rows = read_loss_csv(result.out_dir / "loss.csv")
    assert len(rows) == 3 and all(r["l_cross"] and r["mu"] and r["pose_frac"] for r in rows)
    first = {k: float(v) for k, v in rows[0].items() if v}
    assert first["l_bal"] < 1e-9  # S-Ad starts at zero output: P-Ad + S-Ad is its own teacher (up to batching)
    assert first["mu"] == 0.0  # no pose lost yet: the constraint holds, mu stays at 0
    assert float(rows[0]["l_diff"]) != float(read_loss_csv(trained["result"].out_dir / "loss.csv")[0]["l_diff"])
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert {"l_cross", "mu", "pose_frac", "l_diff_drop", "final_effective_primary_scale"} <= set(metrics)
    # the saved correction is a plain T2IAdapter, not P-Ad: the `both` arm adds it to the primary
    saved = load_adapter(str(result.adapter_dir))
    primary = load_adapter(params.model.primary_adapter)
    assert not torch.equal(saved.adapter.conv_in.weight, primary.adapter.conv_in.weight)


def test_saved_adapter_loads_in_stock_diffusers(trained: dict[str, Any]):
    """A fresh interpreter with no posescene import: T2IAdapter + StableDiffusionAdapterPipeline generate.

    Last in the file: the process was started by the ``trained`` fixture and ran alongside the other tests.
    """
    out, err = trained["stock_diffusers"].communicate(timeout=300)
    assert trained["stock_diffusers"].returncode == 0 and out.strip().endswith("OK"), err[-3000:]
