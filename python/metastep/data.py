"""Data sets for the learned-optimizer experiments (SPEC §7).

* :func:`load_digits` — scikit-learn's bundled 8×8 handwritten digits (1,797 samples, no
  network access), pixels scaled to [0, 1].
* :func:`load_mnist` — MNIST (or any data in the same formats) from local files: the IDX files
  ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (optionally gzipped) or an ``.npz``
  with ``x_train, y_train`` (and optionally ``x_test, y_test``) arrays. Nothing is downloaded.
* :func:`split` and :func:`add_label_noise` — seeded subsets and uniform label noise.

A :class:`Dataset` holds ``X`` (float64, one sample per row) and ``y`` (int64 labels).
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["Dataset", "load_digits", "load_mnist", "read_idx", "split", "add_label_noise", "check_dataset"]


@dataclass(frozen=True)
class Dataset:
    """Samples ``X`` (n × features, float64) and labels ``y`` (n, int64, in [0, classes))."""

    X: np.ndarray
    y: np.ndarray
    classes: int = 10

    def __post_init__(self) -> None:
        check_dataset(self.X, self.y, self.classes, "Dataset")

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.X.shape[0])

    @property
    def features(self) -> int:
        """Number of features per sample."""
        return int(self.X.shape[1])

    def subset(self, idx: np.ndarray) -> "Dataset":
        """The samples at ``idx`` (copied, same number of classes)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(np.ascontiguousarray(self.X[idx]), np.ascontiguousarray(self.y[idx]), self.classes)

    def __repr__(self) -> str:
        return f"Dataset(n={self.n}, features={self.features}, classes={self.classes})"


def check_dataset(X: np.ndarray, y: np.ndarray, classes: int, name: str) -> None:
    """Raise a ValueError/TypeError naming what is wrong with (X, y)."""
    if not isinstance(X, np.ndarray) or X.dtype != np.float64 or X.ndim != 2:
        raise TypeError(f"{name}: X must be a 2-D float64 numpy array")
    if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
        raise TypeError(f"{name}: y must be a 1-D int64 numpy array")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name}: empty data set")
    if not np.all(np.isfinite(X)):
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"{name}: X contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
    if classes < 2:
        raise ValueError(f"{name}: classes must be at least 2")
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(f"{name}: labels must lie in [0, {classes}), found range [{y.min()}, {y.max()}]")


def load_digits() -> Dataset:
    """scikit-learn's 8×8 digits (bundled with scikit-learn; no download), pixels in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as _ld
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    d = _ld()
    return Dataset(np.ascontiguousarray(d.data, dtype=np.float64) / 16.0, np.asarray(d.target, dtype=np.int64))


def _open(path: str):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


_IDX_TYPES: Dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format; gzip allowed) into a numpy array."""
    with _open(path) as fh:
        head = fh.read(4)
        if len(head) != 4 or head[0] != 0 or head[1] != 0:
            raise ValueError(f"{path}: not an IDX file (bad magic number)")
        code, ndim = head[2], head[3]
        if code not in _IDX_TYPES or ndim < 1:
            raise ValueError(f"{path}: unsupported IDX element type 0x{code:02x} or rank {ndim}")
        dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        dt = np.dtype(_IDX_TYPES[code])
        count = int(np.prod(dims))
        raw = fh.read(count * dt.itemsize)
        if len(raw) != count * dt.itemsize:
            raise ValueError(f"{path}: truncated IDX file ({len(raw)} of {count * dt.itemsize} data bytes)")
    return np.frombuffer(raw, dtype=dt).reshape(dims)


def _find(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem.replace("-idx", ".idx"), stem + ".gz", stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    return None


def _as_dataset(images: np.ndarray, labels: np.ndarray, name: str) -> Dataset:
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
    X = images.reshape(images.shape[0], -1).astype(np.float64)
    if X.size and X.max() > 1.0:
        X = X / 255.0
    y = labels.reshape(-1).astype(np.int64)
    return Dataset(np.ascontiguousarray(X), y, int(max(10, y.max() + 1)) if y.size else 10)


def load_mnist(path: str, part: str = "train") -> Dataset:
    """MNIST from local files, ``part`` = "train" or "test".

    ``path`` is an ``.npz`` file (arrays ``x_train, y_train`` / ``x_test, y_test``) or a folder
    with the IDX files ``{train,t10k}-images-idx3-ubyte`` and ``{train,t10k}-labels-idx1-ubyte``
    (optionally ``.gz``). Pixel values above 1 are scaled by 1/255.
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', not {part!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no MNIST data at {path!r} (nothing is downloaded: give a local .npz or IDX folder)")
    if os.path.isfile(path):
        with np.load(path) as z:
            kx, ky = f"x_{part}", f"y_{part}"
            if kx not in z or ky not in z:
                raise KeyError(f"{path}: the .npz needs arrays {kx!r} and {ky!r}; it has {sorted(z.files)}")
            return _as_dataset(z[kx], z[ky], path)
    stem = "train" if part == "train" else "t10k"
    pi, pl = _find(path, f"{stem}-images-idx3-ubyte"), _find(path, f"{stem}-labels-idx1-ubyte")
    if pi is None or pl is None:
        raise FileNotFoundError(f"{path}: missing {stem}-images-idx3-ubyte or {stem}-labels-idx1-ubyte (.gz allowed)")
    return _as_dataset(read_idx(pi), read_idx(pl), path)


def split(data: Dataset, sizes: Tuple[int, ...], seed: int) -> Tuple[Dataset, ...]:
    """Disjoint random subsets of the given sizes (seeded)."""
    sizes = tuple(int(s) for s in sizes)
    if any(s < 0 for s in sizes):
        raise ValueError(f"split sizes must be non-negative, got {sizes}")
    if sum(sizes) > data.n:
        raise ValueError(f"split sizes {sizes} need {sum(sizes)} samples but the data set has {data.n}")
    perm = np.random.default_rng(seed).permutation(data.n)
    out, o = [], 0
    for s in sizes:
        out.append(data.subset(np.sort(perm[o:o + s])))
        o += s
    return tuple(out)


def add_label_noise(data: Dataset, fraction: float, seed: int) -> Tuple[Dataset, np.ndarray]:
    """Replace a ``fraction`` of the labels (chosen at random) by uniform random labels.

    Returns the noisy data set and the boolean mask of the rows whose label was resampled
    (a resampled label may coincide with the true one, with probability 1/classes)."""
    if not (0.0 <= fraction <= 1.0):
        raise ValueError(f"label-noise fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    k = int(round(fraction * data.n))
    mask = np.zeros(data.n, dtype=bool)
    mask[rng.choice(data.n, size=k, replace=False)] = True
    y = data.y.copy()
    y[mask] = rng.integers(0, data.classes, size=k)
    return Dataset(data.X, y, data.classes), mask
