"""Hyperpower form: the order-3 layer, I − M'S = (I − MS)³, three times Newton's residual exponent per layer.

Newton–Schulz squares the residual R = I − MS.  The order-3 hyperpower step cubes it:

    M' = M (I + (I − SM) + (I − SM)²) = 3M − 3MSM + MSMSM,     I − M'S = (I − MS)³,

(every M here is a polynomial in the symmetric S, hence symmetric and commuting with S).

**Layout** (width **D = 6d + 2**; z is the token's own vector: x_i on train tokens, √λ e_m on ridge
prefix tokens, x_q on the query)::

    x   d   x_i (train), √λe_m (prefix), 0 (query)        u   d   M z on train/prefix, 0 on the query
    xq  d   x_q (query), 0 elsewhere                      c   d   S M z on train/prefix, 0 on the query
    y   1   y_i (train), 0 elsewhere                      uq  d   M x_q on the query, 0 elsewhere
    out 1   the prediction (query), 0 elsewhere           cq  d   S M x_q on the query, 0 elsewhere

**The query trap.**  The order-3 heads use u and c as *keys* and *values*, and every head sums over
all tokens, the query included.  If the query carried its own u = M x_q in slot u, that vector
would enter every sum (Σ_l u_l u_lᵀ would gain M x_q x_qᵀ M).  So the query keeps u = c = 0 and
holds its copies in uq, cq, which are only ever read as *queries*; the query's updates are
separate heads that read uq/cq as queries and write uq/cq.  A bilinear head (query slot A, key
slot B, value slot C) at token i computes Σ_l C_l ⟨B_l, A_i⟩, and since B and C are zero on the
query the sum runs over train and prefix tokens only, where Σ_l P(S) x_l x_lᵀ Q(S) = P(S) S Q(S):

    Σ_l C_l ⟨B_l, A_i⟩ = C(S) · S · B(S) · A(S) z_i      (slot polynomials: x → 1, u → M, c → SM)

**Layer 0, init** (no MLP).  Heads (query, key, value → output):

    (x, x, x)  → u: α,  c: σ      train/prefix: u = αS x_i = M₀ z,  c = σ S x_i
    (xq, x, x) → uq: α            query:        uq = αS x_q = M₀ x_q

The first head's query reads x, which is 0 on the query, so the query's u, c stay 0; the second
reads xq, which is 0 elsewhere.  σ ≈ √α is the power of two of :func:`~construct.blocks.base.c_scale`,
as in the merged form (it keeps c on the scale of the values it helps compute).

**Layer 1, Newton step + c-init** (the merged form's c-init layer, with a query copy).  With
M₀ z in u (train) and uq (query), c = σSx (train), cq = 0, and the doubling MLP on u, c, uq, cq:

    (u, x, u)        → u:  −½          u  = 2(M₀z − ½M₀SM₀z)  = M₁ z
    (u − σx, x, x)   → c:  +1          c  = 2(S u − (α/2)S³u) = S M₁ z       (σSx_i cancelled)
    (u, c, c)        → c:  −α/2σ²      (Σ_l c_l c_lᵀ = σ²S³)
    (uq, x, u)       → uq: −½          uq = M₁ x_q
    (uq, x, x)       → cq: +1          cq = S M₁ x_q                          (cq entered as 0)
    (uq, c, c)       → cq: −α/2σ²

(derivations in :mod:`construct.blocks.newton` and :mod:`construct.blocks.merged`; S M₀ S M₀ z =
α S³ u.)  The query's c is 0 here, so it is never a key or value.

**Adaptive α** (``alpha="adaptive"``; :mod:`construct.adaptive`).  No weight can carry a
data-dependent α, so layer 0 is replaced by the adaptive prefix of the other forms, and layer 1
by a seedless c-init; everything from the first order-3 layer on is unchanged.  Extra slots:
v (d), one, tau, alpha (width **7d + 5**).  Layers::

    gram        v ← S x (examples);  cq ← S x_q parked on the query   (:mod:`.gram`, p = 1: + trace/α)
    trace+α     tau ← tr(S^p), alpha ← f(tau) on the register          (:mod:`.trace_alpha`, p = 2, 3)
    scale       u ← α S z (examples), uq ← α S x_q (query), cq ← 0     (:mod:`.scale`, 2d heads)
    c-init      as layer 1 above, without the seed σ S x:

    (u, x, u)   → u:  −½        u  = 2(M₀z − ½ M₀SM₀z)     = M₁ z
    (u, x, x)   → c:  +1        c  = 2(S u − ½ α² S⁴ z)    = S M₁ z       (c entered as 0)
    (u, v, u)   → c:  −½        Σ_l u_l ⟨v_l, u_i⟩ = αS·S·S·αS z = α² S⁴ z
    (uq, x, u)  → uq: −½        uq = M₁ x_q
    (uq, x, x)  → cq: +1        cq = S M₁ x_q                             (cq entered as 0)
    (uq, v, u)  → cq: −½

(:func:`~construct.blocks.merged.adaptive_c_init_heads`).  The key v = S x is nonzero on example
tokens only (0 on the query and the register), so the sums run over examples, as the order-3
heads need; the register's u, c, uq, cq stay 0 (its x, v are 0 and it is no query of these
heads), so it never enters them either.  The α in M₀ = αS is exactly the register's α.  So
**j + 5 layers (p = 2, 3) or j + 4 (p = 1)** with residual power 4·3^j as in the fixed-α form.

**Layers 2 … j + 1, order 3** (identical weights: no α, n or data in them).  Tokens enter with
u = Mz, c = SMz (train/prefix) and uq = M x_q, cq = S M x_q (query).  The step needs, on every
token, u' = 3u − 3·MSMz + MSMSMz and c' = S u' = 3c − 3·SMSMz + SMSMSMz.  The heads used
(train/prefix tokens; the query's copies read uq/cq as queries and write uq/cq):

    head (query, key, value)   sum over train/prefix l          = (polynomial) z      writes
    (u, x, u)                  Σ_l u_l ⟨x_l, u_i⟩               MSM z                 u: −1
    (u, c, u)                  Σ_l u_l ⟨c_l, u_i⟩               M·S·SM·M z = MSMSM z  u: +⅓
    (u, x, x)                  Σ_l x_l ⟨x_l, u_i⟩               S M z      (= c)      c: +2
    (u, x, c)                  Σ_l c_l ⟨x_l, u_i⟩               SM·S·M z   = SMSM z   c: −2
    (c, u, x)                  Σ_l x_l ⟨u_l, c_i⟩               S·M·SM z   = SMSM z   c: −1
    (c, u, c)                  Σ_l c_l ⟨u_l, c_i⟩               SM·S·M·SM z = SMSMSM z c: +1

so attention writes u += −MSMz + ⅓·MSMSMz and c += 2·SMz − 3·SMSMz + SMSMSMz, and the MLP
triples u only (ReLU(v) − ReLU(−v) = v with output weight 2, :func:`~construct.blocks.base.scaling_mlp`):
u = 3Mz − 3MSMz + MSMSMz = M'z, and c = c + 2c − 3SMSMz + SMSMSMz = S M'z, using S M z = c.
Heads sharing a query and key are one head: (u, x, ·) has value [u ; 2x − 2c] (width 2d) writing
−1 into u and +1 into c; (c, u, ·) has value c − x writing +1 into c.  Three bilinear heads per
token kind, six in all: 12 ReLU heads or 6 linear ones; MLP hidden width 4d (u and uq).

**Why these heads (float64 stability).**  Exact arithmetic allows many head choices (e.g. MSMSMz
as Σ_l u_l⟨u_l, c_i⟩ and c' = 3c − 3·Σ_l x_l⟨u_l, c_i⟩ + Σ_l c_l⟨u_l, c_i⟩, an earlier version),
but they differ in how round-off propagates.  The train tokens' slots (U = [u_l], C = [c_l])
represent M and SM only through products such as U Xᵀ and U Cᵀ, and rounding excites directions
that exact arithmetic never visits (U not of the form M X with M symmetric, C ≠ S U).  Linearised at
the converged fixed point, the earlier choice amplified such errors by up to 3–4 per layer
(measured: 1e-10 relative error by j = 12 on n = d prompts, 2e-8 at j = 14).  Two things remove
that growth: (i) c is re-synchronised every layer, c' = c + 2·(Σ_l x_l⟨x_l, u⟩ − c) + …, where the
bracket is S u − c, exactly 0 in exact arithmetic, and the K1 = SMSMz term is split as ⅓ of
(c, u, x) and ⅔ of (u, x, c) (coefficients −1 and −2); with the (c, u, c) cube this makes the
linearised map of the c-error exactly 0, so c has gain 1 in its own slot and needs no MLP;
(ii) MSMSMz is taken as (u, c, u), which reads the token's own u, not its c, so a u-error
maps to minus itself (gain 1, no growth) instead of 3.  The Jacobian's spectral radius at the
converged fixed point is then 1 (measured over random X with n < d, n = d, n > d), so round-off
accumulates linearly in j, as in the Newton layers.

**Read-out** (the merged read-out on the query slots, one more Newton step, no MLP):

    (uq ; cq,  2x ; −u,  y) → out      Σ_j (2⟨M x_q, x_j⟩ − ⟨S M x_q, M x_j⟩) y_j = x_qᵀ (2M − MSM) Xᵀy

Train tokens have uq = cq = 0, so their out stays 0.

**Residual power.**  M₀ = αS has I − M₀S = I − αS² (power 1); layer 1 squares it (2), each order-3
layer cubes it, and the read-out squares it: I − M S = (I − αS²)^P with **P = 4·3^j in j + 3
layers**.  The builder takes the smallest j with 4·3^j ≥ 2^k, so the network is at least as
accurate as k Newton steps on every prompt on which α converges (|1 − αλ²| < 1 for every
eigenvalue λ > 0 of S, so a larger power is a smaller residual).  Under 1/N normalisation every
sum uses S/N; the polynomial step is homogeneous (M ↦ N·M, S ↦ S/N), so the network computes
exactly the same iterate with α_eff = α/N², like the other forms.

**Exactness and the ⅓.**  Every weight of layers 0, 1 and the read-out is a dyadic rational
(±1, 2, α, σ, α/2σ² with σ a power of two); the order-3 layer's only non-dyadic weight is the
⅓ in W_O, stored as the float fl(⅓) = ⅓·(1 − 2⁻⁵⁴).  No rescaling of the slots removes it:
with u = a·Mz and c = b·SMz (a, b constants) the tripling forces gain 3 on u, and the MSMSMz
term, which any head can only produce from one c and two u's (coefficient a²b), then needs the
weight 1/(3ab).  With dyadic weights and a dyadic α every slot value is a polynomial in the data
with dyadic coefficients, so a and b are dyadic and 1/(3ab) is not (storing c = SMz/3, say,
would need a non-dyadic weight in the c-init layer instead).  Scratch slots into which attention
writes MSMSMz, for the MLP to add back untripled, would avoid the ⅓, but the MLP is the same on
every token, so train tokens and the query need separate ones: more than the 6d + 2 width.
So the exact checks use the intended rational instead:
:func:`verify.exact_check` and :func:`verify.symbolic_check` run the order-3 layers with
the *intended* rational ±⅓ in place of the stored float (every other weight exactly as stored),
and the rounding of ⅓ is bounded separately: the stored step is
M̃' = M' − ε MSMSM with ε = 1 − 3·fl(⅓) = 2⁻⁵⁴, so I − M̃'S = R³ + ε(I − R)³ with R = I − MS:
on an eigenvector the residual changes by at most ε·|1 − r|³ ≤ 8ε ≈ 4.4e-16 per order-3 layer
(|r| ≤ 1 for a convergent α), far below float64 round-off of the layer itself.
"""

