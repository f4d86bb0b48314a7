"""Scaling predictions: the leave-largest-out check, the compute column, the saved prediction, sweep min-steps."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from gptqwen.cli import main
from gptqwen.errors import UserError
from gptqwen.scaling import get_law, holdout, make_runs, read_runs
from gptqwen.scaling.fit import compute_frontier
from gptqwen.scaling.laws import chinchilla_loss

FIXTURES = Path(__file__).parent / "fixtures" / "scaling"
LAW = {"E": 1.8, "A": 60.0, "B": 300.0, "alpha": 0.3, "beta": 0.35}


def isoflop_runs(noise=0.0, seed=0):
    """Five IsoFLOP budgets a factor 2 apart, five sizes each, losses from LAW (times log-normal noise)."""
    rng = np.random.default_rng(seed)
    c = np.repeat(np.geomspace(1e10, 1.6e11, 5), 5)
    n = np.tile(np.geomspace(5e4, 8e5, 5), 5)
    d = c / (6 * n)
    return make_runs(n, d, chinchilla_loss(n, d, **LAW) * np.exp(rng.normal(0, noise, n.size)))


def test_holdout_scores_the_top_budget_from_the_rest():
    runs = isoflop_runs()
    out = holdout(get_law("chinchilla", starts=32), runs, 0.7)
    held = np.flatnonzero(runs.flops > 0.7 * runs.flops.max())
    assert [r["line"] for r in out["held_out"]] == runs.lines[held].tolist() and len(held) == 5
    assert sorted(out["fitted_lines"]) == runs.lines[runs.flops <= 0.7 * runs.flops.max()].tolist()
    assert out["max_abs_error"] < 1e-3  # noiseless runs of the law itself: extrapolated almost exactly
    for r in out["held_out"]:
        assert r["relative_error"] == pytest.approx((r["predicted"] - r["loss"]) / r["loss"])


def test_holdout_scores_a_compute_law_only_on_the_frontier():
    runs = isoflop_runs(noise=0.002)
    out = holdout(get_law("gpt4"), runs, 0.7, frontier=True)
    frontier_lines = set(runs.lines[compute_frontier(runs)].tolist())
    assert out["held_out"] and {r["line"] for r in out["held_out"]} <= frontier_lines
    fitted = read_subset_lines(runs, out["fitted_lines"])
    assert set(out["fitted_lines"]) == set(fitted.lines[compute_frontier(fitted)].tolist())
    with pytest.raises(UserError, match="--holdout"):
        holdout(get_law("gpt4"), runs, 1.0)


def read_subset_lines(runs, lines):
    return runs.subset(np.isin(runs.lines, lines))


def test_flops_column_is_read_and_a_missing_one_is_named(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss,flops,flops_exact\n1e5,1e6,3.0,6e11,7e11\n2e5,1e6,2.9,1.2e12,1.3e12\n")
    assert read_runs(csv, "flops_exact").flops.tolist() == [7e11, 1.3e12]
    assert read_runs(csv).flops.tolist() == [6e11, 1.2e12]
    with pytest.raises(UserError, match="no column 'flops_fwd'"):
        read_runs(csv, "flops_fwd")
    csv.write_text("params,tokens,loss,flops_exact\n1e5,1e6,3.0,-1\n")
    with pytest.raises(UserError, match="line 2"):
        read_runs(csv, "flops_exact")


def test_cli_check_and_saved_prediction(tmp_path, capsys):
    runs = isoflop_runs(noise=0.002, seed=1)
    csv = tmp_path / "runs.csv"
    rows = "\n".join(f"{p},{t},{l}" for p, t, l in zip(runs.params, runs.tokens, runs.loss))
    csv.write_text("params,tokens,loss\n" + rows + "\n")
    assert main(["scaling", "check", str(csv), "--law", "chinchilla", "--starts", "32"]) == 0
    out = capsys.readouterr().out
    assert out.count("predicted") == 5 and "mean |error|" in out
    saved = tmp_path / "pred.json"
    argv = ["scaling", "predict", str(csv), "--target-params", "3e6", "--target-tokens", "2e6", "--max-fraction",
            "0.01", "--bootstrap", "0", "--starts", "32", "--json"]
    assert main([*argv, "--save", str(saved)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(saved.read_text())
    assert written["made_at"].endswith("+00:00") and written["prediction"] == printed["prediction"]
    assert printed["prediction"]["loss"] == pytest.approx(float(chinchilla_loss(3e6, 2e6, **LAW)), rel=0.02)


def test_sweep_leaves_out_short_and_too_costly_runs(monkeypatch):
    import gptqwen.scaling.sweep as sweep
    from gptqwen.config import Config

    class Recipe:  # only what plan_sweep reads: the step size and the model config
        class train:
            batch_size, seq_len = 4, 32

    monkeypatch.setattr(sweep, "load_recipe", lambda name, overrides: Recipe)
    monkeypatch.setattr(sweep, "_dataset_vocab", lambda recipe: (300, None))
    monkeypatch.setattr(sweep, "model_config", lambda recipe, vocab, eos: Config.from_name("qwen3-tiny", vocab_size=vocab))
    everything = sweep.plan_sweep("r", [], [{"n_layer": 2}], flops=[1e9, 1e10, 1e11])
    kept = sweep.plan_sweep("r", [], [{"n_layer": 2}], flops=[1e9, 1e10, 1e11], min_steps=20)
    assert [s.steps for s in kept] == [s.steps for s in everything if s.steps >= 20] and len(kept) < len(everything)
    with pytest.raises(UserError, match="--min-steps"):
        sweep.plan_sweep("r", [], [{"n_layer": 2}], flops=[1e9], min_steps=10**6)
    cap = everything[1].flops_exact
    capped = sweep.plan_sweep("r", [], [{"n_layer": 2}], flops=[1e9, 1e10, 1e11], max_flops=cap)
    assert [s.name for s in capped] == [s.name for s in everything[:2]]
    with pytest.raises(UserError, match="--max-flops"):
        sweep.plan_sweep("r", [], [{"n_layer": 2}], flops=[1e9], max_flops=-1.0)


def test_a_size_can_set_its_own_learning_rate(monkeypatch):
    import gptqwen.scaling.sweep as sweep
    from gptqwen.train.recipe import load_recipe

    monkeypatch.setattr(sweep, "_dataset_vocab", lambda recipe: (257, 256))  # no dataset needed to plan
    sizes = [sweep.parse_size("n_layer=2,n_embd=32,n_head=2,head_dim=16,train.lr=2.4e-2"), sweep.parse_size("n_layer=3")]
    small, big = sweep.plan_sweep("scaling-bytes", [], sizes, tokens=[25600])
    assert small.name == "n_layer2-n_embd32-n_head2-head_dim16-lr2.4e-2-steps100" and big.name == "n_layer3-steps100"
    assert "train.lr=2.4e-2" in small.overrides and "model.n_embd=32" in small.overrides
    assert load_recipe("scaling-bytes", list(small.overrides)).train.lr == 2.4e-2
    assert load_recipe("scaling-bytes", list(big.overrides)).train.lr == load_recipe("scaling-bytes", []).train.lr
    with pytest.raises(UserError, match="unknown train setting .lrr"):  # a misspelt recipe key is refused before any training
        sweep.plan_sweep("scaling-bytes", [], [sweep.parse_size("train.lrr=1")], tokens=[25600])


def test_a_size_with_its_own_batch_counts_its_own_tokens(monkeypatch):
    """A dotted `train.batch_size` / `train.seq_len` of one size sets that size's tokens per step, so its steps, D and C
    are the tokens it really trains on (not the base recipe's batch times its steps)."""
    import gptqwen.scaling.sweep as sweep

    monkeypatch.setattr(sweep, "_dataset_vocab", lambda recipe: (257, 256))
    sizes = [sweep.parse_size("n_layer=2"), sweep.parse_size("n_layer=2,train.batch_size=16,train.seq_len=64")]
    base, big_batch = sweep.plan_sweep("scaling-bytes", [], sizes, tokens=[204800])
    assert base.steps == 204800 // (2 * 128) and base.tokens == 204800
    assert big_batch.steps == 204800 // (16 * 64) and big_batch.tokens == 204800
    assert big_batch.flops == base.flops  # the same N and D


def test_tokens_per_param_and_seeds_plan_a_ray_of_repeated_runs(monkeypatch):
    """--tokens-per-param R gives each size D = R x N (whole steps); --seeds repeats every run under its own
    train.seed, in its own folder, with the seed in its row."""
    import gptqwen.scaling.sweep as sweep
    from gptqwen.train.recipe import load_recipe

    monkeypatch.setattr(sweep, "_dataset_vocab", lambda recipe: (257, 256))
    sizes = [sweep.parse_size("n_layer=2,n_embd=32,n_head=2,head_dim=16"), sweep.parse_size("n_layer=3")]
    specs = sweep.plan_sweep("scaling-bytes", [], sizes, ratios=[3.0], seeds=[1, 2])
    assert [s.seed for s in specs] == [1, 2, 1, 2]
    for s in specs:
        assert s.steps == round(3.0 * s.params / 256) and s.tokens == 256 * s.steps
        assert s.name.endswith(f"-seed{s.seed}") and load_recipe("scaling-bytes", list(s.overrides)).train.seed == s.seed
    assert specs[0].params < specs[2].params and specs[0].tokens < specs[2].tokens  # D grows with N on the ray
    for bad in ([], [1, 1], [-1]):
        with pytest.raises(UserError, match="--seeds"):
            sweep.plan_sweep("scaling-bytes", [], sizes, ratios=[3.0], seeds=bad)
    with pytest.raises(UserError, match="one way"):
        sweep.plan_sweep("scaling-bytes", [], sizes, tokens=[1e5], ratios=[3.0])
    with pytest.raises(SystemExit) as e:  # the CLI refuses two kinds of budget, and a seed that is not a number
        main(["scaling", "sweep", "--out", "x", "--size", "n_layer=2", "--tokens", "1e5", "--tokens-per-param", "3"])
    assert e.value.code == 2
    assert main(["scaling", "sweep", "--out", "x", "--size", "n_layer=2", "--tokens-per-param", "3", "--seeds",
                 "1,two", "--dry-run"]) == 2


def test_repeated_runs_are_one_point_at_their_mean_and_their_spread_is_reported(tmp_path, capsys):
    """Rows with the same N, D and C (seeds of one run) are fitted as one point at their mean loss; the report names
    their spread, the noise no prediction can beat."""
    runs = isoflop_runs(noise=0.0)
    rows = [f"{p},{t},{l * f}" for p, t, l in zip(runs.params, runs.tokens, runs.loss) for f in (0.98, 1.02)]
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n" + "\n".join(rows) + "\n")
    merged = read_runs(csv)
    assert len(merged) == len(runs) and np.allclose(merged.loss, runs.loss) and merged.lines.tolist()[:2] == [2, 4]
    assert merged.spread["points"] == len(runs) and merged.spread["median"] == pytest.approx(0.02 * 2 ** 0.5, rel=1e-6)
    assert np.allclose(merged.loss_std, 0.02 * 2 ** 0.5 * runs.loss) and merged.subset([0]).loss_std.shape == (1,)
    png = tmp_path / "fit.png"  # the plot draws each point's spread as an error bar
    assert main(["scaling", "fit", str(csv), "--law", "gpt4", "--json", "--bootstrap", "0", "--plot", str(png)]) == 0
    assert png.stat().st_size > 0
    out = json.loads(capsys.readouterr().out)
    assert out["diagnostics"]["n_runs"] == len(runs) and out["diagnostics"]["spread"]["points"] == len(runs)
    assert any("run more than once" in n for n in out["diagnostics"]["notes"])
    assert read_runs(FIXTURES / "isoflop.csv").spread is None  # no repeats, no spread
