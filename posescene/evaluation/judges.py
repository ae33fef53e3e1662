"""The judges of generated images, behind one interface (:class:`PoseJudge`, :class:`SceneJudge`).

- The built-in world's own judges: a scene classifier and a PoseScenes keypoint estimator. No CLIP or OpenPose
  weights can be downloaded, so the world brings small judges trained on PoseScenes (and on VAE reconstructions,
  so that slightly blurry generated images are judged fairly; the world's bootstrap trains them). They are
  diffusers ``ModelMixin`` + ``ConfigMixin`` classes, so they save/load like every other part of the world
  (``save_pretrained`` / ``from_pretrained`` with safetensors). Image inputs are float tensors (N, 3, H, W) in
  [0, 1] or PIL images / uint8 arrays.
- A ``posescene.data.detectors`` detector (MediaPipe, OpenPose, DWPose) for real checkpoints.
- The optional local CLIP score and LPIPS distance (never downloaded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn

from posescene.config import Params, PosesParams
from posescene.data.synth import SCENE_KINDS
from posescene.errors import InputDataError, ModelLoadError
from posescene.sampling.pose import person_arrays
from posescene.topology import N_KEYPOINTS

Persons = list[tuple[np.ndarray, np.ndarray | None]]

# ------------------------------------------------------------------------------------ the world's judges


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


class SceneClassifier(ModelMixin, ConfigMixin):
    """Small CNN: RGB image -> logits over the scene kinds (the world's stand-in for a CLIP judge)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        class_names: Sequence[str] = SCENE_KINDS,
        widths: Sequence[int] = (32, 64, 96),
        *,
        resolution: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_block(3, widths[0])]
        cin = widths[0]
        for w in widths:
            layers += [_block(cin, w, stride=2), _block(w, w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(cin, len(class_names)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [0, 1] -> logits (N, n_classes)."""
        h = self.features(images * 2 - 1)
        return self.head(h.mean(dim=(2, 3)))


class KeypointEstimator(ModelMixin, ConfigMixin):
    """Small U-shaped heatmap CNN for PoseScenes people: 18 keypoints + per-point presence.

    Encoder down to H/8 (dilated context there covers the whole 64 px image), decoder with skip connections
    back to H/2 (32 x 32 heatmaps for 64 px images). Trained with a cross-entropy loss against Gaussian
    targets (:func:`heatmap_targets`); coordinates are read out by arg-max plus a *local* soft-argmax in a
    ``window`` x ``window`` neighbourhood, which gives sub-pixel positions without the centre bias of a
    global soft-argmax. Presence is predicted from pooled context features because PoseScenes points leave
    the image when the person is near a border.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        n_keypoints: int = N_KEYPOINTS,
        widths: Sequence[int] = (32, 64, 128),
        *,
        resolution: int,
        window: int = 5,
    ):
        super().__init__()
        w0, w1, w2 = widths
        self.stem = nn.Sequential(_block(3, w0), _block(w0, w0, stride=2), _block(w0, w0))  # H/2
        self.down1 = nn.Sequential(_block(w0, w1, stride=2), _block(w1, w1))  # H/4
        self.down2 = nn.Sequential(
            _block(w1, w2, stride=2), _block(w2, w2), _block(w2, w2, dilation=2), _block(w2, w2, dilation=4)
        )  # H/8
        self.up1 = nn.Sequential(_block(w2 + w1, w1), _block(w1, w1))  # H/4
        self.up0 = nn.Sequential(_block(w1 + w0, w0), _block(w0, w0))  # H/2
        self.heatmaps = nn.Conv2d(w0, n_keypoints, 1)
        self.presence = nn.Linear(w2, n_keypoints)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> (xy in [0, 1] image fractions (N, K, 2), presence logits (N, K),
        heatmap logits (N, K, H/2, W/2))."""
        s = self.stem(images * 2 - 1)
        d1 = self.down1(s)
        c = self.down2(d1)
        u1 = self.up1(torch.cat([F.interpolate(c, size=d1.shape[-2:], mode="nearest"), d1], dim=1))
        u0 = self.up0(torch.cat([F.interpolate(u1, size=s.shape[-2:], mode="nearest"), s], dim=1))
        logits = self.heatmaps(u0)
        return local_soft_argmax(logits, self.config.window), self.presence(c.mean(dim=(2, 3))), logits


def local_soft_argmax(logits: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Heatmap logits (N, K, h, w) -> xy image fractions (N, K, 2): arg-max cell, refined by the
    probability-weighted mean of cell centres in a ``window`` x ``window`` neighbourhood (clipped at borders)."""
    n, k, h, w = logits.shape
    flat = logits.float().flatten(2)
    best = flat.argmax(-1)
    by, bx = best // w, best % w
    r = window // 2
    offs = torch.arange(-r, r + 1, device=logits.device)
    ys = (by[..., None] + offs).clamp(0, h - 1)  # (N, K, win)
    xs = (bx[..., None] + offs).clamp(0, w - 1)
    idx = (ys[..., :, None] * w + xs[..., None, :]).flatten(2)  # (N, K, win*win)
    local = flat.gather(-1, idx)
    # cells clipped onto the border repeat: count each cell once
    valid = ((by[..., None] + offs >= 0) & (by[..., None] + offs < h))[..., :, None] & (
        (bx[..., None] + offs >= 0) & (bx[..., None] + offs < w)
    )[..., None, :]
    local = local.masked_fill(~valid.flatten(2), float("-inf"))
    prob = local.softmax(-1)
    cx = (xs[..., None, :].expand(n, k, window, window).flatten(2).float() + 0.5) / w
    cy = (ys[..., :, None].expand(n, k, window, window).flatten(2).float() + 0.5) / h
    return torch.stack([(prob * cx).sum(-1), (prob * cy).sum(-1)], dim=-1)


def heatmap_targets(kp: torch.Tensor, h: int, w: int, sigma: float = 1.0) -> torch.Tensor:
    """Keypoints as image fractions (N, K, 2), NaN missing -> normalised Gaussian targets (N, K, h, w)
    (sigma in heatmap cells; rows of missing points are zero)."""
    xs = (torch.arange(w, dtype=torch.float32, device=kp.device) + 0.5) / w
    ys = (torch.arange(h, dtype=torch.float32, device=kp.device) + 0.5) / h
    k = torch.nan_to_num(kp, nan=-10.0)
    dx = (xs[None, None, :] - k[..., 0:1]) * w  # (N, K, w) in cells
    dy = (ys[None, None, :] - k[..., 1:2]) * h
    g = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma**2))
    g = g / g.flatten(2).sum(-1).clamp(min=1e-12)[..., None, None]
    visible = ~torch.isnan(kp).any(-1)
    return g * visible[..., None, None]


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def images_to_tensor(images: torch.Tensor | np.ndarray | Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """PIL images, a uint8 array (N, H, W, 3) or a float tensor in [0, 1] -> float (N, 3, res, res) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
    elif isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputDataError(f"expected a (N, H, W, 3) uint8 array, got shape {images.shape}")
        x = to_unit(images)
    else:
        arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
        if not arrays:
            raise InputDataError("no images to judge")
        x = to_unit(np.stack(arrays))
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputDataError(f"expected images (N, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.no_grad()
def scene_logits(
    model: SceneClassifier, images: torch.Tensor | np.ndarray | Sequence[Image.Image], batch_size: int = 128
) -> torch.Tensor:
    """(N, classes) float logits of the scene judge, columns in ``model.config.class_names`` order, on the CPU."""
    model.eval()
    x = images_to_tensor(images, model.config.resolution)
    device, dtype = model.device, model.dtype
    logits = [model(x[i : i + batch_size].to(device, dtype)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(logits)


def predict_scene(
    model: SceneClassifier, images: torch.Tensor | np.ndarray | Sequence[Image.Image], batch_size: int = 128
) -> list[str]:
    """Scene kind of each image (a name from ``model.config.class_names``)."""
    names = list(model.config.class_names)
    return [names[j] for j in scene_logits(model, images, batch_size).argmax(-1).tolist()]


def scene_probabilities(
    model: SceneClassifier, images: torch.Tensor | np.ndarray | Sequence[Image.Image], batch_size: int = 128
) -> np.ndarray:
    """(N, kinds) softmax of the scene judge, columns in ``SCENE_KINDS`` order (the pull's measures)."""
    order = [list(model.config.class_names).index(k) for k in SCENE_KINDS]
    return scene_logits(model, images, batch_size).softmax(-1)[:, order].numpy()


@torch.no_grad()
def predict_keypoints(
    model: KeypointEstimator, images: torch.Tensor | np.ndarray | Sequence[Image.Image], batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints in pixels of the *input* images, (N, 18, 2), and presence scores in [0, 1], (N, 18)."""
    model.eval()
    if isinstance(images, torch.Tensor):
        side = images.shape[-1], images.shape[-2]
    elif isinstance(images, np.ndarray):
        side = images.shape[2], images.shape[1]
    else:
        side = images[0].size
    x = images_to_tensor(images, model.config.resolution)
    device, dtype = model.device, model.dtype
    xys, scores = [], []
    for i in range(0, len(x), batch_size):
        xy, presence, _ = model(x[i : i + batch_size].to(device, dtype))
        xys.append(xy.float().cpu())
        scores.append(presence.float().sigmoid().cpu())
    xy_all = torch.cat(xys).numpy() * np.asarray(side, dtype=np.float32)
    return xy_all, torch.cat(scores).numpy()


# ------------------------------------------------------------------------------------ one interface


class PoseJudge(Protocol):
    """Keypoints of the people in generated images: per image a list of ((18, 2) pixels, (18,) scores)."""

    name: str

    def predict(self, images: np.ndarray) -> list[Persons]: ...


class SceneJudge(Protocol):
    """The scene kind of each generated image."""

    name: str

    def predict(self, images: np.ndarray) -> list[str]: ...


def _load_world_judge(path: Path, model_class: type[ModelMixin], device: torch.device) -> Any:
    class_name = model_class.__name__
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path}: the built-in world's {class_name} is missing. It ships with the repo (models/world); "
            "restore it with git, or retrain the world: dvc unfreeze bootstrap && dvc repro bootstrap."
        )
    try:
        model = model_class.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: could not load the {class_name}: {exc}") from exc
    return model.to(device).eval()


class WorldPoseJudge:
    """The world's keypoint estimator (``models/world/keypoint_estimator``): one person per image."""

    name = "world keypoint estimator"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.model = _load_world_judge(Path(path), KeypointEstimator, device)

    def predict(self, images: np.ndarray) -> list[Persons]:
        xy, scores = predict_keypoints(self.model, images)
        return [[(xy[i], scores[i])] for i in range(len(images))]


class DetectorPoseJudge:
    """A ``posescene.data.detectors`` detector (MediaPipe for real checkpoints), run over the images in batches.

    ``poses``: the poses stage's detector settings (MediaPipe's thresholds and ``poses.batch_size``), so
    the judge reads a generated image as the lattices stage reads a real one.
    """

    def __init__(self, name: str, weights: str | None, poses: PosesParams) -> None:
        from posescene.data.detectors import make_detector

        self.name = name
        self.detector = make_detector(
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
        self.model = _load_world_judge(Path(path), SceneClassifier, device)

    def predict(self, images: np.ndarray) -> list[str]:
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
