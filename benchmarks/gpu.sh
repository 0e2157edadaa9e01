#!/usr/bin/env bash
# The GPU check (issue 8): build or install metastep with the CUDA path, run the CUDA tests, a
# compute-sanitizer memcheck of every product kernel, and the GPU benchmark (against PyTorch-CUDA,
# JAX-CUDA and the cuBLAS product bound). About 5 minutes on an H100. Logs and gpu_bench.json go
# to $OUT if set, else the current folder.
#   benchmarks/gpu.sh                      build from source in a fresh venv (needs the network)
#   WHEELS=DIR benchmarks/gpu.sh           same, offline, from a folder of wheels
#   WHEEL=metastep-*.whl benchmarks/gpu.sh install a prebuilt wheel next to the python3 already
#                                          there (numpy, pytest, ... must be installed)
#   SKIP_BENCH=1                           the checks without the benchmark
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
if [ -n "${WHEEL:-}" ]; then
  site="$(mktemp -d)"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" $WHEEL || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  py=python3
else
  venv="$(mktemp -d)/venv"
  python3 -m venv "$venv" && . "$venv/bin/activate" || exit 1
  if [ -n "${WHEELS:-}" ]; then
    METASTEP_CUDA=ON pip install -q --no-index --find-links "$WHEELS" ".[test]" || exit 1
  else
    METASTEP_CUDA=ON pip install -q ".[test]" || exit 1
  fi
  py=python
fi
status=0
$py -c "import metastep as ms; print(ms.build_info()); print('cuda:', ms.cuda_available())" || exit 1
echo "== smoke: every kernel against the CPU"
timeout 120 $py - <<'PY' 2>&1 | tee "$out/gpu_smoke.txt" || status=1
import functools, numpy as np, metastep as ms
from metastep import _core
print("cuBLAS:", repr(ms.api.cublas_library()))
worst = {}
for dtype in ("float64", "float32"):
    orig = getattr(_core, f"cuda_forward_{dtype}")
    for d, m in ((130, 1), (257, 12), (150, 37)):
        q = ms.random_quadratic(d, seed=d)
        etas = np.linspace(0.05, 1.95, m) / q.L
        for mode in ("forward", "scaled"):
            cpu = np.atleast_1d(ms.metagrad(q, etas, 101, mode=mode, dtype=dtype, objective="log").grad)
            for gemm in (0, 1, 2, 3, 4):
                for graph in (False, True):
                    setattr(_core, f"cuda_forward_{dtype}",
                            functools.partial(orig, gemm=gemm, graph=graph, cublas=ms.api.cublas_library()))
                    r = ms.metagrad(q, etas, 101, mode=mode, dtype=dtype, objective="log", device="cuda")
                    dev = float(np.max(np.abs(np.atleast_1d(r.grad) - cpu) / np.abs(cpu)))
                    key = (dtype, gemm, graph)
                    worst[key] = max(worst.get(key, 0.0), dev)
                    if not dev < (1e-11 if dtype == "float64" else 2e-3):
                        print("MISMATCH", dtype, d, m, mode, gemm, graph, dev, r.status if m == 1 else set(r.status))
    setattr(_core, f"cuda_forward_{dtype}", orig)
for k, v in sorted(worst.items()):
    print("worst relative deviation from the CPU", k, f"{v:.2e}")
PY
echo "== pytest tests/test_cuda.py"
timeout 200 $py -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.txt" || status=1
if command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck"
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 $py - <<'PY' 2>&1 | tail -25 | tee "$out/gpu_memcheck.txt" || status=1
import numpy as np, metastep as ms
from metastep import _core
for dtype in ("float64", "float32"):
    fn = getattr(_core, f"cuda_forward_{dtype}")
    for d, m in ((1, 1), (130, 1), (257, 12), (150, 37)):
        q = ms.random_quadratic(d, seed=d)
        for gemm in (1, 2, 3, 4):
            for graph in (False, True):
                fn(np.ascontiguousarray(q.H), q.w0, q.w_star, np.linspace(0.1, 1.9, m) / q.L, 70, True, "log",
                   gemm=gemm, graph=graph, cublas=ms.api.cublas_library())
print("memcheck run finished")
PY
fi
[ "${SKIP_BENCH:-0}" = 1 ] && exit $status  # checks only
echo "== GPU benchmark"
timeout 330 $py -m metastep bench --gpu --out "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.txt" || status=1
exit $status
