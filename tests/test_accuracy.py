"""Accuracy against the independent mpmath oracle (metastep.reference, 256 bits).

Acceptance of the foundation (issue: exact engine) and of the extended precisions:
* exact mode: <= 1e-12 relative in float64 for t <= 1000 wherever the true values are finite
  in float64; in log form everywhere, <= 1e-9 at t = 10^6;
* reverse / checkpoint / forward / scaled: <= 1e-10 (float64), <= 1e-3 (float32) wherever the
  status is "ok", and a non-ok status wherever a quantity left the type's range;
* longdouble at least 100x closer than float64; quad and mp to <= 1e-25.
"""
import math

import mpmath as mp
import numpy as np
import pytest

import metastep as ms
from metastep import reference as R

mp.mp.prec = 320
PLAIN = ("reverse", "checkpoint", "forward")
SCALED = ("scaled_forward", "scaled_reverse")
TOL = {"float32": 1e-3, "float64": 1e-10, "longdouble": 1e-13}


def _ref(problem, eta, t, objective="final", on="train"):
    if isinstance(problem, ms.Quadratic):
        return R.quadratic_metagrad(problem.H, problem.w0, problem.w_star, eta, t, objective=objective)
    return R.lsq_metagrad(problem.X, problem.y, problem.X_valid, problem.y_valid, problem.w0, eta, t,
                          objective=objective, on=on)


def _mp_of(r, which):
    """The result as an mpf, from its most precise representation."""
    text = getattr(r, f"{which}_text")
    if text is not None:
        return mp.mpf(text)
    ext = getattr(r, f"{which}_ext")
    return mp.mpf(np.format_float_scientific(np.longdouble(ext), unique=True))


def _rel(x, ref):
    return float(abs(x - ref) / abs(ref)) if ref != 0 else float(abs(x))


def _rel_log(r, which, ref):
    """Relative error computed from log-magnitude and sign (no overflow)."""
    if ref == 0:
        return 0.0 if getattr(r, f"sign_{which}") == 0 else math.inf
    if getattr(r, f"sign_{which}") != int(mp.sign(ref)):
        return math.inf
    return abs(math.expm1(getattr(r, f"log_abs_{which}") - float(mp.log(abs(ref)))))


CASES = {
    "quad-d12": lambda: ms.random_quadratic(12, seed=11),
    "quad-d30": lambda: ms.random_quadratic(30, seed=12),
    "lsq-wide": lambda: ms.random_least_squares(24, 14, 0.5, seed=13, n_valid=9),
    "lsq-tall": lambda: ms.random_least_squares(10, 40, 0.5, seed=14, n_valid=9),
}
# eta in units of 1/L: inside (0.2, 1.0, 1.6) and outside (2.3) the stable range 0 < eta < 2/L
ETA_L = (0.2, 1.0, 1.6, 2.3)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param, CASES[request.param]()


def _ons(p):
    return ("train", "valid") if p.has_valid else ("train",)


@pytest.mark.parametrize("t", [1, 10, 100, 1000])
def test_exact_float64_matches_mpmath(case, t):
    name, p = case
    for on in _ons(p):
        for c in ETA_L:
            eta = c / p.L
            for objective in ("final", "log"):
                v, g = _ref(p, eta, t, objective, on)
                r = ms.metagrad(p, eta, t, objective=objective, on=on, mode="exact", dtype="float64")
                assert r.status == "ok"
                # log form everywhere
                assert _rel_log(r, "grad", g) < 1e-12, (name, on, c, t, objective)
                assert _rel_log(r, "value", v) < 1e-12
                # float64 numbers wherever the truth is finite (and normal) in float64
                if abs(g) < mp.mpf("1e300") and abs(g) > mp.mpf("1e-300"):
                    assert _rel(mp.mpf(r.grad), g) < 1e-12, (name, on, c, t, objective, r.grad, g)


@pytest.mark.parametrize("on", ["train", "valid"])
def test_exact_log_form_at_a_million_steps(on):
    """t = 10^6: F and F' are far outside float64's range; log form to <= 1e-9."""
    p = ms.random_least_squares(16, 30, 0.5, seed=21, n_valid=10) if on == "valid" else ms.random_quadratic(16, 21)
    t = 10**6
    for c in (0.5, 1.2, 2.05):
        eta = c / p.L
        for objective in ("final", "log"):
            v, g = _ref(p, eta, t, objective, on)
            r = ms.metagrad(p, eta, t, objective=objective, on=on, mode="exact", dtype="float64")
            assert r.status == "ok"
            assert abs(r.log_abs_grad - float(mp.log(abs(g)))) <= 1e-9 * max(1.0, abs(float(mp.log(abs(g)))))
            assert abs(r.log_abs_value - float(mp.log(abs(v)))) <= 1e-9 * max(1.0, abs(float(mp.log(abs(v)))))
            if objective == "log":   # G is a moderate number; G' too unless the loss has converged
                assert _rel(mp.mpf(r.value), v) < 1e-9
                if mp.mpf("1e-300") < abs(g) < mp.mpf("1e300"):
                    assert _rel(mp.mpf(r.grad), g) < 1e-9


