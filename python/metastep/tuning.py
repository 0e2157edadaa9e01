"""Tuning the step size over task families: train-by-train vs train-by-validation
(SPEC §3, §6; paper §4, experiments E3/E4 and their SGD variant).

Meta-objectives
---------------
For a family of m least-squares tasks (:class:`metastep.tasks.TaskFamily`) and t inner steps
of GD (or minibatch SGD) from w₀ = 0 with step size η:

* ``on="train"`` (train-by-train, TbT): F(η) = (1/m) Σ_k f̂_k(w_t^k), the training loss;
* ``on="valid"`` (train-by-validation, TbV): the same with the loss on each task's validation rows;
* ``objective="final"``: the plain average above (the paper's F̂_TbT, F̂_TbV);
  ``objective="log"``: the average of the per-task G_k(η) = (1/t)·log f_k(w_t).

With the truncation rule (the family's ``truncate``, paper default) a task whose iterate reaches
‖w_τ‖ ≥ 40σ is frozen at 40σ·u: its loss is the loss at 40σ·u and its meta-gradient is 0.

How it is computed (``mode="fast"``, float64)
---------------------------------------------
GD from 0 on a least-squares task is linear in the labels and lives in a Krylov space, so one
pass over the tasks serves every η, every σ and both meta-objectives:

* labels are y = X w* + σξ, so the two right-hand sides (X w*, ξ) serve every σ;
* per task one Gram matrix (n×n when n ≤ d, d×d otherwise) and a block Krylov space of degree t
  started from the two right-hand sides (dimension 2(t+1), built with full
  re-orthogonalisation) hold every iterate w_τ(η, σ), τ ≤ t, *exactly* (in exact arithmetic:
  w_τ is a polynomial of degree τ − 1 in the Gram matrix applied to the labels); its Ritz
  decomposition (θ_i, W) turns GD into scalar recurrences: w_t = W·diag((1 − (1 − ηθ)^t)/θ)·c;
* the validation loss is a quadratic form in the Ritz coordinates (a k×k matrix per task);
* truncation is decided exactly per (task, η, σ): ‖w_τ‖² is a quadratic form in the Ritz
  coordinates; it is non-decreasing in τ when ηθ_max ≤ 1, so the last step decides; when
  1 < ηθ_max ≤ 2 a bound on max_τ ‖w_τ‖ clears most pairs, and the rest (and every divergent
  pair, ηθ_max > 2) are tested at every step;
* meta-gradients are closed-form derivatives of the same expressions.

Minibatch SGD (``batch_size=B``) uses the batch sequence :func:`metastep.sgd_batches` of each
task (its ``sgd_seed``) and iterates all η and both right-hand sides at once as matrix products,
with forward tangents for the meta-gradient.  Any other ``mode`` (``"exact"``, ``"forward"``,
``"scaled"``, ``"reverse"``, ...) runs :func:`metastep.metagrad` task by task (any precision),
with truncation detected by a plain NumPy unroll — the slow reference the fast path is tested
against.

Tuning
------
:func:`grid_search` evaluates every η of a grid (the paper's 25 log-spaced values in [1e−6, 1])
on the *same* tasks (common random numbers), :func:`meta_gradient_descent` runs meta-GD (SPEC §6:
the paper's rule η ← max(0, η − μ₀/√k·G'), momentum, RMSProp, Adam; in η or log η),
:func:`evaluate` runs the chosen η on fresh test tasks and records train RMSE, test RMSE and
‖w − w*‖² at every step, and :func:`tune_step_size` does it all for a user's own (X, y).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import api
from ._validate import choice, positive_int, real_array, real_scalar, step_sizes
from .tasks import TaskData, TaskFamily

__all__ = [
    "PAPER_GRID", "ON", "OBJECTIVES", "OPTIMIZERS", "PreparedTasks", "TaskObjective", "GridResult",
    "MetaGDResult", "Evaluation", "TuningReport", "prepare", "prepare_many", "meta_objective",
    "grid_search", "grid_search_many", "meta_gradient_descent", "evaluate", "evaluate_many",
    "tune_step_size", "unroll_truncated", "blas_threads",
]

#: The paper's grid for least squares: 25 log-spaced step sizes in [1e-6, 1].
PAPER_GRID = np.logspace(-6.0, 0.0, 25)
ON = ("train", "valid")
OBJECTIVES = ("final", "log")
#: Meta-optimizers of :func:`meta_gradient_descent`.
OPTIMIZERS = ("gd", "momentum", "rmsprop", "adam")
_DEFAULT_LR = {("gd", "eta"): 0.01, ("gd", "log"): 0.1, ("momentum", "eta"): 0.001, ("momentum", "log"): 0.02,
               ("rmsprop", "eta"): 0.001, ("rmsprop", "log"): 0.05, ("adam", "eta"): 0.001, ("adam", "log"): 0.1}


# =============================================================================== BLAS threads
class _OpenBLAS:
    """Thread control of the OpenBLAS that numpy loaded (no-op when there is none)."""

    def __init__(self) -> None:
        self.get: Optional[Callable[[], int]] = None
        self.set: Optional[Callable[[int], None]] = None
        try:
            with open("/proc/self/maps") as fh:
                paths = sorted({ln.split()[-1] for ln in fh
                                if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
        except OSError:
            return
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get_name, set_name in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                                       ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                                       ("openblas_get_num_threads", "openblas_set_num_threads")):
                try:
                    g, s = getattr(lib, get_name), getattr(lib, set_name)
                except AttributeError:
                    continue
                g.restype = ctypes.c_int
                s.argtypes = [ctypes.c_int]
                s.restype = None
                self.get, self.set = g, s
                return


_BLAS: Optional[_OpenBLAS] = None
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` OpenBLAS threads, then restore the previous count.

    The fast paths here issue many small matrix products; OpenBLAS's own threading costs
    more than it gains on them (several times slower on a busy 2-core machine), so they run
    BLAS single-threaded and spread tasks over Python threads instead.  No-op when numpy
    does not use OpenBLAS."""
    global _BLAS
    with _BLAS_LOCK:
        if _BLAS is None:
            _BLAS = _OpenBLAS()
    if _BLAS.get is None or _BLAS.set is None:
        yield
        return
    old = int(_BLAS.get())
    _BLAS.set(int(n))
    try:
        yield
    finally:
        _BLAS.set(old)


def _workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


# =============================================================================== Krylov / Ritz
def _ritz(G: np.ndarray, B: np.ndarray, degree: int) -> Tuple[np.ndarray, np.ndarray]:
    """Ritz pairs of the symmetric PSD matrices G (c, p, p) on the block Krylov spaces
    span{B, GB, ..., G^degree B} (B: (c, p, r)), built with full re-orthogonalisation.

    Returns θ (c, k) ≥ 0 and orthonormal W (c, p, k) with p(G) B = W p(diag θ) Wᵀ B for every
    polynomial of degree ≤ ``degree`` (exactly, up to rounding).  When r(degree + 1) ≥ p the
    whole space is used (a full eigen-decomposition)."""
    c, p, r = B.shape
    kb = degree + 1
    if r * kb >= p:
        theta, W = np.linalg.eigh(G)
        return np.clip(theta, 0.0, None), W
    k = r * kb
    Q = np.empty((c, p, k))
    GQ = np.empty((c, p, k))
    Q[:, :, :r] = _orthonormal_block(B, None, np.linalg.norm(B, axis=1))
    for j in range(1, kb):
        V = G @ Q[:, :, (j - 1) * r:j * r]
        GQ[:, :, (j - 1) * r:j * r] = V
        Qp = Q[:, :, :j * r]
        Q[:, :, j * r:(j + 1) * r] = _orthonormal_block(V, Qp, np.linalg.norm(V, axis=1))
    GQ[:, :, (kb - 1) * r:] = G @ Q[:, :, (kb - 1) * r:]
    T = np.swapaxes(Q, 1, 2) @ GQ
    T = 0.5 * (T + np.swapaxes(T, 1, 2))
    theta, S = np.linalg.eigh(T)
    return np.clip(theta, 0.0, None), Q @ S


def _orthonormal_block(V: np.ndarray, Qp: Optional[np.ndarray], scale: np.ndarray) -> np.ndarray:
    """Orthonormal basis (c, p, r) of V's columns after removing span(Qp): block classical
    Gram–Schmidt twice, then Gram–Schmidt twice within the block.  Columns that vanish (an
    invariant Krylov space: breakdown) are replaced by fixed pseudo-random directions, which
    keeps the projection exact for the vectors of the invariant space."""
    for _ in range(2):
        if Qp is not None:
            V = V - Qp @ (np.swapaxes(Qp, 1, 2) @ V)
    c, p, r = V.shape
    Q = np.empty_like(V)
    bad = np.zeros((c, r), dtype=bool)
    for i in range(r):
        v = V[:, :, i]
        for _ in range(2):
            for j in range(i):
                v = v - Q[:, :, j] * np.sum(Q[:, :, j] * v, axis=1)[:, None]
        nrm = np.sqrt(np.sum(v * v, axis=1))
        bad[:, i] = nrm <= 1e-10 * np.maximum(scale[:, i], np.finfo(float).tiny)
        Q[:, :, i] = v / np.where(nrm > 0, nrm, 1.0)[:, None]
    if np.any(bad):
        rng = np.random.default_rng(20210601)
        for ci in np.nonzero(np.any(bad, axis=1))[0]:
            Qc = np.zeros((p, 0)) if Qp is None else Qp[ci]
            for col in range(r):
                v = np.asarray(rng.standard_normal(p)) if bad[ci, col] else Q[ci, :, col]
                basis = np.concatenate([Qc, Q[ci, :, :col]], axis=1)
                for _ in range(3):
                    v = v - basis @ (basis.T @ v)
                    v = v / np.linalg.norm(v)
                Q[ci, :, col] = v
    return Q


