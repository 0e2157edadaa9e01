"""Quick versions of the experiments (SPEC §8), the stability study and their CLI commands."""
import json
import math
import os

import numpy as np
import pytest

import metastep as ms
from metastep import cli, experiments
from metastep import stability as st

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    assert os.path.getsize(path) > 10_000, path
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC, path


def _assert_summary(path, name):
    with open(path) as fh:
        s = json.load(fh)
    assert s["experiment"] == name
    assert isinstance(s["passed"], bool) and isinstance(s["seconds"], float)
    assert isinstance(s["checks"], list) and s["checks"]
    for c in s["checks"]:
        assert set(c) == {"name", "passed", "measured", "expected"}
        assert isinstance(c["name"], str) and isinstance(c["passed"], bool)
    failed = [c for c in s["checks"] if not c["passed"]]
    assert not failed, json.dumps(failed, indent=1)[:3000]
    assert s["passed"] is True
    return s


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return str(out), {name: experiments.run(name, str(out), quick=True, seed=0, progress=False)
                      for name in ("e1", "e2", "egrad")}


@pytest.mark.parametrize("name,files", [
    ("e1", ["e1_paper_case.png", "e1_convergence.png", "e1_large_t.png", "e1_reverse_vs_scaled.png",
            "e1_history.csv", "e1_seeds.csv", "e1_grid.csv"]),
    ("e2", ["e2_eta_star.png", "e2_eta_star.csv"]),
    ("egrad", ["egrad_curves.png", "egrad_growth_rates.png", "egrad_failure_map_log.png", "egrad_curves.csv",
               "egrad_growth_rates.csv", "egrad_failure_cells.csv", "egrad_first_fail.csv", "egrad_failure_table.md"]),
])
def test_quick_experiment(quick_runs, name, files):
    out, runs = quick_runs
    d = os.path.join(out, name)
    s = _assert_summary(os.path.join(d, "summary.json"), name)
    assert s["quick"] is True
    assert s["seconds"] > 0  # run time is recorded (speed is a benchmark matter, not a test)
    for f in files:
        p = os.path.join(d, f)
        assert os.path.exists(p), p
        if f.endswith(".png"):
            _assert_png(p)
    for p in s["figures"]:
        _assert_png(p)
    assert runs[name]["passed"] is True


def test_e1_quick_content(quick_runs):
    s = quick_runs[1]["e1"]
    names = " | ".join(c["name"] for c in s["checks"])
    assert "plain reverse/float32" in names and "scaled/float32" in names and "exact/float64" in names
    r = s["results"]
    # every seed's eta* is the exact minimiser: G' vanishes there relative to its curvature
    for rec in r["per_seed"]:
        q = r["probs"][rec["seed"]]
        g = ms.metagrad(q, rec["eta_star_80"], 80, objective="log", mode="exact", dtype="longdouble").grad
        assert abs(g) < 1e-9 * rec["curvature_80"] * rec["eta_star_80"]
    # float32 reverse mode fails at the very first meta-step of the paper case and eta stays finite
    for (s_, t, e0, lab), v in r["grid_runs"].items():
        if lab == "reverse/float32" and t == 80 and e0 == 0.1:
            assert v["failure"]["meta_step"] == 1 and v["failure"]["status"].startswith("non-finite")
            assert math.isfinite(v["eta_K"])


def test_e2_quick_content(quick_runs):
    s = quick_runs[1]["e2"]
    for rec in s["per_seed"]:
        e = np.array(rec["eta_star"])
        assert np.all(np.diff(e) > 0)
        assert abs(e[-1] / rec["eta_inf"] - 1) < 1e-4


def test_experiment_names():
    assert {"e1", "e2", "egrad"} <= set(experiments.EXPERIMENTS)
    for name in experiments.EXPERIMENTS:
        assert experiments.get(name).NAME == name
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.get("e99")


# ------------------------------------------------------------------------------------------------
# stability study
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("stability"))
    q = st.default_problem(seed=1, d=20)
    rep = st.stability_study(q, steps=(10, 100, 1000), etas=(0.5, 1.5, 2.5), out_dir=out, progress=False)
    return out, rep


def test_stability_study_outputs(small_study):
    out, rep = small_study
    for f in ("stability.csv", "stability.md", "first_fail.csv", "summary.json", "stability_errors_log.png",
              "metagrad_curves.png", "growth_rate.png"):
        assert os.path.exists(os.path.join(out, f)), f
    for f in ("stability_errors_log.png", "metagrad_curves.png", "growth_rate.png"):
        _assert_png(os.path.join(out, f))
    _assert_summary(os.path.join(out, "summary.json"), "stability")
    assert rep.oracle.endswith(st.widest_precision())
    with open(os.path.join(out, "stability.md")) as fh:
        md = fh.read()
    assert "First failing t" in md and "scaled_forward" in md


def test_stability_study_findings(small_study):
    _, rep = small_study
    names = [c["name"] for c in rep.checks]
    assert any(n.startswith("scaled_forward float64") for n in names)
    assert any(n.startswith("scaled_reverse float32") for n in names)
    assert any("reverse float64 at eta=2.5, t=1000" in n for n in names)
    assert all(c["passed"] for c in rep.checks)
    for dt in rep.dtypes:
        for e in rep.etas:
            assert rep.first_not_ok[("scaled_forward", dt, "log", e)] is None
            assert rep.first_not_ok[("scaled_reverse", dt, "log", e)] is None
            assert rep.first_not_ok[("exact", dt, "log", e)] is None
    # eta = 2.5 > 2/L: plain float64 reverse mode overflows by t = 1000, long double does not
    assert rep.first_not_ok[("reverse", "float64", "log", 2.5)] == 1000
    assert rep.first_not_ok[("reverse", "longdouble", "log", 2.5)] is None
    row = next(r for r in rep.rows if r["mode"] == "reverse" and r["dtype"] == "float64" and r["eta"] == 2.5
               and r["steps"] == 1000)
    assert row["fail_kind"] == "non-finite" and row["rel_err_grad"] == math.inf
    # scaled float64 is accurate where plain reverse mode returns NaN
    row = next(r for r in rep.rows if r["mode"] == "scaled_reverse" and r["dtype"] == "float64" and r["eta"] == 2.5
               and r["steps"] == 1000)
    assert row["ok"] and row["rel_err_grad"] < 1e-12 and row["rel_err_F"] < 1e-10


