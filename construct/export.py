"""Open the project's models in the tools researchers use: TransformerLens and Hugging Face.

* :func:`to_transformer_lens` — a ``transformer_lens`` ``TransformerBridge`` (TransformerLens 4,
  ``TransformerBridge.boot_native``: its own pre-LayerNorm / GELU block, causal or bidirectional)
  holding the weights of a softmax / LayerNorm / GELU model: a Newton network compiled by
  :func:`construct.to_gpt2`, or a trained :class:`~construct.regressor.GargRegressor`.
  Our inputs are continuous vectors, not token ids, so they enter the way TransformerLens
  documents for that: ``bridge(resid, start_at_layer=0)`` takes ``resid`` as the residual stream
  entering block 0.  :func:`tl_residual` builds it (our read-in, positions, and for a compiled
  model the mirror tokens and constant pair) and :func:`tl_predict` reads the prediction off.
  Needs the ``lens`` extra: ``pip install "newton-icl[lens]"``.
* :func:`to_hf` (also ``GargRegressor.to_hf()``) — an :class:`HFRegressor` built on
  ``transformers.GPT2Model`` with Garg et al.'s read-in and read-out (attribute names
  ``_read_in``, ``_backbone``, ``_read_out``, as in their ``TransformerModel``).  Needs the
  ``hf`` extra.
* :func:`from_garg_state_dict` — import Garg et al.'s released format (the ``TransformerModel``
  state dict plus the ``model`` section of their config) into a :class:`GargRegressor`;
  :func:`to_garg_state_dict` writes it.  Pure tensor mapping: needs neither extra.

Weight layouts.  Ours stores heads unfused, ``W_Q[h]`` (D, Dh); TransformerLens's native block
uses ``nn.Linear`` (``q.weight`` (H·Dh, D), head-major) and divides scores by √Dh itself, so the
query is multiplied by √Dh·(our score scale); HF GPT-2 uses ``Conv1D`` (``x @ W``) with q, k, v
side by side in ``c_attn`` (D, 3D).  A looped model's shared block is copied into every layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .transformer import Transformer

__all__ = [
    "to_transformer_lens", "tl_residual", "tl_predict", "to_hf", "HFRegressor",
    "from_garg_state_dict", "to_garg_state_dict",
]


def _need(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{module} is not installed; install the optional extra: pip install \"newton-icl[{extra}]\" ({e})"
        ) from None


def _check_gpt2_block(tf: Transformer, what: str) -> None:
    c = tf.cfg
    if c.attn != "softmax" or not c.layernorm or c.mlp not in ("gelu", "gelu_new") or not c.bias or c.n_heads < 1:
        raise TypeError(
            f"{what} needs softmax attention, LayerNorm, a GELU MLP and biases; this model has attn={c.attn!r}, "
            f"layernorm={c.layernorm}, mlp={c.mlp!r}, bias={c.bias}.  Compile an exact Newton network first "
            "with construct.to_gpt2(model, tol, scale=...)"
        )


def _compiled(model) -> bool:
    from .gpt2 import GPT2Transformer

    return isinstance(model.transformer, GPT2Transformer)


# ------------------------------------------------------------------------------ TransformerLens
def to_transformer_lens(model, n_ctx: int | None = None):
    """A TransformerLens ``TransformerBridge`` with ``model``'s weights (see the module docstring).

    ``n_ctx``: positions the bridge allows (default: the trained model's ``max_len``; 1024 for a
    compiled model, which has no positions — its bridge's position table is zero).
    """
    _need("transformer_lens", "lens")
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)

    tf: Transformer = model.transformer
    _check_gpt2_block(tf, "to_transformer_lens")
    c = tf.cfg
    if n_ctx is None:
        n_ctx = c.max_len or 1024
    if c.max_len and n_ctx > c.max_len:
        raise ValueError(f"n_ctx={n_ctx} exceeds the model's {c.max_len} learned positions")
    H, Dh, D, dt = c.n_heads, c.d_head, c.d_model, tf.W_in.dtype
    tcfg = TransformerBridgeConfig(
        n_layers=c.n_layers, d_model=D, d_head=Dh, n_heads=H, d_mlp=c.hidden_mlp, n_ctx=n_ctx,
        d_vocab=1, d_vocab_out=c.d_out, act_fn=c.mlp, normalization_type="LN", eps=1e-5,
        attention_dir="causal" if c.causal else "bidirectional", positional_embedding_type="standard",
    )
    bridge = TransformerBridge.boot_native(tcfg, dtype=dt)
    q_mult = tf.blocks[0].attn.scale * math.sqrt(Dh)  # TL divides scores by √Dh; we multiply by `scale`
    sd: dict[str, torch.Tensor] = {
        "embed.weight": torch.zeros(1, D, dtype=dt),
        "pos_embed.weight": torch.zeros(n_ctx, D, dtype=dt),
        "ln_final.weight": tf.ln_f.weight, "ln_final.bias": tf.ln_f.bias,
        "unembed.weight": tf.W_out.T, "unembed.bias": tf.b_out,
    }
    if tf.pos is not None:
        sd["pos_embed.weight"][: tf.pos.shape[0]] = tf.pos.detach()[:n_ctx]
    for layer, b in enumerate(c.layer_schedule):
        blk, p = tf.blocks[b], f"blocks.{layer}."
        a, m = blk.attn, blk.mlp
        sd.update({
            p + "ln1.weight": blk.ln1.weight, p + "ln1.bias": blk.ln1.bias,
            p + "ln2.weight": blk.ln2.weight, p + "ln2.bias": blk.ln2.bias,
            p + "attn.q.weight": (a.W_Q * q_mult).permute(0, 2, 1).reshape(H * Dh, D),
            p + "attn.q.bias": (a.b_Q * q_mult).reshape(H * Dh),
            p + "attn.k.weight": a.W_K.permute(0, 2, 1).reshape(H * Dh, D), p + "attn.k.bias": a.b_K.reshape(H * Dh),
            p + "attn.v.weight": a.W_V.permute(0, 2, 1).reshape(H * Dh, D), p + "attn.v.bias": a.b_V.reshape(H * Dh),
            p + "attn.o.weight": a.W_O.reshape(H * Dh, D).T, p + "attn.o.bias": a.b_O,
            p + "mlp.in.weight": m.W_in.T, p + "mlp.in.bias": m.b_in,
            p + "mlp.out.weight": m.W_out.T, p + "mlp.out.bias": m.b_out,
        })
    sd = {k: v.detach().to(dt).clone() for k, v in sd.items()}
    missing, unexpected = bridge.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("IGNORE", "causal_mask"))]
    if missing or unexpected:  # pragma: no cover - guards a TransformerLens layout change
        raise RuntimeError(f"TransformerLens layout changed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bridge.eval()
    return bridge


@torch.no_grad()
def tl_residual(model, X, y, x_query) -> torch.Tensor:
    """The residual stream entering block 0 for ``bridge(resid, start_at_layer=0)``: (B, T, D).

    Equal to our ``hook_embed``: read-in (+ learned positions for a trained model; + ridge prefix,
    √N, mirror tokens and the constant pair for a compiled one).
    """
    tf = model.transformer
    if _compiled(model):
        X, y, x_query = model._check(X, y, x_query)
        feats, km, _ = tf.embedded(model.encode(X, y, x_query))
        return tf.embed(feats)
    from .regressor import GargRegressor, check_query, check_prompt, pad_dims

    if not isinstance(model, GargRegressor):
        raise TypeError(f"tl_residual takes a compiled Newton model or a GargRegressor, got {type(model).__name__}")
    X, y = check_prompt(X, y, model.cfg.d)
    x_query = check_query(x_query, X)
    tokens = model._tokens(X, y, model.cfg.n_points - 1)
    p = tf.W_in
    xq = pad_dims(x_query.to(device=p.device, dtype=p.dtype), model.cfg.d)[:, None, :]
    return tf.embed(torch.cat([tokens, xq], dim=1))


@torch.no_grad()
def tl_predict(bridge, model, X, y, x_query) -> torch.Tensor:
    """``model.predict(X, y, x_query)`` computed by the TransformerLens bridge: (B,)."""
    resid = tl_residual(model, X, y, x_query)
    out = bridge(resid, start_at_layer=0)  # (B, T, d_out)
    if _compiled(model):
        M = resid.shape[1] // 2  # the query is the last original token; mirrors follow
        pred = out[:, M - 1, 0]
        if model.transformer.knobs.sqrt_n:
            pred = pred / math.sqrt(M)
        return pred
    return out[:, -1, 0]


# ------------------------------------------------------------------------------ Hugging Face
class HFRegressor(nn.Module):
    """Garg et al.'s ``TransformerModel``: ``_read_in`` → ``transformers.GPT2Model`` → ``_read_out``."""

    def __init__(self, cfg):
        super().__init__()
        transformers = _need("transformers", "hf")
        self.cfg = cfg
        conf = transformers.GPT2Config(
            n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            n_inner=cfg.d_mlp or None, activation_function=cfg.activation, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0,
            embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, use_cache=False, vocab_size=1,
        )
        self._read_in = nn.Linear(cfg.d, cfg.d_model)
        self._backbone = transformers.GPT2Model(conf)
        self._read_out = nn.Linear(cfg.d_model, 1)
        self.eval()

    def forward(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .regressor import check_prompt, interleave, pad_dims

        X, y = check_prompt(X, y, self.cfg.d)
        if X.shape[1] > self.cfg.n_points:
            raise ValueError(f"prompt has {X.shape[1]} examples; the model has positions for {self.cfg.n_points}")
        p = self._read_in.weight
        zs = interleave(pad_dims(X.to(p.dtype), self.cfg.d), y.to(p.dtype))  # (B, 2n, d)
        h = self._backbone(inputs_embeds=self._read_in(zs)).last_hidden_state  # (B, 2n, D)
        return self._read_out(h)[:, ::2, 0]

    @torch.no_grad()
    def predict_all(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """X (B, n, d), y (B, n) -> (B, n), as :meth:`GargRegressor.predict_all`."""
        return self.forward(X, y)


def to_garg_state_dict(model) -> dict[str, torch.Tensor]:
    """A :class:`GargRegressor`'s weights in Garg et al.'s ``TransformerModel`` state-dict layout."""
    tf, c = model.transformer, model.cfg
    H, Dh, D = c.n_heads, c.d_model // c.n_heads, c.d_model
    sd = {
        "_read_in.weight": tf.W_in.T, "_read_in.bias": tf.b_in,
        "_backbone.wte.weight": torch.zeros(1, D, dtype=tf.W_in.dtype),
        "_backbone.wpe.weight": tf.pos,
        "_backbone.ln_f.weight": tf.ln_f.weight, "_backbone.ln_f.bias": tf.ln_f.bias,
        "_read_out.weight": tf.W_out.T, "_read_out.bias": tf.b_out,
    }
    for l, blk in enumerate(tf.blocks):
        a, m, p = blk.attn, blk.mlp, f"_backbone.h.{l}."
        qkv = [W.permute(1, 0, 2).reshape(D, H * Dh) for W in (a.W_Q, a.W_K, a.W_V)]  # (D, D) each, head-major
        sd.update({
            p + "ln_1.weight": blk.ln1.weight, p + "ln_1.bias": blk.ln1.bias,
            p + "ln_2.weight": blk.ln2.weight, p + "ln_2.bias": blk.ln2.bias,
            p + "attn.c_attn.weight": torch.cat(qkv, dim=1),
            p + "attn.c_attn.bias": torch.cat([a.b_Q.reshape(-1), a.b_K.reshape(-1), a.b_V.reshape(-1)]),
            p + "attn.c_proj.weight": a.W_O.reshape(H * Dh, D), p + "attn.c_proj.bias": a.b_O,
            p + "mlp.c_fc.weight": m.W_in, p + "mlp.c_fc.bias": m.b_in,
            p + "mlp.c_proj.weight": m.W_out, p + "mlp.c_proj.bias": m.b_out,
        })
    return {k: v.detach().clone() for k, v in sd.items()}


GARG_CONFIG_KEYS = ("n_dims", "n_positions", "n_embd", "n_layer", "n_head")


def from_garg_state_dict(state_dict: dict, config: dict, activation: str = "gelu_new"):
    """Import Garg et al.'s released format into a :class:`GargRegressor`.

    ``state_dict``: their ``TransformerModel`` weights (``state["model_state_dict"]`` of their
    ``state.pt``, loaded by the caller — this project never unpickles); ``config``: the
    ``model`` section of their ``config.yaml`` (``n_dims``, ``n_positions``, ``n_embd``,
    ``n_layer``, ``n_head``).  Their models use HF GPT-2's default ``gelu_new``.
    Raises ``ValueError`` naming a missing key or a tensor of the wrong shape.
    """
    from .regressor import GargConfig, GargRegressor

    missing = [k for k in GARG_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"Garg config lacks {missing}; expected the 'model' section with {list(GARG_CONFIG_KEYS)}")
    cfg = GargConfig(d=int(config["n_dims"]), n_points=int(config["n_positions"]), n_layers=int(config["n_layer"]),
                     n_heads=int(config["n_head"]), d_model=int(config["n_embd"]), activation=activation)
    model = GargRegressor(cfg)
    sd = {k: v for k, v in state_dict.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # HF causal buffers
    want = to_garg_state_dict(model)
    absent = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if absent or extra:
        raise ValueError(f"not a Garg et al. TransformerModel state dict: missing {absent[:5]}, unexpected {extra[:5]}")
    for k, v in want.items():
        if k == "_backbone.wpe.weight" and sd[k].shape[0] >= v.shape[0]:
            continue
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"Garg state dict tensor {k!r} has shape {tuple(sd[k].shape)}, config implies {tuple(v.shape)}")
    dt = sd["_read_in.weight"].dtype if sd["_read_in.weight"].dtype in (torch.float32, torch.float64) else torch.float32
    model = model.to(dt)  # keep the checkpoint's precision
    tf, c = model.transformer, cfg
    H, Dh, D = c.n_heads, c.d_model // c.n_heads, c.d_model
    g = lambda k: sd[k].detach().to(dt)  # noqa: E731
    with torch.no_grad():
        tf.W_in.copy_(g("_read_in.weight").T)
        tf.b_in.copy_(g("_read_in.bias"))
        tf.pos.copy_(g("_backbone.wpe.weight")[: cfg.max_len])
        tf.ln_f.weight.copy_(g("_backbone.ln_f.weight"))
        tf.ln_f.bias.copy_(g("_backbone.ln_f.bias"))
        tf.W_out.copy_(g("_read_out.weight").T)
        tf.b_out.copy_(g("_read_out.bias"))
        for l, blk in enumerate(tf.blocks):
            a, m, p = blk.attn, blk.mlp, f"_backbone.h.{l}."
            blk.ln1.weight.copy_(g(p + "ln_1.weight")); blk.ln1.bias.copy_(g(p + "ln_1.bias"))
            blk.ln2.weight.copy_(g(p + "ln_2.weight")); blk.ln2.bias.copy_(g(p + "ln_2.bias"))
            W, bias = g(p + "attn.c_attn.weight"), g(p + "attn.c_attn.bias")  # (D, 3D), (3D,)
            for i, (Wt, bt) in enumerate(((a.W_Q, a.b_Q), (a.W_K, a.b_K), (a.W_V, a.b_V))):
                Wt.copy_(W[:, i * D:(i + 1) * D].reshape(D, H, Dh).permute(1, 0, 2))
                bt.copy_(bias[i * D:(i + 1) * D].reshape(H, Dh))
            a.W_O.copy_(g(p + "attn.c_proj.weight").reshape(H, Dh, D))
            a.b_O.copy_(g(p + "attn.c_proj.bias"))
            m.W_in.copy_(g(p + "mlp.c_fc.weight")); m.b_in.copy_(g(p + "mlp.c_fc.bias"))
            m.W_out.copy_(g(p + "mlp.c_proj.weight")); m.b_out.copy_(g(p + "mlp.c_proj.bias"))
    return model


def to_hf(model) -> HFRegressor:
    """A :class:`GargRegressor` as an :class:`HFRegressor` on ``transformers.GPT2Model``."""
    from .regressor import GargRegressor

    if not isinstance(model, GargRegressor):
        raise TypeError(f"to_hf takes a GargRegressor, got {type(model).__name__}")
    hf = HFRegressor(model.cfg).to(model.transformer.W_in.dtype)
    sd = to_garg_state_dict(model)
    own = hf.state_dict()
    sd["_backbone.wte.weight"] = own["_backbone.wte.weight"].zero_()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:  # pragma: no cover - guards a transformers layout change
        raise RuntimeError(f"transformers GPT-2 layout changed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf.eval()
