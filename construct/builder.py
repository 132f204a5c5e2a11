"""The builder: spec → layout → blocks → model.

``build_newton_transformer(d, k, alpha, ...)`` returns a :class:`~construct.model.NewtonTransformer`
whose query prediction equals Iterative Newton's x_qᵀ M_k Xᵀ y exactly (in exact arithmetic;
float64 agrees with a direct implementation to round-off).

Default form, **k + 2 layers**, residual width **D = 3d + 2**::

    layer 0          init      u ← α S z                         (M₀ z)
    layers 1 … k     newton    u ← 2u − Σ_l u_l ⟨x_l, u⟩         (M_j z), identical weights
    layer k + 1      readout   out ← Σ_j ⟨x_q, u_j⟩ y_j           (x_qᵀ M_k Xᵀ y)

Merged form (``form="merged"``, k ≥ 2), **k + 1 layers**, width **D = 4d + 2**: tokens also carry
c = S M_j z and the read-out performs the last Newton step (see :mod:`construct.blocks.merged`).

Hyperpower form (``form="hyperpower"``, k ≥ 2), **j + 3 layers**, width **D = 6d + 2**: the merged
form's two init layers, j identical order-3 layers (each cubes the residual I − MS) and the merged
read-out, so I − MS = (I − αS²)^P with P = 4·3^j ≥ 2^k for the smallest such j: at least Newton-k's
accuracy in ≈ 0.63·k + 3 layers, within one layer of the degree bound (:func:`min_layers`; see
:mod:`construct.blocks.hyperpower`).  The query carries its own slots uq, cq (u and c are keys).

Heads per layer: ReLU attention realises each bilinear head as a signed pair, linear attention
as one head; the Newton layer has 1 bilinear head (2 in the merged form), so H = 2 (ReLU) or 1
(linear) in the default form.  Head width Dh = d (2d in the merged form).  MLP hidden width 2d
(4d merged), used only by Newton layers.

Adaptive α (``alpha="adaptive"``, see :mod:`construct.adaptive`): the network computes
α = f(tr(S^p)) from the prompt (p = ``alpha_trace``, default 3; f a piecewise-linear lower bound
of 1.5·tr(S^p)^(−2/p), so α·λ_max² ≤ 1.5 < 2 on every prompt) and then runs exactly the fixed-α
iteration with that α.  One register token (a fixed prefix token with slot ``one`` = 1) holds
τ = tr(S^p) and α.  Layers::

    gram          v ← S x (examples); merged: c ← S x_q (query)     (+ trace/α when p = 1)
    trace+alpha   tau ← tr(S^p), alpha ← f(tau) at the register       (p = 2, 3 only)
    scale         u ← α S z (= the init layer's M₀ z); merged: c ← 0
    then the fixed-α model's Newton layers and read-out, unchanged (merged: an adaptive c-init).

In the default form the query's u is never read (the read-out uses x_q and the train tokens'
u), so it stays 0 there; the merged form carries u = M_j x_q on the query as usual.

**Default form: k + 4 layers (p = 2, 3) or k + 3 (p = 1); merged form: k + 3 (p = 2, 3) or
k + 2 (p = 1); hyperpower form: j + 5 (p = 2, 3) or j + 4 (p = 1)** (its init layer is replaced
by gram/trace/scale and its c-init by a seedless one, :mod:`construct.blocks.hyperpower`).
Residual width **D = 4d + 5** (default), **5d + 5** (merged) or **7d + 5** (hyperpower): the fixed
model's slots plus v (d) and one, tau, alpha (3 scalars).  Heads per layer: d bilinear heads
(2d with ReLU) in the trace and scale layers (d + 1 or d + 2 in the p = 1 gram layer; the
hyperpower scale layer has 2d: u and the query's uq), head width d.
MLP hidden width max(K, 2d) (4d merged, 8d hyperpower), K = 220 (float64) or 97 (float32) PL
pieces, used by the trace+alpha layer only.  ``normalize=True`` is refused (α already adapts to the prompt's
scale and length).

Tokens: one per example, [x_i in slot x, y_i in slot y], then the query [x_q in slot xq].
The query's x slot is 0, so it never enters S.  No weight depends on the prompt length n.

Options:

* ``attn="linear"``: σ = identity instead of ReLU (1 head per bilinear head).
* ``normalize=True``: every attention row is divided by N, the number of tokens it attends
  (N = n + 1 + P with P ridge prefix tokens).  Each sum over tokens then uses S/N instead of S,
  and the network computes exactly Newton on S with **α_eff = α′/N²**: Newton on S/N with
  α′ gives M̃_j = N·M_j(α′/N²), and the read-out's own 1/N cancels the factor N.  A fixed α′ is
  thus relative to S/N, which transfers across n better than a fixed α in S units.
* ``lam=λ > 0`` (ridge): P = d fixed prefix tokens with x = √λ e_m and y = 0 are prepended (stored
  as weights).  They add Σ_m λ e_m e_mᵀ = λI to every S, so the network runs Newton on S + λI and
  predicts with the ridge estimate's Newton iterate.
* ``looped=True``: the k Newton layers share one weight block (weight-tied / looped transformer).
* ``printed_paper=True``: ReLU pairs with V₂ = V₁ as printed in the paper (Eqs. 21, 28) —
  deliberately wrong; the verifier must flag it at the first Newton layer.

Cost of one forward pass on B prompts of n examples: O(B · (k + 2) · (n + 1)² · d) for the
attention scores and values plus O(B · (k + 2) · (n + 1) · d²) for the projections, i.e.
linear in k, quadratic in n and d² per token (D = 3d + 2).  Building is O(k · d²).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch

from . import adaptive as _adaptive
from .blocks import (
    BlockSpec, adaptive_c_init_block, c_init_block, gram_block, gram_heads, init_block,
    merged_readout_block, newton_block, readout_block, scale_block, trace_alpha_block,
)
from .blocks.gd import gd_block
from .blocks.hyperpower import (
    adaptive_hyper_c_init_block, hyper_c_init_block, hyper_init_block, hyper_readout_block, hyperpower_depth, order3_block,
)
from .blocks.base import dense_head, dense_mlp
from .checkpoint import MAX_PARAMS
from .layout import ResidualLayout
from .transformer import Transformer, TransformerConfig
from .validate import MODEL_DTYPES, check_dtype, check_int, check_real, config_from_dict

FORMS = ("default", "merged", "hyperpower")
MAX_D = 4096    # data dimension cap: weights are O(k·d²) floats (d = 4096, k = 10: ~10 GB in float64)
MAX_K = 10_000  # Newton-step cap: k + 2 layers; Newton converges in O(log κ) steps
ATTNS = ("relu", "linear")


@dataclass(frozen=True)
class NewtonSpec:
    """Everything that determines a hand-built Newton network.  Validates itself."""

    d: int                       # data dimension (>= 1)
    k: int                       # Newton steps (>= 0; >= 2 for merged/hyperpower; hyperpower: at least Newton-k)
    alpha: float | str           # step size α (> 0, finite; α_eff = α/N² when normalize) or "adaptive"
    attn: str = "relu"           # "relu" (signed head pairs) | "linear"
    normalize: bool = False      # 1/N attention normalisation
    lam: float = 0.0             # ridge λ >= 0 (Newton on S + λI)
    form: str = "default"        # "default" (k+2 layers) | "merged" (k+1) | "hyperpower" (j+3, 4·3^j ≥ 2^k)
    looped: bool = False         # share one weight block across the Newton layers
    printed_paper: bool = False  # reproduce the paper's V₂ = V₁ erratum (wrong on purpose)
    alpha_trace: int = _adaptive.DEFAULT_TRACE  # adaptive only: α = f(tr(S^p)), p in {1, 2, 3}
    alpha_range: tuple[int, int] | None = None  # adaptive only: log2 bounds of tr(S^p)^(1/p) (None: float64 default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", check_int("d", self.d, 1))  # np.int64 etc. become plain ints
        object.__setattr__(self, "k", check_int("k", self.k, 0))
        if self.d > MAX_D:
            raise ValueError(f"d={self.d} exceeds the supported maximum {MAX_D} (weights grow as d²)")
        if self.k > MAX_K:
            raise ValueError(f"k={self.k} exceeds the supported maximum {MAX_K} (Newton converges long before)")
        # generous upper bound on the parameter count (≤ 8 heads of width ≤ 2d, D ≤ 8d + 2, MLP ≤ 8d),
        # checked before anything is built so that a hostile size fails at once
        D = 8 * self.d + 2
        bound = (self.k + 4) * (8 * 4 * D * 2 * self.d + 2 * D * 8 * self.d)
        if bound > MAX_PARAMS:
            raise ValueError(
                f"d={self.d}, k={self.k} would need up to {bound:.3g} parameters, more than the {MAX_PARAMS:.3g} "
                "supported; use a smaller d or k (or looped=True with a smaller k)")
        if isinstance(self.alpha, str):
            if self.alpha != "adaptive":
                raise ValueError(f"alpha must be a positive number or 'adaptive', got {self.alpha!r}")
            if self.normalize:
                raise ValueError("alpha='adaptive' does not combine with normalize=True: the in-network α "
                                 "already adapts to the prompt's scale and length; build with normalize=False")
            if self.alpha_trace not in _adaptive.TRACE_POWERS:
                raise ValueError(f"alpha_trace must be one of {_adaptive.TRACE_POWERS}, got {self.alpha_trace!r}")
            rng = _adaptive.default_range(torch.float64) if self.alpha_range is None else self.alpha_range
            if not (isinstance(rng, (tuple, list)) and len(rng) == 2):
                raise ValueError(f"alpha_range must be a pair of ints (lo, hi), got {rng!r}")
            object.__setattr__(self, "alpha_range", (check_int("alpha_range[0]", rng[0], -10**6),
                                                     check_int("alpha_range[1]", rng[1], -10**6)))
            _adaptive.pl_function(self.alpha_trace, self.alpha_range)  # validates the range
        else:
            check_real("alpha", self.alpha, positive=True)
            object.__setattr__(self, "alpha", float(self.alpha))
            if self.alpha_range is not None:
                raise ValueError("alpha_range applies to alpha='adaptive' only")
        check_real("lam", self.lam, nonneg=True)
        if self.attn not in ATTNS:
            raise ValueError(f"attn must be one of {ATTNS} for the Newton construction, got {self.attn!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.form in ("merged", "hyperpower") and self.k < 2:
            raise ValueError(f"the {self.form} form needs k >= 2 (got k={self.k}); use form='default'")
        if self.printed_paper and self.attn != "relu":
            raise ValueError("printed_paper reproduces the ReLU-pair erratum, so it needs attn='relu'")
        for name in ("normalize", "looped", "printed_paper"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "lam", float(self.lam))

    @property
    def adaptive(self) -> bool:
        """True when α is computed inside the network (``alpha="adaptive"``)."""
        return self.alpha == "adaptive"

    @property
    def alpha_layers(self) -> int:
        """Layers an adaptive α adds before M₀ z exists: 2 (p = 2, 3) or 1 (p = 1); 0 for a fixed α."""
        if not self.adaptive:
            return 0
        return 1 if self.alpha_trace == 1 else 2

    @property
    def pl(self) -> "_adaptive.PLAlpha":
        """The adaptive α's piecewise-linear function (adaptive models only)."""
        if not self.adaptive:
            raise ValueError("this model has a fixed alpha; pl exists for alpha='adaptive' only")
        return _adaptive.pl_function(self.alpha_trace, self.alpha_range)

    @property
    def n_order3(self) -> int:
        """j: order-3 layers of the hyperpower form (smallest j with 4·3^j ≥ 2^k); 0 otherwise."""
        return hyperpower_depth(self.k) if self.form == "hyperpower" else 0

    @property
    def n_layers(self) -> int:
        """k + 2 (default), k + 1 (merged), j + 3 (hyperpower); adaptive α adds ``alpha_layers``."""
        if self.form == "hyperpower":
            return self.n_order3 + 3 + self.alpha_layers
        return self.k + (1 if self.form == "merged" else 2) + self.alpha_layers

    @property
    def width(self) -> int:
        """Residual width: 3d + 2 (default), 4d + 2 (merged), 6d + 2 (hyperpower); adaptive: + d + 3."""
        base = {"default": 3, "merged": 4, "hyperpower": 6}[self.form] * self.d + 2
        return base + (self.d + 3 if self.adaptive else 0)

    @property
    def residual_power(self) -> int:
        """P with I − M S = (I − αS²)^P for the read-out's M: 2^k, or 4·3^j (hyperpower)."""
        return 4 * 3 ** self.n_order3 if self.form == "hyperpower" else 2 ** self.k

    @property
    def n_prefix(self) -> int:
        """Fixed prefix tokens: d ridge tokens when λ > 0, then the register when adaptive."""
        return (self.d if self.lam > 0 else 0) + (1 if self.adaptive else 0)

    @property
    def n_ridge(self) -> int:
        return self.d if self.lam > 0 else 0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["alpha_range"] is not None:
            out["alpha_range"] = list(out["alpha_range"])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "NewtonSpec":
        return config_from_dict(cls, d)


