"""The numerical-stability study (SPEC claims 1–3, §4.5, §5; issue 3).

:func:`stability_study` sweeps mode × precision × t × η on one problem, computes every
meta-gradient and compares it with an oracle — the closed form (``mode="exact"``) in the widest
compiled precision (``mp`` when it is compiled) — and reports, per cell, the status, the
relative error of G'(η) (and of the meta-objective and of F' derived from them through log
magnitudes, so that nothing overflows), and, per (mode, precision, η), the first t at which the
computation fails.  It writes CSV and Markdown tables, a summary with the acceptance checks of
issue 3, and figures.

The theory side is computed here independently of the compiled engine, from a NumPy
eigen-decomposition of H: :func:`theory_rate` (Theorem 3: log|F'(η)| grows like
t·2·log maxᵢ|1 − ηλᵢ|), :func:`grad_log_bound` (|G'(η)| ≤ 2·maxᵢ λᵢ/|1 − ηλᵢ| for every t) and
:func:`fit_growth_rate` (the measured rate: least squares of log|F'| = a + b·t + c·log t).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import api
from .problems import LeastSquares, Quadratic

__all__ = ["stability_study", "StabilityReport", "default_problem", "widest_precision", "theory_rate",
           "grad_log_bound", "fit_growth_rate", "rel_error", "eigen_data", "PRECISION_ORDER", "STUDY_MODES"]

#: Precisions from narrowest to widest (only the compiled ones are used).
PRECISION_ORDER = ("float32", "float64", "longdouble", "quad", "mp")
#: Modes swept by default (``auto`` and the ``scaled`` alias are left out).
STUDY_MODES = ("reverse", "checkpoint", "forward", "scaled_forward", "scaled_reverse", "exact", "fd")
#: Issue 3 tolerances on G' per precision (scaled modes, every cell).
ACCEPT_TOL = {"float32": 1e-3, "float64": 1e-10, "quad": 1e-25, "mp": 1e-25}
_BYTES_FALLBACK = {"quad": 16, "mp": 64}


def _precisions() -> Tuple[str, ...]:
    from . import PRECISIONS
    return tuple(PRECISIONS)


def widest_precision(precisions: Optional[Iterable[str]] = None) -> str:
    """The widest of ``precisions`` (default: all compiled ones) in the order float32 < float64 <
    longdouble < quad < mp."""
    precs = list(_precisions() if precisions is None else precisions)
    known = [p for p in PRECISION_ORDER if p in precs]
    if not known:
        raise ValueError(f"no known precision among {precs}")
    return known[-1]


def _itemsize(dtype: str) -> int:
    try:
        return int(api.itemsize(dtype))
    except (KeyError, ValueError, TypeError):
        return _BYTES_FALLBACK.get(dtype, 64)


# ------------------------------------------------------------------------------------------------
# problems and theory
# ------------------------------------------------------------------------------------------------

def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix from Gram–Schmidt (twice) on a Gaussian matrix, computed in
    long double by NumPy's own loops (no BLAS/LAPACK), so the same seed gives the same bits."""
    A = rng.standard_normal((d, d)).astype(np.longdouble)
    Q = np.zeros_like(A)
    for j in range(d):
        v = A[:, j].copy()
        for _ in range(2):
            if j:
                coef = Q[:, :j].T @ v
                v = v - Q[:, :j] @ coef
        Q[:, j] = v / np.sqrt(np.sum(v * v))
    return Q


def default_problem(seed: int = 0, d: int = 100, eig_min: float = 0.01, eig_max: float = 1.0) -> Quadratic:
    """The study's problem: H = Q diag(λ) Qᵀ with λ = geomspace(eig_min, eig_max, d), Q a seeded
    random orthogonal basis, and w₀ ~ N(0, I) (w* = 0).  Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    Q = _orthogonal(int(d), rng)
    lam = np.geomspace(eig_min, eig_max, int(d)).astype(np.longdouble)
    H = ((Q * lam) @ Q.T).astype(np.float64)
    H = 0.5 * (H + H.T)
    w0 = rng.standard_normal(int(d))
    return Quadratic(H, w0)


def eigen_data(problem: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(λᵢ, cᵢ²) of a quadratic from NumPy's eigh (independent of the compiled engine); for least
    squares H = XᵀX/n and c is the projection of w₀ − w̄ (w̄ a least-squares minimiser)."""
    if isinstance(problem, Quadratic):
        lam, U = np.linalg.eigh(problem.H)
        c = U.T @ (problem.w0 - problem.w_star)
    elif isinstance(problem, LeastSquares):
        H = problem.X.T @ problem.X / problem.n
        lam, U = np.linalg.eigh(0.5 * (H + H.T))
        wbar = np.linalg.lstsq(problem.X, problem.y, rcond=None)[0]
        c = U.T @ (problem.w0 - wbar)
    else:
        raise TypeError(f"expected a Quadratic or LeastSquares, not {type(problem).__name__}")
    lam = np.clip(lam, 0.0, None)
    return lam, c * c


def _active(problem: Any) -> Tuple[np.ndarray, np.ndarray]:
    lam, c2 = eigen_data(problem)
    w = c2 * lam
    keep = (lam > 1e-12 * max(lam.max(), 1e-300)) & (w > 1e-30 * max(w.max(), 1e-300))
    return lam[keep], c2[keep]


def theory_rate(problem: Any, eta: Any) -> np.ndarray:
    """2·log maxᵢ|1 − ηλᵢ| over the directions the start point excites (cᵢ ≠ 0, λᵢ > 0): the
    exponential growth rate in t of |F'(η)| and of f(w_t) (Theorem 3)."""
    lam, _ = _active(problem)
    e = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    with np.errstate(divide="ignore"):
        r = 2.0 * np.log(np.max(np.abs(1.0 - np.outer(e, lam)), axis=1))
    return r if np.ndim(eta) else r[0]


def grad_log_bound(problem: Any, eta: Any) -> np.ndarray:
    """2·maxᵢ λᵢ/|1 − ηλᵢ|: a bound on |G'(η)| that holds for every t (G' is a weighted mean of
    −2λᵢ/(1 − ηλᵢ) with weights ∝ cᵢ²λᵢ(1 − ηλᵢ)^{2t})."""
    lam, _ = _active(problem)
    e = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    with np.errstate(divide="ignore"):
        b = 2.0 * np.max(lam / np.abs(1.0 - np.outer(e, lam)), axis=1)
    return b if np.ndim(eta) else b[0]


