"""Regression tests for issue 12: no silent wrong numbers, no silent data loss.

Each test reproduces one finding of the fuzz/fault campaign (the issue lists them) and fails on
the code before the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings

import numpy as np
import pytest
import torch

from construct import (
    AlphaDivergenceError, CheckpointError, build_newton_transformer, check_alpha, load_model, safe_alpha,
)
from construct.checkpoint import CheckpointWarning
from construct.precision import PrecisionError, PrecisionWarning, precision_estimate
from verify import newton_predict, newton_predictions

F64 = torch.float64


def gaussian(B, n, d, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    y = X @ torch.randn(d, generator=g, dtype=F64)
    xq = torch.randn(B, d, generator=g, dtype=F64)
    return X.to(dtype), y.to(dtype), xq.to(dtype)


def rank_deficient(n=12, d=6, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1, n, r, generator=g, dtype=F64) @ torch.randn(r, d, generator=g, dtype=F64)
    y = X @ torch.randn(d, generator=g, dtype=F64)
    xq = torch.randn(1, d, generator=g, dtype=F64)
    return X, y, xq


# ----------------------------------------------------------------------------- divergence in float64
def test_check_alpha_forms_S_in_float64_for_float32_prompts():
    """A float32 prompt's α·λ_max² is judged on float64 S: ratios 2(1 ± 1e-6) land on the right side."""
    wrong = 0
    for seed in range(20):
        X32 = gaussian(1, 30, 8, seed=seed, dtype=torch.float32)[0]
        lm = float(torch.linalg.eigvalsh((X32.double().transpose(1, 2) @ X32.double()))[0, -1])
        with pytest.raises(AlphaDivergenceError):
            check_alpha(X32, 2 * (1 + 1e-6) / lm**2)
        try:
            check_alpha(X32, 2 * (1 - 1e-6) / lm**2)
        except AlphaDivergenceError:
            wrong += 1
    assert wrong == 0, f"{wrong} false alarms 1e-6 inside the boundary"


def test_newton_predict_checks_divergence():
    X, y, xq = gaussian(2, 10, 3)
    with pytest.raises(AlphaDivergenceError, match="alpha\\*lambda_max"):
        newton_predict(100 * X, y, xq, 20, 1.0)
    with pytest.warns(RuntimeWarning, match="diverges"):
        newton_predict(100 * X, y, xq, 2, 1.0, on_diverge="warn", check_precision="ignore")


def test_run_with_cache_and_residual_streams_check_divergence():
    X, y, xq = gaussian(1, 8, 3)
    model = build_newton_transformer(3, 4, float(safe_alpha(X)))
    with pytest.raises(AlphaDivergenceError):
        model.run_with_cache(10 * X, y, 10 * xq)
    with pytest.raises(AlphaDivergenceError):
        model.residual_streams(10 * X, y, 10 * xq)
    out, cache = model.run_with_cache(X, y, xq)  # the safe prompt still runs
    assert torch.isfinite(out).all() and cache


# ----------------------------------------------------------------------------- NaN / precision
def test_network_at_k_1100_on_rank_deficient_prompt_raises_not_nan():
    """Cause: the query's u slot doubles its null-space round-off every layer (2^k·u overflows near
    k = 1070), then 0·inf = NaN in the attention sum.  The model must say so, not return NaN."""
    X, y, xq = rank_deficient(n=4, d=6, r=4)
    model = build_newton_transformer(6, 1100, float(safe_alpha(X)), looped=True)
    raw = model.predict(X, y, xq, check_precision="ignore")
    assert not torch.isfinite(raw).all()  # the arithmetic really overflows
    # refused before the forward: the bound's 2^k gain overflows too (inf; it was NaN from inf·0 and let the
    # prompt through to the forward's NaN/inf check)
    with pytest.raises(PrecisionError, match="bound is inf"):
        model.predict(X, y, xq)
    with pytest.warns(PrecisionWarning, match="bound is inf"), pytest.raises(PrecisionError, match="NaN/inf"):
        model.predict(X, y, xq, check_precision="warn")  # the arithmetic's own NaN/inf, past the warning
    # at k = 40 the same prompt is fine: the default read-out never reads the query's u
    m40 = build_newton_transformer(6, 40, float(safe_alpha(X)))
    p = m40.predict(X, y, xq)
    ref = newton_predict(X, y, xq, 40, float(safe_alpha(X)), check_precision="ignore")
    assert abs(float(p - ref)) <= 1e-10 * float(xq.norm() * 10)


