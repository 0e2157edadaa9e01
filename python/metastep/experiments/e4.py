"""E4 — with many samples train-by-train catches up (paper Fig. 4, Theorem 6; SPEC §8).

The setting of E3 at σ = 1 (d = 1000, t = 40 GD steps, truncation at 40σ, the 25-point η grid)
for total sample sizes n ∈ {500, 1000, 2000, 4000, 8000}: train-by-train (TbT) trains and scores
on all n rows, train-by-validation (TbV) trains on n/2 and scores on the other n/2.  Every
(n, method) pair is tuned on the *same* m tasks — the rows are prefix-consistent, so the 500-row
tasks are the first 500 rows of the 8000-row ones — in one pass over the tasks
(:func:`metastep.tuning.grid_search_many`; n×n Gram matrices below d, d×d above, one block Krylov
space per distinct training size), and evaluated on 10 fresh test tasks with 1000 test rows.
m = 50 tasks by default (the per-task meta-objectives concentrate quickly as n grows; the
8000-row tasks dominate the cost).

Checks (issue 4): the TbT − TbV test-RMSE gap shrinks as n grows past the interpolation
threshold n = d until TbT is as good as TbV, and is below its n = 500 value for every n ≥ 2d;
for n ≥ 4d TbT's ‖w − w*‖² is within 20% of the least-squares estimator's expected error
σ²d/(n − d − 1) (Theorem 6's regime: TbT ≈ OLS, error → dσ²/n); meta-gradient descent lands
within one grid cell of the grid optimum.  Reported, not checked: the gap peaks at n = d, where
TbT's interpolation of the noise is worst (the double-descent peak of the min-norm solution,
kept finite by the 40 steps), and for n ≥ 4d the gap is negative: TbV trains on half the rows.
"""
from __future__ import annotations

import csv
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import tuning
from ..tasks import TaskFamily
from . import check, pyplot, write_summary
from .e3 import COLOR, LABEL, METHODS, _band, _errbar, grid_search_sweep, meta_gd_check, stats

NAME = "e4"
FULL: Dict[str, Any] = {"d": 1000, "ns": (500, 1000, 2000, 4000, 8000), "sigma": 1.0, "t": 40, "m": 50, "test_tasks": 10,
        "n_test": 1000, "meta_steps": 150, "eta0": 1e-3, "meta_lr": 0.3, "meta_beta2": 0.9}
QUICK: Dict[str, Any] = {"d": 200, "ns": (100, 200, 400, 800, 1600), "sigma": 1.0, "t": 40, "m": 40, "test_tasks": 20,
         "n_test": 400, "meta_steps": 150, "eta0": 1e-3, "meta_lr": 0.3, "meta_beta2": 0.9}
#: TbT's ‖w − w*‖² must be within this relative distance of σ²d/(n − d − 1) for n ≥ 4d
OLS_TOL = 0.20
#: the gap at the largest n must be at most this (TbT as good as TbV, up to test noise)
CATCH_UP_TOL = 0.02


