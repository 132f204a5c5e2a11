"""Choosing the Newton step size α, and catching a fixed α that diverges.

Iterative Newton starts at M₀ = αS and its error obeys the exact identity

    I − M_k S = (I − α S²)^(2^k).

Every eigenvalue λ of S contributes a factor (1 − αλ²)^(2^k), so the iteration converges (to the
pseudo-inverse on the range of S) exactly when **0 < α·λ_max(S)² < 2**.

* The paper's rule α = 2/‖SSᵀ‖₂ = 2/λ_max² sits *on* the boundary: the top eigendirection has
  factor (1 − 2)^(2^k) = 1 for every k, so its error never shrinks and Newton never recovers it.
* The released code's rule α = 1/‖SSᵀ‖_F = 1/sqrt(Σλ_i⁴) is strictly inside (αλ_max² ≤ 1).
* :func:`safe_alpha` uses α = margin · 2/λ_max² with margin 0.5 by default, i.e. αλ_max² = 1,
  which kills the top direction in one step and is far from the boundary.

A hand-built network bakes one α into its weights.  On data whose λ_max(S) is larger than
expected, αλ_max² ≥ 2 and the output explodes; :func:`check_alpha` detects that per prompt and
raises :class:`AlphaDivergenceError` (or warns) with the numbers and the fix.
:func:`fixed_alpha_for_distribution` picks a fixed α that is safe with a chosen probability.

With 1/N attention normalisation the network runs Newton on S/N, which equals Newton on S with
α_eff = α′/N² (N = tokens attended, see :mod:`construct.builder`).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch

ALPHA_RULES = ("paper", "code", "safe")
# α·λ_max² is computed with a relative error of a few ulps × d (eigvalsh); ratios within this
# slack of 2 are the boundary itself, which never converges (the paper's α = 2/λ_max² lands
# there) and must not slip through as "converges" by rounding.
BOUNDARY_SLACK = 1e-12


class AlphaDivergenceError(ValueError):
    """A fixed α does not converge on the given prompt(s): α·λ_max(S)² ≥ 2."""


class AlphaDivergenceWarning(RuntimeWarning):
    """Warning form of :class:`AlphaDivergenceError`."""


def _as_tensor(A) -> torch.Tensor:
    from .validate import as_tensor  # NaN/inf and type checks with clear messages

    return as_tensor("X", A)


def gram(X, lam: float = 0.0) -> torch.Tensor:
    """S = XᵀX + λI for X of shape (..., n, d) -> (..., d, d)."""
    from .validate import check_real

    check_real("lam", lam, nonneg=True)
    X = _as_tensor(X)
    S = X.transpose(-1, -2) @ X
    if lam:
        S = S + lam * torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    return S


def lambda_max(S) -> torch.Tensor:
    """Largest eigenvalue of symmetric PSD S (..., d, d), computed in float64 -> (...)."""
    S = _as_tensor(S)
    return torch.linalg.eigvalsh(S.to(torch.float64))[..., -1].clamp(min=0.0).to(S.dtype)


def alpha_from_rule(S, rule: str | float, margin: float = 0.5) -> torch.Tensor:
    """α for each Gram matrix S (..., d, d) under a rule -> (...).

    ``"paper"``: 2/‖SSᵀ‖₂ (on the divergence boundary); ``"code"``: 1/‖SSᵀ‖_F (released code);
    ``"safe"``: margin·2/λ_max²; a positive float: that fixed α everywhere.
    A zero S (no data) gets α = 0, which makes M = 0 and the prediction 0.
    """
    S = _as_tensor(S)
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if not math.isfinite(rule) or rule <= 0:
            raise ValueError(f"alpha must be a finite positive number, got {rule!r}")
        return torch.full(S.shape[:-2], float(rule), dtype=S.dtype, device=S.device)
    if rule not in ALPHA_RULES:
        raise ValueError(f"alpha rule must be a positive float or one of {ALPHA_RULES}, got {rule!r}")
    if not 0 < margin < 1:
        raise ValueError(f"margin must lie in (0, 1), got {margin!r}")
    if rule == "code":
        return rule_alpha(rule, SS=S @ S.transpose(-1, -2), margin=margin)
    return rule_alpha(rule, lmax=lambda_max(S), margin=margin)


def rule_alpha(rule: str, *, lmax: torch.Tensor | None = None, SS: torch.Tensor | None = None,
               evals: torch.Tensor | None = None, margin: float = 0.5) -> torch.Tensor:
    """α of a (validated) rule from what the caller already has, without checking its inputs again.

    ``"code"`` needs ‖SSᵀ‖_F: from ``SS`` = S Sᵀ (..., d, d) or from the eigenvalues ``evals``
    (..., d) of symmetric S (‖SSᵀ‖_F = sqrt(Σλ⁴)).  ``"paper"`` / ``"safe"`` need λ_max: from
    ``lmax`` (...) or ``evals`` (ascending).  Used by :func:`alpha_from_rule` and by the batched
    references, which reuse one eigendecomposition or one S·S product for the rule, the
    divergence check and the Newton iteration.  A zero S gets α = 0.
    """
    if rule == "code":
        if SS is not None:
            nrm = torch.linalg.matrix_norm(SS, ord="fro")
        elif evals is not None:
            nrm = (evals * evals).square().sum(-1).sqrt()
        else:
            raise ValueError("rule 'code' needs SS or evals")
    else:
        if lmax is None:
            if evals is None:
                raise ValueError(f"rule {rule!r} needs lmax or evals")
            lmax = evals[..., -1].clamp(min=0.0)
        nrm = lmax * lmax / (2.0 if rule == "paper" else 2.0 * margin)
    safe = torch.where(nrm > 0, nrm, torch.ones_like(nrm))
    return torch.where(nrm > 0, 1.0 / safe, torch.zeros_like(nrm))


def safe_alpha(X, margin: float = 0.5, lam: float = 0.0) -> torch.Tensor:
    """A convergent α for each prompt: margin · 2/λ_max(XᵀX + λI)².

    ``X`` is (n, d) or (B, n, d); returns a scalar tensor or (B,).  Any α with
    0 < α·λ_max² < 2 converges; ``margin`` in (0, 1) sets how far inside that range to stay.
    """
    return alpha_from_rule(gram(X, lam), "safe", margin)


def fixed_alpha_for_distribution(
    sample_X: Callable[[int, np.random.Generator], np.ndarray],
    prob: float = 0.999,
    margin: float = 0.5,
    n_samples: int = 20000,
    seed: int = 0,
    lam: float = 0.0,
) -> float:
    """A single α that converges on a prompt drawn from a distribution with probability ≥ ``prob``.

    ``sample_X(m, rng)`` returns m prompts, shape (m, n, d).  We estimate the ``prob``-quantile
    q of λ_max(S) by Monte Carlo and return α = margin·2/q², so αλ_max² < 2 whenever λ_max < q/√margin;
    the estimate is conservative by the factor 1/margin.  Example: d=20, n=40, x ~ N(0, I) gives
    q ≈ 141 and α ≈ 5e-5 for margin 0.5 (the boundary value 2/q² ≈ 1.0e-4).
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must lie in (0, 1), got {prob!r}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must lie in (0, 1], got {margin!r}")
    if n_samples < 10:
        raise ValueError(f"n_samples must be at least 10, got {n_samples}")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    rng = np.random.default_rng(seed)
    lms = []
    left = n_samples
    while left > 0:
        m = min(left, 4096)
        X = np.asarray(sample_X(m, rng), dtype=np.float64)
        if X.ndim != 3 or X.shape[0] != m:
            raise ValueError(f"sample_X({m}, rng) must return shape ({m}, n, d), got {X.shape}")
        lms.append(lambda_max(gram(torch.from_numpy(X), lam)).numpy())
        left -= m
    q = float(np.quantile(np.concatenate(lms), prob))
    if q <= 0:
        raise ValueError("sampled prompts have λ_max(S) = 0; any α converges trivially, pick one explicitly")
    return margin * 2.0 / (q * q)


