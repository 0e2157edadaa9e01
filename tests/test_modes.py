"""Modes against each other and against the identity dw_t/dη = −t ∇f(w_{t−1}) (SPEC §4)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import metastep as ms
from conftest import EPS, rel_err

ITERATIVE = ("reverse", "checkpoint", "forward")


def grad_f(problem, w):
    w = np.asarray(w, dtype=np.longdouble)
    if isinstance(problem, ms.Quadratic):
        return problem.H.astype(np.longdouble) @ (w - problem.w_star)
    X = problem.X.astype(np.longdouble)
    return X.T @ (X @ w - problem.y) / problem.n


def grad_meta(problem, w, on):
    if on == "train":
        return grad_f(problem, w)
    X = problem.X_valid.astype(np.longdouble)
    w = np.asarray(w, dtype=np.longdouble)
    return X.T @ (X @ w - problem.y_valid) / problem.n_valid


PROBLEMS = {
    "quadratic": lambda: ms.random_quadratic(12, seed=3),
    "lsq_wide": lambda: ms.random_least_squares(25, 15, 0.5, seed=4, n_valid=10),
    "lsq_tall": lambda: ms.random_least_squares(8, 30, 0.5, seed=5, n_valid=12),
}


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("t", [1, 2, 7, 60])
def test_identity_dw_deta(name, t):
    """dM/dη = −t ∇M(w_t)·∇f(w_{t−1}) for a constant step size, from two plain unrolls."""
    p = PROBLEMS[name]()
    eta = 0.7 / p.L
    w_prev = ms.unroll(p, eta, t - 1, dtype="longdouble").w_final_ext if t > 1 else p.w0.astype(np.longdouble)
    w_t = ms.unroll(p, eta, t, dtype="longdouble").w_final_ext
    for on in (["train", "valid"] if p.has_valid else ["train"]):
        expected = float(-t * grad_meta(p, w_t, on) @ grad_f(p, w_prev))
        for mode in ITERATIVE + ("exact",):
            r = ms.metagrad(p, eta, t, mode=mode, on=on, dtype="float64")
            assert r.status == "ok"
            assert rel_err(r.grad, expected) < 1e-11, (mode, on, r.grad, expected)


@pytest.mark.parametrize("name", PROBLEMS)
def test_modes_agree_on_a_batch(name, dtype):
    p = PROBLEMS[name]()
    etas = np.array([0.0, 0.3, 1.0, 1.9, 2.2]) / p.L
    t = 40
    tol = {"float32": 2e-3, "float64": 1e-10, "longdouble": 1e-13}[dtype]
    for objective in ("final", "log"):
        ref = ms.metagrad(p, etas, t, mode="exact", objective=objective, dtype="longdouble")
        for mode in ITERATIVE:
            r = ms.metagrad(p, etas, t, mode=mode, objective=objective, dtype=dtype)
            assert r.grad.shape == etas.shape and len(r.status) == etas.size
            ok = r.ok
            # float32 may lose a converged least-squares gradient to rounding: reported
            assert ok.all() or dtype == "float32", r.status
            assert all(s == "ok" or s.startswith("cancellation: meta-gradient") for s in r.status)
            est = np.array([dg["grad_rel_error"] for dg in r.diagnostics])
            err = np.abs(r.grad - ref.grad) / np.abs(ref.grad)
            assert np.all(err[ok] <= np.maximum(tol, 10 * est[ok])), (mode, objective, err, est)
            assert rel_err(r.value, ref.value) < tol


def test_batch_equals_single_calls():
    p = PROBLEMS["quadratic"]()
    etas = np.linspace(0.01, 2.5, 9) / p.L
    for mode in ITERATIVE + ("exact", "fd"):
        batch = ms.metagrad(p, etas, 30, mode=mode, objective="log")
        single = [ms.metagrad(p, float(e), 30, mode=mode, objective="log").grad for e in etas]
        np.testing.assert_array_equal(batch.grad, single)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 16, 200])
def test_checkpoint_bit_identical_to_reverse(k, dtype):
    p = PROBLEMS["lsq_wide"]()
    rng = np.random.default_rng(k)
    sched = rng.uniform(0.2, 1.5, size=57) / p.L
    for on in ("train", "valid"):
        a = ms.metagrad(p, schedule=sched, mode="reverse", on=on, dtype=dtype)
        b = ms.metagrad(p, schedule=sched, mode="checkpoint", checkpoints=k, on=on, dtype=dtype)
        assert a.grad.shape == (57,)
        np.testing.assert_array_equal(a.grad, b.grad)
        np.testing.assert_array_equal(a.grad_ext, b.grad_ext)
        assert a.value == b.value and a.grad_along_ones == b.grad_along_ones
        # memory: at most k snapshots plus one working iterate
        assert b.diagnostics["stored_states"] <= k + 1
        assert a.diagnostics["stored_states"] == 58


def test_checkpoint_recomputation_is_binomially_bounded():
    """With k snapshots and r passes, C(k + r, k) steps are reversible: extra work <= r t."""
    from math import comb
    p = ms.random_quadratic(4, seed=1)
    for t, k in [(100, 4), (1000, 10), (1000, 3), (5000, 32)]:
        r = ms.metagrad(p, 0.3 / p.L, t, mode="checkpoint", checkpoints=k)
        reps = 1
        while comb(k + reps, k) < t:
            reps += 1
        assert r.diagnostics["recomputed_steps"] <= reps * t
        assert r.diagnostics["stored_states"] <= k + 1
        ref = ms.metagrad(p, 0.3 / p.L, t, mode="reverse")
        assert r.grad == ref.grad


def test_schedule_gradient_against_finite_differences_and_forward():
    p = PROBLEMS["quadratic"]()
    rng = np.random.default_rng(0)
    sched = rng.uniform(0.1, 1.2, size=25) / p.L
    r = ms.metagrad(p, schedule=sched, mode="reverse", dtype="longdouble", objective="log")
    # directional derivative along all-ones equals the sum of the per-step gradient
    fwd = ms.metagrad(p, schedule=sched, mode="forward", dtype="longdouble", objective="log")
    assert rel_err(np.sum(r.grad_ext), fwd.grad) < 1e-14
    # per-step: central differences in long double on the value
    h = 1e-6 / p.L
    for tau in (0, 7, 24):
        up, dn = sched.copy(), sched.copy()
        up[tau] += h
        dn[tau] -= h
        fu = ms.unroll(p, schedule=up, dtype="longdouble").log_losses[-1] / 25
        fd = ms.unroll(p, schedule=dn, dtype="longdouble").log_losses[-1] / 25
        assert rel_err(r.grad[tau], (fu - fd) / (2 * h)) < 1e-6


def test_unroll_losses_match_numpy():
    p = PROBLEMS["lsq_tall"]()
    eta = 1.0 / p.L
    u = ms.unroll(p, eta, 20, dtype="longdouble")
    w = p.w0.astype(np.longdouble)
    X = p.X.astype(np.longdouble)
    losses = []
    for _ in range(21):
        r = X @ w - p.y
        losses.append(r @ r / (2 * p.n))
        w = w - eta * (X.T @ r) / p.n
    assert rel_err(u.losses, np.array(losses, dtype=float)) < 1e-15
    assert u.losses.shape == (21,) and u.valid_losses.shape == (21,)
    assert u.status == "ok"


PEAK_SCRIPT = r"""
import json, sys
import numpy as np
import metastep as ms
def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))
mode, k, d, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
H = np.eye(d) * 0.5
p = ms.Quadratic(H, np.ones(d))
ms.metagrad(p, 0.1, 1, mode=mode)   # warm up: compiled problem, allocator
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")                   # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
r = ms.metagrad(p, 1e-4, t, mode=mode, checkpoints=k if mode == "checkpoint" else None)
assert r.status == "ok", r.status
after = status("VmHWM")
print(json.dumps({"kib": after - before, "states": r.diagnostics["stored_states"], "grad": r.grad}))
"""


def _peak(mode, k, d, t):
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode, str(k), str(d), str(t)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_checkpoint_peak_memory_is_O_k_d():
    """Measured peak RSS growth: reverse stores (t+1)·d doubles, checkpoint only k·d."""
    d, t = 200, 40000          # reverse: 40001 * 200 * 8 B = 61 MiB
    rev = _peak("reverse", 0, d, t)
    chk = _peak("checkpoint", 50, d, t)
    assert rev["states"] == t + 1 and chk["states"] <= 51
    assert rev["grad"] == chk["grad"]
    trajectory_kib = (t + 1) * d * 8 / 1024
    assert rev["kib"] > 0.8 * trajectory_kib
    assert chk["kib"] < 0.1 * trajectory_kib  # 50 * 200 * 8 B = 78 KiB of snapshots
