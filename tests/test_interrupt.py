"""A signal handler that raises (Ctrl-C's KeyboardInterrupt among them) stops a long C++ call.

The core's loops poll a per-call flag; the calling thread runs Python's signal handlers about
every 50 ms while the GIL is released. Each call below would take many seconds if it ran to the
end (its uninterrupted length is estimated from a short run of the same call): the tests check that
it stops within a second of the signal, that the handler's own exception comes out, and that a
handler which does not raise changes nothing (bit-identical results).
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

import metastep as ms
from metastep import learned
from metastep.meta_train import meta_train

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")

DELAY = 0.25  # seconds until the signal
LATENCY = 1.0  # how long after it the call must have returned


class Alarm(Exception):
    pass


def _raise_alarm(signum, frame):
    raise Alarm()


def _interrupted_after(call, delay=DELAY):
    """Run call() with SIGALRM raising Alarm after `delay`; return seconds from signal to exit."""
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    t0 = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        with pytest.raises(Alarm):
            call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return time.perf_counter() - t0 - delay


def _seconds(call):
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _long(make, short):
    """make(n) is a call of size n; returns one estimated from make(short) to run for about 10 s."""
    per = max(_seconds(make(short)), 1e-4) / short
    return make(max(2 * short, int(10.0 / per)))


Q = ms.random_quadratic(200, seed=3)
LS = ms.random_least_squares(20, 60, 0.1, seed=4, n_valid=30)


def _metagrad(mode, dtype="float64", problem=Q, threads=1, etas=None):
    eta = 0.5 / problem.L if etas is None else etas
    return lambda t: (lambda: ms.metagrad(problem, eta, int(t), mode=mode, dtype=dtype, threads=threads))


CASES = {
    "forward": (_metagrad("forward"), 2_000),
    "scaled_forward": (_metagrad("scaled_forward"), 2_000),
    "checkpoint": (_metagrad("checkpoint"), 2_000),
    "checkpoint_longdouble_ls": (lambda t: (lambda: ms.metagrad(LS, 0.01, int(t), mode="checkpoint", dtype="longdouble",
                                                             on="valid")), 20_000),
    "forward_mp": (_metagrad("forward", "mp", ms.random_quadratic(30, seed=5)), 200),
    "fd_quad": (_metagrad("fd", "quad", ms.random_quadratic(40, seed=6)), 1_000),
    # a batch of 256 step sizes on two threads: every thread stops
    "forward_batch_threads": (_metagrad("forward", threads=2, etas=np.linspace(0.1, 1.0, 256) / Q.L), 50),
    "unroll": (lambda t: (lambda: ms.unroll(Q, 0.5 / Q.L, int(t))), 2_000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_signal_stops_long_call(name):
    make, short = CASES[name]
    call = _long(make, short)
    assert _interrupted_after(call) < LATENCY


def test_exact_batch_on_threads_stops():
    q = ms.random_quadratic(100, seed=7)
    etas = lambda n: np.linspace(0.01, 1.9, int(n)) / q.L  # noqa: E731
    call = _long(lambda n: (lambda: ms.metagrad(q, etas(n), 1000, mode="exact", threads=2)), 2_000)
    assert _interrupted_after(call) < LATENCY


def test_meta_train_in_core_stops():
    q = ms.random_quadratic(50, seed=8)
    make = lambda k: (lambda: meta_train(q, 0.1 / q.L, 2000, int(k), mode="forward", engine="core",  # noqa: E731
                                         log_eta=True, lr=1e-3, decay="none"))
    call = _long(make, 5)
    assert _interrupted_after(call) < LATENCY


def test_learned_train_curve_stops():
    pool = ms.data.load_digits()
    tr, te = pool.subset(np.arange(200)), pool.subset(np.arange(200, 400))
    make = lambda n: (lambda: learned.train_curve("adam", tr, te, steps=int(n), record_every=int(n),  # noqa: E731
                                                  lr=1e-3))
    call = _long(make, 200)
    assert _interrupted_after(call) < LATENCY


def test_ctrl_c_raises_keyboard_interrupt():
    call = _long(_metagrad("forward"), 2_000)
    timer = threading.Timer(DELAY, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        timer.cancel()
    assert time.perf_counter() - t0 - DELAY < LATENCY


def test_handler_that_does_not_raise_changes_nothing():
    """Handlers run during the call (the counter moves) and the result is bit-identical."""
    etas = np.linspace(0.2, 1.5, 64) / Q.L
    run = lambda: ms.metagrad(Q, etas, 20_000, mode="forward", threads=2)  # noqa: E731
    ref = run()
    hits = []
    old = signal.signal(signal.SIGALRM, lambda s, f: hits.append(s))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
        t0 = time.perf_counter()
        got = run()
        elapsed = time.perf_counter() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if elapsed > 0.3:  # long enough for the poll (every 50 ms) to have run the handler mid-call
        assert len(hits) >= 2
    np.testing.assert_array_equal(got.value, ref.value)
    np.testing.assert_array_equal(got.grad, ref.grad)
    assert list(got.status) == list(ref.status)


def test_after_an_interrupt_the_next_call_is_unaffected():
    short = lambda: ms.metagrad(Q, 0.5 / Q.L, 500, mode="checkpoint")  # noqa: E731
    ref = short()
    call = _long(_metagrad("checkpoint"), 2_000)
    assert _interrupted_after(call) < LATENCY
    got = short()
    assert got.value == ref.value and got.grad == ref.grad and got.status == ref.status


def test_call_from_another_thread_runs_to_the_end():
    """Only the main thread runs signal handlers: a call made elsewhere is not interruptible.
    The handler's exception reaches the main thread while the call goes on, and the call then
    finishes with the usual result."""
    etas = np.linspace(0.2, 1.5, 64) / Q.L
    run = lambda t: ms.metagrad(Q, etas, int(t), mode="forward", threads=1)  # noqa: E731
    per = _seconds(lambda: run(500)) / 500
    t = max(1000, int(2.0 / per))  # about 2 s
    ref = run(t)
    out = {}
    done = threading.Event()

    def work():
        try:
            out["r"] = run(t)
        finally:
            done.set()

    th = threading.Thread(target=work)
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, DELAY)
        th.start()
        # sleep in short pieces (the handler runs on the main thread between them); not
        # Thread.join, which in CPython 3.11 marks a running thread stopped when a handler
        # raises inside it
        with pytest.raises(Alarm):
            while not done.is_set():
                time.sleep(0.01)
        assert not done.is_set(), "the call should still be running when the handler raised"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        while not done.is_set():
            time.sleep(0.01)
        th.join()
    np.testing.assert_array_equal(out["r"].value, ref.value)
    np.testing.assert_array_equal(out["r"].grad, ref.grad)


def test_caller_keeps_polling_after_its_own_block():
    """Three step sizes on two threads: the calling thread computes one, the other thread two.
    A signal after the caller's block is done must still stop the call at once."""
    q = ms.random_quadratic(150, seed=9)
    per = _seconds(lambda: ms.metagrad(q, 0.5 / q.L, 400, mode="checkpoint")) / 400
    t = max(800, int(2.5 / per))  # about 2.5 s per step size
    etas = np.array([0.3, 0.5, 0.7]) / q.L
    call = lambda: ms.metagrad(q, etas, t, mode="checkpoint", threads=2)  # noqa: E731
    assert _interrupted_after(call, delay=1.2 * 2.5) < LATENCY  # the caller's block ends at ~2.5 s


def test_learned_truncation_stops():
    pool = ms.data.load_digits()
    tr, me = pool.subset(np.arange(200)), pool.subset(np.arange(200, 400))
    phi = learned.init_optimizer(0)
    make = lambda n: (lambda: learned.meta_gradient(phi, tr, me, length=int(n), estimator="second"))  # noqa: E731
    call = _long(make, 20)
    assert _interrupted_after(call) < LATENCY
