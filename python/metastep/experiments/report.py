"""The index of a ``metastep reproduce --all`` run: every figure beside the claim it must show.

:func:`write_index` reads ``OUT/<name>/summary.json`` of each experiment that ran and writes
``OUT/index.md`` and ``OUT/index.html``. The HTML page needs no network and no other file than
the figures, which it links by relative paths (``e1/e1_convergence.png``): the folder can be
moved, zipped or served as it is.
"""
from __future__ import annotations

import glob
import html
import json
import os
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["CLAIMS", "CAPTIONS", "ExperimentRun", "rerun_command", "load_runs", "write_index",
           "summary_table"]

#: What each experiment must show (SPEC §8, in short).
CLAIMS: Dict[str, str] = {
    "e1": "Paper Fig. 1. Meta-gradient descent on G(η) = (1/t)·log f(w_t) (d = 20, t = 80, η₀ = 0.1, "
          "μ_k = 1/(100√k)) converges to the exact minimiser η*: median relative error below 1 % at "
          "meta-step 1000 over the seeds. Driving the same meta-training by plain back-propagation "
          "in float32/float64 fails (non-finite or stuck) where the exact and scaled modes converge.",
    "e2": "Paper Fig. 2. The optimal step size η*(t) increases with the horizon t "
          "(t from 1 to 10⁶) towards 2/(L + α).",
    "egrad": "Paper Thm 3/4, Cor. 1. The naive meta-gradient |F′(η)| grows or shrinks like |1 − ηλ|^{2t} "
             "(fitted exponential rate against theory) while |G′(η)| stays bounded; and where each "
             "mode × precision first fails as t grows.",
    "e3": "Paper Fig. 3. Least squares with few noisy samples (d = 1000, t = 40): train-by-train "
          "interpolates (train RMSE ≈ 0) and tests worse than train-by-validation for σ ≥ 1, with the "
          "gap growing in σ; TbV's chosen η shrinks as σ grows.",
    "e4": "Paper Fig. 4. At σ = 1, the TbT − TbV test gap shrinks as the number of samples grows "
          "(Thm 6: TbT's excess error → dσ²/n).",
    "e3-sgd": "Paper appendix. The E3 comparison with minibatch SGD as the inner optimizer: "
              "train-by-validation still generalises better than train-by-train.",
    "e5": "Paper Fig. 5. Learned optimizer on few samples: TbV's final test accuracy beats TbT's by "
          "more than the spread over evaluation runs (tuned SGD and Adam as baselines).",
    "e6": "Paper Fig. 6. Learned optimizer on few samples with 20 % label noise: TbT memorises the "
          "noise and TbV generalises better, by a wider margin than without noise.",
    "e7": "Paper Fig. 7. Learned optimizer on the full data set: TbT and TbV end close to each other.",
}

#: One line per figure file (by file name); figures not listed get their experiment's claim.
CAPTIONS: Dict[str, str] = {
    "e1_paper_case.png": "η_k of meta-GD on G against the meta-step k, per seed, with the exact η* "
                         "(exact mode in float64 and scaled mode in float32).",
    "e1_convergence.png": "Relative error |η_k − η*|/η* per seed on a log scale: it falls below 1 % and "
                          "keeps falling when meta-training continues.",
    "e1_large_t.png": "The harder case t = 1000, η₀ = 1: each seed converges, stalls on the flat "
                      "plateau below η*, or still bounces — as explained in the summary.",
    "e1_reverse_vs_scaled.png": "Plain reverse mode in float32/float64 stops with a non-finite "
                                "meta-gradient where the range-safe modes keep training.",
    "e2_eta_star.png": "η*(t) against t on a log axis: it increases towards 2/(L + α).",
    "egrad_curves.png": "|F′(η)| and |G′(η)| over η for several t (log scale): F′ spans hundreds of "
                        "decades, G′ stays bounded.",
    "egrad_growth_rates.png": "Fitted exponential growth rate of |F′| against the theory "
                              "2·log max|1 − ηλ|.",
    "egrad_failure_map_log.png": "Relative error of G′ per mode × precision × t × η against the exact "
                                 "oracle: where each combination first fails.",
}

_CHECK_FILE = "summary.json"


class ExperimentRun:
    """One experiment of an ``--all`` run: its summary (or the error that stopped it) and timing."""

    def __init__(self, name: str, summary: Optional[Dict[str, Any]], wall_seconds: float,
                 command: str, error: Optional[str] = None) -> None:
        self.name = name
        self.summary = summary or {}
        self.wall_seconds = float(wall_seconds)
        self.command = command
        self.error = error

    @property
    def checks(self) -> List[Dict[str, Any]]:
        """The experiment's checks (empty when it did not finish)."""
        return list(self.summary.get("checks", []))

    @property
    def passed(self) -> bool:
        """True when the experiment finished and every check passed."""
        return self.error is None and bool(self.summary.get("passed")) and bool(self.checks)

    @property
    def n_passed(self) -> int:
        """Number of checks that passed."""
        return sum(bool(c.get("passed")) for c in self.checks)


