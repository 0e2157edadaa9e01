"""Command line: ``metastep <command>`` (also ``python -m metastep``)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, List, Optional, Sequence

import numpy as np

from . import api, problems
from ._validate import DTYPES


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.16e}" if abs(x) < 1e300 else f"{x:.6e}"


def _rel_err(log_abs: float, sign: int, ref_log: float, ref_sign: int) -> float:
    """Relative error |x − ref| / |ref| from log-magnitudes and signs (no overflow)."""
    if ref_sign == 0:
        return 0.0 if sign == 0 else math.inf
    if sign != ref_sign or not math.isfinite(log_abs):
        return math.inf if not math.isnan(log_abs) else math.nan
    return abs(math.expm1(log_abs - ref_log))


def _reference(problem: problems._Problem, args: argparse.Namespace) -> tuple[Optional[tuple], str]:
    """(log|value|, sign value, log|grad|, sign grad) of the mpmath oracle, and its name."""
    try:
        from . import reference
        if isinstance(problem, problems.Quadratic):
            v, g = reference.quadratic_metagrad(problem.H, problem.w0, problem.w_star, args.eta, args.steps,
                                                objective=args.objective, prec=args.prec)
        else:
            v, g = reference.lsq_metagrad(problem.X, problem.y, problem.X_valid, problem.y_valid, problem.w0,
                                          args.eta, args.steps, objective=args.objective, on=args.on, prec=args.prec)
        return ((reference.log_abs(v), reference.sign(v), reference.log_abs(g), reference.sign(g)),
                f"mpmath, {args.prec} bits")
    except ImportError:
        r = api.metagrad(problem, args.eta, args.steps, objective=args.objective, on=args.on, mode="exact",
                         dtype="longdouble")
        return ((r.log_abs_value, r.sign_value, r.log_abs_grad, r.sign_grad),
                "exact mode in longdouble (mpmath not installed: pip install mpmath)")


def cmd_compare(args: argparse.Namespace) -> int:
    if args.problem == "quadratic":
        problem: Any = problems.random_quadratic(args.d, args.seed)
    else:
        problem = problems.random_least_squares(args.d, args.n, args.sigma, args.seed,
                                                n_valid=args.n if args.on == "valid" else 0)
    modes = [m for m in api.MODES if m not in ("auto", "scaled")] if args.modes == "all" else args.modes.split(",")
    dtypes = list(DTYPES) if args.dtypes == "all" else args.dtypes.split(",")
    t0 = time.perf_counter()
    ref, ref_name = _reference(problem, args)
    t_ref = time.perf_counter() - t0
    assert ref is not None
    rows: List[dict] = []
    for mode in modes:
        for dt in dtypes:
            t0 = time.perf_counter()
            try:
                r = api.metagrad(problem, args.eta, args.steps, objective=args.objective, on=args.on,
                                 mode=mode, dtype=dt)
            except (ValueError, MemoryError) as exc:
                rows.append({"mode": mode, "dtype": dt, "error": str(exc)})
                continue
            dt_s = time.perf_counter() - t0
            rows.append({
                "mode": mode, "dtype": dt, "value": r.value, "grad": r.grad,
                "log_abs_grad": r.log_abs_grad,
                "rel_err_value": _rel_err(r.log_abs_value, r.sign_value, ref[0], ref[1]),
                "rel_err_grad": _rel_err(r.log_abs_grad, r.sign_grad, ref[2], ref[3]),
                "status": r.status, "seconds": dt_s,
            })
    L = problem.L
    print(f"{problem!r}: eta = {args.eta:g} (2/L = {2 / L:.4g}: {'inside' if args.eta < 2 / L else 'OUTSIDE'} the "
          f"stable range), t = {args.steps}, objective = {args.objective}, on = {args.on}")
    print(f"reference ({ref_name}, {t_ref:.2f} s): value = {_signed_exp(ref[1], ref[0])}, "
          f"grad = {_signed_exp(ref[3], ref[2])}")
    head = f"{'mode':<11} {'dtype':<10} {'grad (float64)':>24} {'rel.err grad':>12} {'rel.err value':>13} {'time':>9}  status"
    print(head)
    print("-" * len(head))
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<11} {row['dtype']:<10} {'—':>24} {'—':>12} {'—':>13} {'—':>9}  refused: {row['error']}")
            continue
        print(f"{row['mode']:<11} {row['dtype']:<10} {_fmt(row['grad']):>24} {row['rel_err_grad']:>12.2e} "
              f"{row['rel_err_value']:>13.2e} {row['seconds'] * 1e3:>7.2f}ms  {row['status']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"reference": ref_name, "ref": ref, "rows": rows, "eta": args.eta, "steps": args.steps,
                       "d": args.d, "seed": args.seed}, fh, indent=2, default=float)
    return 0


def _signed_exp(sign: int, log_abs: float) -> str:
    """A number given as sign · e^log_abs, printed in decimal without overflow."""
    if sign == 0:
        return "0"
    l10 = log_abs / math.log(10)
    e = math.floor(l10)
    return f"{'-' if sign < 0 else ''}{10 ** (l10 - e):.15f}e{e:+d}"


def cmd_info(args: argparse.Namespace) -> int:
    from . import build_info
    for k, v in build_info().items():
        print(f"{k:<26} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metastep", description="Learning to learn step sizes: meta-gradients of "
                                "unrolled gradient descent in any precision.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="one meta-gradient across every mode and precision, against mpmath",
                       description="Compute dF/deta (or dG/deta) of t-step GD on a random problem with every mode "
                       "and precision and print a table of relative errors against a 256-bit mpmath reference.")
    c.add_argument("--problem", choices=["quadratic", "lsq"], default="quadratic")
    c.add_argument("--d", type=int, default=20, help="dimension (default 20)")
    c.add_argument("--n", type=int, default=40, help="least squares: number of samples (default 40)")
    c.add_argument("--sigma", type=float, default=1.0, help="least squares: label noise (default 1)")
    c.add_argument("--steps", "-t", type=int, default=80, help="inner GD steps t (default 80)")
    c.add_argument("--eta", type=float, default=0.1, help="step size (default 0.1)")
    c.add_argument("--objective", choices=["final", "log"], default="final")
    c.add_argument("--on", choices=["train", "valid"], default="train")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--modes", default="all", help="comma-separated modes or 'all'")
    c.add_argument("--dtypes", default="all", help="comma-separated precisions or 'all'")
    c.add_argument("--prec", type=int, default=256, help="mpmath reference precision in bits (default 256)")
    c.add_argument("--json", help="also write the table as JSON to this file")
    c.set_defaults(func=cmd_compare)
    i = sub.add_parser("info", help="build facts: version, Eigen version and location, precisions, CUDA")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, MemoryError) as exc:
        print(f"metastep {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
