"""The batched forward engine (fused SIMD products, all step sizes of a block advancing
together): a step size gives the same bits alone, in any batch and on any thread; the results
agree with the closed form and with reverse mode; failures are reported per step size."""
import numpy as np
import pytest

import metastep as ms


def _quad(d, seed):
    return ms.random_quadratic(d, seed=seed)


@pytest.mark.parametrize("mode", ["forward", "scaled_forward"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("d", [1, 5, 8, 17, 31, 100])
def test_batch_equals_single_bit_for_bit(d, dtype, mode):
    q = _quad(d, seed=d)
    # 70 step sizes (some beyond 2/L): more than one block of 64, an uneven split over threads
    etas = np.linspace(0.05, 2.6, 70) / q.L
    batch = ms.metagrad(q, etas, 60, mode=mode, dtype=dtype, threads=1)
    for k in (2, 3):
        other = ms.metagrad(q, etas, 60, mode=mode, dtype=dtype, threads=k)
        np.testing.assert_array_equal(batch.grad, other.grad)
        np.testing.assert_array_equal(batch.value, other.value)
        assert batch.status == other.status
    for i in (0, 13, 63, 64, 69):
        one = ms.metagrad(q, float(etas[i]), 60, mode=mode, dtype=dtype)
        assert one.grad == batch.grad[i] and one.value == batch.value[i] and one.status == batch.status[i]
    # and a batch of three taken from the middle
    three = ms.metagrad(q, etas[20:23], 60, mode=mode, dtype=dtype)
    np.testing.assert_array_equal(three.grad, batch.grad[20:23])


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-3)])
def test_batched_scaled_far_outside_the_range(dtype, rtol):
    q = ms.Quadratic(np.diag(np.geomspace(0.01, 1.0, 40)), np.ones(40))
    etas = np.array([0.5, 1.5, 2.5, 2.9])
    got = ms.metagrad(q, etas, 5000, mode="scaled", dtype=dtype, objective="log")
    ref = ms.metagrad(q, etas, 5000, mode="exact", dtype="longdouble", objective="log")
    np.testing.assert_allclose(got.grad, ref.grad, rtol=rtol)
    np.testing.assert_allclose(got.value, ref.value, rtol=rtol)
    assert got.status == ["ok"] * 4
    # with w* != 0 the scaled mode iterates on w - w*: no cancellation as w converges to w*
    q2 = ms.Quadratic(np.diag(np.geomspace(0.01, 1.0, 40)), np.ones(40), w_star=np.full(40, 0.5))
    got2 = ms.metagrad(q2, etas, 5000, mode="scaled", dtype=dtype, objective="log")
    ref2 = ms.metagrad(q2, etas, 5000, mode="exact", dtype="longdouble", objective="log")
    np.testing.assert_allclose(got2.grad, ref2.grad, rtol=rtol)
    assert got2.status == ["ok"] * 4
    # plain forward mode forms w - w* every step: its cancellation is reported
    plain = ms.metagrad(q2, etas[:2], 5000, mode="forward", dtype=dtype, objective="log")
    assert all(s.startswith("cancellation") for s in plain.status)


@pytest.mark.parametrize("d", [3, 24, 25, 49, 130])
def test_batched_forward_matches_exact_and_reverse(d):
    q = _quad(d, seed=100 + d)
    etas = np.linspace(0.1, 1.9, 11) / q.L
    for objective in ("final", "log"):
        fwd = ms.metagrad(q, etas, 120, mode="forward", objective=objective)
        ex = ms.metagrad(q, etas, 120, mode="exact", objective=objective, dtype="longdouble")
        rev = ms.metagrad(q, etas, 120, mode="reverse", objective=objective)
        assert all(s == "ok" for s in np.atleast_1d(fwd.status))
        np.testing.assert_allclose(fwd.grad, ex.grad, rtol=1e-11)
        np.testing.assert_allclose(fwd.grad, rev.grad, rtol=1e-12)
        np.testing.assert_allclose(fwd.value, ex.value, rtol=1e-12)


def test_float32_batch_against_exact():
    q = _quad(40, seed=7)
    etas = np.linspace(0.1, 1.9, 9) / q.L
    fwd = ms.metagrad(q, etas, 80, mode="forward", dtype="float32", objective="log")
    ex = ms.metagrad(q, etas, 80, mode="exact", objective="log")
    np.testing.assert_allclose(fwd.grad, ex.grad, rtol=2e-3)


def test_failures_are_reported_per_step_size():
    q = ms.Quadratic(np.diag(np.geomspace(0.01, 1.0, 20)), np.ones(20))
    etas = np.array([0.5, 2.5, 1.0, 2.9])  # 2.5 and 2.9 leave float32's range before t = 400
    batch = ms.metagrad(q, etas, 400, mode="forward", dtype="float32")
    for i, e in enumerate(etas):
        alone = ms.metagrad(q, float(e), 400, mode="forward", dtype="float32")
        assert batch.status[i] == alone.status
        assert (batch.grad[i] == alone.grad) or (np.isnan(batch.grad[i]) and np.isnan(alone.grad))
    assert batch.status[0] == "ok" and batch.status[2] == "ok"
    for i in (1, 3):
        assert batch.status[i].startswith("non-finite: ")
        # the loss passes float32's largest value where (1 - eta)^(2 tau) / 2 does
        tau = int(batch.status[i].rsplit(" ", 1)[1])
        predicted = (np.log(2.0) + np.log(float(np.finfo(np.float32).max))) / (2 * np.log(etas[i] - 1.0))
        assert abs(tau - predicted) <= 2


