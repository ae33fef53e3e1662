"""Stage ``train``: fine-tune the secondary adapter S-Ad (docs/method.md, steps 3-4), nanoGPT-style.

Stable Diffusion (VAE, U-Net, text encoder) and the pretrained primary adapter P-Ad stay frozen; S-Ad
starts as a copy of P-Ad and is the only thing that learns. Read :func:`train` top to bottom: inputs,
models, data, optimizer, resume, the loop, outputs; the method itself is :func:`train_step`:

    rows of data/pairs.parquet (split == "train") -> x_0 (cached latent of the row's image), tau(y) (cached)
    eps ~ N(0, I), t ~ U{0..T-1}, x_t = add_noise(x_0, eps, t)
    eps_P = eps_theta(x_t, t, tau(y), F_P(A_0))   under no_grad (no graph, no backward)
    eps_S = eps_theta(x_t, t, tau(y), F_S(B_0))   gradient flows through the frozen U-Net into S-Ad only
    [distill reading only: eps_P(B_0) = eps_theta(x_t, t, tau(y), F_P(B_0)) under no_grad, the teacher]
    L_diff, L_bal (training.objective, train.balance_reading) -> J (train.balance) -> backward -> clip -> AdamW

That is the default reading. The other readings of issue 25 (docs/method.md) change single lines of it, each
behind one train.* key: the target of L_diff (``diff_target: text``: eps_theta(x_t, t, tau(y)), no adapter),
its timestep weighting (``diff_timestep_power``), the guided prediction (``guided_diff``) and empty or action-free
captions (``empty_caption_share``, ``caption_actions``), S-Ad as a correction added to P-Ad (``secondary_role:
correct``), a cross-pose scene term (``cross_pose_weight``) and the pose as a constraint (``balance:
constraint``). :func:`forward_losses` is where they meet.

The two U-Net calls are separate on purpose: batching them into one 2B forward would make autograd keep
and backpropagate the P half as well (benchmarks/bench_train_step.py measures both; on the world model
the separate calls are cheaper).

Diagnostics (every step: lambda_eff; every ``train.diagnose_every`` steps and at step 1: each loss's gradient
norm on S-Ad and, on a fixed probe batch, L_bal's pose sensitivity, L_diff, the pose-loss fraction and the
cross-pose scene difference; at the end the effective primary scale) go to MLflow and build/train/loss.csv and
metrics.json. They are measured beside the step (autograd.grad on the same graph, no-grad probe forwards, no RNG
drawn), so the training step and its result are the same with or without them.

Determinism: the batch rows and the noise of each micro-batch are pure functions of (seed, sample
position, rank), so a checkpoint only needs the position, and a resumed run reproduces the loss curve
of an uninterrupted one. The checkpoint (posescene.training.checkpoints) also keeps the global RNG states.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import T2IAdapter, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm

from posescene import tracking
from posescene.config import Params, TrainParams
from posescene.data.cache import Cache, caption_key, load_cache, require_columns
from posescene.devices import reproducible_math
from posescene.errors import ConfigError, InputDataError, TrainingDivergedError
from posescene.io import atomic_path, save_image_atomic, write_json_atomic, write_text_atomic
from posescene.models import (
    FrozenBase,
    check_compatible,
    encode_prompts,
    load_adapter,
    load_base,
    prepare_adapter_input,
)
from posescene.sampling.sampler import ArmJob, ModelBank
from posescene.serving import pyfunc
from posescene.shards import WEIGHT_SUFFIXES, hash_weight_file
from posescene.training import checkpoints as ckpt
from posescene.training import objective
from posescene.training.checkpoints import checkpoints, load_checkpoint, save_checkpoint

__all__ = ["checkpoints", "train", "train_step"]  # checkpoints: re-exported for callers of the old location

DIAGNOSTIC_COLUMNS = (
    "gnorm_diff",
    "gnorm_bal",
    "gnorm_ratio",
    *(f"pose_sens_{r}" for r in objective.READINGS),
    "probe_l_diff",  # L_diff on the probe batch (its relative drop goes to metrics.json)
    "probe_pose_frac",  # L_distill(S-Ad) / L_distill(no adapter) on the probe: the pose-loss fraction
    "probe_drift",  # scene mean of (eps(B_0) - eps(A_0))^2 on the probe: drift in eps space
)
# l_cross: cross_pose_weight > 0 only; pose_frac: the step's L_distill / C (distill reading); mu: balance=constraint
LOSS_COLUMNS = (
    "step", "l_diff", "l_bal", "j", "scale_diff", "scale_bal", "lambda_eff", "lr", "l_cross", "pose_frac", "mu",
    *DIAGNOSTIC_COLUMNS,
)  # fmt: skip
PAIR_COLUMNS = ["pair_id", "row", "image_a", "image_b", "person_a", "person_b", "image_id", "caption", "split"]
# train.* keys that do not change what is learned: a checkpoint made under other values can be resumed
RESUMABLE_ACROSS = {
    "out_dir",
    "checkpoint_dir",
    "steps",
    "checkpoint_every",
    "validate_every",
    "validation_poses",
    "validation_steps",
    "log_every",
    "diagnose_every",
    "probe_size",
    "effective_scales",
    "turned_down_margin",
}
PROBE_SEED_OFFSET = 7_919  # the probe batch's rows and noise: fixed per seed, never the training stream's


# ------------------------------------------------------------------------------------------- data


@dataclass
class TrainSet:
    """Everything a step reads, pre-loaded once: cached latents/text, all maps, per-row indices and masks."""

    latents: torch.Tensor  # (n_images, 4, l, l) VAE latent mean x scaling factor
    text: torch.Tensor  # (n_captions, L, D) tau(y)
    maps: torch.Tensor  # (n_maps, 1, R, R) uint8: a quarter of float32's memory, exact for 8-bit maps
    latent_idx: torch.Tensor  # per row: its image's latent
    text_idx: torch.Tensor  # per row: its caption's text state
    map_a: torch.Tensor  # per row: A_0 = map of (image_a, person_a)
    map_b: torch.Tensor  # per row: B_0 = map of (image_b, person_b)
    person_mask: torch.Tensor  # (rows, 1, l, l): union of A's and B's person boxes
    person_b: torch.Tensor  # (rows, 1, l, l): B's person box only (the person and distill readings)
    is_b_row: torch.Tensor  # (rows,) bool: the row's image carries pose B
    captions: list[str]  # per row: its caption (what tau(y) encodes)
    empty_text: int = -1  # row of ``text`` holding tau("") (guided_diff, empty_caption_share); -1: none

    def __len__(self) -> int:
        return len(self.latent_idx)

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        r = torch.as_tensor(rows, dtype=torch.long)
        return {
            "x0": self.latents[self.latent_idx[r]].to(device),
            "text": self.text[self.text_idx[r]].to(device),
            "map_a": self.maps[self.map_a[r]].to(device).float().div_(255.0),
            "map_b": self.maps[self.map_b[r]].to(device).float().div_(255.0),
            "mask": self.person_mask[r].to(device),
            "mask_b": self.person_b[r].to(device),
            "is_b_row": self.is_b_row[r].to(device),
        }


def read_pair_rows(path: str | Path) -> dict[str, list]:
    """data/pairs.parquet as column lists (all splits), checked against the contract."""
    from posescene.data.pairs import read_pairs

    cols = require_columns(read_pairs(path), PAIR_COLUMNS, path, "Rerun the pairs stage.")
    bad = sorted({r for r in cols["row"] if r not in ("A", "B")})
    if bad:
        raise InputDataError(f"{path}: column 'row' must be 'A' or 'B', found {bad}. Rerun the pairs stage.")
    return cols


def person_boxes(lattices_dir: str | Path) -> dict[tuple[str, int], np.ndarray]:
    """(image_id, person) -> keypoint box as fractions of the image (NaN when no person / no points)."""
    from posescene.data.poses import lattice_arrays, read_lattices

    table = read_lattices(lattices_dir)
    xs, ys = lattice_arrays(table, "x"), lattice_arrays(table, "y")
    keys = zip(table.column("image_id").to_pylist(), table.column("person").to_pylist(), strict=True)
    widths, heights = table.column("width").to_pylist(), table.column("height").to_pylist()
    return {
        (iid, int(p)): objective.keypoint_box(xs[i], ys[i], widths[i], heights[i]) for i, (iid, p) in enumerate(keys)
    }


def load_maps_for(keys: list[tuple[str, int]], maps_dir: str | Path, resolution: int) -> torch.Tensor:
    """Maps of (image_id, person) keys at the model resolution, as uint8 (n, 1, R, R)."""
    from posescene.data.render import load_maps, map_path

    paths = [map_path(maps_dir, iid, p) for iid, p in keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputDataError(
            f"{maps_dir}: {len(missing)} map(s) of paired poses are missing (e.g. {missing[:3]}). "
            "Rerun the render stage (posescene render / dvc repro render)."
        )
    return load_maps(paths, resolution).mul(255.0).round_().to(torch.uint8)


def load_train_set(params: Params, pairs: dict[str, list], cache: Cache, boxes: dict) -> TrainSet:
    """The split == "train" rows of the pairs, joined with the cache, the maps and the lattices."""
    rows = [i for i, s in enumerate(pairs["split"]) if s == "train"]
    if not rows:
        raise InputDataError(f"{params.pairs.out}: no rows with split == 'train'. Check pairs.heldout_fraction.")
    col = {k: [pairs[k][i] for i in rows] for k in PAIR_COLUMNS}
    key_a = list(zip(col["image_a"], map(int, col["person_a"]), strict=True))
    key_b = list(zip(col["image_b"], map(int, col["person_b"]), strict=True))
    map_keys = sorted(set(key_a) | set(key_b))
    map_row = {k: i for i, k in enumerate(map_keys)}

    missing_latents = sorted({i for i in col["image_id"] if i not in cache.image_row})
    missing_text = sorted({c for c in col["caption"] if caption_key(c) not in cache.caption_row})
    if missing_latents or missing_text:
        raise InputDataError(
            f"{params.cache.out_dir}: {len(missing_latents)} image(s) and {len(missing_text)} caption(s) of the pairs "
            "are not cached; the cache is older than the pairs. Rerun the cache stage (posescene cache)."
        )
    missing_lattices = [k for k in map_keys if k not in boxes]
    if missing_lattices:
        raise InputDataError(
            f"{params.poses.out_dir}: no lattice rows for {len(missing_lattices)} paired pose(s) "
            f"(e.g. {missing_lattices[:3]}). Rerun the poses and pairs stages."
        )
    latent_size = cache.latents.shape[-1]
    both = torch.from_numpy(np.stack([np.stack([boxes[a], boxes[b]]) for a, b in zip(key_a, key_b, strict=True)]))
    return TrainSet(
        latents=cache.latents,
        text=cache.text,
        maps=load_maps_for(map_keys, params.render.out_dir, params.model.resolution),
        latent_idx=torch.tensor([cache.image_row[i] for i in col["image_id"]]),
        text_idx=torch.tensor([cache.caption_row[caption_key(c)] for c in col["caption"]]),
        map_a=torch.tensor([map_row[k] for k in key_a]),
        map_b=torch.tensor([map_row[k] for k in key_b]),
        person_mask=objective.box_masks(both, latent_size, params.train.mask_margin),
        person_b=objective.box_masks(both[:, 1:], latent_size, params.train.mask_margin),
        is_b_row=torch.tensor([r == "B" for r in col["row"]]),
        captions=list(col["caption"]),
    )


@torch.no_grad()
def with_training_text(data: TrainSet, base: FrozenBase, tp: TrainParams) -> TrainSet:
    """The caption readings: action-free captions (``caption_actions: false``) and tau("") for the guided
    prediction and the empty-caption rows, encoded here with the frozen text encoder (the cache holds only the
    pairs' own captions). ``data`` itself when neither is on (the default reading)."""
    from posescene.data.synth import without_actions

    wants_empty = tp.guided_diff or tp.empty_caption_share > 0
    if tp.caption_actions and not wants_empty:
        return data
    texts, text_idx, empty = [data.text], data.text_idx, -1

    def encode(prompts: list[str]) -> torch.Tensor:
        chunks = [encode_prompts(base, prompts[i : i + 64]) for i in range(0, len(prompts), 64)]
        return torch.cat(chunks).to("cpu", data.text.dtype)

    if not tp.caption_actions:
        stripped = [without_actions(c) for c in data.captions]
        distinct = sorted(set(stripped))
        row = {c: len(data.text) + i for i, c in enumerate(distinct)}
        texts.append(encode(distinct))
        text_idx = torch.tensor([row[c] for c in stripped])
    if wants_empty:
        empty = sum(len(t) for t in texts)
        texts.append(encode([""]))
    return replace(data, text=torch.cat(texts), text_idx=text_idx, empty_text=empty)


def validation_inputs(params: Params, pairs: dict[str, list]) -> tuple[str, torch.Tensor]:
    """One held-out prompt and up to ``validation_poses`` held-out poses (its own scene's first)."""
    order = sorted(range(len(pairs["split"])), key=lambda i: (pairs["split"][i] != "heldout", pairs["pair_id"][i]))
    prompt = pairs["caption"][order[0]]
    group = pairs["pair_id"][order[0]]
    keys: list[tuple[str, int]] = []
    for i in sorted(order, key=lambda i: (pairs["split"][i] != "heldout", pairs["pair_id"][i] != group)):
        for key in ((pairs["image_a"][i], int(pairs["person_a"][i])), (pairs["image_b"][i], int(pairs["person_b"][i]))):
            if key not in keys and len(keys) < params.train.validation_poses:
                keys.append(key)
    maps = load_maps_for(keys, params.render.out_dir, params.model.resolution)
    return prompt, maps.float() / 255.0


def batch_rows(position: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Samples ``position .. position+batch_size-1`` of an endless stream of per-epoch permutations.

    A pure function of the position: resuming needs no sampler state, and every DDP rank agrees on the
    global batch (each then takes its own slice).
    """
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(position, n)
        take = np.random.default_rng([seed, epoch]).permutation(n)[offset : offset + batch_size - len(out)]
        out.extend(int(v) for v in take)
        position += len(take)
    return np.asarray(out, dtype=np.int64)


def micro_batch_generator(seed: int, position: int, rank: int, stream: int = 0) -> torch.Generator:
    """The noise/timestep RNG of one micro-batch, derived from (seed, position, rank) - stateless.

    ``stream`` > 0: another stream of the same micro-batch (the empty-caption draw), so a reading that draws
    more leaves the noise and timesteps of the default stream as they were.
    """
    entropy = [seed, position, rank] + ([stream] if stream else [])
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


# ------------------------------------------------------------------------------------------- model


def predict_two_branches(
    unet: UNet2DConditionModel,
    primary: T2IAdapter,
    secondary: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    cond_a: torch.Tensor,
    cond_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_S, eps_P): eps_P = eps(x_t, t, tau, F_P(A_0)) with no graph; eps_S with gradient into S-Ad."""
    with torch.no_grad():
        eps_p = unet(x_t, t, encoder_hidden_states=text, down_intrablock_additional_residuals=primary(cond_a)).sample
    eps_s = unet(x_t, t, encoder_hidden_states=text, down_intrablock_additional_residuals=secondary(cond_b)).sample
    return eps_s, eps_p


@torch.no_grad()
def predict_teacher(
    unet: UNet2DConditionModel,
    primary: T2IAdapter,
    x_t: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    cond_b: torch.Tensor,
) -> torch.Tensor:
    """eps_P(B_0) = eps(x_t, t, tau, F_P(B_0)): the frozen primary on S-Ad's own map, the distill teacher."""
    return unet(x_t, t, encoder_hidden_states=text, down_intrablock_additional_residuals=primary(cond_b)).sample


def predict_eps(
    unet: UNet2DConditionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    features: list[torch.Tensor] | None,
    empty: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional eps, the eps the scene terms compare) with adapter ``features`` added (None: no adapter).

    ``empty`` = tau("") (``train.guided_diff``): one 2N forward, the features on both halves as the sampler
    adds them, and the second value is the guided prediction eps_u + g (eps_c - eps_u). Without it both values
    are the one conditional prediction.
    """
    if empty is None:
        eps = unet(x_t, t, encoder_hidden_states=text, down_intrablock_additional_residuals=features).sample
        return eps, eps
    n = len(x_t)
    both = unet(
        torch.cat([x_t, x_t]),
        torch.cat([t, t]),
        encoder_hidden_states=torch.cat([empty.expand(n, -1, -1), text]),
        down_intrablock_additional_residuals=None if features is None else [torch.cat([f, f]) for f in features],
    ).sample
    uncond, cond = both.chunk(2)
    return cond, objective.guided(uncond, cond, guidance_scale)


def model_features(ctx: StepContext, cond: torch.Tensor, adapter: torch.nn.Module) -> list[torch.Tensor]:
    """What the trained model adds to the U-Net for a (float32) map: S-Ad's features, or under
    ``train.secondary_role: correct`` P-Ad's (no grad) plus S-Ad's (objective.combined_features)."""
    role = ctx.params.train.secondary_role
    primary = None
    if role == "correct":
        with torch.no_grad():
            primary = ctx.primary(cond.to(ctx.weight_dtype))
    return objective.combined_features(role, primary, adapter(cond))


@torch.no_grad()
def zero_output_(adapter: T2IAdapter) -> T2IAdapter:
    """S-Ad at zero output for ``secondary_role: correct`` (P-Ad's copy with its output paths zeroed).

    A full adapter's levels are a chain (each level's output feeds the next), so no last layer alone can be
    zeroed: conv_in (weight and bias) makes every level's input 0, each residual block's block2 (its last conv)
    makes the block add 0, and each level's 1x1 in_conv loses its bias, so every level outputs exactly 0. The
    gradient is not 0 (ControlNet's zero convolutions, here on the adapter's own layers): conv_in gets it through
    the blocks' skip connections, block2 through block1's activations on its bias. block1 and in_conv's weights
    stay P-Ad's, so what S-Ad learns passes through the primary's own filters.
    """
    from diffusers.models.adapter import AdapterBlock, AdapterResnetBlock

    if adapter.config.adapter_type not in ("full_adapter", "full_adapter_xl"):
        raise ConfigError(
            f"train.secondary_role: correct needs a full adapter (zero output by its conv_in and residual blocks); "
            f"got adapter_type {adapter.config.adapter_type!r}. Use secondary_role: replace."
        )
    conv_in = adapter.adapter.conv_in
    conv_in.weight.zero_()
    conv_in.bias.zero_()
    for module in adapter.modules():
        if isinstance(module, AdapterResnetBlock):
            module.block2.weight.zero_()
            module.block2.bias.zero_()
        elif isinstance(module, AdapterBlock) and module.in_conv is not None:
            module.in_conv.bias.zero_()
    return adapter


def _hash_weights(h: Any, source: str) -> None:
    """Feed ``h`` what identifies the frozen weights at ``source``: every weights file of a local directory by
    path, size and its first and last MiB (cheap for GB checkpoints, and retrained weights differ there); a hub
    id by name (what loads is its cached revision)."""
    root = Path(source)
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES) if root.is_dir() else []
    h.update(source.encode())
    for path in files:
        hash_weight_file(h, path, str(path.relative_to(root)))


def run_fingerprint(params: Params) -> str:
    """What a checkpoint must share with this run to be resumed: the frozen models' weights (not only their
    paths: a retrained world at the same path must not resume a run made against the old one), data, seed
    and the learning setup."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in RESUMABLE_ACROSS}
    spec = {"seed": params.seed, "model": params.model.model_dump(), "render": params.render.model_dump()}
    h = hashlib.sha256(json.dumps({**spec, "train": train}, sort_keys=True).encode())
    for source in (params.model.base, params.model.primary_adapter):
        _hash_weights(h, source)
    h.update(Path(params.pairs.out).read_bytes())
    # The objective's and the loop's code too: a code change retrains instead of silently "resuming" a
    # finished run with old semantics. After a crash, --resume-from still continues across a code fix.
    for module in (objective, ckpt, sys.modules[__name__]):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_grid(
    base: FrozenBase,
    adapters: dict[str, T2IAdapter],
    prompt: str,
    maps: torch.Tensor,
    params: Params,
    device: torch.device,
) -> Image.Image:
    """Rows: the pose maps, then one row per adapter; same prompt and initial noise in every cell.

    Drawn by the one sampler (:meth:`posescene.sampling.sampler.ModelBank.sample`, DDIM over the loaded components,
    one batch of the poses per adapter), so it shows what a user of the saved adapter gets.
    """
    k = len(maps)
    cond = prepare_adapter_input(maps, params.model.adapter_in_channels, params.model.adapter_invert)
    bank = ModelBank.from_components(
        base, adapters, resolution=params.model.resolution, device=device, dtype=base.unet.dtype
    )
    # secondary_role correct: the secondary row is the model as trained, P-Ad + S-Ad (the evaluation's `both`)
    added = {"secondary": (("primary", 1.0),)} if params.train.secondary_role == "correct" else {}
    jobs = [ArmJob(prompt, params.seed, i, name, 1.0, added=added.get(name, ())) for name in adapters for i in range(k)]
    modes = {name: adapter.training for name, adapter in adapters.items()}
    for adapter in adapters.values():
        adapter.eval()
    try:
        images = bank.sample(
            jobs, steps=params.train.validation_steps, guidance_scale=params.evaluate.guidance_scale, batch_size=k,
            maps=lambda keys: cond[list(keys)], sampler="ddim", bf16=False, progress=None,
        )  # fmt: skip
    finally:
        for name, adapter in adapters.items():
            adapter.train(modes[name])
    assert images is not None  # one process
    rows = [np.repeat((maps[:, 0].numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=-1)]
    rows += [images[r * k : (r + 1) * k] for r in range(len(adapters))]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return Image.fromarray(grid)


# -------------------------------------------------------------------------------------------- step


@dataclass
class StepContext:
    """What a step needs, built once by :func:`train`: models, balance, optimizer and the settings."""

    params: Params
    accelerator: Accelerator
    base: FrozenBase
    primary: T2IAdapter
    secondary: torch.nn.Module  # S-Ad as accelerate prepared it (DDP-wrapped on several processes)
    balance: objective.AnyBalance
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    weight_dtype: torch.dtype
    pose_effect: float | None = None  # C: L_distill with no adapter on the probe (distill reading); see ScaleBalance

    @property
    def s_ad(self) -> T2IAdapter:
        """S-Ad itself (unwrapped from DDP): what is saved, validated and probed."""
        return self.accelerator.unwrap_model(self.secondary)

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.s_ad.parameters())


def draw_micro_batch(
    data: TrainSet, params: Params, position: int, rank: int, world: int, device: torch.device, scheduler: Any
) -> dict[str, torch.Tensor]:
    """This rank's rows of the global batch at ``position``, its noise eps, timesteps t and x_t.

    Rows and noise are pure functions of (seed, position, rank): the resume-exactness contract.
    """
    tp = params.train
    bs = tp.batch_size
    rows = batch_rows(position, bs * world, len(data), params.seed)[rank * bs : (rank + 1) * bs]
    g = micro_batch_generator(params.seed, position, rank)
    batch = data.batch(rows, device)
    noise = torch.randn(batch["x0"].shape, generator=g).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(rows),), generator=g).to(device)
    if data.empty_text >= 0:
        batch["empty"] = data.text[data.empty_text : data.empty_text + 1].to(device)
    if tp.empty_caption_share > 0:  # its own stream: rows, noise and t stay those of the default reading
        drop = torch.rand(len(rows), generator=micro_batch_generator(params.seed, position, rank, stream=1))
        batch["text"][drop.to(device) < tp.empty_caption_share] = batch["empty"]
    return {**batch, "noise": noise, "t": t, "x_t": scheduler.add_noise(batch["x0"], noise, t)}