@pytest.mark.parametrize("dtype", ["float32", "float64", "longdouble"])
@pytest.mark.parametrize("t", [10, 100, 1000])
def test_iterative_modes_match_or_report(case, t, dtype):
    """ok => within tolerance; truth outside the range => not ok."""
    name, p = case
    huge = {"float32": 38, "float64": 307, "longdouble": 4931}[dtype]
    tiny = {"float32": -37, "float64": -307, "longdouble": -4931}[dtype]
    for on in _ons(p):
        for c in ETA_L:
            eta = c / p.L
            v, g = _ref(p, eta, t, "final", on)
            lg10 = float(mp.log10(abs(g))) if g != 0 else -math.inf
            lv10 = float(mp.log10(abs(v)))
            out_of_range = not (tiny < lg10 < huge and tiny < lv10 < huge)
            for mode in PLAIN:
                r = ms.metagrad(p, eta, t, on=on, mode=mode, dtype=dtype)
                if r.status == "ok":
                    err = _rel(_mp_of(r, "grad"), g)
                    # the reported error estimate must cover the actual error
                    bound = max(TOL[dtype], 10 * r.diagnostics["grad_rel_error"])
                    assert err <= bound, (name, on, c, t, mode, dtype, err, r.diagnostics["grad_rel_error"])
                    assert not out_of_range, (name, on, c, t, mode, dtype, "ok outside the range")
                else:
                    assert ":" in r.status and "at step" in r.status


@pytest.mark.parametrize("dtype", ["float32", "float64", "longdouble"])
def test_scaled_modes_match_everywhere(case, dtype):
    """The range-safe mode is right wherever the plain modes overflow or underflow."""
    name, p = case
    tol = {"float32": 2e-3, "float64": 1e-10, "longdouble": 1e-13}[dtype]
    for on in _ons(p):
        for c in ETA_L:
            for t in (10, 1000):
                eta = c / p.L
                for objective in ("final", "log"):
                    v, g = _ref(p, eta, t, objective, on)
                    for mode in SCALED:
                        r = ms.metagrad(p, eta, t, on=on, mode=mode, dtype=dtype, objective=objective)
                        if isinstance(p, ms.LeastSquares) and r.status.startswith("cancellation"):
                            # interpolating least squares: X w - y cancels to rounding level, a
                            # precision limit (not a range one) that scaling cannot lift; reported
                            assert dtype == "float32" or t == 1000
                            continue
                        assert r.status == "ok", (name, on, c, t, mode, dtype, r.status)
                        bound = max(tol, 10 * r.diagnostics["grad_rel_error"])
                        assert _rel_log(r, "grad", g) <= bound, (name, on, c, t, mode, dtype, objective)
                        assert _rel_log(r, "value", v) <= tol


def test_plain_reverse_fails_visibly_where_the_paper_says():
    """d = 100, eigenvalues in [0.01, 1], eta = 2.5, t = 1000: plain reverse mode in float64
    overflows and says which quantity and step; scaled and exact stay right."""
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((100, 100)))
    H = (Q * np.geomspace(0.01, 1, 100)) @ Q.T
    p = ms.Quadratic(0.5 * H + 0.5 * H.T, rng.standard_normal(100))
    r = ms.metagrad(p, 2.5, 1000, mode="reverse", objective="log")
    assert r.status.startswith("non-finite") and "at step" in r.status
    ex = ms.metagrad(p, 2.5, 1000, mode="exact", objective="log", dtype="longdouble")
    sc = ms.metagrad(p, 2.5, 1000, mode="scaled", objective="log", dtype="float32")
    assert sc.status == "ok" and abs(sc.grad / ex.grad - 1) < 1e-3


def test_longdouble_is_100x_closer_than_float64():
    ratios = []
    for name, make in CASES.items():
        p = make()
        for c in (0.2, 1.0, 1.6):
            eta = c / p.L
            v, g = _ref(p, eta, 200)
            for mode in ("forward", "reverse"):
                e64 = _rel(_mp_of(ms.metagrad(p, eta, 200, mode=mode, dtype="float64"), "grad"), g)
                eld = _rel(_mp_of(ms.metagrad(p, eta, 200, mode=mode, dtype="longdouble"), "grad"), g)
                ratios.append((e64, eld))
    e64 = np.array([a for a, _ in ratios])
    eld = np.array([b for _, b in ratios])
    assert eld.max() * 100 <= e64.max()
    assert np.median(eld) * 100 <= np.median(e64)


