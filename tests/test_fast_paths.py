"""Every fast forward path against the previous implementation (construct.reference_forward), float64."""

import itertools

import pytest
import torch

from construct import build_newton_transformer, safe_alpha
from construct.reference_forward import reference_forward, reference_predict_all
from construct.regressor import GargConfig, GargRegressor
from construct.transformer import Transformer, TransformerConfig

RTOL = 1e-12


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _random_transformer(seed, **kw):
    cfg = TransformerConfig(**{"d_model": 12, "n_layers": 3, "n_heads": 3, "d_head": 4, "d_in": 5, "d_out": 2, **kw})
    tf = Transformer(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tf.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return tf


@pytest.mark.parametrize("attn,causal,norm,keymask,scale", [
    c for c in itertools.product(("softmax", "relu", "linear"), (False, True), (False, True), (False, True), (None, 0.7))
    if not (c[0] == "softmax" and c[2])
])
def test_transformer_forward_equals_reference(attn, causal, norm, keymask, scale):
    tf = _random_transformer(1, attn=attn, causal=causal, attn_norm=norm, attn_scale=scale, mlp="gelu",
                             layernorm=attn == "softmax", max_len=9, n_prefix=2, n_blocks=2, schedule=(0, 1, 0))
    g = torch.Generator().manual_seed(2)
    tok = torch.randn(4, 7, 5, generator=g, dtype=torch.float64)
    km = None
    if keymask:
        km = torch.rand(4, 7, generator=g) > 0.4
        km[:, -1] = True
        km[0] = False  # a prompt whose tokens are all hidden (only prefix keys remain)
    with torch.no_grad():
        fast, ref = tf(tok, km), reference_forward(tf, tok, km)
    assert torch.isfinite(fast).all()
    assert _rel(fast, ref) < RTOL


def test_softmax_with_rows_that_see_no_key():
    tf = _random_transformer(3, attn="softmax", causal=True, layernorm=True)
    tok = torch.randn(2, 5, 5, dtype=torch.float64)
    km = torch.ones(2, 5, dtype=torch.bool)
    km[:, 0] = False  # the first query sees no key at all: its attention output is 0, not NaN
    with torch.no_grad():
        fast, ref = tf(tok, km), reference_forward(tf, tok, km)
    assert torch.isfinite(fast).all()
    assert _rel(fast, ref) < RTOL


def test_training_gradients_equal_reference():
    torch.manual_seed(0)
    m = GargRegressor(GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16)).double()
    X, y = torch.randn(4, 6, 3, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    tok = m._tokens(X, y, 6)
    grads = []
    for fwd in (lambda t: m.transformer(t), lambda t: reference_forward(m.transformer, t)):
        m.zero_grad()
        (fwd(tok)[:, ::2, 0] - y).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    assert _rel(grads[0], grads[1]) < 1e-11


@pytest.mark.parametrize("form,attn,normalize,lam,looped", [
    ("default", "relu", False, 0.0, False), ("default", "linear", True, 0.5, False),
    ("default", "relu", True, 0.3, True), ("merged", "relu", False, 0.0, False),
    ("merged", "linear", True, 0.2, True), ("merged", "relu", True, 0.7, False),
])
def test_newton_forward_and_predict_all_equal_reference(form, attn, normalize, lam, looped):
    g = torch.Generator().manual_seed(5)
    B, n, d, k = 3, 9, 3, 4
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    y = X @ torch.randn(d, generator=g, dtype=torch.float64) + 0.1 * torch.randn(B, n, generator=g, dtype=torch.float64)
    xq = torch.randn(B, d, generator=g, dtype=torch.float64)
    alpha = float(safe_alpha(X).min()) * ((n + 1 + (d if lam else 0)) ** 2 if normalize else 1.0)
    m = build_newton_transformer(d, k, alpha, attn=attn, normalize=normalize, lam=lam, form=form, looped=looped)
    with torch.no_grad():
        ref = reference_forward(m.transformer, m.encode(X, y, xq))[:, -1, 0]
    assert _rel(m.predict(X, y, xq, check_alpha="ignore"), ref) < RTOL
    ref_all = reference_predict_all(m, X, y)
    for groups in (None, 1, 2, 4, n):
        assert _rel(m.predict_all(X, y, check_alpha="ignore", groups=groups), ref_all) < RTOL


@pytest.mark.parametrize("attn", ["relu", "linear"])
def test_relu_linear_gradients_equal_reference(attn):
    """In-place ReLUs (attention and MLP) keep autograd right."""
    tf = _random_transformer(7, attn=attn, causal=False, attn_norm=True, mlp="relu", layernorm=False, bias=False)
    tok = torch.randn(3, 6, 5, dtype=torch.float64)
    km = torch.rand(3, 6) > 0.3
    grads = []
    for fwd in (lambda: tf(tok, km), lambda: reference_forward(tf, tok, km)):
        tf.zero_grad()
        fwd().pow(2).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in tf.parameters()]))
    assert _rel(grads[0], grads[1]) < 1e-11


