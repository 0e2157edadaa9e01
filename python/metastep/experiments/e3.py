"""E3 — train-by-train vs train-by-validation on least squares (paper Fig. 3; SPEC §8).

Setting (the paper's): d = 1000, w* uniform on the unit sphere, x ~ N(0, I), y = ⟨w*, x⟩ + σξ,
t = 40 steps of GD from 0, m = 300 meta-training tasks, the truncation rule at 40σ.
Train-by-train (TbT) trains on n = 500 samples and scores the training loss; train-by-validation
(TbV) trains on 250 of the same samples and scores the other 250.  Each method picks η from the
25 log-spaced values in [1e−6, 1] by its meta-objective averaged over the m tasks, for
σ ∈ {0.25, 0.5, 1, 2, 4}; the chosen η is then run on 10 fresh test tasks (1000 held-out test
rows each) and train RMSE, test RMSE and ‖w − w*‖² are recorded at every step.

Common random numbers: every η, every σ and both methods are evaluated on the *same* tasks
(y = Xw* + σξ with the same X, w*, ξ; TbV uses the same rows split in two), in one pass over
the tasks (:func:`grid_search_sweep`, the computation of :func:`metastep.tuning.grid_search_many`
as a sweep over chunks of tasks that can run on a Dask cluster and resumes from
``OUT/e3/cells``: one Gram matrix and one block Krylov space per task and method serve all
25 η × 5 σ exactly).  Meta-gradient descent (Adam on log η) is
run on the same prepared tasks for every (method, σ) and must land within one grid cell of the
grid optimum (Adam with β₂ = 0.9 on log η, learning rate 0.3/√k, descending on log F — the
same minimizer as F, with scale-free meta-gradients); the fast path is cross-checked against
:func:`metastep.metagrad` (C++ engine,
forward mode) on one task.

Checks (issue 4): TbT interpolates (train RMSE < 0.1σ for σ ≥ 1); TbT's test RMSE exceeds
TbV's for σ ≥ 1 with the gap increasing in σ; η*_TbV decreases with σ; TbV's ‖w − w*‖² is below
TbT's for σ ≥ 1 and below 1 (better than the zero predictor, Theorem 5) for σ ≤ 2.
"""
from __future__ import annotations

import csv
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import tuning
from ..tasks import TaskFamily
from . import check, pyplot, write_summary

NAME = "e3"
FULL: Dict[str, Any] = {"d": 1000, "n": 500, "t": 40, "m": 300, "test_tasks": 10, "n_test": 1000,
        "sigmas": (0.25, 0.5, 1.0, 2.0, 4.0), "meta_steps": 150, "eta0": 1e-3, "meta_lr": 0.3, "meta_beta2": 0.9}
QUICK: Dict[str, Any] = {"d": 400, "n": 200, "t": 40, "m": 60, "test_tasks": 20, "n_test": 400,
         "sigmas": (0.25, 0.5, 1.0, 2.0, 4.0), "meta_steps": 150, "eta0": 1e-3, "meta_lr": 0.3, "meta_beta2": 0.9}
METHODS = ("tbt", "tbv")
LABEL = {"tbt": "train-by-train (TbT)", "tbv": "train-by-validation (TbV)"}
COLOR = {"tbt": "tab:red", "tbv": "tab:blue"}
#: one grid cell of the paper's grid, in decades
CELL = 6.0 / 24.0
#: a meta-GD result off by more than one cell still counts when its meta-objective is within this
#: relative distance of the grid optimum's (a flat objective: the η are equivalent)
FLAT_TOL = 1e-3


