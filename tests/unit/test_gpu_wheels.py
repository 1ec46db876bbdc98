"""benchmarks/gpu_wheels.py: which distributions a GPU host needs carried (no download here)."""
import importlib.util
from importlib import metadata

from packaging.requirements import Requirement

from helpers import REPO

spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "benchmarks" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_wheels)


def test_the_closure_carries_mlflow_and_entmax_and_leaves_what_the_host_has():
    needed, provided = gpu_wheels.closure(["mlflow>=3.0", "entmax>=1.3", "numpy>=1.24"])
    assert {"mlflow", "mlflow-skinny", "sqlalchemy", "alembic", "entmax"} <= set(needed)
    assert not {"numpy", "torch", "pandas", "scipy", "scikit-learn", "matplotlib"} & set(needed)
    assert {"numpy", "torch"} <= provided  # entmax needs torch: the host's
    assert needed["mlflow"] == metadata.version("mlflow") and needed["entmax"] == metadata.version("entmax")
    assert not set(needed) & gpu_wheels.HOST


def test_markers_are_the_hosts_python_3_12_on_linux():
    env = {**gpu_wheels.host_environment(), "extra": ""}
    assert Requirement('x; python_version >= "3.12"').marker.evaluate(env)
    assert not Requirement('x; python_version < "3.12"').marker.evaluate(env)
    assert not Requirement('x; sys_platform == "win32"').marker.evaluate(env)
    assert Requirement('x; platform_machine == "x86_64" and platform_system == "Linux"').marker.evaluate(env)


def test_the_pipelines_own_requirements_are_read_from_setup_cfg():
    names = {Requirement(r).name for r in gpu_wheels.install_requires()}
    assert {"torch", "torchvision", "mlflow", "entmax", "click"} <= names
