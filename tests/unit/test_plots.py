import numpy as np
import pytest
from scipy import stats

from pipeline.report import plots
from pipeline.report.schema import ATTENTION, Axis
from pipeline.report.stats import interval

AXES = ATTENTION.figure_metrics


def labelled_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_weight_distributions_one_panel_per_gate_family_on_each_support():
    rng = np.random.default_rng(0)
    sparse = np.zeros((50, 512))
    sparse[:, :4] = rng.dirichlet(np.ones(4), 50)  # sparsemax-like: mostly exact zeros
    weights = {
        "sigmoid": rng.random((50, 512)),
        "scaled_tanh": rng.beta(5, 2, (50, 512)),
        "softmax": np.full((50, 512), 1 / 512),  # constant: gaussian_kde would raise
        "sparsemax": sparse,
        "swish": rng.normal(0.2, 1.0, (50, 512)),
    }
    fig = plots.plot_weight_distributions(weights)
    bounded, sum_to_one, unbounded = fig.axes
    assert "bounded" in bounded.get_title() and "sum-to-one" in sum_to_one.get_title() and "swish" in unbounded.get_title()
    assert bounded.get_xlim() == (0.0, 1.0)  # the bounded gates' support, no density outside it
    assert [ln.get_label() for ln in labelled_lines(bounded)] == ["sigmoid", "scaled_tanh"]
    labels = [ln.get_label() for ln in labelled_lines(sum_to_one)]
    assert labels[0].startswith("softmax") and "constant 1" in labels[0]  # weight × C = 1: uniform
    assert labels[1] == "sparsemax (99.2 % exactly 0)"  # 508 of 512 channels
    assert sum_to_one.get_xscale() == "log"  # weights × C span decades; 1 = uniform is on the axis
    lo, hi = sum_to_one.get_xlim()
    assert lo < 1 < hi and hi > np.percentile(sparse[sparse > 0] * 512, 99)
    lo, hi = unbounded.get_xlim()
    assert lo < -2 and hi > 2  # swish keeps its own axis
    # a reflected KDE of uniform weights integrates to 1 on [0, 1] and stays flat up to the edges
    sigmoid = labelled_lines(bounded)[0]
    grid, density = sigmoid.get_xdata(), sigmoid.get_ydata()
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.03)
    assert density[0] == pytest.approx(1.0, abs=0.2) and density[-1] == pytest.approx(1.0, abs=0.2)
    # gate_norm mean_one: the weights are already × C (uniform = 1), so they are not multiplied again
    fig = plots.plot_weight_distributions({"softmax": np.ones((50, 512))}, times_c=True)
    assert "constant 1" in labelled_lines(fig.axes[0])[0].get_label()


