"""Reproductions of the paper's experiments (SPEC §8), one module per experiment.

Every module has ``run(out_dir, quick=False, seed=0, progress=True) -> dict`` and
``plot(results, out_dir)``.  ``run`` writes its data (CSV/JSON), its figures (PNG) and
``out_dir/<name>/summary.json``::

    {"experiment": name, "passed": bool, "seconds": float,
     "checks": [{"name", "passed", "measured", "expected"}, ...], ...}

and returns that summary (plus the raw results under ``"results"``, not written to JSON).
``quick=True`` runs a reduced version in seconds that still decides every check it reports.

Available: ``e1`` (meta-training η, paper Fig. 1), ``e2`` (η*(t), Fig. 2), ``egrad``
(meta-gradient explosion and where each mode/precision fails; Theorems 3–4, Corollary 1),
``e3``, ``e4`` and ``e3-sgd`` (train-by-train vs train-by-validation, Figs. 3–4), ``e5``, ``e6``,
``e7`` (the same for learned optimizers on digits, Figs. 5–7; their ``run`` also takes
``paper=True`` for the paper-scale configuration).
"""
from __future__ import annotations

import importlib
import json
import math
import os
from typing import Any, Dict, List

import numpy as np

__all__ = ["EXPERIMENTS", "get", "run", "check", "write_summary", "jsonable"]

#: Experiment names (as in ``metastep reproduce NAME``) and their modules.
EXPERIMENTS = {"e1": "e1", "e2": "e2", "egrad": "egrad", "e3": "e3", "e4": "e4", "e3-sgd": "e3_sgd",
               "e5": "e5", "e6": "e6", "e7": "e7"}


def get(name: str) -> Any:
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name]}")


#: experiments whose ``run`` takes ``paper`` (the paper's scale) and ``jobs`` (worker processes)
LEARNED = ("e5", "e6", "e7")


def run(name: str, out_dir: str, quick: bool = False, seed: int = 0, progress: bool = True,
        paper: bool = False, jobs: int = 1) -> Dict[str, Any]:
    """Run experiment ``name`` (see the module docstrings). E5–E7 only: ``paper``, the paper's
    scale; ``jobs``, worker processes for their independent meta-training and evaluation runs."""
    from .learned_tbt_tbv import check_jobs
    jobs = check_jobs(jobs)
    extra: Dict[str, Any] = {}
    if paper:
        extra["paper"] = True
    if jobs != 1:
        if name not in LEARNED:
            raise ValueError(f"jobs applies to {', '.join(LEARNED)} only, not {name}")
        extra["jobs"] = jobs
    return get(name).run(out_dir, quick=quick, seed=seed, progress=progress, **extra)


def check(name: str, passed: Any, measured: Any, expected: Any) -> Dict[str, Any]:
    """One entry of a summary's ``checks`` list."""
    return {"name": name, "passed": bool(passed), "measured": jsonable(measured), "expected": jsonable(expected)}


def jsonable(x: Any) -> Any:
    """Plain JSON types (non-finite floats become the strings 'inf', '-inf', 'nan')."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    return x


def write_summary(exp_dir: str, name: str, checks: List[Dict[str, Any]], seconds: float,
                  **extra: Any) -> Dict[str, Any]:
    """Write ``exp_dir/summary.json`` and return the summary dict."""
    summary = {"experiment": name, "passed": all(c["passed"] for c in checks), "seconds": float(seconds),
               "checks": checks}
    summary.update({k: jsonable(v) for k, v in extra.items()})
    os.makedirs(exp_dir, exist_ok=True)
    with open(os.path.join(exp_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def progress_iter(it: Any, progress: bool, desc: str, total: Any = None) -> Any:
    """``it`` wrapped in a tqdm progress bar labelled ``desc`` when ``progress`` (else ``it`` itself)."""
    if not progress:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, leave=False)


