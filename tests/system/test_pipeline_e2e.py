"""`mlflow run .` of the main and sweep entry points, end to end, as a user runs them."""
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from helpers import REPO, all_runs

STEPS = ["prepare-data", "train", "probe-attention", "compute-metrics"]


def mlflow_run(*args, cwd, env, timeout=1200):
    return subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture
def project_env(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield {"uri": uri, "env": {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_OFFLINE": "1"}, "tmp": tmp_path}
    mlflow.set_tracking_uri(None)


def children(uri, parent_id):
    return [r for r in all_runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_main_chains_four_child_runs_writes_the_report_and_reuses_them(project_env):
    uri, env, tmp = project_env["uri"], project_env["env"], project_env["tmp"]
    out = tmp / "out"
    args = ["-P", "activation=swish", "-P", "dataset=fake", "-P", "weights=none", "-P", "image_size=32",
            "-P", "epochs=2", "-P", "faithfulness_images=16", "-P", f"out={out}"]
    first = mlflow_run(*args, cwd=tmp, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    [parent] = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "main"]
    assert parent.info.status == "FINISHED"
    kids = children(uri, parent.info.run_id)
    assert sorted(k.data.tags["pipeline.step"] for k in kids) == sorted(STEPS)
    assert all(k.info.status == "FINISHED" for k in kids)
    assert parent.data.tags["pipeline.reused_steps"] == "none"
    # the chain is wired: each step names the run before it
    by_step = {k.data.tags["pipeline.step"]: k for k in kids}
    assert by_step["train"].data.params["prepare_run_id"] == by_step["prepare-data"].info.run_id
    assert by_step["probe-attention"].data.params["train_run_id"] == by_step["train"].info.run_id
    assert by_step["compute-metrics"].data.params["probe_run_id"] == by_step["probe-attention"].info.run_id
    # the dataset identity is logged as MLflow dataset inputs
    inputs = by_step["prepare-data"].inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"fake-train", "fake-validation", "fake-test"}
    # the report: local files and artefacts of the parent run
    # plain `mlflow run` without --experiment-name: MLflow's Default experiment
    report_dir = out / "Default" / "swish_late_fake_32px_2ep_seed0"
    assert parent.info.run_name == "swish · late · fake 32px 2ep · seed0"
    for name in ("summary.md", "summary.csv", "summary.tex", "weights_late.pdf", "weights_late.png", "metrics_late.png",
                 "curves_late.pdf", "gradient_flow_late.png", "spatial_maps_late.png", "faithfulness_late.png",
                 "faithfulness_curves_late.png"):
        assert (report_dir / name).stat().st_size > 0, name
    assert not list(report_dir.glob("gate_parameters*"))  # swish learns no parameter: no empty figure
    artefacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "report")}
    assert "report/summary.md" in artefacts and "report/weights_late.pdf" in artefacts
    assert parent.data.metrics["gini"] == by_step["compute-metrics"].data.metrics["gini"]
    assert by_step["probe-attention"].data.params["faithfulness_images_used"] == "16"
    assert parent.data.metrics["faith/channel_advantage_acc"] == by_step["probe-attention"].data.metrics[
        "faith/channel_advantage_acc"]
    # the late map at 32 px is 1 x 1: deletion and insertion are undefined, the reason kept on the probe run
    assert "faith/deletion_advantage_acc" not in parent.data.metrics
    assert "deletion/insertion of the cbam map" in by_step["probe-attention"].data.tags["pipeline.undefined"]

    # again, with the same parameters spelled differently: every step is reused, none rerun
    again = mlflow_run(*[a.replace("epochs=2", "epochs=2.0") for a in args], cwd=tmp, env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("reusing finished run") == 4
    mains = sorted((r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "main"),
                   key=lambda r: r.info.start_time)
    assert len(mains) == 2 and mains[1].info.status == "FINISHED"
    assert children(uri, mains[1].info.run_id) == []
    assert mains[1].data.tags["pipeline.reused_steps"] == ",".join(STEPS)
    assert mains[1].data.tags["pipeline.metrics_run_id"] == by_step["compute-metrics"].info.run_id
    assert len([r for r in all_runs(uri) if r.data.tags.get("pipeline.step") in STEPS]) == 4


def test_sweep_goes_on_past_failures_and_reports_the_rest(project_env):
    uri, env, tmp = project_env["uri"], project_env["env"], project_env["tmp"]
    out = tmp / "out"
    fast = ["--dataset", "fake", "--weights", "none", "--image-size", "32", "--epochs", "1"]
    # swish's train run exists already and its best.pt is damaged: the sweep reuses it and its
    # probe (rerun) fails; sigmoid and the baseline without CBAM (position none) go on
    pre = subprocess.run([sys.executable, "-m", "pipeline", "main", "--activation", "swish", *fast, "--no-report"],
                         capture_output=True, text=True, cwd=tmp, timeout=600,
                         env={**env, "MLFLOW_EXPERIMENT_NAME": "Default"})
    assert pre.returncode == 0, pre.stderr[-3000:]
    [train] = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "train"]
    (tmp / "best.pt").write_bytes(b"not a checkpoint")
    mlflow.MlflowClient(uri).log_artifact(train.info.run_id, str(tmp / "best.pt"), "checkpoints")
    result = mlflow_run("-e", "sweep", "-P", "activations=sigmoid,swish", "-P", "positions=late,none",
                        "-P", "dataset=fake", "-P", "weights=none", "-P", "image_size=32", "-P", "epochs=1",
                        "-P", "faithfulness_images=0", "-P", "rerun=probe-attention", "-P", "jobs=2", "-P", f"out={out}", cwd=tmp, env=env)
    # a failed configuration makes the sweep exit non-zero (mlflow run then ends its run FAILED)
    assert result.returncode != 0, result.stderr[-4000:]
    assert "Error: 1 of 3 configurations of sweep" in result.stderr
    [sweep] = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "sweep"]
    mains = children(uri, sweep.info.run_id)
    status = {m.data.tags["mlflow.runName"]: m.info.status for m in mains}
    errors = "\n".join(line for line in result.stderr.splitlines() if "Error" in line)
    assert status == {"sigmoid · late · fake 32px 1ep · seed0": "FINISHED", "swish · late · fake 32px 1ep · seed0": "FAILED",
                      "no CBAM · fake 32px 1ep · seed0": "FINISHED"}, errors[-3000:]
    assert sweep.data.metrics["failed_configurations"] == 1
    assert "swish · late · fake 32px 1ep · seed0" in result.stderr and "1 of 3 configurations failed" in result.stderr
    assert f"train run {train.info.run_id}'s checkpoints/best.pt is corrupt or not a checkpoint" in result.stderr
    folder = out / "Default" / "sweep_sigmoid,swish_late,none_seeds_0_fake_32px_1ep"
    table = (folder / "summary.md").read_text()
    assert "Constant across this report: dataset fake, 32 px, 1 epoch," in table
    assert "## Failed configurations (1 of 3, not in the tables above)" in table
    rows = [line for line in table.split("\n## ")[0].splitlines() if line.startswith(("| late", "| none"))]
    metrics_runs = {r.data.params["activation"]: r for r in all_runs(uri)
                    if r.data.tags.get("pipeline.step") == "compute-metrics" and r.info.status == "FINISHED"
                    and r.data.tags["pipeline.train_run_id"] != train.info.run_id}
    assert set(metrics_runs) == {"sigmoid", "none"}
    header = [c.strip() for c in next(line for line in table.splitlines()
                                      if line.startswith("| position")).split("|")[1:-1]]
    # each cell is the logged value (one seed: no interval), at its column's decimals and scale
    assert [row.split("|")[2].strip() for row in rows] == ["sigmoid", "no CBAM"]
    for row in rows:
        cells = dict(zip(header, [c.strip() for c in row.split("|")[1:-1]]))
        logged = metrics_runs[{"no CBAM": "none"}.get(cells["gate"], cells["gate"])].data.metrics
        assert cells["seeds"] == "1"
        for col, scale, decimals in (("test acc. (%)", 1, 1), ("Gini", 1, 3), ("entropy", 1, 3),
                                     ("sparsity (%)", 100, 1), ("near 0 (%)", 1, 1), ("focus (%)", 1, 1),
                                     ("focus area (%)", 100, 1)):
            key = {"test acc. (%)": "test_acc", "Gini": "gini", "entropy": "entropy", "sparsity (%)": "sparsity",
                   "near 0 (%)": "near_zero_pct", "focus (%)": "focus_pct", "focus area (%)": "focus_area_ratio"}[col]
            expected = f"{logged[key] * scale:.{decimals}f}" if key in logged else "n/a"  # the baseline: no attention
            assert cells[col] == expected, (cells["gate"], col)
    csv = pd.read_csv(folder / "summary.csv")
    assert csv.set_index("activation")["gini"]["sigmoid"] == pytest.approx(metrics_runs["sigmoid"].data.metrics["gini"])
    assert csv.set_index("activation")["test_acc"]["none"] == pytest.approx(metrics_runs["none"].data.metrics["test_acc"])
    assert pd.isna(csv.set_index("activation")["gini"]["none"])
