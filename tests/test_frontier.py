"""The frontier statistics and the promotion gate on numbers alone (no models): fed the trivial answers
(an all-zero adapter, the base model, the primary turned down, a primary at chance) they must refuse them, and a
constructed genuinely better adapter must pass."""

from __future__ import annotations

import numpy as np
import pytest

from posescene.evaluation import frontier as fr
from posescene.evaluation import promotion as gate

S, P = 12, 6
MEASURES = ("oks", "keypoint_error")
RULES = gate.GateRules(fidelity_floor=0.95, drift_margin=0.0, min_primary_fidelity=0.1)
SCALES = (0.25, 0.5, 0.75, 1.0, 1.25)
CHANCE, CEILING = 0.2, 0.9


def _pairs(value: float, rng: np.random.Generator, sd: float = 0.001) -> np.ndarray:
    d = np.abs(value + rng.normal(0, sd, (S, P, P)))
    d = (d + d.transpose(0, 2, 1)) / 2
    d[:, np.arange(P), np.arange(P)] = np.nan
    return d


def _cells(value: float, rng: np.random.Generator, sd: float = 0.01) -> dict[str, np.ndarray]:
    v = value + rng.normal(0, sd, (S, P))
    return {"oks": v, "keypoint_error": 1 - v}


SSIM_UNIT = 10.0  # 1-SSIM is ~10x the RMSE in these worlds: the two drift columns are on different scales


def _world(
    secondary: tuple[float, float] | None,
    champion: tuple[float, float] | None = None,
    primary_gain: float = 0.5,
    seed: int = 0,
    *,
    metric: str = "drift_rmse",
    secondary_ssim: float | None = None,
) -> fr.Frontier:
    """The primary's fidelity grows linearly with its scale and its drift with it; the base is at chance.

    ``secondary`` / ``champion``: (fidelity, drift) at scale 1 (the secondary's other scales are its scale-1
    values scaled, they only shape its own curve). The 1-SSIM columns are the RMSE ones x ``SSIM_UNIT`` (own
    noise), except the secondary's when ``secondary_ssim`` (its 1-SSIM at scale 1) says otherwise; ``metric``
    (``evaluate.promotion.metric``) picks the headline drift the frontier and the gate read.
    """
    rng = np.random.default_rng(seed)
    ssim_rng = np.random.default_rng(seed + 1000)  # its own stream: the RMSE columns do not depend on it
    ssim = {"base": _pairs(0.0, ssim_rng, 0.0)}
    arms: list[tuple[str, float]] = [("base", 0.0)]
    drift = {"base": _pairs(0.0, rng, 0.0)}
    fidelity = {"base": _cells(CHANCE, rng)}
    for s in SCALES:
        key = fr.arm_key("primary", s)
        arms.append(("primary", s))
        drift[key] = _pairs(0.02 * s, rng)
        ssim[key] = _pairs(0.02 * s * SSIM_UNIT, ssim_rng, 0.01)
        fidelity[key] = _cells(CHANCE + primary_gain * s, rng)
    compare = []
    if secondary is not None:
        for s in SCALES:
            key = fr.arm_key("secondary", s)
            arms.append(("secondary", s))
            drift[key] = _pairs(secondary[1] * s, rng)
            one_minus_ssim = secondary[1] * SSIM_UNIT if secondary_ssim is None else secondary_ssim
            ssim[key] = _pairs(one_minus_ssim * s, ssim_rng, 0.01)
            fidelity[key] = _cells(CHANCE + (secondary[0] - CHANCE) * min(s, 1.0), rng)
        compare.append(("secondary", "primary"))
    if champion is not None:
        arms.append(("champion", 1.0))
        drift["champion_s100"] = _pairs(champion[1], rng)
        ssim["champion_s100"] = _pairs(champion[1] * SSIM_UNIT, ssim_rng, 0.01)
        fidelity["champion_s100"] = _cells(champion[0], rng)
        compare += [("champion", "primary"), ("secondary", "champion")]
    mismatched = {m: np.repeat(v[:, :, None], P, axis=2) for m, v in _cells(CHANCE, rng).items()}
    for v in mismatched.values():
        v[:, np.arange(P), np.arange(P)] = np.nan
    real = {"oks": np.full(P, CEILING), "keypoint_error": np.full(P, 1 - CEILING)}
    return fr.summarise(
        drift={key: fr.headline_drift(metric, d, ssim[key]) for key, d in drift.items()},
        drift_ssim=ssim,
        fidelity=fidelity,
        mismatched=mismatched,
        real=real,
        arms=arms,
        measure="oks",
        compare=compare,
        n_boot=300,
        seed=0,
    )


