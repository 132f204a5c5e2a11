"""benchmarks.width (f. width ablation) and benchmarks.perf (g. performance table): quick modes end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest

from benchmarks import perf, width
from benchmarks.train import PRESETS


def _finite_pos(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# ---------------------------------------------------------------------- width: pieces
def test_heads_for_divides_width():
    assert [width.heads_for(w) for w in (8, 12, 16, 17, 18, 24, 3, 1)] == [4, 4, 4, 1, 3, 4, 3, 1]
    for w in range(1, 70):
        assert w % width.heads_for(w) == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_heads_for_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="width"):
        width.heads_for(bad)


def test_width_config_keeps_schedule_shape():
    base = PRESETS["cpu"]
    cfg = width.width_config(base, 24, 3600)
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.train_steps) == (24, 4, base.n_layers, 3600)
    assert cfg.warmup_steps == 200  # 1000/18000 of the steps
    assert (cfg.lr, cfg.decay, cfg.batch_size) == (base.lr, base.decay, base.batch_size)
    with pytest.raises(ValueError, match="steps"):
        width.width_config(base, 24, 0)


def test_minimal_widths():
    rows = [{"width": 8, "nmse_last": 0.5}, {"width": 16, "nmse_last": 0.04}, {"width": 32, "nmse_last": 0.008}]
    assert width.minimal_widths(rows, 0.0) == {"0.1": 16, "0.05": 16, "0.01": 32}
    assert width.minimal_widths(rows, 0.0, (0.001,)) == {"0.001": None}


# ---------------------------------------------------------------------- width: quick run
@pytest.fixture(scope="module")
def width_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("width")
    runs = tmp_path_factory.mktemp("width-runs")
    return out, width.run_width_ablation(out, quick=True, threads=1, progress=False, runs_dir=runs), runs


def test_width_quick_writes_files(width_quick):
    out, res, _ = width_quick
    for f in width.FILES:
        assert (out / f).stat().st_size > 0, f
    for w in width.QUICK_WIDTHS:
        assert (out / f"width_{w}_log.csv").exists()
    assert json.loads((out / "width.json").read_text())["trained"][0]["width"] == width.QUICK_WIDTHS[0]
    with open(out / "width.csv", newline="") as f:
        models = [r["model"] for r in csv.DictReader(f)]
    assert models == ["trained"] * len(width.QUICK_WIDTHS) + ["constructed", "ols", "zero_predictor"]


def test_width_quick_numbers(width_quick):
    _, res, _ = width_quick
    assert res["protocol"]["equal_steps"] and res["protocol"]["steps_per_width"] == 30
    assert [r["steps"] for r in res["trained"]] == [30, 30]
    for r in res["trained"]:
        assert _finite_pos(r["nmse_last"]) and _finite_pos(r["nmse_avg"]) and _finite_pos(r["params"])
    c = res["constructed"]
    assert c["width"] == 3 * res["d"] + 2 == res["construction_width"] == 17
    assert c["reaches_ols"] and c["layers"] == c["k"] + 2
    assert abs(c["nmse_last"] - res["ols"]["nmse_last"]) <= width.EXACT_TOL
    assert res["ols"]["nmse_last"] < 1e-20  # noiseless, t >= d: OLS is exact
    assert 0.3 < res["zero_predictor"]["nmse_last"] < 3.0
    assert res["machine"]["torch_threads"] == 1  # recorded with the threads the run used


def test_width_markdown_and_replot(width_quick, tmp_path):
    _, res, _ = width_quick
    md = width.markdown(res)
    assert "3d+2 = 17" in md and "| trained | 8 |" in md
    assert width.plot(res, tmp_path / "w.png").stat().st_size > 0


def test_width_add_longer_trained_checkpoint(width_quick, tmp_path):
    out, res, runs = width_quick
    import shutil

    shutil.copytree(out, tmp_path / "r")
    new = width.add_reference_checkpoint(tmp_path / "r", runs / "width_16", label="w16 again")
    (row,) = new["longer_trained"]
    assert row["width"] == 16 and row["steps"] == 30 and row["label"] == "w16 again"
    # same eval prompts: the same model scores exactly what it scored in the ablation
    assert row["nmse_last"] == pytest.approx(res["trained"][1]["nmse_last"], rel=1e-12)
    assert new["minimal_width"] == res["minimal_width"]  # never enters the equal-budget result
    assert "longer-trained" in (tmp_path / "r" / "width.csv").read_text()
    with pytest.raises(ValueError, match="d=5"):
        width.add_reference_checkpoint(tmp_path / "r", _smoke_checkpoint(tmp_path))


def _smoke_checkpoint(tmp_path):
    from construct.regressor import GargConfig, GargRegressor

    p = tmp_path / "smoke"
    GargRegressor(GargConfig(d=3, n_points=6, n_layers=1, n_heads=1, d_model=8)).save(p)
    return p


def test_width_cli_needs_out_for_quick():
    with pytest.raises(SystemExit):
        width.main(["--quick"])


def test_committed_width_results():
    """The committed full ablation (benchmarks/results/width) is complete and self-consistent."""
    res = width.load_results(width.RESULTS_DIR)
    assert not res["quick"] and res["protocol"]["equal_steps"]
    assert sorted(r["width"] for r in res["trained"]) == sorted(width.WIDTHS)
    assert len({r["steps"] for r in res["trained"]}) == 1
    assert all(_finite_pos(r["nmse_last"]) for r in res["trained"])
    assert res["constructed"]["width"] == 17 and res["constructed"]["reaches_ols"]
    assert res["minimal_width"] == width.minimal_widths(res["trained"], res["ols"]["nmse_last"])
    for f in width.FILES:
        assert (width.RESULTS_DIR / f).exists()


# ---------------------------------------------------------------------- perf: quick run
@pytest.fixture(scope="module")
def perf_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    return out, perf.run_perf_table(out, quick=True, progress=False, command="pytest")


def test_perf_quick_writes_files(perf_quick):
    out, _ = perf_quick
    for f in ("perf.json", "perf.csv", "perf.md"):
        assert (out / f).stat().st_size > 0
    md = (out / "perf.md").read_text()
    assert "tight per-prefix numpy loop" in md and "official-code pattern" in md


def test_perf_times_finite_positive(perf_quick):
    out, _ = perf_quick
    res = json.loads((out / "perf.json").read_text())
    for path, row in res["reference"]["seconds"].items():
        assert set(row) == {"newton", "gd", "total"} and all(_finite_pos(v) for v in row.values()), path
    assert all(_finite_pos(v) for v in res["probes"]["seconds"].values())
    assert all(_finite_pos(v) for v in res["constructed"]["seconds"].values())
    assert max(res["constructed"]["accuracy"].values()) < 1e-10
    assert max(res["reference"]["accuracy"].values()) < 1e-10
    m = res["machine"]
    assert m["command"] == "pytest" and m["torch_threads"] == 1 and m["cpu_count"] >= 1


def test_perf_ratios_come_from_the_same_run(perf_quick):
    out, _ = perf_quick
    res = json.loads((out / "perf.json").read_text())
    sec = res["reference"]["seconds"]
    r = res["ratios"]
    for base in ("loop", "official_pattern"):
        for fast in ("batched", "spectral"):
            for alg in ("newton", "gd", "total"):
                want = sec[base][alg] / sec[fast][alg]
                assert r[f"reference {alg}: {base}/{fast}"] == pytest.approx(want, rel=1e-12)
                assert res["reference"]["speedup"][f"{base}/{fast}"][alg] == pytest.approx(want, rel=1e-12)
    cs = res["constructed"]["seconds"]
    assert r["constructed: forward/direct_newton"] == pytest.approx(cs["forward"] / cs["direct_newton"], rel=1e-12)
    ps = res["probes"]["seconds"]
    assert r["probes: sgd_fit/closed_form_fit"] == pytest.approx(ps["sgd_baseline_fit"] / ps["closed_form_fit"], rel=1e-12)
    with open(out / "perf.csv", newline="") as f:
        rows = {row["item"]: row for row in csv.DictReader(f) if row["section"] == "reference"}
    assert float(rows["batched (total)"]["speedup_vs_tight_loop"]) == pytest.approx(sec["loop"]["total"] / sec["batched"]["total"])


# ---------------------------------------------------------------------- runner registry
def test_registered_with_runner():
    import benchmarks.run as run

    assert run.EXPERIMENTS["f"].folder == "f_width" and run.EXPERIMENTS["g"].folder == "g_perf"


def test_perf_table_has_issue13_targets(perf_quick):
    out, _ = perf_quick
    res = json.loads((out / "perf.json").read_text())
    r, t = res["ratios"], res["targets"]
    s = t["verify"]["seconds"]
    assert r["target: verify_model / forward"] == pytest.approx(s["verify_model"] / s["forward"], rel=1e-12)
    assert "exponent" in res["scaling"]["costs"]["newton batched (all prefixes)"]["B"]
    assert "Issue 13 targets" in (out / "perf.md").read_text()


def test_perf_table_has_network_rows(perf_quick):
    """Issue 13.3-13.4: forward / predict_all old vs new and the training step, ratios from this run."""
    out, _ = perf_quick
    res = json.loads((out / "perf.json").read_text())
    net, r = res["network"], res["ratios"]
    for part in ("forward", "predict_all"):
        s = net[part]["seconds"]
        assert _finite_pos(s["old"]) and _finite_pos(s["new"])
        assert net[part]["ratio"] == pytest.approx(s["old"] / s["new"], rel=1e-12)
        assert net[part]["accuracy"]["new_vs_old"] < 1e-12
    assert r["target: predict_all previous / current"] == net["predict_all"]["ratio"]
    for shape, t in net["train"].items():
        ts = t["seconds"]
        assert all(_finite_pos(v) for v in ts.values())
        assert t["ratios"]["old/ours"] == pytest.approx(ts["old"] / ts["ours"], rel=1e-12)
        assert t["accuracy"]["ours_vs_old_float64"] < 1e-12
        if "hf_gpt2_eager" in ts:
            assert t["accuracy"]["ours_vs_hf_float64"] < 1e-12 and t["accuracy"]["ours_vs_hf_float32"] < 1e-5
        else:
            assert "transformers" in t["skipped"]
    with open(out / "perf.csv", newline="") as f:
        items = {row["item"] for row in csv.DictReader(f) if row["section"] in ("network", "train step")}
    assert {"forward, current", "predict_all, current (grouped by length)", "ours", "old"} <= items
    assert "Network (issue 13.3-13.4)" in (out / "perf.md").read_text()


def test_perf_network_skips_hf_cleanly_without_transformers(monkeypatch):
    from benchmarks import perf_network

    monkeypatch.setattr(perf_network, "_hf", lambda model: None)
    t = perf_network.time_train_step("smoke", B=4, repeats=1)
    assert "hf_gpt2_eager" not in t["seconds"] and "transformers" in t["skipped"]
    assert any("transformers" in (row[6] or "") for row in perf_network.rows(
        {"forward": {"config": {"d": 1, "n": 1, "k": 1, "B": 1}, "seconds": {"old": 1, "new": 1}, "ratio": 1},
         "predict_all": {"config": {"d": 1, "n": 1, "k": 1, "prompts": 1, "prefix_prompts": 1},
                         "seconds": {"old": 1, "new": 1}, "ratio": 1},
         "train": {"smoke": t}}))


def test_train_step_flops_count_the_recorded_gemms():
    """train_step_flops = the FLOPs of HF GPT2Model's recorded mm/addmm/bmm calls; ours (on ATen)
    records the same dense products without the attention products (SDPA runs them inside)."""
    import copy

    import torch

    from benchmarks import perf_network as pn
    from construct.regressor import GargConfig, GargRegressor

    cfg, B = GargConfig(**pn.SHAPES["smoke"]), 3
    torch.manual_seed(0)
    m = GargRegressor(cfg).train()
    X, y = torch.randn(B, cfg.n_points, cfg.d), torch.randn(B, cfg.n_points)

    def flops(model, fwd=lambda mm: mm(X, y)):
        calls = pn.record_gemms(lambda: ((fwd(model) - y) ** 2).mean().backward())
        return sum(pn._gemm_flops(n, [s[0] for s in specs if isinstance(s, tuple)]) for n, specs, _ in calls), calls

    full = lambda mm: mm.transformer(mm._tokens(X, y, cfg.n_points))[:, ::2, 0]  # last layer everywhere
    ours, calls = flops(copy.deepcopy(m), full)
    N, H, L = cfg.max_len, cfg.n_heads, cfg.n_layers
    attention = 3 * L * 4 * B * H * N * N * (cfg.d_model // H)
    assert ours == pn.train_step_flops(cfg, B) - attention
    assert flops(copy.deepcopy(m))[0] < ours  # the x-token read-out skips part of the last layer
    hf = pn._hf(copy.deepcopy(m))
    if hf is not None:
        assert flops(hf.train())[0] == pn.train_step_flops(cfg, B)
    for kernel in ("mkl", "onednn"):
        replay = pn.gemm_replay(calls, kernel)
        if replay is not None:
            replay()
    with pytest.raises(ValueError, match="kernel must be"):
        pn.gemm_replay(calls, "blas")


def test_perf_network_reports_the_gemm_floor(perf_quick):
    out, _ = perf_quick
    res = json.loads((out / "perf.json").read_text())
    net = res["network"]
    for t in net["train"].values():
        s, gf = t["seconds"], t["gflops"]
        assert _finite_pos(s["gemm_floor_mkl"]) and t["flops"]["gemm_calls"] > 0
        assert gf["ours"] == pytest.approx(t["flops"]["step"] / s["ours"] / 1e9, rel=1e-12)
        assert gf["gemm_floor_mkl"] == pytest.approx(t["flops"]["dense_gemms"] / s["gemm_floor_mkl"] / 1e9, rel=1e-12)
        if "hf_gpt2_eager" in s:
            assert t["ratios"]["hf_gpt2_eager/gemm_floor_mkl"] == pytest.approx(s["hf_gpt2_eager"] / s["gemm_floor_mkl"])
            assert t["accuracy"]["ours_train_vs_hf_float32"] < 1e-5
            if "hf_gpt2_eager_onednn" in s:
                assert t["ratios"]["hf_gpt2_eager_onednn/ours"] == pytest.approx(s["hf_gpt2_eager_onednn"] / s["ours"])
                assert t["accuracy"]["hf_onednn_train_vs_hf_float32"] < 1e-5
    assert all(_finite_pos(v) for v in net["sgemm"]["gflops"].values())
    md = (out / "perf.md").read_text()
    assert "floors:" in md and "Single-thread sgemm" in md
    with open(out / "perf.csv", newline="") as f:
        items = {row["item"] for row in csv.DictReader(f) if row["section"] == "train step"}
    assert {"gemm_floor_mkl", "ours_full_last_layer"} <= items


def test_hf_with_projections_on_onednn_equals_hf(monkeypatch):
    """The apples-to-apples row: HF's Conv1D projections through construct.dense.linear (oneDNN)."""
    import copy

    import torch

    from benchmarks import perf_network as pn
    from construct import dense
    from construct.regressor import GargConfig, GargRegressor

    monkeypatch.setattr(dense, "MIN_MACS", 0)  # the smoke shape's products are small
    torch.manual_seed(0)
    m = GargRegressor(GargConfig(**pn.SHAPES["smoke"])).train()
    hf = pn._hf(copy.deepcopy(m))
    if hf is None:
        pytest.skip("transformers is not installed")
    fast = pn._on_onednn(pn._hf(copy.deepcopy(m)))
    if fast is None:
        pytest.skip("torch built without oneDNN")
    X, y = torch.randn(4, 6, 3), torch.randn(4, 6)
    seen = []
    conv = next(mod for mod in fast.modules() if type(mod).__name__ == "Conv1D")
    conv.register_forward_hook(lambda mod, i, o: seen.append(type(o.grad_fn).__name__))
    out, ref = fast(X, y), hf(X, y)
    assert seen == ["_OneDnnLinearBackward"]
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-6


def test_perf_network_hf_false_leaves_out_hf_without_importing_transformers():
    """benchmarks.run --quick's experiment g: no Hugging Face variants, and transformers is never imported."""
    import subprocess
    import sys

    code = ("import sys, torch; from benchmarks import perf_network as pn; "
            "t = pn.time_train_step('smoke', B=4, repeats=1, hf=False); "
            "assert 'transformers' not in sys.modules, 'transformers imported'; "
            "assert not any(k.startswith('hf_') for k in t['seconds']), t['seconds']; "
            "assert 'ours' in t['seconds'] and 'hf=False' in t['skipped']; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
