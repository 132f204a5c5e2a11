"""The verifier itself: report structure, JSON, the table, fault localisation, bad input, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from construct import AlphaDivergenceError, build_newton_transformer, safe_alpha
from construct.regressor import GargConfig, GargRegressor
from verify import Report, expected_streams, verify_model
from verify.__main__ import main

F64 = torch.float64



def gaussian(B=3, n=10, d=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    X = scale * torch.randn(B, n, d, generator=g, dtype=F64)
    y = torch.randn(B, n, generator=g, dtype=F64)
    xq = scale * torch.randn(B, d, generator=g, dtype=F64)
    return X, y, xq


@pytest.fixture(scope="module")
def data():
    return gaussian()


@pytest.fixture(scope="module")
def alpha(data):
    return float(safe_alpha(data[0]).min())


# ------------------------------------------------------------------------------ structure
def test_report_structure(data, alpha):
    X, y, xq = data
    model = build_newton_transformer(d=4, k=3, alpha=alpha)
    rep = verify_model(model, X, y, xq)
    slots = model.layout.names
    assert len(rep.rows) == (model.n_layers + 1) * len(slots)
    assert [r.layer for r in rep.rows[:: len(slots)]] == list(range(-1, model.n_layers))
    assert [r.layer_name for r in rep.rows[:: len(slots)]] == ["read-in", "init", "newton", "newton", "newton", "readout"]
    assert tuple(r.slot for r in rep.rows[: len(slots)]) == slots
    assert rep.passed and rep.first_failure is None and rep.failures == ()
    assert rep.dtype == "float64" and rep.rtol == 1e-10 and not rep.condition_aware
    assert rep.max_rel_error == max([r.max_rel for r in rep.rows] + [rep.newton.max_rel])
    assert 0 < rep.max_rel_error < 1e-13
    assert rep.config["B"] == 3 and rep.config["n"] == 10 and rep.config["N"] == 11 and rep.config["k"] == 3
    u1 = rep.row(1, "u")
    assert u1.expected == "M_1 z" and u1.scale > 0 and 0 < u1.bound < 1e-12 and u1.at != "-"
    assert rep.row(2, "x").bound == 0.0 and rep.row(2, "x").max_abs == 0.0  # exact copies stay exact
    with pytest.raises(KeyError, match="no row for layer 9"):
        rep.row(9, "u")


def test_expected_streams_shapes_and_ridge_prefix(data, alpha):
    X, y, xq = data
    model = build_newton_transformer(d=4, k=2, alpha=alpha, lam=0.5, form="merged")
    exp = expected_streams(model, X, y, xq)
    assert len(exp) == model.n_layers + 1
    for stage in exp:
        assert set(stage) == set(model.layout.names)
        for slot, t in stage.items():
            assert t.shape == (3, 4 + 10 + 1, model.layout.slot(slot).size)
    assert torch.equal(exp[0]["x"][0, :4], math.sqrt(0.5) * torch.eye(4, dtype=F64))  # prefix tokens
    assert torch.all(exp[1]["c"][:, -1] == 0)  # init layer: c = 0 on the query


def test_json_round_trip(data, alpha):
    X, y, xq = data
    rep = verify_model(build_newton_transformer(d=4, k=2, alpha=alpha, printed_paper=True), X, y, xq)
    s = rep.to_json()
    back = Report.from_json(s)
    assert back == rep
    d = json.loads(s)
    assert d["passed"] is False and d["first_failure"]["layer"] == 1 and d["first_failure"]["slot"] == "u"
    assert d == rep.to_dict()


def test_json_with_nonfinite_values_is_strict_json(data, alpha):
    """A network that overflows gives inf/NaN errors: still valid JSON, and it round-trips."""
    X, y, xq = data
    model = build_newton_transformer(d=4, k=2, alpha=alpha)
    with torch.no_grad():
        model.transformer.blocks[2].attn.W_O.mul_(float("inf"))  # layer 2: inf·0 = NaN in every slot
    rep = verify_model(model, X, y, xq)
    assert not rep.passed and rep.first_failure.layer == 2
    assert math.isnan(rep.row(2, "u").max_rel) and math.isnan(rep.newton.max_rel)
    assert rep.max_rel_error == math.inf  # NaN counts as inf
    s = rep.to_json()  # allow_nan=False: raises if a bare NaN/Infinity slipped through
    assert "Infinity" not in s and "NaN" not in s
    back = Report.from_json(s)
    assert back.to_dict() == rep.to_dict()
    assert math.isnan(back.row(2, "u").max_abs)


def test_table(data, alpha):
    X, y, xq = data
    good = str(verify_model(build_newton_transformer(d=4, k=2, alpha=alpha), X, y, xq))
    for word in ("layer", "slot", "expected", "max_abs", "max_rel", "bound", "read-in", "init", "readout",
                 "M_2 z", "prediction vs Newton", "RESULT: PASS"):
        assert word in good, word
    assert "FAIL" not in good
    bad = str(verify_model(build_newton_transformer(d=4, k=2, alpha=alpha, printed_paper=True), X, y, xq))
    marked = [line for line in bad.splitlines() if "<- first failure" in line]
    assert len(marked) == 1
    assert marked[0].split()[:2] == ["1", "newton"] and " u " in marked[0]
    assert "RESULT: FAIL: layer 1 (newton (printed paper)), slot 'u'" in bad


# ------------------------------------------------------------------------------ what it catches
def test_tampered_layer_is_located(data, alpha):
    """A 1e-7 relative change in one Newton layer's weights is caught at that layer, slot u."""
    X, y, xq = data
    model = build_newton_transformer(d=4, k=4, alpha=alpha)
    with torch.no_grad():
        model.transformer.blocks[3].attn.W_O.mul_(1 + 1e-7)  # layer 3 = third Newton step
    rep = verify_model(model, X, y, xq)
    f = rep.first_failure
    assert (f.kind, f.layer, f.slot) == ("slot", 3, "u")
    assert 1e-9 < f.max_rel < 1e-5
    assert all(r.passed for r in rep.rows if r.layer < 3)


