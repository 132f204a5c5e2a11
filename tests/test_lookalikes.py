"""verify.lookalikes against direct per-prefix numpy implementations (textbook recurrences in matrix form)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.data import sample_prompts
from verify import cg_predictions, ols_predictions
from verify.lookalikes import (LOOKALIKES, chebyshev_predictions, gdpp_predictions, heavy_ball_predictions,
                               pcg_predictions)

F64 = torch.float64


def _prefixes(X, y):
    """(b, t, S_t, b_t, x_t) for every prompt and every prefix with t >= 1, in numpy."""
    Xn, yn = X.numpy(), y.numpy()
    for bi in range(Xn.shape[0]):
        for t in range(1, Xn.shape[1]):
            A = Xn[bi, :t]
            yield bi, t, A.T @ A, A.T @ yn[bi, :t], Xn[bi, t]


def _interval(S):
    ev = np.linalg.eigvalsh(S)
    pos = ev[ev > S.shape[0] * np.finfo(float).eps * ev[-1]]
    return pos.min(), pos.max()


def direct(X, y, K, step_fn):
    """Predictions (K+1, B, n) of a per-prefix iteration: step_fn(S, b, K) -> list of K+1 iterates w_k."""
    B, n, _ = X.shape
    out = np.zeros((K + 1, B, n))
    for bi, t, S, b, x in _prefixes(X, y):
        for k, w in enumerate(step_fn(S, b, K)):
            out[k, bi, t] = x @ w
    return torch.from_numpy(out)


def chebyshev_direct(S, b, K):
    lmin, lmax = _interval(S)
    theta, delta = (lmax + lmin) / 2, max((lmax - lmin) / 2, 1e-12 * (lmax + lmin) / 2)
    sigma = theta / delta
    w, r, rho = np.zeros_like(b), b.copy(), 1 / sigma
    dk = r / theta
    ws = [w.copy()]
    for _ in range(K):
        w = w + dk
        r = r - S @ dk  # the residual recurrence, as written in Saad, Iterative Methods, Alg. 12.1
        rho_new = 1 / (2 * sigma - rho)
        dk = rho_new * rho * dk + 2 * rho_new / delta * r
        rho = rho_new
        ws.append(w.copy())
    return ws


def heavy_ball_direct(S, b, K):
    lmin, lmax = _interval(S)
    eta = 4 / (np.sqrt(lmax) + np.sqrt(lmin)) ** 2
    beta = ((np.sqrt(lmax) - np.sqrt(lmin)) / (np.sqrt(lmax) + np.sqrt(lmin))) ** 2
    w_prev = w = np.zeros_like(b)
    ws = [w]
    for _ in range(K):
        w, w_prev = w - eta * (S @ w - b) + beta * (w - w_prev), w
        ws.append(w)
    return ws


def gdpp_tokens(X, y, K, gamma=1 / 3):
    """GD++ on the tokens themselves (von Oswald et al.): a GD step, then x <- (I - gamma_l S_l) x on all tokens."""
    Xn, yn = X.numpy(), y.numpy()
    B, n, d = Xn.shape
    out = np.zeros((K + 1, B, n))
    for bi in range(B):
        for t in range(1, n):
            A, r, xq, pred = Xn[bi, :t].copy(), yn[bi, :t].copy(), Xn[bi, t].copy(), 0.0
            for k in range(1, K + 1):
                Sl = A.T @ A
                top = np.linalg.eigvalsh(Sl)[-1]
                eta = 1 / top
                g = A.T @ r                       # sum_i x_i r_i over the train tokens
                pred += eta * xq @ g              # the query accumulates its prediction
                r = r - eta * A @ g               # train tokens: residual labels
                T = np.eye(d) - gamma / top * Sl  # the input transform, the same on every token
                A, xq = A @ T, T @ xq
                out[k, bi, t] = pred
    return torch.from_numpy(out)


def pcg_direct(S, b, K, t, kind, shrinkage=0.1):
    d = len(b)
    if kind == "diagonal":
        Minv = np.diag(1 / np.diag(S))
    else:
        Sh = S / t
        Minv = np.linalg.inv(Sh + shrinkage * np.trace(Sh) / d * np.eye(d))
    w, r = np.zeros(d), b.copy()
    z = Minv @ r
    p, rz = z.copy(), r @ z
    ws, done = [w.copy()], False
    for k in range(1, K + 1):
        if not done and r @ r > 1e-26 * (b @ b) and k <= d:
            Sp = S @ p
            a = rz / (p @ Sp)
            w, r = w + a * p, r - a * Sp
            z = Minv @ r
            rz_new = r @ z
            p, rz = z + rz_new / rz * p, rz_new
        else:
            done = True
        ws.append(w.copy())
    return ws


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


@pytest.mark.parametrize("kappa", [1.0, 30.0])
def test_chebyshev_and_heavy_ball_match_direct(kappa):
    X, y, _ = sample_prompts(3, 9, 4, kappa=kappa, seed=11, dtype=F64)
    K = 25
    assert rel(chebyshev_predictions(X, y, range(K + 1)), direct(X, y, K, chebyshev_direct)) < 1e-9
    assert rel(heavy_ball_predictions(X, y, range(K + 1)), direct(X, y, K, heavy_ball_direct)) < 1e-9


@pytest.mark.parametrize("kappa", [1.0, 30.0])
def test_gdpp_matches_token_level_gdpp(kappa):
    X, y, _ = sample_prompts(3, 8, 4, kappa=kappa, seed=12, dtype=F64)
    K = 12
    assert rel(gdpp_predictions(X, y, range(K + 1)), gdpp_tokens(X, y, K)) < 1e-9


@pytest.mark.parametrize("kind", ["diagonal", "covariance"])
def test_pcg_matches_direct(kind):
    X, y, _ = sample_prompts(3, 9, 4, kappa=10.0, seed=13, dtype=F64)
    K = 6
    B, n, _ = X.shape
    ref = np.zeros((K + 1, B, n))
    for bi, t, S, b, x in _prefixes(X, y):
        for k, w in enumerate(pcg_direct(S, b, K, t, kind)):
            ref[k, bi, t] = x @ w
    assert rel(pcg_predictions(X, y, range(K + 1), preconditioner=kind), torch.from_numpy(ref)) < 1e-9


def test_all_reach_ols_and_differ_on_the_way():
    X, y, _ = sample_prompts(4, 12, 4, kappa=10.0, seed=14, dtype=F64)
    ols = ols_predictions(X, y)[:, 5:]  # t > d: OLS is unique
    firsts = []
    for name, (fn, kw) in LOOKALIKES.items():
        P = fn(X, y, [1, 3, 400], **kw)
        assert rel(P[-1, :, 5:], ols) < 1e-7, name   # each converges to OLS
        firsts.append(P[1])
    # they are different algorithms: step 3 differs between every pair
    for i in range(len(firsts)):
        for j in range(i):
            assert rel(firsts[i], firsts[j]) > 1e-3
    # PCG with the identity would be CG; diagonal PCG on isotropic-scale data is not CG exactly
    assert rel(pcg_predictions(X, y, [2]), cg_predictions(X, y, [2])) > 1e-6


def test_scaling_with_kappa_orders_the_methods():
    """Steps to reach 1e-6 relative error at the last position grow ~√κ for Chebyshev/heavy ball, ~log κ for GD++."""
    def steps_needed(fn, kappa, **kw):
        X, y, _ = sample_prompts(16, 40, 4, kappa=kappa, seed=15, dtype=F64)
        ols = ols_predictions(X, y)[:, -1]
        P = fn(X, y, range(0, 3001, 5), **kw)[:, :, -1]
        err = ((P - ols).abs().max(1).values / ols.abs().max())
        return 5 * int(torch.nonzero(err < 1e-6)[0])
    ch = [steps_needed(chebyshev_predictions, k) for k in (10.0, 1000.0)]
    gp = [steps_needed(gdpp_predictions, k) for k in (10.0, 1000.0)]
    assert ch[1] / ch[0] > 3       # ~√100 = 10 in theory; at least clearly growing
    assert gp[1] / gp[0] < ch[1] / ch[0]  # GD++ grows more slowly (log κ)


def test_bad_arguments_are_named():
    X, y, _ = sample_prompts(2, 5, 3, seed=16, dtype=F64)
    with pytest.raises(ValueError, match="preconditioner must be one of"):
        pcg_predictions(X, y, [1], preconditioner="ilu")
    with pytest.raises(ValueError, match="gamma must be in"):
        gdpp_predictions(X, y, [1], gamma=1.5)
    with pytest.raises(ValueError, match="steps\\[0\\] must be >= 0"):
        chebyshev_predictions(X, y, [-1])
    with pytest.raises(ValueError, match="NaN/inf"):
        heavy_ball_predictions(X * float("nan"), y, [1])
    assert chebyshev_predictions(X, y, []).shape == (0, 2, 5)
    assert torch.equal(heavy_ball_predictions(X, y, [0]), torch.zeros(1, 2, 5, dtype=F64))
    assert heavy_ball_predictions(X.float(), y.float(), [2]).dtype == torch.float32
