"""The notebook's table end to end, timed in one run: our whole ``sweep`` and the notebook's loop.

What it does, in order, each phase timed:

1. **data**: writes a CIFAR-10-format dataset of CIFAR-10's exact shapes and sizes (random
   pixels, :func:`pipeline.data.write_cifar10_format`; the cost of a step does not depend on
   the pixels) to ``--data-dir``, unless it is there;
2. **notebook**: the notebook's own loop (``benchmarks/notebook_loop.py``: its PIL DataLoader,
   model, Adam step) on a bounded share of the work (``--notebook-batches`` batches of one gate,
   one epoch), for its training rate in images per second;
3. **sweep**: ``python -m pipeline sweep`` of ``--activations`` (the notebook's six gates) at
   ``--image-size`` for ``--epochs``, with the executor, ``jobs_per_gpu``, ``compile`` and
   ``amp`` given, to a fresh SQLite store: MLflow, checkpoints, the probe, the metrics and the
   report included, as a user runs it. A thread samples the GPUs' used memory (NVML) meanwhile.

Then it reads the step runs from the store and writes JSON (``--out``): the settings, the
wall time of every phase, per step the summed run time and the wall span of its runs (they
overlap when configurations share the GPU), the sweep's start-up, orchestration (main runs
outside their steps) and report time, training images per second against the notebook's,
and the GPU memory peak with the per-configuration estimate of :mod:`pipeline.sharing`.

    python benchmarks/bench_gpu_sweep.py --out docs/benchmarks/gpu-sweep-h200.json
    # on a CPU, at a tiny size (what the suite's machine can run end to end):
    python benchmarks/bench_gpu_sweep.py --image-size 32 --epochs 1 --activations sigmoid,sparsemax \\
        --per-batch 64 --test-images 64 --notebook-batches 2 --faithfulness-images 8 --device cpu \\
        --out docs/benchmarks/gpu-sweep-cpu-smoke.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from benchjson import write_json

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_GATES = "sigmoid,softmax,sparsemax,scaled_tanh,parametric_sigmoid,swish"
STEPS = ("prepare-data", "train", "probe-attention", "compute-metrics")


class MemorySampler(threading.Thread):
    """The GPUs' used memory (all processes) and the largest single process's, every 0.2 s, by
    NVML (``nvidia-ml-py``, on the GPU host); nothing where NVML is missing."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_used = self.peak_process = 0
        self.available = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.baseline = sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles)
            self.total = sum(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in self.handles)
            self.available = bool(self.handles)
        except Exception:
            self.handles = []

    def run(self):
        while self.available and not self.stop.is_set():
            try:
                used = sum(self.nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles)
                processes = [p.usedGpuMemory or 0 for h in self.handles
                             for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h)]
                self.peak_used = max(self.peak_used, used)
                self.peak_process = max([self.peak_process, *processes])
            except Exception:
                pass
            self.stop.wait(0.2)

    def result(self) -> dict:
        if not self.available:
            return {"sampled": False}
        gib = 2 ** 30
        return {"sampled": True, "gpus": len(self.handles), "total_gib": round(self.total / gib, 2),
                "idle_used_gib": round(self.baseline / gib, 2), "peak_used_gib": round(self.peak_used / gib, 2),
                "peak_one_process_gib": round(self.peak_process / gib, 2)}


