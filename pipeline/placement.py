"""Objects placed on a larger canvas among distractor fragments, with exact ground truth: the
cluttered-MNIST construction of Jaderberg et al. 2015 ("Spatial Transformer Networks";
deepmind/mnist-cluttered), for any uint8 image pool. Pure numpy; no torch, no files.

Each canvas holds one *target* image of the pool, resized (nearest neighbour, so its pixels
stay its own) to a side drawn uniformly from ``object_sizes`` and placed at a uniform random
position, then ``distractors`` fragments: square crops of ``fragment`` px cut from other images
of the *same pool* (any class: the clutter says nothing about the label), each resized as a
target would be and pasted at a uniform random position. A pasted piece covers the canvas
where it has ink; the last one pasted wins.

Ground truth per canvas:

- ``masks`` (S, S) bool: the target's ink pixels as placed, minus every pixel a distractor
  covers (a pixel a distractor painted is not the object's).
- ``boxes`` (x0, y0, x1, y1), half-open pixel bounds of the target's ink as placed (before
  distractors): columns x0..x1-1, rows y0..y1-1.
- ``sources`` (1 + distractors,) indices into the pool: the target, then each distractor.

*Ink*: for line drawings on black (digits) a pixel with any channel above 0; with
``whole_object`` (natural images such as CIFAR-10) every pixel of the pasted image, so its
box is the pasted rectangle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Placement:
    """How targets and distractors are placed; every field is part of the dataset's identity."""

    canvas: int = 64  # side of the square canvas (px)
    object_sizes: tuple[int, int] = (16, 24)  # the target's side, uniform over this range (inclusive)
    distractors: int = 4  # fragments per canvas
    fragment: int = 8  # side of a distractor fragment (px, on the canvas)
    whole_object: bool = False  # True: every pixel of a pasted image is ink (natural images)
    fragment_tries: int = 5  # crops tried until one holds ink

    def __post_init__(self):
        low, high = self.object_sizes
        if not 1 <= low <= high <= self.canvas:
            raise ValueError(f"object sizes {self.object_sizes} must lie in 1..canvas ({self.canvas})")
        if not 1 <= self.fragment <= low:
            raise ValueError(f"fragment {self.fragment} must lie in 1..{low} (the smallest object size)")


@dataclass(frozen=True)
class Placed:
    images: np.ndarray  # (N, 3, S, S) uint8
    masks: np.ndarray  # (N, S, S) bool
    boxes: np.ndarray  # (N, 4) int64: x0, y0, x1, y1 (half-open)
    sources: np.ndarray  # (N, 1 + distractors) int64: indices into the pool


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """(..., h, w) -> (..., size, size) by nearest neighbour: output pixel i takes input pixel
    floor(i * h / size) (torch's ``nearest``), so every output pixel is a pixel of the input."""
    rows = (np.arange(size) * image.shape[-2]) // size
    cols = (np.arange(size) * image.shape[-1]) // size
    return image[..., rows, :][..., cols]


def ink_of(piece: np.ndarray, whole_object: bool) -> np.ndarray:
    """(3, h, w) -> (h, w) bool: where a pasted piece covers the canvas."""
    if whole_object:
        return np.ones(piece.shape[1:], dtype=bool)
    return piece.max(axis=0) > 0


def box_of(mask: np.ndarray) -> np.ndarray:
    """Half-open bounds (x0, y0, x1, y1) of a mask's True pixels; (0, 0, 0, 0) for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, dtype=np.int64)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)


def place_on_canvas(pool: np.ndarray, placement: Placement, seed: int) -> Placed:
    """One canvas per image of ``pool`` (N, 3, h, w) uint8, that image its target; seeded, so
    the same pool, placement and seed give the same canvases. Needs at least two images (a
    distractor never comes from the canvas's own target)."""
    n = pool.shape[0]
    if n < 2 and placement.distractors:
        raise ValueError("placing distractors needs a pool of at least two images")
    rng = np.random.default_rng(seed)
    s, low, high = placement.canvas, placement.object_sizes[0], placement.object_sizes[1]
    images = np.zeros((n, 3, s, s), dtype=np.uint8)
    masks = np.zeros((n, s, s), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.int64)
    sources = np.zeros((n, 1 + placement.distractors), dtype=np.int64)
    for i in range(n):
        size = int(rng.integers(low, high + 1))
        target = resize_nearest(pool[i], size)
        y, x = (int(v) for v in rng.integers(0, s - size + 1, size=2))
        ink = ink_of(target, placement.whole_object)
        canvas, target_ink = images[i], np.zeros((s, s), dtype=bool)
        canvas[:, y:y + size, x:x + size][:, ink] = target[:, ink]
        target_ink[y:y + size, x:x + size] = ink
        covered = np.zeros((s, s), dtype=bool)
        sources[i, 0] = i
        for d in range(placement.distractors):
            j = int(rng.integers(0, n - 1))
            j += j >= i  # any image of the pool but the target
            sources[i, 1 + d] = j
            piece = resize_nearest(pool[j], int(rng.integers(low, high + 1)))
            f = placement.fragment
            for _ in range(placement.fragment_tries):
                cy, cx = (int(v) for v in rng.integers(0, piece.shape[1] - f + 1, size=2))
                fragment = piece[:, cy:cy + f, cx:cx + f]
                fragment_ink = ink_of(fragment, placement.whole_object)
                if fragment_ink.any():
                    break
            py, px = (int(v) for v in rng.integers(0, s - f + 1, size=2))
            canvas[:, py:py + f, px:px + f][:, fragment_ink] = fragment[:, fragment_ink]
            covered[py:py + f, px:px + f] |= fragment_ink
        masks[i] = target_ink & ~covered
        boxes[i] = box_of(target_ink)
    return Placed(images, masks, boxes, sources)
