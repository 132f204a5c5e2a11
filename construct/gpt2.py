"""Compile an exact (bilinear) network into the trained models' block: softmax, LayerNorm, GELU.

``to_gpt2(model, tol=1e-6, scale=R)`` takes an exact model built here — every Newton form
(default, merged, looped, ridge, normalize, relu or linear attention) and any other program whose
layers are bilinear heads plus paired-ReLU MLPs — and returns a model **of the same class and
API** (``predict``, ``predict_all``, ``describe``, ``save``/``load_model``, ``run_with_cache``)
whose ``.transformer`` is a :class:`GPT2Transformer`: softmax attention over all tokens
(bidirectional), pre-LayerNorm with ordinary per-coordinate γ and β, a GELU MLP and biases —
the block of the trained GPT-2-style regressors.  The compiler reads the weights, not the form:
it pairs each layer's heads and MLP units and checks that they are bilinear / linear, so any
new form built from such layers compiles with no change here: the hyperpower form and
``build_gd_transformer``'s GD program do (tested).  A layer that is not bilinear raises
:class:`NotCompilableError`: the printed-paper erratum (V₂ = V₁), and adaptive α, whose MLP is a
genuine piecewise-linear function of tr(S^p).

Derivation
==========

The exact layer is ``h ← h + Σ_heads A(h) + MLP(h)`` with bilinear heads
``A(h)_i = ν Σ_j (h_i Q)·(h_j K) (h_j V O)`` (ν = 1/N with ``normalize``, else 1; a ReLU pair
(Q,K,V,O), (−Q,K,−V,O) is one bilinear head, a linear head is one) and an MLP whose hidden units
come in pairs (w, o), (−w, −o), so MLP(h) = Σ_pairs (h·w) o is linear.

1. **GELU pairs are exact.**  GELU(a) = aΦ(a) and Φ(−a) = 1 − Φ(a), so GELU(a) − GELU(−a) = a
   for every real a: the paired MLP keeps its weights and computes the same linear map.

2. **Mirror tokens make every head's keys and values average to zero.**  Each token (prefix,
   example, query) is fed twice, as h and as −h (data coordinates only).  Bilinear heads and
   linear MLPs are odd in a token's own vector and even in the set of contexts, so the mirror
   token stays −h through every layer; the softmax heads below keep the symmetry exactly too.

3. **Softmax's 1/N is the normalisation.**  Two softmax heads with scores ±ε s_ij and values
   ±v_j/(2ε) return g(ε) = [f(ε) − f(−ε)]/(2ε), f(t) = Σ_j softmax(t s_i)_j v_j.  Over the 2N
   mirrored tokens s and v have mean zero, so g(0) = (1/2N)Σ_{2N} s v = (1/N)Σ_N s_ij v_j: the
   ``normalize`` head.  Models without 1/N have their data multiplied by √N at the read-in (N =
   visible tokens before mirroring): a trilinear head then returns N^{3/2}/N = √N times the
   un-normalised head, the residual is √N·h throughout, and the read-out divides by √N.  No
   count slot is needed.  The remainder is odd-order Taylor:
       g(ε) − g(0) = (ε²/6) κ₄ + O(ε⁴),   κ₄ = mean(s³v) − 3 mean(s²) mean(s v),
   the fourth joint cumulant of (s, s, s, v) under the uniform distribution on the tokens.

4. **LayerNorm is a per-token scalar.**  Every token carries a constant pair (c, −c) in two extra
   coordinates (the read-in's bias).  Every reader of a LayerNorm output (Q, K, V, the MLP input,
   the read-out) gets rows on the pair equal to −½ its column sums, which makes it blind to the
   pair and to LayerNorm's mean subtraction.  With γ = c·√(2/D′) on every coordinate, β = 0 and
   D′ = D + 2, a reader then sees exactly λ·h with
       λ = (1 + q/(2c²))^(−1/2),   q = ‖h‖² − (Σ_m h_m)²/D′ + D′·eps_LN,
   so 1 − λ = q/(4c²) + O(q²/c⁴) ≤ (R² + D′ eps_LN)/(4c²) on a token of norm ≤ R.

The error bound
===============

Each of the 2L + 1 reading sites σ (L attention sublayers, L MLP sublayers, the read-out) adds a
local error e_σ,i to token i's residual.  From 3 and 4, to first order, with d_i = q_i/(4c²)
and s, v the head's scores and values in the compiled coordinates:

    attention:  e_i = Σ_heads [ −(1/N) Σ_j s_ij v_j (d_i + 2 d_j)  +  (ε²/6) κ₄,i ]
    MLP:        e_i = −d_i · MLP(h)_i               read-out:  e = −d_query · out

(λ enters query, key and value, hence d_i + 2 d_j).  The prediction error is then, to first
order in R²/c² and (ε S)² (S = the largest |score|), with g_σ,i = ∂ŷ/∂h_σ,i::

    |ŷ − y| ≤ B(ε, c; L, data) = (1 + (εS)² + 2d) (1/s_N) Σ_{σ=1}^{2L+1} Σ_i |g_σ,i · e_σ,i|   (**)

(s_N = √N for un-normalised models, else 1; d = max_i d_i).  The factor (1 + (εS)² + 2d) covers
the next-order terms (fifth-order Taylor, the second-order LayerNorm term, errors meeting in
later bilinear heads): measured, they stay below it on every form for εS ≤ 0.5, and
:func:`error_bound` returns ∞ (no claim) past εS = 0.5 or d = 1e-2.  Each term is O(R²/c² + ε²S²)·(size of the site's
output), so B grows linearly with the depth L through the number of sites and with the
sensitivities g, and as R³/c² and ε²R⁶ with the data scale R for trilinear heads.
:func:`error_bound` evaluates (**) on given prompts by running the exact network in the
compiled coordinates with autograd; its signed sum (``estimate``) predicts the measured error
to a few per cent.  tests/test_gpt2.py checks, for every form over a grid of (c, ε), that the
measured error never exceeds B and that B is within 100x of it.

Choosing the knobs (rule ***).  ``scale`` is R, a bound on the norm of every token's data vector
in every residual stream of the compiled model (the exact model's, times √N when un-normalised;
:func:`gpt2_scale` measures it on sample prompts).  With sites = 2L + 1 and S = max_h ‖QKᵀ‖·R²,

    c = R·√(2·sites/τ),      ε = 30·√(3τ/(16·sites)) / S,     τ = max(tol, τ_dtype).

The c rule makes each site's LayerNorm error 3R²/(4c²) ≤ τ/(8·sites) relative, so the sum stays
below τ·R while the sensitivities are of order one.  The worst case S overestimates the scores a
head actually meets by 10–1000x (R is the largest slot on the largest token), and a softmax
pair's round-off grows like u/(ε|s|) (below), so ε sits 30x above its worst-case value
√(3τ/(16·sites))/S: its share of (**) stays far below the LayerNorm share, and the round-off of
the pair stays near 1e-9 of the prediction.  Measured on every form in the tests at τ = 1e-6:
the bound (**) is ≤ tol·R on every prompt, with a margin of about 100x.  The rule is not a proof
(it assumes the sensitivities are of order one); :func:`error_bound` certifies given prompts.

Floating point.  LayerNorm subtracts the mean of a vector holding ±c, so each coordinate is
known to about u·c, and the ±v/(2ε) values cancel to about u·S/ε: the round-off floor grows
like u·(c + S/ε) and meets the approximation error, which shrinks like R²/c² + (εS)², in the
middle.  Measured (tests, d = 3, k = 3, n = 8): float64 reaches 1e-8–1e-10 relative, so
``tol`` ≥ 1e-7 is accepted and knobs are never tighter than τ_float64 = 1e-6; float32's best
is 7e-5–3e-4 relative (knobs at τ_float32 = 1e-2) and breaks past c ≈ 1e4 (tighter knobs give
larger errors, then residuals blow out of ``scale``), so ``tol`` ≥ 1e-3 is accepted.  A smaller
``tol`` raises :class:`Gpt2ToleranceError`.

Prompts whose residual leaves the ball of radius R are refused with :class:`ScaleError`: the
compiled model checks every residual stream it computes (with a relative slack of 1e-3).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .transformer import Transformer, TransformerConfig

LN_EPS = 1e-5          # nn.LayerNorm's default eps, used by the compiled block
FIRST_ORDER = (0.5, 1e-2)  # error_bound claims nothing past ε·max|s| = 0.5 or 1 − λ = 1e-2
EPS_BOOST = 30.0       # ε above its worst-case value: real scores sit far below ‖QKᵀ‖R² (module doc)
SCALE_SLACK = 1e-3     # relative slack on ``scale`` before a prompt is refused
# per dtype: (knobs are never tighter than this τ, smallest tol accepted); see the module doc
PRECISION = {torch.float64: (1e-6, 1e-7), torch.float32: (1e-2, 1e-3)}
PAIR_RTOL = 1e-12      # relative tolerance when matching ReLU head pairs and MLP unit pairs


class NotCompilableError(ValueError):
    """The model has a layer that is not bilinear heads + paired MLP units, so it cannot compile."""


class ScaleError(ValueError):
    """A prompt drives the compiled model's residual outside the ``scale`` it was compiled for."""


