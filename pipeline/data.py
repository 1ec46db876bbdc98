"""Datasets by name, held as uint8 image tensors at native size.

Images stay ``uint8`` (N, 3, H, W) tensors, on the training device if it has room; resizing
to ``image_size`` and normalising (mean = std = 0.5, as in the notebook) happen per batch in
``to_model_input``, so no resized float copy of a dataset ever exists (CIFAR-10 at
224 px in float32 would be 30 GB).

- ``cifar10``: torchvision's CIFAR-10 in the python format under ``data_dir``
  (``cifar-10-batches-py/``), downloaded by torchvision when missing and online.
- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images,
  10 classes, offline). Grey levels 0..16 are scaled to 0..255 and copied to 3 channels.
  Fixed split: a stratified 80/20 split with ``random_state=0`` (1,437 train, 360 test).
- ``cluttered-digits``: each digit of ``digits`` (same split) on a 64x64 black canvas at a
  seeded random position and side 16..24 px, among four 8-px fragments of other digits of the
  same split (``pipeline.placement``, after the cluttered MNIST of Jaderberg et al. 2015),
  with the target's stroke mask and box as localisation ground truth. At ``image_size`` 128
  the CBAM map after layer1 / layer2 / layer4 is 32 / 16 / 4 pixels.
- ``cluttered-cifar10``: CIFAR-10 placed the same way (side 32..48 px on a 96x96 canvas,
  distractors cut from other CIFAR images of the split; the object is the whole pasted image,
  its box the pasted rectangle).
- ``fake``: seeded synthetic 32x32 images, for tests: 320 train and 80 test images in
  10 classes, each class a distinct mean colour plus noise, so it is learnable.

A seeded validation split (``val_fraction`` of the training set) picks the best epoch; the
test set is used once, for the final evaluation.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.errors import PipelineError, one_line
from pipeline.placement import Placement, place_on_canvas

NORMALISE_MEAN = 0.5
NORMALISE_STD = 0.5
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageSet:
    """Images (N, 3, H, W) uint8 and labels (N,) int64; for a dataset with localisation ground
    truth also ``masks`` (N, H, W) bool (the object's pixels) and ``boxes`` (N, 4) int64 (its
    half-open bounds x0, y0, x1, y1), at the images' native size (``pipeline.placement``)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    #: a placed dataset's unplaced image behind each canvas (N, 3, h, w) uint8, on the CPU: what
    #: fresh canvases are placed from (``fresh_canvases``); None for other datasets
    sources: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_ground_truth(self) -> bool:
        return self.masks is not None

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        def cpu(t):
            return None if t is None else t[indices.to(t.device)]

        return ImageSet(self.images[indices], self.labels[indices], cpu(self.masks), cpu(self.boxes), cpu(self.sources))

    def to(self, device: torch.device | str) -> "ImageSet":
        # the ground truth and the sources stay on the CPU: only the metrics and the placement read them
        return ImageSet(self.images.to(device), self.labels.to(device), self.masks, self.boxes, self.sources)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    placement: Placement | None = None  # how a cluttered dataset's canvases are placed