def forward_losses(ctx: StepContext, batch: dict[str, torch.Tensor]) -> objective.Losses:
    """The branches the train.* readings need, then L_diff, L_bal (and L_cross) of one micro-batch:

        target     = eps(x_t, t, tau, F_P(A_0))    no grad   [diff_target text: eps(x_t, t, tau), no adapter]
        teacher    = eps(x_t, t, tau, F_P(B_0))    no grad   [balance_reading distill only]
        eps_S(A_0) = eps(x_t, t, tau, F(A_0))      no grad   [cross_pose_weight > 0 only]
        eps_S      = eps(x_t, t, tau, F(B_0))      gradient into S-Ad;  F = F_S  [secondary_role correct: F_P + F_S]

    Under ``guided_diff`` target, eps_S(A_0) and the eps_S that L_diff compares are guided predictions (features on
    both halves, evaluate.guidance_scale); L_bal always reads the conditional eps_S. The default reading makes
    exactly the calls of :func:`predict_teacher` and :func:`predict_two_branches`, in the same order.
    """
    tp, model, dtype = ctx.params.train, ctx.params.model, ctx.weight_dtype
    unet, guidance = ctx.base.unet, ctx.params.evaluate.guidance_scale
    x_t, t, text = batch["x_t"].to(dtype), batch["t"], batch["text"].to(dtype)
    empty = batch["empty"].to(dtype) if tp.guided_diff else None
    map_a = prepare_adapter_input(batch["map_a"], model.adapter_in_channels, model.adapter_invert)
    cond_a = map_a.to(dtype)
    cond_b = prepare_adapter_input(batch["map_b"], model.adapter_in_channels, model.adapter_invert)
    teacher = eps_s_a = None
    with ctx.accelerator.autocast():
        # the no-grad passes first: run after the gradient branch they would execute while that branch's
        # activations are held for backward (same values, no randomness drawn; bench_train_step.py: 1.03-1.06x
        # the floor in that order, 1.00x in this one)
        if objective.needs_teacher(tp.balance_reading):
            teacher = predict_teacher(unet, ctx.primary, x_t, t, text, cond_b.to(dtype)).float()
        with torch.no_grad():
            target_features = ctx.primary(cond_a) if tp.diff_target == "primary" else None
            _, target = predict_eps(unet, x_t, t, text, target_features, empty, guidance)
            if tp.cross_pose_weight > 0:
                _, eps_s_a = predict_eps(unet, x_t, t, text, model_features(ctx, map_a, ctx.s_ad), empty, guidance)
        eps_s, eps_scene = predict_eps(unet, x_t, t, text, model_features(ctx, cond_b, ctx.secondary), empty, guidance)
    weights = None
    if tp.diff_timestep_power > 0:
        weights = objective.timestep_weights(
            t, ctx.base.noise_scheduler.config.num_train_timesteps, tp.diff_timestep_power
        )
    losses = objective.branch_losses(
        tp.balance_reading,
        batch["noise"],
        eps_s.float(),
        target.float(),
        batch["mask"],
        batch["mask_b"],
        batch["is_b_row"],
        teacher,
        sample_weight=None if weights is None else weights.to(x_t.device),
        eps_scene=eps_scene.float() if tp.guided_diff else None,
    )
    if eps_s_a is not None:
        scene_weights = None if weights is None else weights.to(x_t.device)
        losses.l_cross = objective.cross_pose_loss(eps_scene.float(), eps_s_a.float(), batch["mask"], scene_weights)
    return losses


