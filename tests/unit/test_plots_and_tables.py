import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline import plots
from pipeline.report.figures import counted
from pipeline.report.schema import ATTENTION, GROUP_KEYS, Record
from pipeline.report.stats import distinct_seeds, figure_groups, interval, summary_table
from pipeline.report.tables import to_latex, to_markdown


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
    fig = plots.plot_gate_metrics(values, intervals, reference="sigmoid")
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
    assert plots.plot_gate_metrics(one_metric, {}) is None  # equal for every gate: nothing to draw


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


CONFIG = {"dataset": "digits", "image_size": "64", "epochs": "2", "weights": "none", "lr": "0.001", "batch_size": "64",
          "val_fraction": "0.1", "num_images": "-1", "gate_norm": "", "position": "late"}


def result(activation, seed, start=0, **metrics):
    config = {**CONFIG, "activation": activation, **{k: metrics.pop(k) for k in list(metrics) if k in GROUP_KEYS}}
    return Record(config, str(seed), metrics, "t", "p", "m", start)


def test_summary_table_ci_over_seeds_and_compact_formats():
    results = [result("swish", 0, gini=0.5, test_acc=90.0), result("swish", 1, gini=0.7, test_acc=92.0),
               result("sigmoid", 0, gini=0.3542, test_acc=89.91, sparsity=0.0125)]
    table = summary_table(results)
    assert list(table["activation"]) == ["sigmoid", "swish"]  # registry order
    swish = table.iloc[1]
    assert swish["gini"] == pytest.approx(0.6) and swish["gini_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    half = stats.t.ppf(0.975, 1) * np.std([0.5, 0.7], ddof=1) / np.sqrt(2)
    assert swish["gini_ci95_low"] == pytest.approx(0.6 - half) and swish["gini_ci95_high"] == pytest.approx(0.6 + half)
    assert swish["seeds"] == 2 and np.isnan(table.iloc[0]["gini_std"]) and table.iloc[0]["gini_n"] == 1
    md = to_markdown(table, "test", ATTENTION)
    assert "Constant across this report: dataset digits, 64 px, 2 epochs, weights none, lr 0.001, " \
           "batch size 64, val. fraction 0.1, all test images probed, position late." in md
    rows = [line for line in md.splitlines() if line.startswith("| s")]
    assert [c.strip() for c in rows[0].split("|")[1:-1]] == ["sigmoid", "1", "89.9", "0.354", "n/a", "1.2", "n/a", "n/a", "n/a"]
    # one decimal convention per column: accuracy 1 decimal, Gini 3, the CI half-width alike
    assert f"91.0 ± {stats.t.ppf(0.975, 1) * np.std([90, 92], ddof=1) / np.sqrt(2):.1f}" in rows[1]
    assert f"0.600 ± {half:.3f}" in rows[1]
    assert len({len(line) for line in md.splitlines() if line.startswith("|")}) == 1  # aligned
    tex = to_latex(table, ATTENTION, "source: sweep run abc")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption"))
    assert "abc" not in caption and "digits" in caption  # the run id only in a comment
    assert tex.splitlines()[0] == "% source: sweep run abc"


def test_unlike_runs_are_never_pooled_and_a_seed_counts_once():
    results = [result("swish", 0, gini=0.5), result("swish", 0, gini=0.9, dataset="fake", image_size="32", epochs="1"),
               result("swish", 1, gini=0.7), result("swish", 1, start=5, gini=0.8)]  # a rerun of seed 1: newest counts
    table = summary_table(distinct_seeds(results))
    assert len(table) == 2 and list(table["dataset"]) == ["digits", "fake"]  # sorted by dataset first
    assert list(table["seeds"]) == [2, 1]
    assert table.iloc[0]["gini"] == pytest.approx((0.5 + 0.8) / 2)  # seed 1's newest run
    md = to_markdown(table, "report", ATTENTION)
    header = next(line for line in md.splitlines() if line.startswith("| "))
    assert [h.strip() for h in header.split("|")[1:5]] == ["dataset", "image size (px)", "epochs", "gate"]
    assert "Constant across this report: weights none" in md
    groups = figure_groups([r for r in results if r.start_time == 0])
    assert set(groups) == {"digits_64px_2ep_late", "fake_32px_1ep_late"}


def test_summary_csv_has_every_number(tmp_path):
    results = [result("sigmoid", s, gini=g, test_acc=a) for s, g, a in ((0, 0.3, 88.0), (1, 0.4, 90.0), (2, 0.35, 89.0))]
    table = summary_table(results)
    table.to_csv(tmp_path / "s.csv", index=False)
    back = pd.read_csv(tmp_path / "s.csv")
    n, mean, std = 3, 89.0, 1.0
    half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)
    row = back.iloc[0]
    assert row["test_acc"] == pytest.approx(mean) and row["test_acc_std"] == pytest.approx(std)
    assert row["test_acc_ci95_low"] == pytest.approx(mean - half) and row["test_acc_ci95_high"] == pytest.approx(mean + half)
    assert row["seeds"] == 3 and row["seed_list"] == "0 1 2"


