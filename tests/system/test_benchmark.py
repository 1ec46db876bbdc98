import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench_throughput import PILDataset, data_preparation_memory, synthetic_images
from pipeline.data import to_model_input
from helpers import REPO

SCRIPT = REPO / "benchmarks" / "bench_throughput.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    """The throughput benchmark as its docs run it: ``python benchmarks/bench_throughput.py`` in the
    checkout (not a command of the installed package: the benchmarks are not part of it)."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})

KEYS = ("notebook_train_ips", "ours_train_ips", "train_ratio", "notebook_eval_ips", "ours_eval_ips",
        "eval_ratio", "peak_rss_mb")


def test_benchmark_script_writes_settings_and_numbers(tmp_path):
    out = tmp_path / "result.json"
    result = run_script("--device", "cpu", "--image-size", "32", "--batch-size", "16", "--train-steps", "2",
                     "--eval-images", "64", "--repeats", "2", "--no-data-memory", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    for key in KEYS:
        assert data[key] > 0, key
    assert data["train_ratio"] == pytest.approx(data["ours_train_ips"] / data["notebook_train_ips"])
    assert data["eval_ratio"] == pytest.approx(data["ours_eval_ips"] / data["notebook_eval_ips"])
    assert data["settings"]["image_size"] == 32 and data["settings"]["repeats"] == 2 and data["device"] == "cpu"
    assert len(data["ours_train"]["repeats"]) == 2
    # every benchmark writes through benchjson.write_json: where it was measured, one format
    assert data["recorded_on"]["cpu_count"] == os.cpu_count() and data["recorded_on"]["torch"] == torch.__version__
    assert out.read_text().endswith("}\n") and out.read_text().startswith('{\n "')
    assert data["ours_train"]["min"] <= data["ours_train"]["median"] <= data["ours_train"]["max"]
    printed = json.loads(result.stdout)
    assert set(KEYS) <= set(printed)


def test_benchmark_bad_input_is_one_line(tmp_path):
    result = run_script("--repeats", "0", "--out", str(tmp_path / "x.json"))
    assert result.returncode != 0 and result.stderr.strip() == "Error: repeats must be positive, got 0"


def test_our_batch_transform_matches_the_notebooks_pil_path():
    """Same pixels into the model: PIL Resize + ToTensor + Normalize vs our per-batch resize."""
    data = synthetic_images(8, seed=3)
    for size in (32, 64, 224):
        theirs = torch.stack([PILDataset(data, size)[i][0] for i in range(8)])
        ours = to_model_input(data.images, size)
        assert ours.shape == theirs.shape == (8, 3, size, size)
        diff = (ours - theirs).abs()
        # PIL rounds the resized image to uint8 (<= 1/255 -> 0.008 after normalising) and
        # its bilinear kernel differs slightly at borders
        assert diff.mean().item() < 0.01 and np.quantile(diff.numpy(), 0.99) < 0.05, size


def test_preparing_cifar10_sized_data_for_224_px_holds_no_resized_copy():
    report = data_preparation_memory(n_images=50_000, image_size=224)
    assert report["uint8_dataset_mb"] == pytest.approx(50_000 * 3 * 32 * 32 / 2**20)
    # holding the uint8 images and one 224-px batch: far from the 28 GB of a resized float copy
    assert report["rss_growth_mb"] < 2 * report["uint8_dataset_mb"] + 2 * report["batch_float_mb"] + 100


def test_suite_benchmark_counts_each_test_and_sums_per_module(tmp_path):
    """``bench_suite.py --mode cpu`` on a small project of its own: a test that spends CPU in a
    process it starts is charged for it; the module sums are the sums of their tests."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_a.py").write_text(
        "import subprocess, sys\n"
        "def test_spins_a_child():\n"
        "    subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 1.5: pass'], check=True)\n"
        "def test_idle():\n"
        "    import time; time.sleep(0.5)\n")
    (project / "tests" / "test_b.py").write_text("def test_nothing():\n    assert True\n")
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_suite.py"), "--mode", "cpu",
                           "--project-dir", str(project), "--out", str(out), "--", "tests", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    tests = {t["nodeid"]: t for t in data["tests"]}
    assert set(tests) == {"tests/test_a.py::test_spins_a_child", "tests/test_a.py::test_idle",
                          "tests/test_b.py::test_nothing"}
    # the child's CPU is charged to the test that started it (the whole machine counts, so beside
    # another pytest worker a test is charged more: the mode is for an otherwise idle machine)
    assert tests["tests/test_a.py::test_spins_a_child"]["cpu_s"] >= 1.4
    assert tests["tests/test_a.py::test_idle"]["wall_s"] >= 0.5
    assert data["modules"]["tests/test_a.py"] == pytest.approx(
        tests["tests/test_a.py::test_spins_a_child"]["cpu_s"] + tests["tests/test_a.py::test_idle"]["cpu_s"], abs=0.1)
    assert data["sum_cpu_s"] == pytest.approx(sum(t["cpu_s"] for t in data["tests"]), abs=0.1)
    assert data["pytest_summary"].startswith("3 passed") and data["settings"]["commit"] == "unknown"
    assert data["settings"]["cpu_cores"] == os.cpu_count() and "-n" in data["settings"]["command"]


def test_suite_benchmark_sums_a_tests_setup_call_and_teardown():
    from bench_suite import by_module, parse_durations

    output = ("12.50s call     tests/a.py::test_x@group\n 1.25s setup    tests/a.py::test_x\n"
              "0.50s teardown tests/b.py::test_y\n(3 durations < 0.005s hidden.)\n")
    tests = parse_durations(output)
    assert tests == [{"nodeid": "tests/a.py::test_x", "duration_s": 13.75},
                     {"nodeid": "tests/b.py::test_y", "duration_s": 0.5}]
    assert by_module(tests, "duration_s") == {"tests/a.py": 13.8, "tests/b.py": 0.5}
