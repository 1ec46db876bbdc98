"""Localisation metrics against closed-form cases and independent computations (scikit-learn's
average precision, IoU by counting pixels)."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipeline import localisation as L


def _object(size=32, box=(8, 10, 20, 26)):
    """A mask with a hole-free blob and its box (half-open)."""
    mask = np.zeros((size, size), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    mask[y0, x0] = False  # not exactly the box
    return mask, np.array(box)


def test_normalise_maps_min_max_and_constant_maps():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]], [[0.0, np.nan], [1.0, 2.0]]])
    out = L.normalise_maps(maps)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.25, 1.0]])
    assert (out[1] == 0).all() and (out[2] == 0).all()  # constant / NaN -> zeros (wsolevaluation)


def test_map_equal_to_mask_is_perfect():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 24, 24)) < 0.2
    maps = masks.astype(float)
    assert L.pxap(maps, masks) == pytest.approx(100.0)
    np.testing.assert_array_equal(L.pointing_game(maps, masks), 1.0)


def test_uniform_map_scores_the_mask_share():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 20, 20)) < 0.15
    uniform = np.full(masks.shape, 0.7)
    assert L.pxap(uniform, masks) == pytest.approx(100.0 * masks.mean())
    np.testing.assert_allclose(L.pointing_game(uniform, masks), masks.mean(axis=(1, 2)))


def test_pxap_equals_sklearn_average_precision_on_pooled_pixels():
    rng = np.random.default_rng(2)
    # scores on the threshold grid (multiples of 1/8), each map spanning exactly 0..1, so the
    # normalisation is the identity and every distinct score is its own threshold
    maps = rng.integers(0, 9, size=(12, 16, 16)) / 8.0
    maps[:, 0, 0], maps[:, 0, 1] = 0.0, 1.0
    masks = rng.random(maps.shape) < (0.1 + 0.6 * maps)  # informative, imperfect
    expected = 100.0 * average_precision_score(masks.ravel(), maps.ravel())
    assert L.pxap(maps, masks) == pytest.approx(expected, abs=1e-9)
    # pooled over images, not a mean of per-image APs
    per_image = np.mean([100.0 * average_precision_score(k.ravel(), m.ravel()) for m, k in zip(maps, masks)])
    assert abs(L.pxap(maps, masks) - per_image) > 1e-6


def test_pxap_is_nan_without_object_pixels_and_empty_masks_only_add_negatives():
    maps = np.random.default_rng(3).random((2, 8, 8))
    assert np.isnan(L.pxap(maps, np.zeros((2, 8, 8), bool)))
    mask = np.zeros((2, 8, 8), bool)
    mask[0, 2:4, 2:4] = True
    one = L.pxap(maps[:1], mask[:1])
    both = L.pxap(maps, mask)  # image 2 has no object: its pixels can only be false positives
    assert both <= one


def test_max_box_acc_of_the_box_itself_is_100_at_every_iou():
    masks, boxes = [], []
    for box in [(2, 3, 10, 12), (0, 1, 31, 32), (5, 20, 31, 30)]:
        m, b = _object(box=box)
        masks.append(m)
        boxes.append(b)
    boxes = np.array(boxes)
    maps = L.box_masks(boxes, 32).astype(float)
    acc = L.max_box_acc(maps, boxes)
    assert acc == {0.3: 100.0, 0.5: 100.0, 0.7: 100.0, "mean": 100.0}


def test_max_box_acc_takes_one_threshold_for_all_images():
    # image 1's box is found only at tau = 0 (a constant map: the whole image), image 2's only
    # above it: no single threshold finds both, so MaxBoxAcc is 50, not 100
    boxes = np.array([[0, 0, 16, 16], [2, 2, 6, 6]])
    maps = np.stack([np.ones((16, 16)), L.box_masks(boxes[1:], 16)[0].astype(float)])
    assert L.max_box_acc(maps, boxes)["mean"] == 50.0


def test_max_box_acc_counts_any_region_and_the_best_threshold():
    box = np.array([4, 4, 12, 12])  # 8 x 8 = 64 px
    m = np.zeros((32, 32))
    m[4:12, 4:12] = 0.5  # the object, weaker
    m[20:30, 20:30] = 1.0  # a stronger region elsewhere
    # at tau > 0.5 only the far region survives (IoU 0); at tau in (0, 0.5] both regions are
    # found and the object's box matches exactly: the best threshold and "all contours" count
    ious = L.best_ious(m[None], box[None])
    assert ious[0, 60] == 0.0 and ious[0, 30] == 1.0
    assert L.max_box_acc(m[None], box[None])["mean"] == 100.0


def test_iou_by_counting_pixels():
    rng = np.random.default_rng(4)
    for _ in range(20):
        a, b = (np.sort(rng.integers(0, 17, size=(2, 2)), axis=0) for _ in range(2))
        box_a = np.array([a[0, 0], a[0, 1], a[1, 0] + 1, a[1, 1] + 1])
        box_b = np.array([b[0, 0], b[0, 1], b[1, 0] + 1, b[1, 1] + 1])
        ma, mb = L.box_masks(np.stack([box_a, box_b]), 18)
        expected = (ma & mb).sum() / (ma | mb).sum()
        assert L._iou(box_a, box_b[None])[0] == pytest.approx(expected)


def test_region_boxes_are_eight_connected():
    img = np.zeros((6, 6), bool)
    img[0, 0] = img[1, 1] = True  # diagonal neighbours: one region
    img[4, 4] = True
    planes, regions = L._regions_per_threshold(img.astype(float), np.array([0.5]))
    assert {tuple(b) for b in regions} == {(0, 0, 2, 2), (4, 4, 5, 5)} and (planes == 0).all()
    assert L._regions_per_threshold(np.zeros((3, 3)), np.array([0.5]))[1].shape == (0, 4)


def test_pointing_game_ties_and_edge_cases():
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, :2] = True
    m = np.zeros((1, 4, 4))
    m[0, 0, 0] = m[0, 3, 3] = m[0, 2, 2] = m[0, 1, 1] = 1.0  # four maxima, one on the object
    assert L.pointing_game(m, mask)[0] == pytest.approx(0.25)
    assert np.isnan(L.pointing_game(m, np.zeros_like(mask))[0])  # no object: undefined


def test_energy_in_box():
    box = np.array([[0, 0, 2, 2]])  # 4 of 16 pixels
    m = np.zeros((1, 4, 4))
    m[0, :2, :2] = 1.0
    m[0, 3, 3] = 3.0  # after min-max: 1/3 per pixel in the box, 1 outside
    assert L.energy_in_box(m, box)[0] == pytest.approx((4 / 3) / (4 / 3 + 1))
    assert L.energy_in_box(np.full((1, 4, 4), 2.0), box)[0] == pytest.approx(4 / 16)  # constant: area share
    assert np.isnan(L.energy_in_box(m, np.array([[1, 1, 1, 3]]))[0])  # empty box


def test_resizing_ground_truth_as_the_images_are():
    import torch
    from torch.nn import functional as F

    rng = np.random.default_rng(5)
    masks = rng.random((3, 16, 16)) < 0.3
    for size in (32, 48, 24):
        expected = F.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=(size, size),
                                 mode="nearest")[:, 0].numpy() > 0.5
        np.testing.assert_array_equal(L.resize_masks(masks, size), expected)
    boxes = np.array([[2, 3, 10, 12], [0, 0, 16, 16]])
    for size in (32, 64, 24):  # the box of the resized box mask
        resized = L.resize_masks(L.box_masks(boxes, 16), size)
        np.testing.assert_array_equal(L.box_masks(L.resize_boxes(boxes, 16, size), size), resized)


def test_judge_maps_names_every_map_and_the_chance_levels():
    rng = np.random.default_rng(6)
    masks = np.zeros((4, 16, 16), bool)
    boxes = np.zeros((4, 4), np.int64)
    for i in range(4):
        x, y = rng.integers(0, 10, size=2)
        masks[i, y:y + 5, x:x + 5] = True
        boxes[i] = (x, y, x + 5, y + 5)
    spatial = masks.astype(np.float16)  # maps on the object, bilinear to 32 px
    scores = L.judge_maps(spatial, None, masks, boxes, native=16, size=32)
    assert set(scores) == {"cbam", "ceiling", "random", "uniform", "centre"}  # no CAM recorded: no CAM bounds
    assert scores["uniform"]["pxap"] == pytest.approx(100.0 * masks.mean())
    assert scores["uniform"]["maxboxacc"] == 0.0  # the whole image never overlaps a 5 x 5 box by 0.3
    assert scores["cbam"]["pxap"] > 90.0 and scores["cbam"]["pointing_mask"] == 1.0
    assert scores["cbam"]["maxboxacc"] == 100.0 and scores["cbam"]["energy_box"] > 0.9
    assert set(scores["cbam"]) == {"pxap", "maxboxacc", "boxacc_iou30", "boxacc_iou50", "boxacc_iou70",
                                   "pointing_mask", "pointing_box", "energy_box"}


def test_the_ceiling_of_a_grid_and_its_floor_and_the_score_between_them():
    # closed form: a mask made of whole grid cells (the top 3 of 8 rows of cells, 64 px) pooled to the
    # 8 x 8 grid and upsampled is above 1/2 on the object and below it off it: PxAP 100
    masks = np.zeros((3, 64, 64), bool)
    masks[:, :24, :] = True
    boxes = np.tile([0, 0, 64, 24], (3, 1))
    ceiling = L.ceiling_maps(masks, (8, 8), 64)
    np.testing.assert_array_equal(ceiling[0], np.repeat([[1.0]] * 3 + [[0.0]] * 5, 8, axis=1))
    assert L.pxap(L.upsample_maps(ceiling, 64), masks) == pytest.approx(100.0)
    # a 20-pixel object on a 2 x 2 grid: its ceiling is far below 100 (the resolution limit)
    small = np.zeros((1, 64, 64), bool)
    small[0, 10:30, 12:32] = True
    coarse = L.ceiling_maps(small, (2, 2), 64)
    np.testing.assert_allclose(coarse[0], [[400 / 1024, 0], [0, 0]])
    assert L.pxap(L.upsample_maps(coarse, 64), small) < 60.0
    # the score between the floor (random maps of the grid) and the ceiling: 1 for the ceiling map, 0 at the floor
    rng = np.random.default_rng(3)
    spatial = rng.random((3, 8, 8)).astype(np.float32)
    scores = L.judge_maps(ceiling, None, masks, boxes, native=64, size=64)
    assert scores["ceiling"] == scores["cbam"] and scores["ceiling"]["pxap"] == pytest.approx(100.0)
    assert all(v == pytest.approx(1.0) for k, v in L.normalised_scores(scores).items()
               if scores["ceiling"][k] > scores["random"][k])
    floor = {**scores, "cbam": scores["random"]}
    assert all(v == pytest.approx(0.0) or np.isnan(v) for v in L.normalised_scores(floor).values())
    mid = L.judge_maps(spatial, None, masks, boxes, native=64, size=64)
    expected = (mid["cbam"]["pxap"] - mid["random"]["pxap"]) / (mid["ceiling"]["pxap"] - mid["random"]["pxap"])
    assert L.normalised_scores(mid)["pxap"] == pytest.approx(expected)
    # a 1 x 1 grid: ceiling and floor are both constant maps, nothing to read between them
    one = L.judge_maps(np.ones((3, 1, 1), np.float32), None, masks, boxes, native=64, size=64)
    assert np.isnan(L.normalised_scores(one)["pxap"])
    np.testing.assert_array_equal(L.random_grid_maps(3, (2, 2), seed=1), L.random_grid_maps(3, (2, 2), seed=1))


def test_the_cam_is_read_between_the_floor_and_the_ceiling_of_its_own_grid():
    """A CAM lives on layer4's grid (2 x 2 at 64 px): its ceiling is that grid's, not the CBAM
    map's. A CAM equal to the mask pooled to its grid scores that ceiling, normalised 1."""
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 64, 64), bool)
    boxes = np.zeros((4, 4), np.int64)
    for i, (x, y) in enumerate(rng.integers(4, 40, size=(4, 2))):
        masks[i, y:y + 20, x:x + 20] = True
        boxes[i] = (x, y, x + 20, y + 20)
    cams = L.ceiling_maps(masks, (2, 2), 64)
    scores = L.judge_maps(rng.random((4, 8, 8)).astype(np.float32), cams, masks, boxes, native=64, size=64)
    assert {"cam_ceiling", "cam_random", "ceiling", "random"} <= set(scores)
    assert scores["cam"] == scores["cam_ceiling"]
    assert scores["cam_ceiling"]["pxap"] < scores["ceiling"]["pxap"]  # a 2 x 2 grid holds less than an 8 x 8 one
    normalised = L.normalised_scores(scores, of="cam")
    assert normalised["pxap"] == pytest.approx(1.0)
    floor = L.random_grid_maps(4, (2, 2), seed=0)  # judge_maps's own floor draw (seed 0): normalised 0
    again = L.judge_maps(None, floor, masks, boxes, native=64, size=64)
    assert L.normalised_scores(again, of="cam")["pxap"] == pytest.approx(0.0, abs=1e-12)
    assert L.normalised_scores(again, of="cbam") == {}  # no CBAM map: nothing to normalise