def test_newton_predictions_huge_k_raises_not_nan():
    X, y, _ = rank_deficient(n=8, d=6, r=3)
    with pytest.raises(PrecisionError, match="NaN/inf"):
        newton_predictions(X, y, [10_000], alpha="safe")


def test_newton_predict_k100_rank_deficient_is_refused_not_wrong():
    """The matrix-form reference doubles its null-null round-off: k = 100 was 7% off, silently."""
    X, y, xq = rank_deficient()
    a = float(safe_alpha(X))
    with pytest.raises(PrecisionError):
        newton_predict(X, y, xq, 100, a)
    newton_predict(X, y, xq, 30, a)  # well inside float64's reach: no error


def test_float32_precision_guard_refuses_ill_conditioned_prompt():
    g = torch.Generator().manual_seed(1)
    d, n = 6, 6
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    X = (torch.randn(1, n, d, generator=g, dtype=F64) @ (Q * torch.logspace(0, -3, d, dtype=F64)) @ Q.T)
    y = X @ torch.randn(d, generator=g, dtype=F64)
    xq = torch.randn(1, d, generator=g, dtype=F64) @ Q.T
    a = float(safe_alpha(X))
    m32 = build_newton_transformer(d, 30, a, dtype=torch.float32)
    with pytest.raises(PrecisionError, match="float32 cannot deliver"):
        m32.predict(X, y, xq)
    with pytest.warns(Warning, match="float32 cannot deliver"):
        m32.predict(X, y, xq, check_precision="warn")
    p64 = build_newton_transformer(d, 30, a).predict(X, y, xq, check_precision="ignore")  # float64 can (raw)
    assert abs(float(p64[0]) - float(newton_predict(X, y, xq, 30, a, check_precision="ignore")[0])) <= \
        1e-10 * float(xq.norm()) * float(torch.linalg.lstsq(X[0], y[0, :, None]).solution.norm())
    Xg, yg, qg = gaussian(1, 20, 4)
    build_newton_transformer(4, 8, float(safe_alpha(Xg)), dtype=torch.float32).predict(Xg, yg, qg)


def test_precision_estimate_bounds_merged_k28():
    """Merged form, float64, k = 28, κ(S) ≈ 5e4: the reported 2.8e-9 case.  Either the result is
    within the promise or the guard refuses; the estimate must bound the real error."""
    g = torch.Generator().manual_seed(0)
    d, n, k = 2, 5, 28
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    X = torch.randn(1, n, d, generator=g, dtype=F64) @ (Q * torch.tensor([1.0, 5e-3], dtype=F64)) @ Q.T
    y = X @ torch.randn(d, generator=g, dtype=F64)
    xq = torch.randn(1, d, generator=g, dtype=F64)
    a = 0.58 * 2 / float(torch.linalg.eigvalsh(X[0].T @ X[0])[-1]) ** 2
    m = build_newton_transformer(d, k, a, form="merged")
    raw = float(m.predict(X, y, xq, check_precision="ignore"))
    L = np.longdouble
    S = X[0].numpy().astype(L).T @ X[0].numpy().astype(L)
    M = L(a) * S
    for _ in range(k):
        M = 2 * M - M @ S @ M
    w = M @ (X[0].numpy().astype(L).T @ y[0].numpy().astype(L))
    ref = float(xq[0].numpy().astype(L) @ w)
    scale = float(xq.norm()) * float(np.sqrt(float(w @ w)))
    err = abs(raw - ref) / scale
    est = float(precision_estimate(X, y, xq, a, k, form="merged"))
    assert err <= est
    if est > 1e-10:
        with pytest.raises(PrecisionError):
            m.predict(X, y, xq)
    else:
        m.predict(X, y, xq)


