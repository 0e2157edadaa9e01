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
