"""diffusers' stock pipelines over a ModelBank's components: the peer the one sampler is compared with.

Nothing in posescene draws with these; ``tests/test_generate.py`` pins the sampler's images to theirs (up to batched
float rounding) and ``bench_sampling.py`` times the sampler against them. Same components, same initial noise per
seed (``bank.initial_noise``), same text states (``bank.text``), DDIM with eta = 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, MultiAdapter, StableDiffusionAdapterPipeline, StableDiffusionPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from posescene.sampling.pose import Pose
from posescene.sampling.sampler import Job, ModelBank, ModelSpec


def stock_pipeline(bank: ModelBank, spec: ModelSpec) -> DiffusionPipeline:
    """``StableDiffusionPipeline`` (no adapter) or ``StableDiffusionAdapterPipeline`` (one adapter, or several as a
    ``MultiAdapter``) built from the bank's loaded components."""
    b = bank.base
    components: dict[str, Any] = dict(
        vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
        scheduler=DDIMScheduler.from_config(bank.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    if not spec.adapters:
        pipe: DiffusionPipeline = StableDiffusionPipeline(**components)
    else:
        parts = [bank.adapters[a] for a in spec.adapters]
        adapter = parts[0] if len(parts) == 1 else MultiAdapter(parts)
        pipe = StableDiffusionAdapterPipeline(adapter=adapter, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_images(
    bank: ModelBank,
    spec: ModelSpec,
    jobs: Sequence[Job],
    *,
    steps: int,
    guidance_scale: float,
    batch_size: int,
    maps: Callable[[Sequence[Pose]], torch.Tensor] | None = None,
) -> np.ndarray:
    """Images (N, res, res, 3) uint8 for ``jobs``, in order, ``batch_size`` at a time, by the stock pipeline."""
    pipe = stock_pipeline(bank, spec)
    negative = bank.text([""])
    out = np.empty((len(jobs), bank.resolution, bank.resolution, 3), dtype=np.uint8)
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            n = len(batch)
            kwargs: dict[str, Any] = dict(
                prompt_embeds=bank.text([j.prompt for j in batch]),
                negative_prompt_embeds=negative.expand(n, -1, -1),
                latents=torch.cat([bank.initial_noise(j.seed) for j in batch]).to(bank.device, bank.dtype),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                height=bank.resolution,
                width=bank.resolution,
                output_type="np",
                cross_attention_kwargs=bank.cross_attention_kwargs,
            )
            if spec.uses_pose:
                assert maps is not None
                cond = maps([j.pose for j in batch if j.pose is not None]).to(bank.device, bank.dtype)
                weights = list(spec.weights) or [1.0] * len(spec.adapters)
                if len(spec.adapters) == 1:
                    kwargs.update(image=cond, adapter_conditioning_scale=weights[0])
                else:
                    kwargs.update(image=[cond] * len(spec.adapters), adapter_conditioning_scale=weights)
            images = pipe(**kwargs).images
            out[start : start + n] = np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
    return out
