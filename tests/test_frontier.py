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
    assert fr.value_at(x, y, np.array([0.9]))[0] == pytest.approx(0.018)  # first crossing, not the dip
    # beyond the range: the nearest end (the most faithful point), never an extrapolation
    assert fr.value_at(x, y, np.array([1.5]))[0] == pytest.approx(0.02)
    assert fr.value_at(x, y, np.array([-0.5]))[0] == pytest.approx(0.0)


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
