"""The compiled core: Eigen from the pinned cmeel wheel, precisions, module facts."""
import re

import metastep as ms
from metastep import _core


def test_eigen_is_the_pinned_cmeel_version():
    # pyproject pins cmeel-eigen==3.4.1; a system Eigen must not be picked up silently.
    assert ms.EIGEN_VERSION == "3.4.1"
    assert "cmeel.prefix" in ms.build_info()["eigen_location"]


def test_pyproject_pin_matches_compiled_eigen():
    import pathlib
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.exists():  # tests run from an installed package elsewhere
        return
    pin = re.search(r'"cmeel-eigen==([0-9.]+)"', pyproject.read_text())
    assert pin is not None
    assert pin.group(1) == ms.EIGEN_VERSION


def test_precisions_and_facts():
    assert ms.PRECISIONS[:3] == ("float32", "float64", "longdouble") and ms.PRECISIONS[-1] == "mp"
    assert ms.PRECISIONS == ms.DTYPES
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        assert "quad" in ms.PRECISIONS      # GCC __float128 on x86-64
    assert _core.mp_bits >= 200
    info = ms.build_info()
    assert info["version"] == ms.__version__
    assert info["longdouble_mantissa_bits"] >= 64
    assert info["cuda_compiled"] in (True, False)
    assert _core.itemsize["float64"] == 8 and _core.itemsize.get("quad", 16) == 16
    count, reason = _core.cuda_device_count()
    assert count == 0 and reason


def test_no_libquadmath_dependency():
    """quad arithmetic needs libgcc only: the module must not import libquadmath symbols."""
    import pathlib
    import subprocess
    so = pathlib.Path(_core.__file__)
    try:
        out = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        import pytest
        pytest.skip("nm not available")
    quadmath = [line.split()[-1] for line in out.splitlines() if line.split()[-1].endswith("q")
                and line.split()[-1] in {"sqrtq", "logq", "expq", "log1pq", "powq", "quadmath_snprintf", "frexpq", "ldexpq"}]
    assert quadmath == []


def test_type_stub_matches_the_compiled_module():
    """python/metastep/_core.pyi declares exactly the names the compiled module exports."""
    import ast
    import pathlib

    import metastep
    stub = pathlib.Path(metastep.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    declared.discard("__all__")
    exported = {n for n in dir(_core) if not n.startswith("__")} | {"__version__"}
    assert declared == exported, (declared ^ exported)


def test_bench_quick_runs(tmp_path):
    """Benchmarks never run in the suite; only check that `metastep bench --quick` works."""
    import json
    import subprocess
    import sys
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "metastep", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["rows"] and data["roofline"]["gemm_gflops"] > 0
    assert "ratios" in proc.stdout or "faster" in proc.stdout


def _mypy_available():
    import importlib.util
    return importlib.util.find_spec("mypy") is not None


def test_mypy_passes_on_the_package():
    """`mypy` (configured in pyproject.toml [tool.mypy]) finds no error in python/metastep and its
    stub of the compiled core; skipped where mypy is not installed (it is in the `test` extra)."""
    import pathlib
    import subprocess
    import sys

    import pytest
    if not _mypy_available():
        pytest.skip("mypy not installed (pip install '.[test]')")
    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / "python" / "metastep" / "_core.pyi").exists():
        pytest.skip("needs the source tree (python/metastep)")
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_type_stub_agrees_with_the_compiled_module_under_stubtest(tmp_path):
    """mypy's stubtest compares _core.pyi with the imported extension (names, kinds, properties);
    tests/stubtest_allowlist.txt lists the pybind11 artefacts a stub cannot express."""
    import os
    import pathlib
    import subprocess
    import sys

    import pytest
    if not _mypy_available():
        pytest.skip("mypy not installed (pip install '.[test]')")
    allow = pathlib.Path(__file__).with_name("stubtest_allowlist.txt")
    pkg_parent = str(pathlib.Path(ms.__file__).resolve().parents[1])  # the metastep being tested
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "metastep._core", "--allowlist", str(allow),
                           "--mypy-config-file", os.devnull], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
