"""The builder: exactness against a direct Newton, structure, tying, persistence, bad input."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time

import pytest
import torch
import warnings
from construct.precision import PrecisionWarning

from construct import (
    AlphaDivergenceError, CheckpointError, NewtonTransformer, build_newton_transformer, load_model,
    min_layers, safe_alpha,
)

F64 = torch.float64


# ----------------------------------------------------------------------------- oracle
def direct_newton(X, y, xq, k, alpha, lam=0.0):
    """The plain algorithm, written independently of the network: x_qᵀ M_k Xᵀ y."""
    S = X.transpose(1, 2) @ X + lam * torch.eye(X.shape[2], dtype=X.dtype)  # (B, d, d)
    M = alpha * S
    for _ in range(k):
        M = 2 * M - M @ S @ M
    return torch.einsum("bd,bde,be->b", xq, M, (X.transpose(1, 2) @ y[..., None])[..., 0])


def direct_ols(X, y, xq, lam=0.0):
    if lam:
        S = X.transpose(1, 2) @ X + lam * torch.eye(X.shape[2], dtype=X.dtype)
        w = torch.linalg.solve(S, X.transpose(1, 2) @ y[..., None])[..., 0]
    else:
        w = (torch.linalg.pinv(X) @ y[..., None])[..., 0]
    return (xq * w).sum(-1)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def prompts(B, n, d, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=dtype)
    y = torch.randn(B, n, generator=g, dtype=dtype)
    xq = torch.randn(B, d, generator=g, dtype=dtype)
    return X, y, xq


def build_for(X, k, *, normalize=False, lam=0.0, **kw):
    """Model with an α that converges on every prompt of X; returns (model, α_eff)."""
    B, n, d = X.shape
    a_eff = float(safe_alpha(X, lam=lam).min())
    N = n + 1 + (d if lam > 0 else 0)
    alpha = a_eff * N * N if normalize else a_eff
    return build_newton_transformer(d, k, alpha, normalize=normalize, lam=lam, **kw), a_eff


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("d", [1, 2, 5, 20])
def test_equals_direct_newton_every_k(d):
    """Done-when grid: d ∈ {1,2,5,20}, n ∈ {d/2, 2d, 4d}, k ∈ {0…20}, float64, rel ≤ 1e-10."""
    for n in sorted({max(1, d // 2), 2 * d, 4 * d}):
        X, y, xq = prompts(6, n, d, seed=d * 100 + n)
        for k in range(21):
            model, a = build_for(X, k)
            assert model.n_layers == k + 2
            pred = model.predict(X, y, xq)
            ref = direct_newton(X, y, xq, k, a)
            assert rel_err(pred, ref) <= 1e-10, (d, n, k, rel_err(pred, ref))


VARIANTS = list(itertools.product(["default", "merged"], ["relu", "linear"], [False, True], [0.0, 0.3]))


@pytest.mark.parametrize("form,attn,normalize,lam", VARIANTS)
def test_variants_equal_direct_newton(form, attn, normalize, lam):
    d = 4
    for n, k in [(2, 2), (4, 3), (9, 5), (16, 12)]:
        X, y, xq = prompts(5, n, d, seed=n + k)
        model, a = build_for(X, k, normalize=normalize, lam=lam, form=form, attn=attn)
        assert model.n_layers == (k + 1 if form == "merged" else k + 2)
        assert model.layout.width == (4 * d + 2 if form == "merged" else 3 * d + 2)
        ref = direct_newton(X, y, xq, k, a, lam)
        assert rel_err(model.predict(X, y, xq), ref) <= 1e-10, (n, k)


@pytest.mark.parametrize("form,attn,normalize,lam", VARIANTS)
def test_converges_to_ols(form, attn, normalize, lam):
    d, n = 5, 20
    X, y, xq = prompts(4, n, d, seed=7)
    model, _ = build_for(X, 30, normalize=normalize, lam=lam, form=form, attn=attn)
    assert rel_err(model.predict(X, y, xq), direct_ols(X, y, xq, lam)) <= 1e-10


def test_rank_deficient_converges_to_min_norm_ols():
    d, n = 8, 3  # n < d: S is singular, Newton converges to the pseudo-inverse solution
    X, y, xq = prompts(4, n, d, seed=3)
    model, _ = build_for(X, 40)
    assert rel_err(model.predict(X, y, xq), direct_ols(X, y, xq)) <= 1e-10


def test_float32_forward_is_close():
    X, y, xq = prompts(8, 20, 5, seed=1)
    model, a = build_for(X, 6)
    m32 = model.to(torch.float32)
    with warnings.catch_warnings():  # the float32 arithmetic is tested; the guard's bound is 1.3e-4 here
        warnings.simplefilter("ignore", PrecisionWarning)
        pred = m32.predict(X.float(), y.float(), xq.float(), check_precision="warn")
    assert pred.dtype == torch.float32
    assert rel_err(pred.double(), direct_newton(X, y, xq, 6, a)) < 1e-4


def test_query_never_enters_S():
    """Changing only x_q changes the prediction linearly: pred(x_q) = x_qᵀ w_k with w_k from X, y."""
    X, y, xq = prompts(3, 10, 4, seed=5)
    model, a = build_for(X, 4)
    eye = torch.eye(4, dtype=F64)
    w = torch.stack([model.predict(X, y, eye[i].expand(3, 4)) for i in range(4)], -1)  # (B, d)
    assert rel_err(model.predict(X, y, xq), (w * xq).sum(-1)) <= 1e-12
    assert rel_err(model.predict(X, y, 10 * xq), 10 * (w * xq).sum(-1)) <= 1e-12


def test_weights_do_not_depend_on_n():
    X, y, xq = prompts(4, 30, 3, seed=2)
    model, a = build_for(X, 5)
    for n in (1, 3, 11, 30):  # the same weights serve every prompt length
        ref = direct_newton(X[:, :n], y[:, :n], xq, 5, a)
        assert rel_err(model.predict(X[:, :n], y[:, :n], xq), ref) <= 1e-10


def test_predict_all_matches_prefix_newton():
    X, y, _ = prompts(3, 9, 3, seed=4)
    for normalize in (False, True):
        model, a = build_for(X, 3, normalize=normalize)
        P = model.predict_all(X, y)  # (B, n)
        assert P.shape == (3, 9)
        assert float(P[:, 0].abs().max()) == 0.0
        for t in range(1, 9):
            a_t = a if not normalize else model.spec.alpha / (t + 1) ** 2
            ref = direct_newton(X[:, :t], y[:, :t], X[:, t], 3, a_t)
            assert rel_err(P[:, t], ref) <= 1e-10, t


# ----------------------------------------------------------------------------- structure
def test_newton_layers_identical_and_looped_matches():
    X, y, xq = prompts(4, 12, 3, seed=6)
    model, a = build_for(X, 6)
    blocks = [model.transformer.blocks[b] for b in model.schedule[1:-1]]
    for blk in blocks[1:]:
        for (n1, p1), (n2, p2) in zip(blocks[0].named_parameters(), blk.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
    looped = model.looped()
    assert looped.transformer.cfg.blocks_count == 3 and looped.n_layers == 8
    assert torch.equal(looped.predict(X, y, xq), model.predict(X, y, xq))
    # the shared block can run for any number of loops
    for k in (0, 2, 9):
        ref = direct_newton(X, y, xq, k, a)
        assert rel_err(model.looped(k).predict(X, y, xq), ref) <= 1e-10


def test_looped_merged_form():
    X, y, xq = prompts(3, 12, 3, seed=8)
    model, a = build_for(X, 7, form="merged", looped=True)
    assert model.transformer.cfg.blocks_count == 4 and model.n_layers == 8
    assert rel_err(model.predict(X, y, xq), direct_newton(X, y, xq, 7, a)) <= 1e-10


def test_residual_slots_hold_newton_iterates():
    """Layer by layer: u = M_j z on every token, and x, xq, y are left untouched."""
    X, y, xq = prompts(2, 7, 3, seed=9)
    model, a = build_for(X, 3)
    R = model.residual_streams(X, y, xq)  # (L+1, B, n+1, D)
    assert R.shape == (6, 2, 8, 11)
    S = X.transpose(1, 2) @ X
    Z = torch.cat([X, xq[:, None]], 1)
    L = model.layout
    for i, j in enumerate(model.newton_step_after_layer):
        M = a * S
        for _ in range(j):
            M = 2 * M - M @ S @ M
        assert rel_err(R[i + 1][..., L["u"]], Z @ M) <= 1e-12
        assert torch.equal(R[i + 1][:, :7, L["x"]], X)
        assert torch.equal(R[i + 1][..., L["y"]][:, :7, 0], y)


def test_widths_heads_and_layer_counts():
    for attn, heads in (("relu", 2), ("linear", 1)):
        m = build_newton_transformer(6, 4, 0.01, attn=attn)
        assert m.transformer.cfg.n_heads == heads
        assert m.transformer.cfg.d_model == 3 * 6 + 2
    m = build_newton_transformer(6, 4, 0.01, form="merged")
    assert m.n_layers == 5 and m.transformer.cfg.d_model == 4 * 6 + 2
    assert "residual width D = 20" in build_newton_transformer(6, 4, 0.01).describe()


def test_degree_bound():
    # 3^L ≥ 2^(k+2)+1 and L is the least such
    for k in range(12):
        L = min_layers(k)
        assert 3 ** L >= 2 ** (k + 2) + 1 > 3 ** (L - 1)
    assert [min_layers(k) for k in range(5)] == [2, 2, 3, 4, 4]
    # the default form meets the bound at k=0, the merged form for k=2,3
    assert min_layers(0) == 0 + 2 and min_layers(2) == 2 + 1 and min_layers(3) == 3 + 1


def test_layout_tables_name_every_slot():
    m = build_newton_transformer(3, 2, 0.1, form="merged")
    text = m.describe()
    for slot in ("x", "xq", "u", "c", "y", "out"):
        assert f"\n{slot} " in text
    assert "S M_1 z" in text and "z_tᵀ M_2 Xᵀy (every token)" in text


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    X, y, xq = prompts(3, 10, 4, seed=11)
    model, _ = build_for(X, 5, lam=0.2, form="merged", attn="linear")
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    m2 = load_model(tmp_path / "m")
    assert isinstance(m2, NewtonTransformer) and m2.spec == model.spec
    assert torch.equal(m2.predict(X, y, xq), model.predict(X, y, xq))
    m3 = load_model(tmp_path / "m", dtype=torch.float32)
    assert m3.dtype == torch.float32


def test_loaded_weights_are_used_not_rebuilt(tmp_path):
    """Tampering with the saved weights must change the loaded model's output."""
    from safetensors.torch import load_file, save_file

    X, y, xq = prompts(2, 6, 2, seed=12)
    model, _ = build_for(X, 2)
    model.save(tmp_path / "m")
    st = load_file(tmp_path / "m" / "model.safetensors")
    key = next(k for k in st if k.endswith("attn.W_O"))
    st[key] = st[key] * 2
    save_file(st, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError, match="sha256 does not match"):  # tampering is caught ...
        load_model(tmp_path / "m")
    # ... and once the config vouches for the new weights, they are what the model runs
    import hashlib, json
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["sha256"]["weights"] = hashlib.sha256((tmp_path / "m" / "model.safetensors").read_bytes()).hexdigest()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert not torch.allclose(load_model(tmp_path / "m").predict(X, y, xq), model.predict(X, y, xq))


