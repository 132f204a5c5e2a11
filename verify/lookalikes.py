"""Look-alike solvers: algorithms whose layer-wise fits can be mistaken for Iterative Newton.

R² fits of best-matching steps against depth cannot tell CG, preconditioned CG and preconditioned
GD apart (MetaRepICL, 2026), and Newton was not in that set.  These references let the benchmarks
ask which algorithm's *scaling* a trained model follows (:mod:`benchmarks.experiments.o_lookalikes`).
Like :mod:`verify.reference` they run on every prefix of every prompt at once, in float64, with
the all-prefix convention: ``P[s, b, t]`` predicts y_t from the first t examples after
``steps[s]`` iterations started at w_0 = 0 on S_t w = b_t (S_t = Σ_{i<t} x_i x_iᵀ,
b_t = Σ_{i<t} y_i x_i), so position 0 predicts 0.  Output shape (len(steps), B, n), the input's
floating dtype (float64 for integer input).

Shapes: B prompts, n examples, d data dim, P = B·n prefixes, K = max steps.

Algorithms (step counts to reach accuracy ε on a well-posed S with condition number κ):

* **Preconditioned CG** (:func:`pcg_predictions`), preconditioner M⁻¹ with
  ``"diagonal"`` (Jacobi: M = diag(S_t)) or ``"covariance"`` (shrunk sample covariance:
  M = Ŝ_t + ρ·(tr Ŝ_t / d)·I with Ŝ_t = S_t / t and shrinkage ρ = ``shrinkage``).  Standard PCG:
  r = b − Sw, z = M⁻¹r, p = z + βp, step rᵀz / pᵀSp.  Frozen after d steps (exact termination) or
  once ‖r‖ ≤ 1e-13‖b‖, as :func:`verify.cg_predictions`.  Steps ≤ d, and ~√κ(M⁻¹S)·log(1/ε).
* **Chebyshev iteration** (:func:`chebyshev_predictions`) on the exact spectral interval
  [λ_min⁺, λ_max] of S_t (smallest non-zero and largest eigenvalue; b_t lies in the range of S_t):
  θ = (λ_max + λ_min⁺)/2, δ = (λ_max − λ_min⁺)/2, σ = θ/δ, ρ₀ = 1/σ, d₀ = r₀/θ and
  w_{k+1} = w_k + d_k, r_{k+1} = r_k − S d_k, ρ_{k+1} = 1/(2σ − ρ_k),
  d_{k+1} = ρ_{k+1}ρ_k d_k + (2ρ_{k+1}/δ) r_{k+1}.  ~√κ·log(2/ε) steps, the optimal polynomial rate.
* **Heavy-ball momentum GD** (:func:`heavy_ball_predictions`), Polyak's optimal constants for the
  same interval: η = 4/(√λ_max + √λ_min⁺)², β = ((√λ_max − √λ_min⁺)/(√λ_max + √λ_min⁺))²,
  w_{k+1} = w_k − η(S w_k − b) + β(w_k − w_{k−1}), w_{−1} = w_0 = 0.  ~√κ·log(1/ε) steps.
* **GD++** (:func:`gdpp_predictions`; von Oswald et al. 2023): every layer does a GD step on the
  current tokens and also transforms the inputs, x ← (I − γ_l S_l) x on every token (query
  included), S_l = X_lᵀX_l.  With X_l = X P_l (P_l a polynomial in S, P_0 = I) this is GD with the
  changing preconditioner P_l²: w ← w + η_l P_l²(b − S w), then P_{l+1} = P_l (I − γ_l S_l).
  Step sizes (our rule; the trained GD++ of the paper learns them): η_l = 1/λ_max(S_l) and
  γ_l = ``gamma``/λ_max(S_l) with ``gamma`` = 1/3, the largest value for which
  λ ↦ λ(1 − γλ)² keeps the order of the eigenvalues, so each transform shrinks κ(S_l) by up to
  9/4: ~log κ + log(1/ε) steps, Newton-like scaling from a first-order method.

Heavy ball, Chebyshev and GD++ are polynomials in S_t with scalar coefficients, so they run in
S_t's eigenbasis (one batched ``eigh`` for all prefixes, then O(P·d) per step); PCG's
preconditioner does not commute with S_t, so it runs the matrix recurrence (O(P·d²) per step).
Eigenvalues ≤ d·eps·λ_max(S_t) count as zero (as in :mod:`verify.reference`'s spectral path).
``tests/test_lookalikes.py`` checks each against a direct per-prefix numpy implementation.
"""