def test_bootstrap_point_estimate_is_the_plain_mean_and_ci_brackets_it() -> None:
    rng = np.random.default_rng(1)
    d = _pairs(0.05, rng, 0.01)
    w = fr.bootstrap_weights(S, P, 200, seed=3)
    reps = fr.pair_mean(d, w)
    assert reps[0] == pytest.approx(np.nanmean(d))
    i = fr.interval(reps)
    assert i.low <= i.value <= i.high and i.se > 0
    assert np.array_equal(fr.bootstrap_weights(S, P, 200, seed=3).sets, w.sets)  # deterministic
    assert w.sets[1:].sum(axis=1).tolist() == [S] * 200 and w.poses[1:].sum(axis=1).tolist() == [P] * 200


def test_value_at_interpolates_on_the_first_crossing_and_clamps_outside() -> None:
    x = np.array([[0.0], [0.5], [1.0], [0.8]])  # fidelity over scales (dips at the last scale)
    y = np.array([[0.0], [0.01], [0.02], [0.03]])
    assert fr.value_at(x, y, np.array([0.25]))[0] == pytest.approx(0.005)
    assert 0.01 < fr.value_at(x, y, np.array([0.9]))[0] < 0.02  # first crossing, not the dip
    # beyond the range: the nearest end (the most faithful point), never an extrapolation
    assert fr.value_at(x, y, np.array([1.5]))[0] == pytest.approx(0.02)
    assert fr.value_at(x, y, np.array([-0.5]))[0] == pytest.approx(0.0)


def test_value_at_is_monotone_and_follows_a_curved_frontier() -> None:
    """A straight line across a curved stretch of the primary's curve misplaces an off-grid point; the monotone
    interpolation along the knob follows the curve (here fidelity = sqrt(scale), drift = scale) and never
    overshoots its neighbours."""
    scales = [0.0, 0.25, 0.5, 1.0]
    x = np.sqrt(np.array(scales))[:, None]
    y = np.array(scales)[:, None]
    truth = 0.75
    pchip = fr.value_at(x, y, np.array([np.sqrt(truth)]), scales)[0]
    chord = 0.5 + (np.sqrt(truth) - np.sqrt(0.5)) / (1 - np.sqrt(0.5)) * 0.5
    assert abs(pchip - truth) < abs(chord - truth) / 2 and 0.5 < pchip < 1.0
    linear = np.array([[0.0], [0.4], [0.8]]), np.array([[0.0], [0.02], [0.04]])
    assert fr.value_at(*linear, np.array([0.6]))[0] == pytest.approx(0.03)
    assert np.isnan(fr.value_at(*linear, np.array([0.9]), clamp=False)[0])


def test_prompt_clustered_bootstrap_resamples_prompts_then_their_seeds() -> None:
    """Sets of one prompt move together: with seeds nested in prompts, a prompt's sets are drawn as a block
    (a prompt left out leaves all its seeds out), and the CI of a mean over strongly correlated seeds is wider
    than the one that treats them as independent."""
    prompts = np.repeat(np.arange(6), 2)
    w = fr.bootstrap_weights(12, P, 400, seed=1, prompts=prompts)
    per_prompt = w.sets[1:].reshape(400, 6, 2).sum(axis=2)
    assert (per_prompt % 2 == 0).all() and w.sets[1:].sum(axis=1).tolist() == [12] * 400
    values = np.repeat(np.random.default_rng(0).normal(0, 1, 6), 2)[:, None] * np.ones((12, P))
    clustered = fr.interval(fr.cell_mean(values, w)).se
    naive = fr.interval(fr.cell_mean(values, fr.bootstrap_weights(12, P, 400, seed=1))).se
    assert clustered > 1.2 * naive


