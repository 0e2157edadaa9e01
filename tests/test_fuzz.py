"""Fuzzing every public entry point (issue 6).

Random shapes, dtypes, strides (non-contiguous, reversed, Fortran-ordered, read-only views,
nested lists), NaN/inf/huge/tiny/subnormal values, empty arrays, step sizes in {0, negative,
huge, NaN, inf}, step counts in {0, 1, 2, 2**62, 2**63, negative, float, bool, numpy ints},
non-symmetric and indefinite H. Every call must either

* raise ValueError, TypeError or MemoryError (RuntimeError where documented) with a message, or
* return a result whose status is truthful: a result marked ok carries finite numbers, and
  where an independent oracle is cheap it is checked against it. The oracle here is a plain
  NumPy long-double implementation of GD, its tangent (forward) and adjoint (reverse) passes,
  with a running bound on the rounding error (the same recursions applied to absolute values),
  so a tolerance of a few units of that bound catches any real error (wrong step, sign, scale).

Every call is one *case*; ``CASES`` counts them and ``conftest.py`` prints the total
("fuzz: N cases"). ``test_zz_case_count`` asserts at least 10,000 when the whole file ran.

The examples are derandomized (the same cases on every CI run); set METASTEP_FUZZ_RANDOM=1 to
draw new ones. Iterative modes are never given t beyond 64 here: their cost is t·d² by design
(only memory is bounded, see test_memory_limits in this file), the exact mode takes any t.
"""
from __future__ import annotations

import collections
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import metastep as ms
from metastep import learned
from metastep.data import Dataset

#: Cases run per entry point (a case: one call of a public function on generated input).
CASES: collections.Counter = collections.Counter()
#: Tests of this file that have finished (test_zz_case_count asserts only after a full run).
FINISHED: set = set()
MIN_CASES = 10_000

_RANDOM = os.environ.get("METASTEP_FUZZ_RANDOM", "") not in ("", "0")


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=not _RANDOM, database=None,
                    suppress_health_check=list(HealthCheck))


#: Exceptions a public entry point may raise for bad input or a refused request.
DOCUMENTED = (ValueError, TypeError, MemoryError)
LD = np.longdouble
EPS = {"float32": 2.0 ** -23, "float64": 2.0 ** -52, "longdouble": float(np.finfo(LD).eps),
       "quad": 2.0 ** -112, "mp": 2.0 ** -255}
TINY = {"float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(np.float64).tiny),
        "longdouble": float(np.finfo(np.float64).tiny), "quad": float(np.finfo(np.float64).tiny),
        "mp": float(np.finfo(np.float64).tiny)}


def attempt(kind: str, fn, *args, allow=DOCUMENTED, **kwargs):
    """Call ``fn``; return (result, None) or (None, exception) for a documented exception.
    Anything else (another exception type, a warning, an empty message) fails the test."""
    CASES[kind] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return fn(*args, **kwargs), None
    except allow as exc:
        if isinstance(exc, np.linalg.LinAlgError):  # numpy's, not ours: not a documented message
            raise
        assert str(exc).strip(), f"{type(exc).__name__} raised without a message"
        return None, exc


# ------------------------------------------------------------------------ value strategies
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, math.nan, math.inf, -math.inf, 1e308, -1e308,
           1.7976931348623157e308, 2.2250738585072014e-308, 5e-324, 1e-300, 1e300, 1e-160, 1e160,
           3.4028234663852886e38, 3.5e38, 1e-45, 1.2e-38, 2.0 ** 53 + 2, 1e16, 1e-16]
any_float = st.sampled_from(SPECIAL) | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-10, 10)
FLOAT_DTYPES = [np.float64, np.float32, np.float16, np.longdouble]
OTHER_DTYPES = [np.int64, np.int32, np.uint8, np.int8, np.bool_, np.complex128]
T_SPECIAL = [0, 1, 2, 3, 5, -1, -7, 2 ** 62, 2 ** 62 + 1, 2 ** 63, 2 ** 64, 1.0, 2.5, math.nan, True, False,
             np.int64(3), np.uint8(2), np.int32(-2), "3", None, [3]]


@st.composite
def same_values(draw, a: np.ndarray):
    """A view or container of ``a`` with the same values (strides, order, flags, type vary)."""
    kind = draw(st.sampled_from(["plain", "strided", "reversed", "fortran", "readonly", "list", "tuple"]))
    if a.ndim == 0 or a.size == 0 or kind == "plain":
        return a
    if kind == "tuple":
        return tuple(map(tuple, a.tolist())) if a.ndim == 2 else tuple(a.tolist())
    return _view(a, kind)


