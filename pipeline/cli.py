"""Command-line interface: one click command per step, named as the MLproject entry points.

Each step's options are derived from its config's fields (``pipeline.config``): the MLflow
parameter name spelled with dashes (``--image-size``), its default and its help text.
Errors in the input print one line (``Error: ...``) and exit non-zero, with no traceback.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

import click

from pipeline import config as cfg
from pipeline.contracts import COMPUTE_METRICS, MAIN, PREPARE_DATA, PROBE_ATTENTION, REPORT, SWEEP, TRAIN
from pipeline.errors import PipelineError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class IntegralType(click.ParamType):
    """An integer that also accepts integral floats ("64.0"), as MLflow's float parameters give."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid integer", param, ctx)
        if not number.is_integer():
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(number)


class CommaList(click.ParamType):
    """A comma-separated list ("sigmoid,swish"); empty items are dropped."""

    def __init__(self, item: click.ParamType):
        self.item = item
        self.name = f"list of {item.name}"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(self.item.convert(v.strip(), param, ctx) for v in str(value).split(",") if v.strip())


INT = IntegralType()
CLICK_TYPES = {bool: click.BOOL, int: INT, float: click.FLOAT, str: click.STRING,
               tuple[str, ...]: CommaList(click.STRING), tuple[int, ...]: CommaList(INT)}


def config_options(config_cls):
    """Click options for every flat field of ``config_cls``, with the field's default and help."""

    def decorate(func):
        for f in reversed(cfg.flat_fields(config_cls)):
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            func = click.option(f"--{f.name.replace('_', '-')}", f.name, type=CLICK_TYPES[f.type], default=default,
                                show_default=default != "", help=f.help)(func)
        return func

    return decorate


class StepCommand(click.Command):
    """A step's command: an unknown option (or, under `mlflow run`, one given twice) is refused in
    one line that names the valid parameters. `mlflow run` passes a ``-P`` name the entry point does not declare on
    as an extra ``--name value`` after the declared ones (``-P image-size=64`` would override
    ``--image-size`` while the run logs ``image_size=224``); here it fails the run at once."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not any(a in ("--help", "-h") for a in args):
            options = {o: p for p in self.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
            valid = ", ".join(p.name for p in self.params if isinstance(p, click.Option) and not p.hidden)
            seen: dict[str, str] = {}
            # `mlflow run` starts the entry point's command with MLFLOW_RUN_ID set; on a plain command
            # line a repeated option keeps click's rule (the last one counts)
            under_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID"))
            i = 0
            while i < len(args):
                token = args[i]
                if token.startswith("--") and token != "--":
                    spelled = token.split("=", 1)[0]
                    param = options.get(spelled)
                    if param is None:
                        raise click.UsageError(f"unknown parameter {spelled[2:]!r} for {self.name}; "
                                               f"valid parameters: {valid}")
                    if param.name in seen and under_mlflow_run:
                        raise click.UsageError(
                            f"parameter {param.name} given twice ({seen[param.name]} and {spelled}); with "
                            f"`mlflow run`, a -P name the entry point does not declare (such as image-size for "
                            f"image_size) arrives as a second option. Valid parameters of {self.name}: {valid}")
                    seen[param.name] = spelled
                    if "=" not in token and not param.is_flag:
                        i += 1
                i += 1
        return super().parse_args(ctx, args)


NO_TRACKING_COMMANDS = {"server"}


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
        from pipeline.server import check_reachable

        # before importing MLflow (seconds): a server that does not answer fails at once; without
        # the variable the store is MLflow's local default, which needs no server
        check_reachable(os.environ.get("MLFLOW_TRACKING_URI", ""))


@cli.command(TRAIN, cls=StepCommand)
@config_options(cfg.TrainConfig)
@click.option("--resume-run-id", default="",
              help="Continue this interrupted train run, in the same MLflow run, from its last checkpoint "
                   "(its own parameters are used; the others given here are ignored).")
@click.option("--force", is_flag=True, help="With --resume-run-id: resume even if the run's process looks alive "
              "(its heartbeat is fresh; e.g. it died on another host a moment ago).")
def train(resume_run_id: str, force: bool, **options) -> None:
    """Train a CBAM-ResNet18 with one channel gate and log it to MLflow."""
    from pipeline.steps.train import run_train

    if resume_run_id:
        if not resume_run_id.strip():
            raise PipelineError("resume_run_id is blank: give the id of an interrupted train run "
                                "(the interrupted run's log prints the command)")
        click.echo(run_train(resume_run_id=resume_run_id.strip(), force=force).run_id)
        return
    click.echo(run_train(cfg.TrainConfig.from_options(**options)).run_id)


@cli.command(PREPARE_DATA, cls=StepCommand)
@config_options(cfg.PrepareConfig)
def prepare_data(**options) -> None:
    """Fetch or verify a dataset, log its identity and fix the validation split."""
    from pipeline.steps.prepare_data import run_prepare

    click.echo(run_prepare(cfg.PrepareConfig.from_options(**options)).run_id)


@cli.command(PROBE_ATTENTION, cls=StepCommand)
@config_options(cfg.ProbeConfig)
def probe_attention(**options) -> None:
    """Record the channel weights and spatial maps of a trained model on test images."""
    from pipeline.steps.probe_attention import run_probe

    click.echo(run_probe(cfg.ProbeConfig.from_options(**options)).run_id)


@cli.command(COMPUTE_METRICS, cls=StepCommand)
@config_options(cfg.MetricsConfig)
def compute_metrics(**options) -> None:
    """Compute Gini, entropy, focus, sparsity... of a probe-attention run's attention."""
    from pipeline.steps.compute_metrics import run_compute_metrics

    click.echo(run_compute_metrics(cfg.MetricsConfig.from_options(**options)).run_id)


