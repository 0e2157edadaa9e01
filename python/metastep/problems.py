"""Inner problems (SPEC §1): the convex quadratic and the least-squares task, validated on
construction, and the paper's random generators."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from . import _core
from ._validate import check_range, dtype_name, positive_int, real_array, real_scalar

__all__ = ["Quadratic", "LeastSquares", "random_quadratic", "random_least_squares"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _exact_matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B accumulated in long double by numpy's own loops (no BLAS), rounded to float64:
    the same bits on every run and every x86-64 machine, whatever BLAS is installed."""
    return (A.astype(np.longdouble) @ B.astype(np.longdouble)).astype(np.float64)


def _eigvalsh_scaled(H: np.ndarray, scale: float) -> np.ndarray:
    """Eigenvalues of symmetric H. Far from 1 in magnitude, H is first scaled by a power of two
    (exact), so that LAPACK neither overflows (entries near 1e308 would give inf or NaN) nor
    loses the tiny ones; an eigenvalue beyond float64's range comes back as ±inf."""
    if scale == 0.0 or 2.0 ** -500 < scale < 2.0 ** 500:
        return np.linalg.eigvalsh(H)
    p = float(np.frexp(scale)[1])
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(np.linalg.eigvalsh(np.ldexp(H, -int(p))), int(p))