# =============================================================================== prepared data (GD)
@dataclass(repr=False)
class PreparedTasks:
    """One pass over m tasks reduced to Ritz data: evaluates GD meta-objectives and their
    meta-gradients at any η, σ and number of steps ≤ ``steps`` in O(m·k) per (η, σ)
    (k = 2(steps + 1)), exactly — see the module doc.  Built by :func:`prepare`.

    The label columns are (X w*, ξ) for a task family, so that the labels at noise level σ are
    the combination (1, σ); for user data (:func:`tune_step_size`) there is one column."""

    on: str
    steps: int
    space: str                 # "n" (Gram XXᵀ, n ≤ d) or "d" (XᵀX)
    n_train: int
    n_valid: int
    theta: np.ndarray          # (m, k) Ritz values of XᵀX/n
    C: np.ndarray              # (m, k, r) Ritz coefficients of the label columns
    nu: np.ndarray             # (m, k) weights of ‖w‖² = Σ ν z²
    yy: np.ndarray             # (m, r, r) Gram of the training label columns
    A: Optional[np.ndarray]    # (m, k, k) validation quadratic form
    Mv: Optional[np.ndarray]   # (m, k, r)
    Yv: Optional[np.ndarray]   # (m, r, r)
    F_train: Optional[np.ndarray]  # (m, 1 + r, 1 + r) Gram of [X u, label columns] (train rows)
    F_valid: Optional[np.ndarray]  # same on the validation rows
    family: Optional[TaskFamily] = None
    seconds: float = 0.0

    @property
    def m(self) -> int:
        """Number of tasks m."""
        return int(self.theta.shape[0])

    def __repr__(self) -> str:
        return (f"PreparedTasks(on={self.on!r}, m={self.m}, steps={self.steps}, space={self.space!r}, "
                f"n_train={self.n_train}, n_valid={self.n_valid}, k={self.theta.shape[1]})")

    # --------------------------------------------------------------------------------------
    def _combos(self, sigmas: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        r = self.C.shape[2]
        if r == 1:
            return np.ones((sigmas.size, 1)), np.full(sigmas.size, np.inf)
        S = np.stack([np.ones_like(sigmas), sigmas], axis=1)
        if self.family is not None and self.F_train is not None:
            radii = np.array([self.family.radius_at(float(s)) for s in sigmas])
        else:
            radii = np.full(sigmas.size, np.inf)
        return S, radii

    def losses(self, etas: Any, sigmas: Any = None, steps: Optional[int] = None, *, grad: bool = True,
               tasks: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Per-task meta-losses at the end of ``steps`` inner steps: a dict with ``loss``
        (m, S, E), ``dloss`` (dloss/dη, or None), ``truncated`` (m, S, E) and ``norm2`` (‖w_t‖²)."""
        t = self.steps if steps is None else positive_int(steps, "steps")
        if t > self.steps:
            raise ValueError(f"these tasks were prepared for at most {self.steps} steps; got steps = {t}")
        etas = step_sizes(etas)[0]  # finite, non-negative, 1-D: NaN in, NaN out is not a result
        if sigmas is None:
            sigmas = np.array([self.family.sigma if self.family is not None else 0.0])
        sigmas = step_sizes(sigmas, "sigmas")[0]
        sel = slice(None) if tasks is None else tasks
        theta, C, nu = self.theta[sel], self.C[sel], self.nu[sel]
        Sc, radii = self._combos(sigmas)
        m, k = theta.shape
        E, S = etas.size, sigmas.size
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            beta = np.einsum("mkr,sr->msk", C, Sc)                       # (m, S, k)
            x = etas[None, :, None] * theta[:, None, :]                     # (m, E, k) = ηθ
            rho_t, rho_tm1, phi = _powers(x, theta, etas, t)
            z = phi[:, :, None, :] * beta[:, None, :, :]                     # (m, E, S, k)
            norm2 = np.einsum("mesk,mk->mes", z * z, nu)
            dz = (t * rho_tm1)[:, :, None, :] * beta[:, None, :, :] if grad else None
            if self.on == "train":
                if self.space == "n":
                    res = rho_t[:, :, None, :] * beta[:, None, :, :]
                    loss = np.sum(res * res, axis=3) / (2.0 * self.n_train)
                    dloss = (-(t / self.n_train) * np.einsum("mek,mesk->mes", theta[:, None, :] * rho_t * rho_tm1,
                                                            beta[:, None, :, :] ** 2)) if grad else None
                else:
                    yy = np.einsum("sr,mrq,sq->ms", Sc, self.yy[sel], Sc) / self.n_train
                    loss = 0.5 * (yy[:, None, :] - 2.0 * np.sum(z * beta[:, None, :, :], axis=3)
                                  + np.einsum("mesk,mk->mes", z * z, theta))
                    dloss = (-t * np.einsum("mek,mesk->mes", rho_t * rho_tm1, beta[:, None, :, :] ** 2)
                             if grad else None)
            else:
                assert self.A is not None and self.Mv is not None and self.Yv is not None  # on == "valid"
                A, Mv, Yv = self.A[sel], self.Mv[sel], self.Yv[sel]
                zf = z.reshape(m, E * S, k)
                Az = (zf @ A).reshape(m, E, S, k)
                mv = np.einsum("mkr,sr->msk", Mv, Sc)                        # (m, S, k)
                yv = np.einsum("sr,mrq,sq->ms", Sc, Yv, Sc)                   # (m, S)
                loss = (np.sum(z * Az, axis=3) - 2.0 * np.sum(z * mv[:, None, :, :], axis=3)
                        + yv[:, None, :]) / (2.0 * self.n_valid)
                loss = np.maximum(loss, 0.0)
                dloss = (np.sum((Az - mv[:, None, :, :]) * dz, axis=3) / self.n_valid) if grad else None
            truncated = np.zeros((m, E, S), dtype=bool)
            if np.any(np.isfinite(radii)):
                truncated = self._truncation(x, theta, beta, nu, etas, radii, t, norm2)
                if np.any(truncated):
                    F_all = self.F_train if self.on == "train" else self.F_valid
                    assert F_all is not None  # prepared with truncation
                    F = F_all[sel]
                    nrows = self.n_train if self.on == "train" else self.n_valid
                    vec = np.concatenate([radii[:, None], -Sc], axis=1)             # (S, 1 + r)
                    vec = np.where(np.isfinite(vec), vec, 0.0)
                    frozen = np.einsum("sa,mab,sb->ms", vec, F, vec) / (2.0 * nrows)  # (m, S)
                    loss = np.where(truncated, frozen[:, None, :], loss)
                    if dloss is not None:
                        dloss = np.where(truncated, 0.0, dloss)
                    w_norm2 = (radii ** 2)[None, None, :]
                    norm2 = np.where(truncated, w_norm2, norm2)
        tr = lambda a: None if a is None else np.transpose(a, (0, 2, 1))  # noqa: E731  (m, S, E)
        return {"loss": tr(loss), "dloss": tr(dloss), "truncated": tr(truncated), "norm2": tr(norm2)}

    def _truncation(self, x: np.ndarray, theta: np.ndarray, beta: np.ndarray, nu: np.ndarray, etas: np.ndarray,
                    radii: np.ndarray, t: int, norm2_t: np.ndarray) -> np.ndarray:
        """(m, E, S): whether ‖w_τ‖ ≥ R for some τ = 1..t (R = radius of each σ)."""
        R2 = radii ** 2
        crossed = norm2_t >= R2[None, None, :]
        # ‖w_τ‖² is non-decreasing in τ when every ρ_i = 1 − ηθ_i ∈ [0, 1]: the last step decides.
        # When some ρ_i ∈ [−1, 0), φ_τ(θ_i) = η Σ_{s<τ} ρ_i^s lies in [0, η] (alternating series), which
        # bounds max_τ ‖w_τ‖²; only pairs that the bound cannot clear (or with |ρ| > 1) test every step.
        xmax = np.max(x, axis=2)                                              # (m, E)
        wild = xmax > 1.0
        if not np.any(wild):
            return crossed
        rho = 1.0 - x
        _rt, _rtm1, phi_t = _powers(x, theta, etas, t)
        cap = np.where(rho >= 0, phi_t, etas[None, :, None])                  # (m, E, k)
        bound = np.einsum("mek,msk->mes", cap * cap, beta * beta * nu[:, None, :])
        undecided = (~crossed) & ((bound >= R2[None, None, :]) | (xmax > 2.0)[:, :, None])
        todo = wild & np.any(undecided, axis=2)
        if np.any(todo):
            mi, ei = np.nonzero(todo)
            xs, th = x[mi, ei], theta[mi]                                     # (P, k)
            b2 = beta[mi] ** 2 * nu[mi][:, None, :]                           # (P, S, k)
            taus = np.arange(1, t + 1, dtype=float)
            for a in range(0, mi.size, 64):
                sl = slice(a, a + 64)
                pw = (1.0 - xs[sl])[:, None, :] ** taus[None, :, None]        # (P, T, k)
                ph = np.where(th[sl][:, None, :] > 0, (1.0 - pw) / np.where(th[sl] > 0, th[sl], 1.0)[:, None, :],
                              etas[ei[sl]][:, None, None] * taus[None, :, None])
                nrm = np.einsum("ptk,psk->pts", ph * ph, b2[sl])
                crossed[mi[sl], ei[sl]] |= np.any(nrm >= R2[None, None, :], axis=1)
        return crossed

    def objective(self, etas: Any, sigmas: Any = None, *, objective: str = "final", steps: Optional[int] = None,
                  grad: bool = True, tasks: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Task-averaged meta-objective (S, E) and its meta-gradient, plus per-task values."""
        out = self.losses(etas, sigmas, steps, grad=grad, tasks=tasks)
        t = self.steps if steps is None else steps
        return _aggregate(out, objective, t)


def _powers(x: np.ndarray, theta: np.ndarray, etas: np.ndarray, t: int) -> Tuple[np.ndarray, ...]:
    """ρ^t, ρ^(t−1) and φ_t = (1 − ρ^t)/θ = Σ_{s<t} η ρ^s for ρ = 1 − ηθ (accurate when ηθ ≪ 1)."""
    pos = x < 1.0
    lg = np.log1p(-np.where(pos, x, 0.0))
    rho = 1.0 - x
    rho_t = np.where(pos, np.exp(t * lg), rho ** t)
    rho_tm1 = np.where(pos, np.exp((t - 1) * lg), rho ** (t - 1))
    one_minus = np.where(pos, -np.expm1(t * lg), 1.0 - rho_t)
    th = theta[:, None, :]
    phi = np.where(th > 0, one_minus / np.where(th > 0, th, 1.0), etas[None, :, None] * t)
    return rho_t, rho_tm1, phi


def _aggregate(out: Dict[str, Any], objective: str, t: int) -> Dict[str, Any]:
    loss, dloss = out["loss"], out["dloss"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if objective == "final":
            per, dper = loss, dloss
        else:
            per = np.log(loss) / t
            dper = None if dloss is None else dloss / (t * loss)
        value = np.mean(per, axis=0)
        grad = None if dper is None else np.mean(dper, axis=0)
    res = dict(out)
    res.update(per_task=per, per_task_grad=dper, value=value, grad=grad)
    return res


# ----------------------------------------------------------------------------- preparation
@dataclass(frozen=True)
class _Split:
    on: str
    n_train: int
    n_valid: int


def _prep_chunk(X: np.ndarray, Y: np.ndarray, U: Optional[np.ndarray], splits: Sequence[_Split],
                steps: int) -> List[Dict[str, Any]]:
    """Ritz data of a chunk of tasks (X: (c, N, d), Y: (c, N, r), U: (c, d)) for every split."""
    c, N, d = X.shape
    r = Y.shape[2]
    n_space = [s.n_train for s in splits if s.n_train <= d]
    P = max(n_space) if n_space else 0
    K: Any = np.stack([X[i, :P] @ X[i, :P].T for i in range(c)]) if P else None   # (c, P, P), syrk per task
    d_bounds = sorted({s.n_train for s in splits if s.n_train > d})
    H: Dict[int, np.ndarray] = {}
    acc: Optional[np.ndarray] = None
    prev = 0
    for b in d_bounds:
        part = np.stack([X[i, prev:b].T @ X[i, prev:b] for i in range(c)])
        acc = part if acc is None else acc + part
        H[b] = acc
        prev = b
    q = None if U is None else np.einsum("cnd,cd->cn", X, U)             # X u, all rows
    ritz: Dict[int, Tuple[Any, ...]] = {}
    out = []
    for s in splits:
        n1, nv = s.n_train, s.n_valid
        Ytr = Y[:, :n1]
        yy = np.swapaxes(Ytr, 1, 2) @ Ytr
        if n1 not in ritz:
            if n1 <= d:
                theta, W = _ritz(K[:, :n1, :n1] / n1, Ytr, steps)
                ritz[n1] = (theta, W, np.swapaxes(W, 1, 2) @ Ytr, theta / n1, "n")
            else:
                Btr = np.swapaxes(X[:, :n1], 1, 2) @ Ytr / n1
                theta, W = _ritz(H[n1] / n1, Btr, steps)
                ritz[n1] = (theta, W, np.swapaxes(W, 1, 2) @ Btr, np.ones_like(theta), "d")
        theta, W, C, nu, space = ritz[n1]
        item: Dict[str, Any] = {"theta": theta, "C": C, "nu": nu, "yy": yy, "space": space}
        if s.on == "valid":
            Xv, Yv = X[:, n1:n1 + nv], Y[:, n1:n1 + nv]
            if space == "n":
                if n1 + nv <= P:
                    M = K[:, n1:n1 + nv, :n1] @ W / n1
                else:
                    M = Xv @ (np.swapaxes(X[:, :n1], 1, 2) @ W) / n1
            else:
                M = Xv @ W
            Mt = np.swapaxes(M, 1, 2)
            item.update(A=Mt @ M, Mv=Mt @ Yv, Yv=np.swapaxes(Yv, 1, 2) @ Yv)
        if q is not None:
            def gram(lo: int, hi: int) -> np.ndarray:
                Z = np.concatenate([q[:, lo:hi, None], Y[:, lo:hi]], axis=2)
                return np.swapaxes(Z, 1, 2) @ Z
            item["F_train"] = gram(0, n1)
            if s.on == "valid":
                item["F_valid"] = gram(n1, n1 + nv)
        out.append(item)
    return out


def _chunks(m: int, size: int) -> List[Tuple[int, int]]:
    return [(a, min(m, a + size)) for a in range(0, m, size)]


def _chunk_size(rows: int, d: int, budget: float = 48e6) -> int:
    per = 8.0 * (rows * d + 2 * d * d * (rows > d) + rows * rows * (rows <= d))
    return int(max(1, min(32, budget // max(per, 1.0))))


def _family_group(families: Sequence[TaskFamily]) -> Tuple[int, int, int, int]:
    f0 = families[0]
    key = (f0.d, f0.seed, f0.stream_key, f0.m)
    for f in families[1:]:
        if (f.d, f.seed, f.stream_key, f.m) != key:
            raise ValueError("families prepared together must share d, seed, stream and m (the same tasks); "
                             f"got {key} and {(f.d, f.seed, f.stream_key, f.m)}")
    return key


def _draw_chunk(family: TaskFamily, a: int, b: int,
                rows: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[TaskData]]:
    tds = [family.data(k, rows=rows, n_test=0) for k in range(a, b)]
    X = np.stack([td.X for td in tds])
    Y = np.stack([np.stack([td.y_clean, td.xi], axis=1) for td in tds])
    U = np.stack([td.u for td in tds])
    return X, Y, U, tds


def _progress(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


def prepare_many(families: Sequence[TaskFamily], steps: int, on: Sequence[str], *, progress: bool = False,
                 desc: str = "tasks") -> List[PreparedTasks]:
    """Prepare several views of the *same* tasks in one pass (one draw and one Gram matrix
    per task): e.g. train-by-train on 500 rows and train-by-validation on 250 + 250 of the
    same rows, or several sample sizes (prefixes of the same rows).  ``on[i]`` is the
    meta-objective set of ``families[i]``."""
    if not families:
        raise ValueError("give at least one family")
    t = positive_int(steps, "steps")
    on = [choice(o, "on", ON) for o in on]
    if len(on) != len(families):
        raise ValueError("on must have one entry per family")
    d, _seed, _stream, m = _family_group(families)
    splits = []
    for f, o in zip(families, on):
        if o == "valid" and f.n_valid == 0:
            raise ValueError("on='valid' needs a family with n_valid > 0")
        splits.append(_Split(o, f.n, f.n_valid if o == "valid" else 0))
    rows = max(s.n_train + s.n_valid for s in splits)
    truncate = any(f.truncate for f in families)
    start = time.perf_counter()
    size = _chunk_size(rows, d)
    bounds = _chunks(m, size)
    bar = _progress(m, desc, progress)

    def work(ab: Tuple[int, int]) -> List[Dict[str, Any]]:
        X, Y, U, _ = _draw_chunk(families[0], ab[0], ab[1], rows)
        return _prep_chunk(X, Y, U if truncate else None, splits, t)

    parts: List[List[Dict[str, Any]]] = []
    with blas_threads(1), ThreadPoolExecutor(_workers()) as ex:
        for (a, b), res in zip(bounds, ex.map(work, bounds)):
            parts.append(res)
            if bar is not None:
                bar.update(b - a)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    out = []
    for i, (f, s) in enumerate(zip(families, splits)):
        items = [p[i] for p in parts]

        def cat(key: str) -> Any:  # an array, or None where the chunks do not have it
            if key not in items[0]:
                return None
            return np.concatenate([it[key] for it in items], axis=0)

        out.append(PreparedTasks(on=s.on, steps=t, space=items[0]["space"], n_train=s.n_train, n_valid=s.n_valid,
                                 theta=cat("theta"), C=cat("C"), nu=cat("nu"), yy=cat("yy"), A=cat("A"),
                                 Mv=cat("Mv"), Yv=cat("Yv"),
                                 F_train=cat("F_train") if f.truncate else None,
                                 F_valid=cat("F_valid") if f.truncate else None,
                                 family=f, seconds=seconds))
    return out


def prepare(family: TaskFamily, steps: int, on: str = "train", *, progress: bool = False) -> PreparedTasks:
    """Reduce a family's m tasks to Ritz data for the GD meta-objective on ``on`` (see
    :class:`PreparedTasks`); one Gram matrix and one block Krylov space per task."""
    if not isinstance(family, TaskFamily):
        raise TypeError(f"family must be a metastep.tasks.TaskFamily, not {type(family).__name__}")
    return prepare_many([family], steps, [on], progress=progress)[0]


# =============================================================================== SGD (fast path)
def _sgd_stack(X: np.ndarray, Y: np.ndarray, U: Optional[np.ndarray], n1: int, nv: int, on: str,
               batches: np.ndarray, etas: np.ndarray, Sc: np.ndarray, radii: np.ndarray, t: int,
               grad: bool) -> Dict[str, Optional[np.ndarray]]:
    """Minibatch SGD on a stack of tasks for all η (columns) and all label columns at once, in
    w-space, with forward tangents dw/dη for the meta-gradient.

    X: (m, N, d) rows, Y: (m, N, r) label columns, U: (m, d) truncation directions (or None),
    batches: (m, t, B) row indices, Sc: (S, r) label combinations (one per σ), radii: (S,).
    Returns (m, S, E) arrays: loss (on the training or validation rows), dloss, truncated."""
    m, _N, d = X.shape
    r = Y.shape[2]
    E, S = etas.size, Sc.shape[0]
    B = batches.shape[2]
    Xtr, Ytr = X[:, :n1], Y[:, :n1]
    W = np.zeros((m, d, E * r))
    V = np.zeros((m, d, E * r)) if grad else None
    eta_cols = np.repeat(etas, r)[None, None, :]
    crossed = np.zeros((m, E, S), dtype=bool)
    R2 = radii ** 2
    check = bool(np.any(np.isfinite(radii)))
    ScT = Sc.T

    def quad(A: np.ndarray, Bm: np.ndarray) -> np.ndarray:
        """(m, E, S): s_σᵀ (Aᵀ B)_e s_σ for A, B of shape (m, rows, E·r)."""
        rows = A.shape[1]
        A4 = A.reshape(m, rows, E, r).transpose(0, 2, 3, 1)                 # (m, E, r, rows)
        B4 = Bm.reshape(m, rows, E, r).transpose(0, 2, 1, 3)                # (m, E, rows, r)
        G = A4 @ B4                                                          # (m, E, r, r)
        return np.sum((G @ ScT) * ScT, axis=2)

    Xflat = X.reshape(-1, d)
    Yflat = Y.reshape(-1, r)
    flat = (np.arange(m) * X.shape[1])[:, None, None] + batches                # (m, t, B) rows of Xflat
    with np.errstate(over="ignore", invalid="ignore"):
        for tau in range(t):
            idx = flat[:, tau, :].ravel()
            Xb = np.take(Xflat, idx, axis=0).reshape(m, B, d)                # (m, B, d)
            Yb = np.take(Yflat, idx, axis=0).reshape(m, B, r)                # (m, B, r)
            XbT = np.swapaxes(Xb, 1, 2)
            Rb = Xb @ W - np.tile(Yb, (1, 1, E))
            G = XbT @ Rb / B
            if grad:
                V = V - G - eta_cols * (XbT @ (Xb @ V)) / B
            W = W - eta_cols * G
            if check:
                crossed |= quad(W, W) >= R2[None, None, :]
        if on == "train":
            Xs, Ys = Xtr, Ytr
        else:
            Xs, Ys = X[:, n1:n1 + nv], Y[:, n1:n1 + nv]
        nr = Xs.shape[1]
        Res = Xs @ W - np.tile(Ys, (1, 1, E))
        loss = quad(Res, Res) / (2.0 * nr)
        dloss = quad(Res, Xs @ V) / nr if grad else None
        if np.any(crossed):
            assert U is not None  # runs only cross the radius with truncation on
            q = np.einsum("mnd,md->mn", Xs, U)
            Z = np.concatenate([q[:, :, None], Ys], axis=2)
            F = np.swapaxes(Z, 1, 2) @ Z                                      # (m, 1 + r, 1 + r)
            vec = np.concatenate([np.where(np.isfinite(radii), radii, 0.0)[:, None], -Sc], axis=1)
            frozen = np.einsum("sa,mab,sb->ms", vec, F, vec) / (2.0 * nr)
            loss = np.where(crossed, frozen[:, None, :], loss)
            if dloss is not None:
                dloss = np.where(crossed, 0.0, dloss)
    tr = lambda a: None if a is None else np.transpose(a, (0, 2, 1))  # noqa: E731
    return {"loss": tr(loss), "dloss": tr(dloss), "truncated": tr(crossed)}


def _sgd_stack_data(family: TaskFamily, idx: Sequence[int], rows: int, steps: int, batch_size: int,
                    n_batches: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[np.ndarray]]:
    tds = [family.data(int(k), rows=rows, n_test=0) for k in idx]
    X = np.stack([td.X for td in tds])
    Y = np.stack([np.stack([td.y_clean, td.xi], axis=1) for td in tds])
    U = np.stack([td.u for td in tds])
    batches = [np.stack([api.sgd_batches(n, batch_size, steps, td.sgd_seed) for td in tds]) for n in n_batches]
    return X, Y, U, batches


def _sgd_family_losses(families: Sequence[TaskFamily], on: Sequence[str], etas: np.ndarray, sigmas: np.ndarray,
                       steps: int, batch_size: int, grad: bool, progress: bool, desc: str = "SGD tasks",
                       tasks: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Per-task SGD meta-losses (m, S, E) for several views of the same tasks (one draw per task)."""
    d, _seed, _stream, m = _family_group(families)
    rows = max(f.n + (f.n_valid if o == "valid" else 0) for f, o in zip(families, on))
    idx = list(range(m)) if tasks is None else list(tasks)
    Sc = np.stack([np.ones_like(sigmas), sigmas], axis=1)
    bar = _progress(len(idx), desc, progress)
    size = max(1, min(8, int(32e6 // (8.0 * rows * d))))
    chunks = [idx[a:a + size] for a in range(0, len(idx), size)]

    def work(ks: List[int]) -> List[Dict[str, Any]]:
        X, Y, U, bl = _sgd_stack_data(families[0], ks, rows, steps, batch_size, [f.n for f in families])
        res = []
        for f, o, b in zip(families, on, bl):
            radii = np.array([f.radius_at(float(s)) for s in sigmas])
            res.append(_sgd_stack(X, Y, U, f.n, f.n_valid, o, b, etas, Sc, radii, steps, grad))
        return res

    per: List[List[Dict[str, Any]]] = []
    with blas_threads(1), ThreadPoolExecutor(_workers()) as ex:
        for ks, res in zip(chunks, ex.map(work, chunks)):
            per.append(res)
            if bar is not None:
                bar.update(len(ks))
    if bar is not None:
        bar.close()
    out = []
    for i in range(len(families)):
        cat = lambda key: (None if per[0][i][key] is None  # noqa: E731
                           else np.concatenate([p[i][key] for p in per]))
        out.append({"loss": cat("loss"), "dloss": cat("dloss") if grad else None, "truncated": cat("truncated")})
    return out


# =============================================================================== slow path (engine)
def unroll_truncated(X: Optional[np.ndarray], Y: Optional[np.ndarray], etas: np.ndarray, steps: int, *,
                     radii: Optional[np.ndarray] = None, u: Optional[np.ndarray] = None,
                     batches: Optional[np.ndarray] = None, normal: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                     record: Optional[Callable[[int, np.ndarray], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Plain GD (or SGD with ``batches``) in w-space from 0 with the truncation rule, one column
    per run: X (n, d) training rows, Y (n, J) labels, etas (J,), radii (J,) (inf: no truncation).

    ``normal=(H, B)`` with H = XᵀX/n and B = XᵀY/n runs the same GD through the normal
    equations (w ← w − η(Hw − B), O(d²) per step instead of O(nd): the cheaper form when n > d).
    Returns (W (d, J) final iterates, truncated_at (J,): the step at which the run was frozen at
    radius·u, or −1).  ``record(τ, W)`` is called at τ = 0..t with the iterates.  This is the
    readable reference the fast paths are tested against, and the evaluation loop."""
    if normal is not None:
        d, J = normal[1].shape
        n = 1
    else:
        if X is None or Y is None:
            raise TypeError("unroll_truncated needs X and Y, or normal=(H, B)")
        n, d = X.shape
        J = Y.shape[1]
    etas = np.broadcast_to(np.asarray(etas, dtype=float), (J,))
    radii = np.full(J, np.inf) if radii is None else np.broadcast_to(np.asarray(radii, dtype=float), (J,))
    W = np.zeros((d, J))
    at = np.full(J, -1)
    if record is not None:
        record(0, W)
    with np.errstate(over="ignore", invalid="ignore"):
        for tau in range(steps):
            if normal is not None:
                G = normal[0] @ W - normal[1]
            else:
                assert X is not None and Y is not None  # given unless normal= is
                if batches is None:
                    G = X.T @ (X @ W - Y) / n
                else:
                    b = batches[tau]
                    G = X[b].T @ (X[b] @ W - Y[b]) / b.size
            Wn = W - etas[None, :] * G
            live = at < 0
            Wn[:, ~live] = W[:, ~live]
            hit = live & np.isfinite(radii) & (np.sqrt(np.sum(Wn * Wn, axis=0)) >= radii)
            if np.any(hit):
                assert u is not None  # finite radii come with a direction
                Wn[:, hit] = radii[hit][None, :] * u[:, None]
                at[hit] = tau + 1
            W = Wn
            if record is not None:
                record(tau + 1, W)
    return W, at


def _engine_losses(family: TaskFamily, on: str, etas: np.ndarray, sigmas: np.ndarray, steps: int, mode: str,
                   dtype: str, batch_size: Optional[int], grad: bool, progress: bool) -> Dict[str, Any]:
    """Per-task losses through :func:`metastep.metagrad` (objective "final"), task by task."""
    m, E, S = family.m, etas.size, sigmas.size
    loss = np.empty((m, S, E))
    dloss = np.empty((m, S, E))
    trunc = np.zeros((m, S, E), dtype=bool)
    bar = _progress(m * S, f"{mode} tasks", progress)
    for k in range(m):
        for si, sg in enumerate(sigmas):
            p = family.task(k, float(sg))
            r = api.metagrad(p, etas, steps, objective="final", on=on, mode=mode, dtype=dtype,
                             batch_size=batch_size, sgd_seed=p.sgd_seed)
            loss[k, si] = r.value
            dloss[k, si] = r.grad
            R = p.radius
            if math.isfinite(R):
                batches = None if batch_size is None else api.sgd_batches(p.n, batch_size, steps, p.sgd_seed)
                _, at = unroll_truncated(p.X, np.repeat(p.y[:, None], E, axis=1), etas, steps,
                                         radii=np.full(E, R), u=p.u, batches=batches)
                hit = at >= 0
                if np.any(hit):
                    Xs, ys = (p.X, p.y) if on == "train" else (p.X_valid, p.y_valid)
                    res = Xs @ (R * p.u) - ys
                    loss[k, si, hit] = res @ res / (2.0 * ys.size)
                    dloss[k, si, hit] = 0.0
                    trunc[k, si, hit] = True
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"loss": loss, "dloss": dloss if grad else None, "truncated": trunc}


# =============================================================================== public: objectives
@dataclass(frozen=True, repr=False)
class TaskObjective:
    """A task-averaged meta-objective at a batch of step sizes and noise levels.

    ``value``/``grad``: shape (S, E) for S noise levels and E step sizes (dimensions given as
    scalars are dropped); ``per_task`` (m, S, E) the per-task meta-objective; ``truncated``
    (m, S, E) where the truncation rule froze a task."""

    etas: np.ndarray
    sigmas: np.ndarray
    value: Any
    grad: Any
    per_task: np.ndarray
    per_task_grad: Optional[np.ndarray]
    truncated: np.ndarray
    on: str
    objective: str
    steps: int
    mode: str
    batch_size: Optional[int]
    seconds: float

    @property
    def truncated_fraction(self) -> Any:
        """Share of tasks whose run was truncated, per step size (and σ)."""
        return np.mean(self.truncated, axis=0)

    def __repr__(self) -> str:
        return (f"TaskObjective(on={self.on!r}, objective={self.objective!r}, steps={self.steps}, mode={self.mode!r}, "
                f"m={self.per_task.shape[0]}, sigmas={self.sigmas.size}, etas={self.etas.size})")


def _sigmas_arg(sigma: Any, family: Optional[TaskFamily]) -> Tuple[np.ndarray, bool]:
    if sigma is None:
        if family is None:
            raise TypeError("sigma is required")
        return np.array([float(family.sigma)]), True
    scalar = np.ndim(sigma) == 0
    arr = np.atleast_1d(np.asarray(sigma, dtype=float))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"sigma must be a non-negative finite number or 1-D array; got {sigma!r}")
    return arr, scalar


def _squeeze(a: Optional[np.ndarray], s_scalar: bool, e_scalar: bool) -> Any:
    if a is None:
        return None
    if s_scalar:
        a = a[0]
    if e_scalar:
        a = a[..., 0]
    return float(a) if np.ndim(a) == 0 else a


def meta_objective(family: Union[TaskFamily, PreparedTasks], eta: Any, steps: Optional[int] = None, *,
                   on: str = "train", objective: str = "final", sigma: Any = None, mode: str = "fast",
                   dtype: str = "float64", batch_size: Optional[int] = None, grad: bool = True,
                   progress: bool = False) -> TaskObjective:
    """The TbT (``on="train"``) or TbV (``on="valid"``) meta-objective of a task family and its
    meta-gradient, at one or many step sizes and noise levels, averaged over the m tasks.

    Parameters
    ----------
    family : TaskFamily, or PreparedTasks from :func:`prepare` (GD, fast mode: reused as is)
    eta : float or 1-D array of step sizes
    steps : inner steps t
    on : "train" (train-by-train) or "valid" (train-by-validation)
    objective : "final" (mean loss) or "log" (mean of (1/t) log loss)
    sigma : noise level(s) (default: the family's σ); several σ are evaluated on the same tasks
    mode : "fast" (Krylov/Ritz for GD, batched matrix iteration for SGD; float64), or any mode of
        :func:`metastep.metagrad` (task by task, any ``dtype``)
    batch_size : minibatch SGD with this batch size (each task's ``sgd_seed`` sequence)
    """
    start = time.perf_counter()
    objective = choice(objective, "objective", OBJECTIVES)
    etas, e_scalar = step_sizes(eta)
    if isinstance(family, PreparedTasks):
        if batch_size is not None or mode != "fast":
            raise ValueError("PreparedTasks serve GD in mode='fast' only")
        prep = family
        t = prep.steps if steps is None else positive_int(steps, "steps")
        sigmas, s_scalar = _sigmas_arg(sigma, prep.family)
        res = prep.objective(etas, sigmas, objective=objective, steps=t, grad=grad)
        on = prep.on
    else:
        if not isinstance(family, TaskFamily):
            raise TypeError(f"family must be a TaskFamily or PreparedTasks, not {type(family).__name__}")
        if steps is None:
            raise TypeError("steps (inner steps t) is required")
        t = positive_int(steps, "steps")
        on = choice(on, "on", ON)
        if on == "valid" and family.n_valid == 0:
            raise ValueError("on='valid' needs a family with n_valid > 0")
        sigmas, s_scalar = _sigmas_arg(sigma, family)
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
            if batch_size > family.n:
                raise ValueError(f"batch_size = {batch_size} exceeds the n = {family.n} training rows")
        if mode == "fast":
            if batch_size is None:
                prep = prepare(family, t, on, progress=progress)
                res = prep.objective(etas, sigmas, objective=objective, steps=t, grad=grad)
            else:
                raw = _sgd_family_losses([family], [on], etas, sigmas, t, batch_size, grad, progress)[0]
                res = _aggregate(raw, objective, t)
        else:
            mode = choice(mode, "mode", tuple(m for m in api.MODES))
            raw = _engine_losses(family, on, etas, sigmas, t, mode, dtype, batch_size, grad, progress)
            res = _aggregate(raw, objective, t)
    return TaskObjective(etas=etas, sigmas=sigmas, value=_squeeze(res["value"], s_scalar, e_scalar),
                         grad=_squeeze(res["grad"], s_scalar, e_scalar), per_task=res["per_task"],
                         per_task_grad=res["per_task_grad"], truncated=res["truncated"], on=on, objective=objective,
                         steps=t, mode=mode, batch_size=batch_size, seconds=time.perf_counter() - start)


# =============================================================================== public: grid search
@dataclass(frozen=True, repr=False)
class GridResult:
    """Grid search over η on common tasks: ``values`` (S, E), best η per noise level."""

    etas: np.ndarray
    sigmas: np.ndarray
    values: np.ndarray
    best_index: np.ndarray
    best_eta: np.ndarray
    best_value: np.ndarray
    per_task: np.ndarray
    truncated_fraction: np.ndarray
    on: str
    objective: str
    steps: int
    batch_size: Optional[int]
    seconds: float

    def __repr__(self) -> str:
        pairs = ", ".join(f"σ={s:g}: η*={e:.3g}" for s, e in zip(self.sigmas, self.best_eta))
        return f"GridResult(on={self.on!r}, objective={self.objective!r}, steps={self.steps}, {pairs})"


def _argmin_rows(values: np.ndarray) -> np.ndarray:
    v = np.where(np.isfinite(values), values, np.inf)
    return np.argmin(v, axis=-1)


def _grid_result(etas: np.ndarray, sigmas: np.ndarray, res: Dict[str, Any], on: str, objective: str, t: int,
                 batch_size: Optional[int], seconds: float) -> GridResult:
    values = res["value"]
    bi = _argmin_rows(values)
    return GridResult(etas=etas, sigmas=sigmas, values=values, best_index=bi, best_eta=etas[bi],
                      best_value=values[np.arange(values.shape[0]), bi], per_task=res["per_task"],
                      truncated_fraction=np.mean(res["truncated"], axis=0), on=on, objective=objective, steps=t,
                      batch_size=batch_size, seconds=seconds)


def grid_search_many(families: Sequence[TaskFamily], steps: int, on: Sequence[str], *, grid: Any = None,
                     sigmas: Any = None, objective: str = "final", batch_size: Optional[int] = None,
                     progress: bool = False, desc: str = "tasks"
                     ) -> Tuple[List[GridResult], Optional[List[PreparedTasks]]]:
    """Grid search for several views of the same tasks (e.g. TbT and TbV) and several σ in one
    pass over the tasks.  Returns the grid results and (GD) the prepared tasks for reuse."""
    start = time.perf_counter()
    objective = choice(objective, "objective", OBJECTIVES)
    t = positive_int(steps, "steps")
    etas = PAPER_GRID.copy() if grid is None else step_sizes(grid)[0]
    sig = np.atleast_1d(np.asarray([families[0].sigma] if sigmas is None else sigmas, dtype=float))
    if batch_size is None:
        preps = prepare_many(families, t, on, progress=progress, desc=desc)
        out = []
        for p in preps:
            res = p.objective(etas, sig, objective=objective, grad=False)
            out.append(_grid_result(etas, sig, res, p.on, objective, t, None, time.perf_counter() - start))
        return out, preps
    raws = _sgd_family_losses(families, on, etas, sig, t, positive_int(batch_size, "batch_size"), False, progress, desc)
    return [_grid_result(etas, sig, _aggregate(r, objective, t), o, objective, t, batch_size,
                         time.perf_counter() - start) for r, o in zip(raws, on)], None


def grid_search(family: Union[TaskFamily, PreparedTasks], steps: Optional[int] = None, *, on: str = "train",
                grid: Any = None, sigma: Any = None, objective: str = "final", batch_size: Optional[int] = None,
                mode: str = "fast", dtype: str = "float64", progress: bool = False) -> GridResult:
    """Evaluate the meta-objective at every η of ``grid`` (default: the paper's 25 log-spaced
    values in [1e−6, 1]) on the same m tasks and pick the best η (per σ)."""
    etas = PAPER_GRID.copy() if grid is None else step_sizes(grid)[0]
    r = meta_objective(family, etas, steps, on=on, objective=objective, sigma=sigma, mode=mode, dtype=dtype,
                       batch_size=batch_size, grad=False, progress=progress)
    res = {"value": np.atleast_2d(r.value) if r.sigmas.size == 1 else r.value, "per_task": r.per_task,
           "truncated": r.truncated}
    return _grid_result(etas, r.sigmas, res, r.on, objective, r.steps, batch_size, r.seconds)


# =============================================================================== public: meta-GD
@dataclass(frozen=True, repr=False)
class MetaGDResult:
    """History of meta-gradient descent on η: ``etas[k]`` is η_k (``etas[0]`` = η₀) and
    ``values[k]``/``grads[k]`` the meta-objective and dF/dη there; ``eta`` is the final η."""

    eta: float
    etas: np.ndarray
    values: np.ndarray
    grads: np.ndarray
    optimizer: str
    parametrization: str
    lr: float
    on: str
    objective: str
    steps: int
    seconds: float
    sigma: Optional[float] = None

    @property
    def best_eta(self) -> float:
        """η with the lowest meta-objective seen."""
        v = np.where(np.isfinite(self.values), self.values, np.inf)
        return float(self.etas[int(np.argmin(v))])

    def __repr__(self) -> str:
        return (f"MetaGDResult(optimizer={self.optimizer!r}, parametrization={self.parametrization!r}, "
                f"meta_steps={self.etas.size - 1}, eta={self.eta:.6g}, value={self.values[-1]:.6g})")


def _meta_optimize(fun: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]], eta0: np.ndarray, meta_steps: int,
                   optimizer: str, lr: float, parametrization: str, decay: str, options: Dict[str, float],
                   bar: Any = None, log_value: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Meta-optimizers of SPEC §6 on R independent scalar step sizes at once (``fun`` maps the
    R step sizes to R values and R derivatives dF/dη).  gd: the paper's rule
    η_k = max(0, η_{k−1} − μ_k F'(η_{k−1})), μ_k = lr/√k (in log η: no clipping); momentum,
    RMSProp and Adam (with bias correction) take ``options`` (beta; rho, eps; beta1, beta2, eps).
    ``log_value``: descend on log F instead of F (same minimizer for F > 0, scale-free steps).
    Returns (etas, values, grads), each (meta_steps + 1, R)."""
    eta = np.array(eta0, dtype=float)
    u = np.log(eta) if parametrization == "log" else eta.copy()
    mom = np.zeros_like(eta)
    sq = np.zeros_like(eta)
    m1 = np.zeros_like(eta)
    etas, vals, grads = [eta.copy()], [], []
    for k in range(1, meta_steps + 2):
        v, g = fun(eta)
        v, g = np.asarray(v, dtype=float), np.asarray(g, dtype=float)
        vals.append(v)
        grads.append(g)
        if k == meta_steps + 1:
            break
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            gu = g * eta if parametrization == "log" else g.copy()
            if log_value:
                gu = np.where(v > 0, gu / np.where(v > 0, v, 1.0), 0.0)
        gu = np.where(np.isfinite(gu), gu, 0.0)
        mu = lr / math.sqrt(k) if (optimizer == "gd" or decay == "sqrt") else lr
        if optimizer == "gd":
            step = mu * gu
        elif optimizer == "momentum":
            mom = options.get("beta", 0.9) * mom + gu
            step = mu * mom
        elif optimizer == "rmsprop":
            rho = options.get("rho", 0.9)
            sq = rho * sq + (1 - rho) * gu * gu
            step = mu * gu / (np.sqrt(sq) + options.get("eps", 1e-8))
        else:
            b1, b2 = options.get("beta1", 0.9), options.get("beta2", 0.999)
            m1 = b1 * m1 + (1 - b1) * gu
            sq = b2 * sq + (1 - b2) * gu * gu
            step = mu * (m1 / (1 - b1 ** k)) / (np.sqrt(sq / (1 - b2 ** k)) + options.get("eps", 1e-8))
        u = u - step
        if parametrization == "eta":
            u = np.maximum(0.0, u)
            eta = u.copy()
        else:
            eta = np.exp(u)
        etas.append(eta.copy())
        if bar is not None:
            bar.update(1)
    return np.array(etas), np.array(vals), np.array(grads)


def meta_gradient_descent(family: Union[TaskFamily, PreparedTasks], steps: Optional[int] = None, *,
                          on: str = "train", objective: str = "final", sigma: Any = None,
                          eta0: float = 1e-3, meta_steps: int = 200, optimizer: str = "adam",
                          lr: Optional[float] = None, parametrization: str = "log", decay: str = "none",
                          options: Optional[Dict[str, float]] = None, batch_size: Optional[int] = None,
                          tasks: Optional[Sequence[int]] = None, transform: str = "none",
                          progress: bool = False) -> Union[MetaGDResult, List[MetaGDResult]]:
    """Meta-gradient descent on η for the TbT/TbV meta-objective of a task family (SPEC §6).

    ``optimizer``: "gd" (the paper's rule, μ_k = lr/√k), "momentum", "rmsprop" or "adam";
    ``parametrization``: "eta" (η clipped at 0, as in the paper) or "log" (log η, scale-free:
    the default); ``decay="sqrt"`` divides the learning rate of the other optimizers by √k;
    ``transform="log"`` descends on log F (objective "final" only: the same minimizer, with
    scale-free meta-gradients d log F / d log η — what makes Adam converge on train-by-train,
    whose loss and meta-gradient shrink by orders of magnitude along the way).  The history
    records F and dF/dη either way.

    ``sigma`` may be a sequence: one independent meta-GD run per noise level, all on the same
    tasks and advanced in lock-step (one batched evaluation per meta-step); a list of results
    comes back.  GD uses the prepared Ritz data (one pass over the tasks, then O(m k) per
    meta-step); SGD (``batch_size``) re-runs the tasks at each meta-step, so ``tasks`` (indices)
    can restrict it to a subset held in memory."""
    start = time.perf_counter()
    objective = choice(objective, "objective", OBJECTIVES)
    optimizer = choice(optimizer, "optimizer", OPTIMIZERS)
    parametrization = choice(parametrization, "parametrization", ("eta", "log"))
    decay = choice(decay, "decay", ("none", "sqrt"))
    transform = choice(transform, "transform", ("none", "log"))
    if transform == "log" and objective != "final":
        raise ValueError("transform='log' applies to objective='final' (the 'log' objective is already a logarithm)")
    meta_steps = positive_int(meta_steps, "meta_steps", minimum=0)
    eta0 = real_scalar(eta0, "eta0")
    if parametrization == "log" and eta0 <= 0:
        raise ValueError("the log-η parametrization needs eta0 > 0")
    lr = _DEFAULT_LR[(optimizer, parametrization)] if lr is None else real_scalar(lr, "lr")
    options = dict(options or {})
    if isinstance(family, PreparedTasks):
        if batch_size is not None:
            raise ValueError("PreparedTasks serve GD; pass the TaskFamily for SGD")
        prep: Optional[PreparedTasks] = family
        fam = family.family
        on = family.on
        t = family.steps if steps is None else positive_int(steps, "steps")
    else:
        if not isinstance(family, TaskFamily):
            raise TypeError(f"family must be a TaskFamily or PreparedTasks, not {type(family).__name__}")
        if steps is None:
            raise TypeError("steps is required")
        t = positive_int(steps, "steps")
        on = choice(on, "on", ON)
        if on == "valid" and family.n_valid == 0:
            raise ValueError("on='valid' needs a family with n_valid > 0")
        fam = family
        prep = prepare(family, t, on, progress=progress) if batch_size is None else None
    if fam is None:
        sg, s_scalar = np.array([0.0]), True
    else:
        sg, s_scalar = _sigmas_arg(sigma, fam)
    sel = None if tasks is None else np.asarray(list(tasks), dtype=int)
    diag = np.arange(sg.size)

    bar = _progress(meta_steps * (sg.size if prep is not None else 1), f"meta-GD ({on})", progress)
    if prep is not None:
        # GD: one run per σ (each evaluation costs O(m k), so lock-step would not save anything)
        hist = []
        for s_i in sg:
            def fun(etas: np.ndarray, s_i: float = float(s_i)) -> Tuple[np.ndarray, np.ndarray]:
                r = prep.objective(etas, np.array([s_i]), objective=objective, steps=t, tasks=sel)
                return r["value"][0], r["grad"][0]
            with blas_threads(1):
                hist.append(_meta_optimize(fun, np.array([eta0]), meta_steps, optimizer, lr, parametrization, decay,
                                           options, bar, log_value=transform == "log"))
        etas, vals, grads = (np.concatenate([h[i] for h in hist], axis=1) for i in range(3))
    else:
        assert fam is not None  # SGD needs the family (no PreparedTasks)
        cache = _SGDCache(fam, on, t, positive_int(batch_size, "batch_size"), sel)

        def fun_sgd(etas: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            r = _aggregate(cache.losses(etas, sg), objective, t)
            return r["value"][diag, diag], r["grad"][diag, diag]

        with blas_threads(1):
            etas, vals, grads = _meta_optimize(fun_sgd, np.full(sg.size, eta0), meta_steps, optimizer, lr, parametrization,
                                               decay, options, bar, log_value=transform == "log")
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - start
    out = [MetaGDResult(eta=float(etas[-1, i]), etas=etas[:, i].copy(), values=vals[:, i].copy(),
                        grads=grads[:, i].copy(), optimizer=optimizer, parametrization=parametrization, lr=lr, on=on,
                        objective=objective, steps=t, seconds=secs, sigma=float(sg[i])) for i in range(sg.size)]
    return out[0] if s_scalar else out


class _SGDCache:
    """Rows of a subset of tasks kept in memory (stacked) for repeated SGD meta-objective evaluations."""

    def __init__(self, family: TaskFamily, on: str, steps: int, batch_size: int, tasks: Optional[np.ndarray]) -> None:
        self.family, self.on, self.t, self.B = family, on, steps, batch_size
        idx = list(range(family.m)) if tasks is None else [int(k) for k in tasks]
        rows = family.n + (family.n_valid if on == "valid" else 0)
        self.X, self.Y, self.U, bl = _sgd_stack_data(family, idx, rows, steps, batch_size, [family.n])
        self.batches = bl[0]

    def losses(self, etas: np.ndarray, sigmas: np.ndarray) -> Dict[str, Any]:
        Sc = np.stack([np.ones_like(sigmas), sigmas], axis=1)
        radii = np.array([self.family.radius_at(float(s)) for s in sigmas])
        return _sgd_stack(self.X, self.Y, self.U if self.family.truncate else None, self.family.n,
                          self.family.n_valid, self.on, self.batches, etas, Sc, radii, self.t, True)


# =============================================================================== public: evaluation
@dataclass(frozen=True, repr=False)
class Evaluation:
    """A step size run on test tasks; per-step arrays have shape (m, t + 1) (τ = 0..t).

    ``train_rmse`` on each task's training rows, ``test_rmse`` on its held-out test rows (None
    without test rows), ``test_rmse_population`` = sqrt(‖w − w*‖² + σ²) (the exact population
    RMSE for x ~ N(0, I)), ``dist2`` = ‖w_τ − w*‖², ``truncated_at`` the freezing step or −1."""

    eta: float
    sigma: float
    steps: int
    batch_size: Optional[int]
    train_rmse: np.ndarray
    test_rmse: Optional[np.ndarray]
    test_rmse_population: np.ndarray
    dist2: np.ndarray
    valid_rmse: Optional[np.ndarray]
    truncated_at: np.ndarray

    def final(self, name: str) -> Dict[str, float]:
        """Mean, min and max over the tasks of a per-step quantity at τ = t."""
        a = getattr(self, name)
        if a is None:
            raise ValueError(f"{name} is not available")
        v = a[:, -1]
        return {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0}

    def __repr__(self) -> str:
        tr = self.final("train_rmse")["mean"]
        te = self.final("test_rmse" if self.test_rmse is not None else "test_rmse_population")["mean"]
        return (f"Evaluation(eta={self.eta:.4g}, sigma={self.sigma:g}, steps={self.steps}, "
                f"tasks={self.dist2.shape[0]}, "
                f"train_rmse={tr:.4g}, test_rmse={te:.4g}, dist2={self.final('dist2')['mean']:.4g})")


def evaluate_many(family: TaskFamily, runs: Sequence[Tuple[float, float]], steps: int, *,
                  batch_size: Optional[int] = None, progress: bool = False, desc: str = "test tasks",
                  views: Optional[Sequence[TaskFamily]] = None) -> List[Evaluation]:
    """Run several (η, σ) pairs on the same test tasks (plain w-space unroll with truncation).

    ``views`` (optional, one per run) are families sharing ``family``'s tasks with another split
    (e.g. TbT's 500 training rows and TbV's 250): each run trains on its view's training rows."""
    t = positive_int(steps, "steps")
    views = [family] * len(runs) if views is None else list(views)
    if len(views) != len(runs):
        raise ValueError("views must have one entry per run")
    _family_group([family] + views)
    rows = max(v.n + v.n_valid for v in views)
    m, J = family.m, len(runs)
    n_test = max(v.n_test for v in views)
    store = {key: np.empty((m, J, t + 1)) for key in ("train", "test", "dist2", "valid")}
    trunc = np.empty((m, J), dtype=int)
    groups: Dict[Tuple[int, int], List[int]] = {}
    for j, v in enumerate(views):
        groups.setdefault((v.n, v.n_valid), []).append(j)
    bar = _progress(m, desc, progress)

    def work(k: int) -> None:
        td = family.data(k, rows=rows, n_test=n_test)
        d = td.X.shape[1]
        grams: Dict[int, np.ndarray] = {}
        acc, prev = None, 0
        for n1 in sorted({g[0] for g in groups if g[0] > d and batch_size is None}):
            Xs = td.X[prev:n1]
            acc = Xs.T @ Xs if acc is None else acc + Xs.T @ Xs
            grams[n1] = acc.copy()
            prev = n1
        for (n1, nv), cols in groups.items():
            etas = np.array([runs[j][0] for j in cols], dtype=float)
            sig = np.array([runs[j][1] for j in cols], dtype=float)
            radii = np.array([views[j].radius_at(float(s)) for j, s in zip(cols, sig)])
            Yall = td.y_clean[:, None] + sig[None, :] * td.xi[:, None]
            Xtr, Ytr = td.X[:n1], Yall[:n1]
            Xv, Yv = td.X[n1:n1 + nv], Yall[n1:n1 + nv]
            Yt = (td.y_test_clean[:, None] + sig[None, :] * td.xi_test[:, None]
                  if td.X_test is not None and td.y_test_clean is not None and td.xi_test is not None else None)
            normal = None
            if n1 in grams:
                H, Bm = grams[n1] / n1, Xtr.T @ Ytr / n1
                yy = np.sum(Ytr * Ytr, axis=0) / n1
                normal = (H, Bm)

            J = len(cols)
            hist = np.empty((d, t + 1, J))

            def rec(tau: int, W: np.ndarray) -> None:
                hist[:, tau, :] = W

            batches = None if batch_size is None else api.sgd_batches(n1, batch_size, t, td.sgd_seed)
            _, at = unroll_truncated(Xtr, Ytr, etas, t, radii=radii, u=td.u, batches=batches, normal=normal, record=rec)
            Wall = hist.reshape(d, (t + 1) * J)                             # column τ·J + j
            rep = lambda Y_: np.tile(Y_, (1, t + 1))                         # noqa: E731  labels per column
            if normal is None:
                R = Xtr @ Wall - rep(Ytr)
                mse = np.mean(R * R, axis=0)
            else:
                mse = np.maximum(np.sum(Wall * (normal[0] @ Wall), axis=0)
                                 - 2.0 * np.sum(rep(normal[1]) * Wall, axis=0) + np.tile(yy, t + 1), 0.0)
            shape = lambda a: a.reshape(t + 1, J).T                          # noqa: E731  (J, t + 1)
            store["train"][k, cols] = shape(np.sqrt(mse))
            D = Wall - td.w_star[:, None]
            store["dist2"][k, cols] = shape(np.sum(D * D, axis=0))
            if Yt is not None and td.X_test is not None:
                Rt = td.X_test @ Wall - rep(Yt)
                store["test"][k, cols] = shape(np.sqrt(np.mean(Rt * Rt, axis=0)))
            if nv:
                Rv = Xv @ Wall - rep(Yv)
                store["valid"][k, cols] = shape(np.sqrt(np.mean(Rv * Rv, axis=0)))
            trunc[k, cols] = at

    with blas_threads(1), ThreadPoolExecutor(_workers()) as ex:
        for _ in ex.map(work, range(m)):
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    out = []
    for j, (eta, sg) in enumerate(runs):
        v = views[j]
        out.append(Evaluation(eta=float(eta), sigma=float(sg), steps=t, batch_size=batch_size,
                              train_rmse=store["train"][:, j].copy(),
                              test_rmse=store["test"][:, j].copy() if n_test and v.n_test else None,
                              test_rmse_population=np.sqrt(store["dist2"][:, j] + sg ** 2),
                              dist2=store["dist2"][:, j].copy(),
                              valid_rmse=store["valid"][:, j].copy() if v.n_valid else None,
                              truncated_at=trunc[:, j].copy()))
    return out


def evaluate(family: TaskFamily, eta: float, steps: int, *, sigma: Optional[float] = None,
             batch_size: Optional[int] = None, progress: bool = False) -> Evaluation:
    """Run GD (or SGD) with step size ``eta`` on the family's tasks (typically fresh test tasks,
    ``family.fresh(10, n_test=1000)``) and record train RMSE, test RMSE and ‖w − w*‖² per step."""
    if not isinstance(family, TaskFamily):
        raise TypeError(f"family must be a TaskFamily, not {type(family).__name__}")
    eta = real_scalar(eta, "eta")
    sg = family.sigma if sigma is None else real_scalar(sigma, "sigma")
    return evaluate_many(family, [(eta, sg)], steps, batch_size=batch_size, progress=progress)[0]


# =============================================================================== public: user data
@dataclass(frozen=True, repr=False)
class TuningReport:
    """What :func:`tune_step_size` found.

    Attributes
    ----------
    method : "tbt" or "tbv"
    eta : the chosen step size (grid optimum, refined by meta-GD when that improved the objective)
    grid, grid_values : the grid and its meta-objective
    train_rmse, valid_rmse : per step (τ = 0..t) at ``eta``, averaged over the splits
    w : weights after t steps on the (first split's) training rows
    """

    method: str
    eta: float
    grid_eta: float
    grid: np.ndarray
    grid_values: np.ndarray
    objective_value: float
    steps: int
    n_train: int
    n_valid: int
    splits: int
    train_rmse: np.ndarray
    valid_rmse: Optional[np.ndarray]
    w: np.ndarray
    L: float
    meta_gd: Optional[MetaGDResult]
    seconds: float

    def summary(self) -> str:
        """A human-readable report: method, chosen η, objective value, RMSE curves."""
        long_name = "train-by-validation" if self.method == "tbv" else "train-by-train"
        lines = [f"tune_step_size: method={self.method} ({long_name}), "
                 f"t={self.steps}, n_train={self.n_train}, n_valid={self.n_valid}, splits={self.splits}",
                 f"  L = λmax(XᵀX/n) ≈ {self.L:.4g} (GD stable for η < {2 / self.L:.4g})" if self.L > 0 else "",
                 f"  grid optimum η = {self.grid_eta:.4g}; chosen η = {self.eta:.6g}; "
                 f"meta-objective {self.objective_value:.6g}",
                 f"  train RMSE after {self.steps} steps: {self.train_rmse[-1]:.6g}"]
        if self.valid_rmse is not None:
            lines.append(f"  validation RMSE after {self.steps} steps: {self.valid_rmse[-1]:.6g}")
        return "\n".join(x for x in lines if x)

    def __repr__(self) -> str:
        return (f"TuningReport(method={self.method!r}, eta={self.eta:.6g}, steps={self.steps}, "
                f"objective={self.objective_value:.6g})")


def tune_step_size(X: Any, y: Any, *, method: str = "tbv", steps: int = 40, split: float = 0.5, seed: int = 0,
                   grid: Any = None, objective: str = "final", splits: int = 1, refine: bool = True,
                   meta_steps: int = 100, batch_size: Optional[int] = None, progress: bool = False) -> TuningReport:
    """Tune the step size of t-step GD (or SGD) for your own least-squares data.

    Parameters
    ----------
    X, y : (n, d) features and (n,) targets
    method : "tbv" (train-by-validation: shuffle with ``seed``, train on the first ``split``
        fraction of the rows, score on the rest — the choice that generalizes when samples are
        few or noisy) or "tbt" (train-by-train: train and score on all rows)
    steps : inner steps t
    grid : step sizes to try; default the paper's 25 log-spaced values rescaled to the data,
        η·L/2 ∈ [1e−6, 1] with L = λmax(XᵀX/n_train)
    splits : TbV only: average the meta-objective over this many random splits (tasks)
    refine : polish the grid optimum by meta-gradient descent on log η (kept if it improves
        the meta-objective)

    Returns
    -------
    TuningReport
    """
    start = time.perf_counter()
    method = choice(method, "method", ("tbv", "tbt"))
    objective = choice(objective, "objective", OBJECTIVES)
    X = real_array(X, "X", 2)
    y = real_array(y, "y", 1)
    if y.size != X.shape[0]:
        raise ValueError(f"y has {y.size} entries but X has {X.shape[0]} rows")
    t = positive_int(steps, "steps")
    seed = positive_int(seed, "seed", minimum=0)
    splits = positive_int(splits, "splits")
    split = real_scalar(split, "split")
    n, d = X.shape
    if method == "tbv":
        if not 0.0 < split < 1.0:
            raise ValueError(f"split must be in (0, 1) for train-by-validation; got {split}")
        n1 = int(round(split * n))
        if n1 < 1 or n1 >= n:
            raise ValueError(f"split = {split} leaves no training or no validation rows out of n = {n}")
        nv = n - n1
        rng = np.random.default_rng(seed)
        perms = [rng.permutation(n) for _ in range(splits)]
    else:
        n1, nv = n, 0
        perms = [np.arange(n)]
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size")
        if batch_size > n1:
            raise ValueError(f"batch_size = {batch_size} exceeds the {n1} training rows")
    on = "valid" if method == "tbv" else "train"
    Xs = np.stack([X[p] for p in perms])
    Ys = np.stack([y[p][:, None] for p in perms])
    L = _top_eigenvalue(Xs[0, :n1]) if n1 else 0.0
    if grid is None:
        etas = PAPER_GRID * (2.0 / L if L > 0 else 1.0)
    else:
        etas = step_sizes(grid)[0]
    sig = np.array([0.0])
    bs_seeds = [seed * 1000003 + i for i in range(len(perms))]
    if batch_size is None:
        with blas_threads(1):
            parts = _prep_chunk(Xs, Ys, None, [_Split(on, n1, nv)], t)[0]
        prep = PreparedTasks(on=on, steps=t, space=parts["space"], n_train=n1, n_valid=nv, theta=parts["theta"],
                             C=parts["C"], nu=parts["nu"], yy=parts["yy"], A=parts.get("A"), Mv=parts.get("Mv"),
                             Yv=parts.get("Yv"), F_train=None, F_valid=None, family=None)

        def fun_many(e: np.ndarray, grad: bool) -> Dict[str, Any]:
            return prep.objective(e, sig, objective=objective, grad=grad)
    else:
        sgd_b = np.stack([api.sgd_batches(n1, batch_size, t, bs_seeds[i]) for i in range(len(perms))])

        def fun_many(e: np.ndarray, grad: bool) -> Dict[str, Any]:
            raw = _sgd_stack(Xs, Ys, None, n1, nv, on, sgd_b, e, np.ones((1, 1)), np.array([np.inf]), t, grad)
            return _aggregate(raw, objective, t)

    with blas_threads(1):
        gv = fun_many(etas, False)["value"][0]
    bi = int(_argmin_rows(gv[None, :])[0])
    grid_eta = float(etas[bi])
    eta, best = grid_eta, float(gv[bi])
    mg = None
    if refine and np.isfinite(best) and grid_eta > 0:
        def fun(e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            r = fun_many(e, True)
            return r["value"][0], r["grad"][0]
        with blas_threads(1):
            e_hist, v_hist, g_hist = _meta_optimize(fun, np.array([grid_eta]), meta_steps, "adam", 0.05, "log", "sqrt",
                                                    {}, log_value=objective == "final")
        e_hist, v_hist, g_hist = e_hist[:, 0], v_hist[:, 0], g_hist[:, 0]
        mg = MetaGDResult(eta=float(e_hist[-1]), etas=e_hist, values=v_hist, grads=g_hist, optimizer="adam",
                          parametrization="log", lr=0.05, on=on, objective=objective, steps=t, seconds=0.0)
        vb = np.where(np.isfinite(v_hist), v_hist, np.inf)
        j = int(np.argmin(vb))
        if vb[j] < best:
            eta, best = float(e_hist[j]), float(vb[j])
    # per-step curves at the chosen η (plain unroll on each split)
    tr_curves: List[np.ndarray] = []
    va_curves: List[np.ndarray] = []
    w_first: Optional[np.ndarray] = None
    for i in range(len(perms)):
        Xi, yi = Xs[i], Ys[i][:, 0]
        Xtr, ytr, Xv, yv = Xi[:n1], yi[:n1], Xi[n1:], yi[n1:]
        tr, va = np.empty(t + 1), np.empty(t + 1)

        def rec(tau: int, W: np.ndarray) -> None:
            r = Xtr @ W[:, 0] - ytr
            tr[tau] = math.sqrt(float(np.mean(r * r)))
            if nv:
                rv = Xv @ W[:, 0] - yv
                va[tau] = math.sqrt(float(np.mean(rv * rv)))

        batches = None if batch_size is None else api.sgd_batches(n1, batch_size, t, bs_seeds[i])
        W, _ = unroll_truncated(Xtr, ytr[:, None], np.array([eta]), t, batches=batches, record=rec)
        tr_curves.append(tr)
        va_curves.append(va)
        if w_first is None:
            w_first = W[:, 0].copy()
    assert w_first is not None  # at least one split ran
    return TuningReport(method=method, eta=eta, grid_eta=grid_eta, grid=etas, grid_values=gv, objective_value=best,
                        steps=t, n_train=n1, n_valid=nv, splits=len(perms), train_rmse=np.mean(tr_curves, axis=0),
                        valid_rmse=np.mean(va_curves, axis=0) if nv else None, w=w_first, L=L, meta_gd=mg,
                        seconds=time.perf_counter() - start)


def _top_eigenvalue(X: np.ndarray, iterations: int = 50) -> float:
    """λmax(XᵀX/n) by power iteration on the smaller Gram matrix (seeded, deterministic)."""
    n, d = X.shape
    G = (X @ X.T if n <= d else X.T @ X) / n
    v = np.random.default_rng(0).standard_normal(G.shape[0])
    lam = 0.0
    for _ in range(iterations):
        w = G @ v
        lam = float(np.linalg.norm(w))
        if lam == 0.0:
            return 0.0
        v = w / lam
    return float(v @ (G @ v))
