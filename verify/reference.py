"""Reference algorithms for in-context linear regression, batched over prompts and all prefixes.

These are the classical algorithms that the hand-built and the trained transformers are compared
against: Iterative Newton, gradient descent (GD), online GD, conjugate gradient (CG), OLS and
ridge.  Everything is computed in float64 and returned in the input's floating dtype (integer
input gives float64); numpy in gives numpy out.

Glossary of shapes: B prompts, n examples per prompt, d data dimension, K = max Newton steps,
J = max GD steps, |steps| = number of step counts asked for, P = B·n prefixes.

Conventions
-----------
* A prompt is ``X`` (B, n, d) and ``y`` (B, n); S = XᵀX and b = Xᵀy.
* **All-prefix convention.** ``P = newton_predictions(X, y, steps)`` has shape
  (len(steps), B, n) and ``P[s, b, t]`` is the prediction for ``x_t`` (0-indexed) made from the
  first t examples (0 .. t−1) after ``steps[s]`` iterations, so position 0 always predicts 0.
  This is the convention of Garg et al. and of the paper's released code.  Each prefix has its own
  S_t = Σ_{i<t} x_i x_iᵀ and b_t = Σ_{i<t} y_i x_i, and a string α rule (``"paper"``, ``"code"``,
  ``"safe"``, from :func:`construct.alpha.alpha_from_rule`) is applied to each prefix's S_t.
* **Iterative Newton:** M_0 = αS, M_j = 2M_{j−1} − M_{j−1} S M_{j−1}, w_k = M_k b.  Exact
  identity: I − M_k S = (I − αS²)^(2^k), so M_k has eigenvalue (1 − (1 − αλ²)^(2^k))/λ on an
  eigenvector of S with eigenvalue λ > 0 (and 0 for λ = 0).  Ridge (``lam`` = λ_r ≥ 0) runs the
  same on S + λ_r·I.
* **GD** from w_0 = 0: w ← w − η(S w − b).  There is no 1/n factor (the loss is ½‖Xw − y‖²,
  as in the paper's code), so η must satisfy 0 < η·λ_max(S) < 2 to converge.  ``lr="auto"``
  uses η = 1/λ_max(S_t) per prefix (the classical 1/L step; it removes the top eigendirection in
  one step and never diverges); a float is a fixed η for all prefixes (the paper's GD heatmap used
  η = 0.01 at d = 20, n = 40).
* **Online GD** from w = 0: one example per step in order, w ← w − η_i(x_iᵀw − y_i)x_i with
  η_i = 1/‖x_i‖² (a zero x_i is skipped).
* **CG** on S w = b from w_0 = 0, frozen once the residual is ≤ 1e-13·‖b‖ or after d steps (where
  it terminates in exact arithmetic).
* **OLS:** min-norm w = S⁺b (LAPACK gelsd on the zero-padded prefix).  **Ridge:** (S + λ_r I)⁻¹b.

Methods and their cost (flops; the "loop" pays Python overhead per prompt, prefix and step)
------------------------------------------------------------------------------------------
=====================  =============================================  ======================
path                   what it does                                   cost
=====================  =============================================  ======================
prefix statistics      cumulative sums of x xᵀ and y x                O(B·n·d²)
Newton ``auto``        (default) spectral or batched, whichever the   the cheaper of the two
                       cost model of ``newton_auto_method`` says
Newton ``batched``     the recurrence on all B·n prefixes, a cache-   O(B·n·K·d³)
                       sized chunk of prefixes at a time, each step
                       one fused ``baddbmm`` (2M − (MS)M)
Newton ``loop``        per prompt, per prefix numpy recurrence        O(B·n·K·d³), B·n·K
                       (what the official code does)                  Python iterations
Newton ``spectral``    one eigh per prefix, then every step count     O(B·n·d³ + B·n·K·d)
                       by e_{k+1} = e_k(2 − e_k) on the eigenvalues
GD ``batched``         Σ_{j<s} xᵀA^j ηb with A = I − ηS by baby-step  O(B·n·(log J·d³ + J·d))
                       giant-step powers of A (no eigendecomposition)
GD ``stepwise``        the recurrence on all prefixes, one step at a  O(B·n·J·d²), J steps
                       time
GD ``loop``            per prompt, per prefix numpy recurrence        O(B·n·J·d²), B·n·J
                                                                      Python iterations
GD ``spectral``        one eigh per prefix; baby-step giant-step      O(B·n·d³ + B·n·J·d)
                       powers of the eigenvalues (or the closed form  (or B·n·|steps|·d)
                       per step when B·n·J is too large to store)
online GD              sequential over n, batched over B              O(B·n·d)
CG ``batched``/loop    the recurrence on all prefixes                 O(B·n·K·d²)
OLS                    gelsd on B·n zero-padded (n, d) problems       O(B·n·n·d²)
ridge                  Cholesky-free ``solve`` of (S + λ_r I) w = b   O(B·n·d³)
=====================  =============================================  ======================

Memory is O(B·n·d²) (all prefix Gram matrices) plus O(B·n·J) for GD's baby-step giant-step.

Reuse and validation.  Each public call validates X and y once (the isfinite scan included) and
never re-validates what it derives from them.  The α rule, the divergence check of a fixed α or
η and GD's ``lr="auto"`` all read one source: the eigenvalues of a :class:`PrefixSpectrum`
(``"code"`` = 1/sqrt(Σλ⁴), λ_max = the top eigenvalue), or, on the batched path, the S·S
product that is also Newton's first M_0·S (``"code"``) or one eigvalsh of the prefix Gram
matrices (``"paper"``, ``"safe"``, a checked fixed rate).  Prefix statistics, eigh and the
Newton recurrence run over cache-sized chunks of prefixes (``_CHUNK_BYTES``).

Numerics of the spectral path.  With x = αλ² (Newton) or x = ηλ (GD) and r = 1 − x, both
methods need h_p(x) = (1 − r^p)/x = Σ_{j<p} r^j (p = 2^k for Newton, p = s for GD): Newton's
eigenvalue is αλ·h_{2^k}(αλ²), GD's is η·h_s(ηλ).  We evaluate |r|^p = exp(p·log|r|) with
``log1p(−x)`` for x ≤ 1 and ``log(x − 1)`` for x > 1, and 1 − r^p = −expm1(p·log|r|), so small
x (rank-deficient or ill-conditioned S) loses no digits and λ = 0 never divides.  Eigenvalues
≤ d·eps·λ_max are taken as exact zeros of S: b_t has no component along them in exact arithmetic,
so they contribute nothing (as in a pseudo-inverse).  Spectral Newton needs 2^k to be a finite
float, so k ≤ 1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from construct.alpha import ALPHA_RULES, BOUNDARY_SLACK, AlphaDivergenceError, alpha_from_rule, lambda_max, rule_alpha
from construct.validate import as_tensor, check_int, check_prompts, check_real

__all__ = [
    "residual_power_matrix", "residual_power_predict", "residual_power_predictions",
    "newton_predictions", "gd_predictions", "online_gd_predictions", "cg_predictions",
    "ols_predictions", "ridge_predictions", "newton_matrix", "newton_predict", "ols_predict",
    "prefix_stats", "prefix_spectrum", "PrefixSpectrum", "newton_matrices", "newton_auto_method",
]

_F64 = torch.float64
NEWTON_METHODS = ("auto", "batched", "spectral", "loop")
GD_METHODS = ("batched", "stepwise", "spectral", "loop")
CG_METHODS = ("batched", "loop")
MAX_SPECTRAL_NEWTON_STEPS = 1000  # 2^k must be a finite float64
_BSGS_MAX_ELEMENTS = 1 << 24  # B·n·J above this: GD spectral uses the per-step closed form
_CG_RTOL = 1e-13  # CG stops once ‖r‖ ≤ _CG_RTOL·‖b‖
_CHUNK_BYTES = 1 << 19  # working set of one chunk of prefixes: fits the per-core L2 cache (1 MiB here)


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Out:
    """How to hand results back: dtype, numpy-ness and whether to drop an added batch axis."""

    dtype: torch.dtype
    numpy: bool
    squeeze: bool = False

    def __call__(self, out: torch.Tensor):
        out = out.to(self.dtype)
        if self.squeeze:
            out = out.squeeze(-1) if out.dim() else out
        return out.detach().cpu().numpy() if self.numpy else out


def _out_spec(X, squeeze: bool = False) -> _Out:
    if isinstance(X, torch.Tensor):
        dtype = X.dtype if X.is_floating_point() else _F64
        return _Out(dtype, False, squeeze)
    if isinstance(X, np.ndarray) and X.dtype.kind == "f":
        return _Out(torch.from_numpy(np.zeros(0, dtype=X.dtype)).dtype, True, squeeze)
    return _Out(_F64, isinstance(X, (np.ndarray, list, tuple)), squeeze)


def _prompts(X, y, min_n: int = 1) -> tuple[torch.Tensor, torch.Tensor, _Out]:
    """Validated float64 X (B, n, d), y (B, n) and the output spec of X."""
    out = _out_spec(X)
    X, y, _ = check_prompts(X, y, dtype=_F64, min_n=min_n)
    return X, y, out


def _single_query(X, y, x_query) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Out]:
    """Like :func:`_prompts` for one query per prompt; an unbatched (n, d), (n,), (d,) is allowed."""
    X, y, x_query = (np.asarray(a, dtype=np.float64) if isinstance(a, (list, tuple)) else a for a in (X, y, x_query))
    squeeze = False
    Xd = X.dim() if isinstance(X, torch.Tensor) else np.ndim(X)
    if Xd == 2:  # one prompt without a batch axis
        yd = y.dim() if isinstance(y, torch.Tensor) else np.ndim(y)
        qd = x_query.dim() if isinstance(x_query, torch.Tensor) else np.ndim(x_query)
        if yd != 1 or qd != 1:
            raise ValueError(
                f"for an unbatched prompt X (n, d), y must be (n,) and x_query (d,); got y with "
                f"{yd} and x_query with {qd} dimension(s)"
            )
        X, y, x_query, squeeze = X[None], y[None], x_query[None], True
    out = _out_spec(X, squeeze)
    X, y, xq = check_prompts(X, y, x_query, dtype=_F64, min_n=1)
    return X, y, xq, out


def _steps(steps, name: str = "steps") -> list[int]:
    """A list of non-negative ints from an int, a sequence, a range or a 1-D integer array."""
    if isinstance(steps, (torch.Tensor, np.ndarray)):
        arr = steps.detach().cpu().numpy() if isinstance(steps, torch.Tensor) else steps
        if arr.ndim > 1 or arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be a 1-D integer array, got dtype {arr.dtype} ndim {arr.ndim}")
        steps = arr.reshape(-1).tolist()
    elif isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = [steps]
    elif isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(steps).__name__}")
    return [check_int(f"{name}[{i}]", s, 0) for i, s in enumerate(steps)]


def _method(method, allowed: tuple[str, ...]) -> str:
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")
    return method


def _per_prefix(value, S: torch.Tensor, name: str) -> torch.Tensor:
    """A positive step size per prefix (B, n) from a float or a (B,) / (B, n) tensor or array."""
    B, n = S.shape[:2]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        v = as_tensor(name, value, _F64, S.device)
        if v.dim() == 0:
            v = v.expand(B, n)
        elif tuple(v.shape) == (B,):
            v = v[:, None].expand(B, n)
        elif tuple(v.shape) != (B, n):
            raise ValueError(f"{name} as an array must have shape (B,) = ({B},) or (B, n) = ({B}, {n}), got {tuple(v.shape)}")
        if (v <= 0).any():
            raise ValueError(f"{name} must be > 0 everywhere, got min {float(v.min()):g}")
        return v
    return torch.full((B, n), check_real(name, value, positive=True), dtype=_F64, device=S.device)


def _rate(rate, shape: tuple[int, int], name: str, rules: tuple[str, ...]):
    """Validate α or η once per public call: a rule name (returned as is) or a fixed rate per
    prefix (B, n) float64 tensor from a float or a (B,) / (B, n) tensor or array."""
    if isinstance(rate, str):
        if rate not in rules:
            if name == "alpha":
                raise ValueError(f"alpha rule must be a positive float or one of {ALPHA_RULES}, got {rate!r}")
            raise ValueError(f"lr must be a positive float, an array, or 'auto', got {rate!r}")
        return rate
    return _per_prefix(rate, torch.zeros(*shape, 1, 1, dtype=_F64), name)


def _lmax(S: torch.Tensor) -> torch.Tensor:
    """λ_max of each (already validated) S (..., d, d) -> (...), in chunks that stay in cache."""
    d = S.shape[-1]
    flat = S.reshape(-1, d, d)
    out = torch.empty(flat.shape[0], dtype=_F64, device=S.device)
    c = _chunk(d * d)
    for i in range(0, flat.shape[0], c):
        out[i : i + c] = torch.linalg.eigvalsh(flat[i : i + c])[:, -1]
    return out.clamp(min=0.0).reshape(S.shape[:-2])


def _alpha_of(rate, lmax=None, SS=None, evals=None) -> torch.Tensor:
    """Newton's α per prefix from a validated rate (:func:`_rate`) and what is at hand."""
    if isinstance(rate, str):
        return rule_alpha(rate, lmax=lmax, SS=SS, evals=evals)
    return rate


