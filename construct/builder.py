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

Heads per layer: ReLU attention realises each bilinear head as a signed pair, linear attention
as one head; the Newton layer has 1 bilinear head (2 in the merged form), so H = 2 (ReLU) or 1
(linear) in the default form.  Head width Dh = d (2d in the merged form).  MLP hidden width 2d
(4d merged), used only by Newton layers.

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
from dataclasses import dataclass

import torch

from .blocks import (
    BlockSpec, c_init_block, init_block, merged_readout_block, newton_block, readout_block,
)
from .blocks.base import dense_head, dense_mlp
from .checkpoint import MAX_PARAMS
from .layout import ResidualLayout
from .transformer import Transformer, TransformerConfig
from .validate import MODEL_DTYPES, check_dtype, check_int, check_real, config_from_dict

FORMS = ("default", "merged")
MAX_D = 4096    # data dimension cap: weights are O(k·d²) floats (d = 4096, k = 10: ~10 GB in float64)
MAX_K = 10_000  # Newton-step cap: k + 2 layers; Newton converges in O(log κ) steps
ATTNS = ("relu", "linear")


@dataclass(frozen=True)
class NewtonSpec:
    """Everything that determines a hand-built Newton network.  Validates itself."""

    d: int                       # data dimension (>= 1)
    k: int                       # Newton steps (>= 0; >= 2 for the merged form)
    alpha: float                 # step size α (> 0, finite); α_eff = α/N² when normalize
    attn: str = "relu"           # "relu" (signed head pairs) | "linear"
    normalize: bool = False      # 1/N attention normalisation
    lam: float = 0.0             # ridge λ >= 0 (Newton on S + λI)
    form: str = "default"        # "default" (k+2 layers) | "merged" (k+1 layers)
    looped: bool = False         # share one weight block across the Newton layers
    printed_paper: bool = False  # reproduce the paper's V₂ = V₁ erratum (wrong on purpose)

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
        check_real("alpha", self.alpha, positive=True)
        check_real("lam", self.lam, nonneg=True)
        if self.attn not in ATTNS:
            raise ValueError(f"attn must be one of {ATTNS} for the Newton construction, got {self.attn!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.form == "merged" and self.k < 2:
            raise ValueError(f"the merged form needs k >= 2 (got k={self.k}); use form='default'")
        if self.printed_paper and self.attn != "relu":
            raise ValueError("printed_paper reproduces the ReLU-pair erratum, so it needs attn='relu'")
        for name in ("normalize", "looped", "printed_paper"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "lam", float(self.lam))

    @property
    def n_layers(self) -> int:
        return self.k + (1 if self.form == "merged" else 2)

    @property
    def width(self) -> int:
        """Residual width: 3d + 2 (default) or 4d + 2 (merged)."""
        return (4 if self.form == "merged" else 3) * self.d + 2

    @property
    def n_prefix(self) -> int:
        return self.d if self.lam > 0 else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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


# ------------------------------------------------------------------------------ pass 1: layout
def make_layout(spec: NewtonSpec) -> ResidualLayout:
    d = spec.d
    sizes = [
        ("x", d, "x_i on train tokens (√λ e_m on ridge prefix tokens); 0 on the query"),
        ("xq", d, "x_q on the query token; 0 elsewhere"),
        ("u", d, "M_j z: Newton's j-th matrix applied to the token's own vector z"),
    ]
    if spec.form == "merged":
        sizes.append(("c", d, "S M_j z (merged form)"))
    sizes += [("y", 1, "y_i on train tokens; 0 on the query"), ("out", 1, "the prediction, at the query token")]
    stages = [("read-in", {"x": "x_i", "xq": "x_q", "u": "0", "y": "y_i", "out": "0", "c": "0"})]
    last_newton = spec.k if spec.form == "default" else spec.k - 1
    stages.append(("L0 init", {"x": "x_i", "xq": "x_q", "u": "M_0 z = αS z", "c": "σ S x_i (train), 0 (query); σ≈√α", "y": "y_i", "out": "0"}))
    for j in range(1, last_newton + 1):
        c = f"S M_{j} z" if spec.form == "merged" else "0"
        stages.append((f"L{j} newton", {"x": "x_i", "xq": "x_q", "u": f"M_{j} z", "c": c, "y": "y_i", "out": "0"}))
    stages.append(
        (f"L{last_newton + 1} readout", {
            "x": "x_i", "xq": "x_q", "u": f"M_{last_newton} z",
            "c": f"S M_{last_newton} z" if spec.form == "merged" else "0",
            "y": "y_i", "out": f"x_qᵀ M_{spec.k} Xᵀy (query)" if spec.form == "default" else f"z_tᵀ M_{spec.k} Xᵀy (every token)",
        })
    )
    return ResidualLayout.from_sizes(sizes, stages)


# ------------------------------------------------------------------------------ pass 2: blocks
def make_blocks(spec: NewtonSpec, layout: ResidualLayout) -> tuple[list[BlockSpec], list[int]]:
    """Distinct blocks and the schedule (block index per layer)."""
    d, a = spec.d, spec.attn
    blocks = [init_block(layout, d, spec.alpha, a, seed_c=spec.form == "merged")]
    if spec.form == "default":
        n_newton = spec.k
        newton = [newton_block(layout, d, a, carry_c=False, printed_paper=spec.printed_paper)]
        schedule = [0]
        if spec.looped:
            blocks += newton if n_newton else []
            schedule += [1] * n_newton
        else:
            for _ in range(n_newton):
                schedule.append(len(blocks))
                blocks.append(newton[0])
        schedule.append(len(blocks))
        blocks.append(readout_block(layout, d, a))
    else:
        if spec.printed_paper:
            raise ValueError("printed_paper is only built for the default form")
        schedule = [0, 1]
        blocks.append(c_init_block(layout, d, spec.alpha, a))
        rest = spec.k - 2  # identical Newton(+c) layers after the c-init layer
        step = newton_block(layout, d, a, carry_c=True)
        if spec.looped and rest:
            blocks.append(step)
            schedule += [2] * rest
        else:
            for _ in range(rest):
                schedule.append(len(blocks))
                blocks.append(step)
        schedule.append(len(blocks))
        blocks.append(merged_readout_block(layout, d, a))
    return blocks, schedule


# ------------------------------------------------------------------------------ pass 3: assemble
def assemble(spec: NewtonSpec, layout: ResidualLayout, blocks: list[BlockSpec], schedule: list[int]) -> Transformer:
    """Place block weights in a :class:`Transformer` (float64)."""
    d = spec.d
    n_heads = max(len(b.heads) for b in blocks)
    d_head = max(h.d_head for b in blocks for h in b.heads)
    mlps = [b.mlp for b in blocks if b.mlp is not None]
    d_mlp = max((m.width for m in mlps), default=1)
    cfg = TransformerConfig(
        d_model=layout.width, n_layers=len(schedule), n_heads=n_heads, d_head=d_head,
        d_in=2 * d + 1, d_out=1, attn=spec.attn, causal=False, attn_norm=spec.normalize,
        attn_scale=1.0, mlp="relu", d_mlp=d_mlp, layernorm=False, bias=False,
        max_len=0, n_prefix=spec.n_prefix, n_blocks=len(blocks), schedule=tuple(schedule),
    )
    model = Transformer(cfg).to(torch.float64)
    with torch.no_grad():
        # read-in: token features [x (d) | x_q (d) | y (1)] -> slots x, xq, y
        W = torch.zeros(2 * d + 1, layout.width, dtype=torch.float64)
        W[:d, layout["x"]] = torch.eye(d, dtype=torch.float64)
        W[d:2 * d, layout["xq"]] = torch.eye(d, dtype=torch.float64)
        W[2 * d, layout["y"]] = 1.0
        model.W_in.copy_(W)
        model.W_out.zero_()
        model.W_out[layout["out"], 0] = 1.0
        if spec.n_prefix:
            model.prefix.zero_()
            model.prefix[:, layout["x"]] = math.sqrt(spec.lam) * torch.eye(d, dtype=torch.float64)
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
    alpha: float,
    *,
    attn: str = "relu",
    normalize: bool = False,
    lam: float = 0.0,
    form: str = "default",
    looped: bool = False,
    printed_paper: bool = False,
    dtype: torch.dtype = torch.float64,
):
    """Build a transformer that runs k steps of Iterative Newton in context (see module doc).

    Returns a :class:`~construct.model.NewtonTransformer` (a ``torch.nn.Module``) with
    ``predict(X, y, x_query)``, ``predict_all(X, y)``, ``n_layers`` (k+2, or k+1 merged),
    ``layout``, ``describe()`` and ``save(path)``.
    """
    from .model import NewtonTransformer

    dtype = check_dtype(dtype, MODEL_DTYPES)
    spec = NewtonSpec(d=d, k=k, alpha=alpha, attn=attn, normalize=normalize, lam=lam,
                      form=form, looped=looped, printed_paper=printed_paper)
    return NewtonTransformer(spec).to(dtype)
