"""Public entry points: unrolled runs and meta-gradients (SPEC §2–§4)."""
from __future__ import annotations

import functools
import glob
import math
import os
import re
import sys
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _core
from ._validate import check_step_range, choice, dtype_name, optional_int, positive_int, real_array, step_sizes
from .problems import LeastSquares, Quadratic
from .results import MetaGradResult, UnrollResult

__all__ = ["unroll", "metagrad", "sgd_batches", "cuda_available", "resolve_mode", "MODES", "OBJECTIVES", "DEFAULT_MEMORY_LIMIT", "itemsize"]

MODES = ("auto", "reverse", "checkpoint", "forward", "exact", "scaled", "scaled_forward", "scaled_reverse", "fd")
OBJECTIVES = ("final", "log")
ON = ("train", "valid")
#: Bytes that a stored trajectory (reverse mode, unroll history) may take before a call is refused.
DEFAULT_MEMORY_LIMIT = 4 * 2**30
#: Largest problem (d, or min(n, d) for least squares) that ``mode="auto"`` sends to the exact mode.
AUTO_EXACT_MAX_DIM = 2000

Problem = Union[Quadratic, LeastSquares]


def default_threads() -> int:
    """Cores this process may run on (the default thread count of batched calls)."""
    import os
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def itemsize(dtype: str) -> int:
    """Bytes per scalar of a precision."""
    return int(_core.itemsize[dtype_name(dtype)])


def _check_problem(problem: Any) -> Problem:
    if not isinstance(problem, (Quadratic, LeastSquares)):
        raise TypeError(f"problem must be a metastep.Quadratic or metastep.LeastSquares, not {type(problem).__name__}")
    return problem


def _schedule_and_steps(eta: Any, steps: Any, schedule: Any) -> tuple[Optional[np.ndarray], int]:
    if schedule is None:
        if eta is None:
            raise TypeError("give a step size eta (or a schedule=)")
        if steps is None:
            raise TypeError("steps (the number of inner GD steps t) is required")
        return None, positive_int(steps, "steps")
    if eta is not None:
        raise ValueError("give either eta or schedule=, not both")
    sched = real_array(schedule, "schedule", 1)
    if np.any(sched < 0):
        raise ValueError(f"schedule must be non-negative; got {sched[sched < 0][0]} at step {int(np.argmax(sched < 0))}")
    if steps is not None and positive_int(steps, "steps") != sched.size:
        raise ValueError(f"schedule has length {sched.size} but steps = {steps}")
    return sched, int(sched.size)


#: Largest number of samples a minibatch sequence indexes (row indices are 32-bit in the core).
MAX_SAMPLES = 2**31 - 1


def sgd_batches(n: int, batch_size: int, steps: int, seed: int = 0, *,
                memory_limit: Optional[int] = None) -> np.ndarray:
    """The minibatch row indices of SGD, shape (steps, batch_size): step τ uses rows
    ``batches[τ]`` (distinct within a step), drawn from ``seed`` by a fixed integer generator,
    so every mode, precision and machine sees the same sequence. The table takes
    4·steps·batch_size bytes; beyond ``memory_limit`` (default :data:`DEFAULT_MEMORY_LIMIT`)
    the call raises MemoryError before allocating."""
    n = positive_int(n, "n")
    b = positive_int(batch_size, "batch_size")
    if b > n:
        raise ValueError(f"batch_size = {b} exceeds the number of training samples n = {n}")
    if n > MAX_SAMPLES:
        raise ValueError(f"n = {n} exceeds {MAX_SAMPLES} samples (row indices are 32-bit)")
    steps = positive_int(steps, "steps")
    seed = positive_int(seed, "seed", minimum=0)
    memory_guard_bytes(f"the minibatch sequence ({steps} steps x batch_size {b})", 4 * (steps * b + n), memory_limit,
                       "use fewer steps or a smaller batch_size")
    return _core.sgd_batches(n, b, steps, seed)


