"""Learned optimizers (SPEC §7, issue 5): inner network derivatives, the optimizer update,
meta-gradient estimators against finite differences, bias/variance report, meta-training,
data loaders, save/load, bad input and the quick E5–E7 experiments."""
import gzip
import json
import os
import struct

import numpy as np
import pytest

from metastep import data, learned

TINY = (5, 6, 4, 3)
BETAS = np.array([0.5, 0.9, 0.99, 0.999, 0.9999])
TAUS = np.array([3, 10, 30, 100, 300, 1000, 3000, 10000, 300000], dtype=float)


def _tiny_data(n, seed, classes=3, features=5):
    rng = np.random.default_rng(seed)
    return data.Dataset(rng.standard_normal((n, features)), rng.integers(0, classes, n).astype(np.int64), classes)


def _fd(f, x, h):
    out = np.empty(x.size)
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h
        out[k] = (f(x + e) - f(x - e)) / (2 * h)
    return out


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------- inner network
def test_network_gradient_and_hvp_match_finite_differences():
    d = _tiny_data(7, 0)
    P = learned.num_params(TINY)
    assert P == 5 * 6 + 6 + 6 * 4 + 4 + 4 * 3 + 3
    th = learned.init_network(TINY, 3) + 0.1 * np.random.default_rng(1).standard_normal(P)
    loss, g = learned.loss_grad(th, d, TINY)
    fd = _fd(lambda t: learned.loss_grad(t, d, TINY)[0], th, 1e-6)
    assert _rel(g, fd) < 1e-7
    v = np.random.default_rng(2).standard_normal(P)
    hv = learned.hessian_vector_product(th, v, d, TINY)
    fd_hv = (learned.loss_grad(th + 1e-6 * v, d, TINY)[1] - learned.loss_grad(th - 1e-6 * v, d, TINY)[1]) / 2e-6
    assert _rel(hv, fd_hv) < 1e-7
    # the loss is the mean cross-entropy, computed independently
    W1, b1 = th[:30].reshape(5, 6), th[30:36]
    W2, b2 = th[36:60].reshape(6, 4), th[60:64]
    W3, b3 = th[64:76].reshape(4, 3), th[76:79]
    z = np.maximum(np.maximum(d.X @ W1 + b1, 0) @ W2 + b2, 0) @ W3 + b3
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    assert loss == pytest.approx(np.mean(lse - z[np.arange(7), d.y]), rel=1e-13)


def test_network_float32_close_to_float64():
    d = _tiny_data(9, 4)
    th = learned.init_network(TINY, 5)
    l64, g64 = learned.loss_grad(th, d, TINY, dtype="float64")
    l32, g32 = learned.loss_grad(th, d, TINY, dtype="float32")
    assert abs(l32 - l64) < 1e-5 * abs(l64) and _rel(g32, g64) < 1e-4


# ---------------------------------------------------------------- the optimizer update (SPEC §7)
def _numpy_step(phi, theta, g, M, V, s, sizes):
    Mp = M * BETAS + (1 - BETAS) * g[:, None]
    Vp = V * BETAS + (1 - BETAS) * g[:, None] ** 2
    rs = 1 / np.sqrt(Vp + 1e-6)
    R = np.column_stack([g, Mp * rs, theta, Mp, Vp, rs])
    F = np.empty_like(R)
    o = 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        for n in (a * b, b):
            blk = R[o:o + n]
            F[o:o + n] = blk / np.sqrt(1e-5 + np.mean(blk ** 2, axis=0))
            o += n
    tf = np.tanh(s / TAUS - 1)
    X = np.column_stack([F, np.tile(tf, (R.shape[0], 1))])
    W1, b1, W2, b2 = phi[:992].reshape(31, 32), phi[992:1024], phi[1024:1088].reshape(32, 2), phi[1088:]
    out = np.maximum(X @ W1 + b1, 0) @ W2 + b2
    u = 0.001 * out[:, 0] * np.exp(0.001 * out[:, 1])
    return theta - u, Mp, Vp, F, tf, out


