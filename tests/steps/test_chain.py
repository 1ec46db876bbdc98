"""main and sweep in this process: nested step runs, exact reuse, rerun, lost artefacts, the
inline executor, and in-memory hand-offs that equal the artefact path."""
import logging

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.config import MainConfig, MetricsConfig, SweepConfig
from pipeline.contracts import CHAIN, CHANNEL_WEIGHTS, UPSTREAM_TAGS
from pipeline.steps.compute_metrics import run_compute_metrics
from pipeline.steps.main import run_main
from pipeline.steps.sweep import PartialSweep, run_sweep
from helpers import all_runs, artifact_file

# faithfulness (docs/metrics.md#faithfulness) costs ~3 s a probe here: on only where a test is about it
FAST = dict(dataset="fake", weights="none", image_size=32, epochs=1, batch_size=32, device="cpu", faithfulness_images=0)


def step_runs(uri):
    return [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") in CHAIN]


def children(uri, parent_id):
    return {r.data.tags["pipeline.step"]: r for r in all_runs(uri)
            if r.data.tags.get("mlflow.parentRunId") == parent_id}


def test_main_runs_nested_steps_then_reuses_them_and_reruns_on_request(tracking_uri, tmp_path, caplog):
    config = MainConfig.from_options(activation="softmax", out=str(tmp_path / "out"), **{**FAST, "faithfulness_images": 40})
    caplog.set_level(logging.INFO, logger="pipeline")
    first = run_main(config)
    client = mlflow.MlflowClient()
    main = client.get_run(first)
    assert main.info.status == "FINISHED" and main.data.tags["mlflow.runName"] == "softmax · late · fake 32px 1ep · seed0"
    # runs go to the dataset's experiment, marked as machine learning for the UI
    experiment = client.get_experiment(main.info.experiment_id)
    assert experiment.name == "cbam-gates-fake" and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    kids = children(tracking_uri, first)
    assert set(kids) == set(CHAIN) and all(k.info.status == "FINISHED" for k in kids.values())
    assert main.data.tags["pipeline.reused_steps"] == "none"
    # the chain is wired by run ids, and main points at each step
    assert kids["train"].data.params["prepare_run_id"] == kids["prepare-data"].info.run_id
    assert kids["probe-attention"].data.params["train_run_id"] == kids["train"].info.run_id
    assert kids["compute-metrics"].data.params["probe_run_id"] == kids["probe-attention"].info.run_id
    for step, kid in kids.items():
        assert main.data.tags[UPSTREAM_TAGS[step]] == kid.info.run_id
        assert kid.data.tags["pipeline.reuse_key"] and kid.data.tags["pipeline.code_version"]
    assert main.data.metrics["gini"] == kids["compute-metrics"].data.metrics["gini"]
    # faithfulness: measured by the probe on 40 images, carried by compute-metrics onto main
    assert kids["probe-attention"].data.params["faithfulness_images_used"] == "40"
    for key in ("faith/channel_advantage_acc", "faith/channel_random_prob_area", "faith/channel_randomised_advantage_acc"):
        assert main.data.metrics[key] == kids["compute-metrics"].data.metrics[key] == kids["probe-attention"].data.metrics[key]
    # the late map at 32 px is 1 x 1: deletion and insertion are undefined, never an advantage of noise
    assert not [k for k in main.data.metrics if k.startswith(("faith/deletion", "faith/insertion"))]
    assert "random maps drawn on the CBAM map's 1 x 1 grid are constant" in kids["probe-attention"].data.tags[
        "pipeline.undefined"]
    # the probe saw the trained model: its accuracy is train's test accuracy on the same images
    assert kids["probe-attention"].data.metrics["test_acc"] == pytest.approx(kids["train"].data.metrics["test_acc"])
    # the gate first in every run name
    assert {k.info.run_name for k in kids.values()} == {f"softmax · {step} · seed0" for step in CHAIN}
    folder = tmp_path / "out" / "cbam-gates-fake" / "softmax_late_fake_32px_1ep_seed0"
    first_summary = (folder / "summary.md").read_text()
    runs = pd.read_csv(folder / "runs.csv")  # the per-seed values beside the summary
    assert list(runs["metrics_run_id"]) == [kids["compute-metrics"].info.run_id] and list(runs["seed"]) == [0]
    assert runs.loc[0, "gini"] == pytest.approx(main.data.metrics["gini"])
    (folder / "stale.png").write_text("")  # from an older report of this configuration

    # again: all four reused, no new step run
    caplog.clear()
    second = run_main(config)
    assert client.get_run(second).data.tags["pipeline.reused_steps"] == ",".join(CHAIN)
    assert children(tracking_uri, second) == {}
    assert caplog.text.count("reusing finished run") == 4
    # the report of the same metrics run by the same report code is copied, not drawn again
    assert f"reusing the report of main run {first}" in caplog.text
    # into the same folder (a rerun of a configuration replaces its report, no new folder)
    assert (folder / "summary.md").read_text() == first_summary and not (folder / "stale.png").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cbam-gates-fake"]
    assert [p.name for p in (tmp_path / "out" / "cbam-gates-fake").iterdir()] == [folder.name]
    assert "report/summary.md" in {a.path for a in client.list_artifacts(second, "report")}

    # rerun=train: prepare-data reused, train and everything downstream run again
    third = run_main(MainConfig.from_options(activation="softmax", out=str(tmp_path / "out"), rerun=("train",),
                                             **FAST), report=False)  # no report: the first run's is checked above
    assert client.get_run(third).data.tags["pipeline.reused_steps"] == "prepare-data"
    rerun = children(tracking_uri, third)
    assert set(rerun) == {"train", "probe-attention", "compute-metrics"}
    assert rerun["train"].data.params["prepare_run_id"] == kids["prepare-data"].info.run_id
    # same seed, same code: the retrained model is the same model
    assert rerun["train"].data.metrics["test_loss"] == kids["train"].data.metrics["test_loss"]

    # metrics computed from the arrays in memory equal metrics from the probe's artefacts
    alone = client.get_run(run_compute_metrics(MetricsConfig(probe_run_id=kids["probe-attention"].info.run_id)).run_id)
    for key, value in kids["compute-metrics"].data.metrics.items():
        assert alone.data.metrics[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key


def test_a_reused_run_whose_artefacts_are_gone_is_run_again(tracking_uri, tmp_path, caplog):
    # on the real digits data (1,797 images), at 32 px to keep it quick
    config = MainConfig.from_options(activation="sigmoid", out=str(tmp_path / "out"), **{**FAST, "dataset": "digits"})
    first = run_main(config, report=False)  # reuse is of steps; the report is the first test's
    probe = children(tracking_uri, first)["probe-attention"]
    artifact_file(probe.info.run_id, CHANNEL_WEIGHTS).unlink()
    caplog.set_level(logging.INFO, logger="pipeline")
    second = run_main(config, report=False)
    assert f"finished run {probe.info.run_id} matches but has lost {CHANNEL_WEIGHTS}" in caplog.text
    assert mlflow.MlflowClient().get_run(second).data.tags["pipeline.reused_steps"] == "prepare-data,train"
    assert set(children(tracking_uri, second)) == {"probe-attention", "compute-metrics"}


def corrupt_best_checkpoint(train_run_id: str, tmp_path) -> None:
    """Replace a finished train run's best.pt with bytes that are no checkpoint (a damaged
    artefact store), through MLflow, so it works for any store."""
    bad = tmp_path / "damaged" / "best.pt"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a checkpoint")
    mlflow.MlflowClient().log_artifact(train_run_id, str(bad), "checkpoints")


def test_inline_sweep_runs_every_configuration_under_one_sweep_run(tracking_uri, tmp_path):
    # swish's train run exists already and its best.pt is damaged: the sweep reuses it, its
    # probe (rerun) fails; the others, the baseline without CBAM among them, go on
    swish = run_main(MainConfig.from_options(activation="swish", out=str(tmp_path / "out"), **FAST), report=False)
    corrupt_best_checkpoint(mlflow.MlflowClient().get_run(swish).data.tags[UPSTREAM_TAGS["train"]], tmp_path)
    config = SweepConfig.from_options(activations=("sigmoid", "swish"), positions=("late", "none"),
                                      rerun=("probe-attention",), out=str(tmp_path / "out"), **FAST)
    assert [c.label() for c in config.configurations()] == [  # the baseline once, not once per gate
        "sigmoid · late · fake 32px 1ep · seed0", "swish · late · fake 32px 1ep · seed0", "no CBAM · fake 32px 1ep · seed0"]
    with pytest.raises(PartialSweep) as caught:  # a sweep with failed configurations exits non-zero
        run_sweep(config)
    sweep_id = caught.value.sweep_id
    assert str(caught.value) == (f"1 of 3 configurations of sweep {sweep_id} failed (listed above and in its "
                                 "summary.md); the report covers the rest")
    client = mlflow.MlflowClient()
    sweep = client.get_run(sweep_id)
    assert sweep.info.status == "FINISHED"
    assert sweep.data.params["activations"] == "sigmoid,swish" and "activation" not in sweep.data.params
    summary = next((tmp_path / "out").glob("*/sweep_*/summary.md")).read_text()
    failures = summary.split("## Failed configurations (1 of 3, not in the tables above)")[1]
    [row] = [line for line in failures.splitlines() if line.startswith("| swish · late · fake 32px 1ep · seed0 |")]
    assert "checkpoints/best.pt is corrupt or not a checkpoint" in row
    # a report rebuilt from the sweep run lists the same failure, with the error its main run kept
    from pipeline.config import ReportConfig
    from pipeline.report.gather import metrics_runs_of
    from pipeline.report.tables import failures_markdown

    source = metrics_runs_of(ReportConfig(sweep_run_id=sweep_id))
    assert len(source.metrics_run_ids) == 2 and source.configurations == 3
    assert failures_markdown(source.failed, source.configurations) == "\n## Failed" + summary.split("\n## Failed", 1)[1]
    mains = {r.data.tags["mlflow.runName"]: r for r in all_runs(tracking_uri)
             if r.data.tags.get("mlflow.parentRunId") == sweep_id}
    status = {name: r.info.status for name, r in mains.items()}
    assert status == {"sigmoid · late · fake 32px 1ep · seed0": "FINISHED", "swish · late · fake 32px 1ep · seed0": "FAILED",
                      "no CBAM · fake 32px 1ep · seed0": "FINISHED"}
    assert sweep.data.metrics["failed_configurations"] == 1
    assert sweep.data.tags["pipeline.failed"] == "swish · late · fake 32px 1ep · seed0"
    assert sweep.info.run_name == "sweep · sigmoid,swish · late,none · seeds 0 · fake 32px 1ep"
    # one prepare-data run serves every configuration (same data, split and seed): swish's main made it
    assert all(mains[name].data.tags["pipeline.reused_steps"] == "prepare-data"
               for name in ("sigmoid · late · fake 32px 1ep · seed0", "no CBAM · fake 32px 1ep · seed0"))
    assert set(children(tracking_uri, mains["sigmoid · late · fake 32px 1ep · seed0"].info.run_id)) == set(CHAIN[1:])
    assert len([r for r in step_runs(tracking_uri) if r.data.tags["pipeline.step"] == "prepare-data"]) == 1
    assert all(r.info.status != "RUNNING" for r in all_runs(tracking_uri))
    # the baseline: a train run without CBAM, a probe with no attention, accuracy only
    baseline = mains["no CBAM · fake 32px 1ep · seed0"]
    assert baseline.data.params["activation"] == "none" and baseline.data.params["position"] == "none"
    steps = children(tracking_uri, baseline.info.run_id)
    assert {k: r.info.run_name for k, r in steps.items()} == {
        s: f"no CBAM · {s} · seed0" for s in ("train", "probe-attention", "compute-metrics")}
    assert steps["train"].data.params["activation"] == "none"
    assert np.load(artifact_file(steps["probe-attention"].info.run_id, CHANNEL_WEIGHTS)).shape == (80, 0)
    logged = steps["compute-metrics"].data.metrics
    assert set(logged) == {"test_acc", "test_top5", "test_map"}
    assert logged["test_acc"] == steps["probe-attention"].data.metrics["test_acc"] == baseline.data.metrics["test_acc"]
    table = (tmp_path / "out" / "cbam-gates-fake" / "sweep_sigmoid,swish_late,none_seeds_0_fake_32px_1ep"
             / "summary.md").read_text()
    main_table = table.split("\n## ")[0]  # before the comparison and per-class tables
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in main_table.splitlines()
            if line.startswith("| late") or line.startswith("| none")]
    assert [r[:2] for r in rows] == [["late", "sigmoid"], ["none", "no CBAM"]]
    assert rows[1][3] == f"{logged['test_acc']:.1f}" and rows[1][4:] == ["n/a"] * 6
    assert "no CBAM: the same ResNet18 without an attention block" in main_table
    # its curves beside the gates' (one figure group), no attention figures of its own
    folder = tmp_path / "out" / "cbam-gates-fake" / "sweep_sigmoid,swish_late,none_seeds_0_fake_32px_1ep"
    assert (folder / "curves_late.png").exists() and not list(folder.glob("*_none.*"))


def test_report_of_an_experiment_never_pools_unlike_runs(tracking_uri, tmp_path, monkeypatch):
    # both runs in one experiment the user named (the easy way to mix them): a digits run and a
    # fake run of the same gate and seed are two rows of one seed each, never "2 seeds"
    from pipeline.config import ReportConfig
    from pipeline.steps.report import run_report

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mixed")
    out = tmp_path / "out"
    for dataset, size in (("digits", 32), ("fake", 32)):
        run_main(MainConfig.from_options(activation="sigmoid", dataset=dataset, weights="none", image_size=size,
                                         epochs=1, batch_size=64, device="cpu", num_images=16, out=str(out)),
                 report=False)
    report_id = run_report(ReportConfig(experiment_name="mixed", out=str(out))).run_id
    assert mlflow.MlflowClient().get_run(report_id).info.run_name == "report · experiment"
    folder = out / "mixed" / "report_experiment"
    table = (folder / "summary.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.split("|")[1:4]] == ["dataset", "gate", "seeds"]
    rows = [[c.strip() for c in line.split("|")[1:4]] for line in table.split("\n## ")[0].splitlines()
            if line.startswith(("| digits", "| fake"))]
    assert rows == [["digits", "sigmoid", "1"], ["fake", "sigmoid", "1"]]
    assert "Constant across this report: 32 px, 1 epoch," in table
    import pandas as pd

    csv = pd.read_csv(folder / "summary.csv")
    assert list(csv["seeds"]) == [1, 1] and sorted(csv["dataset"]) == ["digits", "fake"]
    assert {p.name for p in folder.glob("weights_*.png")} == {"weights_digits_late.png", "weights_fake_late.png"}


def test_a_gate_norms_sweep_separates_shrinkage_from_sparsity(tracking_uri, tmp_path):
    import pandas as pd

    config = SweepConfig.from_options(activations=("sigmoid", "softmax"), gate_norms=("none", "mean_one"),
                                      out=str(tmp_path / "out"), num_images=32, **FAST)
    run_sweep(config)
    [folder] = (tmp_path / "out" / "cbam-gates-fake").iterdir()
    csv = pd.read_csv(folder / "summary.csv", keep_default_na=False)
    rows = {(r["activation"], r["gate_norm"]): r for _, r in csv.iterrows()}
    assert set(rows) == {("sigmoid", "none"), ("softmax", "none"), ("softmax", "mean_one")}
    assert float(rows[("softmax", "none")]["avg_score"]) == pytest.approx(1 / 512, rel=1e-4)
    assert float(rows[("softmax", "mean_one")]["avg_score"]) == pytest.approx(1.0, rel=1e-4)  # probe sees × C
    # scale-free metrics are computed on the weights as they multiply the features; the table says
    # which row is which
    table = (folder / "summary.md").read_text()
    assert "gate norm." in table.splitlines()[4] and "| mean_one" in table