from __future__ import annotations

import numpy as np
import torch

from construct.validate import check_int, check_prompts, check_real

__all__ = ["pcg_predictions", "chebyshev_predictions", "heavy_ball_predictions", "gdpp_predictions",
           "LOOKALIKES", "PCG_PRECONDITIONERS"]

_F64 = torch.float64
PCG_PRECONDITIONERS = ("diagonal", "covariance")
_RTOL = 1e-13  # PCG stops once ‖r‖ ≤ _RTOL·‖b‖ (as verify.cg_predictions)


# ---------------------------------------------------------------------------------------- inputs
def _inputs(X, y, steps):
    """Validated float64 X (B, n, d), y (B, n), sorted-unique step list, the user's steps and out dtype."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    dtype = X.dtype if isinstance(X, torch.Tensor) and X.is_floating_point() else _F64
    X, y, _ = check_prompts(X, y, dtype=_F64, min_n=0)
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = [int(steps)]
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise TypeError(f"steps must be an int or a sequence of ints, got {type(steps).__name__}")
    steps = [check_int(f"steps[{i}]", s, 0) for i, s in enumerate(steps)]
    return X, y, steps, dtype


def _prefix(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S_t (B, n, d, d) and b_t (B, n, d) of every prefix (examples 0..t−1)."""
    B, n, d = X.shape
    S = torch.zeros(B, n, d, d, dtype=_F64)
    S[:, 1:] = (X.unsqueeze(-1) * X.unsqueeze(-2))[:, :-1].cumsum(1)
    b = torch.zeros(B, n, d, dtype=_F64)
    b[:, 1:] = (X * y.unsqueeze(-1))[:, :-1].cumsum(1)
    return S, b


def _spectral(X: torch.Tensor, y: torch.Tensor):
    """Eigenvalues lam (P, d) of every S_t (zeros below d·eps·λ_max), b and x_t in that eigenbasis."""
    B, n, d = X.shape
    S, b = _prefix(X, y)
    lam, Q = torch.linalg.eigh(S.reshape(B * n, d, d))  # (P, d), (P, d, d)
    lmax = lam[:, -1:].clamp(min=0)
    lam = torch.where(lam > d * torch.finfo(_F64).eps * lmax, lam, torch.zeros_like(lam))
    c = (Q.transpose(1, 2) @ b.reshape(B * n, d, 1))[..., 0]  # (P, d) coefficients of b_t
    z = (Q.transpose(1, 2) @ X.reshape(B * n, d, 1))[..., 0]  # (P, d) coefficients of x_t
    c = torch.where(lam > 0, c, torch.zeros_like(c))  # b_t has no component on the null space
    return lam, c, z


