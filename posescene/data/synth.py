"""PoseScenes: the built-in procedural world (stage 0, ``synth``).

Each *scene instance* (a kind, a time of day, a random layout and palette) is rendered several times
with the same background and a different pose of one articulated person. Captions name the scene, the
time and the action; ground-truth keypoints come in the 18-point order of :mod:`posescene.topology`.
The output is a Hugging Face *imagefolder* (``images/*.png`` + ``metadata.jsonl``), deterministic for a
seed: scene ``i`` depends only on ``(seed, i)``, so growing ``n_scenes`` keeps the earlier scenes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from posescene.errors import ConfigError
from posescene.io import atomic_path
from posescene.topology import INDEX, N_KEYPOINTS

if TYPE_CHECKING:
    from posescene.config import Params

SCENE_KINDS: tuple[str, ...] = (
    "beach", "forest", "city_street", "snowy_mountains", "desert", "park", "indoor_room", "lake",
)  # fmt: skip
SCENE_PHRASES: dict[str, str] = {
    "beach": "on a beach",
    "forest": "in a forest",
    "city_street": "on a city street",
    "snowy_mountains": "in the snowy mountains",
    "desert": "in a desert",
    "park": "in a park",
    "indoor_room": "in a living room",
    "lake": "by a lake",
}
TIMES: tuple[str, ...] = ("morning", "noon", "sunset", "night")
TIME_PHRASES: dict[str, str] = {
    "morning": "in the morning",
    "noon": "at noon",
    "sunset": "at sunset",
    "night": "at night",
}

# Pose library: angles in degrees, 0 = hanging straight down, positive = towards the person's right
# side of the image (their arm swings outwards). Keys: upper arm / forearm / thigh / shin per side,
# plus the pelvis drop (sitting/crouching, in torso lengths) and a whole-body lift (jumping).
POSES: dict[str, dict[str, float]] = {
    "standing": dict(rua=12, rfa=8, lua=-12, lfa=-8, rth=4, rsh=2, lth=-4, lsh=-2),
    "walking": dict(rua=25, rfa=35, lua=-20, lfa=-10, rth=22, rsh=5, lth=-18, lsh=-30),
    "running": dict(rua=55, rfa=110, lua=-45, lfa=-100, rth=45, rsh=-20, lth=-35, lsh=-70),
    "arms_up": dict(rua=160, rfa=170, lua=-160, lfa=-170, rth=6, rsh=3, lth=-6, lsh=-3),
    "waving": dict(rua=110, rfa=160, lua=-10, lfa=-5, rth=5, rsh=2, lth=-5, lsh=-2),
    "sitting": dict(rua=20, rfa=60, lua=-20, lfa=-60, rth=80, rsh=0, lth=75, lsh=-5, drop=0.55),
    "jumping": dict(rua=135, rfa=150, lua=-135, lfa=-150, rth=30, rsh=-10, lth=-30, lsh=10, lift=0.25),
    "crouching": dict(rua=40, rfa=80, lua=-40, lfa=-80, rth=70, rsh=-60, lth=-70, lsh=60, drop=0.45),
    "pointing": dict(rua=90, rfa=90, lua=-10, lfa=-5, rth=5, rsh=2, lth=-5, lsh=-2),
    "dancing": dict(rua=140, rfa=100, lua=-60, lfa=-150, rth=35, rsh=-25, lth=-8, lsh=-2),
}
ACTION_PHRASES: dict[str, str] = {
    "standing": "standing", "walking": "walking", "running": "running", "arms_up": "raising both arms",
    "waving": "waving", "sitting": "sitting", "jumping": "jumping", "crouching": "crouching",
    "pointing": "pointing", "dancing": "dancing",
}  # fmt: skip
# The actions each scene kind typically shows (issue 23: in real photos poses go with scenes - crouching and
# jumping in snow, sitting indoors, running in streets and parks). Two per kind, so same-scene pairs exist
# in a fully coupled world; every action is typical of one or two kinds. With ``coupling`` c a scene draws
# its actions from its kind's row with probability c, else uniformly from every action as before.
TYPICAL_ACTIONS: dict[str, tuple[str, ...]] = {
    "beach": ("arms_up", "dancing"),
    "forest": ("walking", "pointing"),
    "city_street": ("walking", "running"),
    "snowy_mountains": ("crouching", "jumping"),
    "desert": ("standing", "pointing"),
    "park": ("running", "waving"),
    "indoor_room": ("sitting", "dancing"),
    "lake": ("sitting", "waving"),
}
CLOTHES: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30), "blue": (30, 60, 200), "yellow": (235, 200, 30), "green": (30, 150, 50),
    "purple": (130, 40, 160), "orange": (240, 120, 20), "white": (235, 235, 235), "black": (25, 25, 25),
}  # fmt: skip
SKIN = ((241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))

SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased limbs even at 64 px


@dataclass(frozen=True)
class Person:
    """A posed person in image pixels: 18 keypoints (NaN when outside the image) and its look."""

    action: str
    keypoints: np.ndarray  # (18, 2) float, pixels
    height: float
    shirt: str
    skin: tuple[int, int, int]


@dataclass(frozen=True)
class SceneSpec:
    scene_id: str
    kind: str
    time: str
    rng_seed: int


def _rgb(c: np.ndarray | tuple[float, ...]) -> tuple[int, int, int]:
    a = np.clip(np.asarray(c, dtype=np.float64), 0, 255)
    return int(a[0]), int(a[1]), int(a[2])


def _sky(time: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    top, bottom = {
        "morning": ((120, 170, 230), (230, 220, 200)),
        "noon": ((40, 110, 230), (150, 200, 250)),
        "sunset": ((60, 50, 120), (250, 140, 60)),
        "night": ((5, 8, 30), (30, 40, 80)),
    }[time]
    jitter = rng.normal(0, 10, 3)
    return np.array(top) + jitter, np.array(bottom) + jitter


def _vertical_gradient(img: np.ndarray, y0: int, y1: int, top: np.ndarray, bottom: np.ndarray) -> None:
    t = np.linspace(0, 1, max(y1 - y0, 1))[:, None]
    img[y0:y1] = (top[None] * (1 - t) + bottom[None] * t)[:, None, :]


def _light(time: str) -> float:
    return {"morning": 0.95, "noon": 1.0, "sunset": 0.8, "night": 0.35}[time]


def _shade(color: tuple[float, float, float] | np.ndarray, time: str) -> tuple[int, int, int]:
    c = np.asarray(color, dtype=np.float64) * _light(time)
    if time == "sunset":
        c = c * np.array([1.1, 0.9, 0.8])
    elif time == "night":
        c = c * np.array([0.8, 0.85, 1.2])
    return _rgb(c)


def _draw_sky_objects(d: ImageDraw.ImageDraw, s: int, horizon: int, time: str, rng: np.random.Generator) -> None:
    if time == "night":
        for _ in range(int(rng.integers(15, 40))):
            x, y = rng.uniform(0, s), rng.uniform(0, horizon * 0.9)
            r = s * 0.004
            d.ellipse([x - r, y - r, x + r, y + r], fill=(240, 240, 255))
        x, y, r = rng.uniform(0.1, 0.9) * s, rng.uniform(0.08, 0.25) * s, s * 0.05
        d.ellipse([x - r, y - r, x + r, y + r], fill=(235, 235, 210))
    else:
        sun_y = {"morning": 0.3, "noon": 0.1, "sunset": 0.42}[time] * horizon / 0.5
        x, r = rng.uniform(0.1, 0.9) * s, s * 0.06
        col = (255, 240, 150) if time != "sunset" else (255, 120, 40)
        d.ellipse([x - r, sun_y - r, x + r, sun_y + r], fill=col)
        for _ in range(int(rng.integers(0, 3))):
            cx, cy, w = rng.uniform(0, s), rng.uniform(0.05, 0.3) * s, rng.uniform(0.1, 0.25) * s
            cc = _shade((250, 250, 250), time)
            for k in range(3):
                ox = cx + (k - 1) * w * 0.35
                d.ellipse([ox - w * 0.3, cy - w * 0.15, ox + w * 0.3, cy + w * 0.15], fill=cc)


def _background(spec: SceneSpec, s: int) -> Image.Image:
    """Render one scene instance's background (s x s, RGB). Deterministic for the spec."""
    rng = np.random.default_rng(spec.rng_seed)
    kind, time = spec.kind, spec.time
    img = np.zeros((s, s, 3), dtype=np.float64)
    horizon = int(s * rng.uniform(0.4, 0.55))
    if kind != "indoor_room":
        top, bottom = _sky(time, rng)
        _vertical_gradient(img, 0, horizon, top, bottom)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    if kind != "indoor_room":
        _draw_sky_objects(d, s, horizon, time, rng)

    def ground(color: tuple[int, int, int], y0: int = horizon) -> None:
        d.rectangle([0, y0, s, s], fill=_shade(np.array(color) + rng.normal(0, 8, 3), time))

    if kind == "beach":
        sea_end = horizon + int(s * rng.uniform(0.12, 0.2))
        d.rectangle([0, horizon, s, sea_end], fill=_shade((30 + rng.normal(0, 10), 100, 180), time))
        for k in range(4):  # waves
            y = horizon + (sea_end - horizon) * (k + 1) / 5
            d.line([(0, y), (s, y)], fill=_shade((180, 210, 240), time), width=max(1, s // 128))
        ground((220, 200, 150), sea_end)
        if rng.random() < 0.7:  # a parasol
            x = rng.uniform(0.1, 0.9) * s
            d.line([(x, sea_end + s * 0.05), (x, s * 0.95)], fill=_shade((90, 60, 40), time), width=s // 64)
            d.pieslice(
                [x - s * 0.1, sea_end - s * 0.02, x + s * 0.1, sea_end + s * 0.12],
                180,
                360,
                fill=_shade(CLOTHES[str(rng.choice(list(CLOTHES)))], time),
            )
    elif kind == "forest":
        ground((40, 90, 35))
        for _ in range(int(rng.integers(6, 11))):
            x = rng.uniform(0, s)
            w = s * rng.uniform(0.03, 0.06)
            top = horizon - s * rng.uniform(0.1, 0.35)
            base = horizon + s * rng.uniform(0.0, 0.15)
            d.rectangle([x - w / 2, top, x + w / 2, base], fill=_shade((80, 50, 25), time))
            r = s * rng.uniform(0.1, 0.17)
            d.ellipse(
                [x - r, top - r * 1.2, x + r, top + r * 0.6],
                fill=_shade((20 + rng.normal(0, 8), 110 + rng.normal(0, 15), 30), time),
            )
    elif kind == "city_street":
        x = -rng.uniform(0, s * 0.1)
        while x < s:
            w = s * rng.uniform(0.15, 0.3)
            h = s * rng.uniform(0.2, 0.45)
            col = np.array([rng.uniform(90, 170)] * 3) + rng.normal(0, 15, 3)
            d.rectangle([x, horizon - h, x + w, horizon + s * 0.1], fill=_shade(col, time))
            win = (250, 230, 120) if time == "night" else _shade((150, 190, 220), time)
            for wy in np.arange(horizon - h + s * 0.04, horizon, s * 0.07):
                for wx in np.arange(x + s * 0.03, x + w - s * 0.03, s * 0.06):
                    d.rectangle([wx, wy, wx + s * 0.025, wy + s * 0.03], fill=win)
            x += w + s * rng.uniform(0.0, 0.03)
        ground((70, 70, 75), int(horizon + s * 0.1))
        d.rectangle([0, horizon + s * 0.1, s, horizon + s * 0.13], fill=_shade((160, 160, 160), time))
        for lx in np.arange(0, s, s * 0.16):
            d.rectangle([lx, s * 0.9, lx + s * 0.08, s * 0.91], fill=_shade((240, 240, 240), time))
    elif kind == "snowy_mountains":
        for _ in range(int(rng.integers(2, 4))):
            cx, w, h = rng.uniform(0, s), s * rng.uniform(0.3, 0.6), s * rng.uniform(0.2, 0.4)
            d.polygon([(cx - w, horizon), (cx, horizon - h), (cx + w, horizon)], fill=_shade((110, 110, 130), time))
            d.polygon(
                [(cx - w * 0.3, horizon - h * 0.7), (cx, horizon - h), (cx + w * 0.3, horizon - h * 0.7)],
                fill=_shade((250, 250, 255), time),
            )
        ground((240, 242, 250))
        for _ in range(int(rng.integers(1, 4))):  # pines
            x, h = rng.uniform(0, s), s * rng.uniform(0.1, 0.2)
            y = horizon + s * rng.uniform(0.0, 0.08)
            d.polygon([(x - h * 0.3, y), (x, y - h), (x + h * 0.3, y)], fill=_shade((20, 70, 40), time))
    elif kind == "desert":
        ground((225, 170, 90))
        for k in range(3):
            y = horizon + s * 0.08 * (k + 1)
            pts = [(x, y + s * 0.03 * math.sin(x / s * 6 + rng.uniform(0, 6))) for x in np.linspace(0, s, 24)]
            d.polygon([*pts, (s, s), (0, s)], fill=_shade((235 - 12 * k, 160 - 10 * k, 80), time))
        for _ in range(int(rng.integers(1, 4))):  # cacti
            x, h = rng.uniform(0, s), s * rng.uniform(0.1, 0.2)
            y = horizon + s * rng.uniform(0.05, 0.2)
            w = s * 0.02
            d.rectangle([x - w, y - h, x + w, y], fill=_shade((40, 120, 50), time))
            d.rectangle([x - w * 4, y - h * 0.7, x - w, y - h * 0.6], fill=_shade((40, 120, 50), time))
    elif kind == "park":
        ground((90, 170, 70))
        d.polygon(
            [(s * 0.4, horizon), (s * 0.6, horizon), (s * 0.9, s), (s * 0.1, s)], fill=_shade((200, 180, 140), time)
        )
        for _ in range(int(rng.integers(2, 5))):
            x = rng.uniform(0, s)
            r = s * rng.uniform(0.07, 0.12)
            d.rectangle(
                [x - s * 0.015, horizon - r, x + s * 0.015, horizon + s * 0.03], fill=_shade((90, 60, 30), time)
            )
            d.ellipse([x - r, horizon - r * 2.6, x + r, horizon - r * 0.6], fill=_shade((50, 140, 50), time))
        if rng.random() < 0.6:  # a bench
            x = rng.uniform(0.1, 0.7) * s
            d.rectangle([x, horizon + s * 0.05, x + s * 0.2, horizon + s * 0.07], fill=_shade((120, 80, 40), time))
    elif kind == "indoor_room":
        wall = np.array(rng.choice([(220, 210, 180), (180, 200, 220), (200, 220, 190), (230, 190, 190)]))
        wall = wall + rng.normal(0, 8, 3)
        lamp = 0.9 if time == "night" else 1.0
        d.rectangle([0, 0, s, horizon], fill=_rgb(wall * lamp))
        d.rectangle([0, horizon, s, s], fill=_rgb(np.array([140, 95, 60]) * lamp + rng.normal(0, 8, 3)))
        for fy in np.arange(horizon, s, s * 0.08):  # floorboards
            d.line([(0, fy), (s, fy)], fill=_rgb(np.array([110, 75, 45]) * lamp), width=max(1, s // 128))
        wx, ww = rng.uniform(0.05, 0.6) * s, s * rng.uniform(0.2, 0.3)
        sky_top, _ = _sky(time, rng)
        d.rectangle([wx, horizon * 0.2, wx + ww, horizon * 0.75], fill=_rgb(sky_top))
        d.rectangle([wx, horizon * 0.2, wx + ww, horizon * 0.75], outline=(250, 250, 250), width=max(1, s // 64))
        sx = rng.uniform(0.0, 0.7) * s  # a sofa
        sofa = CLOTHES[str(rng.choice(list(CLOTHES)))]
        d.rectangle([sx, horizon - s * 0.08, sx + s * 0.3, horizon + s * 0.06], fill=_rgb(np.array(sofa) * 0.8 * lamp))
    elif kind == "lake":
        far = horizon - s * rng.uniform(0.04, 0.1)
        d.polygon(
            [(0, horizon)]
            + [(x, far + s * 0.04 * math.sin(x / s * 5 + rng.uniform(0, 6))) for x in np.linspace(0, s, 16)]
            + [(s, horizon)],
            fill=_shade((40, 90, 60), time),
        )
        water_end = horizon + int(s * rng.uniform(0.15, 0.25))
        d.rectangle([0, horizon, s, water_end], fill=_shade((60, 120, 170), time))
        for k in range(3):
            y = horizon + (water_end - horizon) * (k + 1) / 4
            x0 = rng.uniform(0, s * 0.6)
            d.line([(x0, y), (x0 + s * 0.3, y)], fill=_shade((170, 200, 230), time), width=max(1, s // 128))
        ground((100, 150, 70), water_end)
    return pil


def _pose_person(rng: np.random.Generator, action: str, s: int) -> tuple[np.ndarray, float]:
    """Keypoints (18, 2) in pixels for an action with jitter, position and scale."""
    p = POSES[action]
    height = s * rng.uniform(0.42, 0.62)  # standing height in pixels
    head = height * 0.13
    torso = height * 0.32
    upper_arm, forearm = height * 0.17, height * 0.15
    thigh, shin = height * 0.24, height * 0.23
    shoulder_w, hip_w = height * 0.2, height * 0.12
    facing = rng.choice([-1.0, 1.0])  # mirror so that left/right-handed poses both appear

    def jit(deg: float) -> float:
        return math.radians(deg + rng.normal(0, 8))

    feet_y = s * rng.uniform(0.86, 0.96)
    drop = p.get("drop", 0.0) * torso
    lift = p.get("lift", 0.0) * height
    pelvis_y = feet_y - (thigh + shin) - lift + drop
    cx = s * rng.uniform(0.28, 0.72)
    lean = jit(0) * 0.5
    neck = np.array([cx + torso * math.sin(lean), pelvis_y - torso * math.cos(lean)])
    pelvis = np.array([cx, pelvis_y])
    kp = np.full((N_KEYPOINTS, 2), np.nan)

    def limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        # angle 0 = straight down; positive swings to the image right for the right side (times facing)
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    kp[INDEX["neck"]] = neck
    for side, sign in (("r", 1.0), ("l", -1.0)):
        sh = neck + np.array([sign * facing * shoulder_w / 2, head * 0.1])
        hip = pelvis + np.array([sign * facing * hip_w / 2, 0.0])
        ua = jit(p[f"{side}ua"]) * facing
        el = limb(sh, ua, upper_arm)
        wr = limb(el, ua + jit(p[f"{side}fa"] - p[f"{side}ua"]) * facing * 0.6, forearm)
        th = jit(p[f"{side}th"]) * facing
        kn = limb(hip, th, thigh)
        an = limb(kn, jit(p[f"{side}sh"]) * facing, shin)
        for name, pt in (("shoulder", sh), ("elbow", el), ("wrist", wr), ("hip", hip), ("knee", kn), ("ankle", an)):
            kp[INDEX[f"{side}_{name}"]] = pt
    head_c = neck + np.array([0.0, -head * 0.9])
    kp[INDEX["nose"]] = head_c + np.array([facing * head * 0.15, head * 0.1])
    for side, sign in (("r", 1.0), ("l", -1.0)):
        kp[INDEX[f"{side}_eye"]] = head_c + np.array([sign * facing * head * 0.25, -head * 0.15])
        kp[INDEX[f"{side}_ear"]] = head_c + np.array([sign * facing * head * 0.5, 0.0])
    return kp, height


def _draw_person(pil: Image.Image, person: Person, time: str, scale: float) -> None:
    d = ImageDraw.Draw(pil)
    kp = person.keypoints * scale
    h = person.height * scale
    shirt = _shade(CLOTHES[person.shirt], time)
    pants = _shade((40, 50, 90), time)
    skin = _shade(person.skin, time)
    w_limb = max(2, int(h * 0.065))

    def seg(a: str, b: str, color: tuple[int, int, int], width: int) -> None:
        pa, pb = kp[INDEX[a]], kp[INDEX[b]]
        d.line([tuple(pa), tuple(pb)], fill=color, width=width)
        r = width / 2
        for p in (pa, pb):
            d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=color)

    # far-side limbs first, then torso, then near-side limbs, then head
    for side in ("l", "r"):
        seg(f"{side}_hip", f"{side}_knee", pants, int(w_limb * 1.3))
        seg(f"{side}_knee", f"{side}_ankle", pants, int(w_limb * 1.2))
    torso = [kp[INDEX["r_shoulder"]], kp[INDEX["l_shoulder"]], kp[INDEX["l_hip"]], kp[INDEX["r_hip"]]]
    d.polygon([tuple(p) for p in torso], fill=shirt)
    seg("r_shoulder", "l_shoulder", shirt, w_limb)
    for side in ("l", "r"):
        seg(f"{side}_shoulder", f"{side}_elbow", shirt, w_limb)
        seg(f"{side}_elbow", f"{side}_wrist", skin, int(w_limb * 0.85))
    head_c = (kp[INDEX["r_ear"]] + kp[INDEX["l_ear"]]) / 2
    r = h * 0.075
    d.ellipse([head_c[0] - r, head_c[1] - r, head_c[0] + r, head_c[1] + r], fill=skin)
    d.chord(
        [head_c[0] - r, head_c[1] - r * 1.05, head_c[0] + r, head_c[1] + r * 0.6],
        180,
        360,
        fill=_shade((50, 30, 20), time),
    )


def scene_specs(n_scenes: int, seed: int, first_scene: int = 0) -> list[SceneSpec]:
    """Scenes ``first_scene .. first_scene + n_scenes - 1`` of the world (kinds cycle, so every kind is equally
    represented). Scene ``i`` depends only on ``(seed, i)``: disjoint index ranges are disjoint scenes."""
    specs = []
    for i in range(first_scene, first_scene + n_scenes):
        rng = np.random.default_rng([seed, i, 0])
        kind = SCENE_KINDS[i % len(SCENE_KINDS)]
        time = TIMES[int(rng.integers(len(TIMES)))]
        specs.append(SceneSpec(scene_id=f"s{i:05d}", kind=kind, time=time, rng_seed=int(rng.integers(2**31))))
    return specs


def is_typical(kind: str, action: str) -> bool:
    """Whether ``action`` is one of the actions scenes of ``kind`` typically show (``TYPICAL_ACTIONS``)."""
    return action in TYPICAL_ACTIONS[kind]


def kinds_typical_of(action: str) -> tuple[str, ...]:
    """The scene kinds of which ``action`` is typical (one or two)."""
    return tuple(k for k in SCENE_KINDS if is_typical(k, action))


def caption_for(kind: str, time: str, action: str, shirt: str | None, *, name_scene: bool = True) -> str:
    """The scene's caption; ``name_scene=False`` leaves the scene phrase out, as many real captions do."""
    who = f"a person in a {shirt} shirt" if shirt else "a person"
    where = f" {SCENE_PHRASES[kind]}" if name_scene else ""
    return f"{who} {ACTION_PHRASES[action]}{where} {TIME_PHRASES[time]}"


def without_actions(caption: str) -> str:
    """``caption`` with every action phrase of :data:`ACTION_PHRASES` left out, whitespace collapsed.

    Training's ``train.caption_actions: false``: a training row does not know its image's action, so every
    phrase is removed (the longest first: "raising both arms" before a shorter phrase inside it could match);
    evaluation.heldout.without_action removes the one action it knows, with the same word boundaries.
    """
    for phrase in sorted(ACTION_PHRASES.values(), key=len, reverse=True):
        caption = re.sub(rf"\b{re.escape(phrase)}\b", " ", caption)
    return re.sub(r"\s+", " ", caption).strip()


def without_scene(caption: str, kind: str) -> str:
    """``caption`` with the scene phrase of ``kind`` left out (the caption ``name_scene=False`` gives)."""
    phrase = f" {SCENE_PHRASES[kind]} "
    if phrase not in caption:
        raise ValueError(f"caption {caption!r} does not name the scene {kind!r}")
    return caption.replace(phrase, " ", 1)


def _coupled_actions(spec: SceneSpec, poses_per_scene: int, coupling: float) -> list[str] | None:
    """The scene's actions drawn from its kind's typical ones, with probability ``coupling``; None otherwise.

    A stream of its own (``[rng_seed, 2]``), so that the rest of the scene (layout, clothes, jitter) draws
    exactly what it draws in the independent world, and ``coupling == 0`` is that world bit for bit."""
    if coupling <= 0:
        return None
    rng = np.random.default_rng([spec.rng_seed, 2])
    if rng.random() >= coupling:
        return None
    typical = list(TYPICAL_ACTIONS[spec.kind])
    actions = rng.permutation(typical)[:poses_per_scene].tolist()
    while len(actions) < poses_per_scene:
        actions.append(str(rng.choice(typical)))
    return actions


def render_scene(
    spec: SceneSpec, poses_per_scene: int, size: int, coupling: float
) -> list[tuple[Image.Image, Person, str]]:
    """All images of one scene instance: (image, person, caption) per pose, same background.

    ``coupling`` in [0, 1]: the probability that the scene shows only actions typical of its kind."""
    big = size * SUPERSAMPLE
    background = _background(spec, big)
    rng = np.random.default_rng([spec.rng_seed, 1])
    actions = rng.permutation(list(POSES))[:poses_per_scene].tolist()
    while len(actions) < poses_per_scene:
        actions.append(str(rng.choice(list(POSES))))
    actions = _coupled_actions(spec, poses_per_scene, coupling) or actions
    shirt = str(rng.choice(list(CLOTHES)))
    skin = SKIN[int(rng.integers(len(SKIN)))]
    name_shirt = rng.random() < 0.5
    out = []
    for action in actions:
        kp, height = _pose_person(rng, action, size)
        person = Person(action=action, keypoints=kp, height=height, shirt=shirt, skin=skin)
        canvas = background.copy()
        _draw_person(canvas, person, spec.time, SUPERSAMPLE)
        image = canvas.resize((size, size), Image.Resampling.BOX)
        inside = (kp >= 0).all(axis=1) & (kp < size).all(axis=1)
        kp = np.where(inside[:, None], kp, np.nan)
        person = Person(action=action, keypoints=kp, height=height, shirt=shirt, skin=skin)
        out.append((image, person, caption_for(spec.kind, spec.time, action, shirt if name_shirt else None)))
    return out


def _points_or_null(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 3) for v in values]


def generate(
    out_dir: str | Path,
    n_scenes: int,
    poses_per_scene: int,
    size: int,
    seed: int,
    *,
    first_scene: int,
    coupling: float,
    progress: bool = True,
    on_scene: Callable[[int], None] | None = None,
) -> Path:
    """Write the PoseScenes imagefolder to ``out_dir`` atomically (the old one is replaced whole).

    Every row records ``synth_seed`` and ``scene_index``, so a consumer can check that its scenes are disjoint
    from the scenes a model was trained on (``models/world/training_data.json``), and ``typical_action``:
    whether its action is typical of its scene's kind (``TYPICAL_ACTIONS``; ``coupling`` sets how often).
    """
    out_dir = Path(out_dir)
    specs = scene_specs(n_scenes, seed, first_scene)
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        rows = []
        for spec in tqdm(specs, desc="synth scenes", unit="scene", disable=not progress):
            for k, (image, person, caption) in enumerate(render_scene(spec, poses_per_scene, size, coupling)):
                name = f"images/{spec.scene_id}_p{k}.png"
                image.save(tmp / name, format="PNG", optimize=False)
                rows.append({
                    "file_name": name,
                    "text": caption,
                    "scene_id": spec.scene_id,
                    "synth_seed": seed,
                    "scene_index": int(spec.scene_id[1:]),
                    "scene_kind": spec.kind,
                    "time_of_day": spec.time,
                    "action": person.action,
                    "typical_action": is_typical(spec.kind, person.action),
                    "keypoints": {"x": _points_or_null(person.keypoints[:, 0]),
                                  "y": _points_or_null(person.keypoints[:, 1])},
                })  # fmt: skip
            if on_scene:
                on_scene(1)
        with open(tmp / "metadata.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return out_dir


@dataclass(frozen=True)
class SynthSummary:
    """What the ``synth`` stage wrote, for logs, the Prefect artifact and the CLI."""

    out_dir: str
    seed: int
    first_scene: int
    scenes: int
    images: int
    size: int
    coupling: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_coupling(params: Params) -> float:
    """``synth.coupling``, where ``null`` is the coupling of the world's own training data (``training_data.json``
    in ``world.shipped_dir``; a world that records none trained on independent scenes), so the pipeline's data go
    with the world's primary and one param (``world.shipped_dir``) switches both. Read when the synth stage runs,
    not when params are parsed, so stages that draw no data need no world record."""
    if params.synth.coupling is not None:
        return params.synth.coupling
    record = Path(params.world.shipped_dir) / "training_data.json"
    if not record.is_file():
        raise ConfigError(
            f"synth.coupling: null means the built-in world's coupling, read from {record}, which is missing: "
            "set synth.coupling to a number in [0, 1] or world.shipped_dir to a world directory"
        )
    try:
        coupling = float(json.loads(record.read_text()).get("coupling", 0.0))
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{record}: not a world's training record ({exc}); synth.coupling: null reads it") from None
    if not 0.0 <= coupling <= 1.0:
        raise ConfigError(f"{record}: coupling {coupling} is outside [0, 1]")
    return coupling


def synth(params: Params, *, progress: bool = True) -> SynthSummary:
    """Stage ``synth``: the PoseScenes imagefolder ``synth.out_dir`` from the ``synth`` section and ``seed``."""
    p = params.synth
    coupling = data_coupling(params)
    path = generate(
        p.out_dir,
        p.n_scenes,
        p.poses_per_scene,
        p.size,
        params.seed,
        first_scene=p.first_scene,
        coupling=coupling,
        progress=progress,
    )
    return SynthSummary(
        out_dir=str(path),
        seed=params.seed,
        first_scene=p.first_scene,
        scenes=p.n_scenes,
        images=p.n_scenes * p.poses_per_scene,
        size=p.size,
        coupling=coupling,
    )
