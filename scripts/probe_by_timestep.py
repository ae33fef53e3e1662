"""Where the training probe and the images disagree: the effective-primary-scale probe, split by noise level.

The training summary compares S-Ad with the primary turned down on a fixed probe batch: pose fidelity = 1 - the
pose-loss fraction, drift = the scene mean of (eps(B_0) - eps(A_0))^2, at timesteps spread evenly over 0..T-1,
conditional only. For `text-correct` on the coupled world it says "only a turned-down primary" (drift +28% at the
matched scale 0.74) while the evaluation's images say the opposite (drift ratio 0.53 at 99% of the pose). This
script recomputes the same probe on more rows and reports it per timestep band, conditional and guided (CFG at
evaluate.guidance_scale, features on both halves, as the sampler draws), to see which part of the probe carries
the disagreement. Beside them, the primary masked to the people's region (the evaluation's `mask` arm, on the
probe) and, per feature level, the trained model's feature energy inside and outside B's person box as a share of
the primary's: is the correction a learned mask (inside kept, outside removed) or a turn-down (both shrunk)?

    .venv/bin/python scripts/probe_by_timestep.py [--rows 128] [--bands 4] [--out reports/...json]

Reads the trained S-Ad in train.out_dir and the data stages' outputs of the current workspace (run the pipeline
first). Deterministic for a seed; about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from posescene.config import load_params
from posescene.data.cache import load_cache
from posescene.devices import reproducible_math
from posescene.models import load_adapter
from posescene.training import objective
from posescene.training import train as tr
from posescene.training.objective import effective_scale


def band_rows(t: torch.Tensor, bands: int, steps: int) -> list[tuple[str, torch.Tensor]]:
    edges = [round(i * steps / bands) for i in range(bands + 1)]
    return [(f"t in [{lo}, {hi})", ((t >= lo) & (t < hi)).nonzero().flatten()) for lo, hi in itertools.pairwise(edges)]


def measure_band(
    probe: dict[str, torch.Tensor],
    rows: torch.Tensor,
    eps: dict[str, dict[str, torch.Tensor]],
    scales: list[float],
    margin: float,
) -> dict:
    """The effective-scale comparison on ``rows`` of the probe; ``eps[arm][map]`` for every arm (``none`` is the
    U-Net without adapter, ``primary@1.0`` the teacher of the pose-loss fraction)."""
    n = len(probe["t"])
    sub = {k: v[rows] for k, v in probe.items() if isinstance(v, torch.Tensor) and len(v) == n}
    teacher, without = eps["primary@1.0"]["map_b"][rows], eps["none"]["map_b"][rows]
    no_pose = tr.probe_balance_loss("distill", sub, without, teacher)

    def fidelity(arm: str) -> float:
        lost = tr.probe_balance_loss("distill", sub, eps[arm]["map_b"][rows], teacher)
        return 1.0 - objective.pose_loss_fraction(lost, no_pose)

    def drift(arm: str) -> float:
        return tr.scene_drift(sub, eps[arm]["map_b"][rows], eps[arm]["map_a"][rows])

    arms = ["none"] + [f"primary@{s}" for s in scales]
    fid = [0.0] + [fidelity(a) for a in arms[1:]]
    dr = [drift(a) for a in arms]
    found = effective_scale([0.0, *scales], fid, dr, fidelity("s_ad"), drift("s_ad"), margin)
    # the same reading of the mask: in the images it lies far below the scale curve; does the one-step probe see it?
    masked = effective_scale([0.0, *scales], fid, dr, fidelity("masked@1.0"), drift("masked@1.0"), margin)
    return {
        "rows": len(rows),
        "primary_fidelity": dict(zip(map(str, [0.0, *scales]), fid, strict=True)),
        "primary_drift": dict(zip(map(str, [0.0, *scales]), dr, strict=True)),
        "masked_fidelity": fidelity("masked@1.0"),
        "masked_drift": drift("masked@1.0"),
        "masked_effective_scale": masked.scale,
        "masked_drift_gap": masked.drift_gap,
        "s_ad_fidelity": fidelity("s_ad"),
        "s_ad_drift": drift("s_ad"),
        "effective_scale": found.scale,
        "drift_gap": found.drift_gap,
        "sentence": found.sentence(),
    }


def at_level(region: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """(N, 1, l, l) region at a feature level's size, as the sampler's mask injection resizes it (``area``)."""
    return torch.nn.functional.interpolate(region, size=feature.shape[-2:], mode="area")


def feature_regions(primary: list[torch.Tensor], model: list[torch.Tensor], region: torch.Tensor) -> dict:
    """Per feature level, the trained model's feature energy inside and outside B's person box as a share of the
    primary's there. A learned mask keeps ~1 inside and ~0 outside; the primary turned down to c has c^2 in both."""
    out = {}
    for level, (p, m) in enumerate(zip(primary, model, strict=True)):
        inside = at_level(region, p)
        share = {}
        for name, w in (("inside", inside), ("outside", 1.0 - inside)):
            share[name] = float((m.pow(2) * w).sum() / (p.pow(2) * w).sum().clamp_min(1e-12))
        out[f"level {level} ({p.shape[-1]}x{p.shape[-2]})"] = share
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rows", type=int, default=128, help="probe rows (timesteps stratified over 0..T-1)")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--other-captions", action="store_true",
                    help="each row reads another row's caption (fixed permutation): mostly a scene kind its poses "
                    "are not typical of, as in the evaluation's atypical sets (the coupled world's training rows: "
                    "never)")
    ap.add_argument("--out", default=None, help="JSON output (default: print only)")
    args = ap.parse_args()
    # guided_diff only makes the data carry tau("") for the guided probe; nothing is trained here
    params = load_params(args.params, {"train.probe_size": args.rows, "train.guided_diff": True})
    tp = params.train
    with reproducible_math(tp.threads):
        accelerator = tr.make_accelerator(tp)
        device = accelerator.device
        base, primary, _, dtype = tr.load_models(params, device)
        trained = load_adapter(str(Path(tp.out_dir) / "secondary_adapter")).to(device).eval()
        pairs = tr.read_pair_rows(params.pairs.out)
        cache = load_cache(params.cache.out_dir, params.model.base, params.model.resolution)
        data = tr.load_train_set(params, pairs, cache, tr.person_boxes(params.poses.out_dir))
        data = tr.with_training_text(data, base, tp)
        probe = tr.make_probe(data, params, device, base.noise_scheduler)
        ctx = tr.StepContext(params, accelerator, base, primary, trained, None, None, None, dtype)  # type: ignore[arg-type]
        unet, empty = base.unet, data.text[data.empty_text : data.empty_text + 1].to(device)
        maps = {k: tr.prepare_adapter_input(probe[k], params.model.adapter_in_channels, params.model.adapter_invert)
                for k in ("map_a", "map_b")}  # fmt: skip
        if args.other_captions:
            perm = torch.roll(torch.arange(len(probe["t"])), shifts=len(probe["t"]) // 2 + 1)
            probe["text"] = probe["text"][perm]
        x_t, t, text = probe["x_t"], probe["t"], probe["text"]

        def eps_of(features_of, guided: bool) -> dict[str, torch.Tensor]:
            out = {}
            for k, cond in maps.items():
                features = features_of(cond)
                if guided:
                    out[k] = tr.predict_eps(unet, x_t, t, text, features, empty, params.evaluate.guidance_scale)[1]
                else:
                    out[k] = tr.predict_eps(unet, x_t, t, text, features)[0]
            return out

        scales = sorted({*tp.effective_scales, 1.0})
        arms = {f"primary@{s}": (lambda c, s=s: [f * s for f in primary(c)]) for s in scales}
        arms["none"] = lambda c: None
        arms["s_ad"] = lambda c: tr.model_features(ctx, c, trained)
        # the region mask, as the evaluation's `mask` arm draws it, on the probe: P-Ad's features times the people's
        # region (here both people's boxes grown by train.mask_margin, the scene mask's complement), area-resized
        arms["masked@1.0"] = lambda c: [f * at_level(probe["mask"], f) for f in primary(c)]
        report: dict[str, dict] = {"features on B_0": feature_regions(primary(maps["map_b"]),
                                                                      tr.model_features(ctx, maps["map_b"], trained),
                                                                      probe["mask_b"])}  # fmt: skip
        print(json.dumps(report["features on B_0"], indent=1))
        for guided in (False, True):
            mode = "guided" if guided else "conditional"
            eps = {name: eps_of(fn, guided) for name, fn in arms.items()}
            for label, rows in [("all", torch.arange(len(t))), *band_rows(t, args.bands, len(base.noise_scheduler))]:
                found = report[f"{mode} | {label}"] = measure_band(probe, rows, eps, scales, tp.turned_down_margin)
                print(f"{mode:>11} {label:<18} S-Ad fidelity {found['s_ad_fidelity']:.3f} "
                      f"drift {found['s_ad_drift']:.2e} (masked primary {found['masked_fidelity']:.3f}, "
                      f"{found['masked_drift']:.2e}, drift {found['masked_drift_gap']:+.0%} against the primary at "
                      f"{found['masked_effective_scale']:.2f}) | {found['sentence']}")  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