from __future__ import annotations

from ..layout import ResidualLayout
from .base import BlockSpec, Head, c_scale, doubling_mlp, eye, heads_for, scaling_mlp
from .merged import adaptive_c_init_heads, c_init_heads
from .newton import newton_heads

THIRD = 1.0 / 3.0  # fl(⅓); the exact checks read it as the rational ⅓ (module docstring)

QUERY_SLOTS = {"u": "uq", "c": "cq"}


def hyperpower_depth(k: int) -> int:
    """Smallest j ≥ 0 with 4·3^j ≥ 2^k: the number of order-3 layers that match Newton-k (k ≥ 2)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"the hyperpower form needs an integer k >= 2, got {k!r}")
    j, p = 0, 4
    while p < 2 ** k:
        j, p = j + 1, 3 * p
    return j


def hyper_init_block(layout: ResidualLayout, d: int, alpha: float, attn: str) -> BlockSpec:
    """Layer 0: u = αSz, c = σSx on train/prefix tokens; uq = αS x_q on the query."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    sigma = c_scale(alpha)
    heads = [
        Head(q={"x": eye(d, d)}, k={"x": eye(d, d)}, v={"x": eye(d, d)},
             o={"u": eye(d, d).T * alpha, "c": eye(d, d).T * sigma},
             label="init: u += α Σ_l ⟨x, x_l⟩ x_l, c += σ Σ_l ⟨x, x_l⟩ x_l (train/prefix)"),
        Head(q={"xq": eye(d, d)}, k={"x": eye(d, d)}, v={"x": eye(d, d)}, o={"uq": eye(d, d).T * alpha},
             label="init: uq += α Σ_l ⟨x_q, x_l⟩ x_l (query)"),
    ]
    return BlockSpec("init", heads_for(attn, heads), None,
                     "u ← αS z, c ← σ S z (train/prefix);  uq ← αS x_q (query)")