def test_leak_into_an_empty_slot_is_caught(data, alpha):
    """Writing y into `out` at the read-in is caught there, measured against the stream's scale."""
    X, y, xq = data
    model = build_newton_transformer(d=4, k=1, alpha=alpha)
    with torch.no_grad():
        model.transformer.W_in[2 * 4, model.layout["out"]] = 1e-6
    rep = verify_model(model, X, y, xq)
    f = rep.first_failure
    assert (f.layer, f.layer_name, f.slot) == (-1, "read-in", "out")
    assert rep.row(-1, "out").scale > 0  # not divided by the slot's own zero


def test_float32_model(data, alpha):
    X, y, xq = gaussian(B=4, n=20, d=5, seed=3)
    a = float(safe_alpha(X).min())
    model = build_newton_transformer(d=5, k=6, alpha=a, dtype=torch.float32)
    rep = verify_model(model, X, y, xq)
    assert rep.dtype == "float32" and rep.rtol == 1e-4
    assert rep.passed, rep.first_failure
    assert 1e-8 < rep.max_rel_error < 1e-4  # float32 round-off is visible, far below rtol
    X2, y2, xq2 = gaussian(B=4, n=40, d=20, seed=4)
    merged = build_newton_transformer(d=20, k=10, alpha=float(safe_alpha(X2).min()), form="merged", dtype=torch.float32)
    rep = verify_model(merged, X2, y2, xq2)
    assert rep.passed, rep.first_failure  # slot c keeps float32 precision (σ ≈ √α seeding)
    bad = build_newton_transformer(d=5, k=6, alpha=a, dtype=torch.float32, printed_paper=True)
    f = verify_model(bad, X, y, xq).first_failure
    assert (f.layer, f.slot) == (1, "u")


