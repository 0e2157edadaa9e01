"""Meta-objectives over task families, tuning, evaluation and the E3/E4/E3-SGD experiments
(SPEC §3, §6, §8; issue 4)."""
import json
import math
import os

import numpy as np
import pytest

import metastep as ms
from metastep import tuning as tu
from metastep.experiments import e3, e3_sgd, e4
from metastep.tasks import TaskFamily

GRID = np.logspace(-4, 0, 13)


def _agree(fast, slow, rtol):
    """Per-task values and meta-gradients of two TaskObjectives agree; same truncation decisions."""
    assert np.array_equal(fast.truncated, slow.truncated)
    assert np.max(np.abs(fast.per_task - slow.per_task) / np.abs(slow.per_task)) < rtol
    scale = np.maximum(np.abs(slow.per_task_grad), 1e-9 * np.max(np.abs(slow.per_task_grad)))
    assert np.max(np.abs(fast.per_task_grad - slow.per_task_grad) / scale) < rtol


# ------------------------------------------------------------------------------------------------
# fast path == the C++ engine (any mode) == plain NumPy GD, with and without truncation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d,n,nv", [
    (200, 100, 0),     # n < d: n×n Gram, block Krylov space of dimension 2(t+1) = 62 < n
    (200, 70, 60),     # train-by-validation, Krylov
    (60, 150, 0),      # n > d: d×d Gram, Krylov
    (50, 120, 90),     # n > d with validation
    (40, 25, 25),      # small: the whole space (full eigen-decomposition)
])
@pytest.mark.parametrize("objective", ["final", "log"])
def test_fast_gd_matches_engine(d, n, nv, objective):
    fam = TaskFamily(d, n, n_valid=nv, m=2, seed=1, truncation_factor=1.2)   # tight radius: truncation happens
    on = "valid" if nv else "train"
    fast = tu.meta_objective(fam, GRID, 30, on=on, objective=objective, sigma=[0.5, 2.0])
    slow = tu.meta_objective(fam, GRID, 30, on=on, objective=objective, sigma=[0.5, 2.0], mode="forward")
    assert 0 < np.mean(fast.truncated) < 1
    _agree(fast, slow, 1e-9)
    assert fast.value.shape == (2, GRID.size)
    assert np.allclose(fast.value, np.mean(fast.per_task, axis=0), rtol=1e-14)


def test_fast_gd_matches_exact_mode_without_truncation():
    fam = TaskFamily(150, 60, n_valid=40, m=2, seed=7, truncate=False)
    for on in ("train", "valid"):
        fast = tu.meta_objective(fam, GRID[:10], 40, on=on, sigma=1.0)
        slow = tu.meta_objective(fam, GRID[:10], 40, on=on, sigma=1.0, mode="exact")
        assert not fast.truncated.any()
        _agree(fast, slow, 1e-9)
        assert fast.value.shape == (10,)
    scalar = tu.meta_objective(fam, 0.01, 40, on="valid", sigma=1.0)
    assert isinstance(scalar.value, float) and isinstance(scalar.grad, float)


def test_fast_gd_matches_plain_numpy_unroll_with_truncation():
    fam = TaskFamily(120, 50, n_valid=30, m=3, seed=4, truncation_factor=1.0)
    t, etas = 25, np.array([0.003, 0.03, 0.3, 0.6, 0.9])
    for on in ("train", "valid"):
        fast = tu.meta_objective(fam, etas, t, on=on, sigma=0.8)
        for k in range(fam.m):
            p = fam.task(k, 0.8)
            W, at = tu.unroll_truncated(p.X, np.repeat(p.y[:, None], etas.size, 1), etas, t,
                                        radii=np.full(etas.size, p.radius), u=p.u)
            Xs, ys = (p.X, p.y) if on == "train" else (p.X_valid, p.y_valid)
            R = Xs @ W - ys[:, None]
            ref = np.sum(R * R, axis=0) / (2 * ys.size)
            assert np.array_equal(at >= 0, fast.truncated[k, 0])
            assert np.allclose(fast.per_task[k, 0], ref, rtol=1e-10)
    assert fast.truncated.any() and not fast.truncated.all()


