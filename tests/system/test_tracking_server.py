"""A real `mlflow server` on 127.0.0.1: the `server` command, complete logging of `main`
(SQLite and PostgreSQL backends), 8 concurrent `train` runs, a fast failure when the server
is unreachable, and the MLflow UI in a real headless Chromium."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.server import free_port, health, start_server
from pipeline.tracking import view_url
from helpers import REPO

STEPS = ["prepare-data", "train", "probe-attention", "compute-metrics"]
POSTGRES_ENV = "PIPELINE_TEST_POSTGRES_URI"


def require(condition: bool, what: str):
    """Skip locally when a system service is missing; in CI (CI=true) that is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing in CI (.ci/run installs it)")
        pytest.skip(f"{what} is not available")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("server"), free_port(), workers=2) as running:
        yield running


@pytest.fixture
def postgres_server(tmp_path_factory):
    admin_uri = os.environ.get(POSTGRES_ENV)
    require(bool(admin_uri), f"PostgreSQL ({POSTGRES_ENV})")
    import psycopg

    name = f"pipeline_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(admin_uri, autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {name}")
    backend = admin_uri.rsplit("/", 1)[0] + f"/{name}"
    try:
        with start_server(tmp_path_factory.mktemp("server-pg"), free_port(), backend_store_uri=backend, workers=2) as running:
            yield running
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def client_env(uri: str, experiment: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment, "PIPELINE_OFFLINE": "1"}


def runs_of(uri: str, experiment: str):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_server_command_prints_the_uri_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "server", "--port", str(port), "--workers", "1", "--store",
                             str(tmp_path / "store")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()  # printed once /health answers
        assert line == f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"
        assert health(f"http://127.0.0.1:{port}")
        assert (tmp_path / "store" / "mlflow.db").is_file() and (tmp_path / "store" / "artifacts").is_dir()
        with socket.socket() as s:  # bound to loopback only
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", port)) == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "tracking server stopped" in proc.stderr.read()
    time.sleep(1)
    assert not health(f"http://127.0.0.1:{port}", timeout=2)  # its workers are gone too


