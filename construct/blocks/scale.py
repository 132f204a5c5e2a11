"""α-scale layer: u ← α S z, with α read from the register token.

Before this layer ``v`` = S x on example tokens (0 on the query), the register holds α (slot
``alpha``) and 1 (slot ``one``), and in the merged form ``c`` holds S x_q on the query (0
elsewhere); see :mod:`construct.blocks.gram` and :mod:`construct.blocks.trace_alpha`.

A product of α (on one token) and S z (on every token) is bilinear across tokens, so one head
can form it if α is the *key* on the register and on no other token.  Head m (m = 1 … d),
head width 1::

    query  q_i = (v_i)_m  (+ (c_i)_m in the merged form)
    key    k_l = α_l                 (nonzero on the register only)
    value  v_l = one_l               (nonzero on the register only)
    output → coordinate m of u

At token i the only nonzero score is with the register, α (v_i + c_i)_m, and the value there
is 1, so u_m += α (S z_i)_m: u = α S x_i on example tokens, and in the merged form
u = α S x_q on the query.  So after this layer u = α S z = M₀ z, where α is the register's own
α: exactly the fixed-α init layer's output, with α computed from the prompt.  (Default form:
the query's u stays 0; its read-out never reads it.)

Merged form: the MLP then clears c exactly (hidden ReLU(c), ReLU(−c), output −1, +1:
c − (ReLU(c) − ReLU(−c)) = c − c = 0 in floating point too), so c enters the c-init layer as 0.
``v`` is left as it is (S x on example tokens): the merged c-init uses it as a key.
d bilinear heads (2d ReLU heads).

Hyperpower form (``park="cq", park_out="uq"``): the query's u must stay 0 (u is a key and
value of the order-3 heads, :mod:`construct.blocks.hyperpower`), so its M₀ x_q goes to its own
slot uq: d more heads, head m with query (cq)_m, key α, value one, output → (uq)_m, give
uq = α S x_q on the query (cq is 0 elsewhere, so nothing else changes), and the MLP clears cq.
The first d heads read only v, which is 0 on the query, so the query's u stays 0.
2d bilinear heads (4d ReLU heads).
"""

from __future__ import annotations

import torch

from ..layout import ResidualLayout
from .base import DTYPE, BlockSpec, Head, MLPSpec, doubling_mlp, heads_for


def scale_heads(d: int, park: str | None = None, park_out: str = "u") -> list[Head]:
    """d heads u ← α·v (+ α·park when ``park_out`` is "u"); else d more heads ``park_out`` ← α·park."""
    heads = []
    one = torch.ones(1, 1, dtype=DTYPE)
    for m in range(d):
        e = torch.zeros(d, 1, dtype=DTYPE)
        e[m, 0] = 1.0
        q = {"v": e} if park is None or park_out != "u" else {"v": e, park: e.clone()}
        heads.append(Head(q=q, k={"alpha": one.clone()}, v={"one": one.clone()}, o={"u": e.T.clone()},
                          label=f"scale: u_{m} += α (S z)_{m}  (key α on the register)"))
    if park is not None and park_out != "u":
        for m in range(d):
            e = torch.zeros(d, 1, dtype=DTYPE)
            e[m, 0] = 1.0
            heads.append(Head(q={park: e}, k={"alpha": one.clone()}, v={"one": one.clone()}, o={park_out: e.T.clone()},
                              label=f"scale: {park_out}_{m} += α ({park})_{m}  (α S x_q on the query)"))
    return heads


def clearing_mlp(layout: ResidualLayout, slot: str) -> MLPSpec:
    """MLP subtracting a slot from itself: ReLU(v) − ReLU(−v) = v with output weight −1."""
    m = doubling_mlp(layout, [slot])
    return MLPSpec(m.w_in, {s: -w for s, w in m.w_out.items()})


def scale_block(layout: ResidualLayout, d: int, attn: str, park: str | None = None, park_out: str = "u") -> BlockSpec:
    """u ← α S z (see module docstring); ``park``: the slot holding S x_q on the query, cleared here;
    ``park_out``: where α·park goes (u: merged form; uq: hyperpower form, d more heads)."""
    extra = "" if park is None or park_out == "u" else f"; {park_out} ← α S x_q (query)"
    return BlockSpec("scale", heads_for(attn, scale_heads(d, park, park_out)),
                     None if park is None else clearing_mlp(layout, park),
                     "u ← α S z  (M₀ z, α from the register)" + extra + (f"; {park} ← 0" if park else ""))
