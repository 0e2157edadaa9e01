"""Learned optimizers (SPEC §7): the per-coordinate MLP optimizer, its meta-gradients through
truncated unrolls, meta-training (train-by-train or train-by-validation) and evaluation.

Everything per inner step runs in the compiled core; Python only validates, chooses and
collects. Quick tour::

    import metastep as ms
    from metastep import data, learned
    digits = data.load_digits()
    pool, test = data.split(digits, (1400, 397), seed=0)
    opt = learned.meta_train(pool, method="tbv", n_train=150, n_valid=150, meta_steps=100)
    curve = learned.train_curve(opt, pool.subset(range(300)), test, steps=1000)
    opt.save("opt.npz"); learned.LearnedOptimizer.load("opt.npz")

Conventions: ``sizes`` are the inner network's layer sizes (input, hidden..., classes), default
``(64, 100, 20, 10)`` for the 8×8 digits (``(784, 100, 20, 10)`` for MNIST). The meta-loss of a
truncation of T steps is (1/T)·Σ_{s=1..T} ℓ(θ_s), ℓ the mean cross-entropy of a minibatch of the
meta set (the training subset for TbT, the validation split for TbV).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .data import Dataset

__all__ = [
    "DIGITS_SIZES", "MNIST_SIZES", "NUM_OPT_PARAMS", "ESTIMATORS", "LearnedOptimizer", "Curve", "MetaGradient",
    "init_optimizer", "init_network", "num_params", "loss_grad", "hessian_vector_product", "optimizer_step",
    "meta_gradient", "meta_train", "train_curve", "tune_sgd", "estimator_bias_variance",
]

DIGITS_SIZES: Tuple[int, ...] = (64, 100, 20, 10)
MNIST_SIZES: Tuple[int, ...] = (784, 100, 20, 10)
#: number of weights of the per-coordinate optimizer MLP (31·32 + 32 + 32·2 + 2)
NUM_OPT_PARAMS: int = int(_core.lopt_num_params)
ESTIMATORS = ("first", "second", "es")
_DTYPES = ("float64", "float32")


# ---------------------------------------------------------------- validation helpers
def _dtype(dtype: str) -> str:
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"learned optimizers run in float64 or float32, not {dtype!r}")
    return dtype


def _sizes(sizes: Sequence[int]) -> List[int]:
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"sizes must be a sequence of integers, got {sizes!r}")
    out = []
    for v in sizes:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"sizes must be integers, got {list(sizes)!r}")
        out.append(int(v))
    if len(out) < 2:
        raise ValueError("sizes needs at least an input and an output size")
    if any(v < 1 for v in out):
        raise ValueError(f"every layer size must be positive, got {out}")
    if out[-1] < 2:
        raise ValueError("the output layer needs at least 2 classes")
    return out


def _vec(x: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf (first at index {int(np.argmax(~np.isfinite(a)))})")
    return a


def _mat(x: Any, shape: Tuple[int, int], name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _data(d: Any, sizes: Sequence[int], name: str) -> Dataset:
    if not isinstance(d, Dataset):
        raise TypeError(f"{name} must be a metastep.data.Dataset, got {type(d).__name__}")
    if d.features != sizes[0]:
        raise ValueError(f"{name} has {d.features} features but the network's input size is {sizes[0]}")
    if d.classes > sizes[-1] or int(d.y.max()) >= sizes[-1]:
        raise ValueError(f"{name} has labels up to {int(d.y.max())} but the network has {sizes[-1]} outputs")
    return d


def _posint(v: Any, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {v}")
    return int(v)


def _seed(v: Any, name: str = "seed") -> int:
    v = _posint(v, name, 0)
    if v >= 2 ** 64:
        raise ValueError(f"{name} must be below 2**64")
    return v


def _posfloat(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    f = float(v)
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be positive and finite, got {v}")
    return f


# ---------------------------------------------------------------- small building blocks
def num_params(sizes: Sequence[int] = DIGITS_SIZES) -> int:
    """Number of parameters of the inner network with these layer sizes."""
    return int(_core.nn_num_params(_sizes(sizes)))


def init_network(sizes: Sequence[int] = DIGITS_SIZES, seed: int = 0) -> np.ndarray:
    """Flat parameter vector of a fresh inner network (Glorot-uniform weights, zero biases)."""
    return _core.nn_init_params(_sizes(sizes), _seed(seed))


def init_optimizer(seed: int = 0) -> np.ndarray:
    """Initial weights φ of the optimizer MLP (1090 values, Glorot-uniform, zero biases)."""
    return _core.lopt_init_params(_seed(seed))


def loss_grad(theta: Any, data: Dataset, sizes: Sequence[int] = DIGITS_SIZES,
              dtype: str = "float64") -> Tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of the network ``theta`` on all of ``data`` and its gradient."""
    s = _sizes(sizes)
    th = _vec(theta, num_params(s), "theta")
    d = _data(data, s, "data")
    loss, g, _ = getattr(_core, f"nn_loss_grad_{_dtype(dtype)}")(s, th, d.X, d.y)
    return float(loss), g