def separation(problem: Any, eta: Any, t: int = 100) -> np.ndarray:
    """How much the leading term of F'(η) = −t Σ cᵢ²λᵢ²(1 − ηλᵢ)^{2t−1} dominates the rest at
    step t: Σ_{others}|term| / |leading term| (small means the asymptotic rate already holds)."""
    lam, c2 = _active(problem)
    e = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    with np.errstate(divide="ignore"):
        logs = np.log(c2 * lam * lam)[None, :] + (2 * t - 1) * np.log(np.abs(1.0 - np.outer(e, lam)))
    top = np.max(logs, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        s = np.sum(np.exp(logs - top), axis=1) - 1.0
    return s if np.ndim(eta) else s[0]


#: Natural log of the largest finite number of each fixed-range precision (mp: unbounded).
LOG_MAX = {"float32": math.log(float(np.finfo(np.float32).max)),
           "float64": math.log(float(np.finfo(np.float64).max)),
           "longdouble": float(np.log(np.finfo(np.longdouble).max)),
           "quad": 11356.523406294143}


def overflow_step(problem: Any, eta: float, dtype: str, t_max: int) -> Optional[int]:
    """First inner step τ ≤ t_max at which the exact loss ½ Σ cᵢ²λᵢ(1 − ηλᵢ)^{2τ} (NumPy
    eigen-data, log domain) exceeds the largest finite number of ``dtype``; None if it never does
    (or the precision has no fixed range)."""
    if dtype not in LOG_MAX:
        return None
    lam, c2 = _active(problem)
    with np.errstate(divide="ignore"):
        base = np.log(0.5 * c2 * lam)
        lr = 2.0 * np.log(np.abs(1.0 - eta * lam))
    # log f(w_τ) is convex in τ and dominated by max_i (base_i + τ lr_i); scan in blocks
    limit = LOG_MAX[dtype]
    start = 0
    while start <= t_max:
        taus = np.arange(start, min(start + 65536, t_max + 1))
        logs = base[None, :] + taus[:, None] * lr[None, :]
        top = np.max(logs, axis=1)
        logf = top + np.log(np.sum(np.exp(logs - top[:, None]), axis=1))
        over = np.nonzero(logf > limit)[0]
        if len(over):
            return int(taus[over[0]])
        start += 65536
    return None


def fit_growth_rate(problem: Any, etas: Any, ts: Optional[Sequence[int] | np.ndarray] = None, *, mode: str = "scaled",
                    dtype: str = "float64") -> Dict[str, np.ndarray]:
    """Measured exponential growth rate of |F'(η)| in t.

    F'(η) (``objective="final"``) is computed by ``mode`` in ``dtype`` for every t in ``ts``
    (default 19 values from 100 to 1000) as a log magnitude, and log|F'| = a + b·t + c·log t is
    fitted by least squares for each η.  Returns arrays ``rate`` (b), ``a``, ``c``,
    ``max_residual``, ``ok`` (all runs ok and finite), and ``ts``/``etas``."""
    etas = np.atleast_1d(np.asarray(etas, dtype=np.float64))
    t_arr = np.unique(np.linspace(100, 1000, 19).astype(int)) if ts is None else np.asarray(ts, dtype=int)
    logs = np.empty((len(t_arr), len(etas)))
    ok = np.ones(len(etas), dtype=bool)
    for j, t in enumerate(t_arr):
        r = api.metagrad(problem, etas, int(t), objective="final", mode=mode, dtype=dtype)
        logs[j] = np.asarray(r.log_abs_grad, dtype=np.float64)
        ok &= np.asarray(r.ok) & np.isfinite(logs[j])
    A = np.column_stack([np.ones(len(t_arr)), t_arr.astype(float), np.log(t_arr.astype(float))])
    Y = np.where(np.isfinite(logs), logs, 0.0)
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    resid = np.max(np.abs(A @ coef - Y), axis=0)
    return {"rate": coef[1], "a": coef[0], "c": coef[2], "max_residual": resid, "ok": ok, "ts": t_arr, "etas": etas,
            "log_abs_grad": logs}


# ------------------------------------------------------------------------------------------------
# relative errors without overflow
# ------------------------------------------------------------------------------------------------

def _mp_text_rel(text: Any, ref_text: Any) -> Optional[float]:
    if text is None or ref_text is None:
        return None
    try:
        import mpmath
    except ImportError:
        return None
    with mpmath.workprec(400):
        x, y = mpmath.mpf(str(text)), mpmath.mpf(str(ref_text))
        if y == 0:
            return 0.0 if x == 0 else math.inf
        return float(abs((x - y) / y))


def rel_error(log_abs: float, sign: int, ref_log_abs: float, ref_sign: int, *, ext: Any = None,
              ref_ext: Any = None, text: Any = None, ref_text: Any = None) -> float:
    """|x − ref|/|ref| from whatever represents the two numbers best: exact decimal strings
    (quad/mp, through mpmath), long double copies (when both are finite and non-zero), or else
    log magnitudes and signs (never overflows; resolution ≈ ulp(log|x|)).  A NaN or a wrong
    sign gives inf (a failure), never a small number."""
    r = _mp_text_rel(text, ref_text)
    if r is not None:
        return r
    if ref_sign == 0:
        return 0.0 if sign == 0 else math.inf
    if not (isinstance(log_abs, (int, float, np.floating)) and math.isfinite(float(log_abs))) or sign != ref_sign:
        return math.inf
    if ext is not None and ref_ext is not None:
        xe, ye = np.longdouble(ext), np.longdouble(ref_ext)
        if np.isfinite(xe) and np.isfinite(ye) and ye != 0 and xe != 0:
            return float(abs((xe - ye) / ye))
    return abs(math.expm1(float(log_abs) - float(ref_log_abs)))


def _pick(a: Any, i: int) -> Any:
    if a is None:
        return None
    if isinstance(a, (list, tuple, np.ndarray)):
        return a[i]
    return a


# ------------------------------------------------------------------------------------------------
# the study
# ------------------------------------------------------------------------------------------------

@dataclass
class StabilityReport:
    """Result of :func:`stability_study`.

    ``rows``: one dict per (mode, dtype, objective, t, η) cell (see :data:`ROW_FIELDS`).
    ``first_fail``: per (mode, dtype, objective, η) the first t whose status is not ok or whose
    relative error of the meta-gradient exceeds ``tol`` (None: never within the sweep), and
    ``first_not_ok`` the same for the status alone.  ``checks``: issue 3's acceptance checks
    that this sweep can decide.  ``skipped``: cells not run, with the reason."""

    problem: str
    oracle: str
    steps: List[int]
    etas: List[float]
    modes: List[str]
    dtypes: List[str]
    objectives: List[str]
    tol: float
    rows: List[Dict[str, Any]] = field(default_factory=list)
    first_fail: Dict[Tuple[str, str, str, float], Optional[int]] = field(default_factory=dict)
    first_not_ok: Dict[Tuple[str, str, str, float], Optional[int]] = field(default_factory=dict)
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    checks: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    executor: str = "in-process"

    @property
    def passed(self) -> bool:
        """Whether every acceptance check passed."""
        return all(c["passed"] for c in self.checks)

    def first_fail_table(self) -> List[Dict[str, Any]]:
        """Rows (mode, dtype, objective, η, first failing t) of the first-failure table."""
        out = []
        for (mode, dt, obj, eta), t in self.first_fail.items():
            out.append({"mode": mode, "dtype": dt, "objective": obj, "eta": eta, "first_fail_t": t,
                        "first_not_ok_t": self.first_not_ok.get((mode, dt, obj, eta))})
        return out

    def markdown(self) -> str:
        """The study as a Markdown report (tables, skipped cells, notes)."""
        return _markdown(self)

    def write(self, out_dir: str) -> Dict[str, str]:
        """Write the CSV/Markdown/JSON outputs into ``out_dir``; returns their paths by kind."""
        return _write(self, out_dir)


ROW_FIELDS = ("mode", "dtype", "objective", "eta", "steps", "status", "ok", "grad", "log_abs_grad", "sign_grad",
              "ref_grad", "ref_log_abs_grad", "ref_sign_grad", "rel_err_grad", "rel_err_loss", "rel_err_F",
              "fail_kind", "fail_quantity", "fail_step", "seconds", "skipped", "inferred_from_t")


def _diag_field(diag: Any, key: str) -> Any:
    if isinstance(diag, dict):
        return diag.get(key)
    return None


def stability_study(problem: Any = None, modes: Optional[Sequence[str]] = None,
                    dtypes: Optional[Sequence[str]] = None,
                    steps: Sequence[int] = (10, 100, 1000, 10**4, 10**5),
                    etas: Sequence[float] = (0.5, 1.5, 2.5), objective: str = "log",
                    out_dir: Optional[str] = None, progress: bool = True, *, tol: float = 1e-6,
                    seed: int = 0, oracle_dtype: Optional[str] = None, memory_limit: int = 2**30,
                    max_cell_seconds: float = 120.0, plot: bool = True, workers: Optional[int] = None,
                    scheduler: Optional[str] = None, resume: bool = True) -> StabilityReport:
    """Sweep mode × precision × t × η and compare every meta-gradient with the closed form.

    Parameters
    ----------
    problem : Quadratic or LeastSquares, optional
        Default :func:`default_problem` (d = 100, eigenvalues geomspace(0.01, 1), ``seed``).
    modes : sequence of str, optional
        Default :data:`STUDY_MODES` (every mode but ``auto`` and the ``scaled`` alias).
    dtypes : sequence of str, optional
        Default every compiled precision (``metastep.PRECISIONS``).
    steps : sequence of int
        Horizons t.
    etas : sequence of float
        Step sizes (absolute values; the default problem has L = 1, so 2.5 is outside the
        stable range 2/L).
    objective : {"log", "final", "both"}
        Meta-objective(s) whose gradient is studied: G' (``"log"``), F' (``"final"``) or both.
        With ``"log"`` the relative error of F' is still reported, derived from the log
        magnitudes (log|F'| = log t + t·G + log|G'|).
    out_dir : str, optional
        Where to write ``stability.csv``, ``stability.md``, ``first_fail.csv``,
        ``summary.json`` and the figures.
    progress : bool
        tqdm progress bar over the cells.
    tol : float
        Relative error above which a cell counts as failed (first failing t).
    oracle_dtype : str, optional
        Precision of the exact-mode oracle (default: the widest compiled, ``mp`` when present).
    memory_limit : int
        Bytes a stored trajectory may take; larger reverse-mode cells are skipped with the reason.
    max_cell_seconds : float
        Cells predicted (from the same mode and precision at the previous t) to take longer are
        skipped with the reason.
    plot : bool
        Write the figures (needs matplotlib) when ``out_dir`` is given.
    workers, scheduler : optional
        Run the cells — one per (mode, precision, objective), all t and η — on a local Dask
        cluster of ``workers`` processes or on the cluster at ``scheduler``
        (:func:`metastep.sweep.run_sweep`); the rows are the same as in-process, in the same
        order (only the timing fields and time-guarded skips can differ).
    resume : bool
        With ``out_dir``: keep each finished cell in ``out_dir/cells`` and reuse the cells found
        there (a rerun of an interrupted study computes only the missing cells).  False: compute
        everything and keep no cell files.
    """
    t_start = time.perf_counter()
    from .sweep import validate_executor
    validate_executor(workers, scheduler)
    if problem is None:
        problem = default_problem(seed)
        pname = f"default_problem(seed={seed}): d=100, eigenvalues geomspace(0.01, 1, 100), random basis, w0 ~ N(0, I)"
    else:
        pname = repr(problem)
    compiled = _precisions()
    dtypes = list(compiled if dtypes is None else dtypes)
    for dt in dtypes:
        if dt not in compiled:
            raise ValueError(f"dtype {dt!r} is not compiled into this build; available: {', '.join(compiled)}")
    modes = list(STUDY_MODES if modes is None else modes)
    for m in modes:
        if m not in api.MODES:
            raise ValueError(f"unknown mode {m!r}; expected some of {', '.join(api.MODES)}")
    if objective not in ("log", "final", "both"):
        raise ValueError(f"objective must be 'log', 'final' or 'both'; got {objective!r}")
    objectives = ["log", "final"] if objective == "both" else [objective]
    steps = sorted(int(s) for s in steps)
    eta_arr = np.asarray(etas, dtype=np.float64)
    odt = oracle_dtype or widest_precision(compiled)
    report = StabilityReport(problem=pname, oracle=f"mode='exact' in {odt}", steps=steps,
                             etas=[float(e) for e in eta_arr], modes=modes, dtypes=dtypes, objectives=objectives,
                             tol=float(tol))

    # the oracle: one batched closed-form call per (objective, t)
    oracle: Dict[Tuple[str, int], Any] = {}
    for obj in objectives:
        for t in steps:
            oracle[(obj, t)] = api.metagrad(problem, eta_arr, t, objective=obj, mode="exact", dtype=odt)
            # the loss of the log objective is needed for F' derived rel errors; keep the log oracle too
        if obj == "final" and "log" not in objectives:
            for t in steps:
                oracle[("log", t)] = api.metagrad(problem, eta_arr, t, objective="log", mode="exact", dtype=odt)

    # one sweep cell per (mode, precision, objective): its horizons run in order inside the cell,
    # since a cell reuses what smaller t found (non-finite runs, time per step size)
    pdata = _problem_params(problem)
    grid: List[Dict[str, Any]] = []
    for mode in modes:
        for dt in dtypes:
            for obj in objectives:
                grid.append({"problem": pdata, "mode": mode, "dtype": dt, "objective": obj, "steps": steps,
                             "etas": [float(e) for e in eta_arr],
                             "oracle": {str(t): _oracle_data(oracle[(obj, t)]) for t in steps},
                             "oracle_log": {str(t): _oracle_data(oracle[("log", t)]) for t in steps},
                             "memory_limit": int(memory_limit), "max_cell_seconds": float(max_cell_seconds)})
    from . import sweep
    cells_dir = None if out_dir is None or not resume else os.path.join(out_dir, "cells")
    res = sweep.run_sweep(study_cell, grid, cells_dir=cells_dir, workers=workers, scheduler=scheduler,
                          progress=progress, desc="stability study",
                          priority=[_cost_estimate(c["mode"], c["dtype"], steps) for c in grid])
    for out in res.results:
        report.rows.extend(out["rows"])
        report.skipped.extend(out["skipped"])
    report.executor = res.executor

    _first_failures(report)
    _acceptance(report)
    report.seconds = time.perf_counter() - t_start
    if out_dir is not None:
        report.write(out_dir)
        if plot:
            plot_study(report, out_dir, problem)
    return report


#: Rough relative cost of one step per precision and per mode (measured on a d = 100 study); used
#: only to start the longest cells first.
_DTYPE_COST = {"float32": 1.0, "float64": 1.0, "longdouble": 1.5, "quad": 8.0, "mp": 30.0}
_MODE_COST = {"checkpoint": 2.0, "fd": 2.0, "exact": 0.05}


def _cost_estimate(mode: str, dtype: str, steps: Sequence[int]) -> float:
    return float(sum(steps)) * _DTYPE_COST.get(dtype, 30.0) * _MODE_COST.get(mode, 1.0)


class _Oracle:
    """Oracle values of one (objective, t) as plain data (attribute access like a result)."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.__dict__.update(data)


_ORACLE_FIELDS = ("grad", "log_abs_grad", "sign_grad", "grad_ext", "grad_text", "value", "log_abs_value")


def _oracle_data(r: Any) -> Dict[str, Any]:
    out = {}
    for k in _ORACLE_FIELDS:
        v = getattr(r, k, None)
        out[k] = list(v) if isinstance(v, (list, tuple)) else (np.asarray(v) if v is not None else None)
    return out


def _problem_params(problem: Any) -> Dict[str, Any]:
    if isinstance(problem, Quadratic):
        return {"kind": "quadratic", "H": problem.H, "w0": problem.w0, "w_star": problem.w_star}
    if isinstance(problem, LeastSquares):
        return {"kind": "least_squares", "X": problem.X, "y": problem.y, "X_valid": problem.X_valid,
                "y_valid": problem.y_valid, "w0": problem.w0}
    raise TypeError(f"problem must be a Quadratic or LeastSquares, not {type(problem).__name__}")


def _problem_from_params(p: Dict[str, Any]) -> Any:
    if p["kind"] == "quadratic":
        return Quadratic(p["H"], p["w0"], p["w_star"])
    return LeastSquares(p["X"], p["y"], p["X_valid"], p["y_valid"], p["w0"])


def study_cell(problem: Dict[str, Any], mode: str, dtype: str, objective: str, steps: List[int], etas: List[float],
               oracle: Dict[str, Dict[str, Any]], oracle_log: Dict[str, Dict[str, Any]], memory_limit: int,
               max_cell_seconds: float) -> Dict[str, List[Dict[str, Any]]]:
    """One sweep cell of :func:`stability_study`: every horizon t and step size η of one (mode,
    precision, objective), in increasing t.  Returns ``{"rows": [...], "skipped": [...]}``.

    A pure function of its parameters except for the time guard (a cell predicted from the
    previous t to take longer than ``max_cell_seconds`` is skipped) and the ``seconds`` field."""
    from .sweep import cell_threads
    prob = _problem_from_params(problem)
    mode, dt, obj = mode, dtype, objective
    eta_arr = np.asarray(etas, dtype=np.float64)
    d = prob.d
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    prev: Optional[Tuple[int, float]] = None   # (t, seconds per step size) of the last cell run
    dead: Dict[int, Dict[str, Any]] = {}          # eta index -> row where the run became non-finite
    for t in steps:
        alive = [i for i in range(len(eta_arr)) if i not in dead]
        if mode in _PLAIN_MODES and isinstance(prob, Quadratic):
            doomed = []
            for i in alive:
                tau = overflow_step(prob, float(eta_arr[i]), dt, t)
                if tau is not None and tau < t // 2:
                    doomed.append(i)
                    why = (f"predicted non-finite: the exact loss exceeds the largest {dt} at inner step "
                           f"{tau} of {t}; not run, since the engine keeps iterating on inf/NaN for the "
                           f"remaining steps (minutes in x87 long double)")
                    rows.append({"mode": mode, "dtype": dt, "objective": obj, "eta": float(eta_arr[i]), "steps": t,
                                 "status": "skipped", "ok": None, "skipped": why})
                    skipped.append({"mode": mode, "dtype": dt, "objective": obj, "steps": t, "reason": why,
                                    "etas": [float(eta_arr[i])]})
            alive = [i for i in alive if i not in doomed]
        for i, drow in dead.items():
            # GD with a constant step size runs the same first steps for every horizon: a run that
            # became non-finite in its forward sweep at step tau < t' fails at tau for every t >= t'.
            rows.append(dict(drow, steps=t, seconds=0.0, inferred_from_t=drow["steps"],
                             rel_err_grad=math.inf, rel_err_loss=math.inf, rel_err_F=math.inf))
        if not alive:
            continue
        reason = None
        if mode in ("reverse", "scaled_reverse"):
            need = (t + 1) * d * _itemsize(dt)
            if need > memory_limit:
                reason = (f"memory: {mode} would store {t + 1} states of dimension {d} in {dt} "
                          f"({need / 2**20:.0f} MiB > limit {memory_limit / 2**20:.0f} MiB)")
        if reason is None and prev is not None and prev[1] > 0:
            predicted = prev[1] * len(alive) * t / prev[0]
            if predicted > max_cell_seconds:
                reason = (f"time: predicted {predicted:.0f} s (from {prev[1] * len(alive):.2f} s at "
                          f"t={prev[0]}) > limit {max_cell_seconds:.0f} s")
        if reason is None:
            t0 = time.perf_counter()
            try:
                r = api.metagrad(prob, eta_arr[alive], t, objective=obj, mode=mode, dtype=dt, threads=cell_threads())
            except (ValueError, MemoryError) as exc:
                reason = f"refused: {exc}"
            sec = time.perf_counter() - t0
        if reason is not None:
            skipped.append({"mode": mode, "dtype": dt, "objective": obj, "steps": t, "reason": reason,
                            "etas": [float(eta_arr[i]) for i in alive]})
            for i in alive:
                rows.append({"mode": mode, "dtype": dt, "objective": obj, "eta": float(eta_arr[i]), "steps": t,
                             "status": "skipped", "ok": None, "skipped": reason})
            continue
        prev = (t, sec / len(alive))
        ref = _Oracle(oracle[str(t)])
        ref_log = _Oracle(oracle_log[str(t)])
        for j, i in enumerate(alive):
            row = _row(mode, dt, obj, float(eta_arr[i]), t, r, j, ref, ref_log, i, sec / len(alive))
            rows.append(row)
            if (row["fail_kind"] == "non-finite" and row["fail_quantity"] in _FORWARD_QUANTITIES
                    and row["fail_step"] is not None and int(row["fail_step"]) < t):
                dead[i] = row
    return {"rows": rows, "skipped": skipped}


#: Modes that iterate in the working precision without rescaling (they overflow).
_PLAIN_MODES = ("reverse", "checkpoint", "forward", "fd")
#: Quantities computed forward in time (their failure step does not depend on the horizon t).
_FORWARD_QUANTITIES = ("iterate", "loss", "tangent")


def _row(mode: str, dt: str, obj: str, eta: float, t: int, r: Any, j: int, ref: Any, ref_log: Any, i: int,
         sec: float) -> Dict[str, Any]:
    """One cell: result ``r[j]`` against the oracle ``ref[i]``."""
    status = _pick(r.status, j)
    diag = _pick(r.diagnostics, j)
    lag, sg = float(_pick(r.log_abs_grad, j)), int(_pick(r.sign_grad, j))
    rlag, rsg = float(_pick(ref.log_abs_grad, i)), int(_pick(ref.sign_grad, i))
    rel_g = rel_error(lag, sg, rlag, rsg, ext=_pick(r.grad_ext, j), ref_ext=_pick(ref.grad_ext, i),
                      text=_pick(getattr(r, "grad_text", None), j), ref_text=_pick(getattr(ref, "grad_text", None), i))
    # relative error of the loss f(w_t): from the log objective value (t·ΔG) or from log|F|
    if obj == "log":
        v, rv = float(_pick(r.value, j)), float(_pick(ref.value, i))
        with np.errstate(invalid="ignore", over="ignore"):
            rel_loss = abs(math.expm1(t * (v - rv))) if math.isfinite(v) else math.inf
        # F' = t·f·G'  →  log|F'| = log t + t·G + log|G'|
        rel_F = (abs(math.expm1(t * (v - rv) + (lag - rlag))) if (math.isfinite(v) and math.isfinite(lag)
                                                                    and sg == rsg) else math.inf)
        if rsg == 0 and sg == 0:
            rel_F = 0.0
    else:
        lv = float(_pick(r.log_abs_value, j))
        rlv = float(_pick(ref.log_abs_value, i))
        rel_loss = abs(math.expm1(lv - rlv)) if math.isfinite(lv) else math.inf
        rel_F = rel_g
    if not math.isfinite(rel_loss) and rel_loss == rel_loss:
        rel_loss = math.inf
    return {"mode": mode, "dtype": dt, "objective": obj, "eta": eta, "steps": t, "status": status,
            "ok": status == "ok", "grad": float(_pick(r.grad, j)), "log_abs_grad": lag, "sign_grad": sg,
            "ref_grad": float(_pick(ref.grad, i)), "ref_log_abs_grad": rlag, "ref_sign_grad": rsg,
            "rel_err_grad": rel_g, "rel_err_loss": rel_loss, "rel_err_F": rel_F,
            "fail_kind": _diag_field(diag, "kind"), "fail_quantity": _diag_field(diag, "quantity"),
            "fail_step": _diag_field(diag, "step"), "seconds": sec, "skipped": None, "inferred_from_t": None}


def _failed(row: Dict[str, Any], tol: float) -> bool:
    if row.get("skipped"):
        return False
    e = row["rel_err_grad"]
    return (not row["ok"]) or not (e <= tol)


def _first_failures(report: StabilityReport) -> None:
    groups: Dict[Tuple[str, str, str, float], List[Dict[str, Any]]] = {}
    for row in report.rows:
        groups.setdefault((row["mode"], row["dtype"], row["objective"], row["eta"]), []).append(row)
    for key, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["steps"])
        ff = next((r["steps"] for r in rows if _failed(r, report.tol)), None)
        fn = next((r["steps"] for r in rows if not r.get("skipped") and not r["ok"]), None)
        report.first_fail[key] = ff
        report.first_not_ok[key] = fn


def _check(name: str, passed: bool, measured: Any, expected: Any) -> Dict[str, Any]:
    return {"name": name, "passed": bool(passed), "measured": measured, "expected": expected}


def _acceptance(report: StabilityReport) -> None:
    """Issue 3's acceptance checks, as far as this sweep covers them."""
    rows = [r for r in report.rows if not r.get("skipped") and r["objective"] == "log"]
    oracle_dt = report.oracle.split()[-1]
    for dt, tol in ACCEPT_TOL.items():
        if dt not in report.dtypes:
            continue
        if tol < 1e-18 and oracle_dt != "mp":
            report.notes.append(f"{dt}: the ≤ {tol:g} check needs the mp oracle; the oracle here is {oracle_dt}")
            continue
        for mode in ("scaled_forward", "scaled_reverse"):
            sel = [r for r in rows if r["mode"] == mode and r["dtype"] == dt]
            if dt == "quad":   # "where their range allows": quad cells whose iterates stayed in range
                sel = [r for r in sel if r["ok"] or r["fail_kind"] == "cancellation"]
            if not sel:
                continue
            worst = max(sel, key=lambda r: (r["rel_err_grad"] if r["rel_err_grad"] == r["rel_err_grad"] else math.inf))
            err = worst["rel_err_grad"]
            report.checks.append(_check(
                f"{mode} {dt}: G' relative error in every cell (t x eta)", err <= tol,
                {"max_rel_err": err, "worst_cell": {"eta": worst["eta"], "steps": worst["steps"]}, "cells": len(sel)},
                f"<= {tol:g}"))
    # the range-safe modes must also *say* that they are fine: a non-ok status on an accurate
    # value is a false alarm that stops meta-training and hides nothing but costs trust
    for mode in ("scaled_forward", "scaled_reverse"):
        sel = [r for r in rows if r["mode"] == mode and r["dtype"] in ACCEPT_TOL]
        if not sel:
            continue
        bad = [r for r in sel if not r["ok"]]
        report.checks.append(_check(
            f"{mode}: status ok in every cell ({', '.join(d for d in ACCEPT_TOL if d in report.dtypes)})", not bad,
            {"not_ok": len(bad), "cells": len(sel),
             "first": None if not bad else {"dtype": bad[0]["dtype"], "eta": bad[0]["eta"], "steps": bad[0]["steps"],
                                            "status": bad[0]["status"], "rel_err_grad": bad[0]["rel_err_grad"]}},
            "0 cells not ok"))
    skipped_acc = [s for s in report.skipped if s["mode"] in ("scaled_forward", "scaled_reverse")
                   and s["dtype"] in ACCEPT_TOL and s["objective"] == "log"]
    if skipped_acc:
        report.notes.append("scaled-mode cells skipped (not covered by the checks above): " +
                            "; ".join(f"{s['mode']} {s['dtype']} t={s['steps']}: {s['reason']}" for s in skipped_acc))
    # plain reverse in float64 at eta = 2.5, t = 1000 must report the failure (issue 3)
    sel = [r for r in rows if r["mode"] == "reverse" and r["dtype"] == "float64" and r["steps"] == 1000
           and abs(r["eta"] - 2.5) < 1e-12]
    if sel:
        r = sel[0]
        names = bool(r["fail_quantity"]) and r["fail_step"] is not None and str(r["fail_step"]) in str(r["status"])
        report.checks.append(_check("reverse float64 at eta=2.5, t=1000: non-ok status naming quantity and step",
                                    (not r["ok"]) and names, r["status"], "'<kind>: <quantity> at step <tau>'"))


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------

def _fmt_err(e: Any) -> str:
    if e is None:
        return "—"
    if isinstance(e, float) and math.isnan(e):
        return "nan"
    if e == math.inf:
        return "inf"
    if e == 0:
        return "0"
    return f"{e:.1e}"


def _markdown(rep: StabilityReport) -> str:
    lines = [f"# Stability study", "", f"Problem: {rep.problem}", "", f"Oracle: {rep.oracle}.  "
             f"A cell fails when its status is not ok or the relative error of the meta-gradient exceeds {rep.tol:g}.",
             ""]
    for obj in rep.objectives:
        what = "G'(η) (objective log)" if obj == "log" else "F'(η) (objective final)"
        lines += [f"## Relative error of {what}", "",
                  "Entries: relative error vs the oracle; `✗` marks a non-ok status (the status is in the CSV); "
                  "`skip` a cell not run (reason below); `✗*` a cell not run because the same step size had "
                  "already become non-finite in the forward sweep at an earlier step for a smaller t (GD with a "
                  "constant step size runs the same first steps for every horizon, so it fails at the same step).",
                  ""]
        head = "| mode | dtype | " + " | ".join(f"η={e:g}, t={t:g}" for e in rep.etas for t in rep.steps) + " |"
        lines += [head, "|" + "---|" * (2 + len(rep.etas) * len(rep.steps))]
        idx = {(r["mode"], r["dtype"], r["eta"], r["steps"]): r for r in rep.rows if r["objective"] == obj}
        for mode in rep.modes:
            for dt in rep.dtypes:
                cells = []
                for e in rep.etas:
                    for t in rep.steps:
                        r = idx.get((mode, dt, e, t))
                        if r is None or r.get("skipped"):
                            cells.append("skip")
                        elif r.get("inferred_from_t"):
                            cells.append("✗*")
                        else:
                            cells.append(_fmt_err(r["rel_err_grad"]) + ("" if r["ok"] else " ✗"))
                lines.append(f"| {mode} | {dt} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## First failing t", "",
              f"First t with a non-ok status or a relative error above {rep.tol:g} (status only in parentheses); "
              "`—`: none within the sweep.", ""]
    head = "| mode | dtype | objective | " + " | ".join(f"η={e:g}" for e in rep.etas) + " |"
    lines += [head, "|" + "---|" * (3 + len(rep.etas))]
    for mode in rep.modes:
        for dt in rep.dtypes:
            for obj in rep.objectives:
                cells = []
                for e in rep.etas:
                    ff = rep.first_fail.get((mode, dt, obj, e))
                    fn = rep.first_not_ok.get((mode, dt, obj, e))
                    cells.append(f"{'—' if ff is None else f'{ff:g}'} ({'—' if fn is None else f'{fn:g}'})")
                lines.append(f"| {mode} | {dt} | {obj} | " + " | ".join(cells) + " |")
    lines.append("")
    if rep.checks:
        lines += ["## Acceptance checks (issue 3)", "", "| check | passed | measured | expected |", "|---|---|---|---|"]
        for c in rep.checks:
            lines.append(f"| {c['name']} | {'yes' if c['passed'] else '**NO**'} | {_short(c['measured'])} | {c['expected']} |")
        lines.append("")
    if rep.skipped:
        lines += ["## Skipped cells", ""]
        for s in rep.skipped:
            lines.append(f"- {s['mode']} {s['dtype']} {s['objective']} t={s['steps']}: {s['reason']}")
        lines.append("")
    if rep.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in rep.notes] + [""]
    lines.append(f"Total time: {rep.seconds:.1f} s")
    return "\n".join(lines) + "\n"


