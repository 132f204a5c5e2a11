"""Precision guard: refuse a prompt on which the model's dtype cannot deliver the promised accuracy.

The promise (``PROMISED_RTOL``): a prediction p̂ of a Newton network agrees with exact Iterative
Newton p = x_qᵀ M_k Xᵀy on the same (dtype-cast) prompt to

    |p̂ − p| ≤ rtol · ‖x_q‖·‖w_k‖,      w_k = M_k Xᵀy,   rtol = 1e-10 (float64), 1e-4 (float32),

a *normwise* relative error: ‖x_q‖‖w_k‖ is the size of the prediction before any cancellation
in the final inner product (|p| itself can be 0 when x_q ⟂ w_k, which no algorithm controls).
:func:`precision_estimate` bounds the error to first order; the model raises
:class:`PrecisionError` (or warns) where that bound exceeds rtol, and always where the output is
NaN/inf.

**Derivation.**  Write S = Σ s_i q_i q_iᵀ (eigendecomposition, float64), x̃ = Qᵀx_q, b̃ = QᵀXᵀy,
and m(s) = (1 − (1 − αs²)^(2^k))/s, so M_k = m(S) and w̃_i = m(s_i) b̃_i.

1. *Perturbing S.*  The network never forms S; it sums x_l⟨x_l, ·⟩ over tokens, and every such
   sum, like rounding the inputs to the dtype, is exact for a data matrix perturbed by
   |δS| ≲ γ·u·λ_max(S), γ = N + d (N tokens, d coordinates per inner product), u the unit
   round-off.  By the Daleckii–Krein formula, δM = Q (D ∘ Qᵀ δS Q) Qᵀ with D_il the divided
   differences (m(s_i) − m(s_l))/(s_i − s_l) (D_ii = m'(s_i)), so
   |δp| ≤ γ·u·λ_max · Σ_il |x̃_i| |D_il| |b̃_l|.
   For k → ∞, D_il → −1/(s_i s_l) and this is the usual κ(S)·u sensitivity of least squares;
   for small k, |m'(s)| ≤ 2^k α: few steps are well conditioned whatever κ(S).
2. *Perturbing Xᵀy* (rounding y, X and the sum): |δp| ≤ γ·u·Σ_i |x̃_i| m(s_i) ‖b‖.
3. *Merged form, slot c.*  The merged form carries c = S M_j z separately and updates it by
   c ← (2I − S M_j) c.  Rounding junk of size u‖c‖ that lands on an eigendirection s_l not yet
   converged (αs_l²·2^j < 1) is doubled every step, while c's true value there stays ∝ s_l²:
   the gain is ∏_j (1 + (1 − αs_l²)^(2^j)) = (1 − r_l^(2^k))/(αs_l²) ≤ min(2^k, 2/(αs_l²)).  The
   read-out contracts c_q with w, so |δp| ≤ γ·u·‖x_q‖·Σ_l min(2^k, 2/(αs_l²))·|w̃_l|.  The default
   form has no such term (this is why merged k ≥ 20 on κ(S) ≳ 10⁴ misses 1e-10 while the
   default form does not).
4. *Null space.*  Eigenvalues ≤ d·eps₆₄·λ_max are exact zeros of S (b̃ has no component there in
   exact arithmetic, as in a pseudo-inverse).  Newton–Schulz doubles round-off on a token's own
   null-space component every step (Söderström & Stewart 1974): the query's slot u grows as
   2^j·u·‖x_q‖ when rank S < d.  The default form's read-out never reads the query's u, so its
   prediction stays accurate until that slot overflows (k ≈ 1070 in float64, ≈ 100 in float32),
   which the non-finite check catches.  The merged read-out reads it: its prediction gets a
   2^k·u²‖x_q‖‖w‖ term (4 below).

The estimate is C·(sum of 1–3, plus 4 for the merged form) / (‖x_q‖‖w_k‖) with C =
``PRECISION_C``; C is a safety factor over first-order analysis, checked by the fuzz suite
(tests/test_fuzz.py): no returned prediction may miss rtol.

**GD networks** (:func:`gd_precision_estimate`).  Same promise, w_k the exact k-step GD iterate
w_k = m_k(S) Xᵀy, m_k(s) = (1 − r^k)/s, r = 1 − η s (η = lr_eff).  The network
(:mod:`construct.blocks.gd`) keeps the residuals r⁽ᵗ⁾ = (I − ηXXᵀ)^t y on the train tokens and
accumulates out += η x_qᵀXᵀr⁽ᵗ⁾ on the query.  With X = UΣQᵀ, s_i = σ_i², x̃ = Qᵀx_q, c = Uᵀy:

1. *Read-out, step t.*  Σ_l ⟨x_q, x_l⟩ r_l is rounded against its terms' sizes:
   |δout_t| ≤ γ·u·η·‖x_q‖·‖X‖_F·‖r⁽ᵗ⁾‖, ‖r⁽ᵗ⁾‖² = Σ_i r_i^(2t) c_i² + ‖y off range X‖² (exact).
2. *Residual update, step t.*  r ← r − ηXXᵀr injects ‖δr_t‖ ≤ γ·u·(η‖X‖_F² + 1)·‖r⁽ᵗ⁾‖.  It is
   carried by I − ηXXᵀ, whose factor per direction is r_i, |r_i| ≤ 1 on a convergent prompt
   (no growth, unlike Newton's doubling), and read by the m = k − 1 − t later read-outs:
   η x_qᵀXᵀ Σ_{j<m} (I − ηXXᵀ)^j δr_t, gain |1 − r_i^m|/σ_i on direction i
   (≤ min(mησ_i, 2/σ_i): linear in the steps on slow directions, 1/σ_i ≈ κ-like on fast ones),
   so |δp| ≤ ‖(|1 − r_i^m|/σ_i · |x̃_i|)_i‖·‖δr_t‖.
3. *The sum out itself:* u per step against ‖x_q‖‖w_k‖.

Summed over the k steps, the error grows about linearly with the steps times u·(‖X‖_F²/λ-like)
terms, and the normwise scale ‖x_q‖‖w_k‖ can be far below the iterates' sizes when η s ≈ 2
(r ≈ −1: w_k = (1 − r^k)/s·b̃ nearly cancels for even k) — the class the 10,000-case fuzz found
silent in float32 before this estimate (tests/test_fuzz.py::test_gd_float32_silent_case_now_refused).
Estimate: ``GD_PRECISION_C``·(1 + 2 + 3)/√γ / (‖x_q‖‖w_k‖), γ = N + d, with the same √γ
accumulation and C = 4 as the Newton estimate.  *Calibration* (GD cases of the fuzz strategy,
measured error / estimate): max 0.07 in float32 (68 valid cases) and 0.05 in float64 (71), i.e. the
bound is ≥ 14× above every measured error.  GD-only float32 fuzz (``run_fuzz(n, forms=("gd",),
dtypes=(torch.float32,))``): 30 silent in 3,000 cases without this estimate, 0 in 1,500 with it.
"""