def test_genuinely_better_adapter_passes_every_check() -> None:
    f = _world(secondary=(CHANCE + 0.5, 0.01))  # the primary's fidelity at half its drift
    d = gate.decide(f, RULES)
    assert d.status == "pass", [c.line() for c in d.checks]
    comp = f.comparisons["secondary"]
    assert comp.delta_drift is not None and comp.delta_drift.high < 0
    assert comp.rel_fidelity.low >= 0.95 and comp.drift_ratio.high < 1
    assert gate.verdict(f, d).startswith("Pareto-better than turning the primary down")


@pytest.mark.parametrize(
    "name, secondary, failing",
    [
        # an adapter whose weights are all zero is the base model: no drift, fidelity at chance
        ("all-zero adapter / base model", (CHANCE, 0.0), {"fidelity vs primary", "not dominated"}),
        # the primary turned down to half: less drift, proportionally less fidelity, on the primary's own curve
        ("primary turned down", (CHANCE + 0.25, 0.01), {"fidelity vs primary", "not dominated"}),
        # keeps the pose but drifts as much as the primary
        ("no better than the primary", (CHANCE + 0.5, 0.02), {"drift vs primary", "not dominated"}),
    ],
)
def test_trivial_answers_are_refused(name: str, secondary: tuple[float, float], failing: set[str]) -> None:
    f = _world(secondary=secondary)
    d = gate.decide(f, RULES)
    assert d.status == "fail", name
    failed = {c.name for c in d.checks if not c.passed}
    assert failing <= failed, (name, [c.line() for c in d.checks])
    assert not gate.verdict(f, d).startswith("Pareto-better"), name


def test_drift_ssim_metric_gates_on_the_one_minus_ssim_columns() -> None:
    # RMSE: the secondary drifts as much as the primary; 1-SSIM: half as much. promotion.metric decides.
    better_in_ssim = {"secondary": (CHANCE + 0.5, 0.02), "secondary_ssim": 0.02 * SSIM_UNIT / 2}
    f = _world(**better_in_ssim, metric="drift_ssim")
    arm = f.arms["secondary_s100"]
    assert arm.drift == arm.drift_ssim and arm.drift.value == pytest.approx(0.1, abs=0.01)  # the 1-SSIM column
    d = gate.decide(f, RULES)
    assert d.status == "pass", [c.line() for c in d.checks]
    comp = f.comparisons["secondary"]
    assert comp.drift_ratio.high < 1 and comp.delta_drift is not None and comp.delta_drift.high < 0
    assert gate.verdict(f, d).startswith("Pareto-better than turning the primary down")

    # the same adapters gated on RMSE: no less drift than the primary, refused
    on_rmse = _world(**better_in_ssim, metric="drift_rmse")
    assert on_rmse.arms["secondary_s100"].drift.value == pytest.approx(0.02, abs=0.002)
    d = gate.decide(on_rmse, RULES)
    assert d.status == "fail" and not next(c for c in d.checks if c.name == "drift vs primary").passed

    # an all-zero adapter (the base model: no drift in either column, fidelity at chance) is refused on 1-SSIM too
    zero = _world(secondary=(CHANCE, 0.0), secondary_ssim=0.0, metric="drift_ssim")
    assert zero.arms["secondary_s100"].drift.value == pytest.approx(0.0, abs=0.01)  # |noise| only
    d = gate.decide(zero, RULES)
    assert d.status == "fail"
    assert {"fidelity vs primary", "not dominated"} <= {c.name for c in d.checks if not c.passed}
    assert not gate.verdict(zero, d).startswith("Pareto-better")
    with pytest.raises(ValueError, match="drift metric"):
        fr.headline_drift("drift_lpips", np.zeros(1), np.zeros(1))