def _short(x: Any) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in x.items())
    if isinstance(x, float):
        return _fmt_err(x) if abs(x) < 1e-3 or abs(x) > 1e4 else f"{x:.4g}"
    return str(x)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_csv(path: str, rows: List[Dict[str, Any]], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})


def _write(rep: StabilityReport, out_dir: str) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "stability.csv"), "md": os.path.join(out_dir, "stability.md"),
             "first_fail": os.path.join(out_dir, "first_fail.csv"), "summary": os.path.join(out_dir, "summary.json")}
    write_csv(paths["csv"], rep.rows, ROW_FIELDS)
    write_csv(paths["first_fail"], rep.first_fail_table(),
              ("mode", "dtype", "objective", "eta", "first_fail_t", "first_not_ok_t"))
    with open(paths["md"], "w") as fh:
        fh.write(rep.markdown())
    summary = {"experiment": "stability", "passed": rep.passed, "seconds": rep.seconds, "executor": rep.executor,
               "checks": _jsonable(rep.checks), "oracle": rep.oracle, "problem": rep.problem,
               "tol": rep.tol, "skipped": _jsonable(rep.skipped), "notes": rep.notes}
    with open(paths["summary"], "w") as fh:
        json.dump(summary, fh, indent=2)
    return paths


# ------------------------------------------------------------------------------------------------
# figures (shared with the E-grad experiment)
# ------------------------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_error_map(rows: List[Dict[str, Any]], modes: Sequence[str], dtypes: Sequence[str], etas: Sequence[float],
                   steps: Sequence[int], objective: str, path: str, title: str, eta_label: Any = None) -> None:
    """Heat map of log10(relative error) with rows (mode, dtype) and columns (η, t); × marks a
    non-ok status, grey hatching a skipped cell."""
    plt = _pyplot()
    idx = {(r["mode"], r["dtype"], r["eta"], r["steps"]): r for r in rows if r["objective"] == objective}
    labels = [(m, dt) for m in modes for dt in dtypes]
    nrow, ncol = len(labels), len(etas) * len(steps)
    Z = np.full((nrow, ncol), np.nan)
    marks, skips = [], []
    for i, (m, dt) in enumerate(labels):
        for j, (e, t) in enumerate((e, t) for e in etas for t in steps):
            r = idx.get((m, dt, e, t))
            if r is None or r.get("skipped"):
                skips.append((i, j))
                continue
            err = r["rel_err_grad"]
            Z[i, j] = 1.0 if not (err == err) or err == math.inf else math.log10(max(err, 1e-35))
            if not r["ok"]:
                marks.append((i, j))
    fig_h = max(3.5, 0.28 * nrow + 2.0)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * ncol + 3.5), fig_h))
    import matplotlib
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.clip(Z, -35, 1), aspect="auto", cmap=cmap, vmin=-35, vmax=1, interpolation="nearest")
    for i, j in marks:
        ax.text(j, i, "×", ha="center", va="center", color="red", fontsize=11, fontweight="bold")
    for i, j in skips:
        ax.text(j, i, "skip", ha="center", va="center", color="#555555", fontsize=6)
    ax.set_yticks(range(nrow))
    ax.set_yticklabels([f"{m} / {dt}" for m, dt in labels], fontsize=7)
    ax.set_xticks(range(ncol))
    ax.set_xticklabels([f"{t:g}" for _ in etas for t in steps], fontsize=7, rotation=90)
    for k in range(1, len(etas)):
        ax.axvline(k * len(steps) - 0.5, color="white", lw=2)
    for k in range(1, len(modes)):
        ax.axhline(k * len(dtypes) - 0.5, color="white", lw=1)
    lab = eta_label or (lambda e: f"η = {e:g}")
    for k, e in enumerate(etas):
        ax.text((k + 0.5) * len(steps) - 0.5, -0.8, lab(e), ha="center", va="bottom", fontsize=9)
    ax.set_xlabel("inner steps t (grouped by step size η)")
    ax.set_title(title, fontsize=10, pad=22)
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    cb.set_label("log10 relative error vs oracle (top = inf/NaN)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metagrad_curves(problem: Any, path: str, ts: Sequence[int] = (10, 40, 80, 160, 1000),
                         eta_grid: Optional[np.ndarray] = None, dtype: Optional[str] = None,
                         title: str = "") -> Dict[str, Any]:
    """|F'(η)| and |G'(η)| (exact mode, log domain) against η for several t; returns the data."""
    plt = _pyplot()
    L = float(problem.L)
    eta_grid = np.linspace(0.005, 3.0, 600) / L if eta_grid is None else np.asarray(eta_grid, dtype=np.float64)
    dtype = dtype or "float64"
    data: Dict[str, Any] = {"eta": eta_grid, "t": list(ts), "log10_abs_F": [], "log10_abs_G": [], "G": []}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    import matplotlib
    cmap = matplotlib.colormaps["plasma"]
    for k, t in enumerate(ts):
        rF = api.metagrad(problem, eta_grid, int(t), objective="final", mode="exact", dtype=dtype)
        rG = api.metagrad(problem, eta_grid, int(t), objective="log", mode="exact", dtype=dtype)
        lf = np.asarray(rF.log_abs_grad) / math.log(10)
        lg = np.asarray(rG.log_abs_grad) / math.log(10)
        data["log10_abs_F"].append(lf)
        data["log10_abs_G"].append(lg)
        data["G"].append(np.asarray(rG.grad))
        col = cmap(k / max(len(ts) - 1, 1) * 0.85)
        a1.plot(eta_grid * L, lf, color=col, lw=1.3, label=f"t = {t:g}")
        a2.plot(eta_grid * L, lg, color=col, lw=1.3, label=f"t = {t:g}")
    bound = grad_log_bound(problem, eta_grid) if isinstance(problem, (Quadratic, LeastSquares)) else None
    if bound is not None:
        with np.errstate(divide="ignore"):
            a2.plot(eta_grid * L, np.log10(bound), "k--", lw=1, label="bound 2·max λ/|1−ηλ| (all t)")
    for a in (a1, a2):
        a.axvline(2.0, color="grey", ls=":", lw=1)
        a.set_xlabel("step size η·L  (η in units of 1/L; dotted: η = 2/L)")
        a.grid(alpha=0.3)
    a1.set_ylabel("log10 |F'(η)|   (F = f(w_t))")
    a2.set_ylabel("log10 |G'(η)|   (G = log f(w_t) / t)")
    a1.set_title("naive meta-gradient F' explodes/vanishes exponentially in t")
    a2.set_title("log meta-gradient G' stays bounded for every t")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return data


