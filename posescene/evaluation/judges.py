"""Pose and scene judges behind one interface: the built-in world's own (keypoint estimator, scene
classifier), a ``posescene.detectors`` detector (MediaPipe, OpenPose, DWPose) for real checkpoints, and the
optional local CLIP score and LPIPS distance (never downloaded)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from posescene.config import Params, PosesParams
from posescene.errors import ModelLoadError
from posescene.generate import person_arrays

Persons = list[tuple[np.ndarray, np.ndarray | None]]


class PoseJudge(Protocol):
    """Keypoints of the people in generated images: per image a list of ((18, 2) pixels, (18,) scores)."""

    name: str

    def predict(self, images: np.ndarray) -> list[Persons]: ...


class SceneJudge(Protocol):
    """The scene kind of each generated image."""

    name: str

    def predict(self, images: np.ndarray) -> list[str]: ...


def _load_world_judge(path: Path, class_name: str, device: torch.device) -> Any:
    from posescene import judges

    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path}: the built-in world's {class_name} is missing. It ships with the repo (models/world); "
            "restore it with git, or retrain the world: dvc unfreeze bootstrap && dvc repro bootstrap."
        )
    try:
        model = getattr(judges, class_name).from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: could not load the {class_name}: {exc}") from exc
    return model.to(device).eval()


class WorldPoseJudge:
    """The world's keypoint estimator (``models/world/keypoint_estimator``): one person per image."""

    name = "world keypoint estimator"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.model = _load_world_judge(Path(path), "KeypointEstimator", device)

    def predict(self, images: np.ndarray) -> list[Persons]:
        from posescene.judges import predict_keypoints

        xy, scores = predict_keypoints(self.model, images)
        return [[(xy[i], scores[i])] for i in range(len(images))]


class DetectorPoseJudge:
    """A ``posescene.detectors`` detector (MediaPipe for real checkpoints), run over the images in batches.

    ``poses``: the poses stage's detector settings (MediaPipe's thresholds and ``poses.batch_size``), so
    the judge reads a generated image as the lattices stage reads a real one.
    """

    def __init__(self, name: str, weights: str | None, poses: PosesParams) -> None:
        from posescene.generate import make_pose_detector

        self.name = name
        self.detector = make_pose_detector(
            name,
            weights,
            min_detection_confidence=poses.min_detection_confidence,
            min_presence_confidence=poses.min_presence_confidence,
            max_persons=poses.max_persons,
        )
        self.batch_size = poses.batch_size

    def predict(self, images: np.ndarray) -> list[Persons]:
        out: list[Persons] = []
        for start in range(0, len(images), self.batch_size):
            batch = [np.ascontiguousarray(im) for im in images[start : start + self.batch_size]]
            out += [[person_arrays(p) for p in persons] for persons in self.detector.detect(batch)]
        return out


class WorldSceneJudge:
    """The world's scene classifier (``models/world/scene_classifier``)."""

    name = "world scene classifier"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.model = _load_world_judge(Path(path), "SceneClassifier", device)

    def predict(self, images: np.ndarray) -> list[str]:
        from posescene.judges import predict_scene

        return predict_scene(self.model, images)


class ClipScorer:
    """CLIP score (100 x cosine of image and text embeddings) with a local ``transformers`` CLIP directory."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from transformers import AutoProcessor, CLIPModel

        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"evaluate.clip_model {path}: no such directory (CLIP is never downloaded)")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"evaluate.clip_model {path}: not a loadable CLIP directory: {exc}") from exc
        self.device = device

    @torch.no_grad()
    def score(self, images: np.ndarray, captions: Sequence[str], batch_size: int) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch_size):
            batch = self.processor(
                text=list(captions[s : s + batch_size]),
                images=[Image.fromarray(im) for im in images[s : s + batch_size]],
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            img = self.model.get_image_features(pixel_values=batch["pixel_values"])
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            out.append((100.0 * (img * txt).sum(-1)).clamp(min=0).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def load_lpips(path: str | Path, device: torch.device) -> Callable[[np.ndarray, np.ndarray], float]:
    """A perceptual distance from a local TorchScript file (``torch.jit.save`` of an LPIPS module).

    The module is called as ``f(x, y)`` with (1, 3, H, W) images in [-1, 1] (LPIPS's convention) and
    returns the distance (any shape, averaged). TorchScript keeps the file self-contained: no backbone
    weights are fetched at load time, and nothing is ever downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"evaluate.lpips_weights {path}: no such file (LPIPS weights are never downloaded)")
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"evaluate.lpips_weights {path}: not a TorchScript LPIPS module: {exc}") from exc

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1
        tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            return float(module(ta.to(device), tb.to(device)).float().mean())

    return distance


def is_builtin_world(params: Params) -> bool:
    """True when the base model is the assembled built-in world (then its judges apply)."""
    return Path(params.model.base).resolve() == Path(params.world.pipeline_dir).resolve()


def make_judges(params: Params, device: torch.device, notices: list[str]) -> tuple[PoseJudge | None, SceneJudge | None]:
    """The pose and scene judges ``evaluate.pose_judge`` / ``scene_judge`` ask for ("auto": by base model)."""
    ev = params.evaluate
    world = is_builtin_world(params)
    shipped = Path(params.world.shipped_dir)
    pose_choice = ("world" if world else "mediapipe") if ev.pose_judge == "auto" else ev.pose_judge
    scene_choice = ("world" if world else "none") if ev.scene_judge == "auto" else ev.scene_judge
    pose: PoseJudge | None = None
    if pose_choice == "world":
        pose = WorldPoseJudge(shipped / "keypoint_estimator", device)
    elif pose_choice != "none":
        pose = DetectorPoseJudge(pose_choice, ev.pose_judge_weights, params.poses)
    else:
        notices.append("pose fidelity not measured (evaluate.pose_judge: none)")
    scene: SceneJudge | None = None
    if scene_choice == "world":
        scene = WorldSceneJudge(shipped / "scene_classifier", device)
    elif ev.clip_model is None:
        notices.append("scene accuracy not measured: no scene judge for this base model and no evaluate.clip_model")
    return pose, scene
