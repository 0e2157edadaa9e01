"""Shared fixtures: compiled precisions with tolerances derived from their epsilon."""
import numpy as np
import pytest

import metastep as ms

EPS = {
    "float32": float(np.finfo(np.float32).eps),
    "float64": float(np.finfo(np.float64).eps),
    "longdouble": float(np.finfo(np.longdouble).eps),
    "quad": 2.0 ** -112,
    "mp": 2.0 ** -255,
}
#: Precisions whose results fit a float64/long double comparison (the fast ones).
NATIVE = ("float32", "float64", "longdouble")


@pytest.fixture(params=list(NATIVE))
def dtype(request):
    return request.param


@pytest.fixture(params=[p for p in ms.PRECISIONS if p not in NATIVE])
def extended(request):
    return request.param


def rel_err(x, ref):
    x, ref = np.asarray(x, dtype=float), np.asarray(ref, dtype=float)
    return np.max(np.abs(x - ref) / np.maximum(np.abs(ref), 1e-300))


def pytest_terminal_summary(terminalreporter):
    """Print how many fuzz cases ran (tests/test_fuzz.py counts one per public call)."""
    import sys
    for name, mod in list(sys.modules.items()):
        if name.rsplit(".", 1)[-1] == "test_fuzz" and hasattr(mod, "CASES"):
            total = sum(mod.CASES.values())
            if total:
                terminalreporter.write_line(f"fuzz: {total} cases ({', '.join(f'{k} {v}' for k, v in sorted(mod.CASES.items()))})")