def rerun_command(name: str, out: str, quick: bool, seed: int, paper: bool = False, jobs: int = 1) -> str:
    """The command that reruns one experiment into the same folder (``jobs``: E5–E7's ``--jobs``)."""
    cmd = f"metastep reproduce {name} --out {out}"
    if quick:
        cmd += " --quick"
    if seed:
        cmd += f" --seed {seed}"
    if paper and name in ("e5", "e6", "e7"):
        cmd += " --paper-scale"
    if jobs != 1 and name in ("e5", "e6", "e7"):
        cmd += f" --jobs {jobs}"
    return cmd


def load_runs(out_dir: str, names: Sequence[str], quick: bool = False, seed: int = 0) -> List[ExperimentRun]:
    """Runs rebuilt from ``out_dir/<name>/summary.json`` (wall time = the summary's ``seconds``);
    a missing summary becomes a run with an error."""
    runs = []
    for name in names:
        path = os.path.join(out_dir, name, _CHECK_FILE)
        cmd = rerun_command(name, out_dir, quick, seed)
        if not os.path.exists(path):
            runs.append(ExperimentRun(name, None, 0.0, cmd, error=f"no {path}"))
            continue
        with open(path) as fh:
            s = json.load(fh)
        runs.append(ExperimentRun(name, s, float(s.get("seconds", 0.0)), cmd))
    return runs


def _figures(out_dir: str, run: ExperimentRun) -> List[str]:
    """The experiment's PNGs relative to ``out_dir``, in the summary's order, then any others."""
    exp_dir = os.path.join(out_dir, run.name)
    listed = []
    for p in run.summary.get("figures", []) or []:
        q = p if os.path.isabs(p) else os.path.join(out_dir, p)
        if not os.path.exists(q):
            q = os.path.join(exp_dir, os.path.basename(p))
        if os.path.exists(q):
            listed.append(os.path.abspath(q))
    found = sorted(os.path.abspath(p) for p in glob.glob(os.path.join(exp_dir, "*.png")))
    seen = set()
    out = []
    for p in listed + found:
        if p not in seen:
            seen.add(p)
            out.append(os.path.relpath(p, os.path.abspath(out_dir)).replace(os.sep, "/"))
    return out


def _data_files(out_dir: str, run: ExperimentRun) -> List[str]:
    """The experiment's tables and data (CSV, Markdown, JSON) relative to ``out_dir``."""
    exp_dir = os.path.join(out_dir, run.name)
    found = []
    for ext in ("md", "csv", "json"):
        found += sorted(glob.glob(os.path.join(exp_dir, f"*.{ext}")))
    return [os.path.relpath(p, out_dir).replace(os.sep, "/") for p in found]


def _caption(name: str, fig: str) -> str:
    return CAPTIONS.get(os.path.basename(fig), CLAIMS.get(name, ""))


def _measured(x: Any) -> str:
    from ..cli import _short
    return _short(x)


