"""Channel ablation and spatial deletion / insertion curves against closed forms and
independent computations on small models (torchcam's DeletionInsertionMetric for RISE)."""
import functools
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from pipeline.data import ImageSet, load_dataset, to_model_input
from pipeline.faithfulness import (ablation_grid, area, baseline_of, channel_ablation, channel_orders, constant_maps,
                                  deletion_fractions, forward_passes, judge_faithfulness, pixel_ranks, random_maps,
                                  spatial_deletion)
from pipeline.models import AttentionResNet, ModelConfig

SIZE = 32


@pytest.fixture(scope="module")
def images():
    return load_dataset("fake").test.subset(torch.arange(40))


def _model(position="late", activation="sigmoid", seed=0):
    torch.manual_seed(seed)
    return AttentionResNet(ModelConfig(activation=activation, position=position, num_classes=10)).eval()


@pytest.mark.parametrize("position", ["early", "middle", "late"])
def test_the_two_halves_are_the_model(images, position):
    model = _model(position)
    x = to_model_input(images.images[:6], SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.from_attended(model.attended(x)), model(x))


def test_grid_and_area_closed_forms():
    assert ablation_grid(512) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert ablation_grid(1) == [0, 1] and ablation_grid(64)[-1] == 64
    ks = [0, 1, 2, 4]
    assert area(ks, [0.7, 0.7, 0.7, 0.7], 4) == pytest.approx(0.7)  # constant curve: its value
    assert area(ks, [1.0, 0.75, 0.5, 0.0], 4) == pytest.approx(0.5)  # straight line 1 -> 0


def test_k0_is_the_unablated_accuracy_and_all_channels_are_order_free(images):
    model = _model("late")
    curves = channel_ablation(model, images, SIZE, ks=[0, 3, 512], draws=3, seed=1)
    with torch.no_grad():
        logits = model(to_model_input(images.images, SIZE))
    p = torch.softmax(logits, 1)
    accuracy = 100.0 * (p.argmax(1) == images.labels).float().mean().item()
    probability = p[torch.arange(len(images)), images.labels].mean().item()
    for order in ("most", "least"):
        assert curves.accuracy[order][0] == pytest.approx(accuracy)
        assert curves.probability[order][0] == pytest.approx(probability, rel=1e-5)
    np.testing.assert_allclose(curves.accuracy["random"][:, 0], accuracy)
    # every channel ablated: the same features whatever the order
    last = [curves.accuracy["most"][-1], curves.accuracy["least"][-1], *curves.accuracy["random"][:, -1]]
    assert len(set(np.round(last, 9))) == 1
    np.testing.assert_allclose(curves.probability["random"][:, -1], curves.probability["most"][-1], rtol=1e-5)


def _one_channel_model(images, j=7):
    """A late-CBAM model whose decision reads channel j only (class 0 above the median of its
    pooled value, class 1 below), and whose sigmoid gate weights channel j highest."""
    model = _model("late")
    with torch.no_grad():
        mlp = model.cbam.channel.mlp
        mlp[0].weight.copy_(mlp[0].weight.abs())  # hidden units positive on positive features
        mlp[2].weight.fill_(-1.0)
        mlp[2].weight[j] = 1.0  # the gate opens channel j, closes the others
        x = to_model_input(images.images, SIZE)
        z = model.attended(x).mean(dim=(2, 3))[:, j]
        model.fc.weight.zero_()
        model.fc.bias.fill_(-1e4)
        model.fc.weight[0, j] = 1.0
        model.fc.bias[0] = 0.0
        model.fc.bias[1] = float(z.median())
        predicted = model(x).argmax(1)
    # the labels are the model's own decisions: 100 % before any ablation
    return model, ImageSet(images.images, predicted)


def test_a_decision_on_the_top_weighted_channel_drops_at_k1(images):
    j = 7
    model, data = _one_channel_model(images, j)
    orders = channel_orders(_gate_weights(model, data), draws=0, seed=0)
    assert (orders["most"][:, 0] == j).all()  # the gate weights channel j highest in every image
    curves = channel_ablation(model, data, SIZE, ks=[0, 1, 2, 511, 512], draws=4, seed=0)
    most, least = curves.accuracy["most"], curves.accuracy["least"]
    assert most[0] == 100.0 and most[1] < 75.0  # drops at once: the mean replaces what decided
    assert (least[:4] == 100.0).all() and least[4] == most[4]  # channel j goes last
    summary = curves.summaries()
    assert summary["advantage_acc"] == pytest.approx(summary["random_acc_area"] - summary["most_acc_area"])
    assert summary["advantage_acc"] > 0
    zero = channel_ablation(model, data, SIZE, ks=[0, 1], draws=0, fill="zero")
    assert zero.accuracy["most"][0] == 100.0 and zero.accuracy["most"][1] < 100.0


