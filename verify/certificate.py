"""The polynomial certificate: the built weights compute the program, for every d and every n.

:func:`certify` reads a hand-built model's weights and layout and proves, with exact polynomial
algebra whose size does not depend on d or n, that the network computes its program (Iterative
Newton's M_j, and the read-out x_qᵀ M_k Xᵀy).  It is the one place where the algebra of every
block is stated: each block's action is *derived from its weights*, never written by hand.

**Why univariate algebra suffices.**  In every construction here each weight block maps a slot
to a slot by a scalar multiple of the identity.  Then every slot of every token holds either

* a polynomial in S applied to the token's own vector z (x_i on train tokens, √λ e_m on ridge
  prefix tokens, x_q on the query): ``P(S) z``  (a *vector* slot, width d), or
* ``c·y + zᵀ R(S) b`` with y the token's own label and b = Xᵀy  (a *scalar* slot, width 1),

and a bilinear head with query slot a, key slot b and value slot v adds to token i

    Σ_l v_l ⟨k_l, q_i⟩ = P_v(S) · S · P_k(S) · P_q(S) · z_i                        (vector value)
    Σ_l (c y_l + x_lᵀR b) ⟨k_l, q_i⟩ = z_iᵀ P_q(S) P_k(S) (c + S R(S)) b            (scalar value)

since Σ_l x_l x_lᵀ = S and Σ_l x_l y_l = b over the example tokens.  This holds when the sum
runs over example tokens only, so the certificate checks on every head that its key or its
value is zero on the query token (the only non-example token); ridge prefix tokens are example
tokens with y = 0 and z = √λ e_m, which turns Σ_l x_l x_lᵀ into S + λI, and that is checked on
the stored prefix (√λ·I in slot x, one common √λ, P = d rows).  With 1/N normalisation every
sum carries 1/N: S stands for (XᵀX + λI)/N and b for Xᵀy/N throughout, and the prediction
x_qᵀ p(S/N) Xᵀy/N equals Newton with α/N² on XᵀX + λI (p_k(α; S/N)/N = p_k(α/N²; S), the
homogeneity of the step; :mod:`construct.builder`).  All polynomials in S commute, so an
identity in Q[S, M] proves the layer for every d and n at once.

**What is read off the weights.**  Per head, the circuits W_Q W_Kᵀ (query slot × key slot) and
W_V W_O (value slot → output slot), restricted to slot pairs, must each be c·I (c for a pair of
scalar slots); everything else must be zero.  Each c is *snapped* to the exact value it stands
for: a small-denominator rational, or a rational times a monomial in the program's symbols
(α and σ for Newton, η for GD; α is ``Fraction(spec.alpha)``, σ the builder's
:func:`~construct.blocks.base.c_scale`).  Every circuit entry must lie within its own rounding
of that exact value: |stored − exact| ≤ (2u + 2⁻⁵⁰)·Σ|w_q w_k|, u the unit round-off of the
weights' dtype (2⁻⁵³ for float64), which a weight scaled by 1 + 1e-12 violates by 10³×.  The
algebra then runs on the exact values.  ReLU attention heads must come in signed pairs, circuits
(QK, OV) and (−QK, −OV): ReLU(s) − ReLU(−s) = s (the case lemma, :func:`verify.relu_pair_lemma`)
makes each pair one bilinear head.  A pair (QK, OV), (−QK, OV) computes ReLU(s) + ReLU(−s) = |s|
(the paper's V₂ = V₁): that is the |·| case and fails, naming the layer, the heads and the slot
they write.  ReLU MLP units must pair the same way, (w, o) with (−w, −o), giving the linear map
½ W_in W_out.  The read-in (from the token features of ``model.encode``), the prefix and the
read-out are checked the same way.  Anything else — a block that is not c·I, a bias, a head whose
key and value both see the query, an unpaired ReLU unit, LayerNorm, softmax, a causal mask —
makes the model "not certifiable", which counts as failure and names layer, head and slot.

**In-network α** (``alpha="adaptive"``).  A register token (the last prefix token) holds token
constants in scalar slots (``Scal.k``, ``Scal.tr``).  Single-coordinate heads (head m links
coordinate m of vector slots with scalar slots) must form families covering every coordinate
once: a *trace* family adds c·q_i·Σ_l ⟨b_l, v_l⟩ = c·q_i·tr(P_b P_v S), a *scale* family adds
c·(Σ_l b_l v_l)·a_i, a sum over one token's constants.  ReLU MLP units without signed partners
between scalar slots are an opaque piecewise-linear map; they must be zero on every token but
one and equal the model's PL function f (``spec.pl``) within rounding, and their output is the
symbol α(X) = f(tr(S^p)) (``polys.A``).  The Newton layers then run with M₀ = α(X)·S (the
hyperpower form: its seedless c-init, then the order-3 layers, with the same M₀).

**Induction over layers.**  The program (:func:`program_for`) states what every slot holds after
every layer in terms of the program's iterate, e.g. u = M_j z and c = S M_j z, and how the
iterate steps (Newton: M' = 2M − MSM).  Layer L is certified by applying its derived algebra to
the program's state before L, with the iterate as a free commuting symbol M (or its concrete
polynomial in S while that is small, as M₀ = αS, which the merged form's c-init layer needs),
and comparing with the program's state after L, slot by slot and token kind by token kind.  The
read-in starts the induction.  The program's own claim I − M S = (I − αS²)^P is checked the
same way (1 − S·step(M) = (1 − S M)^p per step), and P is compared with
``model.residual_power`` where the model has it.

**Cost.**  Reading the weights is vectorised numpy over their nonzeros (identical blocks are
read once); the algebra has a few terms per slot; neither depends on n, and d enters only
through the size of the weight arrays.  Measured: see tests/test_certificate.py and the README.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np
import torch

from .polys import A, M, ONE, T, ZERO, Poly
from .results import CheckResult

__all__ = ["Certificate", "CertRow", "certify", "program_for", "Program", "Stage", "Scal"]

U64 = 2.0 ** -53
CONCRETE_TERMS = 1       # the iterate stays a concrete polynomial in S while it has this many terms (M₀ = αS)
SNAP_DENOMS = tuple(range(1, 65))  # "small-denominator rational": q ≤ 64
SNAP_NUM = 1 << 12       # |p| ≤ 4096
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


# =============================================================================== slot contents
@dataclass(frozen=True)
class Scal:
    """A scalar slot's content: ``y·y_own + zᵀ R(S) b + k + tr(Tr(S))`` (b = Xᵀy).

    ``k`` and ``tr`` are the same on every token of a kind (the adaptive α's register holds
    them: 1, tr(S^p), α(X)); ``k`` is a polynomial in the in-network α symbol a.
    """

    y: Fraction
    R: Poly
    k: Poly = ZERO
    tr: Poly = ZERO

    def __add__(self, o: "Scal") -> "Scal":
        return Scal(self.y + o.y, self.R + o.R, self.k + o.k, self.tr + o.tr)

    def scale(self, c) -> "Scal":
        c = c if isinstance(c, Poly) else Fraction(c)
        if isinstance(c, Poly):
            if self.y or self.R or self.tr:
                raise _NotCertifiable("a token-dependent scalar times α(X) is outside the certificate's algebra")
            return Scal(Fraction(0), ZERO, self.k * c, ZERO)
        return Scal(self.y * c, self.R * c, self.k * c, self.tr * c)

    @property
    def constant(self) -> bool:
        return not self.y and not self.R

    def __bool__(self) -> bool:
        return bool(self.y) or bool(self.R) or bool(self.k) or bool(self.tr)

    def pretty(self, m_name: str, coeff=None) -> str:
        parts = []
        if self.y:
            parts.append("y" if self.y == 1 else f"{_name(self.y, coeff)}·y")
        if self.R:
            parts.append(f"zᵀ({self.R.pretty(m_name, coeff)})b")
        if self.k:
            parts.append(self.k.pretty(m_name, coeff))
        if self.tr:
            parts.append(f"tr({self.tr.pretty(m_name, coeff)})")
        return " + ".join(parts) or "0"


SZERO = Scal(Fraction(0), ZERO)
Content = Poly | Scal


def _pretty(c: Content | None, m_name: str, coeff=None) -> str:
    if c is None:
        return "(unchecked)"
    if isinstance(c, Scal):
        return c.pretty(m_name, coeff)
    return "0" if not c else f"({c.pretty(m_name, coeff)}) z" if c.nterms > 1 else f"{c.pretty(m_name, coeff)} z"


def _name(c: Fraction, coeff) -> str:
    return coeff(c) if coeff else str(c)


def _is_zero(c: Content) -> bool:
    return not c


# =============================================================================== programs
@dataclass(frozen=True)
class Stage:
    """One layer of a program: how the iterate steps, and what every slot holds afterwards.

    ``step(m)``: the iterate after the layer from the one before (None: unchanged; the first
    stage gets m = None).  ``state(m)``: {"x": {slot: content}, "q": {...}} after the layer, in
    terms of the iterate after it (x: example tokens, q: the query); ``None`` content is not
    checked (allowed in the last stage only).  ``order``: the residual exponent p of the step
    (1 − S·step(M) = (1 − S M)^p), 0 when the step is not a residual power step.  ``within``:
    a step the layer takes inside the prediction only (the merged read-out's last Newton step);
    its order counts towards the residual power.
    """

    name: str
    step: Callable[[Poly | None], Poly] | None
    state: Callable[[Poly], dict[str, dict[str, Content | None]]]
    order: int = 0
    within: Callable[[Poly], Poly] | None = None  # a step taken inside the prediction only (merged read-out)
    factor: Poly | None = None  # GD-type step: 1 − S·step(M) = factor·(1 − S M)  (order 0)


@dataclass(frozen=True)
class Program:
    """What a hand-built model must compute, stated slot by slot (see :func:`program_for`)."""

    name: str
    scalar_slots: frozenset[str]
    readin: dict[str, dict[str, Content]]
    stages: tuple[Stage, ...]
    symbols: dict[str, Fraction]          # named exact values a weight may stand for
    prediction_slot: str = "out"
    iterate: str = "M"                    # display name of the iterate
    prediction: str = ""                  # what the prediction is, in words
    residual_name: str = "P"              # how the residual power is named in the facts
    first_index: int = 0                  # index of the iterate the first layer computes (Newton M₀, GD P₁)
    base_residual: Poly | None = None     # 1 − S·M₀ (Newton: 1 − αS²)
    notes: tuple[str, ...] = ()


def _readin(slots: list[str], y_slot: str = "y", scalars=("y", "out", "r"),
            register: bool = False) -> dict[str, dict[str, Content]]:
    """Read-in: x_i in x and y_i in ``y_slot`` on example tokens, x_q in xq on the query, all else 0;
    ``register``: the adaptive α's register token holds 1 in slot ``one``."""
    zero = {s: (SZERO if s in scalars else ZERO) for s in slots}
    out = {"x": zero | {"x": ONE, y_slot: Scal(Fraction(1), ZERO)}, "q": zero | {"xq": ONE}}
    if register:
        out["r"] = zero | {"one": Scal(Fraction(0), ZERO, ONE, ZERO)}
    return out


def _stater(readin):
    """state(**updates) → a function m ↦ slot contents: the read-in with each updated slot (x, q) replaced."""
    def state(**upd):
        def f(m):
            out = {tk: dict(v) for tk, v in readin.items()}
            for s, val in upd.items():
                vals = val(m) if callable(val) else val
                for tk, v in zip(("x", "q", "r"), vals):
                    out[tk][s] = v
            return out
        return f
    return state


def _newton_program(model) -> Program:
    """Iterative Newton (default, merged and hyperpower forms; see the module docstring)."""
    from construct.blocks.base import c_scale

    spec = model.spec
    alpha = Fraction(spec.alpha)
    sigma = Fraction(c_scale(spec.alpha))
    form = spec.form
    F = lambda m: 2 * m - m * T * m  # noqa: E731  Newton–Schulz: M' = 2M − MSM
    H3 = lambda m: 3 * m - 3 * m * T * m + m * T * m * T * m  # noqa: E731  order 3: I − M'S = (I − MS)³
    M0 = alpha * T
    slots = {"default": ["x", "xq", "u", "y", "out"], "merged": ["x", "xq", "u", "c", "y", "out"],
             "hyperpower": ["x", "xq", "u", "c", "uq", "cq", "y", "out"]}.get(form)
    if slots is None:
        raise _NotCertifiable(f"no certificate program for form={form!r}")
    readin = _readin(slots)
    state = _stater(readin)
    both = lambda g: (lambda m: (g(m), g(m)))  # noqa: E731
    pred = lambda g: (lambda m: (None, Scal(Fraction(0), g(m))))  # noqa: E731  out: the query's prediction
    ident = lambda m: m  # noqa: E731
    if form == "default":
        stages = [Stage("init", lambda m: M0, state(u=both(ident)))]
        stages += [Stage("newton", F, state(u=both(ident)), order=2) for _ in range(spec.k)]
        stages.append(Stage("readout", None, state(u=both(ident), out=pred(ident))))
        power = f"2^k = {2 ** spec.k}"
    elif form == "merged":
        carry = state(u=both(ident), c=both(lambda m: T * m))
        stages = [Stage("init", lambda m: M0, state(u=both(ident), c=(sigma * T, ZERO)))]
        stages.append(Stage("newton+c-init", F, carry, order=2))
        stages += [Stage("newton+c", F, carry, order=2) for _ in range(spec.k - 2)]
        stages.append(Stage("merged-readout", None, state(u=both(ident), c=both(lambda m: T * m), out=pred(F)),
                            order=2, within=F))
        power = f"2^k = {2 ** spec.k}"
    else:  # hyperpower: u, c on example tokens only; the query's copies in uq, cq
        j = spec.n_order3
        ex = lambda g: (lambda m: (g(m), ZERO))   # noqa: E731  example tokens only
        qu = lambda g: (lambda m: (ZERO, g(m)))   # noqa: E731  query only
        carry = state(u=ex(ident), c=ex(lambda m: T * m), uq=qu(ident), cq=qu(lambda m: T * m))
        stages = [Stage("init", lambda m: M0, state(u=ex(ident), c=(sigma * T, ZERO), uq=qu(ident)))]
        stages.append(Stage("newton+c-init", F, carry, order=2))
        stages += [Stage("order3", H3, carry, order=3) for _ in range(j)]
        stages.append(Stage("readout", None, state(u=ex(ident), c=ex(lambda m: T * m), uq=qu(ident),
                                                   cq=qu(lambda m: T * m), out=pred(F)), order=2, within=F))
        power = f"4·3^j = {4 * 3 ** j} (j = {j}) ≥ 2^k = {2 ** spec.k}"
    return Program(
        name=f"Iterative Newton, k={spec.k}, {form} form (α={spec.alpha:g})" if form != "hyperpower" else
             f"hyperpower iteration, {form} form matching Newton-{spec.k} (α={spec.alpha:g})",
        scalar_slots=frozenset({"y", "out"}), readin=readin, stages=tuple(stages),
        symbols={"α": alpha, "σ": sigma}, base_residual=ONE - alpha * T * T,
        prediction=(f"x_qᵀ M Xᵀy with I − M S = (I − αS²)^P, P = {power}" + (
            f"; M = Newton's M_{spec.k} (M₀ = αS, M_j = 2M − MSM)" if form != "hyperpower" else
            "; M from M₀ = αS by one Newton step, j order-3 steps 3M − 3MSM + MSMSM, one Newton step")),
    )


def _adaptive_program(model) -> Program:
    """Iterative Newton with α = f(tr(S^p)) computed on a register token (``alpha="adaptive"``).

    Layers: gram (v = S x on examples; merged: S x_q parked in c on the query), trace + α (tau =
    tr(S^p), alpha = f(tau) on the register; with p = 1 inside the gram layer), scale (u = α S z:
    M₀ = α(X)·S), then the fixed-α model's Newton layers and read-out, with α(X) a symbol.
    Hyperpower form: S x_q parked in cq, the scale layer also writes uq = α(X) S x_q, then the
    seedless c-init (u, c and uq, cq), the order-3 layers and the hyperpower read-out.
    """
    spec = model.spec
    form, p = spec.form, spec.alpha_trace
    if form not in ("default", "merged", "hyperpower"):
        raise _NotCertifiable(f"no certificate program for alpha='adaptive' with form={form!r}")
    F = lambda m: 2 * m - m * T * m  # noqa: E731
    H3 = lambda m: 3 * m - 3 * m * T * m + m * T * m * T * m  # noqa: E731  order 3: I − M'S = (I − MS)³
    merged = form == "merged"
    hyper = form == "hyperpower"
    slots = list(model.layout.names)
    scalars = ("y", "out", "one", "tau", "alpha")
    readin = _readin(slots, scalars=scalars, register=True)
    state = _stater(readin)
    ident = lambda m: m  # noqa: E731
    reg = lambda val: (SZERO, SZERO, val)  # noqa: E731  register only
    park = "c" if merged else "cq" if hyper else None  # where the query's S x_q waits
    gram = {"v": (T, ZERO, ZERO)} | ({park: (ZERO, T, ZERO)} if park else {})
    ta = {"tau": reg(Scal(Fraction(0), ZERO, ZERO, T ** p)), "alpha": reg(Scal(Fraction(0), ZERO, A, ZERO))}
    stages = []
    if p == 1:
        stages.append(Stage("gram+alpha", None, state(**gram, **ta)))
    else:
        stages.append(Stage("gram", None, state(**gram)))
        stages.append(Stage("trace+alpha", None, state(**gram, **ta)))
    keep = {"v": (T, ZERO, ZERO)} | ta
    if hyper:  # u, c on example tokens only; the query's copies in uq, cq (construct.blocks.hyperpower)
        j = spec.n_order3
        slots_of = lambda m: dict(u=(m, ZERO, ZERO), c=(T * m, ZERO, ZERO), uq=(ZERO, m, ZERO), cq=(ZERO, T * m, ZERO))  # noqa: E731
        carry = state(**keep, **{s: (lambda m, s=s: slots_of(m)[s]) for s in ("u", "c", "uq", "cq")})
        stages.append(Stage("scale", lambda m: A * T, state(**keep, u=lambda m: (m, ZERO, ZERO), uq=lambda m: (ZERO, m, ZERO),
                                                             c=(ZERO, ZERO, ZERO), cq=(ZERO, ZERO, ZERO))))
        stages.append(Stage("newton+c-init", F, carry, order=2))
        stages += [Stage("order3", H3, carry, order=3) for _ in range(j)]
        stages.append(Stage("readout", None, state(**keep, **{s: (lambda m, s=s: slots_of(m)[s]) for s in ("u", "c", "uq", "cq")},
                                                   out=lambda m: (None, Scal(Fraction(0), F(m)), SZERO)),
                            order=2, within=F))
    elif merged:
        carry = state(**keep, u=lambda m: (m, m, ZERO), c=lambda m: (T * m, T * m, ZERO))
        stages.append(Stage("scale", lambda m: A * T, state(**keep, u=lambda m: (m, m, ZERO), c=(ZERO, ZERO, ZERO))))
        stages.append(Stage("newton+c-init", F, carry, order=2))
        stages += [Stage("newton+c", F, carry, order=2) for _ in range(spec.k - 2)]
        stages.append(Stage("merged-readout", None, state(**keep, u=lambda m: (m, m, ZERO), c=lambda m: (T * m, T * m, ZERO),
                                                          out=lambda m: (None, Scal(Fraction(0), F(m)), SZERO)),
                            order=2, within=F))
    else:
        carry = state(**keep, u=lambda m: (m, ZERO, ZERO))  # the default form never reads the query's u
        stages.append(Stage("scale", lambda m: A * T, carry))
        stages += [Stage("newton", F, carry, order=2) for _ in range(spec.k)]
        stages.append(Stage("readout", None, state(**keep, u=lambda m: (m, ZERO, ZERO),
                                                   out=lambda m: (None, Scal(Fraction(0), m), SZERO))))
    power = f"4·3^j = {4 * 3 ** spec.n_order3}" if hyper else f"2^{spec.k}"
    return Program(
        name=(f"hyperpower iteration matching Newton-{spec.k}" if hyper else f"Iterative Newton, k={spec.k}")
             + f", {form} form, α(X) = f(tr(S^{p})) computed in the network",
        scalar_slots=frozenset(scalars), readin=readin, stages=tuple(stages), symbols={},
        base_residual=ONE - A * T * T,
        prediction=f"x_qᵀ M Xᵀy with I − M S = (I − α(X)S²)^P, P = {power}, α(X) = f(tr(S^{p})) = "
                   f"model.alpha_of(X)",
    )


def _gd_program(model) -> Program:
    """Gradient descent from w = 0: train tokens hold r = y − xᵀ w_s, the query's out x_qᵀ w_s."""
    spec = model.spec
    eta = Fraction(spec.lr)
    slots = list(model.layout.names)
    readin = _readin(slots, y_slot="r")
    state = _stater(readin)
    step = lambda m: (ZERO if m is None else m) + eta * (ONE - T * (ZERO if m is None else m))  # noqa: E731
    stages = [Stage("gd", step, state(r=lambda m: (Scal(Fraction(1), -m), SZERO),
                                      out=lambda m: (SZERO, Scal(Fraction(0), m))), factor=ONE - eta * T)
              for _ in range(spec.steps)]
    return Program(
        name=f"gradient descent, {spec.steps} steps (η={spec.lr:g})",
        scalar_slots=frozenset({"r", "out"}), readin=readin, stages=tuple(stages), symbols={"η": eta},
        iterate="P", base_residual=ONE - eta * T,
        prediction=f"x_qᵀ w_s, w_s = P_s Xᵀy with P₀ = 0, P' = P + η(I − S P): I − P_s S = (I − ηS)^{spec.steps}",
        residual_name="s", first_index=1,
    )


def program_for(model) -> Program:
    """The program a hand-built model must compute, stated per layer and slot (for :func:`certify`).

    Newton models (default, merged and hyperpower forms; ReLU or linear attention, ridge, 1/N,
    looped): Iterative Newton (hyperpower: its order-3 iteration).  GD models: gradient descent.
    New forms add their program here.
    """
    from construct.model import NewtonTransformer

    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "lr") and hasattr(spec, "steps") and hasattr(model, "transformer"):
        return _gd_program(model)
    if isinstance(model, NewtonTransformer):
        if getattr(model.spec, "adaptive", False):
            return _adaptive_program(model)
        return _newton_program(model)
    raise TypeError(f"certify needs a hand-built model (NewtonTransformer), got {type(model).__name__}")