def _sgd(problem: Problem, batch_size: Any, seed: Any, t: int, memory_limit: Optional[int] = None) -> Optional[np.ndarray]:
    if batch_size is None:
        return None
    if not isinstance(problem, LeastSquares):
        raise ValueError("batch_size= (minibatch SGD) applies to a LeastSquares task")
    return sgd_batches(problem.n, batch_size, t, seed, memory_limit=memory_limit)


def _limit(limit: Optional[int]) -> int:
    return DEFAULT_MEMORY_LIMIT if limit is None else positive_int(limit, "memory_limit")


def memory_guard_bytes(what: str, need: int, limit: Optional[int], advice: str) -> None:
    """Raise MemoryError (before anything is allocated) when ``what`` needs more than ``limit``
    bytes (default :data:`DEFAULT_MEMORY_LIMIT`)."""
    limit = _limit(limit)
    if need > limit:
        raise MemoryError(f"{what} would take {need / 2**30:.3g} GiB > limit {limit / 2**30:.3g} GiB "
                          f"(memory_limit=); {advice}")


def _memory_guard(what: str, states: int, d: int, dtype: str, limit: Optional[int], advice: str,
                  extra: int = 0) -> None:
    """``states`` stored vectors of dimension ``d`` (plus ``extra`` scalars per state)."""
    limit = _limit(limit)
    need = states * (d + extra) * itemsize(dtype)
    if need > limit:
        raise MemoryError(f"{what} would store {states} vectors of dimension {d} in {dtype} "
                          f"({need / 2**30:.3g} GiB > limit {limit / 2**30:.3g} GiB); {advice}")


def default_checkpoints(t: int) -> int:
    """Snapshots the checkpoint mode holds when ``checkpoints=`` is not given: about √t."""
    return max(2, math.isqrt(t - 1) + 1 if t > 1 else 1)


def unroll(problem: Problem, eta: Any = None, steps: Any = None, *, schedule: Any = None,
           dtype: Any = "float64", batch_size: Any = None, sgd_seed: Any = 0,
           memory_limit: Optional[int] = None) -> UnrollResult:
    """Run t steps of gradient descent and return the loss at every step.

    Parameters
    ----------
    problem : Quadratic or LeastSquares
    eta : float
        Constant step size (or give ``schedule``).
    steps : int
        Number of inner steps t ≥ 1 (inferred from ``schedule`` when omitted).
    schedule : array_like, shape (t,), optional
        One step size per step.
    dtype : {"float32", "float64", "longdouble", "quad", "mp"}
        Precision of the whole run (inputs are converted exactly from float64).
    batch_size : int, optional
        Least squares: minibatch SGD with this many distinct rows per step (see
        :func:`sgd_batches`, seeded by ``sgd_seed``); ``losses`` are full training losses.

    Returns
    -------
    UnrollResult
        ``losses`` (t + 1 values; ``valid_losses`` too for a task with a validation set),
        ``w_final``, ``status`` and ``diagnostics``.
    """
    problem = _check_problem(problem)
    dtype = dtype_name(dtype)
    sched, t = _schedule_and_steps(eta, steps, schedule)
    e = 0.0
    if sched is None:
        arr, scalar = step_sizes(eta)
        if not scalar:
            raise ValueError("unroll takes one step size; loop over step sizes or use metagrad for a batch")
        e = float(arr[0])
        check_step_range(arr, "eta", dtype, problem.L_estimate())
    else:
        check_step_range(sched, "schedule", dtype, problem.L_estimate())
    _memory_guard("unroll's loss history", t + 1, 4, dtype, memory_limit, "use fewer steps")
    batches = _sgd(problem, batch_size, sgd_seed, t, memory_limit)
    if batches is None:
        out = getattr(_core, f"unroll_{dtype}")(problem._core(dtype), e, sched, t)
    else:
        out = getattr(_core, f"unroll_sgd_{dtype}")(problem._core(dtype), batches, e, sched, t)
    return UnrollResult(
        losses=out["losses"], log_losses=out["log_losses"], losses_ext=out["losses_ext"],
        valid_losses=out.get("valid_losses"), log_valid_losses=out.get("log_valid_losses"),
        w_final=out["w_final"], w_final_ext=out["w_final_ext"], status=out["status"],
        diagnostics=out["diagnostics"], dtype=dtype, steps=t)