def test_scaled_forward_status_on_benign_problem():
    """Regression: the forward-mode rounding-error estimate used to grow exponentially in t and
    flagged accurate float32 results as 'cancellation'."""
    q = st.default_problem(seed=1, d=20)
    r = ms.metagrad(q, 1.5, 1000, objective="log", mode="scaled_forward", dtype="float32")
    ref = ms.metagrad(q, 1.5, 1000, objective="log", mode="exact", dtype="longdouble")
    assert abs(r.grad - ref.grad) < 1e-5 * abs(ref.grad)
    assert r.status == "ok", (r.status, r.diagnostics["grad_rel_error"])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_plain_mode_status_when_error_estimate_overflows(mode):
    q = ms.random_quadratic(20, seed=0)
    eta = 2.5 / q.L          # F' ~ 1e34 at t = 80: inside float32's range
    r = ms.metagrad(q, eta, 80, objective="log", mode=mode, dtype="float32")
    ref = ms.metagrad(q, eta, 80, objective="log", mode="exact", dtype="longdouble")
    assert abs(r.grad - ref.grad) < 1e-5 * abs(ref.grad)     # accurate (measured 1e-7 .. 6e-7) ...
    assert r.status == "ok", (r.status, r.diagnostics["grad_rel_error"])   # ... but flagged


def test_stability_guards_skip_with_reason():
    q = st.default_problem(seed=0, d=10)
    rep = st.stability_study(q, modes=("reverse", "forward"), dtypes=("float64",), steps=(10, 10000),
                             etas=(0.5,), progress=False, memory_limit=100, max_cell_seconds=1e-9)
    reasons = {(s["mode"], s["steps"]): s["reason"] for s in rep.skipped}
    assert reasons[("reverse", 10)].startswith("memory") and reasons[("reverse", 10000)].startswith("memory")
    assert reasons[("forward", 10000)].startswith("time")
    assert ("forward", 10) not in reasons
    assert rep.first_fail[("forward", "float64", "log", 0.5)] is None


def test_rel_error_is_overflow_free_and_strict():
    big = 5000.0   # log of a number far outside every fixed-width type
    assert st.rel_error(big + 1e-12, 1, big, 1) == pytest.approx(1e-12, rel=1e-3)
    assert st.rel_error(big, -1, big, 1) == math.inf
    assert st.rel_error(float("nan"), 1, 0.0, 1) == math.inf
    assert st.rel_error(float("-inf"), 0, 0.0, 0) == 0.0
    assert st.rel_error(0.0, 1, 0.0, 1, text="1.00000000000000000000000000001", ref_text="1") == \
        pytest.approx(1e-29, rel=1e-6)


def test_theory_helpers_against_direct_formulas():
    q = ms.random_quadratic(6, seed=4)
    lam = np.linalg.eigvalsh(q.H)
    etas = np.array([0.1, 1.0, 1.9, 2.5]) / q.L
    np.testing.assert_allclose(st.theory_rate(q, etas),
                               [2 * np.log(np.max(np.abs(1 - e * lam))) for e in etas], rtol=1e-12)
    for t in (1, 10, 300):
        g = ms.metagrad(q, etas, t, objective="log", mode="exact").grad
        assert np.all(np.abs(g) <= st.grad_log_bound(q, etas) * (1 + 1e-12))


def test_default_problem_is_deterministic():
    a, b = st.default_problem(seed=7, d=30), st.default_problem(seed=7, d=30)
    assert np.array_equal(a.H, b.H) and np.array_equal(a.w0, b.w0)
    np.testing.assert_allclose(a.eigenvalues, np.geomspace(0.01, 1, 30), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def test_cli_reproduce_quick(tmp_path, capsys):
    assert cli.main(["reproduce", "e2", "--out", str(tmp_path), "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "e2 --quick: PASSED" in out and "pass" in out
    assert os.path.exists(tmp_path / "e2" / "summary.json")


def test_cli_exit_status_on_failed_check(tmp_path, monkeypatch, capsys):
    def fake_run(name, out_dir, quick=False, seed=0, progress=True):
        return {"experiment": name, "passed": False, "seconds": 0.0,
                "checks": [{"name": "a claim", "passed": False, "measured": 0.5, "expected": "< 0.01"}]}
    monkeypatch.setattr(experiments, "run", fake_run)
    assert cli.main(["reproduce", "e1", "--out", str(tmp_path), "--no-progress"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_stability_small(tmp_path, capsys):
    rc = cli.main(["stability", "--out", str(tmp_path), "--d", "10", "--steps", "10,1000", "--etas", "0.5,2.5",
                   "--dtypes", "float32,float64", "--modes", "reverse,scaled_forward,exact", "--no-progress",
                   "--no-plots"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "first failing t" in out and "metastep stability: PASSED" in out
    assert os.path.exists(tmp_path / "stability.md") and os.path.exists(tmp_path / "stability.csv")
