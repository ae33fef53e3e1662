"""The built-in world: a tiny end-to-end bootstrap, judge round-trips, and the shipped models/world."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "world"
PARTS = ("vae", "unet", "primary_adapter", "scene_classifier", "keypoint_estimator")
needs_shipped = pytest.mark.skipif(
    not all((SHIPPED / p / "config.json").exists() for p in PARTS),
    reason="models/world is absent (it ships with the repo; retrain with `posescene bootstrap`)",
)

TINY = {
    "bootstrap.architecture": "tiny",
    "bootstrap.n_scenes": 16,
    "bootstrap.poses_per_scene": 2,
    "bootstrap.n_heldout": 4,
    "bootstrap.vae_steps": 3,
    "bootstrap.unet_steps": 3,
    "bootstrap.adapter_steps": 3,
    "bootstrap.judge_steps": 3,
    "bootstrap.decoder_steps": 3,
    "bootstrap.joint_steps": 3,
    "bootstrap.extra_first_scene": 100,
    "bootstrap.extra_scenes": 4,
    "bootstrap.batch_size": 8,
    "bootstrap.decoder_batch_size": 4,
    "bootstrap.eval_samples": 8,
    "bootstrap.eval_steps": 2,
    "bootstrap.threads": 2,
}


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.mark.e2e  # the whole tiny bootstrap (~70 s here)
def test_tiny_bootstrap_end_to_end(tmp_path: Path) -> None:
    """The real code path at test size: every part is written, loads with stock diffusers, and is measured."""
    from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel

    from posescene.config import load_params
    from posescene.errors import ConfigError
    from posescene.evaluation.judges import KeypointEstimator, SceneClassifier
    from posescene.world.bootstrap import bootstrap
    from posescene.world.measure import measure_world

    out = tmp_path / "world"
    tiny = TINY | {"bootstrap.checkpoint_dir": str(tmp_path / "ckpt")}
    metrics = bootstrap(load_params(REPO_ROOT / "params.yaml", tiny), out_dir=out, log_mlflow=False)
    for part in PARTS:
        assert (out / part / "config.json").exists(), part
        assert list((out / part).glob("*.safetensors")), part
    saved = json.loads((out / "bootstrap_metrics.json").read_text())
    assert saved["train_images"] == 32 and saved["heldout_images"] == 8 and saved["finetune_images"] == 40
    for key in ("vae_psnr_db", "base_scene_acc", "primary_scene_acc", "base_pck@0.1img", "primary_pck@0.1img",
                "judge_pck_real@0.1bbox", "judge_median_err_real_px", "primary_fidelity_norm@0.1bbox",
                "base_fidelity_norm@0.1bbox", "ceiling_pck@0.1bbox"):  # fmt: skip
        assert np.isfinite(saved[key]), key
    assert set(saved["targets"]) >= {"primary_fidelity_norm@0.1bbox", "vae_psnr_db", "judge_pck_real@0.1bbox"}
    # what each part was trained on: train scenes [0, 16) (+ extra [100, 104) for the fine-tuning stages)
    record = json.loads((out / "training_data.json").read_text())
    assert record["parts"]["unet"] == [[0, 16], [100, 104]]
    assert record["parts"]["keypoint_estimator"] == [[0, 16], [100, 104]]
    assert record["measured_on"] == [[16, 20]] and record["seed"] == 0
    assert metrics["latent_scaling_factor"] > 0
    assert "held-out" in (out / "README.md").read_text()
    vae = AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32)
    assert vae.config.scaling_factor == pytest.approx(metrics["latent_scaling_factor"])
    UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.float32)
    T2IAdapter.from_pretrained(out / "primary_adapter", torch_dtype=torch.float32)
    SceneClassifier.from_pretrained(out / "scene_classifier", torch_dtype=torch.float32)
    KeypointEstimator.from_pretrained(out / "keypoint_estimator", torch_dtype=torch.float32)

    # reuse: a part loaded from out_dir instead of retrained (resume after an interrupted run)
    again = bootstrap(
        load_params(REPO_ROOT / "params.yaml", tiny), out_dir=out, reuse=["vae", "judges", "unet"], log_mlflow=False
    )
    assert again["reused_parts"] == ["vae", "judges", "unet"]

    # measured again on fresh scenes no part trained on; scenes it trained on are refused
    before = sorted(p.name for p in out.iterdir())
    fresh = measure_world(out, load_params(REPO_ROOT / "params.yaml", tiny), 20, 2)
    assert fresh["scenes"] == [[20, 22]] and fresh["heldout_images"] == 4
    assert 0 <= fresh["ceiling_pck@0.1bbox"] <= 1 and np.isfinite(fresh["primary_fidelity_norm@0.1bbox"])
    assert sorted(p.name for p in out.iterdir()) == before  # the world itself is only read
    with pytest.raises(ConfigError, match="overlap what it trained on"):
        measure_world(out, load_params(REPO_ROOT / "params.yaml", tiny), 14, 4)


def test_judges_round_trip(tmp_path: Path) -> None:
    from posescene.evaluation.judges import KeypointEstimator, SceneClassifier, predict_keypoints, predict_scene

    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64)
    for cls in (SceneClassifier, KeypointEstimator):
        model = cls(resolution=64).eval()
        model.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__).eval()
        with torch.no_grad():
            a, b = model(images), loaded(images)
        first = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        torch.testing.assert_close(*first)
    names = predict_scene(SceneClassifier(resolution=64), images)
    assert len(names) == 3 and set(names) <= set(SceneClassifier(resolution=64).config.class_names)
    xy, score = predict_keypoints(KeypointEstimator(resolution=64), np.zeros((2, 48, 48, 3), dtype=np.uint8))
    assert xy.shape == (2, 18, 2) and score.shape == (2, 18)
    assert (xy >= 0).all() and (xy <= 48).all()  # pixels of the input size


def test_batch_pck_reference() -> None:
    from posescene.evaluation.metrics import batch_pck

    target = np.array([[[10.0, 10.0], [20.0, 30.0], [np.nan, np.nan]]])
    assert batch_pck(target, target, 0.1) == 1.0
    assert batch_pck(target + 5.0, target, 0.1, "image", 64) == 0.0  # 7.07 px > 6.4 px
    assert batch_pck(target + 5.0, target, 0.5, "bbox") == 1.0  # box side 20 px -> 10 px


@needs_shipped
@pytest.mark.e2e  # the shipped world through stock diffusers (~20 s here)
def test_shipped_world_in_stock_diffusers(tmp_path: Path) -> None:
    """Assemble, then load and sample with no posescene code: just diffusers, as any consumer would."""
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    from posescene.world.architectures import assemble_world_pipeline

    pipeline_dir = assemble_world_pipeline(SHIPPED, tmp_path / "pipeline")
    adapter = T2IAdapter.from_pretrained(SHIPPED / "primary_adapter", torch_dtype=torch.float32)
    pipe = StableDiffusionAdapterPipeline.from_pretrained(pipeline_dir, adapter=adapter, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cond = torch.ones(1, 1, 64, 64)
    cond[..., 20:23, 30:33] = 0.0
    out = pipe(
        "a person standing on a beach at noon", image=cond, num_inference_steps=4, guidance_scale=3.0,
        height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="np",
    ).images  # fmt: skip
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 40e6, f"models/world is {size / 1e6:.1f} MB; keep the shipped world small (fp16, <= 40 MB)"


@needs_shipped
def test_shipped_scene_classifier_on_real_synth(synth_dir: Path) -> None:
    from PIL import Image

    from posescene.evaluation.judges import SceneClassifier, predict_scene

    rows = [json.loads(line) for line in (synth_dir / "metadata.jsonl").read_text().splitlines()]
    images = [Image.open(synth_dir / r["file_name"]) for r in rows]
    model = SceneClassifier.from_pretrained(SHIPPED / "scene_classifier", torch_dtype=torch.float32)
    predicted = predict_scene(model, images)
    accuracy = np.mean([p == r["scene_kind"] for p, r in zip(predicted, rows, strict=True)])
    assert accuracy >= 0.9, f"scene classifier accuracy {accuracy:.2f} on real PoseScenes images"


def _weights(world: Path) -> dict[str, bytes]:
    return {str(p.relative_to(world)): p.read_bytes() for p in sorted(world.rglob("*.safetensors"))}


@pytest.mark.e2e  # bootstrap runs, interrupted and whole
def test_bootstrap_resume_reproduces_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed mid-stage and continued with resume=True ends with exactly the weights of a run that was
    never interrupted (per-step random streams + checkpointed optimiser/EMA state)."""
    from posescene.config import load_params
    from posescene.world import bootstrap as bs
    from posescene.world import loop

    tiny = TINY | {"bootstrap.checkpoint_minutes": 0, "bootstrap.joint_steps": 4, "bootstrap.judge_steps": 4}
    whole = bs.bootstrap(
        load_params(REPO_ROOT / "params.yaml", tiny | {"bootstrap.checkpoint_dir": str(tmp_path / "ck1")}),
        out_dir=tmp_path / "whole", log_mlflow=False,
    )  # fmt: skip

    class Killed(Exception):
        pass

    def kill(stage: str, step: int) -> None:
        if (stage, step) in {("judges", 2), ("joint", 3)}:
            raise Killed(f"{stage} {step}")

    p2 = load_params(REPO_ROOT / "params.yaml", tiny | {"bootstrap.checkpoint_dir": str(tmp_path / "ck2")})
    monkeypatch.setattr(loop, "after_step", kill)
    with pytest.raises(Killed, match="judges 2"):
        bs.bootstrap(p2, out_dir=tmp_path / "resumed", log_mlflow=False)
    with pytest.raises(Killed, match="joint 3"):
        bs.bootstrap(p2, out_dir=tmp_path / "resumed", log_mlflow=False, resume=True)
    monkeypatch.setattr(loop, "after_step", lambda stage, step: None)
    resumed = bs.bootstrap(p2, out_dir=tmp_path / "resumed", log_mlflow=False, resume=True)

    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) == 5
    assert [k for k in a if a[k] != b[k]] == []
    for key in ("vae_psnr_db", "primary_pck@0.1img", "judge_pck_real@0.1bbox"):
        assert resumed[key] == whole[key], key
    runs = resumed["stages"]["joint"]["runs"]
    assert [(r["from_step"], r["to_step"]) for r in runs] == [(0, 3), (3, 4)]
    assert {r["device"] for r in runs} == {"cpu"}
    # a finished stage keeps its result only (EMA weights, no optimiser), and the runs above loaded it exactly
    done = torch.load(tmp_path / "ck2" / "joint.pt", map_location="cpu", weights_only=False)
    assert (done["step"], done["opt"], done["ema"]) == (4, None, None)
    assert (tmp_path / "whole" / "training_data.json").read_text() == (
        tmp_path / "resumed" / "training_data.json"
    ).read_text()


