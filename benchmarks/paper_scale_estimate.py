"""Estimate the wall time of `metastep reproduce eN --paper-scale` from measured pieces.

A paper-scale run of E5–E7 takes about an hour per experiment on a 2-core machine, so the README
quotes this estimate: it times ``--meta-steps`` meta-steps of each method's meta-training with
the paper's truncation schedule (per inner step, as the truncation lengths are random), one
checkpoint-selection run, one evaluation run (the four optimizers) and one SGD run of the
grid, each with the paper-scale settings of ``metastep.experiments.learned_tbt_tbv``, and
extrapolates to the full protocol (2 methods × ``meta_runs`` × ``meta_steps`` meta-steps of
mean length ``len_base + len_mean``, a selection run every ``select_every`` meta-steps,
``eval_runs`` evaluation runs, the SGD grid).

    python benchmarks/paper_scale_estimate.py [--experiment e6] [--meta-steps 30] [--out paper_scale.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from metastep import data, learned
from metastep.experiments import learned_tbt_tbv as L

SETTINGS = {"e5": (200, 0.0), "e6": (300, 0.2), "e7": (None, 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", choices=sorted(SETTINGS), default="e6")
    ap.add_argument("--meta-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="paper_scale.json")
    args = ap.parse_args()
    cfg = L.SCALES["paper"]
    n, noise = SETTINGS[args.experiment]
    pool, test = data.split(data.load_digits(), (L.POOL, L.TEST), seed=args.seed)
    if noise:
        pool, _ = data.add_label_noise(pool, noise, seed=args.seed + 1)
    n = pool.n if n is None else n
    sched = dict(len_base=cfg["len_base"], len_mean=cfg["len_mean"], trunc_base=cfg["trunc_base"],
                 trunc_mean=cfg["trunc_mean"], max_len=cfg["max_len"], meta_batch=cfg["meta_batch"], dtype="float32",
                 seed=args.seed, progress=False, stall_steps=cfg["stall_steps"],
                 init_output_scale=L.INIT_OUTPUT_SCALE)
    res: dict = {"experiment": args.experiment, "n": n, "measured_meta_steps": args.meta_steps}
    opt = None
    for m, kw in (("tbt", dict(method="tbt", n_train=n)),
                  ("tbv", dict(method="tbv", n_train=n // 2, n_valid=n - n // 2))):
        t0 = time.perf_counter()
        opt = learned.meta_train(pool, meta_steps=args.meta_steps, **sched, **kw)
        sec = time.perf_counter() - t0
        steps = int(opt.history["length"].sum())
        res[m] = {"inner_steps": steps, "seconds": sec, "seconds_per_inner_step": sec / steps}
    rows = np.arange(pool.n)[:n]
    sub, tr, va = pool.subset(rows), pool.subset(rows[: n // 2]), pool.subset(rows[n // 2:])
    steps = cfg["eval_steps"]
    t0 = time.perf_counter()
    learned.train_curve(opt, tr, va, steps=steps, record_every=max(1, steps // 20))
    res["selection_run_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for o, lr in ((opt, 0.1), (opt, 0.1), ("sgd", 0.1), ("adam", 1e-3)):
        learned.train_curve(o, sub, test, steps=steps, record_every=cfg["record_every"], lr=lr)
    res["evaluation_run_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    learned.train_curve("sgd", tr, va, steps=steps, record_every=steps, lr=0.1)
    res["sgd_grid_run_s"] = time.perf_counter() - t0
    per_step = float(np.mean([res[m]["seconds_per_inner_step"] for m in ("tbt", "tbv")]))
    runs = 2 * cfg["meta_runs"]
    est = {"meta_training_s": runs * cfg["meta_steps"] * (cfg["len_base"] + cfg["len_mean"]) * per_step,
           "selection_s": runs * (cfg["meta_steps"] // cfg["select_every"]) * res["selection_run_s"],
           "evaluation_s": cfg["eval_runs"] * res["evaluation_run_s"],
           "sgd_tuning_s": len(cfg["sgd_lrs"]) * res["sgd_grid_run_s"]}
    est["total_s"] = sum(est.values())
    res["estimate"] = est
    print(json.dumps(res, indent=1))
    print(f"estimated `metastep reproduce {args.experiment} --paper-scale`: {est['total_s'] / 60:.0f} min")
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
