"""The GPU path at the Stable Diffusion 1.5 size: training-step samples/s and peak memory, evaluation images/s.

**No GPU number exists yet**: this session had no device. The script is ready to run once, as is, when a
device is lent (``python benchmarks/bench_gpu.py``, about a minute on one GPU); it writes
``benchmarks/results/gpu_<device>.json`` with the device named.

What it builds, with **random weights** from the published configs (nothing is downloaded; timing and
memory do not depend on the weights):

- the SD-1.5 U-Net (``runwayml/stable-diffusion-v1-5`` unet/config.json) and VAE (vae/config.json),
- a 3-channel openpose-style T2I-Adapter (``TencentARC/t2iadapter_openpose_sd14v1``: full_adapter,
  channels 320/640/1280/1280, 2 res blocks, downscale 8),
- random text states in place of CLIP's (77 x 768: the text encoder runs once per caption and is cached
  in training, so it is not part of the step).

At 512 px in bf16 (U-Net, VAE and P-Ad in bf16, the trainable adapter in fp32 under bf16 autocast, as
posescene.training.train does with ``mixed_precision: bf16``), batch 8, gradient checkpointing off and on:

- training: samples/s and peak memory of the plain diffusers T2I-Adapter step, its floors (plain + 1 or 2
  no-grad forwards, see benchmarks/bench_train_step.py) and the two-branch step under the ``whole`` and
  ``distill`` readings (the same step functions as bench_train_step.py);
- evaluation: images/s of posescene.sampling.sampler.ModelBank.sample-style batched sampling (classifier-free
  guidance on a doubled batch, the adapter's features added to both halves, VAE decode) with the evaluate
  stage's defaults: ``--sampler dpmsolver`` (DPM-Solver++ multistep) and ``--sample-steps 10``
  (``--sampler ddim --sample-steps 20`` for the earlier setting).

Expectation from FLOPs (issue 14), to compare with the first measurement: an SD-1.5 U-Net forward at
512 px is about 0.4 TFLOP per sample (a step with backward about 3x that, 4x with checkpointing), so on an
H100 (~990 dense bf16 TFLOP/s, 30-50% reached in practice) the plain step should run at tens to a hundred
or more samples/s, and the two-branch step at >= 0.62x of it (one extra no-grad forward: ``whole``; its floor
is ~0.67x plain without checkpointing, ~0.75x with). ``distill`` adds a second no-grad forward (the
teacher): floor ~0.5x plain without checkpointing, ~0.6x with.

``--size tiny`` runs the same code on the tiny test architecture on a CPU in seconds (the smoke test in
tests/test_benchmarks.py); ``--size world`` the built-in world's models.

    python benchmarks/bench_gpu.py [--size sd15|world|tiny] [--device cuda|cpu] [--batch 8] [--dtype bf16|fp32]
        [--repeats 10] [--sampler dpmsolver|ddim] [--sample-steps 10] [--threads N] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, T2IAdapter, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from bench_train_step import EXTRA_FORWARDS, Steps, make_batch, sd15_configs, set_checkpointing  # noqa: E402

from posescene.io import write_json_atomic  # noqa: E402
from posescene.world.architectures import tiny_architecture, training_scheduler, world_architecture  # noqa: E402

READINGS = ("whole", "distill")
TEXT_TOKENS = 77  # CLIP's context length (SD-1.5)


def sd15_vae_config() -> dict[str, Any]:
    """SD-1.5's VAE (runwayml/stable-diffusion-v1-5, vae/config.json): factor 8, 4 latent channels."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )


def build_models(size: str) -> tuple[UNet2DConditionModel, AutoencoderKL, T2IAdapter, int, int, int]:
    """(unet, vae, 3-channel adapter, resolution, text tokens, VAE factor) with random weights."""
    torch.manual_seed(0)
    if size == "sd15":
        unet_cfg, adapter_cfg, res, tokens, factor = sd15_configs()
        vae_cfg = sd15_vae_config()
    else:
        arch = tiny_architecture() if size == "tiny" else world_architecture()
        unet_cfg, vae_cfg, res, tokens = arch.unet, arch.vae, arch.resolution, 32
        adapter_cfg = {**arch.adapter, "in_channels": 3}  # openpose-style RGB input, as at the SD size
        factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    return UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg), T2IAdapter(**adapter_cfg), res, tokens, factor