@st.composite
def junk_arrays(draw, max_dims: int = 3, max_side: int = 4):
    """Anything array-like: every dtype, any shape (empty included), any values, any strides."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side))
    dt = draw(st.sampled_from(FLOAT_DTYPES + OTHER_DTYPES))
    if dt in FLOAT_DTYPES:
        a = draw(hnp.arrays(np.float64, shape, elements=any_float))
        with np.errstate(all="ignore"):
            a = a.astype(dt)
        if dt is np.longdouble and a.size and draw(st.booleans()):
            a.flat[0] += LD(2.0) ** -60 * (abs(a.flat[0]) if np.isfinite(a.flat[0]) and a.flat[0] else 1)
    else:
        a = draw(hnp.arrays(dt, shape))
    return draw(same_values(a))


def _scale(draw) -> float:
    return 10.0 ** draw(st.sampled_from([0, 0, 0, 0, -300, -200, -150, -30, 30, 150, 200, 300]) | st.integers(-20, 20))


@st.composite
def quad_inputs(draw, valid_only: bool = False):
    """(H, w0, w_star) for a Quadratic: SPD, PSD, zero, diagonal; unless valid_only also
    non-symmetric, indefinite and with a special value planted."""
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32)))
    kinds = ["spd", "psd", "zero", "diag"] + ([] if valid_only else ["nonsym", "indefinite", "special"])
    kind = draw(st.sampled_from(kinds))
    A = rng.standard_normal((d, d))
    if kind == "psd" and d > 1:
        A[:, -1] = 0.0
    H = A @ A.T
    if kind == "diag":
        H = np.diag(np.abs(rng.standard_normal(d)) * 10.0 ** rng.integers(-5, 6, d))
    if kind == "zero":
        H = np.zeros((d, d))
    H = (H + H.T) / 2
    with np.errstate(all="ignore"):
        H = H * _scale(draw)
        if kind == "nonsym":
            i, j = draw(st.integers(0, d - 1)), draw(st.integers(0, d - 1))
            H[i, j] += draw(st.sampled_from([1e-15, 1e-12, 1e-9, 1e-3, 1.0, 1e10])) * (np.max(np.abs(H)) or 1.0)
        if kind == "indefinite":
            H = H - draw(st.sampled_from([1e-13, 1e-6, 0.5, 2.0])) * (np.max(np.abs(H)) or 1.0) * np.eye(d)
        if kind == "special":
            H[draw(st.integers(0, d - 1)), draw(st.integers(0, d - 1))] = draw(any_float)
        w0 = rng.standard_normal(d) * _scale(draw)
    if not valid_only and draw(st.integers(0, 5)) == 0:
        w0[draw(st.integers(0, d - 1))] = draw(any_float)
    w_star = None if draw(st.booleans()) else rng.standard_normal(d)
    H = draw(same_values(H))
    if draw(st.integers(0, 9)) == 0 and not valid_only:  # wrong dtype, shape or kind altogether
        H = draw(junk_arrays())
    return H, draw(same_values(w0)), w_star


@st.composite
def ls_inputs(draw, valid_only: bool = False):
    """Keyword arguments of LeastSquares: n, d in 1..4, optional validation set and w0."""
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32)))
    with np.errstate(all="ignore"):
        X = rng.standard_normal((n, d)) * _scale(draw)
        y = rng.standard_normal(n) * _scale(draw)
    if draw(st.integers(0, 4)) == 0:
        X[:, 0] = 0.0  # rank deficient
    kw = {"X": X, "y": y}
    if draw(st.booleans()):
        nv = draw(st.integers(1, 4))
        kw["X_valid"] = rng.standard_normal((nv, d))
        kw["y_valid"] = rng.standard_normal(nv)
    if draw(st.booleans()):
        kw["w0"] = rng.standard_normal(d)
    if not valid_only and draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(sorted(kw)))
        if draw(st.booleans()):
            kw[key] = draw(junk_arrays())
        else:
            a = np.array(kw[key], dtype=np.float64)
            a.flat[draw(st.integers(0, a.size - 1))] = draw(any_float)
            kw[key] = a
    return {k: draw(same_values(np.asarray(v))) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


def _make_problem(draw):
    if draw(st.booleans()):
        H, w0, ws = draw(quad_inputs(valid_only=True))
        return ms.Quadratic(H, w0, ws)
    return ms.LeastSquares(**draw(ls_inputs(valid_only=True)))


# ------------------------------------------------------------------------ the NumPy oracle
def _ops(problem, batches=None):
    """(grad_and_bound(w, W, k), hvp_and_bound(s, S, k), meta(w, W) -> (F, MF, gF, MgF)) in
    long double, each with the bound obtained from absolute values."""
    if isinstance(problem, ms.Quadratic):
        H, ws = problem.H.astype(LD), problem.w_star.astype(LD)
        aH = np.abs(H)

        def grad(w, W, k):
            return H @ (w - ws), aH @ W

        def hvp(s, S, k):
            return H @ s, aH @ S

        def meta(w, W, valid):
            g = H @ (w - ws)
            return (w - ws) @ g / 2, W @ (aH @ W) / 2, g, aH @ W
        # W tracks a bound on |w - w*| for the quadratic
        return grad, hvp, meta, np.abs(problem.w0.astype(LD) - ws), problem.w0.astype(LD)
    X, y = problem.X.astype(LD), problem.y.astype(LD)
    n = X.shape[0]

    def rows(k):
        if batches is None:
            return X, y
        return X[batches[k]], y[batches[k]]

    def grad(w, W, k):
        Xb, yb = rows(k)
        m = Xb.shape[0]
        return Xb.T @ (Xb @ w - yb) / m, np.abs(Xb).T @ (np.abs(Xb) @ W + np.abs(yb)) / m

    def hvp(s, S, k):
        Xb, _ = rows(k)
        m = Xb.shape[0]
        return Xb.T @ (Xb @ s) / m, np.abs(Xb).T @ (np.abs(Xb) @ S) / m

    def meta(w, W, valid):
        Xm, ym = (problem.X_valid.astype(LD), problem.y_valid.astype(LD)) if valid else (X, y)
        m = Xm.shape[0]
        e, E = Xm @ w - ym, np.abs(Xm) @ W + np.abs(ym)
        return e @ e / (2 * m), E @ E / (2 * m), Xm.T @ e / m, np.abs(Xm).T @ E / m
    return grad, hvp, meta, np.abs(problem.w0.astype(LD)), problem.w0.astype(LD)


def reference(problem, etas, valid=False, batches=None):
    """F = f(w_t), dF along all-ones, dF/dη_τ per step, and bounds MF, MdF, Msteps."""
    grad, hvp, meta, W, w = _ops(problem, batches)
    quad = isinstance(problem, ms.Quadratic)
    if quad:
        w = w - problem.w_star.astype(LD)  # iterate on r = w - w*
        grad0 = grad
        grad = lambda r, R, k: grad0(r + problem.w_star.astype(LD), R, k)  # noqa: E731
        meta0 = meta
        meta = lambda r, R, v: meta0(r + problem.w_star.astype(LD), R, v)  # noqa: E731
    s, S = np.zeros_like(w), np.zeros_like(W)
    gs, Gs = [], []
    for k, e in enumerate(etas):
        e = LD(e)
        g, G = grad(w, W, k)
        hs, HS = hvp(s, S, k)
        gs.append(g)
        Gs.append(G)
        s, S = s - e * hs - g, S + e * HS + G
        w, W = w - e * g, W + e * G
    F, MF, gF, MgF = meta(w, W, valid)
    dF, MdF = gF @ s, MgF @ S
    # adjoint pass: dF/dη_k = -g_k · a_{k+1}, a_k = (I - η_k A) a_{k+1}
    a, Aa = gF, MgF
    steps, msteps = [LD(0)] * len(etas), [LD(0)] * len(etas)
    for k in range(len(etas) - 1, -1, -1):
        steps[k], msteps[k] = -(gs[k] @ a), Gs[k] @ Aa
        ha, HA = hvp(a, Aa, k)
        a, Aa = a - LD(etas[k]) * ha, Aa + LD(etas[k]) * HA
    return F, dF, np.array(steps), MF, MdF, np.array(msteps)


def _rel(bound, dtype, ops: int):
    """Relative accuracy to expect: ops·u (u: the working and the oracle's unit roundoff), and
    |ln x|·u for the modes that accumulate in the log domain (exact, scaled: exp of a logarithm
    of size |ln x| carries a relative error of about |ln x|·u)."""
    u = EPS[dtype] + float(np.finfo(LD).eps)
    lnb = abs(np.log(bound)) if bound > 0 else LD(0)
    return LD(8 * u) * (LD(ops) + lnb)


def _close(x, ref, bound, dtype, ops: int, half_digits: bool = False, f64: bool = False) -> bool:
    """|x - ref| within the relative accuracy times the error bound, plus the absolute accuracy
    of the working precision's subnormal range. ``half_digits``: the result may have lost up to
    half its digits before its status flags a cancellation (the exact mode's validation loss,
    formed from the minimizer w̄ rather than from w0: r_inf = X'w̄ - y' may cancel)."""
    tol = _rel(bound, dtype, ops) * bound + LD(8 * ops * TINY[dtype])
    if half_digits:
        tol += LD(4 * math.sqrt(EPS[dtype])) * (abs(ref) + bound)
    if f64:  # a float64 (summed, or exp of a float64 logarithm): its roundings too
        lnr = abs(np.log(abs(ref))) if ref != 0 else LD(0)
        tol += LD(2.0 ** -50) * ((lnr + 1) * abs(ref) + ops * bound) + LD(2.0 ** -1070)
    return bool(abs(LD(x) - ref) <= tol)


def check_against_oracle(r, problem, etas_per_step, t, dtype, objective, on, batches=None):
    """Compare an ok MetaGradResult (scalar η or a schedule) with the oracle, where the oracle
    itself is in range; returns False when it could not judge."""
    with np.errstate(all="ignore"):
        F, dF, steps, MF, MdF, Msteps = reference(problem, etas_per_step, on == "valid", batches)
    vals = [F, dF, MF, MdF, *steps, *Msteps]
    if not all(np.isfinite(v) for v in vals) or MF > LD(1e4000) or MdF > LD(1e4000):
        return False
    d = problem.d
    ops = t + d + (problem.n if isinstance(problem, ms.LeastSquares) else 0) + 4
    value_ext = r.value_ext
    along = r.grad_along_ones is not None  # schedules: the derivative along all-ones, a float64
    grads = [(r.grad_along_ones if along else r.grad_ext, dF, MdF, along)]
    if np.ndim(r.grad) == 1 and len(etas_per_step) == np.size(r.grad) and along:
        grads += [(g, ref, b, False) for g, ref, b in zip(np.asarray(r.grad_ext), steps, Msteps)]
    if not np.isfinite(LD(value_ext)) or not all(np.isfinite(LD(g)) for g, _, _, _ in grads):
        return False  # beyond long double (quad/mp may legitimately go there); ok-ness checked elsewhere
    half = r.mode == "exact" and on == "valid"
    if objective == "final":
        assert _close(value_ext, F, MF, dtype, ops, half), (r, F, MF, problem._arrays())
        if r.mode != "fd":
            for g, ref, bound, f64 in grads:
                assert _close(g, ref, bound, dtype, ops, half, f64), (r, g, ref, bound, problem._arrays())
        return True
    # log objective: G = log(F)/t, G' = F'/(t F); judge only where F is not swamped by rounding
    u = EPS[dtype] + float(np.finfo(LD).eps)
    relF = _rel(MF, dtype, ops) * MF / F if F > 0 else LD(np.inf)
    if half:
        relF += LD(4 * math.sqrt(EPS[dtype])) * (1 + MF / F)
    if not relF < LD(1e-3):
        return False
    assert abs(LD(value_ext) * t - np.log(F)) <= 2 * relF + LD(8 * ops * u) * (abs(np.log(F)) + 1), \
        (r, F, MF, problem._arrays())
    if r.mode != "fd":
        for g, ref, bound, f64 in grads:
            tol = (_rel(bound, dtype, ops) * bound + abs(ref) * 2 * relF) / (t * F) + LD(8 * ops * TINY[dtype])
            if f64:
                lnr = abs(np.log(abs(ref / (t * F)))) if ref != 0 else LD(0)
                tol += LD(2.0 ** -50) * ((lnr + 1) * abs(ref) + ops * bound) / (t * F) + LD(2.0 ** -1070)
            if half:
                tol += LD(4 * math.sqrt(EPS[dtype])) * (abs(ref) + bound) / (t * F)
            assert abs(LD(g) - ref / (t * F)) <= tol, (r, g, ref / (t * F), tol, problem._arrays())
    return True


def check_result_truthful(r, n_eta: int) -> None:
    """A returned MetaGradResult: statuses are strings; an ok entry has finite numbers."""
    statuses = [r.status] if isinstance(r.status, str) else list(r.status)
    assert len(statuses) == n_eta and all(isinstance(s, str) and s for s in statuses), r
    for i, s in enumerate(statuses):
        if s != "ok":
            continue
        pairs = [(r.value, r.log_abs_value, r.sign_value)]
        if r.grad_along_ones is None or np.ndim(r.grad) == 1 and n_eta == 1:
            pairs.append((r.grad, r.log_abs_grad, r.sign_grad))
        for x, lx, sx in pairs:
            x, lx, sx = (np.atleast_1d(x), np.atleast_1d(lx), np.atleast_1d(sx))
            if n_eta > 1:
                x, lx, sx = x[i:i + 1], lx[i:i + 1], sx[i:i + 1]
            for xv, lv, sv in zip(x, lx, sx):
                # ok: the magnitude is known (log|x| finite, or -inf with sign 0 for an exact zero)
                assert not np.isnan(lv) and lv != np.inf and not np.isnan(xv), r
                assert (sv == 0) == (lv == -np.inf), r
                if sv == 0:
                    assert xv == 0, r
                elif lv < 700:  # the float64 copy agrees with (log|x|, sign); beyond, it may be ±inf
                    assert np.isfinite(xv) and np.sign(xv) == sv or lv < -700, r
                    if -700 < lv:
                        assert abs(np.log(abs(xv)) - lv) <= 8 * max(EPS[r.dtype], 1e-15) * max(1.0, abs(lv)), r
                elif lv > 710:
                    assert xv == sv * np.inf, r


# ------------------------------------------------------------------------ constructors
VIEW_KINDS = ("strided", "reversed", "fortran", "readonly", "list")


def _view(a, kind):
    """``a`` (an array) as another layout or container with the same values."""
    a = np.asarray(a)
    if a.ndim == 0 or a.size == 0 or a.dtype.kind not in "biuf":
        return a
    if kind == "strided":
        b = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        b[..., ::2] = a
        return b[..., ::2]
    if kind == "reversed":
        return a[::-1].copy()[::-1]
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    return a.tolist()


def _same_outcome(kind, make, args_variants):
    """Every variant (same values, other layouts) gives the same problem or the same exception type."""
    outcomes = [attempt(kind, make, *args) for args in args_variants]
    first, exc0 = outcomes[0]
    for obj, exc in outcomes[1:]:
        assert (obj is None) == (first is None), (exc0, exc)
        if obj is None:
            assert type(exc) is type(exc0), (exc0, exc)
        else:
            for k, v in first._arrays().items():
                other = obj._arrays()[k]
                assert (v is None and other is None) or np.array_equal(v, other), k
    return first, exc0


@fuzz_settings(400)
@given(inputs=quad_inputs())
def test_fuzz_quadratic(inputs) -> None:
    H, w0, w_star = inputs
    variants = [(H, w0, w_star)] + [(_view(H, k), _view(w0, k), w_star) for k in VIEW_KINDS]
    q, exc = _same_outcome("Quadratic", ms.Quadratic, variants)
    if q is None:
        return
    Hin = np.asarray(H, dtype=np.float64)
    assert q.H.shape == (q.d, q.d) and q.w0.shape == (q.d,) and q.w_star.shape == (q.d,)
    assert np.all(np.isfinite(q.H)) and np.all(np.isfinite(q.w0)) and np.all(np.isfinite(q.w_star))
    assert np.array_equal(q.H, q.H.T)
    np.testing.assert_allclose(q.H, (Hin + Hin.T) / 2, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(q.w0, np.asarray(w0, dtype=np.float64))
    lam = np.linalg.eigvalsh(q.H.astype(np.float64) / (np.max(np.abs(q.H)) or 1.0))
    assert lam[0] >= -1e-6, lam  # psd within the documented tolerance (relative 1e-10 by default)
    assert q.L >= 0 and not np.isnan(q.L) and (np.isfinite(q.L) or np.max(np.abs(q.H)) * q.d > 1e307)
    if q.d and 1e-100 < np.max(np.abs(q.H)) < 1e100:
        assert q.L == pytest.approx(np.max(np.linalg.eigvalsh(q.H)), rel=1e-12, abs=1e-14 * np.max(np.abs(q.H)))


@fuzz_settings(350)
@given(kw=ls_inputs())
def test_fuzz_least_squares(kw) -> None:
    keys = ("X", "y", "X_valid", "y_valid", "w0")
    variants = [tuple(kw.get(k) for k in keys)] + [tuple(None if kw.get(k) is None else _view(kw[k], v) for k in keys)
                                                   for v in VIEW_KINDS]
    p, exc = _same_outcome("LeastSquares", ms.LeastSquares, variants)
    if p is None:
        return
    assert p.X.shape == (p.n, p.d) and p.y.shape == (p.n,) and p.w0.shape == (p.d,)
    for a in (p.X, p.y, p.w0):
        assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(p.X, np.asarray(kw["X"], dtype=np.float64))
    assert p.has_valid == ("X_valid" in kw)
    L = p.L  # inf where σ_max(X)²/n is beyond float64
    assert L >= 0 and not np.isnan(L)
    if np.max(np.abs(p.X)) < 1e100:
        assert L == pytest.approx(np.linalg.norm(p.X, 2) ** 2 / p.n, rel=1e-12)
    assert 0 <= p.L_estimate() <= L * (1 + 1e-12)


@fuzz_settings(600)
@given(d=st.sampled_from(T_SPECIAL) | st.integers(1, 6), n=st.sampled_from(T_SPECIAL) | st.integers(1, 6),
       seed=st.sampled_from(T_SPECIAL) | st.integers(0, 2 ** 64 + 5), sigma=any_float | st.sampled_from([None, "1", True]),
       n_valid=st.sampled_from([0, 1, 3, -1, 1.5, True]))
def test_fuzz_random_generators(d, n, seed, sigma, n_valid) -> None:
    if isinstance(d, int) and not isinstance(d, bool) and d > 64:
        # a 2**62 × 2**62 matrix: must be refused before allocating
        with pytest.raises((MemoryError, ValueError), match=r"."):
            CASES["random_quadratic"] += 1
            ms.random_quadratic(d, 0)
        return
    q, _ = attempt("random_quadratic", ms.random_quadratic, d, seed)
    if q is not None:
        assert q.d == int(d) and np.all(np.isfinite(q.H))
        q2 = ms.random_quadratic(d, seed)
        assert np.array_equal(q.H, q2.H) and np.array_equal(q.w0, q2.w0)
    if isinstance(n, int) and not isinstance(n, bool) and n > 64:
        return
    p, _ = attempt("random_least_squares", ms.random_least_squares, d, n, sigma, seed, n_valid=n_valid)
    if p is not None:
        assert p.X.shape == (int(n), int(d)) and abs(np.linalg.norm(p.w_star) - 1) < 1e-12
        p2 = ms.random_least_squares(d, n, sigma, seed, n_valid=n_valid)
        assert np.array_equal(p.X, p2.X) and np.array_equal(p.y, p2.y)
        # y = X w* + σ ξ with the noise ξ ~ N(0, 1): at σ = 0 exactly the product (up to rounding)
        if float(sigma) == 0.0:
            np.testing.assert_allclose(p.y, p.X @ p.w_star, rtol=1e-12, atol=1e-12)


@fuzz_settings(700)
@given(n=st.sampled_from(T_SPECIAL) | st.integers(1, 50), b=st.sampled_from(T_SPECIAL) | st.integers(1, 50),
       steps=st.sampled_from(T_SPECIAL) | st.integers(1, 20), seed=st.sampled_from(T_SPECIAL) | st.integers(0, 2 ** 64))
def test_fuzz_sgd_batches(n, b, steps, seed) -> None:
    out, exc = attempt("sgd_batches", ms.sgd_batches, n, b, steps, seed)
    if out is None:
        return
    n, b, steps = int(n), int(b), int(steps)
    assert out.shape == (steps, b) and np.issubdtype(out.dtype, np.integer)
    assert out.min() >= 0 and out.max() < n
    for row in out:
        assert len(set(row.tolist())) == b  # distinct within a step
    assert np.array_equal(out, ms.sgd_batches(n, b, steps, seed))


# ------------------------------------------------------------------------ metagrad / unroll
MODES_RUN = ("exact", "exact_fast", "forward", "reverse", "checkpoint", "scaled_forward", "scaled_reverse", "fd",
             "auto")
ETA_SPECIAL = [0.0, -0.0, -1e-300, -1.0, 1e308, 1e300, 1e38, 3.5e38, 5e-324, 1e-300, math.nan, math.inf,
               -math.inf, True, "0.1", None, [0.1, 0.2], [], [[0.1]], np.float32(0.01), np.int64(0), 1 + 0j]


@st.composite
def etas_for(draw, L: float):
    """A step size: a fraction of 2/L (stable, edge, unstable) or a special value."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(ETA_SPECIAL))
    lim = 2.0 / L if L > 1e-300 else 1.0
    frac = draw(st.sampled_from([0.0, 0.25, 0.5, 0.999, 1.0, 1.001, 1.5, 3.0]) | st.floats(0, 1.2))
    with np.errstate(all="ignore"):
        return float(min(frac * lim, 1e300))


@fuzz_settings(650)
@given(data=st.data())
def test_fuzz_metagrad(data) -> None:
    problem = _make_problem(data.draw)
    L = problem.L
    dtype = data.draw(st.sampled_from(ms.PRECISIONS))
    objective = data.draw(st.sampled_from(("final", "log")))
    on = data.draw(st.sampled_from(("train", "valid")))
    shape = data.draw(st.sampled_from(["scalar", "scalar", "batch", "schedule"]))
    t = data.draw(st.integers(1, 8) | st.sampled_from(T_SPECIAL))
    small_t = isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 1 <= t <= 64
    sgd = isinstance(problem, ms.LeastSquares) and small_t and data.draw(st.integers(0, 3)) == 0
    kw = dict(objective=objective, on=on, dtype=dtype)
    if sgd:
        kw.update(batch_size=data.draw(st.integers(1, problem.n)), sgd_seed=data.draw(st.integers(0, 9)))
    if shape == "scalar":
        eta = data.draw(etas_for(L))
    elif shape == "batch":
        eta = [data.draw(etas_for(L)) for _ in range(data.draw(st.integers(1, 3)))]
    else:
        eta = None
        if small_t:
            kw["schedule"] = draw_sched = [data.draw(etas_for(L)) for _ in range(int(t))]
        else:
            kw["schedule"] = draw_sched = data.draw(junk_arrays(max_dims=2))
    for mode in MODES_RUN:
        if not small_t and mode not in ("exact", "exact_fast", "reverse", "scaled_reverse", "checkpoint"):
            continue  # iterative modes cost t·d² by design; huge t is for the exact mode and the guards
        mkw = dict(kw)
        if mode == "exact_fast":
            mkw.update(mode="exact", refine=False)
        else:
            mkw["mode"] = mode
        if mode == "checkpoint" and data.draw(st.booleans()):
            mkw["checkpoints"] = data.draw(st.integers(1, 10) | st.sampled_from([0, -1, 1.5, 2 ** 62]))
        r, exc = attempt("metagrad", ms.metagrad, problem, eta, None if shape == "schedule" and
                         data.draw(st.booleans()) else t, **mkw)
        if r is None:
            continue
        batch = isinstance(r.status, list)
        assert batch == (eta is not None and np.ndim(eta) == 1), r
        n_eta = len(r.status) if batch else 1
        try:
            check_result_truthful(r, n_eta)
        except AssertionError as e:
            raise AssertionError(f"{e}\nproblem: {problem._arrays()!r}, eta={eta!r}, t={t!r}, {mkw}") from None
        assert r.dtype == dtype and r.objective == objective and r.on == on
        if not small_t:
            continue
        batches = ms.sgd_batches(problem.n, kw["batch_size"], int(t), kw["sgd_seed"]) if sgd else None
        etas = [float(e) for e in np.atleast_1d(np.asarray(eta if eta is not None else draw_sched, dtype=float))]
        if shape == "schedule":
            if r.status == "ok":
                check_against_oracle(r, problem, etas, int(t), dtype, objective, on, batches)
            continue
        for i, e in enumerate(etas):
            status = r.status[i] if batch else r.status
            if status != "ok":
                continue
            if not batch:
                one = r
            else:  # the same step size alone gives the same bits as in the batch
                one = ms.metagrad(problem, e, t, **mkw)
                assert one.status == status
                np.testing.assert_array_equal(one.value_ext, np.asarray(r.value_ext)[i])
                np.testing.assert_array_equal(one.grad_ext, np.asarray(r.grad_ext)[i])
            check_against_oracle(one, problem, [e] * int(t), int(t), dtype, objective, on, batches)


@fuzz_settings(500)
@given(data=st.data())
def test_fuzz_unroll(data) -> None:
    problem = _make_problem(data.draw)
    dtype = data.draw(st.sampled_from(ms.PRECISIONS))
    t = data.draw(st.integers(1, 8) | st.sampled_from(T_SPECIAL))
    eta = data.draw(etas_for(problem.L))
    kw = {}
    if isinstance(problem, ms.LeastSquares) and data.draw(st.booleans()):
        kw["batch_size"] = data.draw(st.integers(1, problem.n) | st.sampled_from([0, problem.n + 1, 2 ** 62]))
    if data.draw(st.integers(0, 4)) == 0:
        kw["memory_limit"] = data.draw(st.sampled_from([1, 64, 10 ** 6, 0, -5, 2.5]))
    u, exc = attempt("unroll", ms.unroll, problem, eta, t, dtype=dtype, **kw)
    if u is None:
        return
    t = int(t)
    assert u.losses.shape == (t + 1,) and u.w_final.shape == (problem.d,)
    assert isinstance(u.status, str) and u.status
    if u.status != "ok":
        return
    if dtype in ("float32", "float64"):
        assert np.all(np.isfinite(u.losses)) and np.all(np.isfinite(u.w_final)), u
    assert not np.any(np.isnan(u.log_losses)), u
    if "batch_size" not in kw:
        with np.errstate(all="ignore"):
            F, _, _, MF, _, _ = reference(problem, [float(eta)] * t)
        if np.isfinite(F) and np.isfinite(MF) and np.isfinite(u.losses_ext[-1]):
            ops = t + problem.d + (problem.n if isinstance(problem, ms.LeastSquares) else 0) + 4
            assert _close(u.losses_ext[-1], F, MF, dtype, ops), (u, F, MF)


@fuzz_settings(400)
@given(data=st.data())
def test_fuzz_resolve_mode_and_meta_train(data) -> None:
    problem = _make_problem(data.draw)
    mode = data.draw(st.sampled_from(ms.MODES + ("bogus", None, 3)))
    t = data.draw(st.integers(1, 6) | st.sampled_from(T_SPECIAL))
    rm, _ = attempt("resolve_mode", ms.resolve_mode, problem, mode, t)
    if rm is not None:
        assert rm in ms.MODES and rm not in ("auto", "scaled")
    if not (isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 64):
        return
    from metastep.meta_train import meta_train
    eta0 = data.draw(etas_for(problem.L))
    opt = data.draw(st.sampled_from(["gd", "adam", "momentum", "rmsprop", "sgd?"]))
    engine = data.draw(st.sampled_from(["auto", "core", "python"]))
    res, exc = attempt("meta_train", meta_train, problem, eta0, t, data.draw(st.integers(0, 4) | st.just(-1)),
                       optimizer=opt, engine=engine, dtype=data.draw(st.sampled_from(["float64", "float32"])),
                       log_eta=data.draw(st.booleans()), on_failure=data.draw(st.sampled_from(["stop", "continue"])),
                       allow=DOCUMENTED + (RuntimeError,))
    if res is None:
        return
    assert np.all(np.isfinite(res.etas)) and np.all(res.etas >= 0), res
    if res.ok:
        assert np.all(np.isfinite(res.values)), res


# ------------------------------------------------------------------------ learned optimizers
SIZES = [(3, 2), (3, 4, 3), (2, 2)]


def _dataset(rng, sizes, n):
    X = rng.standard_normal((n, sizes[0]))
    y = rng.integers(0, sizes[-1], n).astype(np.int64)
    return Dataset(X, y, sizes[-1])


@fuzz_settings(450)
@given(data=st.data())
def test_fuzz_learned(data) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32)))
    sizes = data.draw(st.sampled_from(SIZES + [(3,), (3, 1), (3, 0, 2), (3.0, 2), "32", (3, True)]))
    P, _ = attempt("num_params", learned.num_params, sizes)
    seed = data.draw(st.integers(0, 2 ** 64 - 1) | st.sampled_from([-1, 2 ** 64, 1.5, None, True]))
    theta, _ = attempt("init_network", learned.init_network, sizes, seed)
    if P is None:
        return
    assert theta is None or (theta.shape == (P,) and np.all(np.isfinite(theta)))
    sizes = list(sizes)
    dset = _dataset(rng, sizes, data.draw(st.integers(1, 5)))
    th = rng.standard_normal(P) * data.draw(st.sampled_from([1.0, 1e-3, 1e3, 1e150]))
    if data.draw(st.integers(0, 4)) == 0:
        th = data.draw(junk_arrays(max_dims=2, max_side=P + 1))
    dtype = data.draw(st.sampled_from(["float64", "float32", "quad", 64]))
    lg, _ = attempt("loss_grad", learned.loss_grad, th, dset, sizes, dtype)
    if lg is not None:
        loss, g = lg
        assert g.shape == (P,)
        if np.isfinite(loss):  # a finite loss comes with a finite gradient and is a cross-entropy (>= 0)
            assert loss >= 0 and np.all(np.isfinite(g)), (loss, g)
    v1, v2 = rng.standard_normal(P), rng.standard_normal(P)
    h1, _ = attempt("hessian_vector_product", learned.hessian_vector_product, th, v1, dset, sizes, "float64")
    if h1 is not None:
        h2 = learned.hessian_vector_product(th, v2, dset, sizes)
        if np.all(np.isfinite(h1)) and np.all(np.isfinite(h2)) and np.max(np.abs(th)) <= 10:
            # the Hessian is symmetric: v2·(H v1) = v1·(H v2) (away from saturated softmaxes,
            # where both sides are rounding noise of terms of size 1)
            scale = np.abs(v2) @ np.abs(h1) + np.abs(v1) @ np.abs(h2) + 1e-300
            assert abs(v2 @ h1 - v1 @ h2) <= 1e-10 * scale
    phi = learned.init_optimizer(data.draw(st.integers(0, 5)))
    step = data.draw(st.integers(0, 10) | st.sampled_from([-1, 2 ** 62, 2 ** 63, 1.5, True]))
    M = data.draw(st.none() | st.just(np.zeros((P, 5))) | junk_arrays(max_dims=2, max_side=P + 1))
    out, _ = attempt("optimizer_step", learned.optimizer_step, phi, th, rng.standard_normal(P), M, None, step, sizes)
    if out is not None:
        assert out["theta"].shape == (P,)
        if np.all(np.isfinite(th)) and np.max(np.abs(th)) < 1e100:
            assert np.all(np.isfinite(out["theta"])), out
    steps = data.draw(st.integers(1, 4) | st.sampled_from([0, -3, 2.5, True]))
    curve, _ = attempt("train_curve", learned.train_curve, data.draw(st.sampled_from(["sgd", "adam", "bogus", 3])),
                       dset, dset, steps=steps, sizes=sizes, batch_size=data.draw(st.integers(1, 6) | st.just(0)),
                       record_every=data.draw(st.integers(1, 3) | st.just(0)),
                       lr=data.draw(st.sampled_from([0.1, 1e-3, 1e3, 0.0, -1.0, math.nan, math.inf])))
    if curve is not None:
        assert curve.steps[-1] <= int(steps) and curve.train_loss.shape == curve.steps.shape
        if not curve.nonfinite["failed"]:
            assert np.all(np.isfinite(curve.train_loss)) and np.all((curve.train_acc >= 0) & (curve.train_acc <= 1))
    length = data.draw(st.integers(1, 3) | st.sampled_from([0, -1, 2.0, 2 ** 62]))
    est = data.draw(st.sampled_from(learned.ESTIMATORS + ("bogus",)))
    mg, _ = attempt("meta_gradient", learned.meta_gradient, phi, dset, dset, length=length, estimator=est,
                    sizes=sizes, batch_size=data.draw(st.integers(1, 4) | st.sampled_from([0, 2 ** 62])),
                    es_pairs=2, dtype=data.draw(st.sampled_from(["float64", "float32"])))
    if mg is not None:
        assert isinstance(mg.nonfinite, dict) and "failed" in mg.nonfinite
        assert mg.train_losses.shape == (int(length),)
        if not mg.nonfinite["failed"]:
            assert np.isfinite(mg.meta_loss) and np.all(np.isfinite(mg.grad)), mg


