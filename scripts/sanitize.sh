#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer into a temporary folder
# and run the tests against it. Exits non-zero on any sanitizer report (ASan aborts on its first
# error; UBSan is compiled with -fno-sanitize-recover and also runs with halt_on_error=1) or on
# any test failure.
#
#   scripts/sanitize.sh                 # the default subset (see SUBSET below)
#   scripts/sanitize.sh --all           # the whole suite
#   scripts/sanitize.sh tests/test_x.py # any pytest arguments
#
# Environment: PYTHON (default: python3) must have the build requirements (scikit-build-core,
# pybind11, cmeel-eigen, cmeel-boost) and the test requirements installed; the build runs
# without isolation so nothing is downloaded. KEEP=1 keeps the temporary folder; SANITIZE_DIR=path
# builds in (and keeps) that folder instead, so a second run rebuilds incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# The default subset: every entry point, mode and precision (engine, modes, validation, fuzz,
# threads, SGD, learned optimizers, meta-training), leaving out the long experiment, sweep,
# tuning and benchmark-style files, which reach no C++ that the subset does not already reach.
SUBSET=(tests/test_engine.py tests/test_modes.py tests/test_validation.py tests/test_fuzz.py
        tests/test_threads.py tests/test_sgd.py tests/test_learned.py tests/test_meta_train.py
        tests/test_accuracy.py tests/test_build.py)
if [[ $# -eq 0 ]]; then
  args=("${SUBSET[@]}")
elif [[ "$1" == "--all" ]]; then
  shift
  args=(tests "$@")
else
  args=("$@")
fi

if [[ -n "${SANITIZE_DIR:-}" ]]; then  # a folder kept between runs: incremental rebuilds
  work="$SANITIZE_DIR"
  mkdir -p "$work"
  rm -rf "$work/site"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/metastep-sanitize.XXXXXX")"
  if [[ "${KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$work"' EXIT
  fi
fi
echo "sanitize: building into $work" >&2
start=$(date +%s)
METASTEP_SANITIZE=ON METASTEP_CUDA=OFF METASTEP_NATIVE=OFF \
  "$PYTHON" -m pip install --no-build-isolation --no-deps -q --target "$work/site" \
  --config-settings=build-dir="$work/build" .
built=$(date +%s)
echo "sanitize: build took $((built - start)) s" >&2

libasan="$(gcc -print-file-name=libasan.so)"
if [[ ! -e "$libasan" ]]; then
  echo "sanitize: libasan.so not found (gcc -print-file-name gave $libasan)" >&2
  exit 2
fi
# The interpreter is not instrumented: preload the ASan runtime so it is initialised first.
# CPython keeps objects alive until exit by design, so leak checking is off.
export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
log="$work/pytest.log"
set +e
PYTHONPATH="$work/site" "$PYTHON" -m pytest -q -p no:cacheprovider "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "sanitize: tests took $(( $(date +%s) - built )) s (exit status $rc)" >&2
# A report that did not abort (e.g. printed from a subprocess) still fails the run.
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: UndefinedBehaviorSanitizer" "$log"; then
  echo "sanitize: sanitizer report found in the output" >&2
  exit 1
fi
exit "$rc"
