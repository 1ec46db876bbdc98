"""Every step's configuration: frozen, validated dataclasses, composed rather than inherited.

Building one validates it: a bad value raises ``PipelineError`` with the
valid values or range, before any MLflow run starts. The click options of each command and
the parameters each run logs are derived from the fields (``flat_fields``), so a field's
name, default and help live here only; ``tests/unit/test_config.py`` checks the MLproject
entry points against these classes.

Composition: ``MainConfig`` holds a ``TrainConfig`` (less ``prepare_run_id``: main
prepares its own data) plus the probe's ``num_images``; ``SweepConfig`` holds the lists it
sweeps over and a ``MainConfig`` template whose ``activation``, ``position`` and ``seed`` it
leaves out (a sweep logs ``activations``, never a single ``activation``).
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from pipeline import contracts
from pipeline.errors import PipelineError

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
SEED_MAX = 2**32 - 1  # numpy's seed range
#: The random orders of the faithfulness protocol multiply its cost (each draw is a full set of
#: ablation and deletion curves); 30 give the chance baseline's mean to within a few percent of
#: its spread, so more buys nothing but time.
MAX_FAITHFULNESS_DRAWS = 30
AUTO_FLAGS = ("auto", "true", "false")
EXECUTORS = ("inline", "process", "ray")
RERUNNABLE = (*contracts.CHAIN, contracts.REPORT)  # in order: a rerun reruns all after it



def default_experiment(dataset: str) -> str:
    """Where runs of ``dataset`` go unless the user names an experiment (MLFLOW_EXPERIMENT_NAME,
    MLFLOW_EXPERIMENT_ID, ``mlflow run --experiment-name``): one experiment per dataset, so a
    report of an experiment compares like with like by default."""
    return f"cbam-gates-{dataset}"

def option(default, help: str = "", **kwargs):
    """A config field with its command-line help text."""
    return field(default=default, metadata={"help": help}, **kwargs)


def check_choice(name: str, value: str, valid) -> None:
    if value not in valid:
        raise PipelineError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def check_positive(name: str, value) -> None:
    if not value > 0:
        raise PipelineError(f"{name} must be positive, got {value}")


def check_seed(name: str, value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise PipelineError(f"{name} must be in [0, {SEED_MAX}], got {value}")


def check_val_fraction(value: float) -> None:
    if not 0.0 < value < 1.0:
        raise PipelineError(f"val_fraction must be in (0, 1), exclusive, got {value}")


def check_writable_folder(name: str, folder: str | Path) -> None:
    """One-line error unless ``folder`` exists or can be created, and files can be written in it
    (checked before any run starts: a report folder that cannot be written must not fail a
    chain after its training)."""
    import tempfile

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PipelineError(f"{name} {str(folder)!r} is not a folder this process can write to ({reason}); "
                            f"give another --{name.replace('_', '-')}") from None


def check_device(device: str) -> None:
    if device in ("auto", "cpu"):  # no torch needed to know these
        return
    from pipeline.devices import check_device as check

    check(device)


def check_weights(weights: str) -> None:
    """A weights name from ``WEIGHTS`` or the path of an existing file;
    one-line error else."""
    if weights in contracts.WEIGHTS:
        return
    path = Path(weights)
    if not path.exists():
        raise PipelineError(
            f"unknown weights {weights!r}; valid: {', '.join(contracts.WEIGHTS)}, or the path of a local "
            "state-dict file of the backbone (resnet18, resnet34 or resnet50)"
        )
    if not path.is_file():
        raise PipelineError(f"weights path {weights!r} is a directory, not a state-dict file")


@dataclass(frozen=True)
class FlatField:
    """One command-line option / MLflow parameter of a (possibly nested) config."""

    name: str
    type: Any  # bool, int, float, str, tuple[str, ...] or tuple[int, ...]
    default: Any
    help: str


class StepConfig:
    """Shared behaviour of the step configurations (frozen dataclasses)."""

    #: Fields of nested configs that this config leaves out (it sets them itself).
    OMIT: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The typed configuration, nested configs as dicts (what ``config.json`` holds)."""
        return asdict(self)  # type: ignore[call-overload]

    def params(self) -> dict[str, Any]:
        """The flat parameters this config logs: one per option, nested configs expanded."""
        return {f.name: _flat_value(self, f.name) for f in flat_fields(type(self))}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_options(cls, **values):
        """Build the config from flat option values (missing ones take their defaults)."""
        return _build(cls, values, ())


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flat_fields(cls, omit: tuple[str, ...] = ()) -> list[FlatField]:
    """The options of ``cls``: its scalar fields, nested configs expanded, ``OMIT`` left out."""
    omit = omit + tuple(getattr(cls, "OMIT", ()))
    hints = _hints(cls)
    out: list[FlatField] = []
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            out += flat_fields(kind, omit)
        elif f.name not in omit:
            out.append(FlatField(f.name, kind, f.default, f.metadata.get("help", "")))
    return out