# ------------------------------------------------------------------------ tasks and tuning
@fuzz_settings(120)
@given(d=st.sampled_from([1, 2, 3, 0, -1, 1.5, True, 2 ** 62]), n=st.sampled_from([1, 2, 5, 0, 2 ** 62]),
       n_valid=st.sampled_from([0, 2, -1]), m=st.sampled_from([1, 2, 0]), sigma=any_float,
       on=st.sampled_from(["train", "valid", "bogus"]), steps=st.sampled_from([1, 3, 0, 2 ** 62, 1.5]),
       eta=st.sampled_from([0.0, 0.1, 1.0, 1e300, -1.0, math.nan]))
def test_fuzz_tasks_and_tuning(d, n, n_valid, m, sigma, on, steps, eta) -> None:
    from metastep import tuning
    from metastep.tasks import TaskFamily
    fam, _ = attempt("TaskFamily", TaskFamily, d=d, n=n, n_valid=n_valid, m=m, sigma=sigma, seed=0)
    if fam is None or d > 64 or n > 64:
        return
    task, _ = attempt("TaskFamily.task", fam.task, 0)
    assert task is not None and task.d == d
    prep, _ = attempt("tuning.prepare", tuning.prepare, fam, steps, on)
    if prep is None:
        return
    out, _ = attempt("PreparedTasks.losses", prep.losses, eta)
    if out is None:
        return
    loss = np.asarray(out["loss"])
    assert loss.shape[0] == m and not np.any(np.isnan(loss)), out