def gradient_diagnostics(losses: objective.Losses, obj: objective.Objective, params: list) -> dict[str, float]:
    """Each loss's gradient norm on S-Ad, and their ratio as J weighs them (lambda_eff |dL_diff| / |dL_bal|)."""
    g_diff = objective.gradient_norm(losses.l_diff, params)
    g_bal = objective.gradient_norm(losses.l_bal, params)
    out = {"gnorm_diff": g_diff, "gnorm_bal": g_bal}
    if g_bal > 0:  # 0 e.g. for distill at initialisation, where S-Ad equals its teacher
        out["gnorm_ratio"] = obj.lambda_eff * g_diff / g_bal
    return out


def train_step(
    ctx: StepContext,
    data: TrainSet,
    step: int,
    position: int,
    diagnose: bool = False,
    last_checkpoint: Path | None = None,
) -> tuple[dict[str, float], int]:
    """One optimizer step (``gradient_accumulation_steps`` micro-batches): the method. Returns (row, position).

    ``diagnose`` (rank 0): also measure each loss's gradient norm on the first micro-batch, beside the step.
    """
    tp, acc = ctx.params.train, ctx.accelerator
    rank, world = acc.process_index, acc.num_processes
    lr = ctx.optimizer.param_groups[0]["lr"]
    sums, diagnostics = np.zeros(5), {}
    for micro in range(tp.gradient_accumulation_steps):
        batch = draw_micro_batch(data, ctx.params, position, rank, world, acc.device, ctx.base.noise_scheduler)
        position += tp.batch_size * world
        with acc.accumulate(ctx.secondary):
            losses = forward_losses(ctx, batch)
            # the scene term J balances: L_diff itself unless the cross-pose term is on
            scene = objective.scene_loss(losses.l_diff, losses.l_cross, tp.cross_pose_weight)
            cross = losses.l_cross if losses.l_cross is not None else torch.zeros_like(losses.l_diff)
            reduced = acc.reduce(torch.stack([losses.l_diff, losses.l_bal, cross, scene]).detach(), "mean")
            l_diff, l_bal, l_cross, l_scene = (float(v) for v in reduced)
            if not objective.is_finite(l_diff, l_bal, l_cross):  # before backward: no bad update is applied
                raise _diverged(step, f"loss (L_diff={l_diff}, L_bal={l_bal}, L_cross={l_cross})", lr, last_checkpoint)
            ctx.balance.update(l_scene, l_bal)  # running means (and the constraint's mu) see every rank's losses
            obj = ctx.balance(scene, losses.l_bal)
            if diagnose and micro == 0:
                diagnostics = gradient_diagnostics(objective.Losses(scene, losses.l_bal), obj, ctx.trainable)
            acc.backward(obj.j)
            if acc.sync_gradients:
                if world > 1:  # the balance's own parameters are not DDP-wrapped: average them here
                    for p in ctx.balance.parameters():
                        p.grad = acc.reduce(p.grad, "mean")
                grad_norm = acc.clip_grad_norm_(ctx.trainable, tp.max_grad_norm)
                if tp.mixed_precision != "fp16" and not torch.isfinite(torch.as_tensor(grad_norm)):
                    raise _diverged(step, f"gradient norm {float(grad_norm)}", lr, last_checkpoint)
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
        sums += (l_diff, l_bal, float(obj.j.detach()), l_cross, l_bal / (ctx.pose_effect or math.inf))
    ctx.lr_scheduler.step()
    means = sums / tp.gradient_accumulation_steps
    row = {
        "step": step,
        "l_diff": float(means[0]),
        "l_bal": float(means[1]),
        "j": float(means[2]),
        "scale_diff": obj.scale_diff,
        "scale_bal": obj.scale_bal,
        "lambda_eff": obj.lambda_eff,
        "lr": lr,
    }
    if losses.l_cross is not None:
        row["l_cross"] = float(means[3])
    if tp.balance_reading == "distill" and ctx.pose_effect:  # L_distill / C: the pose-loss fraction of this step
        row["pose_frac"] = float(means[4])
    if obj.mu is not None:
        row["mu"] = obj.mu
    return {**row, **diagnostics}, position


