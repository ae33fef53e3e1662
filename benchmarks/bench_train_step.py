"""One optimizer step: the plain T2I-Adapter step, its floor, and our two-branch step, side by side.

Same frozen U-Net, same adapter weights, same batch. Variants (each a full optimizer step - forward,
backward, clip, AdamW - unless said otherwise):

- ``plain``: diffusers' ``examples/t2i_adapter`` step: adapter(map) -> unet(down_intrablock_additional_residuals)
  -> MSE to the noise;
- ``nograd_forward``: one no-grad P-Ad + U-Net forward alone (not a step; what each extra branch costs);
- ``floor_1`` / ``floor_2``: the plain step plus one / two such no-grad forwards, run as one variant: the
  least a two-branch step can cost. It must produce eps_S with gradient (= the plain step's work) and, beside
  it, eps_P(A_0) under no_grad (``whole``, ``person``: 1 extra forward); ``distill`` also needs the teacher
  eps_P(B_0) under no_grad (2 extra forwards). Nothing else in the method needs a U-Net call;
- ``two_branch_<reading>``: ours, as posescene.training.train.forward_losses/train_step compute it
  (``predict_two_branches``, ``predict_teacher`` for distill, ``objective.branch_losses``, the scale balance,
  J, backward, clip, AdamW);
- ``two_branch_distill_teacher_first``: the distill step with its teacher forward run before the gradient
  forward instead of after it (same values; a proposed change to posescene.training.train.forward_losses, measured);
- ``two_branch_batched`` (``--batched``): the alternative we did not choose for ``whole``: eps_P and eps_S
  from one U-Net call on a doubled batch (autograd then keeps and backpropagates the P half too).

Why the floor is what it is: with the U-Net frozen, the plain step's backward computes input gradients
only (no weight gradients), about one more forward's work, so the plain step is about 2 forwards and the
floor is about 3/2 = 1.5x plain (``whole``) or 4/2 = 2x (``distill``). With gradient checkpointing the
backward recomputes the U-Net's forward (plain about 3 forwards), so the floor is about 4/3 = 1.33x (``whole``)
or 5/3 = 1.67x (``distill``). The target is two_branch <= 1.05x its floor, with checkpointing off and on
(``--gradient-checkpointing both``, the default, runs both in one process, interleaved).

The variants run interleaved (so load from other processes hits all of them alike; the order alternates)
after a warm-up, and the median of the repeats is reported. When a two-branch step is above its floor by
more than 5%, a torch-profiler table of both (top ops by self CPU time) is written beside the numbers.

    python benchmarks/bench_train_step.py --size tiny|world|sd15 [--device cpu|cuda] [--batch 8] [--repeats 15]
        [--gradient-checkpointing off|on|both] [--readings whole distill] [--batched] [--profile]

``sd15`` is a Stable-Diffusion-1.5-sized U-Net and adapter built from their configs with random weights
(timing only; needs a GPU to be practical: benchmarks/bench_gpu.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import T2IAdapter, UNet2DConditionModel

from posescene.io import write_json_atomic
from posescene.training import objective
from posescene.training.train import predict_teacher, predict_two_branches
from posescene.world.architectures import tiny_architecture, training_scheduler, world_architecture


def sd15_configs() -> tuple[dict[str, Any], dict[str, Any], int, int, int]:
    """SD-1.5's U-Net config and the TencentARC SD-1.x T2I-Adapter config; 512 px, 77 x 768 text."""
    unet = dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=[320, 640, 1280, 1280],
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    adapter = dict(
        in_channels=3,
        channels=[320, 640, 1280, 1280],
        num_res_blocks=2,
        downscale_factor=8,
        adapter_type="full_adapter",
    )
    return unet, adapter, 512, 77, 8


def build(size: str) -> tuple[UNet2DConditionModel, T2IAdapter, int, int, int]:
    """(unet, adapter, resolution, text length, vae factor) with random weights of the chosen size."""
    torch.manual_seed(0)
    if size == "sd15":
        unet_cfg, adapter_cfg, res, tokens, factor = sd15_configs()
    else:
        arch = tiny_architecture() if size == "tiny" else world_architecture()
        unet_cfg, adapter_cfg, res, tokens, factor = arch.unet, arch.adapter, arch.resolution, 32, 4
    return UNet2DConditionModel(**unet_cfg), T2IAdapter(**adapter_cfg), res, tokens, factor


