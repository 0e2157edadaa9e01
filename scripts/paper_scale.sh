#!/usr/bin/env bash
# E5-E7 at the paper's scale (`metastep reproduce eN --paper-scale`), several experiments at once,
# each with its meta-training and evaluation runs spread over JOBS worker processes; one log and
# one wall time per experiment (the logs get a line per finished meta-training run). One paper-scale
# meta-training run took 10-15 CPU-minutes on the development machine, so an experiment needs at
# least that long even with JOBS=6 on 6 free cores.
#   EXPS="e5 e6 e7" JOBS=6 OUT=results/paper scripts/paper_scale.sh
# WHEEL=metastep-....whl takes the compiled extension from a prebuilt wheel and runs this
# checkout's Python code with it (for a machine without a build toolchain).
set -uo pipefail
EXPS=${EXPS:-"e5 e6 e7"}
JOBS=${JOBS:-6}
OUT=${OUT:-results/paper}
LIMIT=${LIMIT:-0}   # seconds per experiment, 0 = none
PY=${PY:-python3}
SCALE=--paper-scale
[ "${QUICK:-0}" = 1 ] && SCALE=--quick   # a seconds-long check of this script
mkdir -p "$OUT"
if [ -n "${WHEEL:-}" ]; then
  tgt=$(mktemp -d)
  "$PY" -m pip install --no-deps --no-index -q --target "$tgt" "$WHEEL" || exit 1
  cp "$tgt"/metastep/_core*.so python/metastep/ || exit 1
  export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import metastep, os; print('metastep from', os.path.dirname(metastep.__file__))" || exit 1
{ nproc; lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)|Thread|Core|MHz"; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"
pids=()
for e in $EXPS; do
  (
    t0=$(date +%s)
    if [ "$LIMIT" -gt 0 ]; then
      timeout "$LIMIT" "$PY" -m metastep reproduce "$e" $SCALE --jobs "$JOBS" --out "$OUT" > "$OUT/$e.log" 2>&1
    else
      "$PY" -m metastep reproduce "$e" $SCALE --jobs "$JOBS" --out "$OUT" > "$OUT/$e.log" 2>&1
    fi
    rc=$?
    t1=$(date +%s)
    echo "$e exit $rc wall $((t1 - t0)) s" >> "$OUT/walltimes.txt"
  ) &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
cat "$OUT/walltimes.txt"
exit $status
