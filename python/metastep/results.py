"""Result objects: small frozen dataclasses carrying values, exact magnitudes and diagnostics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import numpy as np

__all__ = ["MetaGradResult", "UnrollResult"]

ArrayOrFloat = Union[float, np.ndarray]


@dataclass(frozen=True, repr=False)
class MetaGradResult:
    """Meta-objective and meta-gradient of one call.

    For a scalar ``eta`` the numeric fields are Python floats/ints and ``status`` is a
    string; for an array of step sizes they are arrays of the same length and ``status`` is
    a list. With a ``schedule``, ``grad`` holds dF/dη_τ for every step τ (reverse and
    checkpoint modes) and ``grad_along_ones`` their sum.

    Attributes
    ----------
    value, grad : float64 (may be inf or 0 where the true value is outside float64's range)
    log_abs_value, log_abs_grad : natural log of the magnitudes, exact whatever the range
    sign_value, sign_grad : -1, 0 or +1
    value_ext, grad_ext : numpy long double copies (exact for float32/float64/longdouble)
    value_text, grad_text : exact decimal strings for the extended precisions (quad, mp),
        including values far outside long double's range; None otherwise
    status : "ok", or what failed first: "<kind>: <quantity> at step <τ>"
    diagnostics : per call, a dict (or list of dicts): failure, log2-magnitude ranges of
        iterate/tangent/adjoint/loss, stored states and recomputed steps (cost/memory)
    """

    value: ArrayOrFloat
    grad: ArrayOrFloat
    log_abs_value: ArrayOrFloat
    sign_value: Union[int, np.ndarray]
    log_abs_grad: ArrayOrFloat
    sign_grad: Union[int, np.ndarray]
    status: Union[str, List[str]]
    value_ext: Any
    grad_ext: Any
    mode: str
    dtype: str
    objective: str
    on: str
    steps: int
    eta: Optional[ArrayOrFloat]
    diagnostics: Union[Dict[str, Any], List[Dict[str, Any]]] = field(default_factory=dict)
    grad_along_ones: Optional[float] = None
    value_text: Any = None
    grad_text: Any = None

    @property
    def ok(self) -> Union[bool, np.ndarray]:
        """True where the computation stayed within the precision's range."""
        if isinstance(self.status, str):
            return self.status == "ok"
        return np.array([s == "ok" for s in self.status])

    def __repr__(self) -> str:
        head = (f"MetaGradResult(mode={self.mode!r}, dtype={self.dtype!r}, objective={self.objective!r}, "
                f"on={self.on!r}, steps={self.steps}")
        if isinstance(self.status, str) and np.ndim(self.grad) == 0:
            return (f"{head}, eta={self.eta!r}, value={self.value!r}, grad={self.grad!r}, "
                    f"log_abs_grad={self.log_abs_grad!r}, status={self.status!r})")
        n = len(self.status) if isinstance(self.status, list) else 1
        bad = sum(s != "ok" for s in self.status) if isinstance(self.status, list) else int(self.status != "ok")
        return f"{head}, batch={n}, grad shape={np.shape(self.grad)}, not ok={bad})"


@dataclass(frozen=True, repr=False)
class UnrollResult:
    """Losses of an unrolled GD run (t + 1 values) and its final iterate.

    ``losses`` is float64 (may under/overflow); ``log_losses`` holds log f(w_τ) computed in
    the run's precision and ``losses_ext`` long double copies.
    """

    losses: np.ndarray
    log_losses: np.ndarray
    losses_ext: np.ndarray
    valid_losses: Optional[np.ndarray]
    log_valid_losses: Optional[np.ndarray]
    w_final: np.ndarray
    w_final_ext: np.ndarray
    status: str
    diagnostics: Dict[str, Any]
    dtype: str
    steps: int

    @property
    def ok(self) -> bool:
        """True when the unroll stayed within the precision's range (status "ok")."""
        return self.status == "ok"

    def __repr__(self) -> str:
        return (f"UnrollResult(dtype={self.dtype!r}, steps={self.steps}, loss[0]={self.losses[0]:.6g}, "
                f"loss[t]={self.losses[-1]:.6g}, status={self.status!r})")
