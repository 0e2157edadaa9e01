"""Command line: ``metastep <command>`` (also ``python -m metastep``)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, List, Optional, Sequence

import numpy as np

from . import api, problems
from ._validate import DTYPES
from .sweep import _positive
from .sweep import add_cli_arguments as add_sweep_arguments


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


def _rel_err_exact(r: Any, which: str, args: argparse.Namespace) -> Optional[float]:
    """|x − ref| / |ref| computed in mpmath from the result's most precise form (decimal text for
    quad/mp, the long double copy otherwise); None when no mpmath reference or x is not finite."""
    mp_ref = getattr(args, "_mp_ref", None)
    if mp_ref is None:
        return None
    import mpmath
    ref = mp_ref[0] if which == "value" else mp_ref[1]
    text = getattr(r, f"{which}_text")
    ext = np.longdouble(getattr(r, f"{which}_ext"))
    if text is None and not np.isfinite(ext):
        return None
    with mpmath.workprec(max(320, args.prec + 64)):
        try:
            x = mpmath.mpf(text) if text is not None else mpmath.mpf(np.format_float_scientific(ext, unique=True))
        except (ValueError, TypeError):
            return None
        if not mpmath.isfinite(x) or not mpmath.isfinite(ref):
            return None
        if ref == 0:
            return 0.0 if x == 0 else math.inf
        err = float(abs(x - ref) / abs(ref))
    return err if err > 0 else 1e-300  # a positive number: `or` keeps exact zeros distinct from None


def _reference(problem: Any, args: argparse.Namespace) -> tuple[Optional[tuple], str]:
    """(log|value|, sign value, log|grad|, sign grad) of the mpmath oracle, and its name."""
    try:
        from . import reference
        if isinstance(problem, problems.Quadratic):
            v, g = reference.quadratic_metagrad(problem.H, problem.w0, problem.w_star, args.eta, args.steps,
                                                objective=args.objective, prec=args.prec)
        else:
            v, g = reference.lsq_metagrad(problem.X, problem.y, problem.X_valid, problem.y_valid, problem.w0,
                                          args.eta, args.steps, objective=args.objective, on=args.on, prec=args.prec)
        args._mp_ref = (v, g)  # exact values, for errors below float64's resolution
        return ((reference.log_abs(v), reference.sign(v), reference.log_abs(g), reference.sign(g)),
                f"mpmath, {args.prec} bits")
    except ImportError:
        r = api.metagrad(problem, args.eta, args.steps, objective=args.objective, on=args.on, mode="exact",
                         dtype="longdouble")
        return ((r.log_abs_value, r.sign_value, r.log_abs_grad, r.sign_grad),
                "exact mode in longdouble (mpmath not installed: pip install mpmath)")


def cmd_compare(args: argparse.Namespace) -> int:
    """``metastep compare``: one meta-gradient in every mode and precision, errors against a reference."""
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
                "rel_err_value": _rel_err_exact(r, "value", args) or _rel_err(float(r.log_abs_value), int(r.sign_value),
                                                                               ref[0], ref[1]),
                "rel_err_grad": _rel_err_exact(r, "grad", args) or _rel_err(float(r.log_abs_grad), int(r.sign_grad),
                                                                             ref[2], ref[3]),
                "status": r.status, "seconds": dt_s,
            })
    L = problem.L
    print(f"{problem!r}: eta = {args.eta:g} (2/L = {2 / L:.4g}: {'inside' if args.eta < 2 / L else 'OUTSIDE'} the "
          f"stable range), t = {args.steps}, objective = {args.objective}, on = {args.on}")
    print(f"reference ({ref_name}, {t_ref:.2f} s): value = {_signed_exp(ref[1], ref[0])}, "
          f"grad = {_signed_exp(ref[3], ref[2])}")
    mw = max([len("mode")] + [len(str(row["mode"])) for row in rows])  # the widest mode name
    head = f"{'mode':<{mw}} {'dtype':<10} {'grad (float64)':>24} {'rel.err grad':>12} {'rel.err value':>13} {'time':>9}  status"
    print(head)
    print("-" * len(head))
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<{mw}} {row['dtype']:<10} {'—':>24} {'—':>12} {'—':>13} {'—':>9}  refused: {row['error']}")
            continue
        print(f"{row['mode']:<{mw}} {row['dtype']:<10} {_fmt(row['grad']):>24} {row['rel_err_grad']:>12.2e} "
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


def _print_checks(title: str, summary: dict, out: str) -> None:
    """Final summary table of an experiment or study: result, check (wrapped), measured, expected."""
    import textwrap
    checks = summary.get("checks", [])
    print()
    print(f"{title}: {'PASSED' if summary.get('passed') else 'FAILED'} "
          f"({sum(c['passed'] for c in checks)}/{len(checks)} checks, {summary.get('seconds', 0.0):.1f} s) -> {out}")
    wn, wm = 64, 30
    print(f"{'result':<6}  {'check':<{wn}}  {'measured':<{wm}}  expected")
    print("-" * (6 + wn + wm + 20))
    for c in checks:
        name = textwrap.wrap(c["name"], wn) or [""]
        meas = textwrap.wrap(_short(c["measured"]), wm) or [""]
        for i in range(max(len(name), len(meas))):
            res = ("pass" if c["passed"] else "FAIL") if i == 0 else ""
            exp = str(c["expected"]) if i == 0 else ""
            n = name[i] if i < len(name) else ""
            m = meas[i] if i < len(meas) else ""
            print(f"{res:<6}  {n:<{wn}}  {m:<{wm}}  {exp}")


def _short(x: Any, limit: int = 90) -> str:
    """A compact rendering of a check's measured value."""
    if isinstance(x, dict) and isinstance(x.get("cases"), list):
        return "; ".join(f"{c.get('mode')}/{c.get('dtype')}: step {c.get('reported_step')} "
                         f"(predicted {c.get('predicted_step')})" for c in x["cases"])
    if isinstance(x, dict):
        keys = [k for k in ("smallest ratio eta*(t_next)/eta*(t)", "max_rel_err", "max_rel_dev", "max_gap", "max_dev", "median", "max", "max |G'|/bound",
                            "count", "not_ok", "unexplained", "unexplained_seeds", "failed_seeds", "outcomes",
                            "seeds_not_increasing", "monotone_seeds") if k in x]
        if keys:
            return ", ".join(f"{k}={_short(x[k], limit)}" for k in keys[:2])
        if all(isinstance(v, dict) for v in x.values()):
            return "; ".join(f"{k}: {_short(v, limit)}" for k, v in x.items())
        text = json.dumps(x, default=str)
    elif isinstance(x, float):
        text = f"{x:.3g}"
    else:
        text = json.dumps(x, default=str) if isinstance(x, (list, tuple)) else str(x)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _supports_sweep(module: Any) -> bool:
    """Whether an experiment's ``run`` takes ``workers`` and ``scheduler`` (metastep.sweep)."""
    import inspect
    params = inspect.signature(module.run).parameters
    return "workers" in params and "scheduler" in params


