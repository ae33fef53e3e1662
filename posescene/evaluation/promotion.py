"""The promotion gate: pure checks on confidence bounds (reviewable and testable with numbers alone), then the
registry actions.

The candidate (the secondary adapter at scale 1) is promoted to ``champion`` only if every check passes on the
*pessimistic* end of its confidence interval:

(d) the primary adapter's own fidelity is clearly above chance (lower bound of its normalised fidelity above
    ``min_primary_fidelity``); otherwise fidelity cannot tell a pose-keeping adapter from one that ignores the
    pose, the status is ``not_evaluated`` and no alias moves;
(a) fidelity floor: (F_S - chance) / (F_P - chance) >= ``fidelity_floor`` (lower bound);
(b) drift: drift_S / drift_P <= 1 - ``drift_margin`` (upper bound);
(c) not dominated by turning the primary down: Δdrift at matched fidelity < 0 (upper bound);
(e) not dominated by the best training-free alternative (the lower envelope of the primary's scale, mask and steps
    curves, when the run drew them): Δdrift at matched fidelity < 0 (upper bound).

(a) is a non-inferiority check: ``fidelity_floor`` is the margin of pose a candidate may give up. Its power (the
chance that a candidate keeping all of the primary's pose with 30% less drift than the envelope passes every
check) is computed from the run's own standard errors by :func:`gate_power` and stated in the report.

The current champion (re-evaluated in the same run, same sets and poses) is a reference only while it passes
(a), (b) against the primary itself; then the candidate must pass (a) and (b) against it too. A champion that
no longer passes (e.g. a zero-drift adapter that ignores the pose) does not block a better candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import norm

from posescene.evaluation.frontier import CONFIDENCE, ENVELOPE, Comparison, Frontier, Interval

# how the report names the training-free curve that is lowest at the candidate's fidelity
ALTERNATIVE_LABELS = {
    "primary": "the primary's scale knob",
    "mask": "the primary masked to the person",
    "masked": "the primary masked to the person, at another scale",
    "steps": "the primary in the first steps only",
}
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
TAG_PREFIX = "eval."


@dataclass(frozen=True)
class GateRules:
    fidelity_floor: float
    drift_margin: float
    min_primary_fidelity: float


@dataclass(frozen=True)
class Check:
    """One line of the gate: what was compared, the bound used, the limit, pass or fail."""

    name: str
    passed: bool
    bound: float
    limit: float
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.text}"


@dataclass
class Decision:
    """The gate's outcome: ``pass`` | ``fail`` | ``not_evaluated``, with every check."""

    status: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _fmt(i: Interval, digits: int = 3) -> str:
    return f"{i.value:.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]"


def _finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def fidelity_check(c: Comparison, rules: GateRules, label: str) -> Check:
    lo = c.rel_fidelity.low
    ok = _finite(lo) and lo >= rules.fidelity_floor
    text = (
        f"above-chance fidelity relative to the {label} {_fmt(c.rel_fidelity)} (95% CI); lower bound must be "
        f">= {rules.fidelity_floor:g}"
    )
    return Check(f"fidelity vs {label}", ok, lo, rules.fidelity_floor, text)


def drift_check(c: Comparison, rules: GateRules, label: str) -> Check:
    hi, limit = c.drift_ratio.high, 1.0 - rules.drift_margin
    ok = _finite(hi) and hi <= limit
    text = f"drift ratio to the {label} {_fmt(c.drift_ratio)}; upper bound must be <= {limit:g}"
    return Check(f"drift vs {label}", ok, hi, limit, text)