class _Problem:
    """Shared machinery: compiled problem objects and spectra cached per precision."""

    def __init__(self) -> None:
        self._cores: Dict[str, Any] = {}
        self._spectra: Dict[str, Any] = {}

    def _make_core(self, dtype: str) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _core(self, dtype: str) -> Any:
        dtype = dtype_name(dtype)
        core = self._cores.get(dtype)
        if core is None:
            for name, arr in self._arrays().items():
                if arr is not None:
                    check_range(arr, name, dtype)
            core = self._cores.setdefault(dtype, self._make_core(dtype))
        return core

    def _arrays(self) -> Dict[str, Optional[np.ndarray]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _spectrum(self, dtype: str) -> Any:
        """Eigen-decomposition used by the exact mode (computed once per precision)."""
        dtype = dtype_name(dtype)
        sp = self._spectra.get(dtype)
        if sp is None:
            sp = getattr(_core, f"spectrum_{dtype}")(self._core(dtype))
            sp = self._spectra.setdefault(dtype, sp)
        return sp

    def _fast_spectrum(self, dtype: str) -> Any:
        """Eigenvalues and projections without eigenvectors (exact mode, refine=False)."""
        dtype = dtype_name(dtype)
        key = "fast_" + dtype
        sp = self._spectra.get(key)
        if sp is None:
            sp = getattr(_core, f"fast_spectrum_{dtype}")(self._core(dtype))
            sp = self._spectra.setdefault(key, sp)
        return sp

    @property
    def has_valid(self) -> bool:
        """Whether the problem has a validation set (only least squares can have one)."""
        return False


class Quadratic(_Problem):
    """f(w) = ½ (w − w*)ᵀ H (w − w*) with H symmetric positive semi-definite.

    Parameters
    ----------
    H : array_like, shape (d, d)
        Symmetric PSD matrix. Asymmetry up to ``sym_rtol · max|H|`` is accepted and removed
        by averaging with the transpose; larger asymmetry raises. Eigenvalues below
        ``−psd_rtol · max|λ|`` raise.
    w0 : array_like, shape (d,)
        Starting point of gradient descent.
    w_star : array_like, shape (d,), optional
        Minimiser (default 0).
    """

    def __init__(self, H: Any, w0: Any, w_star: Any = None, *, sym_rtol: float = 1e-10,
                 psd_rtol: Optional[float] = None) -> None:
        super().__init__()
        sym_rtol = real_scalar(sym_rtol, "sym_rtol")
        if psd_rtol is not None:
            psd_rtol = real_scalar(psd_rtol, "psd_rtol")
        H = real_array(H, "H", 2)
        if H.shape[0] != H.shape[1]:
            raise ValueError(f"H must be square; got shape {H.shape}")
        d = H.shape[0]
        scale = float(np.max(np.abs(H)))
        with np.errstate(over="ignore"):
            asym = float(np.max(np.abs(H - H.T)))
        if asym > sym_rtol * scale:
            raise ValueError(f"H is not symmetric: max|H - H^T| = {asym:.3g} exceeds {sym_rtol:g} * max|H| = "
                             f"{sym_rtol * scale:.3g}")
        if asym > 0:
            H = 0.5 * H + 0.5 * H.T
        eig = _eigvalsh_scaled(H, scale)
        top = float(np.max(np.abs(eig))) if eig.size else 0.0
        tol = (psd_rtol if psd_rtol is not None else 100 * d * np.finfo(np.float64).eps) * top
        if eig[0] < -tol:
            raise ValueError(f"H is not positive semi-definite: smallest eigenvalue {eig[0]:.6g} < -{tol:.3g}")
        w0 = real_array(w0, "w0", 1)
        if w0.shape != (d,):
            raise ValueError(f"w0 must have shape ({d},) to match H; got {w0.shape}")
        if w_star is None:
            w_star = np.zeros(d)
        w_star = real_array(w_star, "w_star", 1)
        if w_star.shape != (d,):
            raise ValueError(f"w_star must have shape ({d},) to match H; got {w_star.shape}")
        self.H = _frozen(H)
        self.w0 = _frozen(w0)
        self.w_star = _frozen(w_star)
        self.eigenvalues = _frozen(np.clip(eig, 0.0, None))

    @property
    def d(self) -> int:
        """Dimension d of w."""
        return int(self.H.shape[0])

    @property
    def L(self) -> float:
        """Largest eigenvalue of H (smoothness); GD is stable for 0 < η < 2/L."""
        return float(self.eigenvalues[-1])

    @property
    def alpha(self) -> float:
        """Smallest eigenvalue of H."""
        return float(self.eigenvalues[0])

    def L_estimate(self, iterations: int = 30) -> float:
        """Largest eigenvalue (known exactly for a quadratic)."""
        return self.L

    def loss(self, w: Any) -> float:
        """f(w) in float64."""
        e = real_array(w, "w", 1) - self.w_star
        return float(0.5 * e @ self.H @ e)

    def _arrays(self) -> Dict[str, Optional[np.ndarray]]:
        return {"H": self.H, "w0": self.w0, "w_star": self.w_star}

    def _make_core(self, dtype: str) -> Any:
        return getattr(_core, f"Quadratic_{dtype}")(self.H, self.w0, self.w_star)

    def __repr__(self) -> str:
        return f"Quadratic(d={self.d}, L={self.L:.4g}, alpha={self.alpha:.4g})"


class LeastSquares(_Problem):
    """One least-squares task: f(w) = 1/(2n) ‖Xw − y‖², optionally with a validation set.

    Parameters
    ----------
    X : array_like, shape (n, d)
    y : array_like, shape (n,)
    X_valid, y_valid : array_like, optional
        Validation set (both or neither), used by ``on="valid"`` (train-by-validation).
    w0 : array_like, shape (d,), optional
        Starting point (default 0, as in the paper).
    """

    def __init__(self, X: Any, y: Any, X_valid: Any = None, y_valid: Any = None, w0: Any = None) -> None:
        super().__init__()
        X = real_array(X, "X", 2)
        n, d = X.shape
        y = real_array(y, "y", 1)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match X; got {y.shape}")
        if (X_valid is None) != (y_valid is None):
            raise ValueError("X_valid and y_valid must be given together")
        if X_valid is not None:
            X_valid = real_array(X_valid, "X_valid", 2)
            if X_valid.shape[1] != d:
                raise ValueError(f"X_valid must have {d} columns to match X; got shape {X_valid.shape}")
            y_valid = real_array(y_valid, "y_valid", 1)
            if y_valid.shape != (X_valid.shape[0],):
                raise ValueError(f"y_valid must have shape ({X_valid.shape[0]},) to match X_valid; got {y_valid.shape}")
            X_valid, y_valid = _frozen(X_valid), _frozen(y_valid)
        w0 = np.zeros(d) if w0 is None else real_array(w0, "w0", 1)
        if w0.shape != (d,):
            raise ValueError(f"w0 must have shape ({d},) to match X; got {w0.shape}")
        self.X, self.y, self.w0 = _frozen(X), _frozen(y), _frozen(w0)
        self.X_valid, self.y_valid = X_valid, y_valid
        self._L: Optional[float] = None
        self._L_est: Optional[float] = None
        # Filled in by random_least_squares (ground truth of a generated task).
        self.w_star: Optional[np.ndarray] = None
        self.sigma: Optional[float] = None
        self.X_test: Optional[np.ndarray] = None
        self.y_test: Optional[np.ndarray] = None

    # Attached by metastep.tasks.TaskFamily.task to the tasks it builds (absent otherwise).
    u: np.ndarray
    radius: float
    sgd_seed: int
    index: int

    @property
    def n(self) -> int:
        """Number of training rows n."""
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        """Dimension d of w (columns of X)."""
        return int(self.X.shape[1])

    @property
    def n_valid(self) -> int:
        """Number of validation rows (0 without a validation set)."""
        return 0 if self.X_valid is None else int(self.X_valid.shape[0])

    @property
    def has_valid(self) -> bool:
        """Whether a validation set was given."""
        return self.X_valid is not None

    @property
    def L(self) -> float:
        """Largest eigenvalue of XᵀX/n; GD is stable for 0 < η < 2/L."""
        if self._L is None:
            with np.errstate(over="ignore", under="ignore"):  # beyond float64's range: inf
                self._L = float(np.linalg.norm(self.X, 2) ** 2 / self.n)
        return self._L

    def L_estimate(self, iterations: int = 30) -> float:
        """L from a few power iterations on XᵀX/n (O(iterations·n·d), no decomposition); a
        lower bound that is usually within a few percent. Cached; exact once :attr:`L` is known."""
        if self._L is not None:
            return self._L
        if self._L_est is None:
            v = np.random.default_rng(0).standard_normal(self.d)
            lam = 0.0
            with np.errstate(all="ignore"):
                for _ in range(iterations):
                    u = self.X.T @ (self.X @ v) / self.n
                    lam = float(np.linalg.norm(u))
                    if lam == 0.0 or not np.isfinite(lam):
                        break
                    v = u / lam
            # outside float64's comfortable range the power iteration over/underflows: take the
            # exact value (an SVD, which scales internally)
            self._L_est = lam if np.isfinite(lam) and (lam == 0.0 or 1e-280 < lam < 1e280) else self.L
        return self._L_est

    def loss(self, w: Any, on: str = "train") -> float:
        """Training (or validation) loss at w in float64."""
        w = real_array(w, "w", 1)
        X, y = (self.X, self.y) if on == "train" else (self.X_valid, self.y_valid)
        if X is None:
            raise ValueError("this task has no validation set")
        r = X @ w - y
        return float(r @ r / (2 * len(y)))

    def _arrays(self) -> Dict[str, Optional[np.ndarray]]:
        return {"X": self.X, "y": self.y, "X_valid": self.X_valid, "y_valid": self.y_valid, "w0": self.w0}

    def _make_core(self, dtype: str) -> Any:
        return getattr(_core, f"LeastSquares_{dtype}")(self.X, self.y, self.X_valid, self.y_valid, self.w0)

    def __repr__(self) -> str:
        return f"LeastSquares(n={self.n}, d={self.d}, n_valid={self.n_valid})"


def random_quadratic(d: int, seed: int) -> Quadratic:
    """The paper's random quadratic: H = XᵀX with X ∈ R^{d×d} i.i.d. N(0, 1), w₀ ~ N(0, I), w* = 0.

    The same ``seed`` gives bit-identical problems on every run (the Gram matrix is formed
    without BLAS, in long double, and rounded once).
    """
    d = positive_int(d, "d")
    seed = positive_int(seed, "seed", minimum=0)
    from .api import memory_guard_bytes
    # X, H and the long-double product (16 bytes a value) and its float64 rounding
    memory_guard_bytes(f"random_quadratic({d})", 48 * d * d, None, "use a smaller d")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, d))
    w0 = rng.standard_normal(d)
    return Quadratic(_exact_matmul(X.T, X), w0)


