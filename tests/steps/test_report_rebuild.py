"""A report rebuilt from runs made before the report became ``pipeline/report/`` gives the
same tables, byte for byte.

The runs are written here with plain MLflow calls, in the exact form the steps of commit
6fcf597 logged them (params, ``config.json``, metric histories, the probe's arrays, the
compute-metrics class files), so they do not depend on today's step code. The expected files
in ``tests/expected/report_before/`` are what that commit's ``report`` step wrote from this store
(``python tests/steps/test_report_rebuild.py OUT`` builds the store and reports it with
whatever ``pipeline`` is importable), the sweep's run id written as ``SWEEP_RUN_ID``. One
change since, on purpose: ``summary.csv`` and ``comparison.csv`` gained the ``backbone``,
``attention`` and ``spatial_gate`` columns (issue 23), which runs made before them read as the
notebook's design (resnet18, cbam, sigmoid; none for the baseline without a block); every other
byte is that commit's."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pipeline.metrics import class_means, gini

EXPECTED = Path(__file__).resolve().parents[1] / "expected" / "report_before"
TABLES = ("summary.md", "summary.csv", "comparison.csv", "summary.tex", "class_gini.csv")
C, N, K = 16, 12, 10  # channels, probed images, classes (digits)
#: (activation, position, gate_norm, seeds): sigmoid and swish with 6 seeds (the Wilcoxon test
#: needs 6 pairs), a gate_norm split, the baseline without CBAM
CONFIGS = [("sigmoid", "late", "none", range(6)), ("softmax", "late", "none", range(3)),
           ("softmax", "late", "mean_one", range(3)), ("sparsemax", "late", "none", range(3)),
           ("swish", "late", "none", range(6)), ("none", "none", "none", range(3))]
METRICS = ("gini", "entropy", "sparsity", "focus_pct", "focus_area_ratio", "avg_score", "near_zero_pct",
           "negative_pct")


def _log_dir(files: dict[str, object]) -> None:
    """Log ``path -> array / dict / DataFrame / text`` as the active run's artefacts."""
    with tempfile.TemporaryDirectory() as tmp:
        for path, value in files.items():
            target = Path(tmp) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, np.ndarray):
                np.save(target, value)
            elif isinstance(value, pd.DataFrame):
                value.to_csv(target, index=False)
            else:
                target.write_text(json.dumps(value))
        mlflow.log_artifacts(tmp)


