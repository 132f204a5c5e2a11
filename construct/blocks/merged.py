"""Merged form (k + 1 layers, k ≥ 2): the read-out also performs the last Newton step.

**c-init layer** (the first Newton layer of the merged form).  Tokens enter with u = M₀ z = αSz,
and c = σ S x_i on train tokens but c = 0 on the query (written by the init layer, whose c-head
reads only the x slot; σ ≈ √α is a power of two, :func:`~construct.blocks.base.c_scale`).
Besides the ordinary Newton head it must set c = S M₁ z, where M₁ = 2M₀ − M₀SM₀, so that after
the doubling MLP ½ S M₁ z = S u − (α/2) S³ u is needed::

    S u − σ S x_i = Σ_l x_l ⟨x_l, u − σ x⟩         (query u − σ x, key x, value x, out +1)
    σ² S³ u       = Σ_l c_l ⟨c_l, u⟩               (query u, key c, value c, out −α/(2σ²))

The first head also cancels the c = σ S x_i the token came in with (the query has x = 0 and
c = 0, so nothing to cancel).  The second uses Σ_l c_l c_lᵀ = σ² S (Σ_l x_l x_lᵀ) S = σ² S³ over
the train tokens only: the query's c is 0, so it neither keys nor values.  (Using u as key and
value instead would be wrong: the query's own u = αS x_q would enter the sum.  The S⁴ z term
cannot be reached from x and u by query-free heads alone, which is why c is seeded in the init
layer.)  Doubling c then gives c = 2 S M₀ z − S M₀ S M₀ z = S M₁ z, since
S M₀ S M₀ z = α² S⁴ z = α S³ u.

Why σ ≈ √α: with a convergent α ≈ 1/λ_max², σ S x has the size of x, like S u and the result,
so cancelling σ S x_i against itself costs only round-off of that size.  Seeding c = S x would
make the cancelled terms λ_max times larger than the result and lose ≈ log₁₀ λ_max digits in c
on train tokens (the query's prediction is unaffected either way).  σ is a power of two so that
α/(2σ²) is exact in floating point and the exact rational check holds to the last bit.

**Merged read-out.**  With M = M_{k−1} on the train tokens (u_j = M x_j) and on the query
(u = M x_q, c = S M x_q), the last Newton step M_k = 2M − MSM gives

    ⟨M_k x_q, x_j⟩ = 2⟨M x_q, x_j⟩ − ⟨S M x_q, M x_j⟩ = 2⟨u_q, x_j⟩ − ⟨c_q, u_j⟩,

one bilinear head of width 2d: query [u ; c], key [2x ; −u], value y, output into ``out``.
Summing against y_j gives x_qᵀ M_k Xᵀ y.  Every token carries u and c, so every token's ``out``
receives z_tᵀ M_k Xᵀ y (its own z); only the query's is read out.

**Adaptive α (c-init without a seed).**  In an adaptive model (:mod:`construct.blocks.scale`)
the α is data-dependent, so no weight can carry α/(2σ²).  Instead the c-init layer uses the
slot ``v`` = S x_l left on the example tokens by the gram layer (0 on the query): with
u_l = α S x_l on example tokens,

    Σ_l u_l ⟨v_l, u_i⟩ = α S (Σ_l x_l x_lᵀ) S · α S z_i = α² S⁴ z_i

(query u, key v, value u, output −½ into c; the key v is 0 on the query and the register, so
their u never enters).  Together with S u_i = Σ_l x_l ⟨x_l, u_i⟩ (query u, key x, value x,
output +1) and the doubling MLP this gives c = 2αS²z − α²S⁴z = S M₁ z with c entering as 0,
and the α in it is exactly the register's α (:func:`adaptive_c_init_block`).

**Why not fewer layers (degree bound).**  Each exact layer maps a residual stream whose
entries are polynomials of degree ≤ p in the data (x, y, x_q) to one of degree ≤ 3p: a score
is a product of two entries and the value a third (the MLPs here are exactly linear, and the
ReLU pairs are exactly bilinear).  The read-in has degree 1, so after L layers the degree is
≤ 3^L.  The prediction x_qᵀ M_k Xᵀ y has degree 1 + 2(2^(k+1) − 1) + 2 = 2^(k+2) + 1 in the
data (M_k is a polynomial of degree 2^(k+1) − 1 in S, and S and Xᵀy have degree 2).  Hence

    3^L ≥ 2^(k+2) + 1,   L ≥ L_min(k) = ⌈log₃(2^(k+2) + 1)⌉   (:func:`construct.min_layers`).

L_min = 2, 2, 3, 4 for k = 0, 1, 2, 3, so the k + 2 form is optimal at k = 0 and the merged
k + 1 form is optimal for k = 2, 3 among exact bilinear networks (at k = 1 the merged form does
not apply: 3 layers against a bound of 2 is open).  From k = 4 on the bound
(≈ 0.63 (k + 2)) falls below k + 1: degree counting alone does **not** rule out fewer layers
there.  A network meeting it has to raise the degree ×3 per layer, i.e. run a cubically
convergent iteration instead of one Newton step per layer: the hyperpower form
(:mod:`construct.blocks.hyperpower`) does, reaching at least Newton-k's accuracy in j + 3 layers,
within one layer of the bound.
"""

