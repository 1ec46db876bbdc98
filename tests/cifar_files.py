"""Tiny CIFAR-10 files in the real python format (pickled dicts, as in cifar-10-python.tar.gz)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 10, seed: int = 0) -> dict:
    """Write data_batch_1..5, test_batch and batches.meta under root/cifar-10-batches-py.

    Returns the arrays written, images as (N, 3, 32, 32) uint8 and labels, for comparison.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train_x": [], "train_y": []}

    def dump(name: str, n: int):
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # R plane, G plane, B plane
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {"batch_label": f"{name} of 5", "labels": labels, "data": rows,
                 "filenames": [f"img_{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        return rows.reshape(n, 3, 32, 32), np.asarray(labels)

    for i in range(1, 6):
        x, y = dump(f"data_batch_{i}", per_batch)
        written["train_x"].append(x)
        written["train_y"].append(y)
    written["train_x"] = np.concatenate(written["train_x"])
    written["train_y"] = np.concatenate(written["train_y"])
    written["test_x"], written["test_y"] = dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh, protocol=2)
    return written