# ----------------------------------------------------------------------------- dtype / device rules
def test_alpha_that_overflows_float32_is_refused():
    with pytest.raises(ValueError, match="float32 cannot hold"):
        build_newton_transformer(3, 2, 1e39, dtype=torch.float32)
    with pytest.raises(ValueError, match="float32 cannot hold"):
        build_newton_transformer(3, 2, 1e-50, dtype=torch.float32)  # underflows to 0: silent zeros
    build_newton_transformer(3, 2, 1e39)  # float64 holds it


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.to(torch.float16), lambda m: m.bfloat16(),
                                  lambda m: m.to(dtype=torch.float16)])
def test_float16_refused_by_every_cast(cast):
    m = build_newton_transformer(3, 2, 0.1)
    with pytest.raises(ValueError, match="float32, float64"):
        cast(m)
    assert m.dtype == F64  # refused before anything was converted


def test_dtype_rule_same_in_builder_and_loader(tmp_path):
    with pytest.raises(ValueError, match="float32, float64"):
        build_newton_transformer(3, 2, 0.1, dtype=torch.float16)
    build_newton_transformer(3, 2, 0.1).save(tmp_path / "m")
    with pytest.raises(ValueError, match="float32, float64"):
        load_model(tmp_path / "m", dtype=torch.float16)
    with pytest.raises(ValueError, match="float32, float64"):
        load_model(tmp_path / "m", dtype="fp32")
    assert load_model(tmp_path / "m", dtype="float32").dtype == torch.float32
    assert build_newton_transformer(3, 2, 0.1, dtype="float32").dtype == torch.float32


def test_bad_device_strings_are_named(tmp_path):
    build_newton_transformer(3, 2, 0.1).save(tmp_path / "m")
    with pytest.raises(ValueError, match="not a device string"):
        load_model(tmp_path / "m", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            load_model(tmp_path / "m", device="cuda")
        with pytest.raises(ValueError, match="CUDA"):
            build_newton_transformer(3, 2, 0.1).to("cuda")


def test_numpy_int_sizes_accepted():
    m = build_newton_transformer(np.int64(3), np.int64(2), 0.1)
    assert m.d == 3 and type(m.spec.d) is int and type(m.spec.k) is int


def test_S_overflow_is_reported_as_S_overflow():
    X, y, xq = gaussian(1, 5, 3)
    m = build_newton_transformer(3, 2, 0.1)
    with pytest.raises(ValueError, match="S = XᵀX overflows float64"):
        m.predict(X * 1e200, y, xq)


# ----------------------------------------------------------------------------- CLIs
def _cli(capsys, module: str, *args: str):
    """Run ``python -m module args`` in-process: (rc, stdout, stderr)."""
    import importlib

    main = importlib.import_module(f"{module}.__main__").main
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_construct_demo_k40_n3_passes_its_own_verifier(capsys):
    rc, out, err = _cli(capsys, "construct", "demo", "--k", "40", "--n", "3")
    assert rc == 0, out[-2000:] + err
    assert "RESULT: PASS" in out


def test_construct_demo_bad_sizes_rc2(capsys):
    for args in (["--d", "0"], ["--n", "0"], ["--k", "-1"]):
        rc, out, err = _cli(capsys, "construct", "demo", *args)
        assert rc == 2 and "error:" in err, (args, err)


def test_verify_cli_huge_scale_and_seed(tmp_path, capsys):
    build_newton_transformer(3, 12, 0.05).save(tmp_path / "m")
    rc, out, err = _cli(capsys, "verify", str(tmp_path / "m"), "--scale", "1000")
    assert rc == 1 and "diverges" in err and "RESULT: FAIL" in out, err[-2000:]
    rc, out, err = _cli(capsys, "verify", str(tmp_path / "m"), "--seed", str(2**70))
    assert rc == 2 and "seed" in err


# ----------------------------------------------------------------------------- checkpoints
def _saved(tmp_path):
    m = build_newton_transformer(3, 4, 0.1)
    m.save(tmp_path / "m")
    return m, tmp_path / "m"


def test_bit_flips_in_weights_are_refused(tmp_path):
    _, p = _saved(tmp_path)
    data = bytearray((p / "model.safetensors").read_bytes())
    rng = np.random.default_rng(0)
    for trial in range(30):
        flipped = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(data)))
            flipped[i] ^= 1 << int(rng.integers(0, 8))
        (p / "model.safetensors").write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError):
            load_model(p)
    (p / "model.safetensors").write_bytes(bytes(data))
    load_model(p)


