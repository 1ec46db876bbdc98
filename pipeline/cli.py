"""Command-line interface: one click command per step, named as the MLproject entry points.

Each option is the step's MLflow parameter name spelled with dashes (``--image-size``).
Errors in the input print one line (``Error: ...``) and exit non-zero, with no traceback.
"""
from __future__ import annotations

import logging
import sys

import click

from pipeline.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TrainConfig
from pipeline.data import DATASETS
from pipeline.errors import PipelineError
from pipeline.gates import GATES
from pipeline.models import POSITIONS

class IntegralType(click.ParamType):
    """An integer that also accepts integral floats ("64.0"), as MLflow's float parameters give."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid integer", param, ctx)
        if not number.is_integer():
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(number)


INT = IntegralType()
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def train_options(func=None, *, skip=()):
    """The ``train`` parameters, shared with ``main`` and ``sweep`` (less the names in ``skip``)."""
    if func is None:
        return lambda f: train_options(f, skip=skip)
    d = TrainConfig()
    options = {
        "activation": click.option("--activation", default=d.activation, show_default=True,
            help=f"Channel gate: {', '.join(GATES)}."),
        "position": click.option("--position", default=d.position, show_default=True,
            help=f"Where CBAM sits: {', '.join(POSITIONS)}."),
        "dataset": click.option("--dataset", default=d.dataset, show_default=True,
            help=f"Dataset: {', '.join(DATASETS)}."),
        "data_dir": click.option("--data-dir", default=d.data_dir, show_default=True,
            help="Folder holding (or receiving) downloaded datasets."),
        "weights": click.option("--weights", default=d.weights, show_default=True,
            help="Backbone weights: imagenet, none, or a ResNet18 state-dict file."),
        "image_size": click.option("--image-size", type=INT, default=d.image_size, show_default=True,
            help=f"Input size in pixels, {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}."),
        "epochs": click.option("--epochs", type=INT, default=d.epochs, show_default=True),
        "batch_size": click.option("--batch-size", type=INT, default=d.batch_size, show_default=True),
        "lr": click.option("--lr", type=float, default=d.lr, show_default=True, help="Adam learning rate."),
        "seed": click.option("--seed", type=INT, default=d.seed, show_default=True),
        "val_fraction": click.option("--val-fraction", type=float, default=d.val_fraction, show_default=True,
            help="Share of the training set held out to pick the best epoch, in (0, 1)."),
        "device": click.option("--device", default=d.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
        "amp": click.option("--amp", type=click.BOOL, default=d.amp, show_default=True,
            help="bf16 autocast (gates stay float32)."),
        "prepare_run_id": click.option("--prepare-run-id", default=d.prepare_run_id,
            help="Use the split of this finished prepare-data run (default: split here)."),
    }
    for name, option in reversed(options.items()):
        if name not in skip:
            func = option(func)
    return func


NO_TRACKING_COMMANDS = {"server", "benchmark"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """CBAM gate benchmark: steps of the pipeline, each also an MLflow Project entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="[pipeline] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pipeline").setLevel(logging.DEBUG if verbose else logging.INFO)
    if ctx.invoked_subcommand not in NO_TRACKING_COMMANDS and "--help" not in sys.argv and "-h" not in sys.argv:
        import mlflow

        from pipeline.server import check_reachable

        check_reachable(mlflow.get_tracking_uri())


@cli.command()
@train_options
@click.option("--resume-run-id", default="",
              help="Continue this interrupted train run, in the same MLflow run, from its last checkpoint "
                   "(its own parameters are used; the others given here are ignored).")
def train(resume_run_id: str, **options) -> None:
    """Train a CBAM-ResNet18 with one channel gate and log it to MLflow."""
    from pipeline.steps.train import run_train

    if resume_run_id:
        click.echo(run_train(resume_run_id=resume_run_id.strip()))
        return
    click.echo(run_train(TrainConfig(**options)))


@cli.command("prepare-data")
@click.option("--dataset", default="cifar10", show_default=True, help=f"Dataset: {', '.join(DATASETS)}.")
@click.option("--data-dir", default="data", show_default=True, help="Folder holding (or receiving) the data.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--seed", type=INT, default=0, show_default=True, help="Seed of the validation split.")
def prepare_data(**options) -> None:
    """Fetch or verify a dataset, log its identity and fix the validation split."""
    from pipeline.steps.prepare import PrepareConfig, run_prepare

    click.echo(run_prepare(PrepareConfig(**options)))


@cli.command("probe-attention")
@click.option("--train-run-id", required=True, help="Run id of a finished train run.")
@click.option("--num-images", type=INT, default=-1, show_default=True,
              help="How many test images to probe (the first ones, in order); -1: all. "
                   "More than the test set is clamped to it, with a warning.")
