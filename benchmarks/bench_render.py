"""Grayscale map rendering: the vectorised ``render_lattice`` against a per-pixel Python reference.

The reference is the literal reading of docs/method.md step 2 (visit every pixel, ink it when it lies within
``radius`` of a lattice point). Both run in this one process on the same lattices; the script checks the
maps are identical and reports the speed ratio.

    python benchmarks/bench_render.py [--maps 50] [--size 512] [--radius 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from posescene.data.render import lattice_pixels, render_lattice
from posescene.io import write_json_atomic


def render_reference(x_norm: np.ndarray, y_norm: np.ndarray, u: int, radius: int) -> np.ndarray:
    """Per-pixel loop: a pixel is ink when some present lattice point is within ``radius`` (disc)."""
    pixels, present = lattice_pixels(x_norm, y_norm, u)
    points = [tuple(p) for p in pixels[present]]
    canvas = np.full((u, u), 255, dtype=np.uint8)
    for r in range(u):
        for c in range(u):
            for pr, pc in points:
                if (r - pr) ** 2 + (c - pc) ** 2 <= radius * radius:
                    canvas[r, c] = 0
                    break
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/render.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    lattices = [(rng.uniform(0, 1, 18), rng.uniform(0, 1, 18)) for _ in range(args.maps)]

    start = time.perf_counter()
    fast = [render_lattice(x, y, args.size, radius=args.radius, limbs=False) for x, y in lattices]
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = [render_reference(x, y, args.size, args.radius) for x, y in lattices]
    t_slow = time.perf_counter() - start

    identical = all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    result = {
        "maps": args.maps,
        "size": args.size,
        "radius": args.radius,
        "vectorised_ms_per_map": 1000 * t_fast / args.maps,
        "reference_ms_per_map": 1000 * t_slow / args.maps,
        "speedup": t_slow / t_fast,
        "identical_maps": identical,
        "machine": platform.processor() or platform.machine(),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    if not identical:
        raise SystemExit("vectorised and reference maps differ")


if __name__ == "__main__":
    main()