def _flat_value(config, name: str):
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            try:
                return _flat_value(value, name)
            except KeyError:
                continue
        if f.name == name:
            return value
    raise KeyError(name)


def _build(cls, values: dict[str, Any], omit: tuple[str, ...]):
    omit = omit + tuple(getattr(cls, "OMIT", ()))
    hints = _hints(cls)
    kwargs = {}
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            kwargs[f.name] = _build(kind, values, omit)
        elif f.name in values and f.name not in omit:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


@dataclass(frozen=True)
class PrepareConfig(StepConfig):
    dataset: str = option("cifar10", f"Dataset: {', '.join(contracts.DATASET_NAMES)}.")
    data_dir: str = option("data", "Folder holding (or receiving) downloaded datasets.")
    val_fraction: float = option(0.1, "Share of the training set held out to pick the best epoch, in (0, 1).")
    seed: int = option(0, "Seed of the validation split (and of training, in train).")

    def __post_init__(self):
        check_choice("dataset", self.dataset, contracts.DATASET_NAMES)
        check_val_fraction(self.val_fraction)
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class TrainConfig(StepConfig):
    activation: str = option("sigmoid", f"Channel gate: {', '.join(contracts.GATE_NAMES)}.")
    position: str = option("late", "Where CBAM sits: early, middle, late, or none (the baseline without CBAM; "
                           "its gate is then none, whatever activation says).")
    dataset: str = option("cifar10", f"Dataset: {', '.join(contracts.DATASET_NAMES)}.")
    data_dir: str = option("data", "Folder holding (or receiving) downloaded datasets.")
    weights: str = option("imagenet", "Backbone weights: imagenet, none, or a state-dict file of the backbone "
                          "(a file fits one backbone: a resnet18 file does not load into a resnet50).")
    image_size: int = option(224, f"Input size in pixels, {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}.")
    epochs: int = option(5, "Training epochs.")
    batch_size: int = option(64, "Training batch size.")
    lr: float = option(1e-3, "Adam learning rate.")
    seed: int = option(0, "Seeds the model init, the validation split and the batch order.")
    val_fraction: float = option(0.1, "Share of the training set held out to pick the best epoch, in (0, 1).")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    amp: bool = option(False, "bf16 autocast (gates stay float32); works on CPUs too.")
    channels_last: str = option("auto", "channels_last memory format: auto (on CUDA), true, false.")
    fused_adam: str = option("auto", "Fused Adam kernel: auto (on CUDA), true, false.")
    compile: str = option("false", "Graph-capture the training step: false (eager), graphs (TorchDynamo capture "
                          "replayed as CUDA graphs on a GPU: the eager kernels without their launch cost) or "
                          "inductor (compiled to fused kernels by TorchInductor, CUDA graphs on a GPU). Same "
                          "numbers as eager to float rounding; a few seconds (graphs) to a minute (inductor) "
                          "of capture per process and batch shape.")
    keep_last_checkpoint: bool = option(True, "Keep checkpoints/last.pt (model, optimizer and RNG state, ~135 MB "
                                        "for ResNet18) once the run FINISHES; it is only needed to resume an "
                                        "interrupted run. best.pt (~45 MB) is always kept.")
    gate_norm: str = option("none", "none (the notebook's gates) or mean_one: sum-to-one gates (softmax, sparsemax, "
                            "entmax15, alpha_entmax) multiplied by C so their weights average 1 instead of 1/C; "
                            "other gates are left unchanged.")
    attention: str = option("cbam", "The attention block's design: cbam (the notebook's: channel then spatial "
                            "attention), se (squeeze-and-excitation) or eca (efficient channel attention); "
                            "its channel gate is the activation.")
    spatial_gate: str = option("sigmoid", "The gate of CBAM's spatial branch: sigmoid (the notebook's, per "
                               "position), softmax or sparsemax (over the map's positions); cbam only.")
    backbone: str = option("resnet18", "The torchvision ResNet: resnet18, resnet34 or resnet50 (early/middle/late "
                           "stay after layer1/2/4, with that stage's channels).")
    attention_images: int = option(256, "Validation images (a fixed, seeded set) whose channel weights give "
                                   "the per-epoch attention/* metrics; 0: none.")
    canvases: str = option("fixed", "Training canvases of a cluttered dataset: fixed (placed once) or fresh (placed "
                           "anew every epoch from the training split's images, seeded by seed and epoch; validation "
                           "and test canvases stay fixed).")
    lr_schedule: str = option("constant", "Learning rate over training: constant (the notebook's) or onecycle "
                              "(warm-up to lr over the first 30 % of the steps, then cosine annealing).")
    prepare_run_id: str = option("", "Use the split of this finished prepare-data run (default: split here).")

    def __post_init__(self):
        check_choice("position", self.position, contracts.POSITIONS)
        check_choice("backbone", self.backbone, contracts.BACKBONES)
        if self.position == contracts.NO_CBAM:  # the baseline: no block, no gate to choose or normalise
            object.__setattr__(self, "activation", contracts.NO_GATE)
            object.__setattr__(self, "gate_norm", "none")
            object.__setattr__(self, "attention", contracts.NO_ATTENTION)
            object.__setattr__(self, "spatial_gate", contracts.NO_ATTENTION)
        elif self.activation == contracts.NO_GATE:
            raise PipelineError("activation none is the baseline without CBAM: give position none for it, "
                                f"or a gate ({', '.join(contracts.GATE_NAMES)})")
        else:
            contracts.check_gate(self.activation)
        if self.position != contracts.NO_CBAM:
            check_design(self.attention, self.spatial_gate)
        check_choice("dataset", self.dataset, contracts.DATASET_NAMES)
        check_weights(self.weights)
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise PipelineError(
                f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels, got {self.image_size}"
            )
        check_positive("epochs", self.epochs)
        if self.batch_size < 2:
            raise PipelineError(f"batch_size must be at least 2 (BatchNorm cannot train on batches of one image), "
                                f"got {self.batch_size}")
        check_positive("lr", self.lr)
        check_seed("seed", self.seed)
        check_val_fraction(self.val_fraction)
        check_device(self.device)
        check_choice("channels_last", self.channels_last, AUTO_FLAGS)
        check_choice("fused_adam", self.fused_adam, AUTO_FLAGS)
        check_choice("compile mode", self.compile, contracts.COMPILE_MODES)
        check_choice("gate_norm", self.gate_norm, contracts.GATE_NORMS)
        if self.attention_images < 0:
            raise PipelineError(f"attention_images must be 0 or more, got {self.attention_images}")
        check_choice("canvases", self.canvases, contracts.CANVASES)
        if self.canvases == "fresh" and self.dataset not in contracts.PLACED_DATASETS:
            raise PipelineError(f"canvases fresh places a cluttered dataset's images anew each epoch; dataset "
                                f"{self.dataset} has no canvases (placed datasets: {', '.join(contracts.PLACED_DATASETS)})")
        check_choice("lr_schedule", self.lr_schedule, contracts.LR_SCHEDULES)

    def prepare(self) -> PrepareConfig:
        return PrepareConfig(dataset=self.dataset, data_dir=self.data_dir, val_fraction=self.val_fraction,
                             seed=self.seed)

    def model_config(self, num_classes: int):
        """The ``ModelConfig`` this run trains (the baseline has no block: its model config
        keeps the design defaults)."""
        block = self.position != contracts.NO_CBAM
        return ModelConfig(self.activation, self.position, num_classes=num_classes, gate_norm=self.gate_norm,
                           attention=self.attention if block else "cbam",
                           spatial_gate=self.spatial_gate if block else "sigmoid", backbone=self.backbone)

    def gate_label(self) -> str:
        """What the run's attention is: ``swish``, ``softmax · mean_one``, or ``no CBAM``."""
        return contracts.gate_label(self.activation, self.gate_norm)

    def design_label(self) -> str:
        """What sets the block and backbone apart from the notebook's, for run names: empty for
        CBAM with a sigmoid spatial gate on a ResNet18; else ``se``, ``cbam spatial softmax``,
        ``resnet50`` (each once, in that order)."""
        parts = []
        if self.position != contracts.NO_CBAM:
            if self.attention != "cbam":
                parts.append(self.attention)
            if self.spatial_gate != "sigmoid":
                parts.append(f"spatial {self.spatial_gate}")
        if self.backbone != "resnet18":
            parts.append(self.backbone)
        return " ".join(parts)

    def label(self) -> str:
        where = "" if self.position == contracts.NO_CBAM else f" · {self.position}"
        design = self.design_label()
        design = f" · {design}" if design else ""
        return (f"{self.gate_label()}{design}{where} · {self.dataset} {self.image_size}px {self.epochs}ep "
                f"· seed{self.seed}")

    def experiment(self) -> str:
        return default_experiment(self.dataset)


