"""One optimizer step: the plain T2I-Adapter training step against our two-branch step, side by side.

Same frozen U-Net, same adapter weights, same batch. Variants, each a full optimizer step (forward,
backward, clip, AdamW):

- ``plain``: diffusers' ``examples/t2i_adapter`` step: adapter(map) -> unet(down_intrablock_additional_residuals)
  -> MSE to the noise;
- ``two_branch``: ours (posescene.train): eps_P under no_grad with P-Ad(A_0), eps_S with S-Ad(B_0), the
  masked L_diff / L_bal, the scale balance, J;
- ``two_branch_batched``: the alternative we did not choose: eps_P and eps_S from one U-Net call on a doubled
  batch (autograd then keeps and backpropagates the P half too).

The variants run interleaved (so load from other processes hits all of them alike) after a warm-up, and
the median of the repeats is reported with the ratio two_branch / plain (target <= 1.4).

    python benchmarks/bench_train_step.py --size tiny|world|sd15 [--device cpu|cuda] [--batch 8] [--repeats 15]

``sd15`` is a Stable-Diffusion-1.5-sized U-Net and adapter built from their configs with random weights
(timing only; needs a GPU to be practical).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import T2IAdapter, UNet2DConditionModel

from posescene import objective
from posescene.io import write_json_atomic
from posescene.train import predict_two_branches
from posescene.world import tiny_architecture, training_scheduler, world_architecture


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


class Steps:
    """The three step functions over shared frozen models; each variant owns its trainable adapter copy."""

    def __init__(self, unet: UNet2DConditionModel, primary: T2IAdapter, batch: dict[str, torch.Tensor]) -> None:
        self.unet, self.primary, self.batch = unet, primary, batch
        self.scheduler = training_scheduler()
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(batch["x0"].device)
        self.adapters: dict[str, T2IAdapter] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for name in ("plain", "two_branch", "two_branch_batched"):
            adapter = copy.deepcopy(primary).requires_grad_(True).train()
            self.adapters[name] = adapter
            self.optimizers[name] = torch.optim.AdamW(adapter.parameters(), lr=1e-5)
        self.balance = objective.ScaleBalance(0.99)

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

    def plain(self) -> None:
        noise, t, x_t = self._noised()
        residuals = self.adapters["plain"](self.batch["map_b"])
        pred = self.unet(
            x_t, t, encoder_hidden_states=self.batch["text"], down_intrablock_additional_residuals=residuals
        ).sample
        self._finish("plain", F.mse_loss(pred.float(), noise.float()))

    def _objective(self, noise: torch.Tensor, eps_s: torch.Tensor, eps_p: torch.Tensor) -> torch.Tensor:
        b = self.batch
        losses = objective.two_branch_losses(noise, eps_s.float(), eps_p.float(), b["mask"], b["is_b_row"])
        self.balance.update(float(losses.l_diff.detach()), float(losses.l_bal.detach()))
        return self.balance(losses.l_diff, losses.l_bal).j

    def two_branch(self) -> None:
        b = self.batch
        noise, t, x_t = self._noised()
        eps_s, eps_p = predict_two_branches(
            self.unet, self.primary, self.adapters["two_branch"], x_t, t, b["text"], b["map_a"], b["map_b"]
        )
        self._finish("two_branch", self._objective(noise, eps_s, eps_p))

    @torch.no_grad()
    def primary_forward(self) -> None:
        """The P branch alone (no-grad adapter + U-Net forward): what two_branch adds to plain, at the least."""
        b = self.batch
        _, t, x_t = self._noised()
        self.unet(
            x_t, t, encoder_hidden_states=b["text"], down_intrablock_additional_residuals=self.primary(b["map_a"])
        )

    def two_branch_batched(self) -> None:
        b = self.batch
        noise, t, x_t = self._noised()
        with torch.no_grad():
            res_p = self.primary(b["map_a"])
        res_s = self.adapters["two_branch_batched"](b["map_b"])
        residuals = [torch.cat([p, s]) for p, s in zip(res_p, res_s, strict=True)]
        eps = self.unet(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([b["text"], b["text"]]),
            down_intrablock_additional_residuals=residuals,
        ).sample
        eps_p, eps_s = eps.chunk(2)
        self._finish("two_branch_batched", self._objective(noise, eps_s, eps_p))


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "world", "sd15"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/train_step_<device>.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    unet, primary, res, tokens, factor = build(args.size)
    unet.requires_grad_(False).eval().to(device)
    primary.requires_grad_(False).eval().to(device)
    n, latent = args.batch, res // factor
    g = torch.Generator().manual_seed(0)
    in_ch = primary.config.in_channels
    corner = torch.rand(n, 2, 2, generator=g) * 0.6  # two person boxes per row (A and B), as fractions
    boxes = torch.cat([corner, corner + 0.2 + 0.2 * torch.rand(n, 2, 2, generator=g)], dim=-1)
    batch = {
        "x0": torch.randn(n, 4, latent, latent, generator=g),
        "text": torch.randn(n, tokens, unet.config.cross_attention_dim, generator=g),
        "map_a": (torch.rand(n, in_ch, res, res, generator=g) > 0.02).float(),
        "map_b": (torch.rand(n, in_ch, res, res, generator=g) > 0.02).float(),
        "mask": objective.box_masks(boxes, latent, 0.15),
        "is_b_row": torch.arange(n) % 2 == 1,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    steps = Steps(unet, primary, batch)
    variants = {
        "plain": steps.plain,
        "two_branch": steps.two_branch,
        "two_branch_batched": steps.two_branch_batched,
        "primary_forward": steps.primary_forward,
    }

    torch.manual_seed(1)
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]  # alternate the order: no variant always runs first
        for name in order:
            times[name].append(timed(variants[name], device))

    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "size": args.size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores",
        "load_average_1m": round(os.getloadavg()[0], 2),  # other processes: a busy box makes timings noisy
        "torch_threads": torch.get_num_threads(),
        "batch": n,
        "resolution": res,
        "repeats": args.repeats,
        "median_s": {k: round(v, 5) for k, v in median.items()},
        "ratio_two_branch_vs_plain": round(median["two_branch"] / median["plain"], 3),
        "ratio_batched_vs_plain": round(median["two_branch_batched"] / median["plain"], 3),
        # plain + the P branch's no-grad forward: the least any two-branch step can cost (it needs eps_P)
        "ratio_floor_plain_plus_primary_forward": round(
            (median["plain"] + median["primary_forward"]) / median["plain"], 3
        ),
        "target_ratio": 1.4,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out = args.out or Path("benchmarks/results") / f"train_step_{device.type}.json"
    existing: dict[str, Any] = {}
    if out.exists():
        import json

        existing = json.loads(out.read_text())
        if "size" in existing:  # an older single-result file
            existing = {}
    existing[args.size] = result
    write_json_atomic(out, existing)
    print(
        f"{args.size} on {device} (batch {n}, {torch.get_num_threads()} threads): "
        + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in median.items())
        + f" -> two_branch/plain = {result['ratio_two_branch_vs_plain']}x, batched/plain = "
        f"{result['ratio_batched_vs_plain']}x, floor (plain + P forward)/plain = "
        f"{result['ratio_floor_plain_plus_primary_forward']}x (target <= 1.4x); wrote {out}"
    )


if __name__ == "__main__":
    main()
