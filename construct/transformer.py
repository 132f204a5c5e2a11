"""One transformer for every model in the project.

Hand-built Newton networks and trained GPT-2-style regressors are both configurations of
:class:`Transformer`.  Shape glossary (used in comments throughout the project):

    B  batch (prompts)          N  tokens per sequence       D  residual width (d_model)
    H  heads                    Dh per-head width            M  MLP hidden width
    d  data dimension           n  in-context examples       k  Newton steps

Weights are stored per head and never fused (``W_Q[h]`` is ``(D, Dh)``), so hand-set blocks
stay readable; the forward pass concatenates them into one (3·H·Dh, D) projection on the fly.
A layer computes (pre-LayerNorm when enabled)::

    r = r + Attn(LN1(r))        Attn = sum_h  A_h(LN1 r) V_h W_O[h]
    r = r + MLP(LN2(r))         MLP  = act(r W_in + b_in) W_out + b_out

with the attention weights ``A_h = act(Q_h K_h^T * scale)`` where ``act`` is ``softmax``,
``relu`` or ``linear`` (identity), under a full or causal mask and an optional key mask; with
``attn_norm`` each row of ``A_h`` is divided by the number of keys it may see (1/N).

Fast paths (each tested against :mod:`construct.reference_forward`, the previous
implementation, to 1e-12 in float64): softmax attention runs through
``torch.nn.functional.scaled_dot_product_attention`` unless a hook wants the scores or the
pattern; relu/linear attention hides keys by zeroing them (their scores are then exactly 0) and
folds the score scale and the 1/N row count into the queries, so no elementwise pass over the
(B, H, N, N) scores remains besides the activation itself.

Weight tying: ``schedule[i]`` names the block used at layer ``i`` (default ``range(n_layers)``),
so a looped transformer is just a schedule that repeats a block index.  Weights live in
``blocks[b]``; hooks live on the layers, so a looped model has one hook (and one cache entry)
per layer.

Hooks use TransformerLens's names and conventions (:mod:`construct.hooks`):
``blocks.{l}.hook_resid_pre/mid/post``, ``blocks.{l}.attn.hook_q/k/v/attn_scores/pattern/z``,
``blocks.{l}.mlp.hook_pre/post``, ``blocks.{l}.hook_attn_out/mlp_out``, ``hook_embed`` and
``ln_final.hook_normalized``.  :meth:`Transformer.run_with_cache` returns ``(out, cache)`` and
removes its hooks on exit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from .dense import linear
from .hooks import ActivationCache, HookedMixin, HookPoint, act_name, name_hook_points  # noqa: F401  (re-exported)

ATTN_KINDS = ("softmax", "relu", "linear")
MLP_KINDS = ("relu", "gelu", "gelu_new")  # gelu: exact xΦ(x); gelu_new: GPT-2's tanh approximation


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
    mlp: str | None = "gelu"        # None | "relu" | "gelu" (exact) | "gelu_new" (tanh approx.)
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
    def score_scale(self) -> float:
        """The factor on Q Kᵀ: ``attn_scale``, else 1/sqrt(Dh) for softmax and 1 for relu/linear."""
        if self.attn_scale is not None:
            return float(self.attn_scale)
        return 1.0 / math.sqrt(self.d_head) if self.attn == "softmax" else 1.0

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


class _AttnCtx:
    """Masking facts of one forward pass, computed once and shared by every layer.

    ``key_mult`` (B, N, 1, 1): 1 for visible keys, 0 for hidden ones (relu/linear attention zero
    the hidden keys, so their scores are exactly 0 and contribute nothing); ``row_scale``: the
    score scale with the 1/N row normalisation folded in, a float or (B|1, N, 1, 1), applied to the
    queries (act(c s) = c act(s) for c > 0, relu and identity); ``causal`` (N, N) bool lower
    triangle or None; ``allowed`` (B|1, 1, N, N) bool for softmax with a key mask.
    """

    __slots__ = ("key_mult", "row_scale", "causal", "allowed", "sdpa_causal", "empty_rows")

    def __init__(self, cfg: TransformerConfig, N: int, key_mask: torch.Tensor | None, dtype, device):
        scale = cfg.score_scale
        tril = torch.ones(N, N, dtype=torch.bool, device=device).tril() if cfg.causal else None
        self.key_mult = self.allowed = None
        self.causal = tril
        self.sdpa_causal = cfg.causal and key_mask is None
        self.empty_rows = False
        if cfg.attn == "softmax":
            self.row_scale = scale
            if key_mask is not None:
                allowed = key_mask[:, None, None, :]  # (B, 1, 1, N)
                self.allowed = allowed & tril if tril is not None else allowed
                self.empty_rows = True
            return
        if key_mask is not None:
            self.key_mult = key_mask.to(dtype)[:, :, None, None]  # (B, N, 1, 1)
        if cfg.attn_norm:
            if key_mask is None:
                cnt = (torch.arange(1, N + 1, dtype=dtype, device=device)[None] if tril is not None
                       else torch.full((1, 1), float(N), dtype=dtype, device=device))  # (1, N|1)
            else:
                km = key_mask.to(dtype)
                cnt = km.cumsum(-1) if tril is not None else km.sum(-1, keepdim=True)  # (B, N|1)
            self.row_scale = (scale / cnt.clamp(min=1.0))[:, :, None, None]  # (B|1, N|1, 1, 1)
        else:
            self.row_scale = scale


def _used_runs(W: torch.Tensor) -> list[tuple[int, int]] | None:
    """Contiguous runs [a, b) of the input columns that a (out, in) weight reads.

    None means "read everything": under autograd (training), or when the zero columns are under
    a quarter of the input or split into more than 4 runs.  Hand-set weights read a few slots, so
    inference on them skips the rest (the skipped terms are exact zeros times finite inputs).
    """
    if torch.is_grad_enabled():
        return None
    used = (W != 0).any(dim=0).tolist()
    if sum(used) > 0.75 * len(used):
        return None
    runs, start = [], None
    for i, u in enumerate(used + [False]):
        if u and start is None:
            start = i
        elif not u and start is not None:
            runs.append((start, i))
            start = None
    return runs if len(runs) <= 4 else None


def _linear_in(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, W, b)`` for W (out, in), reading only the input slots W uses."""
    runs = _used_runs(W)
    if runs is None or not x.is_contiguous():
        return linear(x, W, b)
    x2 = x.reshape(-1, x.shape[-1])  # (B·N, in)
    out = b.expand(x2.shape[0], -1).clone() if b is not None else x2.new_zeros(x2.shape[0], W.shape[0])
    for a0, a1 in runs:  # strided views, no copies: out += x[:, a0:a1] W[:, a0:a1]ᵀ
        out.addmm_(x2[:, a0:a1], W[:, a0:a1].t())
    return out.view(*x.shape[:-1], W.shape[0])