def test_meta_gradient_matches_finite_differences():
    fam = TaskFamily(150, 40, n_valid=40, m=3, seed=3, truncate=False)
    for on in ("train", "valid"):
        prep = tu.prepare(fam, 40, on)
        for objective in ("final", "log"):
            e = np.array([1e-3, 0.02, 0.1])
            r = prep.objective(e, [1.5], objective=objective)
            h = 1e-6 * e
            fp = prep.objective(e + h, [1.5], objective=objective, grad=False)["value"]
            fm = prep.objective(e - h, [1.5], objective=objective, grad=False)["value"]
            assert np.allclose(r["grad"], (fp - fm) / (2 * h), rtol=1e-6)


def test_prepared_tasks_serve_fewer_steps_and_reject_more():
    fam = TaskFamily(100, 30, n_valid=30, m=2, seed=0, truncate=False)
    prep = tu.prepare(fam, 40, "valid")
    a = tu.meta_objective(prep, GRID[:6], 15)
    b = tu.meta_objective(fam, GRID[:6], 15, on="valid", mode="forward")
    assert np.allclose(a.per_task, b.per_task, rtol=1e-10)
    with pytest.raises(ValueError, match="at most 40 steps"):
        prep.losses(0.1, steps=41)
    assert "PreparedTasks(on='valid'" in repr(prep)


@pytest.mark.parametrize("d,n,nv,B", [(80, 40, 0, 8), (80, 30, 25, 5), (40, 100, 30, 16)])
def test_fast_sgd_matches_engine(d, n, nv, B):
    fam = TaskFamily(d, n, n_valid=nv, m=2, seed=5, truncation_factor=2.0)
    on = "valid" if nv else "train"
    fast = tu.meta_objective(fam, GRID, 25, on=on, sigma=[0.5, 2.0], batch_size=B)
    slow = tu.meta_objective(fam, GRID, 25, on=on, sigma=[0.5, 2.0], batch_size=B, mode="scaled")
    assert fast.truncated.any()
    _agree(fast, slow, 1e-9)


