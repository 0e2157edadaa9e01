"""Meta-training of the step size (SPEC §6) and the exact optimal step size.

Oracles are independent of the compiled engine: the minimiser η* is re-derived here by
bisection on G'(η) written out in NumPy from an eigen-decomposition (log domain), and t = 1 has
the closed form Σc²λ²/Σc²λ³.
"""
import math

import numpy as np
import pytest

import metastep as ms
from metastep import meta_train as mt
from metastep.meta_train import MetaTrainingError, find_optimal_eta, meta_train
from metastep.stability import default_problem


def _spectrum(q):
    lam, U = np.linalg.eigh(q.H)
    c = U.T @ (q.w0 - q.w_star)
    keep = lam > 1e-12 * lam.max()
    return lam[keep], (c * c)[keep]


def numpy_G(q, eta, t):
    """G(η) = (1/t) log(½ Σ c²λ(1−ηλ)^{2t}) in the log domain, NumPy only."""
    lam, c2 = _spectrum(q)
    with np.errstate(divide="ignore"):
        logs = np.log(0.5 * c2 * lam) + 2 * t * np.log(np.abs(1 - eta * lam))
    m = logs.max()
    return (m + math.log(np.exp(logs - m).sum())) / t


def numpy_dG(q, eta, t):
    """G'(η) = −2 Σ c²λ²(1−ηλ)^{2t−1} / Σ c²λ(1−ηλ)^{2t}, NumPy only, log domain with signs."""
    lam, c2 = _spectrum(q)
    r = 1 - eta * lam
    with np.errstate(divide="ignore"):
        lnum = np.log(c2 * lam * lam) + (2 * t - 1) * np.log(np.abs(r))
        lden = np.log(c2 * lam) + 2 * t * np.log(np.abs(r))
    sgn = np.sign(r) ** (2 * t - 1)
    m = max(lnum.max(), lden.max())
    return -2 * float(np.sum(sgn * np.exp(lnum - m))) / float(np.sum(np.exp(lden - m)))


def numpy_eta_star(q, t, hi):
    """Global minimiser by a dense NumPy grid of G, then bisection on the NumPy G'."""
    xs = np.linspace(0, hi, 20001)
    g = np.array([numpy_G(q, x, t) for x in xs])
    i = int(np.argmin(g))
    lo, up = xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)]
    assert numpy_dG(q, lo, t) < 0 < numpy_dG(q, up, t)
    for _ in range(200):
        mid = 0.5 * (lo + up)
        if mid in (lo, up):
            break
        if numpy_dG(q, mid, t) > 0:
            up = mid
        else:
            lo = mid
    return 0.5 * (lo + up)


@pytest.fixture(scope="module")
def easy():
    """d = 5, eigenvalues in [0.2, 1] in a random basis: meta-GD is locally stable from the start."""
    return default_problem(seed=3, d=5, eig_min=0.2, eig_max=1.0)


# ------------------------------------------------------------------------------------------------
# find_optimal_eta
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 7, 80, 1000])
def test_find_optimal_eta_matches_numpy_bisection(t):
    q = ms.random_quadratic(8, seed=5)
    ref = numpy_eta_star(q, t, 2.0 / q.L)
    got, info = find_optimal_eta(q, t, full_output=True)
    assert abs(got - ref) <= 1e-12 * ref
    assert abs(numpy_dG(q, got, t)) <= 1e-9 * info["curvature"] * got
    assert info["curvature"] > 0
    assert find_optimal_eta(q, t, objective="final") == got  # same minimiser for F and G


def test_find_optimal_eta_t1_closed_form():
    q = ms.random_quadratic(20, seed=2)
    lam, c2 = _spectrum(q)
    closed = float(np.sum(c2 * lam**2) / np.sum(c2 * lam**3))
    assert find_optimal_eta(q, 1) == pytest.approx(closed, rel=1e-13)


