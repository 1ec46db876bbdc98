"""Objects on a canvas among distractors: the ground truth is exact, the pools stay apart, the
canvases are reproducible, and CIFAR-10 is placed the same way."""
import numpy as np
import pytest
import torch

from cifar_files import write_cifar10
from pipeline.data import (CLUTTERED_DIGITS, Dataset, ImageSet, cluttered, content_digest, load_dataset,
                           load_digits)
from pipeline.placement import Placement, box_of, place_on_canvas, resize_nearest


def _pool(n=12, side=8, seed=0):
    """Line drawings on black, image i drawn in grey level 10 + 20 i only: a canvas pixel's
    value tells which image painted it."""
    rng = np.random.default_rng(seed)
    ink = rng.random((n, side, side)) < 0.4
    ink[:, side // 2, :] = True  # every image has ink in every crop row band
    values = (10 + 20 * np.arange(n)).astype(np.uint8)
    return np.repeat((ink * values[:, None, None])[:, None], 3, axis=1).astype(np.uint8), values


def test_resize_nearest_keeps_source_pixels():
    img = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    out = resize_nearest(img, 8)
    np.testing.assert_array_equal(out, img.repeat(2, axis=1).repeat(2, axis=2))
    assert set(np.unique(resize_nearest(img, 7))) <= set(np.unique(img))


def test_without_distractors_the_mask_is_the_ink_and_the_box_its_bounds():
    pool, values = _pool()
    placed = place_on_canvas(pool, Placement(canvas=40, object_sizes=(10, 20), distractors=0), seed=3)
    ink = placed.images.max(axis=1) > 0
    np.testing.assert_array_equal(placed.masks, ink)
    for mask, box in zip(placed.masks, placed.boxes):
        np.testing.assert_array_equal(box, box_of(mask))
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 40 and x1 - x0 <= 20 and y1 - y0 <= 20


def test_mask_is_exactly_the_targets_uncovered_strokes():
    pool, values = _pool()
    placement = Placement(canvas=48, object_sizes=(12, 20), distractors=6, fragment=8)
    placed = place_on_canvas(pool, placement, seed=4)
    covered_some = False
    for i, canvas in enumerate(placed.images):
        target_pixels = canvas[0] == values[i]  # painted by the target and not painted over
        np.testing.assert_array_equal(placed.masks[i], target_pixels)
        assert placed.sources[i, 0] == i and (placed.sources[i, 1:] != i).all()  # no self-distractor
        x0, y0, x1, y1 = placed.boxes[i]
        assert placed.masks[i][y0:y1, x0:x1].sum() == placed.masks[i].sum()  # the box holds the mask
        distractor_ink = (canvas[0] > 0) & ~target_pixels
        assert not (distractor_ink & placed.masks[i]).any()
        covered_some |= distractor_ink[y0:y1, x0:x1].any()
    assert covered_some  # the clutter does fall on targets, and their masks leave it out


def test_same_seed_same_canvas_other_seed_other_canvas():
    pool, _ = _pool()
    a, b = (place_on_canvas(pool, Placement(canvas=32, object_sizes=(10, 14)), seed=7) for _ in range(2))
    c = place_on_canvas(pool, Placement(canvas=32, object_sizes=(10, 14)), seed=8)
    for x, y in ((a.images, b.images), (a.masks, b.masks), (a.boxes, b.boxes), (a.sources, b.sources)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)


def test_placement_is_validated():
    with pytest.raises(ValueError, match="object sizes"):
        Placement(canvas=16, object_sizes=(8, 20))
    with pytest.raises(ValueError, match="fragment"):
        Placement(canvas=32, object_sizes=(8, 12), fragment=10)


def test_train_and_test_canvases_draw_on_their_own_split_only():
    # every train image in grey 50, every test image in grey 200: a canvas shows one of them only
    ink = np.zeros((3, 8, 8), np.uint8)
    ink[:, 2:6, 3:5] = 1
    train = ImageSet(torch.from_numpy(np.tile(ink * 50, (20, 1, 1, 1))), torch.arange(20) % 10)
    test = ImageSet(torch.from_numpy(np.tile(ink * 200, (8, 1, 1, 1))), torch.arange(8) % 10)
    placed = cluttered(Dataset("toy", train, test, tuple("0123456789")), "cluttered-toy",
                       Placement(canvas=32, object_sizes=(8, 12), distractors=4, fragment=6))
    assert set(np.unique(placed.train.images.numpy())) == {0, 50}
    assert set(np.unique(placed.test.images.numpy())) == {0, 200}
    torch.testing.assert_close(placed.test.labels, test.labels)


def test_cluttered_digits_dataset():
    digits, data = load_digits(), load_dataset("cluttered-digits")
    assert data.name == "cluttered-digits" and data.classes == digits.classes
    for part, source in ((data.train, digits.train), (data.test, digits.test)):
        assert part.images.shape == (len(source), 3, 64, 64) and part.images.dtype == torch.uint8
        assert part.masks.shape == (len(source), 64, 64) and part.masks.dtype == torch.bool
        assert part.boxes.shape == (len(source), 4)
        torch.testing.assert_close(part.labels, source.labels)
        sides = (part.boxes[:, 2:] - part.boxes[:, :2]).numpy()
        assert sides.max() <= CLUTTERED_DIGITS.object_sizes[1]
        assert (part.masks.flatten(1).sum(1) > 0).float().mean() > 0.99  # clutter rarely hides a digit whole
    # the masks are the target's pixels only: every mask pixel is inked on the canvas
    assert (data.test.images.max(dim=1).values[data.test.masks] > 0).all()
    # a subset keeps images, labels and ground truth together
    sub = data.test.subset(torch.tensor([3, 1]))
    torch.testing.assert_close(sub.masks, data.test.masks[[3, 1]])
    torch.testing.assert_close(sub.boxes, data.test.boxes[[3, 1]])
    # reproducible, and the digest covers the ground truth
    again = load_dataset("cluttered-digits")
    assert content_digest(again) == content_digest(data) != content_digest(digits)
    changed = Dataset(data.name, data.train, ImageSet(data.test.images, data.test.labels,
                                                      ~data.test.masks, data.test.boxes), data.classes)
    assert content_digest(changed) != content_digest(data)


def test_cluttered_cifar10_from_cifar_format_files(tmp_path):
    written = write_cifar10(tmp_path, per_batch=4, n_test=6)
    data = load_dataset("cluttered-cifar10", tmp_path)
    assert data.test.images.shape == (6, 3, 96, 96) and data.train.masks.shape == (20, 96, 96)
    for part in (data.train, data.test):
        for image, mask, box in zip(part.images.numpy(), part.masks.numpy(), part.boxes.numpy()):
            x0, y0, x1, y1 = box
            assert x1 - x0 == y1 - y0 and 32 <= x1 - x0 <= 48  # the pasted image's square
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()  # the object lies in its box
    # the first test canvas's object pixels are the first test image's pixels, resized
    x0, y0, x1, y1 = data.test.boxes[0].numpy()
    target = resize_nearest(written["test_x"][0], int(x1 - x0))
    region = data.test.images[0].numpy()[:, y0:y1, x0:x1]
    keep = data.test.masks[0].numpy()[y0:y1, x0:x1]
    np.testing.assert_array_equal(region[:, keep], target[:, keep])
