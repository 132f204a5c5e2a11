"""The hand-built networks (Newton, hyperpower, gradient descent) as ``torch.nn.Module``s with a prompt-level API."""

from __future__ import annotations

import dataclasses

import torch

from .adaptive import AlphaRangeError, default_range, pl_alpha, trace_power
from .alpha import check_alpha, check_lr
from .builder import GDSpec, NewtonSpec, assemble, make_blocks, make_gd_blocks, make_gd_layout, make_layout
from .checkpoint import SavableModel, register_kind
from .layout import ResidualLayout
from .hooks import HookedMixin
from .precision import (adaptive_alpha_rtol, check_finite, check_precision as _check_precision, gd_precision_estimate,
                        precision_estimate)
from .transformer import Transformer
from .validate import MODEL_DTYPES, as_tensor, check_dtype, check_prompts

_NONFINITE_HINT = ("Likely causes: a step size too large for this dtype, data too large, or so many steps that "
                   "round-off in the null space of a rank-deficient S (doubled every Newton step) overflowed; "
                   "Newton has converged long before, so use fewer steps k.")


def _tensors(obj):
    """The tensors inside a block description (dataclasses, dicts, lists), depth first."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


PREFIX_GROUPS = 16  # predict_all runs the n prefixes in at most this many length groups (≈ 10% padding)


class HandBuiltModel(HookedMixin, SavableModel):
    """What every hand-built network shares: prompt encoding, prediction, caches, hooks.

    Subclasses name their builders ``_make_layout(spec)`` and ``_make_blocks(spec, layout)``;
    ``__init__(spec)`` sets ``spec`` (with ``d``, ``n_prefix``, ``normalize``, ``adaptive``),
    ``layout``, ``block_specs``, ``schedule`` and ``transformer``.  They define ``_alpha_check``.
    Shapes: X (B, n, d), y (B, n), x_query (B, d).  Tokens are (B, P + n + 1, D): P prefix
    tokens, n train tokens, then the query.
    """

    _program = "newton"  # what construct.precision.check_precision's message names ("gd": GD steps, learning rate)

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.layout: ResidualLayout = self._make_layout(spec)
        self.block_specs, self.schedule = self._make_blocks(spec, self.layout)
        self.transformer: Transformer = assemble(spec, self.layout, self.block_specs, self.schedule)

    def _materialize_block_specs(self) -> None:
        """Rebuild ``block_specs`` on the CPU when the model was built on the meta device (as
        :func:`construct.load_model` does, to size a config before allocating it): the weights are
        loaded into ``transformer``, but the block descriptions would keep meta tensors."""
        if any(t.is_meta for bs in self.block_specs for t in _tensors(bs)):
            with torch.device("cpu"):
                self.block_specs, _ = self._make_blocks(self.spec, self.layout)

    # ------------------------------------------------------------------ facts
    @property
    def n_layers(self) -> int:
        return self.transformer.cfg.n_layers

    @property
    def d(self) -> int:
        return self.spec.d

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.W_in.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.W_in.device

    @property
    def layer_names(self) -> list[str]:
        return [self.block_specs[b].name for b in self.schedule]

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

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(tokens, key_mask)

    # ------------------------------------------------------------------ guards (issue 12)
    def _precision_args(self, X: torch.Tensor, norm) -> tuple[torch.Tensor, tuple[int, ...], str] | None:
        """(α_eff per prompt, step orders, form) for :func:`construct.precision.precision_estimate`,
        or None where no Newton estimate applies (GD overrides :meth:`_precision_estimate`)."""
        return None

    def _guard(self, X, y, x_query, norm, check_alpha: str, check_precision: str, what: str = "prompt") -> None:
        """Divergence check (float64) and precision guard (:mod:`construct.precision`) before a run."""
        if check_precision not in ("raise", "warn", "ignore"):
            raise ValueError(f"check_precision must be 'raise', 'warn' or 'ignore', got {check_precision!r}")
        self._alpha_check(X, norm, check_alpha)
        if check_precision != "ignore":
            est = self._precision_estimate(X, y, x_query, norm)
            if est is not None:
                _check_precision(est, self.dtype, check_precision, what, program=self._program)

    def _precision_estimate(self, X, y, x_query, norm) -> torch.Tensor | None:
        """Per-prompt error bound (B,) of :mod:`construct.precision`, or None where none is derived."""
        args = self._precision_args(X, norm)
        if args is None:
            return None
        a, orders, form = args
        ar = 0.0
        if getattr(self.spec, "adaptive", False):  # the network computes α itself (construct.precision, 7)
            ar = adaptive_alpha_rtol(self.spec.pl, X.shape[1] + 1 + self.spec.n_prefix + self.d, self.dtype)
        return precision_estimate(X, y, x_query, a, len(orders), lam=getattr(self.spec, "lam", 0.0), dtype=self.dtype,
                                  form=form, orders=orders, alpha_rtol=ar)

    def _finite(self, name: str, out: torch.Tensor, check_precision: str) -> torch.Tensor:
        return out if check_precision == "ignore" else check_finite(name, out, _NONFINITE_HINT)

    def _apply(self, fn, recurse=True):
        """Every cast (``.to``, ``.half()``, ``.double()``, ``load_model(dtype=...)``) keeps the dtype rule:
        float32 or float64 only, and no weight may overflow or underflow in the target dtype."""
        try:
            target = fn(torch.zeros(1, dtype=torch.float64))
        except AssertionError as e:  # torch's "not compiled with CUDA" and friends
            raise ValueError(f"cannot move the model: {e}; use device='cpu'") from None
        tr = getattr(self, "transformer", None)
        if isinstance(target, torch.Tensor) and target.is_floating_point() and tr is not None:
            dt = check_dtype(target.dtype, MODEL_DTYPES, "model dtype")
            fi = torch.finfo(dt)
            for name, p in tr.named_parameters():
                if p.is_meta:  # shapes only (load_model checks a config before allocating)
                    continue
                mx = float(p.detach().abs().max()) if p.numel() else 0.0
                # overflow anywhere is inf; underflow matters when a whole weight vanishes (e.g. the
                # init layer's α·I), not for the tiny far-off slopes of the adaptive α's PL function
                if mx > fi.max or 0.0 < mx < fi.tiny:
                    raise ValueError(
                        f"weight {name} has magnitudes up to {mx:.3g}, which {str(dt).removeprefix('torch.')} "
                        f"cannot hold (range [{fi.tiny:.3g}, {fi.max:.3g}]); the step size baked into the weights "
                        "is too extreme for this dtype: rescale the data so that a moderate step size converges, "
                        "or use float64"
                    )
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, X, y, x_query, check_alpha: str = "raise", check_precision: str = "raise") -> torch.Tensor:
        """Prediction for x_query from the n examples: (B,) = x_qᵀ M Xᵀ y (Newton) or x_qᵀ w_s (GD).

        ``check_alpha``: "raise" (default) raises AlphaDivergenceError when the built-in step size
        diverges on a prompt (Newton: α_eff·λ_max(S+λI)² ≥ 2; GD: lr_eff·λ_max(S) ≥ 2), "warn"
        warns, "ignore" skips the check.
        An adaptive model never diverges; it raises AlphaRangeError (whatever ``check_alpha``)
        when a prompt's tr(S^p) lies outside its valid range, since its α would be wrong there.
        The divergence check is done in float64 whatever the model's dtype.
        ``check_precision``: "raise" (default) raises :class:`construct.precision.PrecisionError`
        when the model's dtype cannot deliver the promised accuracy on a prompt (Newton and GD
        networks, see :mod:`construct.precision`) or the output is NaN/inf; "warn" warns (NaN/inf still
        raise); "ignore" returns whatever the arithmetic gives.
        """
        X, y, x_query = self._check(X, y, x_query)
        self._guard(X, y, x_query, X.shape[1] + 1 + self.spec.n_prefix, check_alpha, check_precision)
        out = self.transformer(self.encode(X, y, x_query))  # (B, P+n+1, 1)
        return self._finite("predict", out[:, -1, 0], check_precision)

    @torch.no_grad()
    def predict_all(self, X, y, check_alpha: str = "raise", groups: int | None = None,
                    check_precision: str = "raise") -> torch.Tensor:
        """All-prefix predictions (B, n): position t predicts y_t from examples 0..t−1 (t=0 gives 0).

        Runs the B·n prefix prompts of :meth:`prefix_prompts`, grouped by length: cost
        O(B · (k+2) · Σ_t t² · d) ≈ O(B · k · n³ · d / 3), a third of running every prefix at full
        length (``construct.reference_forward.reference_predict_all``, the previous path).
        ``groups``: number of length groups; None picks one from the workload (small workloads
        run as one group, where per-call overhead would outweigh the saved work).
        """
        X, y, _ = self._check(X, y, None)
        B, n, d = X.shape
        if check_alpha != "ignore" or check_precision != "ignore" or self.spec.adaptive:
            t = torch.arange(n, device=X.device)
            visible = t[None, :] < t[:, None]  # (n, n): train token j visible for prefix t iff j < t
            Xm = X[:, None] * visible[None, :, :, None].to(X.dtype)  # (B, n, n, d)
            norm = (t + 1 + self.spec.n_prefix).to(torch.float64).repeat(B)
            ym = y[:, None] * visible[None].to(y.dtype)  # (B, n, n): hidden tokens' y is 0 too (per-token terms)
            self._guard(Xm.reshape(B * n, n, d), ym.reshape(B * n, n), X.reshape(B * n, d),
                        norm, check_alpha, check_precision, "prefix")
        if groups is None:  # attention entries of one full-length layer; ~2^18 of them pay for one call
            work = B * n * (n + 1 + self.spec.n_prefix) ** 2 * self.transformer.cfg.n_heads
            groups = max(1, min(PREFIX_GROUPS, work >> 18))
        out = X.new_empty(B, n)
        for lo, hi, tokens, key_mask in self.prefix_prompts(X, y, groups):
            out[:, lo:hi] = self.transformer(tokens, key_mask)[:, -1, 0].reshape(B, hi - lo)
        return self._finite("predict_all", out, check_precision)

    def prefix_prompts(self, X: torch.Tensor, y: torch.Tensor, groups: int = PREFIX_GROUPS):
        """Yield ``(lo, hi, tokens, key_mask)``: the prefix prompts t = lo..hi−1 of every prompt.

        Prompt (b, t) predicts y_t from examples 0..t−1 with x_t as its query.  Prefixes are run
        in ``groups`` groups of consecutive t; group [lo, hi) holds hi − 1 train tokens and the
        query, ``tokens`` (B·(hi−lo), hi, 2d+1) ordered (b, t), with train tokens j ≥ t hidden by
        ``key_mask`` (None when nothing is hidden).

        Exact: a hidden token is never a key and the 1/N normalisation counts visible keys only,
        so every visible token computes the same numbers whether hidden tokens exist or not (the
        tests check this against the full-length prompts to 1e-12).  A model with learned
        positions (``max_len``) keeps all n train tokens in every group, so that the query stays
        at position n.
        """
        B, n, d = X.shape
        w = -(-n // max(1, min(int(groups), n)))  # prefixes per group
        for lo in range(0, n, w):
            hi = min(lo + w, n)
            T = n if self.transformer.cfg.max_len else hi - 1  # train tokens in this group's prompts
            G = hi - lo
            ts = torch.arange(lo, hi, device=X.device)
            Xg = X[:, None, :T].expand(B, G, T, d).reshape(B * G, T, d)  # (B·G, T, d)
            yg = y[:, None, :T].expand(B, G, T).reshape(B * G, T)
            xq = X[:, lo:hi].reshape(B * G, d)  # query of prompt (b, t) is x_t
            vis = torch.arange(T, device=X.device)[None, :] < ts[:, None]  # (G, T)
            key_mask = None
            if not bool(vis.all()):
                key_mask = torch.cat([vis, torch.ones(G, 1, dtype=torch.bool, device=X.device)], 1)  # (G, T+1)
                key_mask = key_mask[None].expand(B, G, T + 1).reshape(B * G, T + 1)
            yield lo, hi, self.encode(Xg, yg, xq), key_mask

    def _hooked_run(self, X, y, x_query, check_alpha: str = "raise", check_precision: str = "raise") -> torch.Tensor:
        """The query prediction (B,): what ``run_with_hooks`` / ``run_with_cache`` run.

        ``check_alpha`` / ``check_precision`` as in :meth:`predict` (a diverging α raises before the
        run; NaN/inf in the prediction raise after it).

        ``model.run_with_cache(X, y, x_query, names_filter=None)`` returns ``(prediction (B,), cache)``
        with the hooked activations (TransformerLens names, one entry per layer; see
        :mod:`construct.hooks`).  Residual streams have shape (B, P + n + 1, D); slice them with
        ``model.layout[slot]``.
        """
        X, y, x_query = self._check(X, y, x_query)
        self._guard(X, y, x_query, X.shape[1] + 1 + self.spec.n_prefix, check_alpha, check_precision)
        return self._finite("run_with_cache", self.transformer(self.encode(X, y, x_query))[:, -1, 0], check_precision)

    def residual_streams(self, X, y, x_query, return_prediction: bool = False, stack: bool = True,
                         check_alpha: str = "raise", check_precision: str = "raise"):
        """Residual stream after the read-in and after each layer: (L + 1, B, P + n + 1, D).

        ``return_prediction=True`` gives ``(streams, prediction (B,))`` from the same single run;
        ``stack=False`` gives the streams as a list of L + 1 tensors (B, P + n + 1, D).
        ``check_alpha`` / ``check_precision`` as in :meth:`predict` (NaN/inf in any stream raise).
        """
        X, y, x_query = self._check(X, y, x_query)
        self._guard(X, y, x_query, X.shape[1] + 1 + self.spec.n_prefix, check_alpha, check_precision)
        res = self.transformer.residual_streams(self.encode(X, y, x_query), return_output=return_prediction, stack=stack)
        streams = res[0] if return_prediction else res
        for h in (streams if isinstance(streams, (list, tuple)) else [streams]):
            self._finite("residual_streams", h, check_precision)
        return (res[0], res[1][:, -1, 0]) if return_prediction else res

    def _alpha_check(self, X: torch.Tensor, norm, on_diverge: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@register_kind("newton")
class NewtonTransformer(HandBuiltModel):
    """k steps of Iterative Newton, hand-built on :class:`~construct.transformer.Transformer`.

    Shapes: X (B, n, d), y (B, n), x_query (B, d).  Tokens are (B, P + n + 1, D): P ridge prefix
    tokens, n train tokens, then the query.
    """

    _make_layout = staticmethod(make_layout)
    _make_blocks = staticmethod(make_blocks)

    def __init__(self, spec: NewtonSpec):
        super().__init__(spec)

    # ------------------------------------------------------------------ facts
    @property
    def k(self) -> int:
        return self.spec.k

    @property
    def residual_power(self) -> int:
        """P with I − M S = (I − αS²)^P for the M of the prediction: 2^k, or 4·3^j (hyperpower)."""
        return self.spec.residual_power

    @property
    def residual_power_after_layer(self) -> list[int]:
        """Residual power of the M held in slot u (and uq) after each layer.

        The init layer holds M₀ = αS (power 1); a Newton layer doubles the power, an order-3
        layer triples it, a read-out keeps it (the merged and hyperpower read-outs perform one
        more Newton step inside the prediction only: ``residual_power`` is twice the last entry).
        """
        powers, p = [], 1
        for name in self.layer_names:
            if name.startswith("newton"):
                p *= 2
            elif name.startswith("order3"):
                p *= 3
            powers.append(p)
        return powers

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

    def _alpha_check(self, X: torch.Tensor, norm, on_diverge: str) -> None:
        if self.spec.adaptive:
            self._alpha_of(X)  # never diverges; raises AlphaRangeError outside the valid range
            return
        if on_diverge == "ignore":  # nothing to report: skip the float64 λ_max(S) (an eigvalsh per prompt)
            return
        check_alpha(X, self.spec.alpha, self.spec.lam, norm if self.spec.normalize else 1.0, on_diverge)

    def _precision_args(self, X: torch.Tensor, norm):
        s = self.spec
        if s.adaptive:
            a = self._alpha_of(X)
        else:
            nrm = torch.as_tensor(norm, dtype=torch.float64) if s.normalize else torch.tensor(1.0, dtype=torch.float64)
            a = s.alpha / nrm**2
        # hyperpower: one Newton step, j order-3 steps, the read-out's Newton step (residual power 4·3^j)
        orders = (2,) + (3,) * s.n_order3 + (2,) if s.form == "hyperpower" else (2,) * s.k
        return a, orders, s.form

    def _alpha_of(self, X: torch.Tensor) -> torch.Tensor:
        lo, hi = self.spec.alpha_range
        dlo, dhi = default_range(self.dtype)
        if lo < dlo or hi > dhi:
            raise AlphaRangeError(
                f"this adaptive model was built for alpha_range=({lo}, {hi}) but is now {self.dtype}, which holds "
                f"only ({dlo}, {dhi}) (its PL weights would overflow); rebuild with dtype={self.dtype}"
            )
        return pl_alpha(self.spec.pl, trace_power(X, self.spec.alpha_trace, self.spec.lam))

    def alpha_of(self, X) -> torch.Tensor:
        """The α the network uses on each prompt: (B,) float64.

        Adaptive models: α = f(tr((XᵀX + λI)^p)), computed here in float64 from X by the PL
        formula (:mod:`construct.adaptive`), independently of the network's own α slot; raises
        :class:`~construct.adaptive.AlphaRangeError` when tr(S^p) is outside the valid range.
        Fixed-α models: their α (α/N² under normalize, N = P + n + 1 tokens), per prompt.
        """
        X = as_tensor("X", X, torch.float64, "cpu")
        if X.dim() != 3 or X.shape[-1] != self.d or X.shape[0] == 0:
            raise ValueError(f"X must have shape (B, n, {self.d}) with B >= 1, got {tuple(X.shape)}")
        if self.spec.adaptive:
            return self._alpha_of(X)
        N = X.shape[1] + 1 + self.spec.n_prefix
        a = self.spec.alpha / (N * N if self.spec.normalize else 1.0)
        return torch.full((X.shape[0],), a, dtype=torch.float64)

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        s = self.spec
        a = (f"adaptive (f(tr(S^{s.alpha_trace})), range 2^{s.alpha_range[0]}..2^{s.alpha_range[1]})"
             if s.adaptive else f"{s.alpha:g}")
        from .builder import min_layers

        form = {"default": "k+2", "merged": "k+1 merged",
                "hyperpower": f"j+3 hyperpower, j={s.n_order3} order-3 layers"}[s.form]
        form += f"+{s.alpha_layers} adaptive" if s.adaptive else ""
        wf = {"default": "3d+2", "merged": "4d+2", "hyperpower": "6d+2"}[s.form]
        if s.adaptive:
            wf = {"default": "4d+5", "merged": "5d+5", "hyperpower": "7d+5"}[s.form]
        P = self.residual_power
        lines = [
            f"NewtonTransformer: d={s.d}, k={s.k}, alpha={a}, attn={s.attn}, "
            f"normalize={s.normalize}, lam={s.lam:g}, form={s.form}, looped={s.looped}"
            + (", PRINTED-PAPER (wrong on purpose)" if s.printed_paper else ""),
            f"layers: {self.n_layers} ({form}); degree lower bound for Newton-{s.k} accuracy: "
            f"construct.min_layers({s.k}) = {min_layers(s.k)} (3^L >= 2^(k+2)+1)",
            f"residual power P = {P}: I - M S = (I - alpha S^2)^{P}"
            + (f" >= 2^{s.k} (at least Newton-{s.k}'s accuracy)" if s.form == "hyperpower" else f" = 2^{s.k}"),
            f"residual width D = {self.layout.width} "
            f"({wf}); heads/layer = {self.transformer.cfg.n_heads}; "
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
        if hasattr(self.transformer, "describe_compiled"):  # construct.to_gpt2
            lines += ["", self.transformer.describe_compiled()]
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "layout": self.layout.to_dict()}

    @classmethod
    def from_config_dict(cls, cfg: dict) -> "NewtonTransformer":
        if "spec" not in cfg:
            raise ValueError("config lacks 'spec'")
        return cls(NewtonSpec.from_dict(cfg["spec"]))


@register_kind("gd")
class GDTransformer(HandBuiltModel):
    """``steps`` steps of gradient descent from w = 0, hand-built (von Oswald et al. 2023 style).

    ``predict(X, y, x_query)`` equals x_qᵀ w_s with w ← w − lr·(S w − Xᵀy) (no 1/n), the convention
    of :func:`verify.gd_predictions`; under ``normalize`` lr is relative to S/N (lr_eff = lr/N).
    One identical layer per step (stored once, weight-tied), width 2d + 2; see
    :mod:`construct.blocks.gd`.
    """

    _make_layout = staticmethod(make_gd_layout)
    _make_blocks = staticmethod(make_gd_blocks)

    def __init__(self, spec: GDSpec):
        super().__init__(spec)

    _program = "gd"

    @property
    def steps(self) -> int:
        return self.spec.steps

    def _alpha_check(self, X: torch.Tensor, norm, on_diverge: str) -> None:
        if on_diverge == "ignore":  # nothing to report: skip the float64 λ_max(S)
            return
        check_lr(X, self.spec.lr, norm if self.spec.normalize else 1.0, on_diverge)

    def _precision_estimate(self, X, y, x_query, norm) -> torch.Tensor:
        """GD bound (:func:`construct.precision.gd_precision_estimate`, "GD networks" in its module doc)."""
        nrm = torch.as_tensor(norm, dtype=torch.float64) if self.spec.normalize else torch.tensor(1.0, dtype=torch.float64)
        return gd_precision_estimate(X, y, x_query, self.spec.lr / nrm, self.spec.steps, dtype=self.dtype)

    def describe(self) -> str:
        s = self.spec
        lines = [
            f"GDTransformer: d={s.d}, steps={s.steps}, lr={s.lr:g}, attn={s.attn}, normalize={s.normalize}",
            f"layers: {self.n_layers} (one per GD step, all sharing one weight block); "
            f"residual width D = {self.layout.width} (2d+2); heads/layer = {self.transformer.cfg.n_heads}; "
            f"head width = {self.transformer.cfg.d_head}; no MLP; "
            f"parameters = {sum(p.numel() for p in self.parameters())}",
            f"converges iff 0 < lr_eff*lambda_max(S) < 2 (lr_eff = lr{'/N' if s.normalize else ''})",
            "",
            self.layout.table(),
            "",
            "layer  block  heads  computes",
        ]
        for i, b in enumerate(self.schedule):
            bs = self.block_specs[b]
            lines.append(f"{i:<5}  {bs.name:<5}  {len(bs.heads):<5}  {bs.summary}")
        lines += ["", "slot contents after each stage (w_s = s GD steps from 0):", self.layout.stage_table()]
        return "\n".join(lines)

    def config_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "layout": self.layout.to_dict()}

    @classmethod
    def from_config_dict(cls, cfg: dict) -> "GDTransformer":
        if "spec" not in cfg:
            raise ValueError("config lacks 'spec'")
        return cls(GDSpec.from_dict(cfg["spec"]))