def test_the_network_re_initialised_depends_on_no_channel_the_hand_built_one_on_one(images):
    """The floor of channel ablation (Adebayo et al.'s model randomisation): the one-channel
    network above has a large advantage; the same architecture with the weights a train run
    starts from has none (its decision does not depend on the channel its gate weights
    highest: a near-constant output, every order's curve the same)."""
    from pipeline.models import initial_model

    model, data = _one_channel_model(images, 7)
    ks = [0, 1, 4, 64, 512]
    trained = channel_ablation(model, data, SIZE, ks=ks, draws=3, seed=0).summaries()
    again = initial_model(model.config, seed=0)
    assert not torch.equal(again.fc.weight, model.fc.weight)
    randomised = channel_ablation(again, data, SIZE, ks=ks, draws=3, seed=0).summaries()
    assert trained["advantage_acc"] > 10.0 + 3 * trained["advantage_acc_std"]
    assert abs(randomised["advantage_acc"]) <= max(1.0, 3 * randomised["advantage_acc_std"])
    # judged together: the floor under its own keys, beside the trained network's
    judged = judge_faithfulness(model, data.subset(torch.arange(8)), SIZE, {}, draws=2, seed=0, randomised=again)
    direct = channel_ablation(again, data.subset(torch.arange(8)), SIZE, draws=2, seed=0).summaries()
    for key in ("advantage_acc", "advantage_prob", "advantage_acc_std"):
        assert judged.summaries[f"channel_randomised_{key}"] == pytest.approx(direct[key], nan_ok=True)
    assert "channel_randomised_most_acc_area" not in judged.summaries


def _gate_weights(model, data):
    captured = []
    hook = model.cbam.channel.gate.register_forward_hook(lambda m, i, out: captured.append(out.flatten(1)))
    with torch.no_grad():
        model(to_model_input(data.images, SIZE))
    hook.remove()
    return captured[0].numpy()


def test_orders_and_reproducible_random_draws():
    w = np.array([[0.1, 0.9, 0.5], [-2.0, 0.3, 0.3]])
    orders = channel_orders(w, draws=2, seed=3)
    np.testing.assert_array_equal(orders["most"], [[1, 2, 0], [0, 1, 2]])  # magnitudes; ties by index
    np.testing.assert_array_equal(orders["least"], [[0, 2, 1], [1, 2, 0]])
    assert orders["random"].shape == (2, 2, 3)
    assert all(sorted(row) == [0, 1, 2] for row in orders["random"].reshape(-1, 3))
    rng = np.random.default_rng(0)
    many = rng.random((10, 16))
    a, b = channel_orders(many, 3, seed=5), channel_orders(many, 3, seed=5)
    np.testing.assert_array_equal(a["random"], b["random"])
    assert not np.array_equal(a["random"], channel_orders(many, 3, seed=6)["random"])
    # a draw does not depend on how the images were batched
    np.testing.assert_array_equal(channel_orders(many[4:], 3, seed=5, first_index=4)["random"], a["random"][:, 4:])


def test_bad_fill_and_sizes_are_refused(images):
    model = _model("late")
    with pytest.raises(ValueError, match="valid: mean, zero"):
        channel_ablation(model, images, SIZE, fill="noise")
    with pytest.raises(ValueError, match="0..512"):
        channel_ablation(model, images, SIZE, ks=[0, 600])


# --- spatial deletion and insertion -------------------------------------------------------------

class _FixedMaps:
    """torchcam's CAM-extractor protocol around maps we already have: the independent
    implementation of RISE's deletion / insertion that ours is checked against."""

    def __init__(self, model, maps):
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextmanager
    def _hooks_off(self):
        yield


def _cbam_maps(model, data):
    captured = []
    hook = model.cbam.spatial.register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        model(to_model_input(data.images, SIZE))
    hook.remove()
    return captured[0][:, 0]  # (N, h, w)


@pytest.mark.parametrize("imputation", ["blur", "mean"])
def test_deletion_and_insertion_areas_equal_torchcams(images, imputation):
    from torchcam.metrics import DeletionInsertionMetric

    model = _model("middle")
    maps = _cbam_maps(model, images)
    assert maps.shape == (40, 4, 4)
    ours = spatial_deletion(model, images, SIZE, {"cbam": maps.numpy()}, deletion_fractions(8), draws=2,
                            imputation=imputation, batch_size=16).summaries()
    theirs = DeletionInsertionMetric(_FixedMaps(model, maps), functools.partial(torch.softmax, dim=-1), steps=8,
                                     baseline=lambda x: baseline_of(x, imputation), batch_size=64)
    theirs.update(to_model_input(images.images, SIZE), class_idx=images.labels.tolist())
    summary = theirs.summary()
    assert ours["deletion_cbam_prob_area"] == pytest.approx(summary["deletion_auc"], rel=1e-5)
    assert ours["insertion_cbam_prob_area"] == pytest.approx(summary["insertion_auc"], rel=1e-5)