@dataclass(frozen=True)
class Splits:
    """Train / validation / test sets of one dataset; ``val_indices`` index the full training set."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    val_indices: torch.Tensor
    placement: Placement | None = None


def offline() -> bool:
    """True when ``PIPELINE_OFFLINE`` is set (1/true/yes): nothing is downloaded, ever."""
    return os.environ.get("PIPELINE_OFFLINE", "").lower() in ("1", "true", "yes")


def _images_from_numpy(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python-format batch file -> images (N, 3, 32, 32) uint8, labels (N,)."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or foreign file: pickle/KeyError/ValueError...
        raise PipelineError(
            f"CIFAR-10 file {str(path)!r} is corrupt or truncated ({type(exc).__name__}); "
            "delete it so it is downloaded again, or restore it"
        ) from None
    if len(data) != len(labels):
        raise PipelineError(f"CIFAR-10 file {str(path)!r} has {len(data)} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:  # else the loss fails at the first batch holding one, after the run started
        raise PipelineError(f"CIFAR-10 file {str(path)!r} has {bad.size} labels outside 0..{len(CIFAR10_CLASSES) - 1} "
                            f"(e.g. {int(labels[bad[0]])} at index {int(bad[0])})")
    return data, labels


def load_cifar10(data_dir: str | Path, download: bool = True) -> Dataset:
    root = Path(data_dir)
    folder = root / CIFAR10_FOLDER
    needed = [*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE]
    if download and not offline() and not all((folder / f).is_file() for f in needed):
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(root=str(root), train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise PipelineError(
                f"CIFAR-10 is not in data_dir {str(root)!r} and cannot be downloaded "
                f"({type(exc).__name__}: {one_line(exc)}); put cifar-10-batches-py there, or use an offline "
                f"dataset: {', '.join(OFFLINE_DATASETS)}"
            ) from None
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise PipelineError(
            f"CIFAR-10 files missing in data_dir {str(root)!r}: {', '.join(missing)}; "
            f"offline datasets: {', '.join(OFFLINE_DATASETS)}"
        )
    parts = [read_cifar10_batch(folder / f) for f in CIFAR10_TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read_cifar10_batch(folder / CIFAR10_TEST_FILE)
    try:
        with open(folder / CIFAR10_META_FILE, "rb") as fh:
            classes = tuple(pickle.load(fh, encoding="latin1")["label_names"])
    except Exception as exc:
        raise PipelineError(f"CIFAR-10 meta file is corrupt or truncated ({type(exc).__name__})") from None
    return Dataset(
        "cifar10",
        ImageSet(_images_from_numpy(train_x), torch.from_numpy(train_y)),
        ImageSet(_images_from_numpy(test_x), torch.from_numpy(test_y)),
        classes,
    )


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar10_format(root: str | Path, per_batch: int = 10000, n_test: int = 10000, seed: int = 0) -> Path:
    """Write a dataset in CIFAR-10's python format under ``root/cifar-10-batches-py`` (five
    training batches of ``per_batch`` images, a test batch of ``n_test``, ``batches.meta``): by
    default CIFAR-10's exact shapes and sizes, with seeded random pixels and labels, for a host
    that cannot download the real one (the cost of a training step does not depend on the
    pixels). ``load_cifar10`` reads it as it reads CIFAR-10. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f, per_batch) for f in CIFAR10_TRAIN_FILES), (CIFAR10_TEST_FILE, n_test)]:
        entry = {"batch_label": f"{name} (random pixels)", "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),  # R, G, B planes per row
                 "filenames": [f"random_{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    with open(folder / CIFAR10_META_FILE, "wb") as fh:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072},
                    fh, protocol=2)
    return folder


def load_digits(data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    images = np.repeat(grey[:, None], 3, axis=1)  # (N, 3, 8, 8)
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    return Dataset(
        "digits",
        ImageSet(_images_from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train])),
        ImageSet(_images_from_numpy(images[idx_test]), torch.from_numpy(labels[idx_test])),
        tuple(str(c) for c in bunch.target_names),
    )


#: Placement of the cluttered datasets, and the seeds of their train and test canvases.
CLUTTERED_DIGITS = Placement(canvas=64, object_sizes=(16, 24), distractors=4, fragment=8)
CLUTTERED_CIFAR10 = Placement(canvas=96, object_sizes=(32, 48), distractors=4, fragment=12, whole_object=True)
PLACEMENT_SEEDS = {"train": 1, "test": 2}


def cluttered(dataset: Dataset, name: str, placement: Placement) -> Dataset:
    """``dataset`` with every image placed on a canvas among distractors from its own split
    (so no test image appears in a training canvas), with the masks and boxes."""
    def place(part: ImageSet, split: str) -> ImageSet:
        if len(part) < 2 and placement.distractors:
            raise PipelineError(f"{name} places each image among fragments of the other images of its split, but the "
                                f"{split} split of {dataset.name} has {len(part)} image(s): it needs at least 2")
        placed = place_on_canvas(part.images.numpy(), placement, PLACEMENT_SEEDS[split])
        return ImageSet(_images_from_numpy(placed.images), part.labels.clone(), torch.from_numpy(placed.masks),
                        torch.from_numpy(placed.boxes), part.images)

    return Dataset(name, place(dataset.train, "train"), place(dataset.test, "test"), dataset.classes, placement)


def fresh_canvases(part: ImageSet, placement: Placement, seed: int, epoch: int) -> ImageSet:
    """``part``'s images placed anew (targets and distractors from ``part`` alone: a training
    split's canvases never show a validation image), seeded by (seed, epoch): the same seed and
    epoch give the same canvases, in a rerun and in a resumed run alike; another epoch, others.
    What cluttered MNIST's 60,000 digits give by number, 1,293 give by being placed anew each
    epoch (Jaderberg et al. 2015 draw their canvases at random)."""
    if part.sources is None:
        raise PipelineError("fresh canvases need a placed dataset (cluttered-digits, cluttered-cifar10)")
    placed = place_on_canvas(part.sources.numpy(), placement, [seed, epoch, PLACEMENT_SEEDS["train"]])
    return ImageSet(_images_from_numpy(placed.images).to(part.images.device), part.labels,
                    torch.from_numpy(placed.masks), torch.from_numpy(placed.boxes), part.sources)


