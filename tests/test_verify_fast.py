"""verify_model's fast path (issue 13): one network run, an O(k) reference, the same verdicts."""

from __future__ import annotations

import torch

import verify.numeric as VN
import verify.reference as R
from construct import build_newton_transformer, safe_alpha
from verify import newton_matrices, verify_model

F64 = torch.float64


def _case(d=4, n=9, k=5, B=3, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    y = torch.randn(B, n, generator=g, dtype=F64)
    xq = torch.randn(B, d, generator=g, dtype=F64)
    model = build_newton_transformer(d, k, float(safe_alpha(X).min()), dtype=F64, **kw)
    return model, X, y, xq


def test_one_network_run_and_k_matrix_steps(monkeypatch):
    model, X, y, xq = _case(k=6)
    runs, steps = [], []
    model.transformer.register_forward_hook(lambda *a: runs.append(1))
    orig = R._newton_iterates
    monkeypatch.setattr(R, "_newton_iterates", lambda S, a, k, keep: (steps.append(k), orig(S, a, k, keep))[1])
    rep = verify_model(model, X, y, xq)
    assert rep.passed and len(runs) == 1
    assert sum(steps) == 6  # M_0..M_6 in one recurrence (was 0 + 1 + ... + 6 + 6 = 27 steps)


def test_streams_and_prediction_come_from_one_run():
    model, X, y, xq = _case(form="merged", lam=0.3)
    streams, pred = model.residual_streams(X, y, xq, return_prediction=True)
    assert torch.equal(streams, model.residual_streams(X, y, xq))
    assert torch.equal(pred, model.predict(X, y, xq))


def test_newton_norms_from_eigenvalues_equal_svd_norms():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 7, 5, generator=g, dtype=F64)
    S = A.transpose(1, 2) @ A
    alpha = float(safe_alpha(A).min())
    Ms = newton_matrices(S, 8, alpha)  # (9, 4, 5, 5)
    want = torch.linalg.matrix_norm(Ms, ord=2)  # (9, 4)
    got = VN._newton_norms(torch.linalg.eigvalsh(S), alpha, 8)
    assert float(((got - want).abs() / want).max()) <= 1e-12


def test_fast_comparison_locates_a_fault_like_the_slot_scan():
    model, X, y, xq = _case(k=3, seed=2)
    with torch.no_grad():
        model.transformer.blocks[2].attn.W_O[0, 0, model.layout["u"].start] += 1e-3
    rep = verify_model(model, X, y, xq)
    assert not rep.passed and rep.first_failure.layer == 2 and rep.first_failure.slot == "u"
    # the per-slot scan (taken when the stream is not finite) finds the same row
    row = rep.row(2, "u")
    streams = model.residual_streams(X, y, xq)
    ref = VN._reference(model, X, y, xq, 2**-53)
    ma, where = VN._max_abs(streams[3][..., model.layout["u"]], ref.streams[3]["u"])
    assert ma == row.max_abs and row.at == VN._token_name(where, 0, X.shape[1], X.shape[0])