# =============================================================================== results
@dataclass(frozen=True, repr=False)
class CertRow:
    """One slot on one token kind after one layer (layer −1 is the read-in)."""

    layer: int
    layer_name: str
    token: str      # "train" (every example token: train and ridge prefix) | "query"
    slot: str
    computed: str   # what the weights compute, in terms of the iterate entering the layer
    expected: str   # what the program says, in terms of the iterate leaving it
    ok: bool
    written: bool   # the layer changed this slot on this token kind

    def __repr__(self) -> str:
        return (f"CertRow(layer={self.layer}, slot={self.slot!r}, token={self.token!r}, "
                f"computed={self.computed!r}, ok={self.ok})")


@dataclass(frozen=True, repr=False)
class Certificate(CheckResult):
    """Outcome of :func:`certify`.

    ``passed``: the model is certifiable and every slot after every layer equals the program's.
    ``certifiable``: the weights have the structure the proof needs (``reason`` says what is
    wrong when not).  ``rows``: per layer, slot and token kind, the polynomial computed and the
    one expected (:meth:`table`).  ``first_mismatch``: the first row that differs, or None.
    ``failing_layer`` / ``failing_head`` / ``failing_slot`` locate the first failure of either
    kind.  ``facts``: what was proven about the program and the stored constants.
    ``max_weight_error``: the largest |stored − exact| / |exact| over the circuit entries.
    """

    passed: bool
    certifiable: bool
    program: str
    rows: tuple[CertRow, ...] = field(repr=False)
    first_mismatch: CertRow | None
    reason: str
    failing_layer: int | None
    failing_head: str | None
    failing_slot: str | None
    prediction: str
    facts: tuple[str, ...]
    max_weight_error: float
    time: float
    time_weights: float          # of ``time``: reading the weights (grows with their size, ∝ d²·layers)
    symbols: dict[str, Fraction] = field(default_factory=dict)

    @property
    def time_algebra(self) -> float:
        """Seconds spent on the polynomial algebra (independent of d and n)."""
        return self.time - self.time_weights

    @property
    def message(self) -> str:
        if self.passed:
            return f"certified: {self.program}; prediction {self.prediction}"
        if not self.certifiable:
            return f"not certifiable: {self.reason}"
        r = self.first_mismatch
        return (f"mismatch at layer {r.layer} ({r.layer_name}), slot {r.slot!r}, {r.token} token: "
                f"weights give {r.computed}, the program needs {r.expected}")

    def table(self, full: bool = False) -> str:
        """Per layer, the slots each layer writes (``full``: every slot), computed vs expected."""
        rows = [("layer", "block", "token", "slot", "weights compute", "program", "")]
        for r in self.rows:
            if full or r.written or not r.ok or r.layer == -1:
                rows.append((str(r.layer), r.layer_name, r.token, r.slot, r.computed, r.expected, "✓" if r.ok else "✗"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        head = ("CERTIFIED" if self.passed else "FAILED") + f" — {self.program}  ({self.time * 1e3:.0f} ms)"
        out = [head, self.message]
        if self.facts:
            out += ["", *("  • " + f for f in self.facts)]
        if self.rows:
            out += ["", "M_j: the program's iterate; S: (XᵀX + λI)[/N]; b: Xᵀy[/N]; z: the token's own vector; "
                    "slots a layer does not write are checked but not listed", self.table()]
        return "\n".join(out)


class _NotCertifiable(Exception):
    def __init__(self, msg: str, layer: int | None = None, head: str | None = None, slot: str | None = None):
        super().__init__(msg)
        self.layer, self.head, self.slot = layer, head, slot


# =============================================================================== snapping
class _Snapper:
    """Find the exact value a stored coefficient stands for (module docstring)."""

    def __init__(self, symbols: dict[str, Fraction]):
        names = list(symbols)
        cands = []
        ranges = [range(-2, 3)] * len(names)
        for exps in itertools.product(*ranges):
            val, label = Fraction(1), []
            for nm, e in zip(names, exps):
                if e:
                    val *= symbols[nm] ** e
                    label.append(nm + (str(e).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")) if e != 1 else ""))
            cands.append((sum(map(abs, exps)), "·".join(label), val))
        cands.sort(key=lambda c: c[0])
        self.cands = [(label, val, float(val)) for _, label, val in cands if val != 0]
        self.weight = [w for w, _, val in cands if val != 0]
        self.labels: dict[Fraction, str] = {}

    def __call__(self, v: float, tol: float) -> Fraction | None:
        """The exact value v stands for: an exact match first, then the simplest within ``tol``."""
        if v == 0:
            return None
        fv = Fraction(v)
        for label, val, _ in self.cands:  # exact: v = (p/q)·monomial with small p, q
            r = fv / val
            if r.denominator <= SNAP_DENOMS[-1] and abs(r.numerator) <= SNAP_NUM:
                return self._keep(r, label, val)
        best = None
        for cx, (label, val, fval) in enumerate(self.cands):  # within rounding: simplest p/q, then monomial
            rf = v / fval
            for q in SNAP_DENOMS:
                p = round(rf * q)
                if p == 0 or abs(p) > SNAP_NUM:
                    continue
                if abs(float(Fraction(p, q) * val) - v) <= tol:
                    score = (q, self.weight[cx], abs(p))
                    if best is None or score < best[0]:
                        best = (score, Fraction(p, q), label, val)
                    break
        return None if best is None else self._keep(best[1], best[2], best[3])

    def _keep(self, r: Fraction, label: str, val: Fraction) -> Fraction:
        kappa = r * val
        if label:
            self.labels.setdefault(kappa, label if r == 1 else ("−" + label if r == -1 else f"{_rat(r)}·{label}"))
        return kappa

    def name(self, c: Fraction) -> str:
        """Readable name of an exact coefficient (for the table)."""
        if c in self.labels:
            return self.labels[c]
        if c.denominator <= 10 ** 4 and abs(c.numerator) <= 10 ** 6:
            return _rat(c)
        for label, val, _ in self.cands:
            if label:
                for e in range(1, 18):
                    r = c / val ** e
                    if r.denominator <= 64 and abs(r.numerator) <= 10 ** 6:
                        mono = label if e == 1 else f"({label})" + str(e).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
                        if "·" not in label and e > 1:
                            mono = label + str(e).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
                        return mono if r == 1 else f"{_rat(r)}·{mono}"
        return f"{float(c):.6g}"


def _rat(c: Fraction) -> str:
    return str(c.numerator) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"


# =============================================================================== reading weights
@dataclass(frozen=True)
class _Groups:
    """Named index groups of one axis (residual slots, or token features): name, start, size, kind."""

    names: tuple[str, ...]
    starts: np.ndarray
    sizes: np.ndarray
    vector: tuple[bool, ...]

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = np.searchsorted(self.starts, idx, side="right") - 1
        return g, idx - self.starts[g]


def _nz(W: np.ndarray):
    i, j = np.nonzero(W)
    return i, j, W[i, j]


def _join(A, B):
    """Entries of A Bᵀ from sparse A = (i, e, a), B = (j, e, b): (i, j, Σ a b, Σ |a b|)."""
    ai, ae, av = A
    bj, be, bv = B
    if not len(av) or not len(bv):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0)
    order = np.argsort(be, kind="stable")
    bes = be[order]
    lo = np.searchsorted(bes, ae, "left")
    hi = np.searchsorted(bes, ae, "right")
    cnt = hi - lo
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0)
    ia = np.repeat(np.arange(len(ae)), cnt)
    start = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)
    jb = order[start + np.arange(total)]
    prod = av[ia] * bv[jb]
    rows, cols = ai[ia], bj[jb]
    key = rows.astype(np.int64) * (int(max(cols.max(), 0)) + 1) + cols
    uniq, inv = np.unique(key, return_inverse=True)
    val = np.bincount(inv, weights=prod)
    mag = np.bincount(inv, weights=np.abs(prod))
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inv] = np.arange(len(key))
    return rows[first], cols[first], val, mag