def hessian_vector_product(theta: Any, v: Any, data: Dataset, sizes: Sequence[int] = DIGITS_SIZES,
                           dtype: str = "float64") -> np.ndarray:
    """Exact ∇²L(θ)·v of the mean cross-entropy on ``data`` (Pearlmutter's R-operator)."""
    s = _sizes(sizes)
    P = num_params(s)
    d = _data(data, s, "data")
    return getattr(_core, f"nn_hvp_{_dtype(dtype)}")(s, _vec(theta, P, "theta"), d.X, d.y, _vec(v, P, "v"))[2]


def optimizer_step(phi: Any, theta: Any, grad: Any, M: Any = None, V: Any = None, step: int = 0,
                   sizes: Sequence[int] = DIGITS_SIZES, dtype: str = "float64") -> Dict[str, np.ndarray]:
    """One update of the learned optimizer: new θ, moments M, V (P × 5), the update, the 22
    normalized per-coordinate features, the 9 time features and the MLP outputs (a, b)."""
    s = _sizes(sizes)
    P = num_params(s)
    M = np.zeros((P, 5)) if M is None else M
    V = np.zeros((P, 5)) if V is None else V
    _posint(step, "step", 0)
    return getattr(_core, f"lopt_step_{_dtype(dtype)}")(
        s, _vec(phi, NUM_OPT_PARAMS, "phi"), _vec(theta, P, "theta"), _vec(grad, P, "grad"),
        _mat(M, (P, 5), "M"), _mat(V, (P, 5), "V"), int(step))


# ---------------------------------------------------------------- meta-gradients
@dataclass(frozen=True)
class MetaGradient:
    """Meta-loss of one truncation, its gradient w.r.t. φ and the inner state after it."""

    meta_loss: float
    grad: Optional[np.ndarray]
    estimator: str
    train_losses: np.ndarray
    meta_losses: np.ndarray
    nonfinite: Dict[str, Any]
    state: Dict[str, Any]
    extra: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        g = "None" if self.grad is None else f"|g|={np.linalg.norm(self.grad):.4g}"
        return (f"MetaGradient(estimator={self.estimator!r}, meta_loss={self.meta_loss:.6g}, {g}, "
                f"steps={self.train_losses.size}, nonfinite={self.nonfinite['failed']})")


def _unroll_bytes(P: int, T: int, rows: int, tape: bool, gradients: bool, itemsize: int) -> int:
    """Memory an unroll of T inner steps holds: the minibatch plans (4 bytes a row index), the
    per-step losses and, for a backward pass, the tape (θ, g, M, V and the meta-gradient per step:
    13 P values) or the recorded gradients (P values per step)."""
    per_step = 4 * rows + 16 + (13 * P * itemsize + 5 * 32 if tape else 0) + (P * itemsize + 32 if gradients else 0)
    return T * per_step


def _guard_unroll(what: str, P: int, T: int, rows: int, tape: bool, gradients: bool, dtype: str,
                  memory_limit: Optional[int]) -> None:
    from .api import memory_guard_bytes
    need = _unroll_bytes(P, T, rows, tape, gradients, 4 if dtype == "float32" else 8)
    memory_guard_bytes(what, need, memory_limit, "use shorter truncations (length=) or fewer steps")