class Attention(nn.Module):
    """Per-head weights ``W_Q[h]`` (D, Dh) ... ``W_O[h]`` (Dh, D); the forward fuses them on the fly."""

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
        self.scale = cfg.score_scale

    def qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The per-head weights as one (3·H·Dh, D) matrix (and bias) for a single projection."""
        W = torch.cat([self.W_Q, self.W_K, self.W_V], 0)  # (3H, D, Dh)
        b = torch.cat([self.b_Q, self.b_K, self.b_V], 0).reshape(-1) if self.cfg.bias else None
        return W.transpose(1, 2).reshape(-1, W.shape[1]), b

    def forward_at(self, x: torch.Tensor, at: slice, causal: bool) -> torch.Tensor:
        """Softmax attention output at the query positions ``at`` only (keys and values at all N).

        For the last layer of a read-out at some positions (training); the caller checks that no
        hook is active and there is no key mask.  x (B, N, D) -> (B, n, D).
        """
        B, N, _ = x.shape
        H, Dh, HD = self.cfg.n_heads, self.cfg.d_head, self.cfg.n_heads * self.cfg.d_head
        W, b = self.qkv_weight()
        bq, bkv = (b[:HD], b[HD:]) if b is not None else (None, None)
        q = linear(x[:, at], W[:HD], bq)  # (B, n, H·Dh)
        k, v = linear(x, W[HD:], bkv).view(B, N, 2, H, Dh).unbind(2)  # each (B, N, H, Dh)
        pos = torch.arange(N, device=x.device)
        mask = pos[None, :] <= pos[at][:, None] if causal else None  # (n, N): key j visible to query i
        z = F.scaled_dot_product_attention(  # (B, H, n, Dh)
            q.view(B, -1, H, Dh).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            scale=self.cfg.score_scale)
        return linear(z.transpose(1, 2).reshape(B, -1, HD), self.W_O.reshape(HD, -1).t(),  # (B, n, D)
                      self.b_O if self.cfg.bias else None)

    def forward(self, x: torch.Tensor, ctx: _AttnCtx, hk: "AttnHooks") -> torch.Tensor:
        B, N, _ = x.shape  # x (B, N, D)
        H, Dh, kind = self.cfg.n_heads, self.cfg.d_head, self.cfg.attn
        W, b = self.qkv_weight()
        q, k, v = _linear_in(x, W, b).view(B, N, 3, H, Dh).unbind(2)  # each (B, N, H, Dh)
        q, k, v = hk.hook_q(q), hk.hook_k(k), hk.hook_v(v)
        if kind == "softmax" and not (hk.hook_attn_scores.active or hk.hook_pattern.active):
            z = F.scaled_dot_product_attention(  # (B, H, N, Dh)
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=ctx.allowed,
                is_causal=ctx.sdpa_causal, scale=ctx.row_scale)
            if ctx.empty_rows:
                z = torch.nan_to_num(z, nan=0.0)  # rows with no visible key
        else:
            if not isinstance(ctx.row_scale, float) or ctx.row_scale != 1.0:
                q = q * ctx.row_scale
            if ctx.key_mult is not None:
                k = k * ctx.key_mult
            s = q.transpose(1, 2) @ k.permute(0, 2, 3, 1)  # (B, H, N, N)
            if kind == "softmax":
                if ctx.allowed is not None:
                    s = s.masked_fill(~ctx.allowed, float("-inf"))
                elif ctx.causal is not None:
                    s = s.masked_fill(~ctx.causal, float("-inf"))
                s = hk.hook_attn_scores(s)
                a = torch.softmax(s, dim=-1)
                if ctx.empty_rows:
                    a = torch.nan_to_num(a, nan=0.0)
            else:
                if ctx.causal is not None:
                    s = s.masked_fill(~ctx.causal, 0.0)
                if hk.hook_attn_scores.active:  # the cache keeps s: no in-place activation
                    s = hk.hook_attn_scores(s)
                    a = torch.relu(s) if kind == "relu" else s
                else:  # s is a fresh matmul output that autograd does not need: ReLU in place
                    a = s.relu_() if kind == "relu" else s
            a = hk.hook_pattern(a)
            z = a @ v.transpose(1, 2)  # (B, H, N, Dh)
        z = hk.hook_z(z.transpose(1, 2))  # (B, N, H, Dh)
        return linear(z.reshape(B, N, H * Dh), self.W_O.reshape(H * Dh, -1).t(),  # (B, N, D)
                      self.b_O if self.cfg.bias else None)


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

    def forward(self, x: torch.Tensor, hk: "MLPHooks") -> torch.Tensor:
        h = hk.hook_pre(_linear_in(x, self.W_in.t(), self.b_in if self.bias else None))  # (B, N, M)
        if self.act == "relu":  # in place unless a hook holds the pre-activation
            h = hk.hook_post(torch.relu(h) if hk.hook_pre.active else h.relu_())
        else:
            h = hk.hook_post(F.gelu(h, approximate="tanh" if self.act == "gelu_new" else "none"))
        return linear(h, self.W_out.t(), self.b_out if self.bias else None)  # (B, N, D)


class Block(nn.Module):
    """One weight block: attention and (optionally) MLP, with optional pre-LayerNorms.

    A looped model runs one block at several layers; hooks live on the layers, not here.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn = Attention(cfg) if cfg.n_heads > 0 else None
        self.mlp = MLP(cfg) if cfg.mlp is not None else None
        self.ln1 = nn.LayerNorm(cfg.d_model) if cfg.layernorm and self.attn is not None else None
        self.ln2 = nn.LayerNorm(cfg.d_model) if cfg.layernorm and self.mlp is not None else None