FLOOR_TARGET = 1.05  # issue 14: the two-branch step within 5% of its floor
EXTRA_FORWARDS: dict[str, int] = {r: 2 if objective.needs_teacher(r) else 1 for r in objective.READINGS}


def floor_explanation() -> str:
    return (
        "floor_k = the plain diffusers T2I-Adapter step + k no-grad P-Ad + U-Net forwards, measured as one variant. "
        "A two-branch step must compute eps_S with gradient (the plain step's work) and eps_P(A_0) under no_grad "
        "(k=1: whole, person); distill also needs the teacher eps_P(B_0) under no_grad (k=2). The U-Net is frozen, "
        "so the plain step's backward is input gradients only, ~1 forward: plain ~2 forwards, floor_1 ~1.5x plain, "
        "floor_2 ~2x plain. With gradient checkpointing the backward recomputes the forward: plain ~3 forwards, "
        "floor_1 ~1.33x, floor_2 ~1.67x."
    )


class Steps:
    """The step functions over shared frozen models; each step variant owns its trainable adapter copy."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        primary: T2IAdapter,
        batch: dict[str, torch.Tensor],
        trainable: tuple[str, ...] = (
            "plain",
            "floor_1",
            "floor_2",
            "whole",
            "person",
            "distill",
            "distill_teacher_first",
            "batched",
        ),
    ) -> None:
        self.unet, self.primary, self.batch = unet, primary, batch
        self.scheduler = training_scheduler()
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(batch["x0"].device)
        self.adapters: dict[str, T2IAdapter] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for name in trainable:
            adapter = copy.deepcopy(primary).requires_grad_(True).train()
            self.adapters[name] = adapter
            self.optimizers[name] = torch.optim.AdamW(adapter.parameters(), lr=1e-5)
        # distill: a fixed L_bal scale (train() sets it from the pose effect; any positive value times the same)
        self.balances = {r: objective.ScaleBalance(0.99, 1.0 if r == "distill" else None) for r in objective.READINGS}

    def _noised(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = self.batch["x0"]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        return noise, t, self.scheduler.add_noise(x0, noise, t)

    def _finish(self, name: str, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.adapters[name].parameters(), 1.0)
        self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)

    def _plain(self, name: str) -> None:
        noise, t, x_t = self._noised()
        residuals = self.adapters[name](self.batch["map_b"])
        pred = self.unet(
            x_t, t, encoder_hidden_states=self.batch["text"], down_intrablock_additional_residuals=residuals
        ).sample
        self._finish(name, F.mse_loss(pred.float(), noise.float()))

    def plain(self) -> None:
        self._plain("plain")

    @torch.no_grad()
    def nograd_forward(self) -> None:
        """One no-grad P-Ad + U-Net forward: what each extra branch adds to the plain step, at the least."""
        b = self.batch
        _, t, x_t = self._noised()
        self.unet(
            x_t, t, encoder_hidden_states=b["text"], down_intrablock_additional_residuals=self.primary(b["map_a"])
        )

    def floor(self, k: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(k):
                self.nograd_forward()
            self._plain(f"floor_{k}")

        return run

    def _objective(self, reading: objective.Reading, noise: torch.Tensor, eps_s: torch.Tensor,
                   eps_p: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        b = self.batch
        losses = objective.branch_losses(
            reading, noise, eps_s.float(), eps_p.float(), b["mask"], b["mask_b"], b["is_b_row"], teacher
        )
        balance = self.balances[reading]
        balance.update(float(losses.l_diff.detach()), float(losses.l_bal.detach()))
        return balance(losses.l_diff, losses.l_bal).j

    def two_branch(self, reading: objective.Reading) -> Callable[[], None]:
        """posescene.training.train's step under ``reading`` (forward_losses -> J -> backward, clip, AdamW)."""

        def run() -> None:
            b = self.batch
            noise, t, x_t = self._noised()
            eps_s, eps_p = predict_two_branches(
                self.unet, self.primary, self.adapters[reading], x_t, t, b["text"], b["map_a"], b["map_b"]
            )
            teacher = None
            if objective.needs_teacher(reading):
                teacher = predict_teacher(self.unet, self.primary, x_t, t, b["text"], b["map_b"]).float()
            self._finish(reading, self._objective(reading, noise, eps_s, eps_p, teacher))

        return run

    def distill_teacher_first(self) -> None:
        """The distill step with the teacher's no-grad forward moved before the gradient forward (a proposal).

        Same values (the forwards draw no random numbers); the difference is only when the no-grad forward
        runs: before eps_S's autograd graph exists (as in the floor) instead of while it holds every
        activation for backward.
        """
        b = self.batch
        noise, t, x_t = self._noised()
        teacher = predict_teacher(self.unet, self.primary, x_t, t, b["text"], b["map_b"]).float()
        eps_s, eps_p = predict_two_branches(
            self.unet, self.primary, self.adapters["distill_teacher_first"], x_t, t, b["text"], b["map_a"], b["map_b"]
        )
        self._finish("distill_teacher_first", self._objective("distill", noise, eps_s, eps_p, teacher))

    def two_branch_batched(self) -> None:
        b = self.batch
        noise, t, x_t = self._noised()
        with torch.no_grad():
            res_p = self.primary(b["map_a"])
        res_s = self.adapters["batched"](b["map_b"])
        residuals = [torch.cat([p, s]) for p, s in zip(res_p, res_s, strict=True)]
        eps = self.unet(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([b["text"], b["text"]]),
            down_intrablock_additional_residuals=residuals,
        ).sample
        eps_p, eps_s = eps.chunk(2)
        self._finish("batched", self._objective("whole", noise, eps_s, eps_p, None))

    def variants(self, readings: tuple[str, ...], batched: bool) -> dict[str, Callable[[], None]]:
        out: dict[str, Callable[[], None]] = {"plain": self.plain, "nograd_forward": self.nograd_forward}
        for k in sorted({EXTRA_FORWARDS[r] for r in readings}):
            out[f"floor_{k}"] = self.floor(k)
        for reading in readings:
            out[f"two_branch_{reading}"] = self.two_branch(reading)  # type: ignore[arg-type]
        if "distill" in readings:
            out["two_branch_distill_teacher_first"] = self.distill_teacher_first
        if batched:
            out["two_branch_batched"] = self.two_branch_batched
        return out