@click.option("--batch-size", type=INT, default=256, show_default=True)
@click.option("--data-dir", default="", help="Dataset folder; default: the train run's data_dir.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def probe_attention(**options) -> None:
    """Record the channel weights and spatial maps of a trained model on test images."""
    from pipeline.steps.probe import ProbeConfig, run_probe

    click.echo(run_probe(ProbeConfig(**options)))


@cli.command("compute-metrics")
@click.option("--probe-run-id", required=True, help="Run id of a finished probe-attention run.")
def compute_metrics(**options) -> None:
    """Compute Gini, entropy, focus, sparsity... of a probe-attention run's attention."""
    from pipeline.steps.compute_metrics import MetricsConfig, run_compute_metrics

    click.echo(run_compute_metrics(MetricsConfig(**options)))


MAIN_OPTIONS = [
    click.option("--num-images", type=INT, default=-1, show_default=True,
                 help="Test images to probe; -1: all."),
    click.option("--out", default="out", show_default=True, help="Local folder for the report files."),
]


def main_options(func):
    for option in reversed(MAIN_OPTIONS):
        func = option(func)
    return func


@cli.command("main")
@train_options(skip=("prepare_run_id",))
@main_options
def main_command(**options) -> None:
    """Chain prepare-data, train, probe-attention, compute-metrics (reusing finished steps), then report."""
    from pipeline.steps.orchestrate import MainConfig, run_main

    click.echo(run_main(MainConfig(**options)))


@cli.command()
@click.option("--activations", default=",".join(GATES), show_default=True, help="Comma list of gates.")
@click.option("--positions", default="late", show_default=True, help="Comma list of positions.")
@click.option("--seeds", default="0", show_default=True, help="Comma list of seeds.")
@click.option("--jobs", type=INT, default=1, show_default=True,
              help="Configurations run at once (in separate processes; spread over the visible GPUs).")
@train_options(skip=("prepare_run_id", "activation", "position", "seed"))
@main_options
def sweep(**options) -> None:
    """Run main for every (position, activation, seed) under one sweep run, then report."""
    from pipeline.steps.orchestrate import SweepConfig, run_sweep

    click.echo(run_sweep(SweepConfig(**options)))


@cli.command()
@click.option("--experiment-name", default="", help="Report every finished compute-metrics run of this experiment.")
@click.option("--sweep-run-id", default="", help="Report the finished configurations of this sweep run.")
@click.option("--main-run-id", default="", help="Report this main run.")
@click.option("--out", default="out", show_default=True, help="Local folder for the report files.")
def report(**options) -> None:
    """Summary tables (Markdown, CSV, LaTeX) and figures (PDF, PNG) of finished runs."""
    from pipeline.steps.report import ReportConfig, run_report

    click.echo(run_report(ReportConfig(**options)))


@cli.command()
@click.option("--port", type=INT, default=5000, show_default=True)
@click.option("--store", default="mlflow-server", show_default=True,
              help="Folder for the SQLite backend store (mlflow.db) and the served artefacts (artifacts/).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes the server: put auth and TLS in front.")
@click.option("--backend-store-uri", default="",
              help="Backend store instead of SQLite, e.g. postgresql://user:pass@127.0.0.1:5432/mlflow.")
def server(port: int, store: str, host: str, backend_store_uri: str) -> None:
    """Start a real MLflow tracking server and keep it running until Ctrl-C."""
    import time

    from pipeline.server import start_server

    if not 1 <= port <= 65535:
        raise PipelineError(f"port must be in [1, 65535], got {port}")
    running = start_server(store, port, host, backend_store_uri or None)
    click.echo(f"MLflow tracking server running (pid {running.process.pid}), log: {running.log_path}", err=True)
    click.echo(f"export MLFLOW_TRACKING_URI={running.uri}")
    try:
        while running.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping the tracking server ...", err=True)
        code = running.stop()
        click.echo(f"tracking server stopped (exit code {code})", err=True)
        return
    raise PipelineError(f"the tracking server exited by itself with code {running.process.returncode} "
                        f"(log: {running.log_path})")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@cli.command()
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--image-size", type=INT, default=64, show_default=True)
@click.option("--batch-size", type=INT, default=64, show_default=True)
@click.option("--train-steps", type=INT, default=8, show_default=True, help="Training steps per repeat.")
@click.option("--eval-images", type=INT, default=512, show_default=True)
@click.option("--repeats", type=INT, default=3, show_default=True)
@click.option("--amp", type=click.BOOL, default=False, show_default=True, help="bf16 autocast on our path.")
@click.option("--data-memory/--no-data-memory", default=True, show_default=True,
              help="Also measure holding 50,000 CIFAR-sized images for 224-px training.")
@click.option("--out", default="benchmark.json", show_default=True, help="JSON file for the results.")
def benchmark(data_memory: bool, out: str, **options) -> None:
    """Images/s of the notebook's data path and ours, training and evaluation, same model."""
    import json

    from pipeline.benchmark import BenchmarkConfig, data_preparation_memory, run_benchmark, write_json
    from pipeline.config import check_device

    check_device(options["device"])
    for name in ("image_size", "batch_size", "train_steps", "eval_images", "repeats"):
        if options[name] <= 0:
            raise PipelineError(f"{name} must be positive, got {options[name]}")
    result = run_benchmark(BenchmarkConfig(**options))
    if data_memory:
        result["data_preparation"] = data_preparation_memory()
    write_json(result, out)
    keys = ("device", "notebook_train_ips", "ours_train_ips", "train_ratio", "notebook_eval_ips",
            "ours_eval_ips", "eval_ratio", "peak_rss_mb")
    click.echo(json.dumps({k: result[k] for k in keys}, indent=1))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and a non-zero exit."""
    import signal

    # SIGTERM (a scheduler, `kill`) ends a step like Ctrl-C: its run is marked KILLED, not left RUNNING
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        cli.main(args=argv, prog_name="python -m pipeline", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare group: show help
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except PipelineError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)