@cli.command(MAIN, cls=StepCommand)
@config_options(cfg.MainConfig)
@click.option("--parent-run-id", default="", hidden=True, help="Nest the main run under this run (a sweep's).")
@click.option("--report/--no-report", default=True, hidden=True, help="Write this run's report.")
def main_command(parent_run_id: str, report: bool, **options) -> None:
    """Chain prepare-data, train, probe-attention, compute-metrics in this process (reusing finished
    steps), then report."""
    from pipeline.steps.main import run_main

    click.echo(run_main(cfg.MainConfig.from_options(**options), parent_run_id=parent_run_id or None, report=report))


@cli.command(SWEEP, cls=StepCommand)
@config_options(cfg.SweepConfig)
def sweep(**options) -> None:
    """Run main for every (position, activation, seed) under one sweep run, then report."""
    from pipeline.steps.sweep import run_sweep

    click.echo(run_sweep(cfg.SweepConfig.from_options(**options)))


@cli.command(REPORT, cls=StepCommand)
@config_options(cfg.ReportConfig)
def report(**options) -> None:
    """Summary tables (Markdown, CSV, LaTeX) and figures (PDF, PNG) of finished runs."""
    from pipeline.steps.report import run_report

    click.echo(run_report(cfg.ReportConfig.from_options(**options)).run_id)


@cli.command()
@click.argument("folders", nargs=-1)
def sync(folders: tuple[str, ...]) -> None:
    """Send what train runs kept while the tracking server was away (their outbox folders; default:
    every folder in $PIPELINE_OUTBOX, ~/.cache/cbam-gates/outbox) and end each run as it ended."""
    from pipeline.outbox import outbox_root, sync as deliver

    if not folders:
        root = outbox_root()
        folders = tuple(str(f) for f in sorted(root.iterdir()) if f.is_dir()) if root.is_dir() else ()
        if not folders:
            click.echo(f"nothing to send: {root} holds no kept runs", err=True)
            return
    for folder in folders:
        run_id, sent, end = deliver(folder)
        click.echo(f"{run_id}\t{sent} entries sent" + (f"\tended {end}" if end else ""))


@cli.command()
@click.option("--stale", is_flag=True, help="List RUNNING runs whose process is gone (required).")
@click.option("--mark", type=click.Choice(["killed", "failed"]), default=None,
              help="End the stale runs with this status.")
@click.option("--experiment-name", default="", help="Only this experiment (default: every experiment).")
@click.option("--stale-after", type=click.FLOAT, default=600.0, show_default=True,
              help="Seconds without a heartbeat after which a run on another host counts as gone.")