def meta_gd_check(pairs: Dict[str, Tuple[Any, float, float]], what: str) -> Dict[str, Any]:
    """One check over meta-GD runs: ``pairs[label] = (MetaGDResult, grid η, grid objective value)``.
    Passes when every run ends within one grid cell of the grid optimum, or (flat objective) at a
    meta-objective no worse than the grid optimum's up to a relative FLAT_TOL."""
    off, ok = {}, True
    for label, (mg, ge, gv) in pairs.items():
        dec = abs(math.log10(mg.eta / ge)) if mg.eta > 0 else math.inf
        fv = float(mg.values[-1])
        rel = (fv - gv) / abs(gv) if gv != 0 else math.inf
        within = dec <= CELL * (1 + 1e-9)
        flat = (not within) and math.isfinite(rel) and rel <= FLAT_TOL
        off[label] = {"eta_meta_gd": mg.eta, "eta_grid": ge, "decades_apart": dec,
                      "meta_objective_meta_gd": fv, "meta_objective_grid": gv, "relative_excess": rel,
                      "verdict": "within one cell" if within else ("flat objective: equivalent eta" if flat else "off")}
        ok &= within or flat
    return check(f"meta-GD (Adam on log eta, on log F) lands within one grid cell of {what} "
                 f"(or, where the meta-objective is flat, at a value within {FLAT_TOL:g} of the grid optimum's)",
                 ok, off, f"|log10(eta_meta_gd / eta_grid)| <= {CELL:g} (one cell of the 25-point grid)")


# ----------------------------------------------------------------------------- the grid search as a sweep
def prep_cell(d: int, seed: int, stream: Any, m: int, rows: int, splits: List[List[Any]], truncate: bool,
              steps: int, first: int, last: int) -> List[Dict[str, Any]]:
    """Sweep cell: the Ritz data (:class:`metastep.tuning.PreparedTasks` arrays) of meta-training
    tasks ``first``..``last - 1`` of the family (d, seed, stream, m) for every split
    ``[on, n_train, n_valid]``.  A pure function of its parameters (the tasks are drawn from the
    seed); the same chunks and arithmetic as :func:`metastep.tuning.prepare_many`."""
    fam = TaskFamily(d, rows, 0, 0, 1.0, m, seed, stream, bool(truncate))
    X, Y, U, _ = tuning._draw_chunk(fam, first, last, rows)
    sp = [tuning._Split(str(on), int(n1), int(nv)) for on, n1, nv in splits]
    return tuning._prep_chunk(X, Y, U if truncate else None, sp, int(steps))


def prepare_sweep(families: Sequence[TaskFamily], steps: int, on: Sequence[str], *, cells_dir: Optional[str] = None,
                  workers: Optional[int] = None, scheduler: Optional[str] = None, progress: bool = False,
                  desc: str = "tasks", info: Optional[Dict[str, Any]] = None) -> List[Any]:
    """:func:`metastep.tuning.prepare_many` as a sweep over chunks of tasks (one cell per chunk,
    the chunks prepare_many uses): in this process on two threads, on a local Dask cluster
    (``workers``) or an existing one (``scheduler``); each finished chunk is kept in
    ``cells_dir`` and reused by a rerun.  Returns bit-identical PreparedTasks; ``info`` (a
    dict), when given, receives where the cells ran and how many were computed or reused."""
    from .. import sweep
    if not families or len(on) != len(families):
        raise ValueError("give one 'on' per family and at least one family")
    d, seed, _stream, m = tuning._family_group(families)
    t = int(steps)
    splits: List[List[Any]] = []
    for f, o in zip(families, on):
        if o not in ("train", "valid"):
            raise ValueError(f"on must be 'train' or 'valid'; got {o!r}")
        if o == "valid" and f.n_valid == 0:
            raise ValueError("on='valid' needs a family with n_valid > 0")
        splits.append([o, f.n, f.n_valid if o == "valid" else 0])
    rows = max(n1 + nv for _, n1, nv in splits)
    truncate = any(f.truncate for f in families)
    bounds = tuning._chunks(m, tuning._chunk_size(rows, d))
    grid = [{"d": d, "seed": seed, "stream": families[0].stream, "m": m, "rows": rows, "splits": splits,
             "truncate": truncate, "steps": t, "first": a, "last": b} for a, b in bounds]
    start = time.perf_counter()
    res = sweep.run_sweep(prep_cell, grid, cells_dir=cells_dir, workers=workers, scheduler=scheduler,
                          threads=tuning._workers(), progress=progress, desc=desc)
    seconds = time.perf_counter() - start
    if info is not None:
        info.update(executor=res.executor, cells=len(res), computed=len(res.computed), loaded=len(res.loaded),
                    cells_dir=cells_dir)
    out = []
    for i, (f, (o, n1, nv)) in enumerate(zip(families, splits)):
        items = [r[i] for r in res.results]

        def cat(key: str) -> Any:  # an array, or None where the chunks do not have it
            if key not in items[0]:
                return None
            return np.concatenate([it[key] for it in items], axis=0)

        out.append(tuning.PreparedTasks(on=o, steps=t, space=items[0]["space"], n_train=n1, n_valid=nv,
                                        theta=cat("theta"), C=cat("C"), nu=cat("nu"), yy=cat("yy"), A=cat("A"),
                                        Mv=cat("Mv"), Yv=cat("Yv"), F_train=cat("F_train") if f.truncate else None,
                                        F_valid=cat("F_valid") if f.truncate else None, family=f, seconds=seconds))
    return out


