"""How every benchmark script stores what it measured: one JSON file, indented by one space,
ending in a newline, numpy numbers as plain numbers, the parent folder made if missing, plus
the record of where it was measured (:func:`machine`) unless the result already holds one."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path


def machine() -> dict:
    """Where and when: cores, processor, Python, the library versions loaded, the commit."""
    import sys

    out = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
           "platform": platform.platform(), "python": platform.python_version(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name in ("numpy", "torch", "mlflow"):
        if name in sys.modules:
            out[name] = getattr(sys.modules[name], "__version__", "")
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["commit"] = ""
    return out


def _plain(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:
        pass
    return str(value)


def write_json(result: dict, path: str | Path) -> Path:
    """Write ``result`` (with ``recorded_on``: :func:`machine`, unless present) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = result if "recorded_on" in result else {**result, "recorded_on": machine()}
    path.write_text(json.dumps(record, indent=1, default=_plain) + "\n")
    return path
