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
    "bootstrap.batch_size": 8,
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

    from posescene.bootstrap import bootstrap
    from posescene.config import load_params
    from posescene.judges import KeypointEstimator, SceneClassifier

    out = tmp_path / "world"
    metrics = bootstrap(load_params(REPO_ROOT / "params.yaml", TINY), out_dir=out, log_mlflow=False)
    for part in PARTS:
        assert (out / part / "config.json").exists(), part
        assert list((out / part).glob("*.safetensors")), part
    saved = json.loads((out / "bootstrap_metrics.json").read_text())
    assert saved["train_images"] == 32 and saved["heldout_images"] == 8
    for key in ("vae_psnr_db", "base_scene_acc", "primary_scene_acc", "base_pck@0.1img", "primary_pck@0.1img"):
        assert np.isfinite(saved[key]), key
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
        load_params(REPO_ROOT / "params.yaml", TINY), out_dir=out, reuse=["vae", "judges", "unet"], log_mlflow=False
    )
    assert again["reused_parts"] == ["vae", "judges", "unet"]


def test_judges_round_trip(tmp_path: Path) -> None:
    from posescene.judges import KeypointEstimator, SceneClassifier, predict_keypoints, predict_scene

    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64)
    for cls in (SceneClassifier, KeypointEstimator):
        model = cls().eval()
        model.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__).eval()
        with torch.no_grad():
            a, b = model(images), loaded(images)
        first = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        torch.testing.assert_close(*first)
    names = predict_scene(SceneClassifier(), images)
    assert len(names) == 3 and set(names) <= set(SceneClassifier().config.class_names)
    xy, score = predict_keypoints(KeypointEstimator(), np.zeros((2, 48, 48, 3), dtype=np.uint8))
    assert xy.shape == (2, 18, 2) and score.shape == (2, 18)
    assert (xy >= 0).all() and (xy <= 48).all()  # pixels of the input size


def test_pck_reference() -> None:
    from posescene.judges import pck

    target = np.array([[[10.0, 10.0], [20.0, 30.0], [np.nan, np.nan]]])
    assert pck(target, target, 0.1) == 1.0
    assert pck(target + 5.0, target, 0.1, "image", 64) == 0.0  # 7.07 px > 6.4 px
    assert pck(target + 5.0, target, 0.5, "bbox") == 1.0  # box side 20 px -> 10 px


@needs_shipped
@pytest.mark.e2e  # the shipped world through stock diffusers (~20 s here)
def test_shipped_world_in_stock_diffusers(tmp_path: Path) -> None:
    """Assemble, then load and sample with no posescene code: just diffusers, as any consumer would."""
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    from posescene.world import assemble_world_pipeline

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
    assert size < 25 * 2**20, f"models/world is {size / 2**20:.1f} MiB; keep the shipped world small (fp16)"


@needs_shipped
def test_shipped_scene_classifier_on_real_synth(synth_dir: Path) -> None:
    from PIL import Image

    from posescene.judges import SceneClassifier, predict_scene

    rows = [json.loads(line) for line in (synth_dir / "metadata.jsonl").read_text().splitlines()]
    images = [Image.open(synth_dir / r["file_name"]) for r in rows]
    model = SceneClassifier.from_pretrained(SHIPPED / "scene_classifier", torch_dtype=torch.float32)
    predicted = predict_scene(model, images)
    accuracy = np.mean([p == r["scene_kind"] for p, r in zip(predicted, rows, strict=True)])
    assert accuracy >= 0.9, f"scene classifier accuracy {accuracy:.2f} on real PoseScenes images"
