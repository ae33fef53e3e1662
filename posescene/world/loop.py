"""The training loop every stage of the world shares: AdamW with warm-up and cosine decay, optional EMA, a random
stream per step, and a checkpoint per stage that a resumed run continues from exactly.

A stage's checkpoint is one file, ``<checkpoint_dir>/<stage>.pt`` (``torch.save`` of a dict: the modules,
optimiser, schedule, EMA, step, running loss, the params it was made with and its run statistics), written
atomically like every file of the project (:func:`posescene.io.atomic_path`). Its format differs from the secondary
adapter's (:mod:`posescene.training.checkpoints`, a directory per step with RNG states) because the world needs no RNG
states: every step's randomness is a function of (seed, stage, step) (:func:`step_generator`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from posescene.config import BootstrapParams
from posescene.errors import ConfigError, TrainingDivergedError
from posescene.io import atomic_path

# training stages in order; vae/unet/adapter train from scratch, decoder/joint fine-tune (see posescene.world.bootstrap)
STAGES = ("vae", "decoder", "judges", "unet", "adapter", "joint")

# the params each stage's training depends on: a checkpoint made with other values is not resumed
_COMMON_KEYS = (
    "architecture", "n_scenes", "poses_per_scene", "extra_first_scene", "extra_scenes", "coupling",
    "sceneless_captions",
)  # fmt: skip
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "vae": ("vae_steps", "vae_lr", "vae_kl_weight", "vae_edge_weight", "batch_size"),
    "decoder": ("init_from", "decoder_steps", "decoder_lr", "decoder_batch_size", "vae_edge_weight"),
    "judges": ("judge_steps", "judge_lr", "judge_heatmap_sigma", "batch_size"),
    "unet": ("unet_steps", "unet_lr", "ema_decay", "caption_dropout", "batch_size", "min_snr_gamma"),
    "adapter": ("adapter_steps", "adapter_lr", "caption_dropout", "batch_size", "min_snr_gamma"),
    "joint": ("init_from", "joint_steps", "joint_unet_lr", "joint_adapter_lr", "joint_ema_decay", "adapter_dropout",
              "caption_dropout", "batch_size", "min_snr_gamma"),
}  # fmt: skip


def stage_fingerprint(bp: BootstrapParams, stage: str, seed: int) -> dict[str, Any]:
    d = bp.model_dump()
    return {"seed": seed, **{k: d[k] for k in _COMMON_KEYS + STAGE_KEYS[stage]}}


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The random stream of one training step: a function of (seed, stage, step) only, so a run resumed
    from a checkpoint draws exactly the batches, noise and dropout an uninterrupted run draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + STAGES.index(stage) * 100_003_001 + step) % 2**63)


def lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% (short runs need the high lr early, a calm end)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def autocast(bp: BootstrapParams, stage: str, device: torch.device) -> Any:
    """bf16 autocast on ``device`` for the stages in ``bootstrap.bf16_stages``: it pays on a GPU; on this CPU
    (torch 2.14, avx512_bf16) every diffusion stage's step runs ~2x faster in fp32 (benchmarks/bench_world_step.py)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=stage in bp.bf16_stages)


def _check_finite(loss: torch.Tensor, part: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"bootstrap {part}: loss is {loss.item()} at step {step}; lower bootstrap.{part}_lr"
        )


def after_step(stage: str, step: int) -> None:
    """Called after every optimiser step (and its checkpoint); tests patch it to simulate a killed run."""


