"""Benchmarks: our modes against NumPy, JAX and PyTorch (each optional) and this machine's
roofline, side by side in one run; medians, ratios next to times, JSON output.

The workload is the one the issue tracker names: forward-mode dG/dη (and F') of t-step GD on a
dense d × d quadratic in float64, for one step size and for a batch of step sizes.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import api, problems

__all__ = ["run_bench", "roofline"]


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def roofline(d: int = 1000, repeats: int = 5) -> Dict[str, float]:
    """This machine's measured GEMM rate (GFLOP/s, NumPy's BLAS) and matrix-vector bandwidth
    (GB/s, streaming a d × d float64 matrix)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, d))
    B = rng.standard_normal((d, d))
    t_gemm = _median_time(lambda: A @ B, repeats)
    x = rng.standard_normal(d)
    t_gemv = _median_time(lambda: A @ x, max(repeats, 20))
    return {"gemm_gflops": 2.0 * d**3 / t_gemm / 1e9, "gemv_gbps": 8.0 * d * d / t_gemv / 1e9}


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


def _jax_forward(H: np.ndarray, w0: np.ndarray, eta: float, t: int) -> Optional[Callable[[], Any]]:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    Hj, wj = jnp.asarray(H), jnp.asarray(w0)

    def final(e):
        def body(w, _):
            return w - e * (Hj @ w), None
        w, _ = jax.lax.scan(body, wj, None, length=t)
        return 0.5 * w @ (Hj @ w)

    f = jax.jit(lambda e: jax.jvp(final, (e,), (jnp.ones_like(e),))[1])
    e = jnp.asarray(eta)
    return lambda: f(e).block_until_ready()


def _torch_forward(H: np.ndarray, w0: np.ndarray, eta: float, t: int) -> Optional[Callable[[], Any]]:
    try:
        import torch
    except ImportError:
        return None
    Ht, wt = torch.from_numpy(H), torch.from_numpy(w0)

    def run():
        e = torch.tensor(eta, dtype=torch.float64, requires_grad=True)
        w = wt
        for _ in range(t):
            w = w - e * (Ht @ w)
        loss = 0.5 * w @ (Ht @ w)
        loss.backward()
        return e.grad

    return run


def run_bench(quick: bool = False, out: Optional[str] = None, threads: Optional[int] = None,
              progress: bool = True) -> Dict[str, Any]:
    """Run the benchmark table; returns (and optionally writes as JSON) the measurements."""
    cases = [(100, 1000, 1), (1000, 1000, 1), (1000, 1000, 64)]
    repeats = 7
    if quick:
        cases, repeats = [(50, 100, 1), (100, 100, 8)], 3
    nthreads = api.default_threads() if threads is None else threads
    roof = roofline(300 if quick else 1000, repeats=3 if quick else 5)
    rows: List[Dict[str, Any]] = []
    for d, t, m in cases:
        p = _problem(d)
        etas = np.linspace(0.2, 1.8, m) / p.L if m > 1 else 0.5 / p.L
        row: Dict[str, Any] = {"d": d, "t": t, "step_sizes": m}
        for mode in ("forward", "scaled_forward", "reverse", "exact"):
            row[f"metastep_{mode}_s"] = _median_time(
                lambda mode=mode: api.metagrad(p, etas, t, mode=mode, threads=nthreads), repeats)
        H, w0 = np.ascontiguousarray(p.H), np.ascontiguousarray(p.w0)
        e0 = float(np.atleast_1d(etas)[0])
        reps_np = 1 if (d >= 1000 and m > 1) else repeats
        row["numpy_s"] = _median_time(lambda: [_numpy_forward(H, w0, float(e), t) for e in np.atleast_1d(etas)],
                                      reps_np)
        jf = _jax_forward(H, w0, e0, t) if m == 1 else None
        row["jax_s"] = _median_time(jf, repeats) if jf else None
        tf = _torch_forward(H, w0, e0, t) if m == 1 else None
        row["torch_s"] = _median_time(tf, repeats) if tf else None
        # roofline: each step reads H once (memory) and does 4 d^2 m flops (iterate and tangent)
        row["roofline_s"] = max(8.0 * d * d * t / (roof["gemv_gbps"] * 1e9),
                                4.0 * d * d * m * t / (roof["gemm_gflops"] * 1e9))
        rows.append(row)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "threads": nthreads},
        "roofline": roof, "rows": rows, "quick": quick,
    }
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def format_table(result: Dict[str, Any]) -> str:
    roof = result["roofline"]
    lines = [f"roofline here: GEMM {roof['gemm_gflops']:.1f} GFLOP/s, matrix-vector {roof['gemv_gbps']:.1f} GB/s; "
             f"threads {result['machine']['threads']}",
             f"{'case':<22}{'forward':>10}{'scaled':>10}{'reverse':>10}{'exact':>10}{'NumPy':>10}{'JAX':>10}"
             f"{'PyTorch':>10}{'roofline':>10}  fwd/NumPy fwd/JAX fwd/roof"]
    for r in result["rows"]:
        def ms_(x: Optional[float]) -> str:
            return f"{x * 1e3:9.2f}m" if x else f"{'—':>10}"
        fwd = r["metastep_forward_s"]
        ratio = lambda peer: f"{fwd / peer:7.2f}" if peer else "    —  "  # noqa: E731
        lines.append(f"d={r['d']:<5} t={r['t']:<5} m={r['step_sizes']:<3}"
                     f"{ms_(fwd)}{ms_(r['metastep_scaled_forward_s'])}{ms_(r['metastep_reverse_s'])}"
                     f"{ms_(r['metastep_exact_s'])}{ms_(r['numpy_s'])}{ms_(r['jax_s'])}{ms_(r['torch_s'])}"
                     f"{ms_(r['roofline_s'])}  {ratio(r['numpy_s'])} {ratio(r['jax_s'])} {ratio(r['roofline_s'])}")
    lines.append("times are medians in milliseconds (m); ratios < 1 mean metastep is faster")
    return "\n".join(lines)