def random_least_squares(d: int, n: int, sigma: float, seed: int, n_valid: int = 0,
                         n_test: int = 0) -> LeastSquares:
    """The paper's least-squares task: w* uniform on the unit sphere of R^d, rows x ~ N(0, I_d),
    y = ⟨w*, x⟩ + ξ with ξ ~ N(0, σ²), w₀ = 0.

    Returns a :class:`LeastSquares` with ``n`` training rows and ``n_valid`` validation rows;
    ``w_star``, ``sigma``, ``X_test`` and ``y_test`` (``n_test`` rows, or None) are attached.
    """
    d = positive_int(d, "d")
    n = positive_int(n, "n")
    n_valid = positive_int(n_valid, "n_valid", minimum=0)
    n_test = positive_int(n_test, "n_test", minimum=0)
    seed = positive_int(seed, "seed", minimum=0)
    sigma = real_scalar(sigma, "sigma")
    from .api import memory_guard_bytes
    # the rows (float64) and their long-double products, for training, validation and test
    memory_guard_bytes(f"random_least_squares(d={d}, n={n}, n_valid={n_valid}, n_test={n_test})",
                       40 * (n + n_valid + n_test) * (d + 1), None, "use fewer rows or a smaller d")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(d)
    w_star = g / np.sqrt(np.sum(g * g))

    def sample(m: int) -> tuple[np.ndarray, np.ndarray]:
        Xs = rng.standard_normal((m, d))
        ys = _exact_matmul(Xs, w_star[:, None])[:, 0] + sigma * rng.standard_normal(m)
        return Xs, ys

    X, y = sample(n)
    Xv, yv = sample(n_valid) if n_valid else (None, None)
    Xt, yt = sample(n_test) if n_test else (None, None)
    task = LeastSquares(X, y, Xv, yv)
    task.w_star = _frozen(w_star)
    task.sigma = sigma
    task.X_test = None if Xt is None else _frozen(Xt)
    task.y_test = None if yt is None else _frozen(yt)
    return task
