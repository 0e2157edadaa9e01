"""Minibatch SGD on least squares: batch sequence, modes against an independent long double
NumPy iteration, and the range-safe scaled mode at long horizons."""
import numpy as np
import pytest

import metastep as ms


def test_batches_are_seeded_distinct_and_stable():
    b = ms.sgd_batches(50, 8, 200, seed=7)
    assert b.shape == (200, 8) and b.dtype == np.int32
    assert all(len(set(row)) == 8 for row in b)                 # distinct within a step
    assert b.min() >= 0 and b.max() < 50
    np.testing.assert_array_equal(b, ms.sgd_batches(50, 8, 200, seed=7))
    assert not np.array_equal(b, ms.sgd_batches(50, 8, 200, seed=8))
    # a fixed integer generator: the first rows are part of the contract (same on every machine)
    np.testing.assert_array_equal(ms.sgd_batches(10, 3, 2, seed=0), ms.sgd_batches(10, 3, 2, seed=0))
    counts = np.bincount(ms.sgd_batches(20, 5, 4000, seed=1).ravel(), minlength=20)
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()   # uniform
    with pytest.raises(ValueError, match="batch_size"):
        ms.sgd_batches(5, 6, 10)


def _numpy_sgd(p, eta, t, batches, on):
    """Forward mode in long double, written independently of the core."""
    X, y = p.X.astype(np.longdouble), p.y.astype(np.longdouble)
    w = p.w0.astype(np.longdouble)
    v = np.zeros_like(w)
    for tau in range(t):
        idx = batches[tau]
        Xb, yb = X[idx], y[idx]
        g = Xb.T @ (Xb @ w - yb) / len(idx)
        hv = Xb.T @ (Xb @ v) / len(idx)
        v = v - g - eta * hv
        w = w - eta * g
    A, b = (X, y) if on == "train" else (p.X_valid.astype(np.longdouble), p.y_valid.astype(np.longdouble))
    r = A @ w - b
    M = r @ r / (2 * len(b))
    dM = (A.T @ r / len(b)) @ v
    return M, dM


@pytest.mark.parametrize("on", ["train", "valid"])
def test_sgd_modes_match_numpy(on):
    p = ms.random_least_squares(12, 40, 0.5, seed=3, n_valid=20)
    t, B = 60, 6
    batches = ms.sgd_batches(p.n, B, t, seed=11)
    for c in (0.3, 1.0):
        eta = c / p.L
        M, dM = _numpy_sgd(p, eta, t, batches, on)
        for mode in ("forward", "reverse", "checkpoint", "scaled_forward", "scaled_reverse"):
            r = ms.metagrad(p, eta, t, mode=mode, on=on, batch_size=B, sgd_seed=11, dtype="longdouble")
            assert r.status == "ok"
            assert abs(r.value_ext / M - 1) < 1e-15
            assert abs(r.grad_ext / dM - 1) < 1e-13, (mode, c, on)
        r = ms.metagrad(p, eta, t, mode="fd", on=on, batch_size=B, sgd_seed=11, dtype="longdouble")
        assert abs(r.grad_ext / dM - 1) < 1e-8


def test_sgd_reverse_and_checkpoint_identical_and_unroll():
    p = ms.random_least_squares(10, 30, 0.5, seed=4)
    sched = np.linspace(0.2, 1.2, 45) / p.L
    a = ms.metagrad(p, schedule=sched, mode="reverse", batch_size=5, sgd_seed=2)
    b = ms.metagrad(p, schedule=sched, mode="checkpoint", checkpoints=4, batch_size=5, sgd_seed=2)
    np.testing.assert_array_equal(a.grad, b.grad)
    u = ms.unroll(p, 0.5 / p.L, 45, batch_size=5, sgd_seed=2, dtype="longdouble")
    # full training losses along the SGD run
    w = p.w0.astype(np.longdouble)
    X, y = p.X.astype(np.longdouble), p.y.astype(np.longdouble)
    batches = ms.sgd_batches(p.n, 5, 45, seed=2)
    losses = []
    for tau in range(46):
        r = X @ w - y
        losses.append(r @ r / (2 * p.n))
        if tau < 45:
            Xb, yb = X[batches[tau]], y[batches[tau]]
            w = w - (0.5 / p.L) * Xb.T @ (Xb @ w - yb) / 5
    np.testing.assert_allclose(u.losses_ext.astype(float), np.array(losses, dtype=float), rtol=1e-15)


def test_sgd_scaled_mode_survives_divergence_where_plain_fails():
    """eta far outside the stable range: F' ~ 10^(thousands); plain float64 overflows (and says
    where), scaled float32 and float64 agree with scaled long double."""
    p = ms.random_least_squares(8, 40, 0.5, seed=5, n_valid=10)
    eta, t, B = 3.0 / p.L, 3000, 8
    ref = ms.metagrad(p, eta, t, mode="scaled", batch_size=B, dtype="longdouble", objective="log")
    assert ref.status == "ok" and ref.log_abs_value * t > 800      # f(w_t) beyond float64's range
    plain = ms.metagrad(p, eta, t, mode="reverse", batch_size=B, objective="log")
    assert plain.status.startswith("non-finite") and "at step" in plain.status
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-3)):
        for mode in ("scaled_forward", "scaled_reverse"):
            r = ms.metagrad(p, eta, t, mode=mode, batch_size=B, dtype=dtype, objective="log")
            assert r.status == "ok"
            assert abs(r.grad / ref.grad - 1) < tol, (dtype, mode)


def test_sgd_rejects_exact_and_quadratics():
    p = ms.random_least_squares(5, 10, 0.5, seed=6)
    with pytest.raises(ValueError, match="exact"):
        ms.metagrad(p, 0.1, 10, mode="exact", batch_size=2)
    with pytest.raises(ValueError, match="LeastSquares"):
        ms.metagrad(ms.random_quadratic(3, 0), 0.1, 10, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ms.metagrad(p, 0.1, 10, batch_size=11)