def test_primary_at_chance_means_not_evaluated() -> None:
    f = _world(secondary=(CHANCE, 0.0), primary_gain=0.0)
    d = gate.decide(f, RULES)
    assert d.status == "not_evaluated" and d.checks[0].name == "primary above chance"
    assert gate.verdict(f, d).startswith("Not evaluated")


def test_zero_drift_champion_does_not_lock_the_gate_but_a_valid_champion_is_a_reference() -> None:
    # a champion that ignores the pose (zero drift, fidelity at chance) fails the rules itself: no block
    f = _world(secondary=(CHANCE + 0.5, 0.01), champion=(CHANCE, 0.0))
    d = gate.decide(f, RULES)
    assert d.status == "pass", [c.line() for c in d.checks]
    assert any("does not block" in n for n in d.notes)
    # a valid champion with less drift than the candidate at the same fidelity: the candidate is refused
    f = _world(secondary=(CHANCE + 0.5, 0.01), champion=(CHANCE + 0.5, 0.005))
    d = gate.decide(f, RULES)
    assert d.status == "fail" and not next(c for c in d.checks if c.name == "drift vs champion").passed


def test_normalised_fidelity_is_zero_at_chance_and_one_at_the_ceiling() -> None:
    f = _world(secondary=(CHANCE + 0.5, 0.01))
    assert f.arms["base"].fidelity_norm.value == pytest.approx(0.0, abs=0.03)
    assert f.chance["oks"].value == pytest.approx(CHANCE, abs=0.01)
    assert f.ceiling["oks"].value == pytest.approx(CEILING)
    assert f.arms["primary_s100"].fidelity_norm.value == pytest.approx(0.5 / 0.7, abs=0.03)
    # a lower-is-better measure normalises the same way
    assert f.arms["primary_s100"].measures["keypoint_error"].value == pytest.approx(1 - 0.7, abs=0.01)


def test_power_shrinks_with_more_sets() -> None:
    small = _world(secondary=(CHANCE + 0.5, 0.01)).comparisons["secondary"]
    assert np.isfinite(small.mde_delta_drift) and np.isfinite(small.mde_rel_fidelity)
    assert fr.minimal_detectable(1.0) == pytest.approx(2.8016, abs=1e-3)