def timed(command: list[str], env: dict, log_path: Path) -> tuple[float, str, int]:
    """Run ``command`` in the log's folder (MLflow's artefacts, ./mlruns, land there)."""
    started = time.perf_counter()
    with log_path.open("w") as err:
        done = subprocess.run(command, cwd=log_path.parent, env=env, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    return time.perf_counter() - started, done.stdout, done.returncode


def span(runs) -> float:
    return (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000 if runs else 0.0


def phases(uri: str, sweep_id: str, launched_ms: int, exited_ms: int) -> dict:
    """Each step's summed run time and wall span, and the sweep's own parts, from the store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    sweep = client.get_run(sweep_id)
    runs = client.search_runs([sweep.info.experiment_id], max_results=5000)
    mains = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_id]
    main_ids = {r.info.run_id for r in mains}
    steps = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in main_ids]
    out = {}
    for step in STEPS:
        these = [r for r in steps if r.data.tags.get("pipeline.step") == step]
        out[step] = {"runs": len(these), "summed_s": round(sum((r.info.end_time - r.info.start_time) / 1000
                                                               for r in these), 2),
                     "span_s": round(span(these), 2)}
    inside = sum(r.info.end_time - r.info.start_time for r in steps) / 1000
    out["orchestration_s"] = round(sum(r.info.end_time - r.info.start_time for r in mains) / 1000 - inside, 2)
    out["startup_s"] = round((sweep.info.start_time - launched_ms) / 1000, 2)  # imports, checks, store
    out["report_s"] = round((sweep.info.end_time - max(r.info.end_time for r in mains)) / 1000, 2) if mains else None
    out["exit_s"] = round((exited_ms - sweep.info.end_time) / 1000, 2)
    out["mains"] = {"runs": len(mains), "span_s": round(span(mains), 2),
                    "statuses": sorted({r.info.status for r in mains})}
    out["_train_runs"] = [r for r in steps if r.data.tags.get("pipeline.step") == "train"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", default=NOTEBOOK_GATES)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--executor", default="process", choices=("inline", "process"))
    parser.add_argument("--jobs-per-gpu", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=1, help="executor=process without a GPU: workers")
    parser.add_argument("--compile", default="graphs", choices=("false", "graphs", "inductor"))
    parser.add_argument("--amp", default="true", choices=("true", "false"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default="none", help="the GPU host cannot download ImageNet weights")
    parser.add_argument("--faithfulness-images", type=int, default=256)
    parser.add_argument("--per-batch", type=int, default=10000, help="images per training batch file (CIFAR-10: 10000)")
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--notebook-batches", type=int, default=150, help="batches of the notebook's loop, 0: none")
    parser.add_argument("--data-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--work", default=None, help="store, report and logs; default: a temporary folder")
    parser.add_argument("--out", default="gpu-sweep.json")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-gpu-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir) if args.data_dir else work / "data"
    env = {**os.environ, "PIPELINE_OFFLINE": "1", "PIPELINE_PROGRESS": "0", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env["MLFLOW_TRACKING_URI"] = uri
    result: dict = {"settings": {k: v for k, v in vars(args).items()}, "phases_s": {}}
    import torch

    result["host"] = {"python": platform.python_version(), "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                      "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    total = time.perf_counter()

    # 1. data
    from pipeline.data import CIFAR10_FOLDER, write_cifar10_format

    started = time.perf_counter()
    if not (data_dir / CIFAR10_FOLDER / "test_batch").is_file():
        write_cifar10_format(data_dir, per_batch=args.per_batch, n_test=args.test_images)
    result["phases_s"]["data"] = round(time.perf_counter() - started, 2)
    print(f"[bench] data: {result['phases_s']['data']} s", file=sys.stderr, flush=True)

    # 2. the notebook's loop, bounded
    if args.notebook_batches:
        gate = args.activations.split(",")[0]
        seconds, out, code = timed([sys.executable, str(REPO / "benchmarks" / "notebook_loop.py"), "--dataset",
                                    "cifar10", "--data-dir", str(data_dir), "--image-size", str(args.image_size),
                                    "--epochs", "1", "--activations", gate, "--weights", args.weights,
                                    "--max-batches", str(args.notebook_batches),
                                    *(["--device", args.device] if args.device != "auto" else [])],
                                   env, work / "notebook.log")
        if code != 0:
            raise SystemExit(f"the notebook loop failed ({code}): see {work / 'notebook.log'}")
        [line] = [l for l in out.splitlines() if l.startswith("NOTEBOOK_JSON ")]
        result["notebook"] = json.loads(line.split(" ", 1)[1])
        result["phases_s"]["notebook"] = round(seconds, 2)
        print(f"[bench] notebook: {seconds:.1f} s, {result['notebook']['train_img_per_s']} img/s",
              file=sys.stderr, flush=True)

    # 3. our sweep
    out_dir = work / "out"
    command = [sys.executable, "-m", "pipeline", "sweep", "--activations", args.activations, "--dataset", "cifar10",
               "--data-dir", str(data_dir), "--weights", args.weights, "--image-size", str(args.image_size),
               "--epochs", str(args.epochs), "--executor", args.executor, "--jobs", str(args.jobs),
               "--jobs-per-gpu", str(args.jobs_per_gpu), "--compile", args.compile, "--amp", args.amp,
               "--device", args.device, "--faithfulness-images", str(args.faithfulness_images),
               "--out", str(out_dir)]
    sampler = MemorySampler()
    sampler.start()
    launched_ms = int(time.time() * 1000)
    seconds, out, code = timed(command, env, work / "sweep.log")
    exited_ms = int(time.time() * 1000)
    sampler.stop.set()
    result["phases_s"]["sweep"] = round(seconds, 2)
    result["sweep_exit_code"] = code
    result["gpu_memory"] = sampler.result()
    log_tail = (work / "sweep.log").read_text().splitlines()[-15:]
    if code != 0 or not out.strip():
        result["sweep_log_tail"] = log_tail
        write_json(result, args.out)
        raise SystemExit(f"the sweep failed ({code}): see {work / 'sweep.log'}\n" + "\n".join(log_tail))
    sweep_id = out.strip().splitlines()[-1]
    detail = phases(uri, sweep_id, launched_ms, exited_ms)
    train_runs = detail.pop("_train_runs")
    result["sweep"] = {"run_id": sweep_id, **detail}
    # training throughput: every epoch's training images (each train run logs its train_size)
    # over the train runs' wall span
    images = sum(int(r.data.params["train_size"]) * int(r.data.params["epochs"]) for r in train_runs)
    train_span = detail["train"]["span_s"]
    result["train"] = {"images": images, "img_per_s": round(images / train_span, 1) if train_span else None,
                       "note": "all configurations' training images over the wall span of their train runs "
                               "(each epoch's validation and the per-epoch attention read-out included)"}
    if "notebook" in result and result["train"]["img_per_s"]:
        result["train"]["vs_notebook"] = round(result["train"]["img_per_s"] / result["notebook"]["train_img_per_s"], 2)
    from pipeline.config import MainConfig, TrainConfig
    from pipeline.sharing import GIB, configuration_bytes

    estimate = configuration_bytes(MainConfig(train=TrainConfig(dataset="cifar10", weights="none",
                                                                image_size=args.image_size)))
    result["gpu_memory"]["estimate_per_configuration_gib"] = round(estimate / GIB, 2)
    result["phases_s"]["total"] = round(time.perf_counter() - total, 2)
    reports = sorted(out_dir.rglob("summary.md"))
    result["report"] = {"folder": str(reports[0].parent.relative_to(out_dir)) if reports else None,
                        "files": len(list(reports[0].parent.iterdir())) if reports else 0}
    write_json(result, args.out)
    print(json.dumps({"sweep_s": result["phases_s"]["sweep"], "train_img_per_s": result["train"]["img_per_s"],
                      "notebook_img_per_s": result.get("notebook", {}).get("train_img_per_s")}))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