def _query_newton_head(d: int, coef: float) -> Head:
    return Head(q={"uq": eye(d, d)}, k={"x": eye(d, d)}, v={"u": eye(d, d)}, o={"uq": eye(d, d).T * coef},
                label=f"query: uq += {coef:g} Σ_l ⟨uq, x_l⟩ u_l")


def hyper_c_init_block(layout: ResidualLayout, d: int, alpha: float, attn: str) -> BlockSpec:
    """Layer 1: one Newton step on u and uq, and c = S M₁ z, cq = S M₁ x_q (module docstring)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    bil = (newton_heads(d) + c_init_heads(d, alpha)
           + [_query_newton_head(d, -0.5)] + c_init_heads(d, alpha, q="uq", out="cq", seed=None))
    return BlockSpec("newton+c-init", heads_for(attn, bil), doubling_mlp(layout, ["u", "c", "uq", "cq"]),
                     "u ← M₁ z, c ← S M₁ z (train/prefix);  uq ← M₁ x_q, cq ← S M₁ x_q (query)")


def adaptive_hyper_c_init_block(layout: ResidualLayout, d: int, attn: str) -> BlockSpec:
    """Layer 1 for an adaptive α: the seedless c-init on u/c and on the query's uq/cq (module doc)."""
    bil = (newton_heads(d) + adaptive_c_init_heads(d)
           + [_query_newton_head(d, -0.5)] + adaptive_c_init_heads(d, q="uq", out="cq"))
    return BlockSpec("newton+c-init", heads_for(attn, bil), doubling_mlp(layout, ["u", "c", "uq", "cq"]),
                     "u ← M₁ z, c ← S M₁ z (train/prefix);  uq ← M₁ x_q, cq ← S M₁ x_q (query)  (α from the register)")


