"""construct.to_gpt2: exact Newton networks compiled into softmax / LayerNorm / GELU blocks.

Every form is checked against the exact model in float64 and float32, the error bound (**) is
checked against the measured error over a grid of (c, ε) (it must hold and be within 100x), and
the compiled config must really be the trained models' block.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from construct import (
    GPT2Transformer, Gpt2ToleranceError, NotCompilableError, ScaleError, build_newton_transformer,
    error_bound, gpt2_scale, load_model, to_gpt2,
)

D, K, N = 3, 3, 8
FORMS = {
    "default": dict(alpha=0.02),
    "linear": dict(alpha=0.02, attn="linear"),
    "normalize": dict(alpha=0.25, normalize=True),
    "ridge": dict(alpha=0.02, lam=0.5),
    "merged": dict(alpha=0.02, form="merged"),
    "looped": dict(alpha=0.02, looped=True),
    "merged-looped-linear": dict(alpha=0.02, form="merged", looped=True, attn="linear", k=4),
}


def prompts(B=6, seed=0, n=N, d=D):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    xq = torch.randn(B, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return X, y, xq


def build(form):
    kw = dict(FORMS[form])
    k = kw.pop("k", K)
    return build_newton_transformer(D, k, **kw)


def s_n(model, n=N):
    """√N for un-normalised models (the compiled residual holds √N·h), else 1."""
    return 1.0 if model.spec.normalize else math.sqrt(n + 1 + model.spec.n_prefix)


def test_gelu_pair_identity_is_exact():
    a = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    assert torch.equal(F.gelu(a) - F.gelu(-a), a) or (F.gelu(a) - F.gelu(-a) - a).abs().max() <= 1e-15 * a.abs().max()


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_float64_within_tol(form):
    m = build(form)
    X, y, xq = prompts()
    R = gpt2_scale(m, X, y, xq)
    tol = 1e-6
    g = to_gpt2(m, tol, scale=R)
    assert type(g) is type(m) and isinstance(g.transformer, GPT2Transformer)
    err = (g.predict(X, y, xq) - m.predict(X, y, xq)).abs().max()
    assert err * s_n(m) <= tol * R
    eb = error_bound(m, g, X, y, xq)
    assert (eb["bound"] <= tol * R / s_n(m)).all()
    # all-prefix predictions use key masks; the same model must follow them
    ea = (g.predict_all(X, y) - m.predict_all(X, y)).abs().max()
    assert ea * s_n(m) <= tol * R


@pytest.mark.parametrize("form", ["default", "normalize", "merged"])
def test_float32_reaches_its_documented_tol(form):
    m = build(form)
    X, y, xq = prompts()
    R = gpt2_scale(m, X, y, xq)
    exact = m.predict(X, y, xq)
    g = to_gpt2(m.float(), 1e-3, scale=R)
    assert g.dtype == torch.float32
    err = (g.predict(X.float(), y.float(), xq.float()).double() - exact).abs().max()
    assert err * s_n(m) <= 1e-3 * R
    with pytest.raises(Gpt2ToleranceError, match="float32"):
        to_gpt2(m.float(), 1e-5, scale=R)


def test_config_is_softmax_layernorm_gelu():
    m = build("default")
    X, y, xq = prompts()
    g = to_gpt2(m, scale=gpt2_scale(m, X, y, xq))
    cfg = g.transformer.cfg
    assert (cfg.attn, cfg.mlp, cfg.layernorm, cfg.causal, cfg.attn_norm, cfg.bias) == ("softmax", "gelu", True, False, False, True)
    for blk in g.transformer.blocks:
        assert isinstance(blk.ln1, torch.nn.LayerNorm) and isinstance(blk.ln2, torch.nn.LayerNorm)
        assert blk.ln1.elementwise_affine and blk.ln1.weight.shape == (cfg.d_model,)
    assert isinstance(g.transformer.ln_f, torch.nn.LayerNorm)
    # the hooked pattern is a softmax: rows are probability vectors over all 2(P+N) tokens
    _, cache = g.run_with_cache(X, y, xq)
    pats = [v for k_, v in cache.items() if k_.endswith("hook_pattern")]
    assert len(pats) == m.n_layers
    for p in pats:
        assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)))
        assert p.shape[-1] == 2 * (N + 1)


def test_mirror_tokens_stay_mirrored():
    m = build("merged")
    X, y, xq = prompts(B=2)
    g = to_gpt2(m, scale=gpt2_scale(m, X, y, xq))
    res = g.residual_streams(X, y, xq)  # (L+1, B, 2M, D+2)
    M, Dm = N + 1, m.layout.width
    assert res.shape[2] == 2 * M
    # exact in real arithmetic; in float64 LayerNorm rounds each coordinate to about u·c
    assert (res[:, :, M:, :Dm] + res[:, :, :M, :Dm]).abs().max() <= 1e-13 * g.transformer.knobs.c
    # data part of the compiled residual equals the exact residual (× √N) to the tolerance
    ex = m.residual_streams(X, y, xq) * s_n(m)
    assert (res[:, :, :M, :Dm] - ex).abs().max() <= 1e-6 * gpt2_scale(m, X, y, xq)


# (c, ε): LayerNorm-dominated, softmax-dominated and mixed points, all with ε·max|s| <= 0.5
GRID = [(3e2, 1e-4), (1e3, 1e-4), (1e5, 3e-3), (1e5, 1e-3), (3e3, 1e-3), (1e4, 3e-3)]


@pytest.mark.parametrize("form", list(FORMS))
def test_error_bound_holds_and_is_tight(form):
    m = build(form)
    X, y, xq = prompts(B=8, seed=1)
    R = gpt2_scale(m, X, y, xq, margin=4.0)
    exact = m.predict(X, y, xq)
    for c, eps in GRID:
        g = to_gpt2(m, scale=R, c=c, eps=eps)
        err = (g.predict(X, y, xq) - exact).abs()
        eb = error_bound(m, g, X, y, xq)
        # holds on every prompt
        assert torch.isfinite(eb["bound"]).all()
        assert (err <= eb["bound"] + 1e-12).all(), (c, eps, err, eb["bound"])
        # and is not loose: within 100x of the measured error (largest over the prompts)
        assert eb["bound"].max() <= 100 * err.max(), (c, eps)
        # the signed first-order estimate predicts the error itself
        assert (eb["estimate"] - (g.predict(X, y, xq) - exact)).abs().max() <= 0.5 * err.max() + 1e-12
    # outside the first-order regime the bound claims nothing rather than a wrong number
    g = to_gpt2(m, scale=R, c=1e4, eps=1.0)
    assert torch.isinf(error_bound(m, g, X, y, xq)["bound"]).all()


def test_prompt_outside_scale_raises():
    m = build("default")
    X, y, xq = prompts()
    g = to_gpt2(m, scale=gpt2_scale(m, X, y, xq))
    with pytest.raises(ScaleError, match="scale"):
        g.predict(3 * X, y, xq, check_alpha="ignore")


def test_not_bilinear_and_bad_tol_raise():
    X, y, xq = prompts()
    bad = build_newton_transformer(D, 2, 0.02, printed_paper=True)
    with pytest.raises(NotCompilableError, match="partner"):
        to_gpt2(bad, scale=10.0)
    m = build("default")
    with pytest.raises(Gpt2ToleranceError, match="float64"):
        to_gpt2(m, 1e-9, scale=10.0)
    with pytest.raises(ValueError, match="scale"):
        to_gpt2(m, scale=-1.0)
    g = to_gpt2(m, scale=10.0)
    with pytest.raises(NotCompilableError, match="already"):
        to_gpt2(g, scale=10.0)


def test_save_load_roundtrip(tmp_path):
    m = build("ridge")
    X, y, xq = prompts()
    g = to_gpt2(m, scale=gpt2_scale(m, X, y, xq))
    g.save(tmp_path / "g")
    h = load_model(tmp_path / "g")
    assert isinstance(h.transformer, GPT2Transformer)
    assert h.transformer.knobs == g.transformer.knobs
    assert torch.equal(h.predict(X, y, xq), g.predict(X, y, xq))
    assert "GPT-2 blocks" in h.describe()


@pytest.mark.parametrize("name", ["hyperpower", "gd"])
def test_new_programs_compile_with_no_special_case(name):
    """The compiler reads weights, not forms: the hyperpower form and the GD program compile as they are."""
    from construct import build_gd_transformer

    m = build_newton_transformer(D, 4, 0.02, form="hyperpower") if name == "hyperpower" else build_gd_transformer(d=D, steps=5, lr=0.1)
    X, y, xq = prompts(seed=2)
    R = gpt2_scale(m, X, y, xq)
    g = to_gpt2(m, 1e-6, scale=R)
    assert type(g) is type(m)
    sN = math.sqrt(N + 1 + m.transformer.cfg.n_prefix) if g.transformer.knobs.sqrt_n else 1.0
    exact = m.predict(X, y, xq)
    assert (g.predict(X, y, xq) - exact).abs().max() * sN <= 1e-6 * R
    g = to_gpt2(m, scale=R, c=1e3, eps=1e-4)
    err = (g.predict(X, y, xq) - exact).abs()
    eb = error_bound(m, g, X, y, xq)["bound"]
    assert (err <= eb + 1e-12).all() and eb.max() <= 100 * err.max()


def test_adaptive_alpha_mlp_is_not_linear_so_it_refuses():
    m = build_newton_transformer(D, 3, alpha="adaptive")
    with pytest.raises(NotCompilableError, match="MLP hidden unit"):
        to_gpt2(m, scale=10.0)
