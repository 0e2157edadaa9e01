"""Benchmarks: our modes against NumPy, JAX and PyTorch (each optional) and this machine's
roofline, side by side in one run; medians, ratios next to times, JSON output.

Workload (issue 8): the derivative of f(w_t) with respect to η for t-step GD on a dense d × d
quadratic in float64 — one step size, and a batch of 64 step sizes — plus an exact-mode sweep
over 10,000 step sizes. Every peer runs its best idiom on one thread (the peers' thread pools
are pinned to one thread before they are imported):

* NumPy: a hand-written forward-mode loop (two matrix-vector products per step);
* JAX: ``jit`` of ``jvp`` through ``lax.scan`` (forward mode), ``grad`` (reverse mode), and
  ``vmap`` of the forward mode for the batch;
* PyTorch: autograd (reverse mode) through the unrolled loop.

The process is pinned to one core before any peer loads (thread-count flags alone do not stop
XLA from using every core); our modes run with ``threads=1``, except the thread-scaling rows,
which repeat the batched cases with every core. The roofline is measured on the spot: the GEMM rate (NumPy's BLAS, one
thread) and the matrix-vector bandwidth; the bound of a case is max(bytes of H streamed once
per step / bandwidth, 4 d² m t flops / GEMM rate).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import api, problems

__all__ = ["run_bench", "roofline", "format_table"]


#: Environment that pins NumPy's BLAS, JAX/XLA and PyTorch to one thread. It must be set
#: before those libraries load: ``metastep bench`` restarts itself with it when it is missing.
ONE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def _pin_to_one_core() -> Optional[set]:
    """Pin this process to one core (threads created from now on inherit it: JAX's and
    PyTorch's pools included) and return the previous set, or None where the OS has no
    affinity call. Thread-count flags alone do not stop XLA from using every core."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    return set(cores)


def _pin_peers_to_one_thread() -> bool:
    """Pin what can still be pinned (JAX before its import); True if NumPy's BLAS was pinned
    when it loaded."""
    for k, v in ONE_THREAD_ENV.items():
        if k == "XLA_FLAGS" and "jax" not in sys.modules:
            os.environ[k] = v
    return os.environ.get("OPENBLAS_NUM_THREADS") == "1"


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def roofline(d: int = 1000, repeats: int = 5) -> Dict[str, float]:
    """This machine's measured GEMM rate (GFLOP/s, NumPy's BLAS, d × d × 128 like the batched
    case) and matrix-vector bandwidth (GB/s, streaming a d × d float64 matrix)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, d))
    B = rng.standard_normal((d, 128))
    t_gemm = _median_time(lambda: A @ B, max(repeats, 10))
    x = rng.standard_normal(d)
    t_gemv = _median_time(lambda: A @ x, max(repeats, 20))
    return {"gemm_gflops": 2.0 * d * d * 128 / t_gemm / 1e9, "gemv_gbps": 8.0 * d * d / t_gemv / 1e9}


def _problem(d: int) -> problems.Quadratic:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((d, d))
    H = X.T @ X / d
    return problems.Quadratic(0.5 * H + 0.5 * H.T, rng.standard_normal(d))


def _numpy_forward(H: np.ndarray, w0: np.ndarray, eta: float, t: int) -> float:
    w, v = w0.copy(), np.zeros_like(w0)
    for _ in range(t):
        g = H @ w
        hv = H @ v
        v = v - g - eta * hv
        w = w - eta * g
    return float((H @ w) @ v)


def _jax() -> Any:
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_final(jax: Any, H: np.ndarray, w0: np.ndarray, t: int) -> Callable[[Any], Any]:
    import jax.numpy as jnp
    Hj, wj = jnp.asarray(H), jnp.asarray(w0)

    def final(e: Any) -> Any:
        def body(w: Any, _: Any) -> Any:
            return w - e * (Hj @ w), None
        w, _ = jax.lax.scan(body, wj, None, length=t)
        return 0.5 * w @ (Hj @ w)
    return final


def _jax_forward(H: np.ndarray, w0: np.ndarray, eta: float, t: int) -> Optional[Callable[[], Any]]:
    jax = _jax()
    if jax is None:
        return None
    import jax.numpy as jnp
    final = _jax_final(jax, H, w0, t)
    f = jax.jit(lambda e: jax.jvp(final, (e,), (jnp.ones_like(e),))[1])
    e = jnp.asarray(eta)
    return lambda: f(e).block_until_ready()


def _jax_reverse(H: np.ndarray, w0: np.ndarray, eta: float, t: int) -> Optional[Callable[[], Any]]:
    jax = _jax()
    if jax is None:
        return None
    import jax.numpy as jnp
    f = jax.jit(jax.grad(_jax_final(jax, H, w0, t)))
    e = jnp.asarray(eta)
    return lambda: f(e).block_until_ready()


def _jax_forward_batch(H: np.ndarray, w0: np.ndarray, etas: np.ndarray, t: int) -> Optional[Callable[[], Any]]:
    jax = _jax()
    if jax is None:
        return None
    import jax.numpy as jnp
    final = _jax_final(jax, H, w0, t)
    f = jax.jit(jax.vmap(lambda e: jax.jvp(final, (e,), (jnp.ones_like(e),))[1]))
    e = jnp.asarray(etas)
    return lambda: f(e).block_until_ready()


def _torch_reverse(H: np.ndarray, w0: np.ndarray, eta: float, t: int) -> Optional[Callable[[], Any]]:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    Ht, wt = torch.from_numpy(np.array(H)), torch.from_numpy(np.array(w0))

    def run() -> Any:
        e = torch.tensor(eta, dtype=torch.float64, requires_grad=True)
        w = wt
        for _ in range(t):
            w = w - e * (Ht @ w)
        loss = 0.5 * w @ (Ht @ w)
        loss.backward()
        return e.grad

    return run


def _peer_versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"numpy": np.__version__}
    for name in ("jax", "torch"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def run_bench(quick: bool = False, out: Optional[str] = None, threads: Optional[int] = None,
              progress: bool = True) -> Dict[str, Any]:
    """Run the benchmark table; returns (and optionally writes as JSON) the measurements.

    ``threads`` is the thread count of the thread-scaling rows (default: every core); all other
    rows use one thread.
    """
    blas_pinned = _pin_peers_to_one_thread()
    nthreads = api.default_threads() if threads is None else threads  # before pinning
    all_cores = _pin_to_one_core()
    cases = [(100, 1000, 1), (1000, 1000, 1), (1000, 1000, 64)]
    sweep: Tuple[int, int, Tuple[int, ...]] = (1000, 10000, (1000, 10**6))
    repeats = 7
    if quick:
        cases, repeats, sweep = [(50, 100, 1), (100, 100, 8)], 3, (100, 500, (100,))
    roof = roofline(300 if quick else 1000, repeats=3 if quick else 5)
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    jax_ok, torch_ok = _jax() is not None, _peer_versions()["torch"] is not None
    if not jax_ok:
        skipped["jax"] = "not installed (pip install jax jaxlib)"
    if not torch_ok:
        skipped["torch"] = "not installed (pip install torch)"
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cases) + 1, desc="metastep bench", file=sys.stderr, leave=False)
    for d, t, m in cases:
        p = _problem(d)
        etas = np.linspace(0.2, 1.8, m) / p.L if m > 1 else 0.5 / p.L
        row: Dict[str, Any] = {"d": d, "t": t, "step_sizes": m}
        for mode in ("forward", "scaled_forward", "reverse", "exact"):
            reps = repeats if (m == 1 or mode in ("forward", "exact")) else max(1, repeats // 3)
            row[f"metastep_{mode}_s"] = _median_time(
                partial(api.metagrad, p, etas, t, mode=mode, threads=1), reps)
        if m > 1:
            if all_cores is not None:
                os.sched_setaffinity(0, all_cores)  # our worker threads are created per call: they get every core
            row["metastep_forward_threads"] = nthreads
            row["metastep_forward_mt_s"] = _median_time(
                lambda: api.metagrad(p, etas, t, mode="forward", threads=nthreads), repeats)
            if all_cores is not None:
                os.sched_setaffinity(0, {min(all_cores)})
        H, w0 = np.ascontiguousarray(p.H), np.ascontiguousarray(p.w0)
        e0 = float(np.atleast_1d(etas)[0])
        reps_np = 1 if (d >= 1000 and m > 1) else repeats
        row["numpy_s"] = _median_time(lambda: [_numpy_forward(H, w0, float(e), t) for e in np.atleast_1d(etas)],
                                      reps_np)
        if m == 1:
            jf, jr = _jax_forward(H, w0, e0, t), _jax_reverse(H, w0, e0, t)
        else:
            jf, jr = _jax_forward_batch(H, w0, np.asarray(etas), t), None
        row["jax_s"] = _median_time(jf, repeats) if jf else None
        row["jax_reverse_s"] = _median_time(jr, repeats) if jr else None
        tf = _torch_reverse(H, w0, e0, t) if m == 1 else None
        row["torch_s"] = _median_time(tf, repeats) if tf else None
        # roofline: each step streams H once (memory) and does 4 d^2 m flops (iterate and tangent)
        row["roofline_s"] = max(8.0 * d * d * t / (roof["gemv_gbps"] * 1e9),
                                4.0 * d * d * m * t / (roof["gemm_gflops"] * 1e9))
        rows.append(row)
        if bar is not None:
            bar.update()
    # exact-mode sweep: many step sizes, each horizon, decomposition included (fresh problem)
    d, m, ts = sweep
    sweep_rows = []
    for t in ts:
        etas = np.linspace(0.01, 1.99, m)

        def fresh(t: int = t) -> Any:
            p = _problem(d)
            return api.metagrad(p, etas / p.L, t, mode="exact", refine=False, objective="log", threads=1)
        sweep_rows.append({"d": d, "t": t, "step_sizes": m,
                           "exact_unrefined_s": _median_time(fresh, 3 if quick else 5)})
    if bar is not None:
        bar.update()
        bar.close()
    if all_cores is not None:
        os.sched_setaffinity(0, all_cores)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "threads_scaling_rows": nthreads,
                    "pinned_to_one_core": all_cores is not None},
        "peers": _peer_versions(), "skipped": skipped, "numpy_blas_one_thread": blas_pinned,
        "roofline": roof, "rows": rows, "exact_sweep": sweep_rows, "quick": quick,
    }
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def format_table(result: Dict[str, Any]) -> str:
    """The benchmark as text: times (ms) and ratios (ours / peer: below 1 means metastep is faster)."""
    roof = result["roofline"]
    blas = "1 thread" if result.get("numpy_blas_one_thread") else "NumPy's default threads"
    pinned = " (process pinned to one core)" if result["machine"].get("pinned_to_one_core") else ""
    lines = [f"roofline here: GEMM {roof['gemm_gflops']:.1f} GFLOP/s ({blas}), matrix-vector "
             f"{roof['gemv_gbps']:.1f} GB/s; every timing on one thread{pinned} unless marked"]
    for name, why in result.get("skipped", {}).items():
        lines.append(f"  {name}: skipped — {why}")

    def ms_(x: Optional[float]) -> str:
        return f"{x * 1e3:10.2f}" if x else f"{'—':>10}"

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return f"{a / b:10.2f}" if (a and b) else f"{'—':>10}"
    lines.append(f"{'case':<20}{'forward':>10}{'scaled':>10}{'reverse':>10}{'exact':>10}{'NumPy':>10}{'JAX fwd':>10}"
                 f"{'JAX rev':>10}{'PyTorch':>10}{'bound':>10} | {'fwd/JAX':>10}{'scl/JAX':>10}{'fwd/NumPy':>10}"
                 f"{'fwd/bound':>10}")
    for r in result["rows"]:
        fwd, scl = r["metastep_forward_s"], r["metastep_scaled_forward_s"]
        lines.append(f"d={r['d']:<5}t={r['t']:<5}m={r['step_sizes']:<3}"
                     f"{ms_(fwd)}{ms_(scl)}{ms_(r['metastep_reverse_s'])}{ms_(r['metastep_exact_s'])}"
                     f"{ms_(r['numpy_s'])}{ms_(r['jax_s'])}{ms_(r.get('jax_reverse_s'))}{ms_(r['torch_s'])}"
                     f"{ms_(r['roofline_s'])} | {ratio(fwd, r['jax_s'])}{ratio(scl, r['jax_s'])}"
                     f"{ratio(fwd, r['numpy_s'])}{ratio(fwd, r['roofline_s'])}")
    for r in result["rows"]:
        if "metastep_forward_mt_s" in r:
            one, mt = r["metastep_forward_s"], r["metastep_forward_mt_s"]
            lines.append(f"thread scaling, d={r['d']} t={r['t']} m={r['step_sizes']} forward: 1 thread "
                         f"{one * 1e3:.1f} ms, {r['metastep_forward_threads']} threads {mt * 1e3:.1f} ms "
                         f"(speed-up {one / mt:.2f}x)")
    for r in result.get("exact_sweep", []):
        lines.append(f"exact sweep (refine=False), d={r['d']} t={r['t']}: {r['step_sizes']} step sizes in "
                     f"{r['exact_unrefined_s'] * 1e3:.1f} ms including the decomposition")
    lines.append("times are medians in milliseconds; ratios are ours / peer (below 1: metastep is faster); "
                 "exact = refined exact mode with the decomposition cached on the problem")
    return "\n".join(lines)


def _torch_cuda() -> Any:
    """PyTorch where it is installed with a usable GPU, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_cuda_forward(H: np.ndarray, w0: np.ndarray, etas: np.ndarray, t: int, dtype: str,
                        graph: bool) -> Any:
    """PyTorch on the GPU, forward mode by hand for a batch of step sizes in its best idiom: one
    product per step on X = [W | V] (cuBLAS; H read once), in-place updates; with ``graph`` the
    steps are captured in chunks of 32 as a CUDA graph and replayed (no per-kernel launch cost)."""
    torch = _torch_cuda()
    if torch is None:
        return None
    tdt = torch.float64 if dtype == "float64" else torch.float32
    m = len(etas)
    Ht = torch.tensor(H, dtype=tdt, device="cuda")
    X0 = torch.zeros((H.shape[0], 2 * m), dtype=tdt, device="cuda")
    X0[:, :m] = torch.tensor(w0, dtype=tdt, device="cuda")[:, None]
    E = torch.tensor(etas, dtype=tdt, device="cuda")
    X, G = X0.clone(), torch.empty_like(X0)

    def step() -> None:
        torch.matmul(Ht, X, out=G)
        g, hv = G[:, :m], G[:, m:]
        X[:, m:].sub_(g).sub_(E * hv)
        X[:, :m].sub_(E * g)

    chunk, replay = 32, None
    if graph and t >= chunk:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        replay = torch.cuda.CUDAGraph()
        with torch.cuda.graph(replay):
            for _ in range(chunk):
                step()

    def run() -> Any:
        X.copy_(X0)
        done = 0
        if replay is not None:
            while done + chunk <= t:
                replay.replay()
                done += chunk
        for _ in range(t - done):
            step()
        out = ((Ht @ X[:, :m]) * X[:, m:]).sum(0)
        torch.cuda.synchronize()
        return out.cpu().numpy()
    return run


def _jax_cuda_forward(H: np.ndarray, w0: np.ndarray, etas: np.ndarray, t: int, dtype: str) -> Any:
    """JAX on the GPU: jit of lax.scan over the steps, one product per step on [W | V]."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    try:
        gpu = jax.devices("gpu")[0]
    except Exception:  # no CUDA backend in this JAX
        return None
    jax.config.update("jax_enable_x64", True)
    jdt = jnp.float64 if dtype == "float64" else jnp.float32
    m = len(etas)
    Hj = jax.device_put(jnp.asarray(H, dtype=jdt), gpu)
    W0 = jax.device_put(jnp.tile(jnp.asarray(w0, dtype=jdt)[:, None], (1, m)), gpu)
    E = jax.device_put(jnp.asarray(etas, dtype=jdt), gpu)

    @jax.jit
    def f(Hm: Any, W: Any, e: Any) -> Any:
        def body(c: Any, _: Any) -> Any:
            w, v = c
            # full float32 products (JAX's GPU default for float32 is TF32, about 3 digits)
            G = jnp.matmul(Hm, jnp.concatenate([w, v], axis=1), precision=jax.lax.Precision.HIGHEST)
            g, hv = G[:, :m], G[:, m:]
            return (w - e * g, v - g - e * hv), None
        (w, v), _ = jax.lax.scan(body, (W, jnp.zeros_like(W)), None, length=t)
        return jnp.sum(jnp.matmul(Hm, w, precision=jax.lax.Precision.HIGHEST) * v, axis=0)
    return lambda: np.asarray(f(Hj, W0, E).block_until_ready())


def _cublas_step_bound(H: np.ndarray, m: int, dtype: str, reps: int = 50) -> Optional[float]:
    """Seconds of one d × d by d × 2m product through cuBLAS (PyTorch; `reps` products replayed
    as one CUDA graph, so launch costs are excluded): the per-step floor of any implementation
    that forms that product with cuBLAS; None without PyTorch-CUDA."""
    torch = _torch_cuda()
    if torch is None:
        return None
    tdt = torch.float64 if dtype == "float64" else torch.float32
    Ht = torch.tensor(H, dtype=tdt, device="cuda")
    X = torch.randn((H.shape[0], 2 * m), dtype=tdt, device="cuda")
    G = torch.empty_like(X)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            torch.matmul(Ht, X, out=G)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()  # replayed: kernel time alone, no Python or launch cost
    with torch.cuda.graph(g):
        for _ in range(reps):
            torch.matmul(Ht, X, out=G)
    g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def run_gpu_bench(quick: bool = False, out: Optional[str] = None,
                  progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Time the CUDA path (batched forward and scaled forward, float64 and float32) against the
    CPU engine, PyTorch-CUDA (eager and CUDA-graph replay), JAX-CUDA and the cuBLAS product
    bound (t products), and record the largest relative deviation from the CPU results and from
    each peer. Every time is a median (wall clock, results copied back to the host)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must leave GPU memory to us
    ok, why = api.cuda_available()
    if not ok:
        raise RuntimeError(f"no GPU benchmark: {why}")
    cases = [(100, 1000, 1), (1000, 1000, 1), (1000, 1000, 64), (4000, 1000, 64), (1000, 1000, 1024)]
    if quick:
        cases = [(200, 100, 8)]
    rows = []
    for d, t, m in cases:
        p = _problem(d)
        H, w0 = np.asarray(p.H), np.asarray(p.w0)
        etas = np.linspace(0.2, 1.8, m) / p.L
        for dtype in ("float64", "float32"):
            if progress:
                progress(f"d={d} t={t} m={m} {dtype}")
            row: Dict[str, Any] = {"d": d, "t": t, "step_sizes": m, "dtype": dtype}
            for mode in ("forward", "scaled_forward"):
                gpu = api.metagrad(p, etas, t, mode=mode, dtype=dtype, device="cuda")
                row[f"cuda_{mode}_s"] = _median_time(
                    partial(api.metagrad, p, etas, t, mode=mode, dtype=dtype, device="cuda"), 3)
                g = np.atleast_1d(gpu.grad)
                row[f"cuda_{mode}_status_ok"] = bool(np.all(np.atleast_1d(gpu.ok)))
                if d * m <= 64_000:
                    cpu = api.metagrad(p, etas, t, mode=mode, dtype=dtype)
                    row[f"cpu_{mode}_s"] = _median_time(
                        partial(api.metagrad, p, etas, t, mode=mode, dtype=dtype), 1)
                    c = np.atleast_1d(cpu.grad)
                    row[f"max_rel_dev_cpu_{mode}"] = float(np.max(np.abs(g - c) / np.abs(c)))
                if mode == "forward":
                    ref = g
            fn = getattr(api._core, f"cuda_forward_{dtype}")
            Ht = np.ascontiguousarray(H)
            # the fixed cost of a call (conversion and upload of H, allocation, read-back): t = 1
            row["cuda_call_overhead_s"] = _median_time(
                lambda: api.metagrad(p, etas, 1, mode="forward", dtype=dtype, device="cuda"), 3)
            blas = api.cublas_library()
            row["cuda_run"] = fn(Ht, w0, np.zeros(d), etas, 64, False, "final", cublas=blas)["cuda"]
            for label, kw in (("simple_kernel_no_graph", dict(gemm=1, graph=False)),
                              ("own_kernels", dict(cublas="none")),
                              ("no_graph", dict(graph=False, cublas=blas))):
                row[f"cuda_forward_{label}_s"] = _median_time(
                    partial(fn, Ht, w0, np.zeros(d), etas, t, False, "final", **kw), 3)
            bound = _cublas_step_bound(H, m, dtype)
            row["cublas_product_bound_s"] = None if bound is None else bound * t
            for label, make in (("torch_cuda_eager", lambda: _torch_cuda_forward(H, w0, etas, t, dtype, False)),
                                ("torch_cuda_graph", lambda: _torch_cuda_forward(H, w0, etas, t, dtype, True)),
                                ("jax_cuda", lambda: _jax_cuda_forward(H, w0, etas, t, dtype))):
                try:
                    fn_peer = make()
                except Exception as exc:  # a peer that fails is reported, never fatal
                    row[f"{label}_error"] = f"{type(exc).__name__}: {exc}"
                    fn_peer = None
                if fn_peer is None:
                    row[f"{label}_s"] = None
                    continue
                row[f"{label}_s"] = _median_time(fn_peer, 3)
                pv = np.atleast_1d(fn_peer())
                row[f"max_rel_dev_{label}"] = float(np.max(np.abs(pv - ref) / np.abs(ref)))
            rows.append(row)
    result = {"build": {"cuda_devices": api._core.cuda_device_count()[0]}, "device": _gpu_name(),
              "peers": _peer_versions(), "rows": rows, "quick": quick}
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def _gpu_name() -> Optional[str]:
    try:
        import torch
        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except ImportError:
        return None


def format_gpu_table(result: Dict[str, Any]) -> str:
    """The GPU benchmark as a Markdown table: our times, the peers', and ratios."""
    def ms_(x: Optional[float]) -> str:
        return "—" if x is None else f"{1e3 * x:.2f}"

    def r(a: Optional[float], b: Optional[float]) -> str:
        return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"
    lines = [f"GPU: {result.get('device')}", "",
             "| d | t | η | dtype | product | ours fwd ms | ours scaled ms | own kernels ms | torch eager ms | "
             "torch graph ms | JAX ms | cuBLAS bound ms | torch-graph/ours | JAX/ours | ours/bound | "
             "max dev vs CPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        ours = row.get("cuda_forward_s")
        dev = row.get("max_rel_dev_cpu_forward")
        lines.append(
            f"| {row['d']} | {row['t']} | {row['step_sizes']} | {row['dtype']} | "
            f"{row.get('cuda_run', {}).get('product', '?')} | {ms_(ours)} | "
            f"{ms_(row.get('cuda_scaled_forward_s'))} | {ms_(row.get('cuda_forward_own_kernels_s'))} | "
            f"{ms_(row.get('torch_cuda_eager_s'))} | "
            f"{ms_(row.get('torch_cuda_graph_s'))} | {ms_(row.get('jax_cuda_s'))} | "
            f"{ms_(row.get('cublas_product_bound_s'))} | {r(row.get('torch_cuda_graph_s'), ours)} | "
            f"{r(row.get('jax_cuda_s'), ours)} | {r(ours, row.get('cublas_product_bound_s'))} | "
            f"{'—' if dev is None else f'{dev:.1e}'} |")
    return "\n".join(lines)
