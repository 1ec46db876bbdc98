"""The ``report`` step: tables and figures for a paper, from finished runs.

Sources: an experiment (every FINISHED compute-metrics run in it), a sweep run (its finished
``main`` runs) or a ``main`` run. Writes into a local folder and, as artefacts, into a report
run (or, from ``main`` and ``sweep``, into their own run under ``report/``):

- ``summary.md``, ``summary.csv``, ``summary.tex`` (booktabs): one row per (position,
  activation), the notebook's columns (avg_score, focus_pct, sparsity, gini, test_acc) plus
  entropy, focus_area_ratio, test_top5 and test_map; mean ± std over seeds where there are
  several (sample std, ddof = 1);
- per position: ``kde_<position>``, ``radar_<position>``, ``curves_<position>``,
  ``gradient_flow_<position>``, ``gate_parameters_<position>``, ``spatial_maps_<position>``,
  each as PDF (vector) and PNG.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.config import ReportConfig
from pipeline.contracts import (
    ATTENTION_META,
    CHANNEL_WEIGHTS,
    COMPUTE_METRICS,
    GRAD_FLOW,
    MAIN,
    PROBE_ATTENTION,
    REPORT,
    REPORT_DIR,
    SPATIAL_MAPS,
    STEP_TAG,
    SWEEP,
    TRAIN,
    UPSTREAM_TAGS,
)
from pipeline.data import load_dataset
from pipeline.errors import PipelineError, one_line
from pipeline.gates import GATES
from pipeline.models import POSITIONS
from pipeline.tracking import download_artifact, step_run

log = logging.getLogger("pipeline")

TABLE_COLUMNS = ("avg_score", "focus_pct", "sparsity", "gini", "test_acc",
                 "entropy", "focus_area_ratio", "test_top5", "test_map")
GRID_IMAGES = 4


@dataclass
class Result:
    """One configuration's finished chain of runs."""

    activation: str
    position: str
    seed: str
    metrics: dict[str, float]
    train_run_id: str
    probe_run_id: str
    metrics_run_id: str


def gather(metrics_run_ids: list[str]) -> list[Result]:
    client = mlflow.MlflowClient()
    results = []
    for run_id in metrics_run_ids:
        run = client.get_run(run_id)
        if run.data.tags.get(STEP_TAG) != COMPUTE_METRICS or run.info.status != "FINISHED":
            continue
        p = run.data.params
        results.append(Result(p["activation"], p["position"], p.get("seed", ""), dict(run.data.metrics),
                              run.data.tags[UPSTREAM_TAGS[TRAIN]], run.data.tags[UPSTREAM_TAGS[PROBE_ATTENTION]], run_id))
    return results


def _order(results: list[Result]) -> list[Result]:
    pos, act = list(POSITIONS), list(GATES)
    return sorted(results, key=lambda r: (pos.index(r.position), act.index(r.activation), r.seed))