def test_sparse_hand_set_weights_take_the_slot_path():
    """Newton weights read few slots: inference reads only those (and still equals the reference)."""
    from construct.transformer import _used_runs

    m = build_newton_transformer(6, 3, 0.01)
    W, _ = m.transformer.blocks[1].attn.qkv_weight()
    with torch.no_grad():
        runs = _used_runs(W)
    L = m.layout
    assert runs == sorted([(L["x"].start, L["x"].stop), (L["u"].start, L["u"].stop)])
    assert _used_runs(W) is None  # autograd on: dense path
    dense = torch.randn(10, 12, dtype=torch.float64)
    with torch.no_grad():
        assert _used_runs(dense) is None


def test_predict_all_grouped_on_adaptive_and_gpt2_compiled_models():
    """Grouping by length is exact for every model kind that runs on key masks (no positions)."""
    from construct.gpt2 import to_gpt2

    g = torch.Generator().manual_seed(11)
    X = 0.5 * torch.randn(2, 7, 2, generator=g, dtype=torch.float64)
    y = X.sum(-1)
    ad = build_newton_transformer(2, 3, "adaptive")
    ref = reference_predict_all(ad, X, y)
    for groups in (2, 7):
        assert _rel(ad.predict_all(X, y, groups=groups), ref) < RTOL
    ex = build_newton_transformer(2, 2, float(safe_alpha(X).min()), normalize=False)
    comp = to_gpt2(ex, 1e-6, scale=50.0)
    one = comp.predict_all(X, y, check_alpha="ignore", groups=1)  # one run, every prefix at full length
    assert _rel(comp.predict_all(X, y, check_alpha="ignore", groups=3), one) < 1e-10
    assert _rel(one, ex.predict_all(X, y)) < 1e-5


def test_probe_streams_of_newton_prefixes_use_the_grouped_prompts():
    from benchmarks.probes import residual_streams

    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 8, 2, generator=g, dtype=torch.float64)
    y = X.sum(-1)
    m = build_newton_transformer(2, 3, float(safe_alpha(X).min()), lam=0.2)
    H = residual_streams(m, X, y)  # (L+1, B, n, D) at each prefix prompt's query token
    assert H.shape == (m.n_layers + 1, 3, 8, m.layout.width)
    out = H[-1][..., m.layout["out"]][..., 0]
    assert _rel(out, reference_predict_all(m, X, y)) < RTOL


def _count_forward_at(monkeypatch):
    from construct.transformer import Attention

    calls = []
    orig = Attention.forward_at
    monkeypatch.setattr(Attention, "forward_at", lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    return calls


def test_training_reads_only_the_x_tokens_in_the_last_layer(monkeypatch):
    """GargRegressor.forward in training runs the last layer at the x tokens only: same outputs and
    gradients as the previous full forward, float64."""
    calls = _count_forward_at(monkeypatch)
    torch.manual_seed(1)
    m = GargRegressor(GargConfig(d=3, n_points=6, n_layers=3, n_heads=2, d_model=16)).double()
    X, y = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    res = []
    for fwd in (lambda: m(X, y), lambda: reference_forward(m.transformer, m._tokens(X, y, 6))[:, ::2, 0]):
        m.zero_grad()
        out = fwd()
        (out - y).pow(2).mean().backward()
        res.append((out.detach(), torch.cat([p.grad.reshape(-1) for p in m.parameters()])))
    assert len(calls) == 1  # the trimmed path ran, once (the last layer)
    assert res[0][0].shape == (4, 5)
    assert _rel(res[0][0], res[1][0]) < RTOL and _rel(res[0][1], res[1][1]) < 1e-11
    with torch.no_grad():  # inference keeps the full last layer
        assert _rel(m.predict_all(X, y), res[1][0]) < RTOL
    assert len(calls) == 1


@pytest.mark.parametrize("causal,read", [(True, slice(1, None, 3)), (False, slice(0, None, 2)), (True, slice(4, 6))])
def test_read_slice_with_prefix_and_full_attention_equals_reference(monkeypatch, causal, read):
    calls = _count_forward_at(monkeypatch)
    tf = _random_transformer(4, attn="softmax", causal=causal, mlp="gelu", layernorm=True, max_len=9, n_prefix=2)
    tok = torch.randn(3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8)).requires_grad_()
    ref = reference_forward(tf, tok)[:, read]  # (B, n, d_out)
    (gref,) = torch.autograd.grad(ref.pow(2).sum(), tok)
    out = tf(tok, read=read)
    (gout,) = torch.autograd.grad(out.pow(2).sum(), tok)
    assert len(calls) == 1 and out.shape == ref.shape
    assert _rel(out, ref) < RTOL and _rel(gout, gref) < 1e-11
    with torch.no_grad():
        assert _rel(tf(tok, read=read), ref) < RTOL
    with pytest.raises(TypeError, match="read must be a slice"):
        tf(tok, read=[0, 2])