def load_cluttered_digits(data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    return cluttered(load_digits(), "cluttered-digits", CLUTTERED_DIGITS)


def load_cluttered_cifar10(data_dir: str | Path = "data", download: bool = True) -> Dataset:
    return cluttered(load_cifar10(data_dir, download), "cluttered-cifar10", CLUTTERED_CIFAR10)


def load_fake(data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    gen = torch.Generator().manual_seed(1234)
    num_classes, size = 10, 32
    palette = torch.randint(40, 216, (num_classes, 3, 1, 1), generator=gen).float()

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, 3, size, size, generator=gen) * 30.0
        images = (palette[labels] + noise).clamp(0, 255).round().to(torch.uint8)
        return ImageSet(images, labels.to(torch.int64))

    return Dataset("fake", make(320), make(80), tuple(f"class_{i}" for i in range(num_classes)))


DATASETS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "digits": load_digits,
    "cluttered-digits": load_cluttered_digits,
    "cluttered-cifar10": load_cluttered_cifar10,
    "fake": load_fake,
}
OFFLINE_DATASETS = ("digits", "cluttered-digits", "fake")
#: Each dataset as loaded, train and test together: (images, channels, height, width, classes)
#: (what a configuration keeps on its device; tests/unit/test_data.py checks it against the loaders).
DATASET_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "cifar10": (60000, 3, 32, 32, 10),
    "digits": (1797, 3, 8, 8, 10),
    "cluttered-digits": (1797, 3, CLUTTERED_DIGITS.canvas, CLUTTERED_DIGITS.canvas, 10),
    "cluttered-cifar10": (60000, 3, CLUTTERED_CIFAR10.canvas, CLUTTERED_CIFAR10.canvas, 10),
    "fake": (400, 3, 32, 32, 10),
}


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = True) -> Dataset:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise PipelineError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None
    return loader(data_dir, download=download)


class DatasetCache:
    """Datasets loaded once per process and shared by every configuration run in it (a sweep's
    inline executor); keyed by name and resolved folder. Nothing mutates a loaded dataset."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], Dataset] = {}

    def get(self, name: str, data_dir: str | Path = "data") -> Dataset:
        key = (name, str(Path(data_dir).resolve()))
        if key not in self._loaded:
            self._loaded[key] = load_dataset(name, data_dir)
        return self._loaded[key]


def split_validation(dataset: Dataset, val_fraction: float, seed: int) -> Splits:
    """Hold out a seeded ``val_fraction`` of the training set for choosing the best epoch."""
    n = len(dataset.train)
    n_val = int(round(val_fraction * n))
    if n_val < 1 or n_val >= n:
        raise PipelineError(
            f"val_fraction={val_fraction} leaves {n_val} validation and {n - n_val} training images "
            f"of {n}; each needs at least one"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return splits_from_val_indices(dataset, order[:n_val])


def splits_from_val_indices(dataset: Dataset, val_indices) -> Splits:
    """Splits whose validation set is ``val_indices`` of the training set (as recorded by
    ``prepare-data``); the rest of the training set trains."""
    n = len(dataset.train)
    val_idx = torch.as_tensor(val_indices, dtype=torch.int64).sort().values
    if val_idx.numel() < 1 or val_idx.numel() >= n or val_idx.min() < 0 or val_idx.max() >= n \
            or val_idx.unique().numel() != val_idx.numel():
        raise PipelineError(f"validation indices do not fit the training set of {n} images")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    train_idx = keep.nonzero().flatten()
    return Splits(
        dataset.name,
        dataset.train.subset(train_idx),
        dataset.train.subset(val_idx),
        dataset.test,
        dataset.classes,
        val_idx,
        dataset.placement,
    )


def to_model_input(images: torch.Tensor, image_size: int, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> float (B, 3, image_size, image_size), resized and normalised.

    Bilinear resizing (antialiased when shrinking), like torchvision's Resize on tensors,
    then (x / 255 - 0.5) / 0.5 as the notebook's ToTensor + Normalize.
    """
    x = images.float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    x = x.sub_(NORMALISE_MEAN).div_(NORMALISE_STD)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def batch_bounds(n: int, batch_size: int, no_single: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each batch; with ``no_single`` a last batch of one image joins the batch
    before it (BatchNorm cannot train on a batch of one)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if no_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def iterate_batches(
    data: ImageSet, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
    no_single: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images uint8, labels) batches; a seeded permutation when ``shuffle``; see
    ``batch_bounds`` for ``no_single``."""
    n = len(data)
    bounds = batch_bounds(n, batch_size, no_single)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(data.labels.device)
        for start, end in bounds:
            idx = order[start:end]
            yield data.images[idx], data.labels[idx]
    else:
        for start, end in bounds:
            yield data.images[start:end], data.labels[start:end]


def content_digest(dataset: Dataset) -> str:
    """SHA-256 over the images and labels of both splits (and their masks and boxes, where the
    dataset has them): the dataset's identity."""
    h = hashlib.sha256()
    for part in (dataset.train, dataset.test):
        h.update(part.images.contiguous().numpy().tobytes())
        h.update(part.labels.contiguous().numpy().tobytes())
        if part.has_ground_truth:
            h.update(part.masks.contiguous().numpy().tobytes())
            h.update(part.boxes.contiguous().numpy().tobytes())
    return h.hexdigest()