def _eta_of(rate, lmax: torch.Tensor) -> torch.Tensor:
    """GD's η per prefix: ``"auto"`` = 1/λ_max(S_t) (0 for S_t = 0), or the validated fixed rate."""
    if isinstance(rate, str):
        return torch.where(lmax > 0, 1.0 / torch.where(lmax > 0, lmax, torch.ones_like(lmax)), torch.zeros_like(lmax))
    return rate


def _alpha(alpha, S: torch.Tensor) -> torch.Tensor:
    """Newton's α per prefix (B, n): a rule applied to each S_t, a float, or a (B,)/(B, n) array."""
    if isinstance(alpha, str):
        return alpha_from_rule(S, alpha)  # raises ValueError naming the allowed rules
    return _per_prefix(alpha, S, "alpha")


def _lr(lr, S: torch.Tensor) -> torch.Tensor:
    """GD's η per prefix (B, n): ``"auto"`` = 1/λ_max(S_t) (0 for S_t = 0), a float, or an array."""
    if isinstance(lr, str):
        if lr != "auto":
            raise ValueError(f"lr must be a positive float, an array, or 'auto', got {lr!r}")
        return _eta_of(lr, lambda_max(S))
    return _per_prefix(lr, S, "lr")


def _on_diverge(on_diverge: str) -> str:
    if on_diverge not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_diverge must be 'raise', 'warn' or 'ignore', got {on_diverge!r}")
    return on_diverge


def _needs_check(rate, on_diverge: str) -> bool:
    """A fixed rate is checked for divergence unless on_diverge='ignore'; rules are exempt."""
    return not isinstance(rate, str) and on_diverge != "ignore"


def _check_fixed_rate(rate, lmax: torch.Tensor, power: int, name: str, on_diverge: str) -> bool:
    """A fixed α (power 2: α·λ_max(S_t)²) or η (power 1: η·λ_max(S_t)) that is ≥ 2 on some prefix
    diverges; raise (or warn) instead of returning inf/NaN.  ``rate`` is the validated (B, n)
    rate, ``lmax`` (B, n) the λ_max(S_t) the caller already has.  Returns True if it diverges."""
    r = rate * lmax**power  # (B, n)
    bad = r >= 2.0 * (1.0 - BOUNDARY_SLACK)
    if not bad.any():
        return False
    b, t = (int(i) for i in torch.nonzero(bad)[0])
    sym = "alpha*lambda_max(S_t)^2" if power == 2 else "lr*lambda_max(S_t)"
    rule = "alpha='code' or 'safe'" if power == 2 else "lr='auto'"
    msg = (f"fixed {name} diverges on {int(bad.sum())} prefix(es) (first: prompt {b}, t={t}): "
           f"{sym} = {float(r.max()):.4g} >= 2. Use a smaller {name}, a rule ({rule}), "
           f"or on_diverge='ignore' to get the diverging numbers anyway.")
    if on_diverge == "raise":
        raise AlphaDivergenceError(msg)
    import warnings
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return True


def _lam(lam) -> float:
    return check_real("lam", lam, nonneg=True)


def _gather_steps(table: dict[int, torch.Tensor], steps: list[int], shape, device) -> torch.Tensor:
    """Stack per-step results (B, n) in the user's order -> (len(steps), B, n)."""
    if not steps:
        return torch.zeros((0, *shape), dtype=_F64, device=device)
    return torch.stack([table[s] for s in steps])


# ----------------------------------------------------------------------------------------------
# Prefix statistics
# ----------------------------------------------------------------------------------------------