def _alternatives_world(candidate: str, seed: int = 0, masked: bool = False) -> fr.Frontier:
    """A primary whose drift is convex in its scale (as measured: slopes 0.039, 0.065, 0.091 above 0.5), a mask
    alternative that keeps the same pose with half the primary's drift, and a candidate:

    - ``masked``: an adapter that *is* the masked primary (the same images, so the same per-cell numbers);
    - ``placebo``: the primary itself at the off-grid scale 0.9;
    - ``better``: the mask's pose fidelity at 30% less drift than the mask;
    - ``beyond``: the drift of the mask at margin 0 (the same pairs) with more pose than the primary at scale 1,
      so no mask reaches its fidelity.

    ``masked``: the mask at margin 0 is drawn at the primary's scales 0.5 and 1.25 too (``masked_scales``).
    """
    rng = np.random.default_rng(seed)
    prompt_effect = rng.normal(0, 0.002, S)  # shared by every arm of a set: paired comparisons remove it

    def pairs(value: float) -> np.ndarray:
        d = np.abs(value + prompt_effect[:, None, None] + rng.normal(0, 0.0005, (S, P, P)))
        d = (d + d.transpose(0, 2, 1)) / 2
        d[:, np.arange(P), np.arange(P)] = np.nan
        return d

    def primary_drift(s: float) -> float:
        return 0.02 * s + 0.02 * s**2

    arms: list[tuple[str, float]] = [("base", 0.0)]
    drift, fidelity = {"base": pairs(0.0) * 0}, {"base": _cells(CHANCE, rng, 0.005)}
    for s in SCALES:
        arms.append(("primary", s))
        drift[fr.arm_key("primary", s)] = pairs(primary_drift(s))
        fidelity[fr.arm_key("primary", s)] = _cells(CHANCE + 0.5 * s, rng, 0.005)
    mask = {0.0: 0.6, 0.1: 0.8, 0.25: 0.95}  # fidelity reached, as a share of the primary's at scale 1
    for m, share in mask.items():
        arms.append(("mask", m))
        drift[fr.arm_key("mask", m)] = pairs(0.5 * primary_drift(share))
        fidelity[fr.arm_key("mask", m)] = _cells(CHANCE + 0.5 * share, rng, 0.005)
    if masked:  # the masked primary at other scales: the mask's share of drift, the scale's pose
        for sc, share in ((0.5, 0.35), (1.25, 1.1)):
            arms.append(("masked", sc))
            drift[fr.arm_key("masked", sc)] = pairs(0.5 * primary_drift(share))
            fidelity[fr.arm_key("masked", sc)] = _cells(CHANCE + 0.5 * share, rng, 0.005)
    key = "placebo_s90" if candidate == "placebo" else "secondary_s100"
    arms.append(("placebo", 0.9) if candidate == "placebo" else ("secondary", 1.0))
    if candidate == "masked":
        drift[key], fidelity[key] = drift["mask_m10"].copy(), {m: v.copy() for m, v in fidelity["mask_m10"].items()}
    elif candidate == "placebo":
        drift[key], fidelity[key] = pairs(primary_drift(0.9)), _cells(CHANCE + 0.5 * 0.9, rng, 0.005)
    elif candidate == "beyond":
        drift[key], fidelity[key] = drift["mask_m0"].copy(), _cells(CHANCE + 0.5 * 1.05, rng, 0.005)
    else:
        drift[key], fidelity[key] = pairs(0.7 * 0.5 * primary_drift(0.9)), _cells(CHANCE + 0.5 * 0.9, rng, 0.005)
    family = arms[-1][0]
    mismatched = {m: np.repeat(v[:, :, None], P, axis=2) for m, v in _cells(CHANCE, rng, 0.005).items()}
    real = {"oks": np.full(P, CEILING), "keypoint_error": np.full(P, 1 - CEILING)}
    return fr.summarise(
        drift=drift, drift_ssim=drift, fidelity=fidelity, mismatched=mismatched, real=real, arms=arms,
        measure="oks", compare=[(family, "primary"), (family, fr.ENVELOPE)], n_boot=300, seed=seed,
        prompts=np.arange(S) // 2,
    )  # fmt: skip


def test_placebo_primary_off_the_grid_is_not_distinguishable_from_its_own_curve() -> None:
    """The false-positive check of the matched-fidelity test: the primary at scale 0.9, between grid points of a
    convex curve, must not beat its own scale curve (a straight line between 0.75 and 1 would put it below)."""
    f = _alternatives_world("placebo")
    d = f.comparisons["placebo"].delta_drift
    assert d is not None and d.low <= 0 <= d.high, d
    assert f.comparisons[f"placebo_vs_{fr.ENVELOPE}"].delta_drift.low > 0  # the mask keeps the scene better
    lenient = gate.GateRules(fidelity_floor=0.5, drift_margin=0.0, min_primary_fidelity=0.1)
    assert gate.decide(f, lenient, candidate="placebo").status == "fail"  # the placebo is never promoted


def test_the_report_reads_the_placebo_against_its_own_curve_and_only_warns_if_it_beats_the_alternatives() -> None:
    """The placebo is the primary: worse than the mask is right; only a difference from its own scale curve, or a
    win over the alternatives, is a false positive (the full-power run had +0.0265 [+0.0124, +0.0418] against the
    alternatives and the report called that a bias)."""
    from posescene.evaluation.report import placebo_sentence

    f = _alternatives_world("placebo")
    own, against_all = f.comparisons["placebo"], f.comparisons[f"placebo_vs_{fr.ENVELOPE}"]
    assert against_all.delta_drift.low > 0  # significantly worse than the mask
    text = placebo_sentence(own, against_all, 0.9)
    assert "not distinguishable, as it must be" in text and "not better, as it must be" in text
    assert "biased" not in text
    win = fr.Interval(-0.02, -0.03, -0.01, 0.005)
    better = fr.Comparison("placebo", fr.ENVELOPE, own.rel_fidelity, own.drift_ratio, win, None, 0.0, 0.0)
    assert "better than them: the envelope is biased" in placebo_sentence(own, better, 0.9)
    assert placebo_sentence(None, None, None) == ""


