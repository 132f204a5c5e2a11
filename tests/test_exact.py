"""Exact checks of the construction (verify/exact.py): rational, fully symbolic, dimension-free.

Every check compares the network's *weights* with Newton computed independently; the negative
tests (the printed paper, a weight off by one ulp-scale nudge, float32 α) show that the checks
can fail.  The default (non-slow) part runs in about 15–25 s on the 2-core dev machine; the
``slow`` cases (d=5, n=8, k=8 rational in every form; d=3, n=3, k=2 and d=1, n=6, k=3
symbolic) take a few minutes: ``python -m pytest -m slow tests/test_exact.py``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from construct import build_newton_transformer, min_layers
from construct.transformer import Transformer, TransformerConfig
from verify.exact import (
    PairStructureError, collapse_relu_pairs, exact_check, exact_forward, matrix_symbol_identities,
    newton_exact, random_rational_prompt, relu_pair_lemma, symbolic_check,
)
from verify.reference import newton_predict

# (d, n, k, builder options): the CI grid of the rational check
RATIONAL_CASES = [
    (2, 3, 2, {}),
    (2, 3, 2, {"attn": "linear"}),
    (3, 5, 3, {"form": "merged"}),
    (3, 5, 3, {"form": "merged", "attn": "linear"}),
    (2, 4, 3, {"lam": 0.3}),
    (2, 4, 3, {"normalize": True}),
    (3, 4, 4, {"lam": 0.7, "normalize": True}),
    (3, 4, 4, {"lam": 0.7, "normalize": True, "form": "merged"}),
    (2, 3, 3, {"lam": 0.5, "normalize": True, "attn": "linear", "form": "merged"}),
    (3, 3, 3, {"looped": True}),
    (2, 3, 0, {}),
    (1, 1, 2, {}),
    (3, 1, 3, {}),          # n < d: rank-deficient S
    (3, 3, 3, {}),          # n = d
    (5, 8, 8, {}),          # the largest size, default form
]


def _ids(cases):
    return [f"d{d}-n{n}-k{k}-" + ("-".join(f"{a}={b}" for a, b in kw.items()) or "plain") for d, n, k, kw in cases]


def _floats(X, y, xq):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return t([[float(a) for a in r] for r in X]), t([float(a) for a in y]), t([float(a) for a in xq])


# ============================================================================ rational mode
@pytest.mark.parametrize("d,n,k,kw", RATIONAL_CASES, ids=_ids(RATIONAL_CASES))
def test_rational_exact_every_layer(d, n, k, kw):
    model = build_newton_transformer(d=d, k=k, alpha=0.01, **kw)
    X, y, xq = random_rational_prompt(d, n, seed=d * 100 + n * 10 + k)
    r = exact_check(model, X, y, xq)
    assert r.passed, r.message
    assert r.failure is None
    assert r.prediction - r.newton == 0
    assert isinstance(r.prediction, Fraction)
    if kw.get("normalize"):
        N = n + 1 + (d if kw.get("lam") else 0)
        assert r.alpha_eff == Fraction(0.01) / N ** 2
    if kw.get("lam"):
        root = Fraction(math.sqrt(kw["lam"]))
        assert r.lam == root * root  # λ as the prefix weights encode it
        if r.lam != Fraction(kw["lam"]):  # (√λ)² ≠ λ in floats: Newton with spec.lam is not what runs
            alpha_eff = r.alpha_eff
            assert newton_exact(X, y, xq, alpha_eff, k, Fraction(kw["lam"]))[0] != r.prediction


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"form": "merged"}, {"attn": "linear"}, {"lam": 0.3, "normalize": True},
                                {"lam": 0.7, "normalize": True, "form": "merged"}])
def test_rational_exact_largest(kw):
    model = build_newton_transformer(d=5, k=8, alpha=0.001, **kw)
    X, y, xq = random_rational_prompt(5, 8, seed=3)
    r = exact_check(model, X, y, xq)
    assert r.passed, r.message
    assert r.time < 30


def test_printed_paper_fails_at_first_newton_layer_slot_u():
    model = build_newton_transformer(d=2, k=3, alpha=0.01, printed_paper=True)
    X, y, xq = random_rational_prompt(2, 4, seed=1)
    r = exact_check(model, X, y, xq)
    assert not r.passed
    assert r.failure[:2] == (1, "u")
    assert r.failing_layer == 1 and r.failing_slot == "u"
    assert "layer 1" in r.message and "'u'" in r.message
    assert r.prediction != r.newton


def test_a_tiny_weight_change_is_caught():
    model = build_newton_transformer(d=2, k=3, alpha=0.01)
    with torch.no_grad():
        blk = model.transformer.blocks[model.schedule[2]]  # the second Newton layer
        blk.attn.W_O[0].mul_(1 + 2.0 ** -40)
        blk.attn.W_O[1].mul_(1 + 2.0 ** -40)  # keep the signed pair intact
    X, y, xq = random_rational_prompt(2, 3, seed=5)
    r = exact_check(model, X, y, xq)
    assert not r.passed
    assert r.failure[:2] == (2, "u")
    assert abs(float(r.prediction - r.newton)) < 1e-6 * abs(float(r.newton))  # invisible in float


def test_float32_weights_are_exact_for_the_float32_alpha():
    alpha = 0.01
    model = build_newton_transformer(d=2, k=3, alpha=alpha, form="merged", lam=0.3, dtype=torch.float32)
    X, y, xq = random_rational_prompt(2, 4, seed=2)
    assert not exact_check(model, X, y, xq).passed  # the stored α is not spec.alpha
    a32 = Fraction(torch.tensor(alpha, dtype=torch.float32).item())
    r = exact_check(model, X, y, xq, alpha=a32)
    assert r.passed, r.message


def test_exact_forward_mirrors_the_torch_forward():
    for kw in ({}, {"form": "merged", "lam": 0.4, "normalize": True}):
        model = build_newton_transformer(d=3, k=3, alpha=0.01, **kw)
        X, y, xq = random_rational_prompt(3, 5, seed=7)
        Xf, yf, qf = _floats(X, y, xq)
        tokens = model.encode(Xf[None], yf[None], qf[None])[0]
        exact_out, streams = exact_forward(model.transformer, tokens)
        torch_out = model.transformer(tokens[None])[0, :, 0]
        ex = torch.tensor([float(r[0]) for r in exact_out], dtype=torch.float64)
        assert torch.allclose(ex, torch_out, rtol=1e-9, atol=1e-9)
        torch_streams = model.transformer.residual_streams(tokens[None])[:, 0]
        for L, s in enumerate(streams):
            mine = torch.tensor([[float(s.entry(i, c)) for c in range(s.num.shape[1])] for i in range(s.num.shape[0])],
                                dtype=torch.float64)
            assert torch.allclose(mine, torch_streams[L], rtol=1e-9, atol=1e-9), f"stream {L}"


def test_newton_exact_reference():
    X, y, xq = random_rational_prompt(3, 4, seed=11)
    alpha, k = Fraction(1, 1000), 4
    pred, Ms, S = newton_exact(X, y, xq, alpha, k)
    # exact identity I − M_j S = (I − αS²)^(2^j)
    d = 3
    E = [[S.entry(i, j) for j in range(d)] for i in range(d)]

    def mm(A, B):
        return [[sum(A[i][t] * B[t][j] for t in range(d)) for j in range(d)] for i in range(d)]

    eye = [[Fraction(int(i == j)) for j in range(d)] for i in range(d)]
    S2 = mm(E, E)
    base = [[eye[i][j] - alpha * S2[i][j] for j in range(d)] for i in range(d)]
    P = base
    for j, M in enumerate(Ms):
        Mf = [[M.entry(a, b) for b in range(d)] for a in range(d)]
        MS = mm(Mf, E)
        assert [[eye[a][b] - MS[a][b] for b in range(d)] for a in range(d)] == P, f"step {j}"
        P = mm(P, P)
    Xf, yf, qf = _floats(X, y, xq)
    # an identity of exact arithmetic, for any α (a diverging one included)
    ref = newton_predict(Xf, yf, qf, k, float(alpha), on_diverge="ignore", check_precision="ignore")
    assert math.isclose(float(pred), float(ref), rel_tol=1e-10)


def test_random_rational_prompt():
    X, y, xq = random_rational_prompt(3, 4, seed=0)
    assert len(X) == 4 and all(len(r) == 3 for r in X) and len(y) == 4 and len(xq) == 3
    vals = [v for r in X for v in r] + y + xq
    assert all(isinstance(v, Fraction) and abs(v) <= 9 and v.denominator <= 9 for v in vals)
    assert random_rational_prompt(3, 4, seed=0) == (X, y, xq)
    assert random_rational_prompt(3, 4, seed=1) != (X, y, xq)
    with pytest.raises(ValueError, match="n must be an int"):
        random_rational_prompt(3, 0, seed=0)


def test_exact_check_rejects_bad_input():
    model = build_newton_transformer(d=2, k=1, alpha=0.1)
    X, y, xq = random_rational_prompt(2, 3, seed=0)
    with pytest.raises(ValueError, match="x_query"):
        exact_check(model, X, y, xq + [Fraction(1)])
    with pytest.raises(TypeError, match="NewtonTransformer"):
        exact_check(model.transformer, X, y, xq)
    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=1, d_head=2, d_in=3, d_out=1, attn="relu",
                            layernorm=True, mlp="relu", bias=False)
    with pytest.raises(ValueError, match="LayerNorm"):
        exact_forward(Transformer(cfg), [[1, 2, 3]])
    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=1, d_head=2, d_in=3, d_out=1, attn="softmax",
                            layernorm=False, mlp="relu", bias=False)
    with pytest.raises(ValueError, match="softmax"):
        exact_forward(Transformer(cfg), [[1, 2, 3]])


def test_exact_forward_on_a_generic_transformer_with_biases_and_causal_mask():
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=6, n_layers=2, n_heads=2, d_head=3, d_in=3, d_out=2, attn="relu",
                            causal=True, attn_norm=True, mlp="relu", d_mlp=5, layernorm=False, bias=True,
                            max_len=8, n_prefix=1)
    tr = Transformer(cfg).to(torch.float64)
    with torch.no_grad():
        for p in tr.parameters():
            p.copy_(torch.randn_like(p))
    tokens = [[Fraction(i - j, 3) for j in range(3)] for i in range(5)]
    out, _ = exact_forward(tr, tokens)
    ref = tr(torch.tensor([[[float(v) for v in r] for r in tokens]], dtype=torch.float64))[0]
    ex = torch.tensor([[float(v) for v in r] for r in out], dtype=torch.float64)
    assert torch.allclose(ex, ref, rtol=1e-9, atol=1e-9)


# ============================================================================ the case lemma
def test_relu_pair_lemma():
    facts = relu_pair_lemma()
    assert facts and all(facts.values()), [k for k, v in facts.items() if not v]


# ============================================================================ symbolic mode
SYMBOLIC_CASES = [  # about 10 s in all on the dev machine
    (2, 2, 2, {}),
    (2, 2, 2, {"form": "merged"}),
    (2, 2, 2, {"attn": "linear", "lam": 0.5, "normalize": True}),
    (2, 2, 3, {"form": "merged", "lam": 0.25}),
    (1, 3, 3, {}),
    (2, 3, 2, {}),
    (3, 2, 2, {"looped": True}),
    (2, 3, 1, {"normalize": True}),
    (3, 1, 0, {}),
    (2, 2, 3, {}),
]


@pytest.mark.parametrize("d,n,k,kw", SYMBOLIC_CASES, ids=_ids(SYMBOLIC_CASES))
def test_symbolic_exact_and_degree(d, n, k, kw):
    model = build_newton_transformer(d=d, k=k, alpha=0.1, **kw)
    r = symbolic_check(model, n)
    assert r.error == ""
    assert r.passed
    assert r.degree == r.expected_degree == 2 ** (k + 2) + 1
    assert r.terms > 0
    # residual degree after L layers is at most 3^L (the bound behind min_layers)
    for L, deg in enumerate(r.layer_degrees):
        assert deg <= 3 ** L, (L, deg)
    assert r.layer_degrees[-1] == r.degree
    assert model.n_layers >= min_layers(k)


@pytest.mark.slow
@pytest.mark.parametrize("d,n,k,form", [(3, 3, 2, "default"), (3, 3, 2, "merged"), (1, 6, 3, "default")])
def test_symbolic_larger(d, n, k, form):
    r = symbolic_check(build_newton_transformer(d=d, k=k, alpha=0.1, form=form), n)
    assert r.passed and r.degree == 2 ** (k + 2) + 1


def test_symbolic_references_agree():
    model = build_newton_transformer(d=2, k=2, alpha=0.1, lam=0.3)
    assert symbolic_check(model, 2, reference="matrix").passed
    assert symbolic_check(model, 2, reference="horner").passed


def test_symbolic_flags_the_printed_paper():
    model = build_newton_transformer(d=2, k=2, alpha=0.1, printed_paper=True)
    r = symbolic_check(model, 2)
    assert not r.passed
    assert "V₂ = V₁" in r.error and "|s|" in r.error
    assert "block 1" in r.error
    with pytest.raises(PairStructureError, match="EQUAL OV"):
        collapse_relu_pairs(model.transformer)


def test_symbolic_detects_a_broken_pair_and_a_wrong_weight():
    model = build_newton_transformer(d=2, k=2, alpha=0.1)
    with torch.no_grad():
        model.transformer.blocks[1].attn.W_V[1].mul_(0.5)  # partner no longer −V
    with pytest.raises(PairStructureError, match="no signed partner"):
        collapse_relu_pairs(model.transformer)
    assert "no signed partner" in symbolic_check(model, 2).error

    model = build_newton_transformer(d=2, k=2, alpha=0.1)
    with torch.no_grad():
        for h in (0, 1):  # scale the whole pair: structure intact, arithmetic wrong
            model.transformer.blocks[2].attn.W_O[h].mul_(1 + 2.0 ** -30)
    r = symbolic_check(model, 2)
    assert r.error == "" and not r.passed

    model = build_newton_transformer(d=2, k=2, alpha=0.1)
    with torch.no_grad():
        model.transformer.blocks[1].mlp.W_out[0].mul_(-1.0)  # MLP unit without its (−w, −o) partner
    with pytest.raises(PairStructureError, match="MLP hidden unit"):
        collapse_relu_pairs(model.transformer)


def test_symbolic_rejects_bad_input():
    model = build_newton_transformer(d=2, k=1, alpha=0.1)
    with pytest.raises(ValueError, match="n must be a positive int"):
        symbolic_check(model, 0)
    with pytest.raises(ValueError, match="reference"):
        symbolic_check(model, 2, reference="spectral")
    with pytest.raises(ValueError, match="attention"):
        symbolic_check(model, 2, attention="fast")


def test_symbolic_attention_orders_agree():
    model = build_newton_transformer(d=2, k=2, alpha=0.1, form="merged", lam=0.3, normalize=True)
    for order in ("direct", "kv"):
        r = symbolic_check(model, 2, attention=order)
        assert r.passed and r.degree == 17


# ============================================================================ degree counting
@pytest.mark.parametrize("k", range(0, 16))
def test_min_layers_is_the_degree_bound(k):
    L = min_layers(k)
    target = 2 ** (k + 2) + 1
    assert 3 ** L >= target
    assert L == 0 or 3 ** (L - 1) < target
    default = build_newton_transformer(d=1, k=k, alpha=0.1)
    assert default.n_layers == k + 2 >= L
    if k >= 2:
        assert build_newton_transformer(d=1, k=k, alpha=0.1, form="merged").n_layers == k + 1 >= L


# ============================================================================ dimension-free
def test_matrix_symbol_layer_identities():
    facts = matrix_symbol_identities()
    assert len(facts) >= 8
    assert all(facts.values()), [k for k, v in facts.items() if not v]


# ============================================================================ result types
def test_result_types_share_passed_and_print_safely():
    """One pass attribute for every result type; ``equal`` still works but warns; repr never raises.

    Regression: ``repr(ExactResult)`` raised ValueError (int too large to convert to str) for
    float64 input at d=5, n=8, k=8, whose prediction is a Fraction of ~10⁵ bits.
    """
    model = build_newton_transformer(d=5, k=8, alpha=0.001)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randn(8, generator=g, dtype=torch.float64)
    xq = torch.randn(5, generator=g, dtype=torch.float64)
    r = exact_check(model, X, y, xq, residuals=False)
    assert r.passed and bool(r)
    assert r.bits > 20000  # large enough that the plain dataclass repr raised
    text = repr(r)
    assert "ExactResult(passed=True" in text and "bits)" in text
    str(r)
    with pytest.warns(DeprecationWarning, match="use .passed"):
        assert r.equal is True
    s = symbolic_check(build_newton_transformer(d=1, k=1, alpha=0.1), 2)
    assert s.passed and "SymbolicResult(passed=True" in repr(s)
    with pytest.warns(DeprecationWarning):
        assert s.equal