class Gpt2ToleranceError(ValueError):
    """The requested ``tol`` is below what the compiled block can reach in this precision."""


@dataclass(frozen=True)
class Gpt2Knobs:
    """The compile's free numbers, with their numerical limits."""

    c: float          # LayerNorm constant pair (c, −c); error ∝ R²/c², round-off ∝ u·c
    eps: float        # softmax score scale ε; error ∝ (εS)², round-off ∝ u/ε
    scale: float      # R: every token's data norm in every residual stream is ≤ R
    tol: float        # the relative tolerance (w.r.t. R) the knobs were chosen for
    sqrt_n: bool      # un-normalised source: data × √N at the read-in, read-out ÷ √N

    def to_dict(self) -> dict:
        return {"c": self.c, "eps": self.eps, "scale": self.scale, "tol": self.tol, "sqrt_n": self.sqrt_n}


# ------------------------------------------------------------------------------ pass 1: read
@dataclass(frozen=True)
class BilinearHead:
    Q: torch.Tensor  # (D, Dh), score scale folded in
    K: torch.Tensor  # (D, Dh)
    V: torch.Tensor  # (D, Dh)
    O: torch.Tensor  # (Dh, D)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= PAIR_RTOL * max(1.0, float(a.abs().max())))


def read_heads(tf: Transformer, b: int) -> list[BilinearHead]:
    """The bilinear heads of block ``b``: each linear head, or each ReLU pair (Q,K,V,O),(−Q,K,−V,O)."""
    cfg, attn = tf.cfg, tf.blocks[b].attn
    if attn is None:
        return []
    W = [tuple(m.detach().clone() for m in (attn.W_Q[h] * attn.scale, attn.W_K[h], attn.W_V[h], attn.W_O[h]))
         for h in range(cfg.n_heads)]
    W = [w for w in W if all(float(m.abs().max()) > 0 for m in w)]  # drop unused (all-zero) head slots
    if cfg.attn == "linear":
        return [BilinearHead(*w) for w in W]
    if cfg.attn != "relu":
        raise NotCompilableError(f"block {b}: attention {cfg.attn!r} is not bilinear; only relu pairs or linear compile")
    heads, used = [], set()
    for i, (q, k, v, o) in enumerate(W):
        if i in used:
            continue
        partner = next((j for j in range(i + 1, len(W)) if j not in used
                        and _close(W[j][0], -q) and _close(W[j][1], k) and _close(W[j][2], -v) and _close(W[j][3], o)), None)
        if partner is None:
            raise NotCompilableError(
                f"block {b}, head {i}: ReLU head has no signed partner (−Q, K, −V, O), so the layer is not "
                "bilinear (the printed-paper erratum V₂ = V₁ is one such case) and cannot be compiled"
            )
        used |= {i, partner}
        heads.append(BilinearHead(q, k, v, o))
    return heads