@dataclass(frozen=True)
class ProbeConfig(StepConfig):
    train_run_id: str = option("", "Run id of a finished train run.")
    num_images: int = option(-1, "How many test images to probe (the first ones, in order); -1: all. "
                             "More than the test set is clamped to it, with a warning.")
    batch_size: int = option(256, "Probe batch size.")
    data_dir: str = option("", "Dataset folder; default: the train run's data_dir.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    faithfulness_images: int = option(256, "Probed images (the first ones) whose CBAM channels are ablated and whose "
                                      "pixels are deleted and inserted in the order the attention ranks them "
                                      "(docs/metrics.md#faithfulness); 0: none; -1: all probed.")
    faithfulness_draws: int = option(3, "Seeded random orders, the chance baseline of the ablation and deletion "
                                     f"curves (2 or more give its spread; at most {MAX_FAITHFULNESS_DRAWS}).")
    ablation_fill: str = option("mean", "What an ablated channel becomes: mean (its mean map over the images) or zero.")
    deletion_imputation: str = option("mean", "What a deleted pixel becomes: mean (the dataset-mean colour) or "
                                      "blur (the image blurred, sigma = image size / 16).")

    def __post_init__(self):
        if not self.train_run_id.strip():
            raise PipelineError("train_run_id is required: the id of a finished train run")
        check_num_images(self.num_images)
        check_positive("batch_size", self.batch_size)
        check_device(self.device)
        check_faithfulness_images(self.faithfulness_images)
        if not 1 <= self.faithfulness_draws <= MAX_FAITHFULNESS_DRAWS:
            raise PipelineError(f"faithfulness_draws must be in [1, {MAX_FAITHFULNESS_DRAWS}] (each draw is a whole "
                                f"set of random ablation and deletion curves), got {self.faithfulness_draws}")
        check_choice("ablation_fill", self.ablation_fill, contracts.ABLATION_FILLS)
        check_choice("deletion_imputation", self.deletion_imputation, contracts.DELETION_IMPUTATIONS)


