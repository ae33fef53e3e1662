"""The two-adapter objective (docs/method.md, steps 3-4) piece by piece, without a U-Net: fast and exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from posescene.config import default_params
from posescene.errors import ConfigError
from posescene.training.objective import (
    ConstraintBalance,
    FixedBalance,
    Objective,
    ScaleBalance,
    UncertaintyBalance,
    balance_loss,
    box_masks,
    branch_losses,
    combined_features,
    cross_pose_loss,
    difference_loss,
    effective_scale,
    gradient_norm,
    guided,
    keypoint_box,
    make_balance,
    masked_mean,
    matched_scale,
    needs_teacher,
    pose_loss_fraction,
    relative_change,
    scene_loss,
    timestep_weights,
    two_branch_losses,
)

NAN = float("nan")


# --------------------------------------------------------------------------------------------- masks


def test_keypoint_box_is_in_image_fractions_and_ignores_missing_points():
    x = np.array([10.0, 30.0, NAN, 20.0])
    y = np.array([8.0, 40.0, 5.0, NAN])
    assert keypoint_box(x, y, width=64, height=80) == pytest.approx([10 / 64, 8 / 80, 30 / 64, 40 / 80])
    assert np.isnan(keypoint_box(np.full(3, NAN), np.full(3, NAN), 64, 64)).all()


def test_box_masks_at_latent_resolution():
    # a box over cells 2..4 (x) and 1..5 (y) of an 8 x 8 latent, no margin
    box = torch.tensor([[[2.2 / 8, 1.0 / 8, 4.9 / 8, 5.5 / 8]]])
    mask = box_masks(box, latent_size=8, margin=0.0)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.float32
    expected = torch.zeros(8, 8)
    expected[1:6, 2:5] = 1
    assert torch.equal(mask[0, 0], expected)


def test_box_masks_margin_union_and_missing_boxes():
    a = [0.25, 0.25, 0.5, 0.5]  # 2 cells wide on a 8-grid: cells 2..4 (touching 4.0 counts)
    b = [0.75, 0.0, 0.875, 0.125]
    missing = [NAN] * 4
    boxes = torch.tensor([[a, b], [missing, missing]])
    masks = box_masks(boxes, latent_size=8, margin=0.0)
    assert masks[0, 0, 2:5, 2:5].eq(1).all() and masks[0, 0, 0:2, 6:8].eq(1).all()  # union of A and B
    assert masks[0].sum() == 9 + 4
    assert masks[1].sum() == 0  # no person: nothing masked, all scene
    grown = box_masks(torch.tensor([[a]]), latent_size=8, margin=0.5)  # grown by half its size per side
    assert grown[0, 0, 1:6, 1:6].eq(1).all() and grown.sum() == 25  # [0.125, 0.625] -> cells 1..5
    assert box_masks(torch.tensor([[[-0.3, -0.3, 1.4, 1.4]]]), 8, 0.0).sum() == 64  # clipped to the latent


def test_masked_mean_weights_each_sample_by_its_own_area_and_skips_empty_masks():
    values = torch.zeros(3, 2, 4, 4)
    values[0] = 1.0
    values[1] = 3.0
    values[2] = 100.0
    weight = torch.zeros(3, 1, 4, 4)
    weight[0, :, :1] = 1  # a small region
    weight[1] = 1  # everything
    # sample 2 has an empty mask: left out, not a division by zero
    assert masked_mean(values, weight).item() == pytest.approx((1.0 + 3.0) / 2)


# ------------------------------------------------------------------------------------------- losses


def _branch_inputs(n: int = 4, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 2:5, 3:6] = 1
    return {
        "noise": torch.randn(n, 4, size, size, generator=g),
        "eps_s": torch.randn(n, 4, size, size, generator=g),
        "eps_p": torch.randn(n, 4, size, size, generator=g),
        "person_mask": mask,
        "is_b_row": torch.tensor([True, False] * (n // 2)),
    }


def test_l_diff_is_the_scene_mean_of_the_branch_difference_on_both_rows():
    x = _branch_inputs()
    losses = two_branch_losses(**x)
    scene = (1 - x["person_mask"]).bool().expand_as(x["eps_s"])
    per_sample = [((x["eps_s"][i] - x["eps_p"][i]) ** 2)[scene[i]].mean() for i in range(4)]
    assert losses.l_diff.item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-6)
    # the person region does not enter L_diff
    changed = dict(x, eps_p=x["eps_p"] + 10.0 * x["person_mask"])
    assert two_branch_losses(**changed).l_diff.item() == pytest.approx(losses.l_diff.item(), rel=1e-6)


def test_l_bal_whole_image_on_the_b_row_scene_only_on_the_a_row():
    x = _branch_inputs()
    base = two_branch_losses(**x).l_bal.item()
    # an error in the person region of the A row (whose image carries pose A) is ignored ...
    a_rows = (~x["is_b_row"]).float().view(-1, 1, 1, 1)
    b_rows = x["is_b_row"].float().view(-1, 1, 1, 1)
    moved_a = dict(x, noise=x["noise"] + 5.0 * x["person_mask"] * a_rows)
    assert two_branch_losses(**moved_a).l_bal.item() == pytest.approx(base, rel=1e-6)
    # ... but on the B row (image Z_B carries pose B, the pose S-Ad is given) it counts
    moved_b = dict(x, noise=x["noise"] + 5.0 * x["person_mask"] * b_rows)
    assert two_branch_losses(**moved_b).l_bal.item() > base + 1.0
    # exact value: B rows over the whole latent, A rows over the scene
    err = (x["noise"] - x["eps_s"]) ** 2
    scene = (1 - x["person_mask"]).bool().expand_as(err)
    per_sample = [err[i].mean() if x["is_b_row"][i] else err[i][scene[i]].mean() for i in range(4)]
    assert base == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-6)


def test_only_the_secondary_adapter_gets_gradient():
    """Stop-gradients: eps_P (P-Ad) and the frozen U-Net get none; S-Ad does, through the U-Net."""
    torch.manual_seed(0)
    unet = nn.Conv2d(4, 4, 3, padding=1).requires_grad_(False)  # stands in for the frozen eps_theta
    primary = nn.Conv2d(1, 4, 3, padding=1).requires_grad_(False)
    secondary = nn.Conv2d(1, 4, 3, padding=1)
    secondary.load_state_dict(primary.state_dict())
    x = _branch_inputs()
    x_t = torch.randn(4, 4, 8, 8)
    cond_a, cond_b = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        eps_p = unet(x_t + primary(cond_a))
    eps_s = unet(x_t + secondary(cond_b))
    # even a caller that forgets no_grad for eps_P cannot push gradient into the primary branch
    leaky_primary = nn.Conv2d(1, 4, 3, padding=1)
    eps_p_leaky = unet(x_t + leaky_primary(cond_a))
    losses = two_branch_losses(x["noise"], eps_s, eps_p_leaky, x["person_mask"], x["is_b_row"])
    balance = ScaleBalance(0.9)
    balance.update(losses.l_diff.item(), losses.l_bal.item())
    balance(losses.l_diff, losses.l_bal).j.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in secondary.parameters())
    assert all(p.grad is None for p in leaky_primary.parameters())
    assert all(p.grad is None for p in (*unet.parameters(), *primary.parameters()))
    assert not eps_p.requires_grad


# ------------------------------------------------------------------------------------------ balance


def test_scale_balance_j_is_two_at_equilibrium_and_weights_are_stop_gradient():
    balance = ScaleBalance(momentum=0.9)
    with pytest.raises(RuntimeError, match="update"):
        balance(torch.tensor(1.0), torch.tensor(1.0))
    for _ in range(50):  # losses that sit at their running means
        balance.update(0.004, 1.2)
    l_diff = torch.tensor(0.004, requires_grad=True)
    l_bal = torch.tensor(1.2, requires_grad=True)
    obj = balance(l_diff, l_bal)
    assert obj.j.item() == pytest.approx(2.0, rel=1e-6)
    assert obj.scale_diff == pytest.approx(1 / 0.004) and obj.scale_bal == pytest.approx(1 / 1.2)
    obj.j.backward()  # d J / d L_i = 1 / sg(mean L_i): the means are constants, not differentiated
    assert l_diff.grad.item() == pytest.approx(1 / 0.004) and l_bal.grad.item() == pytest.approx(1 / 1.2)


def test_scale_balance_first_step_is_bias_corrected_and_state_round_trips():
    balance = ScaleBalance(momentum=0.99)
    balance.update(0.5, 3.0)
    assert balance.running_means() == pytest.approx((0.5, 3.0))  # not 0.005 / 0.03: bias-corrected
    assert balance(torch.tensor(0.5), torch.tensor(3.0)).j.item() == pytest.approx(2.0)
    balance.update(1.5, 1.0)
    restored = ScaleBalance(momentum=0.99)
    restored.load_state_dict(balance.state_dict())  # checkpoints keep the running means exactly
    assert restored.running_means() == balance.running_means() and restored.count == 2
    # a loss of exactly 0 (an all-person batch) does not divide by zero
    zero = ScaleBalance(0.5)
    zero.update(0.0, 1.0)
    assert math.isfinite(zero(torch.tensor(0.0), torch.tensor(1.0)).j.item())


def test_scale_balance_with_a_reference_divides_l_bal_by_it_not_by_its_running_mean():
    """The distill reading: L_bal starts at 0, so its running mean would make J a log barrier."""
    balance = ScaleBalance(momentum=0.9, bal_reference=0.02)
    balance.update(1e-4, 0.0)
    l_bal = torch.tensor(0.0, requires_grad=True)
    obj = balance(torch.tensor(1e-4), l_bal)
    assert obj.j.item() == pytest.approx(1.0)  # L_diff at its mean; no pose lost yet
    assert obj.scale_bal == pytest.approx(1 / 0.02) and obj.lambda_eff == pytest.approx(0.02 / 1e-4)
    obj.j.backward()
    assert l_bal.grad.item() == pytest.approx(1 / 0.02)  # not 1 / 1e-12
    plain = ScaleBalance(momentum=0.9)
    plain.update(1e-4, 0.0)
    assert plain(torch.tensor(1e-4), torch.tensor(0.0)).scale_bal == pytest.approx(1e12)  # the log barrier


def test_fixed_balance():
    obj = FixedBalance(lambda_diff=3.0)(torch.tensor(0.5), torch.tensor(2.0))
    assert obj.j.item() == pytest.approx(2.0 + 3.0 * 0.5)
    assert (obj.scale_diff, obj.scale_bal) == (3.0, 1.0)
    assert list(FixedBalance(1.0).parameters()) == []


def test_uncertainty_balance_optimum_is_the_scale_mapping():
    balance = UncertaintyBalance()
    assert balance(torch.tensor(0.5), torch.tensor(2.0)).j.item() == pytest.approx(2.5)  # s = 0: plain sum
    # at s_i = log L_i (exp(-s_i) = 1 / L_i, the scale mapping) the gradient w.r.t. s vanishes: the optimum
    with torch.no_grad():
        balance.log_vars.copy_(torch.log(torch.tensor([0.01, 2.0])))
    obj = balance(torch.tensor(0.01), torch.tensor(2.0))
    obj.j.backward()
    assert balance.log_vars.grad.abs().max().item() < 1e-6
    assert obj.scale_diff == pytest.approx(100.0) and obj.scale_bal == pytest.approx(0.5)
    # away from it, a gradient step moves s towards log L
    balance.log_vars.grad = None
    with torch.no_grad():
        balance.log_vars.zero_()
    balance(torch.tensor(0.01), torch.tensor(2.0)).j.backward()
    assert balance.log_vars.grad[0] > 0 and balance.log_vars.grad[1] < 0  # s_diff should go down, s_bal up


def test_make_balance():
    assert isinstance(make_balance("scale", 0.9, 1.0), ScaleBalance)
    assert isinstance(make_balance("fixed", 0.99, lambda_diff=2.0), FixedBalance)
    assert isinstance(make_balance("uncertainty", 0.99, 1.0), UncertaintyBalance)
    with pytest.raises(ValueError, match="unknown balance"):
        make_balance("foo", 0.99, 1.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ readings


def _reading_inputs(n: int = 4, size: int = 16) -> dict[str, torch.Tensor]:
    """B's person region (2 x 2 cells of 16 x 16) inside a larger union with A's; rows alternate B, A."""
    g = torch.Generator().manual_seed(1)
    person_b = torch.zeros(n, 1, size, size)
    person_b[:, :, 6:8, 6:8] = 1
    mask = person_b.clone()
    mask[:, :, 2:5, 10:13] = 1  # A's person elsewhere
    return {
        "noise": torch.randn(n, 4, size, size, generator=g),
        "eps_s": torch.randn(n, 4, size, size, generator=g),
        "eps_p": torch.randn(n, 4, size, size, generator=g),
        "person_mask": mask,
        "person_b": person_b,
        "is_b_row": torch.tensor([True, False] * (n // 2)),
        "eps_teacher": torch.randn(n, 4, size, size, generator=g),
    }


def test_whole_reading_is_the_default_reading_and_l_diff_is_shared():
    x = _reading_inputs()
    old = two_branch_losses(x["noise"], x["eps_s"], x["eps_p"], x["person_mask"], x["is_b_row"])
    for reading in ("whole", "person", "distill"):
        losses = branch_losses(reading, **x)
        assert losses.l_diff.shape == () and losses.l_bal.shape == ()
        assert losses.l_diff.item() == old.l_diff.item()  # L_diff does not depend on the reading
    assert branch_losses("whole", **x).l_bal.item() == old.l_bal.item()
    assert [needs_teacher(r) for r in ("whole", "person", "distill")] == [False, False, True]
    with pytest.raises(ValueError, match="unknown balance reading"):
        balance_loss("foo", x["noise"], x["eps_s"], x["person_mask"], x["person_b"], x["is_b_row"])  # type: ignore[arg-type]


def test_person_reading_is_the_b_rows_error_inside_bs_person_region_only():
    x = _reading_inputs()
    args = ("person", x["noise"], x["eps_s"], x["person_mask"], x["person_b"], x["is_b_row"])
    value = balance_loss(*args).item()
    err = (x["noise"] - x["eps_s"]) ** 2
    region = x["person_b"].bool().expand_as(err)
    expected = torch.stack([err[i][region[i]].mean() for i in (0, 2)]).mean().item()  # B rows 0 and 2
    assert value == pytest.approx(expected, rel=1e-6)
    # outside B's region (scene, A's person) and anything on the A rows: ignored
    outside = (1 - x["person_b"]) * 5.0
    a_rows = (~x["is_b_row"]).float().view(-1, 1, 1, 1)
    for moved in (x["noise"] + outside, x["noise"] + 5.0 * a_rows):
        assert balance_loss("person", moved, *args[2:]).item() == pytest.approx(value, rel=1e-6)


def test_distill_reading_matches_the_teacher_inside_bs_region_on_both_rows_without_teacher_gradient():
    x = _reading_inputs()
    teacher = x["eps_teacher"].clone().requires_grad_(True)  # a caller that forgot no_grad
    eps_s = x["eps_s"].clone().requires_grad_(True)
    l_bal = balance_loss("distill", x["noise"], eps_s, x["person_mask"], x["person_b"], x["is_b_row"], teacher)
    err = (eps_s.detach() - teacher.detach()) ** 2
    region = x["person_b"].bool().expand_as(err)
    assert l_bal.item() == pytest.approx(torch.stack([err[i][region[i]].mean() for i in range(4)]).mean().item())
    l_bal.backward()
    assert teacher.grad is None and eps_s.grad is not None and eps_s.grad.abs().sum() > 0
    assert (eps_s.grad * (1 - x["person_b"])).abs().sum() == 0  # no pull outside B's person region
    # S-Ad equal to the teacher (a copy of P-Ad at initialisation) gives exactly 0; the noise plays no part
    same = balance_loss(
        "distill", x["noise"] * 3, teacher.detach(), x["person_mask"], x["person_b"], x["is_b_row"], teacher
    )
    assert same.item() == 0.0
    with pytest.raises(ValueError, match="eps_teacher"):
        balance_loss("distill", x["noise"], x["eps_s"], x["person_mask"], x["person_b"], x["is_b_row"])


def test_removing_pose_features_moves_person_and_distill_a_lot_and_whole_little():
    """The issue-13 measurement in miniature: the pose lives in a small region, the rest is non-pose error.

    eps with S-Ad's features: the noise plus a non-pose error everywhere; without them, an extra error in B's
    person region (the pose is lost). The teacher (P-Ad on B_0) knows the pose, up to a small error.
    """
    x = _reading_inputs()
    g = torch.Generator().manual_seed(2)
    shape = x["noise"].shape
    eps_with = x["noise"] + 0.3 * torch.randn(shape, generator=g)
    eps_without = eps_with + 0.3 * torch.randn(shape, generator=g) * x["person_b"]
    teacher = eps_with + 0.05 * torch.randn(shape, generator=g)

    def sensitivity(reading: str) -> float:
        losses = [
            balance_loss(reading, x["noise"], eps, x["person_mask"], x["person_b"], x["is_b_row"], teacher).item()  # type: ignore[arg-type]
            for eps in (eps_with, eps_without)
        ]
        return relative_change(*losses)

    assert sensitivity("whole") < 0.02
    assert sensitivity("person") > 0.3
    assert sensitivity("distill") > 0.9


def test_relative_change_is_symmetric_bounded_and_zero_for_zero():
    assert relative_change(1.0, 1.01) == pytest.approx(0.01 / 1.01)
    assert relative_change(2.0, 1.0) == relative_change(1.0, 2.0) == pytest.approx(0.5)
    assert relative_change(0.0, 0.3) == 1.0 and relative_change(0.0, 0.0) == 0.0


def test_gradient_norm_leaves_the_backward_unchanged():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    x = torch.randn(5, 3)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        out = layer(x)
        return out.pow(2).mean(), (out - 1).abs().mean()

    a, b = losses()
    (a + b).backward()
    plain = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    a, b = losses()
    norm_a = gradient_norm(a, list(layer.parameters()))
    assert all(p.grad is None for p in layer.parameters())  # measuring accumulates nothing
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(a, list(layer.parameters()), retain_graph=True)])
    assert norm_a == pytest.approx(expected.norm().item(), rel=1e-6)
    (a + b).backward()  # the graph is still there, and the gradients are those of a plain step
    assert all(torch.equal(p.grad, q) for p, q in zip(layer.parameters(), plain, strict=True))


def test_lambda_eff_of_each_balance():
    scale = ScaleBalance(0.9)
    scale.update(1.5e-4, 0.0349)
    assert scale(torch.tensor(1.5e-4), torch.tensor(0.0349)).lambda_eff == pytest.approx(0.0349 / 1.5e-4)
    assert FixedBalance(7.5)(torch.tensor(1.0), torch.tensor(1.0)).lambda_eff == 7.5
    unc = UncertaintyBalance(init_from_first_loss=False)
    with torch.no_grad():
        unc.log_vars.copy_(torch.tensor([-3.0, -1.0]))
    assert unc(torch.tensor(1.0), torch.tensor(1.0)).lambda_eff == pytest.approx(math.exp(3.0) / math.exp(1.0))
    assert Objective(torch.tensor(0.0), 1.0, 0.0).lambda_eff == math.inf


# ---------------------------------------------------------------------------- uncertainty that learns


def _toy_uncertainty_run(balance: UncertaintyBalance, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two losses four decades apart, sharing one parameter; Adam as in training (S-Ad lr, log-variance lr)."""
    defaults = default_params().train  # params.yaml: the one source of the training settings
    w = nn.Parameter(torch.tensor(0.3))
    optimizer = torch.optim.AdamW(
        [
            {"params": [w], "lr": defaults.lr, "weight_decay": 0.0},
            {"params": list(balance.parameters()), "lr": defaults.uncertainty_lr, "weight_decay": 0.0},
        ]
    )
    for _ in range(steps):
        l_diff = 1.5e-4 * (1 + (w - 1) ** 2)
        l_bal = 3.5e-2 * (1 + (w + 1) ** 2)
        balance.update(l_diff.item(), l_bal.item())
        balance(l_diff, l_bal).j.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        losses = torch.stack([1.5e-4 * (1 + (w - 1) ** 2), 3.5e-2 * (1 + (w + 1) ** 2)])
    return torch.exp(-balance.log_vars.detach()), losses


