"""benchmarks.metrics / benchmarks.probes against hand computations, and `benchmarks.run --quick` end to end."""

from __future__ import annotations

import csv
import importlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import metrics as M
from benchmarks import run as R
from benchmarks.data import sample_prompts
from benchmarks.probes import fit_probes, probe_predictions, residual_streams
from construct import build_newton_transformer, safe_alpha
from construct.regressor import GargConfig, GargRegressor
from verify import gd_predictions, newton_matrix, newton_predictions, ols_predictions

F64 = torch.float64


def t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=F64)


# ====================================================================== metrics, by hand
def test_error_vs_examples_and_nmse_by_hand():
    y = t([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    P = t([[1.0, 0.0, 3.0], [2.0, 0.0, 0.0]])  # squared errors [[0, 4, 0], [4, 0, 1]]
    d = 2
    ev = M.error_vs_examples(P, y, d)
    assert ev.shape == (1, 3)
    assert torch.allclose(ev[0], t([2.0, 2.0, 0.5]) / d)
    assert M.nmse(P, y, d).item() == pytest.approx(0.25)  # last position: (0 + 1)/2/2
    assert M.nmse(P, y, d, slice(1, 3)).item() == pytest.approx((1.0 + 0.25) / 2)
    with pytest.raises(ValueError, match="out of range"):
        M.nmse(P, y, d, position=3)
    with pytest.raises(ValueError, match="d \\(data dimension"):
        M.error_vs_examples(P, y, 0)


def test_sime_by_hand():
    y = t([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    # residuals over t = 1, 2 (position 0 is skipped by default)
    A = t([[[9.0, 2.0, 4.0], [0.0, 2.0, 1.0]]])       # r = (0, 1) and (1, 0)
    B = t([[[-5.0, 3.0, 3.0], [7.0, 3.0, 4.0]],       # r = (1, 0) and (2, 3)
           [[0.0, 4.0, 6.0], [1.0, 1.0, 2.0]]])       # r = (2, 3) and (0, 1)
    s = M.sim_e(A, B, y)
    assert s.shape == (1, 2)
    assert s[0, 0].item() == pytest.approx((0.0 + 2 / math.sqrt(13)) / 2, abs=1e-15)
    assert s[0, 1].item() == pytest.approx((3 / math.sqrt(13) + 0.0) / 2, abs=1e-15)
    per = M.sim_e(A, B, y, per_prompt=True)
    assert per.shape == (1, 2, 2) and per[0, 0, 0].item() == pytest.approx(0.0, abs=1e-15)
    # start=0 includes position 0: prompt 0 of A vs B[0]: r = (8, 0, 1) vs (-6, 1, 0)
    s0 = M.sim_e(A[:, :1], B[:1, :1], y[:1], start=0)
    assert s0.item() == pytest.approx(-48 / (math.sqrt(65) * math.sqrt(37)), abs=1e-15)
    # a bare (B, n) is a family of one; identical residuals give exactly 1
    assert M.sim_e(A[0], A[0], y).item() == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ValueError, match="start must be"):
        M.sim_e(A, B, y, start=3)
    with pytest.raises(ValueError, match="must have shape"):
        M.sim_e(A[..., :2], B, y)


def test_simw_and_induced_weights_by_hand():
    Wa = t([[[1.0, 0.0], [0.0, 2.0]]])                 # (1, B=2, d=2)
    Wb = t([[[1.0, 1.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 0.0]]])
    s = M.sim_w(Wa, Wb)
    assert s[0, 0].item() == pytest.approx((1 / math.sqrt(2) - 1.0) / 2, abs=1e-15)
    assert s[0, 1].item() == pytest.approx((1.0 + 0.0) / 2, abs=1e-15)
    # induced weights: predictions that are exactly linear are recovered exactly
    g = torch.Generator().manual_seed(0)
    Xq = torch.randn(3, 12, 4, generator=g, dtype=F64)
    W = torch.randn(2, 3, 4, generator=g, dtype=F64)
    preds = torch.einsum("btd,abd->abt", Xq, W)
    assert torch.allclose(M.induced_weights(Xq, preds), W, atol=1e-12, rtol=0)
    # a hand case: queries e1, e2, e1+e2 with predictions 1, 2, 4 -> least squares w = (4/3, 7/3)
    Xh = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert torch.allclose(M.induced_weights(Xh, t([[1.0, 2.0, 4.0]]))[0, 0], t([4 / 3, 7 / 3]), atol=1e-14)
    with pytest.raises(ValueError, match="at least d = 4 queries"):
        M.induced_weights(Xq[:, :3], preds[..., :3])


def test_augment_queries_asks_each_query_after_the_context():
    X, y, _ = sample_prompts(3, 4, 2, seed=1, dtype=F64)
    Xq = torch.randn(3, 5, 2, dtype=F64)
    Xa, ya = M.augment_queries(X, y, Xq)
    assert Xa.shape == (15, 5, 2) and ya.shape == (15, 5)
    assert torch.equal(Xa[7, :4], X[1]) and torch.equal(Xa[7, 4], Xq[1, 2]) and ya[7, 4] == 0
    # OLS at the last position equals x_q . w_ols of the context
    w = torch.linalg.lstsq(X, y[..., None]).solution[..., 0]  # n = 4 > d = 2: unique
    last = ols_predictions(Xa, ya)[:, -1].reshape(3, 5)
    assert torch.allclose(last, torch.einsum("btd,bd->bt", Xq, w), atol=1e-12)


def test_reference_weights_match_newton_matrix():
    X, y, _ = sample_prompts(4, 6, 3, seed=2, dtype=F64)
    W = R.reference_weights(lambda A, b: newton_predictions(A, b, [0, 3], alpha=0.01, on_diverge="ignore"), X, y)  # (2, B, d)
    S = X.transpose(1, 2) @ X
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]
    for i, k in enumerate([0, 3]):
        Mk = newton_matrix(S, k, 0.01)
        assert torch.allclose(W[i], (Mk @ b[..., None])[..., 0], atol=1e-12)


def test_best_match_and_trends():
    sim = t([[0.1, 0.9, 0.9], [0.5, 0.2, 0.4]])
    idx, step, val = M.best_match(sim, [1, 10, 100])
    assert idx.tolist() == [1, 0] and step.tolist() == [10, 1] and val.tolist() == [0.9, 0.5]  # ties -> first
    f = M.fit_trend([1, 2, 3, 4], [1, 4, 7, 10], "linear")
    assert f["slope"] == pytest.approx(3.0) and f["intercept"] == pytest.approx(-2.0) and f["r2"] == pytest.approx(1.0)
    g = M.fit_trend([0, 1, 2, 3], [2, 6, 18, 54], "exponential")
    assert g["factor_per_layer"] == pytest.approx(3.0) and g["r2"] == pytest.approx(1.0)
    lin_on_exp = M.fit_trend([0, 1, 2, 3], [2, 6, 18, 54], "linear")
    assert lin_on_exp["r2"] < 0.95  # a linear fit of an exponential is visibly worse
    assert M.fit_trend([1], [3], "linear")["slope"] is None
    with pytest.raises(ValueError, match="steps > 0"):
        M.fit_trend([1, 2], [0, 1], "exponential")
    assert M.log_step_grid(1000, 4) == [1, 10, 100, 1000]


@settings(max_examples=30)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(2, 6), st.integers(0, 2**16))
def test_sime_symmetric_bounded_scale_invariant(A, S, B, n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, n, generator=g, dtype=F64)
    Pa = torch.randn(A, B, n, generator=g, dtype=F64)
    Pb = torch.randn(S, B, n, generator=g, dtype=F64)
    s = M.sim_e(Pa, Pb, y)
    assert torch.allclose(s, M.sim_e(Pb, Pa, y).T, atol=1e-14)
    assert (s.abs() <= 1 + 1e-12).all()
    # scaling every residual of one side by a positive constant leaves SimE unchanged
    assert torch.allclose(M.sim_e(y + 3.0 * (Pa - y), Pb, y), s, atol=1e-12)


# ====================================================================== probes
def test_probe_recovers_exact_linear_readout():
    g = torch.Generator().manual_seed(3)
    H = torch.randn(3, 40, 5, 7, generator=g, dtype=F64)  # (L+1, B, n, D)
    w = torch.randn(3, 7, generator=g, dtype=F64)
    c = t([0.5, -1.0, 2.0])
    # a different exact read-out per layer; the target for layer l is H_l w_l + c_l
    for l in range(3):
        y = torch.einsum("bnd,d->bn", H[l], w[l]) + c[l]
        pr = fit_probes(H, y, ridge=1e-12)
        assert torch.allclose(pr.weight[l], w[l], atol=1e-8) and pr.bias[l].item() == pytest.approx(c[l].item(), abs=1e-8)
        assert torch.allclose(pr(H)[l], y, atol=1e-8)
    with pytest.raises(ValueError, match="ridge must be"):
        fit_probes(H, y, ridge=0.0)
    with pytest.raises(ValueError, match="y must have shape"):
        fit_probes(H, y[:, :3])


def test_probe_on_constructed_model_recovers_its_output_at_the_last_layer_only():
    X, y, _ = sample_prompts(96, 7, 3, seed=4, dtype=F64)
    model = build_newton_transformer(3, 3, float(safe_alpha(X).min()))
    out = model.predict_all(X, y)  # (B, n): a layer output we know exactly
    H = residual_streams(model, X, y)  # (L+1, B, n, D)
    assert H.shape == (model.n_layers + 1, 96, 7, model.layout.width)
    assert torch.equal(H[-1][..., model.layout["out"]][..., 0], out)  # the out slot holds the prediction
    P = fit_probes(H, out, ridge=1e-12)(H)
    scale = out.abs().max()
    assert (P[-1] - out).abs().max() <= 1e-8 * scale  # the read-out layer: exactly linear
    assert (P[-2] - out).abs().max() >= 1e-3 * scale  # one layer earlier: not linear in the stream


def test_probes_for_all_layers_are_fast_on_a_cpu_size_model():
    torch.manual_seed(0)
    model = GargRegressor(GargConfig(d=5, n_points=11, n_layers=6, n_heads=4, d_model=64)).eval()
    fit = sample_prompts(2048, 11, 5, seed=5, dtype=F64)[:2]
    test = sample_prompts(128, 11, 5, seed=6, dtype=F64)[:2]
    # CPU time (all threads of this process) bounds the wall time on an idle machine and does not
    # grow when other jobs share the cores, so the test is not flaky on a busy CI runner
    c0 = time.process_time()
    P, probes = probe_predictions(model, fit, test)
    cpu = time.process_time() - c0
    assert P.shape == (7, 128, 11) and torch.isfinite(P).all()
    assert cpu < 10.0, f"probes for all 7 layers took {cpu:.1f} CPU seconds"


# ====================================================================== the quick run, end to end
EXPECTED = [
    "summary.json", "summary.md",
    "a_convergence/convergence.png", "a_convergence/convergence.csv", "a_convergence/convergence.json",
    "a_convergence/error_vs_examples.png", "a_convergence/error_vs_examples.csv",
    "b_similarity/heatmaps.png", "b_similarity/similarity.json",
    "c_best_match/best_match.png", "c_best_match/best_match.csv", "c_best_match/fits.json",
    "d_ill_conditioned/convergence.png", "d_ill_conditioned/heatmaps.png", "d_ill_conditioned/best_match.png",
    "d_ill_conditioned/convergence.json", "d_ill_conditioned/similarity.json", "d_ill_conditioned/fits.json",
    "e_constructed/constructed_vs_newton.png", "e_constructed/constructed_vs_newton.json",
    "e_constructed/constructed_vs_trained.png", "e_constructed/constructed_vs_trained.json",
    "e_constructed/lstm.png", "e_constructed/lstm.json",
    "m_models/models.json", "m_models/table1.csv", "m_models/trends.csv", "m_models/steps_per_layer.csv",
    "m_models/heatmaps.png", "m_models/best_match.png", "m_models/table1.png", "m_models/steps_per_layer.png",
    "o_lookalikes/lookalikes.json", "o_lookalikes/lookalikes.csv", "o_lookalikes/lookalikes.png",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("bench")
    t0 = time.perf_counter()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = R.run(["--quick", "--out", str(out), "--no-progress", "--seed", "0", "--jobs", "2"])
    _QUICK_STDOUT["text"] = stdout.getvalue()
    return out, code, time.perf_counter() - t0


_QUICK_STDOUT: dict[str, str] = {}


def test_quick_run_stdout_is_its_own_summary_line(quick_run):
    """Sub-runs (the width ablation's training runs) keep their output off benchmarks.run's stdout."""
    lines = [line for line in _QUICK_STDOUT["text"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("benchmarks: "), lines


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_quick_run_succeeds_and_writes_every_output(quick_run):
    out, code, seconds = quick_run
    assert code == 0, (out / "summary.md").read_text()
    missing = [p for p in EXPECTED if not (out / p).is_file()]
    assert not missing, missing
    for p in EXPECTED:
        if p.endswith(".png"):
            data = (out / p).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, p
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["quick"] is True
    assert all(c["ok"] for c in summary["checks"].values()), summary["checks"]
    assert set(summary["experiments"]) >= {"a_convergence", "b_similarity", "c_best_match", "d_ill_conditioned", "e_constructed"}
    md = (out / "summary.md").read_text()
    for head in ("## a.", "## b.", "## c.", "## d.", "## e.", "## Checks"):
        assert head in md
    # experiments a-e within the CI budget (experiments registered later have their own)
    spent = sum(v for k, v in summary["meta"]["experiment_seconds"].items() if k[:2] in ("a_", "b_", "c_", "d_", "e_"))
    assert spent < 90, summary["meta"]["experiment_seconds"]


def test_quick_run_numbers_are_finite(quick_run):
    out, _, _ = quick_run
    for p in sorted(out.rglob("*.json")):
        data = json.loads(p.read_text())  # Python's json accepts NaN/Infinity tokens: catch them here
        nums = list(_numbers(data))
        assert nums, p
        assert all(math.isfinite(v) for v in nums), p
    for p in sorted(out.rglob("*.csv")):
        rows = list(csv.DictReader(p.open()))
        assert rows, p
        for r in rows:
            for k, v in r.items():
                if k in ("nmse", "nmse_last", "nmse_avg"):
                    assert math.isfinite(float(v)), (p, r)


def test_quick_run_constructed_model_is_newton_k_exactly(quick_run):
    out, _, _ = quick_run
    c = json.loads((out / "e_constructed/constructed_vs_newton.json").read_text())
    ks = c["k"]
    assert len(ks) >= 3
    assert c["best_step"] == ks
    assert max(abs(v) for v in c["one_minus_sime_at_k"]) <= 1e-12
    assert max(c["max_rel_pred_error_vs_newton_k"]) <= 1e-10
    assert min(c["margin_to_next_best"]) > 1e-9  # the exact step is distinguishable from its neighbours


def test_quick_run_tables_are_consistent(quick_run):
    out, _, _ = quick_run
    sim = json.loads((out / "b_similarity/similarity.json").read_text())
    fits = json.loads((out / "c_best_match/fits.json").read_text())
    for key in ("sime_newton", "simw_newton", "sime_gd", "simw_gd"):
        m = np.asarray(sim[key]["matrix"])
        steps = sim[key]["steps"]
        assert m.shape == (len(sim["layers"]), len(steps))
        assert (np.abs(m) <= 1 + 1e-12).all()
        assert sim[key]["best_step"] == [steps[i] for i in m.argmax(1)]
        assert fits["best_steps"][key] == sim[key]["best_step"]
    conv = json.loads((out / "a_convergence/convergence.json").read_text())
    assert conv["ols"]["nmse_last"] < 1e-10  # noiseless, n - 1 >= d examples: OLS is exact
    # GD tends to OLS: its last grid point beats its first, and Newton's last step beats step 0
    assert conv["gd_step"]["nmse_last"][-1] < conv["gd_step"]["nmse_last"][0]
    assert conv["newton_step"]["nmse_last"][-1] < conv["newton_step"]["nmse_last"][0]


def test_registry_and_bad_arguments(tmp_path):
    assert list(R.EXPERIMENTS)[:5] == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="already registered"):
        R.experiment("a", "x", "dup")(lambda ctx: {})
    with pytest.raises(SystemExit):
        R.run(["--quick", "--out", str(tmp_path), "--only", "zz", "--no-progress"])
    with pytest.raises(SystemExit, match="no transformer checkpoint"):
        R.run(["--out", str(tmp_path), "--checkpoint", str(tmp_path / "none"), "--no-progress"])


def test_experiment_modules_are_discovered_and_documented():
    from benchmarks import experiments as E

    mods = E.experiment_modules()
    names = [m.rsplit(".", 1)[1] for m in mods]
    assert names[:5] == ["a_convergence", "b_similarity", "c_best_match", "d_ill_conditioned", "e_constructed"]
    assert "context" not in names and "registry" not in names and "common" not in names
    for m in mods:
        doc = importlib.import_module(m).__doc__ or ""
        assert "Question" in doc and "Metric" in doc and "Mirrors" in doc, m  # question, metric, paper figure
    # the runner re-exports the one registry: experiments registered anywhere land in R.EXPERIMENTS
    assert R.EXPERIMENTS is E.EXPERIMENTS and R.experiment is E.experiment and R.Context is E.Context
    assert [R.EXPERIMENTS[k].folder for k in "abcde"] == names[:5]


# ====================================================================== bootstrap, fits, matched steps
def test_bootstrap_helpers_by_hand():
    W = M.bootstrap_weights(4, 500, seed=3)
    assert W.shape == (500, 4) and torch.allclose(W.sum(1), torch.ones(500, dtype=F64))
    assert torch.equal(W, M.bootstrap_weights(4, 500, seed=3)) and not torch.equal(W, M.bootstrap_weights(4, 500, seed=4))
    assert torch.equal(W * 4, (W * 4).round())  # counts / B
    x = t([[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 0.0, 4.0]])  # (2, B=4)
    reps = M.replicate_means(x, W)  # (500, 2)
    r = 17
    idx = [b for b in range(4) for _ in range(int(round(float(W[r, b]) * 4)))]
    assert torch.allclose(reps[r], x[:, idx].mean(1))
    lo, hi = M.interval(np.arange(101.0)[:, None], 0.9)
    assert lo[0] == pytest.approx(5.0) and hi[0] == pytest.approx(95.0)
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_weights(4, 0)


def test_linear_fits_equal_fit_trend():
    x = [2, 3, 4, 5]
    S = np.array([[3.0, 8.0, 14.0, 19.0], [1.0, 2.0, 2.0, 5.0]])
    f = M.linear_fits(x, S)
    for i in range(2):
        g = M.fit_trend(x, S[i], "linear")
        assert f["slope"][i] == pytest.approx(g["slope"]) and f["r2"][i] == pytest.approx(g["r2"])
    assert np.isnan(M.linear_fits(x, np.ones((1, 4)))["r2"][0])  # no variance: undefined, not 1


def test_matched_steps_by_hand():
    err = np.array([1.0, 0.1, 0.01, 0.001])
    s = M.matched_steps(err[None], [0, 1, 2, 3], np.array([0.1 ** 1.5]))
    assert s[0] == pytest.approx(1.5)  # log-linear interpolation between steps 1 and 2
    assert M.matched_steps(err[None], [1, 10, 100, 1000], np.array([0.01]))[0] == pytest.approx(100.0)
    assert np.isnan(M.matched_steps(err[None], [0, 1, 2, 3], np.array([1e-5]))[0])  # below the grid: not reached
    assert M.matched_steps(err[None], [0, 1, 2, 3], np.array([5.0]))[0] == 0.0  # above the first point: the first step


def test_lookalike_matching_censors_ambiguous_levels():
    from benchmarks.experiments.o_lookalikes import _matched, verdict

    steps = [0, 1, 2, 3, 4]
    bump = np.array([[[1.0], [0.5], [0.6], [0.2], [0.1]]])  # (R=1, S, n=1): not monotone between 1 and 2
    assert np.isnan(_matched(np.array([[0.55]]), bump, steps)[0, 0])  # 0.55 is reached near step 1 and near 2
    assert _matched(np.array([[0.2]]), bump, steps)[0, 0] == pytest.approx(3.0)  # reached once: step 3
    assert np.isnan(_matched(np.array([[0.1]]), bump, steps)[0, 0])  # at the converged floor: censored
    assert verdict({"a": (0.1, 0.05, 0.2), "b": (0.9, 0.5, 1.2)}) == ("decided", ["a"])
    assert verdict({"a": (0.1, 0.05, 0.6), "b": (0.9, 0.5, 1.2)}) == ("undecided", ["a", "b"])
    assert verdict({"a": (0.4, 0.35, 0.45), "b": (0.9, 0.5, 1.2)}) == ("closest", ["a"])  # best, not invariant
    assert verdict({"a": (0.1, 0.05, 0.2)}, few={"c": 0.15}) == ("undecided", ["a", "c"])  # few cells, lower spread


def test_quick_run_models_and_lookalikes(quick_run):
    out, _, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert {"m_models", "o_lookalikes"} <= set(summary["experiments"])
    rows = list(csv.DictReader((out / "m_models/table1.csv").open()))
    assert {r["sime_start"] for r in rows} == {"0", "1"}
    assert {r["reference"] for r in rows} == {"newton", "gd_released", "gd_unlimited", "online_gd", "ols"}
    assert {r["model"] for r in rows} >= {"cpu", "d10", "cpu-kappa100", "lstm-cpu"}
    for r in rows:
        if r["sime"]:
            assert float(r["sime_lo"]) <= float(r["sime_hi"]) and -1 <= float(r["sime"]) <= 1
    m = json.loads((out / "m_models/models.json").read_text())
    assert any(k.startswith("constructed Newton") for k in m["models"])
    spl = m["steps_per_layer"]
    assert spl["constructed Newton (k+2 layers)"]["value"] == pytest.approx(1.0)
    assert any("hyperpower" in k for k in spl)
    checks = summary["checks"]
    assert any(k.startswith("m_constructed") for k in checks)
    assert all(checks[k]["ok"] for k in checks if k.startswith(("m_", "o_")))
    o = json.loads((out / "o_lookalikes/lookalikes.json").read_text())
    ctl = o["results"]["control: Newton 6 steps / -"]
    assert ctl["algorithms"]["newton"]["spread"] == pytest.approx(0.0, abs=1e-9)
    assert {"cpu / read-out", "d10 / read-out", "lstm-cpu / read-out"} <= set(o["results"])


def test_save_fig_writes_the_same_bytes_as_savefig(tmp_path):
    """The one-pass figure writer (issue 13) is byte-identical to fig.savefig + palette."""
    from benchmarks.experiments.common import pyplot

    ctx = R.Context(tmp_path, True, 0, "cpu", R.QUICK, None, "", None, "")
    ctx.current = "x"
    plt = pyplot()
    paths = []
    for name, writer in (("new.png", ctx.save_fig), ("old.png", ctx.save_fig_reference)):
        fig, ax = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
        im = ax[0].pcolormesh(np.arange(6), np.arange(5), np.arange(20.0).reshape(4, 5), shading="flat")
        fig.colorbar(im, ax=ax[0])
        ax[1].semilogy([1, 2, 3], [1e-3, 1e-1, 1.0], "o-", label="a line")
        ax[1].legend()
        fig.suptitle("SimE: layers × steps (κ = 100)")
        paths.append(writer(fig, tmp_path / name))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert ctx.files["x"] == ["new.png", "old.png"]


def test_quick_run_accuracy_against_layers(quick_run):
    """h: every constructed form at every layer count it has, the trained models, same prompts."""
    out, _, _ = quick_run
    res = json.loads((out / "h_layers" / "layers.json").read_text())["results"]
    assert set(res) == {"cpu", "d10"}
    for name, r in res.items():
        layers = {form: [row["layers"] for row in rows] for form, rows in r["curves"].items()}
        assert layers["default"][0] == 2 and layers["merged"][0] == 3 and layers["hyperpower"][0] == 3
        assert layers["gd"][0] == 1
        hp = {row["layers"]: row for row in r["curves"]["hyperpower"]}
        assert all(hp[L]["residual_power"] == 4 * 3 ** (L - 3) for L in hp)
        assert r["trained"]["layers"] == 6 and 0 < r["trained"]["nmse_last"] < 1
    data = (out / "h_layers" / "layers.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert (out / "h_layers" / "layers.csv").read_text().startswith("model,d,n,form,layers,program,nmse_last")


# ====================================================================== issue 13.5: the faster --quick
def test_lean_log_axes_only_thins_wide_default_log_axes():
    """Wide base-10 log axes lose their minor ticks and get Unicode decade labels; narrow ones,
    base-2 ones and axes with ticks set by the experiment keep theirs (no axis loses its labels)."""
    from matplotlib import ticker

    from benchmarks.experiments.common import decade_label, lean_log_axes, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(1, 4, figsize=(8, 2))
    ax[0].semilogy([1, 2], [1e-6, 1.0])          # 6 decades: lean
    ax[1].semilogy([1, 2], [0.2, 3.0])           # 1.2 decades: untouched (minor ticks carry the labels)
    ax[2].loglog([1, 2], [2.0, 1e3], base=2)      # base 2: untouched
    ax[3].semilogx([1, 1e5], [0, 1])
    ax[3].set_xticks([1, 100, 10000], ["one", "hundred", "ten thousand"])  # the experiment's own ticks
    assert lean_log_axes(fig) == 1
    assert isinstance(ax[0].yaxis.get_minor_locator(), ticker.NullLocator)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax[0].yaxis.get_ticklabels() if t.get_visible() and t.get_text()]
    assert "10⁻⁶" in labels and "10⁰" in labels
    assert not isinstance(ax[1].yaxis.get_minor_locator(), ticker.NullLocator)
    narrow = [t.get_text() for t in ax[1].yaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    assert len(narrow) >= 2, narrow  # still labelled
    assert not isinstance(ax[2].yaxis.get_minor_locator(), ticker.NullLocator)
    assert [t.get_text() for t in ax[3].xaxis.get_ticklabels()] == ["one", "hundred", "ten thousand"]
    plt.close(fig)
    assert (decade_label(1e-6), decade_label(1.0), decade_label(1e12), decade_label(3.0), decade_label(0.0)) == \
        ("10⁻⁶", "10⁰", "10¹²", "", "")


def test_runner_speed_compare_separates_figures_timings_and_data(tmp_path):
    """runner_speed.compare: equal data passes, a changed figure is listed apart, a changed number fails."""
    from benchmarks.runner_speed import compare

    a, b = tmp_path / "a", tmp_path / "b"
    for root, sec, png, val, ratio in ((a, 1.0, b"\x89PNG-old", 0.5, 2.0), (b, 9.0, b"\x89PNG-new", 0.5, 3.0)):
        (root / "x").mkdir(parents=True)
        (root / "x" / "fig.png").write_bytes(png)
        (root / "x" / "data.json").write_text(json.dumps({"value": val, "timings_s": {"t": sec}}))
        (root / "x" / "rows.csv").write_text("a,b\n1,2\n")
        (root / "summary.json").write_text(json.dumps({"meta": {"wall_s": sec}, "experiments": {
            "x": {"value": val}, "g_perf": {"ratios": {"r": ratio}}}}))
    res = compare(a, b)
    assert res["different"] == [] and res["figures_different"] == ["x/fig.png"]
    assert res["identical"] == 1 and res["identical_but_timings"] == 2
    (b / "x" / "data.json").write_text(json.dumps({"value": 0.5000000001, "timings_s": {"t": 1.0}}))
    (b / "x" / "rows.csv").write_text("a,b\n1,3\n")
    assert compare(a, b)["different"] == ["x/data.json", "x/rows.csv"]


def test_load_model_draws_no_random_numbers_and_imports_no_compiler(tmp_path):
    """Loading a checkpoint builds it on "meta" without GPT-2 init (no global RNG draw, no torch._dynamo
    or sympy import: that first import cost --quick ~1 s) and still gives the saved weights."""
    import subprocess
    import sys

    torch.manual_seed(3)
    m = GargRegressor(GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16))
    m.save(tmp_path / "ck")
    code = (
        "import sys, torch\n"
        "from construct import load_model\n"
        "s = torch.get_rng_state()\n"
        f"m = load_model({str(tmp_path / 'ck')!r})\n"
        "print(torch.equal(s, torch.get_rng_state()), 'torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"], out
    from construct import load_model

    got = load_model(tmp_path / "ck")
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in got.state_dict().items())
    assert all(p.is_contiguous() and not p.is_meta for p in got.parameters())


def test_quick_run_shares_loaded_checkpoints_without_changing_results(quick_run, tmp_path):
    """The runner hands its loaded checkpoints to ctx.shipped; an experiment run alone (loading
    them itself) writes the same data files as in the full run."""
    import contextlib
    import io

    full, _, _ = quick_run
    with contextlib.redirect_stdout(io.StringIO()):
        assert R.run(["--quick", "--out", str(tmp_path), "--no-progress", "--seed", "0", "--only", "m"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["meta"]["jobs"] == 1  # one unit: one process
    names = sorted(p.name for p in (full / "m_models").iterdir() if p.suffix in (".json", ".csv"))
    assert names == ["models.json", "steps_per_layer.csv", "table1.csv", "trends.csv"]
    for name in names:
        assert (tmp_path / "m_models" / name).read_bytes() == (full / "m_models" / name).read_bytes(), name


# ====================================================================== --jobs (benchmarks.experiments.parallel)
def test_quick_run_in_one_process_writes_the_same_data_as_two(quick_run, tmp_path):
    """``--jobs 2`` (the quick_run fixture) and ``--jobs 1`` write the same files, byte for byte
    apart from timings, and lay out summary.json's checks and files in the same order."""
    import contextlib
    import io

    from benchmarks.runner_speed import compare

    two, code, _ = quick_run
    with contextlib.redirect_stdout(io.StringIO()):
        assert R.run(["--quick", "--out", str(tmp_path), "--no-progress", "--seed", "0", "--jobs", "1"]) == code == 0
    res = compare(tmp_path, two)
    assert res["only_old"] == res["only_new"] == res["different"] == res["figures_different"] == [], res
    assert res["identical"] >= 40, res
    s1, s2 = (json.loads((p / "summary.json").read_text()) for p in (tmp_path, two))
    assert (s1["meta"]["jobs"], s2["meta"]["jobs"]) == (1, 2)
    assert list(s1["checks"]) == list(s2["checks"]) and s1["files"] == s2["files"]
    assert list(s1["meta"]["experiment_seconds"]) == list(s2["meta"]["experiment_seconds"]) == [
        R.EXPERIMENTS[k].folder for k in R.EXPERIMENTS]


def _toy_registry(monkeypatch, fail: str | None = None, die: bool = False, big: int = 0):
    """Three experiments registered r, q, p; p is the heaviest (runs first), q the lightest.
    ``fail``: that experiment raises, or (``die``, only in a worker process) exits abruptly."""
    import os

    from benchmarks.experiments import parallel, registry

    main_pid = os.getpid()

    reg: dict = {}
    monkeypatch.setattr(registry, "EXPERIMENTS", reg)
    monkeypatch.setattr(parallel, "EXPERIMENTS", reg)

    def make(key, seconds):
        def fn(ctx):
            time.sleep(seconds)
            if key == fail:
                if die and os.getpid() != main_pid:
                    os._exit(3)  # a worker killed mid-experiment: no report reaches the main process
                raise ArithmeticError(f"toy failure in {key}")
            ctx.check(f"check_{key}", True, pid=os.getpid(), started=time.time() - seconds, ended=time.time())
            ctx.note(f"note from {key}")
            ctx.note("shared note")
            (ctx.dir(key) / "x.txt").write_text(key)
            ctx.record(ctx.out / key / "x.txt")
            return {"summary": {"key": key}, "markdown": "x" * big}  # ``big``: a result larger than a pipe buffer
        return fn
    registry.experiment("r", "r_folder", "R", cost=2.0)(make("r", 0.0))
    registry.experiment("q", "q_folder", "Q", cost=1.0)(make("q", 0.0))
    registry.experiment("p", "p_folder", "P", cost=3.0)(make("p", 1.0))
    registry.experiment("z", "z_folder", "Z", alone=True)(make("z", 0.0))
    return reg


def _toy_ctx(tmp_path):
    from benchmarks.experiments import QUICK, Context

    return Context(tmp_path, True, 0, "cpu", QUICK, None, "", None, "")


def test_jobs_merge_in_registration_order_and_run_alone_last(monkeypatch, tmp_path):
    import os

    from benchmarks.experiments import parallel

    _toy_registry(monkeypatch)
    assert parallel.plan(["q", "z", "p", "r"]) == ([["p"], ["r"], ["q"]], ["z"])
    assert parallel.plan(["q", "z", "p", "r"], alone=False) == ([["p"], ["r"], ["q"], ["z"]], [])
    assert [parallel.usable_jobs(2, u)[0] for u in (0, 1, 2, 3)] == [1, 1, 2, 2]  # no more processes than units
    ctx = _toy_ctx(tmp_path)
    outcomes, suites = parallel.run_experiments(ctx, ["z", "q", "p", "r"], jobs=2)
    assert list(outcomes) == ["r", "q", "p", "z"] and suites == []
    assert list(ctx.checks) == ["check_r", "check_q", "check_p", "check_z"]
    assert ctx.notes == ["note from r", "shared note", "note from q", "note from p", "note from z"]
    assert list(ctx.files) == ["r_folder", "q_folder", "p_folder", "z_folder"]
    pids = {k: v["pid"] for k, v in ctx.checks.items()}
    # p (1 s, heaviest) runs here; r and q meanwhile in the worker; z alone, here, afterwards
    assert pids["check_p"] == pids["check_z"] == os.getpid() != pids["check_r"] == pids["check_q"]
    assert [o.result["summary"]["key"] for o in outcomes.values()] == ["r", "q", "p", "z"]


def test_jobs_worker_failure_raises_naming_the_experiment(monkeypatch, tmp_path):
    from benchmarks.experiments import parallel

    _toy_registry(monkeypatch, fail="q")
    with pytest.raises(parallel.WorkerError, match=r"(?s)experiment 'q' failed in a --jobs worker.*ArithmeticError: toy failure in q"):
        parallel.run_experiments(_toy_ctx(tmp_path), ["p", "q", "r"], jobs=2)


@pytest.mark.parametrize("d,n,B", [(5, 11, 32), (10, 21, 256)])  # h's two models; quick and full prompt counts
def test_layer_curves_last_prefix_equals_predict_all_last_column(d, n, B):
    """Experiment h reads only t = n − 1 and runs that one prefix with ``predict``: bit for bit
    predict_all's last column, for every form and depth it uses (also where predict_all splits the
    prefixes into several length groups)."""
    from benchmarks.experiments.h_layers import FORMS, _program
    from construct import build_gd_transformer

    X, y, _ = sample_prompts(B, n, d, seed=3, dtype=F64)
    alpha = float(safe_alpha(X).min())
    lr = 1.0 / float(torch.linalg.eigvalsh(X.mT @ X)[:, -1].max())
    for form in FORMS:
        for L in (1, 3, 5):
            prog = _program(form, L)
            if prog is None:
                continue
            kw = prog[0]
            model = build_gd_transformer(d, kw["steps"], lr) if form == "gd" else build_newton_transformer(d, alpha=alpha, **kw)
            full = model.predict_all(X, y)[:, -1]
            last = model.predict(X[:, :-1], y[:, :-1], X[:, -1])
            assert torch.equal(full, last), (form, L, (full - last).abs().max().item())


def test_jobs_worker_that_dies_raises_naming_the_unfinished_experiments(monkeypatch, tmp_path):
    from benchmarks.experiments import parallel

    _toy_registry(monkeypatch, fail="r", die=True)
    with pytest.raises(parallel.WorkerError, match=r"(?s)one of the experiments \['r'.*exited without reporting"):
        parallel.run_experiments(_toy_ctx(tmp_path), ["p", "q", "r"], jobs=2)


def test_jobs_with_torch_threads_runs_in_one_process_instead_of_hanging(tmp_path):
    """Torch's CPU kernels run on GNU OpenMP, which is not fork-safe: a forked worker that enters a
    parallel region after its parent ran one waits forever (``--threads 0`` or ``--threads 2`` with
    ``--jobs 2``, from any process that has computed something).  With more than one torch thread
    the runner must run the experiments in its own process and say so in a note."""
    import os
    import signal
    import subprocess
    import sys

    code = """
import os, sys, torch
torch.set_num_threads(2)
torch.exp(torch.randn(2000, 2000)).sum()  # this process has run an OpenMP parallel region
from benchmarks.experiments import QUICK, Context, parallel, registry
registry.EXPERIMENTS.clear()
def make(key):
    def fn(ctx):
        torch.exp(torch.randn(2000, 2000)).sum()  # so does every experiment: a forked one hangs here
        ctx.check("check_" + key, True, pid=os.getpid())
    return fn
for key in "ab":
    registry.experiment(key, key + "_folder", key)(make(key))
ctx = Context(sys.argv[1], True, 0, "cpu", QUICK, None, "", None, "")
outcomes, _ = parallel.run_experiments(ctx, ["a", "b"], jobs=2)
print(list(outcomes), sorted({c["pid"] for c in ctx.checks.values()}) == [os.getpid()])
print(ctx.notes)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the script and its hung worker
        p.communicate()
        pytest.fail("run_experiments(jobs=2) with 2 torch threads hung (a forked worker in OpenMP)")
    assert p.returncode == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert lines[0] == "['a', 'b'] True", out
    assert "--jobs 2: torch runs 2 threads" in lines[1] and "ran in one process" in lines[1], out


def test_jobs_merge_places_a_shared_note_where_a_one_process_run_does(monkeypatch, tmp_path):
    """Two experiments make the same note and the later-registered one runs first in a process (it
    is heavier): the merged notes still follow registration order, as in one process."""
    from benchmarks.experiments import parallel

    reg = _toy_registry(monkeypatch)  # registered r, q, p, z; each notes "note from KEY", then "shared note"
    one = _toy_ctx(tmp_path / "one")
    parallel.run_experiments(one, ["r", "p"], jobs=1)
    ctx = _toy_ctx(tmp_path / "two")
    base = (dict(ctx.checks), {}, list(ctx.notes), list(ctx.nonfinite))
    outcomes = {"p": parallel.run_one(ctx, reg["p"])}  # p first, as the heaviest unit would
    outcomes["r"] = parallel.run_one(ctx, reg["r"])
    assert ctx.notes == ["note from p", "shared note", "note from r"]  # this process's own order
    parallel._merge(ctx, ["r", "p"], outcomes, base)
    assert ctx.notes == one.notes == ["note from r", "shared note", "note from p"]


def test_jobs_failed_fork_ends_the_workers_already_started(monkeypatch, tmp_path):
    """The second fork fails: the first worker must not be left running (nobody would read its
    pipe, and interpreter exit would wait for it)."""
    import multiprocessing
    import multiprocessing.context

    from benchmarks.experiments import parallel, registry

    reg: dict = {}
    monkeypatch.setattr(registry, "EXPERIMENTS", reg)
    monkeypatch.setattr(parallel, "EXPERIMENTS", reg)
    for key in "abc":  # the main process takes a; the first worker takes b and is still in it
        registry.experiment(key, key, key)(lambda ctx: time.sleep(2.0))
    real_start, started = multiprocessing.context.ForkProcess.start, []

    def start(self):
        if started:
            raise OSError("fork failed (test)")
        started.append(self)
        real_start(self)
    monkeypatch.setattr(multiprocessing.context.ForkProcess, "start", start)
    with pytest.raises(OSError, match=r"fork failed \(test\)"):
        parallel.run_experiments(_toy_ctx(tmp_path), ["a", "b", "c"], jobs=3)
    assert len(started) == 1 and not started[0].is_alive() and started[0].exitcode is not None
    assert multiprocessing.active_children() == []


def test_jobs_worker_never_waits_on_a_full_pipe_while_the_main_process_computes(monkeypatch, tmp_path):
    """A worker's results are read as they arrive (reader threads): with 1 MB results (a pipe holds
    64 KiB) the worker runs r, then q, while the main process still sleeps in p (1 s); without
    the readers q could start only once p was over."""
    from benchmarks.experiments import parallel

    _toy_registry(monkeypatch, big=1 << 20)
    ctx = _toy_ctx(tmp_path)
    outcomes, _ = parallel.run_experiments(ctx, ["p", "q", "r"], jobs=2)
    c = ctx.checks
    assert c["check_p"]["pid"] != c["check_q"]["pid"] == c["check_r"]["pid"]
    assert c["check_q"]["ended"] < c["check_p"]["ended"] - 0.5, c  # q done well before p ended
    assert all(len(o.result["markdown"]) == 1 << 20 for o in outcomes.values())


def test_guard_onset_finds_the_first_refused_step_and_runs_quick(capsys):
    """benchmarks.guard_onset (the README's refusal-onset and guard-cost numbers)."""
    from benchmarks import guard_onset as G
    from construct.precision import PrecisionError

    def refuse_from(k0):
        def fn(k):
            if k >= k0:
                raise PrecisionError("too many steps")
        return fn
    assert G.first_refused(refuse_from(3), 10) == 3 and G.first_refused(refuse_from(11), 10) is None
    # the rank-1 case is refused within the README's range, and only there
    assert G.first_refused(lambda k: __import__("verify").newton_predict(*_rank1_prefix(), k, "code"), 70) in range(60, 71)
    assert G.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert out.count("first refused k") == 8 and "guard cost" in out


def _rank1_prefix():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 8, 1, generator=g, dtype=F64) @ torch.randn(1, 4, generator=g, dtype=F64)
    y = torch.randn(2, 8, generator=g, dtype=F64)
    return X[:, :5], y[:, :5], X[:, 5]