# ------------------------------------------------------------------------ memory limits
# Requests whose memory would exceed the bound fail at once with a MemoryError naming the
# remedy, before anything is allocated (the sizes here are exabytes: an attempt to allocate
# would fail differently or exhaust the machine, and the iterative modes would never return).
_Q = ms.random_quadratic(3, seed=0)
_LS = ms.random_least_squares(3, 8, 0.5, seed=0, n_valid=4)
_DIG = Dataset(np.random.default_rng(0).standard_normal((6, 3)), np.arange(6, dtype=np.int64) % 2, 2)
HUGE = 2 ** 61


def _meta_train_reverse():
    from metastep.meta_train import meta_train
    return meta_train(_Q, 0.1, 10 ** 6, 3, mode="reverse", metagrad_options={"memory_limit": 2 ** 20})


MEMORY_CASES = {
    "reverse": (lambda: ms.metagrad(_Q, 0.1, HUGE, mode="reverse"), r"reverse mode.*checkpoint.*forward"),
    "scaled_reverse": (lambda: ms.metagrad(_LS, 0.1, 10 ** 5, mode="scaled_reverse", memory_limit=10 ** 6),
                       r"scaled_reverse mode.*checkpoint.*scaled_forward"),
    "reverse-batch": (lambda: ms.metagrad(_Q, [0.1, 0.2], HUGE, mode="reverse"), r"reverse mode"),
    "auto-schedule": (lambda: ms.metagrad(_Q, schedule=np.full(1000, 0.1), mode="reverse", memory_limit=1000),
                      r"reverse mode.*limit"),
    "checkpoint-default": (lambda: ms.metagrad(_Q, 0.1, HUGE, mode="checkpoint", memory_limit=40),
                           r"checkpoint mode.*fewer checkpoints.*forward"),
    "checkpoint-explicit": (lambda: ms.metagrad(_Q, 0.1, HUGE, mode="checkpoint", checkpoints=2 ** 40),
                            r"checkpoint mode"),
    "checkpoint-limit": (lambda: ms.metagrad(_Q, 0.1, 10 ** 4, mode="checkpoint", checkpoints=100, memory_limit=1000),
                         r"checkpoint mode"),
    "sgd-forward": (lambda: ms.metagrad(_LS, 0.1, HUGE, mode="forward", batch_size=4), r"minibatch sequence"),
    "sgd-scaled": (lambda: ms.metagrad(_LS, 0.1, 10 ** 6, mode="scaled", batch_size=4, memory_limit=10 ** 4),
                   r"minibatch sequence"),
    "unroll": (lambda: ms.unroll(_Q, 0.1, HUGE), r"unroll's loss history"),
    "unroll-sgd": (lambda: ms.unroll(_LS, 0.1, 10 ** 5, batch_size=8, memory_limit=10 ** 6), r"limit"),
    "sgd_batches": (lambda: ms.sgd_batches(10, 5, HUGE), r"minibatch sequence"),
    "sgd_batches-limit": (lambda: ms.sgd_batches(10, 5, 1000, memory_limit=100), r"minibatch sequence"),
    "random_quadratic": (lambda: ms.random_quadratic(10 ** 7, 0), r"random_quadratic"),
    "random_least_squares": (lambda: ms.random_least_squares(10 ** 5, 10 ** 6, 1.0, 0), r"random_least_squares"),
    "meta_gradient": (lambda: learned.meta_gradient(learned.init_optimizer(0), _DIG, _DIG, length=HUGE,
                                                    sizes=(3, 2), estimator="second"), r"truncation.*length"),
    "meta_gradient-limit": (lambda: learned.meta_gradient(learned.init_optimizer(0), _DIG, _DIG, length=100,
                                                          sizes=(3, 2), memory_limit=1000), r"truncation"),
    "meta_gradient-es": (lambda: learned.meta_gradient(learned.init_optimizer(0), _DIG, _DIG, length=HUGE,
                                                       sizes=(3, 2), estimator="es"), r"truncation"),
    "train_curve": (lambda: learned.train_curve("sgd", _DIG, _DIG, steps=HUGE, sizes=(3, 2)), r"train_curve"),
    "meta_train-reverse": (_meta_train_reverse, r"reverse mode"),
}