from __future__ import annotations

import math
import warnings

import torch

F64 = torch.float64
PROMISED_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
PRECISION_C = 4.0  # safety factor over the first-order bound (module doc); fuzz-checked
GD_PRECISION_C = 4.0  # the same for GD networks (module doc, "GD networks"); fuzz-checked
CHECK_MODES = ("raise", "warn", "ignore")


class PrecisionError(ArithmeticError, ValueError):
    """The model's dtype cannot deliver the promised accuracy on a prompt (or produced NaN/inf)."""


class PrecisionWarning(RuntimeWarning):
    """Warning form of :class:`PrecisionError`."""


def _m_and_dm(s: torch.Tensor, a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """m(s) = (1 − r^P)/s and m'(s), r = 1 − a s², P = 2^k, for s ≥ 0 (m(0) = 0, m'(0) = P a)."""
    P = 2.0 ** min(k, 1023)
    x = a * s * s
    logr = torch.where(x <= 1, torch.log1p(-x.clamp(max=1.0)), torch.log((x - 1).clamp(min=1e-300)))
    logr = logr.clamp(min=-1e300)
    neg = (x > 1) & (k == 0)  # r^P with P = 2^k even for k ≥ 1
    rP = torch.exp(P * logr) * torch.where(neg, -1.0, 1.0)  # r^P
    rP1 = torch.exp((P - 1) * logr) * torch.where(x > 1, -1.0, 1.0)  # r^(P−1), P − 1 odd for k ≥ 1
    if k == 0:
        rP1 = torch.ones_like(x)
    pos = s > 0
    s1 = torch.where(pos, s, torch.ones_like(s))
    om = -torch.expm1(P * logr) if k else x  # 1 − r^P (accurate for small x)
    om = torch.where(x > 1, 1 - rP, om)
    m = torch.where(pos, om / s1, torch.zeros_like(s))
    dm = torch.where(pos, -m / s1 + 2 * a * P * rP1, a * P)  # d/ds (1 − r^P)/s
    return m, dm


FORMS = ("default", "merged", "matrix")


def precision_estimate(X, y, x_query, alpha_eff, k: int, *, lam: float = 0.0, dtype: torch.dtype = F64,
                       form: str = "default") -> torch.Tensor:
    """First-order bound on the normwise relative error of a Newton prediction (B,).

    ``X`` (B, n, d), ``y`` (B, n), ``x_query`` (B, d); ``alpha_eff`` a float or (B,) (α/N² under
    1/N normalisation); ``dtype`` the arithmetic.  ``form``: the network's form ("default",
    "merged"), or "matrix" for the reference that forms M_k as a matrix
    (:func:`verify.newton_predict`), whose null-null block doubles round-off (term 4) but which
    has no slot c.  See the module docstring.
    """
    if form not in FORMS:
        form = "merged"  # unknown (newer) forms: the most conservative estimate
    X = torch.as_tensor(X).to(F64)
    y = torch.as_tensor(y).to(F64)
    xq = torch.as_tensor(x_query).to(F64)
    B, n, d = X.shape
    u = float(torch.finfo(dtype).eps) / 2
    a = torch.as_tensor(alpha_eff, dtype=F64).reshape(-1).expand(B)[:, None]  # (B, 1)
    S = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=F64)  # (B, d, d)
    s, Q = torch.linalg.eigh(S)  # (B, d), (B, d, d)
    smax = s[:, -1:].clamp(min=0)
    null = s <= d * float(torch.finfo(F64).eps) * smax  # exact zeros of S (module doc, 4)
    s = torch.where(null, torch.zeros_like(s), s)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # (B, d)
    bn = b.norm(dim=-1, keepdim=True)
    xt = (Q.transpose(1, 2) @ xq[..., None])[..., 0].abs()  # |x̃| (B, d)
    bt = (Q.transpose(1, 2) @ b[..., None])[..., 0].abs()  # |b̃|
    if form == "default":
        bt = torch.where(null, torch.zeros_like(bt), bt)  # the network applies M only to x_l ∈ range S
    else:  # M (or the query's u) meets Xᵀy's rounded null component, ≈ u‖b‖
        bt = torch.where(null, torch.maximum(bt, u * bn), bt)
    gamma = n + 1 + d + (d if lam > 0 else 0)
    x = a * s * s  # (B, d) = α s²
    r = torch.where(null, torch.ones_like(s), 1 - x)  # per-direction residual factor
    m = torch.zeros_like(s)  # m_0(s) = α s on the range
    m = a * s
    # e(i, l): bound on |Q^T (M̂_t − M_t) Q|_il; injected γu·max|m|(2 + s|m|) per step (the terms' size),
    # propagated by δ ↦ δ(I − S M_t) + (I − M_t S) δ, i.e. ×|r_i^(2^t) + r_l^(2^t)|
    e = (gamma * u * m.abs().amax(-1))[:, None, None].expand(B, d, d).clone()
    g = torch.full_like(s, 2 * gamma * u)  # merged slot c: ×(1 + r_l^(2^t)) per step, injected 2γu
    rp = r.clone()  # r^(2^t)
    steps = min(k, 200)
    for t in range(steps):
        G = (rp[:, :, None] + rp[:, None, :]).abs()
        inj = gamma * u * (m.abs() * (2 + s * m.abs())).amax(-1)  # round-off of 2M − MSM: its terms' size
        m = 2 * m - s * m * m
        e = G * e + inj[:, None, None]
        g = (1 + rp.abs()) * g + 2 * gamma * u
        rp = rp * rp
    if k > steps:  # beyond 200 steps every r^(2^t) is 0 (range) or 1 (null): closed form
        R = k - steps
        nn = null[:, :, None] & null[:, None, :]
        e = torch.where(nn, e * 2.0 ** min(R, 1100), e + R * 3 * gamma * u * m.abs().amax(-1)[:, None, None])
        g = torch.where(null, g * 2.0 ** min(R, 1100), g + R * 2 * gamma * u)
    mk = torch.where(null, torch.zeros_like(m), m)  # m_k(s), 0 on the null space
    w = mk * bt  # |w̃|
    wn = w.norm(dim=-1)
    xn = xq.norm(dim=-1)
    err = torch.einsum("bi,bil,bl->b", xt, e, bt)  # recurrence round-off
    err = err + gamma * u * (xt * mk).sum(-1) * bn[:, 0]  # rounding Xᵀy (module doc, 2)
    if form == "merged":
        err = err + xn * (g * w).sum(-1)  # slot c (module doc, 3)
    scale = xn * wn
    # every term above carries one factor γ (the worst case, errors of one sign); round-off
    # accumulates like √γ in practice, which the fuzz suite measures (module doc, "Calibration")
    err = err / math.sqrt(gamma)
    est = PRECISION_C * err / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, est, torch.zeros_like(est))