class AttnHooks(nn.Module):
    def __init__(self):
        super().__init__()
        for n in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{n}", HookPoint())


class MLPHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()


class Layer(nn.Module):
    """A position in the stack: its own hooks (``blocks.{l}.*``) and the (possibly shared) block it runs."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        if cfg.n_heads > 0:
            self.attn = AttnHooks()
            self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        if cfg.mlp is not None:
            self.mlp = MLPHooks()
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def hooked(self) -> bool:
        """Whether any hook of this layer is active."""
        return any(m.active for m in self.modules() if isinstance(m, HookPoint))

    def forward(self, r: torch.Tensor, block: Block, ctx: _AttnCtx, at: slice | None = None) -> torch.Tensor:
        """One layer; ``at`` (no hooks, softmax, no key mask): the output only at those positions."""
        r = self.hook_resid_pre(r)  # (B, N, D)
        if block.attn is not None:
            h = block.ln1(r) if block.ln1 is not None else r
            if at is None:
                r = r + self.hook_attn_out(block.attn(h, ctx, self.attn))
            else:  # (B, n, D)
                r = r[:, at] + block.attn.forward_at(h, at, ctx.sdpa_causal)
        elif at is not None:
            r = r[:, at]
        r = self.hook_resid_mid(r)
        if block.mlp is not None:
            h = block.ln2(r) if block.ln2 is not None else r
            r = r + self.hook_mlp_out(block.mlp(h, self.mlp))
        return self.hook_resid_post(r)


class _Final(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_normalized = HookPoint()


class _CountingSink:
    """Passes each residual stream on to ``sink.append`` and counts them (:meth:`Transformer.run_streams`)."""

    __slots__ = ("sink", "n")

    def __init__(self, sink):
        self.sink, self.n = sink, 0

    def append(self, h: torch.Tensor) -> None:
        self.n += 1
        self.sink.append(h)


def _torch_hooked(*modules: nn.Module) -> bool:
    """Whether a forward (pre-)hook sits on ``modules`` or their submodules, or on every module
    (``torch.nn.modules.module.register_module_forward_hook``): a TransformerLens-style hook (an
    active :class:`HookPoint` is one with a forward hook) or a plain torch hook on the last layer
    would see the trimmed shapes of a read slice, so the full last layer runs then."""
    from torch.nn.modules import module as _module

    if getattr(_module, "_global_forward_hooks", None) or getattr(_module, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for mod in modules for m in mod.modules())


class Transformer(HookedMixin, nn.Module):
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
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D) if cfg.layernorm else None
        self.W_out = nn.Parameter(torch.zeros(D, cfg.d_out))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_out)) if cfg.bias else None
        self.hook_embed = HookPoint()
        self.ln_final = _Final()
        self._hook_dict = name_hook_points(self)
        self._keep = None  # set by run_streams: forward hands each residual stream to its append()

    def _hook_host(self) -> nn.Module:
        return self

    def _hooked_run(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self(tokens, key_mask)

    def run_with_cache(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None, names=None, *,
                       names_filter=None) -> tuple[torch.Tensor, ActivationCache]:
        """``(out, cache)`` for ``forward(tokens, key_mask)``; ``names`` is the deprecated ``names_filter``."""
        return HookedMixin.run_with_cache(self, tokens, key_mask, names_filter=names_filter, names=names)

    # ------------------------------------------------------------------ forward
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read-in: (B, N, d_in) -> residual (B, P+N, D), prefix tokens first."""
        r = linear(tokens, self.W_in.t(), self.b_in)  # (B, N, D)
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

    def _trims(self, key_mask: torch.Tensor | None) -> bool:
        """Whether a read-out at some positions may run the last layer at those positions only.

        Only while autograd records (training; inference keeps the full last layer, so its
        results are bit for bit those of a full run), for softmax attention without a key mask,
        and when no hook of the last layer or the final LayerNorm is active, TransformerLens-style or
        a plain torch forward hook on the last layer's modules (they would see fewer positions).
        The other positions of the last layer feed nothing that is read.
        """
        c = self.cfg
        return (torch.is_grad_enabled() and c.attn == "softmax" and key_mask is None and c.n_layers > 0
                and not _torch_hooked(self.layers[-1], self.blocks[c.layer_schedule[-1]], self.ln_final))

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None,
                read: slice | None = None) -> torch.Tensor:
        """tokens (B, N, d_in); key_mask (B, N) bool, False hides that token as a key.

        Returns the read-out at every position, (B, P+N, d_out) where P = n_prefix, or with
        ``read`` (a slice of those P+N positions) only there, (B, n, d_out).  In training a read
        slice skips the last layer's queries, attention output and MLP at the other positions
        (keys and values are still computed everywhere); the values are the same products.
        """
        if read is not None and not isinstance(read, slice):
            raise TypeError(f"read must be a slice of token positions, got {type(read).__name__}")
        if tokens.dim() != 3 or tokens.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"tokens must have shape (B, N, {self.cfg.d_in}), got {tuple(tokens.shape)}"
            )
        keep = self._keep
        r = self.hook_embed(self.embed(tokens))  # (B, P+N, D)
        if keep is not None:
            keep.append(r.detach())
        if key_mask is not None and self.prefix is not None:
            pre = torch.ones(key_mask.shape[0], self.cfg.n_prefix, dtype=torch.bool, device=key_mask.device)
            key_mask = torch.cat([pre, key_mask], dim=1)
        ctx = _AttnCtx(self.cfg, r.shape[1], key_mask, r.dtype, r.device)
        trim = read is not None and keep is None and self._trims(key_mask)
        last = self.cfg.n_layers - 1
        for i, (layer, b) in enumerate(zip(self.layers, self.cfg.layer_schedule)):
            r = layer(r, self.blocks[b], ctx, read if trim and i == last else None)
            if keep is not None:
                keep.append(r.detach())
        late = read is not None and not trim and self.ln_final.hook_normalized.active  # the hook sees every position
        if read is not None and not trim and not late:
            r = r[:, read]
        if self.ln_f is not None:
            r = self.ln_f(r)
        r = self.ln_final.hook_normalized(r)
        if late:
            r = r[:, read]
        return linear(r, self.W_out.t(), self.b_out)  # (B, P+N or n, d_out)

    # ------------------------------------------------------------------ hooks
    def run_streams(self, tokens: torch.Tensor, key_mask: torch.Tensor | None, sink) -> torch.Tensor:
        """``self(tokens, key_mask)`` (the read-out (B, P+N, d_out)), handing the residual stream after
        the read-in and after every layer to ``sink.append`` as the loop produces it: L + 1 detached
        tensors (B, P+N, D), what the hooks ``hook_embed`` / ``blocks.{l}.hook_resid_post`` see
        (attached hooks still run; a subclass's ``forward`` is called as usual), without hook
        machinery.  ``sink``: a list, or anything with ``append`` (e.g. a checker that reads each
        stream while it is still in cache and keeps none of them).
        """
        counted = _CountingSink(sink)
        outer, self._keep = self._keep, counted  # a run nested in a hook keeps its own sink
        try:
            out = self(tokens, key_mask)
        finally:
            self._keep = outer
        if counted.n != self.cfg.n_layers + 1:  # e.g. a subclass that runs the stack twice
            raise RuntimeError(f"forward produced {counted.n} residual streams, expected {self.cfg.n_layers + 1}")
        return out

    def residual_streams(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None,
                         return_output: bool = False, stack: bool = True):
        """Residual stream after the read-in and after every layer: (L+1, B, P+N, D).

        ``return_output=True`` gives ``(streams, out)`` with the read-out of the same run;
        ``stack=False`` gives the L + 1 streams as a list (no copy into one tensor).
        The streams are what ``run_with_cache`` caches at ``hook_embed`` and
        ``blocks.{l}.hook_resid_post`` (attached hooks still run, and a subclass's ``forward`` is
        called as usual), collected by the forward loop itself instead of through cache hooks.
        """
        streams: list[torch.Tensor] = []
        out = self.run_streams(tokens, key_mask, streams)
        streams = torch.stack(streams) if stack else streams
        return (streams, out) if return_output else streams