def check_mlp_pairs(tf: Transformer, b: int) -> None:
    """Every used hidden unit (w, o) needs a partner (−w, −o): then ReLU and GELU both give the linear map."""
    mlp = tf.blocks[b].mlp
    if mlp is None:
        return
    if tf.cfg.mlp not in ("relu", "gelu"):
        raise NotCompilableError(f"block {b}: MLP activation {tf.cfg.mlp!r} is not supported")
    Win, Wout = mlp.W_in.detach(), mlp.W_out.detach()  # (D, M), (M, D)
    if mlp.bias and (mlp.b_in.abs().max() > 0):
        raise NotCompilableError(f"block {b}: MLP has a hidden bias; paired units need none")
    used = set()
    live = [j for j in range(Win.shape[1]) if float(Win[:, j].abs().max()) > 0 and float(Wout[j].abs().max()) > 0]
    for j in live:
        if j in used:
            continue
        partner = next((m for m in live if m not in used and m != j
                        and _close(Win[:, m], -Win[:, j]) and _close(Wout[m], -Wout[j])), None)
        if partner is None:
            raise NotCompilableError(
                f"block {b}, MLP hidden unit {j}: no partner unit (−w, −o), so the MLP is not linear and cannot be compiled"
            )
        used |= {j, partner}