def test_uncertainty_weights_learn_one_over_each_loss_from_zero_within_a_few_hundred_steps():
    """From s = 0 (weights 1) at the default train.uncertainty_lr: the weights reach ~1 / L_i (issue 13)."""
    weights, losses = _toy_uncertainty_run(UncertaintyBalance(init_from_first_loss=False), steps=300)
    assert (weights * losses).tolist() == pytest.approx([1.0, 1.0], rel=0.15)
    # at the adapter's learning rate alone (the old setup) they would still be near 1: the test can fail
    assert default_params().train.uncertainty_lr * 300 > -math.log(1.5e-4)


def test_uncertainty_weights_start_at_one_over_the_first_losses_and_keep_learned_values_on_resume():
    balance = UncertaintyBalance()
    balance.update(1.5e-4, 0.0349)
    obj = balance(torch.tensor(1.5e-4), torch.tensor(0.0349))
    assert (obj.scale_diff, obj.scale_bal) == pytest.approx((1 / 1.5e-4, 1 / 0.0349), rel=1e-5)
    with torch.no_grad():
        balance.log_vars.add_(0.5)  # "learned" since
    balance.update(1.0, 1.0)  # later updates do not re-initialise
    restored = UncertaintyBalance()
    restored.load_state_dict(balance.state_dict())
    restored.update(1.0, 1.0)  # nor does the first update after a resume
    assert torch.equal(restored.log_vars, balance.log_vars)
    weights, losses = _toy_uncertainty_run(UncertaintyBalance(), steps=200)
    assert (weights * losses).tolist() == pytest.approx([1.0, 1.0], rel=0.15)