# ------------------------------------------------------------------------------------- diagnostics


def make_probe(data: TrainSet, params: Params, device: torch.device, scheduler: Any) -> dict[str, torch.Tensor]:
    """A fixed probe batch: ``train.probe_size`` training rows, fixed noise, timesteps spread over 0..T-1.

    Its own RNG (never the training stream's), so measuring it changes nothing in training.
    """
    n = min(params.train.probe_size, len(data))
    rows = np.random.default_rng([params.seed, PROBE_SEED_OFFSET]).permutation(len(data))[:n]
    batch = data.batch(rows, device)
    g = torch.Generator().manual_seed(params.seed + PROBE_SEED_OFFSET)
    noise = torch.randn(batch["x0"].shape, generator=g).to(device)
    steps = scheduler.config.num_train_timesteps
    t = ((torch.arange(n) + 0.5) * steps / n).long().clamp_max(steps - 1).to(device)  # stratified, not random
    return {**batch, "noise": noise, "t": t, "x_t": scheduler.add_noise(batch["x0"], noise, t)}


@torch.no_grad()
def probe_predictions(ctx: StepContext, probe: dict[str, torch.Tensor], full: bool = True) -> dict[str, torch.Tensor]:
    """eps on the probe batch (no grad, conditional, unweighted: comparable between runs of any reading).

    ``with``: the trained model's features on B_0 (S-Ad's, or P-Ad's + S-Ad's under ``secondary_role: correct``);
    ``without``: no adapter (zeroed features add nothing to the U-Net); ``teacher``: eps_P(B_0). ``full`` adds
    ``with_a`` (the trained model on A_0, for the cross-pose drift) and ``target`` (L_diff's target: eps_P(A_0),
    or ``without`` under ``diff_target: text``).
    """
    model, dtype = ctx.params.model, ctx.weight_dtype
    unet = ctx.base.unet
    x_t, t, text = probe["x_t"].to(dtype), probe["t"], probe["text"].to(dtype)
    cond_b = prepare_adapter_input(probe["map_b"], model.adapter_in_channels, model.adapter_invert)
    out = {}
    with ctx.accelerator.autocast():
        out["with"], _ = predict_eps(unet, x_t, t, text, model_features(ctx, cond_b, ctx.s_ad))
        out["without"], _ = predict_eps(unet, x_t, t, text, None)
        out["teacher"] = predict_teacher(unet, ctx.primary, x_t, t, text, cond_b.to(dtype))
        if full:
            cond_a = prepare_adapter_input(probe["map_a"], model.adapter_in_channels, model.adapter_invert)
            out["with_a"], _ = predict_eps(unet, x_t, t, text, model_features(ctx, cond_a, ctx.s_ad))
            if ctx.params.train.diff_target == "primary":
                out["target"], _ = predict_eps(unet, x_t, t, text, ctx.primary(cond_a.to(dtype)))
            else:
                out["target"] = out["without"]
    return {k: v.float() for k, v in out.items()}


