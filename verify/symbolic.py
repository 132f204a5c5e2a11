"""Fully symbolic mode: the network on polynomials, for all real prompts of a given d and n.

Every entry of X, y and x_q is a
generator of sympy's sparse polynomial ring (``sympy.polys.rings.ring``; no ``expand()``), α and
λ are exact rationals, so every residual entry is an element of QQ[x, y, x_q].  It is stored
as p/D with p in ZZ[x, y, x_q] and D a positive int, because sympy's pure-Python QQ does a gcd
on every coefficient operation and that made the products ~4× slower.  ReLU is not a
polynomial, so it is removed by the case lemma ReLU(s) − ReLU(−s) = s (:func:`relu_pair_lemma`
proves it in sympy, both cases, and shows the printed form ReLU(s) + ReLU(−s) = |s| ≠ s).
Before the lemma is applied, the weights are checked *exactly* to have the form it needs:
every ReLU head with a nonzero circuit has a partner with the negated QK circuit and the
negated OV circuit (W_Q'W_K'ᵀ = −W_Q W_Kᵀ, W_V'W_O' = −W_V W_O, which (−Q, K, −V, O)
satisfies), and every MLP hidden unit (w, o) has a partner (−w, −o).  Each pair then collapses
to one bilinear head / one linear map, and the network runs on polynomials.  The prediction
minus Newton's x_qᵀ M_k Xᵀ y, computed in the same ring as Σ_i c_i x_qᵀ S^i Xᵀy with
M_k = p_k(S), p₀ = αt, p_j = 2p_{j−1} − t p_{j−1}² (all M_j are polynomials in S; the matrix
recursion is available as ``reference="matrix"``), must be the zero polynomial.  What this
proves: for the stored weights and the given d and n, the network's output equals Newton's for
*all* real inputs.  It also measures the prediction's total degree, 2^(k+2) + 1, and the
largest degree in the residual stream after every layer (≤ 3^L, the bound behind
:func:`construct.min_layers`).  If the pair structure is violated (the printed paper's V₂ = V₁),
the check reports that, naming the block and heads, instead of running.

**Adaptive α** (``alpha="adaptive"``).  The α MLP computes a piecewise-linear f(τ), not a
polynomial, and its units are not signed pairs.  :func:`_split_alpha_mlp` checks that the only
unpaired units read ``one`` and ``tau`` and write ``alpha`` with exactly the spec's PL kinks
and weights, removes them, and the run then treats the register's α as one more ring
generator.  Two identities are checked: the register's τ equals tr(S^p) as a polynomial, and
prediction − Newton(α) is the zero polynomial in Q[x, y, x_q, α], i.e. the network runs
exactly Newton with whatever α its MLP produced, for all real prompts.  That f(τ) itself is
the documented PL function is checked exactly by :func:`verify.exact_check` and the weight
comparison here.  The prediction's degree then includes α^(2^k).

Feasible sizes, measured on the 2-core development machine while it was shared with other
jobs (load 4–6, so times vary by up to 2×; per case, including the reference):


* symbolic (terms = monomials of the prediction): d=2,n=2,k=2 0.1 s (1,256 terms);
  d=2,n=3,k=2 0.4–1.2 s (15,036); d=1,n=3,k=3 0.15 s; d=2,n=2,k=3 2–5 s (15,248);
  d=3,n=2,k=2 1–2 s; d=3,n=3,k=2 17–35 s (304,317); d=1,n=6,k=3 38 s (189,288).
  d=2,n=3,k=3 and d=3,n=2,k=3 did not finish in 150 s: the last Newton layer alone multiplies
  ~10⁸ pairs of terms in pure Python.  Term counts grow 10–30× per extra k.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .rational import _check_exact_supported, _lcm, _prefix_sqrt_lambda
from .results import CheckResult

__all__ = ["SymbolicResult", "PairStructureError", "symbolic_check", "collapse_relu_pairs", "relu_pair_lemma"]


# =============================================================================== the case lemma
def relu_pair_lemma() -> dict[str, bool]:
    """Prove in sympy that ReLU(s) − ReLU(−s) = s for every real s, and that the printed form is |s|.

    ReLU is ``Max(s, 0)``.  Each statement is checked three ways: on a symbol with s ≥ 0, on one
    with s < 0 (the two cases of the lemma), and for a real s via Piecewise rewriting.  Returns a
    dict of named statements, all of which must be True.
    """
    import sympy as sp

    s = sp.Symbol("s", real=True)
    sp_nonneg = sp.Symbol("s", nonnegative=True)
    s_neg = sp.Symbol("s", negative=True)

    def relu(v):
        return sp.Max(v, 0)

    def pw_zero(e) -> bool:
        return sp.simplify(sp.piecewise_fold(e.rewrite(sp.Piecewise))) == 0

    signed = relu(s) - relu(-s)
    printed = relu(s) + relu(-s)
    return {
        "signed: s >= 0 gives s": sp.simplify(relu(sp_nonneg) - relu(-sp_nonneg) - sp_nonneg) == 0,
        "signed: s < 0 gives s": sp.simplify(relu(s_neg) - relu(-s_neg) - s_neg) == 0,
        "signed: Piecewise, all real s": pw_zero(signed - s),
        "printed: equals Abs(s) (Piecewise)": pw_zero(printed - sp.Abs(s)),
        "printed: equals Abs(s) (s < 0)": sp.simplify(relu(s_neg) + relu(-s_neg) - sp.Abs(s_neg)) == 0,
        "printed: differs from s for s < 0": bool((relu(s_neg) + relu(-s_neg) - s_neg).is_positive),
        "printed: not identically s": not pw_zero(printed - s),
    }


# =============================================================================== symbolic mode
class PairStructureError(ValueError):
    """The weights lack the signed-pair form that the case lemma needs (e.g. the paper's V₂ = V₁)."""


def _sparse(W: torch.Tensor, snap=None) -> dict[tuple[int, int], Fraction]:
    W = W.detach().cpu().to(torch.float64)
    out = {(i, j): Fraction(W[i, j].item()) for i, j in torch.nonzero(W).tolist()}
    return out if snap is None else {key: snap(v) for key, v in out.items()}


def _spmm(A: dict, B: dict) -> dict:
    """Exact sparse product of {(i, j): Fraction} matrices."""
    by_row: dict[int, list] = {}
    for (k, j), v in B.items():
        by_row.setdefault(k, []).append((j, v))
    out: dict[tuple[int, int], Fraction] = {}
    for (i, k), a in A.items():
        for j, b in by_row.get(k, ()):
            out[(i, j)] = out.get((i, j), 0) + a * b
    return {key: v for key, v in out.items() if v != 0}


def _neg(A: dict) -> dict:
    return {key: -v for key, v in A.items()}


@dataclass(frozen=True)
class _Bilinear:
    QK: dict  # (D, D) score form: s_ij = r_i QK r_jᵀ
    OV: dict  # (D, D) value-output map: out_i += s_ij r_j OV
    label: str


def collapse_relu_pairs(transformer, snap: dict | None = None) -> tuple[dict[int, list[_Bilinear]], dict[int, dict], list[str]]:
    """Check the signed-pair structure exactly and collapse it (see module docstring).

    ``snap``: {block index: f(Fraction) -> Fraction} reading those blocks' weights as intended
    rationals (the hyperpower form's ⅓, :func:`verify.rational.intended_thirds`).

    Returns ``(heads, mlps, notes)``: per block index, its bilinear heads (QK, OV circuits as
    exact sparse matrices) and its MLP as one linear map L (r ← r + r L), plus a description of
    every collapse.  Raises :class:`PairStructureError` naming the block and heads at fault.
    """
    cfg = transformer.cfg
    _check_exact_supported(cfg)
    if cfg.bias:
        raise ValueError("symbolic mode needs bias=False (the signed-pair lemma is stated without biases)")
    if cfg.causal:
        raise ValueError("symbolic mode runs full (non-causal) attention only")
    notes: list[str] = []
    heads_by_block: dict[int, list[_Bilinear]] = {}
    mlp_by_block: dict[int, dict] = {}
    snap = snap or {}
    for b in sorted(set(cfg.layer_schedule)):
        blk = transformer.blocks[b]
        bname = f"block {b}"
        sn = snap.get(b)
        heads: list[_Bilinear] = []
        if blk.attn is not None:
            a = blk.attn
            circ = []
            for h in range(cfg.n_heads):
                QK = _spmm(_sparse(a.W_Q[h], sn), {(j, i): v for (i, j), v in _sparse(a.W_K[h], sn).items()})
                QK = {key: v * Fraction(a.scale) for key, v in QK.items()}
                OV = _spmm(_sparse(a.W_V[h], sn), _sparse(a.W_O[h], sn))
                if QK and OV:
                    circ.append((h, QK, OV))
            if cfg.attn == "linear":
                heads = [_Bilinear(QK, OV, f"{bname} head {h}") for h, QK, OV in circ]
            else:
                unused = list(range(len(circ)))
                while unused:
                    i = unused.pop(0)
                    h, QK, OV = circ[i]
                    mate = next((j for j in unused if circ[j][1] == _neg(QK) and circ[j][2] == _neg(OV)), None)
                    if mate is None:
                        same_v = next((circ[j][0] for j in unused if circ[j][1] == _neg(QK) and circ[j][2] == OV), None)
                        if same_v is not None:
                            raise PairStructureError(
                                f"{bname}: ReLU heads {h} and {same_v} have opposite QK circuits but EQUAL OV "
                                f"circuits (V₂ = V₁, the paper's Eqs. 21/28): ReLU(s) + ReLU(−s) = |s|, not s, "
                                f"so the pair is not bilinear and the case lemma does not apply")
                        raise PairStructureError(
                            f"{bname}: ReLU head {h} has no signed partner (−QK circuit and −OV circuit); "
                            f"the case lemma ReLU(s) − ReLU(−s) = s does not apply")
                    unused.remove(mate)
                    heads.append(_Bilinear(QK, OV, f"{bname} heads {h}+{circ[mate][0]}"))
                    notes.append(f"{bname}: ReLU heads {h}, {circ[mate][0]} form a signed pair -> one bilinear head")
        heads_by_block[b] = heads
        if blk.mlp is not None:
            W_in = blk.mlp.W_in.detach().cpu().to(torch.float64)
            W_out = blk.mlp.W_out.detach().cpu().to(torch.float64)
            units = [m for m in range(W_in.shape[1]) if torch.any(W_in[:, m] != 0) and torch.any(W_out[m] != 0)]
            L: dict[tuple[int, int], Fraction] = {}
            pairs = 0
            while units:
                m = units.pop(0)
                mate = next((p for p in units if torch.equal(W_in[:, p], -W_in[:, m]) and torch.equal(W_out[p], -W_out[m])), None)
                if mate is None:
                    raise PairStructureError(
                        f"{bname}: MLP hidden unit {m} has no partner (−w, −o); ReLU(v) − ReLU(−v) = v does not apply")
                units.remove(mate)
                w = {(i, 0): Fraction(W_in[i, m].item()) for i in torch.nonzero(W_in[:, m]).flatten().tolist()}
                o = {(0, j): Fraction(W_out[m, j].item()) for j in torch.nonzero(W_out[m]).flatten().tolist()}
                for key, v in _spmm(w, o).items():
                    L[key] = L.get(key, 0) + v
                pairs += 1
            mlp_by_block[b] = {key: v for key, v in L.items() if v != 0}
            if pairs:
                notes.append(f"{bname}: {pairs} MLP unit pairs (w, −w) -> linear map")
    return heads_by_block, mlp_by_block, notes


@dataclass(frozen=True, repr=False)
class SymbolicResult(CheckResult):
    """Outcome of :func:`symbolic_check`.

    ``passed`` (formerly ``equal``, still accepted with a DeprecationWarning): prediction − Newton is the zero polynomial.  ``degree``: total degree of the
    prediction (expected 2^(k+2) + 1).  ``terms``: its number of monomials.  ``layer_degrees``:
    the largest total degree in the residual stream after the read-in and after each layer
    (the last layer only at the query).  ``error``: why the check could not run (pair structure),
    else "".
    """

    passed: bool
    degree: int
    time: float
    terms: int
    expected_degree: int
    layer_degrees: tuple[int, ...] = ()
    error: str = ""
    notes: tuple[str, ...] = field(default=())
    time_network: float = 0.0    # seconds spent running the network on polynomials
    time_reference: float = 0.0  # seconds spent on Newton in the ring


def _tdeg(p) -> int:
    return max((sum(m) for m in p.itermonoms()), default=-1) if p else -1


def _newton_poly_coeffs(alpha: Fraction, k: int) -> list[Fraction]:
    """Coefficients c_i of p_k(t) = Σ c_i t^i with p₀ = αt, p_j = 2p_{j−1} − t p_{j−1}²."""
    p = [Fraction(0), alpha]
    for _ in range(k):
        sq = [Fraction(0)] * (2 * len(p) - 1)
        for i, a in enumerate(p):
            if a:
                for j, b in enumerate(p):
                    sq[i + j] += a * b
        new = [Fraction(0)] * (len(sq) + 1)
        for i, a in enumerate(p):
            new[i] += 2 * a
        for i, a in enumerate(sq):
            new[i + 1] -= a
        while new and new[-1] == 0:
            new.pop()
        p = new
    return p


def _power_poly_coeffs(alpha: Fraction, P: int) -> list[Fraction]:
    """Coefficients of p(t) = α t Σ_{i<P} (1 − α t²)^i, so that 1 − t·p(t) = (1 − α t²)^P.

    By the hockey-stick identity Σ_{i=m}^{P−1} C(i, m) = C(P, m + 1):
    p(t) = Σ_{m<P} (−1)^m C(P, m + 1) α^(m+1) t^(2m+1).  P = 2^k gives Newton's p_k.
    """
    c = [Fraction(0)] * (2 * P)
    for m in range(P):
        c[2 * m + 1] = (-1) ** m * math.comb(P, m + 1) * alpha ** (m + 1)
    return c


def _newton_poly_coeffs_symbolic(a, k: int, zero) -> list:
    """As :func:`_newton_poly_coeffs` with α a polynomial ``a`` (a :class:`_ZP`): c_i ∈ Q[α]."""
    p = [zero, a]
    for _ in range(k):
        sq = [zero] * (2 * len(p) - 1)
        for i, u in enumerate(p):
            if u:
                for j, v in enumerate(p):
                    if v:
                        sq[i + j] = sq[i + j] + u * v
        new = [zero] * (len(sq) + 1)
        for i, u in enumerate(p):
            new[i] = new[i] + u.scale(Fraction(2))
        for i, u in enumerate(sq):
            if u:
                new[i + 1] = new[i + 1] + u.scale(Fraction(-1))
        while new and not new[-1]:
            new.pop()
        p = new
    return p


def _split_alpha_mlp(model):
    """An adaptive model's α MLP, checked and removed: ``(transformer copy, block index, note)``.

    The α MLP's hidden units ReLU(b_j·one − τ) are not signed pairs (f is piecewise linear, not a
    polynomial), so the case lemma cannot collapse them.  Instead every unit that is not part of
    a signed pair must read only the slots ``one`` and ``tau`` and write only ``alpha``, with
    exactly the spec's PL function (kinks b_j, weights w_j, :mod:`construct.adaptive`); those
    units are zeroed in a copy of the transformer and the symbolic run replaces the register's α
    by a free symbol after that block.  Raises :class:`PairStructureError` if anything else is
    unpaired or the PL weights differ from the spec's.
    """
    import copy

    tr, lay, spec = model.transformer, model.layout, model.spec
    one, tau, alpha = lay["one"].start, lay["tau"].start, lay["alpha"].start
    fn = spec.pl
    want = sorted(zip(fn.kinks, fn.weights))
    tr2 = copy.deepcopy(tr)
    found = None
    for b, blk in enumerate(tr2.blocks):
        if blk.mlp is None:
            continue
        W_in, W_out = blk.mlp.W_in.detach(), blk.mlp.W_out.detach()
        units = [m for m in range(W_in.shape[1])
                 if torch.any(W_in[:, m] != 0) and torch.any(W_out[m] != 0)]
        pl = [m for m in units if W_out[m, alpha] != 0]
        if not pl:
            continue
        got = []
        for m in pl:
            rin = torch.nonzero(W_in[:, m]).flatten().tolist()
            rout = torch.nonzero(W_out[m]).flatten().tolist()
            sc = -W_in[tau, m].item()  # unit scale s_j, a power of two (construct.blocks.trace_alpha)
            if set(rin) - {one, tau} or rout != [alpha] or not (sc > 0 and math.frexp(sc)[0] == 0.5):
                raise PairStructureError(
                    f"block {b}, MLP unit {m} writes the alpha slot but is not ReLU(s·b·one − s·tau) -> alpha "
                    "with s a power of two")
            got.append((W_in[one, m].item() / sc, W_out[m, alpha].item() * sc))  # exact (s = 2^e)
        if sorted(got) != want or found is not None:
            raise PairStructureError(f"block {b}: the alpha MLP's kinks/weights differ from the spec's PL function")
        with torch.no_grad():
            blk.mlp.W_in[:, pl] = 0.0
            blk.mlp.W_out[pl, :] = 0.0
        found = b
    if found is None:
        raise PairStructureError("adaptive model without an alpha MLP")
    return tr2, found, (f"block {found}: {len(want)} alpha-MLP units = the spec's PL function exactly; "
                        "alpha treated as a free symbol after it")


class _ZP:
    """An exact polynomial p/den: p in ZZ[gens] (sympy sparse ring), den a positive int.

    Integer coefficients avoid a gcd in every coefficient operation (sympy's pure-Python QQ
    does one), which makes the products that dominate the check several times faster.
    """

    __slots__ = ("p", "den")

    def __init__(self, p, den: int = 1):
        self.p, self.den = p, den

    def __bool__(self) -> bool:
        return bool(self.p)

    def __mul__(self, o: "_ZP") -> "_ZP":
        return _ZP(self.p * o.p, self.den * o.den)

    def __add__(self, o: "_ZP") -> "_ZP":
        if not o.p:
            return self
        if not self.p:
            return o
        if self.den == o.den:
            return _ZP(self.p + o.p, self.den)
        L = _lcm(self.den, o.den)
        a = self.p if L == self.den else self.p.mul_ground(L // self.den)
        b = o.p if L == o.den else o.p.mul_ground(L // o.den)
        return _ZP(a + b, L)

    def scale(self, f: Fraction) -> "_ZP":
        if f == 1:
            return self
        return _ZP(self.p.mul_ground(f.numerator) if f.numerator != 1 else self.p, self.den * f.denominator)

    def degree(self) -> int:
        return _tdeg(self.p)


def symbolic_check(model, n: int, *, reference: str = "horner", attention: str = "auto") -> SymbolicResult:
    """Prove ``model`` computes k Newton steps for all real prompts of n examples (module docstring).

    ``reference``: "horner" (Σ c_i x_qᵀ S^i Xᵀy with M_k = p_k(S)) or "matrix" (the recursion
    M_j = 2M − MSM on matrices of polynomials; slower).  ``attention``: how each collapsed
    bilinear head is evaluated, "direct" (s_ij = ⟨q_i, r_j⟩, then Σ_j s_ij v_j) or "kv"
    (q_i · Σ_j r_j v_jᵀ, the same sum reassociated); "auto" takes kv when the tokens outnumber
    twice the head's query dimensions (both are exact; only the speed differs).  Returns a :class:`SymbolicResult`; a
    weight structure that the case lemma does not cover is reported in ``error``, not raised.
    """
    from sympy import ZZ
    from sympy.polys.rings import ring
    from construct.model import NewtonTransformer

    if not isinstance(model, NewtonTransformer):
        raise TypeError(f"symbolic_check needs a NewtonTransformer, got {type(model).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if reference not in ("horner", "matrix"):
        raise ValueError(f"reference must be 'horner' or 'matrix', got {reference!r}")
    if attention not in ("auto", "kv", "direct"):
        raise ValueError(f"attention must be 'auto', 'kv' or 'direct', got {attention!r}")
    t0 = time.perf_counter()
    spec, tr = model.spec, model.transformer
    cfg, d, k = tr.cfg, spec.d, spec.k
    hyper = spec.form == "hyperpower"
    expected_degree = 4 * spec.residual_power + 1  # 2^(k+2) + 1 for Newton-k
    ada = getattr(spec, "adaptive", False)
    pl_block = None
    try:
        if ada:
            tr, pl_block, pl_note = _split_alpha_mlp(model)
        if hyper:
            from .rational import intended_thirds

            heads, mlps, notes = collapse_relu_pairs(tr, intended_thirds(model))
            notes.append("order-3 blocks: stored fl(±1/3) read as the rational ±1/3 (construct.blocks.hyperpower)")
        else:
            heads, mlps, notes = collapse_relu_pairs(tr)
    except PairStructureError as e:
        return SymbolicResult(False, -1, time.perf_counter() - t0, 0, expected_degree, (), str(e))
    if ada:
        notes.append(pl_note)

    names = [f"x{i}_{a}" for i in range(n) for a in range(d)] + [f"y{i}" for i in range(n)] + [f"q{a}" for a in range(d)]
    if ada:
        names.append("alpha")  # the register's α: a free symbol (module doc, "Adaptive α")
    R, *gens = ring(",".join(names), ZZ)
    zero = _ZP(R.zero)
    a_sym = _ZP(gens[-1]) if ada else None

    def const(f: Fraction) -> _ZP:
        return _ZP(R(f.numerator), f.denominator)

    Xg = [[_ZP(g) for g in gens[i * d:(i + 1) * d]] for i in range(n)]
    yg = [_ZP(g) for g in gens[n * d:n * d + n]]
    qg = [_ZP(g) for g in gens[n * d + n:n * d + n + d]]
    D = cfg.d_model

    # read-in: tokens [x_i, 0, y_i] and [0, x_q, 0], then prefix rows (constants)
    feats = [Xg[i] + [zero] * d + [yg[i]] for i in range(n)] + [[zero] * d + qg + [zero]]
    W_in = _sparse(tr.W_in)
    rows = []
    for f in feats:
        r = [zero] * D
        for (a, c), v in W_in.items():
            if f[a]:
                r[c] = r[c] + f[a].scale(v)
        rows.append(r)
    if tr.prefix is not None:
        prows = [[zero] * D for _ in range(cfg.n_prefix)]
        for (t, c), v in _sparse(tr.prefix).items():
            prows[t][c] = const(v)
        rows = prows + rows
    T = len(rows)
    layer_degrees = [max(p.degree() for r in rows for p in r)]
    inv_T = Fraction(1, T)

    for li, b in enumerate(cfg.layer_schedule):
        last = li == cfg.n_layers - 1
        targets = [T - 1] if last else list(range(T))  # the read-out only reads the query
        new = {t: list(rows[t]) for t in targets}
        for head in heads[b]:
            qk: dict[int, list] = {}
            for (a, c), v in head.QK.items():
                qk.setdefault(a, []).append((c, v))
            ov: dict[int, list] = {}
            for (a, c), v in head.OV.items():
                ov.setdefault(a, []).append((c, v))
            vals = []  # v_j = r_j OV
            for j in range(T):
                v: dict[int, _ZP] = {}
                for a, lst in ov.items():
                    if rows[j][a]:
                        for c, w in lst:
                            v[c] = v.get(c, zero) + rows[j][a].scale(w)
                vals.append({c: p for c, p in v.items() if p})
            qs = {}
            for i in targets:
                q: dict[int, _ZP] = {}  # q_i = r_i QK, so s_ij = <q_i, r_j>
                for a, lst in qk.items():
                    if rows[i][a]:
                        for c, w in lst:
                            q[c] = q.get(c, zero) + rows[i][a].scale(w)
                q = {c: p for c, p in q.items() if p}
                if q:
                    qs[i] = q
            if not qs:
                continue
            keys = sorted({a for q in qs.values() for a in q})
            if attention == "kv" or (attention == "auto" and T > 2 * len(keys)):
                # Σ_j <q_i, r_j> v_j = Σ_a q_i[a] K[a], K[a] = Σ_j r_j[a] v_j  (exact reassociation)
                K: dict[int, dict[int, _ZP]] = {}
                for a in keys:
                    Ka: dict[int, _ZP] = {}
                    for j in range(T):
                        if rows[j][a] and vals[j]:
                            for c, p in vals[j].items():
                                Ka[c] = Ka.get(c, zero) + rows[j][a] * p
                    K[a] = {c: p for c, p in Ka.items() if p}
                for i, q in qs.items():
                    acc: dict[int, _ZP] = {}
                    for a, p in q.items():
                        for c, kp in K[a].items():
                            acc[c] = acc.get(c, zero) + p * kp
                    for c, p in acc.items():
                        new[i][c] = new[i][c] + (p.scale(inv_T) if cfg.attn_norm else p)
            else:
                for i, q in qs.items():
                    acc = {}
                    for j in range(T):
                        if not vals[j]:
                            continue
                        s = zero
                        for c, p in q.items():
                            if rows[j][c]:
                                s = s + p * rows[j][c]
                        if not s:
                            continue
                        for c, p in vals[j].items():
                            acc[c] = acc.get(c, zero) + s * p
                    for c, p in acc.items():
                        new[i][c] = new[i][c] + (p.scale(inv_T) if cfg.attn_norm else p)
        if mlps.get(b):
            for i in targets:
                r = new[i]
                add: dict[int, _ZP] = {}
                for (a, c), v in mlps[b].items():
                    if r[a]:
                        add[c] = add.get(c, zero) + r[a].scale(v)
                for c, p in add.items():
                    r[c] = r[c] + p
        if ada and b == pl_block:
            reg = spec.n_ridge
            tau_col, alpha_col = model.layout["tau"].start, model.layout["alpha"].start
            tau_poly = new[reg][tau_col]
            new[reg][alpha_col] = a_sym  # the α MLP's output: α = f(τ), a free symbol from here on
        if last:
            rows = [new[t] if t in new else rows[t] for t in range(T)]
            layer_degrees.append(max(p.degree() for p in new[T - 1]))
        else:
            rows = [new[t] for t in range(T)]
            layer_degrees.append(max(p.degree() for r in rows for p in r))
    pred = zero
    for (c, o), v in _sparse(tr.W_out).items():
        if o == 0 and rows[T - 1][c]:
            pred = pred + rows[T - 1][c].scale(v)

    t1 = time.perf_counter()

    # Newton in the same ring
    root = _prefix_sqrt_lambda(model)
    lam = root * root
    N = n + 1 + spec.n_prefix
    alpha_eff = None if ada else Fraction(spec.alpha) / (N * N if spec.normalize else 1)

    def dot(us, vs) -> _ZP:
        acc = zero
        for u, v in zip(us, vs):
            if u and v:
                acc = acc + u * v
        return acc

    S = [[dot([Xg[i][a] for i in range(n)], [Xg[i][c] for i in range(n)]) + (const(lam) if a == c else zero)
          for c in range(d)] for a in range(d)]
    bvec = [dot([Xg[i][a] for i in range(n)], yg) for a in range(d)]

    def matvec(A, v):
        return [dot(A[a], v) for a in range(d)]

    error = ""
    if ada:  # the register's τ must be tr(S^p) as a polynomial
        Sp = S
        for _ in range(spec.alpha_trace - 1):
            Sp = [[dot(Sp[a], [S[e][c] for e in range(d)]) for c in range(d)] for a in range(d)]
        tr_p = zero
        for a in range(d):
            tr_p = tr_p + Sp[a][a]
        if tau_poly.p.mul_ground(tr_p.den) - tr_p.p.mul_ground(tau_poly.den):
            error = f"the register's tau slot is not tr(S^{spec.alpha_trace}) as a polynomial"
    if reference == "horner" and ada:
        coeffs = _newton_poly_coeffs_symbolic(a_sym, k, zero)  # p_k(t) = Σ c_i(α) t^i
        acc = [bv * coeffs[-1] for bv in bvec]
        for c in reversed(coeffs[1:-1]):
            acc = [p + bv * c for p, bv in zip(matvec(S, acc), bvec)]
        w = matvec(S, acc)
    elif reference == "horner" or hyper:
        # Newton: p_k(t); hyperpower: α t Σ_{i<P} (1 − α t²)^i (module doc)
        coeffs = _power_poly_coeffs(alpha_eff, spec.residual_power) if hyper else _newton_poly_coeffs(alpha_eff, k)
        acc = [bv.scale(coeffs[-1]) for bv in bvec]
        for c in reversed(coeffs[1:-1]):
            acc = [p + bv.scale(c) for p, bv in zip(matvec(S, acc), bvec)]
        w = matvec(S, acc)
    else:
        M = [[(S[a][c] * a_sym) if ada else S[a][c].scale(alpha_eff) for c in range(d)] for a in range(d)]
        for _ in range(k):
            SM = [[dot(S[a], [M[e][c] for e in range(d)]) for c in range(d)] for a in range(d)]
            MSM = [[dot(M[a], [SM[e][c] for e in range(d)]) for c in range(d)] for a in range(d)]
            M = [[M[a][c].scale(Fraction(2)) + MSM[a][c].scale(Fraction(-1)) for c in range(d)] for a in range(d)]
        w = matvec(M, bvec)
    ref = dot(qg, w)
    t2 = time.perf_counter()
    diff = pred.p.mul_ground(ref.den) - ref.p.mul_ground(pred.den)  # pred − ref, times pred.den·ref.den
    if ada:  # the prediction also carries α^(2^(k+1) − 1): the degree counts the symbol α too
        expected_degree = ref.degree()
    return SymbolicResult(
        passed=not diff and not error, degree=pred.degree(), time=time.perf_counter() - t0, terms=len(pred.p),
        expected_degree=expected_degree, layer_degrees=tuple(layer_degrees), error=error, notes=tuple(notes),
        time_network=t1 - t0, time_reference=t2 - t1,
    )