def check_precision(estimate: torch.Tensor, dtype: torch.dtype, on_fail: str = "raise", what: str = "prompt",
                    rtol: float | None = None) -> torch.Tensor:
    """Raise / warn where ``estimate`` (from :func:`precision_estimate`) exceeds the promised rtol."""
    if on_fail not in CHECK_MODES:
        raise ValueError(f"check_precision must be one of {CHECK_MODES}, got {on_fail!r}")
    rtol = PROMISED_RTOL[dtype] if rtol is None else rtol
    bad = estimate > rtol
    if bad.any() and on_fail != "ignore":
        i = int(torch.nonzero(bad.reshape(-1))[0])
        msg = (
            f"{str(dtype).removeprefix('torch.')} cannot deliver the promised relative accuracy {rtol:g} on "
            f"{int(bad.sum())} {what}(s) (first index {i}): the first-order error bound is "
            f"{float(estimate.max()):.3g} (ill-conditioned S = XᵀX, many Newton steps on slowly converging "
            "directions, or alpha close to the divergence boundary). Use a float64 model, fewer steps k, a "
            "ridge lam > 0, or check_precision='ignore' to get the number anyway "
            "(see construct.precision for the bound)."
        )
        if on_fail == "raise":
            raise PrecisionError(msg)
        warnings.warn(msg, PrecisionWarning, stacklevel=3)
    return bad