class _ReadsTheCorner(torch.nn.Module):
    """Decides on the mean of the top-left 4 x 4 input pixels only: class 0 above ``t``, 1 below."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3)) - self.t
        return torch.stack([s, -s], dim=1) * 100


def test_a_decision_on_the_top_ranked_pixels_is_deleted_first(images):
    x = to_model_input(images.images, SIZE)
    t = float(x[:, :, :4, :4].mean(dim=(1, 2, 3)).median())
    model = _ReadsTheCorner(t)
    with torch.no_grad():
        data = ImageSet(images.images, model(x).argmax(1))  # its own decisions: 100 % unperturbed
    corner = np.zeros((len(data), 4, 4), np.float32)
    corner[:, 0, 0] = 1.0  # upsampled to 32 px: exactly 1 on the top-left 4 x 4 pixels, less elsewhere
    fractions = [0, 16 / SIZE ** 2, 0.5, 1]
    curves = spatial_deletion(model, data, SIZE, {"cbam": corner}, fractions, draws=3, seed=0, imputation="mean")
    deletion, insertion = curves.accuracy[("deletion", "cbam")], curves.accuracy[("insertion", "cbam")]
    blank = 100.0 * float((data.labels == (0 if -t > 0 else 1)).float().mean())  # all-zero corner
    assert deletion[0] == 100.0 and deletion[1] == pytest.approx(blank) and deletion[-1] == pytest.approx(blank)
    assert insertion[0] == pytest.approx(blank) and insertion[1] == 100.0 and insertion[-1] == 100.0
    random = curves.accuracy[("deletion", "random")]
    assert random.shape == (3, 4) and (random[:, 0] == 100.0).all() and (random[:, 1] > deletion[1]).all()
    summary = curves.summaries()
    assert summary["deletion_advantage_acc"] > 0 and summary["insertion_advantage_acc"] > 0
    assert summary["deletion_advantage_acc"] == pytest.approx(summary["deletion_random_acc_area"]
                                                              - summary["deletion_cbam_acc_area"])
    assert "deletion_normalised_acc" not in summary  # no ceiling map given: no normalised score
    # the map that is the decision's own region is its ceiling: normalised 1; a random-grid map sits near 0
    both = spatial_deletion(model, data, SIZE, {"cbam": corner, "ceiling": corner}, fractions, draws=3, seed=0,
                            imputation="mean").summaries()
    assert both["deletion_normalised_acc"] == pytest.approx(1.0) and both["insertion_normalised_acc"] == pytest.approx(1.0)
    flat = spatial_deletion(model, data, SIZE, {"cbam": random_maps((4, 4), len(data), 7, 1), "ceiling": corner},
                            fractions, draws=3, seed=0, imputation="mean").summaries()
    assert flat["deletion_normalised_acc"] == pytest.approx(
        (flat["deletion_cbam_acc_area"] - flat["deletion_random_acc_area"])
        / (flat["deletion_ceiling_acc_area"] - flat["deletion_random_acc_area"]))
    assert abs(flat["deletion_normalised_acc"]) < 0.5


def test_spatial_random_draws_are_reproducible_and_batch_free(images):
    model = _model("late")
    maps = {"cbam": _cbam_maps(model, images).numpy()}
    a = spatial_deletion(model, images, SIZE, maps, [0, 0.25, 1], draws=2, seed=4, batch_size=40)
    b = spatial_deletion(model, images, SIZE, maps, [0, 0.25, 1], draws=2, seed=4, batch_size=7)
    for key in a.probability:
        np.testing.assert_allclose(a.probability[key], b.probability[key], rtol=1e-5)
    np.testing.assert_array_equal(random_maps((2, 2), 5, 1, 4, first_index=3), random_maps((2, 2), 8, 1, 4)[3:])
    assert not np.array_equal(random_maps((2, 2), 5, 1, 4), random_maps((2, 2), 5, 1, 5))


def test_pixel_ranks_and_the_blur_baseline():
    ranks = pixel_ranks(torch.tensor([[[0.0, 1.0], [0.5, 0.5]]]), 2)
    np.testing.assert_array_equal(ranks.numpy(), [[3, 0, 1, 2]])  # ties by the lower index
    x = torch.randn(2, 3, 32, 32)
    blurred = baseline_of(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < 0.5 * x.std()  # the detail is gone
    torch.testing.assert_close(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.05, rtol=0)
    assert (baseline_of(x, "mean") == 0).all()
    with pytest.raises(ValueError, match="valid: blur, mean"):
        baseline_of(x, "noise")


def test_a_constant_map_orders_no_pixel_and_its_deletion_is_undefined(images):
    # a constant map ranks pixels in flat index order, also after bilinear upsampling (whose float
    # rounding is not constant: 0.6123 on a 1 x 1 grid came out unequal on 36 of 1,024 pixels)
    for grid in ((1, 1), (4, 4)):
        ranks = pixel_ranks(torch.full((1, *grid), 0.6123), SIZE)
        np.testing.assert_array_equal(ranks.numpy()[0], np.arange(SIZE * SIZE))
    assert constant_maps(np.array([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [1.0, 1.0]]])).tolist() == [True, False]
    data = images.subset(torch.arange(8))
    late = _model("late")  # at 32 px the CBAM map and the CAM are 1 x 1, and so are random maps on that grid
    one = np.full((8, 1, 1), 0.5, np.float32)
    judged = judge_faithfulness(late, data, SIZE, {"cbam": one, "cam": one}, draws=2)
    spatial = {k: v for k, v in judged.summaries.items() if k.startswith(("deletion", "insertion"))}
    assert spatial and all(np.isnan(v) for v in spatial.values())
    assert "deletion_advantage_acc" in spatial and np.isfinite(judged.summaries["channel_advantage_acc"])
    assert set(judged.undefined) == {"deletion/insertion of the cbam map", "deletion/insertion of the cam map",
                                     "deletion/insertion of the random maps"}
    assert {row["family"] for row in judged.rows} == {"channel"}
    # middle at 32 px: the CBAM map is 4 x 4 and ranks pixels; only the 1 x 1 CAM is undefined
    middle = _model("middle")
    maps = _cbam_maps(middle, data).numpy()
    judged = judge_faithfulness(middle, data, SIZE, {"cbam": maps, "cam": one}, draws=2)
    assert set(judged.undefined) == {"deletion/insertion of the cam map"}
    assert np.isnan(judged.summaries["deletion_cam_acc_area"])
    assert np.isfinite(judged.summaries["deletion_advantage_acc"]) and np.isfinite(judged.summaries["deletion_cbam_acc_area"])
    assert {row["order"] for row in judged.rows if row["family"] == "deletion"} == {"cbam", "random"}


def test_the_cost_line_counts_the_passes_the_protocol_makes(images):
    model = _model("middle")
    data = images.subset(torch.arange(6))
    maps = {"cbam": _cbam_maps(model, data).numpy(), "cam": random_maps((2, 2), 6, 0, 9)}
    counted = {"full": 0, "partial": 0}
    model.register_forward_hook(lambda m, i, out: counted.__setitem__("full", counted["full"] + out.shape[0]))
    for name in ("attended", "from_attended"):
        def wrapped(x, _inner=getattr(model, name)):
            counted["partial"] += x.shape[0]
            return _inner(x)
        setattr(model, name, wrapped)
    judge_faithfulness(model, data, SIZE, maps, draws=3, batch_size=4)
    assert counted == forward_passes(6, 128, draws=3, maps=2)
    # closed form: 11 ablation sizes for 128 channels, 7 interior fractions
    assert forward_passes(6, 128, draws=3, maps=2) == {"partial": 6 * (2 + 5 * 11), "full": 6 * (2 + 5 * 2 * 7)}
    assert forward_passes(6, 128, draws=3, maps=0)["full"] == 0
    # the re-initialised network's ablation (the floor) doubles the partial passes, not the full ones
    assert forward_passes(6, 128, draws=3, maps=2, randomised=True) == {"partial": 2 * 6 * (2 + 5 * 11),
                                                                        "full": 6 * (2 + 5 * 2 * 7)}


def test_faithfulness_benchmark_records_settings_and_every_repeat(tmp_path):
    import json

    import bench_faithfulness

    out = tmp_path / "bench.json"
    result = bench_faithfulness.main(["--images", "8", "--image-size", "32", "--positions", "late", "--draws", "2",
                                      "--repeats", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    late = saved["positions"]["late"]
    assert saved["images"] == 8 and saved["image_size"] == 32 and saved["draws"] == 2 and late["map_side"] == 1
    assert len(late["deletion_insertion_s"]) == 2 and len(late["forward_s"]) == 2
    assert late["total_median_s"] == pytest.approx(np.median(result["positions"]["late"]["channel_ablation_s"])
                                                   + np.median(late["deletion_insertion_s"]))
    assert late["total_in_forward_passes"] > 1