class Ema:
    """Exponential moving average of weights, with the usual warm-up so short runs still average."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in model.parameters()]
        self.step = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            p.copy_(s)


class Checkpoints:
    """Periodic training state of each stage under ``<checkpoint_dir>/<stage>.pt`` (atomic writes).

    A state holds the trained modules, optimiser, lr schedule, EMA and step; ``step == steps`` marks a
    finished stage, which a resumed run loads instead of training. Without ``resume`` old states are ignored
    (and overwritten). With ``stop_early`` (resume only) a stage's *last* checkpoint counts as finished:
    its (EMA) weights are used as they are, and the record says at which step it stopped.
    """

    def __init__(self, root: Path | None, every_s: float, resume: bool, stop_early: bool = False) -> None:
        self.root, self.every_s, self.resume, self.stop_early = root, every_s, resume, stop_early
        self._last = time.monotonic()
        # per stage: training wall time summed over every (resumed) run, its threads, runs, resumed-from steps
        self.stats: dict[str, dict[str, Any]] = {}

    def path(self, stage: str) -> Path | None:
        return None if self.root is None else self.root / f"{stage}.pt"

    def load(self, stage: str) -> dict[str, Any] | None:
        path = self.path(stage)
        if not self.resume or path is None or not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def finished(self, stage: str, steps: int) -> bool:
        state = self.load(stage)
        return state is not None and (state["step"] >= steps or self.stop_early)

    def save(self, stage: str, state: dict[str, Any]) -> None:
        path = self.path(stage)
        if path is None:
            return
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s


def train_loop(
    stage: str,
    steps: int,
    modules: dict[str, torch.nn.Module],
    groups: list[dict[str, Any]],
    warmup: int,
    step_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    bp: BootstrapParams,
    seed: int,
    ckpt: Checkpoints,
    weight_decay: float,
    ema_decay: float = 0.0,
    clip: float = 1.0,
    batch_size: int | None = None,
) -> None:
    """AdamW + warm-up/cosine schedule + optional EMA over ``modules``, checkpointed every
    ``bootstrap.checkpoint_minutes`` and resumable; on return the modules hold the final (EMA) weights.

    The modules train where they are (``bootstrap.device``); ``step_fn`` moves its batch there. The last
    checkpoint of a finished stage holds its *result* only (the final EMA weights, no optimiser state: a
    quarter of the bytes), which is all a resumed run needs from it.
    """
    params = [p for g in groups for p in g["params"]]
    device = params[0].device
    batch_size = batch_size or bp.batch_size  # recorded only (step_fn draws the batches)
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))
    holder = torch.nn.ModuleList(list(modules.values()))
    ema = Ema(holder, ema_decay) if ema_decay > 0 else None
    start, running = 0, None
    state = ckpt.load(stage)
    fingerprint = stage_fingerprint(bp, stage, seed)
    if state is not None and state.get("fingerprint", fingerprint) != fingerprint:
        raise ConfigError(
            f"{ckpt.path(stage)} was made with other params ({state['fingerprint']} vs now {fingerprint}); "
            "run without --resume (or delete it) to retrain this stage"
        )
    final = False  # do the modules hold the stage's result (EMA applied)?
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        final = state.get("opt") is None  # a finished stage's result (see result())
        if not final:
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        if ema is not None and state.get("ema") is not None:
            ema.shadow = [s.to(p.device) for s, p in zip(state["ema"], holder.parameters(), strict=True)]
            ema.step = state["ema_step"]
        start, running = state["step"], state.get("running")
    stats = dict(state.get("stats", {})) if state is not None else {}
    stats.setdefault("elapsed_s", 0.0)
    stats.setdefault("runs", [])
    if state is not None and ckpt.stop_early and start < steps:
        stats["stopped_early_at_step"] = start  # the last checkpoint is the result; the schedule was not finished
        steps = start
    if start < steps:
        stats["runs"] = stats["runs"] + [
            {
                "from_step": start,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "bf16": stage in bp.bf16_stages,
                "batch": batch_size,
            }
        ]
    t_run, elapsed0 = time.perf_counter(), stats["elapsed_s"]

    def snapshot(step: int) -> dict[str, Any]:
        stats["elapsed_s"] = round(elapsed0 + time.perf_counter() - t_run, 1)
        stats["runs"][-1]["to_step"] = step
        return {
            "stage": stage, "step": step, "steps": steps, "running": running, "stats": stats,
            "fingerprint": fingerprint,
            "modules": {n: m.state_dict() for n, m in modules.items()},
            "opt": opt.state_dict(), "sched": sched.state_dict(),
            "ema": ema.shadow if ema else None, "ema_step": ema.step if ema else 0,
        }  # fmt: skip

    def result(step: int) -> dict[str, Any]:
        """The finished stage (the modules already hold the EMA weights): no optimiser, schedule or EMA."""
        return {**snapshot(step), "opt": None, "sched": None, "ema": None, "ema_step": 0}

    holder.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, unit="step")
    for step in bar:
        gen = step_generator(seed, stage, step)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # dropout layers use the global RNG
        loss, info = step_fn(step, gen)
        _check_finite(loss, stage, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if ema:
            ema.update(holder)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.3f}" for k, v in info.items()})
        if step + 1 == steps:
            if ema:
                ema.copy_to(holder)
            final = True
            ckpt.save(stage, result(step + 1))
        elif ckpt.due():
            ckpt.save(stage, snapshot(step + 1))
        after_step(stage, step + 1)
    ckpt.stats[stage] = stats
    if ema and not final:  # stopped early at a periodic checkpoint: its EMA is the result
        ema.copy_to(holder)
    holder.eval()
