"""Gram layer (adaptive α, first layer): v ← S x on example tokens (and S x_q parked in c).

Derivation.  A bilinear head with query, key and value reading ``x`` (so every sum runs over
the tokens that carry an example: train tokens, and ridge prefix tokens with x = √λ e_m)::

    Σ_l ⟨x_i, x_l⟩ x_l = S x_i      (query x, key x, value x, output +1 into v)

The query and the register have x = 0, so their ``v`` stays 0.  That matters: ``v`` is later a
*key* (for tr(S³), and in the merged form's c-init), and a key that is nonzero on the query
would add the query's own S x_q to every sum over examples.

Merged form only: a second head with query ``xq`` (same key and value) writes S x_q into ``c``
on the query (c is 0 everywhere else and unused until the c-init layer).  The α-scale layer
(:mod:`construct.blocks.scale`) turns v and that parked S x_q into u = α S z and clears c.
The default form never reads the query's u (its read-out uses x_q and the train tokens' u),
so there the query's u simply stays 0.

Parking S x_q in u itself and removing it later (u += α u − u) would cancel catastrophically:
the result α S x_q is ≈ λ_max² times smaller than S x_q, so it would lose log₁₀ λ_max² digits.

With ``alpha_trace=1`` the same layer also carries the trace heads and the α MLP
(:mod:`construct.blocks.trace_alpha`), since tr(S) needs only x.  No MLP otherwise.
"""

from __future__ import annotations

from ..layout import ResidualLayout
from .base import BlockSpec, Head, eye, heads_for


def gram_heads(d: int, park: str | None = None) -> list[Head]:
    """v ← S x (examples); with ``park`` (a slot name), also S x_q into that slot on the query."""
    heads = [Head(q={"x": eye(d, d)}, k={"x": eye(d, d)}, v={"x": eye(d, d)}, o={"v": eye(d, d).T},
                  label="gram: v += Σ_l ⟨x, x_l⟩ x_l  (S x on example tokens)")]
    if park is not None:
        heads.append(Head(q={"xq": eye(d, d)}, k={"x": eye(d, d)}, v={"x": eye(d, d)}, o={park: eye(d, d).T},
                          label=f"gram: {park} += Σ_l ⟨x_q, x_l⟩ x_l  (S x_q parked on the query)"))
    return heads


def gram_block(layout: ResidualLayout, d: int, attn: str, park: str | None = None) -> BlockSpec:
    """v ← S x (example tokens); ``park``: S x_q into that slot on the query."""
    return BlockSpec("gram", heads_for(attn, gram_heads(d, park)), None,
                     "v ← S x (examples)" + (f";  {park} ← S x_q (query)" if park else ""))