def grid_search_sweep(families: Sequence[TaskFamily], steps: int, on: Sequence[str], *, sigmas: Any,
                      cells_dir: Optional[str] = None, workers: Optional[int] = None,
                      scheduler: Optional[str] = None, progress: bool = False, desc: str = "tasks",
                      info: Optional[Dict[str, Any]] = None) -> Tuple[List[Any], List[Any]]:
    """:func:`metastep.tuning.grid_search_many` (GD, the paper's grid, objective "final") with the
    pass over the tasks run by :func:`prepare_sweep`; the same results bit for bit."""
    start = time.perf_counter()
    etas = tuning.PAPER_GRID.copy()
    sig = np.atleast_1d(np.asarray(sigmas, dtype=float))
    preps = prepare_sweep(families, steps, on, cells_dir=cells_dir, workers=workers, scheduler=scheduler,
                          progress=progress, desc=desc, info=info)
    out = []
    for p in preps:
        res = p.objective(etas, sig, objective="final", grad=False)
        out.append(tuning._grid_result(etas, sig, res, p.on, "final", int(steps), None, time.perf_counter() - start))
    return out, preps


def families(cfg: Dict[str, Any], seed: int, stream: str = "train", m: Optional[int] = None,
             n_test: int = 0) -> Tuple[TaskFamily, TaskFamily]:
    """(TbT family, TbV family): the same rows, all for training vs split in two halves."""
    n = cfg["n"]
    tbt = TaskFamily(cfg["d"], n, 0, n_test, 1.0, cfg["m"] if m is None else m, seed, stream, True)
    return tbt, tbt.with_split(n // 2, n - n // 2)


def tune_and_evaluate(cfg: Dict[str, Any], seed: int, progress: bool, batch_size: Optional[int] = None,
                      tag: str = "E3", meta_tasks: Optional[int] = None,
                      meta_sigmas: Optional[Sequence[float]] = None, cells_dir: Optional[str] = None,
                      workers: Optional[int] = None, scheduler: Optional[str] = None) -> Dict[str, Any]:
    """Grid search, meta-GD and test evaluation for both methods and all σ (shared by E3 and
    its SGD variant).  GD: the pass over the meta-training tasks is a sweep over chunks of tasks
    (:func:`grid_search_sweep`; ``cells_dir``, ``workers``, ``scheduler``)."""
    timing: Dict[str, float] = {}
    sig = np.array(cfg["sigmas"], dtype=float)
    t = cfg["t"]
    tbt, tbv = families(cfg, seed)
    t0 = time.perf_counter()
    sweep_info: Dict[str, Any] = {}
    preps: Optional[List[Any]]
    if batch_size is None:
        grids, preps = grid_search_sweep([tbt, tbv], t, ["train", "valid"], sigmas=sig, cells_dir=cells_dir,
                                         workers=workers, scheduler=scheduler, progress=progress,
                                         desc=f"{tag} meta-training task chunks (all η, σ)", info=sweep_info)
    else:
        if workers is not None or scheduler is not None:
            raise ValueError("the SGD variant runs in this process only (no workers/scheduler)")
        grids, preps = tuning.grid_search_many([tbt, tbv], t, ["train", "valid"], sigmas=sig,
                                               batch_size=batch_size, progress=progress,
                                               desc=f"{tag} meta-training tasks (all η, σ)")
    timing["grid_search"] = time.perf_counter() - t0
    grid = {m: g for m, g in zip(METHODS, grids)}

    t0 = time.perf_counter()
    meta: Dict[str, Dict[float, tuning.MetaGDResult]] = {m: {} for m in METHODS}
    msig = list(sig) if meta_sigmas is None else list(meta_sigmas)
    sel = None if meta_tasks is None else list(range(meta_tasks))
    for mi, mth in enumerate(METHODS):
        src: Any = preps[mi] if preps is not None else (tbt if mth == "tbt" else tbv)
        mg_runs = tuning.meta_gradient_descent(
            src, t, on="train" if mth == "tbt" else "valid", sigma=[float(s) for s in msig], eta0=cfg["eta0"],
            meta_steps=cfg["meta_steps"], optimizer="adam", lr=cfg["meta_lr"], parametrization="log",
            decay="sqrt", transform="log", options={"beta2": cfg["meta_beta2"]}, batch_size=batch_size, tasks=sel,
            progress=progress)
        assert isinstance(mg_runs, list)
        for s, r in zip(msig, mg_runs):
            meta[mth][float(s)] = r
    timing["meta_gd"] = time.perf_counter() - t0

    # grid optimum on the subset the meta-GD used (the same tasks), when a subset was used
    grid_sub: Dict[str, Any] = {}
    if sel is not None:
        for mi, mth in enumerate(METHODS):
            per = grid[mth].per_task[sel]
            vals = np.mean(per, axis=0)
            bi = np.argmin(np.where(np.isfinite(vals), vals, np.inf), axis=1)
            grid_sub[mth] = [(float(grid[mth].etas[b]), float(vals[i, b])) for i, b in enumerate(bi)]

    t0 = time.perf_counter()
    test_t, test_v = families(cfg, seed, stream="test", m=cfg["test_tasks"], n_test=cfg["n_test"])
    runs: List[Tuple[float, float]] = []
    views: List[TaskFamily] = []
    keys: List[Tuple[str, float]] = []
    for mth, view in (("tbt", test_t), ("tbv", test_v)):
        for si, s in enumerate(sig):
            runs.append((float(grid[mth].best_eta[si]), float(s)))
            views.append(view)
            keys.append((mth, float(s)))
    evs = tuning.evaluate_many(test_t, runs, t, batch_size=batch_size, progress=progress, views=views,
                               desc=f"{tag} test tasks")
    timing["evaluation"] = time.perf_counter() - t0
    return {"grid": grid, "preps": preps, "meta": meta, "grid_subset": grid_sub,
            "evals": {k: e for k, e in zip(keys, evs)}, "sigmas": sig, "timing": timing,
            "meta_tasks": meta_tasks, "meta_sigmas": msig, "sweep": sweep_info}


def engine_check(cfg: Dict[str, Any], seed: int, preps: Sequence[Any], sigma: float = 1.0,
                 batch_size: Optional[int] = None, grid_results: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Fast path vs :func:`metastep.metagrad` (forward mode, C++ engine) on task 0, all grid η."""
    tbt, tbv = families(cfg, seed, m=1)
    out = {}
    for mi, (mth, fam, on) in enumerate((("tbt", tbt, "train"), ("tbv", tbv, "valid"))):
        eng = tuning.meta_objective(fam, tuning.PAPER_GRID, cfg["t"], on=on, sigma=[sigma], mode="forward",
                                    batch_size=batch_size)
        if batch_size is None:
            fast = preps[mi].losses(tuning.PAPER_GRID, [sigma], tasks=np.array([0]), grad=True)
            fv, fg = fast["loss"], fast["dloss"]
        else:
            fast = tuning.meta_objective(fam, tuning.PAPER_GRID, cfg["t"], on=on, sigma=[sigma],
                                         batch_size=batch_size)
            fv, fg = fast.per_task, fast.per_task_grad
        ev, eg = eng.per_task, eng.per_task_grad
        assert eg is not None and fg is not None
        rv = float(np.max(np.abs(fv - ev) / np.abs(ev)))
        scale = np.maximum(np.abs(eg), 1e-12 * np.max(np.abs(eg)))
        rg = float(np.max(np.abs(fg - eg) / scale))
        out[mth] = {"value_rel_diff": rv, "grad_rel_diff": rg,
                    "truncated_agree": bool(np.array_equal(eng.truncated, fast["truncated"] if batch_size is None
                                                           else fast.truncated))}
    return out


def stats(a: np.ndarray) -> Dict[str, float]:
    """Mean, min, max and sample standard deviation of ``a`` (std 0 for one value)."""
    return {"mean": float(np.mean(a)), "min": float(np.min(a)), "max": float(np.max(a)),
            "std": float(np.std(a, ddof=1)) if a.size > 1 else 0.0}


def result_rows(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One summary row per (method, σ): chosen η (grid and meta-GD) and train/test RMSE statistics."""
    rows = []
    for mth in METHODS:
        g = res["grid"][mth]
        for si, s in enumerate(res["sigmas"]):
            ev = res["evals"][(mth, float(s))]
            mg = res["meta"][mth].get(float(s))
            row = {"method": mth, "sigma": float(s), "eta_grid": float(g.best_eta[si]),
                   "meta_objective": float(g.best_value[si]),
                   "eta_meta_gd": float(mg.eta) if mg is not None else float("nan")}
            for key, arr in (("train_rmse", ev.train_rmse), ("test_rmse", ev.test_rmse),
                             ("test_rmse_population", ev.test_rmse_population), ("dist2", ev.dist2)):
                st = stats(arr[:, -1])
                for k2, v in st.items():
                    row[f"{key}_{k2}"] = v
            row["truncated_test_tasks"] = int(np.sum(ev.truncated_at >= 0))
            rows.append(row)
    return rows


def write_csvs(res: Dict[str, Any], exp_dir: str, name: str) -> List[str]:
    """Write the grid search, RMSE curves, per-(method, σ) results and meta-GD tables as ``<name>_*.csv``."""
    paths = []
    p = os.path.join(exp_dir, f"{name}_grid.csv")
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "sigma", "eta", "meta_objective", "truncated_fraction", "is_grid_optimum"])
        for mth in METHODS:
            g = res["grid"][mth]
            for si, s in enumerate(g.sigmas):
                for ei, e in enumerate(g.etas):
                    w.writerow([mth, s, repr(float(e)), repr(float(g.values[si, ei])),
                                float(g.truncated_fraction[si, ei]), int(ei == g.best_index[si])])
    paths.append(p)
    p = os.path.join(exp_dir, f"{name}_curves.csv")
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        head = ["method", "sigma", "eta", "step"]
        for key in ("train_rmse", "test_rmse", "test_rmse_population", "dist2"):
            head += [f"{key}_mean", f"{key}_min", f"{key}_max"]
        w.writerow(head)
        for (mth, s), ev in res["evals"].items():
            for tau in range(ev.steps + 1):
                row: List[Any] = [mth, s, repr(ev.eta), tau]
                for arr in (ev.train_rmse, ev.test_rmse, ev.test_rmse_population, ev.dist2):
                    col = arr[:, tau]
                    row += [repr(float(np.mean(col))), repr(float(np.min(col))), repr(float(np.max(col)))]
                w.writerow(row)
    paths.append(p)
    p = os.path.join(exp_dir, f"{name}_results.csv")
    rows = result_rows(res)
    with open(p, "w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=list(rows[0]))
        dw.writeheader()
        for r in rows:
            dw.writerow(r)
    paths.append(p)
    p = os.path.join(exp_dir, f"{name}_meta_gd.csv")
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "sigma", "meta_step", "eta", "meta_objective", "meta_gradient"])
        for mth in METHODS:
            for s, mg in res["meta"][mth].items():
                for k in range(mg.etas.size):
                    w.writerow([mth, s, k, repr(float(mg.etas[k])), repr(float(mg.values[k])),
                                repr(float(mg.grads[k]))])
    paths.append(p)
    return paths


