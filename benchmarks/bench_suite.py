"""Where the test suite's time goes: the suite's wall time as CI runs it, or the CPU seconds of
every test, the processes it starts included. Writes JSON with the command, the commit, the
machine, the library versions, every test and the sums per module.

- ``--mode suite`` (the default): ``python -m pytest -q`` as the README and CI run it (two
  pytest-xdist workers); the wall time and each test's own duration (``--durations=0``).
- ``--mode cpu``: the tests one after another (``-n 0``), each test's CPU seconds read from
  ``/proc/stat`` (the whole machine: the tracking servers, Ray, Chromium and every process a
  test starts count to the test that started them). Linux only; run it on an otherwise idle
  machine. The sum is the work the two workers share, so it bounds the suite's wall time
  from below at sum / cores.

    python benchmarks/bench_suite.py --mode cpu --out docs/benchmarks/suite-cpu.json -- tests/system
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_end_to_end import git_commit  # benchmarks/ is on the path: the script's folder
from benchjson import write_json

HERE = Path(__file__).resolve().parent
PLUGIN = "bench_suite_plugin"  # benchmarks/bench_suite_plugin.py, loaded with -p


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "mlflow", "ray", "pytest", "pytest-xdist"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def by_module(tests: list[dict], key: str) -> dict:
    sums: dict[str, float] = defaultdict(float)
    for test in tests:
        sums[test["nodeid"].split("::")[0]] += test[key]
    return dict(sorted(((m, round(s, 1)) for m, s in sums.items()), key=lambda kv: -kv[1]))


def parse_durations(output: str) -> list[dict]:
    """``--durations=0`` lines (setup, call and teardown of a test summed)."""
    seconds: dict[str, float] = defaultdict(float)
    for line in output.splitlines():
        match = re.match(r"\s*([\d.]+)s (?:setup|call|teardown)\s+(\S+)", line)
        if match:
            seconds[match.group(2).split("@")[0]] += float(match.group(1))
    return [{"nodeid": n, "duration_s": round(s, 2)} for n, s in sorted(seconds.items(), key=lambda kv: -kv[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("suite", "cpu"), default="suite")
    parser.add_argument("--project-dir", default=str(HERE.parent), help="checkout whose tests are run")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed on to pytest (e.g. a folder)")
    args = parser.parse_args()
    project = Path(args.project_dir).resolve()
    if args.mode == "cpu" and not Path("/proc/stat").exists():
        raise SystemExit("Error: --mode cpu reads /proc/stat (Linux only)")

    env = {**os.environ, "PIPELINE_OFFLINE": "1", "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "tests.jsonl"
        command = [sys.executable, "-m", "pytest", "-q", *args.pytest_args]
        if args.mode == "cpu":
            command += ["-n", "0", "-p", PLUGIN]
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
            env["BENCH_SUITE_RECORDS"] = str(records)
        else:
            command += ["--durations=0"]
        print("$ " + " ".join(command), file=sys.stderr)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        summary_line = next((line for line in reversed(done.stdout.splitlines()) if " in " in line), "")
        if args.mode == "cpu":
            tests = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
            tests.sort(key=lambda t: -t["cpu_s"])
        else:
            tests = parse_durations(done.stdout)
    key = "cpu_s" if args.mode == "cpu" else "duration_s"
    result = {
        "settings": {"mode": args.mode, "command": command, "project_dir": str(project),
                     "commit": git_commit(project), "cpu_cores": os.cpu_count(), "machine": platform.platform(),
                     "versions": versions()},
        "exit_code": done.returncode,
        "pytest_summary": summary_line.strip("= "),
        "wall_s": round(wall, 1),
        f"sum_{key}": round(sum(t[key] for t in tests), 1),
        "modules": by_module(tests, key),
        "tests": tests,
    }
    write_json(result, args.out)
    print(f"{summary_line.strip('= ')}; wall {wall:.1f} s; sum of {key} {result[f'sum_{key}']}; wrote {args.out}",
          file=sys.stderr)
    if done.returncode != 0:
        sys.exit(done.returncode)


if __name__ == "__main__":
    main()
