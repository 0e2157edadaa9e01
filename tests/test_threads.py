"""Batched calls spread over threads give bit-identical results; concurrent Python threads
(the GIL is released in the core) agree with serial calls."""
import threading

import numpy as np
import pytest

import metastep as ms


@pytest.mark.parametrize("mode", ["forward", "reverse", "scaled_forward", "scaled_reverse", "exact", "fd"])
def test_thread_count_does_not_change_bits(mode):
    p = ms.random_least_squares(15, 30, 0.5, seed=1, n_valid=10)
    etas = np.linspace(0.05, 2.5, 23) / p.L
    one = ms.metagrad(p, etas, 50, mode=mode, on="valid", objective="log", threads=1)
    for k in (2, 3, 8):
        many = ms.metagrad(p, etas, 50, mode=mode, on="valid", objective="log", threads=k)
        np.testing.assert_array_equal(one.grad, many.grad)
        np.testing.assert_array_equal(one.value, many.value)
        assert one.status == many.status


def test_sgd_batch_threads_bit_identical():
    p = ms.random_least_squares(10, 40, 0.5, seed=2)
    etas = np.linspace(0.1, 1.5, 9) / p.L
    a = ms.metagrad(p, etas, 30, mode="scaled", batch_size=4, threads=1)
    b = ms.metagrad(p, etas, 30, mode="scaled", batch_size=4, threads=4)
    np.testing.assert_array_equal(a.grad, b.grad)


def test_concurrent_python_threads_match_serial():
    q = ms.random_quadratic(40, seed=3)
    etas = [0.3 / q.L, 1.1 / q.L, 1.9 / q.L, 2.4 / q.L]
    serial = {e: ms.metagrad(q, e, 400, mode="scaled_reverse", dtype="longdouble").grad for e in etas}
    results, errors = {}, []

    def work(e):
        try:
            results[e] = ms.metagrad(q, e, 400, mode="scaled_reverse", dtype="longdouble").grad
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,)) for e in etas * 2]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert results == serial


def test_threads_argument_is_validated():
    q = ms.random_quadratic(3, seed=0)
    with pytest.raises(ValueError, match="threads"):
        ms.metagrad(q, 0.1, 5, threads=0)
    with pytest.raises(TypeError, match="threads"):
        ms.metagrad(q, 0.1, 5, threads=1.5)


# ------------------------------------------------------------------ every mode, precision and engine
# Concurrent Python threads (the GIL is released inside the core) must give the bits of serial
# calls, for every mode and precision, step-size meta-training and the learned optimizer; and a
# fresh process must give the same bits again (nothing depends on addresses, scheduling or
# uninitialised memory). Each job is small: the whole section runs in a few seconds.
MODES_ALL = ("forward", "reverse", "checkpoint", "exact", "scaled_forward", "scaled_reverse")

