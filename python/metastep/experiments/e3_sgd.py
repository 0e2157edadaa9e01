"""E3-SGD — the train-by-train vs train-by-validation comparison with minibatch SGD as the inner
optimizer (the paper's appendix variant of Fig. 3; SPEC §8).

The setting of E3 (d = 1000, TbT on n = 500 samples vs TbV on 250 + 250 of the same samples,
m = 300 tasks, the 25-point η grid, σ ∈ {0.25, 0.5, 1, 2, 4}, truncation at 40σ, 10 fresh test
tasks), with t = 80 steps of minibatch SGD (batch size 32, about five passes over the training
rows) instead of 40 steps of GD.  Each task draws its batch sequence once
(:func:`metastep.sgd_batches` with the task's seed), so every η, σ and mode sees the same
minibatches (common random numbers).  All 25 η and both label columns (X w*, ξ) are iterated at
once as matrix products, which serves every σ (:func:`metastep.tuning.grid_search_many`).

Checks ("the same ordering" as E3): TbT fits the training rows better than TbV but its test RMSE
is higher for σ ≥ 1, the gap growing with σ; η*_TbV decreases with σ; TbV's ‖w − w*‖² is below
TbT's for σ ≥ 1 and below 1 for σ ≤ 2; meta-gradient descent (Adam on log η, forward-mode
meta-gradients through the SGD run, on a subset of the tasks held in memory) lands within one
grid cell of the grid optimum on the same subset; the fast SGD path equals
:func:`metastep.metagrad` (``batch_size=``, forward mode, C++ engine) on one task.  SGD with 80
steps does not interpolate, so E3's "train RMSE < 0.1σ" is not checked here.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import numpy as np

from . import check, write_summary
from .e3 import METHODS, common_checks, engine_check, plot as plot_e3, result_rows, tune_and_evaluate, write_csvs

NAME = "e3-sgd"
FILE_PREFIX = "e3_sgd"
FULL: Dict[str, Any] = {"d": 1000, "n": 500, "t": 80, "batch_size": 32, "m": 300, "test_tasks": 10, "n_test": 1000,
        "sigmas": (0.25, 0.5, 1.0, 2.0, 4.0), "meta_steps": 50, "meta_tasks": 16, "eta0": 1e-3, "meta_lr": 0.5,
        "meta_beta2": 0.9}
QUICK: Dict[str, Any] = {"d": 400, "n": 200, "t": 80, "batch_size": 13, "m": 60, "test_tasks": 20, "n_test": 400,
         "sigmas": (0.25, 0.5, 1.0, 2.0, 4.0), "meta_steps": 50, "meta_tasks": 12, "eta0": 1e-3, "meta_lr": 0.5,
         "meta_beta2": 0.9}


def run(out_dir: str, quick: bool = False, seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Run E3-SGD into ``out_dir/e3-sgd`` and return its summary (raw results under "results")."""
    t_start = time.perf_counter()
    cfg = dict(QUICK if quick else FULL)
    exp_dir = os.path.join(out_dir, NAME)
    os.makedirs(exp_dir, exist_ok=True)
    B = cfg["batch_size"]
    res = tune_and_evaluate(cfg, seed, progress, batch_size=B, tag="E3-SGD", meta_tasks=cfg["meta_tasks"])
    t0 = time.perf_counter()
    eng = engine_check(cfg, seed, [], batch_size=B)
    res["timing"]["engine_check"] = time.perf_counter() - t0
    checks: List[Dict[str, Any]] = []
    sig = [float(s) for s in res["sigmas"]]
    hi = [s for s in sig if s >= 1.0]
    ev = res["evals"]
    tr = {s: {m: float(np.mean(ev[(m, s)].train_rmse[:, -1])) for m in METHODS} for s in sig}
    checks.append(check("TbT fits the training rows better than TbV (train RMSE at step t) for sigma >= 1",
                        all(tr[s]["tbt"] < tr[s]["tbv"] for s in hi), {s: tr[s] for s in sig}, "tbt < tbv"))
    checks += common_checks(res, interpolation=False)
    worst = max(max(v["value_rel_diff"], v["grad_rel_diff"]) for v in eng.values())
    checks.append(check(f"fast SGD path == metastep.metagrad(batch_size={B}, mode='forward') (C++ engine) on task 0, "
                        "sigma=1, all 25 eta: values and meta-gradients",
                        worst < 1e-8 and all(v["truncated_agree"] for v in eng.values()), eng,
                        "max relative difference < 1e-8, same truncation decisions"))
    t0 = time.perf_counter()
    paths = write_csvs(res, exp_dir, FILE_PREFIX)
    res["config"] = cfg
    figures = plot(res, exp_dir)
    res["timing"]["output"] = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    res["timing"]["total"] = seconds
    summary = write_summary(exp_dir, NAME, checks, seconds, quick=quick, seed=seed,
                            config={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                            results=result_rows(res), timing=res["timing"], figures=figures, data=paths)
    summary["results"] = res
    return summary


def plot(results: Dict[str, Any], out_dir: str) -> List[str]:
    """Write E3-SGD's figures into ``out_dir`` (the same panels as E3)."""
    cfg = results.get("config", {})
    return plot_e3(results, out_dir, name=FILE_PREFIX, what=f"minibatch SGD, batch size {cfg.get('batch_size')}")
