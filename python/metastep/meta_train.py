"""Meta-training of a scalar step size (SPEC §6) and the exact optimal step size.

Two tools live here:

* :func:`meta_train` runs meta-gradient descent (or momentum, RMSProp, Adam) on the step
  size η of t-step gradient descent, with the meta-gradient computed by any mode and
  precision of :func:`metastep.metagrad`.  The paper's rule is
  η_k = max(0, η_{k-1} − μ_k·G'(η_{k-1})) with μ_k = μ₀/√k and μ₀ = 1/100.  The full history
  comes back, and a meta-gradient that is non-finite, or whose run reports a non-ok status,
  is never hidden: the first such meta-step is recorded (and by default the run stops there,
  leaving η at its last good value).

* :func:`find_optimal_eta` finds the exact minimiser η* of the meta-objective for a
  constant step size, independently of meta-training: a dense grid of the closed-form
  meta-objective (``mode="exact"``, batched) locates the basins, and bisection on the sign
  of the closed-form derivative pins each one down to a few ulps.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np

from . import _core, api
from ._validate import dtype_name
from .problems import LeastSquares, Quadratic

__all__ = ["meta_train", "MetaTrainResult", "MetaTrainingError", "find_optimal_eta", "OPTIMIZERS",
           "DEFAULT_LR", "ON_FAILURE"]

#: Meta-optimizers understood by :func:`meta_train`.
OPTIMIZERS = ("gd", "momentum", "rmsprop", "adam")
#: Default base learning rate μ₀ of each meta-optimizer (``gd``: the paper's 1/100).
DEFAULT_LR = {"gd": 0.01, "momentum": 0.001, "rmsprop": 0.001, "adam": 0.001}
#: What :func:`meta_train` does when a meta-gradient is non-finite or its status is not "ok".
ON_FAILURE = ("stop", "continue", "raise")
_DEFAULT_OPTIONS = {
    "momentum": {"beta": 0.9},
    "rmsprop": {"rho": 0.9, "eps": 1e-8},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "gd": {},
}


class MetaTrainingError(RuntimeError):
    """Raised by ``meta_train(..., on_failure="raise")``; ``.result`` holds the history so far."""

    def __init__(self, message: str, result: "MetaTrainResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, repr=False)
class MetaTrainResult:
    """History of one meta-training run.

    Evaluations and updates are aligned as follows: ``etas[k]`` is η_k (``etas[0]`` = η₀), and
    ``values[k]``, ``grads[k]``, ``statuses[k]`` are the meta-objective, meta-gradient and
    status computed at η_k.  ``lrs[k-1]`` is the learning rate μ_k of update k, which produced
    ``etas[k]`` from the evaluation at ``etas[k-1]``.  A run that completes ``meta_steps``
    updates holds ``meta_steps + 1`` evaluations (the last one at the final η).  A run stopped
    by a failing evaluation ends with that evaluation (its non-finite gradient is kept as is),
    and η stays at the last value that was computed from a good meta-gradient.

    Attributes
    ----------
    etas, values, grads, log_abs_grads, sign_grads : numpy arrays (float64)
    statuses : list of str, "ok" or the engine's "<kind>: <quantity> at step <τ>"
    lrs : numpy array of the learning rates μ_k actually used
    steps_done : number of updates applied
    meta_steps : number of updates requested
    grad_rel_errors : the engine's estimate of the relative rounding error of each
        meta-gradient (NaN where the mode gives none)
    failure : None, or a dict describing the *first* evaluation whose meta-gradient was
        non-finite or whose status was not "ok" (and not tolerated): ``meta_step`` (the update
        it was meant to feed, 1-based), ``eta``, ``status``, ``grad``, ``value``, ``finite``,
        ``used`` (whether the gradient was used for an update, only possible with
        ``on_failure="continue"``)
    n_not_ok : how many evaluations had a non-ok (not tolerated) status or a non-finite
        meta-gradient
    first_flag : None, or the first evaluation whose status was tolerated (see ``tolerate``
        in :func:`meta_train`), as a dict like ``failure``
    n_flagged : how many evaluations had a tolerated status
    stopped : True when the run ended before ``meta_steps`` updates
    stop_reason : why it stopped ("" when it did not)
    config : the arguments of the run
    seconds : wall time
    """

    etas: np.ndarray
    values: np.ndarray
    grads: np.ndarray
    log_abs_grads: np.ndarray
    sign_grads: np.ndarray
    statuses: List[str]
    lrs: np.ndarray
    steps_done: int
    meta_steps: int
    failure: Optional[Dict[str, Any]]
    n_not_ok: int
    stopped: bool
    stop_reason: str
    config: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    grad_rel_errors: Optional[np.ndarray] = None
    first_flag: Optional[Dict[str, Any]] = None
    n_flagged: int = 0

    @property
    def eta(self) -> float:
        """The final step size η (after the last applied update)."""
        return float(self.etas[self.steps_done])

    @property
    def ok(self) -> bool:
        """True when every meta-gradient was finite with status "ok" and all updates ran."""
        return self.failure is None and not self.stopped

    def table(self) -> Dict[str, Any]:
        """The history as columns: meta-step k, η_k, G(η_k), G'(η_k), status, μ_{k+1}."""
        n = len(self.statuses)
        lr = np.full(n, np.nan)
        lr[: len(self.lrs)] = self.lrs[: n]
        gre = self.grad_rel_errors if self.grad_rel_errors is not None else np.full(n, np.nan)
        return {"k": np.arange(n), "eta": self.etas[:n], "value": self.values, "grad": self.grads,
                "log_abs_grad": self.log_abs_grads, "sign_grad": self.sign_grads,
                "grad_rel_error": gre, "status": list(self.statuses), "lr_next": lr}

    def to_csv(self, path: str) -> None:
        """Write :meth:`table` to a CSV file."""
        cols = self.table()
        keys = list(cols)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(keys)
            for i in range(len(cols["k"])):
                w.writerow([_csv_cell(cols[k][i]) for k in keys])

    def __repr__(self) -> str:
        c = self.config
        fail = "none" if self.failure is None else (f"meta-step {self.failure['meta_step']}: "
                                                    f"{self.failure['status']}")
        return (f"MetaTrainResult(mode={c.get('mode')!r}, dtype={c.get('dtype')!r}, optimizer="
                f"{c.get('optimizer')!r}, steps={c.get('steps')}, eta0={c.get('eta0')!r}, eta={self.eta!r}, "
                f"updates={self.steps_done}/{self.meta_steps}, first failure={fail}"
                f"{', stopped: ' + self.stop_reason if self.stopped else ''})")


