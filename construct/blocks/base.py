"""Weight blocks written as "slot → slot", and how they become a :class:`~construct.transformer.Block`.

A :class:`Head` lists, for each of its four maps, which residual slots it reads or writes and
with which coefficient matrix.  ``Head(q={"u": eye(d, dh)}, k={"x": eye(d, dh)}, ...)`` reads
slot ``u`` into the first ``d`` query dimensions.  Its score between tokens i and j is

    s_ij = Σ_slots (h_i[slot] q[slot]) · (h_j[slot'] k[slot'])

so a head with q = {a: A}, k = {b: B} computes the bilinear form h_i[a] A Bᵀ h_j[b]ᵀ.

**Signed pairs (ReLU attention).**  ReLU attention computes Σ_j ReLU(s_ij) v_j, which is not
bilinear.  Pairing the head (Q, K, V, O) with (−Q, K, −V, O) gives

    ReLU(s) v + ReLU(−s)(−v) = (ReLU(s) − ReLU(−s)) v = s v,

exactly, for every real s (case lemma: s ≥ 0 gives s·v − 0; s < 0 gives 0 − (−s)v = s v).
So a pair of ReLU heads is one linear-attention head.  The paper's Eqs. (21)/(28) take the
second value equal to the first (V₂ = V₁), which gives ReLU(s) + ReLU(−s) = |s| instead:
:func:`relu_pair` with ``printed_paper=True`` reproduces that erratum for the verifier to flag.

**Doubling MLP.**  Hidden units ReLU(v) and ReLU(−v) with output weights +1 and −1 add v back
to its own slot: ReLU(v) − ReLU(−v) = v, so the slot is doubled, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..layout import ResidualLayout

DTYPE = torch.float64  # blocks are built in float64 and cast by the model


def c_scale(alpha: float) -> float:
    """σ: the power of two nearest √α.  Used to seed slot c of the merged form at the scale of x.

    σ² is a power of two, so α/σ² is computed exactly in binary floating point; that keeps the
    merged form exact in rational arithmetic (see :mod:`construct.blocks.merged`).
    """
    return 2.0 ** round(math.log2(math.sqrt(alpha)))


def eye(size: int, width: int, at: int = 0, scale: float = 1.0) -> torch.Tensor:
    """``scale`` times the identity from ``size`` slot dims into head dims ``at:at+size`` of ``width``."""
    if at < 0 or at + size > width:
        raise ValueError(f"cannot place {size} dims at offset {at} in a head of width {width}")
    m = torch.zeros(size, width, dtype=DTYPE)
    m[:, at:at + size] = scale * torch.eye(size, dtype=DTYPE)
    return m


@dataclass(frozen=True)
class Head:
    """One attention head as slot maps.  q/k/v: slot -> (slot size, Dh); o: slot -> (Dh, slot size)."""

    q: dict[str, torch.Tensor]
    k: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    o: dict[str, torch.Tensor]
    label: str = ""

    @property
    def d_head(self) -> int:
        widths = [m.shape[1] for m in (*self.q.values(), *self.k.values(), *self.v.values())]
        widths += [m.shape[0] for m in self.o.values()]
        return max(widths)

    def negated(self, negate_value: bool = True, label: str = "") -> "Head":
        return Head(
            q={s: -m for s, m in self.q.items()},
            k=dict(self.k),
            v={s: (-m if negate_value else m) for s, m in self.v.items()},
            o=dict(self.o),
            label=label or self.label + "⁻",
        )


@dataclass(frozen=True)
class MLPSpec:
    """Hidden units as slot maps: w_in: slot -> (slot size, M); w_out: slot -> (M, slot size)."""

    w_in: dict[str, torch.Tensor]
    w_out: dict[str, torch.Tensor]

    @property
    def width(self) -> int:
        return max(m.shape[1] for m in self.w_in.values())


@dataclass(frozen=True)
class BlockSpec:
    """A layer's weights before they are placed in a model: its heads and optional MLP."""

    name: str
    heads: tuple[Head, ...]
    mlp: MLPSpec | None = None
    summary: str = ""


