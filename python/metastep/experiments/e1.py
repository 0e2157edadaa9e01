"""E1 — meta-training the step size (paper Fig. 1; SPEC §8, issue 3).

Setting (the paper's): random quadratic d = 20 (H = XᵀX, X and w₀ Gaussian), t = 80 inner
steps, η₀ = 0.1, meta-GD η_k = max(0, η_{k−1} − μ_k G'(η_{k−1})) with μ_k = 1/(100√k), 1000
meta-steps on G(η) = (1/t) log f(w_t), 10 seeds.  η* is found independently
(:func:`metastep.meta_train.find_optimal_eta`: grid + bisection on the closed-form G').

What is measured:

* the paper case driven by the exact mode (float64) and by the scaled mode in float32:
  |η_1000 − η*|/η* per seed and its median;
* why some seeds are not yet within 1% at k = 1000: the random quadratics have L ≈ 55–80, so
  η* ≈ 2/L sits at the foot of a steep wall (G''(η*) ≈ 3·10³–2·10⁴) and the meta-step μ_k is
  too large for meta-GD to settle until μ_k·G''(η*) < 2, i.e. k > K_crit = (μ₀ G''(η*)/2)².
  Before that the iterates bounce off the wall (often to η = 0 and back).  The same runs are
  therefore continued to K_ext meta-steps, where every seed converges to η* to ~1e−16
  (exact) and ~1e−7 (float32, the rounding of η itself);
* a harder case, t = 1000 and η₀ = 1.0, reported as it comes out: seeds either converge, or
  end on the plateau below η* where G'(η) is tiny — G' is the mean of −2λᵢ/(1 − ηλᵢ) weighted
  by each direction's share of f(w_t), and by t = 1000 the slow directions (λ ≤ 0.05 L) carry
  almost all of the loss — or are still bouncing between 0 and beyond 2/L; each outcome is
  checked against that explanation (a seed fitting none of them fails the check);
* the same meta-training driven by plain reverse mode (back-propagation through the stored
  trajectory) in float32 and float64 on a grid of (t, η₀): it fails with a non-finite status
  (recorded with its meta-step and the engine's message) where exact and scaled modes run.
"""
from __future__ import annotations

import csv
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import problems
from ..meta_train import MetaTrainResult, find_optimal_eta, meta_train
from ..stability import eigen_data
from . import check, jsonable, progress_iter, pyplot, write_summary

NAME = "e1"
D = 20
MU0 = 0.01

FULL: Dict[str, Any] = {"seeds": 10, "K": 1000, "K_ext": 20000, "large": (1000, 1.0), "large_K": 1000,
        "grid_t": (80, 1000), "grid_eta0": (0.01, 0.1, 1.0), "grid_K": 1000}
QUICK: Dict[str, Any] = {"seeds": 3, "K": 1000, "K_ext": 10000, "large": (1000, 1.0), "large_K": 1000,
         "grid_t": (80, 1000), "grid_eta0": (0.1, 1.0), "grid_K": 300}

#: (mode, dtype) pairs driving meta-training
RANGE_SAFE = (("exact", "float64"), ("scaled", "float32"))
PLAIN = (("reverse", "float32"), ("reverse", "float64"))


def _label(mode: str, dtype: str) -> str:
    return f"{mode}/{dtype}"


