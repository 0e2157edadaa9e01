"""metastep: learning to learn step sizes, with exact and range-safe meta-gradients.

Quick tour::

    import metastep as ms
    q = ms.random_quadratic(20, seed=0)
    r = ms.metagrad(q, 0.01, 80, objective="log", mode="exact")
    r.value, r.grad, r.status
"""
from . import _core
from ._validate import DTYPES
from .api import DEFAULT_MEMORY_LIMIT, MODES, OBJECTIVES, cuda_available, metagrad, resolve_mode, sgd_batches, unroll
from .problems import LeastSquares, Quadratic, random_least_squares, random_quadratic
from .results import MetaGradResult, UnrollResult
from . import data, learned  # learned optimizers (SPEC §7): metastep.learned, metastep.data

__version__: str = _core.__version__
#: Eigen version the compiled core was built against (from the pinned cmeel-eigen wheel).
EIGEN_VERSION: str = _core.eigen_version
#: Precisions compiled into this build.
PRECISIONS: tuple = tuple(_core.precisions)

__all__ = [
    "Quadratic", "LeastSquares", "random_quadratic", "random_least_squares",
    "unroll", "metagrad", "sgd_batches", "MetaGradResult", "UnrollResult",
    "MODES", "OBJECTIVES", "DTYPES", "PRECISIONS", "DEFAULT_MEMORY_LIMIT", "EIGEN_VERSION",
    "build_info", "cuda_available", "resolve_mode", "__version__", "data", "learned",
]


def build_info() -> dict:
    """Facts about the compiled core: version, Eigen version and location, precisions, CUDA."""
    count, reason = _core.cuda_device_count()
    return {
        "version": _core.__version__,
        "eigen_version": _core.eigen_version,
        "eigen_location": _core.eigen_location,
        "precisions": list(_core.precisions),
        "longdouble_mantissa_bits": _core.longdouble_mantissa_bits,
        "cuda_compiled": bool(_core.cuda_compiled),
        "cuda_devices": count,
        "cuda_reason": reason,
    }
