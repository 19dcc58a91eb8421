#!/usr/bin/env bash
# GPU check, for a CUDA machine with CuPy and torch (no package registry there).
#
#   1. installs carried wheels from .whl/ if present (array-api-compat, array-api-extra and
#      array-api-strict are the ones a stock CUDA image lacks; see docs/gpu-matrix.md);
#   2. prints, per op, the largest relative difference NumPy vs CuPy (ci/gpu_matrix.py);
#   3. runs the benchmarks on CuPy against torch CUDA;
#   4. runs the whole suite on the cupy and torch_cuda backends (numpy as the reference);
#   5. trains the digits example's three models on CuPy.
#
# Everything it prints is also written under $OUT (default ./gpu-out). On a machine without a
# CUDA device it runs the same steps on the CPU torch backend, as a dry run of the script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

{
    date -u +"date: %Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
        echo "no nvidia-smi"
    "$PY" - <<'EOF'
import numpy, torch
print("numpy", numpy.__version__, "| torch", torch.__version__, "| cuda", torch.cuda.is_available())
try:
    import cupy
    print("cupy", cupy.__version__, "| devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:
    print("cupy unavailable:", e)
EOF
} 2>&1 | tee "$OUT/machine.txt"

if "$PY" -c "import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() == 0)" 2>/dev/null; then
    gpu=1
    backends=(--backend numpy --backend cupy)
    # a backend named here that does not work is a pytest usage error: torch_cuda only where
    # this torch build sees the GPU
    if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
        backends+=(--backend torch_cuda)
    else
        echo "torch sees no CUDA device: the suite runs without torch_cuda" | tee -a "$OUT/machine.txt"
    fi
    ours=cupy
else
    gpu=0
    echo "no CUDA device: dry run on the CPU torch backend" | tee -a "$OUT/machine.txt"
    backends=(--backend numpy --backend torch)
    ours=torch
fi

# Each step has a time limit (seconds; override with the variables) so that one slow step
# cannot hold up the run: the four together stay under 10 minutes. The numbers come first,
# the long suite after them.
LIMIT_MATRIX=${LIMIT_MATRIX:-60}
LIMIT_BENCH=${LIMIT_BENCH:-200}
LIMIT_SUITE=${LIMIT_SUITE:-220}
LIMIT_DIGITS=${LIMIT_DIGITS:-20}  # per model
status=0
check() {  # check STEP LIMIT EXIT_STATUS
    case $3 in
        0) ;;
        124) echo "!! $1 stopped at its $2 s limit"; status=1 ;;
        *) echo "!! $1 exited with status $3"; status=1 ;;
    esac
}

echo "== NumPy vs $ours, per op"
timeout "$LIMIT_MATRIX" "$PY" ci/gpu_matrix.py --backend "$ours" 2>&1 | tee "$OUT/gpu-matrix.md"
check "gpu_matrix.py" "$LIMIT_MATRIX" "${PIPESTATUS[0]}"

echo "== benchmarks ($ours vs torch)"
quick=()
[ "$gpu" -eq 1 ] || quick=(--quick)
timeout "$LIMIT_BENCH" "$PY" benchmarks/bench.py --backend "$ours" "${quick[@]}" \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
check "bench.py" "$LIMIT_BENCH" "${PIPESTATUS[0]}"

echo "== test suite (${backends[*]})"
# SIGINT first: pytest then prints its summary of what ran
timeout -s INT -k 10 "$LIMIT_SUITE" "$PY" -m pytest -q -p no:cacheprovider "${backends[@]}" 2>&1 |
    tee "$OUT/pytest.txt" | tail -n 25
check "pytest" "$LIMIT_SUITE" "${PIPESTATUS[0]}"

if [ -f examples/train_digits.py ]; then
    echo "== examples/train_digits.py --backend $ours"
    # the curves and checkpoints stay in a scratch folder: $OUT keeps the six text files
    # above, the ones to paste into docs/gpu-matrix.md
    scratch=$(mktemp -d)
    epochs=()
    [ "$gpu" -eq 1 ] || epochs=(--epochs 1)
    for model in cnn mlp rnn resnet; do
        timeout "$LIMIT_DIGITS" /usr/bin/time -f "$model wall %e s" "$PY" examples/train_digits.py \
            --model "$model" --backend "$ours" "${epochs[@]}" --out "$scratch/digits-$model" 2>&1 |
            grep -E "test accuracy|wall|epoch .*s" | tee -a "$OUT/digits.txt"
        check "train_digits.py --model $model" "$LIMIT_DIGITS" "${PIPESTATUS[0]}"
    done
fi
echo "ci/test-gpu.sh: $([ $status -eq 0 ] && echo ok || echo FAILED)"
exit $status