def frontier_check(c: Comparison) -> Check:
    d = c.delta_drift
    envelope = c.reference == ENVELOPE
    name = "not dominated by the alternatives" if envelope else "not dominated"
    what = (
        f"the best training-free alternative ({ALTERNATIVE_LABELS.get(c.best_alternative or '', c.best_alternative)})"
        " at the same fidelity"
        if envelope
        else "the primary turned down to the same fidelity"
    )
    if d is None or not _finite(d.value, d.high):
        return Check(
            name, False, math.nan, 0.0,
            "Δdrift at matched fidelity could not be measured (the candidate's fidelity lies outside the "
            "reference's sweep, or too few bootstrap replicates reached it); without it the candidate is not shown "
            f"to beat {what}",
        )  # fmt: skip
    ok = d.high < 0
    text = f"Δdrift vs {what} {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]; upper bound must be < 0"
    return Check(name, ok, d.high, 0.0, text)


def gate_power(frontier: Frontier, rules: GateRules, candidate: str = "secondary", effect: float = 0.3) -> float:
    """P(every check passes) for a candidate that keeps *all* of the primary's above-chance fidelity and drifts
    ``effect`` less than the reference curve(s) at the same fidelity, with this run's standard errors (normal
    approximation; the checks treated as independent, so it is a slight underestimate). NaN without a candidate.
    """
    z = norm.ppf(1 - (1 - CONFIDENCE) / 2)
    comp = frontier.comparisons.get(f"{candidate}_vs_{ENVELOPE}") or frontier.comparisons.get(candidate)
    if comp is None or comp.delta_drift is None:
        return float("nan")
    se_rel, se_delta, se_ratio = comp.rel_fidelity.se, comp.delta_drift.se, comp.drift_ratio.se
    drift = comp.reference_drift
    if not _finite(se_rel, se_delta, se_ratio, drift) or min(se_rel, se_delta, se_ratio) <= 0:
        return float("nan")
    fid = norm.cdf((1.0 - rules.fidelity_floor) / se_rel - z)
    delta = norm.cdf(effect * drift / se_delta - z)
    ratio = norm.cdf(((1.0 - rules.drift_margin) - (1.0 - effect)) / se_ratio - z)
    return float(fid * delta * ratio)


def decide(
    frontier: Frontier, rules: GateRules, candidate: str = "secondary", champion: str | None = "champion"
) -> Decision:
    """The gate on numbers alone (no registry): see the module docstring."""
    p = frontier.primary_norm
    if not (_finite(p.low) and p.low > rules.min_primary_fidelity):
        return Decision(
            "not_evaluated",
            [Check(
                "primary above chance", False, p.low, rules.min_primary_fidelity,
                f"the primary adapter's normalised fidelity is {_fmt(p)} (0 = chance, 1 = the judge on real images); "
                f"its lower bound must exceed {rules.min_primary_fidelity:g}, else fidelity cannot tell pose-keeping "
                "from pose-ignoring",
            )],
        )  # fmt: skip
    checks = [
        Check(
            "primary above chance", True, p.low, rules.min_primary_fidelity,
            f"the primary adapter's normalised fidelity {_fmt(p)}; lower bound > {rules.min_primary_fidelity:g}",
        )
    ]  # fmt: skip
    comp = frontier.comparisons.get(candidate)
    if comp is None:
        return Decision("not_evaluated", checks, [f"no {candidate} adapter at scale 1 was evaluated"])
    checks += [fidelity_check(comp, rules, "primary"), drift_check(comp, rules, "primary"), frontier_check(comp)]
    against_all = frontier.comparisons.get(f"{candidate}_vs_{ENVELOPE}")
    if against_all is not None:
        checks.append(frontier_check(against_all))
    notes: list[str] = []
    champ = frontier.comparisons.get(champion) if champion else None
    versus = frontier.comparisons.get(f"{candidate}_vs_{champion}") if champion else None
    if champ is not None and versus is not None:
        champ_ok = fidelity_check(champ, rules, "primary").passed and drift_check(champ, rules, "primary").passed
        if champ_ok:
            checks += [fidelity_check(versus, rules, "champion"), drift_check(versus, rules, "champion")]
        else:
            notes.append(
                "the current champion no longer passes the fidelity and drift checks against the primary "
                f"(relative fidelity {_fmt(champ.rel_fidelity)}, drift ratio {_fmt(champ.drift_ratio)}), so it "
                "does not block the candidate"
            )
    return Decision("pass" if all(c.passed for c in checks) else "fail", checks, notes)


