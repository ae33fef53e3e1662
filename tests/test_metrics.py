"""The metric code, validated on constructed images whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from posescene.evaluation import metrics


def _pose(cx: float, cy: float, h: float = 20.0) -> np.ndarray:
    """A stick pose of 18 points spread over a (h/3 x h) box centred at (cx, cy); two points missing."""
    rng = np.random.default_rng(int(cx * 100 + cy))
    kp = np.stack([cx + rng.uniform(-h / 6, h / 6, 18), cy + rng.uniform(-h / 2, h / 2, 18)], axis=1)
    kp[[0, 1]] = [[cx - h / 6, cy - h / 2], [cx + h / 6, cy + h / 2]]  # pin the box corners
    kp[16:] = np.nan
    return kp


def _scene(seed: int, size: int = 64) -> np.ndarray:
    """A textured background (smooth gradient + noise), uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * 200 + rng.uniform(0, 55, (size, size, 3))
    return base.astype(np.uint8)


def _draw_person(image: np.ndarray, kp: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    ok = np.isfinite(kp).all(axis=1)
    x0, y0 = np.floor(kp[ok].min(axis=0)).astype(int)
    x1, y1 = np.ceil(kp[ok].max(axis=0)).astype(int)
    out[y0 : y1 + 1, x0 : x1 + 1] = color
    return out


POSES = [_pose(16, 32), _pose(40, 30), _pose(30, 40)]


def _set(background: np.ndarray, colors: list[tuple[int, int, int]] | None = None) -> list[np.ndarray]:
    colors = colors or [(200, 20, 20)] * len(POSES)
    return [_draw_person(background, kp, c) for kp, c in zip(POSES, colors, strict=True)]


def _drift(images: list[np.ndarray]) -> tuple[float, float]:
    scene = ~metrics.person_mask(POSES, images[0].shape[:2], margin=0.15)
    pairs = metrics.pairwise_drift(images, scene)
    assert len(pairs) == 3
    return float(np.mean([p.rmse for p in pairs])), float(np.mean([p.one_minus_ssim for p in pairs]))


def test_identical_scene_different_poses_has_no_drift():
    rmse, ssim = _drift(_set(_scene(0)))
    assert rmse == pytest.approx(0.0, abs=1e-12)
    assert ssim == pytest.approx(0.0, abs=1e-9)


def test_changed_background_is_large_drift():
    images = _set(_scene(0))
    images[1] = _draw_person(_scene(1)[:, ::-1].copy(), POSES[1], (200, 20, 20))
    rmse, ssim = _drift(images)
    assert rmse > 0.1
    assert ssim > 0.3


def test_small_background_change_is_small_drift():
    images = _set(_scene(0))
    images[2] = np.clip(images[2].astype(int) + 6, 0, 255).astype(np.uint8)
    rmse, _ = _drift(images)
    assert 0.0 < rmse < 0.05


def test_changes_inside_person_region_are_not_drift():
    # different person colours and a scribble inside each person's grown box: no drift
    images = _set(_scene(0), colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    kp = POSES[2]
    images[2][int(kp[0, 1]) : int(kp[0, 1]) + 3, int(kp[0, 0]) - 2 : int(kp[0, 0])] = 255
    rmse, ssim = _drift(images)
    assert rmse == pytest.approx(0.0, abs=1e-12)
    # SSIM windows straddling the mask border see the person: a small border effect only
    assert ssim < 0.05


def test_person_mask_is_union_of_grown_boxes():
    mask = metrics.person_mask(POSES, (64, 64), margin=0.1, min_pad=0)
    for kp in POSES:
        ok = np.isfinite(kp).all(axis=1)
        for x, y in kp[ok]:
            assert mask[int(y), int(x)]
    assert not mask[0, 63] and not mask[63, 0]
    grown = metrics.person_mask(POSES, (64, 64), margin=0.3)
    assert grown.sum() > mask.sum()
    assert metrics.person_box(np.full((18, 2), np.nan), (64, 64), 0.1) is None


def test_empty_scene_gives_nan():
    a = _scene(0)
    assert np.isnan(metrics.masked_rmse(a, a, np.zeros((64, 64), bool)))


def test_perceptual_distance_sees_only_the_scene():
    images = _set(_scene(0), colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    scene = ~metrics.person_mask(POSES, (64, 64), margin=0.15)

    def l1(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    assert all(p.perceptual == 0.0 for p in metrics.pairwise_drift(images, scene, perceptual=l1))


def test_pck_perfect_for_identical_and_zero_for_far_keypoints():
    target = POSES[0]
    assert metrics.pck(target, None, target, alpha=0.1) == 1.0
    assert metrics.pck(target + 30.0, None, target, alpha=0.1) == 0.0
    # a shift just inside / outside alpha * max(w, h) of the conditioning pose
    thr = metrics.pck_threshold(target, 0.1)
    assert thr == pytest.approx(0.1 * 20.0)
    assert metrics.pck(target + [thr * 0.9, 0], None, target) == 1.0
    assert metrics.pck(target + [thr * 1.1, 0], None, target) == 0.0
    # low-confidence predictions count as misses; missing targets are not scored
    scores = np.ones(18)
    scores[:4] = 0.1
    assert metrics.pck(target, scores, target, min_score=0.3) == pytest.approx(12 / 16)
    assert np.isnan(metrics.pck(target, None, np.full((18, 2), np.nan)))


def test_oks_is_one_for_a_perfect_prediction_and_falls_with_distance():
    target = POSES[0]
    assert metrics.oks(target, None, target) == pytest.approx(1.0)
    near, far = metrics.oks(target + 1.0, None, target), metrics.oks(target + 6.0, None, target)
    assert 1.0 > near > far >= 0.0
    # a missing or unconfident point contributes 0; nobody found is 0 everywhere
    assert metrics.oks(target, np.zeros(18), target, min_score=0.5) == pytest.approx(0.0)
    assert metrics.oks(None, None, target) == pytest.approx(0.0)
    assert metrics.keypoint_error(target, None, target) == pytest.approx(0.0)
    assert metrics.keypoint_error(None, None, target) == pytest.approx(1.0)


def test_keypoint_ap_follows_coco_and_weights_act_as_multiplicities():
    assert metrics.keypoint_ap([1.0, 1.0, 1.0], [0.9, 0.5, 0.1]) == pytest.approx(1.0)
    assert metrics.keypoint_ap([0.0, 0.0], [0.9, 0.5]) == pytest.approx(0.0)
    # a confident miss ranked first costs precision at every recall level
    good_first = metrics.keypoint_ap([1.0, 0.0], [0.9, 0.1])
    bad_first = metrics.keypoint_ap([0.0, 1.0], [0.9, 0.1])
    assert good_first > bad_first > 0
    oks, scores = [0.9, 0.6, 0.3, 0.8], [0.4, 0.9, 0.2, 0.7]
    weighted = metrics.keypoint_ap(oks, scores, weights=[2, 0, 1, 1])
    assert weighted == pytest.approx(metrics.keypoint_ap([0.9, 0.9, 0.3, 0.8], [0.4, 0.4, 0.2, 0.7]))


def test_fidelity_scores_and_best_person():
    target = POSES[0]
    persons = [(POSES[1], None), (target + 0.5, np.ones(18))]
    kp, sc = metrics.best_person(persons, target, min_score=0.3)
    assert kp is persons[1][0]
    scores = metrics.fidelity_scores(kp, sc, target, 0.3)
    assert set(scores) == {"oks_body", "oks", "keypoint_error", "pck@0.05box", "pck@0.1box", "pck@0.2box"}
    assert scores["pck@0.2box"] == pytest.approx(1.0) and scores["oks"] > 0.5
    assert metrics.best_person([], target, 0.3) == (None, None)
    assert metrics.fidelity_scores(None, None, target, 0.3)["pck@0.1box"] == 0.0


def test_body_oks_leaves_the_face_points_out():
    """A prediction exact on the body but lost on the 5 face points (nose, eyes, ears): the body OKS is perfect, the
    18-point OKS is not; a prediction lost on the body is scored low by both."""
    target = POSES[0]
    face_lost = target.copy()
    face_lost[[0, 14, 15, 16, 17]] += 6.0
    assert metrics.oks(face_lost, None, target, points=metrics.BODY_POINTS) == pytest.approx(1.0)
    assert metrics.oks(face_lost, None, target) < 0.9  # 3 present face points of 16 score ~0
    body_lost = target.copy()
    body_lost[metrics.BODY_POINTS] += 6.0
    assert metrics.oks(body_lost, None, target, points=metrics.BODY_POINTS) < 0.5


def test_nanmean():
    assert np.isnan(metrics.nanmean([]))
    assert metrics.nanmean([1.0, float("nan"), 3.0]) == pytest.approx(2.0)
