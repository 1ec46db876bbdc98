import numpy as np
import pandas as pd
import pytest

from pipeline import plots
from pipeline.steps.report import Result, summary_table, to_latex, to_markdown


def labelled_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_kde_has_one_line_per_activation_and_survives_constant_and_sparse_weights():
    rng = np.random.default_rng(0)
    sparse = np.zeros((50, 512))
    sparse[:, 0] = 1.0  # sparsemax-like: two distinct values only
    weights = {
        "sigmoid": rng.random((50, 512)),
        "softmax": np.full((50, 512), 1 / 512),  # constant: gaussian_kde would raise
        "sparsemax": sparse,
        "swish": rng.normal(0.2, 1.0, (50, 512)),
    }
    fig = plots.plot_kde(weights)
    ax = fig.axes[0]
    lines = labelled_lines(ax)
    assert [line.get_label().split(" ")[0] for line in lines] == list(weights)
    assert "constant" in lines[1].get_label()
    assert ax.get_title() and "weight" in ax.get_xlabel() and "density" in ax.get_ylabel()
    density = lines[0].get_ydata()
    grid = lines[0].get_xdata()
    assert np.all(density >= 0) and np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.05)


def test_radar_values_lie_in_unit_interval():
    rows = {
        "sigmoid": {"avg_score": 0.6458, "focus_pct": 64.45, "sparsity": 0, "gini": 0.3542, "entropy": 0.95,
                    "focus_area_ratio": 0.4, "test_acc": 89.91, "test_map": 0.93},
        "swish": {"avg_score": 1.2777, "focus_pct": 25.2, "sparsity": 0, "gini": 0.8966, "entropy": float("nan"),
                  "focus_area_ratio": 0.7, "test_acc": 89.54, "test_map": 0.92},
    }
    fig = plots.plot_radar(rows)
    ax = fig.axes[0]
    lines = labelled_lines(ax)
    assert len(lines) == 2
    for line in lines:
        values = np.asarray(line.get_ydata())
        assert values.min() >= 0 and values.max() <= 1
    np.testing.assert_allclose(plots.radar_values(rows["sigmoid"])[:2], [0.6458, 0.6445])
    assert plots.radar_values(rows["swish"])[0] == 1.0  # clipped to the stated range
    assert all("[" in t.get_text() for t in ax.get_xticklabels())  # ranges are stated


def test_curves_gate_parameters_gradient_flow_and_grid(tmp_path):
    histories = {"sigmoid": {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "train_acc": [60, 80], "val_acc": [55, 75]}}
    fig = plots.plot_curves(histories)
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]
    assert "%" in fig.axes[1].get_ylabel() and len(labelled_lines(fig.axes[0])) == 2
    fig = plots.plot_gate_parameters({"scaled_tanh": {"gate_scale": [1.0, 1.2]}, "sigmoid": {}})
    assert fig.axes[0].get_title() == "gate_scale" and len(labelled_lines(fig.axes[0])) == 1
    fig = plots.plot_gradient_flow({"sigmoid": (["a", "b", "c"], [1e-3, 1e-2, 0.0])})
    assert fig.axes[0].get_yscale() == "log"
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    maps = {"sigmoid": np.full((2, 2, 2), 0.5), "softmax": np.zeros((2, 2, 2))}
    fig = plots.plot_spatial_grid(images, maps)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 3 * 2
    # one colour scale for every map
    assert {tuple(im.get_clim()) for ax in image_axes for im in ax.images[1:] if im.get_cmap().name == "inferno"} \
        == {(0.0, 1.0)}
    paths = plots.save_figure(fig, tmp_path / "grid")
    assert open(paths[0], "rb").read(4) == b"%PDF" and open(paths[1], "rb").read(4) == b"\x89PNG"


def result(activation, seed, **metrics):
    return Result(activation, "late", str(seed), metrics, "t", "p", "m")


def test_summary_table_mean_and_std_over_seeds_and_formats():
    results = [result("swish", 0, gini=0.5, test_acc=90.0), result("swish", 1, gini=0.7, test_acc=92.0),
               result("sigmoid", 0, gini=0.3542, test_acc=89.91)]
    table = summary_table(results)
    assert list(table["activation"]) == ["sigmoid", "swish"]  # registry order
    swish = table.iloc[1]
    assert swish["gini"] == pytest.approx(0.6) and swish["gini_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert swish["seeds"] == 2 and np.isnan(table.iloc[0]["gini_std"])
    md = to_markdown(table)
    assert "| late | sigmoid | 1 | n/a | n/a | n/a | 0.3542 | 89.91 |" in md
    assert "0.6 ± 0.14" in md
    tex = to_latex(table, "caption")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
