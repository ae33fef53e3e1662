"""Pose models psi_delta (docs/method.md step 1) behind one small interface, all mapped to the 18-point order.

``make_detector(name, weights, ...)`` builds one of:

- ``mediapipe``: MediaPipe's PoseLandmarker (``mediapipe.tasks``) on the pose detector and *full*
  landmark model that the mediapipe wheel bundles (offline; see :func:`mediapipe_pose_bundle`), up to
  ``max_persons`` people per image, 33 landmarks mapped by :data:`posescene.topology.MEDIAPIPE_TO_OPENPOSE`,
  the neck being the shoulder midpoint with the smaller of the two scores; score = landmark visibility.
- ``openpose``: the OpenPose body estimator of ``controlnet_aux`` (``body_pose_model.pth`` from a
  local directory, or a hub id such as ``lllyasviel/Annotators`` already in the HF cache / with
  network); its ``candidate``/``subset`` output already is the 18-point order, with per-point scores.
- ``dwpose``: ``controlnet_aux``'s DWPose (needs mmcv/mmdet/mmpose and two checkpoints).
- ``groundtruth``: the keypoints the source shipped (PoseScenes), read from the manifest (score 1).

Missing weights or packages raise :class:`DetectorUnavailableError` naming the expected file and how to
get it: there is no silent fallback to another detector, and nothing is downloaded unless the caller
passes a hub id and has network.

Detectors return raw pixel coordinates and scores; thresholding (``poses.min_score``), dropping points
outside the image and normalisation happen in :mod:`posescene.poses`, identically for all detectors.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from posescene.errors import ConfigError, DetectorUnavailableError
from posescene.topology import KEYPOINT_NAMES, MEDIAPIPE_TO_OPENPOSE, N_KEYPOINTS

log = logging.getLogger(__name__)

DETECTORS = ("mediapipe", "openpose", "dwpose", "groundtruth")
OPENPOSE_FILE = "body_pose_model.pth"
DWPOSE_POSE_FILE = "dw-ll_ucoco_384.pth"
DWPOSE_DET_FILE = "yolox_l_8x8_300e_coco.pth"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PersonKeypoints:
    """One person: ``xy`` (18, 2) float32 pixel coordinates (NaN where not found), ``score`` (18,) float32."""

    xy: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        if self.xy.shape != (N_KEYPOINTS, 2) or self.score.shape != (N_KEYPOINTS,):
            raise ValueError(f"PersonKeypoints: xy must be ({N_KEYPOINTS}, 2) and score ({N_KEYPOINTS},)")


@dataclass(frozen=True)
class ImageRecord:
    """What a detector may know about an image besides its pixels (the ground-truth detector reads gt_*)."""

    image_id: str
    width: int
    height: int
    gt_x: Sequence[float | None] | None = None
    gt_y: Sequence[float | None] | None = None


@runtime_checkable
class Detector(Protocol):
    """``detect(images)`` -> per image, a list of persons. ``needs_pixels`` False: images may be None."""

    name: str
    needs_pixels: bool

    def detect(
        self, images: Sequence[np.ndarray | None], records: Sequence[ImageRecord] | None = None
    ) -> list[list[PersonKeypoints]]: ...

    def close(self) -> None: ...


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.full((N_KEYPOINTS, 2), np.nan, dtype=np.float32), np.zeros(N_KEYPOINTS, dtype=np.float32)


def _check_image(image: np.ndarray | None) -> np.ndarray:
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = None if image is None else (image.shape, image.dtype)
        raise ValueError(f"detectors take RGB uint8 arrays of shape (H, W, 3); got {got}")
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------------


class GroundTruthDetector:
    """Keypoints from the manifest (``gt_x``/``gt_y``), score 1.0; a null point stays missing."""

    name = "groundtruth"
    needs_pixels = False

    def detect(
        self, images: Sequence[np.ndarray | None], records: Sequence[ImageRecord] | None = None
    ) -> list[list[PersonKeypoints]]:
        if records is None:
            raise ValueError("the groundtruth detector reads keypoints from the records; pass records=")
        out: list[list[PersonKeypoints]] = []
        for rec in records:
            if rec.gt_x is None or rec.gt_y is None:
                out.append([])
                continue
            xy, score = _empty()
            for i, (x, y) in enumerate(zip(rec.gt_x, rec.gt_y, strict=True)):
                if x is not None and y is not None and np.isfinite(x) and np.isfinite(y):
                    xy[i] = (x, y)
                    score[i] = 1.0
            out.append([PersonKeypoints(xy, score)] if score.any() else [])
        return out

    def close(self) -> None:
        pass


# The pose detector (SSD, 224x224 input in [-1, 1]) and the full landmark model (256x256 input in [0, 1])
# that the mediapipe wheel ships for its legacy ``solutions.pose``. PoseLandmarker wants them as a ``.task``
# bundle whose models carry input-normalisation metadata; the wheel's copies carry none, so
# :func:`mediapipe_pose_bundle` adds it (the values of the legacy graphs' ImageToTensor calculators).
_MP_DETECTOR = ("modules/pose_detection/pose_detection.tflite", 127.5, 127.5, 2)  # path, mean, std, outputs
_MP_LANDMARKS = ("modules/pose_landmark/pose_landmark_full.tflite", 0.0, 255.0, 5)
_MP_BUNDLE: bytes | None = None


def _with_input_metadata(model: bytes, mean: float, std: float, outputs: int) -> bytes:
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_image_input(norm_mean=[mean], norm_std=[std])
    for _ in range(outputs):
        writer.add_feature_output()
    return bytes(writer.populate()[0])


def mediapipe_pose_bundle() -> bytes:
    """A PoseLandmarker ``.task`` bundle (zip) built from the models inside the installed mediapipe wheel.

    Built once per process (about 0.1 s); nothing is downloaded. Raises :class:`DetectorUnavailableError`
    when the wheel lacks the models (another mediapipe version than requirements.lock's 0.10.14).
    """
    global _MP_BUNDLE
    if _MP_BUNDLE is None:
        import io
        import zipfile

        import mediapipe

        root = Path(mediapipe.__file__).parent
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            for member, (rel, mean, std, outputs) in (
                ("pose_detector.tflite", _MP_DETECTOR),
                ("pose_landmarks_detector.tflite", _MP_LANDMARKS),
            ):
                path = root / rel
                if not path.is_file():
                    raise DetectorUnavailableError(
                        f"mediapipe: {path} is missing (mediapipe {getattr(mediapipe, '__version__', '?')}); "
                        "install mediapipe==0.10.14, which bundles the pose models (see requirements.lock)."
                    )
                bundle.writestr(member, _with_input_metadata(path.read_bytes(), mean, std, outputs))
        _MP_BUNDLE = buffer.getvalue()
    return _MP_BUNDLE


def _box(xy: np.ndarray) -> tuple[float, float, float, float] | None:
    finite = xy[np.isfinite(xy).all(axis=1)]
    if not len(finite):
        return None
    return float(finite[:, 0].min()), float(finite[:, 1].min()), float(finite[:, 0].max()), float(finite[:, 1].max())


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection of two boxes over the smaller one's area (1.0: one lies inside the other)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller if smaller > 0 else 0.0


def drop_duplicates(persons: Sequence[PersonKeypoints], overlap: float = 0.5) -> list[PersonKeypoints]:
    """Drop each person whose keypoint box lies mostly (> ``overlap``) inside a surer person's box.

    PoseLandmarker can return one person twice, or a second "person" made of part of the first (measured
    on PoseScenes: 1 of 120 images, the legs and torso of the only figure read as another person). Two
    real people side by side overlap far less; one half hidden behind another may be dropped.
    """
    kept: list[tuple[PersonKeypoints, tuple[float, float, float, float] | None]] = []
    for person in sorted(persons, key=lambda p: -float(p.score.sum())):
        box = _box(person.xy)
        if box is not None and any(other is not None and _overlap(box, other) > overlap for _, other in kept):
            continue
        kept.append((person, box))
    return [person for person, _ in kept]


class MediaPipeDetector:
    """MediaPipe PoseLandmarker (image mode, the wheel's bundled full model): up to ``max_persons`` people."""

    name = "mediapipe"
    needs_pixels = True

    def __init__(self, min_detection_confidence: float, min_presence_confidence: float, max_persons: int) -> None:
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:
            raise DetectorUnavailableError(
                f"the mediapipe detector needs the mediapipe package ({exc}); install mediapipe==0.10.14"
            ) from None
        self._mp = mp
        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=mediapipe_pose_bundle()),
            running_mode=vision.RunningMode.IMAGE,
            num_poses=max_persons,
            min_pose_detection_confidence=min_detection_confidence,
            min_pose_presence_confidence=min_presence_confidence,
        )
        self._landmarker = vision.PoseLandmarker.create_from_options(options)
        self._map = [MEDIAPIPE_TO_OPENPOSE[name] for name in KEYPOINT_NAMES]

    def _person(self, landmarks: Sequence[object], w: int, h: int) -> PersonKeypoints:
        lm = np.array([(p.x * w, p.y * h, p.visibility) for p in landmarks], np.float64)  # type: ignore[attr-defined]
        xy, score = _empty()
        for i, src in enumerate(self._map):
            if isinstance(src, tuple):  # the neck: midpoint of the shoulders, the weaker score
                a, b = lm[src[0]], lm[src[1]]
                xy[i] = (a[:2] + b[:2]) / 2
                score[i] = min(a[2], b[2])
            else:
                xy[i] = lm[src, :2]
                score[i] = lm[src, 2]
        return PersonKeypoints(xy, np.clip(score, 0.0, 1.0).astype(np.float32))

    def detect(
        self, images: Sequence[np.ndarray | None], records: Sequence[ImageRecord] | None = None
    ) -> list[list[PersonKeypoints]]:
        out: list[list[PersonKeypoints]] = []
        for image in images:
            image = _check_image(image)
            h, w = image.shape[:2]
            result = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image))
            out.append(drop_duplicates([self._person(landmarks, w, h) for landmarks in result.pose_landmarks]))
        return out

    def close(self) -> None:
        self._landmarker.close()


