"""Closed-form linear layer probes: one least-squares read-out per layer, all layers at once.

Fu et al. (2024) train a fresh linear read-out per layer by SGD with the rest of the network
frozen.  The read-out is linear and the loss is squared error, so the optimum has a closed form;
we solve it directly (float64, with a small ridge for stability) for every layer in one batched
solve, which takes well under a second instead of an SGD run per layer.

Pipeline::

    H = residual_streams(model, X, y)        # (L+1, B, n, D): after the read-in and each layer,
                                             # at the token where prediction t is read
    probes = fit_probes(H, y, ridge=1e-6)    # LayerProbes: weight (L+1, D), bias (L+1,)
    P = probes(residual_streams(model, Xte, yte))   # (L+1, B', n) all-prefix predictions

or in one call ``probe_predictions(model, (X, y), (Xte, yte))``.  Layer 0 is the embedding
(read-in + positions), layer l the output of transformer layer l.

The fit, per layer l, over all N = B·n (prompt, position) rows (or the positions chosen)::

    minimise  Σ_rows (h_rowᵀ w_l + c_l − y_row)² + λ_l ‖w_l‖²,   λ_l = ridge · tr(H̄_lᵀH̄_l) / D

with H̄_l the column-centred features (so the intercept c_l is not shrunk).  The normal
equations (H̄ᵀH̄ + λI) w = H̄ᵀȳ are formed and solved for all L+1 layers as one batched
(L+1, D, D) Cholesky solve.  ``ridge`` is relative to the mean feature variance, so it is
scale-free; 1e-6 changes a well-determined read-out by ~1e-6 relative and tames the directions
the stream does not use (LayerNorm'd or constant slots make H̄ᵀH̄ singular).

Where the stream comes from (:func:`residual_streams` dispatches on the model):

* :class:`construct.regressor.GargRegressor` (trained GPT-2-style): its hooked
  ``residual_streams(X, y, at="x")`` -- the x_t tokens, where prediction t is read.
* :class:`construct.model.NewtonTransformer` (hand-built): the query token of every prefix
  prompt, run all at once with a key mask as in its ``predict_all``.

Shapes: L layers, B prompts, n examples, D residual width, d data dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_F64 = torch.float64
DEFAULT_RIDGE = 1e-6
DEFAULT_CHUNK = 1024  # prompts per forward pass when collecting streams


@dataclass(frozen=True)
class LayerProbes:
    """One linear read-out per layer: prediction = h·weight[l] + bias[l]."""

    weight: torch.Tensor  # (L+1, D) float64
    bias: torch.Tensor    # (L+1,) float64
    ridge: float          # relative ridge used in the fit
    train_nmse: torch.Tensor  # (L+1,) fit-set mean squared error / var(y), for the record

    def __post_init__(self) -> None:
        if self.weight.dim() != 2 or self.bias.shape != self.weight.shape[:1]:
            raise ValueError(f"weight must be (L+1, D) and bias (L+1,), got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}")

    @property
    def n_layers(self) -> int:
        """L + 1 read-outs (embedding + every layer)."""
        return self.weight.shape[0]

    @property
    def width(self) -> int:
        return self.weight.shape[1]

    def __call__(self, H: torch.Tensor) -> torch.Tensor:
        """Streams (L+1, ..., D) -> predictions (L+1, ...)."""
        if H.dim() < 2 or H.shape[0] != self.n_layers or H.shape[-1] != self.width:
            raise ValueError(
                f"streams must have shape (L+1={self.n_layers}, ..., D={self.width}), got {tuple(H.shape)}"
            )
        H = H.to(_F64)
        lead = H.shape[1:-1]
        flat = H.reshape(self.n_layers, -1, self.width)  # (L+1, R, D)
        out = torch.einsum("lrd,ld->lr", flat, self.weight) + self.bias[:, None]
        return out.reshape(self.n_layers, *lead)


def fit_probes(H: torch.Tensor, y: torch.Tensor, ridge: float = DEFAULT_RIDGE, positions: slice | None = None) -> LayerProbes:
    """Fit every layer's read-out in closed form.  H (L+1, B, n, D), y (B, n).

    ``positions`` (a slice over t) restricts the fit to those positions; default all of them,
    as in the training loss (squared error at every x position).
    """
    if not isinstance(H, torch.Tensor) or H.dim() != 4:
        raise ValueError(f"H must be a (L+1, B, n, D) tensor of residual streams, got {getattr(H, 'shape', type(H))}")
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(H.shape[1:3]):
        raise ValueError(f"y must have shape (B, n) = {tuple(H.shape[1:3])} to match H, got {tuple(getattr(y, 'shape', ()))}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge <= 0:
        raise ValueError(f"ridge must be a finite number > 0 (relative to the mean feature variance), got {ridge!r}")
    if positions is not None:
        H, y = H[:, :, positions], y[:, positions]
    L1, B, n, D = H.shape
    if B * n < 2:
        raise ValueError("need at least 2 (prompt, position) rows to fit a probe")
    Hf = H.reshape(L1, B * n, D).to(_F64)  # (L+1, N, D)
    yf = y.reshape(B * n).to(_F64)  # (N,)
    if not torch.isfinite(Hf).all():
        raise ValueError("residual streams contain NaN/inf; cannot fit probes")
    mu = Hf.mean(1, keepdim=True)  # (L+1, 1, D)
    Hc = Hf - mu
    ybar = yf.mean()
    yc = yf - ybar
    G = Hc.transpose(1, 2) @ Hc  # (L+1, D, D)
    rhs = Hc.transpose(1, 2) @ yc  # (L+1, D)
    scale = torch.diagonal(G, dim1=1, dim2=2).mean(1).clamp(min=1e-30)  # (L+1,)
    A = G + (ridge * scale)[:, None, None] * torch.eye(D, dtype=_F64)
    Lc, info = torch.linalg.cholesky_ex(A)
    if bool((info == 0).all()):
        w = torch.cholesky_solve(rhs[..., None], Lc)[..., 0]  # (L+1, D)
    else:  # numerically indefinite (should not happen with ridge > 0): fall back to LU
        w = torch.linalg.solve(A, rhs)
    b = ybar - (mu[:, 0] * w).sum(-1)  # (L+1,)
    resid = (Hc @ w[..., None])[..., 0] - yc  # (L+1, N)
    var = (yc**2).mean().clamp(min=1e-300)
    return LayerProbes(weight=w, bias=b, ridge=float(ridge), train_nmse=(resid**2).mean(1) / var)


# ------------------------------------------------------------------------------ streams
def _newton_prefix_streams(model, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Query-token stream of every prefix prompt of a NewtonTransformer: (L+1, B, n, D).

    Prompt (b, t) holds examples 0..t−1 and x_t as the query, run grouped by length exactly as
    ``NewtonTransformer.predict_all`` runs it (:meth:`~construct.model.NewtonTransformer.prefix_prompts`).
    """
    X, y, _ = model._check(X, y, None)
    B = X.shape[0]
    parts = []
    for lo, hi, tokens, key_mask in model.prefix_prompts(X, y):
        R = model.transformer.residual_streams(tokens, key_mask)  # (L+1, B·G, P+T+1, D)
        parts.append(R[:, :, -1].reshape(R.shape[0], B, hi - lo, R.shape[-1]))
    return torch.cat(parts, dim=2)


