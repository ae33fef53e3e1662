"""The world's data: PoseScenes scenes rendered in memory, their lattice maps and caption policy, the frozen text
states of the captions, and the scene ranges each part trains and is measured on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BertModel

from posescene.data.render import render_lattice
from posescene.data.synth import SCENE_KINDS, SCENE_PHRASES, render_scene, scene_specs, without_scene
from posescene.evaluation.heldout import without_action
from posescene.lattice import normalise
from posescene.world.architectures import minilm_dir, world_tokenizer


@dataclass
class WorldData:
    """PoseScenes images with everything the bootstrap needs, in memory (a few tens of MB at 64 px)."""

    images: np.ndarray  # (N, S, S, 3) uint8
    keypoints: np.ndarray  # (N, 18, 2) float32 pixels, NaN missing
    captions: list[str]
    kinds: np.ndarray  # (N,) int64 index into SCENE_KINDS
    maps: np.ndarray  # (N, S, S) uint8 lattice maps (docs/method.md step 2)
    actions: list[str]  # the action of each image's person (synth.POSES)
    # each image's caption naming its own scene (the caption policy's action rule only): what the base model's
    # rows of the joint stage read under bootstrap.caption_policy_rows: adapter
    true_captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


# held-out scenes are always independent with every caption naming its scene: they hold typical and atypical
# pose-scene pairs alike, whatever the world trained on (the pull is measured on the atypical ones)
HELD_OUT_POLICY: dict[str, float | bool] = {
    "coupling": 0.0, "sceneless_captions": 0.0, "mismatched_captions": 0.0, "caption_actions": True,
}  # fmt: skip


def make_data(
    first_scene: int, n_scenes: int, poses: int, size: int, seed: int, beta: float, radius: int, desc: str,
    coupling: float, sceneless_captions: float, mismatched_captions: float, caption_actions: bool,
) -> WorldData:  # fmt: skip
    """Render scenes ``first_scene .. first_scene + n_scenes - 1`` (scene i depends only on (seed, i)).

    ``coupling``: the probability a scene shows only its kind's typical actions (``synth.TYPICAL_ACTIONS``);
    ``sceneless_captions``: the share of captions without the scene phrase *and* the action phrase (in a coupled
    world the action's words name the scene too, so the text would carry it instead of the pose), drawn per
    image from its own stream ``(seed, i, 3)`` so the images are those of the same scenes with every caption kept;
    ``mismatched_captions``: the share whose scene phrase names another kind (web captions are often wrong about
    the place), the next slice of the same draw, the other kind from stream ``(seed, i, 4)``, so that where text
    and pose disagree the image follows the pose; ``caption_actions=False``: no caption names the action (the
    form the evaluation's captions take), so the action's words cannot carry the scene either."""
    specs = scene_specs(first_scene + n_scenes, seed)[first_scene:]
    images, kps, caps, kinds, maps, actions, true_caps = [], [], [], [], [], [], []
    for spec in tqdm(specs, desc=desc, unit="scene"):
        draw = np.random.default_rng([seed, int(spec.scene_id[1:]), 3]).random(poses)
        drop = draw < sceneless_captions
        wrong = ~drop & (draw < sceneless_captions + mismatched_captions)
        shift = np.random.default_rng([seed, int(spec.scene_id[1:]), 4]).integers(1, len(SCENE_KINDS), poses)
        other = [SCENE_KINDS[(SCENE_KINDS.index(spec.kind) + int(d)) % len(SCENE_KINDS)] for d in shift]
        for k, (image, person, caption) in enumerate(render_scene(spec, poses, size, coupling)):
            images.append(np.asarray(image, dtype=np.uint8))
            kp = person.keypoints.astype(np.float32)
            kps.append(kp)
            true_caps.append(caption if caption_actions else without_action(caption, person.action))
            if drop[k]:
                caption = without_action(without_scene(caption, spec.kind), person.action)
            elif wrong[k]:
                caption = caption.replace(f" {SCENE_PHRASES[spec.kind]} ", f" {SCENE_PHRASES[other[k]]} ", 1)
            caps.append(caption if caption_actions else without_action(caption, person.action))
            kinds.append(SCENE_KINDS.index(spec.kind))
            actions.append(person.action)
            xn, yn = normalise(kp[:, 0], kp[:, 1], size, size, beta)
            maps.append(render_lattice(xn, yn, size, radius=radius, limbs=False))
    return WorldData(np.stack(images), np.stack(kps), caps, np.asarray(kinds), np.stack(maps), actions, true_caps)


def concat(*parts: WorldData | None) -> WorldData:
    """The rows of several data sets in order (None: left out)."""
    ps = [p for p in parts if p is not None]
    return WorldData(
        np.concatenate([p.images for p in ps]),
        np.concatenate([p.keypoints for p in ps]),
        [c for p in ps for c in p.captions],
        np.concatenate([p.kinds for p in ps]),
        np.concatenate([p.maps for p in ps]),
        [a for p in ps for a in p.actions],
        [c for p in ps for c in p.true_captions],
    )


@torch.no_grad()
def encode_texts(
    captions: Sequence[str], batch_size: int = 256, device: torch.device | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Frozen MiniLM token states of the unique captions, exactly as diffusers' ``encode_prompt`` computes
    them (padding to max_length, ``text_encoder(input_ids)[0]``, no attention mask). Row 0 is "".
    The states come back on the CPU (the batches are drawn there)."""
    tokenizer = world_tokenizer()
    encoder = BertModel.from_pretrained(minilm_dir(), use_safetensors=True).eval().to(device or "cpu")
    unique = [""] + sorted(set(captions) - {""})
    states = []
    for i in tqdm(range(0, len(unique), batch_size), desc="text states", unit="batch"):
        tok = tokenizer(
            unique[i : i + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        states.append(encoder(tok.input_ids.to(encoder.device))[0].cpu())
    return torch.cat(states), unique


# ----------------------------------------------------------------------------------------------- scene ranges
# Scenes are named by half-open [start, stop) ranges of indices into synth.scene_specs(n, seed).


def merge_ranges(ranges: Sequence[Sequence[int]]) -> list[list[int]]:
    """Sorted union of half-open [start, stop) ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges if int(b) > int(a)):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def overlaps(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    return any(lo1 < hi2 and lo2 < hi1 for lo1, hi1 in a for lo2, hi2 in b)