def alpha_ratio(X, alpha: float, lam: float = 0.0, norm: float | torch.Tensor = 1.0) -> torch.Tensor:
    """α_eff · λ_max(S + λI)² per prompt, with α_eff = α / norm² (norm = N under 1/N attention)."""
    from .validate import check_real

    check_real("alpha", alpha, positive=True)
    check_real("lam", lam, nonneg=True)
    lm = lambda_max(gram(X, lam))
    return (alpha / torch.as_tensor(norm, dtype=lm.dtype) ** 2) * lm * lm


def check_alpha(X, alpha: float, lam: float = 0.0, norm: float | torch.Tensor = 1.0, on_diverge: str = "raise") -> torch.Tensor:
    """Detect prompts on which the fixed α does not converge (α_eff·λ_max² ≥ 2, up to round-off).

    ``on_diverge``: ``"raise"`` (default) raises :class:`AlphaDivergenceError`, ``"warn"`` issues an
    :class:`AlphaDivergenceWarning`, ``"ignore"`` only returns the mask.  Returns a bool tensor,
    True where the prompt diverges.
    """
    if on_diverge not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_diverge must be 'raise', 'warn' or 'ignore', got {on_diverge!r}")
    r = alpha_ratio(X, alpha, lam, norm)
    bad = r >= 2.0 * (1.0 - BOUNDARY_SLACK)
    if bad.any() and on_diverge != "ignore":
        idx = torch.nonzero(bad.reshape(-1)).flatten()
        worst = float(r.max())
        msg = (
            f"fixed alpha={alpha:g} diverges on {int(bad.sum())} prompt(s) (first index {int(idx[0])}): "
            f"alpha_eff*lambda_max(S)^2 = {worst:.4g} >= 2, so Newton's error along the top eigenvector "
            f"is multiplied by |1 - alpha_eff*lambda^2|^(2^k) >= 1 and never shrinks. Rebuild with a smaller alpha, e.g. "
            f"construct.safe_alpha(X) per prompt or construct.fixed_alpha_for_distribution(...), "
            f"or rescale the data."
        )
        if on_diverge == "raise":
            raise AlphaDivergenceError(msg)
        warnings.warn(msg, AlphaDivergenceWarning, stacklevel=2)
    return bad


