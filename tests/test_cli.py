"""`metastep reproduce --all` and its index (fake experiments: fast)."""
import json
import os
import re

import pytest

from metastep import cli, experiments
from metastep.experiments import report

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _fake_summary(name, passed, n_checks=2):
    checks = [{"name": f"{name} claim {i}", "passed": passed or i > 0, "measured": 0.5 + i, "expected": "< 1"}
              for i in range(n_checks)]
    return {"experiment": name, "passed": all(c["passed"] for c in checks), "seconds": 1.25, "checks": checks}


def _write_fake(out, name, passed, figures=("a.png",)):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    s = _fake_summary(name, passed)
    s["figures"] = [os.path.join(d, f"{name}_{f}") for f in figures]
    for p in s["figures"]:
        with open(p, "wb") as fh:
            fh.write(PNG)
    with open(os.path.join(d, "summary.json"), "w") as fh:
        json.dump(s, fh)
    return s


def test_parser_accepts_all_flag_and_name():
    p = cli.build_parser()
    a = p.parse_args(["reproduce", "--all", "--quick", "--out", "x"])
    assert a.all is True and a.name is None and a.quick is True
    b = p.parse_args(["reproduce", "all", "--out", "x"])
    assert b.all is False and b.name == "all"
    c = p.parse_args(["reproduce", "e2", "--out", "x"])
    assert c.all is False and c.name == "e2"


def test_reproduce_needs_a_name_or_all(tmp_path, capsys):
    assert cli.main(["reproduce", "--out", str(tmp_path)]) == 2
    assert "--all" in capsys.readouterr().err
    assert cli.main(["reproduce", "e2", "--all", "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err


def test_index_writer_on_fake_summaries(tmp_path):
    out = str(tmp_path)
    _write_fake(out, "e1", True, figures=("a.png", "b.png"))
    _write_fake(out, "e2", False)
    runs = report.load_runs(out, ["e1", "e2", "egrad"], quick=True)
    assert [r.passed for r in runs] == [True, False, False]
    assert runs[2].error and "summary.json" in runs[2].error
    paths = report.write_index(out, runs, command="metastep reproduce --all --quick --out " + out)
    md = _read(paths["md"])
    page = _read(paths["html"])
    # each experiment's claim, its verdict per check, time and rerun command
    for text in (md, page):
        assert report.CLAIMS["e1"][:40] in text.replace("&#x27;", "'")
        assert "e1 claim 0" in text and "e2 claim 0" in text
        assert "metastep reproduce e2 --out " + out + " --quick" in text
        assert "1.2" in text  # run time of the fake experiments (1.25 s)
    assert re.search(r"\| PASS \| e1 claim 0 \|", md) and re.search(r"\| \*\*FAIL\*\* \| e2 claim 0 \|", md)
    assert "1/3 experiments passed" in md and "3/4 checks" in md
    # figures linked relatively, in the summary's order, so the folder can move
    assert md.index("(e1/e1_a.png)") < md.index("(e1/e1_b.png)")
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert imgs == ["e1/e1_a.png", "e1/e1_b.png", "e2/e2_a.png"]
    for src in imgs:
        assert not os.path.isabs(src) and os.path.exists(os.path.join(out, src))
    # tables and data linked relatively too
    assert "[summary.json](e1/summary.json)" in md and '<a href="e2/summary.json">' in page
    # self-contained: no external resources
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count('class="FAIL"') >= 2 and 'class="ERROR"' in page


def test_index_lists_figures_the_summary_does_not(tmp_path):
    out = str(tmp_path)
    _write_fake(out, "e2", True, figures=())
    with open(os.path.join(out, "e2", "extra.png"), "wb") as fh:
        fh.write(PNG)
    paths = report.write_index(out, report.load_runs(out, ["e2"]))
    assert '<img src="e2/extra.png"' in _read(paths["html"])


@pytest.mark.parametrize("fail", [None, "e2", "crash"])
def test_reproduce_all_runs_every_experiment_and_writes_the_index(tmp_path, monkeypatch, capsys, fail):
    calls = []

    def fake_run(name, out_dir, quick=False, seed=0, progress=True, **kw):
        calls.append((name, quick, seed))
        if fail == "crash" and name == "e3":
            raise RuntimeError("boom in e3")
        return _write_fake(out_dir, name, passed=(name != fail))

    monkeypatch.setattr(experiments, "run", fake_run)
    rc = cli.main(["reproduce", "--all", "--quick", "--seed", "3", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert [c[0] for c in calls] == list(experiments.EXPERIMENTS)
    assert all(c[1] is True and c[2] == 3 for c in calls)
    assert rc == (0 if fail is None else 1), out
    md = _read(tmp_path / "index.md")
    for name in experiments.EXPERIMENTS:
        assert f"## {name}" in md
        assert f"metastep reproduce {name} --out {tmp_path} --quick --seed 3" in md
    assert os.path.exists(tmp_path / "index.html")
    # the final summary table
    assert "experiment" in out and "total" in out and "index:" in out
    if fail == "e2":
        assert re.search(r"^e2\s+FAIL", out, re.M)
    if fail == "crash":
        assert re.search(r"^e3\s+ERROR", out, re.M) and "boom in e3" in md
    if fail is None:
        assert f"{len(experiments.EXPERIMENTS)}/{len(experiments.EXPERIMENTS)} passed" in out


def test_reproduce_all_keeps_the_positional_form(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiments, "run",
                        lambda name, out_dir, **kw: _write_fake(out_dir, name, passed=True))
    assert cli.main(["reproduce", "all", "--out", str(tmp_path), "--no-progress"]) == 0
    assert os.path.exists(tmp_path / "index.md")
    capsys.readouterr()


def _readme_block(heading):
    import pathlib
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("needs the source tree (README.md)")
    text = readme.read_text(encoding="utf-8").split(heading, 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_quick_tour_runs_as_written(capsys):
    """The README's five-call tour is executed verbatim; its printed results are the ones it quotes."""
    exec(compile(_readme_block("## Quick tour"), "README quick tour", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("23.795") and out[0].endswith(" ok")
    assert out[1] == "non-finite: loss at step 28"
    eta, eta_star = map(float, out[2].split())
    assert abs(eta - eta_star) / eta_star < 0.01
    assert "train-by-validation" in out[3]