def meta_gradient(phi: Any, train: Dataset, meta: Dataset, *, length: int, estimator: str = "first",
                  sizes: Sequence[int] = DIGITS_SIZES, state: Optional[Dict[str, Any]] = None, init_seed: int = 0,
                  batch_size: int = 32, meta_batch: int = 0, seed: int = 0, es_pairs: int = 8,
                  es_sigma: float = 0.01, es_seed: int = 0, frozen_gradients: Any = None,
                  forward_only: bool = False, return_gradients: bool = False,
                  dtype: str = "float64", memory_limit: Optional[int] = None) -> MetaGradient:
    """Meta-loss of a truncation of ``length`` inner steps and its gradient w.r.t. ``phi``.

    Parameters
    ----------
    estimator : "first" (inner gradients treated as constants; the paper's estimator),
        "second" (exact, with Hessian-vector products) or "es" (antithetic evolution strategies
        with ``es_pairs`` pairs of N(0, I) directions scaled by ``es_sigma``).
    state : dict with ``theta``, ``M``, ``V``, ``step`` to start from (default: a fresh network
        from ``init_seed`` and zero moments). The state after the truncation is returned.
    meta_batch : rows of the meta set per step (0: all of them).
    frozen_gradients : (length × P) inner gradients to use instead of computing them (the
        first-order estimator is the exact gradient of this "frozen" meta-loss).
    forward_only : only the meta-loss (no gradient). ``return_gradients``: also return the
        inner gradients g_s (as ``extra["gradients"]``).
    memory_limit : bytes the unroll may hold (tape, minibatch plans; default
        :data:`metastep.DEFAULT_MEMORY_LIMIT`); beyond it MemoryError is raised before anything
        is allocated.
    """
    s = _sizes(sizes)
    P = num_params(s)
    dt = _dtype(dtype)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    T = _posint(length, "length")
    tr, me = _data(train, s, "train"), _data(meta, s, "meta")
    bs, mb = _posint(batch_size, "batch_size"), _posint(meta_batch, "meta_batch", 0)
    rows = min(bs, tr.n) + (me.n if mb == 0 else min(mb, me.n))
    _guard_unroll(f"a truncation of length {T}", P, T, rows,
                  tape=not forward_only and estimator != "es", gradients=bool(return_gradients), dtype=dt,
                  memory_limit=memory_limit)
    if state is None:
        state = {"theta": init_network(s, init_seed), "M": np.zeros((P, 5)), "V": np.zeros((P, 5)), "step": 0}
    if not isinstance(state, dict) or not {"theta", "M", "V", "step"} <= set(state):
        raise TypeError("state must be a dict with keys theta, M, V, step")
    fg = None if frozen_gradients is None else _mat(frozen_gradients, (T, P), "frozen_gradients")
    if fg is not None and estimator != "first" and not forward_only:
        raise ValueError("frozen_gradients define the first-order estimator only")
    r = getattr(_core, f"truncation_{dt}")(
        s, _vec(phi, NUM_OPT_PARAMS, "phi"), tr.X, tr.y, me.X, me.y, _vec(state["theta"], P, "state['theta']"),
        _mat(state["M"], (P, 5), "state['M']"), _mat(state["V"], (P, 5), "state['V']"),
        _posint(state["step"], "state['step']", 0), T, _posint(batch_size, "batch_size"),
        _posint(meta_batch, "meta_batch", 0), _seed(seed), estimator, _posint(es_pairs, "es_pairs"),
        _posfloat(es_sigma, "es_sigma"), _seed(es_seed, "es_seed"), fg, bool(forward_only), bool(return_gradients))
    extra = {k: r[k] for k in ("es_dirderiv", "es_dirs", "gradients") if k in r}
    if "es_dirderiv" in extra:
        extra["es_dirderiv"] = np.asarray(extra["es_dirderiv"])
    return MetaGradient(float(r["meta_loss"]), r["grad"], estimator, np.asarray(r["train_losses"]),
                        np.asarray(r["meta_losses"]), dict(r["nonfinite"]),
                        {"theta": r["theta"], "M": r["M"], "V": r["V"], "step": int(r["step"])}, extra)