@torch.no_grad()
def residual_streams(model, X: torch.Tensor, y: torch.Tensor, chunk: int = DEFAULT_CHUNK,
                     positions: slice | None = None) -> torch.Tensor:
    """Every layer's residual stream where prediction t is read: (L+1, B, n, D), float64.

    Supports the trained :class:`~construct.regressor.GargRegressor` (x_t tokens) and the
    hand-built :class:`~construct.model.NewtonTransformer` (query token of each prefix prompt).
    Runs ``chunk`` prompts per forward pass to bound memory; ``positions`` (a slice over t, e.g.
    ``slice(-1, None)`` for the last one) keeps only those positions of each chunk.
    """
    from construct.model import NewtonTransformer
    from construct.regressor import GargRegressor

    if isinstance(model, GargRegressor):
        def fn(Xc, yc):
            return model.residual_streams(Xc, yc, at="x")
    elif isinstance(model, NewtonTransformer):
        def fn(Xc, yc):
            return _newton_prefix_streams(model, Xc.to(model.dtype), yc.to(model.dtype))
    else:
        raise TypeError(
            f"no residual-stream adapter for {type(model).__name__}; probes support GargRegressor "
            "and NewtonTransformer (write an adapter returning (L+1, B, n, D) for other models)"
        )
    if X.dim() != 3 or y.shape != X.shape[:2]:
        raise ValueError(f"X must be (B, n, d) and y (B, n), got {tuple(X.shape)} and {tuple(y.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    sel = slice(None) if positions is None else positions
    parts = [fn(X[i:i + chunk], y[i:i + chunk])[:, :, sel].to(_F64) for i in range(0, X.shape[0], chunk)]
    return torch.cat(parts, dim=1)


def probe_predictions(model, fit: tuple[torch.Tensor, torch.Tensor], evaluate: tuple[torch.Tensor, torch.Tensor],
                      ridge: float = DEFAULT_RIDGE, chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, LayerProbes]:
    """Fit probes on ``fit = (X, y)`` and predict on held-out ``evaluate = (X', y')``.

    Returns ``(P, probes)`` with P (L+1, B', n): layer l's all-prefix predictions.
    """
    probes = fit_probes(residual_streams(model, *fit, chunk=chunk), fit[1], ridge=ridge)
    return probes(residual_streams(model, *evaluate, chunk=chunk)), probes