def _interval(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """λ_min⁺ (P,), λ_max (P,) of the non-zero spectrum, and the mask of prefixes with S_t ≠ 0."""
    pos = lam > 0
    has = pos.any(-1)
    lmax = torch.where(has, lam[:, -1], torch.ones_like(lam[:, -1]))
    lmin = torch.where(pos, lam, torch.full_like(lam, float("inf"))).min(-1).values
    lmin = torch.where(has, lmin, torch.ones_like(lmin))
    return lmin, lmax, has


def _collect(table: dict[int, torch.Tensor], steps: list[int], B: int, n: int, dtype) -> torch.Tensor:
    if not steps:
        return torch.zeros(0, B, n, dtype=dtype)
    out = torch.stack([table[s].reshape(B, n) for s in steps])  # (len(steps), B, n)
    if not torch.isfinite(out).all():
        raise FloatingPointError("a look-alike reference produced NaN/inf; the prompts are too badly scaled for float64")
    return out.to(dtype)


def _run_polynomial(X, y, steps, update) -> torch.Tensor:
    """Drive a polynomial-in-S method in the eigenbasis: ``update(state) -> state`` per step."""
    X, y, steps, dtype = _inputs(X, y, steps)
    B, n, d = X.shape
    if not steps or n == 0:
        return torch.zeros(len(steps), B, n, dtype=dtype)
    lam, c, z = _spectral(X, y)
    want = set(steps)
    state = {"lam": lam, "c": c, "w": torch.zeros_like(c), "k": 0}
    state.update(update(state, init=True))
    res = {0: torch.zeros(B * n, dtype=_F64)} if 0 in want else {}
    for k in range(1, max(steps) + 1):
        state["k"] = k
        state.update(update(state, init=False))
        if k in want:
            res[k] = (z * state["w"]).sum(-1)
    return _collect(res, steps, B, n, dtype)


# ---------------------------------------------------------------------------------------- Chebyshev
def chebyshev_predictions(X, y, steps) -> torch.Tensor:
    """Chebyshev iteration on S_t w = b_t over the exact interval [λ_min⁺, λ_max] -> (len(steps), B, n)."""
    def update(s, init):
        lam = s["lam"]
        if init:
            lmin, lmax, has = _interval(lam)
            theta = (lmax + lmin) / 2
            delta = ((lmax - lmin) / 2).clamp(min=1e-12 * theta)  # one distinct eigenvalue: δ → 0 is the limit
            sigma = theta / delta
            rho = 1.0 / sigma
            r = s["c"]
            return {"theta": theta, "delta": delta, "sigma": sigma, "rho": rho, "r": r,
                    "dir": torch.where(has[:, None], r / theta[:, None], torch.zeros_like(r))}
        w = s["w"] + s["dir"]
        r = s["r"] - lam * s["dir"]
        rho_new = 1.0 / (2 * s["sigma"] - s["rho"])
        dirn = (rho_new * s["rho"])[:, None] * s["dir"] + (2 * rho_new / s["delta"])[:, None] * r
        return {"w": w, "r": r, "rho": rho_new, "dir": dirn}
    return _run_polynomial(X, y, steps, update)


# ---------------------------------------------------------------------------------------- heavy ball
def heavy_ball_predictions(X, y, steps) -> torch.Tensor:
    """Polyak heavy-ball GD with the optimal η, β for [λ_min⁺, λ_max] of each S_t -> (len(steps), B, n)."""
    def update(s, init):
        lam = s["lam"]
        if init:
            lmin, lmax, has = _interval(lam)
            sl, sm = lmax.sqrt(), lmin.sqrt()
            eta = torch.where(has, 4.0 / (sl + sm) ** 2, torch.zeros_like(sl))
            beta = torch.where(has, ((sl - sm) / (sl + sm)) ** 2, torch.zeros_like(sl))
            return {"eta": eta, "beta": beta, "w_prev": torch.zeros_like(s["c"])}
        w = s["w"]
        w_new = w - s["eta"][:, None] * (lam * w - s["c"]) + s["beta"][:, None] * (w - s["w_prev"])
        return {"w": w_new, "w_prev": w}
    return _run_polynomial(X, y, steps, update)


# ---------------------------------------------------------------------------------------- GD++
def gdpp_predictions(X, y, steps, gamma: float = 1.0 / 3.0) -> torch.Tensor:
    """GD++: GD with the input transform x ← (I − γ_l S_l)x each step (see the module docstring).

    ``gamma`` ∈ (0, 1): γ_l = gamma/λ_max(S_l); η_l = 1/λ_max(S_l).  -> (len(steps), B, n).
    """
    gamma = check_real("gamma", gamma, positive=True)
    if not gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1) (gamma >= 1 can flip the sign of the preconditioner), got {gamma!r}")

    def update(s, init):
        lam = s["lam"]
        if init:
            return {"p": torch.ones_like(lam)}  # P_0 = I, eigenvalues of the preconditioner's square root
        p = s["p"]
        sl = p * p * lam  # eigenvalues of S_l = P_l S P_l
        top = sl.max(-1).values
        inv = torch.where(top > 0, 1.0 / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top))
        w = s["w"] + inv[:, None] * p * p * (s["c"] - lam * s["w"])
        p = p * (1.0 - gamma * inv[:, None] * sl)  # > 0 since gamma < 1
        # the method is invariant to P_l -> c·P_l (η_l rescales by 1/c²): renormalise so that p
        # never underflows once κ(S_l) has reached 1 and every step shrinks it by 1 − γ
        # (over the range of S only; on the null space p multiplies nothing and is set to 0)
        p = torch.where(lam > 0, p, torch.zeros_like(p))
        top_p = p.max(-1, keepdim=True).values
        return {"w": w, "p": p / torch.where(top_p > 0, top_p, torch.ones_like(top_p))}
    return _run_polynomial(X, y, steps, update)