def min_layers(k: int) -> int:
    """Fewest exact bilinear layers allowed by degree counting: least L with 3^L ≥ 2^(k+2) + 1."""
    k = check_int("k", k, 0)
    target, L, p = 2 ** (k + 2) + 1, 0, 1
    while p < target:
        L, p = L + 1, p * 3
    return L


def layers_table(ks=(4, 6, 8, 10, 12, 16, 20, 24, 30, 40)) -> list[dict[str, int]]:
    """Layers needed to match Newton-k, per form, with the degree lower bound (README table).

    One dict per k: ``{"k", "default" (k + 2), "merged" (k + 1), "hyperpower" (j + 3 with
    4·3^j ≥ 2^k), "lower_bound" (:func:`min_layers`), "residual_power" (4·3^j)}``; k ≥ 2.
    """
    rows = []
    for k in ks:
        k = check_int("k", k, 2)
        j = hyperpower_depth(k)
        rows.append({"k": k, "default": k + 2, "merged": k + 1, "hyperpower": j + 3,
                     "lower_bound": min_layers(k), "residual_power": 4 * 3 ** j})
    return rows


def layers_table_markdown(ks=(4, 6, 8, 10, 12, 16, 20, 24, 30, 40)) -> str:
    """:func:`layers_table` as the README's markdown table (k across, one row per form)."""
    rows = layers_table(ks)
    lines = ["| k | " + " | ".join(str(r["k"]) for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for key, label in (("default", "k+2 form"), ("merged", "merged (k+1)"),
                       ("hyperpower", "hyperpower (j+3)"), ("lower_bound", "degree lower bound")):
        lines.append(f"| {label} | " + " | ".join(str(r[key]) for r in rows) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ pass 1: layout
def make_layout(spec: NewtonSpec) -> ResidualLayout:
    d = spec.d
    if spec.form == "hyperpower":
        return _hyper_layout(spec)
    sizes = [
        ("x", d, "x_i on train tokens (√λ e_m on ridge prefix tokens); 0 on the query"),
        ("xq", d, "x_q on the query token; 0 elsewhere"),
        ("u", d, "M_j z: Newton's j-th matrix applied to the token's own vector z"),
    ]
    if spec.form == "merged":
        sizes.append(("c", d, "S M_j z (merged form)"))
    if spec.adaptive:
        sizes.append(("v", d, "S x_i on example tokens (adaptive α); 0 on the query and the register"))
    sizes += [("y", 1, "y_i on train tokens; 0 on the query"), ("out", 1, "the prediction, at the query token")]
    if spec.adaptive:
        p = spec.alpha_trace
        sizes += [("one", 1, "1 on the register token (adaptive α), 0 elsewhere"),
                  ("tau", 1, f"tr(S^{p}) on the register, 0 elsewhere"),
                  ("alpha", 1, f"α = f(tr(S^{p})) on the register, 0 elsewhere")]
    reg = {"one": "1 (register)", "tau": "0", "alpha": "0", "v": "0"} if spec.adaptive else {}
    stages = [("read-in", {"x": "x_i", "xq": "x_q", "u": "0", "y": "y_i", "out": "0", "c": "0", **reg})]
    last_newton = spec.k if spec.form == "default" else spec.k - 1
    if spec.adaptive:
        p = spec.alpha_trace
        ta = {"tau": f"tr(S^{p}) (register)", "alpha": "α = f(tau) (register)"}
        merged = spec.form == "merged"
        stages.append(("L0 gram" + ("+alpha" if p == 1 else ""), {
            "x": "x_i", "xq": "x_q", "u": "0", "v": "S x_i (examples)",
            "c": "S x_q (query), 0 elsewhere" if merged else "0", "y": "y_i", "out": "0", "one": "1 (register)",
            **(ta if p == 1 else {"tau": "0", "alpha": "0"})}))
        if p != 1:
            stages.append(("L1 trace+alpha", dict(stages[-1][1], **ta)))
        stages.append((f"L{spec.alpha_layers} scale", dict(stages[-1][1], c="0",
                                                          u="M_0 z = αS z" + ("" if merged else " (0 on the query)"))))
        reg = {"one": "1 (register)", "v": "S x_i (examples)", **ta}
    else:
        stages.append(("L0 init", {"x": "x_i", "xq": "x_q", "u": "M_0 z = αS z", "c": "σ S x_i (train), 0 (query); σ≈√α", "y": "y_i", "out": "0"}))
    off = spec.alpha_layers
    for j in range(1, last_newton + 1):
        c = f"S M_{j} z" if spec.form == "merged" else "0"
        uq = " (0 on the query)" if spec.adaptive and spec.form == "default" else ""
        stages.append((f"L{j + off} newton", {"x": "x_i", "xq": "x_q", "u": f"M_{j} z{uq}", "c": c, "y": "y_i", "out": "0", **reg}))
    stages.append(
        (f"L{last_newton + 1 + off} readout", {**reg, 
            "x": "x_i", "xq": "x_q", "u": f"M_{last_newton} z",
            "c": f"S M_{last_newton} z" if spec.form == "merged" else "0",
            "y": "y_i", "out": f"x_qᵀ M_{spec.k} Xᵀy (query)" if spec.form == "default" else f"z_tᵀ M_{spec.k} Xᵀy (every token)",
        })
    )
    return ResidualLayout.from_sizes(sizes, stages)


def _hyper_layout(spec: NewtonSpec) -> ResidualLayout:
    d, j = spec.d, spec.n_order3
    sizes = [
        ("x", d, "x_i on train tokens (√λ e_m on ridge prefix tokens); 0 on the query"),
        ("xq", d, "x_q on the query token; 0 elsewhere"),
        ("u", d, "M z on train/prefix tokens; 0 on the query (u is a key/value)"),
        ("c", d, "S M z on train/prefix tokens; 0 on the query (c is a key/value)"),
        ("uq", d, "M x_q on the query; 0 elsewhere (only ever a query)"),
        ("cq", d, "S M x_q on the query; 0 elsewhere (only ever a query)"),
        ("y", 1, "y_i on train tokens; 0 on the query"),
        ("out", 1, "the prediction, at the query token"),
    ]
    fixed = {"x": "x_i", "xq": "x_q", "y": "y_i"}
    stages = []
    off = spec.alpha_layers  # adaptive: layers before the α-scale layer (which replaces init)
    if spec.adaptive:
        p = spec.alpha_trace
        sizes[-2:-2] = [("v", d, "S x_i on example tokens (adaptive α); 0 on the query and the register")]
        sizes += [("one", 1, "1 on the register token (adaptive α), 0 elsewhere"),
                  ("tau", 1, f"tr(S^{p}) on the register, 0 elsewhere"),
                  ("alpha", 1, f"α = f(tr(S^{p})) on the register, 0 elsewhere")]
        ta = {"tau": f"tr(S^{p}) (register)", "alpha": "α = f(tau) (register)"}
        fixed = dict(fixed, one="1 (register)")
        stages.append(("read-in", dict(fixed, u="0", c="0", uq="0", cq="0", out="0", v="0", tau="0", alpha="0")))
        stages.append(("L0 gram" + ("+alpha" if p == 1 else ""), dict(
            fixed, u="0", c="0", uq="0", cq="S x_q (query), 0 elsewhere", out="0", v="S x_i (examples)",
            **(ta if p == 1 else {"tau": "0", "alpha": "0"}))))
        if p != 1:
            stages.append(("L1 trace+alpha", dict(stages[-1][1], **ta)))
        fixed = dict(fixed, v="S x_i (examples)", **ta)
        stages.append((f"L{off} scale", dict(fixed, u="M⁽¹⁾ z = αS z", c="0", uq="M⁽¹⁾ x_q = αS x_q", cq="0", out="0")))
    else:
        stages.append(("read-in", dict(fixed, u="0", c="0", uq="0", cq="0", out="0")))
        stages.append(("L0 init", dict(fixed, u="M⁽¹⁾ z = αS z", c="σ S z (train)", uq="M⁽¹⁾ x_q", cq="0", out="0")))
    stages.append((f"L{off + 1} newton+c-init", dict(fixed, u="M⁽²⁾ z", c="S M⁽²⁾ z", uq="M⁽²⁾ x_q", cq="S M⁽²⁾ x_q", out="0")))
    for i in range(1, j + 1):
        p = f"M⁽{2 * 3 ** i}⁾"
        stages.append((f"L{i + 1 + off} order3", dict(fixed, u=f"{p} z", c=f"S {p} z", uq=f"{p} x_q", cq=f"S {p} x_q", out="0")))
    p = f"M⁽{2 * 3 ** j}⁾"
    stages.append((f"L{j + 2 + off} readout", dict(fixed, u=f"{p} z", c=f"S {p} z", uq=f"{p} x_q", cq=f"S {p} x_q",
                                              out=f"x_qᵀ M⁽{4 * 3 ** j}⁾ Xᵀy (query)")))
    return ResidualLayout.from_sizes(sizes, stages)


# ------------------------------------------------------------------------------ pass 2: blocks
def make_blocks(spec: NewtonSpec, layout: ResidualLayout) -> tuple[list[BlockSpec], list[int]]:
    """Distinct blocks and the schedule (block index per layer)."""
    d, a = spec.d, spec.attn
    if spec.form == "hyperpower":
        if spec.printed_paper:
            raise ValueError("printed_paper is only built for the default form")
        if spec.adaptive:
            blocks = _adaptive_prefix_blocks(spec, layout, park="cq", park_out="uq")
            blocks.append(adaptive_hyper_c_init_block(layout, d, a))
        else:
            blocks = [hyper_init_block(layout, d, spec.alpha, a), hyper_c_init_block(layout, d, spec.alpha, a)]
        schedule = list(range(len(blocks)))
        step = order3_block(layout, d, a)
        if spec.looped and spec.n_order3:
            schedule += [len(blocks)] * spec.n_order3
            blocks.append(step)
        else:
            for _ in range(spec.n_order3):
                schedule.append(len(blocks))
                blocks.append(step)
        schedule.append(len(blocks))
        blocks.append(hyper_readout_block(layout, d, a))
        return blocks, schedule
    if spec.adaptive:
        park = "c" if spec.form == "merged" else None  # where the query's S x_q waits (merged only)
        blocks = _adaptive_prefix_blocks(spec, layout, park)
    else:
        blocks = [init_block(layout, d, spec.alpha, a, seed_c=spec.form == "merged")]
    pre = len(blocks)  # layers before the first Newton layer
    if spec.form == "default":
        n_newton = spec.k
        newton = [newton_block(layout, d, a, carry_c=False, printed_paper=spec.printed_paper)]
        schedule = list(range(pre))
        if spec.looped:
            blocks += newton if n_newton else []
            schedule += [pre] * n_newton
        else:
            for _ in range(n_newton):
                schedule.append(len(blocks))
                blocks.append(newton[0])
        schedule.append(len(blocks))
        blocks.append(readout_block(layout, d, a))
    else:
        if spec.printed_paper:
            raise ValueError("printed_paper is only built for the default form")
        schedule = list(range(pre + 1))
        blocks.append(adaptive_c_init_block(layout, d, a) if spec.adaptive else c_init_block(layout, d, spec.alpha, a))
        rest = spec.k - 2  # identical Newton(+c) layers after the c-init layer
        step = newton_block(layout, d, a, carry_c=True)
        if spec.looped and rest:
            blocks.append(step)
            schedule += [pre + 1] * rest
        else:
            for _ in range(rest):
                schedule.append(len(blocks))
                blocks.append(step)
        schedule.append(len(blocks))
        blocks.append(merged_readout_block(layout, d, a))
    return blocks, schedule


def _adaptive_prefix_blocks(spec: NewtonSpec, layout: ResidualLayout, park: str | None,
                            park_out: str = "u") -> list[BlockSpec]:
    """gram (+ trace/α when p = 1), trace+α (p = 2, 3), scale: the layers that produce u = αSz.

    ``park``: the slot where the query's S x_q waits (merged: c, hyperpower: cq, default: none);
    ``park_out``: where the scale layer writes α S x_q (u, or uq for the hyperpower form).
    """
    d, a, pl = spec.d, spec.attn, spec.pl
    if spec.alpha_trace == 1:
        blocks = [trace_alpha_block(layout, d, 1, a, pl.kinks, pl.weights, extra_heads=gram_heads(d, park),
                                    name="gram+alpha")]
    else:
        blocks = [gram_block(layout, d, a, park),
                  trace_alpha_block(layout, d, spec.alpha_trace, a, pl.kinks, pl.weights)]
    blocks.append(scale_block(layout, d, a, park, park_out))
    return blocks


# ------------------------------------------------------------------------------ pass 3: assemble
def assemble(spec: NewtonSpec, layout: ResidualLayout, blocks: list[BlockSpec], schedule: list[int]) -> Transformer:
    """Place block weights in a :class:`Transformer` (float64)."""
    d = spec.d
    n_heads = max((len(b.heads) for b in blocks), default=1)
    d_head = max((h.d_head for b in blocks for h in b.heads), default=1)
    mlps = [b.mlp for b in blocks if b.mlp is not None]
    d_mlp = max((m.width for m in mlps), default=1)
    mlp = "relu" if mlps else None
    cfg = TransformerConfig(
        d_model=layout.width, n_layers=len(schedule), n_heads=n_heads, d_head=d_head,
        d_in=2 * d + 1, d_out=1, attn=spec.attn, causal=False, attn_norm=spec.normalize,
        attn_scale=1.0, mlp=mlp, d_mlp=d_mlp if mlp else 0, layernorm=False, bias=False,
        max_len=0, n_prefix=spec.n_prefix, n_blocks=len(blocks), schedule=tuple(schedule),
    )
    model = Transformer(cfg).to(torch.float64)
    with torch.no_grad():
        # read-in: token features [x (d) | x_q (d) | y (1)] -> slots x, xq, y
        W = torch.zeros(2 * d + 1, layout.width, dtype=torch.float64)
        W[:d, layout["x"]] = torch.eye(d, dtype=torch.float64)
        W[d:2 * d, layout["xq"]] = torch.eye(d, dtype=torch.float64)
        W[2 * d, layout["y" if "y" in layout else "r"]] = 1.0  # GD keeps y in its residual slot r
        model.W_in.copy_(W)
        model.W_out.zero_()
        model.W_out[layout["out"], 0] = 1.0
        if spec.n_prefix:
            model.prefix.zero_()
            R = spec.n_ridge
            if R:
                model.prefix[:R, layout["x"]] = math.sqrt(spec.lam) * torch.eye(d, dtype=torch.float64)
            if spec.adaptive:
                model.prefix[R, layout["one"]] = 1.0  # the register token
        for blk, bs in zip(model.blocks, blocks):
            for h, head in enumerate(bs.heads):
                w = dense_head(layout, head, d_head)
                blk.attn.W_Q[h].copy_(w["W_Q"])
                blk.attn.W_K[h].copy_(w["W_K"])
                blk.attn.W_V[h].copy_(w["W_V"])
                blk.attn.W_O[h].copy_(w["W_O"])
            if bs.mlp is not None:
                w = dense_mlp(layout, bs.mlp, d_mlp)
                blk.mlp.W_in.copy_(w["W_in"])
                blk.mlp.W_out.copy_(w["W_out"])
    return model


def build_newton_transformer(
    d: int,
    k: int,
    alpha: float | str,
    *,
    attn: str = "relu",
    normalize: bool = False,
    lam: float = 0.0,
    form: str = "default",
    looped: bool = False,
    printed_paper: bool = False,
    alpha_trace: int = _adaptive.DEFAULT_TRACE,
    alpha_range: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float64,
):
    """Build a transformer that runs k steps of Iterative Newton in context (see module doc).

    Returns a :class:`~construct.model.NewtonTransformer` (a ``torch.nn.Module``) with
    ``predict(X, y, x_query)``, ``predict_all(X, y)``, ``n_layers`` (k+2; k+1 merged; j+3
    hyperpower), ``residual_power`` (P with I − MS = (I − αS²)^P), ``layout``, ``describe()`` and
    ``save(path)``.  ``form="hyperpower"`` with k < 2 warns and builds the default form.

    ``alpha="adaptive"``: α is computed in the network from tr(S^p), p = ``alpha_trace``
    (see :mod:`construct.adaptive`); ``model.alpha_of(X)`` gives it.  ``alpha_range`` (log2
    bounds of tr(S^p)^(1/p)) defaults to the widest range ``dtype`` can hold.
    """
    from .model import NewtonTransformer

    dtype = check_dtype(dtype, MODEL_DTYPES)
    if form == "hyperpower" and isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 2:
        warnings.warn(
            f"form='hyperpower' needs k >= 2 (its shortest network, 3 layers, already has residual power 4 = 2^2); "
            f"for k={k} the default form is built instead ({k + 2} layers, the same residual power 2^{k})",
            UserWarning, stacklevel=2,
        )
        form = "default"
    adaptive_kw = {}
    if isinstance(alpha, str) and alpha == "adaptive":
        adaptive_kw = dict(alpha_trace=alpha_trace,
                           alpha_range=_adaptive.default_range(dtype) if alpha_range is None else alpha_range)
    elif alpha_range is not None or alpha_trace != _adaptive.DEFAULT_TRACE:
        raise ValueError("alpha_trace and alpha_range apply to alpha='adaptive' only")
    spec = NewtonSpec(d=d, k=k, alpha=alpha, attn=attn, normalize=normalize, lam=lam,
                      form=form, looped=looped, printed_paper=printed_paper, **adaptive_kw)
    return NewtonTransformer(spec).to(dtype)


# ------------------------------------------------------------------------------ gradient descent
@dataclass(frozen=True)
class GDSpec:
    """Everything that determines a hand-built gradient-descent network.  Validates itself."""

    d: int                       # data dimension (>= 1)
    steps: int                   # GD steps s (>= 0); the network has s layers
    lr: float                    # step size η (> 0, finite); η_eff = η/N when normalize
    attn: str = "relu"           # "relu" (signed head pairs) | "linear"
    normalize: bool = False      # 1/N attention normalisation

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", check_int("d", self.d, 1))  # np.int64 etc. become plain ints
        object.__setattr__(self, "steps", check_int("steps", self.steps, 0))
        if self.d > MAX_D or self.steps > MAX_K:
            raise ValueError(f"d={self.d}, steps={self.steps} exceed the supported maxima d <= {MAX_D}, "
                             f"steps <= {MAX_K}")
        check_real("lr", self.lr, positive=True)
        if self.attn not in ATTNS:
            raise ValueError(f"attn must be one of {ATTNS} for the GD construction, got {self.attn!r}")
        if not isinstance(self.normalize, bool):
            raise TypeError(f"normalize must be a bool, got {self.normalize!r}")
        object.__setattr__(self, "lr", float(self.lr))

    @property
    def n_layers(self) -> int:
        return self.steps

    @property
    def width(self) -> int:
        """Residual width D = 2d + 2."""
        return 2 * self.d + 2

    @property
    def n_prefix(self) -> int:
        return 0

    @property
    def lam(self) -> float:
        return 0.0

    @property
    def n_ridge(self) -> int:
        return 0

    @property
    def adaptive(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GDSpec":
        return config_from_dict(cls, d)


def make_gd_layout(spec: GDSpec) -> ResidualLayout:
    d = spec.d
    sizes = [
        ("x", d, "x_i on train tokens; 0 on the query"),
        ("xq", d, "x_q on the query token; 0 elsewhere"),
        ("r", 1, "residual y_i − x_iᵀ w_s on train tokens (y_i at read-in); 0 on the query"),
        ("out", 1, "x_qᵀ w_s on the query; 0 on train tokens"),
    ]
    stages = [("read-in", {"x": "x_i", "xq": "x_q", "r": "y_i", "out": "0"})]
    for s in range(1, spec.steps + 1):
        stages.append((f"L{s - 1} gd", {"x": "x_i", "xq": "x_q", "r": f"y_i − x_iᵀ w_{s}", "out": f"x_qᵀ w_{s} (query)"}))
    return ResidualLayout.from_sizes(sizes, stages)


def make_gd_blocks(spec: GDSpec, layout: ResidualLayout) -> tuple[list[BlockSpec], list[int]]:
    """One GD block shared by all ``steps`` layers (weight-tied), or none for steps = 0."""
    if spec.steps == 0:
        return [], []
    return [gd_block(layout, spec.d, spec.lr, spec.attn)], [0] * spec.steps


def build_gd_transformer(
    d: int,
    steps: int,
    lr: float,
    *,
    attn: str = "relu",
    normalize: bool = False,
    dtype: torch.dtype = torch.float64,
):
    """Build a transformer that runs ``steps`` steps of gradient descent from w = 0 in context.

    ``predict(X, y, x_query)`` returns x_qᵀ w_s with w ← w − lr·(S w − Xᵀy), the convention of
    :func:`verify.gd_predictions` (``model.predict_all(X, y)`` equals its all-prefix output).
    ``steps`` layers (one identical, weight-tied block), residual width 2d + 2, exact in rational
    arithmetic (see :mod:`construct.blocks.gd`).  ``normalize=True`` divides every attention sum by
    the N tokens, i.e. GD with lr_eff = lr/N.  A fixed lr with lr_eff·λ_max(S) ≥ 2 diverges:
    ``predict`` raises :class:`~construct.alpha.AlphaDivergenceError`.
    """
    from .model import GDTransformer

    dtype = check_dtype(dtype, MODEL_DTYPES)
    return GDTransformer(GDSpec(d=d, steps=steps, lr=lr, attn=attn, normalize=normalize)).to(dtype)