class OpenPoseDetector:
    """controlnet_aux's OpenPose body estimator; persons ordered by their total score (best first)."""

    name = "openpose"
    needs_pixels = True

    def __init__(self, model_path: Path, device: str | None = None) -> None:
        try:
            import torch
            from controlnet_aux.open_pose.body import Body
        except ImportError as exc:
            raise DetectorUnavailableError(f"the openpose detector needs controlnet_aux and torch ({exc})") from None
        try:
            self._body = Body(str(model_path))
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise DetectorUnavailableError(
                f"{model_path}: not a usable OpenPose body model ({type(exc).__name__}: {exc}). "
                f"Expected {OPENPOSE_FILE} from the hub repo lllyasviel/Annotators."
            ) from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._body.to(device)

    def detect(
        self, images: Sequence[np.ndarray | None], records: Sequence[ImageRecord] | None = None
    ) -> list[list[PersonKeypoints]]:
        out: list[list[PersonKeypoints]] = []
        for image in images:
            bgr = np.ascontiguousarray(_check_image(image)[:, :, ::-1])
            candidate, subset = self._body(bgr)  # candidate: x, y, score, id; subset: 18 indices, total, parts
            persons = []
            for row in sorted(np.asarray(subset), key=lambda r: -float(r[18])):
                xy, score = _empty()
                for k in range(N_KEYPOINTS):
                    idx = int(row[k])
                    if idx >= 0:
                        xy[k] = candidate[idx, :2]
                        score[k] = candidate[idx, 2]
                persons.append(PersonKeypoints(xy, np.clip(score, 0.0, 1.0).astype(np.float32)))
            out.append(persons)
        return out

    def close(self) -> None:
        pass