def test_optimizer_step_matches_an_independent_numpy_implementation():
    rng = np.random.default_rng(0)
    P = learned.num_params(TINY)
    phi = learned.init_optimizer(1) + 0.3 * rng.standard_normal(learned.NUM_OPT_PARAMS)
    theta, g = rng.standard_normal(P), rng.standard_normal(P)
    M, V = 0.1 * rng.standard_normal((P, 5)), rng.random((P, 5))
    r = learned.optimizer_step(phi, theta, g, M, V, step=37, sizes=TINY)
    th, Mp, Vp, F, tf, out = _numpy_step(phi, theta, g, M, V, 37, TINY)
    assert learned.NUM_OPT_PARAMS == 1090 and r["features"].shape == (P, 22)
    for a, b in ((r["theta"], th), (r["M"], Mp), (r["V"], Vp), (r["features"], F), (r["time_features"], tf),
                 (r["outputs"], out)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- meta-gradients vs finite differences
@pytest.fixture(scope="module")
def tiny_problem():
    rng = np.random.default_rng(11)
    train, meta = _tiny_data(12, 1), _tiny_data(8, 2)
    phi = learned.init_optimizer(2) + 0.5 * rng.standard_normal(learned.NUM_OPT_PARAMS)
    kw = dict(sizes=TINY, length=6, batch_size=4, meta_batch=5, seed=3, init_seed=4, dtype="float64")
    return train, meta, phi, kw


def _meta_loss(phi, train, meta, kw, **extra):
    return learned.meta_gradient(phi, train, meta, forward_only=True, **kw, **extra).meta_loss


def test_second_order_meta_gradient_matches_finite_differences(tiny_problem):
    train, meta, phi, kw = tiny_problem
    r = learned.meta_gradient(phi, train, meta, estimator="second", **kw)
    assert not r.nonfinite["failed"] and r.grad.shape == (1090,)
    fd = _fd(lambda p: _meta_loss(p, train, meta, kw), phi, 1e-5)
    assert _rel(r.grad, fd) <= 1e-4
    assert np.linalg.norm(r.grad - fd) / np.linalg.norm(fd) <= 1e-6
    # same meta-loss as the forward-only run
    assert r.meta_loss == _meta_loss(phi, train, meta, kw)


def test_first_order_is_the_exact_gradient_of_the_frozen_meta_loss(tiny_problem):
    train, meta, phi, kw = tiny_problem
    G = learned.meta_gradient(phi, train, meta, forward_only=True, return_gradients=True, **kw).extra["gradients"]
    r1 = learned.meta_gradient(phi, train, meta, estimator="first", **kw)
    rf = learned.meta_gradient(phi, train, meta, estimator="first", frozen_gradients=G, **kw)
    np.testing.assert_array_equal(r1.grad, rf.grad)
    fd = _fd(lambda p: _meta_loss(p, train, meta, kw, frozen_gradients=G), phi, 1e-5)
    assert _rel(r1.grad, fd) <= 1e-4
    # ... and it differs from the true gradient (the inner gradients do depend on φ)
    r2 = learned.meta_gradient(phi, train, meta, estimator="second", **kw)
    assert np.linalg.norm(r1.grad - r2.grad) / np.linalg.norm(r2.grad) > 1e-4


def test_es_directional_derivatives_match_the_exact_gradient(tiny_problem):
    train, meta, phi, kw = tiny_problem
    r2 = learned.meta_gradient(phi, train, meta, estimator="second", **kw)
    re = learned.meta_gradient(phi, train, meta, estimator="es", es_pairs=6, es_sigma=1e-7, es_seed=9, **kw)
    dirs, dd = re.extra["es_dirs"], re.extra["es_dirderiv"]
    assert dirs.shape == (6, 1090)
    exact = dirs @ r2.grad
    assert np.max(np.abs(dd - exact) / np.abs(exact)) <= 1e-4
    np.testing.assert_allclose(re.grad, (dd[:, None] * dirs).mean(axis=0), rtol=1e-12, atol=1e-15)
    # the directions are standard normal draws from the seed
    again = learned.meta_gradient(phi, train, meta, estimator="es", es_pairs=6, es_sigma=1e-7, es_seed=9, **kw)
    np.testing.assert_array_equal(again.grad, re.grad)
    assert abs(dirs.mean()) < 0.1 and abs(dirs.std() - 1) < 0.1


def test_meta_gradient_state_continues_the_unroll(tiny_problem):
    train, meta, phi, kw = tiny_problem
    kw12 = dict(kw, length=12)
    full = learned.meta_gradient(phi, train, meta, forward_only=True, **kw12)
    assert full.state["step"] == 12 and full.train_losses.size == 12
    # float32 and float64 agree on the meta-gradient
    r64 = learned.meta_gradient(phi, train, meta, estimator="second", **kw)
    r32 = learned.meta_gradient(phi, train, meta, estimator="second", **dict(kw, dtype="float32"))
    assert _rel(r32.grad, r64.grad) < 1e-3


def test_bias_variance_report():
    train, meta = _tiny_data(40, 5), _tiny_data(20, 6)
    rep = learned.estimator_bias_variance(train, meta, sizes=TINY, length=8, samples=4, es_pairs=8, batch_size=4,
                                          warmup=5)
    S = rep["samples"]
    assert S["second"].shape == S["first"].shape == S["es"].shape == (4, 1090)
    ref = S["second"].mean(0)
    for k in ("first", "es"):
        m = S[k].mean(0)
        assert rep[k]["bias"] == pytest.approx(np.linalg.norm(m - ref) / np.linalg.norm(ref), rel=1e-12)
        var = np.mean([np.sum((g - m) ** 2) for g in S[k]]) / np.linalg.norm(ref) ** 2
        assert rep[k]["variance"] == pytest.approx(var, rel=1e-12)
    assert rep["second"]["bias"] == 0.0 and rep["second"]["paired_error"] == 0.0
    assert rep["first"]["bias"] > 0 and rep["first"]["paired_error"] > 0
    # 8 random directions in 1090 dimensions: ES is far noisier than back-propagation
    assert rep["es"]["variance"] > 10 * rep["first"]["variance"]


# ---------------------------------------------------------------- meta-training and evaluation
@pytest.fixture(scope="module")
def digits_split():
    d = data.load_digits()
    return data.split(d, (600, 300), seed=0)


def test_meta_train_is_deterministic_and_reports(digits_split, tmp_path):
    pool, test = digits_split
    kw = dict(method="tbv", n_train=100, n_valid=100, meta_steps=4, len_base=10, len_mean=5, trunc_base=2,
              trunc_mean=1, progress=False, seed=3)
    a = learned.meta_train(pool, **kw)
    b = learned.meta_train(pool, **kw)
    np.testing.assert_array_equal(a.phi, b.phi)
    assert not np.array_equal(a.phi, learned.init_optimizer(3))
    assert a.history["meta_loss"].size == 4 and a.nonfinite_total == 0 and np.all(a.history["finite"])
    assert a.config["method"] == "tbv" and a.config["lr"] == 1e-2
    # save / load / apply to a new task
    p = tmp_path / "opt.npz"
    a.save(str(p))
    c = learned.LearnedOptimizer.load(str(p))
    np.testing.assert_array_equal(c.phi, a.phi)
    assert c.method == "tbv" and c.config == json.loads(json.dumps(a.config))
    np.testing.assert_array_equal(c.history["meta_loss"], a.history["meta_loss"])
    task = pool.subset(np.arange(300, 500))
    k1 = learned.train_curve(a, task, test, steps=60, record_every=20)
    k2 = learned.train_curve(c, task, test, steps=60, record_every=20)
    np.testing.assert_array_equal(k1.test_acc, k2.test_acc)
    assert list(k1.steps) == [0, 20, 40, 60] and k1.train_loss[-1] < k1.train_loss[0]


def test_clipping_is_counted_not_hidden(digits_split):
    pool, _ = digits_split
    # a Glorot output layer (with a zero one the first meta-gradient is 0 on W1 and b1)
    kw = dict(method="tbt", n_train=100, meta_steps=3, len_base=5, len_mean=0, trunc_base=5, trunc_mean=0,
              progress=False, seed=1, init_output_scale=1.0)
    free = learned.meta_train(pool, **kw)
    assert free.clipped_total == 0
    tight = learned.meta_train(pool, clip=1e-12, **kw)
    # every one of the 1090 meta-gradient values exceeds 1e-12 in magnitude (or is exactly 0)
    assert tight.clipped_total == int(np.sum(tight.history["clipped"])) > 3 * 1000
    assert tight.history["clipped"].tolist() == [int(c) for c in tight.history["clipped"]]


def test_nonfinite_meta_gradients_are_reported_and_skipped():
    pool = data.Dataset(np.full((50, 5), 1e300), np.arange(50, dtype=np.int64) % 3, 3)
    phi0 = learned.init_optimizer(0)
    r = learned.meta_train(pool, method="tbt", n_train=20, meta_steps=3, sizes=TINY, len_base=4, len_mean=0,
                           progress=False, phi0=phi0, dtype="float64")
    assert r.nonfinite_total == 3 and not np.any(r.history["finite"])
    # g² overflows the second moments at the first step, so the first non-finite value is the update
    assert r.nonfinite_events[0] == {"meta_step": 1, "quantity": "update", "inner_step": 0}
    np.testing.assert_array_equal(r.phi, phi0)  # skipped, never applied as zeros
    big = _tiny_data(20, 1)
    big = data.Dataset(big.X * 1e150, big.y, 3)
    c = learned.train_curve("sgd", big, _tiny_data(10, 2), sizes=TINY, steps=50, lr=1e200, record_every=5,
                            dtype="float64")
    assert c.nonfinite == {"failed": True, "quantity": "update", "step": 0}
    assert c.steps.tolist() == [0]  # the run stops there


def test_baselines_learn(digits_split):
    pool, test = digits_split
    task = pool.subset(np.arange(300))
    sgd = learned.train_curve("sgd", task, test, steps=300, lr=0.3, record_every=100)
    adam = learned.train_curve("adam", task, test, steps=300, lr=1e-3, record_every=100)
    assert sgd.test_acc[-1] > 0.8 and adam.test_acc[-1] > 0.8
    tuned = learned.tune_sgd(task, pool.subset(np.arange(300, 500)), steps=100, lrs=[1e-4, 0.3])
    assert tuned["lr"] == 0.3 and tuned["valid_loss"][0] > tuned["valid_loss"][1]


# ---------------------------------------------------------------- data
def _write_idx(path, arr, code, gz=False):
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.astype({0x08: ">u1", 0x0C: ">i4"}[code]).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as fh:
        fh.write(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_loader(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 4, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs, 0x08, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, 0x08, gz)
    d = data.load_mnist(str(tmp_path), "train")
    assert d.X.shape == (7, 12) and d.X.dtype == np.float64
    np.testing.assert_array_equal(d.X, imgs.reshape(7, 12) / 255.0)
    np.testing.assert_array_equal(d.y, labels)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / f"train-images-idx3-ubyte{sfx}")), imgs)
    with pytest.raises(FileNotFoundError, match="t10k"):
        data.load_mnist(str(tmp_path), "test")