def test_find_optimal_eta_beyond_2_over_L():
    """A start point that barely excites the top direction: the one-step optimum lies far
    beyond 2/L, so the search range has to grow."""
    H = np.diag([0.1, 1.0])
    q = ms.Quadratic(H, np.array([1.0, 1e-6]))
    lam, c2 = _spectrum(q)
    closed = float(np.sum(c2 * lam**2) / np.sum(c2 * lam**3))
    assert closed > 2.0 / q.L
    assert find_optimal_eta(q, 1) == pytest.approx(closed, rel=1e-12)


def test_find_optimal_eta_large_t_limit():
    q = ms.random_quadratic(20, seed=0)
    e = find_optimal_eta(q, 10**6)
    eta_inf = 2.0 / (q.L + q.alpha)
    assert abs(e / eta_inf - 1) < 1e-5


# ------------------------------------------------------------------------------------------------
# meta_train: convergence
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,dtype,tol", [("exact", "float64", 1e-12), ("scaled", "float32", 1e-6),
                                            ("scaled", "float64", 1e-12), ("forward", "float64", 1e-12)])
def test_meta_gd_converges_to_exact_minimiser(easy, mode, dtype, tol):
    t = 20
    ref = numpy_eta_star(easy, t, 2.0 / easy.L)
    res = meta_train(easy, 0.3, t, 300, mode=mode, dtype=dtype, lr=0.1)
    assert res.failure is None and not res.stopped
    assert res.steps_done == 300
    assert abs(res.eta - ref) / ref < tol
    # G decreased to (numerically) its minimum
    assert res.values[-1] <= res.values[0] - 0.5
    assert res.values[-1] == pytest.approx(numpy_G(easy, ref, t), abs=1e-6)


def test_paper_meta_step_rule_and_history_alignment(easy):
    t, K = 10, 25
    res = meta_train(easy, 0.3, t, K, mode="exact")   # gd, mu0 = 1/100 as in the paper
    assert res.config["lr"] == 0.01 and res.config["decay"] == "sqrt"
    assert len(res.etas) == K + 1 == len(res.values) == len(res.grads) == len(res.statuses)
    np.testing.assert_allclose(res.lrs, 0.01 / np.sqrt(np.arange(1, K + 1)), rtol=0, atol=0)
    for k in (0, 7, K):
        r = ms.metagrad(easy, float(res.etas[k]), t, objective="log", mode="exact")
        assert res.grads[k] == r.grad and res.values[k] == r.value
    for k in range(1, K + 1):
        assert res.etas[k] == max(0.0, res.etas[k - 1] - res.lrs[k - 1] * res.grads[k - 1])
    tab = res.table()
    assert list(tab["eta"]) == list(res.etas) and tab["status"][0] == "ok"


def test_projection_keeps_eta_non_negative():
    q = ms.random_quadratic(20, seed=0)   # L ≈ 63: eta0 = 0.1 is far beyond 2/L
    res = meta_train(q, 0.1, 80, 5, mode="exact")
    assert res.etas[1] == 0.0            # the first step overshoots below zero and is clipped
    assert np.all(res.etas >= 0)


@pytest.mark.parametrize("optimizer,lr", [("gd", 0.1), ("momentum", 0.01), ("rmsprop", 0.01), ("adam", 0.02)])
def test_every_optimizer_decreases_G(easy, optimizer, lr):
    t = 10
    ref = numpy_eta_star(easy, t, 2.0 / easy.L)
    res = meta_train(easy, 0.3, t, 200, optimizer=optimizer, lr=lr, mode="exact")
    assert res.ok
    g_star = numpy_G(easy, ref, t)
    # at least 99% of the possible decrease, and eta within 1% of eta*
    assert res.values[-1] - g_star <= 0.01 * (res.values[0] - g_star)
    assert abs(res.eta - ref) / ref < 0.01