def summary_table(results: list[Result]) -> pd.DataFrame:
    """One row per (position, activation): ``<metric>`` (mean), ``<metric>_std`` (NaN for one
    seed) and ``seeds``."""
    rows = []
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in _order(results):
        groups.setdefault((r.position, r.activation), []).append(r)
    for (position, activation), members in groups.items():
        row: dict[str, Any] = {"position": position, "activation": activation, "seeds": len(members)}
        for col in TABLE_COLUMNS:
            values = np.array([m.metrics.get(col, np.nan) for m in members], dtype=np.float64)
            row[col] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            row[f"{col}_std"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def format_cell(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.4g}" if not np.isfinite(std) else f"{mean:.4g} ± {std:.2g}"


def to_markdown(table: pd.DataFrame) -> str:
    header = ["position", "activation", "seeds", *TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(TABLE_COLUMNS)) + "|"]
    for _, row in table.iterrows():
        cells = [row["position"], row["activation"], str(row["seeds"])]
        cells += [format_cell(row[c], row[f"{c}_std"]) for c in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str) -> str:
    def tex(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex(caption)}}}",
             r"\begin{tabular}{ll" + "r" * (1 + len(TABLE_COLUMNS)) + "}", r"\toprule",
             " & ".join(tex(h) for h in ["position", "activation", "seeds", *TABLE_COLUMNS]) + r" \\",
             r"\midrule"]
    for _, row in table.iterrows():
        cells = [row["position"], row["activation"], str(row["seeds"])]
        cells += [format_cell(row[c], row[f"{c}_std"]) for c in TABLE_COLUMNS]
        lines.append(" & ".join(tex(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _mean_lists(lists: list[list[float]]) -> list[float]:
    lists = [x for x in lists if x]
    if not lists:
        return []
    n = min(len(x) for x in lists)
    return np.mean([x[:n] for x in lists], axis=0).tolist()


def write_figures(results: list[Result], out: Path, tmp: Path) -> list[str]:
    client = mlflow.MlflowClient()
    written: list[str] = []
    by_position: dict[str, list[Result]] = {}
    for r in _order(results):
        by_position.setdefault(r.position, []).append(r)
    for position, members in by_position.items():
        by_activation: dict[str, list[Result]] = {}
        for r in members:
            by_activation.setdefault(r.activation, []).append(r)
        weights, maps, histories, flows, gate_params, meta = {}, {}, {}, {}, {}, {}
        for activation, runs in by_activation.items():
            arrays = []
            for r in runs:
                d = tmp / r.probe_run_id
                arrays.append(np.load(download_artifact(r.probe_run_id, CHANNEL_WEIGHTS, d)))
            weights[activation] = np.concatenate(arrays)
            first = runs[0]
            d = tmp / first.probe_run_id
            maps[activation] = np.load(download_artifact(first.probe_run_id, SPATIAL_MAPS, d))
            meta[activation] = json.loads(download_artifact(first.probe_run_id, ATTENTION_META, d).read_text())
            histories[activation] = {k: _mean_lists([_history(client, r.train_run_id, k) for r in runs])
                                     for k in ("train_loss", "val_loss", "train_acc", "val_acc")}
            gp = {k: _mean_lists([_history(client, r.train_run_id, k) for r in runs])
                  for k in ("gate_scale", "gate_temperature", "gate_alpha")}
            gate_params[activation] = {k: v for k, v in gp.items() if v}
            last_layers, last_values = [], []
            for r in runs:
                try:
                    flow = json.loads(download_artifact(r.train_run_id, GRAD_FLOW,
                                                        tmp / r.train_run_id).read_text())
                except Exception:  # an older train run without the artefact: leave it out
                    continue
                last_layers, values = flow["layers"], flow["mean_abs_grad"][-1]
                last_values.append(values)
            if last_values:
                flows[activation] = (last_layers, np.mean(last_values, axis=0).tolist())
        rows = {a: summary_row_metrics(rs) for a, rs in by_activation.items()}
        figures = {
            f"kde_{position}": plots.plot_kde(weights, f"Channel attention weights, CBAM {position}"),
            f"radar_{position}": plots.plot_radar(rows, f"Gate comparison, CBAM {position} (axes scaled to stated ranges)"),
            f"curves_{position}": plots.plot_curves(histories, f"Training curves, CBAM {position}"),
            f"gradient_flow_{position}": plots.plot_gradient_flow(flows, f"Gradient flow (last epoch), CBAM {position}"),
            f"gate_parameters_{position}": plots.plot_gate_parameters(gate_params, f"Learnable gate parameters, CBAM {position}"),
        }
        grid = spatial_grid(members[0], maps, meta)
        if grid is not None:
            figures[f"spatial_maps_{position}"] = grid
        for stem, fig in figures.items():
            written += plots.save_figure(fig, out / stem)
    return written


def summary_row_metrics(runs: list[Result]) -> dict[str, float]:
    return {k: float(np.nanmean([r.metrics.get(k, np.nan) for r in runs])) for k in plots.RADAR_AXES}


def spatial_grid(example: Result, maps: dict[str, np.ndarray], meta: dict[str, dict]):
    """Spatial maps of the first probed test images, the same images for every activation."""
    client = mlflow.MlflowClient()
    params = client.get_run(example.train_run_id).data.params
    try:
        test = load_dataset(params["dataset"], params.get("data_dir", "data")).test
    except PipelineError as exc:
        log.warning("report: no spatial-map grid (%s)", one_line(exc))
        return None
    k = min(GRID_IMAGES, *(m.shape[0] for m in maps.values()))
    indices = [meta[a]["indices"][:k] for a in maps]
    if any(ix != indices[0] for ix in indices):
        log.warning("report: the probes looked at different test images; no spatial-map grid")
        return None
    images = test.images[indices[0]].numpy()
    return plots.plot_spatial_grid(images, {a: m[:k] for a, m in maps.items()},
                                   f"Spatial attention, CBAM {example.position}, test images {indices[0]}")


def write_report(metrics_run_ids: list[str], out: str | Path, title: str = "report") -> dict[str, Any]:
    """Write the tables and figures of these compute-metrics runs into ``out``."""
    results = gather(metrics_run_ids)
    if not results:
        raise PipelineError("no finished compute-metrics runs to report on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(results)
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(f"# Summary: {title}\n\n" + to_markdown(table))
    (out / "summary.tex").write_text(to_latex(table, f"Attention metrics by gate ({title})"))
    with tempfile.TemporaryDirectory() as tmp:
        figures = write_figures(results, out, Path(tmp))
    log.info("report: %d configurations, %d rows, %d figure files in %s", len(results), len(table), len(figures), out)
    return {"table": table, "figures": figures, "results": results}


def metrics_runs_of(config: ReportConfig) -> tuple[list[str], str]:
    client = mlflow.MlflowClient()
    if config.experiment_name:
        exp = client.get_experiment_by_name(config.experiment_name)
        if exp is None:
            raise PipelineError(f"experiment {config.experiment_name!r} does not exist")
        runs = client.search_runs([exp.experiment_id], f"tags.`{STEP_TAG}` = '{COMPUTE_METRICS}' and "
                                  "attributes.status = 'FINISHED'")
        return [r.info.run_id for r in runs], f"experiment {config.experiment_name}"
    run_id = config.sweep_run_id or config.main_run_id
    step = SWEEP if config.sweep_run_id else MAIN
    try:
        run = client.get_run(run_id)
    except Exception:
        raise PipelineError(f"run {run_id!r} does not exist in the tracking store {mlflow.get_tracking_uri()!r}") from None
    if run.data.tags.get(STEP_TAG) != step:
        raise PipelineError(f"run {run_id!r} is not a {step} run")
    if step == MAIN:
        return [run.data.tags[UPSTREAM_TAGS[COMPUTE_METRICS]]], f"main run {run_id}"
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}' and "
                                  "attributes.status = 'FINISHED'")
    key = UPSTREAM_TAGS[COMPUTE_METRICS]
    ids = [c.data.tags[key] for c in children if key in c.data.tags]
    return ids, f"sweep run {run_id}"


def run_report(config: ReportConfig) -> str:
    ids, title = metrics_runs_of(config)
    if not ids:
        raise PipelineError(f"{title} has no finished compute-metrics runs to report on")
    with step_run(REPORT, config.params()) as run:
        out = Path(config.out) / f"report-{run.info.run_id}"
        write_report(ids, out, title)
        mlflow.log_artifacts(str(out), REPORT_DIR)
        log.info("report written to %s", out)
        return run.info.run_id
