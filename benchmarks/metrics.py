"""The paper's metrics (Fu et al. 2024, §3), vectorised over layers / steps and prompts.

Every metric works on *prediction tensors*, so any model or algorithm plugs in: a trained
transformer through its layer probes (:mod:`benchmarks.probes`), the hand-built Newton network
for k = 0 … K, Iterative Newton / GD / online GD / OLS from :mod:`verify.reference`, the LSTM.

Shapes (glossary as in :mod:`construct.transformer`)::

    B prompts, n examples per prompt, d data dim, T fresh queries per prompt,
    A / S  the "family" axes of the two things compared (layers of a model, steps of an
           algorithm); a single model is a family of one (a bare (B, n) is promoted to (1, B, n)).

All-prefix convention (Garg et al.; :mod:`verify.reference`): ``P[a, b, t]`` is the prediction of
y_t from the first t examples of prompt b, so t = 0 is the prediction with no context (0 for
every algorithm started at w = 0).

Definitions used here (and stated in every output that uses them):

* **Normalised squared error** ``(ŷ_t − y_t)² / d``, averaged over prompts.
  :func:`error_vs_examples` gives it at every t, :func:`nmse` at one position (default the last,
  t = n − 1) or averaged over a range of positions.  The zero predictor scores tr(Σ)/d
  (= 1 for Σ = I, noiseless).
* **SimE** (similarity of errors): for one prompt, the cosine between the residual vectors
  r_A = (ŷ^A_t − y_t)_t and r_B over positions t = ``start`` … n − 1; then the mean over
  prompts.  ``start = 1`` is our default: it skips t = 0 (no context), where every method
  started at w = 0 predicts 0, so its residual −y_0 is trivially identical and only inflates the
  cosine.  The paper's released code includes that position (``start = 0``); this moves every
  SimE value by about 0.01–0.1 but, in our runs, not the best-matching step.  Experiment m
  (:mod:`benchmarks.experiments.m_models`) reports both conventions side by side.
* **SimW** (similarity of induced weights): give each prompt a fixed context of ``t`` examples and
  T ≫ d fresh queries from the prompt's own distribution; fit w̃ = argmin_w Σ_q (w·x_q − ŷ(x_q))²
  (least squares, no intercept) to the method's predictions; SimW is the cosine of the two w̃,
  averaged over prompts.  The context length t is a parameter of the experiment, not of this
  module (see :func:`augment_queries`); :mod:`benchmarks.run` uses t = n − 1, the longest context
  a model trained on n-point prompts can take together with a query.
* **Best-matching step** of layer a: argmax over steps s of a similarity matrix (A, S).
* **Trends**: best-matching steps vs layer fitted by least squares as linear (s = a·ℓ + b) or
  exponential (log₁₀ s = a·ℓ + b), with R² in the fitted space.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

_F64 = torch.float64
_EPS = 1e-300  # guards 0/0 in cosines; a zero residual vector has cosine 0 with everything


# ------------------------------------------------------------------------------ helpers
def _t(a, name: str) -> torch.Tensor:
    """float64 tensor from a tensor / ndarray, checked for NaN/inf."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    a = a.detach().to(device="cpu", dtype=_F64)
    if a.numel() and not torch.isfinite(a).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(a)).sum())} NaN/inf value(s)")
    return a


def _family(P, y: torch.Tensor, name: str) -> torch.Tensor:
    """Predictions as (A, B, n) matching y (B, n); a bare (B, n) becomes (1, B, n)."""
    P = _t(P, name)
    if P.dim() == 2:
        P = P[None]
    if P.dim() != 3 or tuple(P.shape[1:]) != tuple(y.shape):
        raise ValueError(f"{name} must have shape (A, B, n) or (B, n) with (B, n) = {tuple(y.shape)}, got {tuple(P.shape)}")
    return P


def _targets(y, name: str = "y") -> torch.Tensor:
    y = _t(y, name)
    if y.dim() != 2:
        raise ValueError(f"{name} must have shape (B, n), got {tuple(y.shape)}")
    return y


def _check_d(d) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d (data dimension used to normalise) must be an int >= 1, got {d!r}")
    return int(d)


# ------------------------------------------------------------------------------ errors
def error_vs_examples(P, y, d: int) -> torch.Tensor:
    """Normalised squared error at every number of in-context examples: (A, n).

    Entry [a, t] = mean over prompts of (P[a, b, t] − y[b, t])² / d, i.e. the error of layer/step
    a after seeing t examples.
    """
    y = _targets(y)
    P = _family(P, y, "P")
    return ((P - y) ** 2).mean(1) / _check_d(d)