def test_krylov_breakdown_is_exact():
    """Gram matrices with few distinct eigenvalues: the Krylov space becomes invariant early."""
    rng = np.random.default_rng(0)
    n, d = 100, 300
    Q, _ = np.linalg.qr(rng.standard_normal((d, n)))
    for lam in (np.full(n, 4.0), np.repeat([1.0, 2.0, 9.0], [40, 30, 30])):
        X = (Q * np.sqrt(lam * n)).T                   # XᵀX/n has eigenvalues lam (and zeros)
        y = rng.standard_normal(n)
        rep = tu.tune_step_size(X, y, method="tbt", steps=40, grid=GRID[:8] * 0.2, refine=False)
        ref = ms.metagrad(ms.LeastSquares(X, y), GRID[:8] * 0.2, 40, mode="exact").value
        assert np.allclose(rep.grid_values, ref, rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# grid search, meta-GD, evaluation
# ------------------------------------------------------------------------------------------------

def test_grid_search_on_common_tasks():
    tbt = TaskFamily(120, 60, m=6, seed=2)
    tbv = tbt.with_split(30, 30)
    (gt, gv), preps = tu.grid_search_many([tbt, tbv], 40, ["train", "valid"], sigmas=[0.5, 2.0])
    assert gt.values.shape == (2, 25) and np.array_equal(gt.etas, tu.PAPER_GRID)
    # every eta is scored on the same tasks: the grid equals separate single-eta evaluations
    for i in (0, 12, 24):
        one = tu.meta_objective(tbv, tu.PAPER_GRID[i], 40, on="valid", sigma=[0.5, 2.0])
        assert np.allclose(gv.values[:, i], one.value, rtol=1e-12)
    assert np.array_equal(gv.best_eta, tu.PAPER_GRID[np.argmin(gv.values, axis=1)])
    single = tu.grid_search(tbt, 40, on="train", sigma=2.0)
    assert single.best_eta[0] == gt.best_eta[1]
    assert "GridResult(on='train'" in repr(single)
    # TbT's optimum is a large step size, TbV's shrinks with the noise
    assert np.all(gt.best_eta > gv.best_eta) and gv.best_eta[0] > gv.best_eta[1]


@pytest.mark.parametrize("optimizer", tu.OPTIMIZERS)
@pytest.mark.parametrize("parametrization", ["eta", "log"])
def test_meta_gradient_descent_optimizers(optimizer, parametrization):
    fam = TaskFamily(100, 30, n_valid=30, m=4, seed=1)
    prep = tu.prepare(fam, 40, "valid")
    lr = {("gd", "eta"): 1e-3, ("momentum", "eta"): 1e-4}.get((optimizer, parametrization))
    r = tu.meta_gradient_descent(prep, sigma=1.0, eta0=0.02, meta_steps=30, optimizer=optimizer,
                                 parametrization=parametrization, lr=lr)
    assert r.etas.shape == r.values.shape == r.grads.shape == (31,)
    assert np.all(r.etas >= 0) and np.all(np.isfinite(r.values))
    assert r.values[-1] < r.values[0]                      # it makes progress from a too-large η
    assert r.eta == r.etas[-1] and r.sigma == 1.0


def test_meta_gd_lands_within_one_grid_cell():
    fam = TaskFamily(200, 100, m=20, seed=3)
    for f, on in ((fam, "train"), (fam.with_split(50, 50), "valid")):
        prep = tu.prepare(f, 40, on)
        grid = tu.grid_search(prep, sigma=[0.5, 2.0])
        runs = tu.meta_gradient_descent(prep, sigma=[0.5, 2.0], eta0=1e-3, meta_steps=150, lr=0.3, decay="sqrt",
                                        transform="log", options={"beta2": 0.9})
        for i, r in enumerate(runs):
            assert abs(math.log10(r.eta / grid.best_eta[i])) <= 0.25


def test_meta_gd_sgd_lockstep_matches_single_runs():
    fam = TaskFamily(60, 30, n_valid=20, m=3, seed=2)
    kw = dict(on="valid", eta0=1e-3, meta_steps=5, lr=0.3, batch_size=6)
    both = tu.meta_gradient_descent(fam, 20, sigma=[0.5, 2.0], **kw)
    one = tu.meta_gradient_descent(fam, 20, sigma=2.0, **kw)
    assert np.allclose(both[1].etas, one.etas, rtol=1e-12)
    with pytest.raises(ValueError, match="transform='log' applies"):
        tu.meta_gradient_descent(fam, 20, objective="log", transform="log")


def test_evaluate_per_step_quantities():
    fam = TaskFamily(80, 40, n_test=200, m=3, seed=6, stream="test")
    t, eta = 20, 0.05
    ev = tu.evaluate(fam, eta, t, sigma=0.5)
    assert ev.train_rmse.shape == ev.test_rmse.shape == ev.dist2.shape == (3, t + 1)
    assert np.allclose(ev.dist2[:, 0], 1.0)                            # w₀ = 0, ‖w*‖ = 1
    for k in range(3):
        p = fam.task(k, 0.5)
        u = ms.unroll(p, eta, t)
        assert np.allclose(ev.train_rmse[k], np.sqrt(2 * u.losses), rtol=1e-10)
        assert np.isclose(ev.dist2[k, -1], np.sum((u.w_final - p.w_star) ** 2), rtol=1e-10)
        r = p.X_test @ u.w_final - p.y_test
        assert np.isclose(ev.test_rmse[k, -1], np.sqrt(np.mean(r * r)), rtol=1e-10)
    assert np.allclose(ev.test_rmse_population, np.sqrt(ev.dist2 + 0.25))
    f = ev.final("dist2")
    assert f["min"] <= f["mean"] <= f["max"]
    # a diverging step size is frozen at 40σ·u
    big = tu.evaluate(fam, 5.0, t, sigma=0.5)
    assert np.all(big.truncated_at > 0)
    for k in range(3):
        td = fam.data(k)
        assert np.isclose(big.dist2[k, -1], np.sum((20.0 * td.u - td.w_star) ** 2))
    # SGD and the normal-equation form (n > d) agree with the engine too
    sgd = tu.evaluate(fam, 0.01, t, sigma=0.5, batch_size=8)
    p = fam.task(0, 0.5)
    u = ms.unroll(p, 0.01, t, batch_size=8, sgd_seed=p.sgd_seed)
    assert np.allclose(sgd.train_rmse[0], np.sqrt(2 * u.losses), rtol=1e-10)
    tall = TaskFamily(20, 60, n_test=30, m=2, seed=1, stream="test")
    evt = tu.evaluate(tall, 0.1, t, sigma=1.0)
    u = ms.unroll(tall.task(1, 1.0), 0.1, t)
    assert np.allclose(evt.train_rmse[1], np.sqrt(2 * u.losses), rtol=1e-8)


def test_blas_threads_restores():
    with tu.blas_threads(1):
        pass
    with tu.blas_threads(1):
        with tu.blas_threads(1):
            x = np.ones((50, 50)) @ np.ones((50, 50))
    assert x[0, 0] == 50


# ------------------------------------------------------------------------------------------------
# tune_step_size on user data
# ------------------------------------------------------------------------------------------------

def test_tune_step_size_tbv_beats_tbt_on_few_noisy_samples():
    fam = TaskFamily(300, 150, n_test=2000, sigma=2.0, m=1, seed=8)
    td = fam.data(0)
    X, y = td.X, td.y(2.0)
    tbv = tu.tune_step_size(X, y, method="tbv", steps=40, splits=3, seed=1)
    tbt = tu.tune_step_size(X, y, method="tbt", steps=40)
    assert tbv.n_train == 75 and tbv.n_valid == 75 and tbv.splits == 3
    assert tbt.n_train == 150 and tbt.valid_rmse is None
    assert tbv.eta < tbt.eta
    assert tbt.train_rmse[-1] < tbv.train_rmse[-1]
    Xt, yt = td.X_test, td.y_test(2.0)
    rmse = lambda w: math.sqrt(np.mean((Xt @ w - yt) ** 2))  # noqa: E731
    assert rmse(tbv.w) < rmse(tbt.w)
    assert tbv.objective_value <= np.min(tbv.grid_values) + 1e-15
    assert "train-by-validation" in tbv.summary() and "TuningReport(method='tbv'" in repr(tbv)
    again = tu.tune_step_size(X, y, method="tbv", steps=40, splits=3, seed=1)
    assert again.eta == tbv.eta
    sgd = tu.tune_step_size(X, y, method="tbv", steps=30, batch_size=10, refine=False)
    assert sgd.grid_eta == sgd.eta and sgd.train_rmse.shape == (31,)


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"method": "xyz"}, ValueError, "unknown method"),
    ({"split": 1.0}, ValueError, "split must be in"),
    ({"steps": 0}, ValueError, "steps must be at least 1"),
    ({"batch_size": 1000}, ValueError, "exceeds"),
    ({"grid": [-1.0]}, ValueError, "non-negative"),
])
def test_tune_step_size_rejects_bad_input(kwargs, exc, msg):
    rng = np.random.default_rng(0)
    with pytest.raises(exc, match=msg):
        tu.tune_step_size(rng.standard_normal((20, 5)), rng.standard_normal(20), **kwargs)


