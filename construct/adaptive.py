"""The in-network α: a piecewise-linear function of τ_p = tr((S + λI)^p) that never diverges.

Iterative Newton converges exactly when 0 < α·λ_max² < 2 (see :mod:`construct.alpha`).  An
adaptive network computes α from the prompt itself, as

    α = f(τ_p),   τ_p = tr(S^p)  (S = XᵀX + λI, p = ``alpha_trace`` ∈ {1, 2, 3}, default 3),

where f is a fixed piecewise-linear (PL) function, built into one MLP layer, that lies below

    φ(τ) = c · τ^(−2/p)          (c = :data:`ALPHA_C`).

**Why it never diverges.**  S is symmetric PSD, so τ_p = Σ_i λ_i^p ≥ λ_max^p and therefore
α·λ_max² ≤ φ(τ_p)·λ_max² = c·(λ_max^p/τ_p)^(2/p) ≤ c = 1.5 < 2, for every prompt, whatever
its scale, rank or conditioning.  (For a rank-one prompt τ_p = λ_max^p and α·λ_max² ∈ [g·c, c],
so its one direction still shrinks by |1 − α λ²| ≤ 0.5 per step.)

**Why p = 3 and c = 1.5** (measured, ``python -m benchmarks.adaptive_cost``, README): the price
of the adaptive α is the ratio (τ_p^(1/p)/λ_max)² ≥ 1 by which it undershoots 1/λ_max², up to
d^(2/p) (p = 1 costs up to log₂ d² extra Newton steps, p = 3 up to ⅔ log₂ d).  Measured on
Gaussian and κ = 100 data at d = 5…20, p = 1 needs 3–7 more steps than Newton with the safe
per-prompt α, p = 2 needs 1–3 and p = 3 needs 0–2 (c = 1) or 0–1 (c = 1.5); p = 3 costs one
layer more than p = 1 and saves 3–6 steps.  c = 1.9 would save at most one more step but leave
rank-one prompts with a factor 0.9 per step and a 5 % margin to the boundary.

**The PL function.**  f is the maximum of the tangent lines of φ (convex, decreasing) at the
nodes t_i = 2^(p·h·i) · 2^(p·e_lo), i = 0 … K−1, clipped at 0.  Tangent lines of a convex
function lie below it, so f ≤ φ everywhere.  Written with the kinks b_j (b_j = the crossing of
the tangents at t_j and t_{j+1}; b_{K−1} = the zero of the last tangent, t_{K−1}(1 + p/2))::

    f(τ) = Σ_j w_j · ReLU(b_j − τ),     w_j = |φ'(t_j)| − |φ'(t_{j+1})| > 0   (|φ'(t_K)| := 0).

On the piece before b_j the slope is −Σ_{i≥j} w_i = φ'(t_j), the tangent's slope, and every
term is **non-negative**: f is a sum of positive terms, so evaluating it in floating point has
relative error ≤ (K + 1)·u and there is no cancellation at any scale (the alternative
Σ ReLU(τ − b_j) form cancels catastrophically across many octaves).

Between two nodes, f/φ falls to g = min over the piece, which depends only on the node ratio
ρ = 2^(p·h) (:data:`NODE_STEP_LOG2` is h, in octaves of τ_p^(1/p)): with h = 2/3,
g = 0.776 (p = 3), 0.814 (p = 2), 0.855 (p = 1), i.e. at most log₂(1/g) ≤ 0.37 Newton steps lost
to the PL approximation.  The valid range is τ_p^(1/p) ∈ [2^e_lo, 2^e_hi] (the first and last
nodes); there f ≥ g·φ.  Outside it, or for a non-finite τ, :func:`pl_alpha` raises
:class:`AlphaRangeError` instead of returning the slow (below the range) or zero (above it) α
the network would use; τ = 0 exactly (every x is 0) is allowed: then S = 0 and the prediction
is 0 for any α.

**Rounding.**  The stored kinks and weights are floats: b̃_j = b_j(1 + e), w̃_j = w_j(1 + e′)
with |e|, |e′| ≤ u.  Then |f̃(τ) − f(τ)| ≤ u·f(τ) + 2u·Σ_{b_j>τ} w_j b_j, and
Σ_{j≥i} w_j b_j ≤ (2/p)·ρ·φ(t_i)/(1 − ρ^(−2/p)) ≤ C·f(τ) with C ≈ 6 for the default grid, so
f̃ ≤ (1 + 15u)·φ (measured on a dense grid: f̃/φ ≤ 1 + 5e−15, which includes the rounding of
φ itself; tests/test_adaptive.py).  The network computes τ̂_p by sums of products over d
coordinates and n tokens (of non-negative terms for p = 1, 3), with relative error δ of order
(n + d)·p·u, and φ(τ̂) = φ(τ)(1 − δ)^(−2/p).  The guarantee
α·λ_max² < 2 therefore holds as long as c·(1 + 15u)(1 − δ)^(−2/p) < 2, i.e. (with c = 1.5)
δ < 0.13 for p = 1 and δ < 0.35 for p = 3: roughly (n + d)·p·u < 0.1, so n + d < 10^14 in
float64 and n + d < 5·10^5 in float32.  The margin 2 − c = 0.5 is thus far larger than any
rounding effect.

**Ranges per dtype** (:func:`default_range`): the kinks, the weights |φ'(t)| and φ(t) must be
normal numbers and τ_p must not overflow.  float64: τ_p^(1/p) ∈ [2^−66, 2^80] ≈ [1.4e−20,
1.2e24] (K = 220 hidden units); float32: [2^−24, 2^40] ≈ [6e−8, 1.1e12] (K = 97).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ALPHA_C = 1.5            # α·λ_max² ≤ c: 0.5 from the divergence boundary (module doc, "Rounding")
NODE_STEP_LOG2 = 2.0 / 3.0  # h: tangent nodes every h octaves of τ_p^(1/p)
TRACE_POWERS = (1, 2, 3)
DEFAULT_TRACE = 3
# valid range of τ_p^(1/p) as log2 bounds, per dtype (module doc, "Ranges per dtype")
_RANGES = {torch.float64: (-66, 80), torch.float32: (-24, 40)}

__all__ = [
    "AlphaRangeError", "ALPHA_C", "NODE_STEP_LOG2", "TRACE_POWERS", "DEFAULT_TRACE", "PLAlpha",
    "default_range", "pl_function", "trace_power", "pl_alpha",
]


class AlphaRangeError(ValueError):
    """A prompt's τ_p = tr(S^p) lies outside the adaptive α's valid range (or overflows)."""


def default_range(dtype: torch.dtype) -> tuple[int, int]:
    """(e_lo, e_hi): the valid range of τ_p^(1/p) is [2^e_lo, 2^e_hi] for a model of this dtype."""
    if dtype not in _RANGES:
        raise ValueError(f"adaptive α supports float64 and float32 models, got {dtype}")
    return _RANGES[dtype]


@dataclass(frozen=True)
class PLAlpha:
    """f(τ) = Σ_j w_j ReLU(b_j − τ): the PL lower bound of c·τ^(−2/p) on the nodes ``nodes``."""

    p: int
    c: float
    nodes: tuple[float, ...]    # tangent points t_i (float64)
    kinks: tuple[float, ...]    # b_j (float64, increasing)
    weights: tuple[float, ...]  # w_j > 0 (float64)
    log2_range: tuple[int, int]

    @property
    def tau_lo(self) -> float:
        return self.nodes[0]

    @property
    def tau_hi(self) -> float:
        return self.nodes[-1]

    @property
    def width(self) -> int:
        return len(self.kinks)

    def phi(self, tau):
        return self.c * np.asarray(tau, dtype=np.float64) ** (-2.0 / self.p)

    def __call__(self, tau) -> np.ndarray:
        """f(τ) in float64 (no range check; see :func:`pl_alpha`)."""
        t = np.asarray(tau, dtype=np.float64)[..., None]
        b = np.asarray(self.kinks)
        w = np.asarray(self.weights)
        return (w * np.maximum(b - t, 0.0)).sum(-1)


def pl_function(p: int = DEFAULT_TRACE, log2_range: tuple[int, int] = _RANGES[torch.float64],
                c: float = ALPHA_C, step: float = NODE_STEP_LOG2) -> PLAlpha:
    """The PL α function for τ_p with τ_p^(1/p) ∈ [2^lo, 2^hi] (module doc)."""
    if p not in TRACE_POWERS:
        raise ValueError(f"alpha_trace must be one of {TRACE_POWERS} (α = f(tr(S^p))), got {p!r}")
    lo, hi = log2_range
    if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
        raise ValueError(f"alpha_range must be two ints lo < hi (log2 bounds of tr(S^p)^(1/p)), got {log2_range!r}")
    K = int(math.floor((hi - lo) / step + 1e-9)) + 1
    e = lo + step * np.arange(K)          # log2 of τ^(1/p) at the nodes
    t = 2.0 ** (p * e)                    # nodes in τ_p units
    phi = c * 2.0 ** (-2.0 * e)           # φ(t) = c t^(-2/p)
    slope = (2.0 / p) * phi / t           # |φ'(t)|
    # crossing of the tangents at t_j and t_{j+1}: φ_j − s_j(τ − t_j) = φ_{j+1} − s_{j+1}(τ − t_{j+1})
    b = np.empty(K)
    b[:-1] = (phi[:-1] + slope[:-1] * t[:-1] - phi[1:] - slope[1:] * t[1:]) / (slope[:-1] - slope[1:])
    b[-1] = t[-1] * (1.0 + p / 2.0)       # zero of the last tangent
    w = slope - np.append(slope[1:], 0.0)
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(w)) and np.all(w > 0) and np.all(np.diff(b) > 0)):
        raise ValueError(f"alpha_range {log2_range} is outside what float64 can represent for p={p}")
    return PLAlpha(p, float(c), tuple(t.tolist()), tuple(b.tolist()), tuple(w.tolist()), (lo, hi))


def trace_power(X: torch.Tensor, p: int, lam: float = 0.0) -> torch.Tensor:
    """τ_p = tr((XᵀX + λI)^p) per prompt, float64, X (B, n, d) -> (B,)."""
    X = X.to(torch.float64)
    d = X.shape[-1]
    S = X.transpose(-1, -2) @ X + lam * torch.eye(d, dtype=torch.float64, device=X.device)  # (B, d, d)
    if p == 1:
        return torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)
    if p == 2:
        return (S * S).sum((-2, -1))
    if p == 3:
        return ((S @ S) * S).sum((-2, -1))
    raise ValueError(f"alpha_trace must be one of {TRACE_POWERS}, got {p!r}")


def pl_alpha(fn: PLAlpha, tau: torch.Tensor) -> torch.Tensor:
    """α = f(τ) per prompt (float64), raising :class:`AlphaRangeError` outside the valid range."""
    t = tau.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(t) | ((t != 0) & ((t < fn.tau_lo) | (t > fn.tau_hi)))
    if bad.any():
        i = int(torch.nonzero(bad.reshape(-1))[0])
        v = float(t.reshape(-1)[i])
        root = v ** (1.0 / fn.p) if math.isfinite(v) and v >= 0 else v
        lo, hi = fn.log2_range
        raise AlphaRangeError(
            f"adaptive alpha: prompt {i} has tr(S^{fn.p})^(1/{fn.p}) = {root:.4g}, outside the valid range "
            f"[2^{lo}, 2^{hi}] = [{2.0 ** lo:.3g}, {2.0 ** hi:.3g}] of the built-in alpha function "
            f"({int(bad.sum())} prompt(s) affected; S overflows or the PL function would give a wrong alpha). "
            "Rescale X (and y) by a power of two into the range, or rebuild with a wider alpha_range "
            "(float64 only)."
        )
    return torch.from_numpy(fn(t.numpy())).to(tau.device)
