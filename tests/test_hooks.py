"""Hooks with TransformerLens names and conventions (issue 11 part 4)."""

import warnings

import pytest
import torch

from construct import build_newton_transformer, safe_alpha
from construct.hooks import ActivationCache, act_name
from construct.regressor import GargConfig, GargRegressor
from construct.transformer import Transformer, TransformerConfig


def _prompts(B=3, n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    y = X @ torch.randn(d, generator=g, dtype=torch.float64)
    xq = torch.randn(B, d, generator=g, dtype=torch.float64)
    return X, y, xq


def _garg(seed=0):
    torch.manual_seed(seed)
    return GargRegressor(GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16)).double().eval()


# ---------------------------------------------------------------------------------- names
def test_transformerlens_names_per_layer():
    m = build_newton_transformer(3, 2, 0.05)
    names = set(m.hook_points())
    for l in range(m.n_layers):
        for s in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                  "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_attn_scores",
                  "attn.hook_pattern", "mlp.hook_pre", "mlp.hook_post"):
            assert f"blocks.{l}.{s}" in names
    assert {"hook_embed", "ln_final.hook_normalized"} <= names
    assert not any(n.startswith("layers.") for n in names)
    for n, hp in m.hook_points().items():
        assert hp.name == n
        if n.startswith("blocks."):
            assert hp.layer() == int(n.split(".")[1])
    with pytest.raises(ValueError, match="does not belong to a layer"):
        m.hook_points()["hook_embed"].layer()


def test_act_name_matches_transformerlens_shorthand():
    assert act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert act_name("pattern", 2) == "blocks.2.attn.hook_pattern"
    assert act_name("attn", 2) == "blocks.2.attn.hook_pattern"
    assert act_name("q", 0) == "blocks.0.attn.hook_q"
    assert act_name("pre", 1) == "blocks.1.mlp.hook_pre"
    assert act_name("post", 1) == "blocks.1.mlp.hook_post"
    assert act_name("embed") == "hook_embed"
    assert act_name("normalized") == "ln_final.hook_normalized"
    assert act_name("k6") == "blocks.6.attn.hook_k"
    assert act_name("blocks.1.hook_resid_mid") == "blocks.1.hook_resid_mid"
    tl = pytest.importorskip("transformer_lens.utilities")
    for short in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z",
                  "pattern", "attn_scores", "attn", "pre", "post"):
        assert act_name(short, 4) == tl.get_act_name(short, 4)
    for short in ("embed", "normalized"):
        assert act_name(short) == tl.get_act_name(short)


