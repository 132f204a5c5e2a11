"""The fast reference paths (issue 13) against the old ones, to 1e-12, plus what they must not redo.

Old paths kept here verbatim as the yardstick: the unfused, unchunked Newton recurrence
2M − (MS)M on all prefixes, and the closed form −expm1(2^k·log|1 − αλ²|) of spectral Newton.
``method="loop"`` (per-prefix numpy) stays callable in the library and is checked too.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import verify.reference as R
from construct.alpha import alpha_from_rule
from verify import newton_matrices, newton_matrix, newton_predictions, gd_predictions, prefix_spectrum

F64 = torch.float64


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def prompts(B, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    w = torch.randn(B, d, generator=g, dtype=F64)
    return X, (X @ w.unsqueeze(-1)).squeeze(-1)


def old_batched(X, y, steps, alpha, lam=0.0):
    """The pre-issue-13 batched path, verbatim: full-size tensors, ``2 * M - (M @ S) @ M``."""
    B, n, d = X.shape
    outer = X.unsqueeze(-1) * X.unsqueeze(-2)
    S = torch.zeros_like(outer)
    S[:, 1:] = outer[:, :-1].cumsum(1)
    b = torch.zeros_like(X)
    b[:, 1:] = (X * y.unsqueeze(-1))[:, :-1].cumsum(1)
    if lam:
        S = S + lam * torch.eye(d, dtype=F64)
    a = alpha_from_rule(S, alpha) if isinstance(alpha, str) else torch.full((B, n), float(alpha), dtype=F64)
    M = a[..., None, None] * S
    res = {}
    for k in range(max(steps) + 1):
        if k:
            M = 2 * M - (M @ S) @ M
        res[k] = torch.einsum("bnd,bnde,bne->bn", X, M, b)
    return torch.stack([res[k] for k in steps])


def old_spectral_newton(sp, a, steps):
    """The pre-issue-13 spectral Newton: one expm1 per (k, prefix, eigenvalue)."""
    lam = sp.evals
    x = a.unsqueeze(-1) * lam * lam
    g = R._over_x(sp.z, lam)
    g = torch.where(x > 0, g, torch.zeros_like(g))
    L = R._log_abs_r(x)
    out = []
    for k in steps:
        om = -torch.expm1((2.0**k) * L)
        if k == 0:  # p = 1 is odd: where r < 0, 1 − r = 2 − (1 − |r|)
            om = torch.where(x > 1, 2 - om, om)
        out.append((om * g).sum(-1))
    return torch.stack(out)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of one or two prefixes, so every chunk boundary is exercised."""
    monkeypatch.setattr(R, "_CHUNK_BYTES", 8 * 20)


@pytest.mark.parametrize("alpha", ["code", "safe", "paper", 0.002])
@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_fused_chunked_batched_equals_old_path(alpha, lam, tiny_chunks):
    X, y = prompts(3, 13, 4, seed=1)
    steps = [0, 1, 2, 5, 9, 3]
    new = newton_predictions(X, y, steps, alpha, lam=lam, method="batched", on_diverge="ignore")
    assert rel(new, old_batched(X, y, steps, alpha, lam)) <= 1e-12
    assert rel(new, newton_predictions(X, y, steps, alpha, lam=lam, method="loop", on_diverge="ignore")) <= 1e-12


def test_chunking_does_not_change_batched_results(monkeypatch):
    X, y = prompts(5, 17, 6, seed=2)
    full = newton_predictions(X, y, range(8), "code", method="batched")
    monkeypatch.setattr(R, "_CHUNK_BYTES", 8 * 37)
    assert rel(newton_predictions(X, y, range(8), "code", method="batched"), full) <= 1e-15
    sp_full = prefix_spectrum(X, y)
    sp_chunked = R._spectrum(X, y, 0.0)
    assert rel(sp_chunked.evals, sp_full.evals) <= 1e-15 and rel(sp_chunked.z, sp_full.z) <= 1e-15
    assert torch.equal(sp_chunked.S, R._prefix_stats(X, y)[0])


@pytest.mark.parametrize("shape", [(3, 30, 4), (2, 6, 8)])  # well-conditioned; rank-deficient (n < d)
@pytest.mark.parametrize("alpha", ["code", "safe", "paper", 0.0008])  # 0.0008: αλ² up to ≈ 1.5 (r < 0)
def test_spectral_recurrence_equals_old_closed_form(shape, alpha, tiny_chunks):
    X, y = prompts(*shape, seed=3)
    sp = prefix_spectrum(X, y)
    a = R._alpha_of(R._rate(alpha, shape[:2], "alpha", R.ALPHA_RULES), evals=sp.evals)
    steps = list(range(0, 40))
    new = newton_predictions(X, y, steps, alpha, method="spectral", spectrum=sp)
    assert rel(new, old_spectral_newton(sp, a, steps)) <= 1e-12


@pytest.mark.parametrize("alpha", ["code", "safe", 0.0005])
def test_auto_equals_loop_on_well_conditioned_prompts(alpha):
    X, y = prompts(4, 30, 5, seed=4)
    steps = list(range(1, 24))
    assert R.newton_auto_method(steps, 5, alpha) == "spectral"
    auto = newton_predictions(X, y, steps, alpha)
    assert rel(auto, newton_predictions(X, y, steps, alpha, method="loop")) <= 1e-12
    assert rel(auto, old_batched(X, y, steps, alpha)) <= 1e-12