def common_checks(res: Dict[str, Any], name_prefix: str = "", interpolation: bool = True) -> List[Dict[str, Any]]:
    """The issue's E3 checks on a tuning/evaluation result (GD or SGD)."""
    sig = [float(s) for s in res["sigmas"]]
    ev = res["evals"]
    fin = lambda mth, s, key: float(np.mean(getattr(ev[(mth, s)], key)[:, -1]))  # noqa: E731
    checks = []
    hi = [s for s in sig if s >= 1.0]
    if interpolation:
        meas = {s: {"tbt_train_rmse": fin("tbt", s, "train_rmse"), "0.1 sigma": 0.1 * s,
                    "max over test tasks": float(np.max(ev[("tbt", s)].train_rmse[:, -1]))} for s in hi}
        checks.append(check(f"{name_prefix}TbT interpolates: mean train RMSE at step t < 0.1*sigma for sigma >= 1",
                            all(fin("tbt", s, "train_rmse") < 0.1 * s for s in hi), meas, "< 0.1 sigma"))
    gaps = {s: fin("tbt", s, "test_rmse") - fin("tbv", s, "test_rmse") for s in sig}
    meas = {s: {"tbt": fin("tbt", s, "test_rmse"), "tbv": fin("tbv", s, "test_rmse"), "gap": gaps[s],
                "paired_t": _paired_t(ev[("tbt", s)].test_rmse[:, -1], ev[("tbv", s)].test_rmse[:, -1])} for s in sig}
    checks.append(check(f"{name_prefix}TbT test RMSE > TbV test RMSE for sigma >= 1 (mean over test tasks)",
                        all(gaps[s] > 0 for s in hi), meas, "gap = TbT - TbV > 0 for sigma >= 1"))
    checks.append(check(f"{name_prefix}the gap TbT - TbV test RMSE increases with sigma (sigma >= 1)",
                        all(gaps[a] < gaps[b] for a, b in zip(hi, hi[1:])), {s: gaps[s] for s in sig},
                        "strictly increasing over sigma >= 1"))
    ev_tbv = [float(res["grid"]["tbv"].best_eta[i]) for i in range(len(sig))]
    checks.append(check(f"{name_prefix}eta*_TbV decreases as sigma grows",
                        all(a > b for a, b in zip(ev_tbv, ev_tbv[1:])),
                        {"sigma": sig, "eta*_TbV": ev_tbv,
                         "eta*_TbT": [float(x) for x in res["grid"]["tbt"].best_eta]}, "strictly decreasing"))
    d2 = {s: {"tbt": fin("tbt", s, "dist2"), "tbv": fin("tbv", s, "dist2")} for s in sig}
    checks.append(check(f"{name_prefix}TbV mean ||w - w*||^2 below TbT's for sigma >= 1",
                        all(d2[s]["tbv"] < d2[s]["tbt"] for s in hi), {s: d2[s] for s in hi}, "tbv < tbt"))
    lo = [s for s in sig if s <= 2.0]
    checks.append(check(f"{name_prefix}TbV mean ||w - w*||^2 < 1 (better than the zero predictor, Thm 5) "
                        "for sigma <= 2",
                        all(d2[s]["tbv"] < 1.0 for s in lo), {s: d2[s]["tbv"] for s in lo}, "< 1"))
    pairs = {}
    for mth in METHODS:
        for s, mg in res["meta"][mth].items():
            si = sig.index(s)
            if res.get("grid_subset"):
                ge, gv = res["grid_subset"][mth][si]
            else:
                ge, gv = float(res["grid"][mth].best_eta[si]), float(res["grid"][mth].best_value[si])
            pairs[f"{mth} sigma={s:g}"] = (mg, float(ge), float(gv))
    what = "the grid optimum" + (f" (on the {res['meta_tasks']} tasks meta-GD used)" if res.get("grid_subset") else "")
    checks.append(meta_gd_check(pairs, what))
    return checks


