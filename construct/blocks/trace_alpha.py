"""Trace-and-α layer: τ_p = tr(S^p) on the register token, then α = f(τ_p) by the MLP.

**Register token.**  An adaptive model prepends one fixed token (a prefix token stored in the
weights, after any ridge prefix tokens) whose only nonzero slot is ``one`` = 1.  Its x, xq and
y are 0, so it never enters S, the Newton sums or the read-out; it only holds τ and α.

**Trace heads.**  For m = 1 … d, head m has the *constant* query ``one`` (nonzero on the
register only), key = coordinate m of slot K and value = coordinate m of slot V, and writes
into ``tau``::

    head m at the register:  Σ_l ⟨1, (K_l)_m⟩ (V_l)_m = Σ_l (K_l)_m (V_l)_m,
    summed over m:           Σ_l ⟨K_l, V_l⟩.

Every other token has ``one`` = 0, so its query is 0 and its τ stays 0.  The sum runs over the
example tokens (train, and ridge prefix √λ e_m, so S below means XᵀX + λI):

    p = 1:  K = V = x            Σ_l ‖x_l‖²        = tr(S)
    p = 2:  K = x, V = v = S x   Σ_l ⟨x_l, S x_l⟩  = tr(S²)
    p = 3:  K = V = v = S x      Σ_l ‖S x_l‖²      = tr(S · S · S) = tr(S³)

(v is 0 on the query and the register, see :mod:`construct.blocks.gram`, so neither enters.)
d heads are needed: one head's output Σ_l ⟨q, K_l⟩ V_l with a constant q is a rank-one
quadratic form in the data, and a trace has rank d.  Head width 1.

**α MLP.**  Hidden unit j computes ReLU(b_j·one − τ) and adds w_j times it to ``alpha``
(:mod:`construct.adaptive`: b_j are the kinks and w_j > 0 the slope jumps of the PL function
f ≤ c·τ^(−2/p)).  At the register (one = 1) that is Σ_j w_j ReLU(b_j − τ_p) = f(τ_p); on every
other token one = τ = 0, so every unit is ReLU(0) = 0 and their α slot stays 0.  The MLP is
exact (a PL function of the stored weights) and has K hidden units, K = the number of tangent
nodes (220 for float64, 97 for float32), independent of d and n.

**Unit scaling (float32).**  The kinks b_j ≈ τ and the slopes w_j ≈ |φ'(τ)| ∝ τ^(−1−2/p) span
very different ranges: for p = 3 and τ^(1/3) = 2^e, w_j ≈ 2^(−5e), which underflows float32
(normal ≥ 2^−126) for e ≳ 25, inside float32's valid range e ≤ 40 — the stored slopes were 0 or
subnormal there and the network's α came out 0 (100 % off; found by the slow fuzz, issue 12).
ReLU is positively homogeneous, so unit j is stored as

    (w_j / s_j) · ReLU(s_j b_j · one − s_j · τ),      s_j = 2^(−round(log₂ b_j)),

which is the same function.  s_j is a power of two, so s_j b_j, s_j τ and w_j / s_j are the
float values of b_j, τ and w_j with the exponent shifted: *bit for bit* the same rounding as the
unscaled unit wherever that one is representable (every float64 model is unchanged), and all
three stored numbers are now O(1) (s_j b_j ∈ [2^−½, 2^½]) or the size of α itself
(w_j/s_j ≈ w_j b_j ≈ φ(τ)·p/2), normal in float32 over the whole valid range.
"""

from __future__ import annotations

import torch

from ..layout import ResidualLayout
from .base import DTYPE, BlockSpec, Head, MLPSpec, heads_for

TRACE_SLOTS = {1: ("x", "x"), 2: ("x", "v"), 3: ("v", "v")}


def _unit(d: int, m: int) -> torch.Tensor:
    """(d, 1): picks coordinate m of a d-dim slot into head dim 0."""
    e = torch.zeros(d, 1, dtype=DTYPE)
    e[m, 0] = 1.0
    return e


def trace_heads(d: int, p: int) -> list[Head]:
    """d heads writing tr(S^p) into ``tau`` at the register (see module docstring)."""
    if p not in TRACE_SLOTS:
        raise ValueError(f"alpha_trace must be one of {tuple(TRACE_SLOTS)}, got {p!r}")
    ks, vs = TRACE_SLOTS[p]
    one = torch.ones(1, 1, dtype=DTYPE)
    return [
        Head(q={"one": one}, k={ks: _unit(d, m)}, v={vs: _unit(d, m)}, o={"tau": one.clone()},
             label=f"trace: tau += Σ_l ({ks}_l)_{m} ({vs}_l)_{m}  (tr(S^{p}), register only)")
        for m in range(d)
    ]


def alpha_mlp(kinks, weights) -> MLPSpec:
    """Hidden ReLU(s_j b_j·one − s_j τ), output Σ_j (w_j/s_j) · hidden_j into ``alpha`` (module docstring)."""
    b = torch.tensor(kinks, dtype=DTYPE)
    w = torch.tensor(weights, dtype=DTYPE)
    if b.shape != w.shape or b.dim() != 1 or not bool((w > 0).all()):
        raise ValueError("alpha MLP needs equal-length kinks and positive weights")
    sc = torch.ldexp(torch.ones_like(b), -torch.round(torch.log2(b)).to(torch.int64))  # s_j = 2^−round(log₂ b_j)
    return MLPSpec(w_in={"one": (b * sc)[None, :], "tau": -sc[None, :]},  # exact: powers of two (module doc)
                   w_out={"alpha": (w / sc)[:, None]})


def trace_alpha_block(layout: ResidualLayout, d: int, p: int, attn: str, kinks, weights,
                      extra_heads: list[Head] | None = None, name: str = "trace+alpha") -> BlockSpec:
    """τ_p at the register, α = f(τ_p) (``extra_heads``: the gram heads when p = 1)."""
    bil = list(extra_heads or []) + trace_heads(d, p)
    return BlockSpec(name, heads_for(attn, bil), alpha_mlp(kinks, weights),
                     f"tau ← tr(S^{p}), alpha ← f(tau)  (register)")