def test_bad_arguments():
    fam = TaskFamily(20, 10, m=2)
    with pytest.raises(ValueError, match="n_valid > 0"):
        tu.meta_objective(fam, 0.1, 5, on="valid")
    with pytest.raises(ValueError, match="unknown on"):
        tu.meta_objective(fam, 0.1, 5, on="test")
    with pytest.raises(TypeError, match="TaskFamily"):
        tu.meta_objective(object(), 0.1, 5)
    with pytest.raises(ValueError, match="exceeds"):
        tu.meta_objective(fam, 0.1, 5, batch_size=11)
    with pytest.raises(ValueError, match="unknown mode"):
        tu.meta_objective(fam, 0.1, 5, mode="magic")
    with pytest.raises(ValueError, match="share d, seed"):
        tu.prepare_many([fam, TaskFamily(20, 10, m=2, seed=1)], 5, ["train", "train"])
    with pytest.raises(ValueError, match="sigma"):
        tu.meta_objective(fam, 0.1, 5, sigma=-1.0)


# ------------------------------------------------------------------------------------------------
# statistical claims (paper §4, Theorems 5-6): decided with margins that fail with probability
# < 1e-6 when the claim holds, and that fail if TbT and TbV were swapped
# ------------------------------------------------------------------------------------------------

T_CRIT = 6.5   # one-sided paired t with 39 degrees of freedom: P(T > 6.5) < 1e-7


def _paired_t(a, b):
    dlt = np.asarray(a) - np.asarray(b)
    return float(np.mean(dlt) / (np.std(dlt, ddof=1) / math.sqrt(dlt.size)))


@pytest.fixture(scope="module")
def tbt_tbv_small_n():
    """d = 200, TbT on 100 samples vs TbV on 50 + 50, σ ∈ {1, 2}, 40 tasks, 40 test tasks."""
    cfg = {"d": 200, "n": 100, "t": 40, "m": 40, "test_tasks": 40, "n_test": 400, "sigmas": (1.0, 2.0),
           "meta_steps": 0, "eta0": 1e-3, "meta_lr": 0.3, "meta_beta2": 0.9}
    return e3.tune_and_evaluate(cfg, seed=123, progress=False)


