"""Build the wheel folder a lent GPU host installs from (it has no network, no MLflow, no entmax).

The host's image (``/work/.library/device/KINDS.md``: Python 3.12, PyTorch, torchvision, numpy,
pandas, scikit-learn, matplotlib, ...) lacks MLflow and its dependencies, entmax and the
notebook's ``sparsemax``. This script walks the requirements of the pipeline (``setup.cfg``'s
``install_requires``) and of ``sparsemax`` through the distributions installed *here*
(``importlib.metadata``, markers evaluated for CPython 3.12 on Linux x86_64), drops every
distribution the host already has, and downloads the rest, at the versions installed here, as
wheels for that host::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION

Run it where pip reaches a package index (this machine): ``python benchmarks/gpu_wheels.py``
writes ``.whl/`` (git-ignored; the device tool carries it with ``carry: [".whl"]``) and
``.whl/manifest.json`` (what was taken, what the host provides, the sizes). What travels to the
host is the working tree plus the wheels, 64 MiB at most: the script fails if the wheels pass
``--max-mib``. On the host, ``benchmarks/gpu_host.sh`` installs them with
``pip install --no-index --no-deps --target``.
"""
from __future__ import annotations

import argparse
import configparser
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]

#: Distributions the GPU host's image holds (KINDS.md, "Python packages already there", read
#: 2026-11-17); carried only where the host lacks them.
HOST_HAS = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet
filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""
HOST = {canonicalize_name(n) for n in HOST_HAS.split()}
HOST_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64",
             "linux_x86_64")
EXTRA_ROOTS = ("sparsemax",)  # benchmarks/notebook_loop.py: the notebook's own sparsemax


def host_environment() -> dict[str, str]:
    env = default_environment()
    env.update(python_version=HOST_PYTHON, python_full_version=f"{HOST_PYTHON}.3", implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", os_name="posix")
    return env


def install_requires() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]


def closure(roots: list[str]) -> tuple[dict[str, str], set[str]]:
    """(needed: canonical name -> version installed here, the host's names met on the way).
    Walks requirements without extras whose markers hold on the host; the host's own
    distributions are not walked further (their dependencies are the host's)."""
    env = host_environment()
    needed: dict[str, str] = {}
    provided: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in HOST:
            provided.add(name)
            continue
        if name in needed:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is needed on the GPU host but not installed here; pip install it first")
        needed[name] = dist.version
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or child.marker.evaluate({**env, "extra": ""}):
                todo.append(child)
    return needed, provided


def download(needed: dict[str, str], folder: Path) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    specs = [f"{name}=={version}" for name, version in sorted(needed.items())]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               HOST_PYTHON, "--implementation", "cp", *platforms, "--progress-bar", "off", "-q", "-d", str(folder),
               *specs]
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / ".whl"))
    parser.add_argument("--max-mib", type=float, default=52.0,
                        help="Fail when the wheels pass this (the tree and the wheels travel in 64 MiB).")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    roots = [r for r in install_requires()] + list(EXTRA_ROOTS)
    needed, provided = closure(roots)
    for stale in folder.glob("*.whl"):  # only what this closure names stays
        if canonicalize_name(re.split(r"-\d", stale.name, maxsplit=1)[0]) not in needed:
            stale.unlink()
    download(needed, folder)
    wheels = sorted(folder.glob("*.whl"))
    sizes = {w.name: w.stat().st_size for w in wheels}
    total_mib = sum(sizes.values()) / 2**20
    manifest = {"python": HOST_PYTHON, "platforms": PLATFORMS, "roots": roots, "carried": needed,
                "host_provides": sorted(provided), "wheels": sizes, "total_mib": round(total_mib, 2)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(wheels)} wheels, {total_mib:.1f} MiB in {folder}: {', '.join(sorted(needed))}")
    if total_mib > args.max_mib:
        raise SystemExit(f"the wheels take {total_mib:.1f} MiB, more than --max-mib {args.max_mib:g}: "
                         "the tree and the wheels must travel in 64 MiB")


if __name__ == "__main__":
    main()
