"""End to end, whole processes: the notebook's comparison loop against our sweep, and a fully
reused ``main`` rerun. Writes JSON with the settings, the commands, the machine, every repeat
and the medians.

- ``notebook``: ``python benchmarks/notebook_loop.py`` (its gates, its PIL/DataLoader path, its
  train/evaluate loop, one process) on the gates, dataset, size and epochs given;
- ``sweep``: ``python -m pipeline sweep`` on the same gates, dataset, size and epochs, into a
  fresh SQLite store each repeat (so nothing is reused), report included;
- ``main_reused``: after one ``mlflow run`` of ``main`` has filled a store, the same command
  again (every step reused), timed ``--reuse-repeats`` times; also ``python -m pipeline main``.

The two loops alternate within each repeat so both see the same machine state. Any project
checkout can be measured (``--project-dir``), which is how the before/after numbers in
``docs/performance.md`` were taken in one run:

    python benchmarks/bench_end_to_end.py --repeats 3 --out docs/benchmarks/end-to-end-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchjson import write_json

HERE = Path(__file__).resolve().parent
NOTEBOOK_GATES = "sigmoid,softmax,sparsemax,scaled_tanh,parametric_sigmoid,swish"


def timed(command: list[str], cwd: Path, env: dict, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as fh:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with code {result.returncode}; log: {log}")
    return elapsed


def summary(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "repeats_s": values}


def git_commit(project: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=str(HERE.parent), help="checkout whose pipeline is measured")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--activations", default=NOTEBOOK_GATES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse-repeats", type=int, default=3)
    parser.add_argument("--sweep-args", default="", help="extra options for the sweep, e.g. '--executor process --jobs 2'")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-reuse", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores and logs")
    parser.add_argument("--out", default="end_to_end.json")
    args = parser.parse_args()

    project = Path(args.project_dir).resolve()
    env = {**os.environ, "PYTHONPATH": str(project), "PIPELINE_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    common = ["--dataset", args.dataset, "--weights", "none", "--image-size", str(args.image_size),
              "--epochs", str(args.epochs)]
    notebook_cmd = [sys.executable, str(HERE / "notebook_loop.py"), *common, "--activations", args.activations]
    sweep_cmd = [sys.executable, "-m", "pipeline", "sweep", *common, "--activations", args.activations,
                 *args.sweep_args.split()]
    main_params = ["-P", "activation=swish", "-P", f"dataset={args.dataset}", "-P", "weights=none",
                   "-P", f"image_size={args.image_size}", "-P", f"epochs={args.epochs}"]
    mlflow_main_cmd = ["mlflow", "run", str(project), "--env-manager", "local", *main_params]
    cli_main_cmd = [sys.executable, "-m", "pipeline", "main", "--activation", "swish", *common]

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    result: dict = {
        "settings": vars(args),
        "commands": {"notebook": notebook_cmd, "sweep": sweep_cmd, "main_reused_mlflow_run": mlflow_main_cmd,
                     "main_reused_cli": cli_main_cmd},
        "project_commit": git_commit(project),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    notebook, sweep = [], []
    try:
        for i in range(args.repeats):
            if not args.skip_notebook:
                notebook.append(timed(notebook_cmd, work, env, work / f"notebook-{i}.log"))
                print(f"repeat {i + 1}: notebook loop {notebook[-1]:.1f} s", flush=True)
            if not args.skip_sweep:
                store = work / f"sweep-{i}"
                store.mkdir()
                sweep_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
                sweep.append(timed(sweep_cmd, store, sweep_env, work / f"sweep-{i}.log"))
                print(f"repeat {i + 1}: sweep {sweep[-1]:.1f} s", flush=True)
        if notebook:
            result["notebook"] = summary(notebook)
        if sweep:
            result["sweep"] = summary(sweep)
        if notebook and sweep:
            result["sweep_over_notebook"] = result["sweep"]["median_s"] / result["notebook"]["median_s"]
        if not args.skip_reuse:
            store = work / "main"
            store.mkdir()
            main_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
            result["main_first_s"] = timed(mlflow_main_cmd, store, main_env, work / "main-first.log")
            reused = [timed(mlflow_main_cmd, store, main_env, work / f"main-reused-{i}.log")
                      for i in range(args.reuse_repeats)]
            reused_cli = [timed(cli_main_cmd, store, main_env, work / f"main-reused-cli-{i}.log")
                          for i in range(args.reuse_repeats)]
            log = (work / "main-reused-0.log").read_text()
            result["main_reused_mlflow_run"] = summary(reused)
            result["main_reused_cli"] = summary(reused_cli)
            result["main_reused_log_says_reused"] = log.count("reusing finished run")
            print(f"main: first {result['main_first_s']:.1f} s, reused (mlflow run) "
                  f"{result['main_reused_mlflow_run']['median_s']:.1f} s, reused (CLI) "
                  f"{result['main_reused_cli']['median_s']:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("commands", "settings")}, indent=1))


if __name__ == "__main__":
    main()
