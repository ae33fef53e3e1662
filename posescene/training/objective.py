"""The two-adapter objective of docs/method.md, steps 3-4 (the default reading), as small pure functions.

Nothing here knows about models or files: the training loop computes eps_S (secondary adapter, with
gradient) and eps_P (primary adapter, no gradient) and hands them here with the noise, the person mask
and which row of the pair each sample is. Keeping the maths separate is what lets the tests pin down
each piece (masks, stop-gradients, the rows' different treatment, J at equilibrium) without a U-Net.

- M: union of the person regions of A and B at latent resolution (each keypoint bounding box grown by
  ``margin`` x its size); the scene is 1 - M.
- L_diff = mean over the scene of (eps_S - eps_P)^2, on both rows (scene stability).
- L_bal  = mean of (eps - eps_S)^2 on the B row (the image carries pose B: pose fidelity), and only over
  the scene on the A row (there the pose in the image is A, not the B that drives S-Ad).
- J (``scale``) = L_diff / sg(mean L_diff) + L_bal / sg(mean L_bal); its equilibrium value is 2.
  ``fixed``: J = L_bal + lambda * L_diff. ``uncertainty``: J = sum_i exp(-s_i) L_i + s_i (Kendall et al.).

Readings of L_bal (``train.balance_reading``; docs/method.md): the patent does not say what the balance
loss measures, and the default reading above turned out to carry almost no pose (issue 13: removing S-Ad's
features changes it by ~0.3%), so two readings that look at the pose are selectable:

- ``whole``: the reading above (:func:`two_branch_losses`).
- ``person``: the B row's denoising error inside B's person region only. The A row is dropped from L_bal:
  its image carries pose A while S-Ad is given B_0, so only its scene could enter, and the scene is what
  dilutes the pose signal (and is L_diff's job already).
- ``distill``: inside B's person region, eps_S(B_0) matches eps_P(B_0), the frozen primary on the same map
  (the teacher), on both rows; L_diff still keeps the scene matched to eps_P(A_0) outside the person regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Balance = Literal["scale", "fixed", "uncertainty", "constraint"]
Reading = Literal["whole", "person", "distill"]
READINGS: tuple[Reading, ...] = ("whole", "person", "distill")


# --------------------------------------------------------------------------------------------- masks


def keypoint_box(x: np.ndarray, y: np.ndarray, width: float, height: float) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1) of the non-missing keypoints, as fractions of the image side.

    Fractions of the *image* (not the beta-normalised lattice) because the mask is applied to the latent of
    the image, which the cache made by resizing the whole image to the model resolution. All-missing
    keypoints (or no person) give a NaN box, which masks nothing.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return np.full(4, np.nan)
    return np.array([x[ok].min() / width, y[ok].min() / height, x[ok].max() / width, y[ok].max() / height])


def box_masks(boxes: torch.Tensor, latent_size: int, margin: float) -> torch.Tensor:
    """Union of person boxes at latent resolution: (N, K, 4) fractional boxes -> (N, 1, L, L) in {0, 1}.

    Each box is grown by ``margin`` x its width/height on each side, then every latent cell the box touches
    is marked (cell j covers [j/L, (j+1)/L)), so a person is never under-masked. NaN boxes are ignored.
    """
    boxes = boxes.to(torch.float64)
    x0, y0, x1, y1 = boxes.unbind(-1)
    grow_x, grow_y = margin * (x1 - x0), margin * (y1 - y0)
    lo_x = torch.floor((x0 - grow_x) * latent_size)
    hi_x = torch.floor((x1 + grow_x) * latent_size)
    lo_y = torch.floor((y0 - grow_y) * latent_size)
    hi_y = torch.floor((y1 + grow_y) * latent_size)
    cells = torch.arange(latent_size, dtype=torch.float64)
    # (N, K, L) membership per axis; NaN comparisons are False, so missing boxes mark no cell
    in_x = (cells >= lo_x[..., None]) & (cells <= hi_x[..., None])
    in_y = (cells >= lo_y[..., None]) & (cells <= hi_y[..., None])
    per_box = in_y[..., :, None] & in_x[..., None, :]  # (N, K, L, L)
    return per_box.any(dim=1, keepdim=False).unsqueeze(1).to(torch.float32)


# ------------------------------------------------------------------------------------------- losses


def masked_mean(values: torch.Tensor, weight: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of per-sample means of ``values`` (N, C, H, W) over ``weight`` (N, 1, H, W) in {0, 1}.

    Each sample is divided by its own mask area (a sample with a small scene counts as much as one with a
    large scene); samples with an empty mask are left out of the batch mean instead of dividing by zero.
    ``sample_weight`` (N,): each sample's mean is multiplied by it (the timestep weighting of
    :func:`timestep_weights`; None, the default reading, multiplies by nothing at all).
    """
    channels = values.shape[1]
    area = weight.sum(dim=(1, 2, 3)) * channels
    per_sample = (values * weight).sum(dim=(1, 2, 3)) / area.clamp_min(1.0)
    if sample_weight is not None:
        per_sample = per_sample * sample_weight.to(per_sample.dtype)
    valid = (area > 0).to(values.dtype)
    return (per_sample * valid).sum() / valid.sum().clamp_min(1.0)