def _paired_t(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    sd = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    return float(np.mean(d) / (sd / math.sqrt(d.size))) if sd > 0 else math.inf


def run(out_dir: str, quick: bool = False, seed: int = 0, progress: bool = True, workers: Optional[int] = None,
        scheduler: Optional[str] = None) -> Dict[str, Any]:
    """Run E3 into ``out_dir/e3`` and return its summary (raw results under "results").

    The pass over the meta-training tasks (most of the time) is a sweep over chunks of tasks:
    on ``workers`` local Dask processes or the cluster at ``scheduler`` if given; each finished
    chunk is kept in ``out_dir/e3/cells`` and a rerun reuses it.  Results are the same bits
    whatever runs the chunks; meta-GD and the test evaluation run in this process."""
    t_start = time.perf_counter()
    cfg = dict(QUICK if quick else FULL)
    exp_dir = os.path.join(out_dir, NAME)
    os.makedirs(exp_dir, exist_ok=True)
    res = tune_and_evaluate(cfg, seed, progress, cells_dir=os.path.join(exp_dir, "cells"), workers=workers,
                            scheduler=scheduler)
    t0 = time.perf_counter()
    eng = engine_check(cfg, seed, res["preps"])
    res["timing"]["engine_check"] = time.perf_counter() - t0
    checks = common_checks(res)
    worst = max(max(v["value_rel_diff"], v["grad_rel_diff"]) for v in eng.values())
    checks.append(check("fast path (Krylov/Ritz) == metastep.metagrad forward mode (C++ engine) on task 0, sigma=1, "
                        "all 25 eta: values and meta-gradients",
                        worst < 1e-8 and all(v["truncated_agree"] for v in eng.values()),
                        eng, "max relative difference < 1e-8, same truncation decisions"))
    t0 = time.perf_counter()
    paths = write_csvs(res, exp_dir, NAME)
    res["config"] = cfg
    figures = plot(res, exp_dir)
    res["timing"]["output"] = time.perf_counter() - t0
    seconds = time.perf_counter() - t_start
    res["timing"]["total"] = seconds
    summary = write_summary(exp_dir, NAME, checks, seconds, quick=quick, seed=seed, sweep=res["sweep"],
                            config={k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                            results=result_rows(res), timing=res["timing"], figures=figures, data=paths)
    summary["results"] = res
    return summary


# ----------------------------------------------------------------------------- figures
def _band(ax: Any, x: np.ndarray, arr: np.ndarray, color: str, label: str, ls: str = "-") -> None:
    ax.plot(x, np.mean(arr, axis=0), ls, color=color, lw=1.6, label=label)
    ax.fill_between(x, np.min(arr, axis=0), np.max(arr, axis=0), color=color, alpha=0.18, lw=0)


def _errbar(ax: Any, x: np.ndarray, arrs: List[np.ndarray], color: str, label: str, marker: str = "o") -> None:
    mean = np.array([np.mean(a) for a in arrs])
    lo = mean - np.array([np.min(a) for a in arrs])
    hi = np.array([np.max(a) for a in arrs]) - mean
    ax.errorbar(x, mean, yerr=[lo, hi], fmt=marker + "-", color=color, capsize=3, ms=5, lw=1.5, label=label)


def plot(results: Dict[str, Any], out_dir: str, name: str = NAME, what: str = "GD") -> List[str]:
    """Write E3's figures (or its SGD variant's) into ``out_dir``."""
    plt = pyplot()
    sig = np.array(results["sigmas"], dtype=float)
    ev = results["evals"]
    cfg = results.get("config", {})
    n_all = int(cfg.get("n", 0))
    setting = (f"d={cfg.get('d')}, n={n_all} (TbV {n_all // 2}+{n_all - n_all // 2}), "
               f"t={cfg.get('t')}, m={cfg.get('m')} tasks, {cfg.get('test_tasks')} test tasks; {what}")
    paths = []
    title = name.upper().replace("_", "-")  # E3, E3-SGD
    fits = ("interpolates the noisy labels" if what == "GD"
            else "fits the noisy labels (train RMSE well below σ)")

    # 1. RMSE vs sigma (paper Fig. 3)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 5))
    for mth in METHODS:
        _errbar(a1, sig, [ev[(mth, float(s))].train_rmse[:, -1] for s in sig], COLOR[mth], LABEL[mth])
        _errbar(a2, sig, [ev[(mth, float(s))].test_rmse[:, -1] for s in sig], COLOR[mth], LABEL[mth])
        _errbar(a3, sig, [ev[(mth, float(s))].dist2[:, -1] for s in sig], COLOR[mth], LABEL[mth])
    a1.plot(sig, 0.1 * sig, "k:", lw=1, label="0.1 σ")
    a1.plot(sig, sig, "k--", lw=0.8, label="σ (noise level)")
    a2.plot(sig, np.sqrt(1 + sig ** 2), "k--", lw=0.8, label="zero predictor √(1+σ²)")
    a2.plot(sig, sig, "k:", lw=0.8, label="noise floor σ")
    a3.axhline(1.0, color="k", ls="--", lw=0.8, label="zero predictor (‖w*‖² = 1)")
    for ax, yl, tt in ((a1, "train RMSE at step t", "train RMSE (log scale)"),
                       (a2, "test RMSE at step t", "test RMSE"),
                       (a3, "‖w_t − w*‖²", "distance to w* (log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sig)
        ax.set_xticklabels([f"{s:g}" for s in sig])
        ax.set_xlabel("label noise σ")
        ax.set_ylabel(yl)
        ax.set_title(tt, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    a1.set_yscale("log")
    a3.set_yscale("log")
    fig.suptitle(f"{title}: train-by-train {fits} and generalizes worse than "
                 f"train-by-validation, more so as σ grows\n({setting}; mean and min–max over test tasks)",
                 fontsize=11)
    fig.tight_layout()
    p = os.path.join(out_dir, f"{name}_rmse_vs_sigma.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # 2. per-step curves
    fig, axes = plt.subplots(2, sig.size, figsize=(3.4 * sig.size, 7), squeeze=False)
    for j, s in enumerate(sig):
        for mth in METHODS:
            e = ev[(mth, float(s))]
            x = np.arange(e.steps + 1)
            _band(axes[0, j], x, e.train_rmse, COLOR[mth], f"{mth.upper()} train (η={e.eta:.2g})")
            _band(axes[1, j], x, e.test_rmse, COLOR[mth], f"{mth.upper()} test (η={e.eta:.2g})")
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(f"σ = {s:g}", fontsize=10)
        axes[1, j].axhline(math.sqrt(1 + s * s), color="k", ls="--", lw=0.8, label="zero predictor")
        for i in range(2):
            axes[i, j].set_xlabel("inner step τ")
            axes[i, j].grid(alpha=0.3, which="both")
            axes[i, j].legend(fontsize=7)
        axes[0, j].set_ylabel("train RMSE (log)")
        axes[1, j].set_ylabel("test RMSE")
    fig.suptitle(f"{title}: RMSE along the inner run ({what}) with each method's chosen η "
                 f"(mean line, min–max band over test tasks)\nTbT drives the training error "
                 f"{'to ~0' if what == 'GD' else 'down'} and the test error up; TbV stops early ({setting})", fontsize=11)
    fig.tight_layout()
    p = os.path.join(out_dir, f"{name}_curves.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    # 3. meta-objective vs eta (relative to its value at the smallest η, i.e. about the loss at w = 0)
    import matplotlib
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, mth in zip(axes, METHODS):
        g = results["grid"][mth]
        lo = np.inf
        for si, s in enumerate(g.sigmas):
            col = cmap(si / max(1, g.sigmas.size - 1))
            ref = float(g.values[si, 0])
            v = np.where(np.isfinite(g.values[si]), g.values[si], np.nan) / ref
            tr = g.truncated_fraction[si] > 0
            ax.plot(g.etas[~tr], v[~tr], "o-", ms=3, lw=1, color=col, label=f"σ={s:g}: grid η*={g.best_eta[si]:.2g}")
            ax.plot(g.best_eta[si], g.best_value[si] / ref, "o", ms=10, mfc="none", mew=1.5, color=col)
            mg = results["meta"][mth].get(float(s))
            if mg is not None:
                ax.plot(mg.eta, mg.values[-1] / ref, "x", ms=10, mew=2, color=col)
            lo = min(lo, float(np.nanmin(v[~tr])))
            if np.any(tr):
                ax.axvspan(g.etas[tr][0] / 1.2, g.etas[-1] * 1.2, color="gray", alpha=0.04)
        ax.set_xscale("log")
        if mth == "tbt":
            ax.set_yscale("log")
        else:
            ax.set_ylim(lo - 0.05 * (1.0 - lo), 1.0 + 0.25 * (1.0 - lo))
        ax.set_xlabel("step size η")
        ax.set_ylabel("meta-objective / its value at η = 1e-6")
        ax.set_title(f"{LABEL[mth]}: mean {'training' if mth == 'tbt' else 'validation'} loss at step t\n"
                     "○ grid optimum, × meta-GD; shaded: η where tasks diverge (truncated at 40σ, off the chart)",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: the meta-objectives on the same tasks for every σ — TbT's optimum stays at the "
                 f"largest stable η, TbV's shrinks as σ grows\n({setting})", fontsize=10)
    fig.tight_layout()
    p = os.path.join(out_dir, f"{name}_meta_objective.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
