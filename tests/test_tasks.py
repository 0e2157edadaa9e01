"""Seeded task families (SPEC §1.2, §1.3): determinism, common random numbers, the generator."""
import math
import subprocess
import sys

import numpy as np
import pytest

import metastep as ms
from metastep.tasks import TRUNCATION_FACTOR, TaskFamily, paper_family, stream_code, truncation_radius


def test_same_seed_same_tasks_different_seed_different_tasks():
    a = TaskFamily(50, 20, n_valid=10, n_test=7, m=3, seed=5)
    b = TaskFamily(50, 20, n_valid=10, n_test=7, m=3, seed=5)
    assert a.fingerprint() == b.fingerprint()
    for k in range(3):
        ta, tb = a.data(k), b.data(k)
        for name in ("w_star", "u", "X", "y_clean", "xi", "X_test", "y_test_clean", "xi_test"):
            assert np.array_equal(getattr(ta, name), getattr(tb, name)), name
        assert ta.sgd_seed == tb.sgd_seed
    assert TaskFamily(50, 20, n_valid=10, n_test=7, m=3, seed=6).fingerprint() != a.fingerprint()
    assert a.fresh(3).fingerprint() != a.fingerprint()                  # the test stream is independent
    assert TaskFamily(50, 20, n_valid=10, n_test=7, m=3, seed=5, stream=7).fingerprint() != a.fingerprint()


def test_bit_identical_in_a_fresh_process():
    fam = TaskFamily(40, 30, n_valid=5, n_test=3, m=2, seed=11, stream="test")
    code = ("from metastep.tasks import TaskFamily; "
            "print(TaskFamily(40, 30, n_valid=5, n_test=3, m=2, seed=11, stream='test').fingerprint())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fam.fingerprint()


def test_rows_come_from_numpy_default_rng_seedsequence():
    # the documented construction: rows of task k are default_rng(SeedSequence(seed, spawn_key=(stream, k, 2)))
    fam = TaskFamily(30, 8, m=4, seed=3, stream="train")
    X = fam.data(2).X
    ref = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(0, 2, 2))).standard_normal((8, 30))
    assert np.array_equal(X, ref)
    assert stream_code("train") == 0 and stream_code("test") == 1 and stream_code(9) == 9
    assert stream_code("other") == stream_code("other") >= 2


def test_prefix_consistency_common_random_numbers():
    """TbT on 500 rows, TbV on 250 + 250 and larger sample sizes are the same data."""
    d = 60
    full = TaskFamily(d, 80, m=3, seed=2)
    split = TaskFamily(d, 40, n_valid=40, m=3, seed=2)
    big = TaskFamily(d, 300, n_valid=100, m=9, seed=2)          # m does not change task k either
    for k in range(3):
        a, b, c = full.data(k), split.data(k), big.data(k)
        assert np.array_equal(a.X, b.X) and np.array_equal(a.X, c.X[:80])
        assert np.array_equal(a.xi, b.xi) and np.array_equal(a.xi, c.xi[:80])
        assert np.array_equal(a.y_clean, c.y_clean[:80])
        assert np.array_equal(a.w_star, c.w_star) and np.array_equal(a.u, c.u)
    t_full, t_split = full.task(1, 0.7), split.task(1, 0.7)
    assert np.array_equal(t_full.X[:40], t_split.X) and np.array_equal(t_full.X[40:], t_split.X_valid)
    assert np.array_equal(t_full.y[40:], t_split.y_valid)


def test_sigma_only_scales_the_noise():
    fam = TaskFamily(25, 15, n_valid=5, n_test=4, m=2, seed=1)
    td = fam.data(1)
    for s in (0.0, 0.25, 3.0):
        t = fam.task(1, s)
        assert np.array_equal(t.y, (td.y_clean + s * td.xi)[:15])
        assert np.array_equal(t.y_valid, (td.y_clean + s * td.xi)[15:])
        assert np.array_equal(t.y_test, td.y_test_clean + s * td.xi_test)
        assert t.sigma == s and t.radius == truncation_radius(s)
    assert fam.with_sigma(2.0).fingerprint() == fam.fingerprint()