class _Reader:
    """Reads weight matrices as slot → slot maps of exact coefficients (module docstring)."""

    def __init__(self, snap: _Snapper, unit: float, d: int):
        self.snap, self.unit, self.d = snap, unit, d
        self.max_err = 0.0
        self.seconds = 0.0  # time spent reading weights

    def tol(self, mag: np.ndarray) -> np.ndarray:
        return mag * (2 * self.unit + 2.0 ** -50)

    def raw(self, entries, rows: _Groups, cols: _Groups) -> list[tuple]:
        """Entries grouped by slot pair: [(row slot k, col slot k, row offsets, col offsets, values, tols)]."""
        i, j, val, mag = entries
        tol = self.tol(mag)
        keep = np.abs(val) > tol  # exact cancellations (and their rounding) are zeros
        i, j, val, tol = i[keep], j[keep], val[keep], tol[keep]
        if not len(val):
            return []
        gi, oi = rows.locate(i)
        gj, oj = cols.locate(j)
        pair = gi * len(cols.names) + gj
        out = []
        for p in np.unique(pair):
            sel = pair == p
            out.append((int(p) // len(cols.names), int(p) % len(cols.names), oi[sel], oj[sel], val[sel], tol[sel]))
        return out

    def exact(self, v: np.ndarray, t: np.ndarray, desc: str, layer, head, slot, snap: bool = True) -> Fraction:
        """The one exact value every entry of ``v`` stands for (each within its rounding ``t``)."""
        vals, counts = np.unique(v, return_counts=True)
        rep = float(vals[np.argmax(counts)])
        rep_tol = float(t[np.argmax(v == rep)])
        if snap:
            kappa = self.snap(rep, rep_tol)
            if kappa is None:
                names = ", ".join(self.snap_names())
                raise _NotCertifiable(
                    f"{desc}: coefficient {rep:.17g} is " + (f"neither a small rational nor a rational times a "
                    f"monomial in {names}" if names else "not a small rational") + f" within its rounding {rep_tol:.2g}",
                    layer, head, slot)
        else:
            kappa = Fraction(rep)
        fk = float(kappa)
        dev = np.abs(v - fk)
        if np.any(dev > t):
            k = int(np.argmax(dev - t))
            raise _NotCertifiable(
                f"{desc}: entry {k} is {v[k]:.17g}, off its exact value {self.snap.name(kappa)} = {fk:.17g} by "
                f"{dev[k] / abs(fk):.2g} relative, more than its rounding ({t[k] / abs(fk):.2g})", layer, head, slot)
        # the deviation of each distinct stored value from the exact one, in exact arithmetic
        self.max_err = max(self.max_err, max(float(abs(Fraction(float(x)) - kappa) / abs(kappa)) for x in vals))
        return kappa

    def check_pairs(self, raw: list[tuple], rows: _Groups, cols: _Groups, where: str, layer: int | None,
                    head: str | None = None, snap: bool = True) -> dict[tuple[str, str], Fraction]:
        """{(row slot, col slot): exact c} after checking that each slot pair is c·I (c for scalars)."""
        out: dict[tuple[str, str], Fraction] = {}
        for ka, kb, ra, rb, v, t in raw:
            a, b = rows.names[ka], cols.names[kb]
            va, vb = rows.vector[ka], cols.vector[kb]
            desc = f"{where}: {a} → {b}"
            if va != vb:
                raise _NotCertifiable(f"{desc} maps a {'vector' if va else 'scalar'} slot to a "
                                      f"{'vector' if vb else 'scalar'} slot (not c·I)", layer, head, b)
            if np.any(ra != rb):
                k = int(np.argmax(ra != rb))
                raise _NotCertifiable(f"{desc} is not a multiple of the identity: entry ({int(ra[k])}, {int(rb[k])}) "
                                      f"= {v[k]:.17g} off the diagonal", layer, head, b)
            size = int(rows.sizes[ka])
            if len(v) != size:
                raise _NotCertifiable(f"{desc} is not a multiple of the identity: {len(v)} of {size} diagonal "
                                      f"entries are nonzero", layer, head, b)
            out[(a, b)] = self.exact(v, t, desc + " (diagonal)", layer, head, b, snap)
        return out

    def blocks(self, entries, rows: _Groups, cols: _Groups, where: str, layer: int | None,
               head: str | None = None, snap: bool = True) -> dict[tuple[str, str], Fraction]:
        """{(row group, col group): exact c} for entries (i, j, value, Σ|terms|) of a map rows → cols."""
        return self.check_pairs(self.raw(entries, rows, cols), rows, cols, where, layer, head, snap)

    def snap_names(self) -> list[str]:
        return [lbl for lbl, _, _ in self.snap.cands if lbl and "·" not in lbl and not any(ch in lbl for ch in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")]


@dataclass
class _Head:
    QK: dict[tuple[str, str], Fraction]
    OV: dict[tuple[str, str], Fraction]
    label: str


@dataclass
class _Family:
    """d single-coordinate heads that act together (the adaptive α's trace and scale heads).

    Head m links coordinate m of vector slots with scalar slots.  ``kind="trace"``: scalar query
    slots a, vector key slots b, vector value slots v, scalar outputs o: adds
    Σ c_ab c_vo · a_i · Σ_l ⟨b_l, v_l⟩ = c·a_i·tr(P_b P_v S).  ``kind="scale"``: vector query
    slots a, scalar keys b, scalar values v, vector outputs o: adds Σ c_ab c_vo (Σ_l b_l v_l)·a_i.
    """

    kind: str
    QK: dict[tuple[str, str], Fraction]
    OV: dict[tuple[str, str], Fraction]
    label: str


@dataclass
class _Opaque:
    """ReLU MLP units that are not signed pairs: a piecewise-linear map of scalar slots (the adaptive α)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    units: int
    W_in: dict        # {(slot, unit): value}
    W_out: dict       # {(unit, slot): value}


@dataclass
class _BlockAlgebra:
    heads: list[_Head]
    mlp: dict[tuple[str, str], Fraction]
    families: list[_Family] = field(default_factory=list)
    opaque: _Opaque | None = None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def _sparse_params(block) -> dict[str, tuple]:
    """Each weight of a block as (shape, flat indices of its nonzeros, their values): one pass over it."""
    out = {}
    mods = ([("attn", block.attn, ("W_Q", "W_K", "W_V", "W_O"))] if block.attn is not None else []) + \
           ([("mlp", block.mlp, ("W_in", "W_out"))] if block.mlp is not None else [])
    for _, mod, names in mods:
        for nm in names:
            arr = _np(getattr(mod, nm))
            flat = np.flatnonzero(arr != 0)
            out[nm] = (arr.shape, flat, arr.reshape(-1)[flat])
    return out


def _same_sparse(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) and np.array_equal(a[k][2], b[k][2]) for k in a)


def _head_entries(sp: tuple, h: int, transpose: bool = False):
    """Entries (row, col, value) of head h of a (H, R, C) weight from its sparse form."""
    (H, R, C), flat, vals = sp
    lo, hi = np.searchsorted(flat, [h * R * C, (h + 1) * R * C])
    f, v = flat[lo:hi] - h * R * C, vals[lo:hi]
    r, c = f // C, f % C
    return (c, r, v) if transpose else (r, c, v)


def _circuit(reader: _Reader, entries, slots: _Groups, where: str, layer: int, head: str) -> dict:
    """A head's circuit by slot pair: {(a, b): c} for c·I blocks, {(a, b, m): c} for a single entry that
    links coordinate m of a vector slot with a scalar slot (one head of an adaptive α family)."""
    raw = reader.raw(entries, slots, slots)
    plain = [r for r in raw if slots.vector[r[0]] == slots.vector[r[1]]]
    out = reader.check_pairs(plain, slots, slots, where, layer, head)
    for ka, kb, ra, rb, v, t in raw:
        if slots.vector[ka] == slots.vector[kb]:
            continue
        a, b = slots.names[ka], slots.names[kb]
        if len(v) != 1:
            raise _NotCertifiable(f"{where}: {a} → {b} maps a {'vector' if slots.vector[ka] else 'scalar'} slot to a "
                                  f"{'vector' if slots.vector[kb] else 'scalar'} slot (not c·I)", layer, head, b)
        m = int(ra[0]) if slots.vector[ka] else int(rb[0])
        out[(a, b, m)] = reader.exact(v, t, f"{where}: {a} → {b} (coordinate {m})", layer, head, b)
    return out


def _families(heads: list[_Head], slots: _Groups, layer: int, where: str, d: int) -> tuple[list[_Head], list[_Family]]:
    """Split single-coordinate heads off and group them into families that cover every coordinate once."""
    plain, groups = [], {}
    vec = dict(zip(slots.names, slots.vector))
    for h in heads:
        keys = [*h.QK, *h.OV]
        coord = [k for k in keys if len(k) == 3]
        if not coord:
            plain.append(h)
            continue
        ms = {k[2] for k in coord}
        if len(coord) != len(keys) or len(ms) != 1:
            raise _NotCertifiable(f"{where} {h.label}: mixes single-coordinate and c·I circuits, or coordinates "
                                  f"{sorted(ms)}", layer, h.label, coord[0][1])
        qk = {(a, b): c for (a, b, _), c in h.QK.items()}
        ov = {(v, o): c for (v, o, _), c in h.OV.items()}
        if all(not vec[a] and vec[b] for a, b in qk) and all(vec[v] and not vec[o] for v, o in ov):
            kind = "trace"
        elif all(vec[a] and not vec[b] for a, b in qk) and all(not vec[v] and vec[o] for v, o in ov):
            kind = "scale"
        else:
            raise _NotCertifiable(f"{where} {h.label}: single-coordinate head of an unknown kind "
                                  f"(QK {sorted(qk)}, OV {sorted(ov)})", layer, h.label, next(iter(ov))[1])
        groups.setdefault((kind, frozenset(qk.items()), frozenset(ov.items())), []).append((ms.pop(), h.label))
    fams = []
    for (kind, qk, ov), members in groups.items():
        got = sorted(m for m, _ in members)
        if got != list(range(d)):
            raise _NotCertifiable(f"{where}: the {kind} heads {sorted(dict(qk))} → {sorted(dict(ov))} cover "
                                  f"coordinates {got}, not each of 0 … {d - 1} once", layer, members[0][1],
                                  sorted(dict(ov))[0][1])
        fams.append(_Family(kind, dict(qk), dict(ov), f"{kind} heads ({members[0][1]} … {members[-1][1]})"))
    return plain, fams


def _read_block(reader: _Reader, sp: dict, cfg, slots: _Groups, layer: int, lname: str, attn: str,
                scale: float) -> _BlockAlgebra:
    heads: list[_Head] = []
    where = f"layer {layer} ({lname})"
    if "W_Q" in sp:
        circ = []
        for h in range(sp["W_Q"][0][0]):
            q, k, v = (_head_entries(sp[n], h) for n in ("W_Q", "W_K", "W_V"))
            o = _head_entries(sp["W_O"], h, transpose=True)  # entries (output slot index, head dim)
            if not (len(q[2]) and len(k[2]) and len(v[2]) and len(o[2])):
                continue  # a head that writes nothing (padding)
            qk = _join(q, k)
            ovc = _join(v, o)
            if scale != 1.0:
                qk = (qk[0], qk[1], qk[2] * scale, qk[3] * abs(scale))
            QK = _circuit(reader, qk, slots, f"{where} head {h} QK circuit (query slot → key slot)", layer, f"head {h}")
            OV = _circuit(reader, ovc, slots, f"{where} head {h} OV circuit (value slot → output slot)", layer, f"head {h}")
            if QK and OV:
                circ.append((h, QK, OV))
        if attn == "linear":
            heads = [_Head(QK, OV, f"head {h}") for h, QK, OV in circ]
        else:
            unused = list(range(len(circ)))
            while unused:
                i = unused.pop(0)
                h, QK, OV = circ[i]
                negQK = {s: -c for s, c in QK.items()}
                negOV = {s: -c for s, c in OV.items()}
                mate = next((j for j in unused if circ[j][1] == negQK and circ[j][2] == negOV), None)
                if mate is None:
                    absv = next((j for j in unused if circ[j][1] == negQK and circ[j][2] == OV), None)
                    outs = sorted({key[1] for key in OV})
                    if absv is not None:
                        raise _NotCertifiable(
                            f"{where}: ReLU heads {h} and {circ[absv][0]} have opposite QK circuits but EQUAL OV "
                            f"circuits (V₂ = V₁, the paper's Eqs. 21/28): ReLU(s) + ReLU(−s) = |s|, the |·| case of "
                            f"the case lemma, not s; the pair is not bilinear and writes slot {', '.join(outs)}",
                            layer, f"heads {h}+{circ[absv][0]}", outs[0])
                    raise _NotCertifiable(
                        f"{where}: ReLU head {h} has no signed partner (circuits −QK and −OV); the case lemma "
                        f"ReLU(s) − ReLU(−s) = s does not apply (it writes slot {', '.join(outs)})",
                        layer, f"head {h}", outs[0])
                unused.remove(mate)
                heads.append(_Head(QK, OV, f"heads {h}+{circ[mate][0]}"))
    heads, families = _families(heads, slots, layer, where, reader.d)
    mlp: dict[tuple[str, str], Fraction] = {}
    opaque = None
    if "W_in" in sp:
        (D, Mh), fin, vin = sp["W_in"]
        _, fout, vout = sp["W_out"]
        ii, im = fin // Mh, fin % Mh             # W_in entries (residual index, unit)
        om, oj = fout // D, fout % D             # W_out entries (unit, residual index)
        o_in = np.argsort(im, kind="stable")
        ii, im, vin = ii[o_in], im[o_in], vin[o_in]
        units_in = np.unique(im)
        units_out = np.unique(om)
        live = np.intersect1d(units_in, units_out)
        lo_i, hi_i = np.searchsorted(im, live), np.searchsorted(im, live, "right")
        lo_o, hi_o = np.searchsorted(om, live), np.searchsorted(om, live, "right")
        sig, keyed = {}, {}
        for m, a0, a1, b0, b1 in zip(live.tolist(), lo_i.tolist(), hi_i.tolist(), lo_o.tolist(), hi_o.tolist()):
            key = (tuple(ii[a0:a1].tolist()), tuple(vin[a0:a1].tolist()), tuple(oj[b0:b1].tolist()), tuple(vout[b0:b1].tolist()))
            sig[m] = key
            keyed.setdefault(key, []).append(m)
        used, paired, lone = set(), [], []
        for m in live.tolist():
            if m in used:
                continue
            wi, iv, wo, ov = sig[m]
            partner = [p for p in keyed.get((wi, tuple(-x for x in iv), wo, tuple(-x for x in ov)), []) if p not in used]
            ins_g = slots.locate(np.array(wi))[0]
            outs_g = slots.locate(np.array(wo))[0]
            if not partner and all(not slots.vector[g] for g in (*ins_g, *outs_g)):
                lone.append(m)  # a unit of a piecewise-linear map between scalar slots (adaptive α)
                used.add(m)
                continue
            if not partner:
                absv = [p for p in keyed.get((wi, tuple(-x for x in iv), wo, ov), []) if p not in used and p != m]
                outs = sorted({slots.names[g] for g in outs_g})
                kind = ("its partner has the same output weights (ReLU(v) + ReLU(−v) = |v|, the |·| case)"
                        if absv else "it has no partner (−w, −o)")
                raise _NotCertifiable(f"{where}: MLP hidden unit {m} writes slot {', '.join(outs)} but {kind}; "
                                      f"ReLU(v) − ReLU(−v) = v does not apply", layer, "MLP", outs[0])
            used.update((m, partner[0]))
            paired.append(m)
        if lone:
            li, lo_ = np.isin(im, lone), np.isin(om, lone)
            gi = slots.locate(ii[li])[0]
            go = slots.locate(oj[lo_])[0]
            opaque = _Opaque(tuple(sorted({slots.names[g] for g in gi})), tuple(sorted({slots.names[g] for g in go})),
                             len(lone), {(slots.names[g], int(u)): float(x) for g, u, x in zip(gi, im[li], vin[li])},
                             {(int(u), slots.names[g]): float(x) for g, u, x in zip(go, om[lo_], vout[lo_])})
        keep_i = np.isin(im, paired)
        keep_o = np.isin(om, paired)
        # Σ over pairs of w oᵀ (each pair adds (ReLU(h) − ReLU(−h)) o = h o): join on the unit index
        mlp = {} if not paired else reader.blocks(_join((ii[keep_i], im[keep_i], vin[keep_i]), (oj[keep_o], om[keep_o], vout[keep_o])),
                            slots, slots, f"{where} MLP (input slot → output slot, unit pairs collapsed)", layer, "MLP")
    return _BlockAlgebra(heads, mlp, families, opaque)


# =============================================================================== the algebra
def _combine(coef: dict[tuple[str, str], Fraction], state: dict[str, Content], by_row: bool, scalar: frozenset):
    """Σ over a circuit's slot pairs: for each output (col if by_row else row) slot, Σ c · state[other]."""
    out: dict[str, Content] = {}
    for (a, b), c in coef.items():
        src, dst = (a, b) if by_row else (b, a)
        add = state[src].scale(c) if isinstance(state[src], Scal) else state[src] * c
        out[dst] = out[dst] + add if dst in out else add
    return out


def _apply(alg: _BlockAlgebra, state: dict[str, dict[str, Content]], scalar: frozenset, layer: int,
           where: str, normalized: bool = False) -> dict[str, dict[str, Content]]:
    state = {tk: {s: _canon(c, tk) for s, c in v.items()} for tk, v in state.items()}
    new = {tk: dict(v) for tk, v in state.items()}
    X = state["x"]
    others = [tk for tk in state if tk != "x"]  # the query (and the adaptive α's register): not examples
    for head in alg.heads:
        for (a, b) in head.QK:
            if a in scalar or b in scalar:
                raise _NotCertifiable(f"{where} {head.label}: its score reads scalar slot "
                                      f"{a if a in scalar else b} (only vector slots give a product with S)",
                                      layer, head.label, a if a in scalar else b)
        # a non-example token must not enter the sum over tokens: its key or its value is zero
        for tk in others:
            key = _combine({(b, a): c for (a, b), c in head.QK.items()}, state[tk], True, scalar)  # per query slot
            val = _combine(head.OV, state[tk], True, scalar)
            if any(key.values()) and any(val.values()):
                bad = sorted({b for (a, b) in head.QK if state[tk][b]})
                raise _NotCertifiable(
                    f"{where} {head.label}: on the {_TOKEN[tk]} token both its key (slot {', '.join(bad)}) and its "
                    f"value are nonzero, so the sum over tokens would include the {_TOKEN[tk]} and is not a product "
                    f"with S", layer, head.label, bad[0] if bad else None)
        for tk in state:
            Z = state[tk]
            kern = ZERO  # z_iᵀ (Σ c_ab P_a P_b) x_l : the score as a polynomial factor
            for (a, b), c in head.QK.items():
                if Z[a] and X[b]:
                    kern = kern + Z[a] * X[b] * c
            if not kern:
                continue
            for (v, o), c in head.OV.items():
                val = X[v]
                if isinstance(val, Scal):
                    if val.k or val.tr:
                        raise _NotCertifiable(f"{where} {head.label}: value slot {v} holds a token constant on example "
                                              f"tokens (Σ_l x_l would appear)", layer, head.label, v)
                    add = Scal(Fraction(0), kern * (T * val.R + Poly.const(val.y)) * c)
                else:
                    add = kern * T * val * c
                new[tk][o] = new[tk][o] + add
    if alg.families and normalized:
        raise _NotCertifiable(f"{where}: single-coordinate heads under 1/N normalisation are not covered", layer)
    for fam in alg.families:
        if fam.kind == "trace":  # Σ_l ⟨b_l, v_l⟩ over example tokens = tr(P_b P_v S); others must not enter
            for tk in others:
                if any(state[tk][b] for _, b in fam.QK) and any(state[tk][v] for v, _ in fam.OV):
                    raise _NotCertifiable(f"{where} {fam.label}: the {_TOKEN[tk]} token's key and value are nonzero",
                                          layer, fam.label, next(iter(fam.QK))[1])
            for tk in state:
                for (a, b), cab in fam.QK.items():
                    q = state[tk][a]
                    if not q:
                        continue
                    if not q.constant or q.tr:
                        raise _NotCertifiable(f"{where} {fam.label}: its query {a} is not a token constant on the "
                                              f"{_TOKEN[tk]} token", layer, fam.label, a)
                    for (v, o), cvo in fam.OV.items():
                        inner = X[b] * X[v] * T * q.k * (cab * cvo)
                        new[tk][o] = new[tk][o] + Scal(Fraction(0), ZERO, ZERO, inner)
        else:  # scale: (Σ_l b_l v_l)·a_i, the sum over tokens of a product of token constants
            for (a, b), cab in fam.QK.items():
                for (v, o), cvo in fam.OV.items():
                    total = ZERO
                    for tk in state:
                        kb, kv = state[tk][b], state[tk][v]
                        if not kb or not kv:
                            continue
                        if tk == "x" or not (kb.constant and kv.constant and not kb.tr and not kv.tr):
                            raise _NotCertifiable(f"{where} {fam.label}: key {b} and value {v} are both nonzero on the "
                                                  f"{_TOKEN[tk]} tokens and not constants of one token", layer, fam.label, b)
                        total = total + kb.k * kv.k
                    for tk in state:
                        P = state[tk][a]
                        if P and total:
                            new[tk][o] = new[tk][o] + P * total * (cab * cvo)
    if alg.mlp:
        for tk in state:
            for o, add in _combine(alg.mlp, new[tk], True, scalar).items():
                new[tk][o] = new[tk][o] + add
    if alg.opaque is not None:
        op = alg.opaque
        for tk in state:
            ins = [new[tk][s] for s in op.inputs]
            if not any(ins):
                continue  # every unit is ReLU(0) = 0 (no biases): nothing written
            if tk == "x" or any(not i.constant for i in ins) or len(op.outputs) != 1:
                raise _NotCertifiable(f"{where}: MLP units without signed partners read {', '.join(op.inputs)}, "
                                      f"which are not token constants of one token", layer, "MLP", op.outputs[0])
            new[tk][op.outputs[0]] = new[tk][op.outputs[0]] + Scal(Fraction(0), ZERO, A, ZERO)
    return new


def _canon(c: Content | None, tk: str) -> Content | None:
    """Content as it is on a token kind: the query's own y is 0; the register has no own vector or y."""
    if c is None:
        return None
    if tk == "r":
        return Scal(Fraction(0), ZERO, c.k, c.tr) if isinstance(c, Scal) else ZERO
    if isinstance(c, Scal) and tk == "q":
        return Scal(Fraction(0), c.R, c.k, c.tr)
    return c


# =============================================================================== read-in, read-out, facts
_TOKEN = {"x": "train", "q": "query", "r": "register"}


def _slot_groups(lay, prog: Program, d: int) -> _Groups:
    names = list(lay.names)
    if set(names) != set(prog.readin["x"]):
        raise _NotCertifiable(f"the layout's slots {names} are not the program's {sorted(prog.readin['x'])}")
    starts, sizes, vector = [], [], []
    for s in lay.slots:
        vec = s.name not in prog.scalar_slots
        want = d if vec else 1
        if s.size != want:
            raise _NotCertifiable(f"slot {s.name!r} has {s.size} dims; a {'vector' if vec else 'scalar'} slot has {want}",
                                  slot=s.name)
        starts.append(s.start), sizes.append(s.size), vector.append(vec)
    return _Groups(tuple(names), np.array(starts), np.array(sizes), tuple(vector))


def _check_architecture(tr) -> None:
    cfg = tr.cfg
    if cfg.layernorm:
        raise _NotCertifiable("the model has LayerNorm (not polynomial)")
    if cfg.n_heads and cfg.attn not in ("relu", "linear"):
        raise _NotCertifiable(f"attention is {cfg.attn!r}; the certificate covers relu (signed pairs) and linear")
    if cfg.causal:
        raise _NotCertifiable("attention is causal; the sums over tokens must run over every example token")
    if cfg.mlp not in (None, "relu"):
        raise _NotCertifiable(f"the MLP activation is {cfg.mlp!r}; only ReLU unit pairs are certified")
    if cfg.max_len:
        raise _NotCertifiable("the model has learned positional embeddings")
    for name, p in tr.named_parameters():
        if (name.startswith("b_") or ".b_" in name) and torch.any(p != 0):
            raise _NotCertifiable(f"bias {name} is nonzero", slot=None)


def _feature_groups(model, d: int, d_in: int):
    """Token features of ``model.encode``: which feature carries x_i[a], x_q[a] and y_i (probed)."""
    X = torch.arange(1, d + 1, dtype=torch.float64)[None, None]          # (1, 1, d)
    y = torch.tensor([[-(d + 1.0)]], dtype=torch.float64)                  # (1, 1)
    xq = torch.arange(d + 2, 2 * d + 2, dtype=torch.float64)[None]         # (1, d)
    tok = model.encode(X.to(model.dtype), y.to(model.dtype), xq.to(model.dtype)).to(torch.float64)[0]  # (2, d_in)
    if tok.shape != (2, d_in):
        raise _NotCertifiable(f"model.encode gives tokens of shape {tuple(tok.shape)}, expected (2, {d_in})")
    found = {}
    for role, row, vals in (("x", 0, X[0, 0]), ("y", 0, y[0]), ("xq", 1, xq[0])):
        idx = []
        for v in vals.tolist():
            hit = torch.nonzero(tok[row] == v).flatten().tolist()
            if len(hit) != 1:
                raise _NotCertifiable(f"model.encode: cannot locate the {role} feature (value {v} appears {len(hit)} times)")
            idx.append(hit[0])
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise _NotCertifiable(f"model.encode: the {role} features are not contiguous")
        found[role] = idx[0]
    used = {0: {found["x"] + a for a in range(d)} | {found["y"]}, 1: {found["xq"] + a for a in range(d)}}
    for row in (0, 1):
        extra = [f for f in torch.nonzero(tok[row]).flatten().tolist() if f not in used[row]]
        if extra:
            raise _NotCertifiable(f"model.encode puts something other than x, x_q, y in feature {extra[0]}")
    order = sorted(found, key=lambda r: found[r])
    return _Groups(tuple(order), np.array([found[r] for r in order]),
                   np.array([1 if r == "y" else d for r in order]), tuple(r != "y" for r in order))


def _read_in(model, reader: _Reader, slots: _Groups, prog: Program):
    tr, spec, d = model.transformer, model.spec, model.spec.d
    _check_architecture(tr)
    feats = _feature_groups(model, d, tr.cfg.d_in)
    W = _np(tr.W_in)
    i, j, v = _nz(W)
    inside = np.zeros(len(i), bool)
    for s, n in zip(feats.starts, feats.sizes):
        inside |= (i >= s) & (i < s + n)
    if not np.all(inside):
        raise _NotCertifiable(f"read-in W_in: token feature {int(i[~inside][0])} is not x, x_q or y but is read", -1)
    c = reader.blocks((i, j, v, np.abs(v)), feats, slots, "read-in W_in (token feature → slot)", -1, "read-in")
    state = {"x": {}, "q": {}}
    for k, s in enumerate(slots.names):
        if slots.vector[k]:
            state["x"][s] = Poly.const(c.get(("x", s), 0))
            state["q"][s] = Poly.const(c.get(("xq", s), 0))
        else:
            state["x"][s] = Scal(c.get(("y", s), Fraction(0)), ZERO)
            state["q"][s] = SZERO
    lam = Fraction(getattr(spec, "lam", 0.0))
    Pw = _np(tr.prefix) if tr.prefix is not None else np.zeros((0, slots.starts[-1] + slots.sizes[-1]))
    n_reg = 1 if "r" in prog.readin else 0
    if Pw.shape[0] != (d if lam else 0) + n_reg:
        raise _NotCertifiable(f"{Pw.shape[0]} prefix tokens; the program has {d if lam else 0} ridge tokens (λI needs d) "
                              f"and {n_reg} register token(s)", -1, "prefix")
    if n_reg:  # the adaptive α's register: the last prefix token, token constants in scalar slots only
        ri, rj, rv = _nz(Pw[-1:])
        reg = _Groups(("register",), np.array([0]), np.array([1]), (False,))
        got = {}
        for ka, kb, ra, rb, v, t in reader.raw((ri, rj, rv, np.abs(rv)), reg, slots):
            sname = slots.names[kb]
            if slots.vector[kb]:
                raise _NotCertifiable(f"register token holds a value in vector slot {sname!r}", -1, "register", sname)
            got[sname] = reader.exact(v, t, f"register token, slot {sname}", -1, "register", sname)
        state["r"] = {s_: (Scal(Fraction(0), ZERO, Poly.const(got[s_]), ZERO) if s_ in got else
                           (SZERO if not slots.vector[k] else ZERO)) for k, s_ in enumerate(slots.names)}
        Pw = Pw[:-1]
    if not lam:
        if Pw.shape[0]:
            raise _NotCertifiable("the model has ridge prefix tokens but spec.lam = 0", -1, "prefix")
        return state, Fraction(0)
    pi, pj, pv = _nz(Pw)
    pre = _Groups(("prefix",), np.array([0]), np.array([d]), (True,))
    blocks = reader.blocks((pi, pj, pv, np.abs(pv)), pre, slots, "ridge prefix (prefix token m → slot)", -1,
                           "prefix", snap=False)
    rho = None
    for k, s in enumerate(slots.names):
        cx = state["x"][s]
        want = cx.terms.get((0, 0, 0), Fraction(0)) if isinstance(cx, Poly) else Fraction(0)
        got = blocks.get(("prefix", s), Fraction(0))
        if not want and got:
            raise _NotCertifiable(f"ridge prefix writes slot {s!r}, which the train tokens' read-in leaves 0", -1, "prefix", s)
        if want:
            r = got / want
            if rho is None:
                rho = r
            elif r != rho:
                raise _NotCertifiable(f"ridge prefix: slot {s!r} holds {float(r):.17g}·e_m, slot x {float(rho):.17g}·e_m "
                                      f"(one common √λ needed)", -1, "prefix", s)
    if not rho:
        raise _NotCertifiable("ridge prefix tokens are zero", -1, "prefix")
    lam_w = rho * rho
    if abs(lam_w - lam) > 4 * reader.unit * lam:
        raise _NotCertifiable(f"ridge prefix: (√λ)² = {float(lam_w):.17g} differs from spec.lam = {spec.lam:.17g} "
                              f"by more than rounding", -1, "prefix", "x")
    return state, lam_w


def _program_facts(model, prog: Program, facts: list[str], lam: Fraction, snap) -> None:
    """Check the program's own residual claim step by step, and record what S, b and λ are."""
    P, gd = 1, 0
    first = prog.stages[0].step(None) if prog.stages and prog.stages[0].step else None
    if prog.base_residual is not None and first is not None and ONE - T * first != prog.base_residual:
        raise _NotCertifiable(f"program: 1 − S·(first iterate) is not {prog.base_residual.pretty(coeff=snap.name)}")
    seen = {}
    for st in prog.stages:
        fn = st.step or st.within
        if st.order:
            if st.name not in seen:
                if ONE - T * fn(M) != (ONE - T * M) ** st.order:
                    raise _NotCertifiable(f"program step {st.name!r}: 1 − S·step(M) ≠ (1 − SM)^{st.order}")
                seen[st.name] = f"{st.name}: 1 − S·step(M) = (1 − SM)^{st.order}"
            P *= st.order
        elif st.factor is not None:
            if st.name not in seen:
                if ONE - T * fn(M) != st.factor * (ONE - T * M):
                    raise _NotCertifiable(f"program step {st.name!r}: 1 − S·step(P) ≠ "
                                          f"({st.factor.pretty(coeff=snap.name)})(1 − SP)")
                seen[st.name] = f"{st.name}: 1 − S·step(P) = ({st.factor.pretty(coeff=snap.name)})·(1 − SP)"
            gd += 1
    if prog.base_residual is not None and prog.stages:
        it = prog.iterate
        if gd:
            claim = f"I − {it}·S = ({prog.base_residual.pretty(coeff=snap.name)})^{gd}"
        else:
            claim = f"I − {it}·S = ({prog.base_residual.pretty(coeff=snap.name)})^P with P = {P}"
        facts.append(f"residual: {claim}, proven step by step ({'; '.join(seen.values()) or 'first step only'})")
        rp = getattr(model, "residual_power", None)
        if rp is not None and not gd and rp != P:
            raise _NotCertifiable(f"model.residual_power = {rp}, but the program's residual power is {P}")
    tr = model.transformer
    facts.append("ridge: S includes λI from d prefix tokens √λ·e_m, λ = (stored √λ)² = "
                 f"{float(lam):.17g}" if lam else "no ridge prefix: S = XᵀX")
    if tr.cfg.attn_norm:
        facts.append("1/N normalisation: S = (XᵀX + λI)/N and b = Xᵀy/N; the prediction is the program on XᵀX + λI "
                     "with α/N² (Newton, by the homogeneity of the step) or η/N (GD)")


def _check_pl(model, op: _Opaque, reader: _Reader, layer: int, facts: list[str]) -> None:
    """The adaptive α's MLP must be the model's PL function f (kinks b_j, slopes w_j) within rounding."""
    pl = getattr(model.spec, "pl", None)
    if pl is None or op.inputs != ("one", "tau") or op.outputs != ("alpha",):
        raise _NotCertifiable(f"layer {layer}: MLP units without signed partners ({op.inputs} → {op.outputs}) are not "
                              f"the adaptive α's PL function", layer, "MLP", op.outputs[0] if op.outputs else None)
    units = sorted({u for _, u in op.W_in} | {u for u, _ in op.W_out})
    kinks, weights = list(pl.kinks), list(pl.weights)
    if len(units) != len(kinks):
        raise _NotCertifiable(f"layer {layer}: the α MLP has {len(units)} units, the PL function {len(kinks)} kinks",
                              layer, "MLP", "alpha")
    tol = 4 * reader.unit
    for n, u in enumerate(units):
        # unit j is stored as (w_j/s_j)·ReLU(s_j b_j·one − s_j τ), s_j a power of two
        # (construct.blocks.trace_alpha, "Unit scaling"): divide the scale out, exactly
        sc = -op.W_in.get(("tau", u), 0.0)
        if not (sc > 0 and math.frexp(sc)[0] == 0.5):
            raise _NotCertifiable(f"layer {layer}: α MLP unit {u}: input weight on tau is {-sc:.17g}, not −s with s a "
                                  "power of two", layer, "MLP", "alpha")
        for got, want, what in ((op.W_in.get(("one", u), 0.0) / sc, kinks[n], "kink b_j"),
                                (op.W_out.get((u, "alpha"), 0.0) * sc, weights[n], "slope w_j")):
            if abs(got - want) > tol * abs(want):
                raise _NotCertifiable(f"layer {layer}: α MLP unit {u}: {what} is {got:.17g}, the PL function's "
                                      f"{want:.17g} (off by more than rounding)", layer, "MLP", "alpha")
    fact = (f"α(X) = f(tr(S^{model.spec.alpha_trace})) on the register: layer {layer}'s MLP is the model's PL function "
            f"f ({len(units)} tangent-line units, stored kinks and slopes within rounding), the f of model.alpha_of")
    if fact not in facts:
        facts.append(fact)


def _read_out(model, reader: _Reader, slots: _Groups, final_q: dict[str, Content]) -> tuple[Scal, dict]:
    W = _np(model.transformer.W_out)
    if W.shape[1] != 1:
        raise _NotCertifiable(f"the read-out has {W.shape[1]} outputs; the prediction is one number", None, "read-out")
    i, j, v = _nz(W)
    outg = _Groups(("prediction",), np.array([0]), np.array([1]), (False,))
    c = reader.blocks((i, j, v, np.abs(v)), slots, outg, "read-out W_out (slot → prediction)", None, "read-out")
    pred = SZERO
    for (s, _), k in c.items():
        pred = pred + final_q[s].scale(k)
    return Scal(Fraction(0), pred.R), c


# =============================================================================== certify
def certify(model) -> Certificate:
    """Prove that ``model``'s stored weights compute its program for every d and n (module docstring).

    Returns a :class:`Certificate`; a model whose weights lack the structure the proof needs is
    reported as not certifiable (``passed`` False, ``reason`` naming layer, head and slot), not
    raised.  Raises TypeError for a model that is not hand-built.
    """
    t0 = time.perf_counter()
    try:
        prog = program_for(model)
    except _NotCertifiable as e:
        return Certificate(False, False, type(model).__name__, (), None, str(e), e.layer, e.head, e.slot, "", (),
                           0.0, time.perf_counter() - t0, 0.0)
    tr, lay, spec = model.transformer, model.layout, model.spec
    cfg = tr.cfg
    rows: list[CertRow] = []
    facts: list[str] = []
    snap = _Snapper(prog.symbols)
    unit = float(torch.finfo(tr.W_in.dtype).eps) / 2
    reader = _Reader(snap, unit, spec.d)
    names = list(getattr(model, "layer_names", [s.name for s in prog.stages]))
    sub = lambda j: f"{prog.iterate}{str(j).translate(_SUB)}" if j >= 0 else prog.iterate  # noqa: E731

    def result(passed, certifiable, mismatch=None, reason="", layer=None, head=None, slot=None, pred=""):
        return Certificate(passed, certifiable, prog.name, tuple(rows), mismatch, reason, layer, head, slot, pred,
                           tuple(facts), reader.max_err, time.perf_counter() - t0, reader.seconds, dict(prog.symbols))

    def compare(L, lname, got_state, want_state, disp_state, in_state, in_name, out_name):
        bad = None
        for tk in want_state:
            for s in lay.names:
                got, w = _canon(got_state[tk][s], tk), _canon(want_state[tk][s], tk)
                ok = w is None or got == w
                rows.append(CertRow(L, lname, _TOKEN[tk], s, _pretty(got, in_name, snap.name),
                                    _pretty(_canon(disp_state[tk][s], tk), out_name, snap.name), ok,
                                    in_state is None or got != _canon(in_state[tk][s], tk)))
                if not ok and bad is None:
                    bad = rows[-1]
        return bad

    try:
        slots = _slot_groups(lay, prog, spec.d)
        tw = time.perf_counter()
        state, lam = _read_in(model, reader, slots, prog)
        reader.seconds += time.perf_counter() - tw
        _program_facts(model, prog, facts, lam, snap)
        bad = compare(-1, "read-in", state, prog.readin, prog.readin, None, "", "")
        if bad is not None:
            return result(False, True, bad, layer=-1, slot=bad.slot)
        if len(prog.stages) != cfg.n_layers:
            raise _NotCertifiable(f"the program has {len(prog.stages)} layers but the model has {cfg.n_layers}")
        algebra: dict[int, _BlockAlgebra] = {}
        canon: dict[int, int] = {}
        sparse: dict[int, dict] = {}
        it: Poly | None = None   # the iterate entering the layer, as a polynomial in S (None: none yet / symbolic)
        have, j, prev = False, prog.first_index - 1, None  # have: an iterate exists (after the first step)
        for L, (b, stage) in enumerate(zip(cfg.layer_schedule, prog.stages)):
            lname = names[L] if L < len(names) else stage.name
            if b not in canon:
                tw = time.perf_counter()
                sparse[b] = _sparse_params(tr.blocks[b])
                canon[b] = next((c for c in algebra if _same_sparse(sparse[c], sparse[b])), b)
                if canon[b] == b:
                    scale = tr.blocks[b].attn.scale if tr.blocks[b].attn is not None else 1.0
                    algebra[b] = _read_block(reader, sparse[b], cfg, slots, L, lname, cfg.attn, scale)
                reader.seconds += time.perf_counter() - tw
            if prev is None:
                m_use, inp = None, prog.readin
            elif not have:
                m_use, inp = None, prev.state(None)
            else:
                m_use = it if (it is not None and it.nterms <= CONCRETE_TERMS) else M
                inp = prev.state(m_use)
            if any(v is None for tk in inp.values() for v in tk.values()):
                raise ValueError(f"program {prog.name!r}: only the last stage may leave a slot unchecked")
            out = _apply(algebra[canon[b]], inp, prog.scalar_slots, L, f"layer {L} ({lname})", cfg.attn_norm)
            if algebra[canon[b]].opaque is not None:
                _check_pl(model, algebra[canon[b]].opaque, reader, L, facts)
            m_out = stage.step(m_use) if stage.step is not None else m_use
            j_out = j + 1 if stage.step is not None else j
            have_out = have or stage.step is not None
            in_name = sub(j) if m_use is M else ""
            bad = compare(L, lname, out, stage.state(m_out), stage.state(M if have_out else None), inp, in_name,
                          sub(j_out))
            if bad is not None:
                return result(False, True, bad, layer=L, slot=bad.slot)
            it = None if m_use is M else m_out
            have, j, prev = have_out, j_out, stage
        final = prog.readin if prev is None else prev.state((it if it is not None else M) if have else None)
        tw = time.perf_counter()
        pred, _ = _read_out(model, reader, slots, final["q"])
        reader.seconds += time.perf_counter() - tw
        want = _canon(final["q"][prog.prediction_slot], "q")
        ok = pred == want
        rows.append(CertRow(cfg.n_layers, "read-out", "query", "prediction", _pretty(pred, sub(j), snap.name),
                            _pretty(want, sub(j), snap.name), ok, True))
        if not ok:
            return result(False, True, rows[-1], layer=cfg.n_layers, slot="prediction")
        return result(True, True, pred=prog.prediction)
    except _NotCertifiable as e:
        return result(False, False, reason=str(e), layer=e.layer, head=e.head, slot=e.slot)


# =============================================================================== layer identities
def layer_identities(d: int = 2, k: int = 3) -> dict[str, bool]:
    """The algebra of every block kind, for every d and n, as certified on built weights.

    Builds one model per form and option that changes a block (default, merged, linear, ridge
    with 1/N), certifies it, and returns one statement per (block kind, slot written, token
    kind): "block: slot ← what the weights compute = what the program needs" → True/False.  The
    size (d, k) only picks the models; each statement holds for every d and n (the certificate
    reads the same c·I structure at any d).
    """
    from construct import build_newton_transformer

    out: dict[str, bool] = {}
    for kw in ({}, {"form": "merged"}, {"attn": "linear"}, {"lam": 0.5, "normalize": True},
               {"form": "merged", "lam": 0.5, "normalize": True}):
        model = build_newton_transformer(d=d, k=k, alpha=0.01, **kw)
        cert = certify(model)
        tag = ", ".join(f"{a}={b}" for a, b in kw.items()) or "default"
        if not cert.certifiable:
            out[f"{tag}: certifiable"] = False
            continue
        seen = set()
        for r in cert.rows:
            if r.layer < 0 or not r.written:
                continue
            key = (r.layer_name, r.slot, r.token, r.computed.count("M"))
            if key in seen:
                continue
            seen.add(key)
            out[f"[{tag}] {r.layer_name}: {r.slot} ({r.token}) ← {r.computed} = {r.expected}"] = r.ok
        out[f"[{tag}] prediction = {cert.prediction}"] = cert.passed
    return out