def test_log_eta_parametrisation(easy):
    t = 10
    ref = numpy_eta_star(easy, t, 2.0 / easy.L)
    res = meta_train(easy, 0.3, t, 300, lr=0.02, decay="none", log_eta=True, mode="exact")
    assert res.ok and np.all(res.etas > 0)
    assert abs(res.eta - ref) / ref < 1e-10
    # the update is on log(eta): log eta_1 = log eta_0 - mu * eta_0 * G'(eta_0)
    assert math.log(res.etas[1]) == pytest.approx(math.log(0.3) - 0.02 * 0.3 * res.grads[0], rel=1e-14)


# ------------------------------------------------------------------------------------------------
# meta_train: failures are reported, never hidden
# ------------------------------------------------------------------------------------------------

def test_nonfinite_reverse_float32_is_reported_and_stops():
    q = ms.random_quadratic(20, seed=0)
    res = meta_train(q, 1.0, 1000, 50, mode="reverse", dtype="float32")
    assert res.stopped and res.steps_done == 0
    assert res.failure is not None and res.failure["meta_step"] == 1
    assert res.failure["status"].startswith("non-finite") and not res.failure["finite"]
    assert "at step" in res.failure["status"]
    assert res.statuses == [res.failure["status"]]
    assert math.isnan(res.grads[0])                 # the failing evaluation is kept as it came
    assert res.eta == 1.0 and np.all(np.isfinite(res.etas))
    assert "non-finite" in res.stop_reason and "meta-step 1" in res.stop_reason
    assert not res.ok


def test_nonfinite_stops_even_with_continue():
    q = ms.random_quadratic(20, seed=0)
    res = meta_train(q, 0.1, 80, 50, mode="reverse", dtype="float32", on_failure="continue")
    assert res.stopped and res.failure["meta_step"] == 1 and not res.failure["used"]
    assert np.all(np.isfinite(res.etas))


def test_raise_carries_the_history():
    q = ms.random_quadratic(20, seed=0)
    with pytest.raises(MetaTrainingError, match="meta-step 1") as exc:
        meta_train(q, 1.0, 1000, 10, mode="reverse", dtype="float64", on_failure="raise")
    assert exc.value.result.failure["status"].startswith("non-finite")


def test_failure_midway_keeps_last_good_eta(easy):
    """Float32 reverse mode at t = 1000: the first meta-step is fine, the second lands where
    the loss underflows float32; the run stops there with eta at the last good value, while
    the exact mode carries on."""
    res = meta_train(easy, 0.01, 1000, 200, mode="reverse", dtype="float32", lr=1.0)
    exact = meta_train(easy, 0.01, 1000, 200, mode="exact", dtype="float64", lr=1.0)
    assert exact.ok
    assert res.failure is not None and res.failure["meta_step"] >= 2 and res.stopped
    k = res.failure["meta_step"]
    assert res.steps_done == k - 1 and res.eta == res.failure["eta"] == res.etas[-1]
    assert res.statuses[-1] == res.failure["status"] != "ok"
    np.testing.assert_allclose(res.etas, exact.etas[:k], rtol=1e-4)   # same path (to float32) until then
    assert np.all(np.isfinite(res.etas))


class _Fake:
    def __init__(self, grad, status, value=0.0):
        self.grad, self.value, self.status = grad, value, status
        self.log_abs_grad = math.log(abs(grad)) if grad not in (0.0,) and math.isfinite(grad) else float("nan")
        self.sign_grad = int(np.sign(grad)) if math.isfinite(grad) else 0
        self.diagnostics = {"grad_rel_error": 1e-3}


def _scripted(monkeypatch, script):
    """Replace metagrad by a script of (grad, status) answers."""
    calls = iter(script)
    monkeypatch.setattr(mt.api, "metagrad", lambda *a, **k: _Fake(*next(calls)))


def test_non_ok_finite_status_stops_by_default(monkeypatch, easy):
    _scripted(monkeypatch, [(1.0, "ok"), (1.0, "subnormal: adjoint at step 3"), (1.0, "ok")])
    res = meta_train(easy, 0.5, 10, 2, lr=0.1, engine="python")
    assert res.stopped and res.steps_done == 1
    assert res.failure == {"meta_step": 2, "eta": res.etas[1], "status": "subnormal: adjoint at step 3",
                           "grad": 1.0, "value": 0.0, "finite": True, "used": False}


