#!/usr/bin/env bash
# Build with the CUDA path, run the CUDA tests and the GPU benchmark (meant for an H100-class
# machine; about 5 minutes). Results: gpu_bench.json and the printed tables, under $OUT if set.
# Offline machines: set WHEELS to a folder of wheels (pip download ".[test]" scikit-build-core
# pybind11 cmeel-eigen==3.4.1 cmeel-boost==1.90.0 -d WHEELS) and nothing is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
if [ -n "${WHEELS:-}" ]; then
  METASTEP_CUDA=ON pip install -q --no-index --find-links "$WHEELS" ".[test]"
else
  METASTEP_CUDA=ON pip install -q ".[test]"
fi
python -c "import metastep as ms; print(ms.build_info())"
python -m pytest tests/test_cuda.py tests/test_engine.py -q -rs 2>&1 | tee "$out/gpu_tests.txt"
python - "$out/gpu_bench.json" <<'PY'
import json, sys
from metastep.bench import run_gpu_bench
r = run_gpu_bench(out=sys.argv[1])
for row in r["rows"]:
    print(json.dumps(row))
PY