def nmse(P, y, d: int, position: int | slice = -1) -> torch.Tensor:
    """Normalised squared error (A,) at one position (default t = n − 1) or averaged over a slice."""
    e = error_vs_examples(P, y, d)  # (A, n)
    if isinstance(position, slice):
        sel = e[:, position]
        if sel.shape[1] == 0:
            raise ValueError(f"position slice {position} selects no positions of n = {e.shape[1]}")
        return sel.mean(1)
    n = e.shape[1]
    if not -n <= position < n:
        raise ValueError(f"position {position} is out of range for n = {n} examples")
    return e[:, position]


# ------------------------------------------------------------------------------ SimE
def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis of every pair: a (A, B, m), b (S, B, m) -> (A, S, B)."""
    an = a / a.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    bn = b / b.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    return torch.einsum("abm,sbm->asb", an, bn)


def sim_e(P_a, P_b, y, start: int = 1, per_prompt: bool = False) -> torch.Tensor:
    """Similarity of errors between two families of predictions: (A, S).

    ``P_a`` (A, B, n) or (B, n), ``P_b`` (S, B, n) or (B, n), ``y`` (B, n).  Entry [a, s] is the
    mean over prompts of cos(r_a, r_s), with residuals r = ŷ_t − y_t over positions
    t = start … n − 1 (default 1: skip the no-context position, see the module docstring).
    ``per_prompt=True`` returns the un-averaged (A, S, B).
    """
    y = _targets(y)
    A = _family(P_a, y, "P_a")
    S = _family(P_b, y, "P_b")
    n = y.shape[1]
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < n:
        raise ValueError(f"start must be an int in [0, n) = [0, {n}), got {start!r}")
    c = cosine_rows((A - y)[..., start:], (S - y)[..., start:])  # (A, S, B)
    return c if per_prompt else c.mean(-1)


# ------------------------------------------------------------------------------ SimW
def augment_queries(X_ctx, y_ctx, Xq) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts that ask for one fresh query each: (B·T, t + 1, d), (B·T, t + 1).

    Prompt (b, q) is the context X_ctx[b] (t examples) followed by the query Xq[b, q] with label
    0, so under the all-prefix convention its *last* position is the prediction at x_q from the t
    context examples: ``model.predict_all(Xa, ya)[:, -1].reshape(B, T)``.  Works for any model
    (causal transformers, the LSTM, the hand-built network, the reference algorithms).
    """
    Xc, yc, Xq = _t(X_ctx, "X_ctx"), _t(y_ctx, "y_ctx"), _t(Xq, "Xq")
    if Xc.dim() != 3 or yc.shape != Xc.shape[:2] or Xq.dim() != 3 or Xq.shape[0] != Xc.shape[0] or Xq.shape[2] != Xc.shape[2]:
        raise ValueError(
            f"need X_ctx (B, t, d), y_ctx (B, t), Xq (B, T, d); got {tuple(Xc.shape)}, {tuple(yc.shape)}, {tuple(Xq.shape)}"
        )
    B, t, d = Xc.shape
    T = Xq.shape[1]
    Xa = torch.cat([Xc[:, None].expand(B, T, t, d), Xq[:, :, None, :]], dim=2).reshape(B * T, t + 1, d)
    ya = torch.cat([yc[:, None].expand(B, T, t), torch.zeros(B, T, 1, dtype=_F64)], dim=2).reshape(B * T, t + 1)
    return Xa, ya


def induced_weights(Xq, preds) -> torch.Tensor:
    """Least-squares w̃ per prompt from predictions at fresh queries: (A, B, d).

    ``Xq`` (B, T, d) queries (T ≥ d, full column rank), ``preds`` (A, B, T) or (B, T) the
    method's predictions there.  w̃ = (X_qᵀX_q)⁻¹X_qᵀŷ, solved by QR per prompt (float64), no
    intercept (every method compared is linear in x_q through the origin, or is judged as if).
    """
    Xq = _t(Xq, "Xq")
    if Xq.dim() != 3:
        raise ValueError(f"Xq must have shape (B, T, d), got {tuple(Xq.shape)}")
    B, T, d = Xq.shape
    if T < d:
        raise ValueError(f"need at least d = {d} queries per prompt to fit w̃, got T = {T} (use T ≫ d)")
    P = _t(preds, "preds")
    if P.dim() == 2:
        P = P[None]
    if P.dim() != 3 or tuple(P.shape[1:]) != (B, T):
        raise ValueError(f"preds must have shape (A, B, T) or (B, T) with (B, T) = ({B}, {T}), got {tuple(P.shape)}")
    Q, R = torch.linalg.qr(Xq)  # (B, T, d), (B, d, d)
    rhs = torch.einsum("btd,abt->abd", Q, P)  # (A, B, d) = Qᵀŷ
    w = torch.linalg.solve_triangular(R[None].expand(P.shape[0], B, d, d), rhs[..., None], upper=True)
    return w[..., 0]