def probe_balance_loss(
    reading: objective.Reading, probe: dict[str, torch.Tensor], eps: torch.Tensor, teacher: torch.Tensor
) -> float:
    return float(
        objective.balance_loss(reading, probe["noise"], eps, probe["mask"], probe["mask_b"], probe["is_b_row"], teacher)
    )


def scene_drift(probe: dict[str, torch.Tensor], eps_b: torch.Tensor, eps_a: torch.Tensor) -> float:
    """Scene mean of (eps(B_0) - eps(A_0))^2 on the probe: the cross-pose difference drift measures, in eps space."""
    return float(objective.cross_pose_loss(eps_b, eps_a, probe["mask"]))


def probe_diagnostics(ctx: StepContext, probe: dict[str, torch.Tensor]) -> dict[str, float]:
    """On the fixed probe batch: L_bal's pose sensitivity under every reading (L_bal with the trained model's
    features vs with them zeroed), L_diff, the pose-loss fraction and the cross-pose scene difference.

    Five no-grad forwards (the trained model on B_0 and A_0, none, the P-Ad teacher, L_diff's target).
    """
    eps = probe_predictions(ctx, probe)
    out = {}
    for reading in objective.READINGS:
        with_features = probe_balance_loss(reading, probe, eps["with"], eps["teacher"])
        without = probe_balance_loss(reading, probe, eps["without"], eps["teacher"])
        out[f"pose_sens_{reading}"] = objective.relative_change(with_features, without)
        if reading == "distill":
            out["probe_pose_frac"] = objective.pose_loss_fraction(with_features, without)
    out["probe_l_diff"] = float(objective.difference_loss(eps["with"], eps["target"], probe["mask"]))
    out["probe_drift"] = scene_drift(probe, eps["with"], eps["with_a"])
    return out


