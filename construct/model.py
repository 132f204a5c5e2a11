"""The hand-built Newton network as a ``torch.nn.Module`` with a prompt-level API."""

from __future__ import annotations

import dataclasses

import torch

from .alpha import check_alpha
from .builder import NewtonSpec, assemble, make_blocks, make_layout
from .checkpoint import SavableModel, register_kind
from .layout import ResidualLayout
from .precision import check_finite, check_precision as _check_precision, precision_estimate
from .transformer import Transformer
from .validate import MODEL_DTYPES, check_device, check_dtype, check_prompts


@register_kind("newton")
class NewtonTransformer(SavableModel):
    """k steps of Iterative Newton, hand-built on :class:`~construct.transformer.Transformer`.

    Shapes: X (B, n, d), y (B, n), x_query (B, d).  Tokens are (B, P + n + 1, D): P ridge prefix
    tokens, n train tokens, then the query.
    """

    def __init__(self, spec: NewtonSpec):
        super().__init__()
        self.spec = spec
        self.layout: ResidualLayout = make_layout(spec)
        self.block_specs, self.schedule = make_blocks(spec, self.layout)
        self.transformer: Transformer = assemble(spec, self.layout, self.block_specs, self.schedule)

    # ------------------------------------------------------------------ facts
    @property
    def n_layers(self) -> int:
        return self.transformer.cfg.n_layers

    @property
    def d(self) -> int:
        return self.spec.d

    @property
    def k(self) -> int:
        return self.spec.k

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.W_in.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.W_in.device

    @property
    def layer_names(self) -> list[str]:
        return [self.block_specs[b].name for b in self.schedule]

    @property
    def newton_step_after_layer(self) -> list[int]:
        """Newton step j held in slot u after each layer (the read-out keeps the last one)."""
        steps, j = [], 0
        for name in self.layer_names:
            if name.startswith("newton"):
                j += 1
            steps.append(j)
        return steps

    def looped(self, k: int | None = None) -> "NewtonTransformer":
        """A weight-tied copy whose Newton layers share one block (optionally for another k)."""
        spec = dataclasses.replace(self.spec, looped=True, k=self.spec.k if k is None else k)
        return NewtonTransformer(spec).to(self.dtype)

    # ------------------------------------------------------------------ tokens
    def encode(self, X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Token features (B, n + 1, 2d + 1): train tokens [x_i, 0, y_i], query [0, x_q, 0]."""
        B, n, d = X.shape
        tok = X.new_zeros(B, n + 1, 2 * d + 1)
        tok[:, :n, :d] = X
        tok[:, :n, 2 * d] = y
        tok[:, n, d:2 * d] = x_query
        return tok

    def _check(self, X, y, x_query=None, min_n=1):
        return check_prompts(X, y, x_query, d=self.d, dtype=self.dtype, device=self.device, min_n=min_n)

    def _alpha_check(self, X: torch.Tensor, norm, on_diverge: str) -> None:
        check_alpha(X, self.spec.alpha, self.spec.lam, norm if self.spec.normalize else 1.0, on_diverge)

    def _guard(self, X, y, x_query, norm, check_alpha: str, check_precision: str, what: str = "prompt") -> None:
        """Divergence check (float64) and precision guard (:mod:`construct.precision`) before a run."""
        self._alpha_check(X, norm, check_alpha)
        if check_precision != "ignore":
            norm = torch.as_tensor(norm, dtype=torch.float64) if self.spec.normalize else torch.tensor(1.0, dtype=torch.float64)
            est = precision_estimate(X, y, x_query, self.spec.alpha / norm ** 2, self.spec.k, lam=self.spec.lam,
                                     dtype=self.dtype, form=self.spec.form)
            _check_precision(est, self.dtype, check_precision, what)
        elif check_precision not in ("raise", "warn", "ignore"):
            raise ValueError(f"check_precision must be 'raise', 'warn' or 'ignore', got {check_precision!r}")

    def _finite(self, name: str, out: torch.Tensor, check_precision: str) -> torch.Tensor:
        if check_precision == "ignore":
            return out
        return check_finite(name, out, "Likely causes: alpha too large for this dtype, data too large, or so many "
                                       "steps that round-off in the null space of a rank-deficient S overflowed "
                                       "(Newton has converged long before; use fewer steps k).")

    def _apply(self, fn, recurse=True):
        """Every cast (``.to``, ``.half()``, ``.double()``, ``load_model(dtype=...)``) keeps the dtype rule:
        float32 or float64 only, and no weight may overflow or underflow in the target dtype."""
        probe = torch.zeros(1, dtype=torch.float64)
        try:
            target = fn(probe)
        except AssertionError as e:  # torch's "not compiled with CUDA" and friends
            raise ValueError(f"cannot move the model: {e}; use device='cpu'") from None
        if isinstance(target, torch.Tensor) and target.is_floating_point() and getattr(self, "transformer", None) is not None:
            dt = check_dtype(target.dtype, MODEL_DTYPES, "model dtype")
            fi = torch.finfo(dt)
            for name, p in self.transformer.named_parameters():
                if p.is_meta:  # shapes only (load_model checks a config before allocating)
                    continue
                a = p.detach().abs()
                nz = a[a > 0]
                if nz.numel() and (float(nz.max()) > fi.max or float(nz.min()) < fi.tiny):
                    raise ValueError(
                        f"weight {name} has magnitudes in [{float(nz.min()):.3g}, {float(nz.max()):.3g}], which "
                        f"{str(dt).removeprefix('torch.')} cannot hold (range [{fi.tiny:.3g}, {fi.max:.3g}]); "
                        f"alpha={self.spec.alpha:g} is too extreme for this dtype: rescale the data so that a "
                        "moderate alpha converges, or use float64"
                    )
        return super()._apply(fn, recurse)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(tokens, key_mask)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, X, y, x_query, check_alpha: str = "raise", check_precision: str = "raise") -> torch.Tensor:
        """Prediction for x_query from the n examples: (B,) = x_qᵀ M_k Xᵀ y.

        ``check_alpha``: "raise" (default) raises AlphaDivergenceError when the built-in α
        diverges on a prompt (α_eff·λ_max(S+λI)² ≥ 2, checked in float64), "warn" warns,
        "ignore" skips the check.  ``check_precision``: "raise" (default) raises
        :class:`construct.precision.PrecisionError` when the model's dtype cannot deliver the
        promised accuracy on a prompt (see :mod:`construct.precision`) or the output is NaN/inf;
        "warn" warns (NaN/inf still raise); "ignore" returns whatever the arithmetic gives.
        """
        X, y, x_query = self._check(X, y, x_query)
        self._guard(X, y, x_query, X.shape[1] + 1 + self.spec.n_prefix, check_alpha, check_precision)
        out = self.transformer(self.encode(X, y, x_query))  # (B, P+n+1, 1)
        return self._finite("predict", out[:, -1, 0], check_precision)

    @torch.no_grad()
    def predict_all(self, X, y, check_alpha: str = "raise", check_precision: str = "raise") -> torch.Tensor:
        """All-prefix predictions (B, n): position t predicts y_t from examples 0..t−1 (t=0 gives 0).

        Runs B·n prompts at once: prompt (b, t) holds all n train tokens with tokens ≥ t hidden
        by the key mask, and x_t as the query.  Cost O(B · n · (k+2) · n² · d).
        """
        X, y, _ = self._check(X, y, None)
        B, n, d = X.shape
        Xt = X[:, None].expand(B, n, n, d).reshape(B * n, n, d)  # (B·n, n, d)
        yt = y[:, None].expand(B, n, n).reshape(B * n, n)
        xq = X.reshape(B * n, d)  # query of prompt (b, t) is x_t
        t = torch.arange(n, device=X.device)
        visible = (t[None, :] < t[:, None])  # (n, n): train token j visible for prefix t iff j < t
        key_mask = torch.cat([visible, torch.ones(n, 1, dtype=torch.bool, device=X.device)], 1)  # (n, n+1)
        key_mask = key_mask[None].expand(B, n, n + 1).reshape(B * n, n + 1)
        if check_alpha != "ignore" or check_precision != "ignore":
            Xm = Xt * visible[None].expand(B, n, n).reshape(B * n, n, 1).to(X.dtype)
            norm = (t + 1 + self.spec.n_prefix).to(torch.float64).repeat(B)
            self._guard(Xm, yt, xq, norm, check_alpha, check_precision, "prefix")
        out = self.transformer(self.encode(Xt, yt, xq), key_mask)  # (B·n, P+n+1, 1)
        return self._finite("predict_all", out[:, -1, 0].reshape(B, n), check_precision)

    def run_with_cache(self, X, y, x_query, check_alpha: str = "raise", check_precision: str = "raise"):
        """``(prediction (B,), cache)`` with every hooked activation of the transformer.

        Residual streams have shape (B, P + n + 1, D); slice them with ``model.layout[slot]``.
        ``check_alpha`` / ``check_precision`` as in :meth:`predict` (NaN/inf anywhere in the cache
        raise unless ``check_precision="ignore"``).
        """
        X, y, x_query = self._check(X, y, x_query)
        self._guard(X, y, x_query, X.shape[1] + 1 + self.spec.n_prefix, check_alpha, check_precision)
        out, cache = self.transformer.run_with_cache(self.encode(X, y, x_query))
        for name, t in cache.items():
            self._finite(f"run_with_cache ({name})", t, check_precision)
        return self._finite("run_with_cache", out[:, -1, 0], check_precision), cache

    def residual_streams(self, X, y, x_query, check_alpha: str = "raise", check_precision: str = "raise") -> torch.Tensor:
        """Residual stream after the read-in and after each layer: (L + 1, B, P + n + 1, D).

        ``check_alpha`` / ``check_precision`` as in :meth:`predict`.
        """
        X, y, x_query = self._check(X, y, x_query)
        self._guard(X, y, x_query, X.shape[1] + 1 + self.spec.n_prefix, check_alpha, check_precision)
        return self._finite("residual_streams", self.transformer.residual_streams(self.encode(X, y, x_query)),
                            check_precision)

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        s = self.spec
        lines = [
            f"NewtonTransformer: d={s.d}, k={s.k}, alpha={s.alpha:g}, attn={s.attn}, "
            f"normalize={s.normalize}, lam={s.lam:g}, form={s.form}, looped={s.looped}"
            + (", PRINTED-PAPER (wrong on purpose)" if s.printed_paper else ""),
            f"layers: {self.n_layers} ({'k+1 merged' if s.form == 'merged' else 'k+2'}); "
            f"residual width D = {self.layout.width} "
            f"({'4d+2' if s.form == 'merged' else '3d+2'}); heads/layer = {self.transformer.cfg.n_heads}; "
            f"head width = {self.transformer.cfg.d_head}; MLP width = {self.transformer.cfg.hidden_mlp}; "
            f"prefix tokens = {s.n_prefix}; distinct weight blocks = {len(self.block_specs)}; "
            f"parameters = {sum(p.numel() for p in self.parameters())}",
            "",
            self.layout.table(),
            "",
            "layer  block            heads  computes",
        ]
        for i, b in enumerate(self.schedule):
            bs = self.block_specs[b]
            lines.append(f"{i:<5}  {bs.name:<15}  {len(bs.heads):<5}  {bs.summary}" + (f"   [block {b}]" if s.looped else ""))
        lines += ["", "slot contents after each stage (z = the token's own x: x_i, or x_q on the query):", self.layout.stage_table()]
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "layout": self.layout.to_dict()}

    @classmethod
    def from_config_dict(cls, cfg: dict) -> "NewtonTransformer":
        if "spec" not in cfg:
            raise ValueError("config lacks 'spec'")
        return cls(NewtonSpec.from_dict(cfg["spec"]))