def test_gate_metric_panels_have_fixed_ranges_and_drop_constant_metrics():
    values = {
        "sigmoid": {"test_acc": [89.9, 90.3, 90.1], "gini": [0.35, 0.36, 0.34], "sparsity": [0, 0, 0],
                    "entropy": [0.9, 0.91, 0.92], "focus_pct": [50.0] * 3},
        "sparsemax": {"test_acc": [46.5, 50.0, 48.0], "gini": [0.99, 0.99, 0.98], "sparsity": [0.99, 0.98, 0.99],
                      "entropy": [0.1, 0.1, 0.12], "focus_pct": [50.0] * 3},
        "softmax": {"test_acc": [83.5, 84.0, 83.0], "gini": [0.99, 0.99, 0.99], "sparsity": [0, 0, 0],
                    "entropy": [0.99, 0.99, 0.99], "focus_pct": [50.0] * 3},
    }
    intervals = {g: {m: interval(v) for m, v in mv.items()} for g, mv in values.items()}
    fig = plots.plot_gate_metrics(values, intervals, AXES, reference="sigmoid")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    # the reference's CI shaded across each panel
    patch = panels[0].patches[0]  # axvspan: a rectangle in data x, axes y
    band = np.array([patch.get_x(), patch.get_x() + patch.get_width()])
    ref = np.array([89.9, 90.3, 90.1])
    ref_half = stats.t.ppf(0.975, 2) * ref.std(ddof=1) / np.sqrt(3)
    assert (band.min(), band.max()) == pytest.approx((ref.mean() - ref_half, ref.mean() + ref_half))
    assert "shaded: sigmoid's CI" in fig._suptitle.get_text()
    assert [ax.get_xlabel() for ax in panels] == ["test accuracy (%)", "Gini of |w|", "entropy of |w| / log C",
                                                  "weights exactly 0 (%)"]
    assert [ax.get_xlim() for ax in panels] == [(-3, 103), (-0.03, 1.03), (-0.03, 1.03), (-3, 103)]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "equal for every gate, not shown: focus_pct" in title  # the same mean for every gate: named, not drawn
    assert "test_map" not in title  # no gate has a value (e.g. only the baseline without CBAM): not named either
    acc = panels[0]
    # the CI bar of sigmoid: mean ± t(0.975, 2) · s / √3
    v = np.array([89.9, 90.3, 90.1])
    half = stats.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    bars = [ln.get_xdata() for ln in acc.get_lines() if len(ln.get_xdata()) == 2]
    assert any(np.allclose(b, [v.mean() - half, v.mean() + half]) for b in bars)
    sparsity = panels[3]  # fractions drawn in percent
    means = [ln.get_xdata()[0] for ln in sparsity.get_lines() if ln.get_marker() == "D"]
    assert max(means) == pytest.approx(100 * np.mean([0.99, 0.98, 0.99]))
    one_metric = {"a": {"gini": [0.5]}, "b": {"gini": [0.5]}}
    assert plots.plot_gate_metrics(one_metric, {}, AXES) is None  # equal for every gate: nothing to draw
    # a metric only one gate has (faith/* measured for one gate of two) is drawn, not called equal for every gate
    one_gate = {"a": {"gini": [0.5, 0.6]}, "b": {"gini": [np.nan, np.nan]}}
    assert plots.metric_values(one_gate, AXES) == (["gini"], [])
    fig = plots.plot_gate_metrics(one_gate, {}, AXES, reference="b")
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "not measured: b" in title and "shaded" not in title
    # a figure metric is declared once, with its axis, in its family: nothing else to register
    new = {"a": {"loc/new": [0.2, 0.3]}, "b": {"loc/new": [0.6, 0.7]}}
    fig = plots.plot_gate_metrics(new, {}, {"loc/new": Axis("a new measure (%)", 0.0, 100.0, 100.0)})
    panel = next(ax for ax in fig.axes if ax.get_visible())
    assert panel.get_xlabel() == "a new measure (%)" and panel.get_xlim() == (-3, 103)


def test_curves_gate_parameters_gradient_flow_and_grid(tmp_path):
    histories = {"sigmoid": {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "train_acc": [60, 80], "val_acc": [55, 75]}}
    fig = plots.plot_curves(histories)
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]
    assert "%" in fig.axes[1].get_ylabel() and list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2]
    fig = plots.plot_gate_parameters({"scaled_tanh": {"gate_scale": [1.0, 1.2]}, "sigmoid": {}})
    assert fig.axes[0].get_title() == "gate_scale" and len(labelled_lines(fig.axes[0])) == 1
    assert plots.plot_gate_parameters({"sigmoid": {}, "swish": {}}) is None  # no placeholder figure
    names = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "cbam.channel.mlp.0.weight",
             "layer4.1.conv2.weight", "fc.weight"]
    fig = plots.plot_gradient_flow({"sigmoid": (names, [1e-3, 1e-2, 0.0, 1e-4, 1e-5, 1e-3, 1e-2])})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["stem", "layer1", "cbam", "layer4", "fc"]
    assert [t.get_text().split("\n")[1] for t in ax.get_xticklabels()] == ["(2)", "(2)", "(1)", "(1)", "(1)"]
    assert plots.plot_gradient_flow({}) is None
    images = np.zeros((3, 3, 8, 8), dtype=np.uint8)
    maps = {"sigmoid": np.full((3, 2, 2), 0.5), "softmax": np.zeros((3, 2, 2))}
    fig = plots.plot_spatial_grid(images, maps)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * 3  # a row of images, then a row per gate
    overlays = [im for ax in image_axes for im in ax.images if im.get_cmap().name == "inferno"]
    assert len(overlays) == 6 and {tuple(im.get_clim()) for im in overlays} == {(0.0, 1.0)}
    assert all(ax.images[0].get_cmap().name == "gray" for ax in image_axes[3:])  # the image under each map
    assert len(fig.axes) == 10  # and one colour bar
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH_IN
    paths = plots.save_figure(fig, tmp_path / "grid")
    assert open(paths[0], "rb").read(4) == b"%PDF" and open(paths[1], "rb").read(4) == b"\x89PNG"


