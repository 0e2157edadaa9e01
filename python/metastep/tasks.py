"""Seeded families of least-squares tasks (SPEC §1.2, §1.3).

A :class:`TaskFamily` describes m tasks of the paper's generator: w* uniform on the unit
sphere of R^d, rows x ~ N(0, I_d), labels y = ⟨w*, x⟩ + σξ with ξ ~ N(0, 1), inner GD from
w₀ = 0. Each task has ``n`` training rows, then ``n_valid`` validation rows, and optionally
``n_test`` held-out test rows; with the truncation rule on (the paper's default) training on a
task stops the first time ‖w_τ‖ ≥ 40σ and the iterate is frozen at 40σ·u, u a seeded unit
vector of the task.

Determinism and common random numbers
-------------------------------------
Task k of a family is drawn from its own NumPy generators (``default_rng`` on a
``SeedSequence(seed, spawn_key=(stream, k, part))``), one per part: the direction w*, the
truncation direction u, the rows, the noise ξ and the test set.  Consequences:

* the same ``(seed, stream, k)`` gives bit-identical tasks on every run and machine (the
  noise-free labels X w* are accumulated in long double without BLAS and rounded once);
* the tasks do not depend on σ (y = X w* + σξ with the same X, w*, ξ for every σ), nor on m
  (task k is the same in a family of 10 or of 300 tasks);
* rows are *prefix-consistent*: the first r rows (and noise values) are the same whatever the
  total number of rows, so ``TaskFamily(d, 500)``, ``TaskFamily(d, 250, n_valid=250)`` and the
  first 500 rows of ``TaskFamily(d, 8000)`` are the same data, partitioned differently.  This
  is what lets train-by-train and train-by-validation, every σ and every sample size be
  compared on the *same* tasks (common random numbers).

``stream`` separates independent collections drawn from one seed: the paper's meta-training
tasks use ``stream="train"`` and the fresh evaluation tasks ``stream="test"``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Union, overload

import numpy as np

from ._validate import positive_int, real_scalar
from .problems import LeastSquares

__all__ = ["TaskFamily", "TaskData", "TRUNCATION_FACTOR", "paper_family", "stream_code", "truncation_radius"]

#: The paper's truncation threshold: ‖w_τ‖ ≥ 40σ stops training on a task.
TRUNCATION_FACTOR = 40.0

_PART_WSTAR, _PART_U, _PART_ROWS, _PART_NOISE, _PART_TEST, _PART_TEST_NOISE, _PART_SGD = range(7)


def stream_code(stream: Union[int, str]) -> int:
    """The integer spawn key of a stream name ("train" → 0, "test" → 1, other strings → CRC32)."""
    if isinstance(stream, (bool, np.bool_)):
        raise TypeError("stream must be an int or a string")
    if isinstance(stream, (int, np.integer)):
        if int(stream) < 0:
            raise ValueError(f"stream must be non-negative; got {stream}")
        return int(stream)
    if not isinstance(stream, str):
        raise TypeError(f"stream must be an int or a string, not {type(stream).__name__}")
    return {"train": 0, "test": 1}.get(stream, 2 + zlib.crc32(stream.encode()))


def truncation_radius(sigma: float, factor: float = TRUNCATION_FACTOR) -> float:
    """Norm at which the truncation rule freezes a task (40σ); inf (no truncation) for σ = 0."""
    return float(factor * sigma) if sigma > 0 else float("inf")


def _exact_matvec(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """X @ w accumulated in long double by numpy's own (sequential, non-BLAS) dot loop and
    rounded once to float64: the same bits on every run and every x86-64 machine."""
    return np.dot(X.astype(np.longdouble), w.astype(np.longdouble)).astype(np.float64)


def _rng(seed: int, stream: int, k: int, part: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, k, part)))


def _unit(g: np.ndarray) -> np.ndarray:
    return g / np.sqrt(np.sum(g * g))


@overload
def _ro(a: np.ndarray) -> np.ndarray: ...


@overload
def _ro(a: None) -> None: ...


def _ro(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """``a`` made read-only (None passes through)."""
    if a is not None:
        a.setflags(write=False)
    return a


@dataclass(frozen=True, repr=False)
class TaskData:
    """The σ-free draw of one task: everything random about it.

    Attributes
    ----------
    index : task number k in its family
    w_star, u : unit vectors of R^d (the target and the truncation direction)
    X : (N, d) rows, training rows first (N = n + n_valid)
    y_clean : (N,) the noise-free labels X w* (long-double accumulation, rounded once)
    xi : (N,) standard normal label noise; the labels at noise level σ are ``y_clean + σ·xi``
    X_test, y_test_clean, xi_test : the held-out test rows (None when n_test = 0)
    sgd_seed : the task's seed for :func:`metastep.sgd_batches`
    """

    index: int
    w_star: np.ndarray
    u: np.ndarray
    X: np.ndarray
    y_clean: np.ndarray
    xi: np.ndarray
    X_test: Optional[np.ndarray]
    y_test_clean: Optional[np.ndarray]
    xi_test: Optional[np.ndarray]
    sgd_seed: int

    def y(self, sigma: float) -> np.ndarray:
        """Labels at noise level σ (all N rows)."""
        return self.y_clean + sigma * self.xi

    def y_test(self, sigma: float) -> Optional[np.ndarray]:
        """Test labels at noise level σ (None without test rows)."""
        if self.X_test is None or self.y_test_clean is None or self.xi_test is None:
            return None
        return self.y_test_clean + sigma * self.xi_test

    def __repr__(self) -> str:
        nt = 0 if self.X_test is None else self.X_test.shape[0]
        return f"TaskData(index={self.index}, rows={self.X.shape[0]}, d={self.X.shape[1]}, n_test={nt})"


@dataclass(frozen=True)
class TaskFamily:
    """m seeded least-squares tasks of the paper's generator (SPEC §1.2–§1.3).

    Parameters
    ----------
    d : dimension
    n : training rows per task (the inner optimizer trains on these)
    n_valid : validation rows per task (train-by-validation measures the meta-objective on them)
    n_test : held-out test rows per task (for evaluation; 0 for none)
    sigma : label-noise level σ (the tasks themselves do not depend on it, see the module doc)
    m : number of tasks
    seed : seed of the family
    stream : independent collection drawn from the same seed ("train", "test", or an int)
    truncate : apply the paper's truncation rule (freeze at 40σ·u once ‖w_τ‖ ≥ 40σ)
    truncation_factor : the 40 of the rule

    Examples
    --------
    >>> fam = TaskFamily(d=1000, n=250, n_valid=250, sigma=1.0, m=300, seed=0)
    >>> task = fam.task(0)            # a metastep.LeastSquares with a validation set
    >>> same_rows = fam.with_split(500, 0).data(0).X   # the same 500 rows, all for training
    """

    d: int
    n: int
    n_valid: int = 0
    n_test: int = 0
    sigma: float = 1.0
    m: int = 1
    seed: int = 0
    stream: Union[int, str] = "train"
    truncate: bool = True
    truncation_factor: float = TRUNCATION_FACTOR

    def __post_init__(self) -> None:
        positive_int(self.d, "d")
        positive_int(self.n, "n")
        positive_int(self.n_valid, "n_valid", minimum=0)
        positive_int(self.n_test, "n_test", minimum=0)
        positive_int(self.m, "m")
        positive_int(self.seed, "seed", minimum=0)
        real_scalar(self.sigma, "sigma")
        real_scalar(self.truncation_factor, "truncation_factor")
        stream_code(self.stream)
        if not isinstance(self.truncate, (bool, np.bool_)):
            raise TypeError("truncate must be True or False")

    # ----------------------------------------------------------------- variants
    @property
    def rows(self) -> int:
        """Rows drawn per task (training + validation)."""
        return self.n + self.n_valid

    @property
    def stream_key(self) -> int:
        """The integer code of the family's random stream (the seed-sequence key)."""
        return stream_code(self.stream)

    def with_sigma(self, sigma: float) -> "TaskFamily":
        """The same tasks at another noise level."""
        return dataclasses.replace(self, sigma=float(sigma))

    def with_split(self, n: int, n_valid: int = 0) -> "TaskFamily":
        """The same rows partitioned differently (prefix-consistent: rows 0..n-1 train)."""
        return dataclasses.replace(self, n=n, n_valid=n_valid)

    def with_m(self, m: int) -> "TaskFamily":
        """The same family with m tasks (task k is the same draw in both)."""
        return dataclasses.replace(self, m=m)

    def fresh(self, m: int, stream: Union[int, str] = "test", n_test: Optional[int] = None) -> "TaskFamily":
        """m new tasks of the same shape from an independent stream (the paper's test tasks)."""
        return dataclasses.replace(self, m=m, stream=stream, n_test=self.n_test if n_test is None else n_test)

    @property
    def radius(self) -> float:
        """Truncation radius 40σ (inf when truncation is off or σ = 0)."""
        return truncation_radius(self.sigma, self.truncation_factor) if self.truncate else float("inf")

    def radius_at(self, sigma: float) -> float:
        """Truncation radius at label noise σ (inf when the family does not truncate)."""
        return truncation_radius(sigma, self.truncation_factor) if self.truncate else float("inf")

    # ----------------------------------------------------------------- drawing
    def data(self, k: int, rows: Optional[int] = None, n_test: Optional[int] = None) -> TaskData:
        """The σ-free draw of task k (``rows`` defaults to n + n_valid, ``n_test`` to the family's)."""
        k = positive_int(k, "k", minimum=0)
        if k >= self.m:
            raise IndexError(f"task index {k} out of range for a family of m = {self.m} tasks")
        rows = self.rows if rows is None else positive_int(rows, "rows")
        n_test = self.n_test if n_test is None else positive_int(n_test, "n_test", minimum=0)
        s, st, d = self.seed, self.stream_key, self.d
        w_star = _unit(_rng(s, st, k, _PART_WSTAR).standard_normal(d))
        u = _unit(_rng(s, st, k, _PART_U).standard_normal(d))
        X = _rng(s, st, k, _PART_ROWS).standard_normal((rows, d))
        xi = _rng(s, st, k, _PART_NOISE).standard_normal(rows)
        y_clean = _exact_matvec(X, w_star)
        Xt: Optional[np.ndarray]
        xit: Optional[np.ndarray]
        yt: Optional[np.ndarray]
        if n_test:
            Xt = _rng(s, st, k, _PART_TEST).standard_normal((n_test, d))
            xit = _rng(s, st, k, _PART_TEST_NOISE).standard_normal(n_test)
            yt = _exact_matvec(Xt, w_star)
        else:
            Xt = xit = yt = None
        sgd_seed = int(np.random.SeedSequence(s, spawn_key=(st, k, _PART_SGD)).generate_state(1, np.uint64)[0] >> 2)
        return TaskData(k, _ro(w_star), _ro(u), _ro(X), _ro(y_clean), _ro(xi), _ro(Xt), _ro(yt), _ro(xit), sgd_seed)

    def task(self, k: int, sigma: Optional[float] = None) -> LeastSquares:
        """Task k as a :class:`metastep.LeastSquares` (validation set when n_valid > 0).

        Attached: ``w_star``, ``sigma``, ``u`` (truncation direction), ``radius`` (40σ or inf),
        ``X_test``/``y_test`` (or None), ``sgd_seed`` and ``index``.
        """
        sigma = self.sigma if sigma is None else real_scalar(sigma, "sigma")
        td = self.data(k)
        y = td.y(sigma)
        n = self.n
        if self.n_valid:
            p = LeastSquares(td.X[:n], y[:n], td.X[n:], y[n:])
        else:
            p = LeastSquares(td.X[:n], y[:n])
        p.w_star = td.w_star
        p.sigma = float(sigma)
        p.u = td.u
        p.radius = self.radius_at(sigma)
        p.X_test = td.X_test
        p.y_test = _ro(td.y_test(sigma))
        p.sgd_seed = td.sgd_seed
        p.index = k
        return p

    def tasks(self, sigma: Optional[float] = None) -> Iterator[LeastSquares]:
        """The m tasks in order, as :meth:`task` builds them."""
        for k in range(self.m):
            yield self.task(k, sigma)

    def __len__(self) -> int:
        return self.m

    def fingerprint(self, tasks: Optional[int] = None) -> str:
        """SHA-256 of the raw draws of the first ``tasks`` tasks (all by default): equal
        fingerprints mean bit-identical tasks."""
        h = hashlib.sha256()
        for k in range(self.m if tasks is None else min(tasks, self.m)):
            td = self.data(k)
            for a in (td.w_star, td.u, td.X, td.y_clean, td.xi, td.X_test, td.y_test_clean, td.xi_test):
                if a is not None:
                    h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(td.sgd_seed).encode())
        return h.hexdigest()


def paper_family(method: str = "tbv", *, d: int = 1000, n_total: int = 500, sigma: float = 1.0, m: int = 300,
                 seed: int = 0, stream: Union[int, str] = "train", n_test: int = 0,
                 truncate: bool = True) -> TaskFamily:
    """The paper's least-squares family (E3): train-by-train trains on all ``n_total`` rows,
    train-by-validation on the first half and validates on the second half (the same rows)."""
    if method == "tbt":
        return TaskFamily(d, n_total, 0, n_test, sigma, m, seed, stream, truncate)
    if method == "tbv":
        if n_total < 2:
            raise ValueError("train-by-validation needs at least 2 rows")
        h = n_total // 2
        return TaskFamily(d, h, n_total - h, n_test, sigma, m, seed, stream, truncate)
    raise ValueError(f"unknown method {method!r}; expected 'tbt' or 'tbv'")