class DWPoseDetector:
    """controlnet_aux's DWPose whole-body model; its first 18 keypoints are already in OpenPose order."""

    name = "dwpose"
    needs_pixels = True

    def __init__(self, det_ckpt: Path, pose_ckpt: Path, device: str | None = None) -> None:
        import torch
        from controlnet_aux.dwpose.wholebody import Wholebody

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = Wholebody(det_ckpt=str(det_ckpt), pose_ckpt=str(pose_ckpt), device=device)

    def detect(
        self, images: Sequence[np.ndarray | None], records: Sequence[ImageRecord] | None = None
    ) -> list[list[PersonKeypoints]]:
        out: list[list[PersonKeypoints]] = []
        for image in images:
            bgr = np.ascontiguousarray(_check_image(image)[:, :, ::-1])
            keypoints, scores = self._model(bgr)
            persons = [
                PersonKeypoints(
                    np.asarray(kp[:N_KEYPOINTS], dtype=np.float32),
                    np.clip(np.asarray(sc[:N_KEYPOINTS], dtype=np.float32), 0.0, 1.0),
                )
                for kp, sc in zip(keypoints, scores, strict=True)
            ]
            out.append(sorted(persons, key=lambda p: -float(p.score.sum())))
        return out

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# Weights


def _looks_like_repo_id(weights: str) -> bool:
    return bool(_REPO_ID.match(weights)) and not weights.startswith((".", "~")) and not os.path.isabs(weights)