def test_non_ok_finite_status_used_with_continue(monkeypatch, easy):
    _scripted(monkeypatch, [(1.0, "ok"), (1.0, "subnormal: adjoint at step 3"), (2.0, "underflow to zero: loss at step 9"),
                            (1.0, "ok")])
    res = meta_train(easy, 0.5, 10, 3, lr=0.1, decay="none", on_failure="continue", engine="python")
    assert not res.stopped and res.steps_done == 3
    assert res.n_not_ok == 2 and res.failure["meta_step"] == 2 and res.failure["used"]
    np.testing.assert_allclose(res.etas, [0.5, 0.4, 0.3, 0.1])


def test_cancellation_flag_is_tolerated_and_recorded(monkeypatch, easy):
    _scripted(monkeypatch, [(1.0, "ok"), (1e-9, "cancellation: meta-gradient at step 10"), (1.0, "ok")])
    res = meta_train(easy, 0.5, 10, 2, lr=0.1, decay="none", engine="python")
    assert res.ok and res.n_flagged == 1
    assert res.first_flag["meta_step"] == 2 and res.first_flag["grad_rel_error"] == 1e-3
    _scripted(monkeypatch, [(1.0, "ok"), (1e-9, "cancellation: meta-gradient at step 10"), (1.0, "ok")])
    res = meta_train(easy, 0.5, 10, 2, lr=0.1, decay="none", tolerate=(), engine="python")
    assert res.stopped and res.failure["status"].startswith("cancellation")


def test_nan_gradient_with_ok_status_is_still_caught(monkeypatch, easy):
    _scripted(monkeypatch, [(1.0, "ok"), (float("nan"), "ok")])
    res = meta_train(easy, 0.5, 10, 5, lr=0.1, on_failure="continue", engine="python")
    assert res.stopped and res.failure["meta_step"] == 2 and not res.failure["finite"]
    assert np.all(np.isfinite(res.etas))


@pytest.mark.parametrize("kwargs,exc", [
    ({"optimizer": "sgd"}, ValueError), ({"on_failure": "ignore"}, ValueError), ({"lr": 0.0}, ValueError),
    ({"lr": float("nan")}, ValueError), ({"decay": "exp"}, ValueError),
    ({"optimizer_options": {"gamma": 1.0}, "optimizer": "adam"}, ValueError),
])
def test_bad_arguments(easy, kwargs, exc):
    with pytest.raises(exc):
        meta_train(easy, 0.3, 10, 5, **kwargs)


def test_bad_eta0(easy):
    with pytest.raises(ValueError, match="eta0"):
        meta_train(easy, -0.1, 10, 5)
    with pytest.raises(ValueError, match="log_eta"):
        meta_train(easy, 0.0, 10, 5, log_eta=True)
    with pytest.raises(ValueError, match="meta_steps"):
        meta_train(easy, 0.1, 10, -1)


def test_csv_roundtrip(tmp_path, easy):
    res = meta_train(easy, 0.3, 10, 4, mode="exact")
    p = tmp_path / "h.csv"
    res.to_csv(str(p))
    lines = p.read_text().splitlines()
    assert lines[0].startswith("k,eta,value,grad") and len(lines) == 6
    assert float(lines[-1].split(",")[1]) == res.eta


# --- the loop in the compiled core gives the same bits as the Python reference loop ---------