@pytest.mark.parametrize("t", [10, 300])
def test_extended_precisions_to_1e25(extended, t):
    p = ms.random_quadratic(8, seed=31)
    lsq = ms.random_least_squares(9, 6, 0.5, seed=32, n_valid=5)
    for prob, ons in ((p, ("train",)), (lsq, ("train", "valid"))):
        for on in ons:
            for c in (0.3, 1.7, 2.4):
                eta = c / prob.L
                for objective in ("final", "log"):
                    v, g = _ref(prob, eta, t, objective, on)
                    for mode in ("exact", "forward", "reverse", "scaled_forward", "scaled_reverse"):
                        r = ms.metagrad(prob, eta, t, on=on, mode=mode, dtype=extended, objective=objective)
                        assert r.status == "ok"
                        assert r.grad_text is not None and r.value_text is not None
                        tol = 1e-25 if extended == "quad" else 1e-60
                        assert _rel(mp.mpf(r.grad_text), g) <= tol, (extended, mode, on, c, t, objective)
                        assert _rel(mp.mpf(r.value_text), v) <= tol


def test_mp_has_no_range_limit():
    """F'(eta) = 1e-10000-ish: far below every hardware type; mp and exact-in-log get it."""
    rng = np.random.default_rng(41)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    H = (Q * np.array([1.0, 1.5, 2.0, 3.0])) @ Q.T
    p = ms.Quadratic(0.5 * H + 0.5 * H.T, rng.standard_normal(4))
    eta, t = 0.3, 20000
    v, g = _ref(p, eta, t)
    assert float(mp.log10(abs(g))) < -4932       # beyond long double and quad
    r = ms.metagrad(p, eta, t, mode="exact", dtype="mp")
    assert _rel(mp.mpf(r.grad_text), g) < 1e-60
    r64 = ms.metagrad(p, eta, t, mode="exact", dtype="float64")
    assert r64.grad == 0.0 and r64.status == "ok"           # float64 number underflows ...
    assert abs(r64.log_abs_grad - float(mp.log(abs(g)))) < 1e-9 * abs(float(mp.log(abs(g))))  # ... log form exact
    plain = ms.metagrad(p, eta, 2000, mode="forward", dtype="float64")
    assert plain.status == "ok" or "subnormal" in plain.status or "underflow" in plain.status


def test_unroll_losses_against_mpmath():
    p = ms.random_least_squares(7, 12, 0.3, seed=51)
    eta = 1.3 / p.L
    ref = R.trajectory_losses(X=p.X, y=p.y, w0=p.w0, eta=eta, t=30)
    for dtype, tol in (("float64", 1e-13), ("longdouble", 1e-16)):
        u = ms.unroll(p, eta, 30, dtype=dtype)
        assert u.status == "ok"
        errs = [_rel(mp.mpf(np.format_float_scientific(np.longdouble(x), unique=True)), y)
                for x, y in zip(u.losses_ext, ref)]
        assert max(errs) < tol


def test_schedule_gradient_against_mpmath_iteration():
    p = ms.random_quadratic(6, seed=61)
    rng = np.random.default_rng(3)
    sched = rng.uniform(0.2, 2.2, size=40) / p.L
    v, g = R.iterate_metagrad(H=p.H, w0=p.w0, w_star=p.w_star, schedule=sched, t=40, objective="log")
    for mode, dtype, tol in (("reverse", "float64", 1e-10), ("checkpoint", "float64", 1e-10),
                             ("scaled_reverse", "float64", 1e-10), ("scaled_reverse", "float32", 2e-3),
                             ("scaled_reverse", "quad", 1e-25)):
        r = ms.metagrad(p, schedule=sched, mode=mode, dtype=dtype, objective="log")
        assert r.status == "ok"
        if r.grad_text is not None:
            got = [mp.mpf(x) for x in r.grad_text]
        else:
            got = [mp.mpf(np.format_float_scientific(np.longdouble(x), unique=True)) for x in r.grad_ext]
        errs = [_rel(a, b) for a, b in zip(got, g)]
        assert max(errs) <= tol, (mode, dtype, max(errs))


# Exact mode for least squares near and beyond the ends of a precision's range. The constant part
# of the training loss (the residual at the minimiser) and the validation residual are formed in
# the wide type: float32 targets of 1e20 give losses of 1e40, past float32's largest number,
# while the spectrum itself is ordinary (this used to give NaN). And when that residual is much
# smaller than the terms it is computed from, its digits are rounding noise: flagged.
def _lsq(n, d, y_scale, seed, n_valid=0, noise=None):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if noise is None:
        y = y_scale * rng.standard_normal(n)
    else:
        y = X @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    kw = {}
    if n_valid:
        kw = dict(X_valid=rng.standard_normal((n_valid, d)), y_valid=y_scale * rng.standard_normal(n_valid))
    return ms.LeastSquares(X, y, w0=np.zeros(d), **kw)


