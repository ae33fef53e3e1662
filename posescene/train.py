"""Stage ``train``: fine-tune the secondary adapter S-Ad (METHOD.md steps 3-4), nanoGPT-style.

Stable Diffusion (VAE, U-Net, text encoder) and the pretrained primary adapter P-Ad stay frozen; S-Ad
starts as a copy of P-Ad and is the only thing that learns. Read :func:`train` top to bottom: inputs,
models, data, optimizer, resume, the loop, outputs. One step:

    rows of data/pairs.parquet (split == "train") -> x_0 (cached latent of the row's image), tau(y) (cached)
    eps ~ N(0, I), t ~ U{0..T-1}, x_t = add_noise(x_0, eps, t)
    eps_P = eps_theta(x_t, t, tau(y), F_P(A_0))   under no_grad (no graph, no backward)
    eps_S = eps_theta(x_t, t, tau(y), F_S(B_0))   gradient flows through the frozen U-Net into S-Ad only
    L_diff, L_bal on the scene / person masks (posescene.objective) -> J -> backward -> clip -> AdamW

The two U-Net calls are separate on purpose: batching them into one 2B forward would make autograd keep
and backpropagate the P half as well (benchmarks/bench_train_step.py measures both; on the world model
the separate calls are cheaper).

Determinism: the batch rows and the noise of each micro-batch are pure functions of (seed, sample
position, rank), so a checkpoint only needs the position, and a resumed run reproduces the loss curve
of an uninterrupted one. The checkpoint also keeps the global torch/numpy/python RNG states.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, StableDiffusionAdapterPipeline, T2IAdapter, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm

from posescene import objective, pyfunc, tracking
from posescene.cache import Cache, caption_key, load_cache, require_columns
from posescene.config import Params
from posescene.errors import ConfigError, InputDataError, TrainingDivergedError
from posescene.io import atomic_path, save_image_atomic, write_json_atomic, write_text_atomic
from posescene.models import BaseModel, check_compatible, load_adapter, load_base, prepare_adapter_input

LOSS_COLUMNS = ("step", "l_diff", "l_bal", "j", "scale_diff", "scale_bal", "lr")
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
}
KEEP_CHECKPOINTS = 2


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
    is_b_row: torch.Tensor  # (rows,) bool: the row's image carries pose B

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
            "is_b_row": self.is_b_row[r].to(device),
        }


def read_pair_rows(path: str | Path) -> dict[str, list]:
    """data/pairs.parquet as column lists (all splits), checked against the contract."""
    from posescene.pairs import read_pairs

    cols = require_columns(read_pairs(path), PAIR_COLUMNS, path, "Rerun the pairs stage.")
    bad = sorted({r for r in cols["row"] if r not in ("A", "B")})
    if bad:
        raise InputDataError(f"{path}: column 'row' must be 'A' or 'B', found {bad}. Rerun the pairs stage.")
    return cols


def person_boxes(lattices_dir: str | Path) -> dict[tuple[str, int], np.ndarray]:
    """(image_id, person) -> keypoint box as fractions of the image (NaN when no person / no points)."""
    from posescene.poses import lattice_arrays, read_lattices

    table = read_lattices(lattices_dir)
    xs, ys = lattice_arrays(table, "x"), lattice_arrays(table, "y")
    keys = zip(table.column("image_id").to_pylist(), table.column("person").to_pylist(), strict=True)
    widths, heights = table.column("width").to_pylist(), table.column("height").to_pylist()
    return {
        (iid, int(p)): objective.keypoint_box(xs[i], ys[i], widths[i], heights[i]) for i, (iid, p) in enumerate(keys)
    }


def load_maps_for(keys: list[tuple[str, int]], maps_dir: str | Path, resolution: int) -> torch.Tensor:
    """Maps of (image_id, person) keys at the model resolution, as uint8 (n, 1, R, R)."""
    from posescene.render import load_maps, map_path

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
        is_b_row=torch.tensor([r == "B" for r in col["row"]]),
    )


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


def micro_batch_generator(seed: int, position: int, rank: int) -> torch.Generator:
    """The noise/timestep RNG of one micro-batch, derived from (seed, position, rank) - stateless."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, position, rank]).generate_state(1)[0]))


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