def test_tbv_generalizes_better_than_tbt_with_few_noisy_samples(tbt_tbv_small_n):
    res = tbt_tbv_small_n
    for s in (1.0, 2.0):
        a, b = res["evals"][("tbt", s)], res["evals"][("tbv", s)]
        assert _paired_t(a.test_rmse[:, -1], b.test_rmse[:, -1]) > T_CRIT        # TbT worse on test data
        assert _paired_t(a.dist2[:, -1], b.dist2[:, -1]) > T_CRIT                 # and farther from w*
        assert _paired_t(b.train_rmse[:, -1], a.train_rmse[:, -1]) > T_CRIT       # TbT fits the training rows
        # TbV beats the zero predictor (Theorem 5): ‖w − w*‖² < 1 = ‖0 − w*‖²
        assert _paired_t(np.ones(40), b.dist2[:, -1]) > T_CRIT
    assert res["grid"]["tbt"].best_eta[0] > 10 * res["grid"]["tbv"].best_eta[0]


def test_tbt_matches_least_squares_with_many_samples():
    """Theorem 6's regime (n = 8d): TbT's ‖w − w*‖² is the OLS error σ²d/(n − d − 1) to within 20%."""
    d, n = 200, 1600
    fam = TaskFamily(d, n, m=10, seed=77)
    g = tu.grid_search(fam, 40, on="train", sigma=1.0)
    ev = tu.evaluate(fam.fresh(40), float(g.best_eta[0]), 40, sigma=1.0)
    x = ev.dist2[:, -1]
    ols = d / (n - d - 1)
    se = np.std(x, ddof=1) / math.sqrt(x.size)
    assert abs(np.mean(x) - ols) < 0.2 * ols - T_CRIT * se


# ------------------------------------------------------------------------------------------------
# quick experiments (the `metastep reproduce e3|e4|e3-sgd --quick` runs)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reproduce_lsq"))
    return out, {m.NAME: m.run(out, quick=True, seed=0, progress=False) for m in (e3, e4, e3_sgd)}


@pytest.mark.parametrize("name,files", [
    ("e3", ["e3_rmse_vs_sigma.png", "e3_curves.png", "e3_meta_objective.png", "e3_grid.csv", "e3_curves.csv",
            "e3_results.csv", "e3_meta_gd.csv"]),
    ("e4", ["e4_rmse_vs_n.png", "e4_curves.png", "e4_results.csv", "e4_grid.csv", "e4_curves.csv", "e4_meta_gd.csv"]),
    ("e3-sgd", ["e3_sgd_rmse_vs_sigma.png", "e3_sgd_curves.png", "e3_sgd_meta_objective.png", "e3_sgd_grid.csv",
                "e3_sgd_results.csv"]),
])
def test_quick_experiment(quick, name, files):
    out, runs = quick
    d = os.path.join(out, name)
    with open(os.path.join(d, "summary.json")) as fh:
        s = json.load(fh)
    assert s["experiment"] == name and isinstance(s["seconds"], float) and s["quick"] is True
    for c in s["checks"]:
        assert set(c) == {"name", "passed", "measured", "expected"}
    failed = [c for c in s["checks"] if not c["passed"]]
    assert not failed, json.dumps(failed, indent=1)[:3000]
    assert s["passed"] is True and runs[name]["passed"] is True
    assert s["seconds"] > 0  # run time is recorded (speed is a benchmark matter, not a test)
    for f in files:
        p = os.path.join(d, f)
        assert os.path.exists(p), p
        if f.endswith(".png"):
            assert os.path.getsize(p) > 10_000
            with open(p, "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    names = " | ".join(c["name"] for c in s["checks"])
    assert "meta-GD" in names


def test_quick_e3_checks_cover_the_issue(quick):
    s = quick[1]["e3"]
    names = " | ".join(c["name"] for c in s["checks"])
    for part in ("train RMSE at step t < 0.1*sigma", "TbT test RMSE > TbV test RMSE", "increases with sigma",
                 "eta*_TbV decreases", "below TbT's for sigma >= 1", "< 1 (better than the zero predictor",
                 "metastep.metagrad forward mode"):
        assert part in names, part
    evals = s["results"]["evals"]
    assert evals[("tbt", 4.0)].final("test_rmse")["mean"] > evals[("tbv", 4.0)].final("test_rmse")["mean"]
    assert evals[("tbt", 4.0)].final("train_rmse")["mean"] < 0.4
