"""Side-by-side benchmark (same as `metastep bench`): python benchmarks/run.py [--quick] [--out FILE]."""
import argparse

from metastep.bench import format_table, run_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    print(format_table(run_bench(quick=a.quick, out=a.out, threads=a.threads)))
