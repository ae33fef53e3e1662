"""The world's diffusion training steps on this CPU, fp32 beside bf16 autocast and its variants.

The from-scratch bootstrap spends most of its hours in the diffusion stages, above all ``joint`` (U-Net +
primary adapter, batch 32). This times one full optimiser step of a stage (``--stage``) - batch drawn as
``posescene.world.train`` draws it, adapter features (with adapter dropout in ``joint``), U-Net forward, min-SNR
loss, backward, clip, AdamW, EMA - for:

- ``fp32``: no autocast;
- ``bf16``: ``torch.autocast(bfloat16)``, what ``bootstrap.bf16_stages`` turns on (the peer of the ratios);
- ``fp32_channels_last`` / ``bf16_channels_last``: U-Net, adapter and inputs in channels-last memory format
  (oneDNN's preferred layout for convolutions);
- ``fp32_compile`` (``--compile``): the default precision with U-Net and adapter under ``torch.compile``
  (inductor; compile time is excluded from the step time and reported as warm-up).

Variants run interleaved (so load from other processes hits all alike), each on its own copy of the same
initial weights, after warm-up steps; the median of the repeats is reported with the ratio to ``bf16``.

    python benchmarks/bench_world_step.py [--stage joint|unet|adapter] [--threads 2] [--batch 32] [--repeats 12]
        [--compile] [--out benchmarks/results/world_step_<stage>_cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import T2IAdapter, UNet2DConditionModel

from posescene.config import load_params
from posescene.io import write_json_atomic
from posescene.world.architectures import WORLD_MAX_TOKENS, world_architecture
from posescene.world.loop import Ema
from posescene.world.train import adapter_features, diffusion_batch, diffusion_loss

N_ROWS = 512  # latents / maps / captions the batches are drawn from (any number; only shapes matter)


def make_step(
    variant: str, stage: str, unet: UNet2DConditionModel, adapter: T2IAdapter, data: dict[str, Any], batch: int,
    gamma: float, dropout: float,
) -> Callable[[int], float]:  # fmt: skip
    """One optimiser step of ``stage`` in ``variant`` (its own modules, optimiser and EMA): ``unet`` trains the
    U-Net alone, ``adapter`` the adapter with the U-Net frozen, ``joint`` both with adapter dropout."""
    unet, adapter = copy.deepcopy(unet).train(), copy.deepcopy(adapter).train()
    bf16, channels_last, compiled = variant.startswith("bf16"), variant.endswith("channels_last"), "compile" in variant
    if channels_last:
        unet, adapter = unet.to(memory_format=torch.channels_last), adapter.to(memory_format=torch.channels_last)
    unet.requires_grad_(stage != "adapter")
    trained = {"unet": [unet], "adapter": [adapter], "joint": [unet, adapter]}[stage]
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    holder = torch.nn.ModuleList(trained)
    ema = Ema(holder, 0.998)
    run_unet: Any = torch.compile(unet) if compiled else unet
    run_adapter: Any = torch.compile(adapter) if compiled else adapter
    cpu = torch.device("cpu")

    def step(i: int) -> float:
        gen = torch.Generator().manual_seed(i)
        idx = torch.randint(0, N_ROWS, (batch,), generator=gen)
        zt, t, states, noise = diffusion_batch(data["latents"], data["text"], data["text_idx"], idx, 0.1, gen, cpu)
        keep = torch.rand(batch, generator=gen) >= dropout if stage == "joint" else None
        if channels_last:
            zt = zt.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with autocast:
            features = None if stage == "unet" else adapter_features(run_adapter, data["maps"], idx, keep)
            pred = run_unet(zt, t, states, down_intrablock_additional_residuals=features).sample
        loss = diffusion_loss(pred, noise, t, gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(holder)
        return time.perf_counter() - start

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=("joint", "unet", "adapter"), default="joint")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=None, help="default: params.yaml bootstrap.batch_size")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/world_step_<stage>_cpu.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bp = load_params("params.yaml").bootstrap
    batch = a.batch or bp.batch_size
    arch = world_architecture()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch.unet)
    adapter = T2IAdapter(**arch.adapter)
    side = arch.unet["sample_size"]
    rng = np.random.default_rng(0)
    data = {
        "latents": torch.randn(N_ROWS, 4, side, side),
        "text": torch.randn(64, WORLD_MAX_TOKENS, arch.unet["cross_attention_dim"]),
        "text_idx": torch.randint(1, 64, (N_ROWS,)),
        "maps": rng.integers(0, 256, (N_ROWS, arch.resolution, arch.resolution), dtype=np.uint8),
    }
    variants = ["bf16", "fp32", "bf16_channels_last", "fp32_channels_last"] + (["fp32_compile"] if a.compile else [])
    steps, compile_s = {}, {}
    for v in variants:
        steps[v] = make_step(v, a.stage, unet, adapter, data, batch, bp.min_snr_gamma, bp.adapter_dropout)
        start = time.perf_counter()
        for w in range(a.warmup):
            steps[v](w)
        compile_s[v] = round(time.perf_counter() - start, 1)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(a.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            times[v].append(steps[v](1000 + r))
    median = {v: statistics.median(ts) for v, ts in times.items()}
    result = {
        "what": f"one {a.stage}-stage optimiser step of the world (AdamW, EMA), CPU",
        "stage": a.stage,
        "cpu": platform.processor() or platform.machine(),
        "threads": a.threads,
        "batch": batch,
        "repeats": a.repeats,
        "s_per_step_median": {v: round(m, 4) for v, m in median.items()},
        "samples_per_s": {v: round(batch / m, 1) for v, m in median.items()},
        "speedup_vs_bf16": {v: round(median["bf16"] / m, 3) for v, m in median.items()},
        "warmup_s": compile_s,
        "command": f"python benchmarks/bench_world_step.py --stage {a.stage} --threads {a.threads} --batch {batch} "
        f"--repeats {a.repeats}" + (" --compile" if a.compile else ""),
    }  # fmt: skip
    write_json_atomic(a.out or Path(f"benchmarks/results/world_step_{a.stage}_cpu.json"), result, sort_keys=False)
    print(result)


if __name__ == "__main__":
    main()
