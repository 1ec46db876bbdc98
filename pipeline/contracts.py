"""What the steps promise each other: step names, artefact paths and tag keys, in one place.

Steps read each other's outputs through these names, never by importing each other; the
report and the docs' artefact table use the same list. Nothing here imports torch or MLflow.
"""
from __future__ import annotations

# Registry names: the vocabulary of the configs, importable without torch (a fully reused
# chain never imports it). The factories live beside their code: pipeline.gates.GATES and
# pipeline.data.DATASETS hold exactly these names (tests/unit/test_config.py checks it).
GATE_NAMES = ("sigmoid", "softmax", "sparsemax", "scaled_tanh", "parametric_sigmoid", "swish", "entmax15",
              "alpha_entmax")
DATASET_NAMES = ("cifar10", "digits", "cluttered-digits", "cluttered-cifar10", "fake")
#: The datasets whose images are placed on canvases (their training canvases can be placed anew each epoch).
PLACED_DATASETS = ("cluttered-digits", "cluttered-cifar10")
#: How a placed dataset's training canvases are made: fixed (placed once, as the test canvases) or
#: fresh (placed anew every epoch, seeded by the run's seed and the epoch).
CANVASES = ("fixed", "fresh")
#: The learning rate over training: constant (the notebook's Adam at lr), or onecycle (Smith &
#: Topin 2019, torch's OneCycleLR at its defaults: from lr / 25 up to lr over the first 30 % of the
#: steps, then cosine annealing to lr / (25 * 10^4); Adam's beta1 cycled 0.95 -> 0.85 -> 0.95).
LR_SCHEDULES = ("constant", "onecycle")
#: The six gates of the reference notebook, in its order.
NOTEBOOK_GATES = GATE_NAMES[:6]
#: How a gate's weights are normalised: none (the notebook's), or mean_one (sum-to-one gates
#: multiplied by C, so they average 1 like a sigmoid gate instead of shrinking the features ~C-fold).
GATE_NORMS = ("none", "mean_one")
#: The gates whose weights sum to one over channels (pipeline.gates: Gate.sums_to_one).
SUM_TO_ONE_GATES = ("softmax", "sparsemax", "entmax15", "alpha_entmax")
#: position name -> (ResNet18 stage after which CBAM sits, its channel count)
POSITIONS: dict[str, tuple[str | None, int]] = {
    "early": ("layer1", 64),
    "middle": ("layer2", 128),
    "late": ("layer4", 512),
    "none": (None, 0),
}
#: The attention designs a block can have (pipeline.models): CBAM (Woo et al. 2018: channel then
#: spatial attention, the notebook's), squeeze-and-excitation (Hu et al. 2018: channel only, an
#: MLP on the average-pooled descriptor) and ECA (Wang et al. 2020: channel only, a 1-D conv
#: across the pooled channels instead of the MLP).
ATTENTIONS = ("cbam", "se", "eca")
#: The gates of CBAM's spatial branch: sigmoid (the notebook's) per position, or softmax /
#: sparsemax over the H x W positions of each map.
SPATIAL_GATES = ("sigmoid", "softmax", "sparsemax")
#: torchvision ResNets: name -> the channel count after layer1..layer4 (what a block there sees).
BACKBONES: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


def stage_channels(backbone: str, position: str) -> int:
    """The channels a block after ``position``'s stage of ``backbone`` sees (0 for none)."""
    stage = POSITIONS[position][0]
    return 0 if stage is None else BACKBONES[backbone][int(stage[-1]) - 1]


#: The attention design and spatial gate of the baseline without a block (position none).
NO_ATTENTION = "none"
#: The baseline without an attention block (the notebook's no-CBAM ResNet18): its position, and
#: the gate its runs log (there is none; a probe of it records channel weights of shape (N, 0)).
NO_CBAM = "none"
NO_GATE = "none"
NO_CBAM_LABEL = "no CBAM"  # how run names, tables and figures call it


def gate_label(activation: str, gate_norm: str = "none") -> str:
    """What a run's attention is called in run names, tables and figures: ``swish``,
    ``softmax · mean_one``, or ``no CBAM`` for the baseline."""
    if activation == NO_GATE:
        return NO_CBAM_LABEL
    return activation + ("" if gate_norm == "none" else f" · {gate_norm}")