def sim_w(W_a, W_b, per_prompt: bool = False) -> torch.Tensor:
    """Similarity of induced weights: W_a (A, B, d) or (B, d), W_b (S, B, d) or (B, d) -> (A, S).

    Entry [a, s] is the mean over prompts of cos(w̃_a, w̃_s).
    """
    Wa, Wb = _t(W_a, "W_a"), _t(W_b, "W_b")
    Wa = Wa[None] if Wa.dim() == 2 else Wa
    Wb = Wb[None] if Wb.dim() == 2 else Wb
    if Wa.dim() != 3 or Wb.dim() != 3 or Wa.shape[1:] != Wb.shape[1:]:
        raise ValueError(f"W_a and W_b must be (A, B, d) and (S, B, d) with matching (B, d); got {tuple(Wa.shape)}, {tuple(Wb.shape)}")
    c = cosine_rows(Wa, Wb)
    return c if per_prompt else c.mean(-1)


# ------------------------------------------------------------------------------ best matches
def best_match(sim, steps: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Argmax over steps of a similarity matrix (A, S) -> (index (A,), step (A,), value (A,)).

    ``steps`` maps column s to its step count (default: the column index).  Ties go to the first
    (smallest) step.
    """
    M = _t(sim, "sim")
    if M.dim() != 2 or M.shape[1] == 0:
        raise ValueError(f"sim must be a non-empty (A, S) matrix, got {tuple(M.shape)}")
    idx = M.argmax(1).numpy()
    st = np.arange(M.shape[1]) if steps is None else np.asarray(list(steps))
    if st.shape != (M.shape[1],):
        raise ValueError(f"steps has {st.shape[0]} entries but sim has {M.shape[1]} columns")
    return idx, st[idx], M.numpy()[np.arange(M.shape[0]), idx]


def fit_trend(layers, steps, kind: str = "linear") -> dict:
    """Least-squares trend of best-matching steps vs layer.

    ``kind="linear"``: steps ≈ slope·layer + intercept, R² on steps.
    ``kind="exponential"``: log₁₀ steps ≈ slope·layer + intercept, R² on log₁₀ steps (steps must
    be > 0); ``factor_per_layer`` = 10^slope.  Returns slope, intercept, r2 (None when fewer than
    3 points or no variance), n_points and the layers used.
    """
    if kind not in ("linear", "exponential"):
        raise ValueError(f"kind must be 'linear' or 'exponential', got {kind!r}")
    x = np.asarray(layers, dtype=np.float64).ravel()
    s = np.asarray(steps, dtype=np.float64).ravel()
    if x.shape != s.shape:
        raise ValueError(f"layers and steps must have the same length, got {x.shape[0]} and {s.shape[0]}")
    if kind == "exponential":
        if (s <= 0).any():
            raise ValueError("an exponential trend needs steps > 0 (log scale)")
        s = np.log10(s)
    out = {"kind": kind, "layers": [int(v) if float(v).is_integer() else float(v) for v in x],
           "n_points": int(x.size), "slope": None, "intercept": None, "r2": None}
    if x.size < 2 or np.ptp(x) == 0:
        return out
    slope, intercept = np.polyfit(x, s, 1)
    out["slope"], out["intercept"] = float(slope), float(intercept)
    if kind == "exponential":
        out["factor_per_layer"] = float(10.0**slope)
    ss_tot = float(((s - s.mean()) ** 2).sum())
    if x.size >= 3 and ss_tot > 0:
        out["r2"] = float(1.0 - ((s - (slope * x + intercept)) ** 2).sum() / ss_tot)
    return out


def log_step_grid(max_step: int, points: int, start: int = 1) -> list[int]:
    """About ``points`` distinct integers from ``start`` to ``max_step``, evenly spaced in log."""
    if start < 1 or max_step < start or points < 1:
        raise ValueError(f"need 1 <= start <= max_step and points >= 1, got {start}, {max_step}, {points}")
    g = np.unique(np.round(np.logspace(math.log10(start), math.log10(max_step), points)).astype(np.int64))
    return [int(v) for v in g]


# ------------------------------------------------------------------------------ bootstrap
def bootstrap_weights(B: int, n_boot: int, seed: int = 0) -> torch.Tensor:
    """Resampling weights over prompts for a percentile bootstrap: (n_boot, B), rows sum to 1.

    Row r holds count_r(b)/B, where count_r is how often prompt b was drawn in B draws with
    replacement; so ``W @ per_prompt`` is every replicate's mean at once (per_prompt (B, ...)).
    Seeded (numpy PCG64), so the intervals are reproducible.
    """
    if isinstance(B, bool) or not isinstance(B, (int, np.integer)) or B < 1:
        raise ValueError(f"B (prompts) must be an int >= 1, got {B!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}")
    idx = np.random.default_rng(seed).integers(0, B, size=(n_boot, B))
    counts = np.zeros((n_boot, B))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return torch.from_numpy(counts / B)


def replicate_means(per_prompt, W: torch.Tensor) -> torch.Tensor:
    """Bootstrap replicates of a mean over prompts: per_prompt (..., B) -> (n_boot, ...)."""
    P = _t(per_prompt, "per_prompt")
    if P.shape[-1] != W.shape[1]:
        raise ValueError(f"per_prompt's last axis ({P.shape[-1]}) must be the prompts of W ({W.shape[1]})")
    return torch.einsum("...b,rb->r...", P, W)


def interval(samples, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 of bootstrap replicates: (lo, hi), each samples.shape[1:]."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    a = np.asarray(samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    if a.ndim == 0 or a.shape[0] < 2:
        raise ValueError("need at least 2 bootstrap replicates along axis 0")
    q = (1 - level) / 2
    return np.quantile(a, q, axis=0), np.quantile(a, 1 - q, axis=0)


def linear_fits(x, S) -> dict[str, np.ndarray]:
    """Least-squares lines s = slope·x + intercept for many replicates at once.

    ``x`` (m,) shared abscissae, ``S`` (r, m) one row per replicate -> slope, intercept, r2 (r,)
    (r2 NaN where a row has no variance).  Same numbers as :func:`fit_trend` per row.
    """
    x = np.asarray(x, dtype=np.float64)
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    if x.ndim != 1 or S.shape[1] != x.size or x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"need x (m,) with m >= 2 distinct values and S (r, m); got {x.shape} and {S.shape}")
    xc = x - x.mean()
    Sc = S - S.mean(1, keepdims=True)
    slope = (Sc @ xc) / (xc @ xc)
    intercept = S.mean(1) - slope * x.mean()
    ss_tot = (Sc**2).sum(1)
    ss_res = ((S - (slope[:, None] * x + intercept[:, None])) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)
    return {"slope": slope, "intercept": intercept, "r2": r2}


def matched_steps(err_curve, steps, target) -> np.ndarray:
    """Fractional step count at which a decreasing error curve reaches ``target`` (log-linear interpolation).

    ``err_curve`` (..., S) errors at ``steps`` (S,), increasing; ``target`` (...) -> (...) steps.
    The curve is made monotone by a running minimum first.  Targets above the first point give
    the first step (censored below), targets below the last give NaN (not reached on the grid).
    """
    E = np.minimum.accumulate(np.asarray(err_curve, dtype=np.float64), axis=-1)
    st = np.asarray(steps, dtype=np.float64)
    T = np.asarray(target, dtype=np.float64)
    if E.shape[-1] != st.size or E.shape[:-1] != T.shape:
        raise ValueError(f"err_curve (..., S) must match steps (S,) and target (...): {E.shape}, {st.shape}, {T.shape}")
    lE = np.log(np.maximum(E, 1e-300))
    lT = np.log(np.maximum(T, 1e-300))
    below = lE <= lT[..., None]  # (..., S): reached at this grid point
    first = np.where(below.any(-1), below.argmax(-1), -1)
    out = np.full(T.shape, np.nan)
    hit = first >= 0
    f = np.where(hit, first, 0)
    prev = np.maximum(f - 1, 0)
    e1 = np.take_along_axis(lE, f[..., None], -1)[..., 0]
    e0 = np.take_along_axis(lE, prev[..., None], -1)[..., 0]
    s1, s0 = st[f], st[prev]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(e0 > e1, (e0 - lT) / (e0 - e1), 1.0)
    val = np.where(f == 0, st[0], s0 + np.clip(frac, 0, 1) * (s1 - s0))
    out[hit] = val[hit]
    return out