def test_auto_cost_model_choices():
    assert R.newton_auto_method([1, 2, 3], 20, "code") == "batched"
    assert R.newton_auto_method(range(1, 24), 20, "code") == "spectral"
    assert R.newton_auto_method([10], 20, "code") == "batched" and R.newton_auto_method([11], 20, "code") == "spectral"
    # a rule that needs λ_max anyway (or a checked fixed α) makes the eigendecomposition cheap sooner
    assert R.newton_auto_method([5], 20, "safe") == "spectral" and R.newton_auto_method([4], 20, "safe") == "batched"
    assert R.newton_auto_method([5], 20, 0.01) == "spectral"
    assert R.newton_auto_method([5], 20, 0.01, on_diverge="ignore") == "batched"
    assert R.newton_auto_method([2000], 20, "code") == "batched"  # beyond the spectral limit
    assert R.newton_auto_method([], 20, "code") == "batched"


def test_auto_with_a_spectrum_reuses_it_and_follows_the_choice(monkeypatch):
    X, y = prompts(3, 12, 4, seed=5)
    sp = prefix_spectrum(X, y)
    calls = []
    monkeypatch.setattr(R, "_spectrum", lambda *a: calls.append(1))
    assert rel(newton_predictions(X, y, [1, 2], "code", spectrum=sp),
               newton_predictions(X, y, [1, 2], "code", method="spectral", spectrum=sp)) == 0.0
    assert not calls


def test_auto_on_a_diverging_alpha_returns_the_recurrences_numbers():
    g = torch.Generator().manual_seed(0)
    X = 100 * torch.randn(2, 10, 3, generator=g, dtype=F64)
    y = torch.randn(2, 10, generator=g, dtype=F64)
    with pytest.warns(RuntimeWarning, match="diverges"):
        auto = newton_predictions(X, y, range(1, 24), alpha=1.0, on_diverge="warn")
    batched = newton_predictions(X, y, range(1, 24), alpha=1.0, method="batched", on_diverge="ignore")
    assert torch.equal(torch.isfinite(auto), torch.isfinite(batched))


def test_newton_matrices_are_the_iterates():
    g = torch.Generator().manual_seed(6)
    A = torch.randn(3, 7, 4, generator=g, dtype=F64)
    S = A.transpose(-1, -2) @ A
    Ms = newton_matrices(S, 6, "code")
    assert Ms.shape == (7, 3, 4, 4)
    a = alpha_from_rule(S, "code")
    M = a[:, None, None] * S
    for j in range(7):
        assert torch.equal(Ms[j], newton_matrix(S, j, "code"))
        assert rel(Ms[j], M) <= 1e-13  # the unfused recurrence
        M = 2 * M - (M @ S) @ M
    assert newton_matrices(S[0], 2, 0.01).shape == (3, 4, 4)


def test_inputs_validated_once_per_call(monkeypatch):
    """isfinite runs on X and y only, never again on S or on the spectrum, and a given spectrum
    is not decomposed again (no eigh / eigvalsh at all)."""
    import construct.validate as V

    X, y = prompts(3, 12, 4, seed=7)
    sp = prefix_spectrum(X, y)
    seen, eig = [], []
    orig = V.as_tensor
    monkeypatch.setattr(V, "as_tensor", lambda name, *a, **k: (seen.append(name), orig(name, *a, **k))[1])
    for f in ("eigh", "eigvalsh"):
        o = getattr(torch.linalg, f)
        monkeypatch.setattr(torch.linalg, f, lambda *a, _o=o, _f=f, **k: (eig.append(_f), _o(*a, **k))[1])
    newton_predictions(X, y, range(12), "safe", spectrum=sp)
    newton_predictions(X, y, range(12), 0.001, spectrum=sp)  # fixed α: the check reads sp.evals
    gd_predictions(X, y, [1, 50, 100], 0.01, method="spectral", spectrum=sp)
    gd_predictions(X, y, [1, 50, 100], "auto", method="spectral", spectrum=sp)
    assert seen == ["X", "y"] * 4 and eig == []
    seen.clear()
    # (the batched path's precision guard decomposes every prefix once more: check_precision="ignore" here,
    # the guard has its own test in tests/test_fuzz.py)
    newton_predictions(X, y, [1, 2], "code", method="batched", check_precision="ignore")  # "code" needs no eigenvalues
    assert seen == ["X", "y"] and eig == []
    newton_predictions(X, y, [1, 2], 0.001, method="batched", check_precision="ignore")  # one eigvalsh for the check
    assert eig == ["eigvalsh"]
    seen.clear()
    newton_predictions(X, y, [1, 2], "code", method="batched")  # with the guard: still validated once
    assert seen == ["X", "y"]


def test_gd_spectral_reuses_lambda_max_and_matches_batched():
    X, y = prompts(4, 20, 5, seed=8)
    sp = prefix_spectrum(X, y)
    steps = [1] + list(range(50, 1301, 50))
    for lr in (0.01, "auto"):
        fast = gd_predictions(X, y, steps, lr, method="spectral", spectrum=sp)
        assert rel(fast, gd_predictions(X, y, steps, lr, method="batched")) <= 1e-10


def test_spectral_sweep_near_the_eigh_floor():
    """Generous same-run ratio (the full-size target, 1.3x at B = 320, is in benchmarks.perf)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        X, y = prompts(32, 40, 20, seed=9)
        S, _ = R._prefix_stats(X, y)
        t_sweep, t_eigh = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            sp = prefix_spectrum(X, y)
            newton_predictions(X, y, range(1, 24), "code", spectrum=sp)
            gd_predictions(X, y, [1] + list(range(50, 1301, 50)), 0.01, method="spectral", spectrum=sp)
            t1 = time.perf_counter()
            torch.linalg.eigh(S)
            t_sweep.append(t1 - t0)
            t_eigh.append(time.perf_counter() - t1)
    finally:
        torch.set_num_threads(old)
    assert np.median(t_sweep) <= 3.0 * np.median(t_eigh)
