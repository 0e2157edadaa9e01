"""Input checking shared by the public API. Every check raises an exception naming the
argument and what is wrong with it; nothing is coerced silently except what the docs say
(any real numeric array is converted exactly to a C-contiguous float64 copy)."""
from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np

from . import _core

#: Precisions compiled into this build (quad needs GCC's __float128).
DTYPES = tuple(_core.precisions)

_DTYPE_ALIASES = {
    "float32": "float32", "single": "float32", "f4": "float32",
    "float64": "float64", "double": "float64", "f8": "float64",
    "longdouble": "longdouble", "long double": "longdouble",
    "quad": "quad", "binary128": "quad", "float128_ieee": "quad",
    "mp": "mp", "arbitrary": "mp",
}


def dtype_name(dtype: Any) -> str:
    """Normalise a precision argument to one of :data:`DTYPES`."""
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        if key in ("float128", "f16"):
            raise ValueError(
                f"dtype {dtype!r} is ambiguous: numpy's 'float128' is the 80-bit x87 long double on x86-64; "
                "use 'longdouble' for it, or 'quad' for IEEE binary128")
        if key in _DTYPE_ALIASES:
            name = _DTYPE_ALIASES[key]
            if name not in DTYPES:
                raise ValueError(f"dtype {dtype!r} is not compiled into this build; available: {', '.join(DTYPES)}")
            return name
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a string such as 'float64' or a numpy floating type, not {type(dtype).__name__}") from None
    if dt == np.float32:
        return "float32"
    if dt == np.float64:
        return "float64"
    if dt == np.longdouble:
        return "longdouble"
    raise ValueError(f"unsupported dtype {dt}; expected one of {', '.join(DTYPES)}")


def real_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """A finite, real, C-contiguous float64 copy of ``x`` with exactly ``ndim`` dimensions."""
    if x is None:
        raise TypeError(f"{name} is required")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, not {type(x).__name__}")
    try:
        a = np.asarray(x)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} must be a rectangular numeric array: {exc}") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        if a.dtype.kind == "c":
            raise TypeError(f"{name} must be real; got a complex array")
        raise TypeError(f"{name} must be a real numeric array; got dtype {a.dtype}")
    if a.dtype.kind == "b":
        raise TypeError(f"{name} must be a real numeric array; got booleans")
    if a.dtype == np.longdouble and a.size and not np.array_equal(a.astype(np.float64).astype(np.longdouble), a):
        raise ValueError(f"{name} has long double entries that are not exactly representable in float64; "
                         "inputs are taken as float64 arrays")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional; got shape {a.shape}")
    if any(s == 0 for s in a.shape):
        raise ValueError(f"{name} must not be empty; got shape {a.shape}")
    if a.dtype.kind in "iu" and a.size:
        with np.errstate(all="ignore"):
            exact = np.array_equal(a.astype(np.float64).astype(a.dtype), a) and np.all(np.abs(a.astype(np.float64)) < 2.0**63)
        if not exact:
            raise ValueError(f"{name} has integer entries that are not exactly representable in float64 "
                             f"(|x| > 2**53); inputs are taken as float64 arrays")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} contains NaN or inf (first at index {tuple(int(i) for i in bad)})")
    return a


def positive_int(x: Any, name: str, minimum: int = 1) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {type(x).__name__} {x!r}")
    v = int(x)
    if v < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {v}")
    if v > 2**62:
        raise ValueError(f"{name} = {v} is too large (at most 2**62)")
    return v


def step_sizes(eta: Any, name: str = "eta") -> tuple[np.ndarray, bool]:
    """(1-D float64 array of step sizes, whether a scalar was given)."""
    if isinstance(eta, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number or a 1-D array of them, not a boolean")
    scalar = np.ndim(eta) == 0
    if isinstance(eta, (str, bytes)):
        raise TypeError(f"{name} must be a real number or a 1-D array of them, not {type(eta).__name__}")
    try:
        a = np.asarray(eta)
    except ValueError as exc:
        raise ValueError(f"{name} must be a scalar or a 1-D array: {exc}") from None
    if a.dtype == object:  # e.g. Python ints beyond int64
        items = a.ravel().tolist()
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
            raise TypeError(f"{name} must be real; got an array of Python objects")
        a = np.array([float(v) for v in items], dtype=np.float64).reshape(a.shape)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real; got dtype {a.dtype}")
    if a.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array; got shape {a.shape}")
    a = np.ascontiguousarray(np.atleast_1d(a), dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite; got {a[~np.isfinite(a)][0]}")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative; got {a[a < 0][0]}")
    return a, scalar


def real_scalar(x: Any, name: str, minimum: float = 0.0) -> float:
    """A finite real number >= minimum (booleans and strings rejected)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(x).__name__} {x!r}")
    v = float(x)
    if not np.isfinite(v) or v < minimum:
        what = "non-negative" if minimum == 0 else f"at least {minimum:g}"
        raise ValueError(f"{name} must be finite and {what}; got {v}")
    return v


#: Largest finite value of each precision as a float64 (inf: beyond float64's range).
_RANGE_MAX = {"float32": float(np.finfo(np.float32).max)}


#: Smallest normal value of each precision narrower than float64.
_RANGE_MIN = {"float32": float(np.finfo(np.float32).tiny)}


def check_range(a: np.ndarray, name: str, dtype: str) -> None:
    """Inputs must be finite in the working precision (float32 is narrower than float64)."""
    top = _RANGE_MAX.get(dtype)
    if top is not None and a.size and float(np.max(np.abs(a))) > top:
        raise ValueError(f"{name} has entries beyond the largest {dtype} ({top:.4g}): they would become inf; "
                         f"use a wider dtype")


def check_step_range(a: np.ndarray, name: str, dtype: str, L: float = float("inf")) -> None:
    """Step sizes must also not vanish in the working precision: a non-zero η below the
    smallest normal float32 becomes 0 (or loses its digits) in a float32 run, which matters
    where η·L is not negligible (L: the largest curvature, which the exact mode keeps wider)."""
    check_range(a, name, dtype)
    low = _RANGE_MIN.get(dtype)
    if low is not None and a.size:
        with np.errstate(all="ignore"):
            tiny = (a != 0) & (np.abs(a) < low) & ~(np.abs(a) * L < np.finfo(np.float32).eps)
        if np.any(tiny):
            raise ValueError(f"{name} has non-zero entries below the smallest normal {dtype} ({low:.4g}), e.g. "
                             f"{a[tiny][0]!r}: they would round to 0 or lose precision; use a wider dtype")


def choice(x: Any, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(x, str) or x not in options:
        raise ValueError(f"unknown {name} {x!r}; expected one of {', '.join(repr(o) for o in options)}")
    return x


def optional_int(x: Optional[Any], name: str, minimum: int = 1) -> Optional[int]:
    return None if x is None else positive_int(x, name, minimum)