def order3_heads(d: int, query: bool = False) -> list[Head]:
    """The three bilinear heads of the order-3 step, for train/prefix tokens or (``query``) the query."""
    u, c = ("uq", "cq") if query else ("u", "c")
    return [
        Head(q={u: eye(d, d)}, k={"x": eye(d, d)},
             v={"u": eye(d, 2 * d), "x": eye(d, 2 * d, at=d, scale=2.0), "c": eye(d, 2 * d, at=d, scale=-2.0)},
             o={u: eye(d, 2 * d).T * -1.0, c: eye(d, 2 * d, at=d).T},
             label=f"order3: {u} −= Σ_l ⟨{u}, x_l⟩ u_l;  {c} += Σ_l ⟨{u}, x_l⟩ (2x_l − 2c_l)"),
        Head(q={u: eye(d, d)}, k={"c": eye(d, d)}, v={"u": eye(d, d)}, o={u: eye(d, d).T * THIRD},
             label=f"order3: {u} += ⅓ Σ_l ⟨{u}, c_l⟩ u_l  (MSMSM z)"),
        Head(q={c: eye(d, d)}, k={"u": eye(d, d)}, v={"c": eye(d, d), "x": eye(d, d, scale=-1.0)}, o={c: eye(d, d).T},
             label=f"order3: {c} += Σ_l ⟨{c}, u_l⟩ (c_l − x_l)"),
    ]


def order3_block(layout: ResidualLayout, d: int, attn: str) -> BlockSpec:
    """One order-3 hyperpower step on every token: M ↦ 3M − 3MSM + MSMSM (module docstring)."""
    return BlockSpec(
        "order3", heads_for(attn, order3_heads(d) + order3_heads(d, query=True)),
        scaling_mlp(layout, ["u", "uq"], 3),
        "u ← 3u − 3MSMz + MSMSMz, c ← S u (train/prefix);  same on uq, cq (query)  [residual³]",
    )


def hyper_readout_block(layout: ResidualLayout, d: int, attn: str) -> BlockSpec:
    """Read-out with one more Newton step from the query's uq, cq (module docstring)."""
    head = Head(
        q={"uq": eye(d, 2 * d), "cq": eye(d, 2 * d, at=d)},
        k={"x": eye(d, 2 * d, scale=2.0), "u": eye(d, 2 * d, at=d, scale=-1.0)},
        v={"y": eye(1, 2 * d)},
        o={"out": eye(1, 2 * d).T},
        label="readout: out += Σ_j (2⟨uq, x_j⟩ − ⟨cq, u_j⟩) y_j",
    )
    return BlockSpec("hyper-readout", heads_for(attn, [head]), None, "out ← x_qᵀ (2M − MSM) Xᵀy  (query)")
