#!/usr/bin/env bash
# The one command a lent GPU host runs (no network, Python 3.12 with PyTorch, a 10-minute limit
# per command): install what the host lacks from the carried wheel folder, then time the
# notebook's table end to end (benchmarks/bench_gpu_sweep.py) and leave its JSON in $OUT.
#
# Here, first:   python benchmarks/gpu_wheels.py          (writes .whl/, ~34 MiB)
# Then, through the device tool, with carry [".whl"]:
#   bash benchmarks/gpu_host.sh [bench_gpu_sweep.py options]
# On a CPU (the suite's machine), at a tiny size, everything but the wheels (already installed):
#   COMPILE_IMAGE_SIZE=32 COMPILE_BATCHES=4 bash benchmarks/gpu_host.sh --image-size 32 --epochs 1 --activations sigmoid,sparsemax \
#     --per-batch 64 --test-images 64 --notebook-batches 2 --faithfulness-images 8 --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
SITE=${SITE:-/tmp/pipeline-site}
started=$(date +%s)

if ! "$PY" -c "import mlflow, entmax, sparsemax" 2>/dev/null; then
  [ -d .whl ] || { echo "gpu_host.sh: MLflow is missing here and there is no .whl/ folder: run benchmarks/gpu_wheels.py where pip reaches an index, and carry .whl" >&2; exit 2; }
  mkdir -p "$SITE"
  # only the wheels whose distribution this Python does not have already
  have=$("$PY" - <<'EOF'
from importlib import metadata
import re
print(" ".join(sorted({re.sub(r"[-_.]+", "_", d.metadata["Name"]).lower() for d in metadata.distributions()})))
EOF
)
  wheels=()
  for w in .whl/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr '[:upper:].-' '[:lower:]__')
    case " $have " in *" $name "*) ;; *) wheels+=("$w") ;; esac
  done
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import mlflow, entmax, sparsemax; print('gpu_host.sh: installed', len('${wheels[*]}'.split()), 'wheels; mlflow', mlflow.__version__)" >&2
fi
echo "gpu_host.sh: install $(( $(date +%s) - started )) s" >&2

if [ "${COMPILE_BENCH:-1}" = 1 ]; then  # the step eager / graphs / inductor, before the sweep (~2 min on a GPU)
  "$PY" benchmarks/bench_compile.py --image-size "${COMPILE_IMAGE_SIZE:-224}" --batches "${COMPILE_BATCHES:-40}" \
    --out "$OUT/compile.json" > "$OUT/compile.log" 2>&1 || echo "gpu_host.sh: bench_compile failed, see compile.log" >&2
  echo "gpu_host.sh: compile benchmark done at $(( $(date +%s) - started )) s" >&2
fi
"$PY" benchmarks/bench_gpu_sweep.py --work "$OUT/work" --out "$OUT/gpu-sweep.json" "$@"
rm -rf "$OUT/work/data" "$OUT/work/mlruns"  # random pixels, checkpoints: nothing to bring back (the store, logs and report stay)
echo "gpu_host.sh: done in $(( $(date +%s) - started )) s; $OUT/gpu-sweep.json" >&2