@torch.no_grad()
def effective_primary_scale(
    ctx: StepContext, probe: dict[str, torch.Tensor], trained: dict[str, float]
) -> tuple[dict[str, float], str]:
    """The primary's scale that matches the trained model's pose fidelity on the probe, and the drift gap there.

    The primary is drawn at every ``train.effective_scales`` on B_0 and A_0 (scale 0 is the U-Net without adapter:
    fidelity 0, drift 0); fidelity = 1 - pose-loss fraction, drift = :func:`scene_drift`. ``trained``: the final
    :func:`probe_diagnostics`. Returns (metrics, the summary's sentence); ({}, "") when the scales are [].
    """
    tp, model, dtype = ctx.params.train, ctx.params.model, ctx.weight_dtype
    if not tp.effective_scales:
        return {}, ""
    unet = ctx.base.unet
    x_t, t, text = probe["x_t"].to(dtype), probe["t"], probe["text"].to(dtype)
    conds = {k: prepare_adapter_input(probe[k], model.adapter_in_channels, model.adapter_invert).to(dtype)
             for k in ("map_a", "map_b")}  # fmt: skip
    with ctx.accelerator.autocast():
        without = unet(x_t, t, encoder_hidden_states=text).sample.float()
        teacher = predict_teacher(unet, ctx.primary, x_t, t, text, conds["map_b"]).float()
        no_pose = probe_balance_loss("distill", probe, without, teacher)
        scales, fidelity, drift = [0.0], [0.0], [0.0]
        for scale in tp.effective_scales:
            eps = {
                k: predict_eps(unet, x_t, t, text, [f * scale for f in ctx.primary(c)])[0].float()
                for k, c in conds.items()
            }
            lost = objective.pose_loss_fraction(probe_balance_loss("distill", probe, eps["map_b"], teacher), no_pose)
            scales.append(scale)
            fidelity.append(1.0 - lost)
            drift.append(scene_drift(probe, eps["map_b"], eps["map_a"]))
    found = objective.effective_scale(
        scales, fidelity, drift, 1.0 - trained["probe_pose_frac"], trained["probe_drift"], tp.turned_down_margin
    )
    metrics = {
        "effective_primary_scale": found.scale,
        "drift_gap": found.drift_gap,
        "turned_down_primary": float(found.turned_down),
    }
    return metrics, found.sentence()


def distill_pose_effect(ctx: StepContext, probe: dict[str, torch.Tensor]) -> float:
    """L_distill with S-Ad's features removed, on the probe batch: the scale of the distill loss (C).

    It does not depend on S-Ad (the U-Net without adapter vs the P-Ad teacher), so every rank, and a resumed
    run, computes the same number.
    """
    eps = probe_predictions(ctx, probe, full=False)
    return probe_balance_loss("distill", probe, eps["without"], eps["teacher"])


def is_diagnose_step(step: int, tp: TrainParams) -> bool:
    """Step 1 (the state at initialisation) and every ``diagnose_every`` steps.

    Not "the last step": that would depend on train.steps, and a run stopped early and resumed must log
    the same rows as an uninterrupted one. The trained state's pose sensitivity goes to metrics.json.
    """
    return step == 1 or step % tp.diagnose_every == 0


# ------------------------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    metrics: dict[str, float]
    out_dir: Path
    adapter_dir: Path
    run_id: str | None
    run_link: str | None
    model_version: str | None
    resumed_from: int
    summary: str = ""  # the effective-scale verdict: whether S-Ad is only a turned-down primary

    def as_dict(self) -> dict[str, Any]:
        """The stage's summary (the flow's artifact): final metrics, the adapter, the MLflow run and version."""
        return {
            "summary": self.summary,
            "metrics": self.metrics,
            "adapter_dir": str(self.adapter_dir),
            "mlflow_run_id": self.run_id,
            "mlflow_run_link": self.run_link,
            "model_version": self.model_version,
            "resumed_from_step": self.resumed_from,
        }


def _require_inputs(params: Params) -> None:
    """Fail before loading any model when an input stage has not run."""
    needs = {
        params.pairs.out: "pairs",
        params.render.out_dir: "render",
        params.poses.out_dir: "poses",
        str(Path(params.cache.out_dir) / "index.json"): "cache",
    }
    for path, stage in needs.items():
        if not Path(path).exists():
            raise InputDataError(f"{path}: not found. Run the {stage} stage first (posescene {stage} / dvc repro).")


def _check_request(params: Params, resume_from: str | Path | None) -> None:
    """Everything that can fail before an accelerator or a model exists."""
    tp = params.train
    if tp.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use 'no' or 'bf16' on a CPU.")
    if resume_from is not None and not ckpt.is_checkpoint(resume_from):
        raise InputDataError(
            f"{resume_from}: not a training checkpoint (no trainer_state.json). Checkpoints are "
            f"{tp.checkpoint_dir}/step_<n>; pick one that exists."
        )
    _require_inputs(params)


