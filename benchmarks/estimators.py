"""Bias and variance of the first-order and ES meta-gradients against the exact (second-order)
one, on a small configuration (issue 5): digits, a 64–32–10 network, 100 training and 100
validation rows, the untrained optimizer after 50 warm-up steps, truncations of T steps, 8
samples that differ in their minibatches, ES with 32 antithetic pairs (σ = 0.01).

    python benchmarks/estimators.py [--out estimators.json]

See :func:`metastep.learned.estimator_bias_variance` for the definitions.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from metastep import data, learned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="5,20")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--es-pairs", type=int, default=32)
    ap.add_argument("--out", default="estimators.json")
    args = ap.parse_args()
    pool, _ = data.split(data.load_digits(), (1400, 397), seed=0)
    train, valid = pool.subset(np.arange(100)), pool.subset(np.arange(100, 200))
    out = {}
    print(f"{'T':>4} {'estimator':<8} {'bias':>10} {'paired err':>11} {'variance':>10} {'cosine':>9}")
    for T in (int(v) for v in args.lengths.split(",")):
        t0 = time.perf_counter()
        r = learned.estimator_bias_variance(train, valid, sizes=(64, 32, 10), length=T, samples=args.samples,
                                            es_pairs=args.es_pairs, es_sigma=0.01, warmup=50, meta_batch=0, seed=0)
        out[T] = {k: r[k] for k in ("second", "first", "es")} | {"seconds": time.perf_counter() - t0}
        for k in ("second", "first", "es"):
            s = r[k]
            print(f"{T:>4} {k:<8} {s['bias']:>10.3g} {s['paired_error']:>11.3g} {s['variance']:>10.3g} "
                  f"{s['cosine']:>9.5f}")
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