def make_batch(unet: UNet2DConditionModel, primary: T2IAdapter, n: int, res: int, tokens: int, factor: int,
               device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:  # fmt: skip
    """A random training micro-batch of the model's size (latents, text states, two maps, person masks)."""
    latent = res // factor
    g = torch.Generator().manual_seed(0)
    in_ch = primary.config.in_channels
    corner = torch.rand(n, 2, 2, generator=g) * 0.6  # two person boxes per row (A and B), as fractions
    boxes = torch.cat([corner, corner + 0.2 + 0.2 * torch.rand(n, 2, 2, generator=g)], dim=-1)
    batch = {
        "x0": torch.randn(n, 4, latent, latent, generator=g).to(dtype),
        "text": torch.randn(n, tokens, unet.config.cross_attention_dim, generator=g).to(dtype),
        "map_a": (torch.rand(n, in_ch, res, res, generator=g) > 0.02).to(dtype),
        "map_b": (torch.rand(n, in_ch, res, res, generator=g) > 0.02).to(dtype),
        "mask": objective.box_masks(boxes, latent, 0.15),
        "mask_b": objective.box_masks(boxes[:, 1:], latent, 0.15),
        "is_b_row": torch.arange(n) % 2 == 1,
    }
    return {k: v.to(device) for k, v in batch.items()}


def set_checkpointing(unet: UNet2DConditionModel, on: bool) -> None:
    """As posescene.training.train.load_models does for train.gradient_checkpointing (no-grad forwards: unaffected)."""
    if on:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def profile_table(fns: dict[str, Callable[[], None]], rows: int = 15) -> dict[str, list[dict[str, Any]]]:
    """Top ops by self CPU time of one call of each function (torch.profiler): where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, list[dict[str, Any]]] = {}
    for name, fn in fns.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
        out[name] = [
            {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
             "share": round(e.self_cpu_time_total / total, 3)}
            for e in events
        ]  # fmt: skip
    return out


def fns_readings(fns: dict[str, Callable[[], None]]) -> list[str]:
    return [name.removeprefix("two_branch_") for name in fns if name.startswith("two_branch_")]


def summarise(median: dict[str, float], readings: tuple[str, ...]) -> dict[str, Any]:
    """Ratios of one checkpointing mode: each reading's step to its floor and to plain, and the floors."""
    out: dict[str, Any] = {"median_s": {k: round(v, 5) for k, v in median.items()}, "readings": {}}
    for k in sorted({EXTRA_FORWARDS[r] for r in readings}):
        out[f"floor_{k}_vs_plain"] = round(median[f"floor_{k}"] / median["plain"], 3)
        out[f"floor_{k}_vs_plain_sum"] = round(  # the floor as a sum of separately timed parts (a cross-check)
            (median["plain"] + k * median["nograd_forward"]) / median["plain"], 3
        )
    for reading in readings:
        k = EXTRA_FORWARDS[reading]
        step = median[f"two_branch_{reading}"]
        out["readings"][reading] = {
            "floor": f"floor_{k}",
            "extra_nograd_forwards": k,
            "vs_floor": round(step / median[f"floor_{k}"], 3),
            "vs_plain": round(step / median["plain"], 3),
            "at_floor": step / median[f"floor_{k}"] <= FLOOR_TARGET,
        }
    if "two_branch_distill_teacher_first" in median:  # the proposed order (see Steps.distill_teacher_first)
        out["distill_teacher_first_vs_floor_2"] = round(
            median["two_branch_distill_teacher_first"] / median["floor_2"], 3
        )
    if "two_branch_batched" in median:
        out["batched_whole_vs_plain"] = round(median["two_branch_batched"] / median["plain"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "world", "sd15"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--gradient-checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--readings", nargs="+", choices=list(objective.READINGS), default=["whole", "distill"])
    parser.add_argument("--batched", action="store_true", help="also the one-call doubled-batch alternative")
    parser.add_argument("--profile", action="store_true", help="profile every reading, not only those above floor")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/train_step_<device>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    readings = tuple(args.readings)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    load_before = os.getloadavg()

    unet, primary, res, tokens, factor = build(args.size)
    unet.requires_grad_(False).eval().to(device)
    primary.requires_grad_(False).eval().to(device)
    steps = Steps(unet, primary, make_batch(unet, primary, args.batch, res, tokens, factor, device))
    variants = steps.variants(readings, args.batched)
    names = list(variants)

    torch.manual_seed(1)
    for on in modes:
        set_checkpointing(unet, on)
        for _ in range(args.warmup):
            for fn in variants.values():
                fn()
    times: dict[bool, dict[str, list[float]]] = {on: {name: [] for name in names} for on in modes}
    for r in range(args.repeats):
        for on in modes:  # modes and variants interleaved: a load spike hits every configuration alike
            set_checkpointing(unet, on)
            for name in names if r % 2 == 0 else names[::-1]:
                times[on][name].append(timed(variants[name], device))

    per_mode: dict[str, Any] = {}
    for on in modes:
        median = {name: statistics.median(values) for name, values in times[on].items()}
        summary = summarise(median, readings)
        above = [r for r, v in summary["readings"].items() if not v["at_floor"]]
        if above or args.profile:
            set_checkpointing(unet, on)
            fns = {f"two_branch_{r}": variants[f"two_branch_{r}"] for r in (readings if args.profile else above)}
            fns.update(
                {f"floor_{EXTRA_FORWARDS[r]}": variants[f"floor_{EXTRA_FORWARDS[r]}"] for r in fns_readings(fns)}
            )
            summary["profile_top_ops"] = profile_table(fns)
        per_mode["on" if on else "off"] = summary

    result = {
        "size": args.size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores",
        "load_average_1_5_15": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "resolution": res,
        "repeats": args.repeats,
        "floor": floor_explanation(),
        "target_vs_floor": FLOOR_TARGET,
        "gradient_checkpointing": per_mode,
        "command": "python " + " ".join(sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out = args.out or Path("benchmarks/results") / f"train_step_{device.type}.json"
    existing: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if "size" in existing:  # an older single-result file
        existing = {}
    existing[args.size] = result
    write_json_atomic(out, existing)
    print(
        f"{args.size} on {device} (batch {args.batch}, {torch.get_num_threads()} threads), "
        f"load average {result['load_average_1_5_15']}"
    )
    print(floor_explanation())
    for mode, summary in per_mode.items():
        parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in summary["median_s"].items())
        print(f"gradient checkpointing {mode}: {parts}")
        for k in sorted({EXTRA_FORWARDS[r] for r in readings}):
            print(f"  floor_{k} (plain + {k} no-grad forward) = {summary[f'floor_{k}_vs_plain']}x plain")
        for reading, v in summary["readings"].items():
            verdict = "at the floor" if v["at_floor"] else f"ABOVE the floor by more than {FLOOR_TARGET - 1:.0%}"
            print(f"  two_branch {reading}: {v['vs_floor']}x {v['floor']}, {v['vs_plain']}x plain ({verdict})")
        if "distill_teacher_first_vs_floor_2" in summary:
            first = summary["distill_teacher_first_vs_floor_2"]
            print(f"  two_branch distill, teacher forward first: {first}x floor_2")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
