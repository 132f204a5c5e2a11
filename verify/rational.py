"""Exact rational mode: the stored weights, run in exact arithmetic on a rational prompt.

The *actual* weights of a built model are
converted entry by entry to rationals (``Fraction(float)`` is exact: every float is m·2^e), and
the whole network is run in exact arithmetic on rational inputs: read-in, ridge prefix tokens,
every layer with the real ReLU in attention and MLP (no case lemma is assumed), 1/N
normalisation if set, read-out.  The result is compared with Iterative Newton computed exactly
from its definition M₀ = αS, M_j = 2M_{j−1} − M_{j−1} S M_{j−1} (matrix recursion), with

* α = ``Fraction(model.spec.alpha)``, and α_eff = α/N² under 1/N normalisation, N = n + 1 + P;
* S = XᵀX + λI for ridge, where λ = (√λ)² is the square of the *stored* prefix weight
  ``Fraction(float(√λ))`` (so λ is exactly what the weights encode, not the float ``spec.lam``).

Equality is tested as equality of rationals (difference exactly 0), for the prediction and for
every slot of every token's residual stream after every layer: x, xq, y unchanged; u = ν M_j z
(ν = N under normalisation, else 1; z the token's own vector x_i, x_q or √λ e_m); in the
merged form c = σ S x / ν after the init layer (σ = ``construct.blocks.base.c_scale(α)``, a
power of two near √α) and c = S M_j z after Newton layer j; out = 0 until the read-out.  The
first (layer, slot, token) that differs is reported.  What this proves: for the given input,
the floating-point weights *as stored* compute Newton's iterate exactly — the construction has
no approximation, and round-off in float64 comes only from the arithmetic.
The paper's printed weights (``printed_paper=True``) fail at layer 1, slot u.
Hyperpower models are compared with the exact residual-power iterate instead, with the
order-3 layers' stored fl(⅓) read as ⅓ (:func:`intended_thirds`; ``weights="stored"`` takes it
as stored, which is then visibly, and negligibly, off).

Representation: a matrix is a numpy object array of Python ints with one positive denominator
per column (columns of the residual stream are slots, so x, u, c each keep their own, much
smaller, denominator).  Products use the lcm of the denominators that actually meet, which
follows the true growth of the data (degree doubles per Newton step, α^(2^(j+1)−1)), so no gcd
reduction is needed.  tests/test_exact.py checks that this forward pass mirrors the torch
:class:`~construct.transformer.Transformer`'s forward (every residual stream agrees to
round-off in float64, also on a random transformer with biases, causal mask and positions).

Feasible sizes, measured on the 2-core development machine while it was shared with other
jobs (load 4–6, so times vary by up to 2×; per case, including the reference):


* rational, residuals checked: d=2,n=3,k=2 ≈ 0.01 s; d=3,n=5,k=4 ≈ 0.01 s; d=5,n=8,k=8:
  default 0.2–0.4 s, linear 0.2–0.3 s, merged 0.5–0.9 s, ridge+normalise 1.5–3.3 s,
  merged+ridge+normalise 2.3–4.6 s.  The prediction's numerator and denominator reach
  0.5·10⁵ bits (1.6·10⁵ with ridge and normalisation) at k=8.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from .results import CheckResult, safe_repr

__all__ = ["ExactResult", "exact_check", "exact_forward", "random_rational_prompt", "newton_exact",
           "residual_power_exact", "intended_thirds"]


# =============================================================================== inputs
def random_rational_prompt(d: int, n: int, seed: int = 0, bound: int = 9):
    """Random rational prompt: entries Fraction(randint(−b, b), randint(1, b)) with b = ``bound``.

    Returns ``(X, y, x_query)``: X a list of n lists of d Fractions, y a list of n, x_query a list
    of d.
    """
    for name, v, lo in (("d", d, 1), ("n", n, 1), ("bound", bound, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    rng = random.Random(seed)

    def r() -> Fraction:
        return Fraction(rng.randint(-bound, bound), rng.randint(1, bound))

    X = [[r() for _ in range(d)] for _ in range(n)]
    y = [r() for _ in range(n)]
    xq = [r() for _ in range(d)]
    return X, y, xq


def _frac(v) -> Fraction:
    if isinstance(v, Fraction):
        return v
    if isinstance(v, bool):
        raise TypeError("booleans are not numbers here")
    if isinstance(v, int):
        return Fraction(v)
    if isinstance(v, torch.Tensor):
        v = v.item()
    return Fraction(float(v))  # exact: a float is m·2^e


def _fractions(a, ndim: int, name: str) -> list:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64)
        if a.dim() == ndim + 1 and a.shape[0] == 1:
            a = a[0]
        a = a.tolist()
    elif isinstance(a, np.ndarray):
        a = a.tolist()
    if ndim == 1:
        if not isinstance(a, (list, tuple)) or any(isinstance(v, (list, tuple)) for v in a):
            raise ValueError(f"{name} must be a 1-D sequence of numbers")
        return [_frac(v) for v in a]
    if not isinstance(a, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in a):
        raise ValueError(f"{name} must be a 2-D sequence (n rows of d numbers)")
    return [[_frac(v) for v in r] for r in a]


# =============================================================================== exact matrices
def _lcm(a: int, b: int) -> int:
    """lcm of positive ints, with cheap exits for the common cases a == b and a | b."""
    if a == b or a % b == 0:
        return a
    if b % a == 0:
        return b
    return a // math.gcd(a, b) * b


class _ColRat:
    """Exact rational matrix: object array of ints ``num`` (R, C) over positive ``den[c]`` per column."""

    __slots__ = ("num", "den", "_nz")

    def __init__(self, num: np.ndarray, den: list[int]):
        self.num = num
        self.den = den
        self._nz = None

    @property
    def nz(self) -> list[bool]:
        if self._nz is None:
            self._nz = [any(v != 0 for v in self.num[:, c]) for c in range(self.num.shape[1])]
        return self._nz

    @classmethod
    def from_fractions(cls, rows: list[list[Fraction]], ncols: int) -> "_ColRat":
        R = len(rows)
        num = np.zeros((R, ncols), dtype=object)
        den = [1] * ncols
        for c in range(ncols):
            dc = 1
            for r in rows:
                dc = _lcm(dc, r[c].denominator)
            den[c] = dc
            for i, r in enumerate(rows):
                num[i, c] = r[c].numerator * (dc // r[c].denominator)
        return cls(num, den)

    def entry(self, i: int, c: int) -> Fraction:
        return Fraction(self.num[i, c], self.den[c])


def _add(A: _ColRat, B: _ColRat) -> _ColRat:
    """A + B (B may have one row, broadcast)."""
    num = A.num.copy()
    den = list(A.den)
    for c in range(A.num.shape[1]):
        if not B.nz[c]:
            continue
        if not A.nz[c]:
            num[:, c] = np.broadcast_to(B.num[:, c], (A.num.shape[0],))
            den[c] = B.den[c]
            continue
        dc = _lcm(A.den[c], B.den[c])
        a = A.num[:, c] if dc == A.den[c] else A.num[:, c] * (dc // A.den[c])
        b = B.num[:, c] if dc == B.den[c] else B.num[:, c] * (dc // B.den[c])
        num[:, c] = a + b
        den[c] = dc
    return _ColRat(num, den)


def _vstack(A: _ColRat, B: _ColRat) -> _ColRat:
    C = A.num.shape[1]
    den = [_lcm(A.den[c], B.den[c]) for c in range(C)]
    a = np.empty_like(A.num)
    b = np.empty_like(B.num)
    for c in range(C):
        a[:, c] = A.num[:, c] * (den[c] // A.den[c])
        b[:, c] = B.num[:, c] * (den[c] // B.den[c])
    return _ColRat(np.concatenate([a, b], 0), den)


class _SparseW:
    """A weight matrix (in, out) as exact nonzero entries per output column."""

    def __init__(self, W: torch.Tensor, snap=None):
        if W.dim() == 1:
            W = W[None]
        W = W.detach().cpu().to(torch.float64)  # float32 -> float64 is exact
        self.shape = tuple(W.shape)
        self.cols: list[list[tuple[int, int, int]]] = [[] for _ in range(self.shape[1])]
        for i, j in torch.nonzero(W).tolist():
            f = Fraction(W[i, j].item())
            if snap is not None:
                f = snap(f)
            self.cols[j].append((i, f.numerator, f.denominator))

    def __bool__(self) -> bool:
        return any(self.cols)


def _matmul(A: _ColRat, W: _SparseW) -> _ColRat:
    """A @ W exactly; each output column gets the lcm of the denominators that meet in it."""
    R = A.num.shape[0]
    num = np.zeros((R, W.shape[1]), dtype=object)
    den = [1] * W.shape[1]
    nz = A.nz
    for e, entries in enumerate(W.cols):
        terms = [(i, wn, A.den[i] * wd) for i, wn, wd in entries if nz[i]]
        if not terms:
            continue
        de = 1
        for _, _, t in terms:
            de = _lcm(de, t)
        col = None
        for i, wn, t in terms:
            part = A.num[:, i] * ((de // t) * wn)
            col = part if col is None else col + part
        num[:, e] = col
        den[e] = de
    return _ColRat(num, den)


def _relu(A: _ColRat) -> _ColRat:
    return _ColRat(np.where(A.num > 0, A.num, 0).astype(object), list(A.den))


def _row_bias(b: torch.Tensor | None) -> _ColRat | None:
    if b is None or not torch.any(b != 0):
        return None
    return _ColRat.from_fractions([[_frac(v) for v in b.detach().cpu().to(torch.float64).tolist()]], b.numel())


# =============================================================================== exact forward
def _check_exact_supported(cfg) -> None:
    if cfg.layernorm:
        raise ValueError("exact mode cannot run LayerNorm (it needs a square root); build with layernorm=False")
    if cfg.n_heads and cfg.attn == "softmax":
        raise ValueError("exact mode runs relu or linear attention, not softmax (exp is not rational)")
    if cfg.mlp not in (None, "relu"):
        raise ValueError(f"exact mode runs a relu MLP, not {cfg.mlp!r}")


class _ExactBlock:
    def __init__(self, block, cfg, snap=None):
        self.heads = []
        if block.attn is not None:
            a = block.attn
            for h in range(cfg.n_heads):
                Wq, Wk, Wv, Wo = (_SparseW(t[h], snap) for t in (a.W_Q, a.W_K, a.W_V, a.W_O))
                bq = bk = bv = None
                if cfg.bias:
                    bq, bk, bv = (_row_bias(t[h]) for t in (a.b_Q, a.b_K, a.b_V))
                if not (Wo and (Wv or bv)):
                    continue  # this head writes nothing (e.g. a padding head)
                self.heads.append((Wq, Wk, Wv, Wo, bq, bk, bv))
            self.b_O = _row_bias(a.b_O) if cfg.bias else None
            self.scale = Fraction(a.scale)
        self.mlp = None
        if block.mlp is not None:
            m = block.mlp
            self.mlp = (_SparseW(m.W_in, snap), _SparseW(m.W_out, snap),
                        _row_bias(m.b_in) if cfg.bias else None, _row_bias(m.b_out) if cfg.bias else None)


def _attention(r: _ColRat, blk: _ExactBlock, cfg, allowed: np.ndarray | None) -> _ColRat | None:
    T = r.num.shape[0]
    total = None
    for Wq, Wk, Wv, Wo, bq, bk, bv in blk.heads:
        q, k, v = _matmul(r, Wq), _matmul(r, Wk), _matmul(r, Wv)  # (T, Dh) each
        if bq is not None:
            q = _add(q, bq)
        if bk is not None:
            k = _add(k, bk)
        if bv is not None:
            v = _add(v, bv)
        es = [e for e in range(q.num.shape[1]) if q.nz[e] and k.nz[e]]
        if not es:
            continue  # all scores are 0: ReLU(0) = 0 and linear 0 both give nothing
        ds = 1
        for e in es:
            ds = _lcm(ds, q.den[e] * k.den[e])
        S = None
        for e in es:
            part = np.outer(q.num[:, e] * (ds // (q.den[e] * k.den[e])), k.num[:, e])  # (T, T)
            S = part if S is None else S + part
        S = S.astype(object)
        if blk.scale != 1:
            S = S * blk.scale.numerator
            ds *= blk.scale.denominator
        if cfg.attn == "relu":
            S = np.where(S > 0, S, 0).astype(object)  # the real ReLU, on exact scores
        if allowed is not None:
            S = np.where(allowed, S, 0).astype(object)
        if cfg.attn_norm:
            if allowed is None:
                ds *= T
            else:
                cnt = [max(int(allowed[i].sum()), 1) for i in range(T)]
                L = 1
                for c in cnt:
                    L = _lcm(L, c)
                S = S * np.array([[L // c] for c in cnt], dtype=object)
                ds *= L
        Z = S.dot(v.num)  # (T, Dh)
        z = _ColRat(Z.astype(object), [ds * v.den[e] for e in range(v.num.shape[1])])
        out = _matmul(z, Wo)  # (T, D)
        total = out if total is None else _add(total, out)
    if blk.b_O is not None:
        total = blk.b_O if total is None else _add(total, blk.b_O)
    return total


def _mlp(r: _ColRat, blk: _ExactBlock) -> _ColRat:
    W_in, W_out, b_in, b_out = blk.mlp
    h = _matmul(r, W_in)  # (T, M)
    if b_in is not None:
        h = _add(h, b_in)
    out = _matmul(_relu(h), W_out)  # (T, D)
    if b_out is not None:
        out = _add(out, b_out)
    return out


def exact_forward(transformer, tokens: list[list[Fraction]], snap: dict | None = None) -> tuple[list[Fraction], list[_ColRat]]:
    """Run a :class:`~construct.transformer.Transformer` in exact rational arithmetic.

    ``tokens``: rows of ``cfg.d_in`` numbers (no batch).  Mirrors ``Transformer.forward``
    (read-in, positions, prefix, layers by schedule, read-out) with full or causal masking and
    no key mask.  Returns the read-out at every position (P + N rows of ``d_out`` Fractions as a
    list of lists) and the residual streams after the read-in and after every layer.
    ``snap``: {block index: f(Fraction) -> Fraction} reading those blocks' stored weights as
    intended rationals (the hyperpower form's ⅓, :func:`intended_thirds`); None: as stored.
    """
    cfg = transformer.cfg
    _check_exact_supported(cfg)
    rows = [[_frac(v) for v in r] for r in tokens]
    if not rows or any(len(r) != cfg.d_in for r in rows):
        raise ValueError(f"tokens must be a non-empty list of rows of {cfg.d_in} numbers")
    r = _matmul(_ColRat.from_fractions(rows, cfg.d_in), _SparseW(transformer.W_in))  # (N, D)
    if transformer.b_in is not None and torch.any(transformer.b_in != 0):
        r = _add(r, _row_bias(transformer.b_in))
    if transformer.pos is not None:
        if len(rows) > cfg.max_len:
            raise ValueError(f"sequence of {len(rows)} tokens exceeds the model's {cfg.max_len} positions")
        pos = transformer.pos.detach().cpu().to(torch.float64)[: len(rows)].tolist()
        r = _add(r, _ColRat.from_fractions([[_frac(v) for v in p] for p in pos], cfg.d_model))
    if transformer.prefix is not None:
        pre = transformer.prefix.detach().cpu().to(torch.float64).tolist()
        r = _vstack(_ColRat.from_fractions([[_frac(v) for v in p] for p in pre], cfg.d_model), r)
    T = r.num.shape[0]
    allowed = np.tril(np.ones((T, T), dtype=bool)) if cfg.causal else None
    snap = snap or {}
    blocks = {b: _ExactBlock(transformer.blocks[b], cfg, snap.get(b)) for b in set(cfg.layer_schedule)}
    streams = [r]
    for b in cfg.layer_schedule:
        blk = blocks[b]
        if blk.heads or getattr(blk, "b_O", None) is not None:
            a = _attention(r, blk, cfg, allowed)
            if a is not None:
                r = _add(r, a)
        if blk.mlp is not None:
            r = _add(r, _mlp(r, blk))
        streams.append(r)
    out = _matmul(r, _SparseW(transformer.W_out))
    if transformer.b_out is not None and torch.any(transformer.b_out != 0):
        out = _add(out, _row_bias(transformer.b_out))
    return [[out.entry(i, c) for c in range(out.num.shape[1])] for i in range(T)], streams


# =============================================================================== exact Newton
class _Q:
    """Exact rational matrix with one common denominator (for the small d×d Newton matrices)."""

    __slots__ = ("num", "den")

    def __init__(self, num: np.ndarray, den: int):
        self.num, self.den = num, den

    @classmethod
    def from_fractions(cls, rows: list[list[Fraction]]) -> "_Q":
        den = 1
        for r in rows:
            for v in r:
                den = _lcm(den, v.denominator)
        num = np.array([[v.numerator * (den // v.denominator) for v in r] for r in rows], dtype=object)
        return cls(num.reshape(len(rows), -1), den)

    def __matmul__(self, o: "_Q") -> "_Q":
        return _Q(self.num.dot(o.num), self.den * o.den)

    def scale(self, f: Fraction) -> "_Q":
        return _Q(self.num * f.numerator, self.den * f.denominator)

    def sub(self, o: "_Q") -> "_Q":
        d = _lcm(self.den, o.den)
        return _Q(self.num * (d // self.den) - o.num * (d // o.den), d)

    def reduced(self) -> "_Q":
        g = self.den
        for v in self.num.flat:
            if g == 1:
                break
            g = math.gcd(g, v)
        if g == 1:
            return self
        return _Q(np.array([v // g for v in self.num.flat], dtype=object).reshape(self.num.shape), self.den // g)

    @property
    def T(self) -> "_Q":
        return _Q(self.num.T.copy(), self.den)

    def entry(self, i: int, j: int) -> Fraction:
        return Fraction(self.num[i, j], self.den)


def newton_exact(X, y, x_query, alpha, k: int, lam=0) -> tuple[Fraction, list[_Q], _Q]:
    """Iterative Newton in exact arithmetic, from its definition (matrix recursion).

    Returns ``(prediction, [M_0, …, M_k], S)`` with S = XᵀX + λI, M₀ = αS,
    M_j = 2M_{j−1} − M_{j−1} S M_{j−1} and prediction x_qᵀ M_k Xᵀ y (all exact).
    """
    X = _fractions(X, 2, "X")
    y = _fractions(y, 1, "y")
    xq = _fractions(x_query, 1, "x_query")
    alpha, lam = _frac(alpha), _frac(lam)
    d = len(xq)
    Xq = _Q.from_fractions(X)
    S = (Xq.T @ Xq).reduced()
    if lam:
        S = _Q.from_fractions([[S.entry(i, j) + (lam if i == j else 0) for j in range(d)] for i in range(d)])
    Ms = [S.scale(alpha).reduced()]
    for _ in range(k):
        M = Ms[-1]
        MSM = M @ S @ M
        Ms.append(M.scale(Fraction(2)).sub(MSM).reduced())
    b = _Q.from_fractions([[sum((X[i][a] * y[i] for i in range(len(X))), Fraction(0))] for a in range(d)])
    w = Ms[-1] @ b  # (d, 1)
    pred = (_Q.from_fractions([xq]) @ w).entry(0, 0)
    return pred, Ms, S


# =============================================================================== exact check
@dataclass(frozen=True, repr=False)
class ExactResult(CheckResult):
    """Outcome of :func:`exact_check`.

    ``passed`` (formerly ``equal``, still accepted with a DeprecationWarning): the prediction and every checked residual slot equal Newton exactly.
    ``failure``: the first mismatch as ``(layer, slot, token)`` (layer −1 is the read-in, tokens
    count the prefix), or None.  ``prediction`` and ``newton`` are exact Fractions.
    """

    passed: bool
    prediction: Fraction
    newton: Fraction
    failure: tuple[int, str, int] | None
    message: str
    alpha_eff: Fraction
    lam: Fraction
    time: float
    bits: int  # bit length of the prediction's numerator plus denominator

    @property
    def failing_layer(self) -> int | None:
        return None if self.failure is None else self.failure[0]

    @property
    def failing_slot(self) -> str | None:
        return None if self.failure is None else self.failure[1]


def _prefix_sqrt_lambda(model) -> Fraction:
    """√λ as stored in the prefix weights (exact), checking that the prefix is √λ·I in slot x.

    An adaptive model's register token (slot ``one`` = 1, all else 0) follows the ridge tokens.
    """
    tr, lay, d = model.transformer, model.layout, model.spec.d
    if tr.prefix is None:
        return Fraction(0)
    P = tr.prefix.detach().cpu().to(torch.float64)
    R = getattr(model.spec, "n_ridge", P.shape[0])
    root = Fraction(P[0, lay["x"]][0].item()) if R else Fraction(0)
    expect = torch.zeros_like(P)
    if R:
        expect[:R, lay["x"]] = float(root) * torch.eye(d, dtype=torch.float64)
    if getattr(model.spec, "adaptive", False):
        expect[R, lay["one"]] = 1.0
    if not torch.equal(P, expect):
        raise ValueError("prefix is not √λ·e_m in slot x with one common √λ (then, adaptive models, the register "
                         "token with one = 1); cannot derive λ")
    return root


def pl_alpha_exact(model, X, lam: Fraction) -> tuple[Fraction, Fraction]:
    """(τ_p, α) exactly for an adaptive model: τ_p = tr((XᵀX + λI)^p), α = Σ_j w_j ReLU(b_j − τ_p).

    The kinks b_j and weights w_j are the spec's PL function (:mod:`construct.adaptive`) taken
    exactly as floats, not read from the network: an independent mirror of the α MLP.
    """
    spec = model.spec
    d = spec.d
    Xq = _Q.from_fractions(X)
    S = (Xq.T @ Xq).reduced()
    if lam:
        S = _Q.from_fractions([[S.entry(i, j) + (lam if i == j else 0) for j in range(d)] for i in range(d)])
    Sp = S
    for _ in range(spec.alpha_trace - 1):
        Sp = Sp @ S
    tau = sum((Sp.entry(i, i) for i in range(d)), Fraction(0))
    fn = spec.pl
    alpha = sum((Fraction(w) * max(Fraction(b) - tau, Fraction(0)) for b, w in zip(fn.kinks, fn.weights)), Fraction(0))
    return tau, alpha


def _exact_setup(model, X, y, x_query, alpha):
    """What both exact checks (plain and hyperpower) start from, in exact rationals.

    Returns (X, y, x_query, n, d, √λ, λ, P, adaptive, R, N, ν, τ_p or None, α, α_eff, tokens): the
    prompt as Fractions (validated), the ridge prefix (P tokens, R of them ridge; an adaptive
    model's register follows them), N tokens with ν = N under 1/N normalisation (else 1), α (the
    spec's PL value f(τ_p) at the exact τ_p for adaptive models, unless ``alpha`` overrides it),
    α_eff = α/ν², and the read-in tokens.
    """
    spec = model.spec
    X = _fractions(X, 2, "X")
    y = _fractions(y, 1, "y")
    xq = _fractions(x_query, 1, "x_query")
    n, d = len(X), spec.d
    if n < 1 or any(len(r) != d for r in X) or len(y) != n or len(xq) != d:
        raise ValueError(f"need X (n, {d}), y (n,), x_query ({d},) with n >= 1; got X with rows "
                         f"{sorted({len(r) for r in X})}, len(y)={len(y)}, len(x_query)={len(xq)}")
    root = _prefix_sqrt_lambda(model)
    lam = root * root
    P = spec.n_prefix
    ada = getattr(spec, "adaptive", False)
    R = spec.n_ridge if ada else P
    N = n + 1 + P
    nu = Fraction(N) if spec.normalize else Fraction(1)
    tau_x = None
    if ada:
        tau_x, alpha_x = pl_alpha_exact(model, X, lam)
        alpha = alpha_x if alpha is None else _frac(alpha)
    else:
        alpha = _frac(spec.alpha if alpha is None else alpha)
    zero = Fraction(0)
    tokens = [list(X[i]) + [zero] * d + [y[i]] for i in range(n)] + [[zero] * d + list(xq) + [zero]]
    return X, y, xq, n, d, root, lam, P, ada, R, N, nu, tau_x, alpha, alpha / (nu * nu), tokens


def exact_check(model, X, y, x_query, *, residuals: bool = True, alpha=None, weights: str = "intended") -> ExactResult:
    """Run ``model``'s weights exactly on a rational prompt and compare with exact Newton.

    ``model``: a :class:`~construct.model.NewtonTransformer`.  ``X`` (n, d), ``y`` (n,),
    ``x_query`` (d,): Fractions, ints, floats or tensors (floats are taken exactly).
    ``residuals``: also compare every slot after every layer (see module docstring).
    ``alpha``: override α (default ``Fraction(model.spec.alpha)``; for an adaptive model the exact
    PL value f(τ_p) of :func:`pl_alpha_exact`, which the network must reproduce in its α slot).

    Adaptive models (``alpha="adaptive"``): the checked slots also include v = S x on example
    tokens, the register's one, tau = τ_p and alpha = f(τ_p) (exact), the merged form's parked
    c = S x_q on the query, u = 0 before the α-scale layer and (default form) u = 0 on the query;
    the hyperpower form parks S x_q in cq instead and has u = uq = c = 0 before the scale layer.

    Hyperpower models (``form="hyperpower"``): compared with M⁽ᴾ⁾ = αS Σ_{i<P} (I − αS²)^i computed
    exactly (the residual powers of :attr:`~construct.NewtonTransformer.residual_power_after_layer`),
    slot by slot: u = ν M z and c (σ S x / ν after layer 0, then S M z) on train/prefix tokens and
    0 on the query; uq = ν M x_q, cq (0 after layer 0, then S M x_q) on the query and 0 elsewhere.
    ``weights="intended"`` (default) reads the order-3 layers' stored fl(±⅓) as the rational ±⅓
    (:func:`intended_thirds`; every other weight as stored); ``"stored"`` takes every weight as
    stored, which differs from the exact iteration by the rounding of ⅓ (relative 2⁻⁵⁴ per layer,
    bounded in :mod:`construct.blocks.hyperpower`).  Other forms have no such weight: both
    settings are the same there.
    """
    from construct.model import NewtonTransformer

    if not isinstance(model, NewtonTransformer):
        raise TypeError(f"exact_check needs a NewtonTransformer, got {type(model).__name__}")
    if weights not in ("intended", "stored"):
        raise ValueError(f"weights must be 'intended' or 'stored', got {weights!r}")
    if model.spec.form == "hyperpower":
        return _hyper_exact_check(model, X, y, x_query, residuals=residuals, alpha=alpha, weights=weights)
    t0 = time.perf_counter()
    spec, lay = model.spec, model.layout
    X, y, xq, n, d, root, lam, P, ada, R, N, nu, tau_x, alpha, alpha_eff, tokens = _exact_setup(model, X, y, x_query, alpha)

    # network, exactly
    zero = Fraction(0)
    out, streams = exact_forward(model.transformer, tokens)
    pred = out[-1][0]

    # Newton, exactly
    newton, Ms, S = newton_exact(X, y, xq, alpha_eff, spec.k, lam)
    equal = pred == newton
    failure, message = None, ""

    if residuals:
        # expected slot contents per token (prefix rows first)
        xs = ([[root if a == m else zero for a in range(d)] for m in range(R)] + [[zero] * d for _ in range(P - R)]
              + [list(r) for r in X] + [[zero] * d])
        qs = [[zero] * d for _ in range(P + n)] + [list(xq)]
        ys = [[zero] for _ in range(P)] + [[v] for v in y] + [[zero]]
        Z = _Q.from_fractions([[xs[t][a] + qs[t][a] for a in range(d)] for t in range(N)])  # own vector z
        Xs = _Q.from_fractions(xs)
        fixed = {"x": Xs, "xq": _Q.from_fractions(qs), "y": _Q.from_fractions(ys)}
        steps = model.newton_step_after_layer
        sigma = _c_seed_scale(spec.alpha) if "c" in lay and not ada else Fraction(1)
        last = len(steps) - 1
        query = N - 1
        zeros_d = _Q(np.zeros((N, d), dtype=object), 1)
        zeros_1 = _Q(np.zeros((N, 1), dtype=object), 1)
        if ada:
            def _col(v: Fraction) -> _Q:  # v on the register, 0 elsewhere
                return _Q.from_fractions([[v if t == R else zero] for t in range(N)])
            fixed["one"] = _col(Fraction(1))
            V = Xs @ S.T  # S x on example tokens, 0 on the register and the query
            parked = _Q.from_fractions([[(Z @ S.T).entry(t, a) if t == query else zero for a in range(d)]
                                        for t in range(N)])
            scale_layer = spec.alpha_layers
            uq_zero = spec.form == "default"  # the default form never computes the query's u
        for layer in range(-1, len(steps)):
            r = streams[layer + 1]
            want: dict[str, tuple[_Q, list[int]]] = {}
            for s in fixed:
                want[s] = (fixed[s], list(range(N)))
            if layer == -1:
                want["u"] = (zeros_d, list(range(N)))
                if "c" in lay:
                    want["c"] = (zeros_d, list(range(N)))
                if ada:
                    want.update(v=(zeros_d, list(range(N))), tau=(zeros_1, list(range(N))),
                                alpha=(zeros_1, list(range(N))))
            else:
                j = steps[layer]
                toks = list(range(N - 1)) if ada and uq_zero else list(range(N))
                if ada and uq_zero:
                    want["u"] = ((Z @ Ms[j].T).scale(nu), toks)
                    want["u_query"] = (zeros_d, [query])
                else:
                    want["u"] = ((Z @ Ms[j].T).scale(nu), toks)
                if "c" in lay:
                    c = (Xs @ S.T).scale(sigma / nu) if j == 0 else Z @ (S @ Ms[j]).T
                    want["c"] = (c, list(range(N)))
                if ada:
                    has = layer >= scale_layer - 1
                    want["v"] = (V, list(range(N)))
                    want["tau"] = (_col(tau_x) if has else zeros_1, list(range(N)))
                    want["alpha"] = (_col(alpha) if has else zeros_1, list(range(N)))
                    if layer < scale_layer:
                        want["u"] = (zeros_d, list(range(N)))
                        want.pop("u_query", None)
                        if "c" in lay:
                            want["c"] = (parked, list(range(N)))
                    elif layer == scale_layer and "c" in lay:
                        want["c"] = (zeros_d, list(range(N)))
            if layer < last:
                want["out"] = (_Q(np.zeros((N, 1), dtype=object), 1), list(range(N)))
            else:
                want["out"] = (_Q(np.array([[newton.numerator]] * N, dtype=object), newton.denominator), [query])
            for slot in [*lay.names, "u_query"]:
                if slot not in want:
                    continue
                E, toks = want[slot]
                sl = lay["u" if slot == "u_query" else slot]
                bad = _first_mismatch(r, sl, E, toks)
                if bad is not None:
                    slot = "u" if slot == "u_query" else slot
                    failure = (layer, slot, bad)
                    message = _mismatch_message(model, layer, slot, bad, P, query, r, sl, E)
                    break
            if failure is not None:
                break
    equal = equal and failure is None
    if not equal and failure is None:
        message = f"prediction differs from Newton by {float(pred - newton):.3e}"
    bits = pred.numerator.bit_length() + pred.denominator.bit_length()
    return ExactResult(equal, pred, newton, failure, message or "exactly equal", alpha_eff, lam,
                       time.perf_counter() - t0, bits)


def _c_seed_scale(alpha: float) -> Fraction:
    """σ in the merged form's seed c = σ S x (the builder's ``c_scale``; 1 in builds without it)."""
    try:
        from construct.blocks.base import c_scale
    except ImportError:
        return Fraction(1)
    return Fraction(c_scale(alpha))


def _first_mismatch(r: _ColRat, sl: slice, E: _Q, toks: list[int]) -> int | None:
    for t in toks:
        if _bad_col(r, sl, E, t) is not None:
            return t
    return None


def _bad_col(r: _ColRat, sl: slice, E: _Q, t: int) -> int | None:
    for a, c in enumerate(range(sl.start, sl.stop)):
        if r.num[t, c] * E.den != E.num[t, a] * r.den[c]:
            return a
    return None


def _mismatch_message(model, layer: int, slot: str, bad: int, P: int, query: int, r: _ColRat, sl: slice, E: _Q) -> str:
    """The exact checks' report of their first mismatch: where, which token kind, the network's value."""
    where = "read-in" if layer == -1 else f"layer {layer} ({model.layer_names[layer]})"
    kind = "prefix" if bad < P else "query" if bad == query else "train"
    value = safe_repr(r.entry(bad, sl.start + _bad_col(r, sl, E, bad)))
    return f"first exact mismatch: {where}, slot {slot!r}, token {bad} ({kind}): network {value}"



# =============================================================================== hyperpower form
def intended_thirds(model) -> dict:
    """{block index: snap} for the hyperpower form's order-3 blocks: fl(±⅓) read as the rational ±⅓.

    Only blocks named ``order3`` are touched (their other weights are ±1, ±2, ±3: α never
    appears there, so an α that happens to equal fl(⅓) is never re-read).  See
    :mod:`construct.blocks.hyperpower` for why the ⅓ cannot be made dyadic and how its rounding
    is bounded.
    """
    from construct.blocks.hyperpower import THIRD

    third = Fraction(THIRD)
    table = {third: Fraction(1, 3), -third: Fraction(-1, 3)}

    def snap(f: Fraction) -> Fraction:
        return table.get(f, f)

    return {b: snap for b, bs in enumerate(model.block_specs) if bs.name == "order3"}


def residual_power_exact(S: "_Q", alpha: Fraction, power: int) -> "_Q":
    """M with I − MS = (I − αS²)^P, exactly: M = αS Σ_{i<P} R^i, R = I − αS² (doubling, as in
    :func:`verify.residual_power_matrix`), independent of the network's recurrences."""
    d = S.num.shape[0]
    eye = _Q(np.eye(d, dtype=int).astype(object), 1)
    R = eye.sub((S @ S).scale(alpha)).reduced()
    G, Rm = _Q(np.zeros((d, d), dtype=object), 1), eye
    for bit in bin(power)[2:]:
        G, Rm = _add_q(G, Rm @ G).reduced(), (Rm @ Rm).reduced()
        if bit == "1":
            G, Rm = _add_q(eye, R @ G).reduced(), (R @ Rm).reduced()
    return (S.scale(alpha) @ G).reduced()


def _add_q(A: "_Q", B: "_Q") -> "_Q":
    return A.sub(B.scale(Fraction(-1)))


def _hyper_exact_check(model, X, y, x_query, *, residuals: bool, alpha, weights: str) -> ExactResult:
    """:func:`exact_check` for the hyperpower form (see its docstring)."""
    t0 = time.perf_counter()
    spec, lay = model.spec, model.layout
    X, y, xq, n, d, root, lam, P, ada, R, N, nu, tau_x, alpha, alpha_eff, tokens = _exact_setup(model, X, y, x_query, alpha)
    zero = Fraction(0)
    out, streams = exact_forward(model.transformer, tokens, intended_thirds(model) if weights == "intended" else None)
    pred = out[-1][0]

    _, _, S = newton_exact(X, y, xq, alpha_eff, 0, lam)  # S = XᵀX + λI, exactly
    Ms = {p: residual_power_exact(S, alpha_eff, p) for p in set(model.residual_power_after_layer) | {spec.residual_power}}
    b = _Q.from_fractions([[sum((X[i][a] * y[i] for i in range(n)), Fraction(0))] for a in range(d)])
    newton = (_Q.from_fractions([xq]) @ (Ms[spec.residual_power] @ b)).entry(0, 0)
    failure, message = None, ""
    if residuals:
        xs = ([[root if a == m else zero for a in range(d)] for m in range(R)] + [[zero] * d for _ in range(P - R)]
              + [list(r) for r in X] + [[zero] * d])
        qs = [[zero] * d for _ in range(P + n)] + [list(xq)]
        ys = [[zero] for _ in range(P)] + [[v] for v in y] + [[zero]]
        Zt = _Q.from_fractions(xs)  # z on train/prefix tokens, 0 on the query (and the register)
        Zq = _Q.from_fractions(qs)  # x_q on the query, 0 elsewhere
        fixed = {"x": Zt, "xq": Zq, "y": _Q.from_fractions(ys)}
        sigma = None if ada else _c_seed_scale(spec.alpha)
        zeros_d = _Q(np.zeros((N, d), dtype=object), 1)
        zeros_1 = _Q(np.zeros((N, 1), dtype=object), 1)
        allt = list(range(N))
        query = N - 1
        powers = model.residual_power_after_layer
        scale_layer = spec.alpha_layers if ada else 0
        if ada:  # v = S x on examples, register one/tau/alpha, S x_q parked in cq (as in exact_check)
            def _col(v: Fraction) -> _Q:  # v on the register, 0 elsewhere
                return _Q.from_fractions([[v if t == R else zero] for t in range(N)])
            fixed["one"] = _col(Fraction(1))
            V = Zt @ S.T
            parked = Zq @ S.T
        for layer in range(-1, len(powers)):
            r = streams[layer + 1]
            want = {s: fixed[s] for s in fixed}
            if layer == -1:
                want.update(u=zeros_d, c=zeros_d, uq=zeros_d, cq=zeros_d)
                if ada:
                    want.update(v=zeros_d, tau=zeros_1, alpha=zeros_1)
            elif ada and layer <= scale_layer:
                has = layer >= scale_layer - 1
                want.update(v=V, tau=_col(tau_x) if has else zeros_1, alpha=_col(alpha) if has else zeros_1)
                if layer < scale_layer:
                    want.update(u=zeros_d, uq=zeros_d, c=zeros_d, cq=parked)
                else:
                    M = Ms[powers[layer]]
                    want.update(u=Zt @ M.T, uq=Zq @ M.T, c=zeros_d, cq=zeros_d)
            else:
                if ada:
                    want.update(v=V, tau=_col(tau_x), alpha=_col(alpha))
                M = Ms[powers[layer]]
                want["u"] = (Zt @ M.T).scale(nu)
                want["uq"] = (Zq @ M.T).scale(nu)
                if layer == 0:
                    want["c"] = (Zt @ S.T).scale(sigma / nu)
                    want["cq"] = zeros_d
                else:
                    want["c"] = Zt @ (S @ M).T
                    want["cq"] = Zq @ (S @ M).T
            outv = [[zero] for _ in range(N)]
            if layer == len(powers) - 1:
                outv[query] = [newton]
            want["out"] = _Q.from_fractions(outv)
            for slot in lay.names:
                sl = lay[slot]
                bad = _first_mismatch(r, sl, want[slot], allt)
                if bad is not None:
                    failure = (layer, slot, bad)
                    message = _mismatch_message(model, layer, slot, bad, P, query, r, sl, want[slot])
                    break
            if failure is not None:
                break
    equal = pred == newton and failure is None
    if not equal and failure is None:
        message = f"prediction differs from the exact residual-power-{spec.residual_power} iterate by {float(pred - newton):.3e}"
    bits = pred.numerator.bit_length() + pred.denominator.bit_length()
    return ExactResult(equal, pred, newton, failure, message or "exactly equal", alpha_eff, lam,
                       time.perf_counter() - t0, bits)