def check_finite(name: str, out: torch.Tensor, hint: str = "") -> torch.Tensor:
    """Raise :class:`PrecisionError` if ``out`` holds NaN/inf (never hand them back silently)."""
    if out.numel() and not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise PrecisionError(
            f"{name} produced {bad} NaN/inf value(s) from finite input: the computation overflowed "
            f"in {str(out.dtype).removeprefix('torch.')}." + (f" {hint}" if hint else "")
        )
    return out


def gd_precision_estimate(X, y, x_query, lr_eff, steps: int, *, dtype: torch.dtype = F64) -> torch.Tensor:
    """First-order bound on the normwise relative error of a GD network's prediction (B,).

    ``X`` (B, n, d), ``y`` (B, n), ``x_query`` (B, d); ``lr_eff`` a float or (B,) (lr/N under 1/N
    normalisation); ``steps`` the number of GD steps; ``dtype`` the arithmetic.  The promise is
    the Newton one with w_k the exact k-step GD iterate (see "GD networks" in the module doc).
    """
    X = torch.as_tensor(X).to(F64)
    y = torch.as_tensor(y).to(F64)
    xq = torch.as_tensor(x_query).to(F64)
    B, n, d = X.shape
    u = float(torch.finfo(dtype).eps) / 2
    eta = torch.as_tensor(lr_eff, dtype=F64).reshape(-1).expand(B)[:, None]  # (B, 1)
    S = X.transpose(1, 2) @ X  # (B, d, d)
    s, Q = torch.linalg.eigh(S)  # (B, d), (B, d, d)
    smax = s[:, -1:].clamp(min=0)
    null = s <= d * float(torch.finfo(F64).eps) * smax
    s = torch.where(null, torch.zeros_like(s), s)
    sig = s.sqrt()
    sig1 = torch.where(null, torch.ones_like(sig), sig)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # (B, d)
    bt = (Q.transpose(1, 2) @ b[..., None])[..., 0]  # b̃ = Σ c, c = Uᵀy on the range
    c = torch.where(null, torch.zeros_like(bt), bt / sig1)
    yperp2 = (y.pow(2).sum(-1, keepdim=True) - c.pow(2).sum(-1, keepdim=True)).clamp(min=0)  # ‖y‖² off range X
    xt = (Q.transpose(1, 2) @ xq[..., None])[..., 0].abs()  # |x̃| (B, d)
    xn = xq.norm(dim=-1)
    fro = X.pow(2).sum((-2, -1)).sqrt()[:, None]  # ‖X‖_F (B, 1)
    r = torch.where(null, torch.ones_like(s), 1 - eta * s)  # per-direction factor of I − ηXXᵀ, |r| ≤ 1
    gamma = n + 1 + d
    # ‖r⁽ᵗ⁾‖ for t = 0..k−1 and the residual round-off injected at step t, ‖δr_t‖
    err = torch.zeros(B, dtype=F64)
    rp = torch.ones_like(s)  # r^t
    steps_run = int(steps)
    inj = []  # (t, ‖δr_t‖)
    for t in range(steps_run):
        rn = ((rp * c).pow(2).sum(-1, keepdim=True) + yperp2).sqrt()[:, 0]  # ‖r⁽ᵗ⁾‖
        # query read-out: out += η Σ_l ⟨x_q, x_l⟩ r_l (products rounded against ‖x_q‖‖x_l‖|r_l|)
        err = err + gamma * u * eta[:, 0] * xn * fro[:, 0] * rn
        inj.append(gamma * u * (eta[:, 0] * fro[:, 0] ** 2 + 1) * rn)
        rp = rp * r
    # propagate δr_t to the read-out: gain |1 − r_i^m|/σ_i on direction i, m = k − 1 − t steps read it
    rm = torch.ones_like(s)
    for m in range(1, steps_run):  # δr_{k-1-m}
        rm = rm * r
        g = torch.where(null, torch.zeros_like(s), (1 - rm).abs() / sig1)
        err = err + (g * xt).norm(dim=-1) * inj[steps_run - 1 - m]
    # the accumulated out itself: rounding ≈ u per step against |x_qᵀ w_t| ≤ ‖x_q‖‖w_t‖
    mk = torch.where(null, torch.zeros_like(s), (1 - rp) / sig1)  # m_k(s)·σ = (1 − r^k)/σ
    wn = (mk * c).norm(dim=-1)  # ‖w_k‖ = ‖(1 − r^k)/s · b̃‖
    err = err + steps_run * u * xn * wn
    scale = xn * wn
    est = GD_PRECISION_C * err / math.sqrt(gamma) / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, est, torch.zeros_like(est))
