#!/usr/bin/env bash
# GPU check, for a CUDA machine with CuPy and torch (no package registry there).
#
#   1. installs carried wheels from .whl/ if present (array-api-compat, array-api-extra and
#      array-api-strict are the ones a stock CUDA image lacks; see docs/gpu-matrix.md);
#   2. runs the whole suite on the cupy and torch_cuda backends (numpy as the reference);
#   3. prints, per op, the largest relative difference NumPy vs CuPy (ci/gpu_matrix.py);
#   4. runs the benchmarks on CuPy against torch CUDA, and the digits example on CuPy.
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
    backends=(--backend numpy --backend cupy --backend torch_cuda)
    ours=cupy
else
    gpu=0
    echo "no CUDA device: dry run on the CPU torch backend" | tee -a "$OUT/machine.txt"
    backends=(--backend numpy --backend torch)
    ours=torch
fi

status=0
echo "== test suite (${backends[*]})"
"$PY" -m pytest -q -p no:cacheprovider "${backends[@]}" 2>&1 | tee "$OUT/pytest.txt" | tail -n 25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== NumPy vs $ours, per op"
"$PY" ci/gpu_matrix.py --backend "$ours" 2>&1 | tee "$OUT/gpu-matrix.md"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmarks ($ours vs torch)"
quick=()
[ "$gpu" -eq 1 ] || quick=(--quick)
"$PY" benchmarks/bench.py --backend "$ours" "${quick[@]}" --json "$OUT/bench.json" 2>&1 |
    tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ -f examples/train_digits.py ]; then
    echo "== examples/train_digits.py --backend $ours"
    # the curves and checkpoints stay on the machine: the device tool returns at most 8
    # files from $OUT, and the six above are the ones to keep
    scratch=$(mktemp -d)
    epochs=()
    [ "$gpu" -eq 1 ] || epochs=(--epochs 1)
    for model in cnn mlp rnn; do
        /usr/bin/time -f "$model wall %e s" "$PY" examples/train_digits.py --model "$model" \
            --backend "$ours" "${epochs[@]}" --out "$scratch/digits-$model" 2>&1 |
            grep -E "test accuracy|wall|epoch .*s" | tee -a "$OUT/digits.txt"
    done
fi
echo "ci/test-gpu.sh: $([ $status -eq 0 ] && echo ok || echo FAILED)"
exit $status