def check_design(attention: str, spatial_gate: str) -> None:
    """A block's design and spatial gate: known names, and a spatial gate other than the
    notebook's sigmoid only where there is a spatial branch (cbam)."""
    check_choice("attention", attention, contracts.ATTENTIONS)
    check_choice("spatial_gate", spatial_gate, contracts.SPATIAL_GATES)
    if spatial_gate != "sigmoid" and attention != "cbam":
        raise PipelineError(f"spatial_gate {spatial_gate} needs attention cbam: {attention} has no spatial branch")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model from a checkpoint, without the CLI."""

    activation: str
    position: str
    num_classes: int
    reduction: int = 16
    gate_norm: str = "none"  # checkpoints from before the option hold none
    attention: str = "cbam"  # checkpoints from before the designs hold CBAM ...
    spatial_gate: str = "sigmoid"  # ... with the notebook's spatial sigmoid ...
    backbone: str = "resnet18"  # ... on a ResNet18

    def __post_init__(self):
        check_choice("position", self.position, contracts.POSITIONS)
        if not (self.position == contracts.NO_CBAM and self.activation == contracts.NO_GATE):
            contracts.check_gate(self.activation)
        check_choice("gate_norm", self.gate_norm, contracts.GATE_NORMS)
        check_design(self.attention, self.spatial_gate)
        check_choice("backbone", self.backbone, contracts.BACKBONES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_faithfulness_images(n: int) -> None:
    if n < -1:
        raise PipelineError(f"faithfulness_images must be 0 or more, or -1 for every probed image, got {n}")


def check_num_images(n: int) -> None:
    if n == 0 or n < -1:
        raise PipelineError(f"num_images must be positive, or -1 for the whole test set, got {n}")


@dataclass(frozen=True)
class MetricsConfig(StepConfig):
    probe_run_id: str = option("", "Run id of a finished probe-attention run.")

    def __post_init__(self):
        if not self.probe_run_id.strip():
            raise PipelineError("probe_run_id is required: the id of a finished probe-attention run")


@dataclass(frozen=True)
class MainConfig(StepConfig):
    OMIT = ("prepare_run_id",)

    train: TrainConfig = field(default_factory=TrainConfig)
    num_images: int = option(-1, "Test images to probe; -1: all.")
    faithfulness_images: int = option(256, "Probed images whose channels are ablated and pixels deleted "
                                      "(docs/metrics.md#faithfulness); 0: none; -1: all probed.")
    out: str = option("out", "Local folder for the report files.")
    rerun: tuple[str, ...] = option((), "Steps to run again even if a finished run could be reused "
                                    "(comma list of prepare-data, train, probe-attention, compute-metrics, report); "
                                    "everything downstream of them runs again too.")

    def __post_init__(self):
        if self.train.prepare_run_id:
            raise PipelineError("main runs its own prepare-data step; do not give prepare_run_id")
        check_num_images(self.num_images)
        check_faithfulness_images(self.faithfulness_images)
        for step in self.rerun:
            check_choice("rerun step", step, RERUNNABLE)

    def forced_steps(self) -> set[str]:
        """The steps ``rerun`` names, and every step downstream of the first of them."""
        if not self.rerun:
            return set()
        first = min(RERUNNABLE.index(s) for s in self.rerun)
        return set(RERUNNABLE[first:])

    def probe(self, train_run_id: str) -> ProbeConfig:
        return ProbeConfig(train_run_id=train_run_id, num_images=self.num_images, device=self.train.device,
                           faithfulness_images=self.faithfulness_images)

    def label(self) -> str:
        """The main run's name: the gate first (what a run list truncates last), then what
        tells configurations apart: ``swish · late · digits 64px 2ep · seed0``."""
        return self.train.label()

    def step_run_name(self, step: str) -> str:
        """A step run's name under its main run: ``swish · train · seed0``."""
        return f"{contracts.gate_label(self.train.activation)} · {step} · seed{self.train.seed}"