def _spec(M: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(M.to(torch.float64), ord=2)) if M.numel() else 0.0


# ------------------------------------------------------------------------------ the bound
def _hidden(model) -> tuple[Transformer, list[list[BilinearHead]], list[torch.Tensor | None]]:
    src = model.transformer
    heads = [read_heads(src, b) for b in range(src.cfg.blocks_count)]
    lin = []
    for b in range(src.cfg.blocks_count):
        check_mlp_pairs(src, b)
        m = src.blocks[b].mlp
        # a unit pair (w, o), (−w, −o) computes (h·w) o: half of W_in W_out
        lin.append(None if m is None else m.W_in.detach().double() @ m.W_out.detach().double() / 2.0)
    return src, heads, lin


def error_bound(exact, compiled, X, y, x_query) -> dict[str, torch.Tensor]:
    """First-order error bound (**) of the module docstring for ``compiled.predict`` vs ``exact.predict``.

    Runs the exact network in float64 in the compiled model's coordinates (data × √N for
    un-normalised sources), computes every sublayer's local error from ε, c and the activations,
    and weighs it with the prediction's gradient with respect to that residual stream.  Returns
    ``bound`` (B,) = Σ_sites |gradient · local error|, ``estimate`` (B,) = the signed sum
    (the predicted error), and the LayerNorm and softmax shares of the bound.
    """
    kn = compiled.transformer.knobs
    src, heads, lin = _hidden(exact)
    X, y, x_query = exact._check(X, y, x_query)
    tokens = exact.encode(X, y, x_query).double()
    with torch.no_grad():
        r0 = src.embed(tokens.to(src.W_in.dtype)).double()  # (B, M, D)
    B, M, D = r0.shape
    D1, c2, eps2 = D + 2, kn.c ** 2, kn.eps ** 2
    sN = math.sqrt(M) if kn.sqrt_n else 1.0
    r = r0 * sN
    sites, ln_errs, sm_errs = [], [], []
    worst_d, worst_es = torch.zeros(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)

    def ln_d(h):  # (B, M): 1 − λ to first order, per token
        q = (h * h).sum(-1) - h.sum(-1) ** 2 / D1 + D1 * LN_EPS
        return q / (4 * c2)

    for b in src.cfg.layer_schedule:
        h = r
        d = ln_d(h.detach())[..., None]  # (B, M, 1)
        worst_d = torch.maximum(worst_d, d.amax((1, 2)))
        att, e_ln, e_sm = torch.zeros_like(h), torch.zeros_like(h), torch.zeros_like(h)
        for hd in heads[b]:
            Q, K, V, O = (m.double() for m in (hd.Q, hd.K, hd.V, hd.O))
            s = (h @ Q) @ (h @ K).transpose(1, 2)  # (B, M, M)
            v = h @ V @ O  # (B, M, D)
            att = att + s @ v / M
            sd, vd = s.detach(), v.detach()
            worst_es = torch.maximum(worst_es, kn.eps * sd.abs().amax((1, 2)))
            e_ln = e_ln - (d * (sd @ vd) + 2 * sd @ (d * vd)) / M
            e_sm = e_sm + (eps2 / 6) * ((sd ** 3) @ vd / M - 3 * (sd ** 2).mean(-1, keepdim=True) * (sd @ vd) / M)
        z = torch.zeros_like(h, requires_grad=True)
        r = r + att + z
        sites.append(z); ln_errs.append(e_ln); sm_errs.append(e_sm)
        if lin[b] is not None:
            d = ln_d(r.detach())[..., None]
            mlp = r @ lin[b]
            z = torch.zeros_like(h, requires_grad=True)
            sites.append(z); ln_errs.append(-d * mlp.detach()); sm_errs.append(torch.zeros_like(h))
            r = r + mlp + z
    out = r @ src.W_out.detach().double()  # (B, M, d_out)
    pred = out[:, -1, 0] / sN
    grads = torch.autograd.grad(pred.sum(), sites)
    dq = ln_d(r.detach())[:, -1]
    ro = (dq * out.detach()[:, -1, 0]).abs() / sN
    ln_b = sum((g * e).sum(-1).abs().sum(-1) for g, e in zip(grads, ln_errs)) + ro
    sm_b = sum((g * e).sum(-1).abs().sum(-1) for g, e in zip(grads, sm_errs))
    est = sum((g * (e1 + e2)).sum((-1, -2)) for g, e1, e2 in zip(grads, ln_errs, sm_errs)) - dq * out.detach()[:, -1, 0] / sN
    bound = sum((g * (e1 + e2)).sum(-1).abs().sum(-1) for g, e1, e2 in zip(grads, ln_errs, sm_errs)) + ro
    # next-order terms: relative size (εS)² and d; outside the first-order regime no bound is claimed
    bound = bound * (1 + worst_es ** 2 + 2 * worst_d)
    outside = (worst_es > FIRST_ORDER[0]) | (worst_d > FIRST_ORDER[1])
    bound = torch.where(outside, torch.full_like(bound, math.inf), bound)
    return {"bound": bound, "estimate": est, "layernorm": ln_b, "softmax": sm_b,
            "max_ln_d": worst_d, "max_eps_score": worst_es}


