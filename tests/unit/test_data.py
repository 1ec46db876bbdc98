import numpy as np
import pytest
import torch

from pipeline.data import (
    DIGITS_TEST_SIZE,
    ImageSet,
    batch_bounds,
    content_digest,
    iterate_batches,
    load_dataset,
    split_validation,
    to_model_input,
)
from pipeline.errors import PipelineError

from cifar_files import CLASSES, write_cifar10


def test_cifar10_reads_the_python_format(tmp_path):
    written = write_cifar10(tmp_path, per_batch=6, n_test=10)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.classes == tuple(CLASSES)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (30, 3, 32, 32)
    assert ds.test.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(ds.train.images.numpy(), written["train_x"])
    np.testing.assert_array_equal(ds.train.labels.numpy(), written["train_y"])
    np.testing.assert_array_equal(ds.test.images.numpy(), written["test_x"])
    # the first 1024 bytes of a row are the red plane, row-major
    row = written["test_x"].reshape(10, -1)[3]
    assert ds.test.images[3, 0, 0, 5].item() == row[5]
    assert ds.test.images[3, 2, 1, 0].item() == row[2048 + 32]


def test_cifar10_missing_offline_names_data_dir_and_offline_datasets(tmp_path):
    with pytest.raises(PipelineError) as err:
        load_dataset("cifar10", tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "\n" not in message
    assert message.endswith("offline datasets: digits, cluttered-digits, fake")


def test_cifar10_truncated_file_is_a_one_line_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(PipelineError, match="data_batch_3.*corrupt or truncated"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_labels_out_of_range_and_too_small_cluttered_splits_are_one_line_errors(tmp_path):
    import pickle

    write_cifar10(tmp_path / "bad")
    batch = tmp_path / "bad" / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"][4], entry["labels"][7] = -1, 10
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(PipelineError, match=r"test_batch' has 2 labels outside 0\.\.9 \(e\.g\. -1 at index 4\)$"):
        load_dataset("cifar10", tmp_path / "bad")
    write_cifar10(tmp_path / "one", n_test=1)
    with pytest.raises(PipelineError, match="cluttered-cifar10 places each image among fragments of the other images "
                                            "of its split, but the test split of cifar10 has 1 image"):
        load_dataset("cluttered-cifar10", tmp_path / "one")


def test_fresh_canvases_are_the_same_for_a_seed_and_epoch_and_differ_across_epochs():
    from pipeline.data import fresh_canvases, split_validation
    from pipeline.placement import place_on_canvas

    split = split_validation(load_dataset("cluttered-digits"), 0.1, 0)
    train, placement = split.train, split.placement
    assert train.sources.shape == (len(train), 3, 8, 8) and placement.canvas == 64
    one, again, two = (fresh_canvases(train, placement, 0, 1), fresh_canvases(train, placement, 0, 1),
                       fresh_canvases(train, placement, 0, 2))
    assert torch.equal(one.images, again.images) and torch.equal(one.masks, again.masks)
    assert not torch.equal(one.images, two.images) and not torch.equal(one.images, train.images)
    assert not torch.equal(one.images, fresh_canvases(train, placement, 1, 1).images)  # another seed
    torch.testing.assert_close(one.labels, train.labels)  # each canvas keeps its target's label
    # independently: the training split's own digits placed with the seed (seed, epoch, 1), so no
    # validation digit is ever a target or a distractor on a training canvas
    placed = place_on_canvas(train.sources.numpy(), placement, [0, 2, 1])
    np.testing.assert_array_equal(two.images.numpy(), placed.images)
    assert placed.sources.max() < len(train)
    with pytest.raises(PipelineError, match="fresh canvases need a placed dataset"):
        fresh_canvases(load_dataset("digits").train, placement, 0, 1)


def test_digits_is_real_offline_and_split_as_documented():
    ds = load_dataset("digits")
    assert len(ds.train) == 1797 - DIGITS_TEST_SIZE == 1437 and len(ds.test) == 360
    assert ds.train.images.shape[1:] == (3, 8, 8) and ds.train.images.dtype == torch.uint8
    assert ds.train.images.max().item() == 255 and ds.train.images.min().item() == 0
    assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 2])  # grey copied to 3 channels
    # stratified: every class has 36 (+-1) test images; fixed: a second load is identical
    counts = torch.bincount(ds.test.labels, minlength=10)
    assert counts.min().item() >= 35 and counts.max().item() <= 37
    assert content_digest(ds) == content_digest(load_dataset("digits"))


