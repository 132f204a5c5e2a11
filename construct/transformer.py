"""One transformer for every model in the project.

Hand-built Newton networks and trained GPT-2-style regressors are both configurations of
:class:`Transformer`.  Shape glossary (used in comments throughout the project):

    B  batch (prompts)          N  tokens per sequence       D  residual width (d_model)
    H  heads                    Dh per-head width            M  MLP hidden width
    d  data dimension           n  in-context examples       k  Newton steps

Weights are stored per head and never fused (``W_Q[h]`` is ``(D, Dh)``), so hand-set blocks
stay readable.  A layer computes (pre-LayerNorm when enabled)::

    r = r + Attn(LN1(r))        Attn = sum_h  A_h(LN1 r) V_h W_O[h]
    r = r + MLP(LN2(r))         MLP  = act(r W_in + b_in) W_out + b_out

with the attention weights ``A_h = act(Q_h K_h^T * scale)`` where ``act`` is ``softmax``,
``relu`` or ``linear`` (identity), under a full or causal mask and an optional key mask; with
``attn_norm`` each row of ``A_h`` is divided by the number of keys it may see (1/N).

Weight tying: ``schedule[i]`` names the block used at layer ``i`` (default ``range(n_layers)``),
so a looped transformer is just a schedule that repeats a block index.

Every residual stream has a hook: ``blocks.{i}.hook_resid_pre``, ``hook_attn_out``,
``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post`` (and ``hook_pattern``), plus
``hook_embed`` and ``hook_final``.  :meth:`Transformer.run_with_cache` returns ``(out, cache)``
and removes its hooks on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
import torch.nn.functional as F

ATTN_KINDS = ("softmax", "relu", "linear")
MLP_KINDS = ("relu", "gelu")


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a :class:`Transformer`.  Validates itself on construction."""

    d_model: int                    # D, residual width (>= 1)
    n_layers: int                   # layers applied (len(schedule) when a schedule is given)
    n_heads: int                    # H (>= 0; 0 means attention-free)
    d_head: int                     # Dh (>= 1)
    d_in: int                       # width of the input tokens fed to the read-in
    d_out: int                      # width of the read-out
    attn: str = "softmax"           # "softmax" | "relu" | "linear"
    causal: bool = True             # causal (lower-triangular) mask, else full attention
    attn_norm: bool = False         # divide each attention row by its number of keys (1/N)
    attn_scale: float | None = None # score scale; None -> 1/sqrt(Dh) for softmax, else 1
    mlp: str | None = "gelu"        # None | "relu" | "gelu"
    d_mlp: int = 0                  # M, MLP hidden width (0 -> 4 D)
    layernorm: bool = True          # pre-LayerNorm in each layer and before the read-out
    bias: bool = True               # biases in Q/K/V/O, MLP, read-in and read-out
    max_len: int = 0                # learned positional embeddings for this many tokens (0: none)
    n_prefix: int = 0               # fixed prefix tokens prepended after the read-in
    n_blocks: int = 0               # distinct blocks (0 -> n_layers); schedule indexes them
    schedule: tuple[int, ...] = ()  # block index per layer; () -> 0..n_layers-1

    def __post_init__(self) -> None:
        for name in ("d_model", "d_head", "d_in", "d_out"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {v!r}")
        for name in ("n_layers", "n_heads", "d_mlp", "max_len", "n_prefix", "n_blocks"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TransformerConfig.{name} must be a non-negative int, got {v!r}")
        if self.attn not in ATTN_KINDS:
            raise ValueError(f"attn must be one of {ATTN_KINDS}, got {self.attn!r}")
        if self.mlp is not None and self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be None or one of {MLP_KINDS}, got {self.mlp!r}")
        if self.attn == "softmax" and self.attn_norm:
            raise ValueError("attn_norm (1/N) is for relu/linear attention; softmax rows already sum to 1")
        sched = tuple(self.schedule)
        object.__setattr__(self, "schedule", sched)
        if sched:
            if len(sched) != self.n_layers:
                raise ValueError(f"schedule has {len(sched)} entries but n_layers={self.n_layers}")
            nb = self.n_blocks or (max(sched) + 1 if sched else 0)
            if any((not isinstance(s, int)) or s < 0 or s >= nb for s in sched):
                raise ValueError(f"schedule entries must lie in [0, {nb}), got {sched}")
        elif self.n_blocks not in (0, self.n_layers):
            raise ValueError("n_blocks differs from n_layers, so a schedule is required")

    @property
    def blocks_count(self) -> int:
        if self.schedule:
            return self.n_blocks or max(self.schedule) + 1
        return self.n_layers

    @property
    def layer_schedule(self) -> tuple[int, ...]:
        return self.schedule or tuple(range(self.n_layers))

    @property
    def hidden_mlp(self) -> int:
        return self.d_mlp or 4 * self.d_model

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["schedule"] = list(self.schedule)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        from .validate import config_from_dict

        d = dict(d)
        d["schedule"] = tuple(d.get("schedule", ()))
        return config_from_dict(cls, d)


class HookPoint(nn.Module):
    """Identity module that forward hooks attach to (TransformerLens style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        H, D, Dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.zeros(H, D, Dh))
        self.W_K = nn.Parameter(torch.zeros(H, D, Dh))
        self.W_V = nn.Parameter(torch.zeros(H, D, Dh))
        self.W_O = nn.Parameter(torch.zeros(H, Dh, D))
        if cfg.bias:
            self.b_Q = nn.Parameter(torch.zeros(H, Dh))
            self.b_K = nn.Parameter(torch.zeros(H, Dh))
            self.b_V = nn.Parameter(torch.zeros(H, Dh))
            self.b_O = nn.Parameter(torch.zeros(D))
        self.hook_pattern = HookPoint()
        if cfg.attn_scale is not None:
            self.scale = float(cfg.attn_scale)
        else:
            self.scale = 1.0 / math.sqrt(Dh) if cfg.attn == "softmax" else 1.0

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        # x (B, N, D); allowed (B or 1, N, N) bool or None (everything visible)
        q = torch.einsum("bnd,hde->bhne", x, self.W_Q)  # (B, H, N, Dh)
        k = torch.einsum("bnd,hde->bhne", x, self.W_K)
        v = torch.einsum("bnd,hde->bhne", x, self.W_V)
        if self.cfg.bias:
            q = q + self.b_Q[None, :, None, :]
            k = k + self.b_K[None, :, None, :]
            v = v + self.b_V[None, :, None, :]
        s = torch.einsum("bhne,bhme->bhnm", q, k) * self.scale  # (B, H, N, N)
        mask = None if allowed is None else allowed[:, None]  # (B|1, 1, N, N)
        kind = self.cfg.attn
        if kind == "softmax":
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            a = torch.softmax(s, dim=-1)
            a = torch.nan_to_num(a, nan=0.0)  # rows with no visible key
        else:
            a = torch.relu(s) if kind == "relu" else s
            if mask is not None:
                a = a.masked_fill(~mask, 0.0)
            if self.cfg.attn_norm:
                if mask is None:
                    cnt = torch.full((1, 1, s.shape[-2], 1), float(s.shape[-1]), dtype=s.dtype, device=s.device)
                else:
                    cnt = mask.sum(-1, keepdim=True).to(s.dtype).clamp(min=1.0)
                a = a / cnt
        a = self.hook_pattern(a)
        z = torch.einsum("bhnm,bhme->bhne", a, v)  # (B, H, N, Dh)
        out = torch.einsum("bhne,hed->bnd", z, self.W_O)  # (B, N, D)
        if self.cfg.bias:
            out = out + self.b_O
        return out


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        D, M = cfg.d_model, cfg.hidden_mlp
        self.act = cfg.mlp
        self.W_in = nn.Parameter(torch.zeros(D, M))
        self.W_out = nn.Parameter(torch.zeros(M, D))
        self.bias = cfg.bias
        if cfg.bias:
            self.b_in = nn.Parameter(torch.zeros(M))
            self.b_out = nn.Parameter(torch.zeros(D))
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.W_in  # (B, N, M)
        if self.bias:
            h = h + self.b_in
        h = self.hook_post(F.relu(h) if self.act == "relu" else F.gelu(h))
        out = h @ self.W_out  # (B, N, D)
        return out + self.b_out if self.bias else out


class Block(nn.Module):
    """One layer's weights: attention and (optionally) MLP, with optional pre-LayerNorms."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn = Attention(cfg) if cfg.n_heads > 0 else None
        self.mlp = MLP(cfg) if cfg.mlp is not None else None
        self.ln1 = nn.LayerNorm(cfg.d_model) if cfg.layernorm and self.attn is not None else None
        self.ln2 = nn.LayerNorm(cfg.d_model) if cfg.layernorm and self.mlp is not None else None


class Layer(nn.Module):
    """A position in the stack: its hooks, and the (possibly shared) block it runs."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, r: torch.Tensor, block: Block, allowed: torch.Tensor | None) -> torch.Tensor:
        r = self.hook_resid_pre(r)  # (B, N, D)
        if block.attn is not None:
            h = block.ln1(r) if block.ln1 is not None else r
            r = r + self.hook_attn_out(block.attn(h, allowed))
        r = self.hook_resid_mid(r)
        if block.mlp is not None:
            h = block.ln2(r) if block.ln2 is not None else r
            r = r + self.hook_mlp_out(block.mlp(h))
        return self.hook_resid_post(r)


class Transformer(nn.Module):
    """Read-in, a stack of layers, read-out.  ``forward(tokens) -> (B, N, d_out)``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.W_in = nn.Parameter(torch.zeros(cfg.d_in, D))
        self.b_in = nn.Parameter(torch.zeros(D)) if cfg.bias else None
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, D)) if cfg.max_len else None
        self.prefix = nn.Parameter(torch.zeros(cfg.n_prefix, D)) if cfg.n_prefix else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.blocks_count))
        self.layers = nn.ModuleList(Layer() for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D) if cfg.layernorm else None
        self.W_out = nn.Parameter(torch.zeros(D, cfg.d_out))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_out)) if cfg.bias else None
        self.hook_embed = HookPoint()
        self.hook_final = HookPoint()

    # ------------------------------------------------------------------ forward
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read-in: (B, N, d_in) -> residual (B, P+N, D), prefix tokens first."""
        r = tokens @ self.W_in  # (B, N, D)
        if self.b_in is not None:
            r = r + self.b_in
        if self.pos is not None:
            N = r.shape[1]
            if N > self.cfg.max_len:
                raise ValueError(
                    f"sequence of {N} tokens exceeds the model's {self.cfg.max_len} learned positions"
                )
            r = r + self.pos[:N]
        if self.prefix is not None:
            pre = self.prefix.to(r.dtype).expand(r.shape[0], -1, -1)  # (B, P, D)
            r = torch.cat([pre, r], dim=1)
        return r

    def _allowed(self, N: int, key_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """Boolean (B|1, N, N) visibility; None means all visible."""
        allowed = None
        if self.cfg.causal:
            allowed = torch.ones(N, N, dtype=torch.bool, device=device).tril()[None]
        if key_mask is not None:
            km = key_mask[:, None, :]  # (B, 1, N)
            allowed = km if allowed is None else (allowed & km)
            allowed = allowed.expand(-1, N, -1) if allowed.shape[1] == 1 else allowed
        return allowed

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, N, d_in); key_mask (B, N) bool, False hides that token as a key.

        Returns the read-out at every position, (B, P+N, d_out) where P = n_prefix.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"tokens must have shape (B, N, {self.cfg.d_in}), got {tuple(tokens.shape)}"
            )
        r = self.hook_embed(self.embed(tokens))  # (B, P+N, D)
        if key_mask is not None and self.prefix is not None:
            pre = torch.ones(key_mask.shape[0], self.cfg.n_prefix, dtype=torch.bool, device=key_mask.device)
            key_mask = torch.cat([pre, key_mask], dim=1)
        allowed = self._allowed(r.shape[1], key_mask, r.device)
        for layer, b in zip(self.layers, self.cfg.layer_schedule):
            r = layer(r, self.blocks[b], allowed)
        if self.ln_f is not None:
            r = self.ln_f(r)
        r = self.hook_final(r)
        out = r @ self.W_out  # (B, P+N, d_out)
        return out + self.b_out if self.b_out is not None else out

    # ------------------------------------------------------------------ hooks
    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, Callable]] = ()):
        """Attach ``(name, fn(tensor, name) -> tensor|None)`` hooks; removed on exit."""
        points = self.hook_points()
        handles = []
        try:
            for name, fn in fwd_hooks:
                if name not in points:
                    raise KeyError(f"no hook point named {name!r}; see Transformer.hook_points()")
                handles.append(
                    points[name].register_forward_hook(lambda m, i, o, fn=fn, name=name: fn(o, name))
                )
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        names: Callable[[str], bool] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run forward and return ``(out, cache)`` with every hooked activation (filtered by ``names``)."""
        cache: dict[str, torch.Tensor] = {}

        def save(t, name):
            cache[name] = t.detach()

        sel = [n for n in self.hook_points() if names is None or names(n)]
        with self.hooks([(n, save) for n in sel]):
            out = self(tokens, key_mask)
        return out, cache

    def residual_streams(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None,
                         return_output: bool = False):
        """Residual stream after the read-in and after every layer: (L+1, B, P+N, D).

        ``return_output=True`` gives ``(streams, out)`` with the read-out of the same run.
        """
        want = {"hook_embed"} | {f"layers.{i}.hook_resid_post" for i in range(self.cfg.n_layers)}
        out, cache = self.run_with_cache(tokens, key_mask, names=lambda n: n in want)
        streams = torch.stack([cache["hook_embed"]] + [cache[f"layers.{i}.hook_resid_post"] for i in range(self.cfg.n_layers)])
        return (streams, out) if return_output else streams