# ---------------------------------------------------------------- the optimizer object
@dataclass
class LearnedOptimizer:
    """Weights φ of a learned optimizer, how it was trained and its meta-training history."""

    phi: np.ndarray
    method: str = "untrained"
    config: Dict[str, Any] = field(default_factory=dict)
    history: Dict[str, np.ndarray] = field(default_factory=dict)
    clipped_total: int = 0
    nonfinite_total: int = 0
    nonfinite_events: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.phi = _vec(self.phi, NUM_OPT_PARAMS, "phi")

    def __repr__(self) -> str:
        steps = int(self.history["meta_loss"].size) if "meta_loss" in self.history else 0
        return (f"LearnedOptimizer(method={self.method!r}, meta_steps={steps}, clipped={self.clipped_total}, "
                f"nonfinite={self.nonfinite_total})")

    def save(self, path: str) -> None:
        """Save φ, the configuration and the history to an ``.npz`` file."""
        meta = {"method": self.method, "config": self.config, "clipped_total": self.clipped_total,
                "nonfinite_total": self.nonfinite_total, "nonfinite_events": self.nonfinite_events,
                "seconds": self.seconds, "format": "metastep-learned-optimizer-1"}
        arrays: Dict[str, Any] = {f"history_{k}": np.asarray(v) for k, v in self.history.items()}
        arrays.update(phi=self.phi, meta=np.array(json.dumps(meta)))
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str) -> "LearnedOptimizer":
        """Load an optimizer written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            if "phi" not in z or "meta" not in z:
                raise ValueError(f"{path}: not a metastep learned-optimizer file (needs 'phi' and 'meta')")
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != "metastep-learned-optimizer-1":
                raise ValueError(f"{path}: unknown format {meta.get('format')!r}")
            hist = {k[len("history_"):]: z[k] for k in z.files if k.startswith("history_")}
            return cls(np.array(z["phi"]), meta["method"], meta["config"], hist, int(meta["clipped_total"]),
                       int(meta["nonfinite_total"]), list(meta["nonfinite_events"]), float(meta["seconds"]))


#: W2 and b2 of the optimizer MLP in φ (the 32 → 2 output layer)
_OUTPUT_LAYER = slice(31 * 32 + 32, NUM_OPT_PARAMS)

_HISTORY_KEYS = ("meta_step", "task", "length", "inner_step0", "clipped", "meta_loss", "grad_norm",
                 "final_train_loss", "finite")


def meta_train(pool: Dataset, *, method: str = "tbt", n_train: int = 200, n_valid: int = 0, meta_steps: int = 100,
               sizes: Sequence[int] = DIGITS_SIZES, estimator: str = "first", dtype: str = "float32", seed: int = 0,
               phi0: Any = None, batch_size: int = 32, meta_batch: int = 128, trunc_base: float = 10.0,
               trunc_mean: float = 30.0, len_base: float = 50.0, len_mean: float = 100.0, max_len: int = 0,
               lr: float = 1e-2, rms_decay: float = 0.9, rms_bias_correction: bool = True, clip: float = 1e4,
               es_pairs: int = 8,
               es_sigma: float = 0.01, select_every: int = 0, select_on: Optional[Tuple[Dataset, Dataset]] = None,
               select_steps: int = 1000, rollback: float = 0.0, stall_steps: int = 0, stall_level: float = 0.98,
               stall_grad: float = 0.05, init_output_scale: float = 0.1, progress: bool = True,
               desc: Optional[str] = None) -> LearnedOptimizer:
    """Meta-train the optimizer by truncated unrolls (SPEC §7).

    Each task draws ``n_train`` (+ ``n_valid``) rows of ``pool`` at random and a fresh network;
    it is trained for round(trunc_base + Exp(trunc_mean)) truncations of
    round(len_base + Exp(len_mean)) steps (capped at ``max_len`` if positive), each followed by one
    RMSProp step on φ (learning rate ``lr``, decay ``rms_decay``, second moment bias-corrected as
    in Adam unless ``rms_bias_correction=False``) with the meta-gradient clipped to ±``clip``.
    ``method="tbt"``: meta-loss on the training rows; ``"tbv"``: on the ``n_valid`` validation
    rows (which the inner training never sees). Clipped values and non-finite meta-gradients are
    counted (a non-finite meta-gradient skips the update and abandons that task; its step and
    quantity are recorded in ``nonfinite_events``).

    Checkpoint selection (optional, ``select_every > 0``): every ``select_every`` meta-steps (and
    at the end) the current φ trains a fresh network on ``select_on[0]`` for ``select_steps``
    steps; its score is the mean loss on ``select_on[1]`` over that run (the meta-objective over
    the whole horizon instead of one truncation). The φ with the lowest score is returned. For
    train-by-train pass (training rows, the same rows); for train-by-validation (training rows,
    validation rows). The scores are in ``config["selection"]``. With ``rollback > 0``, a
    checkpoint whose score exceeds the best one by more than ``rollback`` (relative) restarts the
    meta-training from the best φ (RMSProp statistics reset, new tasks); restarts are counted in
    ``config["selection"]["restarts"]``.

    Initialization: φ0 (default ``init_optimizer(seed)``) with its output layer (W2, b2) scaled
    by ``init_output_scale`` (default 0.1). With 1 (Glorot) a random φ already moves every
    coordinate by up to ~0.01 per step, with a large component common to all coordinates (the 9
    time features and the positive moment features are the same or of one sign everywhere), which
    often drives a fresh network to chance level (or to divergence) before meta-training has
    learned anything. With 0.1 that drift is ten times slower; with 0 the initial optimizer makes
    no update at all and the first meta-gradients reach only the output layer.

    Stall restarts (optional, ``stall_steps > 0``): an optimizer can drive the inner network to
    chance level (all ReLUs dead or all weights shrunk to ~0: training loss ≈ log(classes) and
    every gradient, hence the meta-gradient, ≈ 0), after which no meta-gradient can move it away
    and it kills every fresh network too. When ``stall_steps`` consecutive meta-steps end their
    truncation with the inner training loss at or above ``stall_level``·log(classes) *and* a
    meta-gradient norm below ``stall_grad`` times the median norm of all earlier meta-steps, the
    meta-training restarts from a fresh optimizer (the initialization above with seed
    ``seed + 104729·r`` for the r-th restart; RMSProp statistics reset, a new task); the
    meta-step budget is not extended.
    The same rule applies to both methods; restarts are listed in ``config["stall"]``, and the
    checkpoint selection (if on) ranges over all of them.
    """
    import time
    if method not in ("tbt", "tbv"):
        raise ValueError(f"method must be 'tbt' or 'tbv', not {method!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    s = _sizes(sizes)
    dt = _dtype(dtype)
    _data(pool, s, "pool")
    n_train = _posint(n_train, "n_train")
    n_valid = _posint(n_valid, "n_valid", 0)
    if method == "tbv" and n_valid < 1:
        raise ValueError("train-by-validation needs n_valid >= 1")
    if n_train + n_valid > pool.n:
        raise ValueError(f"n_train + n_valid = {n_train + n_valid} exceeds the pool's {pool.n} samples")
    meta_steps = _posint(meta_steps, "meta_steps", 0)
    cfg: Dict[str, Any] = {"estimator": estimator, "on_valid": method == "tbv", "n_train": n_train, "n_valid": n_valid,
           "batch_size": _posint(batch_size, "batch_size"), "meta_batch": _posint(meta_batch, "meta_batch", 0),
           "trunc_base": float(trunc_base), "trunc_mean": float(trunc_mean), "len_base": float(len_base),
           "len_mean": float(len_mean), "max_len": _posint(max_len, "max_len", 0), "lr": _posfloat(lr, "lr"),
           "rms_decay": float(rms_decay), "rms_bias_correction": bool(rms_bias_correction), "clip": _posfloat(clip, "clip"), "es_pairs": _posint(es_pairs, "es_pairs"),
           "es_sigma": _posfloat(es_sigma, "es_sigma"), "seed": _seed(seed)}
    for key in ("trunc_base", "len_base"):
        if not cfg[key] >= 1:
            raise ValueError(f"{key} must be at least 1")
    for key in ("trunc_mean", "len_mean"):
        if not (math.isfinite(cfg[key]) and cfg[key] >= 0):
            raise ValueError(f"{key} must be finite and non-negative")
    if not 0 <= cfg["rms_decay"] < 1:
        raise ValueError("rms_decay must be in [0, 1)")
    init_output_scale = float(init_output_scale)
    if not (math.isfinite(init_output_scale) and init_output_scale >= 0):
        raise ValueError("init_output_scale must be finite and non-negative")

    def _init(sd: int) -> np.ndarray:
        p = init_optimizer(sd)
        p[_OUTPUT_LAYER] *= init_output_scale
        return p

    phi = _init(seed) if phi0 is None else _vec(phi0, NUM_OPT_PARAMS, "phi0")
    t0 = time.perf_counter()
    trainer = getattr(_core, f"MetaTrainer_{dt}")(s, pool.X, pool.y, phi, cfg)
    records: List[Dict[str, Any]] = []
    bar = None
    if progress and meta_steps:
        from tqdm.auto import tqdm
        bar = tqdm(total=meta_steps, desc=desc or f"meta-training ({method.upper()})", leave=False)
    select_every = _posint(select_every, "select_every", 0)
    rollback = float(rollback)
    if not (math.isfinite(rollback) and rollback >= 0):
        raise ValueError("rollback must be finite and non-negative")
    if select_every:
        if select_on is None or len(select_on) != 2:
            raise ValueError("select_every needs select_on = (training data, scoring data)")
        _data(select_on[0], s, "select_on[0]")
        _data(select_on[1], s, "select_on[1]")
        select_steps = _posint(select_steps, "select_steps")
    selection: List[Dict[str, Any]] = []
    best_phi = None
    stall_steps = _posint(stall_steps, "stall_steps", 0)
    stall_level, stall_grad = float(stall_level), float(stall_grad)
    if not (0 < stall_level <= 1):
        raise ValueError("stall_level must be in (0, 1]")
    if not (0 < stall_grad < math.inf):
        raise ValueError("stall_grad must be positive and finite")
    norms: List[float] = []
    chance = math.log(s[-1])
    stall_run = 0
    stalls: List[Dict[str, Any]] = []

    def _score(k: int) -> None:
        nonlocal best_phi
        assert select_on is not None  # scoring runs only with select_every > 0, which requires it
        cand = LearnedOptimizer(trainer.phi, method)
        c = train_curve(cand, select_on[0], select_on[1], steps=select_steps, sizes=s,
                        record_every=max(1, select_steps // 20), init_seed=seed + 31337, batch_seed=seed + 4242,
                        dtype=dt)
        score = float(np.mean(c.test_loss)) if not c.nonfinite["failed"] else math.inf
        best_score = min((e["score"] for e in selection), default=math.inf)
        selection.append({"meta_step": k, "score": score, "restart": False})
        if best_phi is None or score < best_score:
            best_phi = np.array(trainer.phi)
        elif rollback > 0 and k < meta_steps and not score <= best_score * (1.0 + rollback):
            trainer.restart_from(best_phi)
            selection[-1]["restart"] = True

    for k in range(1, meta_steps + 1):
        rec = trainer.run(1)[0]
        records.append(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(meta_loss=f"{rec['meta_loss']:.3f}", refresh=False)
        if select_every and (k % select_every == 0 or k == meta_steps):
            _score(k)
        if stall_steps:
            stalled = (rec["finite"] and rec["final_train_loss"] >= stall_level * chance and bool(norms)
                       and rec["grad_norm"] < stall_grad * float(np.median(norms)))
            if rec["finite"]:
                norms.append(float(rec["grad_norm"]))
            stall_run = stall_run + 1 if stalled else 0
            if stall_run >= stall_steps and k < meta_steps:
                new_seed = (seed + 104729 * (len(stalls) + 1)) % 2 ** 64
                trainer.restart_from(_init(new_seed))
                stalls.append({"meta_step": k, "seed": new_seed})
                stall_run = 0
    if bar is not None:
        bar.close()
    hist = {k: np.array([r[k] for r in records]) for k in _HISTORY_KEYS}
    events = [{"meta_step": r["meta_step"], "quantity": r["nonfinite_quantity"], "inner_step": r["nonfinite_step"]}
              for r in records if not r["finite"]]
    config = dict(cfg, method=method, sizes=s, dtype=dt, meta_steps=meta_steps)
    if stall_steps:
        config["stall"] = {"steps": stall_steps, "level": stall_level, "grad": stall_grad, "restarts": stalls}
    config["init_output_scale"] = init_output_scale
    phi_out = trainer.phi
    if select_every:
        best = min(selection, key=lambda e: e["score"])
        config["selection"] = {"every": select_every, "steps": select_steps, "scores": selection,
                               "chosen_meta_step": best["meta_step"], "rollback": rollback,
                               "restarts": int(trainer.restarts) - len(stalls)}
        phi_out = best_phi
    return LearnedOptimizer(phi_out, method, config, hist, int(trainer.clipped_total),
                            int(trainer.nonfinite_total), events, time.perf_counter() - t0)


# ---------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Curve:
    """Loss and accuracy on the training and test sets along one inner training run."""

    optimizer: str
    steps: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    nonfinite: Dict[str, Any]
    theta: np.ndarray

    def __repr__(self) -> str:
        return (f"Curve({self.optimizer}, steps={int(self.steps[-1])}, final train acc={self.train_acc[-1]:.3f}, "
                f"test acc={self.test_acc[-1]:.3f}, nonfinite={self.nonfinite['failed']})")


def train_curve(optimizer: Union[LearnedOptimizer, str], train: Dataset, test: Dataset, *, steps: int = 1000,
                sizes: Sequence[int] = DIGITS_SIZES, batch_size: int = 32, record_every: int = 50,
                lr: float = 0.1, init_seed: int = 0, batch_seed: int = 1, dtype: str = "float32",
                memory_limit: Optional[int] = None) -> Curve:
    """Train a fresh network (``init_seed``) on ``train`` for ``steps`` minibatch steps with a
    learned optimizer, ``"sgd"`` (step size ``lr``) or ``"adam"`` (``lr``, β = (0.9, 0.999)),
    recording train and test loss/accuracy every ``record_every`` steps. A non-finite quantity
    stops the run and is reported in ``nonfinite`` (which quantity, which step)."""
    s = _sizes(sizes)
    dt = _dtype(dtype)
    if isinstance(optimizer, LearnedOptimizer):
        kind, phi, label = "learned", optimizer.phi, f"learned ({optimizer.method})"
    elif optimizer in ("sgd", "adam"):
        kind, phi, label = str(optimizer), np.zeros(0), f"{optimizer} (lr={lr:g})"
    else:
        raise ValueError(f"optimizer must be a LearnedOptimizer, 'sgd' or 'adam', not {optimizer!r}")
    tr, te = _data(train, s, "train"), _data(test, s, "test")
    steps_, every = _posint(steps, "steps"), _posint(record_every, "record_every")
    _guard_unroll(f"train_curve with {steps_} steps", num_params(s), steps_, min(_posint(batch_size, "batch_size"), tr.n),
                  tape=False, gradients=False, dtype=dt, memory_limit=memory_limit)
    r = getattr(_core, f"train_curve_{dt}")(s, phi, tr.X, tr.y, te.X, te.y, kind, _posint(steps, "steps"),
                                            _posint(batch_size, "batch_size"), _posint(record_every, "record_every"),
                                            _posfloat(lr, "lr"), _seed(init_seed, "init_seed"),
                                            _seed(batch_seed, "batch_seed"))
    return Curve(label, np.asarray(r["steps"]), np.asarray(r["train_loss"]), np.asarray(r["train_acc"]),
                 np.asarray(r["test_loss"]), np.asarray(r["test_acc"]), dict(r["nonfinite"]), r["theta"])


def tune_sgd(train: Dataset, valid: Dataset, *, steps: int = 1000, lrs: Sequence[float] = tuple(np.geomspace(1e-3, 3.0, 15)),
             sizes: Sequence[int] = DIGITS_SIZES, batch_size: int = 32, seeds: Sequence[int] = (0,),
             dtype: str = "float32") -> Dict[str, Any]:
    """Grid search of SGD's step size: train on ``train`` for ``steps`` steps from each seed and
    pick the ``lr`` with the lowest mean final validation loss (non-finite runs lose)."""
    lrs = [_posfloat(v, "lr") for v in lrs]
    if not lrs:
        raise ValueError("lrs must not be empty")
    vals = []
    for lr in lrs:
        v = []
        for sd in seeds:
            c = train_curve("sgd", train, valid, steps=steps, sizes=sizes, batch_size=batch_size, record_every=steps,
                            lr=lr, init_seed=sd, batch_seed=sd + 1, dtype=dtype)
            v.append(c.test_loss[-1] if not c.nonfinite["failed"] and np.isfinite(c.test_loss[-1]) else np.inf)
        vals.append(float(np.mean(v)))
    best = int(np.argmin(vals))
    return {"lr": lrs[best], "lrs": np.array(lrs), "valid_loss": np.array(vals), "best_index": best}


# ---------------------------------------------------------------- estimator comparison
def estimator_bias_variance(train: Dataset, meta: Dataset, *, phi: Any = None, length: int = 20, samples: int = 8,
                            sizes: Sequence[int] = DIGITS_SIZES, es_pairs: int = 16, es_sigma: float = 0.01,
                            batch_size: int = 32, meta_batch: int = 0, init_seed: int = 0, warmup: int = 0,
                            seed: int = 0, dtype: str = "float64") -> Dict[str, Any]:
    """Bias and variance of the first-order and ES meta-gradients against the exact
    (second-order) one, over ``samples`` truncations that differ in their minibatches.

    Every sample i starts from the same state (a fresh network, after ``warmup`` steps of the
    optimizer) and gives g2_i (exact), g1_i (first-order), ge_i (ES). With ḡ2 = mean_i g2_i:

    * ``bias``: ‖mean_i(g_i) − ḡ2‖ / ‖ḡ2‖ (error of the estimator's mean);
    * ``paired_error``: mean_i ‖g_i − g2_i‖ / ‖g2_i‖ (error on the same minibatches);
    * ``variance``: mean_i ‖g_i − mean(g)‖² / ‖ḡ2‖² (relative spread);
    * ``cosine``: cos(mean(g), ḡ2).

    The raw samples are returned under ``"samples"`` (arrays samples × 1090).
    """
    s = _sizes(sizes)
    phi = init_optimizer(0) if phi is None else _vec(phi, NUM_OPT_PARAMS, "phi")
    samples = _posint(samples, "samples", 2)
    state = None
    if warmup:
        w = meta_gradient(phi, train, meta, length=_posint(warmup, "warmup"), sizes=s, init_seed=init_seed,
                          batch_size=batch_size, meta_batch=meta_batch, seed=seed + 10 ** 6, forward_only=True,
                          dtype=dtype)
        state = w.state
    out: Dict[str, List[np.ndarray]] = {"second": [], "first": [], "es": []}
    for i in range(samples):
        for est in ("second", "first", "es"):
            r = meta_gradient(phi, train, meta, length=length, estimator=est, sizes=s, state=state,
                              init_seed=init_seed, batch_size=batch_size, meta_batch=meta_batch, seed=seed + i,
                              es_pairs=es_pairs, es_sigma=es_sigma, es_seed=seed + 7919 * (i + 1), dtype=dtype)
            if r.nonfinite["failed"]:
                raise FloatingPointError(f"sample {i}, estimator {est}: non-finite {r.nonfinite['quantity']} "
                                         f"at inner step {r.nonfinite['step']}")
            assert r.grad is not None  # every estimator returns a gradient
            out[est].append(r.grad)
    arr = {k: np.array(v) for k, v in out.items()}
    return summarize_estimators(arr) | {"samples": arr, "config": {"length": length, "samples": samples,
                                                                   "es_pairs": es_pairs, "es_sigma": es_sigma,
                                                                   "batch_size": batch_size, "warmup": warmup}}


def summarize_estimators(samples: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Bias/variance statistics of ``samples["first"]`` and ``samples["es"]`` against
    ``samples["second"]`` (see :func:`estimator_bias_variance`)."""
    g2 = samples["second"]
    ref = g2.mean(axis=0)
    nref = float(np.linalg.norm(ref))
    stats: Dict[str, Any] = {"reference_norm": nref}
    for k in ("second", "first", "es"):
        g = samples[k]
        mean = g.mean(axis=0)
        stats[k] = {
            "bias": float(np.linalg.norm(mean - ref) / nref),
            "paired_error": float(np.mean(np.linalg.norm(g - g2, axis=1) / np.linalg.norm(g2, axis=1))),
            "variance": float(np.mean(np.sum((g - mean) ** 2, axis=1)) / nref ** 2),
            "cosine": float(mean @ ref / (np.linalg.norm(mean) * nref)),
        }
    return stats