def relu_pair(head: Head, printed_paper: bool = False) -> tuple[Head, Head]:
    """The signed pair (Q,K,V,O), (−Q,K,−V,O) that makes ReLU attention bilinear (see module doc).

    ``printed_paper=True`` keeps V₂ = V₁ as in the paper's Eqs. (21)/(28); that computes |s| v.
    """
    return head, head.negated(negate_value=not printed_paper)


def heads_for(attn: str, bilinear: list[Head], printed_paper: bool = False) -> tuple[Head, ...]:
    """Realise bilinear heads for an attention kind: as-is for linear, signed pairs for ReLU."""
    if attn == "linear":
        return tuple(bilinear)
    if attn == "relu":
        return tuple(h for b in bilinear for h in relu_pair(b, printed_paper))
    raise ValueError(f"the Newton construction supports attn 'relu' or 'linear', got {attn!r}")


def doubling_mlp(layout: ResidualLayout, slots: list[str]) -> MLPSpec:
    """MLP adding each listed slot to itself: hidden [ReLU(v), ReLU(−v)], output v (see module doc)."""
    return scaling_mlp(layout, slots, 2)


def scaling_mlp(layout: ResidualLayout, slots: list[str], factor: int) -> MLPSpec:
    """MLP multiplying each listed slot by the integer ``factor`` ≥ 2, exactly.

    Hidden units [ReLU(v), ReLU(−v)] with output weights ±(factor − 1) add (factor − 1)·v to the
    slot (ReLU(v) − ReLU(−v) = v), so the slot becomes factor·v.  The weights are integers.
    """
    if not isinstance(factor, int) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    total = 2 * sum(layout.slot(s).size for s in slots)
    w_in, w_out, at = {}, {}, 0
    for s in slots:
        n = layout.slot(s).size
        w_in[s] = eye(n, total, at) + eye(n, total, at + n, -1.0)
        w_out[s] = (factor - 1) * (eye(n, total, at) + eye(n, total, at + n, -1.0)).T.contiguous()
        at += 2 * n
    return MLPSpec(w_in, w_out)


def _check_slots(layout: ResidualLayout, maps: dict[str, torch.Tensor], axis: int, what: str) -> None:
    for s, m in maps.items():
        size = layout.slot(s).size
        if m.shape[axis] != size:
            raise ValueError(f"{what} map for slot {s!r} has {m.shape[axis]} rows, slot has {size} dims")


def dense_head(layout: ResidualLayout, head: Head, d_head: int) -> dict[str, torch.Tensor]:
    """Head maps as dense matrices W_Q, W_K, W_V (D, Dh) and W_O (Dh, D)."""
    D = layout.width
    out = {}
    for key, maps in (("W_Q", head.q), ("W_K", head.k), ("W_V", head.v)):
        _check_slots(layout, maps, 0, f"{head.label} {key}")
        W = torch.zeros(D, d_head, dtype=DTYPE)
        for s, m in maps.items():
            W[layout[s], : m.shape[1]] += m
        out[key] = W
    _check_slots(layout, head.o, 1, f"{head.label} W_O")
    W = torch.zeros(d_head, D, dtype=DTYPE)
    for s, m in head.o.items():
        W[: m.shape[0], layout[s]] += m
    out["W_O"] = W
    return out


def dense_mlp(layout: ResidualLayout, mlp: MLPSpec, d_mlp: int) -> dict[str, torch.Tensor]:
    D = layout.width
    W_in = torch.zeros(D, d_mlp, dtype=DTYPE)
    W_out = torch.zeros(d_mlp, D, dtype=DTYPE)
    _check_slots(layout, mlp.w_in, 0, "MLP W_in")
    _check_slots(layout, mlp.w_out, 1, "MLP W_out")
    for s, m in mlp.w_in.items():
        W_in[layout[s], : m.shape[1]] += m
    for s, m in mlp.w_out.items():
        W_out[: m.shape[0], layout[s]] += m
    return {"W_in": W_in, "W_out": W_out}
