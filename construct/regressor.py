"""GPT-2-style in-context regressor (Garg et al. 2022) on the project's one :class:`Transformer`.

A prompt of n examples ``(x_i, y_i)`` becomes 2n tokens of width d that interleave ``x_i`` and
``(y_i, 0, ..., 0)``::

    tokens = [x_0, (y_0,0..), x_1, (y_1,0..), ..., x_{n-1}, (y_{n-1},0..)]     # (B, 2n, d)

The transformer is causal, so the read-out at the token of ``x_t`` (position 2t) sees only
``x_0..x_t`` and ``y_0..y_{t-1}``: it is the model's prediction of ``y_t`` from the first t
examples.  :meth:`GargRegressor.predict_all` returns these n predictions, (B, n).

Architecture (the GPT-2 recipe as Garg et al. use it through HuggingFace ``GPT2Model``):
softmax causal attention, pre-LayerNorm, GELU MLP of width 4D, learned positions for
``max_len = 2 * n_points`` tokens, a linear read-in ``d -> D`` and read-out ``D -> 1``, no
dropout.  Initialisation follows GPT-2: N(0, 0.02) for attention/MLP/position weights, output
projections scaled by ``1/sqrt(2 L)``, zero biases, and PyTorch's ``nn.Linear`` default for the
read-in and read-out.

Curriculum over dimensions (Garg convention): a prompt with d' < d active dimensions is passed
zero-padded to width d; :meth:`predict_all` pads narrower inputs itself.

Shapes: B prompts, n examples, d data dim, D = d_model, L layers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from construct.checkpoint import SavableModel, register_kind
from construct.hooks import HookedMixin
from construct.validate import as_tensor, config_from_dict
from construct.transformer import Transformer, TransformerConfig


ACTIVATIONS = ("gelu", "gelu_new")


def _check_pos_int(name: str, v, minimum: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"GargConfig.{name} must be an int >= {minimum}, got {v!r}")


@dataclass(frozen=True)
class GargConfig:
    """Size of a :class:`GargRegressor`.  Validates itself on construction."""

    d: int            # data dimension = read-in width (>= 1)
    n_points: int     # most in-context examples; positions learned for 2 * n_points tokens
    n_layers: int     # L (>= 1)
    n_heads: int      # H (>= 1); must divide d_model
    d_model: int      # D, residual width (>= 1)
    d_mlp: int = 0    # MLP hidden width (0 -> 4 D, as GPT-2)
    # MLP activation: "gelu" = exact xΦ(x) (torch's default; every shipped checkpoint uses it,
    # and configs saved without this field load as "gelu"); "gelu_new" = the tanh approximation
    # that HF GPT2Config and Garg et al.'s released models use.  They differ by up to ~1e-3 per unit.
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("d", "n_points", "n_layers", "n_heads", "d_model"):
            _check_pos_int(name, getattr(self, name))
        _check_pos_int("d_mlp", self.d_mlp, minimum=0)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"GargConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "each head needs an integer width d_model / n_heads"
            )

    @property
    def max_len(self) -> int:
        return 2 * self.n_points

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_in=self.d,
            d_out=1,
            attn="softmax",
            causal=True,
            mlp=self.activation,
            d_mlp=self.d_mlp,
            layernorm=True,
            bias=True,
            max_len=self.max_len,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GargConfig":
        return config_from_dict(cls, d)


def interleave(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tokens ``[x_0, (y_0,0..), x_1, ...]``: X (B, n, d), y (B, n) -> (B, 2n, d)."""
    B, n, d = X.shape
    ys = torch.zeros_like(X)  # (B, n, d)
    ys[..., 0] = y
    return torch.stack([X, ys], dim=2).reshape(B, 2 * n, d)


def check_prompt(X, y, d: int, what: str = "X") -> tuple[torch.Tensor, torch.Tensor]:
    """Shape and finiteness checks shared by the regressor models; returns (X, y) as tensors."""
    X = as_tensor(what, X)  # TypeError for non-arrays, ValueError naming NaN/inf
    y = as_tensor("y", y)
    if X.dim() != 3:
        raise ValueError(f"{what} must have shape (B, n, d), got {tuple(X.shape)}")
    if y.dim() != 2 or tuple(y.shape) != tuple(X.shape[:2]):
        raise ValueError(f"y must have shape (B, n) = {tuple(X.shape[:2])} to match {what}, got {tuple(y.shape)}")
    if X.shape[-1] > d:
        raise ValueError(f"{what} has {X.shape[-1]} dims but the model takes at most d={d}")
    return X, y


def check_query(x_query, X: torch.Tensor) -> torch.Tensor:
    """x_query must be (B, d') with the same B and d' as X."""
    x_query = as_tensor("x_query", x_query)
    if x_query.dim() != 2 or tuple(x_query.shape) != (X.shape[0], X.shape[-1]):
        raise ValueError(
            f"x_query must have shape (B, d) = ({X.shape[0]}, {X.shape[-1]}), got {tuple(x_query.shape)}"
        )
    return x_query


def pad_dims(X: torch.Tensor, d: int) -> torch.Tensor:
    """Zero-pad the last axis of X to width d (the curriculum convention)."""
    if X.shape[-1] == d:
        return X
    return torch.nn.functional.pad(X, (0, d - X.shape[-1]))