@dataclass
class Losses:
    l_diff: torch.Tensor
    l_bal: torch.Tensor
    l_cross: torch.Tensor | None = None  # cross_pose_loss, when train.cross_pose_weight > 0


def two_branch_losses(
    noise: torch.Tensor,
    eps_s: torch.Tensor,
    eps_p: torch.Tensor,
    person_mask: torch.Tensor,
    is_b_row: torch.Tensor,
) -> Losses:
    """L_diff and L_bal of docs/method.md step 3 (the ``whole`` reading).

    ``person_mask`` (N, 1, h, w): 1 on the union of A's and B's person regions. ``is_b_row`` (N,) bool: the
    row's image carries pose B (y = y_B, image Z_B). ``eps_p`` must come from a no-grad pass; it is
    detached here as well so a caller's mistake cannot leak gradient into the primary branch.
    """
    return branch_losses("whole", noise, eps_s, eps_p, person_mask, person_mask, is_b_row)


def difference_loss(
    eps_s: torch.Tensor,
    eps_p: torch.Tensor,
    person_mask: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_diff: scene mean of (eps_S - target)^2 on every row; the same in every reading of L_bal.

    The target ``eps_p`` is eps_P(A_0) in the default reading, the U-Net without adapter under
    ``train.diff_target: text`` (:data:`DIFF_TARGETS`); ``sample_weight``: :func:`timestep_weights`.
    """
    return masked_mean((eps_s - eps_p.detach()).pow(2), 1.0 - person_mask, sample_weight)


def balance_loss(
    reading: Reading,
    noise: torch.Tensor,
    eps_s: torch.Tensor,
    person_mask: torch.Tensor,
    person_b: torch.Tensor,
    is_b_row: torch.Tensor,
    eps_teacher: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_bal under ``reading`` (module docstring). ``person_b`` (N, 1, h, w): B's person region only.

    ``eps_teacher`` = eps_P(B_0) from a no-grad pass, needed by ``distill`` only; it is detached here too.
    """
    if reading == "whole":
        weight = torch.where(is_b_row.view(-1, 1, 1, 1), torch.ones_like(person_mask), 1.0 - person_mask)
        return masked_mean((noise - eps_s).pow(2), weight)
    if reading == "person":
        # A rows get an empty mask: masked_mean leaves them out instead of counting them as zero
        weight = person_b * is_b_row.view(-1, 1, 1, 1).to(person_b.dtype)
        return masked_mean((noise - eps_s).pow(2), weight)
    if reading == "distill":
        if eps_teacher is None:
            raise ValueError("balance reading 'distill' needs eps_teacher = eps_P(B_0) (a no-grad primary pass)")
        return masked_mean((eps_s - eps_teacher.detach()).pow(2), person_b)
    raise ValueError(f"unknown balance reading {reading!r}; choose one of {', '.join(READINGS)}")


def branch_losses(
    reading: Reading,
    noise: torch.Tensor,
    eps_s: torch.Tensor,
    eps_p: torch.Tensor,
    person_mask: torch.Tensor,
    person_b: torch.Tensor,
    is_b_row: torch.Tensor,
    eps_teacher: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    eps_scene: torch.Tensor | None = None,
) -> Losses:
    """L_diff and L_bal of one micro-batch under ``reading``; ``whole`` equals :func:`two_branch_losses`.

    ``eps_scene``: S-Ad's prediction that L_diff compares (the guided one under ``train.guided_diff``); None
    is ``eps_s``, the conditional prediction L_bal always reads. ``sample_weight`` weights L_diff only.
    """
    return Losses(
        l_diff=difference_loss(eps_s if eps_scene is None else eps_scene, eps_p, person_mask, sample_weight),
        l_bal=balance_loss(reading, noise, eps_s, person_mask, person_b, is_b_row, eps_teacher),
    )


def needs_teacher(reading: Reading) -> bool:
    """Whether the reading needs eps_P(B_0): one more no-grad U-Net + P-Ad forward per step."""
    return reading == "distill"


# ----------------------------------------------------------------- readings of the objective (issue 25)
# Each is off in the default configuration (params.yaml) and selected by one train.* key; docs/method.md says
# what in the patent supports it. The tests feed each the trivial solutions (S-Ad = P-Ad, S-Ad = 0,
# S-Ad = c P-Ad) and a localised one (the adapter's effect kept inside the person region only).

DiffTarget = Literal["primary", "text"]
DIFF_TARGETS: tuple[DiffTarget, ...] = ("primary", "text")
SecondaryRole = Literal["replace", "correct"]


def timestep_weights(t: torch.Tensor, num_train_timesteps: int, power: float) -> torch.Tensor:
    """Per-sample weights ((t + 1) / T)^power / E_t[((t + 1) / T)^power] (``train.diff_timestep_power``).

    Normalised to mean 1 over t ~ U{0..T-1}, so a weighted L_diff keeps the unweighted one's scale (the scale
    balance divides by its running mean either way); power > 0 moves the weight towards high noise, where the
    scene layout (and with it drift) is decided. power 0 gives exactly 1.
    """
    steps = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    norm = steps.pow(power).mean()
    return (((t.to(torch.float64) + 1.0) / num_train_timesteps).pow(power) / norm).to(torch.float32)


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance as the sampler applies it: eps_u + g (eps_c - eps_u) (``train.guided_diff``)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def combined_features(
    role: SecondaryRole, primary: list[torch.Tensor] | None, secondary: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The features the trained model adds to the U-Net (``train.secondary_role``).

    ``replace`` (the default reading): S-Ad's own, F_S(B_0). ``correct`` (the "functional subdivision"
    reading): F_P(B_0) + F_S(B_0), the ``both`` arm of the evaluation at weight 1; S-Ad starts at zero output,
    so training starts at the primary and weight decay pulls back towards it instead of towards no pose.
    ``primary`` = F_P(B_0) from a no-grad pass (needed by ``correct`` only; detached here too).
    """
    if role == "replace":
        return list(secondary)
    if role == "correct":
        if primary is None:
            raise ValueError("secondary_role 'correct' needs the primary's features on B_0")
        return [p.detach() + s for p, s in zip(primary, secondary, strict=True)]
    raise ValueError(f"unknown secondary role {role!r}; choose replace or correct")


def cross_pose_loss(
    eps_s_b: torch.Tensor,
    eps_s_a: torch.Tensor,
    person_mask: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_cross (beyond the patent, ``train.cross_pose_weight``): scene mean of (eps_S(B_0) - sg eps_S(A_0))^2.

    Both predictions on the same x_t, t and caption; only the pose differs, so this is the quantity scene drift
    measures, at training time. The A branch is a stop-gradient (a no-grad pass), so S-Ad is pulled to make
    B's scene agree with A's, not both towards some third value in one step.
    """
    return masked_mean((eps_s_b - eps_s_a.detach()).pow(2), 1.0 - person_mask, sample_weight)


def scene_loss(l_diff: torch.Tensor, l_cross: torch.Tensor | None, cross_weight: float) -> torch.Tensor:
    """What the balance sees as the scene term: L_diff, plus ``cross_weight`` x L_cross when that is on."""
    return l_diff if l_cross is None else l_diff + cross_weight * l_cross


# ------------------------------------------------------------------------------------- diagnostics


def relative_change(with_features: float, without_features: float) -> float:
    """|L_without - L_with| / max(L_with, L_without), in [0, 1]: L_bal's pose sensitivity.

    Symmetric and bounded on purpose: ``distill`` is exactly 0 at initialisation (S-Ad is a copy of P-Ad),
    where a division by L_with would be infinite. 0 when both are 0.
    """
    top = max(abs(with_features), abs(without_features))
    return abs(without_features - with_features) / top if top > 0 else 0.0


def pose_loss_fraction(loss_with: float, loss_without: float) -> float:
    """L_distill(S-Ad) / L_distill(no adapter): the share of the primary's pose behaviour (in B's person region)
    that S-Ad has lost; 0 = all kept, 1 = as without any adapter. NaN when the primary has no pose effect."""
    return loss_with / loss_without if loss_without > 0 else math.nan


def matched_scale(scales: list[float], fidelity: list[float], drift: list[float], target: float) -> tuple[float, float]:
    """(scale, drift) where the primary's fidelity curve first reaches ``target``.

    As the evaluation's matched-fidelity comparison (evaluation.frontier.value_at): fidelity and drift are each
    interpolated monotonically (PCHIP) along the knob, so the convex start of a drift curve is not cut by a chord
    (a chord would overstate the primary's drift and flatter S-Ad), and the first crossing in knob order is used;
    (NaN, NaN) when the curve never reaches ``target``.
    """
    from scipy.interpolate import PchipInterpolator

    order = np.argsort(scales)
    s = np.asarray(scales, dtype=np.float64)[order]
    f = np.asarray(fidelity, dtype=np.float64)[order]
    d = np.asarray(drift, dtype=np.float64)[order]
    dense = np.concatenate([np.linspace(s[i], s[i + 1], 65)[:-1] for i in range(len(s) - 1)] + [s[-1:]])
    if len(s) > 2:
        f, d = PchipInterpolator(s, f)(dense), PchipInterpolator(s, d)(dense)
    else:
        f, d = np.interp(dense, s, f), np.interp(dense, s, d)
    side = f - target
    for i in range(len(dense)):
        if side[i] == 0:
            return float(dense[i]), float(d[i])
        if i + 1 < len(dense) and side[i] * side[i + 1] < 0:
            w = side[i] / (side[i] - side[i + 1])
            return float(dense[i] + w * (dense[i + 1] - dense[i])), float(d[i] + w * (d[i + 1] - d[i]))
    return math.nan, math.nan


@dataclass
class EffectiveScale:
    """S-Ad against the primary turned down, on the probe batch (eps space, docs/method.md diagnostics).

    ``scale``: the primary's scale whose pose fidelity (1 - pose-loss fraction) matches S-Ad's; ``drift_gap``:
    S-Ad's cross-pose scene difference minus the primary's at that scale, relative to the latter (-0.3 = 30%
    less drift than the turned-down primary). ``turned_down``: the gap is not below -margin, i.e. S-Ad is no
    better than the primary turned down (False when the scale is not found).
    """

    scale: float
    drift_gap: float
    turned_down: bool

    def sentence(self) -> str:
        if math.isnan(self.scale):
            return "effective primary scale: S-Ad's pose fidelity is outside the primary's probed curve"
        where = f"the primary turned down to scale {self.scale:.2f} (same pose fidelity on the probe)"
        gap = f"drift {self.drift_gap:+.0%}" if math.isfinite(self.drift_gap) else "no drift either"
        if self.turned_down:
            return f"S-Ad is only a turned-down primary on the one-step probe: {gap} against {where}"
        return f"S-Ad is not a turned-down primary on the one-step probe: {gap} against {where}"


def effective_scale(
    scales: list[float], fidelity: list[float], drift: list[float], s_fidelity: float, s_drift: float, margin: float
) -> EffectiveScale:
    """:func:`matched_scale` at S-Ad's fidelity and the relative drift gap there; ``margin``: turned_down_margin.

    Turned down unless S-Ad's drift is below (1 - margin) x the matched primary's (S-Ad = 0 is the primary at
    scale 0: no drift on either side, turned down; its gap is NaN, 0 / 0).
    """
    scale, drift_at = matched_scale(scales, fidelity, drift, s_fidelity)
    gap = (s_drift - drift_at) / drift_at if drift_at > 0 else math.nan
    turned_down = not math.isnan(scale) and s_drift >= (1.0 - margin) * drift_at
    return EffectiveScale(scale=scale, drift_gap=gap, turned_down=bool(turned_down))


def gradient_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    """L2 norm of d loss / d params, leaving the graph (and every .grad) as it was for the real backward."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


# ------------------------------------------------------------------------------------------ balance


@dataclass
class Objective:
    """J and the weight it applied to each loss (logged as scale_diff / scale_bal)."""

    j: torch.Tensor
    scale_diff: float
    scale_bal: float
    mu: float | None = None  # the constraint's multiplier (balance: constraint); None for the other balances

    @property
    def lambda_eff(self) -> float:
        """The weight of L_diff relative to L_bal that J applies: J is proportional to L_bal + lambda_eff L_diff.

        ``scale``: mean(L_bal) / mean(L_diff); ``fixed``: lambda; ``uncertainty``: exp(-s_diff) / exp(-s_bal).
        """
        return self.scale_diff / self.scale_bal if self.scale_bal > 0 else math.inf


class ScaleBalance(nn.Module):
    """J = L_diff / sg(mean L_diff) + L_bal / sg(mean L_bal): both losses mapped to scale 1, no lambda.

    The means are exponential moving averages with bias correction (Adam-style), so the first step already
    divides by the first value and J starts at 2. They are plain floats (extra state), updated by the
    caller with the values of all processes reduced, so every rank divides by the same numbers.

    ``bal_reference`` (set by the caller for the ``distill`` reading): L_bal is divided by this fixed scale
    instead of its running mean. L_distill starts at exactly 0 (S-Ad is a copy of its teacher), and dividing
    a loss that starts at 0 by its own running mean makes J a log barrier (d J = d log L_bal): measured, it
    holds S-Ad at the teacher and L_diff does not move. The reference is the loss's pose effect, L_distill
    with S-Ad's features removed, so the term reads "fraction of the pose behaviour lost".
    """

    kind = "scale"

    def __init__(self, momentum: float, bal_reference: float | None = None) -> None:
        super().__init__()
        self.momentum = momentum
        self.ema = [0.0, 0.0]
        self.count = 0
        self.bal_reference = bal_reference

    def update(self, l_diff: float, l_bal: float) -> None:
        self.count += 1
        for i, value in enumerate((l_diff, l_bal)):
            self.ema[i] = self.momentum * self.ema[i] + (1.0 - self.momentum) * value

    def running_means(self) -> tuple[float, float]:
        if self.count == 0:
            raise RuntimeError("ScaleBalance.update must be called before the first forward")
        correction = 1.0 - self.momentum**self.count
        return self.ema[0] / correction, self.ema[1] / correction

    def forward(self, l_diff: torch.Tensor, l_bal: torch.Tensor) -> Objective:
        mean_diff, mean_bal = self.running_means()
        if self.bal_reference is not None:
            mean_bal = self.bal_reference
        # tiny floor: a loss that is exactly 0 (e.g. an all-person batch) must not divide by zero
        w_diff, w_bal = 1.0 / max(mean_diff, 1e-12), 1.0 / max(mean_bal, 1e-12)
        return Objective(j=w_diff * l_diff + w_bal * l_bal, scale_diff=w_diff, scale_bal=w_bal)

    def get_extra_state(self) -> dict[str, Any]:
        return {"ema": list(self.ema), "count": self.count, "momentum": self.momentum}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.ema = [float(v) for v in state["ema"]]
        self.count = int(state["count"])


class FixedBalance(nn.Module):
    """J = L_bal + lambda * L_diff: the hand-tuned weighting the scale mapping is meant to replace."""

    kind = "fixed"

    def __init__(self, lambda_diff: float) -> None:
        super().__init__()
        self.lambda_diff = lambda_diff

    def update(self, l_diff: float, l_bal: float) -> None:
        """Nothing to track (kept so the training loop is the same for every mode)."""

    def forward(self, l_diff: torch.Tensor, l_bal: torch.Tensor) -> Objective:
        return Objective(j=l_bal + self.lambda_diff * l_diff, scale_diff=self.lambda_diff, scale_bal=1.0)


class UncertaintyBalance(nn.Module):
    """Learned log-variance weighting (Kendall et al. 2018): J = sum_i exp(-s_i) L_i + s_i.

    The s_i are parameters optimised together with the adapter (no weight decay, their own learning rate
    ``train.uncertainty_lr``); at the optimum exp(-s_i) = 1 / L_i, i.e. the same scale mapping as ``scale``
    but learned instead of measured. With ``init_from_first_loss`` the first :meth:`update` sets
    s_i = log L_i, so the weights start at the optimum instead of at 1: from s = 0 the L_diff weight would
    have to travel to about log(1.5e-4) = -8.8, which at the adapter's lr Adam never does in a short run.
    """

    kind = "uncertainty"

    def __init__(self, init_from_first_loss: bool = True) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(2))
        # a buffer, so a resumed run does not re-initialise learned values (it is in the state_dict)
        self.register_buffer("initialised", torch.tensor(not init_from_first_loss))

    def update(self, l_diff: float, l_bal: float) -> None:
        """On the first call (all ranks pass the same reduced values): s_i = log L_i."""
        if bool(self.initialised):
            return
        with torch.no_grad():
            values = torch.tensor([l_diff, l_bal], dtype=torch.float64).clamp_min(1e-12).log()
            self.log_vars.copy_(values.to(self.log_vars.dtype))
            self.initialised.fill_(True)

    def forward(self, l_diff: torch.Tensor, l_bal: torch.Tensor) -> Objective:
        s = self.log_vars.float()
        weights = torch.exp(-s)
        j = weights[0] * l_diff + weights[1] * l_bal + s.sum()
        logged = weights.detach()
        return Objective(j=j, scale_diff=float(logged[0]), scale_bal=float(logged[1]))


class ConstraintBalance(nn.Module):
    """The pose as a constraint, not a price (``balance: constraint``, with the ``distill`` reading):

        J = L_diff / sg(mean L_diff) + mu * max(0, L_distill / C - epsilon),   mu >= 0 by dual ascent.

    C (``bal_reference``, set by the caller) is the distill loss's pose effect, as for ``scale``, so L_distill / C
    is the pose-loss fraction. Below ``epsilon`` the pose term and its gradient are 0: within the allowed pose
    loss only the scene is optimised, and the overall strength cannot be bought down further with scene (the
    optimum of a price, some c < 1 for S-Ad = c P-Ad, is excluded once (1 - c)^2 > epsilon). mu grows by
    ``dual_lr`` x (fraction - epsilon) each update and is projected to >= 0; it starts at 0. L_diff's running
    mean is an EMA with bias correction as in :class:`ScaleBalance`.
    """

    kind = "constraint"

    def __init__(self, momentum: float, epsilon: float, dual_lr: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.epsilon = epsilon
        self.dual_lr = dual_lr
        self.ema = 0.0
        self.count = 0
        self.mu = 0.0
        self.bal_reference: float | None = None

    def fraction(self, l_bal: float) -> float:
        if self.bal_reference is None:
            raise RuntimeError("ConstraintBalance needs bal_reference (the distill loss's pose effect C)")
        return l_bal / max(self.bal_reference, 1e-12)

    def update(self, l_diff: float, l_bal: float) -> None:
        """The running mean of L_diff, then one dual-ascent step on mu (all ranks pass the same reduced values)."""
        self.count += 1
        self.ema = self.momentum * self.ema + (1.0 - self.momentum) * l_diff
        self.mu = max(0.0, self.mu + self.dual_lr * (self.fraction(l_bal) - self.epsilon))

    def forward(self, l_diff: torch.Tensor, l_bal: torch.Tensor) -> Objective:
        if self.count == 0:
            raise RuntimeError("ConstraintBalance.update must be called before the first forward")
        mean_diff = self.ema / (1.0 - self.momentum**self.count)
        w_diff = 1.0 / max(mean_diff, 1e-12)
        violation = torch.relu(l_bal / max(self.bal_reference or 0.0, 1e-12) - self.epsilon)
        w_bal = self.mu / max(self.bal_reference or 0.0, 1e-12)
        return Objective(j=w_diff * l_diff + self.mu * violation, scale_diff=w_diff, scale_bal=w_bal, mu=self.mu)

    def get_extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema, "count": self.count, "mu": self.mu, "momentum": self.momentum}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.ema, self.count, self.mu = float(state["ema"]), int(state["count"]), float(state["mu"])


AnyBalance = ScaleBalance | FixedBalance | UncertaintyBalance | ConstraintBalance


def make_balance(
    kind: Balance,
    momentum: float,
    lambda_diff: float,
    *,
    epsilon: float | None = None,
    dual_lr: float | None = None,
) -> AnyBalance:
    """The balance ``kind``; ``momentum`` (scale, constraint), ``lambda_diff`` (fixed), ``epsilon`` and
    ``dual_lr`` (constraint only: train.constraint_epsilon, train.dual_lr) are train.* in params.yaml."""
    if kind == "scale":
        return ScaleBalance(momentum)
    if kind == "fixed":
        return FixedBalance(lambda_diff)
    if kind == "uncertainty":
        return UncertaintyBalance()
    if kind == "constraint":
        if epsilon is None or dual_lr is None:
            raise ValueError("balance 'constraint' needs epsilon and dual_lr (train.constraint_epsilon, train.dual_lr)")
        return ConstraintBalance(momentum, epsilon, dual_lr)
    raise ValueError(f"unknown balance {kind!r}; choose scale, fixed, uncertainty or constraint")


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