def server_group(port: int) -> int:
    """The process group of the server on ``port`` (its supervisor leads it)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pipeline.server" in cmd and str(port).encode() in cmd:
                return os.getpgid(int(proc.name))
    raise AssertionError(f"no server supervisor for port {port}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_the_mlflow_server_dies_with_the_server_command_and_a_taken_port_is_refused(sig, tmp_path):
    from pipeline.processes import group_members

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "server", "--port", str(port), "--workers", "1",
                             "--store", str(tmp_path / "store")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            # a hangup kills it as it kills a terminal's command, even when the suite runs under
                            # nohup (which ignores SIGHUP in every process it starts)
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == f"export MLFLOW_TRACKING_URI={uri}"
        group = server_group(port)
        if sig == signal.SIGKILL:  # a second server on the port: refused, naming who answers there
            second = subprocess.run([sys.executable, "-m", "pipeline", "server", "--port", str(port), "--store",
                                     str(tmp_path / "other")], capture_output=True, text=True, timeout=60)
            assert second.returncode == 2
            [line] = second.stderr.strip().splitlines()
            assert line.startswith(f"Error: port {port} on 127.0.0.1: a tracking server already answers there (pid ")
            assert line.endswith("stop it or choose another --port") and "mlflow" in line
            assert not (tmp_path / "other" / "mlflow.db").exists()
        proc.send_signal(sig)  # SIGKILL: nothing of the wrapper runs; SIGHUP: the terminal closed
        proc.wait(30)
        deadline = time.monotonic() + 15
        while (group_members(group) or health(uri, timeout=1)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(group) == [] and not health(uri, timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()


def check_chain_on_server(uri: str, env: dict, main_run, report_run_id: str, dst: Path, activation: str):
    """Everything a main chain logs reached the server, and comes back through it: the nested
    step runs, the train run's parameters and per-epoch metrics (2 epochs), the probe's arrays,
    the metrics, and the report (of ``report_run_id``), downloaded with ``mlflow artifacts``."""
    client = mlflow.MlflowClient(uri)
    main_id = main_run.info.run_id
    children = client.search_runs([main_run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{main_id}'")
    by_step = {r.data.tags.get("pipeline.step"): r for r in children}
    assert set(by_step) == set(STEPS) and all(r.info.status == "FINISHED" for r in children)
    train = by_step["train"]
    expected = {"activation": activation, "position": "late", "dataset": "fake", "weights": "none",
                "image_size": "32", "epochs": "2", "batch_size": "64", "lr": "0.001", "seed": "0",
                "val_fraction": "0.1", "device": "auto", "amp": "false", "channels_last": "auto", "fused_adam": "auto",
                "compile": "false",
                "keep_last_checkpoint": "true", "gate_norm": "none", "attention": "cbam", "spatial_gate": "sigmoid",
                "backbone": "resnet18", "attention_images": "256", "canvases": "fixed", "lr_schedule": "constant",
                "data_dir": "data", "prepare_run_id": by_step["prepare-data"].info.run_id, "train_size": "288",
                "val_size": "32", "test_size": "80", "num_classes": "10"}
    assert train.data.params == expected
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(train.info.run_id, key)] == [1, 2], key
    assert {"test_acc", "test_top5", "test_loss"} <= set(train.data.metrics)
    probe_id = by_step["probe-attention"].info.run_id
    names = {a.path for a in client.list_artifacts(probe_id, "attention")}
    assert names == {f"attention/{n}" for n in ("channel_weights.npy", "spatial_maps.npy", "labels.npy",
                                                "logits.npy", "grid_images.npy", "cam.npy", "meta.json")}
    report = {a.path for a in client.list_artifacts(report_run_id, "report")}
    figures = {f"report/{stem}_late.{ext}" for stem in ("weights", "metrics", "curves", "gradient_flow", "spatial_maps",
                                                        "gate_parameters", "attention_epochs", "class_attention") for ext in ("pdf", "png")}
    assert {"report/summary.md", "report/summary.csv", "report/summary.tex", *figures} <= report  # scaled_tanh learns a scale
    assert {"gini", "entropy", "test_map"} <= set(by_step["compute-metrics"].data.metrics)
    # the report with the command a user types, the arrays with the function that command calls
    done = subprocess.run(["mlflow", "artifacts", "download", "--run-id", report_run_id, "--artifact-path", "report",
                           "--dst-path", str(dst)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    mlflow.artifacts.download_artifacts(run_id=probe_id, artifact_path="attention", dst_path=str(dst),
                                        tracking_uri=uri)
    weights = np.load(dst / "attention" / "channel_weights.npy")
    assert weights.shape == (80, 512) and weights.dtype == np.float32
    summary = (dst / "report" / "summary.md").read_text()
    assert summary.split("\n## ")[0].count(f"| {activation} ") == 1  # one row in the summary table
    assert "## Per-class Gini" in summary
    return by_step


def test_main_logs_everything_to_a_postgresql_backed_server(postgres_server, tmp_path):
    # the SQLite-backed server gets the same checks in the MLflow UI test, on a sweep's chain
    uri, experiment = postgres_server.uri, "main-on-server"
    env = client_env(uri, experiment)
    result = subprocess.run(
        ["mlflow", "run", str(REPO), "--env-manager", "local", "-P", "activation=scaled_tanh", "-P", "dataset=fake",
         "-P", "weights=none", "-P", "image_size=32", "-P", "epochs=2", "-P", f"out={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = runs_of(uri, experiment)
    [main] = [r for r in runs if r.data.tags.get("pipeline.step") == "main"]
    assert len(runs) == 5 and main.info.status == "FINISHED"
    by_step = check_chain_on_server(uri, env, main, main.info.run_id, tmp_path / "download", "scaled_tanh")
    client = mlflow.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(by_step["train"].info.run_id, "gate_scale")] == [1, 2]


def test_eight_train_runs_log_at_once(server, tmp_path):
    experiment, n = "load", 8
    env = {**client_env(server.uri, experiment), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--dataset", "fake", "--weights", "none",
                               "--image-size", "32", "--epochs", "2", "--batch-size", "32", "--device", "cpu",
                               "--seed", str(seed), "--activation", ["sigmoid", "swish"][seed % 2],
                               "--keep-last-checkpoint", ["true", "false"][seed % 2]],  # deleted through the server
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in range(n)]
    outputs = [p.communicate(timeout=900) for p in procs]
    failures = [o[1] for p, o in zip(procs, outputs) if p.returncode != 0]
    assert not failures, "\n".join(line for f in failures for line in f.splitlines() if "Error" in line or "error" in line)[-4000:]
    runs = runs_of(server.uri, experiment)
    assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.params["seed"] for r in runs) == [str(s) for s in range(n)]
    client = mlflow.MlflowClient(server.uri)
    for run in runs:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
        assert {"test_acc", "test_top5"} <= set(run.data.metrics)
        kept = ["checkpoints/best.pt", "checkpoints/last.pt"][:2 - int(run.data.params["seed"]) % 2]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == kept


def test_unreachable_server_fails_fast_with_one_line(tmp_path):
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
        commands = {  # a step, and `mlflow run` as the README tells users to start it against a server
            "step": [sys.executable, "-m", "pipeline", "train", "--dataset", "fake", "--weights", "none",
                     "--image-size", "32"],
            "mlflow-run": [sys.executable, "-m", "pipeline", "mlflow-run", str(REPO), "-e", "train", "--env-manager",
                           "local", "-P", "dataset=fake", "-P", "weights=none"],
        }
        start = time.monotonic()  # side by side: each spends its seconds waiting on the network
        procs = {(uri, name): subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
                 for uri in (refused, mute) for name, command in commands.items()}
        for (uri, name), proc in procs.items():
            out, err = proc.communicate(timeout=60)
            elapsed = time.monotonic() - start
            assert proc.returncode != 0 and elapsed < (15 if name == "step" else 20), (uri, name, elapsed)
            lines = [line for line in (out + err).splitlines() if line.strip()]
            assert "Traceback" not in err and len(lines) == 1, (name, lines)
            assert lines[0].startswith("Error:") and uri in lines[0], (name, lines)


def chromium_driver(width=1800, height=1100):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(browser and driver), "Debian's chromium and chromium-driver")
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for_text(driver, text: str, timeout: float = 60.0) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = driver.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:  # the single-page app re-rendered under us
            continue
        if text in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not on the page after {timeout} s; page text ends: {body[-1500:]}")


def test_sweep_runs_compare_in_the_mlflow_ui_in_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By

    experiment = "ui-sweep"
    env = client_env(server.uri, experiment)
    result = subprocess.run(
        ["mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local", "-P", "activations=scaled_tanh,swish",
         "-P", "dataset=fake", "-P", "weights=none", "-P", "image_size=32", "-P", "epochs=2",
         "-P", "faithfulness_images=0", "-P", f"out={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = runs_of(server.uri, experiment)
    mains = {r.info.run_name: r for r in runs if r.data.tags.get("pipeline.step") == "main"}
    assert set(mains) == {"scaled_tanh · late · fake 32px 2ep · seed0", "swish · late · fake 32px 2ep · seed0"}
    experiment_id = runs[0].info.experiment_id
    # the SQLite-backed server holds the whole chain of a configuration, and the sweep's report
    [sweep] = [r for r in runs if r.data.tags.get("pipeline.step") == "sweep"]
    check_chain_on_server(server.uri, env, mains["scaled_tanh · late · fake 32px 2ep · seed0"], sweep.info.run_id, tmp_path / "download",
                          "scaled_tanh")
    shots = Path(os.environ.get("PIPELINE_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)

    driver = chromium_driver()
    try:
        # marked as machine learning; MLflow 3.17's UI follows its GenAI / Model training switch,
        # which a link's workflowType sets (and the browser keeps)
        experiment_tags = mlflow.MlflowClient(server.uri).get_experiment(experiment_id).tags
        assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
        driver.get(f"{server.uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
        body = wait_for_text(driver, "Run Name")
        # the run list renders after its header: wait for the rows (slow on a loaded machine)
        body = wait_for_text(driver, "sweep · scaled_tanh,swish")
        # the comparison view the sweep's log points to: main runs only, flat, ranked by test
        # accuracy, the gate first in each name, the comparison's columns shown
        view = view_url(experiment_id, server.uri)
        assert view in result.stderr
        driver.get(view)
        body = wait_for_text(driver, "swish · late · fake 32px 2ep · seed0")
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label*='lose']"):  # the assistant panel
            if button.is_displayed():
                button.click()
                time.sleep(1)
                break
        body = wait_for_text(driver, "swish · late · fake 32px 2ep · seed0")
        assert "scaled_tanh · late · fake 32px 2ep · seed0" in body and "sweep ·" not in body
        driver.save_screenshot(str(shots / "runs.png"))
        for column in ("test_acc", "gini", "entropy", "sparsity", "activation", "dataset", "epochs"):
            assert column in body, (column, body[-3000:])
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") if "·" in e.text]
        ranked = sorted(mains.values(), key=lambda r: -r.data.metrics["test_acc"])
        assert [n.split(" · ")[0] for n in names[:2]] == [r.info.run_name.split(" · ")[0] for r in ranked]
        driver.save_screenshot(str(shots / "runs.png"))

        # the comparison of the two configurations
        ids = [mains["scaled_tanh · late · fake 32px 2ep · seed0"].info.run_id, mains["swish · late · fake 32px 2ep · seed0"].info.run_id]
        driver.get(f"{server.uri}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([experiment_id])}"
                   "&workflowType=machine_learning")
        body = wait_for_text(driver, "Comparing 2 Runs")
        body = wait_for_text(driver, "gini")
        driver.save_screenshot(str(shots / "compare.png"))
        # run names, parameters, and the project's metrics with their logged values (the UI's
        # metric table is virtualised: the first rows are rendered, alphabetically)
        for name in ("scaled_tanh · late · fake 32px 2ep · seed0", "swish · late · fake 32px 2ep · seed0", "activation", "Metrics", "avg_score", "entropy",
                     "entropy_std", "first_image/entropy", "gini"):
            assert name in body, name
        for run in mains.values():
            assert f"{run.data.metrics['entropy']:.3f}" in body
            assert f"{run.data.metrics['avg_score']:.3f}" in body
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight / 2)")
        for element in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Metrics']"):
            driver.execute_script("arguments[0].scrollIntoView()", element)
            break
        driver.save_screenshot(str(shots / "compare_metrics.png"))
    finally:
        driver.quit()
    for name in ("runs.png", "compare.png", "compare_metrics.png"):
        assert (shots / name).read_bytes()[:4] == b"\x89PNG"