JOBS_SOURCE = '''
import numpy as np
import metastep as ms
from metastep import learned
from metastep.data import Dataset
from metastep.meta_train import meta_train


def bits(a):
    """The value bits of an array (x87 long doubles: the 10 significant bytes, not the padding)."""
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype == np.longdouble and a.dtype.itemsize > 10 and np.finfo(np.longdouble).nmant == 63:
        return a.reshape(-1).view(np.uint8).reshape(-1, a.dtype.itemsize)[:, :10].tobytes()
    return a.tobytes()


def fingerprint(x):
    """Bytes that identify a result exactly (every float bit, every status string)."""
    if isinstance(x, ms.MetaGradResult):
        return (bits(x.value_ext), bits(x.grad_ext), repr(x.status), repr(x.value_text), repr(x.grad_text),
                bits(x.log_abs_grad), bits(x.value), bits(x.grad))
    if isinstance(x, learned.MetaGradient):
        return (bits(x.meta_loss), bits(x.grad), bits(x.train_losses), bits(x.meta_losses),
                bits(x.state["theta"]), bits(x.state["M"]), bits(x.state["V"]))
    if isinstance(x, dict):
        return tuple((k, bits(v)) for k, v in sorted(x.items()))
    return (bits(x.etas), bits(x.values), bits(x.grads), repr(x.statuses))


def jobs():
    q = ms.random_quadratic(6, seed=4)
    ls = ms.random_least_squares(5, 12, 0.5, seed=5, n_valid=6)
    out = []
    for prec in ms.PRECISIONS:
        t = 8 if prec == "mp" else 40
        for mode in ("forward", "reverse", "checkpoint", "exact", "scaled_forward", "scaled_reverse"):
            for prob, kw in ((q, {}), (ls, {"on": "valid", "objective": "log"})):
                etas = np.array([0.3, 1.2, 2.3]) / prob.L
                out.append((f"metagrad {mode} {prec} {type(prob).__name__}",
                            lambda prob=prob, mode=mode, prec=prec, t=t, kw=kw, etas=etas:
                            ms.metagrad(prob, etas, t, mode=mode, dtype=prec, threads=2, **kw)))
        out.append((f"schedule {prec}", lambda prec=prec, t=t: ms.metagrad(
            ls, schedule=np.linspace(0.2, 1.5, t) / ls.L, mode="scaled_reverse", dtype=prec)))
    for engine in ("core", "python"):
        for opt in ("gd", "adam"):
            out.append((f"meta_train {engine} {opt}", lambda engine=engine, opt=opt: meta_train(
                q, 0.5 / q.L, 30, 6, optimizer=opt, engine=engine, mode="scaled", lr=0.01 / q.L)))
    rng = np.random.default_rng(7)
    sizes = (4, 5, 3)
    data = Dataset(rng.standard_normal((20, 4)), rng.integers(0, 3, 20).astype(np.int64), 3)
    phi = learned.init_optimizer(3)
    P = learned.num_params(sizes)
    theta, grad = rng.standard_normal(P), rng.standard_normal(P)
    for dt in ("float64", "float32"):
        out.append((f"optimizer_step {dt}", lambda dt=dt: learned.optimizer_step(
            phi, theta, grad, step=3, sizes=sizes, dtype=dt)))
        for est in ("first", "second", "es"):
            out.append((f"meta_gradient {est} {dt}", lambda est=est, dt=dt: learned.meta_gradient(
                phi, data, data, length=6, estimator=est, sizes=sizes, batch_size=8, es_pairs=3, dtype=dt)))
    return out
'''
_ns: dict = {}
exec(compile(JOBS_SOURCE, "<thread jobs>", "exec"), _ns)


def test_thread_jobs_cover_every_mode_and_precision():
    names = " ".join(n for n, _ in _ns["jobs"]())
    for mode in MODES_ALL:
        for prec in ms.PRECISIONS:
            assert f"metagrad {mode} {prec}" in names
    assert "meta_train core" in names and "meta_train python" in names
    assert "meta_gradient second" in names and "optimizer_step" in names


def test_concurrent_threads_bit_identical_every_mode_precision_and_engine():
    import concurrent.futures
    import random
    jobs = _ns["jobs"]()
    fp = _ns["fingerprint"]
    serial = [fp(job()) for _, job in jobs]
    for rnd in range(2):  # two concurrent rounds in different orders, each job twice at once
        order = list(range(len(jobs))) * 2
        random.Random(rnd).shuffle(order)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
            futures = [(i, ex.submit(jobs[i][1])) for i in order]
            for i, fut in futures:
                assert fp(fut.result()) == serial[i], jobs[i][0]


def test_results_identical_in_a_fresh_process():
    import hashlib
    import subprocess
    import sys
    code = JOBS_SOURCE + '''
import hashlib
h = hashlib.sha256()
for name, job in jobs():
    h.update(repr(fingerprint(job())).encode())
print(h.hexdigest())
'''
    h = hashlib.sha256()
    for _, job in _ns["jobs"]():
        h.update(repr(_ns["fingerprint"](job())).encode())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == h.hexdigest()