def cuda_available() -> Tuple[bool, str]:
    """Whether the CUDA path can run here, and if not, why."""
    if not _core.cuda_compiled:
        return False, "the CUDA path is not compiled in this build (no CUDA compiler was found at install time)"
    n, why = _core.cuda_device_count()
    return (n > 0), ("" if n > 0 else f"no usable CUDA device: {why}")


def _metagrad_cuda(problem: Problem, eta: Any, t: int, sched: Any, objective: str, on: str, mode: str, dtype: str,
                   batches: Any, k: Any) -> MetaGradResult:
    if not isinstance(problem, Quadratic):
        raise ValueError("device='cuda' covers quadratics; use device='cpu' for least squares")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"device='cuda' computes in float32 or float64, not {dtype}")
    if sched is not None or batches is not None or k is not None or on != "train":
        raise ValueError("device='cuda' takes constant step sizes on the training loss (no schedule, minibatches "
                         "or checkpoints)")
    if mode not in ("auto", "forward", "scaled", "scaled_forward"):
        raise ValueError(f"device='cuda' runs modes 'forward' and 'scaled'/'scaled_forward', not {mode!r}")
    ok, why = cuda_available()
    if not ok:
        raise RuntimeError(f"device='cuda' unavailable: {why}")
    etas, scalar = step_sizes(eta)
    check_step_range(etas, "eta", dtype, problem.L_estimate())
    Hc = np.ascontiguousarray(problem.H, dtype=np.float64)
    out = getattr(_core, f"cuda_forward_{dtype}")(Hc, np.ascontiguousarray(problem.w0, dtype=np.float64),
                                                  np.ascontiguousarray(problem.w_star, dtype=np.float64),
                                                  np.ascontiguousarray(etas, dtype=np.float64), t,
                                                  mode != "forward", objective, cublas=cublas_library())
    res = _result(out, scalar, False, "scaled_forward" if mode != "forward" else "forward", dtype, objective, on, t,
                  eta)
    # how the GPU ran it (product kernel, k-split, graph replay, why not cuBLAS) goes with each
    # step size's diagnostics
    run = dict(out.get("cuda", {}))
    for dg in ([res.diagnostics] if scalar else res.diagnostics):
        if isinstance(dg, dict):
            dg["cuda"] = run
    return res


@functools.lru_cache(maxsize=1)
def cublas_library() -> str:
    """The cuBLAS library the CUDA path loads for its products: ``$METASTEP_CUBLAS`` if set (a
    file, or ``none`` for our own kernels), else the newest ``libcublas.so.N`` shipped in an
    ``nvidia`` wheel on ``sys.path`` (PyTorch and JAX install one), else ``""`` (the system
    loader's search path). Where none loads, the CUDA path uses its own kernels."""
    env = os.environ.get("METASTEP_CUBLAS")
    if env:
        return env
    found = []
    for base in sys.path:
        root = os.path.join(base or ".", "nvidia")
        if not os.path.isdir(root):
            continue
        for path in glob.glob(os.path.join(root, "**", "libcublas.so.*"), recursive=True):
            hit = re.search(r"libcublas\.so\.(\d+)$", path)
            if hit:
                found.append((int(hit.group(1)), path))
    return max(found)[1] if found else ""


def resolve_mode(problem: Problem, mode: str, steps: int, dtype: Any = "float64", checkpoints: Any = None) -> str:
    """The concrete mode :func:`metagrad` runs for a constant step size (``"auto"`` and
    ``"scaled"`` resolved)."""
    mode = choice(mode, "mode", MODES)
    if mode == "auto":
        mode = "checkpoint" if checkpoints is not None else _resolve_auto(problem, None, int(steps), dtype_name(dtype))
    return "scaled_forward" if mode == "scaled" else mode


def _resolve_auto(problem: Problem, sched: Optional[np.ndarray], t: int, dtype: str) -> str:
    d = problem.d
    if sched is not None:
        return "scaled_reverse" if (t + 1) * d * itemsize(dtype) <= 256 * 2**20 else "checkpoint"
    size = min(problem.n, problem.d) if isinstance(problem, LeastSquares) else problem.d
    return "exact" if size <= AUTO_EXACT_MAX_DIM else "scaled_forward"