def _outcome(res: MetaTrainResult, eta_star: float, problem: Any, t: int) -> Tuple[str, str]:
    """Classify a finished run and say why."""
    if res.failure is not None and not res.failure["finite"]:
        f = res.failure
        return "failed", f"non-finite meta-gradient at meta-step {f['meta_step']} (eta = {f['eta']:.4g}): {f['status']}"
    if res.failure is not None:
        return "failed", f"status not ok at meta-step {res.failure['meta_step']}: {res.failure['status']}"
    eta = res.eta
    rel = abs(eta - eta_star) / eta_star
    if rel < 0.01:
        return "converged", f"|eta_K - eta*|/eta* = {rel:.1e}"
    K = res.steps_done
    tail = res.etas[max(1, int(0.9 * K)):]
    two_over_L = 2.0 / problem.L
    if np.any(tail == 0.0) or np.any(tail > two_over_L):
        return "bouncing", (f"still hitting eta = 0 or jumping past 2/L in the last 10% of meta-steps "
                            f"(mu_K G''(eta*) > 2); eta_K/eta* = {eta / eta_star:.3f}")
    g = float(res.grads[K])
    share = _slow_share(problem, eta, t)
    if eta < eta_star and g < 0 and share >= 0.9:
        lam_min = float(problem.alpha)
        return "plateau", (f"below eta* on the plateau: {share:.1%} of f(w_t) sits in directions with lambda <= "
                           f"{SLOW:g} L, so G'(eta_K) = {g:.3g} is tiny (lambda_min = {lam_min:.3g}, -2 lambda_min/"
                           f"(1 - eta lambda_min) = {-2.0 * lam_min / (1.0 - eta * lam_min):.3g}); creeping at "
                           f"~mu_k |G'| = {MU0 / math.sqrt(K) * abs(g):.1e} per step, {eta_star - eta:.1e} to go")
    return "not converged", f"eta_K/eta* = {eta / eta_star:.3f}, G'(eta_K) = {g:.3g}, slow-direction share {share:.1%}"


SLOW = 0.05


def _slow_share(problem: Any, eta: float, t: int) -> float:
    """Share of the loss f(w_t) carried by the directions with λ ≤ SLOW·L (NumPy eigen-data).
    G'(η) is the mean of −2λᵢ/(1 − ηλᵢ) weighted by these shares, so when the slow directions
    carry almost all of the loss, G' is of the order of their (small) eigenvalues."""
    lam, c2 = eigen_data(problem)
    keep = lam > 0
    lam, c2 = lam[keep], c2[keep]
    with np.errstate(divide="ignore"):
        logs = np.log(c2 * lam) + 2 * t * np.log(np.abs(1.0 - eta * lam))
    w = np.exp(logs - logs.max())
    return float(w[lam <= SLOW * lam.max()].sum() / w.sum())


def _hist_rows(tag: str, seed: int, res: MetaTrainResult, K_dense: int) -> List[List[Any]]:
    rows = []
    n = len(res.statuses)
    ks = list(range(min(n, K_dense + 1))) + list(range(K_dense + 20, n, 20))
    if n - 1 not in ks:
        ks.append(n - 1)
    for k in ks:
        rows.append([tag, seed, res.config["mode"], res.config["dtype"], res.config["steps"], res.config["eta0"], k,
                     repr(float(res.etas[k])), repr(float(res.values[k])), repr(float(res.grads[k])), res.statuses[k]])
    return rows