def test_threads_and_a_shared_prior_give_the_serial_result():
    rng = np.random.default_rng(7)
    maps = L.upsample_maps(rng.random((6, 4, 4)), 24)
    boxes = np.array([[x, y, x + 8, y + 6] for x, y in rng.integers(0, 14, size=(6, 2))])
    np.testing.assert_array_equal(L.best_ious(maps, boxes, threads=2), L.best_ious(maps, boxes, threads=1))
    prior = np.broadcast_to(L.centre_prior(24), (6, 24, 24))
    per_image = np.stack([L.best_ious(prior[i:i + 1], boxes[i:i + 1])[0] for i in range(6)])
    np.testing.assert_array_equal(L.best_ious(prior, boxes), per_image)


def test_localisation_benchmark_records_settings_and_every_repeat(tmp_path):
    import json

    import bench_localisation

    out = tmp_path / "bench.json"
    result = bench_localisation.main(["--images", "8", "--image-size", "32", "--map-side", "4", "--native", "32",
                                      "--repeats", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["images"] == 8 and saved["image_size"] == 32 and len(saved["judge_s"]) == 2
    assert saved["judge_median_s"] == pytest.approx(float(np.median(result["judge_s"])))
    assert saved["judge_ms_per_image"] > 0 and saved["place_ms_per_image"] > 0