def _same(a, b):
    assert np.array_equal(a.etas, b.etas)
    assert np.array_equal(a.grads, b.grads, equal_nan=True)
    assert np.array_equal(a.values, b.values, equal_nan=True)
    assert np.array_equal(a.lrs, b.lrs)
    assert np.array_equal(a.sign_grads, b.sign_grads)
    assert a.statuses == b.statuses
    assert (a.steps_done, a.stopped, a.n_not_ok, a.n_flagged) == (b.steps_done, b.stopped, b.n_not_ok, b.n_flagged)
    assert a.stop_reason == b.stop_reason

    def norm(e):
        return None if e is None else {k: (repr(v) if isinstance(v, float) else v) for k, v in e.items()}
    assert norm(a.failure) == norm(b.failure)
    assert norm(a.first_flag) == norm(b.first_flag)


@pytest.mark.parametrize("optimizer,log_eta", [("gd", False), ("gd", True), ("momentum", False),
                                               ("rmsprop", True), ("adam", False)])
@pytest.mark.parametrize("mode,dtype", [("exact", "float64"), ("scaled", "float32"), ("forward", "float64"),
                                        ("checkpoint", "longdouble")])
def test_core_loop_matches_python_loop(optimizer, log_eta, mode, dtype):
    q = ms.random_quadratic(12, seed=4)
    lr = {"gd": 0.01, "momentum": 0.001, "rmsprop": 0.01, "adam": 0.01}[optimizer]
    kw = dict(mode=mode, dtype=dtype, optimizer=optimizer, log_eta=log_eta, lr=lr)
    if mode == "checkpoint":
        kw["metagrad_options"] = {"checkpoints": 5}
    a = meta_train(q, 0.05, 60, 120, engine="python", **kw)
    b = meta_train(q, 0.05, 60, 120, engine="core", **kw)
    _same(a, b)
    assert b.config["engine"] == "core"


def test_core_loop_least_squares_valid_and_failures():
    task = ms.random_least_squares(10, 6, 0.5, seed=2, n_valid=6)
    for on_failure in ("stop", "continue"):
        a = meta_train(task, 0.1, 40, 80, on="valid", mode="exact", on_failure=on_failure, engine="python")
        b = meta_train(task, 0.1, 40, 80, on="valid", mode="exact", on_failure=on_failure, engine="core")
        _same(a, b)
    # plain reverse mode in float32 dies at the first meta-step: same record, same message
    q = ms.random_quadratic(20, seed=3)
    a = meta_train(q, 0.1, 80, 50, mode="reverse", dtype="float32", engine="python")
    b = meta_train(q, 0.1, 80, 50, mode="reverse", dtype="float32", engine="core")
    _same(a, b)
    assert b.stopped and b.failure["status"].startswith("non-finite")
    with pytest.raises(MetaTrainingError):
        meta_train(q, 0.1, 80, 50, mode="reverse", dtype="float32", engine="core", on_failure="raise")


def test_engine_argument_is_checked():
    q = ms.random_quadratic(5, seed=1)
    with pytest.raises(ValueError, match="engine"):
        meta_train(q, 0.01, 10, 5, engine="gpu")
    with pytest.raises(ValueError, match="engine='core'"):
        meta_train(q, 0.01, 10, 5, engine="core", metagrad_options={"memory_limit": 10**9})
    # bad arguments are reported exactly as by the Python loop (validated through metagrad)
    with pytest.raises(ValueError):
        meta_train(q, 0.01, 10, 5, engine="core", on="valid")


def test_core_loop_tolerated_flags_and_continue_match_python():
    # near eta* the meta-gradient cancels: flagged and used (tolerate), or a failure (tolerate=())
    q = ms.random_quadratic(20, seed=1)
    for kw in ({}, {"tolerate": ()}, {"tolerate": (), "on_failure": "continue"}):
        a = meta_train(q, 0.02, 80, 400, mode="scaled", dtype="float32", engine="python", **kw)
        b = meta_train(q, 0.02, 80, 400, mode="scaled", dtype="float32", engine="core", **kw)
        _same(a, b)
    assert b.n_not_ok > 0 and not b.stopped and b.failure["used"]
    c = meta_train(q, 0.02, 80, 400, mode="forward", dtype="float64", engine="core")
    assert c.n_flagged > 0 and c.first_flag["status"].startswith("cancellation: meta-gradient")