def _csv_cell(x: Any) -> Any:
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def _problem_L(problem: Any) -> float:
    return float(problem.L)


def meta_train(problem: Union[Quadratic, LeastSquares], eta0: float, steps: int, meta_steps: int, *,
               objective: str = "log", on: str = "train", mode: str = "auto", dtype: Any = "float64",
               optimizer: str = "gd", lr: Optional[float] = None, decay: Optional[str] = None,
               log_eta: bool = False, on_failure: str = "stop", optimizer_options: Optional[dict] = None,
               metagrad_options: Optional[dict] = None,
               tolerate: Sequence[str] = ("cancellation: meta-gradient",), progress: bool = False,
               desc: Optional[str] = None, engine: str = "auto") -> MetaTrainResult:
    """Meta-train the step size of ``steps``-step gradient descent.

    Parameters
    ----------
    problem : Quadratic or LeastSquares
    eta0 : float
        Initial step size η₀ ≥ 0 (> 0 with ``log_eta=True``).
    steps : int
        Inner GD steps t.
    meta_steps : int
        Number of meta-updates K.
    objective : {"log", "final"}
        Meta-objective: G(η) = (1/t) log f(w_t) (default, the paper's fix) or F(η) = f(w_t).
    on : {"train", "valid"}
        Loss on the training or the validation set (least squares).
    mode, dtype :
        How and in which precision the meta-gradient is computed (see :func:`metastep.metagrad`).
    optimizer : {"gd", "momentum", "rmsprop", "adam"}
        ``gd``: θ ← θ − μ_k g.  ``momentum``: v ← βv + g, θ ← θ − μ_k v.  ``rmsprop``:
        s ← ρs + (1−ρ)g², θ ← θ − μ_k g/(√s + ε).  ``adam``: bias-corrected first and second
        moments, θ ← θ − μ_k m̂/(√ŝ + ε).  Hyper-parameters in ``optimizer_options``
        (``beta``; ``rho``, ``eps``; ``beta1``, ``beta2``, ``eps``).
    lr : float, optional
        Base learning rate μ₀ (default :data:`DEFAULT_LR`; 1/100 for ``gd`` as in the paper).
    decay : {"sqrt", "none"}, optional
        μ_k = μ₀/√k (``"sqrt"``, the default for ``gd``) or μ_k = μ₀ (the default otherwise).
    log_eta : bool
        Optimise θ = log η instead of θ = η (the gradient becomes η·G'(η); η stays positive).
        Otherwise θ = η and every update is projected onto η ≥ 0: η ← max(0, θ).
    on_failure : {"stop", "continue", "raise"}
        What happens at an evaluation whose meta-gradient (or value) is non-finite or whose
        status is not "ok".  ``"stop"`` (default): record it as ``failure`` and end the run,
        η staying at its last good value.  ``"continue"``: a *finite* gradient with a non-ok
        status is used (every such step is counted in ``n_not_ok``; the first is recorded),
        but a non-finite one still ends the run — η never becomes NaN.  ``"raise"``: raise
        :class:`MetaTrainingError` carrying the history.
    tolerate : sequence of str
        Status prefixes that flag reduced *accuracy* rather than a failure; a finite
        meta-gradient with such a status is used, counted in ``n_flagged`` and the first one
        recorded in ``first_flag``.  The default tolerates "cancellation: meta-gradient": the
        engine's estimate says more than half the digits of G' cancelled, which happens next
        to any stationary point (G' ≈ 0), i.e. right where meta-training converges, while the
        absolute error stays at rounding level.  Pass ``()`` to treat it as a failure.
    optimizer_options : dict, optional
    metagrad_options : dict, optional
        Extra keyword arguments for :func:`metastep.metagrad` (``checkpoints``, ``memory_limit``).
    progress : bool
        Show a tqdm progress bar.
    engine : {"auto", "core", "python"}
        ``"core"``: the whole loop runs in the compiled core (no Python round trip per
        meta-step; the GIL is released). ``"python"``: the reference loop, one call to
        :func:`metastep.metagrad` per meta-step. Both perform the same double-precision
        arithmetic and give the same bits. ``"auto"`` takes the core unless
        ``metagrad_options`` asks for something only :func:`metastep.metagrad` handles
        (minibatch SGD, ``memory_limit``).

    Returns
    -------
    MetaTrainResult
    """
    if engine not in ("auto", "core", "python"):
        raise ValueError(f"unknown engine {engine!r}; expected 'auto', 'core' or 'python'")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(map(repr, OPTIMIZERS))}")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"unknown on_failure {on_failure!r}; expected one of {', '.join(map(repr, ON_FAILURE))}")
    if decay is None:
        decay = "sqrt" if optimizer == "gd" else "none"
    if decay not in ("sqrt", "none"):
        raise ValueError(f"unknown decay {decay!r}; expected 'sqrt' or 'none'")
    if isinstance(meta_steps, bool) or not isinstance(meta_steps, (int, np.integer)) or meta_steps < 0:
        raise ValueError(f"meta_steps must be a non-negative integer; got {meta_steps!r}")
    meta_steps = int(meta_steps)
    eta0 = float(eta0)
    if not math.isfinite(eta0) or eta0 < 0:
        raise ValueError(f"eta0 must be finite and non-negative; got {eta0}")
    if log_eta and eta0 <= 0:
        raise ValueError("log_eta=True needs eta0 > 0")
    mu0 = DEFAULT_LR[optimizer] if lr is None else float(lr)
    if not math.isfinite(mu0) or mu0 <= 0:
        raise ValueError(f"lr must be finite and positive; got {lr}")
    opts = dict(_DEFAULT_OPTIONS[optimizer])
    if optimizer_options:
        unknown = set(optimizer_options) - set(opts)
        if unknown:
            raise ValueError(f"unknown options for {optimizer}: {sorted(unknown)}; known: {sorted(opts)}")
        opts.update({k: float(v) for k, v in optimizer_options.items()})
    mg_opts = dict(metagrad_options or {})

    def evaluate(eta: float) -> Any:
        return api.metagrad(problem, eta, steps, objective=objective, on=on, mode=mode, dtype=dtype, **mg_opts)

    config = {"eta0": eta0, "steps": int(steps), "meta_steps": meta_steps, "objective": objective, "on": on,
              "mode": mode, "dtype": str(dtype), "optimizer": optimizer, "lr": mu0, "decay": decay,
              "log_eta": bool(log_eta), "on_failure": on_failure, "optimizer_options": opts,
              "tolerate": list(tolerate)}
    core_ok = set(mg_opts) <= {"checkpoints"}
    if engine == "core" and not core_ok:
        raise ValueError(f"engine='core' does not take metagrad_options {sorted(set(mg_opts) - {'checkpoints'})}; "
                         "use engine='python'")
    if engine != "python" and core_ok:
        return _meta_train_core(problem, steps, objective, on, mode, dtype, mg_opts, config, progress, desc)
    etas = [eta0]
    values: List[float] = []
    grads: List[float] = []
    log_abs: List[float] = []
    signs: List[int] = []
    statuses: List[str] = []
    lrs: List[float] = []
    rel_errs: List[float] = []
    failure: Optional[Dict[str, Any]] = None
    first_flag: Optional[Dict[str, Any]] = None
    n_not_ok = 0
    n_flagged = 0
    tolerate = tuple(tolerate)
    stop_reason = ""
    theta = math.log(eta0) if log_eta else eta0
    m1 = 0.0
    m2 = 0.0
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=meta_steps, desc=desc or f"meta-train ({mode}, {dtype})", leave=False)
    try:
        k = 0
        while True:
            eta = etas[-1]
            r = evaluate(eta)
            g = float(r.grad)
            v = float(r.value)
            values.append(v)
            grads.append(g)
            log_abs.append(float(r.log_abs_grad))
            signs.append(int(r.sign_grad))
            statuses.append(str(r.status))
            diag = r.diagnostics if isinstance(r.diagnostics, dict) else {}
            gre = diag.get("grad_rel_error")
            rel_errs.append(float(gre) if isinstance(gre, (int, float)) else math.nan)
            finite = math.isfinite(g) and math.isfinite(v)
            good = finite and r.status == "ok"
            if finite and not good and tolerate and str(r.status).startswith(tolerate):
                n_flagged += 1
                if first_flag is None:
                    first_flag = {"meta_step": k + 1, "eta": eta, "status": str(r.status), "grad": g, "value": v,
                                  "finite": True, "used": k < meta_steps,
                                  "grad_rel_error": rel_errs[-1]}
                good = True
            if not good:
                n_not_ok += 1
                if failure is None:
                    failure = {"meta_step": k + 1, "eta": eta, "status": str(r.status), "grad": g, "value": v,
                               "finite": finite, "used": False}
                if not finite:
                    if k < meta_steps:
                        stop_reason = (f"non-finite meta-{'gradient' if not math.isfinite(g) else 'objective'} "
                                       f"at meta-step {k + 1} (eta = {eta!r}): {r.status}")
                    break
                if on_failure != "continue" and k < meta_steps:
                    stop_reason = f"status not ok at meta-step {k + 1} (eta = {eta!r}): {r.status}"
                    break
                if failure["meta_step"] == k + 1 and k < meta_steps:
                    failure["used"] = True
            if k >= meta_steps:
                break
            k += 1
            mu = mu0 / math.sqrt(k) if decay == "sqrt" else mu0
            gt = g * eta if log_eta else g          # gradient with respect to theta
            if optimizer == "gd":
                step = gt
            elif optimizer == "momentum":
                m1 = opts["beta"] * m1 + gt
                step = m1
            elif optimizer == "rmsprop":
                m2 = opts["rho"] * m2 + (1.0 - opts["rho"]) * gt * gt
                step = gt / (math.sqrt(m2) + opts["eps"])
            else:  # adam
                m1 = opts["beta1"] * m1 + (1.0 - opts["beta1"]) * gt
                m2 = opts["beta2"] * m2 + (1.0 - opts["beta2"]) * gt * gt
                mhat = m1 / (1.0 - opts["beta1"] ** k)
                vhat = m2 / (1.0 - opts["beta2"] ** k)
                step = mhat / (math.sqrt(vhat) + opts["eps"])
            theta_new = theta - mu * step
            if log_eta:
                new_eta = math.exp(theta_new)
            else:
                theta_new = max(0.0, theta_new)
                new_eta = theta_new
            if not math.isfinite(new_eta) or not math.isfinite(theta_new):
                # cannot happen from a finite gradient except through overflow of the update itself
                n_not_ok += 1
                if failure is None:
                    failure = {"meta_step": k, "eta": eta, "status": f"update overflow: eta -> {new_eta!r}",
                               "grad": g, "value": v, "finite": False, "used": False}
                stop_reason = f"the update at meta-step {k} overflowed (eta {eta!r} - {mu!r} * {step!r})"
                break
            theta = theta_new
            lrs.append(mu)
            etas.append(new_eta)
            if bar is not None:
                bar.update(1)
                if k % 50 == 0 or k == meta_steps:
                    bar.set_postfix(eta=f"{new_eta:.6g}", grad=f"{g:.3g}")
        steps_done = len(etas) - 1
    finally:
        if bar is not None:
            bar.close()
    stopped = steps_done < meta_steps
    result = MetaTrainResult(
        etas=np.array(etas, dtype=np.float64), values=np.array(values, dtype=np.float64),
        grads=np.array(grads, dtype=np.float64), log_abs_grads=np.array(log_abs, dtype=np.float64),
        sign_grads=np.array(signs, dtype=np.int64), statuses=statuses, lrs=np.array(lrs, dtype=np.float64),
        steps_done=steps_done, meta_steps=meta_steps, failure=failure, n_not_ok=n_not_ok, stopped=stopped,
        stop_reason=stop_reason, config=config, seconds=time.perf_counter() - t_start,
        grad_rel_errors=np.array(rel_errs, dtype=np.float64), first_flag=first_flag, n_flagged=n_flagged)
    if on_failure == "raise" and failure is not None:
        raise MetaTrainingError(f"meta-training failed at meta-step {failure['meta_step']} "
                                f"(eta = {failure['eta']!r}): {failure['status']}", result)
    return result