def _head_scores(model) -> float:
    src, heads, _ = _hidden(model)
    return max((_spec(h.Q.double() @ h.K.double().T) for hs in heads for h in hs), default=0.0)


def choose_knobs(model, tol: float, scale: float, dtype: torch.dtype = torch.float64) -> tuple[float, float]:
    """c and ε from ``tol`` and ``scale`` (rule (***) of the module docstring)."""
    tau = max(tol, PRECISION[dtype][0])
    sites = 2 * model.transformer.cfg.n_layers + 1
    c = scale * math.sqrt(2 * sites / tau)
    S = _head_scores(model) * scale * scale
    eps = EPS_BOOST * math.sqrt(3 * tau / (16 * sites)) / S if S > 0 else 1.0
    return c, eps


# ------------------------------------------------------------------------------ pass 2: assemble
def _reader(W: torch.Tensor, D1: int) -> torch.Tensor:
    """A (D, X) reader of data coordinates -> (D+2, X) blind to LayerNorm's mean and the ±c pair."""
    out = W.new_zeros(D1, W.shape[1])
    out[: W.shape[0]] = W
    out[-2] = out[-1] = -0.5 * W.sum(0)
    return out


def _writer(W: torch.Tensor, D1: int) -> torch.Tensor:
    """A (X, D) writer into data coordinates -> (X, D+2), never touching the ±c pair."""
    out = W.new_zeros(W.shape[0], D1)
    out[:, : W.shape[1]] = W
    return out