def device_slug(device: torch.device) -> str:
    """``gpu_<slug>.json``: the device's name, lower case, [a-z0-9-] (``cpu`` for the CPU smoke run)."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, float]) -> Iterator[None]:
    """Peak allocated GiB during the block (``into["peak_gib"]``) and above what was allocated before it."""
    if device.type != "cuda":
        yield
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    into["peak_gib"] = round(peak / 2**30, 3)
    into["peak_above_start_gib"] = round((peak - before) / 2**30, 3)


def make_sampler(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    adapter: T2IAdapter,
    batch: int,
    res: int,
    tokens: int,
    factor: int,
    steps: int,
    guidance_scale: float,
    device: torch.device,
    dtype: torch.dtype,
    sampler: str = "dpmsolver",
) -> Callable[[], torch.Tensor]:
    """One batch of ModelBank.sample: ``sampler`` with CFG on a doubled batch, adapter features on both halves,
    VAE decode (ModelBank.sampling_scheduler's schedulers: DDIM, or DPM-Solver++ multistep)."""
    g = torch.Generator().manual_seed(2)
    text = torch.randn(2 * batch, tokens, unet.config.cross_attention_dim, generator=g).to(device, dtype)
    maps = (torch.rand(batch, adapter.config.in_channels, res, res, generator=g) > 0.02).to(device, dtype)
    noise = torch.randn(batch, 4, res // factor, res // factor, generator=g).to(device, dtype)
    config = training_scheduler().config
    scheduler = (
        DDIMScheduler.from_config(config)
        if sampler == "ddim"
        else DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    )

    @torch.inference_mode()
    def run() -> torch.Tensor:
        feats = [torch.cat([f, f]) for f in adapter(maps)]  # computed once per pose, as ModelBank caches them
        scheduler.set_timesteps(steps, device=device)
        latents = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps = unet(
                inp, t, encoder_hidden_states=text, down_intrablock_additional_residuals=[f.clone() for f in feats]
            ).sample
            uncond, conditioned = eps.chunk(2)
            latents = scheduler.step(uncond + guidance_scale * (conditioned - uncond), t, latents).prev_sample
        image = vae.decode(latents / vae.config.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    return run


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["sd15", "world", "tiny"], default="sd15")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sampler", choices=["dpmsolver", "ddim"], default="dpmsolver")
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--sample-repeats", type=int, default=3)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/gpu_<device>.json")
    args = parser.parse_args()
    if args.threads:  # on a shared CPU, 1: OpenMP threads spinning against other jobs cost ~100x (tests/conftest.py)
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU user runs with; bf16 does not use it
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    unet, vae, adapter, res, tokens, factor = build_models(args.size)
    for module in (unet, vae, adapter):
        module.requires_grad_(False).eval()
    trainable = ("plain", "floor_1", "floor_2", *READINGS, "distill_teacher_first")
    # trainable copies in fp32 (made before the frozen models go to bf16), as posescene.training.train keeps S-Ad
    steps = Steps(unet, adapter, make_batch(unet, adapter, args.batch, res, tokens, factor, torch.device("cpu")),
                  trainable=trainable)  # fmt: skip
    for name in trainable:
        steps.adapters[name].to(device)
        steps.optimizers[name] = torch.optim.AdamW(steps.adapters[name].parameters(), lr=1e-5)
    unet.to(device, dtype)
    vae.to(device, dtype)
    adapter.to(device, dtype)
    steps.batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in steps.batch.items()}
    steps.scheduler.alphas_cumprod = steps.scheduler.alphas_cumprod.to(device)
    variants = steps.variants(READINGS, batched=False)
    del variants["nograd_forward"]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def in_autocast(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with autocast:
                fn()

        return run

    training: dict[str, Any] = {}
    for on in (False, True):
        set_checkpointing(unet, on)
        mode: dict[str, Any] = {}
        for name, fn in variants.items():
            step = in_autocast(fn)
            for _ in range(args.warmup):
                step()
            memory: dict[str, float] = {}
            with peak_memory(device, memory):
                step()
            median = statistics.median(time_calls(step, device, args.repeats))
            mode[name] = {"median_s": round(median, 5), "samples_per_s": round(args.batch / median, 2), **memory}
        plain = mode["plain"]["median_s"]
        mode["ratios"] = {
            **{f"two_branch_{r}_vs_plain_throughput": round(plain / mode[f"two_branch_{r}"]["median_s"], 3)
               for r in READINGS},
            **{f"two_branch_{r}_vs_floor_time": round(mode[f"two_branch_{r}"]["median_s"]
                                                      / mode[f"floor_{EXTRA_FORWARDS[r]}"]["median_s"], 3)
               for r in READINGS},
        }  # fmt: skip
        training["on" if on else "off"] = mode
        print(f"checkpointing {'on' if on else 'off'}: "
              + ", ".join(f"{k} {v['samples_per_s']} samples/s" for k, v in mode.items() if k != "ratios")
              + f"; {mode['ratios']}")  # fmt: skip
    set_checkpointing(unet, False)
    del steps, variants
    if device.type == "cuda":
        torch.cuda.empty_cache()

    sample = make_sampler(unet, vae, adapter, args.batch, res, tokens, factor, args.sample_steps,
                          args.guidance_scale, device, dtype, args.sampler)  # fmt: skip
    sample()  # warm-up
    sample_memory: dict[str, float] = {}
    with peak_memory(device, sample_memory):
        sample()
    sample_s = statistics.median(time_calls(sample, device, args.sample_repeats))
    evaluation = {
        "sampler": args.sampler,
        "steps": args.sample_steps,
        "guidance_scale": args.guidance_scale,
        "batch": args.batch,
        "median_s_per_batch": round(sample_s, 4),
        "images_per_s": round(args.batch / sample_s, 3),
        **sample_memory,
    }
    print(f"evaluation sampling: {evaluation['images_per_s']} images/s ({args.sample_steps} {args.sampler} steps, CFG)")

    result = {
        "measured": True,
        "size": args.size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores",
        "dtype": args.dtype,
        "resolution": res,
        "batch": args.batch,
        "repeats": args.repeats,
        "training": training,
        "evaluation": evaluation,
        "expectation": "H100, from FLOPs: plain step tens to 100+ samples/s; two-branch (whole) >= 0.62x plain",
        "command": "python " + " ".join(sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out = args.out or Path("benchmarks/results") / f"gpu_{device_slug(device)}.json"
    write_json_atomic(out, result)
    print(json.dumps({"device": result["device_name"], "out": str(out)}))


if __name__ == "__main__":
    main()