def _hub_file(repo_id: str, filename: str, detector: str, how: str) -> Path:
    """A file of a hub repo via the HF cache (network only if the caller allows it: HF_HUB_OFFLINE)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except (OSError, ValueError, HfHubHTTPError) as exc:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        raise DetectorUnavailableError(
            f"{detector}: {repo_id!r} is not a local directory, and {filename} could not be fetched from that "
            f"hub repo{offline}: {type(exc).__name__}: {exc}. {how}"
        ) from None


def _weights_file(weights: str | None, candidates: Sequence[str], detector: str, how: str) -> Path:
    """Resolve one checkpoint from ``weights`` (a file, a directory holding it, or a hub id)."""
    if not weights:
        raise DetectorUnavailableError(f"{detector}: no weights given (poses.weights / --weights). {how}")
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in candidates:
            if (path / name).is_file():
                return path / name
        raise DetectorUnavailableError(f"{detector}: {path} has no {' or '.join(candidates)}. {how}")
    if _looks_like_repo_id(weights):
        return _hub_file(weights, candidates[0], detector, how)
    raise DetectorUnavailableError(f"{detector}: weights directory {path} does not exist. {how}")


def openpose_weights(weights: str | None) -> Path:
    how = (
        f"Put {OPENPOSE_FILE} in a directory and pass it as weights, e.g. "
        f"`huggingface-cli download lllyasviel/Annotators {OPENPOSE_FILE} --local-dir models/annotators` "
        "then --weights models/annotators (or use --detector mediapipe, which needs no download)."
    )
    return _weights_file(weights, (OPENPOSE_FILE, f"annotator/ckpts/{OPENPOSE_FILE}"), "openpose", how)


def dwpose_weights(weights: str | None) -> tuple[Path, Path]:
    how = (
        f"A dwpose weights directory holds {DWPOSE_DET_FILE} (YOLOX-L, from download.openmmlab.com "
        f"mmdetection v2.0 yolox_l_8x8_300e_coco) and {DWPOSE_POSE_FILE} (hub repo wanghaofan/dw-ll_ucoco_384)."
    )
    return (
        _weights_file(weights, (DWPOSE_DET_FILE, "yolox_l.pth"), "dwpose", how),
        _weights_file(weights, (DWPOSE_POSE_FILE,), "dwpose", how),
    )


def _check_packages(detector: str, modules: Sequence[str], how: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise DetectorUnavailableError(f"{detector}: missing Python packages {missing}. {how}")


_DWPOSE_PACKAGES_HOW = (
    "Install them: pip install -U openmim && mim install mmengine 'mmcv>=2.0.1' 'mmdet>=3.1.0' 'mmpose>=1.1.0' "
    "(or use --detector openpose / mediapipe)."
)


def check_detector(name: str, weights: str | None = None) -> None:
    """Fail fast (before any worker starts) when detector ``name`` cannot be built: weights, packages.

    Loads no model; resolving a hub id only looks in the HF cache unless the caller has network.
    """
    if name == "groundtruth":
        return
    if name == "mediapipe":
        if weights not in (None, "", "full"):
            raise DetectorUnavailableError(
                f"mediapipe uses the model bundled with the mediapipe wheel (pose_landmark_full); "
                f"set poses.weights to null (got {weights!r})."
            )
        _check_packages("mediapipe", ("mediapipe",), "Install mediapipe==0.10.14 (see requirements.lock).")
        return
    if name == "openpose":
        openpose_weights(weights)
        _check_packages("openpose", ("controlnet_aux", "torch"), "Install controlnet_aux (see requirements.lock).")
        return
    if name == "dwpose":
        problems = []
        for check in (
            lambda: dwpose_weights(weights),
            lambda: _check_packages("dwpose", ("controlnet_aux", "mmcv", "mmdet", "mmpose"), _DWPOSE_PACKAGES_HOW),
        ):
            try:
                check()
            except DetectorUnavailableError as exc:
                problems.append(str(exc))
        if problems:
            raise DetectorUnavailableError(" | ".join(problems))
        return
    raise ConfigError(f"unknown detector {name!r}; choose one of {list(DETECTORS)}")


def make_detector(
    name: str,
    weights: str | None = None,
    *,
    device: str | None = None,
    min_detection_confidence: float,
    min_presence_confidence: float,
    max_persons: int,
) -> Detector:
    """Build detector ``name``; raise :class:`DetectorUnavailableError` when its weights/packages are missing.

    ``weights``: openpose/dwpose: a local directory (or checkpoint file) or a hub id; mediapipe: None
    (its bundled model); groundtruth: ignored. ``device``: "cpu"/"cuda" for the torch-based detectors
    (default: cuda when available). ``min_detection_confidence`` (a person box), ``min_presence_confidence``
    (the landmarks of a found box) and ``max_persons`` (people per image) are MediaPipe's own thresholds
    (``poses.*`` in params.yaml); the other detectors return every person they find and
    :mod:`posescene.poses` keeps the ``max_persons`` most prominent.
    """
    check_detector(name, weights)
    if name == "groundtruth":
        return GroundTruthDetector()
    if name == "mediapipe":
        return MediaPipeDetector(min_detection_confidence, min_presence_confidence, max_persons)
    if name == "openpose":
        return OpenPoseDetector(openpose_weights(weights), device=device)
    det_ckpt, pose_ckpt = dwpose_weights(weights)
    return DWPoseDetector(det_ckpt, pose_ckpt, device=device)
