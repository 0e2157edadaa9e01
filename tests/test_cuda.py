"""The CUDA path: it compiles wherever nvcc is (the development machines), the extension
imports without a GPU and says why it cannot run, and where a GPU is present its batched
forward and scaled modes agree with the CPU."""
import functools
import os
import shutil
import subprocess

import numpy as np
import pytest

import metastep as ms
from metastep import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_GPU = ms.cuda_available()[0]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_sources_compile(tmp_path):
    src = os.path.join(ROOT, "cpp", "cuda", "batched.cu")
    if not os.path.exists(src):
        pytest.skip("CUDA sources not in this tree (installed package)")
    out = tmp_path / "batched.o"
    # nvcc runs without a preloaded sanitizer runtime (scripts/sanitize.sh preloads ASan for the
    # interpreter; the compiler is not instrumented and crashes under it)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(["nvcc", "-std=c++17", "-O2", "-arch=sm_90", "-c", src, "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_cuda_status_is_reported():
    ok, why = ms.cuda_available()
    info = ms.build_info()
    assert info["cuda_compiled"] == bool(_core.cuda_compiled)
    assert ok == (info["cuda_devices"] > 0)
    if not ok:
        assert why  # a reason, never a silent failure
        q = ms.random_quadratic(8, seed=0)
        with pytest.raises(RuntimeError, match="device='cuda' unavailable"):
            ms.metagrad(q, 0.01, 10, mode="forward", device="cuda")


def test_cuda_arguments_are_checked():
    q = ms.random_quadratic(8, seed=0)
    ls = ms.random_least_squares(8, 5, 0.5, seed=0)
    with pytest.raises(ValueError, match="device"):
        ms.metagrad(q, 0.01, 10, device="tpu")
    with pytest.raises(ValueError, match="quadratics"):
        ms.metagrad(ls, 0.01, 10, device="cuda")
    with pytest.raises(ValueError, match="float32 or float64"):
        ms.metagrad(q, 0.01, 10, device="cuda", dtype="longdouble")
    with pytest.raises(ValueError, match="modes"):
        ms.metagrad(q, 0.01, 10, device="cuda", mode="reverse")
    with pytest.raises(ValueError, match="constant step sizes"):
        ms.metagrad(q, schedule=np.full(10, 0.01), device="cuda")


@pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device")
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-11), ("float32", 2e-3)])
@pytest.mark.parametrize("mode", ["forward", "scaled"])
def test_cuda_matches_cpu(dtype, rtol, mode):
    for d, seed in ((7, 1), (100, 2), (300, 3)):
        q = ms.random_quadratic(d, seed=seed)
        etas = np.linspace(0.05, 1.95, 37) / q.L
        for objective in ("final", "log"):
            gpu = ms.metagrad(q, etas, 200, mode=mode, dtype=dtype, objective=objective, device="cuda")
            cpu = ms.metagrad(q, etas, 200, mode=mode, dtype=dtype, objective=objective)
            np.testing.assert_allclose(gpu.grad, cpu.grad, rtol=rtol)
            np.testing.assert_allclose(gpu.value, cpu.value, rtol=rtol)


@pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device")
def test_cuda_scaled_far_outside_range_and_plain_failure():
    q = ms.Quadratic(np.diag(np.geomspace(0.01, 1.0, 100)), np.ones(100))
    etas = np.array([0.5, 1.5, 2.5])
    for dtype in ("float32", "float64"):
        gpu = ms.metagrad(q, etas, 10000, mode="scaled", dtype=dtype, objective="log", device="cuda")
        ref = ms.metagrad(q, etas, 10000, mode="exact", objective="log", dtype="longdouble")
        np.testing.assert_allclose(gpu.grad, ref.grad, rtol=1e-3 if dtype == "float32" else 1e-9)
    plain = ms.metagrad(q, 2.5, 1000, mode="forward", device="cuda")
    assert plain.status.startswith("non-finite: ")
    assert plain.status == ms.metagrad(q, 2.5, 1000, mode="forward").status.split(" at ")[0] + " at " + \
        plain.status.split(" at ")[1]


@pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device")
@pytest.mark.parametrize("gemm", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_every_kernel_matches_cpu(monkeypatch, gemm, graph):
    """Each product kernel (simple tiles, register-blocked tiles, split-k skinny), with and without
    graph replay, on shapes that are not multiples of the tiles, batches that take the skinny
    kernel (1-8 step sizes), the wide one (37) and the 9-16 case (skinny only for the final
    product's width), a non-zero minimiser, and t not a multiple of the graph chunk."""
    if gemm == 4 and not _cublas_loads():
        pytest.skip("cuBLAS does not load here")
    for dtype, rtol in (("float64", 1e-11), ("float32", 2e-3)):
        orig = getattr(_core, f"cuda_forward_{dtype}")
        monkeypatch.setattr(_core, f"cuda_forward_{dtype}",
                            functools.partial(orig, gemm=gemm, graph=graph, cublas=ms.api.cublas_library()))
        for d, m, seed in ((1, 1, 0), (5, 3, 1), (130, 1, 2), (200, 8, 3), (257, 12, 4), (150, 37, 5)):
            q = ms.random_quadratic(d, seed=seed)
            q = ms.Quadratic(q.H, q.w0, w_star=np.linspace(-1.0, 1.0, d))
            etas = np.linspace(0.05, 1.95, m) / q.L
            for mode in ("forward", "scaled"):
                gpu = ms.metagrad(q, etas, 203, mode=mode, dtype=dtype, objective="log", device="cuda")
                cpu = ms.metagrad(q, etas, 203, mode=mode, dtype=dtype, objective="log")
                # plain forward mode in float32 forms w - w* as w converges to w*: both sides lose
                # digits to that cancellation (the scaled mode iterates on w - w* and does not)
                tol = 2e-2 if (dtype == "float32" and mode == "forward") else rtol
                np.testing.assert_allclose(gpu.grad, cpu.grad, rtol=tol, err_msg=f"{dtype} d={d} m={m} {mode}")
                np.testing.assert_allclose(gpu.value, cpu.value, rtol=tol, err_msg=f"{dtype} d={d} m={m} {mode}")
                run = gpu.diagnostics[0]["cuda"]  # an array of step sizes: one dict per step size
                expect = {1: "simple tiles", 2: "register-blocked tiles", 4: "cuBLAS"}
                if gemm in expect:
                    assert run["product"] == expect[gemm]
                assert run["graph"] == graph
        monkeypatch.undo()


def _cublas_loads():
    q = ms.random_quadratic(3, seed=0)
    try:
        _core.cuda_forward_float64(np.ascontiguousarray(q.H), q.w0, q.w_star, np.array([0.1]), 2, False, "final",
                                   gemm=4, cublas=ms.api.cublas_library())
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device")
def test_cuda_divergence_is_reported_at_the_cpu_step():
    """A step size far beyond 2/L: the first non-finite quantity and its step are reported, the
    same as on the CPU (float32 overflows within tens of steps, float64 within hundreds)."""
    q = ms.random_quadratic(50, seed=4)
    for dtype in ("float32", "float64"):
        gpu = ms.metagrad(q, 50.0 / q.L, 400, mode="forward", dtype=dtype, device="cuda")
        cpu = ms.metagrad(q, 50.0 / q.L, 400, mode="forward", dtype=dtype)
        assert gpu.status.startswith("non-finite")
        assert gpu.status == cpu.status


@pytest.mark.skipif(not _core.cuda_compiled, reason="CUDA path not compiled")
def test_cuda_kernel_choice_is_checked():
    q = ms.random_quadratic(4, seed=0)
    H = np.ascontiguousarray(q.H)
    with pytest.raises(ValueError, match="gemm"):
        _core.cuda_forward_float64(H, q.w0, q.w_star, np.array([0.1]), 10, False, "final", gemm=7)
    with pytest.raises(ValueError, match="square"):
        _core.cuda_forward_float64(np.ones((3, 4)), q.w0, q.w_star, np.array([0.1]), 10, False, "final")