def run(out_dir: str, quick: bool = False, seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Run E1 into ``out_dir/e1`` and return its summary (with the raw results under "results")."""
    t_start = time.perf_counter()
    cfg = QUICK if quick else FULL
    exp_dir = os.path.join(out_dir, NAME)
    os.makedirs(exp_dir, exist_ok=True)
    seeds = list(range(seed, seed + cfg["seeds"]))
    K, K_ext = cfg["K"], cfg["K_ext"]
    t_big, eta0_big = cfg["large"]
    hist: List[List[Any]] = []
    per_seed: List[Dict[str, Any]] = []
    paper_runs: Dict[Tuple[int, str], MetaTrainResult] = {}
    large_runs: Dict[Tuple[int, str], MetaTrainResult] = {}
    grid_runs: Dict[Tuple[int, int, float, str], Dict[str, Any]] = {}
    probs = {s: problems.random_quadratic(D, s) for s in seeds}
    stars: Dict[Tuple[int, int], Tuple[float, Dict[str, Any]]] = {}

    def star(s: int, t: int) -> Tuple[float, Dict[str, Any]]:
        if (s, t) not in stars:
            stars[(s, t)] = find_optimal_eta(probs[s], t, full_output=True)
        return stars[(s, t)]

    for s in progress_iter(seeds, progress, "E1 seeds"):
        q = probs[s]
        es, info = star(s, 80)
        rec: Dict[str, Any] = {"seed": s, "L": q.L, "lambda_min": q.alpha, "eta_star_80": es,
                               "curvature_80": info["curvature"],
                               "K_crit_80": (MU0 * info["curvature"] / 2.0) ** 2}
        # the paper case, continued to K_ext (its first K meta-steps are the K-step run exactly)
        for mode, dt in RANGE_SAFE:
            res = meta_train(q, 0.1, 80, K_ext, mode=mode, dtype=dt, lr=MU0, progress=False)
            paper_runs[(s, _label(mode, dt))] = res
            rel = np.abs(res.etas - es) / es
            bad = np.nonzero(rel >= 0.01)[0]
            lab = _label(mode, dt)
            rec[f"rel_err_K_{lab}"] = float(rel[K]) if len(rel) > K else math.inf
            rec[f"rel_err_Kext_{lab}"] = float(rel[-1]) if res.steps_done == K_ext else math.inf
            rec[f"within_1pct_from_{lab}"] = int(bad[-1] + 1) if len(bad) else 0
            rec[f"not_ok_{lab}"] = res.n_not_ok
            rec[f"flagged_{lab}"] = res.n_flagged
            rec[f"first_flag_{lab}"] = (None if res.first_flag is None else
                                        f"meta-step {res.first_flag['meta_step']}: {res.first_flag['status']} "
                                        f"(eta/eta* = {res.first_flag['eta'] / es:.6f}, estimated rel. error "
                                        f"{res.first_flag['grad_rel_error']:.1e})")
            hist += _hist_rows("paper", s, res, K)
        # the large case
        esb, infob = star(s, t_big)
        rec["eta_star_big"] = esb
        rec["curvature_big"] = infob["curvature"]
        for mode, dt in RANGE_SAFE:
            res = meta_train(q, eta0_big, t_big, cfg["large_K"], mode=mode, dtype=dt, lr=MU0, progress=False)
            large_runs[(s, _label(mode, dt))] = res
            kind, why = _outcome(res, esb, q, t_big)
            rec[f"big_outcome_{_label(mode, dt)}"] = kind
            rec[f"big_why_{_label(mode, dt)}"] = why
            rec[f"big_rel_err_{_label(mode, dt)}"] = abs(res.eta - esb) / esb
            rec[f"big_not_ok_{_label(mode, dt)}"] = res.n_not_ok
            hist += _hist_rows("large", s, res, cfg["large_K"])
        per_seed.append(rec)

    # plain reverse vs range-safe modes on a grid of (t, eta0)
    pairs = list(PLAIN) + list(RANGE_SAFE)
    todo = [(s, t, e0, m, dt) for s in seeds for t in cfg["grid_t"] for e0 in cfg["grid_eta0"] for m, dt in pairs]
    for s, t, e0, m, dt in progress_iter(todo, progress, "E1 reverse vs scaled", total=len(todo)):
        q = probs[s]
        lab = _label(m, dt)
        if t == 80 and e0 == 0.1 and (s, lab) in paper_runs:
            res = paper_runs[(s, lab)]
            res_K = _truncate(res, cfg["grid_K"])
        elif t == t_big and e0 == eta0_big and (s, lab) in large_runs:
            res_K = _truncate(large_runs[(s, lab)], cfg["grid_K"])
        else:
            res_K = meta_train(q, e0, t, cfg["grid_K"], mode=m, dtype=dt, lr=MU0, progress=False)
            if m == "reverse":
                hist += _hist_rows("grid", s, res_K, cfg["grid_K"])
        es, _ = star(s, t)
        kind, why = _outcome(res_K, es, q, t)
        grid_runs[(s, t, e0, lab)] = {"outcome": kind, "why": why, "eta_K": res_K.eta,
                                      "rel_err": abs(res_K.eta - es) / es,
                                      "failure": res_K.failure, "steps_done": res_K.steps_done,
                                      "etas": res_K.etas}

    # ---------------------------------------------------------------- checks
    checks: List[Dict[str, Any]] = []
    observations: Dict[str, Any] = {}
    for mode, dt in RANGE_SAFE:
        lab = _label(mode, dt)
        rels = np.array([r[f"rel_err_K_{lab}"] for r in per_seed])
        med = float(np.median(rels))
        item = {"median": med, "per_seed": dict(zip(map(str, seeds), rels.tolist())),
                "seeds_within_1pct": int(np.sum(rels < 0.01))}
        if quick:
            observations[f"paper case {lab}: relative error at K={K} (not checked in quick mode: a median of "
                         f"{len(seeds)} chaotic outcomes)"] = item
        else:
            checks.append(check(f"paper case (t=80, eta0=0.1) driven by {lab}: median |eta_{K} - eta*|/eta* over "
                                f"{len(seeds)} seeds", med < 0.01, item, "< 0.01"))
    tol_ext = {"exact/float64": 1e-9, "scaled/float32": 1e-5}
    for mode, dt in RANGE_SAFE:
        lab = _label(mode, dt)
        rels = np.array([r[f"rel_err_Kext_{lab}"] for r in per_seed])
        checks.append(check(f"paper case driven by {lab}: every seed converges to eta* once mu_k G''(eta*) < 2 "
                            f"(max |eta_k - eta*|/eta* at k={K_ext})", float(np.max(rels)) < tol_ext[lab],
                            {"max": float(np.max(rels)), "per_seed": dict(zip(map(str, seeds), rels.tolist()))},
                            f"< {tol_ext[lab]:g}"))
    # the 1000-step misses are explained by the local stability threshold
    unexplained = []
    for r in per_seed:
        for mode, dt in RANGE_SAFE:
            lab = _label(mode, dt)
            if r[f"rel_err_K_{lab}"] >= 0.01 and not (r["K_crit_80"] > K):
                unexplained.append((r["seed"], lab))
    checks.append(check(f"every seed not within 1% at k={K} has K_crit = (mu0 G''(eta*)/2)^2 > {K} "
                        f"(meta-GD not yet locally stable)", not unexplained,
                        {"unexplained": unexplained,
                         "K_crit": {str(r["seed"]): round(r["K_crit_80"]) for r in per_seed}},
                        "no unexplained seed"))
    # the range-safe modes never fail, whatever t and eta0
    failed_runs: List[Tuple[Any, Any]] = [(k, v["failure"]) for k, v in grid_runs.items() if k[3] in map(lambda p: _label(*p), RANGE_SAFE)
           and v["failure"] is not None]
    failed_runs += [(k, r.failure) for k, r in list(paper_runs.items()) + list(large_runs.items()) if r.failure is not None]
    checks.append(check("exact/float64 and scaled/float32 meta-training: no non-ok or non-finite meta-gradient "
                        "in any run (paper case, large case, (t, eta0) grid)", not failed_runs,
                        {"failures": [str(b) for b in failed_runs[:5]], "count": len(failed_runs)}, "0 failures"))
    # plain reverse mode fails where the range-safe modes run
    for lab in ("reverse/float32", "reverse/float64"):
        for t, e0 in ((80, 0.1), (t_big, eta0_big)):
            if lab == "reverse/float64" and t == 80:
                continue  # float64 survives the paper case (the paper's own float64 code ran it)
            outs = [grid_runs[(s, t, e0, lab)] for s in seeds]
            failed = [o for o in outs if o["outcome"] == "failed"]
            checks.append(check(f"plain {lab} meta-training fails at t={t}, eta0={e0} (non-finite status reported, "
                                f"eta never NaN)",
                                len(failed) == len(outs) and all(math.isfinite(o["eta_K"]) for o in outs),
                                {"failed_seeds": len(failed), "seeds": len(outs),
                                 "first": failed[0]["why"] if failed else None}, "all seeds"))
    # the large case: reported as it is, and every non-converged seed must fit the explanation
    for mode, dt in RANGE_SAFE:
        lab = _label(mode, dt)
        kinds = [r[f"big_outcome_{lab}"] for r in per_seed]
        counts = {k: kinds.count(k) for k in sorted(set(kinds))}
        unexpl = [r["seed"] for r in per_seed if r[f"big_outcome_{lab}"] in ("not converged", "failed")]
        checks.append(check(f"large case (t={t_big}, eta0={eta0_big}) driven by {lab}: every seed converges (<1%) or "
                            f"its stall is explained (plateau: >=90% of the loss in directions with lambda <= 0.05 L, "
                        f"so G' is tiny; or still bouncing)", not unexpl,
                            {"outcomes": counts, "unexplained_seeds": unexpl}, "no unexplained seed"))
        observations[f"large case {lab}: per seed"] = {str(r["seed"]): r[f"big_why_{lab}"] for r in per_seed}

    for mode, dt in RANGE_SAFE:
        lab = _label(mode, dt)
        observations[f"paper case {lab}: evaluations flagged 'cancellation: meta-gradient' (tolerated, used)"] = {
            str(r["seed"]): {"count": r[f"flagged_{lab}"], "first": r[f"first_flag_{lab}"]} for r in per_seed}

    # ---------------------------------------------------------------- data
    with open(os.path.join(exp_dir, "e1_history.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "seed", "mode", "dtype", "steps", "eta0", "k", "eta", "G", "dG", "status"])
        w.writerows(hist)
    with open(os.path.join(exp_dir, "e1_seeds.csv"), "w", newline="") as fh:
        keys = list(per_seed[0])
        dw = csv.DictWriter(fh, fieldnames=keys)
        dw.writeheader()
        for r in per_seed:
            dw.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    with open(os.path.join(exp_dir, "e1_grid.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "steps", "eta0", "mode", "outcome", "eta_K", "rel_err", "meta_steps_done", "why"])
        for (s, t, e0, lab), v in sorted(grid_runs.items()):
            w.writerow([s, t, e0, lab, v["outcome"], repr(v["eta_K"]), repr(v["rel_err"]), v["steps_done"], v["why"]])

    results = {"config": dict(cfg, seeds=seeds, quick=quick), "per_seed": per_seed, "paper_runs": paper_runs,
               "large_runs": large_runs, "grid_runs": grid_runs, "probs": probs}
    figures = plot(results, exp_dir)
    explanation = (
        "On these random quadratics L is about 55-80, so eta0 = 0.1 is far beyond the stable range 2/L and "
        "eta* sits just below 2/L, at the foot of a steep wall of G (G''(eta*) ~ 3e3-2e4). Meta-GD with "
        "mu_k = 0.01/sqrt(k) overshoots that wall until mu_k G''(eta*) < 2, i.e. for k < K_crit = (mu0 G''/2)^2, "
        "which for about half the seeds is beyond 1000: at k = 1000 those seeds are still bouncing (often off "
        "eta = 0) and their distance to eta* is a matter of where the bounce is. Continued runs converge for "
        "every seed. For t = 1000, below eta* the loss f(w_t) is carried by the slowest directions, so G' (the "
        "loss-weighted mean of -2 lambda_i/(1 - eta lambda_i)) is of the order of the smallest eigenvalues: seeds "
        "thrown towards eta ~ 0 creep back too slowly; others keep bouncing. Plain reverse "
        "mode fails at the first meta-step wherever the loss leaves the type's range (float32 already in the "
        "paper case).")
    summary = write_summary(exp_dir, NAME, checks, time.perf_counter() - t_start, quick=quick, seed=seed,
                            seeds=seeds, figures=figures, observations=observations, explanation=explanation,
                            per_seed=per_seed)
    summary["results"] = results
    return summary


def _truncate(res: MetaTrainResult, K: int) -> MetaTrainResult:
    """The first K meta-steps of a longer run (identical to a K-step run: the schedule is the same)."""
    if res.steps_done <= K:
        return res
    from dataclasses import replace
    return replace(res, etas=res.etas[:K + 1], values=res.values[:K + 1], grads=res.grads[:K + 1],
                   log_abs_grads=res.log_abs_grads[:K + 1], sign_grads=res.sign_grads[:K + 1],
                   statuses=res.statuses[:K + 1], lrs=res.lrs[:K], steps_done=K, meta_steps=K,
                   grad_rel_errors=None if res.grad_rel_errors is None else res.grad_rel_errors[:K + 1],
                   first_flag=(res.first_flag if res.first_flag is not None and res.first_flag["meta_step"] <= K + 1
                               else None),
                   n_flagged=sum(1 for s in res.statuses[:K + 1] if s != "ok") if res.first_flag else 0,
                   failure=(res.failure if res.failure is not None and res.failure["meta_step"] <= K + 1 else None),
                   n_not_ok=(sum(1 for s in res.statuses[:K + 1] if s != "ok") if res.failure else 0),
                   stopped=False, stop_reason="")


# ---------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------

def plot(results: Dict[str, Any], out_dir: str) -> List[str]:
    """Write E1's figures into ``out_dir`` and return their paths."""
    plt = pyplot()
    paths = []
    cfg = results["config"]
    seeds = cfg["seeds"]
    K, K_ext = cfg["K"], cfg["K_ext"]
    per = {r["seed"]: r for r in results["per_seed"]}
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]

    # --- figure 1: the paper case, one panel per seed
    n = len(seeds)
    ncol = min(n, 5)
    nrow = int(math.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol + 0.6, 2.7 * nrow + 0.9), squeeze=False,
                             sharex=True, sharey=True)
    floor = 1e-2
    for i, s in enumerate(seeds):
        a = axes[i // ncol, i % ncol]
        es = per[s]["eta_star_80"]
        ex = results["paper_runs"][(s, "exact/float64")]
        sc = results["paper_runs"][(s, "scaled/float32")]
        k = np.arange(1, K + 1)
        a.semilogy(k, np.maximum(ex.etas[1:K + 1] / es, floor), color="C0", lw=0.8, label="exact, float64")
        a.semilogy(k, np.maximum(sc.etas[1:K + 1] / es, floor), color="C1", lw=0.8, ls="--", alpha=0.8,
                   label="scaled, float32")
        a.axhline(1.0, color="k", ls=":", lw=1.2, label="η*")
        a.axhline(2.0 / (per[s]["L"] * es), color="C3", ls="-", lw=0.6, alpha=0.6, label="2/L")
        a.set_xscale("log")
        a.set_ylim(floor * 0.8, 40)
        r_ex, r_sc = per[s]["rel_err_K_exact/float64"], per[s]["rel_err_K_scaled/float32"]
        a.set_title(f"seed {s}: η*={es:.4f}, K_crit≈{per[s]['K_crit_80']:.0f}\n"
                    f"|η_{K}−η*|/η*: {r_ex:.0e} (exact), {r_sc:.0e} (f32)", fontsize=7.5)
        a.grid(alpha=0.3, which="major")
        if i % ncol == 0:
            a.set_ylabel("η_k / η*  (η=0 drawn at 0.01)", fontsize=8)
        if i // ncol == nrow - 1:
            a.set_xlabel("meta-step k", fontsize=8)
        if i == 0:
            a.legend(fontsize=6.5, loc="upper right")
    for j in range(n, nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    fig.suptitle(f"E1, paper case: meta-GD on G with μ_k = 1/(100√k), d=20, t=80, η0=0.1 — η_k per seed "
                 f"relative to the exact minimiser η*\n(bouncing between η=0 and beyond 2/L until μ_k·G''(η*) < 2, "
                 f"i.e. k > K_crit; then convergence)", fontsize=9)
    fig.tight_layout()
    p = os.path.join(out_dir, "e1_paper_case.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, a2 = plt.subplots(figsize=(8, 5))
    kk = np.arange(1, K_ext + 1)
    for i, s in enumerate(seeds):
        col = cmap(i % 10)
        es = per[s]["eta_star_80"]
        for lab, ls in (("exact/float64", "-"), ("scaled/float32", "--")):
            res = results["paper_runs"][(s, lab)]
            rel = np.abs(res.etas[1:] - es) / es
            a2.loglog(kk[: len(rel)], np.maximum(rel, 1e-17), color=col, lw=0.7, ls=ls,
                      alpha=0.9 if ls == "-" else 0.6, label=f"seed {s}" if ls == "-" else None)
        a2.plot([per[s]["K_crit_80"]], [3.0], marker="v", color=col, ms=7)
    a2.axhline(0.01, color="red", ls="--", lw=1)
    a2.text(1.5, 0.013, "1%", color="red", fontsize=8)
    a2.axvline(K, color="grey", ls=":", lw=1)
    a2.text(K * 1.05, 1e-15, f"k = {K}", color="grey", fontsize=8, rotation=90)
    a2.set_xlabel("meta-step k")
    a2.set_ylabel("|η_k − η*| / η*")
    a2.set_ylim(1e-17, 30)
    a2.set_title(f"E1 paper case continued to k = {K_ext}: every seed converges once μ_k·G''(η*) < 2\n"
                 "solid: exact/float64 (to ~1e-16), dashed: scaled/float32 (to ~1e-7);  ▼ K_crit = (μ0·G''(η*)/2)²",
                 fontsize=9)
    a2.grid(alpha=0.3, which="both")
    a2.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    p = os.path.join(out_dir, "e1_convergence.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # --- figure 2: the large case
    t_big, eta0_big = cfg["large"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    marker = {"converged": "o", "plateau": "s", "bouncing": "^", "not converged": "x", "failed": "X"}
    for i, s in enumerate(seeds):
        col = cmap(i % 10)
        res = results["large_runs"][(s, "exact/float64")]
        es = per[s]["eta_star_big"]
        kind = per[s]["big_outcome_exact/float64"]
        k = np.arange(0, res.steps_done + 1)
        a1.semilogy(k[1:], np.maximum(res.etas[1:] / es, 1e-2), color=col, lw=0.9, label=f"seed {s}: {kind}")
        a1.plot([k[-1]], [max(res.etas[-1] / es, 1e-2)], marker=marker.get(kind, "o"), color=col, ms=7)
        with np.errstate(divide="ignore"):
            a2.semilogy(k[1:], np.abs(res.grads[1:]), color=col, lw=0.7, alpha=0.8)
    a1.axhline(1.0, color="k", ls=":", lw=1)
    a1.set_xscale("log")
    a1.set_ylim(0.8e-2, 60)
    a1.set_xlabel("meta-step k")
    a1.set_ylabel("η_k / η*  (η = 0 drawn at 0.01)")
    a1.set_title(f"Harder case t={t_big}, η0={eta0_big} (exact mode): outcome per seed at k={cfg['large_K']}\n"
                 "plateau = stalled below η*, G' tiny (loss carried by the slow directions); bouncing = μ_k G'' > 2",
                 fontsize=9)
    a1.legend(fontsize=7, loc="upper left", ncol=2)
    a1.grid(alpha=0.3)
    a2.set_xscale("log")
    a2.set_xlabel("meta-step k")
    a2.set_ylabel("|G'(η_k)|")
    a2.set_title("|G'(η_k)| along the runs: tiny on the plateau (order of the small eigenvalues),\n"
                 "large past the wall η > 2/L", fontsize=9)
    a2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    p = os.path.join(out_dir, "e1_large_t.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # --- figure 3: plain reverse vs range-safe modes
    grid = results["grid_runs"]
    labs = [_label(*p) for p in PLAIN + RANGE_SAFE]
    cases = [(t, e0) for t in cfg["grid_t"] for e0 in cfg["grid_eta0"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [1.25, 1]})
    Z = np.zeros((len(labs), len(cases)))
    for i, lab in enumerate(labs):
        for j, (t, e0) in enumerate(cases):
            outs = [grid[(s, t, e0, lab)] for s in seeds]
            nf = sum(o["outcome"] == "failed" for o in outs)
            nc = sum(o["outcome"] == "converged" for o in outs)
            Z[i, j] = nf / len(outs)
            fails = [o["failure"] for o in outs if o["failure"] is not None]
            txt = f"failed {nf}/{len(outs)}\nconverged {nc}/{len(outs)}"
            if fails:
                f0 = fails[0]
                txt += f"\nmeta-step {f0['meta_step']}: {f0['status'].split(':')[0]}\n{f0['status'].split(':', 1)[-1].strip()}"
            a1.text(j, i, txt, ha="center", va="center", fontsize=6.5, color="white" if Z[i, j] > 0.5 else "black")
    a1.imshow(Z, cmap="Reds", vmin=0, vmax=1.3, aspect="auto")
    a1.set_xlabel("case (inner steps t, initial step size η0); red: share of seeds whose run failed")
    a1.set_xticks(range(len(cases)))
    a1.set_xticklabels([f"t={t}\nη0={e0}" for t, e0 in cases], fontsize=8)
    a1.set_yticks(range(len(labs)))
    a1.set_yticklabels(labs, fontsize=8)
    a1.set_title(f"Meta-training driven by each mode ({len(seeds)} seeds, {cfg['grid_K']} meta-steps): "
                 "plain reverse fails\nwhere the loss leaves the type's range; exact and scaled never do",
                 fontsize=9)
    s0 = seeds[0]
    es = per[s0]["eta_star_80"]
    styles = {"exact/float64": ("k", "-"), "scaled/float32": ("C2", "--"), "reverse/float64": ("C0", "-."),
              "reverse/float32": ("C3", ":")}
    for lab in labs:
        o = grid[(s0, 80, 0.1, lab)]
        colour, ls = styles[lab]
        k = np.arange(len(o["etas"]))
        a2.plot(np.maximum(k, 0.8), o["etas"], color=colour, ls=ls, lw=1.2, label=lab)
        if o["failure"] is not None:
            a2.plot([max(o["failure"]["meta_step"] - 1, 0.8)], [o["failure"]["eta"]], "X", color="red", ms=12)
            a2.annotate(f"{lab}: {o['failure']['status']}", (max(o["failure"]["meta_step"] - 1, 0.8),
                        o["failure"]["eta"]), xytext=(3, 0.16), fontsize=7, color="red",
                        arrowprops={"arrowstyle": "->", "color": "red"})
    a2.axhline(es, color="grey", ls=":", lw=1)
    a2.text(1.2, es * 1.15, "η*", color="grey")
    a2.set_xscale("log")
    a2.set_ylim(0, 0.65)
    a2.set_xlabel("meta-step k")
    a2.set_ylabel("step size η_k")
    a2.set_title(f"Paper case, seed {s0}: reverse/float32 dies at the first meta-step (✗)", fontsize=9)
    a2.legend(fontsize=7, loc="center right")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    p = os.path.join(out_dir, "e1_reverse_vs_scaled.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
