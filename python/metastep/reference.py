"""Independent high-precision oracle for the meta-gradients of unrolled gradient descent.

This module is deliberately separate from the C++ engine: it shares no code with it and uses
:mod:`mpmath` (arbitrary precision, unbounded exponent) for all arithmetic, so tests can hold the
engine's results against numbers that are correct to (at least) ``prec`` bits, 256 by default.
NumPy is only used to read and check the inputs and to get a float64 starting guess for the
eigenvectors; every input array is taken as float64 and converted *exactly*.

Problems and notation (SPEC sections 1-4)
-----------------------------------------
* Quadratic: ``f(w) = 1/2 (w - w*)^T H (w - w*)`` with ``H`` symmetric positive semi-definite.
* Least squares: ``f(w) = ||X w - y||^2 / (2 n)`` (so ``H = X^T X / n``), optionally a validation
  set with ``fv(w) = ||Xv w - yv||^2 / (2 n')``.
* Gradient descent ``w_{k+1} = w_k - eta_k grad f(w_k)`` for ``k = 0 .. t-1``; the meta-loss ``M``
  is the training loss (``on="train"``) or the validation loss (``on="valid"``) at ``w_t``.
* ``objective="final"`` gives ``(M, dM/deta)``; ``objective="log"`` gives
  ``(log(M) / t, (dM/deta) / (t M))``.  For a schedule the gradient is the list of
  ``dM/deta_k``, ``k = 0 .. t-1`` (scaled the same way for ``"log"``).

Public functions
----------------
``quadratic_metagrad``   closed form for GD with a constant step on a quadratic.
``lsq_metagrad``         closed form for GD with a constant step on least squares (train/valid).
``iterate_metagrad``     plain unrolled iteration in mp (forward tangent for a constant step,
                         a reverse sweep for a schedule); for small problems.
``trajectory_losses``    the ``t + 1`` losses along a GD run, in mp.
``to_float``, ``log_abs``, ``sign``, ``to_str``   conversions of the mp results.

How the closed forms reach ``prec`` correct bits
------------------------------------------------
Both closed forms need an eigendecomposition of a symmetric matrix (``H``; for least squares the
smaller of the Gram matrices ``X^T X`` and ``X X^T``, formed exactly in integer arithmetic).
``mpmath.eigsy`` is too slow for the sizes the tests use (about 2 s for d = 50), so the
decomposition is computed here in exact fixed-point integer arithmetic (Python ints scaled by
``2**F``, the matrix normalised so that its largest entry is about 1) by

1. ``numpy.linalg.eigh`` in float64 as a starting guess (of the matrix shifted by the centre of its
   spectrum when all eigenvalues are close together, so the guess resolves them);
2. the Ogita-Aishima Newton refinement ``X <- X (I + E)``, which only needs matrix products and
   doubles the number of correct bits per step; the working precision is raised with it, so the
   early steps are cheap;
3. clusters (pairs too close for a safe Newton step: their correction would not be small, or would
   be dominated by rounding) are only orthogonalised by the Newton step and are resolved instead by
   Jacobi rotations (small clusters) or by a recursive decomposition of the cluster's coupling
   block (large ones), at the same precision; repeated eigenvalues need neither;
4. ``mpmath.eigsy`` as a fallback should the refinement not converge (it has not happened on
   ordinary inputs; only on contrived matrices with eigenvalues spread over hundreds of orders of
   magnitude).

The result is backward stable: it is the exact decomposition of a matrix within a few times
``d 2**-F`` (relative to the largest entry, normwise) of the input.  Eigenvalues whose magnitude is
below 4 times the measured backward error (plus ``64 d`` units of ``2**-F``) are indistinguishable
from zero at this precision and are set to exactly zero ("snapped"): a genuinely singular matrix
(least squares with rank-deficient data, a singular ``H``) then has exact null directions that do
not move under GD and do not leak into gradients.  A genuine eigenvalue that small is lost to any
normwise-stable method anyway; the certification below raises ``F`` when it would matter.

The error in the final result is that backward error multiplied by the sensitivity of the
formula, which depends on the data: the factors ``(1 - eta*lam)**(2t)`` turn an eigenvalue error
``dl`` into a relative error of about ``2 t eta dl / |1 - eta lam|`` (this is the 2t amplification:
``bitlen(t)`` extra bits cover it), tiny eigenvalues are only known to absolute accuracy, terms can
cancel near a stationary point ``dM/deta = 0``, and so on.  Instead of relying on an a-priori bound,
every closed-form call is *certified* in the manner of Ziv's strategy: the result (the meta-loss
and its derivative) is computed at two working precisions ``F1`` and ``F2 = F1 + 48`` (the second
refines the cached first decomposition, so it costs one or two Newton steps) and accepted only when
both agree to ``2**-(prec + 8)`` relative; since the error shrinks by about ``2**-48`` from ``F1`` to
``F2``, the returned (``F2``) value then carries roughly ``prec + 50`` correct bits before it is
rounded to ``prec`` bits.  Otherwise the precision is raised by the number of bits that were missing
and the check repeated.  The first ``F1`` is ``prec + 32 + bitlen(t) + 2 bitlen(d)``, enough for
ordinary inputs, so the check usually passes at once.  If it cannot be passed below
``F1 + 2 prec + 512`` bits (in practice only for results that are exactly zero in exact arithmetic
but come out as a tiny non-zero number, e.g. a start point lying exactly in the null space of a
non-diagonal singular ``H``) a ``RuntimeWarning`` is issued and the best value is returned.
The mp evaluation itself works at ``F + 32`` bits with exact products ``eta * lam`` and sums that do
not drop small terms, so it adds nothing comparable.  Decompositions are cached (keyed by the input
bytes and the precision), so repeated calls with the same matrix and other step sizes or horizons
cost O(d^2) mp operations (a few ms).

For the ``"log"`` objective the value ``log(M)/t`` is certified relatively as well (the check on
``M`` is tightened when ``|log M| < 1``).

The iterative functions (``iterate_metagrad``, ``trajectory_losses``) run the unrolled recursion at
``prec + 64 + 2 bitlen(t) + bitlen(d)`` bits without certification; they are meant for small, well
posed cases (d <= 20, t <= 200), where rounding cannot accumulate to anything near ``2**-prec``.
They propagate the residuals (``X w - y``, ``w - w*``) rather than recomputing them, so the loss is
not lost to cancellation when it becomes small.

All returned numbers are ``mpmath.mpf`` rounded to ``prec`` bits.

Caveats
-------
* ``H`` is taken as given: a float64 matrix such as ``X.T @ X`` with ``n < d`` is usually *not*
  exactly singular and may have tiny negative eigenvalues; the results are exact for that matrix
  (the meta-loss can then even be negative, and the ``"log"`` objective raises ``ValueError``).
* Least squares with ``n > d`` and labels exactly in the range of ``X`` (possible only with
  specially constructed data, e.g. small integers) has a true minimum loss of exactly 0; it is
  computed to about ``2**-2F`` absolute, so for very long horizons, when the loss falls below that,
  the certification runs into its cap and warns.  Float64 data with ``y = X @ w`` is not affected
  (its rounding leaves a genuinely non-zero minimum).
* Certification compares two evaluations; it is a very strong practical check, not a proof.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import threading
import warnings
from collections import OrderedDict
from operator import mul
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

try:  # mpmath is an optional (test) dependency of metastep
    import mpmath as _mpmath
except ImportError:  # pragma: no cover - exercised only without mpmath
    _mpmath = None

__all__ = [
    "quadratic_metagrad",
    "lsq_metagrad",
    "iterate_metagrad",
    "trajectory_losses",
    "to_float",
    "log_abs",
    "sign",
    "to_str",
    "clear_cache",
]

_OBJECTIVES = ("final", "log")
_ON = ("train", "valid")
_ZIV_GAP = 48          # bits between the two precisions compared by the certification
_MIN_PREC = 53


def _mp():
    if _mpmath is None:
        raise ImportError("metastep.reference needs the mpmath package; install it with `pip install mpmath`")
    return _mpmath


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------

def _array(x: Any, name: str, ndim: int) -> np.ndarray:
    if x is None:
        raise TypeError(f"{name} is required")
    a = np.asarray(x)
    if a.dtype == object or a.dtype.kind not in "biuf" or a.dtype.kind == "b":
        raise TypeError(f"{name} must be a real numeric array; got dtype {a.dtype}")
    if a.dtype.kind == "f" and a.dtype.itemsize > 8:
        b = a.astype(np.float64)
        if not np.array_equal(b.astype(a.dtype), a):
            raise ValueError(f"{name} has entries that are not exactly representable in float64")
        a = b
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _int_t(t: Any, name: str = "t") -> int:
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {type(t).__name__}")
    t = int(t)
    if t < 1:
        raise ValueError(f"{name} must be at least 1; got {t}")
    return t


def _scalar(x: Any, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or x is None:
        raise TypeError(f"{name} must be a real number")
    if np.ndim(x) != 0:
        raise ValueError(f"{name} must be a scalar; got shape {np.shape(x)}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number; got {type(x).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}")
    if isinstance(x, np.floating) and np.dtype(type(x)).itemsize > 8 and float(x) != x:
        raise ValueError(f"{name} is not exactly representable in float64")
    return v


def _prec(prec: Any) -> int:
    p = _int_t(prec, "prec")
    if p < _MIN_PREC:
        raise ValueError(f"prec must be at least {_MIN_PREC} bits; got {p}")
    return p


def _choice(x: Any, name: str, options: Sequence[str]) -> str:
    if not isinstance(x, str) or x not in options:
        raise ValueError(f"unknown {name} {x!r}; expected one of {', '.join(map(repr, options))}")
    return x


def _exact_ints(a: np.ndarray) -> Tuple[list, int]:
    """Exact representation ``a == ints * 2**e`` of a float64 array (nested lists of Python ints)."""
    m, ex = np.frexp(a)
    mi = (m * 9007199254740992.0).astype(np.int64)       # m * 2**53 is an integer, exactly
    ex = ex.astype(np.int64) - 53
    flat_m = mi.ravel().tolist()
    flat_e = ex.ravel().tolist()
    nz = [e for v, e in zip(flat_m, flat_e) if v]
    if not nz:
        ints = [0] * len(flat_m)
        e0 = 0
    else:
        e0 = min(nz)
        ints = [v << (e - e0) if v else 0 for v, e in zip(flat_m, flat_e)]
        acc = 0
        for v in ints:
            acc |= v
        tz = (acc & -acc).bit_length() - 1       # common trailing zero bits
        if tz > 0:
            ints = [v >> tz for v in ints]
            e0 += tz
    if a.ndim == 1:
        return ints, e0
    r, c = a.shape
    return [ints[i * c:(i + 1) * c] for i in range(r)], e0


def _vec_combine(a: list, ea: int, b: list, eb: int, sb: int = 1) -> Tuple[list, int]:
    """Exact ``a*2**ea + sb * b*2**eb`` for integer vectors."""
    e = min(ea, eb)
    sa_, sb_ = ea - e, eb - e
    return [(x << sa_) + sb * (y << sb_) for x, y in zip(a, b)], e


def _matvec(A: list, v: list) -> list:
    return [sum(map(mul, row, v)) for row in A]


def _transpose(A: list) -> list:
    return [list(col) for col in zip(*A)]


def _rsr(x: int, k: int) -> int:
    """``x / 2**k`` rounded to the nearest integer (``k`` may be negative: exact shift left)."""
    if k <= 0:
        return x << (-k)
    return (x + (1 << (k - 1))) >> k


def _fixed(x: float, F: int) -> int:
    """``x * 2**F`` rounded to an integer (any F >= 0, no float overflow)."""
    num, den = x.as_integer_ratio()
    return _rsr(num << F, den.bit_length() - 1)


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.shape).encode())
            h.update(p.tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# symmetric eigendecomposition in fixed point
# ----------------------------------------------------------------------------------------------

class _Eig:
    """Eigendecomposition ``M ~= V diag(lam) V^T`` of an exact symmetric matrix.

    ``lam[i] * 2**(s - F)`` is the i-th eigenvalue (exactly 0 when snapped), ``vecs[i]`` the i-th
    eigenvector with entries ``vecs[i][k] * 2**-F``.  ``err_ulps`` estimates the backward error in
    units of ``2**(s - F)``.
    """

    __slots__ = ("F", "s", "lam", "vecs", "err_ulps", "method", "shift")

    def __init__(self, F, s, lam, vecs, err_ulps, method, shift=0):
        self.F, self.s, self.lam, self.vecs, self.err_ulps, self.method = F, s, lam, vecs, err_ulps, method
        self.shift = shift      # spectral shift used by the refinement (scale 2**F)


def _sym_products(XT: list, A: list, Fc: int):
    """R = I - X^T X, W = A X (columns) and S = X^T A X, all rounded to scale ``2**Fc``."""
    d = len(XT)
    one2 = 1 << (2 * Fc)
    R = [[0] * d for _ in range(d)]
    for i in range(d):
        xi = XT[i]
        Ri = R[i]
        for j in range(i, d):
            v = -sum(map(mul, xi, XT[j]))
            if i == j:
                v += one2
            v = _rsr(v, Fc)
            Ri[j] = v
            R[j][i] = v
    W = [[_rsr(sum(map(mul, arow, xj)), Fc) for arow in A] for xj in XT]
    S = [[0] * d for _ in range(d)]
    for i in range(d):
        xi = XT[i]
        Si = S[i]
        for j in range(i, d):
            v = _rsr(sum(map(mul, xi, W[j])), Fc)
            Si[j] = v
            S[j][i] = v
    return R, S


def _rotation(a_pp: int, a_qq: int, a_pq: int, F: int) -> Tuple[int, int]:
    """Fixed-point (cos, sin) * 2**F of the Jacobi rotation that annihilates ``a_pq``."""
    a = a_qq - a_pp
    b = 2 * a_pq
    r = math.isqrt(a * a + b * b)
    if a >= 0:
        tn = (b << F) // (a + r)            # tan of the rotation angle, |tan| <= 1
    else:
        tn = -((b << F) // (r - a))
    one2 = 1 << (2 * F)
    c = (one2 << F) // math.isqrt((one2 + tn * tn) << (2 * F)) if tn else (1 << F)
    return c, (tn * c) >> F


def _rotate(Ms: Sequence[list], XT: list, p: int, q: int, c: int, s: int, F: int) -> None:
    """Apply the plane rotation (columns p, q; x_p <- c x_p - s x_q, x_q <- s x_p + c x_q) to the
    eigenvector columns ``XT`` and as a congruence ``J^T M J`` to each symmetric matrix in ``Ms``."""
    d = len(XT)
    cc, ss, cs = c * c, s * s, c * s
    F2 = 2 * F
    for M in Ms:
        mpp, mqq, mpq = M[p][p], M[q][q], M[p][q]
        npp = _rsr(cc * mpp - 2 * cs * mpq + ss * mqq, F2)
        nqq = _rsr(ss * mpp + 2 * cs * mpq + cc * mqq, F2)
        npq = _rsr(cs * (mpp - mqq) + (cc - ss) * mpq, F2)
        Mp, Mq = M[p], M[q]
        for r in range(d):
            if r == p or r == q:
                continue
            g = Mp[r]
            h = Mq[r]
            a1 = _rsr(c * g - s * h, F)
            a2 = _rsr(s * g + c * h, F)
            Mp[r] = a1
            M[r][p] = a1
            Mq[r] = a2
            M[r][q] = a2
        Mp[p] = npp
        Mq[q] = nqq
        Mp[q] = npq
        Mq[p] = npq
    xp, xq = XT[p], XT[q]
    XT[p] = [_rsr(c * u - s * v, F) for u, v in zip(xp, xq)]
    XT[q] = [_rsr(s * u + c * v, F) for u, v in zip(xp, xq)]


def _jacobi(S: list, R: list, XT: list, F: int, groups: Sequence[Sequence[int]], thr: int,
            max_sweeps: int = 40) -> Tuple[bool, int]:
    """Threshold cyclic Jacobi restricted to pairs inside each index group.

    ``X`` is only orthonormal up to ``R = I - X^T X``, so the couplings and angles are taken from the
    group-shifted matrix ``S - sigma (I - R)`` (sigma = mean of the group's diagonal), which removes the
    ``sigma R`` part of ``S`` that is due to the lack of orthogonality rather than to the spectrum.
    Rotations are applied to ``S``, ``R`` and the eigenvector columns ``XT``.
    Returns (converged, number of rotations)."""
    nrot = 0
    for _ in range(max_sweeps):
        rotated = False
        for g in groups:
            sigma = sum(S[i][i] for i in g) // len(g)
            for ii in range(len(g) - 1):
                p = g[ii]
                for q in g[ii + 1:]:
                    cpq = S[p][q] + ((sigma * R[p][q]) >> F)
                    if abs(cpq) <= thr:
                        continue
                    app = S[p][p] - sigma + ((sigma * R[p][p]) >> F)
                    aqq = S[q][q] - sigma + ((sigma * R[q][q]) >> F)
                    c, s = _rotation(app, aqq, cpq, F)
                    _rotate((S, R), XT, p, q, c, s, F)
                    rotated = True
                    nrot += 1
        if not rotated:
            return True, nrot
    return False, nrot


def _residual_offdiag(S: list, R: list, lam: list, F: int, cap: Optional[int] = None) -> int:
    """Frobenius norm (ulps) of the off-diagonal residual couplings ``S_ij + lam_j R_ij`` (the
    off-diagonal part of ``X^T (A X - X diag(lam))``); with ``cap`` returns ``cap + 1`` as soon as an
    entry exceeds ``cap``."""
    d = len(S)
    tot = 0
    for i in range(d):
        Si, Ri = S[i], R[i]
        for j in range(d):
            if i != j:
                v = Si[j] + ((lam[j] * Ri[j]) >> F)
                if cap is not None and abs(v) > cap:
                    return cap + 1
                tot += v * v
    return math.isqrt(tot)


def _block_rotate(S: list, R: list, XT: list, F: int, g: Sequence[int], depth: int) -> list:
    """Rotate the columns ``g`` of ``X`` by the eigenvectors of the group-shifted coupling block
    ``(S - sigma (I - R))[g, g]``, computed (recursively) to ``F`` bits; returns the new columns."""
    k = len(g)
    sigma = sum(S[i][i] for i in g) // k
    B = [[S[p][q] + ((sigma * R[p][q]) >> F) - (sigma if p == q else 0) for q in g] for p in g]
    for i in range(k):                          # exact symmetry
        for j in range(i):
            B[i][j] = B[j][i]
    sub = _eig_sym(B, -F, F, None, depth + 1)
    Qi = sub.vecs                               # columns, scale 2**F, orthonormal to ~2**-F
    cols = [XT[i] for i in g]
    rows = list(zip(*cols))                     # rows of X restricted to the group's columns
    new = [[_rsr(sum(map(mul, r, qj)), F) for r in rows] for qj in Qi]
    XT = list(XT)
    for j, i in enumerate(g):
        XT[i] = new[j]
    return XT


def _clusters(lam: Sequence[int], delta: int) -> List[List[int]]:
    """Groups of indices whose values are chained by gaps <= delta (singletons omitted)."""
    order = sorted(range(len(lam)), key=lambda i: lam[i])
    groups, cur = [], [order[0]]
    for i in order[1:]:
        if lam[i] - lam[cur[-1]] <= delta:
            cur.append(i)
        else:
            if len(cur) > 1:
                groups.append(cur)
            cur = [i]
    if len(cur) > 1:
        groups.append(cur)
    return groups


def _eig_fallback(A: list, F: int, s: int, conv_err: int) -> _Eig:
    """Slow but simple path: mpmath.eigsy at F + 64 bits."""
    mp = _mp()
    d = len(A)
    with mp.workprec(F + 64):
        M = mp.matrix(d, d)
        for i in range(d):
            for j in range(d):
                M[i, j] = mp.ldexp(mp.mpf(A[i][j]), -F)
        E, Q = mp.eigsy(M)
        lam = [int(mp.nint(mp.ldexp(E[i], F))) for i in range(d)]
        vecs = [[int(mp.nint(mp.ldexp(Q[k, i], F))) for k in range(d)] for i in range(d)]
    err = 64 * d * d + conv_err
    return _Eig(F, s, lam, vecs, err, "eigsy")


def _eig_sym(M: list, m_exp: int, F: int, start: Optional[_Eig] = None, depth: int = 0) -> _Eig:
    """Eigendecomposition of the exact symmetric matrix ``M * 2**m_exp`` (``M`` nested int lists)
    to a backward error of about ``2**-F`` relative to its largest entry."""
    d = len(M)
    bmax = max(abs(v).bit_length() for row in M for v in row)
    if bmax == 0:
        I = [[(1 << F) if i == k else 0 for k in range(d)] for i in range(d)]
        return _Eig(F, 0, [0] * d, I, 0, "zero")
    s = m_exp + bmax                      # entries of M * 2**-s lie in (-1, 1)
    sh = F - bmax
    A = [[_rsr(v, -sh) for v in row] for row in M]
    conv_err = 0 if sh >= 0 or all((v & ((1 << -sh) - 1)) == 0 for row in M for v in row) else d
    A0 = A

    if d == 1:
        return _Eig(F, s, [A[0][0]], [[1 << F]], conv_err, "1x1")

    logd = d.bit_length()
    thr = 32 * d                          # convergence threshold, ulps of 2**-F

    # Work with the shifted matrix A - sigma I, sigma = centre of the spectrum (exact in fixed point;
    # it is added back to the eigenvalues at the end).  Shifting changes nothing in exact arithmetic
    # but makes the cluster test and the float64 starting guess relative to the spread of the
    # spectrum instead of its magnitude, which matters when all eigenvalues are close together.
    # Only worth it (and only done) when the spread is small compared with the magnitude: for a graded
    # spectrum a shift would spoil the float64 guess for the small eigenvalues.
    one = 1 << F
    if start is not None and start.F < F and start.s == s:
        sigma = start.shift << (F - start.F)
    else:
        Af = np.array([[v / one for v in row] for row in A], dtype=np.float64)
        ev = np.linalg.eigvalsh(0.5 * (Af + Af.T))
        lo, hi = float(ev[0]), float(ev[-1])
        if hi - lo < 0.25 * max(abs(lo), abs(hi)):
            num, den = (0.5 * (lo + hi)).as_integer_ratio()
            sigma = (num << F) // den
        else:
            sigma = 0
    A = [[v - sigma if i == k else v for k, v in enumerate(row)] for i, row in enumerate(A)]
    nA = math.isqrt(sum(v * v for row in A for v in row)) + 1      # ||A - sigma I||_F in ulps

    # starting guess
    if start is not None and start.F < F and start.s == s:
        XT = [[v << (F - start.F) for v in col] for col in start.vecs]
        Fc = F
        good_bits = start.F - logd - 8
    else:
        Af = np.array([[v / one for v in row] for row in A], dtype=np.float64)
        _, Q = np.linalg.eigh(0.5 * (Af + Af.T))
        good_bits = 44
        Fc = min(F, 2 * good_bits + 24 + logd)
        XT = [[_fixed(float(q), Fc) for q in Q[:, i]] for i in range(d)]

    converged = False
    R = S = lamt = None
    nrot = 0
    block_steps = 0
    for _ in range(60):
        Ac = A if Fc == F else [[_rsr(v, F - Fc) for v in row] for row in A]
        R, S = _sym_products(XT, Ac, Fc)
        one = 1 << Fc
        nAc = nA if Fc == F else (nA >> (F - Fc)) + 1
        lamt = [(S[i][i] << Fc) // (one - R[i][i]) for i in range(d)]
        nR = math.isqrt(sum(v * v for row in R for v in row))
        maxR = max(abs(v) for row in R for v in row)
        nS = _residual_offdiag(S, R, lamt, Fc)
        # pairs closer than delta form clusters: the Newton step only orthogonalises them, and they
        # are resolved by Jacobi rotations instead (this also keeps the convergence of the other
        # pairs quadratic).  The factor 2**9 over the Ogita-Aishima bound keeps every Newton
        # correction small enough to stay in the quadratically convergent regime.  The floor
        # 2**(Fc/2) ulps accounts for rounding: the correction for a pair with gap g carries an error
        # of about ulp * ||A|| / g, whose square must stay below an ulp to keep X orthonormal.
        delta = max(((nS + ((nAc * nR) >> Fc)) << 9) + 4 * d, d << (Fc // 2))
        groups = _clusters(lamt, delta)
        if groups:
            # couplings inside a cluster below the current error level are left alone (for an exactly
            # repeated eigenvalue any basis will do); the last stage resolves everything to ``thr``
            final_stage = Fc == F and maxR <= thr
            lim = thr if final_stage else max(thr, ((nAc * nR) >> Fc) << 10)
            active = []
            for g in groups:
                sg = sum(S[i][i] for i in g) // len(g)
                if any(abs(S[p][q] + ((sg * R[p][q]) >> Fc)) > lim for i, p in enumerate(g) for q in g[i + 1:]):
                    active.append(g)
            big = [g for g in active if len(g) > 4]
            if big and block_steps < 8 and depth < 8:
                # large clusters: rotate the cluster's columns by the eigenvectors of its (shifted)
                # coupling block, computed by a recursive call at the same precision.  This resolves
                # the structure inside the cluster at once, whatever its scale (much cheaper than
                # hundreds of Jacobi rotations); the next Newton steps continue quadratically.
                for g in big:
                    XT = _block_rotate(S, R, XT, Fc, g, depth)
                block_steps += 1
                continue
            if active:
                ok, k = _jacobi(S, R, XT, Fc, active, lim)
                nrot += k
                if not ok:
                    break
                lamt = [(S[i][i] << Fc) // (one - R[i][i]) for i in range(d)]
                maxR = max(abs(v) for row in R for v in row)
        if Fc == F and maxR <= thr and _residual_offdiag(S, R, lamt, Fc, thr) <= thr:
            converged = True
            break
        # Newton correction E (scale 2**Fc)
        E = [[0] * d for _ in range(d)]
        emax = 0
        for i in range(d):
            E[i][i] = _rsr(R[i][i], 1)
            for j in range(i + 1, d):
                rij = R[i][j]
                gap = lamt[j] - lamt[i]
                if abs(gap) > delta:
                    num = (S[i][j] << Fc) + lamt[j] * rij
                    q, rem = divmod(num, gap)
                    if 2 * rem * (1 if gap > 0 else -1) >= abs(gap):
                        q += 1
                    eij = q
                    eji = rij - eij
                    a = abs(eij)
                    if a > emax:
                        emax = a
                else:
                    eij = _rsr(rij, 1)
                    eji = rij - eij
                E[i][j] = eij
                E[j][i] = eji
        Xrows = _transpose(XT)
        ET = _transpose(E)
        XE = [[_rsr(sum(map(mul, xr, ec)), Fc) for ec in ET] for xr in Xrows]   # rows of X E
        XT = [[XT[j][m] + XE[m][j] for m in range(d)] for j in range(d)]
        # bits of accuracy after this step
        e_bits = Fc - emax.bit_length() if emax else Fc
        new_bits = min(2 * e_bits - logd - 4, Fc - logd - 6)
        good_bits = max(good_bits + 8, new_bits)
        Fn = min(F, 2 * good_bits + 24 + logd)
        if Fn > Fc:
            XT = [[v << (Fn - Fc) for v in col] for col in XT]
            Fc = Fn
    if not converged:
        return _eig_fallback(A0, F, s, conv_err)
    assert S is not None and R is not None and lamt is not None  # set by the first iteration
    lam = [v + sigma for v in lamt]
    nS = _residual_offdiag(S, R, lamt, F)
    nR = math.isqrt(sum(v * v for row in R for v in row))
    err = nS + ((nA * nR) >> F) + 1 + 4 * d + conv_err
    return _Eig(F, s, lam, XT, err, "refined", sigma)


_EIG_CACHE: "OrderedDict[Tuple[str, int], _Eig]" = OrderedDict()
_EIG_CACHE_SIZE = 32


_EIG_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget all cached eigendecompositions."""
    with _EIG_LOCK:
        _EIG_CACHE.clear()


def _decomposition(key: str, M: list, m_exp: int, F: int) -> _Eig:
    """Cached, snapped eigendecomposition at precision ``F``; refines the best cached lower-precision
    decomposition of the same matrix when there is one."""
    ck = (key, F)
    with _EIG_LOCK:
        hit = _EIG_CACHE.get(ck)
        if hit is not None:
            _EIG_CACHE.move_to_end(ck)
            return hit
        start = None
        for (k2, F2), e in _EIG_CACHE.items():
            if k2 == key and F2 < F and (start is None or F2 > start.F) and e.method == "refined":
                start = e
    eig = _eig_sym(M, m_exp, F, start)
    # eigenvalues within a small multiple of the backward error are exactly zero as far as this
    # precision can tell: make them so (exactly singular matrices then behave exactly)
    tol = 4 * eig.err_ulps + 64 * len(M)
    eig.lam = [0 if abs(v) <= tol else v for v in eig.lam]
    with _EIG_LOCK:
        _EIG_CACHE[ck] = eig
        while len(_EIG_CACHE) > _EIG_CACHE_SIZE:
            _EIG_CACHE.popitem(last=False)
    return eig


# ----------------------------------------------------------------------------------------------
# certification driver
# ----------------------------------------------------------------------------------------------

def _rel_diff(a, b):
    mp = _mp()
    if a == b:
        return mp.mpf(0)
    if b == 0:
        return mp.inf
    return abs(a - b) / abs(b)


def _certified(evaluate, prec: int, F0: int, log_value: bool, what: str):
    """Run ``evaluate(F) -> (M, dM)`` at two precisions until they agree to ``2**-(prec+8)``."""
    mp = _mp()
    cap = F0 + 2 * prec + 512
    F1 = F0
    while True:
        a = evaluate(F1)
        b = evaluate(F1 + _ZIV_GAP)
        with mp.workprec(64):
            errs = [_rel_diff(x, y) for x, y in zip(a, b)]
            if log_value and b[0] > 0 and b[0] != 1:
                lg = abs(mp.log(b[0]))
                if lg < 1:
                    errs[0] = errs[0] / lg
            err = max(errs)
            target = mp.ldexp(1, -(prec + 8))
            if err <= target:
                return b
            if F1 + _ZIV_GAP >= cap:
                warnings.warn(
                    f"metastep.reference.{what}: could not certify {prec} bits below {F1 + _ZIV_GAP} bits of "
                    f"working precision (relative disagreement {mp.nstr(err, 3)}); the result is probably exactly "
                    "zero or degenerate", RuntimeWarning, stacklevel=3)
                return b
            missing = (int(mp.ceil(mp.log(err, 2))) if err != mp.inf else prec) + prec + 8 - _ZIV_GAP
        F1 = min(cap - _ZIV_GAP, F1 + _ZIV_GAP + max(16, missing + 16))


def _finish(M, dM, t: int, objective: str, prec: int):
    """Turn (M, dM/deta) into the requested objective, rounded to ``prec`` bits."""
    mp = _mp()
    with mp.workprec(prec + 32):
        if objective == "final":
            val, grad = M, dM
        else:
            if M < 0:
                raise ValueError("the meta-loss is negative (H is not positive semi-definite); "
                                 "the log objective is undefined")
            if M == 0:
                val = mp.ninf
                grad = [mp.nan] * len(dM) if isinstance(dM, list) else mp.nan
            else:
                val = mp.log(M) / t
                if isinstance(dM, list):
                    grad = [g / (t * M) for g in dM]
                else:
                    grad = dM / (t * M)
    with mp.workprec(prec):
        val = +val
        grad = [+g for g in grad] if isinstance(grad, list) else +grad
    return val, grad


def _guard(prec: int, t: int, d: int) -> int:
    return prec + 32 + t.bit_length() + 2 * d.bit_length()


def _xsum(terms, P):
    """Sum of mp numbers, without dropping terms that are far smaller than the running sum unless
    they are below ``2**-(4P)`` of it; rounded to ``P`` bits."""
    mp = _mp()
    with mp.workprec(2 * P + 128):
        s = mp.fsum(terms)
    with mp.workprec(P):
        return +s


def _powers(r, t: int):
    """(r**(t-1), r**t, r**(2t-1), r**(2t)) at the current precision."""
    q = r ** (t - 1) if t > 1 else r ** 0
    rt = q * r
    r2m1 = q * rt
    return q, rt, r2m1, r2m1 * r


def _phi(eta, lam, r_t, t: int):
    """``(1 - (1 - eta*lam)**t) / lam`` (= eta * sum_{k<t} (1 - eta*lam)**k), without cancellation
    for small ``eta*lam``."""
    mp = _mp()
    x = eta * lam
    if x == 0:
        return eta * t
    if abs(x) < 0.5:
        return -mp.expm1(t * mp.log1p(-x)) / lam
    return (1 - r_t) / lam


# ----------------------------------------------------------------------------------------------
# closed form: quadratic
# ----------------------------------------------------------------------------------------------

def _sym_matrix(H: Any) -> np.ndarray:
    H = _array(H, "H", 2)
    if H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be square; got shape {H.shape}")
    if not np.array_equal(H, H.T):
        asym = np.max(np.abs(H - H.T))
        scale = np.max(np.abs(H))
        if asym > 1e-10 * scale:
            raise ValueError(f"H is not symmetric (max |H - H^T| = {asym:.3g})")
    return H


def _sym_ints(H: np.ndarray) -> Tuple[list, int]:
    """Exact integer form of the symmetric part (H + H^T) / 2."""
    Hi, e = _exact_ints(H)
    if np.array_equal(H, H.T):
        return Hi, e
    d = len(Hi)
    return [[Hi[i][j] + Hi[j][i] for j in range(d)] for i in range(d)], e - 1


def quadratic_metagrad(H: Any, w0: Any, w_star: Any = None, eta: Any = None, t: Any = None,
                       objective: str = "final", prec: int = 256):
    """Exact meta-objective and meta-gradient of ``t`` GD steps with constant step ``eta`` on
    ``f(w) = 1/2 (w - w*)^T H (w - w*)``.

    With ``H = sum_i lam_i u_i u_i^T`` and ``c_i = <w0 - w*, u_i>``::

        M   = f(w_t)  = 1/2 sum_i c_i^2 lam_i (1 - eta lam_i)^(2t)
        M'  = dM/deta = -t sum_i c_i^2 lam_i^2 (1 - eta lam_i)^(2t-1)

    ``objective="final"`` returns ``(M, M')``; ``"log"`` returns ``(log(M)/t, M'/(t M))``.
    The values are ``mpmath.mpf`` correct to about ``prec`` bits (see the module docstring).
    ``H`` must be symmetric (an asymmetry at rounding level is removed by exact symmetrization).
    """
    mp = _mp()
    prec = _prec(prec)
    objective = _choice(objective, "objective", _OBJECTIVES)
    H = _sym_matrix(H)
    d = H.shape[0]
    w0 = _array(w0, "w0", 1)
    if w0.shape[0] != d:
        raise ValueError(f"w0 must have length {d}; got {w0.shape[0]}")
    w_star = np.zeros(d) if w_star is None else _array(w_star, "w_star", 1)
    if w_star.shape[0] != d:
        raise ValueError(f"w_star must have length {d}; got {w_star.shape[0]}")
    eta = _scalar(eta, "eta")
    t = _int_t(t)

    Hi, eH = _sym_ints(H)
    a, ea = _exact_ints(w0)
    b, eb = _exact_ints(w_star)
    e_int, e_exp = _vec_combine(a, ea, b, eb, -1)
    key = _digest("H", H)

    if not any(e_int):
        with mp.workprec(prec):
            return _finish(mp.mpf(0), mp.mpf(0), t, objective, prec)

    def evaluate(F):
        eig = _decomposition(key, Hi, eH, F)
        P = F + 32
        with mp.workprec(P):
            et = mp.mpf(eta)
            terms0, terms1 = [], []
            for li, vec in zip(eig.lam, eig.vecs):
                if li == 0:
                    continue
                lam = mp.mpf((li, eig.s - F))
                c = mp.mpf((sum(map(mul, vec, e_int)), e_exp - F))
                r = mp.fsub(1, mp.fmul(et, lam, exact=True), exact=True)
                _, _, r2m1, r2 = _powers(r, t)
                w = c * c * lam
                terms0.append(w * r2)
                terms1.append(w * lam * r2m1)
            M = _xsum(terms0, P) / 2
            dM = -t * _xsum(terms1, P)
        return M, dM

    M, dM = _certified(evaluate, prec, _guard(prec, t, d), objective == "log", "quadratic_metagrad")
    return _finish(M, dM, t, objective, prec)


# ----------------------------------------------------------------------------------------------
# closed form: least squares
# ----------------------------------------------------------------------------------------------

class _LsqData:
    """Exact integer forms of a least-squares task."""

    def __init__(self, X, y, Xv, yv, w0):
        self.n, self.d = X.shape
        self.X = X
        self.Xi, self.eX = _exact_ints(X)
        yi, ey = _exact_ints(y)
        w0i, ew = _exact_ints(w0)
        self.w0i, self.ew = w0i, ew
        self.r0, self.er = _vec_combine(_matvec(self.Xi, w0i), self.eX + ew, yi, ey, -1)   # X w0 - y
        if Xv is not None:
            self.nv = Xv.shape[0]
            self.Xvi, self.eXv = _exact_ints(Xv)
            yvi, eyv = _exact_ints(yv)
            self.s0, self.es = _vec_combine(_matvec(self.Xvi, w0i), self.eXv + ew, yvi, eyv, -1)
        else:
            self.nv = 0
            self.Xvi = None


def _check_lsq(X, y, Xv, yv, w0, on):
    X = _array(X, "X", 2)
    n, d = X.shape
    y = _array(y, "y", 1)
    if y.shape[0] != n:
        raise ValueError(f"y must have length {n} (rows of X); got {y.shape[0]}")
    if (Xv is None) != (yv is None):
        raise ValueError("Xv and yv must be given together")
    if Xv is not None:
        Xv = _array(Xv, "Xv", 2)
        if Xv.shape[1] != d:
            raise ValueError(f"Xv must have {d} columns; got shape {Xv.shape}")
        yv = _array(yv, "yv", 1)
        if yv.shape[0] != Xv.shape[0]:
            raise ValueError(f"yv must have length {Xv.shape[0]} (rows of Xv); got {yv.shape[0]}")
    elif on == "valid":
        raise ValueError('on="valid" needs a validation set (Xv, yv)')
    w0 = np.zeros(d) if w0 is None else _array(w0, "w0", 1)
    if w0.shape[0] != d:
        raise ValueError(f"w0 must have length {d}; got {w0.shape[0]}")
    return X, y, Xv, yv, w0


def lsq_metagrad(X: Any, y: Any, Xv: Any = None, yv: Any = None, w0: Any = None, eta: Any = None,
                 t: Any = None, objective: str = "final", on: str = "train", prec: int = 256):
    """Exact meta-objective and meta-gradient of ``t`` GD steps with constant step ``eta`` on the
    least-squares loss ``||X w - y||^2 / (2n)``, measured on the training set (``on="train"``) or
    on the validation set ``||Xv w - yv||^2 / (2n')`` (``on="valid"``).

    Closed form through the eigendecomposition of the smaller Gram matrix:

    * ``n <= d``: ``K = X X^T / n = U diag(mu) U^T``.  The training residual obeys
      ``r_t = (I - eta K)^t r_0`` exactly, so the training loss is
      ``sum_j rho_j^2 (1 - eta mu_j)^(2t) / (2n)`` with ``rho = U^T r_0``, and
      ``w_t = w0 - X^T U diag(phi_j) rho / n`` with ``phi_j = (1 - (1 - eta mu_j)^t) / mu_j``.
    * ``n > d``: ``H = X^T X / n = V diag(lam) V^T`` and ``g0 = X^T r_0 / n``,
      ``w_t = w0 - V diag(phi_i) V^T g0``; the training loss is the part of ``r_0`` orthogonal to
      the range of ``X`` plus ``1/2 sum_i gamma_i^2 (1 - eta lam_i)^(2t) / lam_i`` (``gamma = V^T g0``).

    Null directions (exactly zero eigenvalues after snapping, see the module docstring) do not move.
    The eta-derivatives are analytic: ``d phi / d eta = t (1 - eta lam)^(t-1)``.
    Returns ``(value, grad)`` as ``mpmath.mpf`` correct to about ``prec`` bits.
    """
    mp = _mp()
    prec = _prec(prec)
    objective = _choice(objective, "objective", _OBJECTIVES)
    on = _choice(on, "on", _ON)
    X, y, Xv, yv, w0 = _check_lsq(X, y, Xv, yv, w0, on)
    eta = _scalar(eta, "eta")
    t = _int_t(t)
    data = _LsqData(X, y, Xv if on == "valid" else None, yv if on == "valid" else None, w0)
    n, d = data.n, data.d
    kform = n <= d
    if kform:
        G = [[sum(map(mul, a, b)) for b in data.Xi] for a in data.Xi]            # X X^T
        key = _digest("XXt", X)
    else:
        XiT = _transpose(data.Xi)
        G = [[sum(map(mul, a, b)) for b in XiT] for a in XiT]                   # X^T X
        key = _digest("XtX", X)
        XtR = [sum(map(mul, col, data.r0)) for col in XiT]                      # X^T r0 (exp eX+er)
    eG = 2 * data.eX
    if on == "valid" and kform:
        XvXt = [[sum(map(mul, a, b)) for b in data.Xi] for a in data.Xvi]       # Xv X^T

    def evaluate(F):
        eig = _decomposition(key, G, eG, F)
        P = F + 32
        with mp.workprec(P):
            et = mp.mpf(eta)
            nn = mp.mpf(n)
            nonnull = [i for i, v in enumerate(eig.lam) if v != 0]
            nu = [mp.mpf((v, eig.s - F)) for v in eig.lam]
            lam = [v / nn for v in nu]
            r = [1 - et * l for l in lam]
            pw = [_powers(ri, t) for ri in r]
            if kform:
                rho = [mp.mpf((sum(map(mul, u, data.r0)), data.er - F)) for u in eig.vecs]
                if on == "train":
                    M = _xsum([rho[j] ** 2 * pw[j][3] for j in range(len(rho))], P) / (2 * nn)
                    dM = -t * _xsum([rho[j] ** 2 * lam[j] * pw[j][2] for j in nonnull], P) / nn
                    return M, dM
                # validation: s_t = s0 - C diag(phi) rho / n, C = Xv X^T U
                a = {j: _phi(et, lam[j], pw[j][1], t) * rho[j] / nn for j in nonnull}
                bcoef = {j: t * pw[j][0] * rho[j] / nn for j in nonnull}
                ce = data.eXv + data.eX - F
                s_t, ds = [], []
                for k in range(data.nv):
                    row = XvXt[k]
                    Ck = {j: mp.mpf((sum(map(mul, row, eig.vecs[j])), ce)) for j in nonnull}
                    s0k = mp.mpf((data.s0[k], data.es))
                    s_t.append(s0k - mp.fdot([Ck[j] for j in nonnull], [a[j] for j in nonnull]))
                    ds.append(-mp.fdot([Ck[j] for j in nonnull], [bcoef[j] for j in nonnull]))
            else:
                gt = [mp.mpf((sum(map(mul, v, XtR)), data.eX + data.er - F)) for v in eig.vecs]   # n * gamma
                gam = [g / nn for g in gt]
                if on == "train":
                    ze = data.eX - F
                    coef = {i: gt[i] / nu[i] for i in nonnull}
                    rperp = []
                    for k in range(n):
                        row = data.Xi[k]
                        zk = [mp.mpf((sum(map(mul, row, eig.vecs[i])), ze)) for i in nonnull]
                        r0k = mp.mpf((data.r0[k], data.er))
                        rperp.append(r0k - mp.fdot(zk, [coef[i] for i in nonnull]))
                    fstar = _xsum([v * v for v in rperp], P) / (2 * nn)
                    M = fstar + _xsum([gam[i] ** 2 * pw[i][3] / lam[i] for i in nonnull], P) / 2
                    dM = -t * _xsum([gam[i] ** 2 * pw[i][2] for i in nonnull], P)
                    return M, dM
                a = {i: _phi(et, lam[i], pw[i][1], t) * gam[i] for i in nonnull}
                bcoef = {i: t * pw[i][0] * gam[i] for i in nonnull}
                de = data.eXv - F
                s_t, ds = [], []
                for k in range(data.nv):
                    row = data.Xvi[k]
                    Dk = [mp.mpf((sum(map(mul, row, eig.vecs[i])), de)) for i in nonnull]
                    s0k = mp.mpf((data.s0[k], data.es))
                    s_t.append(s0k - mp.fdot(Dk, [a[i] for i in nonnull]))
                    ds.append(-mp.fdot(Dk, [bcoef[i] for i in nonnull]))
            nv = mp.mpf(data.nv)
            M = _xsum([v * v for v in s_t], P) / (2 * nv)
            dM = _xsum([u * v for u, v in zip(s_t, ds)], P) / nv
        return M, dM

    M, dM = _certified(evaluate, prec, _guard(prec, t, max(n, d)), objective == "log", "lsq_metagrad")
    return _finish(M, dM, t, objective, prec)


# ----------------------------------------------------------------------------------------------
# plain iteration in mp
# ----------------------------------------------------------------------------------------------

def _mpvec(a: np.ndarray) -> list:
    mp = _mp()
    return [mp.mpf(float(v)) for v in a]


def _mpmat(A: np.ndarray) -> list:
    mp = _mp()
    return [[mp.mpf(float(v)) for v in row] for row in A]


def _mv(A: list, v: list) -> list:
    mp = _mp()
    return [mp.fdot(row, v) for row in A]


def _dot(u: list, v: list):
    return _mp().fdot(u, v)


class _Problem:
    """A quadratic or least-squares problem in mp, with the state propagated without cancellation."""

    def __init__(self, H, w0, w_star, X, y, Xv, yv, on, need_valid):
        mp = _mp()
        if H is not None:
            if X is not None or y is not None:
                raise ValueError("give either H (quadratic) or X, y (least squares), not both")
            H = _sym_matrix(H)
            d = H.shape[0]
            self.kind = "quadratic"
            if on != "train":
                raise ValueError('on="valid" is only defined for least squares')
            w0 = np.zeros(d) if w0 is None else _array(w0, "w0", 1)
            w_star = np.zeros(d) if w_star is None else _array(w_star, "w_star", 1)
            if w0.shape[0] != d or w_star.shape[0] != d:
                raise ValueError(f"w0 and w_star must have length {d}")
            Hs = H if np.array_equal(H, H.T) else None
            if Hs is None:
                Hm = _mpmat(H)
                self.H = [[(Hm[i][j] + Hm[j][i]) / 2 for j in range(d)] for i in range(d)]
            else:
                self.H = _mpmat(H)
            self.e0 = [a - b for a, b in zip(_mpvec(w0), _mpvec(w_star))]
            self.d = d
        else:
            if X is None or y is None:
                raise TypeError("give H (quadratic) or X and y (least squares)")
            if w_star is not None:
                raise ValueError("w_star is only used for the quadratic problem")
            X, y, Xv, yv, w0 = _check_lsq(X, y, Xv, yv, w0, on if need_valid else "train")
            self.kind = "lsq"
            self.n, self.d = X.shape
            self.X = _mpmat(X)
            self.XT = _transpose(self.X)
            self.w0 = _mpvec(w0)
            yy = _mpvec(y)
            self.r0 = [mp.fsub(a, b) for a, b in zip(_mv(self.X, self.w0), yy)]
            self.has_valid = need_valid and Xv is not None      # propagate the validation residual only if used
            if self.has_valid:
                self.nv = Xv.shape[0]
                self.Xv = _mpmat(Xv)
                self.XvT = _transpose(self.Xv)
                self.s0 = [a - b for a, b in zip(_mv(self.Xv, self.w0), _mpvec(yv))]
        self.on = on

    # state: quadratic -> [e]; lsq -> [r, s] (w itself is not needed for the losses)
    def initial(self):
        if self.kind == "quadratic":
            return [list(self.e0)]
        return [list(self.r0), list(self.s0) if self.has_valid else None]

    def grad(self, state):
        """Gradient of the training loss at the current state (a d-vector)."""
        if self.kind == "quadratic":
            return _mv(self.H, state[0])
        n = self.n
        return [v / n for v in _mv(self.XT, state[0])]

    def hess(self, v):
        if self.kind == "quadratic":
            return _mv(self.H, v)
        n = self.n
        return [u / n for u in _mv(self.XT, _mv(self.X, v))]

    def step(self, state, eta, g):
        """State after ``w <- w - eta g``."""
        if self.kind == "quadratic":
            return [[a - eta * b for a, b in zip(state[0], g)]]
        Xg = _mv(self.X, g)
        r = [a - eta * b for a, b in zip(state[0], Xg)]
        s = None
        if state[1] is not None:
            Xvg = _mv(self.Xv, g)
            s = [a - eta * b for a, b in zip(state[1], Xvg)]
        return [r, s]

    def tangent_step(self, tan, gt):
        """Tangent after one step: d(w - eta g)/deta = wdot - g - eta gdot; ``gt = g + eta gdot``."""
        if self.kind == "quadratic":
            return [[a - b for a, b in zip(tan[0], gt)]]
        Xg = _mv(self.X, gt)
        r = [a - b for a, b in zip(tan[0], Xg)]
        s = None
        if tan[1] is not None:
            Xvg = _mv(self.Xv, gt)
            s = [a - b for a, b in zip(tan[1], Xvg)]
        return [r, s]

    def grad_of_tangent(self, tan):
        """d(grad f)/deta from the tangent state."""
        if self.kind == "quadratic":
            return _mv(self.H, tan[0])
        n = self.n
        return [v / n for v in _mv(self.XT, tan[0])]

    def train_loss(self, state):
        if self.kind == "quadratic":
            e = state[0]
            return _dot(e, _mv(self.H, e)) / 2
        r = state[0]
        return _dot(r, r) / (2 * self.n)

    def valid_loss(self, state):
        s = state[1]
        return _dot(s, s) / (2 * self.nv)

    def meta_loss(self, state):
        return self.valid_loss(state) if self.on == "valid" else self.train_loss(state)

    def meta_loss_tangent(self, state, tan):
        if self.kind == "quadratic":
            return _dot(_mv(self.H, state[0]), tan[0])
        if self.on == "valid":
            return _dot(state[1], tan[1]) / self.nv
        return _dot(state[0], tan[0]) / self.n

    def meta_loss_wgrad(self, state):
        """Gradient of the meta-loss with respect to w."""
        if self.kind == "quadratic":
            return _mv(self.H, state[0])
        if self.on == "valid":
            nv = self.nv
            return [v / nv for v in _mv(self.XvT, state[1])]
        return self.grad(state)


def _steps(eta, schedule, t):
    if (eta is None) == (schedule is None):
        raise ValueError("give exactly one of eta (constant step) or schedule (one step per iteration)")
    if schedule is not None:
        sch = _array(schedule, "schedule", 1)
        if t is not None and _int_t(t) != sch.shape[0]:
            raise ValueError(f"t = {t} does not match the schedule length {sch.shape[0]}")
        return [float(v) for v in sch], True
    e = _scalar(eta, "eta")
    if t is None:
        raise TypeError("t is required with a constant eta")
    return [e] * _int_t(t), False


def _problem_dim(H, X) -> int:
    if H is None and X is None:
        raise TypeError("give H (quadratic, with w0) or X and y (least squares)")
    return _array(H, "H", 2).shape[0] if H is not None else _array(X, "X", 2).shape[1]


def _iter_prec(prec, t, d):
    return prec + 64 + 2 * t.bit_length() + d.bit_length()


def iterate_metagrad(H: Any = None, w0: Any = None, w_star: Any = None, X: Any = None, y: Any = None,
                     Xv: Any = None, yv: Any = None, eta: Any = None, schedule: Any = None,
                     t: Any = None, objective: str = "final", on: str = "train", prec: int = 256):
    """Meta-objective and meta-gradient by running the ``t`` GD steps in mp.

    Give either ``H`` (quadratic, with ``w0`` and optional ``w_star``) or ``X, y`` (least squares,
    optional ``Xv, yv`` and ``w0``), and either a constant ``eta`` with ``t`` or a ``schedule``
    (its length is ``t``).  With a constant ``eta`` the derivative is propagated forward
    (tangent of the state); with a schedule the gradient with respect to every ``eta_k`` comes from
    one reverse sweep (``dM/deta_k = -a_{k+1} . grad f(w_k)``, ``a_k = (I - eta_k H) a_{k+1}``,
    ``a_t = grad M(w_t)``).  Returns ``(value, grad)``: ``grad`` is an mpf for a constant step and a
    list of ``t`` mpf for a schedule.  Intended for small problems (d <= 20, t <= 200).
    """
    mp = _mp()
    prec = _prec(prec)
    objective = _choice(objective, "objective", _OBJECTIVES)
    on = _choice(on, "on", _ON)
    steps, is_schedule = _steps(eta, schedule, t)
    T = len(steps)
    d = _problem_dim(H, X)
    with mp.workprec(_iter_prec(prec, T, d)):
        prob = _Problem(H, w0, w_star, X, y, Xv, yv, on, on == "valid")
        state = prob.initial()
        if not is_schedule:
            et = mp.mpf(steps[0])
            tan = [[mp.mpf(0)] * len(v) if v is not None else None for v in state]
            for _ in range(T):
                g = prob.grad(state)
                gd = prob.grad_of_tangent(tan)
                gt = [a + et * b for a, b in zip(g, gd)]
                tan = prob.tangent_step(tan, gt)
                state = prob.step(state, et, g)
            M = prob.meta_loss(state)
            dM = prob.meta_loss_tangent(state, tan)
        else:
            gs = []
            for k in range(T):
                g = prob.grad(state)
                gs.append(g)
                state = prob.step(state, mp.mpf(steps[k]), g)
            M = prob.meta_loss(state)
            a = prob.meta_loss_wgrad(state)
            dM = [None] * T
            for k in range(T - 1, -1, -1):
                dM[k] = -_dot(a, gs[k])
                Ha = prob.hess(a)
                ek = mp.mpf(steps[k])
                a = [u - ek * v for u, v in zip(a, Ha)]
    return _finish(M, dM, T, objective, prec)


def trajectory_losses(H: Any = None, w0: Any = None, w_star: Any = None, X: Any = None, y: Any = None,
                      Xv: Any = None, yv: Any = None, eta: Any = None, schedule: Any = None,
                      t: Any = None, on: str = "train", prec: int = 256) -> List[Any]:
    """The ``t + 1`` losses ``f(w_0), ..., f(w_t)`` of a GD run, in mp (rounded to ``prec`` bits).

    Same arguments as :func:`iterate_metagrad`; ``on="valid"`` gives the validation losses.
    """
    mp = _mp()
    prec = _prec(prec)
    on = _choice(on, "on", _ON)
    steps, _ = _steps(eta, schedule, t)
    T = len(steps)
    d = _problem_dim(H, X)
    out = []
    with mp.workprec(_iter_prec(prec, T, d)):
        prob = _Problem(H, w0, w_star, X, y, Xv, yv, on, on == "valid")
        state = prob.initial()
        out.append(prob.meta_loss(state))
        for k in range(T):
            g = prob.grad(state)
            state = prob.step(state, mp.mpf(steps[k]), g)
            out.append(prob.meta_loss(state))
    with mp.workprec(prec):
        return [+v for v in out]


# ----------------------------------------------------------------------------------------------
# conversions
# ----------------------------------------------------------------------------------------------

def to_float(x: Any) -> float:
    """Nearest float64 (``inf``/``-inf`` on overflow, ``0.0`` on underflow, ``nan`` for nan)."""
    mp = _mp()
    x = mp.mpf(x)
    if mp.isnan(x):
        return math.nan
    return float(x)


def log_abs(x: Any) -> float:
    """``log|x|`` as a float64 (``-inf`` for 0); finite for any non-zero mp number."""
    mp = _mp()
    x = mp.mpf(x)
    if mp.isnan(x):
        return math.nan
    if x == 0:
        return -math.inf
    if mp.isinf(x):
        return math.inf
    with mp.workprec(96):
        return float(mp.log(abs(x)))


def sign(x: Any) -> int:
    """-1, 0 or 1 (raises for nan)."""
    mp = _mp()
    x = mp.mpf(x)
    if mp.isnan(x):
        raise ValueError("sign of nan")
    return (x > 0) - (x < 0)


def to_str(x: Any, digits: int = 40) -> str:
    """Decimal string with ``digits`` significant digits (no loss of range: ``1e-400`` stays)."""
    mp = _mp()
    return mp.nstr(mp.mpf(x), int(digits))