def _meta_train_core(problem: Any, steps: int, objective: str, on: str, mode: str, dtype: Any,
                     mg_opts: Dict[str, Any], config: Dict[str, Any], progress: bool,
                     desc: Optional[str]) -> MetaTrainResult:
    """The meta-training loop in the compiled core (same arithmetic as the Python loop)."""
    t_start = time.perf_counter()
    # one evaluation through the public entry point validates every argument exactly as the
    # Python loop would (and resolves "auto")
    first = api.metagrad(problem, config["eta0"], steps, objective=objective, on=on, mode=mode, dtype=dtype,
                         **mg_opts)
    del first
    dt = dtype_name(dtype)
    t = int(steps)
    resolved = api.resolve_mode(problem, mode, t, dt, mg_opts.get("checkpoints"))
    spectrum = problem._spectrum(dt) if resolved == "exact" else None
    k = mg_opts.get("checkpoints")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config["meta_steps"], desc=desc or f"meta-train ({mode}, {dtype}, core)", leave=False)
    try:
        out = getattr(_core, f"meta_train_{dt}")(problem._core(dt), spectrum, resolved, t, objective, on == "valid",
                                                 int(k or 0), config)
    finally:
        if bar is not None:
            bar.update(config["meta_steps"])
            bar.close()
    steps_done = int(out["steps_done"])
    result = MetaTrainResult(
        etas=np.asarray(out["etas"], dtype=np.float64), values=np.asarray(out["values"], dtype=np.float64),
        grads=np.asarray(out["grads"], dtype=np.float64),
        log_abs_grads=np.asarray(out["log_abs_grads"], dtype=np.float64),
        sign_grads=np.asarray(out["sign_grads"], dtype=np.int64), statuses=list(out["statuses"]),
        lrs=np.asarray(out["lrs"], dtype=np.float64), steps_done=steps_done, meta_steps=config["meta_steps"],
        failure=out["failure"], n_not_ok=int(out["n_not_ok"]), stopped=steps_done < config["meta_steps"],
        stop_reason=str(out["stop_reason"]), config=dict(config, engine="core", resolved_mode=resolved),
        seconds=time.perf_counter() - t_start,
        grad_rel_errors=np.asarray(out["grad_rel_errors"], dtype=np.float64), first_flag=out["first_flag"],
        n_flagged=int(out["n_flagged"]))
    failure = result.failure
    if config["on_failure"] == "raise" and failure is not None:
        raise MetaTrainingError(f"meta-training failed at meta-step {failure['meta_step']} "
                                f"(eta = {failure['eta']!r}): {failure['status']}", result)
    return result