def test_mnist_npz_loader_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    xt, yt = rng.integers(0, 256, (5, 2, 2)), rng.integers(0, 10, 5)
    np.savez(tmp_path / "m.npz", x_train=xt, y_train=yt, x_test=xt[:2], y_test=yt[:2])
    d = data.load_mnist(str(tmp_path / "m.npz"), "test")
    np.testing.assert_array_equal(d.X, xt[:2].reshape(2, 4) / 255.0)
    np.testing.assert_array_equal(d.y, yt[:2])
    np.savez(tmp_path / "bad.npz", x=xt)
    with pytest.raises(KeyError, match="x_train"):
        data.load_mnist(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        data.load_mnist(str(tmp_path / "missing"))
    (tmp_path / "junk").write_bytes(b"\x01\x02\x08\x01\x00")
    with pytest.raises(ValueError, match="IDX"):
        data.read_idx(str(tmp_path / "junk"))
    _write_idx(tmp_path / "short", np.zeros(10, np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(str(tmp_path / "short"))


def test_digits_split_and_label_noise():
    d = data.load_digits()
    assert d.X.shape == (1797, 64) and d.X.min() == 0.0 and d.X.max() == 1.0 and set(d.y) == set(range(10))
    a, b = data.split(d, (100, 50), seed=2)
    rows = {tuple(r) for r in a.X} & {tuple(r) for r in b.X}
    assert a.n == 100 and b.n == 50 and len(rows) <= 5  # disjoint rows (a few digits images repeat)
    noisy, mask = data.add_label_noise(a, 0.2, seed=3)
    assert mask.sum() == 20
    np.testing.assert_array_equal(noisy.y[~mask], a.y[~mask])
    assert np.mean(noisy.y[mask] != a.y[mask]) > 0.5
    with pytest.raises(ValueError, match="exceeds|need"):
        data.split(d, (2000,), seed=0)
    with pytest.raises(ValueError, match="fraction"):
        data.add_label_noise(a, 1.5, seed=0)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(digits_split):
    pool, test = digits_split
    d = _tiny_data(6, 0)
    th = learned.init_network(TINY)
    with pytest.raises(ValueError, match="positive"):
        learned.num_params((5, -1, 3))
    with pytest.raises(TypeError, match="integers"):
        learned.num_params((5, 2.5, 3))
    with pytest.raises(ValueError, match="2 classes"):
        learned.num_params((5, 1))
    with pytest.raises(ValueError, match="shape"):
        learned.loss_grad(th[:-1], d, TINY)
    bad = th.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        learned.loss_grad(bad, d, TINY)
    with pytest.raises(TypeError, match="numeric"):
        learned.loss_grad(th.astype(str), d, TINY)
    with pytest.raises(ValueError, match="features"):
        learned.loss_grad(learned.init_network((4, 3)), d, (4, 3))
    with pytest.raises(ValueError, match="float64 or float32"):
        learned.loss_grad(th, d, TINY, dtype="longdouble")
    with pytest.raises(TypeError, match="float64"):
        data.Dataset(np.zeros((3, 2), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="NaN"):
        data.Dataset(np.array([[0.0, np.inf]]), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="labels"):
        data.Dataset(np.zeros((2, 2)), np.array([0, 10]))
    with pytest.raises(TypeError, match="Dataset"):
        learned.loss_grad(th, (d.X, d.y), TINY)
    phi = learned.init_optimizer()
    with pytest.raises(ValueError, match="estimator"):
        learned.meta_gradient(phi, d, d, length=3, sizes=TINY, estimator="third")
    with pytest.raises(ValueError, match="at least 1"):
        learned.meta_gradient(phi, d, d, length=0, sizes=TINY)
    with pytest.raises(ValueError, match="shape"):
        learned.meta_gradient(phi[:10], d, d, length=3, sizes=TINY)
    with pytest.raises(ValueError, match="es_sigma"):
        learned.meta_gradient(phi, d, d, length=3, sizes=TINY, estimator="es", es_sigma=-1.0)
    with pytest.raises(ValueError, match="n_valid"):
        learned.meta_train(pool, method="tbv", n_valid=0, progress=False)
    with pytest.raises(ValueError, match="exceeds"):
        learned.meta_train(pool, method="tbt", n_train=10_000, progress=False)
    with pytest.raises(ValueError, match="method"):
        learned.meta_train(pool, method="tbx", progress=False)
    with pytest.raises(TypeError, match="integer"):
        learned.meta_train(pool, meta_steps=2.5, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        learned.train_curve("rmsprop", pool, test)
    with pytest.raises(ValueError, match="lr"):
        learned.train_curve("sgd", pool, test, lr=-1.0)
    with pytest.raises(ValueError, match="steps"):
        learned.train_curve("sgd", pool, test, steps=-3)



def test_loading_a_foreign_npz_fails(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, something=np.zeros(3))
    with pytest.raises(ValueError, match="phi"):
        learned.LearnedOptimizer.load(str(p))
    np.savez(p, phi=np.zeros(1090), meta=np.array(json.dumps({"format": "other"})))
    with pytest.raises(ValueError, match="format"):
        learned.LearnedOptimizer.load(str(p))


# ---------------------------------------------------------------- quick E5–E7
@pytest.fixture(scope="module")
def quick_learned_runs(tmp_path_factory):
    from metastep import experiments
    out = str(tmp_path_factory.mktemp("reproduce_learned"))
    return out, {name: experiments.run(name, out, quick=True, seed=0, progress=False) for name in ("e5", "e6", "e7")}


@pytest.mark.parametrize("name", ["e5", "e6", "e7"])
def test_quick_learned_experiment(quick_learned_runs, name):
    out, runs = quick_learned_runs
    s = runs[name]
    d = os.path.join(out, name)
    with open(os.path.join(d, "summary.json")) as fh:
        on_disk = json.load(fh)
    assert on_disk["experiment"] == name and on_disk["quick"] is True
    failed = [c for c in on_disk["checks"] if not c["passed"]]
    assert not failed, json.dumps(failed, indent=1)[:2000]
    assert on_disk["passed"] is True
    assert on_disk["seconds"] > 0  # run time recorded (speed itself is measured outside the tests)
    for f in (f"{name}_accuracy.png", f"{name}_curves.json", f"{name}_optimizer_tbt.npz", f"{name}_optimizer_tbv.npz"):
        assert os.path.getsize(os.path.join(d, f)) > 1000, f
    res = s["results"]
    assert len(res["curves"]["tbt"]) >= 5 and set(res["curves"]) == {"tbt", "tbv", "sgd", "adam"}
    # the margin and spread in the summary are recomputed from the per-run final accuracies
    tbt = np.array([c.test_acc[-1] for c in res["curves"]["tbt"]])
    tbv = np.array([c.test_acc[-1] for c in res["curves"]["tbv"]])
    assert on_disk["margin"] == pytest.approx(tbv.mean() - tbt.mean(), abs=1e-12)
    assert on_disk["spread"] == pytest.approx(max(tbv.std(), tbt.std()), abs=1e-12)
    # a saved optimizer reloads and reproduces its evaluation run on the same task
    opt = learned.LearnedOptimizer.load(os.path.join(d, f"{name}_optimizer_tbv.npz"))
    np.testing.assert_array_equal(opt.phi, res["optimizers"]["tbv"].phi)
    with open(os.path.join(d, f"{name}_curves.json")) as fh:
        curves = json.load(fh)
    assert len(curves["curves"]["tbv"][0]["test_acc"]) == res["curves"]["tbv"][0].test_acc.size


def test_quick_e6_margin_exceeds_e5(quick_learned_runs):
    _, runs = quick_learned_runs
    names = [c["name"] for c in runs["e6"]["checks"]]
    assert any("larger than without (E5)" in n for n in names)  # E5 ran first into the same folder
    assert runs["e6"]["margin"] > runs["e5"]["margin"]
    # TbT fits the noisy training labels, TbV does not
    f = runs["e6"]["final"]
    assert f["tbt"]["train_acc"]["mean"] > f["tbv"]["train_acc"]["mean"] + 0.05


# ---------------------------------------------------------------- parallel meta-training (jobs)
#: a tiny version of the quick scale with 2 meta-training runs per method; with seed 4 TbT keeps its
#: second run and TbV its first, so the choice among runs is exercised too
_JOBS_SCALE = {"meta_steps": 6, "select_every": 3, "meta_runs": 2, "eval_steps": 60, "eval_runs": 3, "record_every": 30}


def test_jobs_give_bitwise_identical_results(tmp_path, monkeypatch):
    from metastep import experiments
    from metastep.experiments import learned_tbt_tbv as lt
    monkeypatch.setitem(lt.SCALES, "quick", dict(lt.SCALES["quick"], **_JOBS_SCALE))
    runs = {j: experiments.run("e5", str(tmp_path / f"jobs{j}"), quick=True, seed=4, progress=j > 1, jobs=j)
            for j in (1, 2)}
    for j, s in runs.items():
        with open(tmp_path / f"jobs{j}" / "e5" / "summary.json") as fh:
            on_disk = json.load(fh)
        assert on_disk["jobs"] == j and on_disk["config"]["jobs"] == j
        for m, chosen in (("tbt", 1), ("tbv", 0)):
            info = on_disk["meta_training"][m]
            assert len(info["run_seconds"]) == 2 and all(t > 0 for t in info["run_seconds"])
            assert info["chosen_run"] == chosen == int(np.argmin(info["run_best_scores"]))
        assert on_disk["timing"]["meta_training_wall"] > 0
    for m in ("tbt", "tbv"):
        a, b = (learned.LearnedOptimizer.load(str(tmp_path / f"jobs{j}" / "e5" / f"e5_optimizer_{m}.npz")) for j in (1, 2))
        assert a.phi.tobytes() == b.phi.tobytes()
        assert set(a.history) == set(b.history)
        for k in a.history:
            assert a.history[k].tobytes() == b.history[k].tobytes(), (m, k)
        assert a.config == b.config
    curves = []
    for j in (1, 2):
        with open(tmp_path / f"jobs{j}" / "e5" / "e5_curves.json") as fh:
            curves.append(json.load(fh))
    for key in ("curves", "meta_history", "sgd_lr", "sgd_grid"):
        assert curves[0][key] == curves[1][key], key
    assert runs[1]["margin"] == runs[2]["margin"] and runs[1]["final"] == runs[2]["final"]


def test_jobs_bad_values_and_worker_errors(tmp_path, digits_split):
    from metastep import cli, experiments
    from metastep.experiments import learned_tbt_tbv as lt
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        experiments.run("e5", str(tmp_path), quick=True, jobs=0)
    with pytest.raises(TypeError, match="jobs must be an integer"):
        experiments.run("e5", str(tmp_path), quick=True, jobs=2.0)
    with pytest.raises(ValueError, match="applies to e5, e6, e7"):
        experiments.run("e2", str(tmp_path), quick=True, jobs=2)
    assert not os.path.exists(tmp_path / "e5") and not os.path.exists(tmp_path / "e2")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["reproduce", "e5", "--out", str(tmp_path), "--jobs", "0"])
    assert cli.main(["reproduce", "e2", "--out", str(tmp_path), "--jobs", "2"]) == 2
    assert cli.build_parser().parse_args(["reproduce", "e5", "--out", "x"]).jobs == 1
    from metastep.experiments.report import rerun_command
    assert rerun_command("e6", "x", False, 0, True, 6) == "metastep reproduce e6 --out x --paper-scale --jobs 6"
    assert rerun_command("e2", "x", False, 0, False, 6) == "metastep reproduce e2 --out x"
    # an exception in a worker process comes back naming the run, with the worker's error as its cause
    pool, _ = digits_split
    bad = dict(pool=pool, spec=dict(method="tbx", n_train=10), sel={}, common=dict(meta_steps=1, progress=False))
    with pytest.raises(RuntimeError, match=r"TBX run \d failed in a worker process: ValueError: method must be") as err:
        lt._map(lt._meta_train_job, [bad, bad], 2, False, "test meta-training", ["TBX run 1", "TBX run 2"])
    assert isinstance(err.value.__cause__, ValueError)


def test_checkpoint_selection_and_rollback(digits_split):
    pool, _ = digits_split
    tr, va = pool.subset(np.arange(100)), pool.subset(np.arange(100, 200))
    kw = dict(method="tbv", n_train=100, n_valid=100, meta_steps=6, len_base=8, len_mean=4, trunc_base=2,
              trunc_mean=1, progress=False, seed=5, select_every=1, select_on=(tr, va), select_steps=40)
    o = learned.meta_train(pool, rollback=1e-9, **dict(kw, lr=0.3))  # a meta-step size that overshoots
    sel = o.config["selection"]
    scores = [e["score"] for e in sel["scores"]]
    assert len(scores) == 6 and sel["restarts"] == sum(e["restart"] for e in sel["scores"]) >= 2
    assert sel["chosen_meta_step"] == 1 + int(np.argmin(scores))
    # the returned weights are the chosen checkpoint: rescoring them gives the smallest score
    c = learned.train_curve(o, tr, va, steps=40, record_every=2, init_seed=5 + 31337, batch_seed=5 + 4242)
    assert float(np.mean(c.test_loss)) == pytest.approx(min(scores), rel=1e-6)
    # a restart follows a checkpoint that scores worse than the best one so far
    k = next(i for i, e in enumerate(sel["scores"]) if e["restart"])
    assert scores[k] > min(scores[:k])
    # without rollback the meta-training trajectory is the plain one
    plain = learned.meta_train(pool, **kw)
    assert plain.config["selection"]["restarts"] == 0
    ref = learned.meta_train(pool, **{k: v for k, v in kw.items() if k not in ("select_every", "select_on",
                                                                                  "select_steps")})
    np.testing.assert_array_equal(plain.history["meta_loss"], ref.history["meta_loss"])
    with pytest.raises(ValueError, match="select_on"):
        learned.meta_train(pool, method="tbt", n_train=50, meta_steps=1, select_every=1, progress=False)


def test_kernel_paths_agree_bitwise(digits_split):
    """The AVX2 and the portable builds of the optimizer-MLP kernels add the same terms in the
    same order without fused multiply-adds, so meta-gradients, inner states and training curves
    agree bit for bit, in both precisions, also when the number of coordinates is not a multiple
    of the kernels' row blocking (64-7-10: 535 coordinates)."""
    from metastep import _core
    if _core.nn_kernel_path("auto") != "avx2":
        pytest.skip("this CPU or build has no AVX2 kernel path to compare")
    pool, _ = digits_split
    tr, me = pool.subset(np.arange(60)), pool.subset(np.arange(60, 120))
    phi = learned.init_optimizer(4) + 0.3 * np.random.default_rng(7).standard_normal(learned.NUM_OPT_PARAMS)
    opt = learned.LearnedOptimizer(phi)
    out = {}
    try:
        for path in ("avx2", "portable"):
            assert _core.nn_kernel_path(path) == path
            for dt in ("float32", "float64"):
                for sizes in (learned.DIGITS_SIZES, (64, 7, 10)):
                    r = learned.meta_gradient(phi, tr, me, length=6, sizes=sizes, meta_batch=16, seed=3, dtype=dt)
                    c = learned.train_curve(opt, tr, me, steps=12, record_every=4, sizes=sizes, dtype=dt)
                    out[path, dt, sizes] = (r.meta_loss, r.grad, r.state["theta"], r.state["M"], c.theta, c.test_loss)
    finally:
        _core.nn_kernel_path("auto")
    assert _core.nn_kernel_path() == "avx2"
    for (path, dt, sizes), ref in out.items():
        if path == "avx2":
            for a, b in zip(ref, out["portable", dt, sizes]):
                np.testing.assert_array_equal(a, b)
            assert np.any(ref[1] != 0)
    with pytest.raises(ValueError, match="path must be"):
        _core.nn_kernel_path("sse9")


def test_kernel_path_from_environment():
    import subprocess
    import sys
    code = "from metastep import _core; print(_core.nn_kernel_path())"
    env = dict(os.environ, METASTEP_NN_KERNELS="portable")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "portable"


def test_initial_output_layer_scale(digits_split):
    pool, _ = digits_split
    kw = dict(method="tbt", n_train=50, meta_steps=0, progress=False, seed=9, dtype="float64")
    ref = learned.init_optimizer(9)
    hidden = slice(0, 31 * 32 + 32)
    small = learned.meta_train(pool, **kw)  # default: the Glorot output layer scaled by 0.1
    np.testing.assert_array_equal(small.phi[hidden], ref[hidden])
    np.testing.assert_array_equal(small.phi[hidden.stop:], 0.1 * ref[hidden.stop:])
    np.testing.assert_array_equal(learned.meta_train(pool, init_output_scale=1.0, **kw).phi, ref)
    zero = learned.meta_train(pool, init_output_scale=0.0, **kw)
    np.testing.assert_array_equal(zero.phi[hidden], ref[hidden])
    assert not np.any(zero.phi[hidden.stop:]) and np.any(ref[hidden.stop:])
    # a zero output layer makes no update: the network stays where it started
    tr = pool.subset(np.arange(40))
    c = learned.train_curve(zero, tr, tr, steps=5, record_every=5, init_seed=2, dtype="float64")
    np.testing.assert_array_equal(c.theta, learned.init_network(learned.DIGITS_SIZES, 2))
    with pytest.raises(ValueError, match="init_output_scale"):
        learned.meta_train(pool, init_output_scale=-1.0, **kw)


def test_stall_restarts(digits_split):
    """A meta-step size that throws φ where it drives the networks to chance level with vanishing
    meta-gradients: meta-training restarts from a fresh optimizer, exactly where the rule says."""
    pool, _ = digits_split
    kw = dict(method="tbt", n_train=100, meta_steps=12, len_base=10, len_mean=0, trunc_base=4, trunc_mean=0,
              progress=False, seed=2, lr=3.0, init_output_scale=0.0)
    o = learned.meta_train(pool, stall_steps=2, **kw)
    plain = learned.meta_train(pool, **kw)
    restarts = o.config["stall"]["restarts"]
    assert len(restarts) >= 1
    h, ph = o.history, plain.history
    k0 = restarts[0]["meta_step"]
    np.testing.assert_array_equal(h["meta_loss"][:k0], ph["meta_loss"][:k0])
    assert not np.array_equal(h["meta_loss"][k0:], ph["meta_loss"][k0:])
    chance = np.log(10)
    for i, r in enumerate(restarts):
        k = r["meta_step"]
        assert r["seed"] == 2 + 104729 * (i + 1)
        for j in (k - 2, k - 1):  # the two meta-steps before the restart (0-based indices)
            assert h["final_train_loss"][j] >= 0.98 * chance
            assert h["grad_norm"][j] < 0.05 * np.median(h["grad_norm"][:j])
        # the next meta-step starts a new task from a fresh network
        assert h["inner_step0"][k] == 0 and h["task"][k] == h["task"][k - 1] + 1
    assert "stall" not in plain.config
    with pytest.raises(ValueError, match="stall_level"):
        learned.meta_train(pool, stall_steps=1, stall_level=1.5, **kw)