# ------------------------------------------------------------------------ readings of issue 25: trivial solutions
# A world in eps space: eps without adapter ("the text's scene"), and the primary's effect on pose B's map made of
# a part inside B's person region, a pose-independent scene part g and a pose-dependent scene part d_B (the same
# for A). S-Ad's trivial solutions are eps = base + c e_B (c = 1: S-Ad = P-Ad, c = 0: S-Ad = 0, else a turned-down
# primary, in the adapter's linear regime); the localised solution keeps the adapter's effect inside B's person
# region only: base + e_B M_B.


def _pose_world(g_scale: float = 1.0, d_scale: float = 0.3) -> dict[str, torch.Tensor]:
    n, size = 4, 16
    gen = torch.Generator().manual_seed(5)
    person_b = torch.zeros(n, 1, size, size)
    person_b[..., 3:9, 2:6] = 1
    person_a = torch.zeros(n, 1, size, size)
    person_a[..., 4:10, 9:13] = 1
    union = torch.clamp(person_a + person_b, max=1.0)
    scene = 1 - union
    base = torch.randn(n, 4, size, size, generator=gen)
    g = g_scale * torch.randn(n, 4, size, size, generator=gen)

    def effect(person: torch.Tensor) -> torch.Tensor:
        inside = torch.randn(n, 4, size, size, generator=gen)
        return person * inside + scene * (g + d_scale * torch.randn(n, 4, size, size, generator=gen))

    e_b, e_a = effect(person_b), effect(person_a)
    return {
        "base": base,
        "e_b": e_b,
        "e_a": e_a,
        "teacher": base + e_b,  # eps_P(B_0)
        "primary_a": base + e_a,  # eps_P(A_0): the default reading's L_diff target
        "mask": union,
        "person_b": person_b,
        "is_b_row": torch.tensor([True, False] * (n // 2)),
        "noise": torch.randn(n, 4, size, size, generator=gen),
    }


def _solution(w: dict[str, torch.Tensor], name: str, c: float = 0.6) -> torch.Tensor:
    return {
        "S-Ad = P-Ad": w["base"] + w["e_b"],
        "S-Ad = 0": w["base"],
        "S-Ad = c P-Ad": w["base"] + c * w["e_b"],
        "localised": w["base"] + w["e_b"] * w["person_b"],
    }[name]


def _distill(w: dict[str, torch.Tensor], eps_s: torch.Tensor) -> torch.Tensor:
    return balance_loss("distill", w["noise"], eps_s, w["mask"], w["person_b"], w["is_b_row"], w["teacher"])


def test_text_target_makes_keeping_the_effect_inside_the_person_region_the_zero_loss_solution():
    """diff_target text: L_diff against the U-Net without adapter. The localised solution has J = 0 with zero gradient;
    every trivial solution costs something, and S-Ad = c P-Ad no longer beats the localised one (with the primary's
    other pose as the target it does, in a world whose primary effect on the scene is mostly pose-independent)."""
    w = _pose_world()
    c_diff = difference_loss(_solution(w, "S-Ad = P-Ad"), w["base"], w["mask"]).item()
    c_bal = _distill(w, w["base"]).item()  # C: the pose effect

    def j(name: str, target: torch.Tensor, c: float = 0.6) -> float:
        eps = _solution(w, name, c)
        return difference_loss(eps, target, w["mask"]).item() / c_diff + _distill(w, eps).item() / c_bal

    text = {name: j(name, w["base"]) for name in ("S-Ad = P-Ad", "S-Ad = 0", "S-Ad = c P-Ad", "localised")}
    assert text["localised"] == 0.0
    assert text["S-Ad = P-Ad"] == pytest.approx(1.0) and text["S-Ad = 0"] == pytest.approx(1.0)
    for c in (0.2, 0.5, 0.6, 0.9):  # c^2 + (1 - c)^2 >= 1/2 for every turn-down
        assert j("S-Ad = c P-Ad", w["base"], c) == pytest.approx(c**2 + (1 - c) ** 2, rel=1e-5)
    # the gradient at the localised solution is exactly 0; at S-Ad = P-Ad it pulls on the scene only
    eps = _solution(w, "localised").requires_grad_(True)
    (difference_loss(eps, w["base"], w["mask"]) + _distill(w, eps)).backward()
    assert eps.grad is not None and eps.grad.abs().max() == 0.0
    eps = _solution(w, "S-Ad = P-Ad").requires_grad_(True)
    difference_loss(eps, w["base"], w["mask"]).backward()
    assert eps.grad is not None and (eps.grad * w["mask"]).abs().max() == 0.0 and eps.grad.abs().sum() > 0
    # the default target (the primary on A_0) prefers a turned-down primary to the localised solution
    assert j("S-Ad = c P-Ad", w["primary_a"], 0.9) < j("localised", w["primary_a"])
    assert difference_loss(_solution(w, "localised"), w["primary_a"], w["mask"]).item() > 0


def test_timestep_weights_are_one_at_power_zero_mean_one_and_favour_high_noise():
    t = torch.arange(1000)
    assert torch.equal(timestep_weights(t, 1000, 0.0), torch.ones(1000))
    for power in (0.5, 1.0, 2.0):
        weights = timestep_weights(t, 1000, power)
        assert weights.mean().item() == pytest.approx(1.0, rel=1e-5)
        assert bool((weights[1:] > weights[:-1]).all())  # towards high noise
    # trivial solutions keep their value under any weighting when they are exact; a weighted L_diff is the
    # weighted mean of the per-sample scene means
    w = _pose_world()
    weights = torch.tensor([0.2, 0.5, 1.3, 2.0])
    assert difference_loss(w["base"], w["base"], w["mask"], weights).item() == 0.0
    eps = _solution(w, "S-Ad = P-Ad")
    per_sample = [difference_loss(eps[i : i + 1], w["base"][i : i + 1], w["mask"][i : i + 1]) for i in range(4)]
    weighted = (torch.stack(per_sample) * weights).mean().item()
    assert difference_loss(eps, w["base"], w["mask"], weights).item() == pytest.approx(weighted, rel=1e-5)
    assert difference_loss(eps, w["base"], w["mask"], None).item() == difference_loss(eps, w["base"], w["mask"]).item()


def test_guided_prediction_is_the_samplers_and_amplifies_the_scene_difference():
    w = _pose_world()
    u, c = w["base"], w["base"] + w["e_b"]
    assert torch.equal(guided(u, c, 1.0), c)
    assert torch.allclose(guided(u, c, 5.0), u + 5.0 * (c - u))
    # S-Ad = 0 on both halves against the text target on both halves: still exactly 0; S-Ad = P-Ad: the guided
    # scene difference is the conditional one times g^2 when the unconditional halves agree
    target = guided(w["base"], w["base"], 5.0)
    assert difference_loss(guided(w["base"], w["base"], 5.0), target, w["mask"]).item() == 0.0
    plain = difference_loss(c, w["base"], w["mask"]).item()
    assert difference_loss(guided(u, c, 5.0), target, w["mask"]).item() == pytest.approx(25 * plain, rel=1e-5)


def test_constraint_balance_prices_nothing_inside_epsilon_and_learns_mu_by_dual_ascent():
    w = _pose_world()
    c_bal = _distill(w, w["base"]).item()
    balance = ConstraintBalance(momentum=0.9, epsilon=0.1, dual_lr=2.0)
    with pytest.raises(RuntimeError, match="bal_reference"):
        balance.update(1.0, 0.0)
    balance.bal_reference = c_bal
    for name, c, feasible in (("S-Ad = P-Ad", 1.0, True), ("S-Ad = c P-Ad", 0.8, True), ("S-Ad = 0", 0.0, False)):
        fraction = _distill(w, _solution(w, name, c)).item() / c_bal
        assert fraction == pytest.approx((1 - c) ** 2, abs=1e-6)
        assert (fraction <= balance.epsilon) == feasible  # (1 - c)^2 <= epsilon: c >= 1 - sqrt(epsilon) = 0.68
    # mu starts at 0 and grows while the constraint is violated, by dual_lr x (fraction - epsilon)
    balance.update(1.0, 0.5 * c_bal)
    assert balance.mu == pytest.approx(2.0 * (0.5 - 0.1))
    balance.update(1.0, 0.3 * c_bal)
    assert balance.mu == pytest.approx(0.8 + 2.0 * 0.2)
    for _ in range(10):  # satisfied: mu shrinks, projected at 0
        balance.update(1.0, 0.0)
    assert balance.mu == 0.0
    balance.update(1.0, 0.6 * c_bal)
    mu = balance.mu
    # value and gradient: inside epsilon the pose term is 0 with 0 gradient; outside it is mu (fraction - epsilon)
    for name, c in (("S-Ad = c P-Ad", 0.8), ("S-Ad = 0", 0.0)):
        eps = _solution(w, name, c).requires_grad_(True)
        l_diff, l_bal = difference_loss(eps, w["base"], w["mask"]), _distill(w, eps)
        obj = balance(l_diff, l_bal)
        mean_diff = balance.ema / (1 - 0.9**balance.count)
        pose_term = mu * max(0.0, l_bal.item() / c_bal - 0.1)
        assert obj.j.item() == pytest.approx(l_diff.item() / mean_diff + pose_term, rel=1e-5)
        assert obj.mu == mu and obj.scale_bal == pytest.approx(mu / c_bal)
        obj.j.backward()
        inside = (eps.grad * w["person_b"]).abs().max().item()
        assert (inside > 0) == (name == "S-Ad = 0")  # only the violating solution is pulled in B's person region
    state = balance.get_extra_state()
    other = ConstraintBalance(0.9, 0.1, 2.0)
    other.set_extra_state(state)
    assert (other.ema, other.count, other.mu) == (balance.ema, balance.count, balance.mu)
    assert isinstance(make_balance("constraint", 0.99, 1.0, epsilon=0.1, dual_lr=1.0), ConstraintBalance)
    with pytest.raises(ValueError, match="epsilon"):
        make_balance("constraint", 0.99, 1.0)


def test_constraint_needs_the_distill_reading():
    assert default_params({"train.balance": "constraint"}).train.balance == "constraint"
    with pytest.raises(ConfigError, match="distill"):
        default_params({"train.balance": "constraint", "train.balance_reading": "whole"})


def test_correct_role_adds_s_ads_features_to_the_primarys_and_starts_at_the_primary():
    gen = torch.Generator().manual_seed(1)
    f_p = [torch.randn(2, 8, 4, 4, generator=gen), torch.randn(2, 16, 2, 2, generator=gen)]
    zero = [torch.zeros_like(f) for f in f_p]
    assert all(torch.equal(a, b) for a, b in zip(combined_features("replace", None, f_p), f_p, strict=True))
    # S-Ad = 0 (its zero-output start) is the primary exactly; S-Ad = -(1 - c) P-Ad is the primary turned down
    assert all(torch.equal(a, b) for a, b in zip(combined_features("correct", f_p, zero), f_p, strict=True))
    turned = combined_features("correct", f_p, [-0.4 * f for f in f_p])
    assert all(torch.allclose(a, 0.6 * b) for a, b in zip(turned, f_p, strict=True))
    # the primary's features carry no gradient even from a caller that forgot no_grad
    leaky = [f.clone().requires_grad_(True) for f in f_p]
    s_ad = [f.clone().requires_grad_(True) for f in zero]
    sum(x.sum() for x in combined_features("correct", leaky, s_ad)).backward()
    assert all(f.grad is None for f in leaky) and all(torch.equal(f.grad, torch.ones_like(f)) for f in s_ad)
    with pytest.raises(ValueError, match="primary"):
        combined_features("correct", None, f_p)
    # in eps space S-Ad = 0 then costs what S-Ad = P-Ad costs in the replace role: L_distill = 0
    w = _pose_world()
    assert _distill(w, _solution(w, "S-Ad = P-Ad")).item() == 0.0


def test_cross_pose_loss_ranks_the_trivial_solutions_and_pulls_only_the_b_branch():
    """Beyond the patent. S-Ad on A_0 and on B_0 with the same x_t: the scene difference is what drift measures."""
    w = _pose_world()
    primary = cross_pose_loss(w["base"] + w["e_b"], w["base"] + w["e_a"], w["mask"]).item()
    assert primary > 0
    assert cross_pose_loss(w["base"], w["base"], w["mask"]).item() == 0.0  # S-Ad = 0
    for c in (0.3, 0.6):  # S-Ad = c P-Ad: c^2 of the primary's
        value = cross_pose_loss(w["base"] + c * w["e_b"], w["base"] + c * w["e_a"], w["mask"]).item()
        assert value == pytest.approx(c**2 * primary, rel=1e-5)
    localised_a = w["base"] + w["e_a"] * w["mask"]
    assert cross_pose_loss(_solution(w, "localised"), localised_a, w["mask"]).item() == 0.0
    eps_b = (w["base"] + w["e_b"]).requires_grad_(True)
    eps_a = (w["base"] + w["e_a"]).requires_grad_(True)
    cross_pose_loss(eps_b, eps_a, w["mask"]).backward()
    assert eps_a.grad is None and eps_b.grad is not None and (eps_b.grad * w["mask"]).abs().max() == 0.0
    l_diff = torch.tensor(0.5)
    assert scene_loss(l_diff, None, 3.0) is l_diff  # off: L_diff itself, the default reading
    assert scene_loss(l_diff, torch.tensor(0.25), 2.0).item() == 1.0


def test_effective_scale_finds_a_turned_down_primary_and_not_a_localised_one():
    """The diagnostic on the trivial solutions: the primary at scale s is base + s e (fidelity 1 - (1 - s)^2 and
    drift s^2 D in this linear world). S-Ad = c P-Ad is the primary at scale c with the same drift: turned down."""
    w = _pose_world()
    c_bal = _distill(w, w["base"]).item()

    def measure(eps_b: torch.Tensor, eps_a: torch.Tensor) -> tuple[float, float]:
        fidelity = 1.0 - pose_loss_fraction(_distill(w, eps_b).item(), c_bal)
        return fidelity, cross_pose_loss(eps_b, eps_a, w["mask"]).item()

    scales = [0.0, 0.25, 0.5, 0.75, 1.0]
    curve = [measure(w["base"] + s * w["e_b"], w["base"] + s * w["e_a"]) for s in scales]
    fidelity, drift = [f for f, _ in curve], [d for _, d in curve]
    for c in (0.4, 0.6):
        found = effective_scale(
            scales, fidelity, drift, *measure(_solution(w, "S-Ad = c P-Ad", c), w["base"] + c * w["e_a"]), 0.1
        )
        assert found.scale == pytest.approx(c, abs=0.03) and abs(found.drift_gap) < 0.1 and found.turned_down
        assert "only a turned-down primary" in found.sentence()
    same = effective_scale(scales, fidelity, drift, *measure(w["base"] + w["e_b"], w["base"] + w["e_a"]), 0.1)
    assert same.scale == pytest.approx(1.0) and same.drift_gap == pytest.approx(0.0, abs=1e-9) and same.turned_down
    zero = effective_scale(scales, fidelity, drift, *measure(w["base"], w["base"]), 0.1)
    assert zero.scale == 0.0 and zero.turned_down and "no drift" in zero.sentence()  # S-Ad = 0: scale 0
    local = effective_scale(
        scales, fidelity, drift, *measure(_solution(w, "localised"), w["base"] + w["e_a"] * w["mask"]), 0.1
    )
    assert local.scale == pytest.approx(1.0) and local.drift_gap == pytest.approx(-1.0) and not local.turned_down
    assert "not a turned-down primary" in local.sentence()
    # outside the probed curve: not decided
    assert math.isnan(matched_scale([0.0, 0.5], [0.0, 0.4], [0.0, 1.0], 0.9)[0])
    assert not effective_scale([0.0, 0.5], [0.0, 0.4], [0.0, 1.0], 0.9, 0.1, 0.1).turned_down
    assert math.isnan(pose_loss_fraction(0.1, 0.0))