def test_fake_is_seeded():
    a, b = load_dataset("fake"), load_dataset("fake")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert (len(a.train), len(a.test)) == (320, 80)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(PipelineError, match="valid: cifar10, digits, cluttered-digits, cluttered-cifar10, fake"):
        load_dataset("mnist")


def test_validation_split_is_seeded_and_disjoint():
    ds = load_dataset("digits")
    s1, s2, s3 = (split_validation(ds, 0.1, seed) for seed in (0, 0, 1))
    assert len(s1.val) == 144 and len(s1.train) == 1437 - 144
    assert torch.equal(s1.val_indices, s2.val_indices)
    assert not torch.equal(s1.val_indices, s3.val_indices)
    # the validation images are exactly the held-out training images, and the test set is untouched
    assert torch.equal(s1.val.images, ds.train.images[s1.val_indices])
    assert torch.equal(s1.test.images, ds.test.images)


def test_model_input_resizes_and_normalises_per_batch():
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat(3, 8, 4).view(1, 3, 8, 8).repeat(2, 1, 1, 1)
    x = to_model_input(images, 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)
    same = to_model_input(images, 8)
    assert torch.equal(same[0, 0, 0, :2], torch.tensor([-1.0, 1.0]))


def test_batches_cover_the_data_once_per_epoch():
    data = ImageSet(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10))
    seen = torch.cat([y for _, y in iterate_batches(data, 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(y) for _, y in iterate_batches(data, 4)] == [4, 4, 2]


def test_a_last_training_batch_of_one_joins_the_batch_before_it():
    data = ImageSet(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10))
    g = torch.Generator().manual_seed(0)
    batches = [y for _, y in iterate_batches(data, 3, shuffle=True, generator=g, no_single=True)]
    assert [len(y) for y in batches] == [3, 3, 4]  # 3 + 3 + 3 + 1: the one joins the last three
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert batch_bounds(288, 287, no_single=True) == [(0, 288)]
    assert batch_bounds(288, 287) == [(0, 287), (287, 288)]  # evaluation keeps its batches
    assert batch_bounds(1, 64, no_single=True) == [(0, 1)]
    assert batch_bounds(6, 3, no_single=True) == [(0, 3), (3, 6)]


def test_the_cifar10_format_writer_makes_files_cifar10_loads_with_its_exact_shapes(tmp_path):
    from pipeline.data import DATASET_SHAPES, write_cifar10_format

    folder = write_cifar10_format(tmp_path)  # the defaults: CIFAR-10's sizes
    assert sorted(p.name for p in folder.iterdir()) == ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)),
                                                         "test_batch"]
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.classes == tuple(CLASSES)
    assert (len(ds.train) + len(ds.test), *ds.train.images.shape[1:], len(ds.classes)) == DATASET_SHAPES["cifar10"]
    # uniform random pixels and labels: every value and class occurs, means near the middle
    assert ds.train.images.min().item() == 0 and ds.train.images.max().item() == 255
    assert abs(ds.train.images.float().mean().item() - 127.5) < 0.5
    assert torch.bincount(ds.test.labels, minlength=10).min().item() > 900
    # seeded: the same seed writes the same files, another seed others
    again = write_cifar10_format(tmp_path / "again", per_batch=7, n_test=3)
    assert load_dataset("cifar10", tmp_path / "again").train.images.shape == (35, 3, 32, 32)
    assert (again / "test_batch").read_bytes() == write_cifar10_format(tmp_path / "same", 7, 3).joinpath(
        "test_batch").read_bytes() != write_cifar10_format(tmp_path / "other", 7, 3, seed=1).joinpath(
        "test_batch").read_bytes()


@pytest.mark.parametrize("name", ["digits", "cluttered-digits", "fake"])
def test_dataset_shapes_are_what_the_loaders_give(name):
    from pipeline.data import DATASET_SHAPES

    ds = load_dataset(name)
    assert (len(ds.train) + len(ds.test), *ds.train.images.shape[1:], len(ds.classes)) == DATASET_SHAPES[name]
    assert ds.test.images.shape[1:] == ds.train.images.shape[1:]