def test_ols_checked_only_once_converged(data, alpha):
    X, y, xq = data
    early = verify_model(build_newton_transformer(d=4, k=2, alpha=alpha), X, y, xq)
    assert not early.ols.checked and "not converged" in early.ols.note and early.ols.passed
    assert early.ols.max_rel > 1e-3  # informational: k = 2 is far from OLS
    late = verify_model(build_newton_transformer(d=4, k=20, alpha=alpha), X, y, xq)
    assert late.alpha.contraction < 1e-20
    assert late.ols.checked and late.ols.passed and late.ols.max_rel < 1e-12
    off = verify_model(build_newton_transformer(d=4, k=20, alpha=alpha), X, y, xq, check_ols=False)
    assert not off.ols.checked and off.ols.note == "check_ols=False"


def test_diverging_alpha_modes(data, alpha):
    X, y, xq = data
    model = build_newton_transformer(d=4, k=3, alpha=3 * alpha)  # α·λ_max² = 3 on the worst prompt
    rep = verify_model(model, X, y, xq)
    assert not rep.passed and rep.first_failure.kind == "alpha"
    assert rep.alpha.max_ratio == pytest.approx(3.0) and rep.alpha.n_diverging >= 1
    assert "DIVERGES" in str(rep) and "RESULT: FAIL: alpha diverges" in str(rep)
    with pytest.raises(AlphaDivergenceError, match=r"diverges on \d+ of 3 prompt"):
        verify_model(model, X, y, xq, check_alpha="raise")
    ignored = verify_model(model, X, y, xq, check_alpha="ignore")
    assert ignored.alpha.diverges and ignored.passed  # the network still computes (diverging) Newton exactly


def test_condition_aware_accepts_cancellation_that_rtol_rejects():
    """d = 1, α·λ² = 2(1 − 1e-9): M₁ = αs(2 − αs²) cancels to ~1e-9, so both computations lose 9 digits."""
    X = torch.tensor([[[1.0], [2.0]]], dtype=F64)
    y = torch.tensor([[1.0, -1.0]], dtype=F64)
    xq = torch.tensor([[1.0]], dtype=F64)
    model = build_newton_transformer(d=1, k=1, alpha=2 * (1 - 1e-9) / 25.0)
    strict = verify_model(model, X, y, xq)
    aware = verify_model(model, X, y, xq, condition_aware=True)
    assert not strict.passed and strict.first_failure.slot == "u"  # ~1e-7: 9 digits lost, as predicted
    assert 1e-9 < strict.newton.max_rel < aware.newton.bound < 1e-3  # the bound sees the cancellation
    assert aware.passed and aware.condition_aware and "rounding bound" in str(aware)
    # and a real fault is still far outside the bound
    bad = build_newton_transformer(d=1, k=1, alpha=2 * (1 - 1e-9) / 25.0)
    with torch.no_grad():
        bad.transformer.blocks[1].attn.W_O.mul_(1 + 1e-3)
    assert not verify_model(bad, X, y, xq, condition_aware=True).passed


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("mutate, exc, match", [
    (lambda X, y, q: (X[0], y, q), ValueError, r"X must have shape \(B, n, d\).*add a batch axis"),
    (lambda X, y, q: (X, y[:, :-1], q), ValueError, r"y must have shape \(B, n\) = \(3, 10\)"),
    (lambda X, y, q: (X, y, q[:, :-1]), ValueError, r"x_query must have shape \(B, d\) = \(3, 4\)"),
    (lambda X, y, q: (X.clone().index_put_((torch.tensor(0),), torch.tensor(float("nan"), dtype=F64)), y, q),
     ValueError, r"X contains \d+ NaN/inf"),
    (lambda X, y, q: (X, y, torch.full_like(q, float("inf"))), ValueError, r"x_query contains \d+ NaN/inf"),
    (lambda X, y, q: (X[:, :0], y[:, :0], q), ValueError, r"n=0 examples"),
    (lambda X, y, q: (X[..., :3], y, q[..., :3]), ValueError, r"data dimension d=3 but the model was built for d=4"),
    (lambda X, y, q: ("X", y, q), TypeError, r"X must be a torch.Tensor or numpy array"),
])
def test_bad_prompts(data, alpha, mutate, exc, match):
    model = build_newton_transformer(d=4, k=1, alpha=alpha)
    with pytest.raises(exc, match=match):
        verify_model(model, *mutate(*data))