def test_an_adapter_equal_to_the_masked_primary_is_not_better_than_the_alternatives() -> None:
    """Against the scale knob alone the masked primary looks Pareto-better; against the alternatives a user has
    (the envelope includes the mask), it is not, and the gate refuses it."""
    f = _alternatives_world("masked")
    assert f.comparisons["secondary"].delta_drift.high < 0  # it beats turning the primary down ...
    envelope = f.comparisons[f"secondary_vs_{fr.ENVELOPE}"]
    assert envelope.best_alternative == "mask"
    assert abs(envelope.delta_drift.value) < 1e-6 and envelope.delta_drift.high >= 0  # ... but not the mask
    rules = gate.GateRules(fidelity_floor=0.7, drift_margin=0.0, min_primary_fidelity=0.1)
    decision = gate.decide(f, rules)
    failed = [c.name for c in decision.checks if not c.passed]
    assert decision.status == "fail" and failed == ["not dominated by the alternatives"], decision.checks
    assert "best training-free alternative (the primary masked to the person)" in gate.verdict(f, decision)


def test_better_than_every_alternative_passes_and_the_gate_states_its_power() -> None:
    f = _alternatives_world("better")
    envelope = f.comparisons[f"secondary_vs_{fr.ENVELOPE}"]
    assert envelope.delta_drift.high < 0 and envelope.best_alternative == "mask"
    rules = gate.GateRules(fidelity_floor=0.8, drift_margin=0.0, min_primary_fidelity=0.1)
    assert gate.decide(f, rules).status == "pass"
    assert gate.verdict(f, gate.decide(f, rules)).startswith("Pareto-better than the best training-free")
    power = gate.gate_power(f, rules)
    assert 0.0 <= power <= 1.0 and power > 0.8
    # a floor at the candidate's own fidelity is a coin flip, at most
    assert gate.gate_power(f, gate.GateRules(1.0, 0.0, 0.1)) < 0.5


def test_head_to_head_shows_the_nearest_arm_that_the_matched_comparison_drops() -> None:
    """A candidate with the mask's drift and more pose than any mask draws: at its fidelity only the scale curve
    is left, so the matched comparison reports a large Δdrift against the primary turned up; the head-to-head
    against the mask as drawn says what a user gains over it: the same drift, more pose (issue 25's full-power
    run had exactly this shape)."""
    f = _alternatives_world("beyond")
    envelope = f.comparisons[f"secondary_vs_{fr.ENVELOPE}"]
    assert envelope.best_alternative == "primary" and envelope.delta_drift.high < 0
    h = f.head_to_head["secondary_s100_vs_mask_m0"]
    assert h.delta_drift.value == 0 and h.delta_drift.low == 0 == h.delta_drift.high  # the very same pairs
    assert h.delta_fidelity.low > 0
    assert h.sentence() == "drift the same (CI across 0), pose fidelity more"
    arms = ("mask_m0", "mask_m10", "mask_m25", "primary_s100")
    assert set(f.head_to_head) == {f"secondary_s100_vs_{k}" for k in arms}
    # the trivial answer: an adapter that is the masked primary is the same as that arm on both axes
    same = _alternatives_world("masked").head_to_head["secondary_s100_vs_mask_m10"]
    assert same.delta_drift.value == 0 == same.delta_fidelity.value
    assert same.sentence() == "drift the same (CI across 0), pose fidelity the same (CI across 0)"


