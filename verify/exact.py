"""Exact checks: the built network computes Iterative Newton with no error at all.

This module gathers the exact checks; each lives in its own file:

* :mod:`verify.rational` — **exact rational mode** (:func:`exact_check`, :func:`exact_forward`,
  :func:`newton_exact`): the stored weights run in exact rational arithmetic on a rational
  prompt, compared with Newton computed exactly, slot by slot and layer by layer.
* :mod:`verify.symbolic` — **fully symbolic mode** (:func:`symbolic_check`): the network on
  polynomials in sympy's sparse ring, for all real prompts of one d and n; the ReLU pairs are
  collapsed by the case lemma (:func:`relu_pair_lemma`, :func:`collapse_relu_pairs`).
* this module — the **dimension-free layer identities** below.

**3. Dimension-free layer identities** (:func:`matrix_symbol_identities`).  With sympy
``MatrixSymbol`` (non-commutative, any d and n), in token-row form: the init layer gives Z M₀ᵀ,
a Newton layer turns Z Mᵀ into Z (2M − MSM)ᵀ for *any* d×d matrix M (no symmetry needed), the
read-out gives x_qᵀ M Xᵀy, the merged c-init gives Z (S M₁)ᵀ from the seed c = σ S x for any
σ ≠ 0; the merged c-step and merged read-out hold given Mᵀ = M, which is true for every M_j
(M₀ = αS is symmetric and the step keeps symmetry; both are checked) and is genuinely used
(both identities fail for a general M, also checked).  This is the induction step of the proof for every dimension at once; it
assumes the slot-level head structure (query, key, value slots) that modes 1 and 2 check on
the actual weights.

``from verify.exact import ...`` keeps working for every name listed in ``__all__``.
"""

from __future__ import annotations

from .rational import (  # noqa: F401  (re-exported)
    ExactResult, _ColRat, _Q, _frac, _fractions, _lcm, _prefix_sqrt_lambda, exact_check, exact_forward,
    newton_exact, random_rational_prompt,
)
from .symbolic import (  # noqa: F401  (re-exported)
    PairStructureError, SymbolicResult, _ZP, _newton_poly_coeffs, _sparse, collapse_relu_pairs,
    relu_pair_lemma, symbolic_check,
)

__all__ = [
    "ExactResult", "SymbolicResult", "PairStructureError",
    "exact_check", "exact_forward", "random_rational_prompt", "newton_exact",
    "symbolic_check", "collapse_relu_pairs", "relu_pair_lemma", "matrix_symbol_identities",
]


def matrix_symbol_identities() -> dict[str, bool]:
    """Each layer's action, for every d and n at once, with non-commutative sympy ``MatrixSymbol`` objects.

    Token-row form: Z (T×d) holds the tokens' own vectors z as rows, X (n×d) the keys' x rows,
    so a slot holding M z on every token is the matrix Z Mᵀ, and a bilinear head with query
    rows A, key rows B and value rows V adds (A Bᵀ) V.  S = XᵀX.  Returns named statements, all
    of which must be True; two of them record that the merged form *uses* the symmetry of M
    (each M_j is a polynomial in the symmetric S, which the "symmetry" statement proves by
    induction), while the default form needs no symmetry at all.
    """
    import sympy as sp

    n, d, T = sp.symbols("n d T", integer=True, positive=True)
    X = sp.MatrixSymbol("X", n, d)
    Z = sp.MatrixSymbol("Z", T, d)
    M = sp.MatrixSymbol("M", d, d)
    y = sp.MatrixSymbol("y", n, 1)
    xq = sp.MatrixSymbol("x_q", d, 1)
    alpha, t = sp.symbols("alpha t")  # t = 1 on train tokens (x = z, c = σ S z), 0 on the query
    sigma = sp.Symbol("sigma", nonzero=True)  # the merged form's seed scale (any σ ≠ 0)
    half = sp.Rational(1, 2)
    S = X.T * X
    sym = {M.T: M}

    def zero(e) -> bool:
        e = sp.expand(e)
        return e == 0 or e == sp.ZeroMatrix(*e.shape)

    Mn = 2 * M - M * S * M  # Newton step
    M0 = alpha * S
    M1 = 2 * M0 - M0 * S * M0
    UZ, UX = Z * M.T, X * M.T  # slot u = M z on the tokens, and on the keys
    CZ = Z * (S * M).T  # slot c = S M z (merged form)
    newton = 2 * (UZ - half * (UZ * X.T) * UX)
    c_step = 2 * (CZ - half * (CZ * UX.T) * X)
    U0 = Z * M0.T
    C0 = sigma * X * S.T  # keys/values of the seeded c = σ S x (train tokens)
    c_init = 2 * (t * sigma * Z * S.T + ((U0 - t * sigma * Z) * X.T) * X - half * alpha / sigma ** 2 * (U0 * C0.T) * C0)
    uq, cq = xq.T * M.T, xq.T * (S * M).T  # query rows of u and c
    merged_readout = (2 * uq * X.T - cq * UX.T) * y
    return {
        "init: α Σ_j ⟨z, x_j⟩ x_j = M₀ z": zero(alpha * (Z * X.T) * X - Z * M0.T),
        "newton: 2(u − ½ Σ_l ⟨u, x_l⟩ u_l) = (2M − MSM) z, any M": zero(newton - Z * Mn.T),
        "symmetry: M₀ symmetric, and M symmetric ⇒ 2M − MSM symmetric": zero(M0.T - M0) and zero(Mn.T.xreplace(sym) - Mn),
        "readout: Σ_j ⟨x_q, u_j⟩ y_j = x_qᵀ M Xᵀ y, any M": zero((xq.T * UX.T) * y - xq.T * M * X.T * y),
        "merged c-init: seed c = σ S x, then c ← S M₁ z (train and query tokens, any σ ≠ 0)": zero(c_init - Z * (S * M1).T),
        "merged c-step: c ← S (2M − MSM) z, given Mᵀ = M": zero((c_step - Z * (S * Mn).T).xreplace(sym)),
        "merged c-step uses Mᵀ = M (false for general M)": not zero(c_step - Z * (S * Mn).T),
        "merged readout: 2⟨u_q, x_j⟩ − ⟨c_q, u_j⟩ summed with y_j = x_qᵀ(2M − MSM)Xᵀy, given Mᵀ = M":
            zero((merged_readout - xq.T * Mn * X.T * y).xreplace(sym)),
        "merged readout uses Mᵀ = M (false for general M)": not zero(merged_readout - xq.T * Mn * X.T * y),
    }