def make_accelerator(tp: TrainParams) -> Accelerator:
    accelerator = Accelerator(
        mixed_precision=tp.mixed_precision, gradient_accumulation_steps=tp.gradient_accumulation_steps
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:  # e.g. torchrun without GPUs and no ACCELERATE_USE_CPU=1
        raise ConfigError(
            f"launched with WORLD_SIZE={launched} but accelerate sees 1 process: every process would train alone "
            "and write the same files. On CPU set ACCELERATE_USE_CPU=1 (docs/operations.md)."
        )
    if tp.mixed_precision == "fp16" and accelerator.device.type == "cpu":  # CUDA exists, accelerate chose CPU
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use 'no' or 'bf16' on a CPU.")
    return accelerator


def load_models(params: Params, device: torch.device) -> tuple[FrozenBase, T2IAdapter, T2IAdapter, torch.dtype]:
    """Frozen SD + P-Ad on ``device``; S-Ad = a trainable copy of P-Ad (float32: the optimizer's copy), with
    its output zeroed under ``secondary_role: correct``."""
    tp = params.train
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[tp.mixed_precision]
    # the frozen parts load in their compute dtype (what diffusers asks for: no .to(dtype) casts afterwards)
    base = load_base(params.model.base, weight_dtype).freeze()
    primary = load_adapter(params.model.primary_adapter, weight_dtype)
    check_compatible(
        base, primary, params.model.adapter_in_channels, params.model.resolution, where=params.model.primary_adapter
    )
    secondary = load_adapter(params.model.primary_adapter).requires_grad_(True).train()  # float32
    if tp.secondary_role == "correct":  # S-Ad is a correction added to P-Ad: it starts at zero output
        zero_output_(secondary)
    primary.requires_grad_(False).eval()
    if tp.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()  # recompute U-Net activations in backward: memory for time
    base.to(device)  # attention uses torch SDPA (diffusers' default processor)
    primary.to(device)
    return base, primary, secondary, weight_dtype


def group_lrs(tp: TrainParams, balance: torch.nn.Module) -> list[float]:
    """Learning rate of each optimizer group: S-Ad at train.lr, learned log-variances at train.uncertainty_lr."""
    return [tp.lr] + ([tp.uncertainty_lr] if list(balance.parameters()) else [])


def make_optimizer(tp: TrainParams, secondary: torch.nn.Module, balance: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW on S-Ad (+ the balance's log-variances, no weight decay, their own learning rate)."""
    lrs = group_lrs(tp, balance)
    groups = [{"params": list(secondary.parameters()), "weight_decay": tp.weight_decay, "lr": lrs[0]}]
    if len(lrs) > 1:
        groups.append({"params": list(balance.parameters()), "weight_decay": 0.0, "lr": lrs[1]})
    return torch.optim.AdamW(groups, lr=tp.lr)


def resume_state(
    ctx: StepContext, params: Params, resume: bool, resume_from: str | Path | None
) -> tuple[dict[str, Any], int, Path | None]:
    """(trainer state, start step, checkpoint) from the last checkpoint of this setup, an explicit one, or none."""
    tp, acc = params.train, ctx.accelerator
    root = Path(tp.checkpoint_dir)
    fingerprint = run_fingerprint(params)
    ours = checkpoints(root, fingerprint)
    if not resume and ours and acc.is_main_process:
        # all of them, also those past train.steps: left behind, they would outrank (and prune) the new ones
        acc.print(f"--no-resume: removing {len(ours)} checkpoint(s) of this setup in {root}")
        ckpt.remove_checkpoints(ours)
        ours = []
    ours = [(s, p) for s, p in ours if s <= tp.steps]
    acc.wait_for_everyone()
    state: dict[str, Any] = {
        "fingerprint": fingerprint,
        "position": 0,
        "history": [],
        "mlflow_run_id": None,
        "step_seconds": 0.0,
        "wall_seconds": 0.0,
    }
    chosen = Path(resume_from) if resume_from is not None else (ours[-1][1] if resume and ours else None)
    if chosen is None:
        return state, 0, None
    secondary = acc.unwrap_model(ctx.secondary)
    saved = load_checkpoint(chosen, secondary, ctx.optimizer, ctx.lr_scheduler, ctx.balance, acc)
    state.update({k: saved[k] for k in state if k != "fingerprint"})
    # an explicit --resume-from may change the learning rates (the fix after a divergence)
    lrs = group_lrs(tp, ctx.balance)
    ctx.lr_scheduler.base_lrs = list(lrs)
    for group, lr, fn in zip(ctx.optimizer.param_groups, lrs, ctx.lr_scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(ctx.lr_scheduler.last_epoch)
    acc.print(f"resuming from {chosen} (step {int(saved['step'])} of {tp.steps})")
    return state, int(saved["step"]), chosen


def write_loss_csv(path: str | Path, history: list[dict[str, float]]) -> None:
    """One row per step; the interval diagnostics are empty on the steps that did not measure them."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOSS_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


def save_validation(ctx: StepContext, prompt: str, maps: torch.Tensor, step: int, run_id: str | None) -> None:
    """The validation grid (held-out prompt x poses, primary vs secondary) to disk and MLflow.

    The final step's grid goes to ``train.out_dir/validation`` (a DVC output); the grids along the way go beside
    the checkpoints (``train.checkpoint_dir/validation``) and to MLflow. A resumed run cannot redraw the grids of
    the steps before its checkpoint, so the DVC output holds only what every run, resumed or not, makes alike.
    """
    adapters = {"primary": ctx.primary, "secondary": ctx.s_ad}
    with ctx.accelerator.autocast():
        grid = validation_grid(ctx.base, adapters, prompt, maps, ctx.params, ctx.accelerator.device)
    tp = ctx.params.train
    folder = Path(tp.out_dir if step == tp.steps else tp.checkpoint_dir) / "validation"
    grid_path = folder / f"step_{step}.png"
    save_image_atomic(grid_path, grid)
    if run_id is not None:
        tracking.log_artifact(grid_path, "validation")


def publish(
    ctx: StepContext,
    history: list[dict[str, float]],
    state: dict[str, Any],
    final: dict[str, float],
    run: Any,
    summary: str,
) -> tuple[dict[str, float], Path, str | None, str | None]:
    """The adapter (diffusers format), metrics.json, loss.csv; MLflow artifacts and the registry ``candidate``."""
    tp, params = ctx.params.train, ctx.params
    out_dir = Path(tp.out_dir)
    adapter_dir = out_dir / "secondary_adapter"
    with atomic_path(adapter_dir) as tmp:
        ctx.s_ad.save_pretrained(tmp, safe_serialization=True)
    batch = tp.batch_size * ctx.accelerator.num_processes * tp.gradient_accumulation_steps
    metrics = {
        **final_metrics(history, tp.log_every, state, batch),
        **l_diff_drop(history, final),
        **{f"final_{k}": v for k, v in final.items()},
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_loss_csv(out_dir / "loss.csv", history)
    version = link = None
    run_id = run.info.run_id if run is not None else None
    timings = run_timings(history, state)
    if run is not None:
        tracking.log_metrics(
            {k if k.startswith("final_") else f"final_{k}": v for k, v in {**metrics, **timings}.items()}
        )
        tracking.log_artifacts(adapter_dir, "secondary_adapter")
        tracking.log_artifact(out_dir / "metrics.json")
        tracking.log_artifact(out_dir / "loss.csv")
        version = str(pyfunc.log_and_register(adapter_dir, params))
        link = tracking.run_link(run)
    # which MLflow run/registry version this adapter is: the evaluation's promotion gate checks that the
    # `candidate` it would promote is the adapter it measured
    write_json_atomic(
        out_dir / "run.json",
        {"mlflow_run_id": run_id, "model_version": version, "link": link, "summary": summary, **timings},
    )
    return metrics, adapter_dir, version, link


def train(
    params: Params, *, resume: bool = True, resume_from: str | Path | None = None, progress: bool = True
) -> TrainResult:
    """Fine-tune S-Ad for ``train.steps`` optimizer steps.

    ``resume``: continue from the last checkpoint of the same setup (``False``: discard them, start over).
    ``resume_from``: continue from this checkpoint even if train.lr changed (recovering from a divergence).
    Runs with torch's intra-op threads pinned to ``train.threads`` and deterministic algorithms on
    (:func:`posescene.devices.reproducible_math`), so the adapter's bytes do not follow the machine's cores.
    """
    with reproducible_math(params.train.threads):
        return _train(params, resume, resume_from, progress)


def _train(params: Params, resume: bool, resume_from: str | Path | None, progress: bool) -> TrainResult:
    tp = params.train

    # -- inputs and accelerator: fail early, before any model is loaded
    _check_request(params, resume_from)
    accelerator = make_accelerator(tp)
    device, main = accelerator.device, accelerator.is_main_process
    set_seed(params.seed)  # python, numpy, torch (all devices)

    # -- models: frozen SD + P-Ad; S-Ad = a trainable copy of P-Ad
    base, primary, secondary, weight_dtype = load_models(params, device)

    # -- data: pairs + cache + maps + masks, loaded once; the fixed probe batch of the diagnostics
    pairs = read_pair_rows(params.pairs.out)
    cache = load_cache(params.cache.out_dir, params.model.base, params.model.resolution)
    data = load_train_set(params, pairs, cache, person_boxes(params.poses.out_dir))
    data = with_training_text(data, base, tp)  # action-free captions, tau("") (readings off: data as it was)
    val_prompt, val_maps = validation_inputs(params, pairs)
    probe = make_probe(data, params, device, base.noise_scheduler)

    # -- optimizer: AdamW on S-Ad (+ the log-variances of uncertainty weighting), linear warmup
    balance = objective.make_balance(
        tp.balance, tp.running_mean_momentum, tp.lambda_diff, epsilon=tp.constraint_epsilon, dual_lr=tp.dual_lr
    ).to(device)
    optimizer = make_optimizer(tp, secondary, balance)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=tp.warmup_steps)
    secondary, optimizer = accelerator.prepare(secondary, optimizer)
    ctx = StepContext(params, accelerator, base, primary, secondary, balance, optimizer, lr_scheduler, weight_dtype)
    if tp.balance_reading == "distill":
        ctx.pose_effect = distill_pose_effect(ctx, probe)  # C: the pose-loss fraction is L_distill / C
        if isinstance(balance, objective.ScaleBalance | objective.ConstraintBalance):
            balance.bal_reference = ctx.pose_effect  # not its running mean: see ScaleBalance

    # -- resume: the last checkpoint made by the same setup (run_fingerprint), or an explicit one
    state, start_step, last_checkpoint = resume_state(ctx, params, resume, resume_from)

    # -- the loop (only rank 0 tracks, diagnoses, validates and writes)
    with tracking.start_run(params, run_id=state["mlflow_run_id"]) if main else contextlib.nullcontext() as run:
        run_id = state["mlflow_run_id"] = run.info.run_id if run is not None else None
        history: list[dict[str, float]] = state["history"]
        position, unlogged = int(state["position"]), []
        steps = range(start_step + 1, tp.steps + 1)
        bar = tqdm(steps, initial=start_step, total=tp.steps, desc="train S-Ad", disable=not (progress and main))
        for step in bar:
            t_start = time.perf_counter()
            diagnose = main and is_diagnose_step(step, tp)
            probed = probe_diagnostics(ctx, probe) if diagnose else {}  # the state this step starts from
            t_step = time.perf_counter()
            row, position = train_step(ctx, data, step, position, diagnose, last_checkpoint)
            state["step_seconds"] += time.perf_counter() - t_step
            history.append({**row, **probed})
            unlogged.append(history[-1])

            if step % tp.log_every == 0 or step == tp.steps:
                bar.set_postfix(j=f"{row['j']:.3f}", l_diff=f"{row['l_diff']:.4f}", l_bal=f"{row['l_bal']:.4f}")
                if run_id is not None:
                    tracking.log_rows(run_id, unlogged)
                unlogged = []
            if (step % tp.validate_every == 0 or step == tp.steps) and main:
                save_validation(ctx, val_prompt, val_maps, step, run_id)
            state["wall_seconds"] += time.perf_counter() - t_start
            if step % tp.checkpoint_every == 0 or step == tp.steps:
                state["position"] = position
                if main:
                    last_checkpoint = save_checkpoint(
                        tp.checkpoint_dir, step, ctx.s_ad, optimizer, lr_scheduler, balance, accelerator, state
                    )
                accelerator.wait_for_everyone()
        bar.close()
        final_grid = Path(tp.out_dir) / "validation" / f"step_{tp.steps}.png"
        if main and not final_grid.exists():  # resumed a finished run: its grids went with the old out_dir
            save_validation(ctx, val_prompt, val_maps, tp.steps, run_id)

        # -- outputs: the trained state's probe diagnostics and effective primary scale, the adapter, metrics,
        #    loss curve, MLflow registry
        metrics: dict[str, float] = {}
        version = link = None
        summary = ""
        adapter_dir = Path(tp.out_dir) / "secondary_adapter"
        if main:
            final = probe_diagnostics(ctx, probe)
            effective, summary = effective_primary_scale(ctx, probe, final)
            metrics, adapter_dir, version, link = publish(ctx, history, state, {**final, **effective}, run, summary)
            if summary:
                accelerator.print(summary)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(metrics, Path(tp.out_dir), adapter_dir, run_id, link, version, start_step, summary)


def final_metrics(history: list[dict[str, float]], window: int, state: dict[str, Any], batch: int) -> dict[str, float]:
    """metrics.json: the losses averaged over the last ``window`` steps (single steps are noisy) and
    the last measured gradient diagnostics."""
    last = history[-window:]

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in last])) if last else float("nan")

    measured = [r for r in history if "gnorm_diff" in r]
    readings = {k: mean(k) for k in ("l_cross", "pose_frac") if last and k in last[-1]}
    if last and "mu" in last[-1]:
        readings["mu"] = float(last[-1]["mu"])
    return {
        "l_diff": mean("l_diff"),
        "l_bal": mean("l_bal"),
        "j": mean("j"),
        "lambda_eff": mean("lambda_eff"),
        **readings,
        **{k: float(v) for k, v in (measured[-1] if measured else {}).items() if k.startswith("gnorm_")},
        "steps": len(history),
        "batch_size": batch,
    }


def l_diff_drop(history: list[dict[str, float]], final: dict[str, float]) -> dict[str, float]:
    """L_diff's relative drop on the probe batch, 1 - final / at initialisation (the step-1 measurement)."""
    first = next((r for r in history if "probe_l_diff" in r), None)
    if first is None or "probe_l_diff" not in final or first["probe_l_diff"] <= 0:
        return {}
    return {"l_diff_drop": 1.0 - final["probe_l_diff"] / first["probe_l_diff"]}


def run_timings(history: list[dict[str, float]], state: dict[str, Any]) -> dict[str, float]:
    """run.json's timings: kept out of metrics.json, a DVC output that must have the same bytes on every rerun."""
    return {
        "wall_time_s": round(float(state["wall_seconds"]), 3),  # steps + diagnostics + validation + checkpoints
        "s_per_step": round(float(state["step_seconds"]) / max(len(history), 1), 4),  # training steps only
    }


def _diverged(step: int, what: str, lr: float, last_checkpoint: Path | None) -> TrainingDivergedError:
    kept = (
        f"the last good checkpoint is kept at {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    )
    return TrainingDivergedError(
        f"step {step}: non-finite {what}; training stopped and {kept}. Lower train.lr (now {lr:g}), e.g. "
        f"--set train.lr={lr / 10:g}, or use mixed_precision bf16 instead of fp16; then rerun (it resumes)."
    )