def test_task_is_a_least_squares_problem_with_attachments():
    fam = TaskFamily(30, 12, n_valid=6, n_test=5, sigma=0.5, m=4, seed=0)
    t = fam.task(3)
    assert isinstance(t, ms.LeastSquares)
    assert (t.n, t.d, t.n_valid) == (12, 30, 6)
    assert t.X_test.shape == (5, 30) and t.y_test.shape == (5,)
    assert abs(np.linalg.norm(t.w_star) - 1) < 1e-15 and abs(np.linalg.norm(t.u) - 1) < 1e-15
    assert t.radius == TRUNCATION_FACTOR * 0.5 == fam.radius
    assert t.index == 3 and isinstance(t.sgd_seed, int) and 0 <= t.sgd_seed < 2 ** 62
    assert np.all(t.w0 == 0)
    assert not t.X.flags.writeable and not fam.data(0).xi.flags.writeable
    assert len(fam) == 4 and len(list(fam.tasks())) == 4
    assert TaskFamily(30, 12, m=1, truncate=False).radius == math.inf
    assert truncation_radius(0.0) == math.inf


def test_clean_labels_are_accumulated_exactly():
    """X w* in long double without BLAS, rounded once: within an ulp or two of the exact dot product."""
    fam = TaskFamily(500, 20, m=1, seed=4)
    td = fam.data(0)
    for i in range(20):
        exact = math.fsum(float(a) * float(b) for a, b in zip(td.X[i], td.w_star))  # products are inexact ...
        # ... so compare with a bound: 80-bit accumulation of 500 products, then one rounding
        bound = 2 * np.spacing(abs(td.y_clean[i])) + 600 * 2.0 ** -53 * float(np.sum(np.abs(td.X[i] * td.w_star)))
        assert abs(td.y_clean[i] - exact) <= bound


def test_generator_statistics():
    """Rows N(0, I), w* on the unit sphere, noise N(0, σ²): moments within 8 standard errors."""
    fam = TaskFamily(40, 500, m=20, seed=9)
    z, xi, wdot = [], [], []
    for k in range(20):
        td = fam.data(k)
        z.append(td.y_clean)                  # ⟨w*, x⟩ ~ N(0, 1)
        xi.append(td.xi)
        wdot.append(td.w_star @ fam.data((k + 1) % 20).w_star)
    z, xi = np.concatenate(z), np.concatenate(xi)
    n = z.size
    for v in (z, xi):
        assert abs(np.mean(v)) < 8 / math.sqrt(n)
        assert abs(np.var(v) - 1) < 8 * math.sqrt(2 / n)
    assert abs(np.mean(z * xi)) < 8 / math.sqrt(n)            # noise independent of the signal
    assert np.all(np.abs(wdot) < 0.9)                          # independent directions per task


def test_paper_family_and_variants():
    tbt, tbv = paper_family("tbt", d=50, n_total=30, m=2), paper_family("tbv", d=50, n_total=30, m=2)
    assert (tbt.n, tbt.n_valid, tbv.n, tbv.n_valid) == (30, 0, 15, 15)
    assert np.array_equal(tbt.data(1).X, tbv.data(1).X)
    assert tbt.with_split(15, 15) == tbv
    f = tbt.fresh(5, n_test=9)
    assert (f.m, f.stream, f.n_test) == (5, "test", 9)
    with pytest.raises(ValueError, match="unknown method"):
        paper_family("xyz")


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"d": 0, "n": 5}, ValueError, "d must be at least 1"),
    ({"d": 5, "n": 5, "sigma": -1.0}, ValueError, "sigma"),
    ({"d": 5, "n": 5, "m": 0}, ValueError, "m must be at least 1"),
    ({"d": 5, "n": 5, "seed": -1}, ValueError, "seed"),
    ({"d": 5, "n": 5, "stream": 1.5}, TypeError, "stream"),
    ({"d": 5, "n": 5, "truncate": 1}, TypeError, "truncate"),
    ({"d": 5.0, "n": 5}, TypeError, "d must be an integer"),
])
def test_bad_family_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        TaskFamily(**kwargs)


def test_task_index_checked():
    fam = TaskFamily(5, 5, m=2)
    with pytest.raises(IndexError, match="out of range"):
        fam.data(2)
    with pytest.raises(ValueError, match="k must be at least 0"):
        fam.task(-1)