@register_kind("garg")
class GargRegressor(HookedMixin, SavableModel):
    """GPT-2-style in-context linear regressor.  ``predict_all(X, y) -> (B, n)``.

    Hooks follow TransformerLens (:mod:`construct.hooks`): ``run_with_cache(X, y)`` returns the
    all-prefix predictions (B, n) and the cache over the 2n interleaved tokens,
    ``run_with_hooks(X, y, fwd_hooks=[...])`` the predictions with the hooks applied.
    """

    config_cls = GargConfig

    def __init__(self, cfg: GargConfig):
        super().__init__()
        if not isinstance(cfg, GargConfig):
            raise TypeError(f"cfg must be a GargConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.transformer = Transformer(cfg.transformer_config())
        if self.transformer.pos.device.type != "meta":  # load_model builds on "meta" (shapes only), then loads the
            self.reset_parameters()                      # weights: random init there is a no-op that costs ~1 s (it imports torch._dynamo)

    # ---------------------------------------------------------------- set-up
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 initialisation (uses the global RNG unless ``generator`` is given)."""
        tf, L = self.transformer, self.cfg.n_layers
        std, proj_std = 0.02, 0.02 / math.sqrt(2 * L)
        for block in tf.blocks:
            a, m = block.attn, block.mlp
            for W in (a.W_Q, a.W_K, a.W_V):
                W.normal_(0.0, std, generator=generator)
            a.W_O.normal_(0.0, proj_std, generator=generator)
            m.W_in.normal_(0.0, std, generator=generator)
            m.W_out.normal_(0.0, proj_std, generator=generator)
            for b in (a.b_Q, a.b_K, a.b_V, a.b_O, m.b_in, m.b_out):
                b.zero_()
            for ln in (block.ln1, block.ln2):
                ln.weight.fill_(1.0)
                ln.bias.zero_()
        tf.ln_f.weight.fill_(1.0)
        tf.ln_f.bias.zero_()
        tf.pos.normal_(0.0, std, generator=generator)
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        bound_in, bound_out = 1.0 / math.sqrt(self.cfg.d), 1.0 / math.sqrt(self.cfg.d_model)
        tf.W_in.uniform_(-bound_in, bound_in, generator=generator)
        tf.b_in.uniform_(-bound_in, bound_in, generator=generator)
        tf.W_out.uniform_(-bound_out, bound_out, generator=generator)
        tf.b_out.uniform_(-bound_out, bound_out, generator=generator)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d(self) -> int:
        return self.cfg.d

    @property
    def n_points(self) -> int:
        return self.cfg.n_points

    # ---------------------------------------------------------------- inputs
    def _param(self) -> torch.Tensor:
        return self.transformer.W_in

    def _tokens(self, X: torch.Tensor, y: torch.Tensor, max_examples: int) -> torch.Tensor:
        X, y = check_prompt(X, y, self.cfg.d)
        if X.shape[1] > max_examples:
            raise ValueError(
                f"prompt has {X.shape[1]} examples but the model's position budget allows at most "
                f"{max_examples} here (max_len = 2 * n_points = {self.cfg.max_len} tokens)"
            )
        p = self._param()
        X = pad_dims(X.to(device=p.device, dtype=p.dtype), self.cfg.d)
        y = y.to(device=p.device, dtype=p.dtype)
        return interleave(X, y)  # (B, 2n, d)

    # ---------------------------------------------------------------- predictions
    def forward(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All-prefix predictions with gradients (training; DDP wraps this): see :meth:`predict_all`."""
        if getattr(X, "dim", lambda: 0)() == 3 and X.shape[1] == 0:
            raise ValueError("predict_all needs at least one example (n >= 1)")
        tokens = self._tokens(X, y, self.cfg.n_points)  # (B, 2n, d)
        out = self.transformer(tokens, read=slice(0, None, 2))  # read at the x tokens: (B, n, 1)
        return out[..., 0]  # (B, n)

    def _hooked_run(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward(X, y)

    @torch.no_grad()
    def predict_all(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """X (B, n, d' <= d), y (B, n) -> (B, n); entry t predicts y_t from examples 0..t-1."""
        return self.forward(X, y)

    @torch.no_grad()
    def predict(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Predict y at ``x_query`` (B, d) from the n examples X (B, n, d), y (B, n): (B,)."""
        X, y = check_prompt(X, y, self.cfg.d)
        x_query = check_query(x_query, X)
        tokens = self._tokens(X, y, self.cfg.n_points - 1)  # (B, 2n, d)
        p = self._param()
        xq = pad_dims(x_query.to(device=p.device, dtype=p.dtype), self.cfg.d)[:, None, :]  # (B, 1, d)
        out = self.transformer(torch.cat([tokens, xq], dim=1))  # (B, 2n+1, 1)
        return out[:, -1, 0]

    @torch.no_grad()
    def residual_streams(self, X: torch.Tensor, y: torch.Tensor, at: str = "x") -> torch.Tensor:
        """Residual stream after the read-in and after each layer: (L+1, B, n, D) at the x tokens.

        ``at="x"`` (default) keeps the x_t tokens, where prediction t is read; ``at="all"``
        returns all 2n tokens, (L+1, B, 2n, D).  Entry 0 is the embedding (read-in + positions);
        entry l is the output of layer l (before the final LayerNorm).
        """
        if at not in ("x", "all"):
            raise ValueError(f"at must be 'x' or 'all', got {at!r}")
        tokens = self._tokens(X, y, self.cfg.n_points)
        res = self.transformer.residual_streams(tokens)  # (L+1, B, 2n, D)
        return res[:, :, ::2] if at == "x" else res

    def to_hf(self):
        """This model on ``transformers.GPT2Model`` (Garg et al.'s layout); see :func:`construct.export.to_hf`."""
        from .export import to_hf

        return to_hf(self)

    def readout(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own read-out (final LayerNorm + linear) applied to residual vectors (..., D)."""
        tf = self.transformer
        return (tf.ln_f(resid) @ tf.W_out + tf.b_out)[..., 0]