@pytest.mark.parametrize("on", ["train", "valid"])
def test_exact_float32_beyond_float32_range(on):
    p = _lsq(12, 3, 1e20, seed=31, n_valid=5)
    for c in (0.5, 1.0, 1.7):
        eta = c / p.L
        for t in (3, 200):
            v, g = _ref(p, eta, t, "final", on)
            assert abs(v) > mp.mpf("1e39")  # outside float32's range
            r = ms.metagrad(p, eta, t, on=on, mode="exact", dtype="float32")
            assert r.status == "ok", (on, c, t, r.status)
            assert _rel_log(r, "value", v) < 1e-3, (on, c, t, r.log_abs_value, float(mp.log(abs(v))))
            if g != 0 and abs(mp.log(abs(g)) - mp.log(abs(v))) < 40:  # the gradient is not a rounding residue
                assert _rel_log(r, "grad", g) < 1e-3, (on, c, t)


def test_exact_flags_a_floor_below_the_rounding_level():
    # y = X w + 1e-6 noise: the minimum residual is ~1e-7 of the terms X w it is formed from,
    # below sqrt(eps) for float32 (2.4e-4) but not for float64 (1.5e-8)
    p = _lsq(40, 10, 1.0, seed=32, noise=1e-6)
    eta, t = 1.0 / p.L, 3000
    v, _ = _ref(p, eta, t)
    r64 = ms.metagrad(p, eta, t, mode="exact", dtype="float64")
    assert r64.status == "ok"
    assert _rel_log(r64, "value", v) < 1e-6
    r32 = ms.metagrad(p, eta, t, mode="exact", dtype="float32")
    assert r32.status == f"cancellation: meta-loss at step {t}", r32.status
    # early on the floor is a negligible part of the loss: nothing to flag
    r32_early = ms.metagrad(p, eta, 2, mode="exact", dtype="float32")
    assert r32_early.status == "ok"
    assert _rel_log(r32_early, "value", _ref(p, eta, 2)[0]) < 1e-3
    # a floor 1e-30 of its terms (w0 far from a minimiser whose residual is tiny): every precision
    # but mp has lost all its digits, and says so; mp agrees with the oracle
    X = np.array([[1.3e13], [-0.7e13]])
    q = ms.LeastSquares(X, np.array([3e-18, -1e-18]), w0=np.array([0.3]))
    v, _ = _ref(q, 1.0 / q.L, 7)
    for dt in ("float32", "float64", "longdouble"):
        assert ms.metagrad(q, 1.0 / q.L, 7, mode="exact", dtype=dt).status == "cancellation: meta-loss at step 7", dt
    rmp = ms.metagrad(q, 1.0 / q.L, 7, mode="exact", dtype="mp")
    assert rmp.status == "ok"
    assert _rel_log(rmp, "value", v) < 1e-20


def test_exact_flags_ill_conditioning_where_it_is_real():
    """One component with eta*lambda within rounding of 1 and t = 153: the eigenvalue's own
    error (~1e-19 relative in float64's long-double refinement) is amplified by 2 t eta / |1 - eta
    lambda| ~ 1e18, so float64 and long double are off the oracle by ~20 % and must say so;
    mp (256 bits) stays accurate and ok; and in benign cases the estimate is tiny."""
    rng = np.random.default_rng(5)
    p = ms.LeastSquares(rng.standard_normal((1, 5)), rng.standard_normal(1), w0=rng.standard_normal(5))
    eta, t = 1.0 / p.L, 153
    v, _ = _ref(p, eta, t)
    for dt in ("float64", "longdouble"):
        r = ms.metagrad(p, eta, t, mode="exact", dtype=dt)
        assert _rel_log(r, "value", v) > 1e-2   # really wrong ...
        assert r.status == f"ill-conditioned: meta-loss at step {t}", (dt, r.status)   # ... and flagged
        assert r.diagnostics["value_rel_error"] > _rel_log(r, "value", v)   # a bound, not an underestimate
    r = ms.metagrad(p, eta, t, mode="exact", dtype="mp")
    assert r.status == "ok" and _rel_log(r, "value", v) < 1e-25
    # benign: the same problem at eta = 0.5 / L
    r = ms.metagrad(p, 0.5 / p.L, t, mode="exact", dtype="float64")
    assert r.status == "ok" and r.diagnostics["value_rel_error"] < 1e-12
    assert _rel_log(r, "value", _ref(p, 0.5 / p.L, t)[0]) < 1e-12
