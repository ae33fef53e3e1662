"""The 18-point OpenPose/COCO body topology of docs/method.md step 1, and mappings onto it."""

from __future__ import annotations

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
N_KEYPOINTS = len(KEYPOINT_NAMES)
INDEX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# OpenPose limb pairs (used for optional limb drawing and by the synthetic person).
LIMBS: tuple[tuple[int, int], ...] = tuple(
    (INDEX[a], INDEX[b])
    for a, b in (
        ("neck", "r_shoulder"), ("neck", "l_shoulder"),
        ("r_shoulder", "r_elbow"), ("r_elbow", "r_wrist"),
        ("l_shoulder", "l_elbow"), ("l_elbow", "l_wrist"),
        ("neck", "r_hip"), ("r_hip", "r_knee"), ("r_knee", "r_ankle"),
        ("neck", "l_hip"), ("l_hip", "l_knee"), ("l_knee", "l_ankle"),
        ("neck", "nose"), ("nose", "r_eye"), ("r_eye", "r_ear"),
        ("nose", "l_eye"), ("l_eye", "l_ear"),
    )
)  # fmt: skip

# MediaPipe Pose (33 landmarks) index for each of our 18 points; the neck has no landmark and is
# the midpoint of the shoulders (docs/method.md step 1).
MEDIAPIPE_TO_OPENPOSE: dict[str, int | tuple[int, int]] = {
    "nose": 0,
    "neck": (11, 12),
    "r_shoulder": 12, "r_elbow": 14, "r_wrist": 16,
    "l_shoulder": 11, "l_elbow": 13, "l_wrist": 15,
    "r_hip": 24, "r_knee": 26, "r_ankle": 28,
    "l_hip": 23, "l_knee": 25, "l_ankle": 27,
    "r_eye": 5, "l_eye": 2, "r_ear": 8, "l_ear": 7,
}  # fmt: skip
