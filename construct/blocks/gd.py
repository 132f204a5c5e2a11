"""Gradient-descent layer: one step of GD from w = 0, exactly (von Oswald et al. 2023).

GD on ½‖Xw − y‖² with step size η from w₀ = 0 (the convention of :func:`verify.gd_predictions`,
no 1/n factor) is

    w_{s+1} = w_s + η Xᵀ r⁽ˢ⁾,        r⁽ˢ⁾ = y − X w_s  (the residuals; r⁽⁰⁾ = y).

The network never stores w.  It keeps the residual r_l on each train token and accumulates the
query's prediction x_qᵀ w_s in ``out``.  **Layout** (width **D = 2d + 2**)::

    x    d   x_i on train tokens; 0 on the query (so the query never enters S)
    xq   d   x_q on the query; 0 on train tokens
    r    1   r_i⁽ˢ⁾ = y_i − x_iᵀ w_s on train tokens (y_i at read-in); 0 on the query
    out  1   x_qᵀ w_s on the query; 0 on train tokens

**Heads** (query, key, value → output), no MLP:

    (x,  x, r) → r:   −η      r_i ← r_i − η Σ_l ⟨x_l, x_i⟩ r_l = r_i − η x_iᵀ Xᵀ r = y_i − x_iᵀ w_{s+1}
    (xq, x, r) → out: +η      out ← out + η Σ_l ⟨x_l, x_q⟩ r_l = x_qᵀ (w_s + η Xᵀ r) = x_qᵀ w_{s+1}

The sums run over every token, but the query has x = 0 and r = 0, so it is neither a key nor a
value: it never enters S or Xᵀr.  Train tokens have xq = 0, so their ``out`` stays 0.  Both heads
are bilinear: ReLU attention realises each as a signed pair (4 heads), linear attention as 1
(2 heads).  The weights (±η and 1) do not depend on the step, on n or on the data, so every layer
is the same block and the network is a looped transformer; s layers give s steps, and s = 0
gives the zero predictor with no layer at all.  η is a float, i.e. a dyadic rational, so the
network is exact in rational arithmetic and float64 agrees with the recurrence to round-off.

With 1/N normalisation every sum carries 1/N, which is GD with η_eff = η/N (η relative to S/N).
GD converges iff 0 < η_eff·λ_max(S) < 2; :func:`construct.alpha.check_lr` catches a fixed η
outside that range.
"""

from __future__ import annotations

from ..layout import ResidualLayout
from .base import BlockSpec, Head, eye, heads_for


def gd_block(layout: ResidualLayout, d: int, lr: float, attn: str) -> BlockSpec:
    """One GD step on the train residuals, and the query's prediction updated (module docstring)."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    heads = [
        Head(q={"x": eye(d, d)}, k={"x": eye(d, d)}, v={"r": eye(1, d)}, o={"r": eye(1, d).T * -lr},
             label="gd: r −= η Σ_l ⟨x, x_l⟩ r_l"),
        Head(q={"xq": eye(d, d)}, k={"x": eye(d, d)}, v={"r": eye(1, d)}, o={"out": eye(1, d).T * lr},
             label="gd: out += η Σ_l ⟨x_q, x_l⟩ r_l"),
    ]
    return BlockSpec("gd", heads_for(attn, heads), None, "r ← r − η X Xᵀ r (train);  out ← out + η x_qᵀ Xᵀ r (query)")