def plot_growth_rates(panels: List[Dict[str, Any]], path: str, title: str = "") -> None:
    """Fitted growth rate b of log|F'| against the theory 2·log maxᵢ|1 − ηλᵢ|, one panel per problem;
    each panel dict has ``name``, ``eta_L`` (η·L), ``rate``, ``theory``, ``checked`` (mask)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 6.4), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1]})
    for k, p in enumerate(panels):
        a, b = axes[0, k], axes[1, k]
        x = np.asarray(p["eta_L"])
        a.plot(x, p["theory"], "k-", lw=2.2, alpha=0.5, label="theory 2·log max|1−ηλ|")
        a.plot(x, p["rate"], "o", ms=2.5, color="C1", label="fit of log|F'| = a + b·t + c·log t")
        a.axhline(0.05, color="grey", ls=":", lw=0.8)
        a.axhline(-0.05, color="grey", ls=":", lw=0.8)
        a.set_ylabel("growth rate b per inner step")
        a.set_title(p["name"], fontsize=9)
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
        chk = np.asarray(p["checked"], dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(np.asarray(p["rate"]) - np.asarray(p["theory"])) / np.abs(np.asarray(p["theory"]))
        b.semilogy(x[chk], np.maximum(rel[chk], 1e-16), ".", ms=3, color="C0", label="checked (|theory| > 0.05)")
        if np.any(~chk):
            b.semilogy(x[~chk], np.maximum(rel[~chk], 1e-16), ".", ms=2, color="#bbbbbb", label="not checked")
        b.axhline(0.01, color="red", ls="--", lw=1, label="1% tolerance")
        b.set_xlabel("step size η·L")
        b.set_ylabel("|fit − theory| / |theory|")
        b.legend(fontsize=7)
        b.grid(alpha=0.3)
    if title:
        import textwrap
        # about 12 characters per inch of figure width, so a one-panel figure keeps its whole title
        fig.suptitle("\n".join(textwrap.wrap(title, max(40, int(12 * 5.2 * len(panels))))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_study(rep: StabilityReport, out_dir: str, problem: Any = None, growth_fit: bool = True) -> List[str]:
    """Figures of a stability study: an error map per objective and, given the problem, the
    E-grad figures (|F'| and |G'| against η for the study's horizons; fitted growth rate of
    |F'| against theory)."""
    paths = []
    for obj in rep.objectives:
        p = os.path.join(out_dir, f"stability_errors_{obj}.png")
        what = "G'(η)" if obj == "log" else "F'(η)"
        plot_error_map(rep.rows, rep.modes, rep.dtypes, rep.etas, rep.steps, obj, p,
                       f"Relative error of {what} vs {rep.oracle} (× = non-ok status):\n"
                       f"which mode and precision survives which horizon t")
        paths.append(p)
    if problem is not None:
        p = os.path.join(out_dir, "metagrad_curves.png")
        plot_metagrad_curves(problem, p, ts=rep.steps, title=f"Meta-gradients on {rep.problem}")
        paths.append(p)
        if growth_fit and isinstance(problem, Quadratic):
            L = float(problem.L)
            grid = np.linspace(0.02, 3.0, 120) / L
            fit = fit_growth_rate(problem, grid)
            theory = theory_rate(problem, grid)
            chk = np.abs(theory) > 0.05
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.abs(fit["rate"] - theory) / np.abs(theory)
            worst = float(np.max(rel[chk])) if np.any(chk) else float("nan")
            rep.notes.append(f"growth rate of log|F'| over t in [100, 1000] (scaled mode, float64) vs "
                             f"2 log max|1 - eta lambda|: max relative deviation {worst:.2e} over {int(chk.sum())} "
                             f"step sizes with |theory| > 0.05")
            p = os.path.join(out_dir, "growth_rate.png")
            plot_growth_rates([{"name": rep.problem[:80], "eta_L": grid * L, "rate": fit["rate"], "theory": theory,
                                "checked": chk}], p,
                              title="Theorem 3: |F'(η)| grows like exp(t·2·log max|1−ηλ|) — measured vs theory")
            paths.append(p)
            with open(os.path.join(out_dir, "stability.md"), "w") as fh:
                fh.write(rep.markdown())
    return paths
