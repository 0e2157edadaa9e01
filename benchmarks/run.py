"""Side-by-side benchmark (same as `metastep bench`): python benchmarks/run.py [--quick] [--out FILE].

NumPy's BLAS, JAX and PyTorch are pinned to one thread before they load (see metastep.bench).
"""
import argparse
import os

ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
os.environ.update(ONE_THREAD)

from metastep.bench import format_table, run_bench  # noqa: E402  (after the environment is set)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--threads", type=int, default=None, help="threads of the thread-scaling rows")
    a = ap.parse_args()
    print(format_table(run_bench(quick=a.quick, out=a.out, threads=a.threads)))