#: Named backbone weights; anything else is taken as the path of a local state-dict file.
WEIGHTS = ("imagenet", "none")

# Step names: the click commands, the MLproject entry points and the ``pipeline.step`` tag.
PREPARE_DATA = "prepare-data"
TRAIN = "train"
PROBE_ATTENTION = "probe-attention"
COMPUTE_METRICS = "compute-metrics"
MAIN = "main"
SWEEP = "sweep"
REPORT = "report"
#: The chain that ``main`` runs, in order; each step's upstream is the one before it.
CHAIN = (PREPARE_DATA, TRAIN, PROBE_ATTENTION, COMPUTE_METRICS)

# Artefact paths, relative to the run's artefact root.
CONFIG_JSON = "config.json"  # every step: its typed configuration
DATASET_JSON = "dataset.json"  # prepare-data: name, sizes, classes, content digest
VAL_INDICES = "split/val_indices.npy"  # prepare-data: int64 indices into the training set
BEST_CHECKPOINT = "checkpoints/best.pt"  # train: best-by-val_acc weights + model config
LAST_CHECKPOINT = "checkpoints/last.pt"  # train: everything needed to resume
GRAD_FLOW = "gradients/grad_flow.json"  # train: mean |grad| per weight tensor per epoch
ATTENTION_DIR = "attention"
CHANNEL_WEIGHTS = "attention/channel_weights.npy"  # probe-attention: float32 (N, C)
SPATIAL_MAPS = "attention/spatial_maps.npy"  # probe-attention: float16 (N, H, W)
LABELS = "attention/labels.npy"  # probe-attention: int64 (N,)
LOGITS = "attention/logits.npy"  # probe-attention: float32 (N, K)
GRID_IMAGES = "attention/grid_images.npy"  # probe-attention: uint8 (k, 3, h, w), the report's spatial-map grid
GRID_SIZE = 6  # the images of that grid: the first probed ones
RANDOMISED_SPATIAL_MAPS = "attention/randomised_spatial_maps.npy"  # probe-attention: float16, the re-initialised network's
RANDOMISED_CAMS = "attention/randomised_cam.npy"  # probe-attention: float16, the re-initialised network's CAM
CAMS = "attention/cam.npy"  # probe-attention: float16 (N, h, w), CAM of the true class on the last feature map
MASKS = "attention/masks.npy"  # probe-attention, datasets with ground truth: bool (N, H, W) at native size
BOXES = "attention/boxes.npy"  # probe-attention, datasets with ground truth: int64 (N, 4) half-open x0, y0, x1, y1
#: Metric-key prefix of compute-metrics' localisation metrics (``loc/cbam_pxap``, ``loc/cam_pointing_mask``).
LOCALISATION_PREFIX = "loc/"
#: The maps localisation judges: the CBAM spatial map, the CAM, two chance references, the CBAM grid's ceiling and
#: floor, and the CBAM map and CAM of the same network re-initialised (the floor of a network that knows nothing).
LOCALISED_MAPS = ("cbam", "cam", "uniform", "centre", "ceiling", "random", "cam_ceiling", "cam_random",
                  "cbam_randomised", "cam_randomised")