def test_edited_config_is_refused(tmp_path):
    _, p = _saved(tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    cfg["config"]["spec"]["alpha"] = 0.2  # same shapes, different network
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_model(p)


def test_weights_of_another_model_are_refused(tmp_path):
    _, p = _saved(tmp_path)
    build_newton_transformer(3, 4, 0.3).save(tmp_path / "other")
    (p / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_model(p)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["config"]["spec"].update(k=10**9), "k=1000000000 exceeds"),
    (lambda c: c["config"]["spec"].update(d=10**6), "d=1000000 exceeds"),
    (lambda c: c["config"]["spec"].update(d=2000, k=50), "parameters"),
])
def test_hostile_config_refused_fast(tmp_path, edit, match):
    _, p = _saved(tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    edit(cfg)
    cfg.pop("sha256")  # as a legacy file, so the size checks themselves are exercised
    (p / "config.json").write_text(json.dumps(cfg))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(CheckpointError, match=match):
            load_model(p)
    assert time.perf_counter() - t < 1.0


def test_deep_json_and_huge_garg_config_are_checkpoint_errors(tmp_path):
    _, p = _saved(tmp_path)
    (p / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nests deeper"):
        load_model(p)
    (p / "config.json").write_text('{"a": ' * 50 + "1" + "}" * 50)
    with pytest.raises(CheckpointError, match="nests deeper"):
        load_model(p)


def test_shape_mismatch_caught_from_header_before_reading(tmp_path):
    _, p = _saved(tmp_path)
    m2 = build_newton_transformer(4, 4, 0.1)
    m2.save(tmp_path / "m2")
    (p / "model.safetensors").write_bytes((tmp_path / "m2" / "model.safetensors").read_bytes())
    cfg = json.loads((p / "config.json").read_text())
    cfg["sha256"]["weights"] = hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(p)


def test_legacy_checkpoint_without_hash_loads_with_warning(tmp_path):
    m, p = _saved(tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    cfg.pop("sha256")
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(CheckpointWarning, match="no sha256"):
        m2 = load_model(p)
    assert torch.equal(m2.transformer.W_in, m.transformer.W_in)


def test_shipped_checkpoints_carry_verified_hashes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoints"
    for d in sorted(root.iterdir()):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)
            load_model(d)


# ----------------------------------------------------------------------------- training safety
def _train_cli(capsys, *args):
    from benchmarks.train import main

    rc = main(["--preset", "smoke", "--no-progress", "--steps", "2", "--set", "eval_every=1", "--set", "warmup_steps=1",
               "--set", "checkpoint_every=2", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_refuses_foreign_nonempty_out(tmp_path, capsys):
    other = tmp_path / "model"
    build_newton_transformer(3, 2, 0.1).save(other)  # another model's config.json lives here
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    rc, _, err = _train_cli(capsys, "--out", str(other))
    assert rc == 2 and "not a training run folder" in err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before  # nothing lost


def test_train_out_file_and_unwritable_are_clean_errors(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    rc, _, err = _train_cli(capsys, "--out", str(f))
    assert rc == 2 and "is a file" in err and f.read_text() == "keep me"
    rc, _, err = _train_cli(capsys, "--out", "/proc/x")
    assert rc == 2 and "--out" in err and "Traceback" not in err


def test_train_runs_in_empty_folder_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    rc, _, err = _train_cli(capsys, "--out", str(out))
    assert rc == 0, err
    rc, _, err = _train_cli(capsys, "--out", str(out))  # our run: needs --resume, says so
    assert rc == 2 and "--resume" in err


def test_latest_json_never_leads_outside_the_run(tmp_path, capsys):
    from benchmarks.train import RunDir

    out = tmp_path / "run"
    rc, _, err = _train_cli(capsys, "--out", str(out))
    assert rc == 0, err
    latest = out / "checkpoints" / "latest.json"
    ptr = json.loads(latest.read_text())
    for bad in ("../../../etc", "/etc", "step_00000002/../../..", "../run/checkpoints/step_00000002"):
        latest.write_text(json.dumps(dict(ptr, dir=bad)))
        with pytest.raises(CheckpointError, match="step folder|outside"):
            RunDir(out).load()