def metagrad(problem: Problem, eta: Any = None, steps: Any = None, *, objective: str = "final",
             on: str = "train", mode: str = "auto", dtype: Any = "float64", schedule: Any = None,
             checkpoints: Any = None, batch_size: Any = None, sgd_seed: Any = 0,
             threads: Any = None, memory_limit: Optional[int] = None, refine: bool = True,
             device: str = "cpu") -> MetaGradResult:
    """Meta-objective of t-step GD and its derivative with respect to the step size.

    Parameters
    ----------
    problem : Quadratic or LeastSquares
    eta : float or array_like of shape (m,)
        Step size, or a batch of step sizes evaluated in one call (arrays come back).
    steps : int
        Number of inner steps t ≥ 1.
    objective : {"final", "log"}
        ``"final"``: F(η) = f(w_t); ``"log"``: G(η) = (1/t) log f(w_t).
    on : {"train", "valid"}
        Loss on the training set (train-by-train) or on the task's validation set
        (train-by-validation; least squares only).
    mode : {"auto", "reverse", "checkpoint", "forward", "exact", "scaled", "scaled_forward", "scaled_reverse", "fd"}
        How the derivative is computed (SPEC §4). ``"scaled"`` is the range-safe mode: the
        forward variant for a constant step size, the reverse variant for a schedule.
        ``"auto"`` takes ``"exact"`` for a constant step size on problems up to 2000
        dimensions, ``"scaled_forward"`` beyond, and ``"scaled_reverse"`` (or ``"checkpoint"``
        when the trajectory would exceed 256 MiB) for schedules.
    dtype : {"float32", "float64", "longdouble", "quad", "mp"}
        Working precision: IEEE single and double, x87 extended (80-bit), IEEE binary128
        (``quad``) and 256-bit arbitrary precision with a practically unbounded exponent
        (``mp``). Extended results also come back as exact decimal strings
        (``value_text``, ``grad_text``).
    schedule : array_like of shape (t,), optional
        One step size per inner step instead of ``eta``. Reverse and checkpoint modes return
        dF/dη_τ for every τ; forward and fd return the derivative along all-ones.
    checkpoints : int, optional
        Checkpoint mode: snapshots held at once (default ⌈√t⌉). Memory O(k·d).
    batch_size : int, optional
        Least squares: the inner optimizer is minibatch SGD (``batch_size`` distinct rows per
        step, the sequence :func:`sgd_batches` drawn from ``sgd_seed``, identical in every mode
        and precision); the meta-loss is still on the full training or validation set. The
        exact mode does not apply; ``"auto"`` takes the scaled mode.
    threads : int, optional
        Threads for a batch of step sizes (default: every core this process may use). Each
        step size is computed by the same code whatever the count: results are bit-identical.
    memory_limit : int, optional
        Bytes a stored trajectory may take (default :data:`DEFAULT_MEMORY_LIMIT`).
    refine : bool
        Exact mode only. ``True`` (default): full eigen-decomposition with every eigenvalue
        refined as a Rayleigh quotient accumulated in a wider type (O(d³) in long double), the
        reference accuracy. ``False``: sweep speed for the training loss of a quadratic in
        float32/float64 — eigenvalues and projections of w₀ − w* without eigenvectors
        (tridiagonalisation, QL), evaluated in double; the eigenvalues then carry the
        decomposition's error ε‖H‖, which the result multiplies by about 2tη/|1 − ηλ|.
    device : {"cpu", "cuda"}
        ``"cuda"`` runs a batch of constant step sizes on the GPU (quadratics, float32/float64,
        modes ``"forward"`` and ``"scaled"``/``"scaled_forward"``; ``"auto"`` takes
        ``"scaled_forward"``), when the CUDA path is compiled in and a device is present
        (:func:`cuda_available`). Results agree with the CPU to rounding (the sums run in
        another order); its status reports non-finite values (quantity and step) only.

    Returns
    -------
    MetaGradResult
        ``value``, ``grad`` (float64), ``log_abs_value``, ``log_abs_grad``, ``sign_grad``,
        ``status`` and ``diagnostics``; arrays for a batch of step sizes.

    Notes
    -----
    The computation runs without the GIL. Called from the main thread, it runs Python's signal
    handlers about every 50 ms, so Ctrl-C (``KeyboardInterrupt``), or any handler that raises,
    stops it within a fraction of a second on every thread it uses (CPU path).
    """
    problem = _check_problem(problem)
    dtype = dtype_name(dtype)
    device = choice(device, "device", ("cpu", "cuda"))
    objective = choice(objective, "objective", OBJECTIVES)
    on = choice(on, "on", ON)
    mode = choice(mode, "mode", MODES)
    sched, t = _schedule_and_steps(eta, steps, schedule)
    if on == "valid" and not problem.has_valid:
        raise ValueError("on='valid' needs a LeastSquares task with X_valid and y_valid")
    k = optional_int(checkpoints, "checkpoints")
    if k is not None and mode not in ("checkpoint", "auto"):
        raise ValueError(f"checkpoints= applies to mode='checkpoint', not mode={mode!r}")
    batches = _sgd(problem, batch_size, sgd_seed, t, memory_limit)
    nthreads = default_threads() if threads is None else positive_int(threads, "threads")
    if mode == "auto":
        if k is not None:
            mode = "checkpoint"
        elif batches is not None:
            mode = "scaled"
        else:
            mode = _resolve_auto(problem, sched, t, dtype)
    if mode == "scaled":
        mode = "scaled_reverse" if sched is not None else "scaled_forward"
    if sched is not None:
        etas, scalar = np.zeros(1), True
        check_step_range(sched, "schedule", dtype, problem.L_estimate())
    else:
        etas, scalar = step_sizes(eta)
        check_step_range(etas, "eta", dtype, problem.L_estimate())
    if mode == "exact" and batches is not None:
        raise ValueError("mode='exact' does not apply to minibatch SGD; use 'scaled', 'forward' or 'reverse'")
    if device == "cuda":
        return _metagrad_cuda(problem, eta, t, sched, objective, on, mode, dtype, batches, k)
    if not isinstance(refine, (bool, np.bool_)):
        raise TypeError(f"refine must be True or False, not {type(refine).__name__}")
    if not refine and mode != "exact":
        raise ValueError(f"refine=False applies to mode='exact', not mode={mode!r}")
    if mode == "exact":
        if sched is not None:
            raise ValueError("mode='exact' needs a constant step size; use mode='reverse' or 'checkpoint' for schedules")
        if refine:
            out = getattr(_core, f"exact_{dtype}")(problem._spectrum(dtype), etas, t, objective, on == "valid",
                                                   nthreads)
        else:
            if not isinstance(problem, Quadratic) or dtype not in ("float32", "float64") or on != "train":
                raise ValueError("refine=False covers the training loss of a Quadratic in float32 or float64; "
                                 "use refine=True for least squares, validation losses and wider precisions")
            out = _core.exact_fast(problem._fast_spectrum(dtype), etas, t, objective, nthreads)
    else:
        if mode in ("reverse", "scaled_reverse"):
            # the trajectory, plus per step a few scalars (scaled_reverse: exponents, offsets,
            # per-step log-magnitudes and signs)
            _memory_guard(f"{mode} mode", t + 1, problem.d, dtype, memory_limit,
                          "use mode='checkpoint' (memory O(k d)), 'forward' or 'scaled_forward' (O(d)) or 'exact'",
                          extra=4 if mode == "scaled_reverse" else 0)
        if mode == "checkpoint":
            if k is None:
                # about √t snapshots, fewer where the memory budget asks for it (SPEC §4.2: k
                # given, or chosen from a memory budget); at least 2
                k = max(2, min(default_checkpoints(t), _limit(memory_limit) // (problem.d * itemsize(dtype))))
            _memory_guard("checkpoint mode", min(k, t + 1), problem.d, dtype, memory_limit,
                          "use fewer checkpoints (checkpoints=), or mode='forward' or 'scaled_forward' (memory O(d))")
        if batches is None:
            out = getattr(_core, f"metagrad_{dtype}")(problem._core(dtype), mode, etas, sched, t, objective,
                                                      on == "valid", k or 0, nthreads)
        else:
            out = getattr(_core, f"metagrad_sgd_{dtype}")(problem._core(dtype), batches, mode, etas, sched, t,
                                                          objective, on == "valid", k or 0, nthreads)
    _note_stability(out, problem, sched if sched is not None else etas, sched is not None)
    _never_nan_ok(out, t)
    return _result(out, scalar, sched is not None, mode, dtype, objective, on, t,
                   None if sched is not None else (float(etas[0]) if scalar else etas))


def _never_nan_ok(out: dict, t: int) -> None:
    """A last safety net: a NaN value or gradient is never reported with status "ok" (the core
    flags every failure it detects; this catches any it misses)."""
    status = list(out["status"])
    for i, s in enumerate(status):
        if s != "ok":
            continue
        what = None
        if np.isnan(out["value"][i]) or np.isnan(out["log_abs_value"][i]):
            what = "meta-loss"
        elif np.isnan(out["grad"][i]) or np.isnan(out["log_abs_grad"][i]) or (
                "grad_steps" in out and np.any(np.isnan(np.asarray(out["grad_steps"], dtype=float)))):
            what = "meta-gradient"
        if what is not None:
            status[i] = f"non-finite: {what} at step {t}"
            dg = out["diagnostics"][i]
            if isinstance(dg, dict):
                dg.update(failed=True, quantity=what, kind="non-finite")
    out["status"] = status


def _note_stability(out: dict, problem: Problem, etas: np.ndarray, is_schedule: bool) -> None:
    """Add to each diagnostics dict whether the step size lies in GD's stable range 0 < η < 2/L
    (L exact for quadratics, from power iterations for least squares)."""
    L = problem.L_estimate()
    limit = 2.0 / L if L > 0 else float("inf")
    for i, dg in enumerate(out["diagnostics"]):
        dg["L"] = L
        dg["eta_stable_limit"] = limit
        if is_schedule:
            dg["steps_outside_stable_range"] = int(np.sum(etas >= limit))
            dg["eta_in_stable_range"] = bool(np.all(etas < limit))
        else:
            dg["eta_in_stable_range"] = bool(etas[i] < limit)


def _result(out: dict, scalar: bool, has_schedule: bool, mode: str, dtype: str, objective: str, on: str,
            t: int, eta: Any) -> MetaGradResult:
    def pick(key: str) -> Any:
        a = out[key]
        if scalar:
            v = a[0]
            return v if key.endswith("_ext") else (int(v) if key.startswith("sign") else float(v))
        return a

    status = out["status"][0] if scalar else list(out["status"])
    diags = out["diagnostics"][0] if scalar else list(out["diagnostics"])
    grad, log_abs_grad, sign_grad, grad_ext = pick("grad"), pick("log_abs_grad"), pick("sign_grad"), pick("grad_ext")

    def text(key: str) -> Any:
        if key not in out:
            return None
        return out[key][0] if scalar else list(out[key])

    value_text, grad_text = text("value_text"), text("grad_text")
    along = None
    if has_schedule:
        along = grad
        if "grad_steps" in out:
            grad, log_abs_grad = out["grad_steps"], out["log_abs_grad_steps"]
            sign_grad, grad_ext = out["sign_grad_steps"], out["grad_steps_ext"]
            grad_text = out.get("grad_steps_text")
    return MetaGradResult(
        value=pick("value"), grad=grad, log_abs_value=pick("log_abs_value"), sign_value=pick("sign_value"),
        log_abs_grad=log_abs_grad, sign_grad=sign_grad, status=status, value_ext=pick("value_ext"),
        grad_ext=grad_ext, mode=mode, dtype=dtype, objective=objective, on=on, steps=t, eta=eta,
        diagnostics=diags, grad_along_ones=along, value_text=value_text, grad_text=grad_text)
