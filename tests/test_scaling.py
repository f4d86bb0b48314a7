"""Scaling-law fits: parameter recovery on synthetic runs, the Hoffmann objective, compute-optimal allocation,
every bad-input path, and the `gptqwen scaling` CLI."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from gptqwen.cli import main
from gptqwen.errors import UserError
from gptqwen.scaling import Target, bootstrap, get_law, make_runs, read_runs, report
from gptqwen.scaling.fit import compute_frontier
from gptqwen.scaling.laws import chinchilla_loss, compute_optimal, hoffmann_objective
from gptqwen.scaling.plot import isoflop_groups

FIXTURES = Path(__file__).parent / "fixtures" / "scaling"
HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def synthetic_chinchilla(noise=0.003, seed=0, params=HOFFMANN):
    rng = np.random.default_rng(seed)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 6), np.geomspace(1e8, 1e11, 6)))
    loss = chinchilla_loss(n, d, **params) * np.exp(rng.normal(0, noise, n.size))
    return make_runs(n, d, loss)


def direct_hoffmann(params, n, d, loss, delta=1e-3):
    """Σ Huber_δ(log L̂ − log L), written out one run at a time."""
    total = 0.0
    for ni, di, li in zip(n, d, loss):
        r = math.log(params["E"] + params["A"] / ni ** params["alpha"] + params["B"] / di ** params["beta"]) - math.log(li)
        total += 0.5 * r * r if abs(r) <= delta else delta * (abs(r) - 0.5 * delta)
    return total


# --- fits recover what generated the data -------------------------------------------------------------------

def test_chinchilla_recovers_hoffmann_fit():
    fit = get_law("chinchilla").fit(synthetic_chinchilla())
    assert fit.converged
    assert abs(fit.params["alpha"] - 0.34) < 0.03 and abs(fit.params["beta"] - 0.28) < 0.03
    assert abs(fit.params["E"] - 1.69) < 0.05
    assert fit.rms < 0.005  # the noise is 0.003 in log-loss


def test_objective_is_the_hoffmann_huber_loss():
    runs = synthetic_chinchilla(noise=0.01, seed=1)
    params = {"E": 1.8, "A": 300.0, "B": 500.0, "alpha": 0.3, "beta": 0.3}
    theta = np.log([params["A"], params["B"], params["E"]]).tolist() + [params["alpha"], params["beta"]]
    data = (np.log(runs.params), np.log(runs.tokens), np.log(runs.loss))
    value, grad = hoffmann_objective(np.array(theta), *data)
    assert value == pytest.approx(direct_hoffmann(params, runs.params, runs.tokens, runs.loss), rel=1e-10)
    eps = 1e-6  # the analytic gradient matches central differences
    for i in range(5):
        step = np.zeros(5)
        step[i] = eps
        fd = (hoffmann_objective(theta + step, *data)[0] - hoffmann_objective(theta - step, *data)[0]) / (2 * eps)
        assert grad[i] == pytest.approx(fd, rel=1e-4, abs=1e-9)
    fit = get_law("chinchilla", starts=32).fit(runs)  # the reported objective is that loss at the fitted parameters
    assert fit.objective == pytest.approx(direct_hoffmann(fit.params, runs.params, runs.tokens, runs.loss), rel=1e-8)
    assert fit.objective <= value


def test_compute_optimal_allocation():
    opt = compute_optimal(np.array([1e20, 1e22]), **HOFFMANN)
    s = HOFFMANN["alpha"] + HOFFMANN["beta"]
    assert opt["a"] == pytest.approx(0.28 / s) and opt["b"] == pytest.approx(0.34 / s) and opt["a"] + opt["b"] == 1
    assert 6 * opt["N_opt"] * opt["D_opt"] == pytest.approx([1e20, 1e22])
    assert opt["G"] == pytest.approx((0.34 * 406.4 / (0.28 * 410.7)) ** (1 / s))
    for c, n_opt in zip([1e20, 1e22], opt["N_opt"]):  # N* is the minimum of the loss along the IsoFLOP line
        n = np.geomspace(n_opt / 10, n_opt * 10, 20001)
        best = n[np.argmin(chinchilla_loss(n, c / (6 * n), **HOFFMANN))]
        assert best == pytest.approx(n_opt, rel=1e-3)


def test_gpt4_law_recovers_parameters():
    rng = np.random.default_rng(2)
    c = np.geomspace(1e12, 1e17, 12)
    loss = (310.0 * c ** -0.18 + 1.4) * np.exp(rng.normal(0, 0.001, c.size))
    fit = get_law("gpt4").fit(make_runs(np.sqrt(c / 120), np.sqrt(c * 20 / 6), loss, flops=c))
    assert fit.params["b"] == pytest.approx(-0.18, abs=0.01)
    assert fit.params["c"] == pytest.approx(1.4, abs=0.05)
    assert get_law("gpt4").predict(fit.params, Target(flops=1e19)) == pytest.approx(310 * 1e19 ** -0.18 + 1.4, rel=0.01)


def test_kaplan_laws_recover_parameters():
    n = np.geomspace(1e6, 1e9, 8)
    fit = get_law("kaplan").fit(make_runs(n, np.full(8, 1e12), (8.8e13 / n) ** 0.076))  # one D: only L(N) fits
    assert fit.params["alpha_N"] == pytest.approx(0.076) and fit.params["Nc"] == pytest.approx(8.8e13, rel=1e-6)
    assert "alpha_D" not in fit.params and any("L(D) skipped" in note for note in fit.notes)
    d = np.geomspace(1e8, 1e11, 8)
    fit = get_law("kaplan").fit(make_runs(np.full(8, 1e10), d, (5.4e13 / d) ** 0.095))
    assert fit.params["alpha_D"] == pytest.approx(0.095) and fit.params["Dc"] == pytest.approx(5.4e13, rel=1e-6)
    c = np.geomspace(1e15, 1e20, 8)
    fit = get_law("kaplan").fit(make_runs(np.sqrt(c), np.sqrt(c) / 6, (2.3e8 * 8.64e19 / c) ** 0.05))
    assert fit.params["alpha_C"] == pytest.approx(0.05) and fit.params["Cc"] == pytest.approx(2.3e8 * 8.64e19, rel=1e-6)
    with pytest.raises(UserError, match="only --target-params"):
        get_law("kaplan").predict(fit.params, Target(params=1e9, tokens=1e10))


def test_compute_frontier_keeps_runs_better_than_every_cheaper_one():
    runs = make_runs([1, 1, 1, 1], [1, 2, 3, 4], [3.0, 3.5, 2.5, 2.6], flops=[1, 2, 3, 4])
    assert compute_frontier(runs).tolist() == [0, 2]


def test_bootstrap_intervals_cover_the_truth_and_the_prediction():
    runs = synthetic_chinchilla()
    law = get_law("chinchilla", starts=32)
    out, fit = report(law, runs, n_bootstrap=20, seed=0, target=Target(params=1e11, tokens=2e12))
    for k in ("alpha", "beta", "E"):
        lo, hi = out["intervals"][k]
        assert lo <= fit.params[k] <= hi
    lo, hi = out["prediction"]["interval"]
    assert lo <= out["prediction"]["loss"] <= hi
    assert out["diagnostics"]["bootstrap"] == {"samples": 20, "failed": 0, "confidence": 0.95}
    assert {"a", "b", "G", "N_opt", "D_opt"} <= set(out["derived"])


# --- bad input -------------------------------------------------------------------------------------------

def write(tmp_path, text, name="runs.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("params,tokens\n1,2\n", "lacks the column(s) loss"),
    ("params,tokens,loss\n", "no runs"),
    ("params,tokens,loss\n1e6,1e8,3.1\n1e7,abc,2.9\n", "line 3: tokens='abc'"),
    ("params,tokens,loss\n1e6,1e8,3.1\n1e7,1e9,-2\n1e8,0,2\n", "line 3 (loss=-2)"),
    ("params,tokens,loss,flops\n1e6,1e8,3.1,nan\n", "line 2 (flops=nan)"),
])
def test_bad_csv_names_the_problem(tmp_path, text, message):
    with pytest.raises(UserError) as e:
        read_runs(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_file():
    with pytest.raises(UserError, match="does not exist"):
        read_runs("/nonexistent/runs.csv")


def test_too_few_runs_for_each_law():
    three = make_runs([1e6, 1e7, 1e8], [1e8, 1e9, 1e10], [3.0, 2.8, 2.6])
    with pytest.raises(UserError, match="at least 5 runs.*lines 2, 3, 4"):
        get_law("chinchilla").fit(three)
    with pytest.raises(UserError, match="at least 4 runs"):
        get_law("gpt4").fit(three)
    one_n = make_runs([1e7] * 6, np.geomspace(1e8, 1e11, 6), np.linspace(3, 2.5, 6))
    with pytest.raises(UserError, match="2 distinct values of params"):
        get_law("chinchilla").fit(one_n)
    with pytest.raises(UserError, match="at least 3 distinct N, D or C"):
        get_law("kaplan").fit(make_runs([1e6, 1e6, 1e7], [1e8, 1e8, 1e8], [3.0, 2.9, 2.8]))


def test_nonsense_fits_are_refused():
    rising = synthetic_chinchilla()
    rising = make_runs(rising.params, rising.tokens, 10.0 - rising.loss)  # loss grows with N and D
    with pytest.raises(UserError, match="does not fall|edge of the initialisation grid"):
        get_law("chinchilla", starts=16).fit(rising)
    no_floor = synthetic_chinchilla(noise=0.0, params={**HOFFMANN, "E": 0.0})  # nothing sets E
    with pytest.raises(UserError, match="do not determine the irreducible loss E"):
        get_law("chinchilla", starts=16).fit(no_floor)
    c = np.geomspace(1e12, 1e16, 8)
    with pytest.raises(UserError, match="does not fall with compute"):
        get_law("gpt4").fit(make_runs(c, np.ones(8), 2.0 + 0.01 * np.log(c), flops=c))
    with pytest.raises(UserError, match="does not fall with N"):
        get_law("kaplan").fit(make_runs(np.geomspace(1e6, 1e9, 5), np.full(5, 1e9), np.linspace(2, 3, 5)))


def test_unconverged_and_edge_fits_are_refused(monkeypatch):
    from types import SimpleNamespace

    import gptqwen.scaling.fit as fit_module

    def stalled_minimize(fun, x0, **kwargs):
        return SimpleNamespace(x=np.asarray(x0, float), fun=fun(x0, *kwargs["args"])[0], success=False,
                               message="STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT")

    monkeypatch.setattr(fit_module, "_scipy_optimize", lambda: SimpleNamespace(minimize=stalled_minimize))
    with pytest.raises(UserError, match="did not converge.*ITERATIONS"):
        get_law("chinchilla", starts=4).fit(synthetic_chinchilla())

    def floor_at_min_loss(residual, x0, bounds, **kwargs):  # c pinned at its upper bound (the smallest loss)
        x = np.array([x0[0], -0.3, bounds[1][2]])
        return SimpleNamespace(x=x, fun=residual(x), cost=0.0, success=True, message="")

    monkeypatch.setattr(fit_module, "_scipy_optimize", lambda: SimpleNamespace(least_squares=floor_at_min_loss))
    c = np.geomspace(1e12, 1e16, 6)
    with pytest.raises(UserError, match="edge of its search space.*smallest observed loss"):
        get_law("gpt4").fit(make_runs(c, np.ones(6), [3, 2.5, 2.2, 2.1, 2.05, 2.04], flops=c))


def test_bootstrap_refuses_when_most_resamples_fail():
    class FailsOnFirstRun:  # fails on the ~2/3 of resamples that draw line 2, as a degenerate law would
        name = "stub"

        def fit(self, runs, warm=None):
            if 2 in runs.lines:
                raise UserError("too few distinct points")
            return warm

        def derived(self, params, target=None):
            return {}

    runs = make_runs(np.arange(1, 9), np.ones(8), np.ones(8))
    fit = get_law("gpt4").fit(read_runs(FIXTURES / "compute.csv"))
    with pytest.raises(UserError, match=r"of 40 bootstrap resamples .* could not be fitted"):
        bootstrap(FailsOnFirstRun(), runs, fit, n=40)


# --- the CLI -------------------------------------------------------------------------------------------

def test_cli_fit_json_shape(capsys):
    rc = main(["scaling", "fit", str(FIXTURES / "isoflop.csv"), "--law", "chinchilla", "--json",
               "--bootstrap", "8", "--starts", "32"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert all(len(out["intervals"][k]) == 2 for k in out["params"])
    assert {"objective", "rms_log_loss", "n_runs", "converged"} <= set(out["diagnostics"])
    assert out["diagnostics"]["n_runs"] == 35 and out["diagnostics"]["converged"] is True
    assert abs(out["params"]["alpha"] - 0.34) < 0.03


def test_cli_predict_leaves_out_big_runs_and_plots(tmp_path, capsys):
    png = tmp_path / "pred.png"
    rc = main(["scaling", "predict", str(FIXTURES / "compute.csv"), "--law", "gpt4", "--target-flops", "1e18",
               "--max-fraction", "0.01", "--actual", "1.578386", "--bootstrap", "10", "--json", "--plot", str(png)])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["excluded_lines"] == [10] and "line 10" in captured.err
    assert out["diagnostics"]["n_runs"] == 8
    assert abs(out["prediction"]["relative_error"]) < 0.02
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_frontier_fits_only_the_best_run_per_budget(capsys):
    assert main(["scaling", "fit", str(FIXTURES / "isoflop.csv"), "--law", "gpt4", "--frontier", "--bootstrap", "0",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = read_runs(FIXTURES / "isoflop.csv")
    best = {int(runs.lines[g[np.argmin(runs.loss[g])]]) for g in isoflop_groups(runs)}
    assert not best & set(out["excluded_lines"])  # each budget's best run is fitted, most others are not
    assert 5 <= out["diagnostics"]["n_runs"] <= 10 and out["diagnostics"]["n_runs"] + len(out["excluded_lines"]) == 35


def test_cli_table_and_isoflop_plot(tmp_path, capsys):
    png = tmp_path / "fit.png"
    assert main(["scaling", "fit", str(FIXTURES / "isoflop.csv"), "--bootstrap", "0", "--starts", "16",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "residual RMS" in out
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["fit", "MISSING.csv"], "does not exist"),
    (["predict", "compute.csv", "--law", "gpt4"], "needs a target"),
    (["predict", "compute.csv", "--law", "gpt4", "--target-flops", "1e13", "--max-fraction", "0.01"], "at least 4 runs"),
    (["fit", "compute.csv", "--starts", "many"], "--starts"),
])
def test_cli_user_errors(capsys, argv, message):
    argv = [str(FIXTURES / a) if a.endswith(".csv") else a for a in argv]
    assert main(["scaling", *argv, "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plot_without_matplotlib_names_the_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from gptqwen.scaling.plot import plot_fit

    runs = read_runs(FIXTURES / "compute.csv")
    with pytest.raises(UserError, match="pip install matplotlib"):
        plot_fit(tmp_path / "x.png", runs, get_law("gpt4").fit(runs))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CI", "").lower() == "true",
                    reason="the full 4,500-start grid takes minutes on CI's 2 cores; run locally with -m slow")
def test_screened_starts_find_the_full_grid_optimum():
    runs = synthetic_chinchilla(noise=0.01, seed=3)
    full = get_law("chinchilla", starts="all").fit(runs)
    screened = get_law("chinchilla").fit(runs)
    assert screened.objective == pytest.approx(full.objective, rel=1e-6)


# --- sweeps -------------------------------------------------------------------------------------------

SIZES = ["n_layer=1,n_embd=32,n_head=2,n_kv_head=1,head_dim=16,intermediate_size=64",
         "n_layer=2,n_embd=48,n_head=3,n_kv_head=1,head_dim=16,intermediate_size=96"]


@pytest.fixture(scope="module")
def sweep_recipe(tmp_path_factory) -> Path:
    from gptqwen.data.prepare import prepare
    from gptqwen.data.sources import shakespeare_files, shakespeare_plain

    root = tmp_path_factory.mktemp("sweep-data")
    (root / "plays.txt").write_text(shakespeare_plain(shakespeare_files()[0].read_text())[:40_000])
    prepare([str(root / "plays.txt")], root / "ds", train_vocab=300, val_fraction=0.1, block_tokens=256, progress=False)
    recipe = root / "tiny.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "name": "tiny-sweep", "model": {"preset": "qwen3-tiny"}, "data": {"dir": str(root / "ds"), "sources": []},
        "train": {"seq_len": 32, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "eval_interval": 0, "eval_tokens": 256,
                  "sample_tokens": 0, "ckpt_interval": 0, "log_interval": 2, "threads": 1, "tensorboard": False,
                  "peak_flops": 1e12}}))
    return recipe


def test_sweep_plans_isoflop_budgets(sweep_recipe):
    from gptqwen.scaling.sweep import parse_size, plan_sweep

    specs = plan_sweep(str(sweep_recipe), [], [parse_size(s) for s in SIZES], flops=[3e9, 1e10])
    assert len(specs) == 4
    for spec, c in zip(specs, [3e9, 1e10, 3e9, 1e10]):
        assert spec.tokens % 128 == 0 and spec.flops == 6.0 * spec.params * spec.tokens
        assert spec.flops == pytest.approx(c, rel=0.05)  # D = C/6N, rounded to whole steps of 128 tokens
        assert spec.params_nonembed < spec.params < spec.flops_exact / spec.tokens
    with pytest.raises(UserError, match="give the budgets one way"):
        plan_sweep(str(sweep_recipe), [], [parse_size(SIZES[0])])
    with pytest.raises(UserError, match="key=value"):
        parse_size("n_layer:2")


def test_sweep_trains_skips_finished_runs_and_writes_the_csv(sweep_recipe, tmp_path, capsys, monkeypatch):
    argv = ["scaling", "sweep", "-c", str(sweep_recipe), "--out", str(tmp_path), "--size", SIZES[0], "--size", SIZES[1],
            "--tokens", "384,768", "--json"]
    assert main([*argv, "--shard", "1/2"]) == 0  # runs 1 and 3 only
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(argv) == 0  # the other two; 1 and 3 are skipped
    rows = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in rows] == [384, 768, 384, 768] and all(r["wall_s"] > 0 for r in rows)
    # each run learned: below the uniform loss over the 300-token vocabulary (5.70 nats)
    assert all(0 < r["loss"] < math.log(300) - 0.5 for r in rows), [r["loss"] for r in rows]
    runs = read_runs(tmp_path / "runs.csv")
    assert len(runs) == 4 and runs.flops.tolist() == [6.0 * r["params"] * r["tokens"] for r in rows]

    import gptqwen.train.trainer

    monkeypatch.setattr(gptqwen.train.trainer, "pretrain", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == rows