# ---------------------------------------------------------------------------------- looped models
def test_looped_model_caches_one_pattern_per_layer():
    """The shared Newton block runs at k layers: k distinct cache entries, not one overwritten entry."""
    X, y, xq = _prompts(B=2, n=7, d=3)
    base = build_newton_transformer(3, 4, float(safe_alpha(X).min()))
    looped = base.looped()
    assert len(looped.transformer.blocks) < looped.n_layers  # weights really are shared
    pred, cache = looped.run_with_cache(X, y, xq)
    patterns = [k for k in cache if k.endswith("attn.hook_pattern")]
    assert len(patterns) == looped.n_layers
    assert sorted(patterns) == sorted(f"blocks.{l}.attn.hook_pattern" for l in range(looped.n_layers))
    # consecutive Newton layers share weights but see different u = M_j z: patterns must differ
    P = torch.stack([cache["pattern", l] for l in range(looped.n_layers)])  # (L, B, H, N, N)
    for l in range(1, looped.n_layers - 1):
        assert (P[l + 1] - P[l]).abs().max() > 1e-6 * P[l].abs().max()
    # and equal the untied model's pattern at every layer
    _, c0 = base.run_with_cache(X, y, xq)
    for l in range(base.n_layers):
        torch.testing.assert_close(cache["pattern", l], c0["pattern", l], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(cache["post", l], c0[f"blocks.{l}.mlp.hook_post"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pred, base.predict(X, y, xq), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------- TL-style code
def test_transformerlens_style_hook_code_runs_unchanged():
    """Functions written against TransformerLens conventions, used as a TL user would."""
    seen = []

    def record_layer(act, hook):
        seen.append((hook.name, hook.layer(), tuple(act.shape)))

    def ablate_head0(z, hook):  # TL layout: (batch, pos, head_index, d_head)
        z = z.clone()
        z[:, :, 0, :] = 0.0
        return z

    def pattern_filter(name):
        return name.endswith("hook_pattern")

    for model, args, n_tok in (
        (build_newton_transformer(3, 2, float(safe_alpha(_prompts(B=2, n=5, d=3)[0]).min())), _prompts(B=2, n=5, d=3), 6),
        (_garg(), _prompts(B=2, n=5, d=3)[:2], 10),
    ):
        H = model.transformer.cfg.n_heads
        clean = model.run_with_hooks(*args)
        out = model.run_with_hooks(*args, fwd_hooks=[(pattern_filter, record_layer)])
        torch.testing.assert_close(out, clean, rtol=1e-12, atol=1e-15)  # softmax leaves SDPA for the pattern
        assert [s[1] for s in seen] == list(range(model.n_layers))
        assert all(s[2] == (2, H, n_tok, n_tok) for s in seen)
        seen.clear()
        abl = model.run_with_hooks(*args, fwd_hooks=[(act_name("z", 0), ablate_head0)])
        assert (abl - clean).abs().max() > 1e-6  # the returned tensor replaced the activation
        logits, cache = model.run_with_cache(*args, names_filter=lambda n: "resid" in n or n.endswith("pattern"))
        torch.testing.assert_close(logits, clean, rtol=1e-12, atol=1e-15)
        assert isinstance(cache, ActivationCache)
        assert cache["resid_post", 1].shape == cache["blocks.1.hook_resid_post"].shape
        assert cache["pattern", 0].shape == (2, H, n_tok, n_tok)
        assert "hook_embed" not in cache and ("mlp_out", 0) not in cache
        # hooks are gone after each call
        assert not any(hp.active for hp in model.hook_points().values())


def test_same_hook_function_on_transformerlens_and_ours():
    """One TL-style function runs through TransformerLens's own hook machinery and through ours."""
    tl = pytest.importorskip("transformer_lens")
    from transformer_lens.hook_points import HookPoint as TLHookPoint

    class TinyTL(tl.HookedRootModule):  # two softmax "layers" with TL hook points
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
            for b in self.blocks:
                b.attn = torch.nn.Module()
                b.attn.hook_pattern = TLHookPoint()
            self.setup()

        def forward(self, s):
            for b in self.blocks:
                s = b.attn.hook_pattern(torch.softmax(s, -1))
            return s

    rows = []

    def mean_attention(pattern, hook):
        rows.append((hook.layer(), hook.name, float(pattern.detach().sum(-1).mean())))

    hooks = [(lambda name: name.endswith("pattern"), mean_attention)]
    TinyTL().run_with_hooks(torch.randn(1, 2, 3, 3), fwd_hooks=hooks)
    _garg().run_with_hooks(*_prompts(B=1, n=3, d=3)[:2], fwd_hooks=hooks)
    assert [r[:2] for r in rows[:2]] == [r[:2] for r in rows[2:]]  # same names and layers
    assert [r[:2] for r in rows[2:]] == [(0, "blocks.0.attn.hook_pattern"), (1, "blocks.1.attn.hook_pattern")]
    assert all(abs(r[2] - 1) < 1e-6 for r in rows)  # softmax rows sum to 1 in both


def test_garg_run_with_cache():
    m = _garg()
    X, y, _ = _prompts(B=2, n=5, d=3)
    pred, cache = m.run_with_cache(X, y)
    torch.testing.assert_close(pred, m.predict_all(X, y), rtol=1e-12, atol=1e-15)  # explicit vs SDPA softmax
    assert cache["resid_post", 1].shape == (2, 10, 16)
    assert cache["q", 0].shape == (2, 10, 2, 8)
    assert cache["pattern", 1].shape == (2, 2, 10, 10)
    torch.testing.assert_close(cache["resid_post", 1][:, ::2], m.residual_streams(X, y)[2], rtol=1e-12, atol=1e-15)
    # causal: no weight above the diagonal
    assert cache["pattern", 0].triu(1).abs().max() == 0
    torch.testing.assert_close(cache["pattern", 0].sum(-1), torch.ones(2, 2, 10, dtype=torch.float64))


def test_cached_activations_compose():
    """Cache entries are consistent with each other (q from resid_pre, z from pattern and v, ...)."""
    m = build_newton_transformer(2, 2, 0.05, normalize=True, lam=0.3)
    X, y, xq = _prompts(B=2, n=4, d=2)
    _, c = m.run_with_cache(X, y, xq)
    blk = m.transformer.blocks[1].attn
    q = torch.einsum("bnd,hde->bnhe", c["resid_pre", 1], blk.W_Q)
    torch.testing.assert_close(c["q", 1], q, rtol=1e-12, atol=1e-14)
    z = torch.einsum("bhnm,bmhe->bnhe", c["pattern", 1], c["v", 1])
    torch.testing.assert_close(c["z", 1], z, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c["pattern", 1], torch.relu(c["attn_scores", 1]), rtol=0, atol=0)
    torch.testing.assert_close(c["resid_mid", 1], c["resid_pre", 1] + c["attn_out", 1], rtol=0, atol=0)
    torch.testing.assert_close(c["post", 1], torch.relu(c["pre", 1]), rtol=0, atol=0)


def test_softmax_fast_path_and_hooked_path_agree():
    """Hooking the pattern switches softmax attention from SDPA to the explicit path: same output."""
    m = _garg(1)
    X, y, _ = _prompts(B=3, n=6, d=3, seed=4)
    fast = m.predict_all(X, y)
    slow = m.run_with_hooks(X, y, fwd_hooks=[(lambda n: n.endswith("pattern"), lambda a, hook: None)])
    torch.testing.assert_close(slow, fast, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- life cycle
def test_hooks_removed_on_exit_even_after_an_error():
    m = _garg()
    X, y, _ = _prompts(B=1, n=3, d=3)

    def boom(act, hook):
        raise RuntimeError("inside hook")

    with pytest.raises(RuntimeError, match="inside hook"):
        m.run_with_hooks(X, y, fwd_hooks=[("resid_post1", boom)])
    assert not any(hp.active for hp in m.hook_points().values())
    with m.hooks([("blocks.0.hook_resid_pre", lambda a, hook: None)], reset_hooks_end=False):
        pass
    assert m.hook_points()["blocks.0.hook_resid_pre"].active
    m.reset_hooks()
    assert not any(hp.active for hp in m.hook_points().values())
    with pytest.raises(KeyError, match="no hook point named"):
        m.run_with_hooks(X, y, fwd_hooks=[("blocks.0.hook_nothing", boom)])


# ---------------------------------------------------------------------------------- deprecations
def test_old_names_and_conventions_warn_but_work():
    X, y, xq = _prompts(B=2, n=4, d=2)
    m = build_newton_transformer(2, 2, float(safe_alpha(X).min()))  # run_with_cache checks divergence
    _, c = m.run_with_cache(X, y, xq)
    got = {}

    def old_style(t, name):
        got[name] = t

    with pytest.warns(DeprecationWarning, match="deprecated"):
        with m.transformer.hooks([("layers.1.hook_resid_post", old_style)]):
            m.transformer(m.encode(X, y, xq))
    torch.testing.assert_close(got["layers.1.hook_resid_post"], c["blocks.1.hook_resid_post"], rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="ln_final.hook_normalized"):
        assert torch.equal(c["hook_final"], c["ln_final.hook_normalized"])
    with pytest.warns(DeprecationWarning, match="blocks.0.hook_resid_mid"):
        assert torch.equal(c["layers.0.hook_resid_mid"], c["resid_mid", 0])
    with pytest.warns(DeprecationWarning, match="names_filter"):
        _, c2 = m.transformer.run_with_cache(m.encode(X, y, xq), None, lambda n: n == "layers.0.hook_resid_post")
    assert list(c2) == ["blocks.0.hook_resid_post"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.run_with_cache(X, y, xq, names_filter=["resid_post0", "blocks.1.attn.hook_pattern"])