def test_read_slice_keeps_the_full_last_layer_when_it_is_hooked(monkeypatch):
    calls = _count_forward_at(monkeypatch)
    torch.manual_seed(2)
    m = GargRegressor(GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16)).double()
    X, y = torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    shapes = []
    m.transformer.layers[-1].hook_resid_post.add_hook(lambda act, hook: shapes.append(tuple(act.shape)))
    out = m(X, y)
    assert not calls and shapes == [(2, 12, 16)]  # the hook saw every token
    ref = reference_forward(m.transformer, m._tokens(X, y, 6))[:, ::2, 0]
    assert _rel(out.detach(), ref.detach()) < RTOL


@pytest.mark.parametrize("where", ["attn", "mlp", "layer", "global"])
def test_read_slice_keeps_the_full_last_layer_under_a_plain_torch_hook(monkeypatch, where):
    """A plain ``register_forward_hook`` on the last layer's attention / MLP / layer module (or a
    global module hook) sees every token in training too, as in inference."""
    from torch.nn.modules.module import register_module_forward_hook

    calls = _count_forward_at(monkeypatch)
    torch.manual_seed(4)
    m = GargRegressor(GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16)).double()
    X, y = torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    tf = m.transformer
    shapes = []
    target = {"attn": tf.blocks[tf.cfg.layer_schedule[-1]].attn, "mlp": tf.blocks[tf.cfg.layer_schedule[-1]].mlp,
              "layer": tf.layers[-1]}.get(where)
    if target is None:
        h = register_module_forward_hook(lambda mod, i, o: shapes.append(tuple(o.shape))
                                         if mod is tf.blocks[tf.cfg.layer_schedule[-1]].attn else None)
    else:
        h = target.register_forward_hook(lambda mod, i, o: shapes.append(tuple(o.shape)))
    try:
        out = m(X, y)  # training: autograd records
    finally:
        h.remove()
    assert not calls and shapes and shapes[-1] == (2, 12, 16), shapes  # the hook saw every token
    ref = reference_forward(m.transformer, m._tokens(X, y, 6))[:, ::2, 0]
    assert _rel(out.detach(), ref.detach()) < RTOL
    m(X, y)  # hook removed: the trimmed path again
    assert len(calls) == 1


@pytest.mark.parametrize("grad", [True, False])
def test_read_slice_final_norm_hook_sees_every_token(monkeypatch, grad):
    """A hook on ln_final.hook_normalized sees all P+N positions with or without ``read`` (as before
    the read slice existed, and as TransformerLens' ln_final hooks do); the read-out is unchanged."""
    calls = _count_forward_at(monkeypatch)
    torch.manual_seed(3)
    m = GargRegressor(GargConfig(d=3, n_points=6, n_layers=2, n_heads=2, d_model=16)).double()
    X, y = torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    ref = reference_forward(m.transformer, m._tokens(X, y, 6))[:, ::2, 0].detach()
    with torch.set_grad_enabled(grad):
        out, cache = m.run_with_cache(X, y)
    assert not calls and cache["ln_final.hook_normalized"].shape == (2, 12, 16)
    assert _rel(out.detach(), ref) < RTOL