# ---------------------------------------------------------------------------------------- PCG
def pcg_predictions(X, y, steps, preconditioner: str = "diagonal", shrinkage: float = 0.1) -> torch.Tensor:
    """Preconditioned CG on S_t w = b_t from w_0 = 0 for every prefix -> (len(steps), B, n).

    ``preconditioner``: ``"diagonal"`` (M = diag S_t) or ``"covariance"`` (M = Ŝ_t + ρ·tr(Ŝ_t)/d·I,
    Ŝ_t = S_t/t, ρ = ``shrinkage`` > 0).  Frozen after d steps or at ‖r‖ ≤ 1e-13‖b_t‖.
    """
    if preconditioner not in PCG_PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PCG_PRECONDITIONERS}, got {preconditioner!r}")
    shrinkage = check_real("shrinkage", shrinkage, positive=True)
    X, y, steps, dtype = _inputs(X, y, steps)
    B, n, d = X.shape
    if not steps or n == 0:
        return torch.zeros(len(steps), B, n, dtype=dtype)
    S, b = _prefix(X, y)  # (B, n, d, d), (B, n, d)
    diag = torch.diagonal(S, dim1=-2, dim2=-1)  # (B, n, d)
    if preconditioner == "diagonal":
        dd = torch.where(diag > 0, diag, torch.ones_like(diag))

        def apply(r):
            return r / dd
    else:
        t = torch.arange(n, dtype=_F64).clamp(min=1)[None, :, None, None]  # (1, n, 1, 1)
        Sh = S / t
        tau = torch.diagonal(Sh, dim1=-2, dim2=-1).sum(-1) / d  # (B, n)
        tau = torch.where(tau > 0, tau, torch.ones_like(tau))
        Mmat = Sh + (shrinkage * tau)[..., None, None] * torch.eye(d, dtype=_F64)
        L = torch.linalg.cholesky(Mmat)

        def apply(r):
            return torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)
    want = set(steps)
    w = torch.zeros_like(b)
    r = b.clone()
    zv = apply(r)
    p = zv.clone()
    rz = (r * zv).sum(-1)  # (B, n)
    tol2 = (_RTOL**2) * (b * b).sum(-1)
    res = {0: torch.zeros(B, n, dtype=_F64)} if 0 in want else {}
    for k in range(1, max(steps) + 1):
        Sp = (S @ p.unsqueeze(-1)).squeeze(-1)
        pSp = (p * Sp).sum(-1)
        active = ((r * r).sum(-1) > tol2) & (pSp > 0) & (k <= d)
        a = torch.where(active, rz / torch.where(active, pSp, torch.ones_like(pSp)), torch.zeros_like(pSp))
        w = w + a.unsqueeze(-1) * p
        r = r - a.unsqueeze(-1) * Sp
        zv = apply(r)
        rz_new = (r * zv).sum(-1)
        beta = torch.where(active, rz_new / torch.where(active, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = torch.where(active.unsqueeze(-1), zv + beta.unsqueeze(-1) * p, p)
        rz = torch.where(active, rz_new, rz)
        if k in want:
            res[k] = (X * w).sum(-1)
    return _collect(res, steps, B, n, dtype)


# name -> (function, keyword arguments): the look-alike set the benchmarks sweep
LOOKALIKES = {
    "pcg_diagonal": (pcg_predictions, {"preconditioner": "diagonal"}),
    "pcg_covariance": (pcg_predictions, {"preconditioner": "covariance"}),
    "chebyshev": (chebyshev_predictions, {}),
    "heavy_ball": (heavy_ball_predictions, {}),
    "gd_plus_plus": (gdpp_predictions, {}),
}
