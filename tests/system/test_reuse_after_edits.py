"""Edit the code, rerun main: a docstring in the plotting module keeps train reused (only the
report is drawn again); an edit of the gates module retrains (and reprobes)."""
import os
import shutil
import subprocess
import sys

import mlflow

from helpers import REPO, all_runs

ARGS = ["main", "--activation", "sigmoid", "--dataset", "fake", "--weights", "none", "--image-size", "32",
        "--epochs", "1", "--device", "cpu", "--faithfulness-images", "0"]


def run_main(checkout, uri, out, *extra):
    result = subprocess.run([sys.executable, "-m", "pipeline", *ARGS, "--out", str(out), *extra], cwd=checkout,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(checkout)})
    assert result.returncode == 0, result.stderr[-3000:]
    return mlflow.MlflowClient(uri).get_run(result.stdout.strip().splitlines()[-1]), result.stderr


def test_editing_plots_reuses_train_and_editing_gates_retrains(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "pipeline", checkout / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, _ = run_main(checkout, uri, tmp_path / "out")
    assert first.data.tags["pipeline.reused_steps"] == "none"

    plots = checkout / "pipeline" / "report" / "plots.py"
    plots.write_text(plots.read_text().replace('"""', '"""An edited docstring. ', 1))
    second, log = run_main(checkout, uri, tmp_path / "out")
    assert second.data.tags["pipeline.reused_steps"] == "prepare-data,train,probe-attention,compute-metrics"
    assert second.data.tags["pipeline.train_run_id"] == first.data.tags["pipeline.train_run_id"]
    assert "reusing the report" not in log  # the report code changed: drawn again

    gates = checkout / "pipeline" / "gates.py"
    gates.write_text(gates.read_text() + "\n# an edit of the gates module\n")
    third, _ = run_main(checkout, uri, tmp_path / "out", "--no-report")  # what is retrained; no report read
    assert third.data.tags["pipeline.reused_steps"] == "prepare-data"  # the data step does not use the gates
    assert third.data.tags["pipeline.train_run_id"] != first.data.tags["pipeline.train_run_id"]
    train_runs = [r for r in all_runs(uri) if r.data.tags.get("pipeline.step") == "train"]
    assert len(train_runs) == 2 and len({r.data.tags["pipeline.code_version"] for r in train_runs}) == 2
