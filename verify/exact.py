"""Exact checks: the built network computes Iterative Newton with no error at all.

This module gathers the exact checks; each lives in its own file:

* :mod:`verify.rational` — **exact rational mode** (:func:`exact_check`, :func:`exact_forward`,
  :func:`newton_exact`): the stored weights run in exact rational arithmetic on a rational
  prompt, compared with Newton computed exactly, slot by slot and layer by layer.
* :mod:`verify.symbolic` — **fully symbolic mode** (:func:`symbolic_check`): the network on
  polynomials in sympy's sparse ring, for all real prompts of one d and n; the ReLU pairs are
  collapsed by the case lemma (:func:`relu_pair_lemma`, :func:`collapse_relu_pairs`).
* :mod:`verify.certificate` — the **polynomial certificate** (:func:`verify.certify`): the
  built weights compute the program for every d and n.  :func:`matrix_symbol_identities`
  (formerly hand-written with sympy ``MatrixSymbol``) now lists the per-block statements the
  certificate proves, so each block's algebra is stated in one place: read off its weights.

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
    """Each block kind's action for every d and n at once: derived by the certificate from built weights.

    Formerly hand-written with sympy ``MatrixSymbol``; now :func:`verify.certificate.layer_identities`,
    so the algebra of each block is stated in one place (read off the weights by
    :func:`verify.certify`).  Returns named statements, all of which must be True.
    """
    from .certificate import layer_identities

    return layer_identities()