class GPT2Transformer(Transformer):
    """A softmax / pre-LayerNorm / GELU :class:`Transformer` running a compiled exact network.

    ``forward(tokens, key_mask)`` takes the *source* model's tokens and returns the source's
    read-out positions (B, P+N, d_out), so the source class's ``predict`` works unchanged.
    Inside, :meth:`embedded` applies the source read-in (and ridge prefix), scales the data by
    √N for un-normalised sources, appends the mirror tokens −h and lets this transformer's own
    read-in add the constant pair (c, −c); the residual streams it hooks are (B, 2(P+N), D+2).
    """

    def __init__(self, cfg: TransformerConfig, src_d_in: int, src_width: int, src_prefix: int, knobs: "Gpt2Knobs"):
        super().__init__(cfg)
        self.knobs = knobs
        self.src_W_in = nn.Parameter(torch.zeros(src_d_in, src_width))
        self.src_prefix = nn.Parameter(torch.zeros(src_prefix, src_width)) if src_prefix else None
        self.max_resid_seen = 0.0

    def describe_compiled(self) -> str:
        k, cfg = self.knobs, self.cfg
        return (
            f"compiled to GPT-2 blocks (construct.to_gpt2): softmax attention (full), pre-LayerNorm, GELU MLP; "
            f"D = {cfg.d_model} ({cfg.d_model - 2} + the constant pair), heads/layer = {cfg.n_heads} (softmax pairs), "
            f"c = {k.c:.4g}, eps = {k.eps:.4g}, scale R = {k.scale:.4g}, tol = {k.tol:g}, "
            f"{'data x sqrt(N) (un-normalised source)' if k.sqrt_n else '1/N from softmax (normalised source)'}; "
            "tokens are mirrored (h, -h), so residual streams hold 2(P+N) tokens"
        )

    def embedded(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None):
        """Compiled input: (features (B, 2M, D), mirrored key mask or None, counts (B,)) with M = P + N."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.src_W_in.shape[0]:
            raise ValueError(f"tokens must have shape (B, N, {self.src_W_in.shape[0]}), got {tuple(tokens.shape)}")
        r = tokens @ self.src_W_in  # (B, N, D)
        B = r.shape[0]
        if self.src_prefix is not None:
            P = self.src_prefix.shape[0]
            r = torch.cat([self.src_prefix.to(r.dtype).expand(B, -1, -1), r], dim=1)  # (B, M, D)
            if key_mask is not None:
                key_mask = torch.cat([torch.ones(B, P, dtype=torch.bool, device=r.device), key_mask], dim=1)
        M = r.shape[1]
        if key_mask is None:
            cnt = torch.full((B,), float(M), dtype=r.dtype, device=r.device)
        else:
            cnt = key_mask.sum(1).to(r.dtype).clamp(min=1.0)
        if self.knobs.sqrt_n:
            r = r * cnt.sqrt()[:, None, None]
        feats = torch.cat([r, -r], dim=1)  # (B, 2M, D): mirror tokens
        km = None if key_mask is None else torch.cat([key_mask, key_mask], dim=1)
        return feats, km, cnt

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        feats, km, cnt = self.embedded(tokens, key_mask)
        M = feats.shape[1] // 2
        seen = []
        D = self.src_W_in.shape[1]

        def watch(mod, inp, out):
            seen.append(float(out[..., :D].detach().norm(dim=-1).max()))

        handles = [m.register_forward_hook(watch) for n, m in self.named_modules()
                   if n.endswith(("hook_resid_mid", "hook_resid_post", "hook_embed"))]
        try:
            out = super().forward(feats, km)  # (B, 2M, d_out)
        finally:
            for h in handles:
                h.remove()
        self.max_resid_seen = max(seen, default=0.0)
        if not math.isfinite(self.max_resid_seen) or self.max_resid_seen > self.knobs.scale * (1 + SCALE_SLACK):
            raise ScaleError(
                f"a residual stream reached norm {self.max_resid_seen:.4g} > scale R = {self.knobs.scale:.4g} that this "
                "GPT-2-block model was compiled for, so its error bound does not hold; compile again with "
                "to_gpt2(model, tol, scale=...) and a larger scale (gpt2_scale(model, X, y, x_query) measures one)"
            )
        out = out[:, :M]
        if self.knobs.sqrt_n:
            out = out / cnt.sqrt()[:, None, None]
        return out


def _compile(model, knobs: Gpt2Knobs) -> GPT2Transformer:
    src: Transformer = model.transformer
    scfg = src.cfg
    if scfg.layernorm or scfg.causal or scfg.bias or scfg.max_len:
        raise NotCompilableError(
            "to_gpt2 compiles exact networks (no LayerNorm, no bias, full attention, no positions); "
            f"this one has layernorm={scfg.layernorm}, causal={scfg.causal}, bias={scfg.bias}, max_len={scfg.max_len}"
        )
    D, D1 = scfg.d_model, scfg.d_model + 2
    heads = [read_heads(src, b) for b in range(scfg.blocks_count)]
    for b in range(scfg.blocks_count):
        check_mlp_pairs(src, b)
    cfg = TransformerConfig(
        d_model=D1, n_layers=scfg.n_layers, n_heads=2 * max(1, max(len(h) for h in heads)), d_head=scfg.d_head,
        d_in=D, d_out=scfg.d_out, attn="softmax", causal=False, attn_scale=1.0, mlp="gelu",
        d_mlp=scfg.hidden_mlp, layernorm=True, bias=True, max_len=0, n_prefix=0,
        n_blocks=scfg.blocks_count, schedule=scfg.layer_schedule,
    )
    dt = torch.float64
    tf = GPT2Transformer(cfg, scfg.d_in, D, scfg.n_prefix, knobs).to(dt)
    c, eps = knobs.c, knobs.eps
    rho = c * math.sqrt(2.0 / D1)
    with torch.no_grad():
        for p in tf.parameters():
            p.zero_()
        tf.src_W_in.copy_(src.W_in.detach().to(dt))
        if scfg.n_prefix:
            tf.src_prefix.copy_(src.prefix.detach().to(dt))
        tf.W_in[:, :D] = torch.eye(D, dtype=dt)
        tf.b_in[D], tf.b_in[D + 1] = c, -c
        for ln in [tf.ln_f] + [m for blk in tf.blocks for m in (blk.ln1, blk.ln2) if m is not None]:
            ln.weight.fill_(rho)
            ln.bias.zero_()
        tf.W_out.copy_(_reader(src.W_out.detach().to(dt), D1))
        for b, blk in enumerate(tf.blocks):
            for i, h in enumerate(heads[b]):
                Q, K, V, O = (m.to(dt) for m in (h.Q, h.K, h.V, h.O))
                for j, sgn in ((2 * i, 1.0), (2 * i + 1, -1.0)):
                    blk.attn.W_Q[j].copy_(_reader(sgn * eps * Q, D1))
                    blk.attn.W_K[j].copy_(_reader(K, D1))
                    blk.attn.W_V[j].copy_(_reader(sgn * V / (2 * eps), D1))
                    blk.attn.W_O[j].copy_(_writer(O, D1))
            smlp = src.blocks[b].mlp
            if smlp is not None:
                blk.mlp.W_in.copy_(_reader(smlp.W_in.detach().to(dt), D1))
                blk.mlp.W_out.copy_(_writer(smlp.W_out.detach().to(dt), D1))
    return tf.to(src.W_in.dtype)


def to_gpt2(model, tol: float = 1e-6, *, scale: float, c: float | None = None, eps: float | None = None):
    """Compile an exact model into softmax / LayerNorm / GELU blocks; returns a model of the same class.

    ``tol``: relative to ``scale`` (|ŷ − y| ≤ tol·R/s_N, see the module docstring), at least
    1e-7 in float64 and 1e-3 in float32 (:class:`Gpt2ToleranceError` otherwise).  ``scale``: R,
    the largest norm of a token's data vector in any residual stream of the compiled model;
    :func:`gpt2_scale` measures it on sample prompts.  ``c`` and ``eps`` override the knobs
    chosen by rule (***) (for studying the error; the bound (**) still applies).

    The result keeps the source model's class, prompt checks (including its α check) and
    methods; its ``transformer`` is a :class:`GPT2Transformer` and prompts that push a residual
    past ``scale`` raise :class:`ScaleError`.
    """
    from .checkpoint import SavableModel
    from .validate import check_real

    tf = getattr(model, "transformer", None)
    if not isinstance(model, SavableModel) or not isinstance(tf, Transformer):
        raise TypeError(f"to_gpt2 takes a model built by this project with a .transformer, got {type(model).__name__}")
    if isinstance(tf, GPT2Transformer):
        raise NotCompilableError("this model is already compiled to GPT-2 blocks")
    tol = check_real("tol", tol, positive=True)
    scale = check_real("scale", scale, positive=True)
    dtype = tf.W_in.dtype
    if dtype not in PRECISION:
        raise ValueError(f"to_gpt2 needs a float32 or float64 model, got {dtype}")
    floor = PRECISION[dtype][1]
    if tol < floor:
        raise Gpt2ToleranceError(
            f"tol={tol:g} is below what softmax/LayerNorm blocks reach in {str(dtype).removeprefix('torch.')} "
            f"(smallest accepted: {floor:g}); ask for tol >= {floor:g}"
            + (" or compile a float64 model (model.double())" if dtype == torch.float32 else "")
        )
    c0, e0 = choose_knobs(model, tol, scale, dtype)
    c = c0 if c is None else check_real("c", c, positive=True)
    eps = e0 if eps is None else check_real("eps", eps, positive=True)
    knobs = Gpt2Knobs(c=float(c), eps=float(eps), scale=scale, tol=tol, sqrt_n=not tf.cfg.attn_norm)
    out = copy.deepcopy(model)
    out.transformer = _compile(model, knobs)
    return out


def recompile(model, knobs: dict):
    """Rebuild a compiled model from its source and saved knobs (used by :func:`load_model`)."""
    kn = dict(knobs)
    return to_gpt2(model, kn["tol"], scale=kn["scale"], c=kn["c"], eps=kn["eps"])


@torch.no_grad()
def gpt2_scale(model, X, y, x_query, margin: float = 1.25) -> float:
    """A ``scale`` for :func:`to_gpt2` that covers these prompts: the largest token norm in any
    residual stream of the exact model (× √N when it is un-normalised), times ``margin``."""
    res = model.residual_streams(X, y, x_query)  # (L+1, B, M, D)
    R = float(res.norm(dim=-1).max())
    if not model.transformer.cfg.attn_norm:
        R *= math.sqrt(res.shape[2])
    if not math.isfinite(R) or R <= 0:
        raise ValueError(f"the exact model's residual streams have norm {R}; cannot derive a scale")
    return R * margin