def test_bad_arguments(data, alpha):
    X, y, xq = data
    model = build_newton_transformer(d=4, k=1, alpha=alpha)
    with pytest.raises(TypeError, match="model must be a construct.NewtonTransformer.*got GargRegressor"):
        verify_model(GargRegressor(GargConfig(d=4, n_points=10, n_layers=1, n_heads=1, d_model=8)), X, y, xq)
    with pytest.raises(TypeError, match="model must be a construct.NewtonTransformer.*got str"):
        verify_model("runs/model", X, y, xq)
    with pytest.raises(ValueError, match="rtol must be > 0"):
        verify_model(model, X, y, xq, rtol=-1.0)
    with pytest.raises(ValueError, match="check_alpha must be one of"):
        verify_model(model, X, y, xq, check_alpha="warn")
    with pytest.raises(TypeError, match="condition_aware must be a bool"):
        verify_model(model, X, y, xq, condition_aware="yes")


def test_numpy_input_is_accepted(data, alpha):
    X, y, xq = data
    model = build_newton_transformer(d=4, k=2, alpha=alpha)
    rep = verify_model(model, X.numpy(), y.numpy(), xq.numpy())
    assert rep.passed


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    good = build_newton_transformer(d=3, k=3, alpha=1.0).save(root / "good")  # α irrelevant: --scale auto
    paper = build_newton_transformer(d=3, k=3, alpha=1.0, printed_paper=True).save(root / "paper")
    merged = build_newton_transformer(d=3, k=3, alpha=0.5, form="merged", lam=0.1, normalize=True).save(root / "merged")
    garg = GargRegressor(GargConfig(d=3, n_points=5, n_layers=1, n_heads=1, d_model=8)).save(root / "garg")
    return {"good": good, "paper": paper, "merged": merged, "garg": garg, "root": root}


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "verify", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_subprocess_pass_and_fail(saved):
    ok = _cli(saved["good"], "--prompts", 4)
    assert ok.returncode == 0, ok.stderr
    assert "RESULT: PASS" in ok.stdout and "data scale" in ok.stdout
    bad = _cli(saved["paper"], "--prompts", 4)
    assert bad.returncode == 1
    assert "RESULT: FAIL: layer 1 (newton (printed paper)), slot 'u'" in bad.stdout


def test_cli_missing_dir(saved, capsys):
    assert main([str(saved["root"] / "nope")]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    last = cap.err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("python -m verify: error:") and "not found" in last and "Traceback" not in cap.err


def test_cli_json(saved, capsys):
    assert main([str(saved["paper"]), "--json", "--prompts", "3", "--n", "7"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["passed"] is False
    assert (d["first_failure"]["layer"], d["first_failure"]["slot"]) == (1, "u")
    assert d["config"]["B"] == 3 and d["config"]["n"] == 7 and d["config"]["data"]["seed"] == 0
    assert Report.from_dict(d).first_failure.layer == 1


def test_cli_options(saved, capsys):
    assert main([str(saved["merged"]), "--dtype", "float32", "--n", "12", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "dtype=float32" in out and "form=merged" in out and "RESULT: PASS" in out
    # explicit large scale: the fixed alpha diverges, and the CLI says so
    assert main([str(saved["good"]), "--scale", "100"]) == 1
    cap = capsys.readouterr()
    assert "RESULT: FAIL: alpha diverges" in cap.out and "diverges" in cap.err and "--scale auto" in cap.err


@pytest.mark.parametrize("args, match", [
    (["--prompts", "0"], "expected a positive integer"),
    (["--n", "-2"], "expected a positive integer"),
    (["--scale", "-1"], "expected a finite positive number"),
    (["--dtype", "float16"], "invalid choice"),
])
def test_cli_bad_options(saved, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        main([str(saved["good"]), *args])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_cli_bad_checkpoints(saved, tmp_path, capsys):
    assert main([str(saved["garg"])]) == 2
    assert "holds a GargRegressor" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main([str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("DIR", "--prompts", "--n", "--seed", "--dtype", "--json", "--scale", "exit status", "alpha"):
        assert word in out, word
