"""The reuse key: when a finished step run can stand for a new one. A step's result is
identified by its name, its typed configuration (which holds its upstream runs' ids) and the
code version of the package files it depends on (its module and what that imports, read from
the sources, not from the running interpreter). Pure standard library."""
from __future__ import annotations

import functools

from pipeline.contracts import COMPUTE_METRICS, PREPARE_DATA, PROBE_ATTENTION, REPORT, TRAIN

#: The module that implements each step; its code version covers what it imports, transitively.
STEP_MODULES = {
    PREPARE_DATA: "pipeline.steps.prepare_data",
    TRAIN: "pipeline.steps.train",
    PROBE_ATTENTION: "pipeline.steps.probe_attention",
    COMPUTE_METRICS: "pipeline.steps.compute_metrics",
    REPORT: "pipeline.steps.report",
}


#: Modules whose own imports are not followed: config imports the device check only to validate
#: a device name, so a step does not depend on the device code through its config.
LEAF_MODULES = ("pipeline.config",)


def _module_file(package_root, module: str):
    parts = module.split(".")[1:]
    base = package_root.joinpath(*parts) if parts else package_root
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _pipeline_imports(path, package_root) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "pipeline":
            found.add(node.module)
            # `from pipeline.steps import train` imports a module, not a name
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if _module_file(package_root, f"{node.module}.{a.name}") is not None}
    return found


def step_sources(step: str, root=None) -> list[str]:
    """The package files ``step`` depends on: its module and everything it imports from the
    package, transitively (imports inside functions included). Paths relative to the package
    folder ``root`` (default: this package)."""
    from pathlib import Path

    root = Path(root) if root is not None else Path(__file__).resolve().parent
    todo, seen = [STEP_MODULES[step]], set()
    files = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(root, module)
        if path is None:
            continue
        files.add(path)
        if module not in LEAF_MODULES:
            todo += sorted(_pipeline_imports(path, root) - seen)
    return sorted(p.relative_to(root).as_posix() for p in files)


def code_version(step: str, root=None) -> str:
    """SHA-256 (12 hex digits) of the sources ``step`` depends on: editing a plot leaves the
    ``train`` code version as it is; editing the gates changes it. For this package (``root``
    None) it is computed once per process: the running code does not change under it."""
    if root is None:
        return _installed_code_version(step)
    return _hash_sources(step, root)


@functools.lru_cache(maxsize=None)
def _installed_code_version(step: str) -> str:
    from pathlib import Path

    return _hash_sources(step, Path(__file__).resolve().parent)


def _hash_sources(step: str, root) -> str:
    import hashlib
    from pathlib import Path

    root = Path(root)
    h = hashlib.sha256()
    for rel in step_sources(step, root):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:12]


def reuse_key(step: str, config: dict) -> str:
    """The identity of a step's result: its name, its typed configuration (which holds the ids
    of its upstream runs) and its code version. A FINISHED run with the same key is reused."""
    import hashlib
    import json

    payload = {"step": step, "config": config, "code_version": code_version(step)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]