@dataclass(frozen=True)
class SweepConfig(StepConfig):
    OMIT = ("activation", "position", "seed", "gate_norm", "attention", "spatial_gate", "backbone", "prepare_run_id")

    activations: tuple[str, ...] = option(contracts.GATE_NAMES, "Comma list of gates.")
    positions: tuple[str, ...] = option(("late",), "Comma list of positions.")
    seeds: tuple[int, ...] = option((0,), "Comma list of seeds.")
    gate_norms: tuple[str, ...] = option(("none",), "Comma list of gate normalisations (none, mean_one): "
                                         "mean_one only changes sum-to-one gates, so other gates run once.")
    attentions: tuple[str, ...] = option(("cbam",), "Comma list of attention designs (cbam, se, eca).")
    spatial_gates: tuple[str, ...] = option(("sigmoid",), "Comma list of CBAM spatial gates (sigmoid, softmax, "
                                            "sparsemax): se and eca have no spatial branch, so they run once.")
    backbones: tuple[str, ...] = option(("resnet18",), "Comma list of backbones (resnet18, resnet34, resnet50).")
    executor: str = option("inline", "How configurations run: inline (one after another in this process, "
                           "datasets loaded once), process (jobs worker processes, spread over the GPUs) or "
                           "ray (one Ray task each, on a local or given Ray cluster).")
    jobs: int = option(1, "Configurations at once with executor=process (spread over the GPUs, if any).")
    jobs_per_gpu: int = option(0, "executor=process on GPUs: configurations sharing each GPU at once (GPUs x "
                               "jobs_per_gpu run at once; jobs is then ignored); 0: jobs, spread over the GPUs. "
                               "Where configurations share a GPU their memory is checked before the sweep starts.")
    ray_address: str = option("", "executor=ray: the Ray cluster to join (host:port of its head, ray://host:10001, "
                              "auto); empty: RAY_ADDRESS if set, else a new local cluster on this machine.")
    gpus_per_job: str = option("auto", "executor=ray: GPUs per configuration (fractions share one, e.g. 0.5); "
                               "auto: 1 when the cluster has GPUs, else 0.")
    cpus_per_job: float = option(1.0, "executor=ray: CPU cores per configuration (its torch threads).")
    max_retries: int = option(1, "executor=ray: retries of a configuration whose worker died (OOM, SIGKILL, "
                              "node lost); the retry resumes its train run from the last checkpoint.")
    main: MainConfig = field(default_factory=MainConfig)

    def __post_init__(self):
        for name, values, valid in (("activations", self.activations, contracts.GATE_NAMES),
                                    ("attentions", self.attentions, contracts.ATTENTIONS),
                                    ("spatial_gates", self.spatial_gates, contracts.SPATIAL_GATES),
                                    ("backbones", self.backbones, contracts.BACKBONES),
                                    ("positions", self.positions, contracts.POSITIONS), ("seeds", self.seeds, None),
                                    ("gate_norms", self.gate_norms, contracts.GATE_NORMS)):
            if not values:
                raise PipelineError(f"{name} is empty; give a comma-separated list")
            if len(set(values)) != len(values):
                raise PipelineError(f"{name} lists a value twice: {', '.join(map(str, values))}")
            for value in values:
                if valid is None:
                    check_seed("seed", value)
                elif name == "activations":
                    contracts.check_gate(value)
                else:
                    check_choice(name.rstrip("s"), value, valid)
        spatial = [g for g in self.spatial_gates if g != "sigmoid"]
        if spatial and "cbam" not in self.attentions:
            raise PipelineError(f"spatial_gates {','.join(spatial)} need attention cbam, the only design with a spatial "
                                f"branch; attentions are {','.join(self.attentions)}")
        check_choice("executor", self.executor, EXECUTORS)
        if self.jobs < 1:
            raise PipelineError(f"jobs must be at least 1, got {self.jobs}")
        if self.jobs_per_gpu < 0:
            raise PipelineError(f"jobs_per_gpu must be 0 (spread jobs over the GPUs) or more, got {self.jobs_per_gpu}")
        if self.gpus_per_job != "auto":
            try:
                gpus = float(self.gpus_per_job)
            except ValueError:
                gpus = -1.0
            if not 0 <= gpus < float("inf"):
                raise PipelineError(f"gpus_per_job must be auto or a number >= 0 (e.g. 1, 0.5), "
                                    f"got {self.gpus_per_job!r}")
        if not 0 < self.cpus_per_job < float("inf"):
            raise PipelineError(f"cpus_per_job must be positive, got {self.cpus_per_job}")
        if self.max_retries < 0:
            raise PipelineError(f"max_retries must be 0 or more, got {self.max_retries}")

    def label(self) -> str:
        """The sweep run's name: every list it sweeps, the design lists where they are not the
        notebook's alone, so two sweeps that differ in any list never share a name (nor a report
        folder): ``sweep · sigmoid,swish · backbones resnet18,resnet50 · late · seeds 0 · digits 64px 2ep``."""
        t = self.main.train
        lists = [",".join(self.activations)]
        for title, values, default in (("norms", self.gate_norms, ("none",)), ("designs", self.attentions, ("cbam",)),
                                       ("spatial", self.spatial_gates, ("sigmoid",)),
                                       ("backbones", self.backbones, ("resnet18",))):
            if tuple(values) != default:
                lists.append(f"{title} {','.join(values)}")
        return (f"sweep · {' · '.join(lists)} · {','.join(self.positions)} · seeds {','.join(map(str, self.seeds))} "
                f"· {t.dataset} {t.image_size}px {t.epochs}ep")[:250]

    def configurations(self) -> list[MainConfig]:
        """One main config per (position, backbone, attention, spatial gate, activation, gate norm,
        seed), in that order; a gate that does not sum to one runs with gate_norm none only
        (mean_one would leave it unchanged), se and eca once, with the default spatial gate (they
        have no spatial branch, whatever spatial gates are listed), and position none
        (no block, so no gate) once per seed and backbone."""
        from pipeline.contracts import SUM_TO_ONE_GATES

        def norms(gate: str) -> tuple[str, ...]:
            if gate in SUM_TO_ONE_GATES:
                return self.gate_norms
            return ("none",) if "none" in self.gate_norms else self.gate_norms[:1]

        def gates(position: str) -> list[tuple[str, str]]:
            if position == contracts.NO_CBAM:
                return [(contracts.NO_GATE, "none")]
            return [(a, g) for a in self.activations for g in norms(a)]

        def designs(position: str) -> list[tuple[str, str]]:
            if position == contracts.NO_CBAM:
                return [(contracts.NO_ATTENTION, contracts.NO_ATTENTION)]
            plain = ("sigmoid",)  # se / eca have no spatial branch: the spatial gate stays the default
            return [(d, sg) for d in self.attentions for sg in (self.spatial_gates if d == "cbam" else plain)]

        return [replace(self.main, train=replace(self.main.train, position=p, backbone=bb, attention=d, spatial_gate=sg,
                                                 activation=a, gate_norm=g, seed=s))
                for p in self.positions for bb in self.backbones for d, sg in designs(p) for a, g in gates(p)
                for s in self.seeds]


@dataclass(frozen=True)
class ReportConfig(StepConfig):
    experiment_name: str = option("", "Report every finished compute-metrics run of this experiment.")
    sweep_run_id: str = option("", "Report the finished configurations of this sweep run.")
    main_run_id: str = option("", "Report this main run.")
    out: str = option("out", "Local folder for the report files.")
    reference: str = option("sigmoid", "The gate every other gate is compared with, paired over the seeds both have.")

    def __post_init__(self):
        given = [x for x in (self.experiment_name, self.sweep_run_id, self.main_run_id) if x]
        if len(given) != 1:
            raise PipelineError("give exactly one source: experiment_name, sweep_run_id or main_run_id")
        check_choice("reference gate", self.reference, contracts.GATE_NAMES)


#: Each MLproject entry point / command and the config it builds.
STEP_CONFIGS: dict[str, type[StepConfig]] = {
    contracts.PREPARE_DATA: PrepareConfig,
    contracts.TRAIN: TrainConfig,
    contracts.PROBE_ATTENTION: ProbeConfig,
    contracts.COMPUTE_METRICS: MetricsConfig,
    contracts.MAIN: MainConfig,
    contracts.SWEEP: SweepConfig,
    contracts.REPORT: ReportConfig,
}