def _versus(d: Interval, what: str) -> str:
    where = f"Δdrift {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}] at matched fidelity"
    if d.high < 0:
        return f"Pareto-better than {what}: {where}."
    if d.low > 0:
        return f"Worse than {what}: {where}."
    return f"Not distinguishable from {what}: {where}."


def verdict(frontier: Frontier, decision: Decision, candidate: str = "secondary") -> str:
    """The report's first line: the candidate against the best training-free alternative (when the run drew
    them), then against turning the primary down, in words."""
    if decision.status == "not_evaluated" and decision.checks and decision.checks[0].name == "primary above chance":
        return (
            "Not evaluated: the primary adapter's pose fidelity is not clearly above chance "
            f"({_fmt(frontier.primary_norm)} normalised), so this world cannot tell scene-stable pose conditioning "
            "from weaker pose conditioning."
        )
    comp = frontier.comparisons.get(candidate)
    if comp is None or comp.delta_drift is None or not _finite(comp.delta_drift.value, comp.delta_drift.high):
        return (
            "Not comparable: the secondary adapter's fidelity lies outside what turning the primary down reaches, "
            "so no matched-fidelity comparison exists."
        )
    scale = _versus(comp.delta_drift, "turning the primary down")
    envelope = frontier.comparisons.get(f"{candidate}_vs_{ENVELOPE}")
    if envelope is None or envelope.delta_drift is None or not _finite(envelope.delta_drift.value):
        return scale
    label = ALTERNATIVE_LABELS.get(envelope.best_alternative or "", envelope.best_alternative)
    best = _versus(envelope.delta_drift, f"the best training-free alternative ({label})")
    return f"{best} Against the scale knob alone: {scale}"


# --------------------------------------------------------------------------------------------------
# registry


@dataclass
class Promotion:
    """What the gate did in the registry: ``promoted`` | ``rejected`` | ``not_evaluated`` | ``no_candidate``."""

    status: str
    lines: list[str]
    candidate_version: str | None = None
    candidate_run_id: str | None = None
    champion_before: str | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def registry_candidate(client: Any, name: str) -> tuple[Any | None, Any | None]:
    """The versions aliased ``candidate`` and ``champion`` (None where the alias does not exist)."""
    from posescene.tracking import version_by_alias

    return version_by_alias(client, name, CANDIDATE_ALIAS), version_by_alias(client, name, CHAMPION_ALIAS)


def apply(
    client: Any,
    name: str,
    decision: Decision,
    *,
    candidate: Any | None,
    champion: Any | None,
    trained_run_id: str | None,
    tags: dict[str, str],
    description: str,
) -> Promotion:
    """Tag the candidate version with the evaluation, describe it, and move ``champion`` if the gate passed."""
    if candidate is None:
        return Promotion(
            "no_candidate",
            [f"the registry has no version of {name!r} aliased {CANDIDATE_ALIAS!r} (was training run without "
             "MLflow?); no alias changed"],
        )  # fmt: skip
    version = str(candidate.version)
    champion_before = None if champion is None else str(champion.version)
    lines = [c.line() for c in decision.checks] + [f"note: {n}" for n in decision.notes]
    status = {"pass": "promoted", "fail": "rejected", "not_evaluated": "not_evaluated"}[decision.status]
    if trained_run_id and candidate.run_id and trained_run_id != candidate.run_id:
        status = "rejected"
        lines.append(
            f"FAIL identity: the candidate v{version} comes from run {candidate.run_id}, but the adapter evaluated "
            f"here was trained in run {trained_run_id}"
        )
    for key, value in {**tags, "decision": status}.items():
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}{key}", value)
    client.update_model_version(name, version, description=description)
    if status == "promoted":
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return Promotion(status, lines, version, candidate.run_id, champion_before)