@pytest.mark.e2e  # several bootstrap runs
def test_bootstrap_continues_a_world_and_records_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init_from: vae/unet/adapter continue from an earlier world; the record lists every range ever seen;
    held-out scenes that overlap training data are refused; --only trains one stage and writes no world."""
    from posescene.config import load_params
    from posescene.errors import ConfigError
    from posescene.world import bootstrap as bs
    from posescene.world import loop

    first = tmp_path / "first"
    base = TINY | {"bootstrap.joint_steps": 0, "bootstrap.decoder_steps": 0, "bootstrap.checkpoint_dir": ""}
    bs.bootstrap(load_params(REPO_ROOT / "params.yaml", base | {"bootstrap.extra_scenes": 0}), out_dir=first,
                 log_mlflow=False)  # fmt: skip
    assert json.loads((first / "training_data.json").read_text())["parts"]["unet"] == [[0, 16]]

    cont = TINY | {"bootstrap.init_from": str(first), "bootstrap.extra_first_scene": 200,
                   "bootstrap.checkpoint_dir": str(tmp_path / "ck")}  # fmt: skip
    partial = bs.bootstrap(load_params(REPO_ROOT / "params.yaml", cont), out_dir=tmp_path / "second",
                           log_mlflow=False, only=["joint"])  # fmt: skip
    assert partial["only"] == ["joint"] and not (tmp_path / "second").exists()
    metrics = bs.bootstrap(load_params(REPO_ROOT / "params.yaml", cont), out_dir=tmp_path / "second",
                           log_mlflow=False, resume=True)  # fmt: skip
    record = json.loads((tmp_path / "second" / "training_data.json").read_text())
    assert record["parts"]["unet"] == [[0, 16], [200, 204]]  # first run + this joint stage
    assert record["parts"]["vae"] == [[0, 16], [200, 204]]  # encoder [0, 16), decoder fine-tune adds [200, 204)
    assert record["parts"]["scene_classifier"] == [[0, 16], [200, 204]]  # retrained here
    assert metrics["continued_from"] == str(first)
    assert metrics["stages"]["unet"]["how"].startswith("continued from")
    assert metrics["stages"]["joint"]["runs"][0]["to_step"] == 3  # trained by the --only run, loaded here

    # a deadline: kill the joint stage after step 2, then use its last checkpoint as the result
    class Killed(Exception):
        pass

    def kill(stage: str, step: int) -> None:
        if (stage, step) == ("joint", 2):
            raise Killed

    early = cont | {"bootstrap.checkpoint_dir": str(tmp_path / "ck3"), "bootstrap.checkpoint_minutes": 0}
    monkeypatch.setattr(loop, "after_step", kill)
    with pytest.raises(Killed):
        bs.bootstrap(load_params(REPO_ROOT / "params.yaml", early), out_dir=tmp_path / "early", log_mlflow=False)
    monkeypatch.setattr(loop, "after_step", lambda stage, step: None)
    stopped = bs.bootstrap(load_params(REPO_ROOT / "params.yaml", early), out_dir=tmp_path / "early",
                           log_mlflow=False, resume=True, stop_early=True)  # fmt: skip
    assert stopped["stages"]["joint"]["stopped_early_at_step"] == 2
    assert "stopped at 2" in (tmp_path / "early" / "README.md").read_text()

    with pytest.raises(ConfigError, match="overlap"):
        bs.bootstrap(load_params(REPO_ROOT / "params.yaml", cont | {"bootstrap.extra_first_scene": 10}),
                     out_dir=tmp_path / "x", log_mlflow=False)  # fmt: skip
    shifted = cont | {"bootstrap.n_scenes": 8, "bootstrap.extra_first_scene": 300}  # held-out 8..12 inside [0, 16)
    with pytest.raises(ConfigError, match="overlap held-out"):
        bs.bootstrap(load_params(REPO_ROOT / "params.yaml", shifted), out_dir=tmp_path / "y", log_mlflow=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_measure_world_refuses_a_world_without_its_training_record(tmp_path: Path) -> None:
    """A world that does not say what it trained on cannot be measured on "fresh" scenes: a clear error."""
    from posescene.config import load_params
    from posescene.errors import InputDataError, ModelLoadError
    from posescene.world.measure import measure_world

    params = load_params(REPO_ROOT / "params.yaml", TINY)
    with pytest.raises(ModelLoadError, match="training_data.json: missing"):
        measure_world(tmp_path, params, 20, 2)
    (tmp_path / "training_data.json").write_text('["not", "a", "record"]')
    with pytest.raises(InputDataError, match="unreadable training record"):
        measure_world(tmp_path, params, 20, 2)


def test_bootstrap_refuses_cuda_without_a_gpu(tmp_path: Path) -> None:
    """--device cuda on a CPU-only machine stops at once with an error naming the fix, before any work."""
    from typer.testing import CliRunner

    from posescene.cli import app

    args = ["bootstrap", "--device", "cuda", "--out-dir", str(tmp_path / "w")]
    result = CliRunner().invoke(app, args + [f"--set={k}={v}" for k, v in TINY.items()])
    assert result.exit_code != 0
    assert "CUDA is not available" in result.output and "use auto or cpu" in result.output
    assert not (tmp_path / "w").exists()


def test_fidelity_interval_resamples_scenes() -> None:
    """The normalised fidelity's interval: a generator that draws the asked pose sits at 1, one that ignores
    the pose at 0 (the interval covers it), and one right on half the scenes between, inside its interval."""
    from posescene.evaluation.metrics import batch_pck
    from posescene.world.measure import fidelity_norm_ci, normalised_fidelity, other_pose

    rng = np.random.default_rng(0)
    poses, n_scenes = 4, 30
    own = rng.uniform(8, 56, (n_scenes * poses, 18, 2))
    other = own[other_pose(len(own), poses)]
    scenes = np.arange(len(own)) // poses
    rest = (own, own, other, scenes, 0.1, "bbox", 64, 0)  # real images = the asked poses: ceiling 1
    assert fidelity_norm_ci(own.copy(), *rest) == [1.0, 1.0]  # perfect pose: the ceiling
    lo, hi = fidelity_norm_ci(rng.uniform(8, 56, own.shape), *rest)  # pose-less output: chance
    assert lo < 0 < hi and hi - lo < 0.2
    half = np.where((scenes % 2 == 0)[:, None, None], own, rng.uniform(8, 56, own.shape))  # right on half
    lo, hi = fidelity_norm_ci(half, *rest)
    point = normalised_fidelity(batch_pck(half, own, 0.1, "bbox"), batch_pck(half, other, 0.1, "bbox"), 1.0)
    assert lo < point < hi and 0.2 < lo and hi < 0.8


def test_the_worlds_images_are_the_stock_pipelines_with_its_noise(tmp_path: Path) -> None:
    """The world's measures draw with the one sampler, and keep the random streams they had with diffusers' stock
    pipelines: the batch starting at row i takes its noise from one generator seeded seed + i. Each image is the
    stock pipeline's (up to float rounding), base and primary; a repeated caption still gets its own noise."""
    from diffusers import StableDiffusionAdapterPipeline, StableDiffusionPipeline, T2IAdapter

    from posescene.sampling.sampler import ModelBank
    from posescene.world.architectures import build_tiny_models
    from posescene.world.measure import draw

    torch.set_num_threads(1)
    pipeline, adapter_dir = build_tiny_models(tmp_path, seed=0)
    bank = ModelBank(str(pipeline), {"primary": str(adapter_dir)}, resolution=32, device="cpu")
    captions = ["a person running on a beach", "a person sitting in a forest", "a person running on a beach"]
    maps = np.full((3, 32, 32), 255, dtype=np.uint8)
    maps[:, 8:24:3, 10:20:2] = 0
    adapter = T2IAdapter.from_pretrained(adapter_dir, torch_dtype=torch.float32)
    for name, conditions in (("base", None), ("primary", maps)):
        ours = draw(bank, captions, conditions, steps=3, guidance=4.0, seed=5, batch_size=2)
        if conditions is None:
            pipe = StableDiffusionPipeline.from_pretrained(pipeline, torch_dtype=torch.float32)
        else:
            pipe = StableDiffusionAdapterPipeline.from_pretrained(pipeline, adapter=adapter, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        for i in range(0, len(captions), 2):
            kwargs: dict = dict(
                prompt=captions[i : i + 2], num_inference_steps=3, guidance_scale=4.0, height=32, width=32,
                generator=torch.Generator().manual_seed(5 + i), output_type="np",
            )  # fmt: skip
            if conditions is not None:
                kwargs["image"] = torch.from_numpy(conditions[i : i + 2]).float()[:, None] / 255.0
            stock = (np.clip(pipe(**kwargs).images, 0, 1) * 255).round().astype(np.uint8)
            assert np.abs(stock.astype(int) - ours[i : i + 2].astype(int)).max() <= 1, (name, i)
        assert not np.array_equal(ours[0], ours[2]), name  # same caption, another row's noise


def test_the_bootstrap_logs_one_run_through_the_tracking_module(tmp_path: Path) -> None:
    """The world's MLflow run (experiment posescene-bootstrap) goes through posescene.tracking: params of the
    bootstrap section and the seed, numeric metrics ('@' spelt '_at_'), the metrics file as an artifact."""
    from posescene.config import load_params
    from posescene.tracking import client
    from posescene.world.bootstrap import MLFLOW_EXPERIMENT, log_to_mlflow

    params = load_params(REPO_ROOT / "params.yaml", TINY)
    (tmp_path / "bootstrap_metrics.json").write_text("{}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_to_mlflow(params, {"primary_pck@0.1img": 0.5, "stages": {}, "resumed": False}, tmp_path, uri)
    c = client(uri)
    run = c.get_run(run_id)
    assert c.get_experiment(run.info.experiment_id).name == MLFLOW_EXPERIMENT
    assert run.data.params["bootstrap.n_scenes"] == "16" and run.data.params["seed"] == str(params.seed)
    assert run.data.metrics == {"primary_pck_at_0.1img": 0.5, "resumed": 0.0}
    assert [a.path for a in c.list_artifacts(run_id)] == ["bootstrap_metrics.json"]
    assert run.info.status == "FINISHED"