def check_lr(X, lr: float, norm: float | torch.Tensor = 1.0, on_diverge: str = "raise") -> torch.Tensor:
    """Detect prompts on which a fixed GD step size diverges: lr_eff·λ_max(S) ≥ 2 (lr_eff = lr/norm).

    GD's error along an eigenvector of S with eigenvalue λ is multiplied by (1 − lr_eff·λ) per
    step, so it converges exactly when 0 < lr_eff·λ_max < 2.  ``on_diverge`` as in
    :func:`check_alpha` (the error is the same :class:`AlphaDivergenceError`).  Returns the bool
    mask of diverging prompts.
    """
    from .validate import check_real

    if on_diverge not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_diverge must be 'raise', 'warn' or 'ignore', got {on_diverge!r}")
    check_real("lr", lr, positive=True)
    lm = lambda_max(gram(X))
    r = (lr / torch.as_tensor(norm, dtype=lm.dtype)) * lm
    bad = r >= 2.0 * (1.0 - BOUNDARY_SLACK)
    if bad.any() and on_diverge != "ignore":
        idx = torch.nonzero(bad.reshape(-1)).flatten()
        msg = (
            f"fixed lr={lr:g} diverges on {int(bad.sum())} prompt(s) (first index {int(idx[0])}): "
            f"lr_eff*lambda_max(S) = {float(r.max()):.4g} >= 2, so GD's error along the top eigenvector is "
            f"multiplied by |1 - lr_eff*lambda| >= 1 every step and never shrinks. Rebuild with a smaller lr "
            f"(below 2/lambda_max(S)) or rescale the data."
        )
        if on_diverge == "raise":
            raise AlphaDivergenceError(msg)
        warnings.warn(msg, AlphaDivergenceWarning, stacklevel=2)
    return bad