def run_fingerprint(params: Params) -> str:
    """What a checkpoint must share with this run to be resumed: model, data, seed and the learning setup."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in RESUMABLE_ACROSS}
    spec = {"seed": params.seed, "model": params.model.model_dump(), "render": params.render.model_dump()}
    h = hashlib.sha256(json.dumps({**spec, "train": train}, sort_keys=True).encode())
    h.update(Path(params.pairs.out).read_bytes())
    # The objective's and the loop's code too: a code change retrains instead of silently "resuming" a
    # finished run with old semantics. After a crash, --resume-from still continues across a code fix.
    for module in (objective, sys.modules[__name__]):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------- checkpoints


def checkpoints(root: str | Path, fingerprint: str | None = None) -> list[tuple[int, Path]]:
    """Complete checkpoints (step_<n> dirs; temp dirs of an interrupted write are hidden), by step.

    With ``fingerprint``, only those made by that setup (see :func:`run_fingerprint`).
    """
    found = []
    for path in Path(root).glob("step_*"):
        suffix = path.name[len("step_") :]
        if not (path.is_dir() and suffix.isdigit() and (path / "trainer_state.json").is_file()):
            continue
        if fingerprint is not None:
            try:
                if json.loads((path / "trainer_state.json").read_text()).get("fingerprint") != fingerprint:
                    continue
            except (OSError, json.JSONDecodeError):
                continue
        found.append((int(suffix), path))
    return sorted(found)


def save_checkpoint(
    root: str | Path,
    step: int,
    secondary: T2IAdapter,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    balance: torch.nn.Module,
    accelerator: Accelerator,
    state: dict[str, Any],
) -> Path:
    """Write step_<n>/ atomically (temp dir + rename) and keep only the last KEEP_CHECKPOINTS."""
    path = Path(root) / f"step_{step}"
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        secondary.save_pretrained(tmp / "secondary_adapter", safe_serialization=True)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "balance": balance.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "training_state.pt",
        )
        rng = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())}
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step, "rng": rng}))
    for _, old in checkpoints(root, state["fingerprint"])[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(
    path: str | Path,
    secondary: T2IAdapter,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    balance: torch.nn.Module,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote; returns the trainer state (step, position, ...)."""
    path = Path(path)
    try:
        saved = json.loads((path / "trainer_state.json").read_text())
        weights = T2IAdapter.from_pretrained(path / "secondary_adapter", use_safetensors=True)
        blob = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{path}: not a readable training checkpoint ({exc}).") from exc
    secondary.load_state_dict(weights.state_dict())
    optimizer.load_state_dict(blob["optimizer"])
    lr_scheduler.load_state_dict(blob["lr_scheduler"])
    balance.load_state_dict(blob["balance"])
    if blob["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    restore_rng(saved["rng"])
    return saved


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def restore_rng(rng: dict[str, Any]) -> None:
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = rng["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))


# -------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_grid(
    base: BaseModel,
    adapters: dict[str, T2IAdapter],
    prompt: str,
    maps: torch.Tensor,
    params: Params,
    device: torch.device,
) -> Image.Image:
    """Rows: the pose maps, then one row per adapter; same prompt and initial noise in every cell.

    Built from the loaded components with diffusers' StableDiffusionAdapterPipeline and DDIM, so it shows
    exactly what a user of the saved adapter would get.
    """
    res = params.model.resolution
    scheduler = DDIMScheduler.from_config(base.noise_scheduler.config)
    k = len(maps)
    latent_side = res // base.vae_scale_factor
    g = torch.Generator().manual_seed(params.seed)
    noise = torch.randn((1, base.unet.config.in_channels, latent_side, latent_side), generator=g)
    cond = prepare_adapter_input(maps, params.model.adapter_in_channels, params.model.adapter_invert)
    rows = [np.repeat((maps[:, 0].numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=-1)]
    for adapter in adapters.values():
        was_training = adapter.training
        adapter.eval()
        pipe = StableDiffusionAdapterPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            adapter=adapter,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            prompt=[prompt] * k,
            image=cond.to(device, adapter.dtype),
            latents=noise.expand(k, -1, -1, -1).to(device, base.unet.dtype),
            num_inference_steps=params.train.validation_steps,
            guidance_scale=params.evaluate.guidance_scale,
            height=res,
            width=res,
            output_type="np",
        ).images
        adapter.train(was_training)
        rows.append(np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(np.uint8))
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return Image.fromarray(grid)


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


def write_loss_csv(path: str | Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOSS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buffer.getvalue())


def train(
    params: Params, resume: bool = True, resume_from: str | Path | None = None, progress: bool = True
) -> TrainResult:
    """Fine-tune S-Ad for ``train.steps`` optimizer steps.

    ``resume``: continue from the last checkpoint of the same setup (``False``: discard them, start over).
    ``resume_from``: continue from this checkpoint even if train.lr changed (recovering from a divergence).
    """
    tp = params.train
    out_dir, ckpt_root = Path(tp.out_dir), Path(tp.checkpoint_dir)

    # -- inputs and accelerator: fail early, before any model is loaded
    if tp.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use 'no' or 'bf16' on a CPU.")
    if resume_from is not None and not (Path(resume_from) / "trainer_state.json").is_file():
        raise InputDataError(
            f"{resume_from}: not a training checkpoint (no trainer_state.json). Checkpoints are "
            f"{tp.checkpoint_dir}/step_<n>; pick one that exists."
        )
    _require_inputs(params)
    accelerator = Accelerator(
        mixed_precision=tp.mixed_precision, gradient_accumulation_steps=tp.gradient_accumulation_steps
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world == 1:  # e.g. torchrun on a machine without GPUs and no ACCELERATE_USE_CPU=1
        raise ConfigError(
            f"launched with WORLD_SIZE={launched} but accelerate sees 1 process: every process would train alone "
            "and write the same files. On CPU set ACCELERATE_USE_CPU=1 (docs/operations.md)."
        )
    if tp.mixed_precision == "fp16" and device.type == "cpu":  # CUDA exists but accelerate chose the CPU
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use 'no' or 'bf16' on a CPU.")
    set_seed(params.seed)  # python, numpy, torch (all devices)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[tp.mixed_precision]

    # -- models: frozen SD + P-Ad; S-Ad = a trainable copy of P-Ad
    base = load_base(params.model.base).freeze()
    primary = load_adapter(params.model.primary_adapter)
    check_compatible(
        base, primary, params.model.adapter_in_channels, params.model.resolution, where=params.model.primary_adapter
    )
    secondary = copy.deepcopy(primary).requires_grad_(True).train()
    primary.requires_grad_(False).eval()
    if tp.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()  # recompute U-Net activations in backward: memory for time
    base.to(device, weight_dtype)  # attention uses torch SDPA (diffusers' default processor)
    primary.to(device, weight_dtype)
    in_ch, invert = params.model.adapter_in_channels, params.model.adapter_invert

    # -- data: pairs + cache + maps + masks, loaded once
    pairs = read_pair_rows(params.pairs.out)
    cache = load_cache(params.cache.out_dir, params.model.base, params.model.resolution)
    data = load_train_set(params, pairs, cache, person_boxes(params.poses.out_dir))
    val_prompt, val_maps = validation_inputs(params, pairs)
    n_rows, bs = len(data), tp.batch_size

    # -- optimizer: AdamW on S-Ad (+ the log-variances of uncertainty weighting), linear warmup
    balance = objective.make_balance(tp.balance, tp.running_mean_momentum, tp.lambda_diff).to(device)
    groups = [{"params": list(secondary.parameters()), "weight_decay": tp.weight_decay}]
    if list(balance.parameters()):
        groups.append({"params": list(balance.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=tp.lr)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=tp.warmup_steps)
    secondary, optimizer = accelerator.prepare(secondary, optimizer)
    noise_scheduler = base.noise_scheduler

    # -- resume: the last checkpoint made by the same setup (run_fingerprint), or an explicit one
    fingerprint = run_fingerprint(params)
    ours = checkpoints(ckpt_root, fingerprint)
    if not resume and ours and accelerator.is_main_process:
        # all of them, also those past train.steps: left behind, they would outrank (and prune) the new ones
        accelerator.print(f"--no-resume: removing {len(ours)} checkpoint(s) of this setup in {ckpt_root}")
        for _, old in ours:
            shutil.rmtree(old, ignore_errors=True)
        ours = []
    ours = [(s, p) for s, p in ours if s <= tp.steps]
    accelerator.wait_for_everyone()
    state: dict[str, Any] = {
        "fingerprint": fingerprint,
        "position": 0,
        "history": [],
        "mlflow_run_id": None,
        "step_seconds": 0.0,
        "wall_seconds": 0.0,
    }
    start_step, last_checkpoint = 0, None
    chosen = Path(resume_from) if resume_from is not None else (ours[-1][1] if resume and ours else None)
    if chosen is not None:
        saved = load_checkpoint(
            chosen, accelerator.unwrap_model(secondary), optimizer, lr_scheduler, balance, accelerator
        )
        state.update({k: saved[k] for k in state if k != "fingerprint"})
        start_step, last_checkpoint = int(saved["step"]), chosen
        # an explicit --resume-from may change the learning rate (the fix after a divergence)
        lr_scheduler.base_lrs = [tp.lr] * len(optimizer.param_groups)
        for group, fn in zip(optimizer.param_groups, lr_scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = tp.lr
            group["lr"] = tp.lr * fn(lr_scheduler.last_epoch)
        accelerator.print(f"resuming from {chosen} (step {start_step} of {tp.steps})")

    # -- the loop (only rank 0 tracks, validates and writes)
    main = accelerator.is_main_process
    with tracking.start_run(params, run_id=state["mlflow_run_id"]) if main else contextlib.nullcontext() as run:
        run_id = run.info.run_id if run is not None else None
        state["mlflow_run_id"] = run_id
        trainable = list(accelerator.unwrap_model(secondary).parameters())
        history: list[dict[str, float]] = state["history"]
        position = int(state["position"])
        unlogged: list[dict[str, float]] = []
        bar = tqdm(
            range(start_step + 1, tp.steps + 1),
            initial=start_step,
            total=tp.steps,
            desc="train S-Ad",
            disable=not (progress and main),
        )
        for step in bar:
            t_step = time.perf_counter()
            sums = np.zeros(3)
            lr = optimizer.param_groups[0]["lr"]
            for _ in range(tp.gradient_accumulation_steps):
                # rows and noise: pure functions of (seed, position, rank) -> exact resume
                rows = batch_rows(position, bs * world, n_rows, params.seed)[rank * bs : (rank + 1) * bs]
                g = micro_batch_generator(params.seed, position, rank)
                position += bs * world
                batch = data.batch(rows, device)
                x0 = batch["x0"]
                noise = torch.randn(x0.shape, generator=g).to(device)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(rows),), generator=g).to(device)
                x_t = noise_scheduler.add_noise(x0, noise, t)
                with accelerator.accumulate(secondary):
                    with accelerator.autocast():
                        eps_s, eps_p = predict_two_branches(
                            base.unet,
                            primary,
                            secondary,
                            x_t.to(weight_dtype),
                            t,
                            batch["text"].to(weight_dtype),
                            prepare_adapter_input(batch["map_a"], in_ch, invert).to(weight_dtype),
                            prepare_adapter_input(batch["map_b"], in_ch, invert),
                        )
                    losses = objective.two_branch_losses(
                        noise, eps_s.float(), eps_p.float(), batch["mask"], batch["is_b_row"]
                    )
                    both = accelerator.reduce(torch.stack([losses.l_diff, losses.l_bal]).detach(), "mean")
                    l_diff, l_bal = (float(v) for v in both)
                    if not objective.is_finite(l_diff, l_bal):  # before backward: no bad update is applied
                        raise _diverged(step, f"loss (L_diff={l_diff}, L_bal={l_bal})", lr, last_checkpoint)
                    balance.update(l_diff, l_bal)  # running means see every rank's losses
                    obj = balance(losses.l_diff, losses.l_bal)
                    accelerator.backward(obj.j)
                    if accelerator.sync_gradients:
                        if world > 1:  # the balance's own parameters are not DDP-wrapped: average them here
                            for p in balance.parameters():
                                p.grad = accelerator.reduce(p.grad, "mean")
                        grad_norm = accelerator.clip_grad_norm_(trainable, tp.max_grad_norm)
                        if tp.mixed_precision != "fp16" and not torch.isfinite(torch.as_tensor(grad_norm)):
                            raise _diverged(step, f"gradient norm {float(grad_norm)}", lr, last_checkpoint)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                sums += (l_diff, l_bal, float(obj.j.detach()))
            lr_scheduler.step()
            means = sums / tp.gradient_accumulation_steps
            row = {
                "step": step,
                "l_diff": float(means[0]),
                "l_bal": float(means[1]),
                "j": float(means[2]),
                "scale_diff": obj.scale_diff,
                "scale_bal": obj.scale_bal,
                "lr": lr,
            }
            history.append(row)
            unlogged.append(row)
            state["step_seconds"] += time.perf_counter() - t_step

            if step % tp.log_every == 0 or step == tp.steps:
                bar.set_postfix(j=f"{row['j']:.3f}", l_diff=f"{row['l_diff']:.4f}", l_bal=f"{row['l_bal']:.4f}")
                if run_id is not None:
                    tracking.log_rows(run_id, unlogged)
                unlogged = []
            if (step % tp.validate_every == 0 or step == tp.steps) and main:
                adapters = {"primary": primary, "secondary": accelerator.unwrap_model(secondary)}
                with accelerator.autocast():
                    grid = validation_grid(base, adapters, val_prompt, val_maps, params, device)
                grid_path = out_dir / "validation" / f"step_{step}.png"
                save_image_atomic(grid_path, grid)
                if run_id is not None:
                    mlflow.log_artifact(str(grid_path), "validation")
            state["wall_seconds"] += time.perf_counter() - t_step
            if step % tp.checkpoint_every == 0 or step == tp.steps:
                state["position"] = position
                if main:
                    last_checkpoint = save_checkpoint(
                        ckpt_root,
                        step,
                        accelerator.unwrap_model(secondary),
                        optimizer,
                        lr_scheduler,
                        balance,
                        accelerator,
                        state,
                    )
                accelerator.wait_for_everyone()
        bar.close()

        # -- outputs: the adapter (diffusers format), metrics.json, loss.csv; MLflow artifacts + registry
        adapter_dir = out_dir / "secondary_adapter"
        metrics: dict[str, float] = {}
        version = link = None
        if main:
            with atomic_path(adapter_dir) as tmp:
                accelerator.unwrap_model(secondary).save_pretrained(tmp, safe_serialization=True)
            metrics = final_metrics(history, tp.log_every, state, bs * world * tp.gradient_accumulation_steps)
            write_json_atomic(out_dir / "metrics.json", metrics)
            write_loss_csv(out_dir / "loss.csv", history)
            if run is not None:
                mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
                mlflow.log_artifacts(str(adapter_dir), "secondary_adapter")
                mlflow.log_artifact(str(out_dir / "metrics.json"))
                mlflow.log_artifact(str(out_dir / "loss.csv"))
                version = str(pyfunc.log_and_register(adapter_dir, params))
                link = tracking.run_link(run)
            # which MLflow run/registry version this adapter is: the evaluation's promotion gate checks that
            # the `candidate` it would promote is the adapter it measured
            write_json_atomic(out_dir / "run.json", {"mlflow_run_id": run_id, "model_version": version, "link": link})
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(metrics, out_dir, adapter_dir, run_id, link, version, start_step)


def final_metrics(history: list[dict[str, float]], window: int, state: dict[str, Any], batch: int) -> dict[str, float]:
    """metrics.json: the losses averaged over the last ``window`` steps (single steps are noisy) and timings."""
    last = history[-window:]

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in last])) if last else float("nan")

    return {
        "l_diff": mean("l_diff"),
        "l_bal": mean("l_bal"),
        "j": mean("j"),
        "steps": len(history),
        "batch_size": batch,
        "wall_time_s": round(float(state["wall_seconds"]), 3),  # steps + validation + checkpoints
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