def test_attention_over_epochs_has_a_panel_per_metric_on_fixed_ranges():
    series = {"sigmoid": {"gini": [0.2, 0.3, 0.35], "entropy": [0.95, 0.93, 0.9], "avg_score": [0.5, 0.6, 0.62]},
              "softmax": {"gini": [0.5, 0.9, 0.99], "entropy": [0.6, 0.2, 0.05], "avg_score": [1 / 512] * 3}}
    fig = plots.plot_attention_epochs(series)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Gini", "entropy / log C", "mean weight (log)"]
    assert fig.axes[0].get_ylim() == (0.0, 1.0) and fig.axes[2].get_yscale() == "log"
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2, 3]  # epochs from 1
    assert plots.plot_attention_epochs({"sigmoid": {}}) is None  # runs from before the metrics: no figure


def test_class_attention_heatmap_orders_channels_by_mean_weight():
    m = np.array([[0.1, 0.9, 0.5], [0.2, 0.7, 0.5]])
    fig = plots.plot_class_attention({"sigmoid": m, "softmax": np.full((2, 3), np.nan)}, ["a", "b"])
    [ax] = [a for a in fig.axes if a.images]  # a gate without values gets no panel
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown[0], np.array([0.9, 0.5, 0.1]) / m.mean())  # largest mean channel first
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"] and ax.get_ylabel() == "sigmoid"
    assert plots.plot_class_attention({"softmax": np.full((2, 3), np.nan)}, ["a", "b"]) is None


def test_figure_titles_count_in_the_singular_and_plural():
    from pipeline.report.figures import counted

    assert [counted(n, "run") for n in (0, 1, 2, 12)] == ["0 runs", "1 run", "2 runs", "12 runs"]
    assert counted(1, "seed") == "1 seed" and counted(3, "seed") == "3 seeds"


def test_a_single_row_puts_its_colour_bar_below_and_its_label_inside_the_figure():
    def inside(fig, ax):  # the axes with its tick labels and its label, within the figure
        fig.canvas.draw()
        box = ax.get_tightbbox(fig.canvas.get_renderer())
        return fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1

    one = plots.plot_spatial_grid(np.zeros((6, 3, 8, 8), dtype=np.uint8), {"swish": np.full((6, 2, 2), 0.5)})
    *_, bar = one.axes
    assert bar.get_xlabel() == "spatial attention (0..1)" and inside(one, bar)  # across, under the maps
    assert bar.get_position().y1 < min(ax.get_position().y0 for ax in one.axes[:-1])
    two = plots.plot_spatial_grid(np.zeros((6, 3, 8, 8), dtype=np.uint8),
                                  {"a": np.full((6, 2, 2), 0.5), "b": np.zeros((6, 2, 2))})
    assert two.axes[-1].get_ylabel() == "spatial attention (0..1)" and inside(two, two.axes[-1])  # beside them
    heat = plots.plot_class_attention({"swish": np.random.default_rng(0).random((10, 64))}, [str(k) for k in range(10)])
    heatmap, bar = heat.axes
    assert bar.get_xlabel() == "weight / gate's mean weight" and inside(heat, bar)
    assert bar.get_position().y1 < heatmap.get_position().y0


def test_floor_and_ceiling_lines_sit_at_the_given_levels_and_are_named():
    values = {"sigmoid": {"loc/cbam_pxap": [0.04, 0.2, 0.05]}, "softmax": {"loc/cbam_pxap": [0.03, 0.03, 0.04]}}
    axes = {"loc/cbam_pxap": Axis("CBAM map PxAP", 0.0, 100.0, 100.0)}
    fig = plots.plot_gate_metrics(values, {}, axes, bounds={"loc/cbam_pxap": (0.045, 0.805)},
                                  bounds_label="dotted: floor (random maps); dash-dot: ceiling (pooled mask)")
    panel = next(ax for ax in fig.axes if ax.get_visible())
    lines = {ln.get_linestyle(): ln.get_xdata()[0] for ln in panel.get_lines() if len(set(ln.get_xdata())) == 1
             and ln.get_marker() in ("None", "", None)}
    assert lines[":"] == pytest.approx(4.5) and lines["-."] == pytest.approx(80.5)  # drawn in the axis' scale
    assert "dotted: floor (random maps); dash-dot: ceiling (pooled mask)" in fig._suptitle.get_text().replace("\n", " ")
    # a floor without a ceiling (channel ablation): one line, and no ceiling drawn
    fig = plots.plot_gate_metrics(values, {}, axes, bounds={"loc/cbam_pxap": (0.0, np.nan)}, bounds_label="dotted: floor")
    panel = next(ax for ax in fig.axes if ax.get_visible())
    styles = [ln.get_linestyle() for ln in panel.get_lines() if ln.get_marker() in ("None", "", None)
              and len(set(ln.get_xdata())) == 1]
    assert styles == [":"]
    # none given: nothing named
    fig = plots.plot_gate_metrics(values, {}, axes)
    assert "floor" not in fig._suptitle.get_text()