ATTENTION_META = "attention/meta.json"  # probe-attention: what was probed, with which model
PER_CLASS_ACCURACY = "tables/per_class_accuracy.csv"  # probe-attention
#: probe-attention (with CBAM and faithfulness_images != 0): one row per point of every
#: ablation / deletion / insertion curve (family, order, draw, x, k, accuracy, probability).
FAITHFULNESS_CURVES = "tables/faithfulness_curves.csv"
#: Metric-key prefix of the probe's faithfulness summaries (``faith/channel_advantage_acc``,
#: ``faith/deletion_cbam_prob_area``); compute-metrics carries them onto its own run.
FAITHFULNESS_PREFIX = "faith/"
#: The curve families: channels ablated at the CBAM output; input pixels deleted / inserted.
FAITHFULNESS_FAMILIES = ("channel", "deletion", "insertion")
ABLATION_FILLS = ("mean", "zero")  # pipeline.faithfulness.FILLS
DELETION_IMPUTATIONS = ("blur", "mean")  # pipeline.faithfulness.IMPUTATIONS
COMPILE_MODES = ("false", "graphs", "inductor")  # how the training step runs: pipeline.devices.compiled
METRICS_DIR = "metrics"
PER_IMAGE_METRICS = "metrics/per_image.csv"  # compute-metrics: one row per image
METRICS_SUMMARY = "metrics/summary.csv"  # compute-metrics: one row per metric
METRICS_SUMMARY_JSON = "metrics/summary.json"  # compute-metrics: the same, as an MLflow table
LOCALISATION_TABLE = "metrics/localisation.csv"  # compute-metrics, datasets with ground truth: one row per map
CLASS_WEIGHTS = "metrics/class_channel_weights.npy"  # compute-metrics: float32 (K, C), each class's mean weights
CLASS_GINI = "metrics/class_gini.csv"  # compute-metrics: class, images, gini of its mean weight vector
REPORT_DIR = "report"  # main, sweep, report: tables and figures
REPORT_SUMMARY = "report/summary.md"
REPORT_SOURCE = "report.json"  # in a report folder: what the report is of (its owner) and who wrote it

#: The artefacts without which a finished run of a step cannot be reused.
REQUIRED_ARTIFACTS = {
    PREPARE_DATA: (DATASET_JSON, VAL_INDICES),
    TRAIN: (BEST_CHECKPOINT, GRAD_FLOW),
    PROBE_ATTENTION: (CHANNEL_WEIGHTS, SPATIAL_MAPS, LABELS, ATTENTION_META),
    COMPUTE_METRICS: (METRICS_SUMMARY,),
    REPORT: (REPORT_SUMMARY,),
}

# Tag keys.
STEP_TAG = "pipeline.step"
CODE_VERSION_TAG = "pipeline.code_version"  # hash of the sources the step depends on
REUSE_KEY_TAG = "pipeline.reuse_key"  # hash of step, typed config, upstream run ids, code version
DATASET_DIGEST_TAG = "pipeline.dataset_sha256"
REUSED_STEPS_TAG = "pipeline.reused_steps"  # main: which steps were reused
REPORT_KEY_TAG = "pipeline.report_key"  # main: reuse key of its report (metrics run + report code)
FAILED_TAG = "pipeline.failed"  # sweep: the configurations that failed
ERROR_TAG = "pipeline.error"  # a FAILED run: its one-line error (what a rebuilt sweep report lists)
UNDEFINED_TAG = "pipeline.undefined"  # probe: the measures it could not define, and why
HOST_TAG = "pipeline.host"  # where the run's process runs (updated by a resume)
PID_TAG = "pipeline.pid"
HEARTBEAT_TAG = "pipeline.heartbeat"  # Unix time, refreshed while the run's process runs
RESUMER_TAG = "pipeline.resumer"  # host:pid:time:nonce of the process that claimed the run to resume it
UPSTREAM_TAGS = {  # tag naming the run of each step, set on the runs downstream of it and on main
    PREPARE_DATA: "pipeline.prepare_run_id",
    TRAIN: "pipeline.train_run_id",
    PROBE_ATTENTION: "pipeline.probe_run_id",
    COMPUTE_METRICS: "pipeline.metrics_run_id",
}
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
#: Experiment tag MLflow 3's UI reads to open an experiment on its runs (machine learning)
#: rather than on its GenAI pages (traces), and its value for ours.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: Metric-key prefix of a train run's per-epoch attention metrics (``attention/gini``, step = epoch).
EPOCH_ATTENTION_PREFIX = "attention/"


def check_gate(name: str) -> None:
    """The one check of a gate name (configs, model configs and the gate factory call it):
    one of ``GATE_NAMES``, else a one-line error listing them."""
    from pipeline.errors import PipelineError

    if name not in GATE_NAMES:
        raise PipelineError(f"unknown activation {name!r}; valid: {', '.join(GATE_NAMES)}")