def summary_table(runs: Sequence[ExperimentRun]) -> str:
    """A plain-text table: experiment, result, checks passed, wall time."""
    lines = [f"{'experiment':<10}  {'result':<6}  {'checks':>7}  {'time':>8}",
             "-" * 38]
    for r in runs:
        res = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        lines.append(f"{r.name:<10}  {res:<6}  {r.n_passed:>3}/{len(r.checks):<3}  {r.wall_seconds:>7.1f}s")
    total = sum(r.wall_seconds for r in runs)
    ok = sum(r.passed for r in runs)
    lines.append("-" * 38)
    lines.append(f"{'total':<10}  {ok}/{len(runs)} passed  {total:>11.1f}s")
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_index(out_dir: str, runs: Sequence[ExperimentRun], title: str = "metastep reproduce --all",
                command: str = "") -> Dict[str, str]:
    """Write ``out_dir/index.md`` and ``out_dir/index.html`` for ``runs``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    total = sum(r.wall_seconds for r in runs)
    n_ok = sum(r.passed for r in runs)
    n_checks = sum(len(r.checks) for r in runs)
    n_checks_ok = sum(r.n_passed for r in runs)
    verdict = "PASS" if n_ok == len(runs) and runs else "FAIL"

    # ---------------- Markdown ----------------
    md = [f"# {title}", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    md += [f"**{verdict}**: {n_ok}/{len(runs)} experiments passed, {n_checks_ok}/{n_checks} checks, "
           f"{total:.1f} s in all.", "",
           "| experiment | result | checks | time (s) | rerun |", "| --- | --- | --- | --- | --- |"]
    for r in runs:
        res = "PASS" if r.passed else ("ERROR" if r.error else "**FAIL**")
        md.append(f"| [{r.name}](#{r.name}) | {res} | {r.n_passed}/{len(r.checks)} | {r.wall_seconds:.1f} | "
                  f"`{r.command}` |")
    for r in runs:
        md += ["", f"## {r.name}", "", f"*Must show:* {CLAIMS.get(r.name, '')}", "",
               f"Result: **{'PASS' if r.passed else 'FAIL'}** ({r.n_passed}/{len(r.checks)} checks, "
               f"{r.wall_seconds:.1f} s). Rerun: `{r.command}`", ""]
        if r.error:
            md += ["```", r.error.strip(), "```", ""]
        if r.checks:
            md += ["| result | check | measured | expected |", "| --- | --- | --- | --- |"]
            for c in r.checks:
                md.append(f"| {'PASS' if c.get('passed') else '**FAIL**'} | {_md_cell(c.get('name', ''))} | "
                          f"{_md_cell(_measured(c.get('measured')))} | {_md_cell(_measured(c.get('expected')))} |")
            md.append("")
        for fig in _figures(out_dir, r):
            md += [f"![{os.path.basename(fig)}]({fig})", "", f"*{_caption(r.name, fig)}*", ""]
        data = _data_files(out_dir, r)
        if data:
            md += ["Tables and data: " + ", ".join(f"[{os.path.basename(f)}]({f})" for f in data), ""]
    md_path = os.path.join(out_dir, "index.md")
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(md).rstrip() + "\n")

    # ---------------- HTML (one file, inline style, relative image links) ----------------
    e = html.escape
    h = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
         f"<title>{e(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;"
         "vertical-align:top;text-align:left}.PASS{color:#fff;background:#2a7d2a;font-weight:bold}"
         ".FAIL,.ERROR{color:#fff;background:#b22;font-weight:bold}figure{margin:1em 0}"
         "img{max-width:100%;border:1px solid #ddd}figcaption{font-style:italic;margin-top:.3em}"
         ".claim{background:#f4f4f8;padding:.5em 1em;border-left:4px solid #558}code{background:#f2f2f2}"
         "pre{background:#fee;padding:.5em;overflow:auto}</style></head><body>",
         f"<h1>{e(title)}</h1>"]
    if command:
        h.append(f"<p>Command: <code>{e(command)}</code></p>")
    h.append(f"<p><span class=\"{verdict}\">&nbsp;{verdict}&nbsp;</span> {n_ok}/{len(runs)} experiments passed, "
             f"{n_checks_ok}/{n_checks} checks, {total:.1f} s in all.</p>")
    h.append("<table><tr><th>experiment</th><th>result</th><th>checks</th><th>time (s)</th><th>rerun</th></tr>")
    for r in runs:
        res = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        h.append(f"<tr><td><a href=\"#{e(r.name)}\">{e(r.name)}</a></td><td class=\"{res}\">{res}</td>"
                 f"<td>{r.n_passed}/{len(r.checks)}</td><td>{r.wall_seconds:.1f}</td>"
                 f"<td><code>{e(r.command)}</code></td></tr>")
    h.append("</table>")
    for r in runs:
        res = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        h.append(f"<h2 id=\"{e(r.name)}\">{e(r.name)} <span class=\"{res}\">&nbsp;{res}&nbsp;</span></h2>")
        h.append(f"<p class=\"claim\"><b>Must show:</b> {e(CLAIMS.get(r.name, ''))}</p>")
        h.append(f"<p>{r.n_passed}/{len(r.checks)} checks passed, {r.wall_seconds:.1f} s. "
                 f"Rerun: <code>{e(r.command)}</code></p>")
        if r.error:
            h.append(f"<pre>{e(r.error.strip())}</pre>")
        if r.checks:
            h.append("<table><tr><th>result</th><th>check</th><th>measured</th><th>expected</th></tr>")
            for c in r.checks:
                cr = "PASS" if c.get("passed") else "FAIL"
                h.append(f"<tr><td class=\"{cr}\">{cr}</td><td>{e(str(c.get('name', '')))}</td>"
                         f"<td>{e(_measured(c.get('measured')))}</td><td>{e(_measured(c.get('expected')))}</td></tr>")
            h.append("</table>")
        for fig in _figures(out_dir, r):
            h.append(f"<figure><img src=\"{e(fig)}\" alt=\"{e(os.path.basename(fig))}\">"
                     f"<figcaption>{e(_caption(r.name, fig))}</figcaption></figure>")
        data = _data_files(out_dir, r)
        if data:
            h.append("<p>Tables and data: " + ", ".join(f"<a href=\"{e(f)}\">{e(os.path.basename(f))}</a>"
                                                       for f in data) + "</p>")
    h.append("</body></html>")
    html_path = os.path.join(out_dir, "index.html")
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(h) + "\n")
    return {"md": md_path, "html": html_path}