def build_store(rerun_seed: bool = True, configs=CONFIGS, config_json: bool = True) -> str:
    """A finished sweep in the active tracking store, logged as the old steps logged it; its id."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name("cbam-gates-digits")
    exp = found.experiment_id if found else client.create_experiment("cbam-gates-digits")  # given to every run: a nested run goes to the active one
    rng = np.random.default_rng(20)
    labels = np.arange(N) % K
    with mlflow.start_run(experiment_id=exp, run_name="sweep") as sweep:
        mlflow.set_tag("pipeline.step", "sweep")
        todo = [(a, p, g, s) for a, p, g, seeds in configs for s in seeds]
        if rerun_seed:
            todo.append(("softmax", "late", "none", 1))  # a seed run twice: the newest counts
        for activation, position, gate_norm, seed in todo:
            train_cfg = {"activation": activation, "position": position, "dataset": "digits", "data_dir": "data",
                         "weights": "none", "image_size": 64, "epochs": 2, "batch_size": 64, "lr": 0.001,
                         "seed": seed, "val_fraction": 0.1, "device": "cpu", "amp": False, "channels_last": "auto",
                         "fused_adam": "auto", "keep_last_checkpoint": True, "gate_norm": gate_norm,
                         "attention_images": 256, "prepare_run_id": "p"}
            with mlflow.start_run(experiment_id=exp, nested=True, run_name=f"{activation} · {position} · seed{seed}"):
                mlflow.set_tag("pipeline.step", "main")
                with mlflow.start_run(experiment_id=exp, nested=True) as train:
                    mlflow.set_tag("pipeline.step", "train")
                    mlflow.log_params({k: str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float)
                                       else str(v) for k, v in train_cfg.items()})
                    for epoch in (1, 2):
                        mlflow.log_metrics({"train_loss": float(rng.uniform(0.1, 2)), "val_loss": float(rng.uniform(0.1, 2)),
                                            "train_acc": float(rng.uniform(50, 99)), "val_acc": float(rng.uniform(50, 99)),
                                            **({"attention/gini": float(rng.uniform()), "attention/avg_score": 0.5}
                                               if position != "none" else {}),
                                            **({"gate_scale": float(rng.uniform(1, 2))} if activation == "swish" else {})},
                                           step=epoch)
                    mlflow.log_metrics({"test_acc": 90.0, "best_epoch": 2})
                    _log_dir({**({"config.json": train_cfg} if config_json else {}), "gradients/grad_flow.json": {
                        "layers": ["conv1.weight", "layer4.1.conv2.weight", "fc.weight"], "epochs": [1, 2],
                        "mean_abs_grad": rng.uniform(1e-5, 1e-2, (2, 3)).tolist()}})
                with mlflow.start_run(experiment_id=exp, nested=True) as probe:
                    mlflow.set_tag("pipeline.step", "probe-attention")
                    mlflow.log_params({"train_run_id": train.info.run_id, "num_images": "-1", "seed": str(seed)})
                    c = C if position != "none" else 0
                    weights = rng.uniform(0, 1, (N, c)).astype(np.float32)
                    if activation in ("softmax", "sparsemax"):
                        weights = weights / weights.sum(axis=1, keepdims=True)
                    if activation == "sparsemax":
                        weights[:, c // 2:] = 0
                    side = 2 if c else 0
                    meta = {"activation": activation, "position": position, "image_size": 64, "dataset": "digits",
                            "source_run_id": train.info.run_id, "classes": [str(k) for k in range(K)],
                            "num_images": N, "indices": list(range(N)), "split": "test"}
                    _log_dir({**({"config.json": {"train_run_id": train.info.run_id, "num_images": -1,
                                                  "batch_size": 256, "data_dir": "", "device": "auto"}}
                                 if config_json else {}),
                              "attention/channel_weights.npy": weights,
                              "attention/spatial_maps.npy": rng.uniform(0, 1, (N, side, side)).astype(np.float16),
                              "attention/labels.npy": labels.astype(np.int64), "attention/meta.json": meta})
                with mlflow.start_run(experiment_id=exp, nested=True) as metrics:
                    mlflow.set_tags({"pipeline.step": "compute-metrics", "pipeline.train_run_id": train.info.run_id,
                                     "pipeline.probe_run_id": probe.info.run_id})
                    mlflow.log_params({"activation": activation, "position": position, "seed": str(seed)})
                    base = {"sigmoid": 0.3, "softmax": 0.6, "sparsemax": 0.9, "swish": 0.5}.get(activation)
                    logged = {"test_acc": float(rng.normal(90 if activation != "sparsemax" else 50, 2)),
                              "test_top5": float(rng.uniform(95, 100)), "test_map": float(rng.uniform(0.8, 1))}
                    if c:
                        logged.update({m: float(np.clip(base + rng.normal(0, 0.05), 0, 1)) for m in METRICS})
                        logged["focus_pct"] *= 100
                        logged["near_zero_pct"] *= 100
                    mlflow.log_metrics(logged)
                    if c:  # as compute-metrics wrote them (pipeline.metrics is the same before and after)
                        means, counts = class_means(weights, labels, K)
                        _log_dir({"metrics/class_channel_weights.npy": means.astype(np.float32),
                                  "metrics/class_gini.csv": pd.DataFrame({"class": [str(k) for k in range(K)],
                                                                          "images": counts, "gini": gini(means)})})
                mlflow.set_tag("pipeline.metrics_run_id", metrics.info.run_id)
        with mlflow.start_run(experiment_id=exp, nested=True, run_name="a failed configuration") as failed:
            mlflow.set_tag("pipeline.step", "main")
        client.set_terminated(failed.info.run_id, "FAILED")
    return sweep.info.run_id


def report(sweep_id: str, out: Path) -> Path:
    from pipeline.config import ReportConfig
    from pipeline.steps.report import run_report

    run_report(ReportConfig(sweep_run_id=sweep_id, out=str(out)))
    [folder] = (out / "cbam-gates-digits").iterdir()
    return folder


def test_a_report_of_runs_made_before_the_report_layer_has_the_same_tables(tracking_uri, tmp_path):
    sweep_id = build_store()
    folder = report(sweep_id, tmp_path / "out")
    for name in TABLES:
        assert (folder / name).read_bytes().replace(sweep_id.encode(), b"SWEEP_RUN_ID") == \
            (EXPECTED / name).read_bytes(), name
    # the tables are not trivially equal: every configuration, the Holm-corrected comparison,
    # the Wilcoxon test of the six-seed gates and the baseline are in them
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False)
    assert len(summary) == 6 and list(summary["seeds"]) == [6, 3, 3, 6, 3, 3]
    comparison = pd.read_csv(folder / "comparison.csv")
    assert comparison.loc[comparison["gate"] == "swish", "p_wilcoxon"].notna().all()
    assert {p.name for p in folder.glob("spatial_maps_*.png")} == {"spatial_maps_none_late.png",
                                                                    "spatial_maps_mean_one_late.png"}


def test_a_compute_metrics_run_older_than_its_class_files_gets_them_from_the_probe(tracking_uri):
    from helpers import artifact_file
    from pipeline.report.gather import gather

    build_store(rerun_seed=False, configs=[("softmax", "late", "none", [0])])
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                               filter_string="tags.`pipeline.step` = 'compute-metrics' and params.activation = 'softmax'")
    logged = gather([run.info.run_id])[0]
    for path in ("metrics/class_channel_weights.npy", "metrics/class_gini.csv"):
        artifact_file(run.info.run_id, path).unlink()
    derived = gather([run.info.run_id])[0]
    assert derived.class_gini == logged.class_gini and len(derived.class_gini) == K  # the same formula, exactly
    np.testing.assert_allclose(derived.class_weights, logged.class_weights, rtol=1e-6)  # logged as float32


if __name__ == "__main__":  # python tests/steps/test_report_rebuild.py OUT: the expected files, from this store
    out = Path(sys.argv[1])
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    print(report(build_store(), out / "report"))


def test_runs_made_before_steps_logged_config_json_are_grouped_by_their_parameters(tracking_uri):
    from pipeline.report.gather import gather
    from pipeline.steps.probe_attention import params_config

    configs = [("softmax", "late", "mean_one", [2])]
    with_json, without = (build_store(rerun_seed=False, configs=configs, config_json=flag) for flag in (True, False))
    records = {}
    for sweep_id in (with_json, without):
        [main] = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                               filter_string=f"tags.`mlflow.parentRunId` = '{sweep_id}'")
                  if r.info.status == "FINISHED"]
        [records[sweep_id]] = gather([main.data.tags["pipeline.metrics_run_id"]])
    typed, from_params = records[with_json], records[without]
    assert from_params.config == typed.config and from_params.seed == typed.seed == "2"
    assert typed.config["gate_norm"] == "mean_one" and typed.config["lr"] == "0.001" and typed.config["num_images"] == "-1"
    # the probe of such a train run reads what it needs from the parameters (integers as `mlflow run` logs them)
    assert params_config({"dataset": "digits", "image_size": "64.0", "seed": "3"}) == {
        "dataset": "digits", "data_dir": "data", "image_size": 64, "seed": "3"}