@pytest.mark.parametrize("name", sorted(MEMORY_CASES))
def test_memory_limits(name: str) -> None:
    call, match = MEMORY_CASES[name]
    with pytest.raises(MemoryError, match=match) as info:
        call()
    assert "GiB" in str(info.value) and "limit" in str(info.value)


def test_memory_limit_is_validated_and_not_triggered_below() -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        ms.metagrad(_Q, 0.1, 5, mode="reverse", memory_limit=0)
    with pytest.raises(TypeError, match="memory_limit"):
        ms.sgd_batches(10, 5, 3, memory_limit=1.5)
    # just below the bound the same requests run: the guards count what is stored
    r = ms.metagrad(_Q, 0.1, 100, mode="reverse", memory_limit=101 * 3 * 8)
    assert r.ok
    with pytest.raises(MemoryError):
        ms.metagrad(_Q, 0.1, 100, mode="reverse", memory_limit=101 * 3 * 8 - 1)
    assert ms.sgd_batches(10, 5, 3, memory_limit=4 * (15 + 10)).shape == (3, 5)
    # without checkpoints=, the checkpoint mode takes as many snapshots as the budget allows
    # (√t at most) and gives the bits of any other count
    ref = ms.metagrad(_Q, 0.1, 400, mode="checkpoint", checkpoints=20)
    small = ms.metagrad(_Q, 0.1, 400, mode="checkpoint", memory_limit=3 * 3 * 8)
    assert small.diagnostics["stored_states"] < ref.diagnostics["stored_states"]
    assert (small.value, small.grad, small.status) == (ref.value, ref.grad, ref.status)


def test_zz_case_count() -> None:
    """At least 10,000 cases when the whole file ran (the conftest hook prints the count)."""
    ran = {n for n in globals() if n.startswith("test_fuzz_")}
    total = sum(CASES.values())
    print(f"fuzz: {total} cases ({dict(CASES)})")
    if not ran <= FINISHED:
        pytest.skip(f"only part of the file ran ({sorted(FINISHED)}); {total} cases")
    assert total >= MIN_CASES, dict(CASES)


@pytest.fixture(autouse=True)
def _mark_finished(request):
    yield
    FINISHED.add(request.node.originalname or request.node.name)
