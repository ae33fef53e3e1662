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

Balance = Literal["scale", "fixed", "uncertainty"]
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


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Batch mean of per-sample means of ``values`` (N, C, H, W) over ``weight`` (N, 1, H, W) in {0, 1}.

    Each sample is divided by its own mask area (a sample with a small scene counts as much as one with a
    large scene); samples with an empty mask are left out of the batch mean instead of dividing by zero.
    """
    channels = values.shape[1]
    area = weight.sum(dim=(1, 2, 3)) * channels
    per_sample = (values * weight).sum(dim=(1, 2, 3)) / area.clamp_min(1.0)
    valid = (area > 0).to(values.dtype)
    return (per_sample * valid).sum() / valid.sum().clamp_min(1.0)


@dataclass
class Losses:
    l_diff: torch.Tensor
    l_bal: torch.Tensor


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


def difference_loss(eps_s: torch.Tensor, eps_p: torch.Tensor, person_mask: torch.Tensor) -> torch.Tensor:
    """L_diff: scene mean of (eps_S - eps_P(A_0))^2 on every row; the same in every reading."""
    return masked_mean((eps_s - eps_p.detach()).pow(2), 1.0 - person_mask)


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
) -> Losses:
    """L_diff and L_bal of one micro-batch under ``reading``; ``whole`` equals :func:`two_branch_losses`."""
    return Losses(
        l_diff=difference_loss(eps_s, eps_p, person_mask),
        l_bal=balance_loss(reading, noise, eps_s, person_mask, person_b, is_b_row, eps_teacher),
    )


def needs_teacher(reading: Reading) -> bool:
    """Whether the reading needs eps_P(B_0): one more no-grad U-Net + P-Ad forward per step."""
    return reading == "distill"


# ------------------------------------------------------------------------------------- diagnostics


def relative_change(with_features: float, without_features: float) -> float:
    """|L_without - L_with| / max(L_with, L_without), in [0, 1]: L_bal's pose sensitivity.

    Symmetric and bounded on purpose: ``distill`` is exactly 0 at initialisation (S-Ad is a copy of P-Ad),
    where a division by L_with would be infinite. 0 when both are 0.
    """
    top = max(abs(with_features), abs(without_features))
    return abs(without_features - with_features) / top if top > 0 else 0.0


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


def make_balance(
    kind: Balance, momentum: float, lambda_diff: float
) -> ScaleBalance | FixedBalance | UncertaintyBalance:
    """The balance ``kind``; ``momentum`` (scale) and ``lambda_diff`` (fixed) are train.* in params.yaml."""
    if kind == "scale":
        return ScaleBalance(momentum)
    if kind == "fixed":
        return FixedBalance(lambda_diff)
    if kind == "uncertainty":
        return UncertaintyBalance()
    raise ValueError(f"unknown balance {kind!r}; choose scale, fixed or uncertainty")


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