# ----------------------------------------------------------------------------- bad input
BAD_BUILD = [
    (dict(d=0, k=1, alpha=0.1), ValueError, "d must be >= 1"),
    (dict(d=-3, k=1, alpha=0.1), ValueError, "d must be >= 1"),
    (dict(d=2.5, k=1, alpha=0.1), TypeError, "d must be an integer"),
    (dict(d=2, k=-1, alpha=0.1), ValueError, "k must be >= 0"),
    (dict(d=2, k=1, alpha=0.0), ValueError, "alpha must be > 0"),
    (dict(d=2, k=1, alpha=-1.0), ValueError, "alpha must be > 0"),
    (dict(d=2, k=1, alpha=float("nan")), ValueError, "alpha must be finite"),
    (dict(d=2, k=1, alpha=float("inf")), ValueError, "alpha must be finite"),
    (dict(d=2, k=1, alpha=0.1, lam=-1.0), ValueError, "lam must be >= 0"),
    (dict(d=2, k=1, alpha=0.1, attn="softmax"), ValueError, "attn must be one of"),
    (dict(d=2, k=1, alpha=0.1, form="merged"), ValueError, "merged form needs k >= 2"),
    (dict(d=2, k=1, alpha=0.1, form="fancy"), ValueError, "form must be one of"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD_BUILD)
def test_bad_build_arguments(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        build_newton_transformer(**kw)


def test_bad_prompts():
    m = build_newton_transformer(3, 2, 0.01)
    X, y, xq = prompts(2, 5, 3)
    cases = [
        ((X[0], y[0], xq[0]), "add a batch axis"),
        ((X[..., :2], y, xq[:, :2]), "built for d=3"),
        ((X, y[:, :4], xq), r"y must have shape \(B, n\) = \(2, 5\)"),
        ((X, y, xq[:1]), r"x_query must have shape \(B, d\) = \(2, 3\)"),
        ((X[:, :0], y[:, :0], xq), "n=0 examples"),
        ((X.masked_fill(torch.zeros_like(X, dtype=torch.bool).index_fill(1, torch.tensor([2]), True), float("nan")), y, xq), "X contains .* NaN/inf"),
        ((X, y.clone().fill_(float("inf")), xq), "y contains .* NaN/inf"),
        ((X, y, xq * float("nan")), "x_query contains .* NaN/inf"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            m.predict(*args)
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        m.predict("X", y, xq)


def test_diverging_alpha_is_an_error_not_a_number():
    X, y, xq = prompts(3, 20, 3, seed=13)
    lm2 = float(torch.linalg.eigvalsh(X.transpose(1, 2) @ X)[:, -1].max()) ** 2
    m = build_newton_transformer(3, 12, 2.01 / lm2)
    with pytest.raises(AlphaDivergenceError, match=r"alpha_eff\*lambda_max\(S\)\^2 = 2.01 >= 2.*safe_alpha"):
        m.predict(X, y, xq)
    with pytest.warns(RuntimeWarning, match="diverges"):
        out = m.predict(X, y, xq, check_alpha="warn")
    assert float(out.abs().max()) > 1e6  # it really explodes: the check is not a false alarm
    # predict_all: the prefix holding all 20 examples appears at position 20 of a 21-example prompt
    X21, y21 = torch.cat([X, xq[:, None]], 1), torch.cat([y, y[:, :1]], 1)
    with pytest.raises(AlphaDivergenceError):
        m.predict_all(X21, y21)
    m.predict_all(X, y)  # shorter prefixes have smaller λ_max: they converge, so no error


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="folder not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json' not found"):
        load_model(tmp_path / "empty")
    m = build_newton_transformer(2, 1, 0.1)
    m.save(tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    good = cfg.read_text()
    cfg.write_text(good[:40])
    with pytest.raises(CheckpointError, match="corrupt .*not valid JSON"):
        load_model(tmp_path / "m")
    cfg.write_text(json.dumps({"format": "huggingface", "architectures": ["GPT2"]}))
    with pytest.raises(CheckpointError, match="not a newton-icl checkpoint"):
        load_model(tmp_path / "m")
    cfg.write_text(good.replace('"newton"', '"mystery"'))
    with pytest.raises(CheckpointError, match="unknown model kind 'mystery'"):
        load_model(tmp_path / "m")
    cfg.write_text(good)
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_model(tmp_path / "m")
    # weights of another shape
    build_newton_transformer(3, 1, 0.1).save(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text(good)
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(tmp_path / "other")


# ----------------------------------------------------------------------------- CLI and cost
def test_cli_build_describe(tmp_path):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "construct", "build", "--d", "5", "--k", "3", "--alpha", "0.05",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "construct", "describe", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "layers: 5 (k+2)" in r.stdout and "residual width D = 17" in r.stdout
    r = subprocess.run([sys.executable, "-m", "construct", "describe", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "folder not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "construct", "build", "--d", "5", "--k", "-1", "--alpha", "0.05",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "k must be >= 0" in r.stderr


def test_build_and_forward_cost_d32_n128_k20():
    """Done-when: build + float64 forward for d=32, n=128, k=20, B=64 runs in seconds on CPU."""
    X, y, xq = prompts(64, 128, 32, seed=14)
    t0 = time.perf_counter()
    model, a = build_for(X, 20)
    pred = model.predict(X, y, xq)
    elapsed = time.perf_counter() - t0
    assert rel_err(pred, direct_newton(X, y, xq, 20, a)) <= 1e-10
    assert elapsed < 20.0, elapsed


def test_paper_alpha_on_the_boundary_is_refused():
    """α = 2/λ_max² (the paper's rule) never recovers the top direction: predict must not pass it."""
    X, y, xq = prompts(200, 6, 3, seed=15)
    lm = torch.linalg.eigvalsh(X.transpose(1, 2) @ X)[:, -1]
    refused = 0
    for b in range(200):
        m = build_newton_transformer(3, 4, float(2.0 / lm[b] ** 2))
        with pytest.raises(AlphaDivergenceError):
            m.predict(X[b:b + 1], y[b:b + 1], xq[b:b + 1])
        refused += 1
    assert refused == 200


def test_cli_demo_runs_the_main_job():
    r = subprocess.run([sys.executable, "-m", "construct", "demo", "--k", "4", "--d", "3", "--n", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "RESULT: PASS" in r.stdout and "direct Newton, k=4" in r.stdout
    # the printed prediction and direct Newton agree to round-off
    vals = {l.split()[0]: float(l.split()[-1] if "rel." not in l else l.split()[-6]) for l in r.stdout.splitlines()
            if l.startswith("  transformer") or l.startswith("  direct")}
    assert abs(vals["transformer"] - vals["direct"]) <= 1e-12 * abs(vals["direct"])


@pytest.mark.parametrize("make", [
    lambda: build_newton_transformer(3, 2, 0.01),
    lambda: build_newton_transformer(3, 4, 0.01, form="hyperpower"),
    lambda: __import__("construct").build_gd_transformer(3, 2, 0.05),
])
def test_loaded_model_block_specs_hold_real_tensors_equal_to_the_built_ones(tmp_path, make):
    """load_model sizes a config on the meta device; the loaded model's block descriptions (what
    describe() and the verifiers read) are rebuilt on the CPU, equal to a fresh build's."""
    from construct.model import _tensors

    m = make()
    m.save(tmp_path)
    got = load_model(tmp_path)
    want_t, got_t = list(_tensors(m.block_specs)), list(_tensors(got.block_specs))
    assert len(got_t) == len(want_t) > 0
    assert all(not t.is_meta and torch.equal(a, t) for a, t in zip(want_t, got_t))
    assert [b.name for b in got.block_specs] == [b.name for b in m.block_specs]
    assert got.describe() == m.describe()
