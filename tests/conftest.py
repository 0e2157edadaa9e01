"""Shared fixtures: compiled precisions with tolerances derived from their epsilon."""
import numpy as np
import pytest

import metastep as ms

EPS = {
    "float32": float(np.finfo(np.float32).eps),
    "float64": float(np.finfo(np.float64).eps),
    "longdouble": float(np.finfo(np.longdouble).eps),
}


@pytest.fixture(params=list(ms.PRECISIONS))
def dtype(request):
    return request.param


def rel_err(x, ref):
    x, ref = np.asarray(x, dtype=float), np.asarray(ref, dtype=float)
    return np.max(np.abs(x - ref) / np.maximum(np.abs(ref), 1e-300))