from __future__ import annotations


from ..layout import ResidualLayout
from .base import BlockSpec, Head, c_scale, doubling_mlp, eye, heads_for
from .newton import newton_heads


def c_init_heads(d: int, alpha: float, q: str = "u", out: str = "c", seed: str | None = "x") -> list[Head]:
    """The two c-init heads: ``out`` += S·q − σ S·seed, then ``out`` −= (α/2σ²) σ² S³·q.

    Train tokens use q = u, out = c, seed = x (cancelling the seed σ S x_i).  The hyperpower form's
    query copy uses q = uq, out = cq, seed = None (its cq enters as 0, nothing to cancel).
    """
    sigma = c_scale(alpha)
    first_q = {q: eye(d, d)}
    if seed is not None:
        first_q[seed] = eye(d, d, scale=-sigma)
    return [
        Head(q=first_q, k={"x": eye(d, d)}, v={"x": eye(d, d)}, o={out: eye(d, d).T},
             label=f"c-init: {out} += Σ_l ⟨{q}{' − σ ' + seed if seed else ''}, x_l⟩ x_l"),
        Head(q={q: eye(d, d)}, k={"c": eye(d, d)}, v={"c": eye(d, d)}, o={out: eye(d, d).T * (-0.5 * alpha / sigma ** 2)},
             label=f"c-init: {out} −= (α/2σ²) Σ_l ⟨{q}, c_l⟩ c_l"),
    ]


def c_init_block(layout: ResidualLayout, d: int, alpha: float, attn: str) -> BlockSpec:
    """First Newton layer of the merged form: u ← M₁ z and c ← S M₁ z (see module docstring)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return BlockSpec(
        "newton+c-init",
        heads_for(attn, newton_heads(d) + c_init_heads(d, alpha)),
        doubling_mlp(layout, ["u", "c"]),
        "u ← M₁ z;  c ← S M₁ z",
    )


def merged_readout_block(layout: ResidualLayout, d: int, attn: str) -> BlockSpec:
    head = Head(
        q={"u": eye(d, 2 * d), "c": eye(d, 2 * d, at=d)},
        k={"x": eye(d, 2 * d, scale=2.0), "u": eye(d, 2 * d, at=d, scale=-1.0)},
        v={"y": eye(1, 2 * d)},
        o={"out": eye(1, 2 * d).T},
        label="merged readout: out += Σ_j (2⟨u,x_j⟩ − ⟨c,u_j⟩) y_j",
    )
    return BlockSpec("merged-readout", heads_for(attn, [head]), None, "out ← x_qᵀ M_k Xᵀ y  (last step merged)")


def adaptive_c_init_heads(d: int, q: str = "u", out: str = "c") -> list[Head]:
    """The two seedless c-init heads: ``out`` += S·q, then ``out`` −= ½ Σ_l ⟨q, v_l⟩ u_l.

    Train tokens use q = u, out = c; the adaptive hyperpower form's query copy uses q = uq,
    out = cq (:func:`~construct.blocks.hyperpower.adaptive_hyper_c_init_block`).  With
    q = αS z, the second sum is αS·S·S·αS z = α² S⁴ z (module docstring).
    """
    return [
        Head(q={q: eye(d, d)}, k={"x": eye(d, d)}, v={"x": eye(d, d)}, o={out: eye(d, d).T},
             label=f"c-init: {out} += Σ_l ⟨{q}, x_l⟩ x_l  (S {q})"),
        Head(q={q: eye(d, d)}, k={"v": eye(d, d)}, v={"u": eye(d, d)}, o={out: eye(d, d).T * -0.5},
             label=f"c-init: {out} −= ½ Σ_l ⟨{q}, v_l⟩ u_l  (½ α² S⁴ z; key v = S x on examples only)"),
    ]


def adaptive_c_init_block(layout: ResidualLayout, d: int, attn: str) -> BlockSpec:
    """Merged c-init for an adaptive α: u ← M₁ z, c ← S M₁ z from u = αSz and v = S x (module doc)."""
    return BlockSpec(
        "newton+c-init",
        heads_for(attn, newton_heads(d) + adaptive_c_init_heads(d)),
        doubling_mlp(layout, ["u", "c"]),
        "u ← M₁ z;  c ← S M₁ z  (α from the register)",
    )