def _chunk(per_item: int) -> int:
    """How many items of ``per_item`` float64 numbers make one cache-sized chunk (≥ 1)."""
    return max(1, _CHUNK_BYTES // (8 * max(1, per_item)))


def _prefix_stats(X: torch.Tensor, y: torch.Tensor, lam: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t = Σ_{i<t} x_i x_iᵀ + λ_r I (B, n, d, d) and b_t = Σ_{i<t} y_i x_i (B, n, d); float64.

    The outer products are formed and summed a few prompts at a time, straight into S (the
    same running sums as one big ``cumsum``, without the (B, n, d, d) temporary)."""
    B, n, d = X.shape
    S = X.new_zeros(B, n, d, d)
    b = X.new_zeros(B, n, d)
    c = _chunk(n * d * d)
    for i in range(0, B, c):
        _stats_into(X[i : i + c], y[i : i + c], lam, S[i : i + c], b[i : i + c])
    return S, b


def _stats_into(X: torch.Tensor, y: torch.Tensor, lam: float, S: torch.Tensor, b: torch.Tensor) -> None:
    """Fill zeroed S (c, n, d, d) and b (c, n, d) with the prefix statistics of X (c, n, d), y (c, n):
    the outer products x_{t−1}x_{t−1}ᵀ written in place at t ≥ 1, then one in-place running sum."""
    if X.shape[1] > 1:
        Xs = X[:, :-1]  # (c, n-1, d)
        torch.mul(Xs.unsqueeze(-1), Xs.unsqueeze(-2), out=S[:, 1:])  # exactly symmetric
        S.cumsum_(1)
        torch.mul(Xs, y[:, :-1].unsqueeze(-1), out=b[:, 1:])
        b.cumsum_(1)
    if lam:
        S.diagonal(dim1=-2, dim2=-1).add_(lam)


def prefix_stats(X, y, lam: float = 0.0):
    """Every prefix's S_t = Σ_{i<t} x_i x_iᵀ + λ_r I (B, n, d, d) and b_t = Σ_{i<t} y_i x_i (B, n, d)."""
    Xt, yt, out = _prompts(X, y, min_n=0)
    S, b = _prefix_stats(Xt, yt, _lam(lam))
    return out(S), out(b)


# ----------------------------------------------------------------------------------------------
# Iterative Newton
# ----------------------------------------------------------------------------------------------


def _newton_step(M: torch.Tensor, S: torch.Tensor, MS: torch.Tensor | None = None) -> torch.Tensor:
    """One fused Newton step 2M − (MS)M on (P, d, d) stacks: one ``baddbmm`` (β = 2, α = −1)
    instead of a product, a ``2*M`` pass and a subtraction pass.  ``MS`` if already known."""
    return torch.baddbmm(M, torch.bmm(M, S) if MS is None else MS, M, beta=2.0, alpha=-1.0)


def _newton_iterates(S: torch.Tensor, a: torch.Tensor, k: int, keep: bool) -> torch.Tensor:
    """M_k (or all of M_0..M_k stacked when ``keep``) for validated S (..., d, d), α (...)."""
    batch, d = S.shape[:-2], S.shape[-1]
    S3 = S.reshape(-1, d, d)
    if keep:  # every iterate written straight into its slot of the result (no stacking copy)
        Ms = S3.new_empty(k + 1, *S3.shape)  # (k+1, P, d, d)
        torch.mul(a.reshape(-1, 1, 1), S3, out=Ms[0])
        for j in range(k):
            torch.baddbmm(Ms[j], torch.bmm(Ms[j], S3), Ms[j], beta=2.0, alpha=-1.0, out=Ms[j + 1])  # = _newton_step
        return Ms.reshape(k + 1, *batch, d, d)
    M = a.reshape(-1, 1, 1) * S3  # (P, d, d)
    for _ in range(k):
        M = _newton_step(M, S3)
    return M.reshape(*batch, d, d)


def _matrix_alpha(S: torch.Tensor, alpha) -> torch.Tensor:
    """α for :func:`newton_matrix` / :func:`newton_matrices`: rule, float, or a broadcastable array."""
    if isinstance(alpha, (torch.Tensor, np.ndarray)):
        a = as_tensor("alpha", alpha, _F64, S.device)
        if (a <= 0).any():
            raise ValueError(f"alpha must be > 0 everywhere, got min {float(a.min()):g}")
        try:
            return torch.broadcast_to(a, S.shape[:-2])
        except RuntimeError:
            raise ValueError(f"alpha of shape {tuple(a.shape)} does not broadcast to S's batch shape {tuple(S.shape[:-2])}") from None
    if isinstance(alpha, str):
        return alpha_from_rule(S, alpha)
    return torch.full(S.shape[:-2], check_real("alpha", alpha, positive=True), dtype=_F64, device=S.device)


def _matrix_args(S, k):
    S = as_tensor("S", S, _F64)
    if S.dim() < 2 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"S must have shape (..., d, d) with square last two axes, got {tuple(S.shape)}")
    if S.shape[-1] == 0:
        raise ValueError("S has d = 0; Newton needs at least one data dimension")
    return S, check_int("k", k, 0)


def newton_matrix(S, k: int, alpha) -> torch.Tensor:
    """M_k of Iterative Newton for symmetric PSD S (..., d, d) -> (..., d, d), by the recurrence.

    ``alpha``: a rule (``"paper"``, ``"code"``, ``"safe"``), a positive float, or a positive
    tensor broadcastable to S's batch shape (...).  M_0 = αS, M_j = 2M_{j−1} − M_{j−1}SM_{j−1}.
    """
    out = _out_spec(S)
    S, k = _matrix_args(S, k)
    return out(_newton_iterates(S, _matrix_alpha(S, alpha), k, keep=False))


def newton_matrices(S, k: int, alpha) -> torch.Tensor:
    """All iterates M_0, …, M_k of Iterative Newton -> (k + 1, ..., d, d), in k matrix steps.

    The same recurrence and arguments as :func:`newton_matrix` (whose k + 1 separate calls would
    take O(k²) steps); ``newton_matrices(S, k, a)[j]`` equals ``newton_matrix(S, j, a)`` exactly.
    """
    out = _out_spec(S)
    S, k = _matrix_args(S, k)
    return out(_newton_iterates(S, _matrix_alpha(S, alpha), k, keep=True))


def newton_predict(X, y, x_query, k: int, alpha, lam: float = 0.0, on_diverge: str = "raise",
                   check_precision: str = "raise") -> torch.Tensor:
    """x_qᵀ M_k Xᵀy for each prompt: X (B, n, d), y (B, n), x_query (B, d) -> (B,).

    M_k is Newton's k-th iterate on S = XᵀX + λ_r I.  ``alpha``: a rule applied to that S, a
    positive float, or a positive (B,) tensor.  An unbatched prompt (n, d), (n,), (d,) gives a
    0-d result.  A fixed α with α·λ_max(S)² ≥ 2 diverges: ``on_diverge`` as in
    :func:`newton_predictions`.  ``check_precision``: "raise" (default) raises
    :class:`construct.precision.PrecisionError` where float64 cannot deliver 1e-10 (normwise, see
    :mod:`construct.precision`; e.g. k ≳ 60 on a rank-deficient S, whose null-null block of M_k
    doubles its round-off every step, or a converged full-rank S with κ(S) ≳ 1e4, where the rounded
    (MS)·M carries γu·κ into every eigen-component) and on NaN/inf; "warn"; "ignore".
    """
    from construct.precision import check_finite, check_precision as _chk, precision_estimate

    res, (Xv, yv, qv, a) = _newton_predict(X, y, x_query, k, alpha, lam, on_diverge)
    if check_precision == "ignore":
        return res
    est = precision_estimate(Xv, yv, qv, a, k, lam=_lam(lam), form="matrix")
    _chk(est, _F64, check_precision, "prompt", program="reference")
    if on_diverge == "raise":
        check_finite("newton_predict", torch.as_tensor(res), "k is so large that round-off overflowed.")
    return res


def _newton_predict(X, y, x_query, k: int, alpha, lam: float, on_diverge: str):
    """newton_predict's arithmetic: (result, (X, y, x_query, α) as float64 tensors for the guards)."""
    on_diverge = _on_diverge(on_diverge)
    X, y, xq, out = _single_query(X, y, x_query)
    lam = _lam(lam)
    k = check_int("k", k, 0)
    B = X.shape[0]
    S = X.transpose(-1, -2) @ X + lam * torch.eye(X.shape[-1], dtype=_F64, device=X.device)  # (B, d, d)
    if isinstance(alpha, str):
        rule = _rate(alpha, (B, 1), "alpha", ALPHA_RULES)
        a = _alpha_of(rule, SS=S @ S) if rule == "code" else _alpha_of(rule, lmax=_lmax(S))
    elif isinstance(alpha, (torch.Tensor, np.ndarray)):
        a = as_tensor("alpha", alpha, _F64, X.device)
        if a.dim() == 0 or (out.squeeze and a.numel() == 1):
            a = a.reshape(()).expand(B)
        if tuple(a.shape) != (B,):
            raise ValueError(f"alpha as an array must have shape (B,) = ({B},), got {tuple(a.shape)}")
        if (a <= 0).any():
            raise ValueError(f"alpha must be > 0 everywhere, got min {float(a.min()):g}")
    else:
        a = torch.full((B,), check_real("alpha", alpha, positive=True), dtype=_F64, device=X.device)
    if _needs_check(alpha, on_diverge):
        _check_fixed_rate(a[:, None], _lmax(S)[:, None], 2, "alpha", on_diverge)
    M = _newton_iterates(S, a, k, keep=False)  # (B, d, d); inputs validated once above
    b = (X.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)  # (B, d)
    return out(torch.einsum("bd,bde,be->b", xq, M, b)), (X, y, xq, a)


def _newton_batched(S, b, xq, rate, steps: list[int]) -> dict[int, torch.Tensor]:
    """The recurrence on all prefixes, a cache-sized chunk of prefixes at a time, every step of a
    chunk before the next.  S (B, n, d, d), b/xq (B, n, d); ``rate`` a validated rule or (B, n).

    ``"code"`` takes α from S·S, which is also M_0·S/α, so that product serves both the rule and
    the first step; ``"paper"``/``"safe"`` take λ_max from one eigvalsh per chunk.
    """
    want = set(steps)
    K = max(steps)
    B, n, d = b.shape
    P = B * n
    S3, b3, x3 = S.reshape(P, d, d), b.reshape(P, d, 1), xq.reshape(P, 1, d)
    r = None if isinstance(rate, str) else rate.reshape(P)
    ks = sorted(want)
    pred = torch.empty(len(ks), P, dtype=_F64, device=S.device)
    c = _chunk(4 * d * d)  # S, M, MS and the product's output per prefix
    for i in range(0, P, c):
        Sc = S3[i : i + c]
        MS = None
        if rate == "code":
            SS = torch.bmm(Sc, Sc)  # (c, d, d)
            a = _alpha_of(rate, SS=SS)
            MS = a[:, None, None] * SS  # M_0 S
        elif isinstance(rate, str):
            a = _alpha_of(rate, lmax=_lmax(Sc))
        else:
            a = r[i : i + c]
        M = a[:, None, None] * Sc  # (c, d, d) = M_0
        for k in range(K + 1):
            if k:
                M = _newton_step(M, Sc, MS)
                MS = None
            if k in want:
                pred[ks.index(k), i : i + c] = torch.bmm(x3[i : i + c], torch.bmm(M, b3[i : i + c])).reshape(-1)
    return {k: pred[j].reshape(B, n) for j, k in enumerate(ks)}


def _newton_loop(X, y, steps: list[int], alpha, lam: float) -> dict[int, torch.Tensor]:
    """Per prompt, per prefix, per step in numpy, as in the paper's released code."""
    Xn, yn = X.cpu().numpy(), y.cpu().numpy()
    B, n, d = Xn.shape
    K, want = max(steps), set(steps)
    res = {k: np.zeros((B, n)) for k in want}
    a_arr = None if isinstance(alpha, str) else _alpha(alpha, torch.zeros(B, n, 1, 1, dtype=_F64)).numpy()
    eye = np.eye(d)
    for bi in range(B):
        Ss = [Xn[bi, :t].T @ Xn[bi, :t] + lam * eye for t in range(n)]  # S_t, t = 0..n-1
        # the rule once per prompt on its n stacked S_t (one torch call instead of n)
        a_row = alpha_from_rule(torch.from_numpy(np.stack(Ss)), alpha).numpy() if a_arr is None else a_arr[bi]
        for t in range(1, n):
            S, a = Ss[t], a_row[t]
            bt = Xn[bi, :t].T @ yn[bi, :t]
            xq = Xn[bi, t]
            M = a * S
            for k in range(K + 1):
                if k:
                    M = 2 * M - M @ S @ M
                if k in want:
                    res[k][bi, t] = xq @ (M @ bt)
    return {k: torch.from_numpy(v).to(X.device) for k, v in res.items()}


def _log_abs_r(x: torch.Tensor) -> torch.Tensor:
    """log|1 − x| for x ≥ 0 without cancellation (log1p for x ≤ 1); −inf at x = 1 is clamped to
    −1e300 so that 0·log|r| = 0 and p·log|r| = −huge for p ≥ 1 (no NaN)."""
    L = torch.log1p(-x.clamp(max=1.0))
    neg = x > 1
    if bool(neg.any()):  # log(x − 1) only where it is needed (usually few or no entries)
        L[neg] = torch.log(x[neg] - 1)
    return L.clamp(min=-1e300)


def _one_minus_pow_sum(x: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Σ_i (1 − r_i^p)·g_i with r = 1 − x, for every integer p ≥ 1 at once -> (len(p), B, n).

    x, g (B, n, d) with x ≥ 0; p (c,).  1 − |r|^p = −expm1(p·log|r|) keeps every digit for small
    x; where r < 0 and p is odd, 1 − r^p = 1 + |r|^p = 2 − (1 − |r|^p).  Computed a cache-sized
    chunk of prefixes at a time, each chunk's (prefixes, d, len(p)) block contracted with g by
    one batched product.
    """
    B, n, d = x.shape
    P = B * n
    L = _log_abs_r(x).reshape(P, d)
    neg = (x > 1).reshape(P, d)
    g = g.reshape(P, 1, d)
    odd = torch.nonzero(torch.remainder(p, 2) == 1).flatten()  # columns with odd p
    fix = len(odd) > 0 and bool(neg.any())
    out = torch.empty(P, len(p), dtype=_F64, device=x.device)
    c = _chunk(d * len(p))
    for i in range(0, P, c):
        A = L[i : i + c, :, None] * p  # (c, d, len(p))
        torch.expm1(A, out=A)  # −(1 − |r|^p)
        if fix:  # only the odd columns: −(2 − (1 − |r|^p)) where r < 0
            Ao = A[:, :, odd]
            A[:, :, odd] = torch.where(neg[i : i + c, :, None], -2 - Ao, Ao)
        out[i : i + c] = torch.bmm(g[i : i + c], A).squeeze(1)
    return -out.T.reshape(len(p), B, n)


def _over_x(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w / x where x > 0, else 0."""
    pos = x > 0
    return torch.where(pos, w / torch.where(pos, x, torch.ones_like(x)), torch.zeros_like(w))


@dataclass(frozen=True)
class PrefixSpectrum:
    """One eigendecomposition per prefix, S_t = Q Λ Qᵀ, reusable by every spectral computation.

    ``S`` (B, n, d, d) the prefix Gram matrices (+ λ_r I); ``evals`` (B, n, d) ascending, with
    values ≤ d·eps·λ_max set to 0; ``z`` (B, n, d) = (Qᵀx_t)⊙(Qᵀb_t), zero on those null
    directions; ``lam`` the ridge λ_r.  A prediction x_tᵀ f(S_t) b_t is then Σ_i f(λ_i) z_i.
    The α rules (``"code"`` = 1/sqrt(Σλ⁴), ``"paper"``/``"safe"`` from λ_max), GD's
    ``lr="auto"`` and the divergence checks of fixed rates all read ``evals``: nothing is
    recomputed from ``S``.
    """

    S: torch.Tensor
    evals: torch.Tensor
    z: torch.Tensor
    lam: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.evals.shape)

    @property
    def lmax(self) -> torch.Tensor:
        """λ_max(S_t) (B, n), ≥ 0."""
        return self.evals[..., -1].clamp(min=0.0)


def _spectrum(X: torch.Tensor, y: torch.Tensor, lam: float) -> PrefixSpectrum:
    """Prefix statistics, eigh, Qᵀx and Qᵀb, a few prompts at a time so each chunk's S_t are
    still in cache when eigh reads them (the statistics cost almost nothing on top of eigh)."""
    B, n, d = X.shape
    S = X.new_zeros(B, n, d, d)
    evals = X.new_empty(B, n, d)
    z = X.new_empty(B, n, d)
    c = _chunk(2 * n * d * d)  # S and Q of one prompt
    for i in range(0, B, c):
        Xc, yc, Sc, bc = X[i : i + c], y[i : i + c], S[i : i + c], X.new_zeros(min(c, B - i), n, d)
        _stats_into(Xc, yc, lam, Sc, bc)  # (c, n, d, d), (c, n, d), written in place (still in cache)
        evals[i : i + c], z[i : i + c] = _eig_z(Sc, Xc, bc)
    return PrefixSpectrum(S=S, evals=evals, z=z, lam=lam)


def _eig_z(S: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh of S (..., d, d) read against x and b (..., d): (evals, z), each (..., d).

    Eigenvalues ≤ d·eps·λ_max are set to 0, and z = (Qᵀx)⊙(Qᵀb) is 0 on those null directions,
    so that x ᵀf(S) b = Σ_i f(λ_i) z_i drops them (:class:`PrefixSpectrum`)."""
    ev, Q = torch.linalg.eigh(S)  # (..., d), (..., d, d)
    uv = Q.transpose(-1, -2) @ torch.stack([x, b], -1)  # (..., d, 2): Qᵀx, Qᵀb
    null = ev <= S.shape[-1] * torch.finfo(_F64).eps * ev[..., -1:].clamp(min=0)
    return (torch.where(null, torch.zeros_like(ev), ev),
            torch.where(null, torch.zeros_like(ev), uv[..., 0] * uv[..., 1]))


def prefix_spectrum(X, y, lam: float = 0.0) -> PrefixSpectrum:
    """Eigendecompose every prefix's S_t once (O(B·n·d³)); pass it as ``spectrum=`` to reuse it.

    The spectrum must come from the same X, y (only the shape and ``lam`` are checked on reuse).

    Always float64 tensors (the spectral methods cast their own results back to X's dtype).
    """
    X, y, _ = _prompts(X, y, min_n=0)
    return _spectrum(X, y, _lam(lam))


def _get_spectrum(X, y, lam, spectrum) -> PrefixSpectrum:
    if spectrum is None:
        return _spectrum(X, y, lam)
    if not isinstance(spectrum, PrefixSpectrum):
        raise TypeError(f"spectrum must be a PrefixSpectrum from prefix_spectrum(), got {type(spectrum).__name__}")
    if spectrum.shape != tuple(X.shape):
        raise ValueError(f"spectrum was computed for prompts of shape {spectrum.shape}, but X has shape {tuple(X.shape)}")
    if spectrum.lam != lam:
        raise ValueError(f"spectrum was computed with lam={spectrum.lam}, but lam={lam} was asked for")
    return spectrum


def _spectral_steps_ok(steps: list[int]) -> None:
    if max(steps) > MAX_SPECTRAL_NEWTON_STEPS:
        raise ValueError(
            f"spectral Newton supports steps <= {MAX_SPECTRAL_NEWTON_STEPS}; "
            f"got {max(steps)}. Use method='batched' (Newton has converged long before that)."
        )


def _newton_spectral(sp: PrefixSpectrum, a: torch.Tensor, steps: list[int]) -> dict[int, torch.Tensor]:
    """Every Newton step count at once.  a (B, n).

    eig(M_k) = (1 − r^(2^k))/λ with r = 1 − x, x = αλ² (0 for λ = 0), so
    pred_k = Σ_i (1 − r_i^(2^k))·z_i/λ_i.  The factor e_k = 1 − r^(2^k) obeys
    e_0 = x, e_{k+1} = 1 − (r^(2^k))² = e_k·(2 − e_k): one multiply and one subtract per step
    and eigenvalue, no exp.  It loses no digits for small x (no 1 − r cancellation), and 2 − e_k
    is exact (Sterbenz) where it could cancel (e_0 = x near 2); a relative error δ in e_k
    becomes δ·(1 − e_k/(2 − e_k)) + O(eps), which never grows for e_k ∈ [0, 1] (every k ≥ 1 when
    x < 2), so e_k carries O(k·eps) relative error, like the closed form −expm1(2^k·log|r|).
    """
    _spectral_steps_ok(steps)
    ks = sorted(set(steps))
    want = set(ks)
    lam = sp.evals  # (B, n, d)
    B, n, d = lam.shape
    x = a.unsqueeze(-1) * lam * lam  # (B, n, d) = αλ²
    g = _over_x(sp.z, lam)  # z/λ on λ > 0; λ = 0 contributes αλ·2^k·z = 0
    g = torch.where(x > 0, g, torch.zeros_like(g)).reshape(B * n, d)  # α = 0 (S_t = 0): M_k = 0
    x = x.reshape(B * n, d)
    pred = torch.empty(len(ks), B * n, dtype=_F64, device=lam.device)
    c = _chunk(d)  # a few (c, d) arrays: large enough that per-call overhead stays small
    for i in range(0, B * n, c):
        e, gc = x[i : i + c].clone(), g[i : i + c]  # (c, d): e_0 = x
        for k in range(ks[-1] + 1):
            if k:
                e = e * (2.0 - e)
            if k in want:
                pred[ks.index(k), i : i + c] = (e * gc).sum(-1)
    return {k: pred[j].reshape(B, n) for j, k in enumerate(ks)}


# Cost model of method="auto", in units of one batched d×d matrix product per prefix.  Measured
# end to end (newton_predictions, one thread, cache-sized chunks) at d = 5, 20 and 48: the
# batched/spectral crossover lies at K ≈ 10–11 for "code" and K ≈ 4–6 for "safe" at all three.
_EIGH_COST = 20.0      # one eigh per prefix (the spectral path's whole cost, to first order)
_EIGVALSH_COST = 12.0  # eigenvalues only: the batched path's λ_max for a rule or a check


def newton_auto_method(steps, d: int, alpha="code", on_diverge: str = "raise") -> str:
    """The path ``method="auto"`` takes for these steps and α: ``"spectral"`` or ``"batched"``.

    Cost per prefix, in d×d matrix products (constants measured, see ``_EIGH_COST``):
    batched = 2·K (two products per step, K = max steps) + what the α rule or the divergence
    check needs first (``"code"``: S·S, which is also the first step's M_0·S/α, so nothing
    extra; ``"paper"``, ``"safe"`` or a fixed α checked for divergence: one eigvalsh ≈ 12);
    spectral = one eigh ≈ 20, from which the rule, the check and every step count follow in
    O(|steps|·d).  Spectral is taken when it is cheaper (and K ≤ 1000): from K = 11 with
    ``"code"``, from K = 5 otherwise.  ``d`` is accepted for the record; the measured ratios did
    not depend on it between d = 5 and 48.
    """
    steps = _steps(steps)
    check_int("d", d, 1)
    if not steps:
        return "batched"
    K = max(steps)
    if K > MAX_SPECTRAL_NEWTON_STEPS:
        return "batched"
    needs_eig = (isinstance(alpha, str) and alpha != "code") or _needs_check(alpha, on_diverge)
    batched = 2.0 * K + (_EIGVALSH_COST if needs_eig else 0.0)
    return "spectral" if _EIGH_COST < batched else "batched"


def newton_predictions(X, y, steps, alpha="code", lam: float = 0.0, method: str = "auto",
                       spectrum: PrefixSpectrum | None = None, on_diverge: str = "raise", order: int = 2,
                       check_precision: str = "raise"):
    """Iterative Newton on every prefix of every prompt -> (len(steps), B, n); see
    :func:`_newton_predictions`.  NaN/inf never come back unless asked for: with
    ``on_diverge="raise"`` (default) a non-finite result raises
    :class:`construct.precision.PrecisionError` (a rule-chosen α at huge k on a rank-deficient S_t,
    whose null-space round-off the recurrence doubles every step, overflows near k = 1070).

    ``check_precision``: "raise" (default), "warn" or "ignore", as in :func:`newton_predict`.  The
    recurrence paths (``"batched"``, ``"loop"``) are guarded by the matrix-form bound of
    :mod:`construct.precision` on every prefix and requested step count
    (:func:`construct.precision.precision_estimate_stats`): on a rank-deficient prefix the
    recurrence doubles the round-off in M's null-null block every step (order p: ×p),
    which reaches the prediction through Xᵀy's rounded null component (≈ 2^k·u², 1e-2 relative at
    k = 100).  The ``"spectral"`` path needs no guard: it evaluates each prediction in closed form
    from one eigendecomposition, with S_t's numerically-zero eigenvalues dropped (no recurrence,
    nothing grows with k); its error is that of the eigendecomposition, the least-squares κ(S)·u.
    Orders p ≥ 4 are guarded the same way (module doc of :mod:`construct.precision`, term 6b, which
    adds the rounding of E = I − SM that the order-p step multiplies by); before, they had no check.
    """
    if check_precision not in ("raise", "warn", "ignore"):
        raise ValueError(f"check_precision must be 'raise', 'warn' or 'ignore', got {check_precision!r}")
    used: list = []
    res = _newton_predictions(X, y, steps, alpha, lam, method, spectrum, on_diverge, order, used)
    res = _finite_unless(on_diverge, res, "newton_predictions")
    if check_precision != "ignore" and used and used[0][0] in ("batched", "loop"):
        _recurrence_guard(*used[0][1:], order, check_precision)
    return res


def _recurrence_guard(X, y, steps, lam: float, rate, order: int, on_fail: str) -> None:
    """The precision guard of :func:`newton_predictions`' recurrence paths: the matrix-form bound
    of :mod:`construct.precision` on every prefix (the same S_t, b_t and α as the recurrence),
    vectorised over prefixes and step counts (one pass of the bound's own recurrence).  ``X``,
    ``y``, ``steps``, ``lam`` and the rate as validated by :func:`_newton_predictions` (not again)."""
    from construct.precision import check_precision as _chk, precision_estimate_stats

    B, n, d = X.shape
    if not steps or n == 0:
        return
    S, b = _prefix_stats(X, y, lam)
    if rate == "code":  # α per prefix as the recurrence takes it (_newton_batched)
        a = _alpha_of(rate, SS=S @ S)
    elif isinstance(rate, str):
        a = _alpha_of(rate, lmax=_lmax(S))
    else:
        a = rate  # (B, n)
    t = torch.arange(n, dtype=_F64, device=X.device).repeat(B)  # examples in prefix (b, t)
    est = precision_estimate_stats(S.reshape(B * n, d, d), b.reshape(B * n, d), X.reshape(B * n, d), a.reshape(-1),
                                   steps, n=t, order=order, ridge=lam > 0).amax(0)  # (B·n,)
    # a diverging α is on_diverge's business (raised, warned or asked for), not a precision failure; a
    # converging one with an overflowed (inf) bound is refused like any bound above rtol
    conv = a.reshape(-1) * _lmax(S).reshape(-1) ** 2 < 2
    _chk(torch.where(conv, est, torch.zeros_like(est)), _F64, on_fail, "prefix", program="reference")


def _finite_unless(on_diverge: str, res, name: str):
    """NaN/inf raise PrecisionError unless the caller was told of a divergence ("warn") or asked
    for the numbers ("ignore")."""
    if on_diverge != "raise":
        return res
    from construct.precision import check_finite

    check_finite(name, torch.as_tensor(res), "Newton's recurrence overflowed: k is so large that round-off in "
                 "the null space of a rank-deficient S (doubled every step) overflowed; Newton has converged "
                 "long before, use fewer steps or method='spectral'.")
    return res


def _newton_predictions(X, y, steps, alpha="code", lam: float = 0.0, method: str = "auto",
                        spectrum: PrefixSpectrum | None = None, on_diverge: str = "raise", order: int = 2,
                        used: list | None = None):
    """Iterative Newton on every prefix of every prompt -> (len(steps), B, n).

    ``X`` (B, n, d), ``y`` (B, n); ``steps`` ints ≥ 0 (any order, repeats allowed); ``alpha`` a
    rule applied per prefix (``"code"`` = 1/‖S Sᵀ‖_F, ``"paper"`` = 2/λ_max², ``"safe"``), a
    positive float, or a positive (B,) / (B, n) array; ``lam`` ridge λ_r ≥ 0 (Newton on S + λ_r I).
    ``method``: ``"auto"`` (default: ``"spectral"`` when a ``spectrum`` is given or when it is
    the cheaper path by the cost model of :func:`newton_auto_method`, else ``"batched"``),
    ``"batched"`` (the recurrence on all prefixes, in cache-sized chunks), ``"spectral"``
    (closed form from one eigendecomposition per prefix; pass
    ``spectrum=prefix_spectrum(X, y, lam)`` to reuse one), or ``"loop"`` (per-prefix numpy,
    slow, for testing).  Output[s, b, t] predicts x_t from examples 0..t−1 after steps[s]
    iterations.  A fixed α with α·λ_max(S_t)² ≥ 2 diverges: ``on_diverge`` "raise" (default)
    raises AlphaDivergenceError, "warn" warns, "ignore" returns the inf/NaN ("auto" then runs
    the recurrence, whose inf/NaN are the diverging numbers themselves).
    ``order`` p ≥ 2: the order-p hyperpower iteration M' = M Σ_{i<p} (I − SM)^i, for which
    I − M_k S = (I − αS²)^(p^k); p = 2 is Newton, p = 3 is M' = 3M − 3MSM + MSMSM (see
    :func:`_hyper_predictions`).  ``used``: a list to which (path taken, validated X, y, steps, λ, rate) is
    appended (for the precision guard of :func:`newton_predictions`).
    """
    used = [] if used is None else used
    if check_int("order", order, 2) != 2:
        return _hyper_predictions(X, y, steps, alpha, lam, method, spectrum, on_diverge, order, used)
    method = _method(method, NEWTON_METHODS)
    X, y, out = _prompts(X, y, min_n=0)
    steps, lam = _steps(steps), _lam(lam)
    on_diverge = _on_diverge(on_diverge)
    B, n, d = X.shape
    rate = _rate(alpha, (B, n), "alpha", ALPHA_RULES)  # the one validation of alpha
    if not steps or n == 0:
        if n and _needs_check(rate, on_diverge):
            _check_fixed_rate(rate, _lmax(_prefix_stats(X, y, lam)[0]), 2, "alpha", on_diverge)
        return out(torch.zeros((len(steps), B, n), dtype=_F64))
    auto = method == "auto"
    if auto:
        reuse = spectrum is not None and max(steps) <= MAX_SPECTRAL_NEWTON_STEPS
        method = "spectral" if reuse else newton_auto_method(steps, d, rate, on_diverge)
    checked = not _needs_check(rate, on_diverge)
    if method == "spectral":
        _spectral_steps_ok(steps)
        sp = _get_spectrum(X, y, lam, spectrum)
        diverges = not checked and _check_fixed_rate(rate, sp.lmax, 2, "alpha", on_diverge)
        if not (auto and diverges):
            res = _newton_spectral(sp, _alpha_of(rate, evals=sp.evals), steps)
            used.append(("spectral", X, y, steps, lam, rate))
            return out(_gather_steps(res, steps, (B, n), X.device))
        method, checked = "batched", True  # "auto" on a diverging α: the recurrence's own inf/NaN
    used.append((method, X, y, steps, lam, rate))
    if method == "loop":
        if not checked:
            _check_fixed_rate(rate, _lmax(_prefix_stats(X, y, lam)[0]), 2, "alpha", on_diverge)
        return out(_gather_steps(_newton_loop(X, y, steps, alpha, lam), steps, (B, n), X.device))
    S, b = _prefix_stats(X, y, lam)
    if not checked:
        _check_fixed_rate(rate, _lmax(S), 2, "alpha", on_diverge)
    return out(_gather_steps(_newton_batched(S, b, X, rate, steps), steps, (B, n), X.device))


# ----------------------------------------------------------------------------------------------
# Hyperpower iterations and any residual power (the hyperpower network's reference)
# ----------------------------------------------------------------------------------------------


def _hyperpower_step(M: torch.Tensor, S: torch.Tensor, order: int) -> torch.Tensor:
    """M' = M Σ_{i<p} (I − SM)^i, so that I − M'S = (I − MS)^p; p = 3: 3M − 3MSM + MSMSM."""
    E = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device) - S @ M  # I − SM
    acc, P = M, M
    for _ in range(order - 1):
        P = P @ E
        acc = acc + P
    return acc


def _power_spectral(sp: PrefixSpectrum, a: torch.Tensor, powers: dict) -> dict:
    """pred for I − MS = (I − αS²)^P from one spectrum, per key of ``powers`` (key -> P ≥ 1)."""
    if any(float(P) > 1e300 for P in powers.values()):
        raise ValueError(f"residual powers must be finite floats (<= 1e300), got {max(powers.values()):.3g}; "
                         "use fewer steps (the iteration has long converged)")
    keys = sorted(powers)
    lam = sp.evals  # (B, n, d)
    x = a.unsqueeze(-1) * lam * lam  # (B, n, d) = αλ²
    g = _over_x(sp.z, lam)
    g = torch.where(x > 0, g, torch.zeros_like(g))  # α = 0 (S_t = 0): M = 0
    p = torch.tensor([float(powers[k]) for k in keys], dtype=_F64, device=lam.device)
    pred = _one_minus_pow_sum(x, g, p)  # (len, B, n)
    return dict(zip(keys, pred.unbind(0)))


def _hyper_predictions(X, y, steps, alpha, lam, method, spectrum, on_diverge, order: int, used: list):
    """:func:`newton_predictions` for order p ≥ 3: ``"batched"`` (the order-p recurrence on all
    prefixes), ``"spectral"`` (closed form with residual power p^k) or ``"loop"`` (per-prefix numpy);
    ``"auto"`` takes spectral."""
    method = _method(method, NEWTON_METHODS)
    X, y, out = _prompts(X, y, min_n=0)
    steps, lam = _steps(steps), _lam(lam)
    on_diverge = _on_diverge(on_diverge)
    B, n, d = X.shape
    rate = _rate(alpha, (B, n), "alpha", ALPHA_RULES)
    if not steps or n == 0:
        return out(torch.zeros((len(steps), B, n), dtype=_F64))
    S, b = _prefix_stats(X, y, lam)
    if _needs_check(rate, on_diverge):
        _check_fixed_rate(rate, _lmax(S), 2, "alpha", on_diverge)
    a = _alpha(alpha, S)  # (B, n)
    used.append(("spectral" if method == "auto" else method, X, y, steps, lam, rate))
    if method in ("auto", "spectral"):
        sp = _get_spectrum(X, y, lam, spectrum)
        res = _power_spectral(sp, a, {k: order ** k for k in set(steps)})
    elif method == "loop":
        Xn, yn, an = X.cpu().numpy(), y.cpu().numpy(), a.cpu().numpy()
        want = set(steps)
        res = {k: np.zeros((B, n)) for k in want}
        eye = np.eye(d)
        for bi in range(B):
            for t in range(1, n):
                St = Xn[bi, :t].T @ Xn[bi, :t] + lam * eye
                M = an[bi, t] * St
                for k in range(max(steps) + 1):
                    if k:  # M' = M Σ_{i<p} (I − SM)^i
                        E, acc, P = eye - St @ M, M.copy(), M
                        for _ in range(order - 1):
                            P = P @ E
                            acc = acc + P
                        M = acc
                    if k in want:
                        res[k][bi, t] = Xn[bi, t] @ (M @ (Xn[bi, :t].T @ yn[bi, :t]))
        res = {k: torch.from_numpy(v).to(X.device) for k, v in res.items()}
    else:
        M = a[..., None, None] * S  # (B, n, d, d)
        res = {}
        for k in range(max(steps) + 1):
            if k:
                M = _hyperpower_step(M, S, order)
            if k in set(steps):
                res[k] = torch.einsum("bnd,bnde,bne->bn", X, M, b)
    return out(_gather_steps(res, steps, (B, n), X.device))


def residual_power_matrix(S, power: int, alpha) -> torch.Tensor:
    """The M with I − M S = (I − αS²)^P, for symmetric PSD S (..., d, d) -> (..., d, d).

    M = αS·Σ_{i<P} R^i with R = I − αS² (then MS = (I − R)Σ R^i = I − R^P), summed by binary
    doubling (G_{2m} = G_m + R^m G_m, G_{m+1} = I + R G_m): O(log P) matmuls, and independent of
    any Newton or hyperpower recurrence.  P = 2^k gives Newton's M_k, P = 4·3^j the hyperpower
    network's.  ``alpha`` as in :func:`newton_matrix`.
    """
    out = _out_spec(S)
    S = as_tensor("S", S, _F64)
    if S.dim() < 2 or S.shape[-1] != S.shape[-2] or S.shape[-1] == 0:
        raise ValueError(f"S must have shape (..., d, d) with d >= 1, got {tuple(S.shape)}")
    P = check_int("power", power, 1)
    a = _matrix_alpha(S, alpha)[..., None, None]  # (..., 1, 1)
    eye = torch.eye(S.shape[-1], dtype=_F64, device=S.device).expand_as(S)
    R = eye - a * (S @ S)
    G, Rm = torch.zeros_like(S), eye.clone()  # G = Σ_{i<m} R^i, Rm = R^m, m = 0
    for bit in bin(P)[2:]:
        G, Rm = G + Rm @ G, Rm @ Rm  # m -> 2m
        if bit == "1":
            G, Rm = eye + R @ G, R @ Rm  # m -> m + 1
    return out(a * S @ G)


def residual_power_predict(X, y, x_query, power: int, alpha, lam: float = 0.0) -> torch.Tensor:
    """x_qᵀ M Xᵀy with I − M S = (I − αS²)^P, S = XᵀX + λI: X (B, n, d), y (B, n), x_query (B, d) -> (B,).

    The reference for networks whose residual power is not a power of two (the hyperpower form,
    P = 4·3^j); P = 2^k equals :func:`newton_predict` with k steps.  ``alpha``: a rule, a positive
    float or a (B,) tensor.  An unbatched prompt gives a 0-d result.

    Computed in closed form from one eigendecomposition of S (:func:`_power_spectral` on S's
    spectrum: per direction m(λ) = (1 − (1 − αλ²)^P)/λ, S's numerical zeros dropped, as the
    spectral paths do),
    so nothing grows with P.  ``x_qᵀ residual_power_matrix(S, P, α) Xᵀy`` (binary doubling) used to
    be the value: on rank-deficient S its rounded products mix S's null block, which grows like P,
    into the prediction, 4e-8 off at P = 2^30 and 6% at P = 2^50 on rank-1 data (d = 4), silently.
    """
    X, y, xq, out = _single_query(X, y, x_query)
    lam = _lam(lam)
    S = X.transpose(-1, -2) @ X + lam * torch.eye(X.shape[-1], dtype=_F64, device=X.device)  # (B, d, d)
    if isinstance(alpha, (torch.Tensor, np.ndarray)) and as_tensor("alpha", alpha).numel() == 1:
        alpha = float(as_tensor("alpha", alpha).reshape(()))
    P = check_int("power", power, 1)
    a = _matrix_alpha(S, alpha)  # (B,)
    b = (X.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)  # (B, d)
    ev, z = _eig_z(S, xq, b)  # (B, d) each: one "prefix" per prompt, the whole context
    sp = PrefixSpectrum(S=S[:, None], evals=ev[:, None], z=z[:, None], lam=lam)
    pred = _power_spectral(sp, a[:, None], {P: P})[P][:, 0]  # (B,)
    return _finite_unless("raise", out(pred), "residual_power_predict")


POWER_METHODS = ("batched", "spectral")


def residual_power_predictions(X, y, powers, alpha="code", lam: float = 0.0, method: str = "spectral",
                               spectrum: PrefixSpectrum | None = None, on_diverge: str = "raise"):
    """Predictions with I − M S_t = (I − αS_t²)^P on every prefix -> (len(powers), B, n).

    The all-prefix convention of :func:`newton_predictions` (output[s, b, t] predicts x_t from
    examples 0..t−1), for any residual power P ≥ 1 (P = 2^k: Newton-k; 4·3^j: the hyperpower
    network).  ``method``: "spectral" (default: closed form from one eigendecomposition per prefix,
    S_t's numerical zeros dropped; nothing grows with P) or "batched" (:func:`residual_power_matrix`
    on every prefix, by binary doubling; kept as an independent cross-check of small powers).
    "batched" is not precision-guarded: on rank-deficient prefixes its rounded products mix S_t's
    null block, which grows like P, into the prediction (≈ P·eps relative; 6% off at P = 2^50 on
    rank-1 data), so it was the default only until that was measured.  ``alpha``, ``lam``,
    ``on_diverge`` as in :func:`newton_predictions`.
    """
    method = _method(method, POWER_METHODS)
    X, y, out = _prompts(X, y, min_n=0)
    powers = [check_int(f"powers[{i}]", p, 1) for i, p in enumerate(_steps(powers, "powers"))]
    lam = _lam(lam)
    on_diverge = _on_diverge(on_diverge)
    B, n, d = X.shape
    rate = _rate(alpha, (B, n), "alpha", ALPHA_RULES)
    if not powers or n == 0:
        return out(torch.zeros((len(powers), B, n), dtype=_F64))
    S, b = _prefix_stats(X, y, lam)
    if _needs_check(rate, on_diverge):
        _check_fixed_rate(rate, _lmax(S), 2, "alpha", on_diverge)
    a = _alpha(alpha, S)  # (B, n)
    if method == "spectral":
        sp = _get_spectrum(X, y, lam, spectrum)
        res = _power_spectral(sp, a, {p: p for p in set(powers)})
        return out(_gather_steps(res, powers, (B, n), X.device))
    res = {}
    pos = a > 0
    for p in set(powers):
        M = residual_power_matrix(S, p, torch.where(pos, a, torch.ones_like(a)))  # (B, n, d, d)
        res[p] = torch.where(pos, torch.einsum("bnd,bnde,bne->bn", X, M, b), torch.zeros_like(a))
    return out(_gather_steps(res, powers, (B, n), X.device))


# ----------------------------------------------------------------------------------------------
# Gradient descent
# ----------------------------------------------------------------------------------------------


def _bsgs_sizes(J: int) -> tuple[int, int]:
    """Baby-step count m (a power of two ≈ √J) and giant-step count G with m·G ≥ J."""
    m = 1 << max(0, math.ceil(math.log2(math.sqrt(J))))
    return m, -(-J // m)


def _cumsum_to_steps(c: torch.Tensor, eta: torch.Tensor, steps: list[int]) -> dict[int, torch.Tensor]:
    """pred_s = η Σ_{j<s} c_j from c (B, n, J)."""
    csum = c.cumsum(-1)  # (B, n, J)
    zero = torch.zeros_like(eta)
    return {s: (eta * csum[..., s - 1] if s else zero) for s in set(steps)}


def _gd_batched(S, b, xq, eta, steps: list[int]) -> dict[int, torch.Tensor]:
    """GD's iterates from the closed form w_s = Σ_{j<s} A^j ηb, A = I − ηS, without eigh.

    c_j = x_tᵀA^j b for j < J is the (B, n, G, m) product of giant steps (A^{gm}x_t) and baby
    steps (A^a b), each built by doubling with repeated squaring of A (A is symmetric).
    """
    J = max(steps)
    if J == 0:
        return {0: torch.zeros_like(eta)}
    d = S.shape[-1]
    m, G = _bsgs_sizes(J)
    A = torch.eye(d, dtype=_F64, device=S.device) - eta[..., None, None] * S  # (B, n, d, d)
    V = b.unsqueeze(-1)  # (B, n, d, 1): columns A^a b, a < width
    Ap = A  # A^width
    while V.shape[-1] < m:
        V = torch.cat([V, Ap @ V], -1)
        if V.shape[-1] < m or G > 1:
            Ap = Ap @ Ap
    U = xq.unsqueeze(-1)  # (B, n, d, 1): columns A^{gm} x_t, g < width
    while U.shape[-1] < G:
        U = torch.cat([U, Ap @ U], -1)
        if U.shape[-1] < G:
            Ap = Ap @ Ap
    C = U[..., :G].transpose(-1, -2) @ V  # (B, n, G, m): C[g, a] = c_{gm+a}
    c = C.flatten(-2)[..., :J]  # (B, n, J)
    return _cumsum_to_steps(c, eta, steps)


def _gd_stepwise(S, b, xq, eta, steps: list[int]) -> dict[int, torch.Tensor]:
    """The recurrence w ← w − η(Sw − b) on all prefixes at once, one step at a time."""
    want = set(steps)
    w = torch.zeros_like(b)  # (B, n, d)
    res = {0: torch.zeros_like(eta)} if 0 in want else {}
    e = eta.unsqueeze(-1)
    for s in range(1, max(steps) + 1):
        w = w - e * ((S @ w.unsqueeze(-1)).squeeze(-1) - b)
        if s in want:
            res[s] = (xq * w).sum(-1)
    return res


def _gd_loop(X, y, steps: list[int], lr) -> dict[int, torch.Tensor]:
    """Per prompt, per prefix, per step in numpy, as in the paper's released code."""
    Xn, yn = X.cpu().numpy(), y.cpu().numpy()
    B, n, d = Xn.shape
    J, want = max(steps), set(steps)
    res = {s: np.zeros((B, n)) for s in want}
    eta_arr = None if isinstance(lr, str) else _per_prefix(lr, torch.zeros(B, n, 1, 1, dtype=_F64), "lr").numpy()
    for bi in range(B):
        Ss = [Xn[bi, :t].T @ Xn[bi, :t] for t in range(n)]  # S_t, t = 0..n-1
        if eta_arr is None:  # "auto": 1/λ_max(S_t), one torch call per prompt
            lm = lambda_max(torch.from_numpy(np.stack(Ss))).numpy()
            eta_row = np.where(lm > 0, 1.0 / np.where(lm > 0, lm, 1.0), 0.0)
        else:
            eta_row = eta_arr[bi]
        for t in range(1, n):
            S, eta = Ss[t], eta_row[t]
            bt = Xn[bi, :t].T @ yn[bi, :t]
            xq = Xn[bi, t]
            w = np.zeros(d)
            for s in range(1, J + 1):
                w = w - eta * (S @ w - bt)
                if s in want:
                    res[s][bi, t] = xq @ w
    return {s: torch.from_numpy(v).to(X.device) for s, v in res.items()}


def _gd_spectral(sp: PrefixSpectrum, eta: torch.Tensor, steps: list[int], mode: str | None = None) -> dict[int, torch.Tensor]:
    """GD from one eigendecomposition, all step counts at once.  eta (B, n).

    With x = ηλ and r = 1 − x, pred_s = Σ_i (1 − r_i^s)·z_i/λ_i (+ η·s·z_i where x_i = 0).
    ``mode="closed"``: that formula per requested step, O(B·n·|steps|·d) expm1's.
    ``mode="bsgs"``: c_j = Σ_i r_i^j z_i for all j < J from baby-step giant-step powers
    (one (G, d)@(d, m) matmul per prefix) and pred_s = η Σ_{j<s} c_j, O(B·n·J·d) multiply-adds.
    Default: whichever is cheaper (closed form for a sparse grid of steps or when B·n·J is too
    large to store).
    """
    J = max(steps)
    B, n, d = sp.evals.shape
    res = {0: torch.zeros_like(eta)} if 0 in steps else {}
    if J == 0:
        return res
    x = eta.unsqueeze(-1) * sp.evals  # (B, n, d)
    m, G = _bsgs_sizes(J)
    ss = sorted(set(steps) - {0})
    if mode is None:
        mode = "closed" if len(ss) <= m + G or B * n * J > _BSGS_MAX_ELEMENTS else "bsgs"
    if mode == "bsgs":
        L = _log_abs_r(x).unsqueeze(-1)  # (B, n, d, 1)
        neg = (x > 1).to(_F64).unsqueeze(-1)  # (B, n, d, 1)

        def powers(e: torch.Tensor) -> torch.Tensor:  # r^e for integer e >= 0: (B, n, d, len(e))
            sign = 1 - 2 * neg * torch.remainder(e, 2)  # (-1)^e where r < 0
            return sign * torch.exp(e * L)

        ar = torch.arange(max(m, G), dtype=_F64, device=x.device)
        baby = powers(ar[:m])  # (B, n, d, m)
        giant = powers(ar[:G] * m) * sp.z.unsqueeze(-1)  # (B, n, d, G)
        c = (giant.transpose(-1, -2) @ baby).flatten(-2)[..., :J]  # (B, n, J): c[g·m + a]
        res.update(_cumsum_to_steps(c, eta, ss))
        return res
    g = _over_x(eta.unsqueeze(-1) * sp.z, x)  # ηz/x = z/λ on x > 0
    zero_w = torch.where(x > 0, torch.zeros_like(x), eta.unsqueeze(-1) * sp.z).sum(-1)  # (B, n)
    p = torch.tensor(ss, dtype=_F64, device=x.device)  # (|steps|,); chunked over prefixes inside
    pred = _one_minus_pow_sum(x, g, p)  # (|steps|, B, n)
    if bool((zero_w != 0).any()):
        pred = pred + p.view(-1, 1, 1) * zero_w
    res.update(zip(ss, pred.unbind(0)))
    return res


def gd_predictions(X, y, steps, lr="auto", method: str = "batched", spectrum: PrefixSpectrum | None = None,
                   on_diverge: str = "raise"):
    """Gradient descent from w_0 = 0 on every prefix of every prompt -> (len(steps), B, n).

    The update is w ← w − η(S_t w − b_t) with no 1/n factor.  ``lr``: ``"auto"`` for
    η = 1/λ_max(S_t) per prefix, a positive float (fixed η; diverges where η·λ_max ≥ 2), or a
    positive (B,) / (B, n) array.  ``method``: ``"batched"`` (baby-step giant-step powers of
    A = I − ηS, O(log J) batched matmuls), ``"stepwise"`` (the recurrence on all prefixes, one step
    at a time), ``"spectral"`` (from one eigendecomposition per prefix; ``spectrum=`` reuses one),
    or ``"loop"`` (per-prefix numpy).  Output[s, b, t] predicts x_t from examples 0..t−1.
    A fixed η with η·λ_max(S_t) ≥ 2 diverges: ``on_diverge`` as in :func:`newton_predictions`.
    """
    method = _method(method, GD_METHODS)
    X, y, out = _prompts(X, y, min_n=0)
    steps = _steps(steps)
    on_diverge = _on_diverge(on_diverge)
    B, n, d = X.shape
    rate = _rate(lr, (B, n), "lr", ("auto",))  # the one validation of lr
    checked = not _needs_check(rate, on_diverge)
    if method == "spectral" and steps and n:
        sp = _get_spectrum(X, y, 0.0, spectrum)
        if not checked:
            _check_fixed_rate(rate, sp.lmax, 1, "lr", on_diverge)
        return out(_gather_steps(_gd_spectral(sp, _eta_of(rate, sp.lmax), steps), steps, (B, n), X.device))
    if method == "loop" or not steps or n == 0:
        if not checked and n:
            _check_fixed_rate(rate, _lmax(_prefix_stats(X, y)[0]), 1, "lr", on_diverge)
        if not steps or n == 0:
            return out(torch.zeros((len(steps), B, n), dtype=_F64))
        return out(_gather_steps(_gd_loop(X, y, steps, lr), steps, (B, n), X.device))
    S, b = _prefix_stats(X, y)
    lmax = _lmax(S) if (rate == "auto" or not checked) else None  # one eigvalsh for η and the check
    if not checked:
        _check_fixed_rate(rate, lmax, 1, "lr", on_diverge)
    eta = _eta_of(rate, lmax)
    fn = _gd_batched if method == "batched" else _gd_stepwise
    return out(_gather_steps(fn(S, b, X, eta, steps), steps, (B, n), X.device))


def online_gd_predictions(X, y):
    """Online GD, one example per step in order, η_i = 1/‖x_i‖², from w = 0 -> (B, n).

    Output[b, t] = x_tᵀ w_t, where w_t has seen examples 0..t−1 (so position 0 predicts 0).
    An example with x_i = 0 leaves w unchanged.  Cost O(B·n·d).
    """
    X, y, out = _prompts(X, y, min_n=0)
    B, n, d = X.shape
    w = torch.zeros(B, d, dtype=_F64, device=X.device)
    pred = torch.zeros(B, n, dtype=_F64, device=X.device)
    for t in range(n):
        x = X[:, t]  # (B, d)
        pred[:, t] = (x * w).sum(-1)
        nrm2 = (x * x).sum(-1)  # (B,)
        step = torch.where(nrm2 > 0, (pred[:, t] - y[:, t]) / torch.where(nrm2 > 0, nrm2, torch.ones_like(nrm2)), torch.zeros_like(nrm2))
        w = w - step.unsqueeze(-1) * x
    return out(pred)


# ----------------------------------------------------------------------------------------------
# Conjugate gradient
# ----------------------------------------------------------------------------------------------


def _cg_batched(S, b, xq, steps: list[int]) -> dict[int, torch.Tensor]:
    """CG on S_t w = b_t for all prefixes at once; frozen at ‖r‖ ≤ 1e-13‖b‖ or after d steps."""
    d = S.shape[-1]
    want = set(steps)
    w = torch.zeros_like(b)  # (B, n, d)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum(-1)  # (B, n)
    tol2 = (_CG_RTOL**2) * rr
    res = {0: torch.zeros_like(rr)} if 0 in want else {}
    for k in range(1, max(steps) + 1):
        Sp = (S @ p.unsqueeze(-1)).squeeze(-1)  # (B, n, d)
        pSp = (p * Sp).sum(-1)
        active = (rr > tol2) & (pSp > 0) & (k <= d)
        a = torch.where(active, rr / torch.where(active, pSp, torch.ones_like(pSp)), torch.zeros_like(pSp))
        w = w + a.unsqueeze(-1) * p
        r = r - a.unsqueeze(-1) * Sp
        rr_new = (r * r).sum(-1)
        beta = torch.where(active, rr_new / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(active.unsqueeze(-1), r + beta.unsqueeze(-1) * p, p)
        rr = torch.where(active, rr_new, rr)
        if k in want:
            res[k] = (xq * w).sum(-1)
    return res


def _cg_loop(X, y, steps: list[int]) -> dict[int, torch.Tensor]:
    Xn, yn = X.cpu().numpy(), y.cpu().numpy()
    B, n, d = Xn.shape
    K, want = max(steps), set(steps)
    res = {k: np.zeros((B, n)) for k in want}
    for bi in range(B):
        for t in range(1, n):
            Xt = Xn[bi, :t]
            S, bt = Xt.T @ Xt, Xt.T @ yn[bi, :t]
            w, r, p = np.zeros(d), bt.copy(), bt.copy()
            rr = r @ r
            tol2 = _CG_RTOL**2 * rr
            done = False
            for k in range(1, K + 1):
                if not done:
                    Sp = S @ p
                    pSp = p @ Sp
                    if rr > tol2 and pSp > 0 and k <= d:
                        a = rr / pSp
                        w = w + a * p
                        r = r - a * Sp
                        rr_new = r @ r
                        p = r + (rr_new / rr) * p
                        rr = rr_new
                    else:
                        done = True
                if k in want:
                    res[k][bi, t] = Xn[bi, t] @ w
    return {k: torch.from_numpy(v).to(X.device) for k, v in res.items()}


def cg_predictions(X, y, steps, method: str = "batched"):
    """Conjugate gradient on S_t w = b_t from w_0 = 0 for every prefix -> (len(steps), B, n).

    CG needs no step size and reaches OLS in at most rank(S_t) ≤ d steps in exact arithmetic;
    iterates are frozen after d steps or once ‖r‖ ≤ 1e-13·‖b_t‖.  ``method``: ``"batched"`` or
    ``"loop"``.  Cost O(B·n·K·d²).
    """
    method = _method(method, CG_METHODS)
    X, y, out = _prompts(X, y, min_n=0)
    steps = _steps(steps)
    B, n, d = X.shape
    if not steps or n == 0:
        return out(torch.zeros((len(steps), B, n), dtype=_F64))
    if method == "loop":
        return out(_gather_steps(_cg_loop(X, y, steps), steps, (B, n), X.device))
    S, b = _prefix_stats(X, y)
    return out(_gather_steps(_cg_batched(S, b, X, steps), steps, (B, n), X.device))


# ----------------------------------------------------------------------------------------------
# OLS and ridge
# ----------------------------------------------------------------------------------------------


OLS_DRIVERS = ("gelsd", "gelsy")


def _ols_w(X: torch.Tensor, y: torch.Tensor, lam: float, driver: str = "gelsd") -> torch.Tensor:
    """Min-norm least squares (lam = 0, gelsd or gelsy) or ridge (lam > 0): X (..., n, d) -> w (..., d)."""
    if lam == 0:
        return torch.linalg.lstsq(X, y.unsqueeze(-1), driver=driver).solution.squeeze(-1)
    d = X.shape[-1]
    S = X.transpose(-1, -2) @ X + lam * torch.eye(d, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(S, (X.transpose(-1, -2) @ y.unsqueeze(-1))).squeeze(-1)


def ols_predictions(X, y, lam: float = 0.0):
    """OLS (min-norm, lam = 0) or ridge (lam > 0) on every prefix -> (B, n).

    Output[b, t] = x_tᵀ w_t with w_t fitted to examples 0..t−1 (position 0 predicts 0).  OLS
    solves each prefix with LAPACK gelsd (SVD-based, min-norm, rcond = eps·max(n, d)) on the
    prompt with rows ≥ t zeroed, which leaves the min-norm solution unchanged.
    """
    X, y, out = _prompts(X, y, min_n=0)
    lam = _lam(lam)
    B, n, d = X.shape
    if n == 0:
        return out(torch.zeros((B, 0), dtype=_F64))
    if lam > 0:
        S, b = _prefix_stats(X, y, lam)
        w = torch.linalg.solve(S, b.unsqueeze(-1)).squeeze(-1)  # (B, n, d)
        return out((X * w).sum(-1))
    mask = torch.ones(n, n, dtype=_F64, device=X.device).tril(-1)  # mask[t, i] = 1 if i < t
    pred = torch.empty(B, n, dtype=_F64, device=X.device)
    chunk = max(1, (1 << 23) // (n * n * d))  # prompts per gelsd call (bounds B·n·n·d memory)
    for i in range(0, B, chunk):
        Xc, yc = X[i : i + chunk], y[i : i + chunk]
        Xp = mask[None, :, :, None] * Xc[:, None]  # (c, n, n, d): prefix t keeps rows i < t
        yp = mask[None] * yc[:, None]  # (c, n, n)
        w = _ols_w(Xp, yp, 0.0)  # (c, n, d)
        pred[i : i + chunk] = (Xc * w).sum(-1)
    return out(pred)


def ridge_predictions(X, y, lam: float):
    """Ridge regression (S_t + λ_r I)⁻¹ b_t on every prefix -> (B, n); lam = 0 is OLS."""
    return ols_predictions(X, y, lam=lam)


def ols_predict(X, y, x_query, lam: float = 0.0, driver: str = "gelsd") -> torch.Tensor:
    """x_qᵀ w for the min-norm OLS (lam = 0) or ridge (lam > 0) w of each prompt -> (B,).

    X (B, n, d), y (B, n), x_query (B, d); an unbatched prompt (n, d), (n,), (d,) gives 0-d.
    ``driver``: LAPACK's ``"gelsd"`` (SVD, default) or ``"gelsy"`` (rank-revealing QR: the same
    min-norm solution with the same rank cut-off, rcond = eps·max(n, d); ~30× faster at
    n = 40, d = 20, differing by rounding on well-conditioned prompts).
    """
    if driver not in OLS_DRIVERS:
        raise ValueError(f"driver must be one of {OLS_DRIVERS}, got {driver!r}")
    X, y, xq, out = _single_query(X, y, x_query)
    w = _ols_w(X, y, _lam(lam), driver)  # (B, d)
    return out((xq * w).sum(-1))
