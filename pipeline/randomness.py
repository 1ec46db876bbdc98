"""Every random state training consumes (Python's, numpy's, torch's CPU and CUDA generators, and
the batch order's generator): seeded at once, captured as plain data a checkpoint holds (it
loads with ``weights_only=True``) and restored, so a resumed run draws what an uninterrupted
one would."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    """Every random state training consumes, as plain data (loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, _ = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": list(internal) + [version],
        "batch_order": generator.get_state(),
    }


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    *internal, version = state["python"]
    random.setstate((version, tuple(internal), None))
    generator.set_state(state["batch_order"])