# ------------------------------------------------------------------------------------------------
# the exact optimal step size
# ------------------------------------------------------------------------------------------------

_PRECISION_ORDER = ("float32", "float64", "longdouble", "quad", "mp")


def _exact_dtype(dtype: Optional[str]) -> str:
    if dtype is not None:
        return dtype
    from . import PRECISIONS
    # long double carries 11 more bits than float64 at nearly the same cost in the exact mode;
    # the arbitrary-precision types would only slow the search down.
    for name in ("longdouble", "float64"):
        if name in PRECISIONS:
            return name
    return "float64"


@overload
def find_optimal_eta(problem: Union[Quadratic, LeastSquares], steps: int, objective: str = ..., *,
                     on: str = ..., eta_max: Optional[float] = ..., grid: int = ..., candidates: int = ...,
                     dtype: Optional[str] = ..., full_output: Literal[False] = ...) -> float: ...


@overload
def find_optimal_eta(problem: Union[Quadratic, LeastSquares], steps: int, objective: str = ..., *,
                     on: str = ..., eta_max: Optional[float] = ..., grid: int = ..., candidates: int = ...,
                     dtype: Optional[str] = ..., full_output: Literal[True]) -> Tuple[float, Dict[str, Any]]: ...


def find_optimal_eta(problem: Union[Quadratic, LeastSquares], steps: int, objective: str = "log", *,
                     on: str = "train", eta_max: Optional[float] = None, grid: int = 2001,
                     candidates: int = 5, dtype: Optional[str] = None,
                     full_output: bool = False) -> Union[float, Tuple[float, Dict[str, Any]]]:
    """The exact minimiser η* of the meta-objective of ``steps``-step GD with a constant step.

    F(η) = f(w_t) and G(η) = (1/t) log f(w_t) have the same minimiser (log is increasing), so
    ``objective`` only documents intent; the search always runs on G, whose closed form is
    evaluated in the log domain (``mode="exact"``) and never over- or underflows.

    Method: G on a uniform grid of ``grid`` points over [0, η_max] (one batched call), with
    η_max = 2/L by default; while the smallest value sits on the right end the range is
    doubled.  Each of the ``candidates`` lowest local minima of the grid is bracketed by its
    neighbours and refined by bisection on the sign of the closed-form G'(η) (re-gridded
    locally if the bracket holds no sign change) until the bracket is a few ulps wide.  The
    candidate with the smallest G wins.

    Parameters
    ----------
    problem : Quadratic or LeastSquares
    steps : int
        Inner GD steps t.
    objective : {"log", "final"}
    on : {"train", "valid"}
    eta_max : float, optional
        Right end of the initial search range (default 2/L).
    grid : int
        Grid points of the first scan.
    candidates : int
        How many grid minima are refined.
    dtype : str, optional
        Precision of the exact mode (default long double where compiled, else float64).
    full_output : bool
        Also return a dict: ``value`` G(η*), ``grad`` G'(η*), ``curvature`` (a central
        difference of G' at η*), ``bracket``, ``evaluations``, ``eta_max``, ``dtype``.

    Returns
    -------
    float, or (float, dict) with ``full_output=True``
    """
    if objective not in api.OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(map(repr, api.OBJECTIVES))}")
    dtype = _exact_dtype(dtype)
    t = int(steps)
    L = _problem_L(problem)
    if not (L > 0 and math.isfinite(L)):
        raise ValueError("the problem has no positive curvature (L = 0): every step size gives the same loss")
    hi = 2.0 / L if eta_max is None else float(eta_max)
    if not (hi > 0 and math.isfinite(hi)):
        raise ValueError(f"eta_max must be positive and finite; got {eta_max}")
    grid = max(int(grid), 11)
    n_eval = 0

    def G(etas: np.ndarray) -> Any:
        nonlocal n_eval
        n_eval += len(etas)
        return api.metagrad(problem, etas, t, objective="log", on=on, mode="exact", dtype=dtype)

    def grad1(eta: float) -> float:
        nonlocal n_eval
        n_eval += 1
        r = api.metagrad(problem, eta, t, objective="log", on=on, mode="exact", dtype=dtype)
        if not math.isfinite(r.grad):
            raise RuntimeError(f"the exact mode returned a non-finite G'({eta!r}) for t = {t}: {r.status}")
        return float(r.grad)

    for _ in range(60):
        xs = np.linspace(0.0, hi, grid)
        r = G(xs)
        vals = np.asarray(r.value, dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            bad = int(np.argmax(~np.isfinite(vals)))
            raise RuntimeError(f"the exact mode returned a non-finite G({xs[bad]!r}) for t = {t}: {r.status[bad]}")
        if int(np.argmin(vals)) < grid - 1:
            break
        hi *= 2.0
    else:  # pragma: no cover - G decreasing over 2^60 · 2/L cannot happen for a PSD quadratic
        raise RuntimeError("G(eta) keeps decreasing; no minimiser found")

    # local minima of the grid values, lowest first
    interior = np.nonzero((vals[1:-1] <= vals[:-2]) & (vals[1:-1] <= vals[2:]))[0] + 1
    idx: List[int] = [int(i) for i in interior]
    if vals[0] <= vals[1]:
        idx.append(0)
    idx = sorted(set(int(i) for i in idx), key=lambda i: vals[i])[: max(int(candidates), 1)]

    def refine(lo: float, up: float, depth: int = 0) -> Tuple[float, float, float]:
        """Bisection on the sign of G' in [lo, up]; returns (eta, lo, up)."""
        glo, gup = grad1(lo), grad1(up)
        if lo == 0.0 and glo >= 0:
            return 0.0, 0.0, 0.0
        if not (glo < 0 < gup):
            if depth >= 4:
                e = lo if abs(glo) < abs(gup) else up
                return e, lo, up
            xs2 = np.linspace(lo, up, 201)
            v2 = np.asarray(G(xs2).value, dtype=np.float64)
            j = int(np.argmin(v2))
            return refine(float(xs2[max(j - 1, 0)]), float(xs2[min(j + 1, len(xs2) - 1)]), depth + 1)
        for _ in range(400):
            mid = 0.5 * (lo + up)
            if mid <= lo or mid >= up:
                break
            gm = grad1(mid)
            if gm > 0:
                up = mid
            elif gm < 0:
                lo = mid
            else:
                return mid, mid, mid
            if up - lo <= 4 * np.spacing(up):
                break
        return 0.5 * (lo + up), lo, up

    best: Optional[Tuple[float, float, float, float]] = None
    for i in idx:
        lo = float(xs[max(i - 1, 0)])
        up = float(xs[min(i + 1, grid - 1)])
        e, blo, bup = refine(lo, up)
        val = float(G(np.array([e])).value[0])
        if best is None or val < best[1]:
            best = (e, val, blo, bup)
    assert best is not None
    eta_star, val, blo, bup = best
    if not full_output:
        return eta_star
    h = max(1e-7 * eta_star, 1e-300)
    curv = (grad1(eta_star + h) - grad1(max(eta_star - h, 0.0))) / (eta_star + h - max(eta_star - h, 0.0))
    info = {"value": val, "grad": grad1(eta_star), "curvature": curv, "bracket": (blo, bup),
            "evaluations": n_eval, "eta_max": hi, "dtype": dtype, "steps": t}
    return eta_star, info
