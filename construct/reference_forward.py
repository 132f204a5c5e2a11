"""The previous forward pass of :class:`~construct.transformer.Transformer`, kept as a baseline.

:func:`reference_forward` is the implementation the project shipped before the fast paths
(three einsum projections, scores times ``scale`` even when it is 1, a (B, N, N) visibility
mask, ReLU followed by ``masked_fill``, a division by the row count, explicit softmax).  It runs
on the same weights, so tests guard every fast path against it (float64, 1e-12 relative) and
``python -m benchmarks.perf`` reports same-run speed ratios.  It has no hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .transformer import Attention, Block, Transformer


def _allowed(tf: Transformer, N: int, key_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    allowed = None
    if tf.cfg.causal:
        allowed = torch.ones(N, N, dtype=torch.bool, device=device).tril()[None]
    if key_mask is not None:
        km = key_mask[:, None, :]  # (B, 1, N)
        allowed = km if allowed is None else (allowed & km)
        allowed = allowed.expand(-1, N, -1) if allowed.shape[1] == 1 else allowed
    return allowed


def _attention(att: Attention, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    cfg = att.cfg
    scale = att.scale
    q = torch.einsum("bnd,hde->bhne", x, att.W_Q)  # (B, H, N, Dh)
    k = torch.einsum("bnd,hde->bhne", x, att.W_K)
    v = torch.einsum("bnd,hde->bhne", x, att.W_V)
    if cfg.bias:
        q = q + att.b_Q[None, :, None, :]
        k = k + att.b_K[None, :, None, :]
        v = v + att.b_V[None, :, None, :]
    s = torch.einsum("bhne,bhme->bhnm", q, k) * scale  # (B, H, N, N)
    mask = None if allowed is None else allowed[:, None]  # (B|1, 1, N, N)
    if cfg.attn == "softmax":
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        a = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    else:
        a = torch.relu(s) if cfg.attn == "relu" else s
        if mask is not None:
            a = a.masked_fill(~mask, 0.0)
        if cfg.attn_norm:
            if mask is None:
                cnt = torch.full((1, 1, s.shape[-2], 1), float(s.shape[-1]), dtype=s.dtype, device=s.device)
            else:
                cnt = mask.sum(-1, keepdim=True).to(s.dtype).clamp(min=1.0)
            a = a / cnt
    z = torch.einsum("bhnm,bhme->bhne", a, v)  # (B, H, N, Dh)
    out = torch.einsum("bhne,hed->bnd", z, att.W_O)  # (B, N, D)
    return out + att.b_O if cfg.bias else out


def _mlp(blk: Block, x: torch.Tensor) -> torch.Tensor:
    m = blk.mlp
    h = x @ m.W_in  # (B, N, M)
    if m.bias:
        h = h + m.b_in
    h = F.relu(h) if m.act == "relu" else F.gelu(h, approximate="tanh" if m.act == "gelu_new" else "none")
    out = h @ m.W_out
    return out + m.b_out if m.bias else out


def reference_forward(tf: Transformer, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The previous ``Transformer.forward``: same arguments, same weights, (B, P+N, d_out)."""
    r = tokens @ tf.W_in  # (B, N, D)
    if tf.b_in is not None:
        r = r + tf.b_in
    if tf.pos is not None:
        r = r + tf.pos[: r.shape[1]]
    if tf.prefix is not None:
        r = torch.cat([tf.prefix.to(r.dtype).expand(r.shape[0], -1, -1), r], dim=1)
    if key_mask is not None and tf.prefix is not None:
        pre = torch.ones(key_mask.shape[0], tf.cfg.n_prefix, dtype=torch.bool, device=key_mask.device)
        key_mask = torch.cat([pre, key_mask], dim=1)
    allowed = _allowed(tf, r.shape[1], key_mask, r.device)
    for b in tf.cfg.layer_schedule:
        blk = tf.blocks[b]
        if blk.attn is not None:
            h = blk.ln1(r) if blk.ln1 is not None else r
            r = r + _attention(blk.attn, h, allowed)
        if blk.mlp is not None:
            h = blk.ln2(r) if blk.ln2 is not None else r
            r = r + _mlp(blk, h)
    if tf.ln_f is not None:
        r = tf.ln_f(r)
    out = r @ tf.W_out
    return out + tf.b_out if tf.b_out is not None else out


def reference_predict_all(model, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The previous ``NewtonTransformer.predict_all`` (no α check): every prefix at full length.

    Prompt (b, t) holds all n train tokens with tokens >= t hidden by the key mask and x_t as the
    query, run through :func:`reference_forward`; (B, n).
    """
    X, y, _ = model._check(X, y, None)
    B, n, d = X.shape
    Xt = X[:, None].expand(B, n, n, d).reshape(B * n, n, d)  # (B·n, n, d)
    yt = y[:, None].expand(B, n, n).reshape(B * n, n)
    xq = X.reshape(B * n, d)
    t = torch.arange(n, device=X.device)
    visible = t[None, :] < t[:, None]  # (n, n)
    key_mask = torch.cat([visible, torch.ones(n, 1, dtype=torch.bool, device=X.device)], 1)
    key_mask = key_mask[None].expand(B, n, n + 1).reshape(B * n, n + 1)
    with torch.no_grad():
        out = reference_forward(model.transformer, model.encode(Xt, yt, xq), key_mask)
    return out[:, -1, 0].reshape(B, n)