def test_paired_comparisons_against_the_reference_match_an_independent_computation():
    from pipeline.report.stats import paired_comparisons
    from pipeline.report.tables import comparison_markdown

    rng = np.random.default_rng(3)
    ref_acc = 90 + rng.normal(0, 1, 7)
    swish_acc = ref_acc - 1.0 + rng.normal(0, 0.3, 7)
    results = [result("sigmoid", s, test_acc=ref_acc[s], gini=0.3 + 0.01 * s) for s in range(7)]
    results += [result("swish", s, test_acc=swish_acc[s], gini=0.7 + 0.02 * s) for s in range(7)]
    results += [result("softmax", s, test_acc=80.0 + s * s, gini=0.99) for s in (0, 2, 5)]  # seeds missing
    results += [result("sparsemax", 4, test_acc=40.0, gini=0.99)]  # one seed
    table = summary_table(results)
    comparisons = paired_comparisons(results, "sigmoid")
    acc = comparisons[comparisons["metric"] == "test_acc"].set_index("gate")
    assert set(acc.index) == {"swish", "softmax", "sparsemax"}

    def expected(diffs):
        d = np.asarray(diffs)
        n, mean, sd = d.size, d.mean(), d.std(ddof=1)
        t = mean / (sd / np.sqrt(n))
        return mean, stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n), 2 * stats.t.sf(abs(t), n - 1)

    mean, half, p = expected(swish_acc - ref_acc)
    row = acc.loc["swish"]
    assert row["pairs"] == 7 and row["mean_diff"] == pytest.approx(mean)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((mean - half, mean + half))
    assert row["p_ttest"] == pytest.approx(p)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(swish_acc - ref_acc).pvalue)  # 7 pairs >= 6
    soft = [80.0 + s * s - ref_acc[s] for s in (0, 2, 5)]  # paired over the common seeds only
    mean_s, half_s, p_s = expected(soft)
    row = acc.loc["softmax"]
    assert row["pairs"] == 3 and row["seeds"] == "0 2 5" and row["mean_diff"] == pytest.approx(mean_s)
    assert row["ci95_high"] == pytest.approx(mean_s + half_s) and np.isnan(row["p_wilcoxon"])  # < 6 pairs
    row = acc.loc["sparsemax"]
    assert row["pairs"] == 1 and row["mean_diff"] == pytest.approx(40.0 - ref_acc[4])
    assert np.isnan(row["ci95_low"]) and np.isnan(row["p_ttest"])  # one pair: no interval, no test
    # Holm across the gates with a p-value: the smaller times 2, the larger times 1, monotone
    ordered = sorted([p, p_s])
    holm = [min(1, 2 * ordered[0]), max(min(1, 2 * ordered[0]), ordered[1])]
    got = sorted([acc.loc["swish", "p_ttest_holm"], acc.loc["softmax", "p_ttest_holm"]])
    assert got == pytest.approx(holm) and np.isnan(acc.loc["sparsemax", "p_ttest_holm"])
    md = comparison_markdown(table, comparisons, "sigmoid", ATTENTION)
    swish_line = next(line for line in md.splitlines() if line.startswith("| swish"))
    marks = "***" if holm[ordered.index(p)] < 0.001 else "**" if holm[ordered.index(p)] < 0.01 else "*"
    assert f"{mean:+.1f} ± {half:.1f}{marks}" in swish_line
    sparse_line = next(line for line in md.splitlines() if line.startswith("| sparsemax"))
    assert f"{40.0 - ref_acc[4]:+.1f} " in sparse_line and "±" not in sparse_line.split("|")[3]
    assert "fewer than two pairs" in md and "Holm" in md


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
    assert [counted(n, "run") for n in (0, 1, 2, 12)] == ["0 runs", "1 run", "2 runs", "12 runs"]
    assert counted(1, "seed") == "1 seed" and counted(3, "seed") == "3 seeds"