def _run_one(name: str, args: argparse.Namespace, opts: dict) -> dict:
    """Run one experiment as ``metastep reproduce NAME`` would and return its summary."""
    from . import experiments
    extra: dict = {"paper": True} if getattr(args, "paper_scale", False) and name in experiments.LEARNED else {}
    if getattr(args, "jobs", 1) != 1 and name in experiments.LEARNED:
        extra["jobs"] = args.jobs
    if opts and _supports_sweep(experiments.get(name)):
        return experiments.get(name).run(args.out, quick=args.quick, seed=args.seed,
                                         progress=not args.no_progress, **opts, **extra)
    if opts:
        print(f"note: {name} runs in this process (it does not support --workers/--scheduler)")
    return experiments.run(name, args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress, **extra)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``metastep reproduce NAME`` / ``--all``: run experiments, print their checks; 1 when one fails."""
    from . import experiments
    from .sweep import cli_options
    if args.all and args.name not in (None, "all"):
        raise ValueError(f"give either an experiment name or --all, not both ({args.name} --all)")
    if not args.all and args.name is None:
        raise ValueError("name an experiment (" + ", ".join(experiments.EXPERIMENTS) + ") or give --all")
    if args.all or args.name == "all":
        return _reproduce_all(args)
    opts = cli_options(args)
    if args.jobs != 1 and args.name not in experiments.LEARNED:
        raise ValueError(f"--jobs applies to {', '.join(experiments.LEARNED)} (and --all), not {args.name}")
    if opts and not _supports_sweep(experiments.get(args.name)):
        supported = [n for n in experiments.EXPERIMENTS if _supports_sweep(experiments.get(n))]
        raise ValueError(f"{args.name} does not support --workers/--scheduler (supported: {', '.join(supported)})")
    summary = _run_one(args.name, args, opts)
    _print_checks(f"metastep reproduce {args.name}{' --quick' if args.quick else ''}", summary,
                  f"{args.out}/{args.name}/summary.json")
    return 0 if summary["passed"] else 1


def _reproduce_all(args: argparse.Namespace) -> int:
    """Every experiment into one folder, then OUT/index.md and OUT/index.html (figures beside their
    claims and checks); exit status 1 when a check failed or an experiment stopped with an error."""
    import traceback

    from . import experiments
    from .experiments.report import ExperimentRun, rerun_command, summary_table, write_index
    from .sweep import cli_options
    opts = cli_options(args)
    names = list(experiments.EXPERIMENTS)
    paper = bool(getattr(args, "paper_scale", False))
    runs: List[ExperimentRun] = []
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(names), desc="reproduce --all", unit="exp", position=0)
    for name in names:
        if bar is not None:
            bar.set_postfix_str(name)
        t0 = time.perf_counter()
        cmd = rerun_command(name, args.out, args.quick, args.seed, paper, args.jobs)
        try:
            summary = _run_one(name, args, opts)
            run = ExperimentRun(name, summary, time.perf_counter() - t0, cmd)
        except Exception as exc:  # an experiment that crashes must not hide the others' results
            run = ExperimentRun(name, None, time.perf_counter() - t0, cmd,
                                error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        runs.append(run)
        if bar is not None:
            bar.update(1)
            bar.write(f"{name}: {'PASS' if run.passed else ('ERROR' if run.error else 'FAIL')} "
                      f"({run.n_passed}/{len(run.checks)} checks, {run.wall_seconds:.1f} s)")
    if bar is not None:
        bar.close()
    for run in runs:
        if run.error:
            print(f"\n{run.name}: ERROR {run.error}")
        else:
            _print_checks(f"metastep reproduce {run.name}{' --quick' if args.quick else ''}", run.summary,
                          f"{args.out}/{run.name}/summary.json")
    command = "metastep reproduce --all --out " + args.out + (" --quick" if args.quick else "") + \
        (f" --seed {args.seed}" if args.seed else "") + (" --paper-scale" if paper else "") + \
        (f" --jobs {args.jobs}" if args.jobs != 1 else "")
    paths = write_index(args.out, runs, title="metastep reproduce --all" + (" --quick" if args.quick else ""),
                        command=command)
    print()
    print(summary_table(runs))
    print(f"index: {paths['html']} and {paths['md']}")
    return 0 if all(r.passed for r in runs) else 1


def _csv_list(text: Optional[str], conv: Any) -> Optional[list]:
    if text is None:
        return None
    return [conv(x) for x in text.split(",") if x.strip()]


def cmd_stability(args: argparse.Namespace) -> int:
    """``metastep stability``: the mode × precision × t × η study against the exact oracle."""
    from . import stability
    from .sweep import cli_options
    steps = _csv_list(args.steps, lambda x: int(float(x)))
    if steps is None:
        steps = [10, 100, 1000] if args.quick else [10, 100, 1000, 10**4, 10**5]
    etas = _csv_list(args.etas, float) or [0.5, 1.5, 2.5]
    max_cell = args.max_cell_seconds if args.max_cell_seconds is not None else (10.0 if args.quick else 120.0)
    problem = None
    if args.d != 100:
        problem = stability.default_problem(args.seed, d=args.d)
    rep = stability.stability_study(problem, modes=_csv_list(args.modes, str), dtypes=_csv_list(args.dtypes, str),
                                    steps=steps, etas=etas, objective=args.objective, out_dir=args.out,
                                    progress=not args.no_progress, tol=args.tol, seed=args.seed,
                                    max_cell_seconds=max_cell, plot=not args.no_plots, **cli_options(args))
    print(f"cells ran on: {rep.executor}")
    print()
    print("first failing t (status-only in parentheses) per mode / precision / objective:")
    head = f"{'mode':<15} {'dtype':<11} {'objective':<9} " + " ".join(f"{'eta=' + format(e, 'g'):>16}" for e in rep.etas)
    print(head)
    print("-" * len(head))
    for mode in rep.modes:
        for dt in rep.dtypes:
            for obj in rep.objectives:
                cells = []
                for e in rep.etas:
                    ff, fn = rep.first_fail.get((mode, dt, obj, e)), rep.first_not_ok.get((mode, dt, obj, e))
                    cells.append(f"{'-' if ff is None else format(ff, 'g')} ({'-' if fn is None else format(fn, 'g')})")
                print(f"{mode:<15} {dt:<11} {obj:<9} " + " ".join(f"{c:>16}" for c in cells))
    if rep.skipped:
        print(f"{len(rep.skipped)} cell group(s) skipped; reasons in {args.out}/stability.md")
    for n in rep.notes:
        print(f"note: {n}")
    summary = {"checks": rep.checks, "passed": rep.passed, "seconds": rep.seconds}
    _print_checks("metastep stability", summary, f"{args.out}/summary.json")
    return 0 if rep.passed else 1


def cmd_info(args: argparse.Namespace) -> int:
    """``metastep info``: print the build facts (:func:`metastep.build_info`)."""
    from . import build_info
    for k, v in build_info().items():
        print(f"{k:<26} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metastep`` command (one sub-command per task)."""
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

    from .experiments import EXPERIMENTS
    r = sub.add_parser("reproduce", help="run one of the paper's experiments (data, figures, checks)",
                       description="Reproduce an experiment of the paper (SPEC section 8): writes data (CSV/JSON), "
                       "figures (PNG) and OUT/<name>/summary.json, prints the checks; the exit status is 1 when a "
                       "check fails. --all runs every experiment into OUT and writes OUT/index.html and "
                       "OUT/index.md (each figure beside its claim, checks, run times, rerun commands).")
    r.add_argument("name", nargs="?", choices=list(EXPERIMENTS) + ["all"],
                   help="experiment: " + ", ".join(EXPERIMENTS) + "; 'all' (= --all) runs every one")
    r.add_argument("--all", action="store_true",
                   help="every experiment into one --out folder, with OUT/index.html and OUT/index.md showing each "
                   "figure beside its claim and checks")
    r.add_argument("--out", required=True, help="output folder (the experiment writes OUT/<name>/)")
    r.add_argument("--quick", action="store_true", help="reduced version that runs in seconds")
    r.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_sweep_arguments(r)
    r.add_argument("--paper-scale", action="store_true",
                   help="E5-E7: the paper's truncation schedule, 1000 meta-steps, 3 meta-training runs per method, "
                   "10 evaluation runs of 3000 steps (hours)")
    r.add_argument("--jobs", type=_positive, default=1, metavar="N",
                   help="E5-E7: run the independent meta-training runs (2 methods x meta_runs) and the evaluation "
                   "runs in N worker processes (default 1; the results are the same for any N)")
    r.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("stability", help="sweep mode x precision x t x eta against the exact oracle",
                       description="Numerical-stability study: every mode and precision against the closed form in "
                       "the widest precision, on a d=100 quadratic with eigenvalues geomspace(0.01, 1) (or --d). "
                       "Writes stability.csv/.md, first_fail.csv, summary.json and figures; the exit status is 1 "
                       "when an acceptance check fails.")
    s.add_argument("--out", default="metastep_stability", help="output folder (default ./metastep_stability)")
    s.add_argument("--quick", action="store_true", help="t in {10, 100, 1000} and a 10 s limit per cell")
    s.add_argument("--seed", type=int, default=0, help="seed of the generated problem (default 0)")
    s.add_argument("--d", type=int, default=100, help="dimension of the generated problem (default 100)")
    s.add_argument("--modes", help="comma-separated modes (default: all but auto/scaled)")
    s.add_argument("--dtypes", help="comma-separated precisions (default: all compiled)")
    s.add_argument("--steps", help="comma-separated horizons t (default 10,100,1000,1e4,1e5)")
    s.add_argument("--etas", help="comma-separated step sizes (default 0.5,1.5,2.5; L = 1)")
    s.add_argument("--objective", choices=["log", "final", "both"], default="log")
    s.add_argument("--tol", type=float, default=1e-6, help="relative error counted as a failure (default 1e-6)")
    s.add_argument("--max-cell-seconds", type=float, default=None,
                   help="skip cells predicted to take longer (default 120, quick 10)")
    s.add_argument("--no-plots", action="store_true", help="tables only")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_sweep_arguments(s)
    s.set_defaults(func=cmd_stability)

    b = sub.add_parser("bench", help="time the modes against NumPy, JAX, PyTorch and this machine's roofline",
                       description="Benchmark forward-mode meta-gradients of t-step GD on dense quadratics (one "
                       "step size and a batch), side by side with NumPy, JAX (jit) and PyTorch when installed, and "
                       "the measured GEMM/matrix-vector roofline; prints medians and ratios and writes JSON. For "
                       "NumPy's best BLAS kernel run it as `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE metastep "
                       "bench` where those variables are set.")
    b.add_argument("--quick", action="store_true", help="small cases (seconds)")
    b.add_argument("--out", default="metastep_bench.json", help="JSON output file")
    b.add_argument("--threads", type=int, default=None,
                   help="threads of the thread-scaling rows (default: all cores); every other row runs on one thread")
    b.add_argument("--gpu", action="store_true",
                   help="benchmark the CUDA path instead (against PyTorch-CUDA, JAX-CUDA and the cuBLAS product "
                   "bound; needs a GPU)")
    b.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    """``metastep bench``: time the modes against NumPy/JAX/PyTorch (or the CUDA path with --gpu)."""
    from .bench import ONE_THREAD_ENV, format_gpu_table, format_table, run_bench, run_gpu_bench
    if args.gpu:
        ok, why = api.cuda_available()
        if not ok:
            print(f"metastep bench --gpu: {why}", file=sys.stderr)
            return 2
        out = args.out if args.out != "metastep_bench.json" else "metastep_gpu_bench.json"
        print(format_gpu_table(run_gpu_bench(quick=args.quick, out=out,
                                             progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))))
        return 0
    if any(os.environ.get(k) != v for k, v in ONE_THREAD_ENV.items()):
        # NumPy's BLAS reads its thread count when it is loaded (already, here): run the
        # benchmark in a fresh interpreter with every peer pinned to one thread
        import subprocess
        env = dict(os.environ, **ONE_THREAD_ENV)
        return subprocess.call([sys.executable, "-m", "metastep", "bench", *_bench_argv(args)], env=env)
    print(format_table(run_bench(quick=args.quick, out=args.out, threads=args.threads)))
    return 0


def _bench_argv(args: argparse.Namespace) -> List[str]:
    out = ["--out", args.out]
    if args.quick:
        out.append("--quick")
    if args.threads is not None:
        out += ["--threads", str(args.threads)]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``metastep`` / ``python -m metastep``; returns the exit status (2 on bad input)."""
    from .sweep import SweepError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, MemoryError, ImportError, SweepError) as exc:
        print(f"metastep {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
