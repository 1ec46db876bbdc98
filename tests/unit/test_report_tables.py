"""The report's statistics and tables, checked against independent computations (scipy),
without MLflow or torch: the report layer's pure part is importable and testable alone."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.report.schema import ATTENTION, GROUP_KEYS, Record
from pipeline.report.stats import distinct_seeds, figure_groups, summary_table
from pipeline.report.tables import to_latex, to_markdown


def test_stats_and_tables_import_neither_mlflow_nor_torch():
    code = ("import sys, pipeline.report.stats, pipeline.report.tables, pipeline.report.schema; "
            "print(sorted(m for m in ('mlflow', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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


def test_runs_table_holds_the_values_each_summary_row_summarises():
    from pipeline.report.stats import runs_table

    results = [result("swish", 1, gini=0.7, test_acc=92.0), result("sigmoid", 0, gini=0.3, test_acc=89.0),
               result("swish", 0, gini=0.5, test_acc=90.0)]
    runs = runs_table(results)
    assert list(zip(runs["activation"], runs["seed"])) == [("sigmoid", "0"), ("swish", "0"), ("swish", "1")]
    assert list(runs["gini"]) == [0.3, 0.5, 0.7] and np.isnan(runs["entropy"]).all()
    assert list(runs.columns[:len(GROUP_KEYS)]) == list(GROUP_KEYS) and runs["metrics_run_id"].eq("m").all()
    # the summary's mean and interval, recomputed from the runs with scipy
    swish = runs[runs["activation"] == "swish"]["test_acc"].to_numpy()
    low, high = stats.t.interval(0.95, len(swish) - 1, loc=swish.mean(), scale=stats.sem(swish))
    row = summary_table(results).set_index("activation").loc["swish"]
    assert row["test_acc"] == pytest.approx(swish.mean())
    assert (row["test_acc_ci95_low"], row["test_acc_ci95_high"]) == (pytest.approx(low), pytest.approx(high))


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


def _localised(activation, seed, cbam_pxap, cam_pxap, uniform_pxap=4.8, **more):
    return result(activation, seed, **{"test_acc": 50.0, "gini": 0.4, "loc/cbam_pxap": cbam_pxap,
                                       "loc/cam_pxap": cam_pxap, "loc/uniform_pxap": uniform_pxap,
                                       "loc/centre_pxap": 8.9, "loc/uniform_pointing_mask": 0.048, **more})


def test_localisation_family_table_chance_and_presence():
    from pipeline.report.schema import FAMILIES, LOCALISATION, present_families
    from pipeline.report.stats import paired_comparisons
    from pipeline.report.tables import comparison_markdown

    records = [_localised("sigmoid", 0, 10.0, 20.0), _localised("sigmoid", 1, 14.0, 22.0),
               _localised("sparsemax", 0, 30.0, 21.0), _localised("sparsemax", 1, 34.0, 25.0)]
    assert present_families(records) == FAMILIES[:2]  # no faithfulness metrics: no such table
    # a report of runs without ground truth has no localisation table
    assert present_families([result("sigmoid", 0, gini=0.3)]) == FAMILIES[:1]
    table = summary_table(records, FAMILIES)
    md = to_markdown(table, "test", LOCALISATION, first=False)
    assert md.startswith("\n## Localisation\n")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if line.startswith("| s")}
    half = stats.t.ppf(0.975, 1) * np.std([10.0, 14.0], ddof=1) / np.sqrt(2)
    assert rows["sigmoid"][2] == f"12.0 ± {half:.1f}"  # CBAM PxAP, one decimal
    assert rows["sigmoid"][3] == "n/a"  # MaxBoxAccV2 not logged by these records
    # the chance levels stated under the table, not as rows
    assert "Chance on the same images: uniform map: PxAP 4.8, pointing 0.048; centre prior: PxAP 8.9." in md
    assert "Floor and ceiling" not in md  # runs made before them: nothing said
    bounded = summary_table([_localised("sigmoid", 0, 20.0, 10.0, **{"loc/random_pxap": 4.5, "loc/ceiling_pxap": 80.5,
                                                                      "loc/cbam_pxap_normalised": 15.5 / 76.0})],
                            FAMILIES)
    md = to_markdown(bounded, "test", LOCALISATION, first=False)
    assert ("Floor and ceiling of the CBAM map's grid on the same images: floor (random maps of the grid): PxAP 4.5; "
            "ceiling (the mask pooled to the grid): PxAP 80.5; normalised: (map − floor) / (ceiling − floor) on the map's "
            "own grid") in md
    import re

    assert re.search(r"\|\s+0\.20 \|\s+n/a \|\s+n/a \|$", md, re.M)  # the normalised PxAP column, two decimals
    comparisons = paired_comparisons(records, "sigmoid", FAMILIES)
    cbam = comparisons[(comparisons["metric"] == "loc/cbam_pxap") & (comparisons["gate"] == "sparsemax")]
    assert cbam["mean_diff"].item() == pytest.approx(20.0) and cbam["pairs"].item() == 2
    assert "## Localisation against sigmoid" in comparison_markdown(table, comparisons, "sigmoid", LOCALISATION,
                                                                    first=False)


def test_chance_ranges_where_rows_differ():
    from pipeline.report.schema import FAMILIES, LOCALISATION
    from pipeline.report.tables import chance_text

    records = [_localised("sigmoid", 0, 10.0, 20.0, uniform_pxap=4.8),
               _localised("sigmoid", 0, 10.0, 20.0, uniform_pxap=5.5, image_size="128")]
    text = chance_text(summary_table(records, FAMILIES), LOCALISATION)
    assert "uniform map: PxAP 4.8–5.5" in text


def _curves(seed, shift):
    """A probe's curve table: channel (most, random × 2) and deletion / insertion (cbam, random × 2)."""
    rows = []
    ks = [0, 1, 2, 4]
    for order, draws in (("most", [-1]), ("least", [-1]), ("random", [0, 1])):
        for d in draws:
            rows += [{"family": "channel", "order": order, "draw": d, "x": k / 4, "k": k,
                      "accuracy": 90.0 - 20 * k * (order == "most") - 5 * k * (order != "most") + shift + d,
                      "probability": 0.5} for k in ks]
    for family in ("deletion", "insertion"):
        for order, draws in (("cbam", [-1]), ("cam", [-1]), ("random", [0, 1])):
            for d in draws:
                rows += [{"family": family, "order": order, "draw": d, "x": f, "k": -1,
                          "accuracy": 50.0 + 10 * f + 3 * d + shift + (order == "cbam"), "probability": 0.5}
                         for f in (0.0, 0.5, 1.0)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # any row order


def test_faithfulness_family_curves_over_seeds_and_figure(tmp_path):
    from pipeline.report import plots
    from pipeline.report.schema import FAITHFULNESS, FAMILIES, present_families
    from pipeline.report.stats import faithfulness_curves, group_stats

    # the seeds' mean of the attention-ordered curve, and the random draws of every seed pooled
    got = faithfulness_curves([_curves(0, 0.0), _curves(1, 2.0)], "channel")
    np.testing.assert_allclose(got["x"], [0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(got["attention"], [90.0, 70.0, 50.0, 10.0])  # 90 - 20k + shift + draw (-1), over seeds
    draws = np.array([[90.0 - 5 * k + s + d for k in (0, 1, 2, 4)] for s in (0.0, 2.0) for d in (0, 1)])
    np.testing.assert_allclose(got["random"], draws.mean(axis=0))
    np.testing.assert_allclose(got["random_std"], draws.std(axis=0, ddof=1))
    assert faithfulness_curves([None], "channel") is None
    assert faithfulness_curves([_curves(0, 0.0), _curves(1, 0.0)[lambda t: t.k != 4]], "channel") is None  # grids differ
    records = []
    for gate, shift in (("sigmoid", 0.0), ("sparsemax", 10.0)):
        for seed in (0, 1):
            r = result(gate, seed, test_acc=90.0, gini=0.4, **{"faith/channel_advantage_acc": shift + seed,
                                                               "faith/deletion_advantage_acc": 1.0 + seed})
            r.faithfulness_curves = _curves(seed, shift)
            records.append(r)
    assert present_families(records) == (FAMILIES[0], FAITHFULNESS)
    table = summary_table(records, FAMILIES)
    md = to_markdown(table, "test", FAITHFULNESS, first=False)
    assert md.startswith("\n## Faithfulness\n") and "ablation advantage" in md
    row = next(line for line in md.splitlines() if line.startswith("| sparsemax")).split("|")
    half = stats.t.ppf(0.975, 1) * np.std([10.0, 11.0], ddof=1) / np.sqrt(2)
    assert row[5].strip() == f"10.5 ± {half:.1f}"  # gate, seeds, top first, random, advantage
    g = group_stats("late", records, ())
    assert set(g.faithfulness) == {"channel", "deletion", "insertion"} and set(g.faithfulness["deletion"]) == {
        "sigmoid", "sparsemax"}
    fig = plots.plot_faithfulness_curves(g.faithfulness, "Faithfulness curves")
    width, height = fig.get_size_inches()
    assert width == pytest.approx(plots.COLUMN_WIDTH_IN) and len([a for a in fig.axes if a.get_visible()]) == 3
    written = plots.save_figure(fig, tmp_path / "faithfulness_curves_late")
    assert all((tmp_path / p).stat().st_size > 10_000 for p in written)


def test_figure_floors_and_ceilings_are_the_runs_means_and_absent_where_unmeasured():
    from pipeline.report.stats import group_stats

    loc = {"loc/cbam_pxap": 0.1, "loc/random_pxap": 0.04, "loc/ceiling_pxap": 0.80}
    records = [result("sigmoid", 0, test_acc=90.0, **loc),
               result("sigmoid", 1, test_acc=91.0, **{**loc, "loc/random_pxap": 0.05, "loc/ceiling_pxap": 0.81}),
               result("softmax", 0, test_acc=92.0, **{"faith/channel_advantage_acc": 40.0,
                                                      "faith/channel_randomised_advantage_acc": 0.0})]
    g = group_stats("middle", records, ())
    assert g.bounds["loc/cbam_pxap"] == pytest.approx((0.045, 0.805))  # mean over the runs that measured it
    floor, ceiling = g.bounds["faith/channel_advantage_acc"]
    assert floor == 0.0 and np.isnan(ceiling)  # channel ablation has a floor and no ceiling
    assert "loc/cam_pxap" not in g.bounds  # no run measured the CAM's grid


def test_designs_and_backbones_are_never_pooled_and_the_baseline_joins_each_design():
    from pipeline.report.schema import with_design_defaults
    from pipeline.report.stats import figure_groups, varying_keys
    from pipeline.report.tables import constants_text

    def run(gate, seed, attention, backbone="resnet18", **m):
        position = "none" if gate == "none" else "late"
        block = "none" if gate == "none" else attention
        return result(gate, seed, position=position, attention=block, backbone=backbone,
                      spatial_gate="none" if gate == "none" else "sigmoid", **m)

    records = [run("sigmoid", 0, "cbam", test_acc=90.0), run("sigmoid", 0, "se", test_acc=80.0),
               run("sigmoid", 1, "se", test_acc=82.0), run("none", 0, "none", test_acc=70.0)]
    table = summary_table(records)
    assert list(zip(table["attention"], table["activation"])) == [("cbam", "sigmoid"), ("se", "sigmoid"),
                                                                   ("none", "none")]  # registry order
    assert table.loc[table["attention"] == "se", "test_acc"].item() == pytest.approx(81.0)  # pooled over seeds only
    assert varying_keys(table) == ["attention", "position"] and "design" in to_markdown(table, "t", ATTENTION)
    assert "resnet18" not in constants_text(table) and "sigmoid" not in constants_text(table)  # the notebook's: unsaid
    groups = figure_groups(records)
    assert set(groups) == {"cbam_late", "se_late"}  # the baseline joins both, no design of its own
    assert all(any(r.is_baseline for r in members) for members in groups.values())
    # a baseline alone (only the block keys, which it has none of, differ): no attention column
    only = summary_table([run("sigmoid", 0, "cbam"), run("none", 0, "none")])
    assert varying_keys(only) == ["position"]
    # a backbone is a key like any other, for the baseline too
    wide = summary_table([run("sigmoid", 0, "se"), run("sigmoid", 0, "se", backbone="resnet50"),
                          run("none", 0, "none", backbone="resnet50")])
    assert "backbone" in varying_keys(wide) and len(wide) == 3
    # the baseline's footnote names its backbone (it said ResNet18 whatever the backbone)
    from pipeline.report.tables import baseline_note

    assert "the same ResNet50 without an attention block" in baseline_note(wide)
    assert "the same ResNet18 without an attention block" in baseline_note(table)
    both = summary_table([run("none", 0, "none"), run("none", 0, "none", backbone="resnet34")])
    assert "the same backbone (ResNet18, ResNet34, each its own row) without" in baseline_note(both)
    assert set(figure_groups([run("sigmoid", 0, "se"), run("sigmoid", 0, "se", backbone="resnet50")])) == {
        "resnet18_late", "resnet50_late"}
    # runs made before the keys existed read as the notebook's design (the baseline: no block)
    assert with_design_defaults({"position": "late", "attention": ""}) == {
        "position": "late", "attention": "cbam", "backbone": "resnet18", "spatial_gate": "sigmoid", "canvases": "fixed",
        "lr_schedule": "constant"}
    assert with_design_defaults({"position": "none"})["attention"] == "none"