def runs(stale: bool, mark: str | None, experiment_name: str, stale_after: float) -> None:
    """Find runs left RUNNING by a process that died (SIGKILL, OOM, a lost host) and end them."""
    from pipeline.contracts import STEP_TAG
    from pipeline.liveness import stale_runs
    from pipeline.tracking import end_run_as, experiment_ids

    if not stale:
        raise PipelineError("say what to list: runs --stale (RUNNING runs whose process is gone)")
    if stale_after <= 0:
        raise PipelineError(f"stale_after must be positive, got {stale_after}")
    ids = experiment_ids(experiment_name)
    found = stale_runs(ids, stale_after) if ids else []
    for run, state in found:
        if mark:
            end_run_as(run.info.run_id, mark.upper())
        click.echo(f"{run.info.run_id}\t{run.data.tags.get(STEP_TAG, '?')}\t{run.info.run_name}\t{state.why}"
                   + (f"\tmarked {mark.upper()}" if mark else ""))
    click.echo(f"{len(found)} stale run{'s' if len(found) != 1 else ''}"
               + (f" marked {mark.upper()}" if mark and found else ""), err=True)


@cli.command()
@click.option("--port", type=INT, default=5000, show_default=True)
@click.option("--store", default="mlflow-server", show_default=True,
              help="Folder for the SQLite backend store (mlflow.db) and the served artefacts (artifacts/).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes the server: put auth and TLS in front.")
@click.option("--backend-store-uri", default="",
              help="Backend store instead of SQLite, e.g. postgresql://user:pass@127.0.0.1:5432/mlflow.")
@click.option("--workers", type=INT, default=4, show_default=True, help="Web worker processes of the server.")
def server(port: int, store: str, host: str, backend_store_uri: str, workers: int) -> None:
    """Start a real MLflow tracking server and keep it running until Ctrl-C."""
    from pipeline.server import serve

    serve(port, store, host, backend_store_uri, workers)


@cli.command("mlflow-run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                            "help_option_names": []})
@click.pass_context
def mlflow_run(ctx: click.Context) -> None:
    """`mlflow run` with the same arguments, after checking that the tracking server answers.

    `mlflow run` creates its run before the entry point starts, so a server that is down keeps it
    in MLflow's HTTP retries for minutes and ends in a long traceback; here it fails in seconds
    with one line naming the URI (the check runs before this command, as for every step).
    Without ``--experiment-name``/``--experiment-id`` (or the MLFLOW_EXPERIMENT_* variables) the
    run goes to the dataset's experiment, ``cbam-gates-<dataset>``, as the steps' own runs do."""
    args = list(ctx.args)
    chosen = any(a.split("=")[0] in ("--experiment-name", "--experiment-id") for a in args) or \
        os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not chosen:
        dataset = cfg.TrainConfig().dataset
        for flag, value in zip(args, args[1:]):
            if flag in ("-P", "--param-list") and value.startswith("dataset="):
                dataset = value.split("=", 1)[1]
        args += ["--experiment-name", cfg.default_experiment(dataset)]
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "run", *args])


def _interrupt_once(signum, frame):
    """SIGTERM (a scheduler, `kill`) ends a step like Ctrl-C: its runs are marked KILLED, not
    left RUNNING. Further signals are ignored, so the clean-up is not itself interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and a non-zero exit."""
    signal.signal(signal.SIGTERM, _interrupt_once)
    signal.signal(signal.SIGINT, _interrupt_once)
    if os.environ.get("MLFLOW_RUN_ID"):
        # started by `mlflow run`: if that process is killed, end our runs KILLED rather than
        # go on unattended (MLflow itself does not pass SIGTERM on)
        from pipeline.processes import die_with_parent

        die_with_parent()
    try:
        cli.main(args=argv, prog_name="python -m pipeline", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare group: show help
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        click.echo(f"Error: no space left on device writing {exc.filename or 'a file'}: free some space and run it "
                   "again", err=True)
        sys.exit(EXIT_USAGE)
    except PipelineError as exc:
        sweep_id = getattr(exc, "sweep_id", None)
        if sweep_id:  # a sweep with failed configurations: its id stays the last line of stdout
            click.echo(sweep_id)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    sys.exit(0)