def test_the_masked_primary_at_other_scales_reaches_past_the_mask_and_becomes_the_reference() -> None:
    """With the mask also swept over the primary's scale, a curve of the mask reaches the candidate's fidelity,
    so the matched comparison is against the mask turned up, not against the unmasked primary turned up."""
    assert fr.family_curve("masked", [("base", 0), ("mask", 0.0), ("mask", 0.1), ("masked", 1.25), ("masked", 0.5)])
    assert fr.family_curve("masked", [("base", 0), ("mask", 0.0), ("masked", 1.25)]) == (
        ["base", "mask_m0", "masked_s125"],
        [0.0, 1.0, 1.25],
    )
    assert fr.family_curve("masked", [("base", 0), ("masked", 1.25)]) == ([], [])  # no mask arm: no curve
    scale_only = _alternatives_world("beyond").comparisons[f"secondary_vs_{fr.ENVELOPE}"]
    both_knobs = _alternatives_world("beyond", masked=True).comparisons[f"secondary_vs_{fr.ENVELOPE}"]
    assert scale_only.best_alternative == "primary" and both_knobs.best_alternative == "masked"
    assert scale_only.delta_drift.value < both_knobs.delta_drift.value < 0  # a smaller, truer advantage
    f = _alternatives_world("beyond", masked=True)
    assert {"secondary_s100_vs_masked_s50", "secondary_s100_vs_masked_s125"} <= set(f.head_to_head)
    # the trivial answer: an adapter that is the masked primary is no better than the alternatives
    same = _alternatives_world("masked", masked=True).comparisons[f"secondary_vs_{fr.ENVELOPE}"]
    assert same.delta_drift.high >= 0


def test_restat_redecides_a_finished_run_from_its_csvs(tmp_path) -> None:
    """A finished evaluation's CSVs re-decided with the current statistics: an adapter that *is* the primary at
    scale 0.75 (the same per-cell numbers) is not distinguishable from the primary's own curve; arm keys with
    underscores in the adapter's name parse; a missing file is named."""
    import csv
    import json

    from posescene.errors import InputDataError
    from posescene.evaluation.restat import parse_arm_key, restat

    assert parse_arm_key("fixed-distill-18_8_s100") == ("fixed-distill-18_8", 1.0)
    assert parse_arm_key("base") == ("base", 0.0)
    rng = np.random.default_rng(0)
    n_sets, n_poses = 8, 4
    values = {"base": (0.0, CHANCE)} | {f"primary_s{round(s * 100)}": (0.02 * s + 0.01 * s * s, CHANCE + 0.5 * s)
                                          for s in SCALES}  # fmt: skip
    values["copy_s100"] = values["primary_s75"]
    noise = rng.normal(0, 0.001, (n_sets, n_poses))
    with open(tmp_path / "fidelity.csv", "w", newline="") as f, open(tmp_path / "drift.csv", "w", newline="") as g:
        fw, gw = csv.writer(f), csv.writer(g)
        fw.writerow(["arm", "set", "pose", "oks"])
        gw.writerow(["arm", "set", "pose_i", "pose_j", "rmse"])
        for arm, (d, fid) in values.items():
            for s in range(n_sets):
                for p in range(n_poses):
                    fw.writerow([arm, s, p, fid + noise[s, p]])
                    for q in range(p + 1, n_poses):
                        gw.writerow([arm, s, p, q, d * (1 + noise[s, p] + noise[s, q]) if d else 0.0])
    (tmp_path / "metrics.json").write_text(json.dumps({"fidelity": {"measure": "oks", "chance": CHANCE,
                                                                     "ceiling": CEILING}}))  # fmt: skip
    out = restat(tmp_path, seeds_per_prompt=2, n_boot=200, seed=0)
    copy = out["comparisons"]["copy"]
    assert copy["verdict"] == "not distinguishable" and abs(copy["delta_drift_matched"][0]) < 1e-4
    assert out["n_prompts"] == 4 and (tmp_path / "restat.json").is_file()
    (tmp_path / "drift.csv").write_text("arm,set\n")  # not an evaluation's CSV
    with pytest.raises(InputDataError, match=r"drift.csv: no column\(s\) \['pose_i'"):
        restat(tmp_path, seeds_per_prompt=2, n_boot=20, seed=0)
    (tmp_path / "drift.csv").unlink()
    with pytest.raises(InputDataError, match="drift.csv"):
        restat(tmp_path, seeds_per_prompt=2, n_boot=20, seed=0)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(InputDataError, match="metrics.json"):
        restat(tmp_path, seeds_per_prompt=2, n_boot=20, seed=0)