def test_nonzero_minimiser_and_zero_start():
    d = 12
    rng = np.random.default_rng(5)
    X = rng.standard_normal((d, d))
    H = X.T @ X / d
    H = 0.5 * (H + H.T)
    q = ms.Quadratic(H, np.zeros(d), w_star=rng.standard_normal(d))
    etas = np.array([0.3, 1.0, 1.7]) / q.L
    fwd = ms.metagrad(q, etas, 90, mode="forward")
    ex = ms.metagrad(q, etas, 90, mode="exact", dtype="longdouble")
    np.testing.assert_allclose(fwd.grad, ex.grad, rtol=1e-11)


# --- exact mode without refinement (tridiagonalisation + QL on one vector, double evaluation) ---

@pytest.mark.parametrize("d", [1, 2, 9, 60])
def test_unrefined_exact_matches_refined(d):
    q = _quad(d, seed=300 + d)
    etas = np.linspace(0.02, 1.98, 40) / q.L  # (eta lambda = 1 exactly is tested below)
    for t in (1, 7, 300):
        for objective in ("final", "log"):
            fast = ms.metagrad(q, etas, t, mode="exact", refine=False, objective=objective)
            ref = ms.metagrad(q, etas, t, mode="exact", objective=objective, dtype="longdouble")
            # the unrefined eigenvalues carry ~eps ||H||, amplified by about 2 t eta / |1 - eta lambda|
            # (at eta lambda = 1 exactly the term vanishes: 0 here, a rounding residue in long double)
            tol = 1e-13 * (1 + t) * d
            np.testing.assert_allclose(fast.grad, ref.grad, rtol=tol, atol=tol * np.max(np.abs(ref.grad)))
            np.testing.assert_allclose(fast.value, ref.value, rtol=tol, atol=tol * np.max(np.abs(ref.value)))
            big = np.abs(ref.grad) > tol * np.max(np.abs(ref.grad))
            assert np.all(fast.sign_grad[big] == ref.sign_grad[big])


def test_unrefined_spectrum_is_the_spectrum():
    q = _quad(50, seed=11)
    sp = q._fast_spectrum("float64")
    lam = np.sort(np.linalg.eigvalsh(q.H))
    np.testing.assert_allclose(np.sort(sp.eigenvalues), lam[lam > 0], rtol=1e-10, atol=1e-12 * lam[-1])
    assert sp.L == pytest.approx(lam[-1], rel=1e-12)


def test_unrefined_exact_large_t_log_form():
    # far outside the stable range at t = 10^6: the log form stays finite and agrees
    q = ms.Quadratic(np.diag(np.geomspace(0.01, 1.0, 30)), np.ones(30))
    etas = np.array([0.5, 1.5, 2.5])
    fast = ms.metagrad(q, etas, 10**6, mode="exact", refine=False, objective="log")
    ref = ms.metagrad(q, etas, 10**6, mode="exact", objective="log", dtype="longdouble")
    np.testing.assert_allclose(fast.grad, ref.grad, rtol=1e-8)
    assert np.all(np.isfinite(fast.log_abs_grad))


def test_unrefined_exact_repeated_eigenvalues_and_zero_weights():
    H = np.diag([1.0, 1.0, 1.0, 0.5, 0.5, 0.0])
    w0 = np.array([1.0, 0.0, 2.0, 0.0, 0.0, 3.0])  # zero weights on two directions, a flat direction
    q = ms.Quadratic(H, w0)
    etas = np.array([0.3, 1.2])
    fast = ms.metagrad(q, etas, 25, mode="exact", refine=False)
    ref = ms.metagrad(q, etas, 25, mode="exact", dtype="longdouble")
    np.testing.assert_allclose(fast.grad, ref.grad, rtol=1e-13)
    # eta lambda = 1 exactly on every moving direction: w_t = w* after one step
    one = ms.metagrad(ms.Quadratic(np.eye(3), np.ones(3)), 1.0, 5, mode="exact", refine=False)
    assert one.value == 0.0 and one.grad == 0.0


def test_unrefined_exact_rejects_what_it_does_not_cover():
    q = _quad(5, seed=1)
    ls = ms.random_least_squares(5, 8, 0.5, seed=1, n_valid=4)
    with pytest.raises(ValueError, match="refine=False"):
        ms.metagrad(ls, 0.1, 10, mode="exact", refine=False)
    with pytest.raises(ValueError, match="refine=False"):
        ms.metagrad(q, 0.1, 10, mode="exact", refine=False, dtype="longdouble")
    with pytest.raises(ValueError, match="refine=False applies"):
        ms.metagrad(q, 0.1, 10, mode="forward", refine=False)
    with pytest.raises(TypeError, match="refine"):
        ms.metagrad(q, 0.1, 10, mode="exact", refine="no")
