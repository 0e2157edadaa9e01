"""E7 — learned optimizer on all samples (paper Fig. 7; SPEC §8): with the whole training pool
(1,400 digits) train-by-train and train-by-validation end within a few points of each other.
Protocol in :mod:`metastep.experiments.learned_tbt_tbv` (each task uses the whole pool; TbV
trains on half of it and validates on the other half).

Check: |mean TbV − mean TbT| final test accuracy ≤ 3 percentage points.
"""
from __future__ import annotations

from typing import Any, Dict, List

from . import check
from .learned_tbt_tbv import run_setting

NAME = "e7"
#: "within a few points": the largest |TbV - TbT| final test accuracy difference accepted
CLOSE = 0.03


def _checks(res: Dict[str, Any], out_dir: str) -> List[Dict[str, Any]]:
    st = res["stats"]
    return [check(f"all samples (n = {res['config']['n_effective']}): TbT and TbV final test accuracies within "
                  f"{CLOSE:.0%}", abs(res["margin"]) <= CLOSE,
                  {"tbv_test_acc": st["tbv"]["test_acc"], "tbt_test_acc": st["tbt"]["test_acc"],
                   "margin": res["margin"], "spread": res["spread"]}, f"|TbV - TbT| <= {CLOSE}")]


def run(out_dir: str, quick: bool = False, seed: int = 0, progress: bool = True, paper: bool = False,
        jobs: int = 1) -> Dict[str, Any]:
    """Run E7 into ``out_dir/e7``; ``paper=True`` uses the paper's truncation schedule and more meta-steps;
    ``jobs`` worker processes run the independent meta-training and evaluation runs (same results)."""
    return run_setting(NAME, "all samples", None, 0.0, out_dir, quick, seed, progress, paper, _checks, jobs=jobs)