def _families(cfg: Dict[str, Any], seed: int, stream: str, m: int,
              n_test: int = 0) -> List[Tuple[int, str, TaskFamily]]:
    out = []
    for n in cfg["ns"]:
        base = TaskFamily(cfg["d"], n, 0, n_test, cfg["sigma"], m, seed, stream, True)
        out.append((n, "tbt", base))
        out.append((n, "tbv", base.with_split(n // 2, n - n // 2)))
    return out


def ols_error(sigma: float, d: int, n: int) -> float:
    """E‖ŵ_OLS − w*‖² = σ² d / (n − d − 1) for Gaussian rows (n > d + 1)."""
    return sigma ** 2 * d / (n - d - 1) if n > d + 1 else math.inf


def run(out_dir: str, quick: bool = False, seed: int = 0, progress: bool = True, workers: Optional[int] = None,
        scheduler: Optional[str] = None) -> Dict[str, Any]:
    """Run E4 into ``out_dir/e4`` and return its summary (raw results under "results").

    The pass over the meta-training tasks (most of the time) is a sweep over chunks of tasks
    (:func:`metastep.experiments.e3.grid_search_sweep`): on ``workers`` local Dask processes or
    the cluster at ``scheduler`` if given; each finished chunk is kept in ``out_dir/e4/cells``
    and reused by a rerun.  Meta-GD and the test evaluation run in this process."""
    t_start = time.perf_counter()
    cfg = dict(QUICK if quick else FULL)
    exp_dir = os.path.join(out_dir, NAME)
    os.makedirs(exp_dir, exist_ok=True)
    d, t, sigma = cfg["d"], cfg["t"], float(cfg["sigma"])
    timing: Dict[str, float] = {}

    specs = _families(cfg, seed, "train", cfg["m"])
    t0 = time.perf_counter()
    sweep_info: Dict[str, Any] = {}
    grids, preps = grid_search_sweep([f for _, _, f in specs], t, ["train" if m == "tbt" else "valid"
                                                                   for _, m, _ in specs],
                                     sigmas=[sigma], cells_dir=os.path.join(exp_dir, "cells"), workers=workers,
                                     scheduler=scheduler, progress=progress,
                                     desc="E4 meta-training task chunks (all n, η)", info=sweep_info)
    timing["grid_search"] = time.perf_counter() - t0
    assert preps is not None
    grid = {(n, m): g for (n, m, _), g in zip(specs, grids)}

    t0 = time.perf_counter()
    meta = {}
    for (n, m, _), p in zip(specs, preps):
        meta[(n, m)] = tuning.meta_gradient_descent(p, sigma=sigma, eta0=cfg["eta0"], meta_steps=cfg["meta_steps"],
                                                    optimizer="adam", lr=cfg["meta_lr"], parametrization="log",
                                                    decay="sqrt", transform="log",
                                                    options={"beta2": cfg["meta_beta2"]})
    timing["meta_gd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tests = _families(cfg, seed, "test", cfg["test_tasks"], cfg["n_test"])
    runs = [(float(grid[(n, m)].best_eta[0]), sigma) for n, m, _ in tests]
    evs = tuning.evaluate_many(tests[-2][2], runs, t, views=[f for _, _, f in tests], progress=progress,
                               desc="E4 test tasks")
    ev = {(n, m): e for (n, m, _), e in zip(tests, evs)}
    timing["evaluation"] = time.perf_counter() - t0
    res = {"config": cfg, "grid": grid, "meta": meta, "evals": ev, "ns": list(cfg["ns"]), "timing": timing}

    ns = list(cfg["ns"])
    fin = lambda n, m, key: float(np.mean(getattr(ev[(n, m)], key)[:, -1]))  # noqa: E731
    gap = {n: fin(n, "tbt", "test_rmse") - fin(n, "tbv", "test_rmse") for n in ns}
    checks = []
    hi = [n for n in ns if n >= d]
    shrink = all(gap[b] < gap[a] for a, b in zip(hi, hi[1:]) if gap[a] > 0) and gap[hi[-1]] <= CATCH_UP_TOL
    checks.append(check("the TbT - TbV test-RMSE gap shrinks as n grows past n = d until TbT is as good as TbV",
                        shrink, {"gap": gap, "tbt": {n: fin(n, "tbt", "test_rmse") for n in ns},
                                 "tbv": {n: fin(n, "tbv", "test_rmse") for n in ns}},
                        f"decreasing over n >= d while positive, and <= {CATCH_UP_TOL} at n = {hi[-1]}"))
    big = [n for n in ns if n >= 2 * d]
    checks.append(check(f"the gap at every n >= 2d is below the gap at n = {ns[0]}",
                        all(gap[n] < gap[ns[0]] for n in big), {n: gap[n] for n in [ns[0]] + big},
                        f"gap(n) < gap({ns[0]})"))
    ols = [n for n in ns if n >= 4 * d]
    meas = {n: {"tbt_dist2": fin(n, "tbt", "dist2"), "sigma^2 d/(n-d-1)": ols_error(sigma, d, n),
                "relative_diff": fin(n, "tbt", "dist2") / ols_error(sigma, d, n) - 1.0,
                "d sigma^2 / n (Thm 6 limit)": d * sigma ** 2 / n} for n in ols}
    checks.append(check(f"for n >= 4d TbT's ||w - w*||^2 is within {OLS_TOL:.0%} of the least-squares error "
                        "sigma^2 d/(n-d-1) (Theorem 6)", all(abs(meas[n]["relative_diff"]) <= OLS_TOL for n in ols),
                        meas, f"|ratio - 1| <= {OLS_TOL}"))
    checks.append(meta_gd_check({f"{m} n={n}": (mg, float(grid[(n, m)].best_eta[0]), float(grid[(n, m)].best_value[0]))
                                 for (n, m), mg in meta.items()}, "the grid optimum"))
    peak = max(ns, key=lambda n: gap[n])
    observations = {"gap peaks at n": peak, "interpolation threshold n = d": d,
                    "gap <= 0 (TbT at least as good) for n": [n for n in ns if gap[n] <= 0]}

    t0 = time.perf_counter()
    rows = _rows(res)
    paths = _write(res, rows, exp_dir)
    figures = plot(res, exp_dir)
    timing["output"] = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    timing["total"] = seconds
    summary = write_summary(exp_dir, NAME, checks, seconds, quick=quick, seed=seed, sweep=sweep_info,
                            config={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                            results=rows, observations=observations, timing=timing, figures=figures, data=paths)
    summary["results"] = res
    return summary


def _rows(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    cfg = res["config"]
    rows = []
    for n in res["ns"]:
        for m in METHODS:
            e = res["evals"][(n, m)]
            g = res["grid"][(n, m)]
            row = {"n": n, "method": m, "n_train": n if m == "tbt" else n // 2, "eta_grid": float(g.best_eta[0]),
                   "eta_meta_gd": res["meta"][(n, m)].eta, "meta_objective": float(g.best_value[0]),
                   "ols_error": ols_error(cfg["sigma"], cfg["d"], n if m == "tbt" else n // 2)}
            for key, arr in (("train_rmse", e.train_rmse), ("test_rmse", e.test_rmse),
                             ("test_rmse_population", e.test_rmse_population), ("dist2", e.dist2)):
                for k2, v in stats(arr[:, -1]).items():
                    row[f"{key}_{k2}"] = v
            rows.append(row)
    return rows


def _write(res: Dict[str, Any], rows: List[Dict[str, Any]], exp_dir: str) -> List[str]:
    paths = []
    p = os.path.join(exp_dir, "e4_results.csv")
    with open(p, "w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=list(rows[0]))
        dw.writeheader()
        for r in rows:
            dw.writerow(r)
    paths.append(p)
    p = os.path.join(exp_dir, "e4_grid.csv")
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["n", "method", "eta", "meta_objective", "truncated_fraction", "is_grid_optimum"])
        for (n, m), g in res["grid"].items():
            for ei, e in enumerate(g.etas):
                w.writerow([n, m, repr(float(e)), repr(float(g.values[0, ei])), float(g.truncated_fraction[0, ei]),
                            int(ei == g.best_index[0])])
    paths.append(p)
    p = os.path.join(exp_dir, "e4_curves.csv")
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        head = ["n", "method", "eta", "step"]
        for key in ("train_rmse", "test_rmse", "dist2"):
            head += [f"{key}_mean", f"{key}_min", f"{key}_max"]
        w.writerow(head)
        for (n, m), e in res["evals"].items():
            for tau in range(e.steps + 1):
                row: List[Any] = [n, m, repr(e.eta), tau]
                for arr in (e.train_rmse, e.test_rmse, e.dist2):
                    col = arr[:, tau]
                    row += [repr(float(np.mean(col))), repr(float(np.min(col))), repr(float(np.max(col)))]
                w.writerow(row)
    paths.append(p)
    p = os.path.join(exp_dir, "e4_meta_gd.csv")
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["n", "method", "meta_step", "eta", "meta_objective", "meta_gradient"])
        for (n, m), mg in res["meta"].items():
            for k in range(mg.etas.size):
                w.writerow([n, m, k, repr(float(mg.etas[k])), repr(float(mg.values[k])), repr(float(mg.grads[k]))])
    paths.append(p)
    return paths


def plot(results: Dict[str, Any], out_dir: str) -> List[str]:
    """Write E4's figures into ``out_dir``."""
    plt = pyplot()
    cfg = results["config"]
    ns = np.array(results["ns"], dtype=float)
    d, sigma = cfg["d"], float(cfg["sigma"])
    ev = results["evals"]
    setting = (f"d={d}, σ={sigma:g}, t={cfg['t']}, m={cfg['m']} tasks, {cfg['test_tasks']} test tasks; "
               "TbT trains on n rows, TbV on n/2 + validates on n/2")
    paths = []
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 5))
    for m in METHODS:
        _errbar(a1, ns, [ev[(int(n), m)].test_rmse[:, -1] for n in ns], COLOR[m], LABEL[m])
        _errbar(a3, ns, [ev[(int(n), m)].dist2[:, -1] for n in ns], COLOR[m], LABEL[m])
    dense = np.geomspace(ns[0], ns[-1], 200)
    ok = dense >= 1.5 * d          # the OLS error σ²d/(n−d−1) blows up at n = d + 1
    a1.plot(dense[ok], np.sqrt(sigma ** 2 + sigma ** 2 * d / (dense[ok] - d - 1)),
            "k:", lw=1, label="OLS on n rows: √(σ² + σ²d/(n−d−1))")
    a1.axhline(math.sqrt(1 + sigma ** 2), color="k", ls="--", lw=0.8, label="zero predictor √(1+σ²)")
    gaps = [ev[(int(n), "tbt")].test_rmse[:, -1] - ev[(int(n), "tbv")].test_rmse[:, -1] for n in ns]
    _errbar(a2, ns, gaps, "tab:purple", "TbT − TbV test RMSE (paired, per test task)")
    a2.axhline(0.0, color="k", lw=0.8)
    a2.axvline(d, color="gray", ls=":", lw=1, label="n = d (interpolation threshold)")
    a3.plot(dense[ok], sigma ** 2 * d / (dense[ok] - d - 1), "k:", lw=1, label="σ²d/(n−d−1) (OLS error)")
    a3.plot(dense, d * sigma ** 2 / dense, "k-.", lw=0.8, label="dσ²/n (Theorem 6)")
    a3.axhline(1.0, color="k", ls="--", lw=0.8, label="zero predictor")
    for ax, yl, tt in ((a1, "test RMSE at step t", "test RMSE"), (a2, "gap in test RMSE", "TbT − TbV"),
                       (a3, "‖w_t − w*‖²", "distance to w* (log scale)")):
        ax.set_xscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([f"{int(n)}" for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("total samples per task n")
        ax.set_ylabel(yl)
        ax.set_title(tt, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    a3.set_yscale("log")
    fig.suptitle(f"E4: with more samples train-by-train stops overfitting — the gap to train-by-validation shrinks "
                 f"(peak at n = d) and TbT's error follows the least-squares rate\n({setting}; mean and min–max over "
                 f"test tasks)", fontsize=11)
    fig.tight_layout()
    p = os.path.join(out_dir, "e4_rmse_vs_n.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, ns.size + 1, figsize=(3.6 * (ns.size + 1), 4.6))
    for j, n in enumerate(ns):
        ax = axes[j]
        for m in METHODS:
            e = ev[(int(n), m)]
            _band(ax, np.arange(e.steps + 1), e.test_rmse, COLOR[m], f"{m.upper()} test (η={e.eta:.2g})")
            _band(ax, np.arange(e.steps + 1), e.train_rmse, COLOR[m], f"{m.upper()} train", ls="--")
        ax.set_title(f"n = {int(n)}", fontsize=10)
        ax.set_xlabel("inner step τ")
        ax.set_ylabel("RMSE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for m in METHODS:
        ax.loglog(ns, [results["grid"][(int(n), m)].best_eta[0] for n in ns], "o-", color=COLOR[m],
                  label=f"{m.upper()} grid η*")
        ax.loglog(ns, [results["meta"][(int(n), m)].eta for n in ns], "x--", color=COLOR[m], ms=9,
                  label=f"{m.upper()} meta-GD")
    ax.set_xlabel("total samples n")
    ax.set_ylabel("chosen step size η")
    ax.set_title("chosen η", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.suptitle(f"E4: RMSE along the inner GD run (mean, min–max band) and the chosen step sizes ({setting})",
                 fontsize=10)
    fig.tight_layout()
    p = os.path.join(out_dir, "e4_curves.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths
