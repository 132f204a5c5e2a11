"""Tests for verify.reference: every fast path against an independent slow one, plus exact identities.

All in float64.  "rel" is the normwise relative error max|a − b| / max|b| over the whole output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verify import (
    cg_predictions, gd_predictions, newton_matrix, newton_predict, newton_predictions,
    ols_predict, ols_predictions, online_gd_predictions, prefix_spectrum, ridge_predictions,
)
from verify.reference import _gd_spectral, _lr, _spectrum

F64 = torch.float64


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def prompts(B: int, n: int, d: int, seed: int = 0, noise: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    w = torch.randn(B, d, generator=g, dtype=F64)
    y = (X @ w.unsqueeze(-1)).squeeze(-1) + noise * torch.randn(B, n, generator=g, dtype=F64)
    return X, y


# ---------------------------------------------------------------------------------------------
# batched / spectral against the per-prefix loop
# ---------------------------------------------------------------------------------------------

NEWTON_STEPS = [0, 1, 2, 7, 12, 3, 7]


@pytest.mark.parametrize("alpha", ["code", "safe", 0.0007, "tensor"])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_newton_batched_matches_loop(alpha, lam):
    X, y = prompts(3, 11, 4, seed=1)
    if alpha == "tensor":
        alpha = torch.tensor([0.0005, 0.0006, 0.0007], dtype=F64)
    loop = newton_predictions(X, y, NEWTON_STEPS, alpha, lam=lam, method="loop")
    batched = newton_predictions(X, y, NEWTON_STEPS, alpha, lam=lam, method="batched")
    assert loop.shape == (len(NEWTON_STEPS), 3, 11)
    assert rel(batched, loop) <= 1e-12
    assert torch.isfinite(loop).all()


GD_STEPS = [0, 1, 5, 37, 120, 5]


@pytest.mark.parametrize("lr", ["auto", 0.02, "array"])
@pytest.mark.parametrize("method", ["batched", "stepwise"])
def test_gd_matches_loop(lr, method):
    X, y = prompts(3, 11, 4, seed=2)
    if lr == "array":
        lr = np.full((3, 11), 0.03)
    loop = gd_predictions(X, y, GD_STEPS, lr, method="loop")
    fast = gd_predictions(X, y, GD_STEPS, lr, method=method)
    assert rel(fast, loop) <= 1e-12


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("alpha", ["code", "safe", "paper"])
def test_newton_spectral_matches_batched(alpha, lam):
    # n >> d keeps most prefixes well-conditioned; the first d prefixes are rank-deficient
    X, y = prompts(4, 24, 3, seed=3)
    steps = list(range(0, 16))
    # "paper" sits on the divergence boundary: the batched recurrence cannot promise 1e-10 there and its
    # precision guard says so (construct.precision); compare the raw numbers
    a = newton_predictions(X, y, steps, alpha, lam=lam, method="batched",
                           check_precision="ignore" if alpha == "paper" else "raise")
    b = newton_predictions(X, y, steps, alpha, lam=lam, method="spectral")
    # "paper" sits on the divergence boundary (|1 - αλ_max²| = 1): rounding grows like 2^k·eps
    assert rel(b, a) <= (1e-10 if alpha != "paper" else 1e-8)


@pytest.mark.parametrize("mode", [None, "closed", "bsgs"])
@pytest.mark.parametrize("lr", ["auto", 0.02])
def test_gd_spectral_matches_batched(mode, lr):
    X, y = prompts(4, 24, 3, seed=4)
    steps = [0, 1, 2, 3, 50, 51, 300, 299, 1000]
    batched = gd_predictions(X, y, steps, lr, method="batched")
    sp = _spectrum(torch.as_tensor(X), torch.as_tensor(y), 0.0)
    res = _gd_spectral(sp, _lr(lr, sp.S), steps, mode=mode)
    spectral = torch.stack([res[s] for s in steps])
    assert rel(spectral, batched) <= 1e-10


def test_spectral_every_step_without_loop_and_reuse():
    X, y = prompts(2, 9, 3, seed=5)
    sp = prefix_spectrum(X, y)
    steps = range(1, 1301)
    P = gd_predictions(X, y, steps, 0.02, method="spectral", spectrum=sp)
    assert P.shape == (1300, 2, 9)
    ref = gd_predictions(X, y, [1, 64, 65, 1300], 0.02, method="batched")
    assert rel(P[[0, 63, 64, 1299]], ref) <= 1e-10
    N = newton_predictions(X, y, range(0, 24), "code", method="spectral", spectrum=sp)
    assert rel(N, newton_predictions(X, y, range(0, 24), "code")) <= 1e-10


def test_rank_deficient_prefixes_spectral():
    # n < d: every prefix is rank-deficient; null directions must contribute nothing
    X, y = prompts(3, 5, 8, seed=6)
    for steps in ([0, 1, 4, 10], [60]):
        a = newton_predictions(X, y, steps, "safe")
        b = newton_predictions(X, y, steps, "safe", method="spectral")
        assert rel(b, a) <= 1e-10
    ols = ols_predictions(X, y)
    assert rel(newton_predictions(X, y, [60], "safe", method="spectral")[0], ols) <= 1e-9


@settings(max_examples=20, deadline=None)
@given(
    B=st.integers(1, 3), n=st.integers(1, 9), d=st.integers(1, 5), seed=st.integers(0, 10**6),
    alpha=st.sampled_from(["code", "safe"]), k=st.integers(0, 10),
)
def test_property_newton_paths_agree(B, n, d, seed, alpha, k):
    X, y = prompts(B, n, d, seed=seed)
    steps = sorted({0, k // 2, k})
    loop = newton_predictions(X, y, steps, alpha, method="loop")
    batched = newton_predictions(X, y, steps, alpha)
    spectral = newton_predictions(X, y, steps, alpha, method="spectral")
    assert rel(batched, loop) <= 1e-12
    assert rel(spectral, batched) <= 1e-9
    assert (batched[:, :, 0] == 0).all()


@settings(max_examples=20, deadline=None)
@given(
    B=st.integers(1, 3), n=st.integers(1, 9), d=st.integers(1, 5), seed=st.integers(0, 10**6),
    s=st.integers(0, 80),
)
def test_property_gd_paths_agree(B, n, d, seed, s):
    X, y = prompts(B, n, d, seed=seed)
    steps = sorted({0, 1, s // 3, s})
    loop = gd_predictions(X, y, steps, "auto", method="loop")
    batched = gd_predictions(X, y, steps, "auto")
    spectral = gd_predictions(X, y, steps, "auto", method="spectral")
    assert rel(batched, loop) <= 1e-12
    assert rel(spectral, batched) <= 1e-9


# ---------------------------------------------------------------------------------------------
# mathematical identities and limits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["code", "safe", 0.001])
def test_newton_identity(rule):
    """I − M_k S = (I − αS²)^(2^k) for k = 0..6."""
    g = torch.Generator().manual_seed(7)
    A = torch.randn(3, 6, 4, generator=g, dtype=F64)
    S = A.transpose(-1, -2) @ A  # (3, 4, 4)
    from construct.alpha import alpha_from_rule

    a = alpha_from_rule(S, rule)  # (3,)
    I = torch.eye(4, dtype=F64)
    E = I - a[:, None, None] * S @ S
    for k in range(7):
        M = newton_matrix(S, k, rule)
        lhs = I - M @ S
        rhs = torch.linalg.matrix_power(E, 2**k)
        assert (lhs - rhs).abs().max() <= 1e-12 * (1 + rhs.abs().max()), k


def test_newton_converges_to_ols():
    X, y = prompts(4, 16, 4, seed=8, noise=0.3)
    ols = ols_predictions(X, y)
    newton = newton_predictions(X, y, [60], "safe")[0]
    assert rel(newton, ols) <= 1e-9
    # and it has not converged after 1 step (the test can fail)
    assert rel(newton_predictions(X, y, [1], "safe")[0], ols) > 1e-3


def test_ols_is_min_norm_lstsq_per_prefix():
    X, y = prompts(2, 7, 4, seed=9, noise=0.5)
    P = ols_predictions(X, y)
    for b in range(2):
        for t in range(7):
            Xt, yt = X[b, :t].numpy(), y[b, :t].numpy()
            w = np.linalg.pinv(Xt) @ yt if t else np.zeros(4)
            assert abs(P[b, t].item() - X[b, t].numpy() @ w) <= 1e-10 * (1 + abs(P[b, t].item()))


def test_ridge_closed_form_and_newton_limit():
    X, y = prompts(2, 8, 5, seed=10, noise=0.5)
    lam = 0.7
    R = ridge_predictions(X, y, lam)
    for b in range(2):
        for t in range(8):
            Xt, yt = X[b, :t].numpy(), y[b, :t].numpy()
            w = np.linalg.solve(Xt.T @ Xt + lam * np.eye(5), Xt.T @ yt)
            assert abs(R[b, t].item() - X[b, t].numpy() @ w) <= 1e-12 * (1 + abs(w).sum())
    assert rel(newton_predictions(X, y, [60], "safe", lam=lam)[0], R) <= 1e-10
    assert rel(newton_predictions(X, y, [60], "safe", lam=lam, method="spectral")[0], R) <= 1e-10
    # the single-query helpers agree with the last prefix
    Xq, yq = X[:, :7], y[:, :7]
    assert rel(ols_predict(Xq, yq, X[:, 7], lam=lam), R[:, 7]) <= 1e-12
    assert rel(newton_predict(Xq, yq, X[:, 7], 60, "safe", lam=lam), R[:, 7]) <= 1e-10


def test_single_query_helpers_match_all_prefix():
    X, y = prompts(3, 9, 4, seed=11)
    Xq, yq, xq = X[:, :8], y[:, :8], X[:, 8]
    for alpha in ["code", 0.002, torch.tensor([0.001, 0.002, 0.003], dtype=F64)]:
        a_all = alpha if not isinstance(alpha, torch.Tensor) else alpha
        P = newton_predictions(X, y, [5], a_all)[0, :, 8]
        assert rel(newton_predict(Xq, yq, xq, 5, alpha), P) <= 1e-12
    assert rel(ols_predict(Xq, yq, xq), ols_predictions(X, y)[:, 8]) <= 1e-10
    # unbatched prompt gives a 0-d result
    one = newton_predict(Xq[0], yq[0], xq[0], 5, "code")
    assert one.shape == () and abs(float(one) - float(newton_predict(Xq, yq, xq, 5, "code")[0])) <= 1e-14


def test_gd_converges_to_ols_and_online_gd_by_hand():
    X, y = prompts(2, 20, 3, seed=12)
    ols = ols_predictions(X, y)
    G = gd_predictions(X, y, [100000], "auto", method="spectral")[0]
    assert rel(G[:, 6:], ols[:, 6:]) <= 1e-9  # prefixes with t ≥ 2d are well conditioned
    O = online_gd_predictions(X, y)
    Xn, yn = X.numpy(), y.numpy()
    for b in range(2):
        w = np.zeros(3)
        for t in range(20):
            assert abs(O[b, t].item() - Xn[b, t] @ w) <= 1e-12 * (1 + np.abs(w).sum() * np.abs(Xn[b, t]).sum())
            x = Xn[b, t]
            w = w - (x @ w - yn[b, t]) / (x @ x) * x
    # η = 1/‖x‖² projects w onto {w : xᵀw = y}, so a repeated example is predicted exactly
    Xr = torch.cat([X[:, :5], X[:, 4:5]], 1)
    yr = torch.cat([y[:, :5], y[:, 4:5] + 0.0], 1)
    Or = online_gd_predictions(Xr, yr)
    assert (Or[:, 5] - yr[:, 4]).abs().max() <= 1e-12 * (1 + yr.abs().max())
    assert (Or[:, 4] - yr[:, 4]).abs().max() > 1e-3


def test_cg_matches_loop_and_reaches_ols():
    X, y = prompts(3, 12, 4, seed=13)
    steps = [0, 1, 2, 3, 4, 9]
    loop = cg_predictions(X, y, steps, method="loop")
    batched = cg_predictions(X, y, steps)
    assert rel(batched, loop) <= 1e-10
    assert rel(batched[4], ols_predictions(X, y)) <= 1e-8  # d = 4 steps
    assert rel(batched[5], batched[4]) == 0.0  # frozen after d steps
    assert rel(batched[1], ols_predictions(X, y)) > 1e-3


def test_position_zero_predicts_zero():
    X, y = prompts(2, 5, 3, seed=14)
    outs = [
        newton_predictions(X, y, [0, 3], "code"), newton_predictions(X, y, [3], "code", method="spectral"),
        newton_predictions(X, y, [3], "code", lam=1.0), gd_predictions(X, y, [1, 9], 0.1),
        gd_predictions(X, y, [9], "auto", method="spectral"), cg_predictions(X, y, [2]),
    ]
    for P in outs:
        assert (P[..., 0] == 0).all()
    for P in [ols_predictions(X, y), ridge_predictions(X, y, 0.5), online_gd_predictions(X, y)]:
        assert (P[:, 0] == 0).all()
    assert not (outs[0][1, :, 1:] == 0).any()


def test_paper_alpha_never_recovers_top_eigendirection():
    """α = 2/λ_max(S)²: the top direction has factor (1 − αλ_max²)^(2^k) = 1 for every k."""
    sig2 = torch.tensor([4.0, 2.25, 1.0, 0.25], dtype=F64)  # known spectrum of S (exact square roots)
    X = torch.zeros(1, 6, 4, dtype=F64)
    X[0, :4] = torch.diag(sig2.sqrt())  # S = XᵀX = diag(sig2), exactly
    w_star = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=F64)
    y = (X @ w_star.unsqueeze(-1)).squeeze(-1)
    S = X[0].T @ X[0]
    assert torch.equal(S, torch.diag(sig2))
    b = X[0].T @ y[0]
    top = torch.tensor([[1.0, 0, 0, 0]], dtype=F64)
    for k in range(1, 25):
        M = newton_matrix(S, k, "paper")
        err = w_star[0] - M @ b
        assert err[0].item() == w_star[0, 0].item()  # exactly constant
        # exact arithmetic on a diagonal S; the boundary α makes the prompt ill-conditioned in general
        assert newton_predict(X, y, top, k, "paper", check_precision="ignore").item() == 0.0
    # the other directions converge, and a safe α recovers the top direction too
    err = w_star[0] - newton_matrix(S, 24, "paper") @ b
    assert err[1:].abs().max() <= 1e-12
    assert abs(newton_predict(X, y, top, 24, "safe").item() - 1.0) <= 1e-12
    # in a rotated basis the same holds to rounding (spectral and batched paths)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    Xr = X @ Q.T  # S = Q diag(sig2) Qᵀ, top eigenvector Q[:, 0]
    yr = y.clone()  # w*_rot = Q w* gives the same y
    q = Q[:, 0].reshape(1, 4)
    for k in (1, 5, 12):
        assert abs(newton_predict(Xr, yr, q, k, "paper").item()) <= 1e-10
    Xa = torch.cat([Xr, q.unsqueeze(1)], 1)  # query as the last position of a longer prompt
    ya = torch.cat([yr, torch.zeros(1, 1, dtype=F64)], 1)
    for method in ("batched", "spectral"):
        P = newton_predictions(Xa, ya, [1, 5, 12], "paper", method=method)
        assert P[:, 0, -1].abs().max() <= 1e-9


# ---------------------------------------------------------------------------------------------
# dtypes, numpy round trip, validation
# ---------------------------------------------------------------------------------------------


def test_numpy_in_numpy_out_and_float32():
    X, y = prompts(2, 6, 3, seed=15)
    P = newton_predictions(X.numpy(), y.numpy(), [2], "code")
    assert isinstance(P, np.ndarray) and P.dtype == np.float64 and P.shape == (1, 2, 6)
    P32 = gd_predictions(X.float(), y.float(), [4], 0.05)
    assert P32.dtype == torch.float32
    assert rel(P32.double(), gd_predictions(X, y, [4], 0.05)) <= 1e-6
    assert isinstance(ols_predictions(X.numpy(), y.numpy()), np.ndarray)


def _bad(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_validation_messages():
    X, y = prompts(2, 5, 3, seed=16)
    Xnan = X.clone()
    Xnan[0, 1, 2] = float("nan")
    _bad(lambda: newton_predictions(X[0], y[0], [1]), ValueError, r"X must have shape \(B, n, d\)")
    _bad(lambda: newton_predictions(X, y[:1], [1]), ValueError, r"y must have shape \(B, n\)")
    _bad(lambda: gd_predictions(X, y[:, :4], [1], 0.1), ValueError, r"y must have shape")
    _bad(lambda: newton_predictions(X[..., :0], y, [1]), ValueError, r"d = 0")
    _bad(lambda: newton_predict(X[:, :0], y[:, :0], X[:, 0], 2, "code"), ValueError, r"n=0")
    _bad(lambda: ols_predict(X[:, :0], y[:, :0], X[:, 0]), ValueError, r"n=0")
    _bad(lambda: newton_predictions(Xnan, y, [1]), ValueError, r"NaN/inf")
    _bad(lambda: ols_predictions(X, y * float("inf")), ValueError, r"y contains .* NaN/inf")
    _bad(lambda: newton_predictions(X, y, [1, -2]), ValueError, r"steps\[1\] must be >= 0")
    _bad(lambda: gd_predictions(X, y, [1.5], 0.1), TypeError, r"steps\[0\] must be an integer")
    _bad(lambda: gd_predictions(X, y, "5", 0.1), TypeError, r"steps must be an int or a sequence")
    _bad(lambda: newton_predictions(X, y, [1], alpha=0.0), ValueError, r"alpha must be > 0")
    _bad(lambda: newton_predictions(X, y, [1], alpha=-1.0, method="loop"), ValueError, r"alpha must be > 0")
    _bad(lambda: newton_predictions(X, y, [1], alpha=torch.tensor([1.0, -1.0])), ValueError, r"alpha must be > 0")
    _bad(lambda: newton_predictions(X, y, [1], alpha=torch.ones(3)), ValueError, r"alpha as an array must have shape")
    _bad(lambda: newton_predictions(X, y, [1], alpha="fast"), ValueError, r"alpha rule must be")
    _bad(lambda: newton_matrix(X[0].T @ X[0], 2, 0.0), ValueError, r"alpha must be > 0")
    _bad(lambda: newton_matrix(X[0], 2, 0.1), ValueError, r"S must have shape \(\.\.\., d, d\)")
    _bad(lambda: newton_matrix(X[0].T @ X[0], -1, 0.1), ValueError, r"k must be >= 0")
    _bad(lambda: newton_predict(X, y, X[:, 0], 2, -0.5), ValueError, r"alpha must be > 0")
    _bad(lambda: newton_predict(X, y, X[:1, 0], 2, 0.5), ValueError, r"x_query must have shape")
    _bad(lambda: newton_predictions(X, y, [1], lam=-0.1), ValueError, r"lam must be >= 0")
    _bad(lambda: ridge_predictions(X, y, -1.0), ValueError, r"lam must be >= 0")
    _bad(lambda: gd_predictions(X, y, [1], lr=0.0), ValueError, r"lr must be > 0")
    _bad(lambda: gd_predictions(X, y, [1], lr=-0.1, method="loop"), ValueError, r"lr must be > 0")
    _bad(lambda: gd_predictions(X, y, [1], lr="fast"), ValueError, r"lr must be a positive float")
    _bad(lambda: gd_predictions(X, y, [1], lr=None), TypeError, r"lr must be a real number")
    _bad(lambda: newton_predictions(X, y, [1], method="fast"), ValueError, r"method must be one of")
    _bad(lambda: newton_predictions(X, y, [1001], method="spectral"), ValueError, r"steps <= 1000")
    _bad(lambda: newton_predictions("X", y, [1]), TypeError, r"X must be a torch.Tensor")
    _bad(lambda: newton_predictions(X.to(torch.complex128), y, [1]), TypeError, r"real-valued")
    sp = prefix_spectrum(X[:1], y[:1])
    _bad(lambda: newton_predictions(X, y, [1], method="spectral", spectrum=sp), ValueError, r"spectrum was computed")
    _bad(lambda: gd_predictions(X, y, [1], method="spectral", spectrum="sp"), TypeError, r"PrefixSpectrum")


def test_empty_steps_and_int_input():
    X, y = prompts(2, 5, 3, seed=17)
    assert newton_predictions(X, y, []).shape == (0, 2, 5)
    Xi = torch.randint(-3, 4, (2, 5, 3))
    yi = torch.randint(-3, 4, (2, 5))
    P = gd_predictions(Xi, yi, [3], 0.01)
    assert P.dtype == F64
    assert rel(P, gd_predictions(Xi.double(), yi.double(), [3], 0.01)) == 0.0
    assert math.isfinite(float(newton_predictions(X, y, np.array([4]), "code").sum()))


def test_fixed_rate_that_diverges_is_an_error_not_nan():
    from construct import AlphaDivergenceError

    g = torch.Generator().manual_seed(0)
    X = 100 * torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 10, generator=g, dtype=torch.float64)
    with pytest.raises(AlphaDivergenceError, match=r"alpha\*lambda_max\(S_t\)\^2 = .* >= 2"):
        newton_predictions(X, y, [5], alpha=1.0)
    with pytest.raises(AlphaDivergenceError, match=r"lr\*lambda_max\(S_t\) = .* >= 2"):
        gd_predictions(X, y, [5], lr=1.0)
    with pytest.warns(RuntimeWarning, match="diverges"):
        P = newton_predictions(X, y, [5], alpha=1.0, on_diverge="warn")
    assert not torch.isfinite(P).all() or float(P.abs().max()) > 1e20  # it really diverges
    assert torch.isfinite(newton_predictions(X, y, [5], alpha="code")).all()  # rules are exempt
