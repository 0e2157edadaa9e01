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
libstdcxx="$(gcc -print-file-name=libstdc++.so)"
if [[ ! -e "$libasan" || ! -e "$libstdcxx" ]]; then
  echo "sanitize: libasan.so or libstdc++.so not found (gcc -print-file-name gave $libasan, $libstdcxx)" >&2
  exit 2
fi
# The interpreter is not instrumented: preload the ASan runtime so it is initialised first, and
# libstdc++ with it (python does not link it, and without it ASan's __cxa_throw interceptor finds
# no real function and aborts at the first C++ exception). CPython keeps objects alive until
# exit by design, so leak checking is off. Reports also go to files (pytest captures stderr, and
# an aborted run would lose them): any such file fails the run.
rm -rf "$work/reports"
mkdir -p "$work/reports"
export LD_PRELOAD="$libasan:$libstdcxx"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:log_path=$work/reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/reports/ubsan"
log="$work/pytest.log"
set +e
PYTHONPATH="$work/site" "$PYTHON" -m pytest -q -p no:cacheprovider "${args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "sanitize: tests took $(( $(date +%s) - built )) s (exit status $rc)" >&2
# A report that did not abort (e.g. from a subprocess) still fails the run.
if compgen -G "$work/reports/*" > /dev/null; then
  echo "sanitize: sanitizer reports:" >&2
  cat "$work"/reports/* >&2
  exit 1
fi
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: UndefinedBehaviorSanitizer" "$log"; then
  echo "sanitize: sanitizer report found in the output" >&2
  exit 1
fi
exit "$rc"
