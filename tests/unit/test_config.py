"""One home for configuration: MLproject, the CLI and the logged parameters all come from the
config classes; the reuse key follows the code each step depends on."""
import shutil

import click
import pytest
import yaml

from pipeline import config as cfg
from pipeline.cli import cli
from pipeline.reuse import code_version, reuse_key, step_sources
from pipeline.errors import PipelineError
from helpers import REPO

REQUIRED = {("probe-attention", "train_run_id"), ("compute-metrics", "probe_run_id")}


def mlproject():
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


def as_mlflow_default(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value


def test_every_entry_point_is_a_config_with_the_same_parameters_and_defaults():
    entry_points = mlproject()
    assert set(entry_points) == set(cfg.STEP_CONFIGS)
    for step, config_cls in cfg.STEP_CONFIGS.items():
        declared = entry_points[step]["parameters"]
        fields = {f.name: f for f in cfg.flat_fields(config_cls)}
        assert list(declared) == list(fields), step
        for name, spec in declared.items():
            if (step, name) in REQUIRED:
                assert "default" not in spec, (step, name)
                continue
            default = spec["default"]
            want = as_mlflow_default(fields[name].default)
            if fields[name].type in (int, float):
                assert spec["type"] == "float" and float(default) == float(want), (step, name)
            else:
                assert spec["type"] == "string" and str(default) == str(want), (step, name)
        command = entry_points[step]["command"]
        assert command.startswith(f"python -m pipeline {step} ")
        for name in fields:  # every parameter reaches its option, and nothing else is passed
            assert f"--{name.replace('_', '-')} {{{name}}}" in command, (step, name)
        assert command.count("{") == len(fields)


def test_every_command_has_exactly_the_options_of_its_config():
    for step, config_cls in cfg.STEP_CONFIGS.items():
        command = cli.commands[step]
        visible = {p.name for p in command.params if isinstance(p, click.Option) and not p.hidden}
        extra = {"resume_run_id", "force"} if step == "train" else set()  # resume options, not a config
        assert visible == {f.name for f in cfg.flat_fields(config_cls)} | extra, step
        for param in command.params:
            if param.name in {f.name for f in cfg.flat_fields(config_cls)}:
                assert param.help, (step, param.name)


def test_the_registry_names_the_configs_check_are_the_registries():
    from pipeline import contracts, data, gates, models

    assert tuple(gates.GATES) == contracts.GATE_NAMES
    assert tuple(data.DATASETS) == contracts.DATASET_NAMES
    assert models.POSITIONS is contracts.POSITIONS and models.WEIGHTS is contracts.WEIGHTS


def test_validating_a_config_does_not_import_torch():
    """A fully reused chain needs no torch: its 2 s import is a quarter of a reused main."""
    import subprocess
    import sys

    code = ("import sys; from pipeline import cli, config; from pipeline.steps import main; "
            "config.SweepConfig.from_options(weights='none', dataset='digits'); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "False", result.stderr


def test_the_sweep_logs_its_lists_and_no_single_configuration():
    sweep = cfg.SweepConfig.from_options(activations=("swish", "softmax"), seeds=(0, 1), dataset="digits",
                                         weights="none", image_size=64, epochs=2)
    params = sweep.params()
    assert params["activations"] == ("swish", "softmax") and params["seeds"] == (0, 1)
    assert not {"activation", "position", "seed", "prepare_run_id"} & set(params)
    labels = [c.label() for c in sweep.configurations()]
    assert labels == [f"{gate} · late · digits 64px 2ep · seed{seed}" for gate in ("swish", "softmax") for seed in (0, 1)]
    first = sweep.configurations()[0]
    assert (first.train.dataset, first.train.image_size, first.train.epochs) == ("digits", 64, 2)
    assert "prepare_run_id" not in first.params()


def test_position_none_is_the_baseline_with_no_gate_once_per_seed():
    # whatever gate is given, the baseline has none: same config, same reuse key, one run per seed
    for gate, norm in (("sigmoid", "none"), ("softmax", "mean_one")):
        train = cfg.TrainConfig(weights="none", position="none", activation=gate, gate_norm=norm)
        assert (train.activation, train.gate_norm) == ("none", "none")
        assert reuse_key("train", train.to_dict()) == reuse_key(
            "train", cfg.TrainConfig(weights="none", position="none").to_dict())
    assert cfg.TrainConfig(weights="none", position="none", dataset="digits", image_size=64, epochs=2).label() == \
        "no CBAM · digits 64px 2ep · seed0"
    with pytest.raises(PipelineError, match="activation none is the baseline without CBAM: give position none"):
        cfg.TrainConfig(weights="none", activation="none", position="late")
    sweep = cfg.SweepConfig.from_options(activations=("swish", "softmax"), positions=("none", "early"), seeds=(0, 1),
                                         gate_norms=("none", "mean_one"), weights="none")
    labels = [c.label() for c in sweep.configurations()]
    assert labels[:2] == ["no CBAM · cifar10 224px 5ep · seed0", "no CBAM · cifar10 224px 5ep · seed1"]
    assert len(labels) == 2 + 2 * (1 + 2) and len(set(labels)) == len(labels)
    assert sweep.configurations()[0].step_run_name("train") == "no CBAM · train · seed0"


@pytest.mark.parametrize("options,message", [
    ({"activations": ()}, "activations is empty"),
    ({"activations": ("swish", "swish")}, "lists a value twice"),
    ({"activations": ("relu",)}, "unknown activation 'relu'"),
    ({"positions": ("top",)}, "unknown position 'top'"),
    ({"seeds": (-1,)}, "seed must be in [0, 4294967295], got -1"),
    ({"executor": "threads"}, "unknown executor 'threads'; valid: inline, process"),
    ({"jobs": 0}, "jobs must be at least 1"),
    ({"rerun": ("sweep",)}, "unknown rerun step 'sweep'"),
    ({"attentions": ("cbam", "bam")}, "unknown attention 'bam'; valid: cbam, se, eca"),
    ({"spatial_gates": ("tanh",)}, "unknown spatial_gate 'tanh'; valid: sigmoid, softmax, sparsemax"),
    ({"backbones": ("resnet101",)}, "unknown backbone 'resnet101'; valid: resnet18, resnet34, resnet50"),
    ({"attentions": ()}, "attentions is empty"),
])
def test_bad_sweep_values_are_one_line_errors(options, message):
    with pytest.raises(PipelineError) as info:
        cfg.SweepConfig.from_options(weights="none", **options)
    assert message in str(info.value)


def test_rerun_forces_the_named_steps_and_everything_downstream():
    def forced(*steps):
        return cfg.MainConfig.from_options(weights="none", rerun=steps).forced_steps()

    assert forced() == set()
    assert forced("train") == {"train", "probe-attention", "compute-metrics", "report"}
    assert forced("compute-metrics", "probe-attention") == {"probe-attention", "compute-metrics", "report"}
    assert forced("prepare-data") == {"prepare-data", "train", "probe-attention", "compute-metrics", "report"}
    assert forced("report") == {"report"}


def test_the_reuse_key_changes_with_config_and_upstream_run():
    train = cfg.TrainConfig(weights="none", dataset="digits", prepare_run_id="a")
    key = reuse_key("train", train.to_dict())
    assert key == reuse_key("train", cfg.TrainConfig(weights="none", dataset="digits", prepare_run_id="a").to_dict())
    assert key != reuse_key("train", cfg.TrainConfig(weights="none", dataset="digits", prepare_run_id="b").to_dict())
    assert key != reuse_key("train", cfg.TrainConfig(weights="none", dataset="digits", prepare_run_id="a",
                                                     epochs=6).to_dict())
    assert key != reuse_key("probe-attention", train.to_dict())


def test_each_step_depends_on_the_code_it_imports_and_no_more():
    assert "report/plots.py" not in step_sources("train") and "steps/report.py" not in step_sources("train")
    assert {"gates.py", "models.py", "training.py", "steps/train.py", "data.py"} <= set(step_sources("train"))
    assert "gates.py" in step_sources("probe-attention")
    assert "gates.py" not in step_sources("compute-metrics") and "metrics.py" in step_sources("compute-metrics")
    assert "gates.py" not in step_sources("prepare-data")
    assert "report/plots.py" in step_sources("report")


def test_editing_a_plot_keeps_the_train_code_version_and_editing_a_gate_changes_it(tmp_path):
    package = tmp_path / "pipeline"
    shutil.copytree(REPO / "pipeline", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = {step: code_version(step, package) for step in ("train", "report", "compute-metrics")}
    assert before["train"] == code_version("train")  # the copy is the same code

    plots = package / "report" / "plots.py"
    plots.write_text(plots.read_text().replace('"""', '"""Edited docstring. ', 1))
    after_plot = {step: code_version(step, package) for step in before}
    assert after_plot["train"] == before["train"] and after_plot["compute-metrics"] == before["compute-metrics"]
    assert after_plot["report"] != before["report"]

    gates = package / "gates.py"
    gates.write_text(gates.read_text() + "\n# an edit\n")
    assert code_version("train", package) != before["train"]
    assert code_version("compute-metrics", package) == before["compute-metrics"]


def test_gate_norms_is_a_sweep_axis_for_sum_to_one_gates_only():
    sweep = cfg.SweepConfig.from_options(activations=("sigmoid", "softmax"), gate_norms=("none", "mean_one"),
                                         dataset="digits", weights="none", image_size=64, epochs=2)
    assert "gate_norm" not in sweep.params() and sweep.params()["gate_norms"] == ("none", "mean_one")
    labels = [c.label() for c in sweep.configurations()]
    assert labels == ["sigmoid · late · digits 64px 2ep · seed0", "softmax · late · digits 64px 2ep · seed0",
                      "softmax · mean_one · late · digits 64px 2ep · seed0"]
    with pytest.raises(PipelineError, match="unknown gate_norm 'mean'"):
        cfg.TrainConfig(gate_norm="mean")


@pytest.mark.parametrize("options,message", [
    ({"attention": "bam"}, "unknown attention 'bam'; valid: cbam, se, eca"),
    ({"attention": "none"}, "unknown attention 'none'; valid: cbam, se, eca"),  # none: the baseline's, via position
    ({"spatial_gate": "tanh"}, "unknown spatial_gate 'tanh'; valid: sigmoid, softmax, sparsemax"),
    ({"backbone": "vgg16"}, "unknown backbone 'vgg16'; valid: resnet18, resnet34, resnet50"),
    ({"attention": "eca", "spatial_gate": "softmax"}, "spatial_gate softmax needs attention cbam: eca has no spatial"),
    ({"canvases": "fresh"}, "canvases fresh places a cluttered dataset's images anew each epoch; dataset cifar10 has "
                            "no canvases (placed datasets: cluttered-digits, cluttered-cifar10)"),
    ({"canvases": "new"}, "unknown canvases 'new'; valid: fixed, fresh"),
    ({"lr_schedule": "cosine"}, "unknown lr_schedule 'cosine'; valid: constant, onecycle"),
])
def test_bad_design_values_are_one_line_errors(options, message):
    with pytest.raises(PipelineError) as info:
        cfg.TrainConfig(weights="none", **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_design_sweeps_pair_spatial_gates_with_cbam_only_and_name_what_differs():
    sweep = cfg.SweepConfig.from_options(activations=("sigmoid",), attentions=("cbam", "se", "eca"),
                                         spatial_gates=("sigmoid", "softmax"), backbones=("resnet18", "resnet50"),
                                         positions=("late", "none"), weights="none", dataset="digits", image_size=64,
                                         epochs=2)
    labels = [c.label() for c in sweep.configurations()]
    assert labels == [
        "sigmoid · late · digits 64px 2ep · seed0",
        "sigmoid · spatial softmax · late · digits 64px 2ep · seed0",
        "sigmoid · se · late · digits 64px 2ep · seed0",
        "sigmoid · eca · late · digits 64px 2ep · seed0",
        "sigmoid · resnet50 · late · digits 64px 2ep · seed0",
        "sigmoid · spatial softmax resnet50 · late · digits 64px 2ep · seed0",
        "sigmoid · se resnet50 · late · digits 64px 2ep · seed0",
        "sigmoid · eca resnet50 · late · digits 64px 2ep · seed0",
        "no CBAM · digits 64px 2ep · seed0",
        "no CBAM · resnet50 · digits 64px 2ep · seed0",
    ]
    baseline = sweep.configurations()[-1].train
    assert (baseline.attention, baseline.spatial_gate, baseline.backbone) == ("none", "none", "resnet50")
    # the sweep's name carries every list that varies, so two sweeps apart by one never share a report folder
    assert sweep.label() == ("sweep · sigmoid · designs cbam,se,eca · spatial sigmoid,softmax · backbones "
                             "resnet18,resnet50 · late,none · seeds 0 · digits 64px 2ep")
    names = {cfg.SweepConfig.from_options(activations=("sigmoid",), weights="none", **{k: v}).label()
             for k, v in (("backbones", ("resnet34",)), ("attentions", ("se",)), ("gate_norms", ("mean_one",)),
                          ("spatial_gates", ("softmax",)), ("seeds", (0,)))}
    assert len(names) == 5 and "sweep · sigmoid · late · seeds 0 · cifar10 224px 5ep" in names
    # the notebook's design: the run names of every earlier sweep stay as they were
    assert cfg.TrainConfig(weights="none").label() == "sigmoid · late · cifar10 224px 5ep · seed0"
