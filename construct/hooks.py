"""Hook points with TransformerLens's names and calling convention, and the activation cache.

Every activation of a :class:`~construct.transformer.Transformer` passes through a
:class:`HookPoint` named as in TransformerLens, **one per layer** (a looped, weight-tied model
shares weights between layers, never hooks)::

    hook_embed                                  read-in (+ positions, prefix tokens)  (B, N, D)
    blocks.{l}.hook_resid_pre                   residual stream entering layer l      (B, N, D)
    blocks.{l}.attn.hook_q / hook_k / hook_v    per-head queries, keys, values        (B, N, H, Dh)
    blocks.{l}.attn.hook_attn_scores            scaled scores before the activation   (B, H, N, N)
    blocks.{l}.attn.hook_pattern                attention weights                     (B, H, N, N)
    blocks.{l}.attn.hook_z                      per-head mixed values                 (B, N, H, Dh)
    blocks.{l}.hook_attn_out                    attention output                      (B, N, D)
    blocks.{l}.hook_resid_mid                   after attention                       (B, N, D)
    blocks.{l}.mlp.hook_pre / hook_post         MLP hidden, before / after activation (B, N, M)
    blocks.{l}.hook_mlp_out                     MLP output                            (B, N, D)
    blocks.{l}.hook_resid_post                  residual stream leaving layer l       (B, N, D)
    ln_final.hook_normalized                    after the final LayerNorm (identity without one)

For relu/linear attention ``hook_attn_scores`` already holds the 1/N row normalisation and zeros
at hidden keys (softmax: -inf), so ``hook_pattern = act(hook_attn_scores)``.

Hook functions follow TransformerLens: ``fn(activation, hook)`` where ``hook.name`` is the full
name and ``hook.layer()`` the layer index; returning a tensor replaces the activation.  Register
them with ``model.run_with_hooks(..., fwd_hooks=[(name_or_filter, fn)])`` or the ``model.hooks``
context manager; both remove the hooks on exit (``reset_hooks_end=True``).
``model.run_with_cache(..., names_filter=...)`` returns ``(output, cache)``, an
:class:`ActivationCache` that also takes TransformerLens's short keys: ``cache["resid_post", l]``,
``cache["pattern", l]``, ``cache["embed"]`` (see :func:`act_name`).

Deprecated (one release, with a ``DeprecationWarning``): the old names ``layers.{l}.hook_*``
(now ``blocks.{l}.hook_*``) and ``hook_final`` (now ``ln_final.hook_normalized``); hook functions
``fn(tensor, name)`` whose second parameter is not called ``hook``; ``run_with_cache(names=...)``.
The old ``blocks.{b}.attn.hook_pattern`` / ``blocks.{b}.mlp.hook_post`` named a *weight block*
and were overwritten by every layer sharing it; the same names now denote layer ``b``.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from typing import Callable, Iterable, Union

import torch
from torch import nn

NameOrFilter = Union[str, Callable[[str], bool]]

_OLD_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_NEW_LAYER = re.compile(r"blocks\.(\d+)\.(hook_[a-z_]+)")


def _warn(msg: str) -> None:
    warnings.warn(msg, DeprecationWarning, stacklevel=4)


def new_name(name: str, warn: bool = True) -> str:
    """The current hook name for a deprecated one (``layers.{l}.X``, ``hook_final``); else ``name``."""
    m = _OLD_LAYER.fullmatch(name)
    new = f"blocks.{m.group(1)}.{m.group(2)}" if m else ("ln_final.hook_normalized" if name == "hook_final" else None)
    if new is None:
        return name
    if warn:
        _warn(f"hook name {name!r} is deprecated; use {new!r} (TransformerLens naming)")
    return new


def old_name(name: str) -> str:
    """The pre-round-two name of a hook (for deprecated name filters)."""
    m = _NEW_LAYER.fullmatch(name)
    if m:
        return f"layers.{m.group(1)}.{m.group(2)}"
    return "hook_final" if name == "ln_final.hook_normalized" else name


def act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's ``utils.get_act_name``: ``act_name("resid_post", 3) == "blocks.3.hook_resid_post"``.

    ``act_name("pattern", 2) == "blocks.2.attn.hook_pattern"``, ``act_name("pre", 1) ==
    "blocks.1.mlp.hook_pre"``, ``act_name("embed") == "hook_embed"``; full names pass through.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    m = re.match(r"([a-z_]+?)(\d+)([a-z]?.*)", name)
    if m is not None and layer is None:
        name, layer, layer_type = m.group(1), int(m.group(2)), m.group(3) or None
    name = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}.get(name, name)
    if name in ("k", "v", "q", "z", "pattern", "attn_scores"):
        layer_type = "attn"
    elif name in ("pre", "post", "mid"):
        layer_type = "mlp"
    else:
        layer_type = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}.get(
            layer_type, layer_type)
    full = (f"blocks.{int(layer)}." if layer is not None else "") + (f"{layer_type}." if layer_type else "")
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


def _takes_hook(fn: Callable) -> bool:
    """True for TransformerLens-style ``fn(act, hook)`` (a parameter named ``hook`` or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume the current convention
        return True
    return "hook" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


class HookPoint(nn.Module):
    """Identity module that hooks attach to.  ``.name`` is its full name, ``.layer()`` its layer."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """Whether any hook is attached (fast paths that skip this activation check it)."""
        return bool(self._forward_hooks)

    def layer(self) -> int:
        """The layer index l of a ``blocks.{l}.*`` hook (ValueError for the others)."""
        parts = (self.name or "").split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"hook {self.name!r} does not belong to a layer (only blocks.{{l}}.* hooks do)")
        return int(parts[1])

    def add_hook(self, fn: Callable, dir: str = "fwd", *, registered_as: str | None = None):
        """Attach ``fn(activation, hook) -> tensor | None``; returns a handle with ``.remove()``."""
        if dir != "fwd":
            raise ValueError(f"only forward hooks are supported (dir='fwd'), got dir={dir!r}")
        if not callable(fn):
            raise TypeError(f"hook function for {self.name!r} must be callable, got {type(fn).__name__}")
        if _takes_hook(fn):
            return self.register_forward_hook(lambda m, i, o: fn(o, hook=m))
        _warn("hook functions fn(tensor, name) are deprecated; write fn(tensor, hook) and read hook.name "
              "(TransformerLens convention)")
        label = registered_as or self.name
        return self.register_forward_hook(lambda m, i, o: fn(o, label))

    def remove_hooks(self) -> None:
        self._forward_hooks.clear()


def name_hook_points(root: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint under ``root`` its public name (module path ``layers.`` -> ``blocks.``)."""
    points = {}
    for path, m in root.named_modules():
        if isinstance(m, HookPoint):
            name = "blocks." + path[len("layers."):] if path.startswith("layers.") else path
            m.name = name
            points[name] = m
    return points


class ActivationCache(dict):
    """``name -> activation`` from ``run_with_cache``.  Also ``cache["resid_post", l]`` (:func:`act_name`)."""

    def _key(self, key):
        if isinstance(key, tuple):
            return act_name(*key)
        if isinstance(key, str) and not dict.__contains__(self, key):
            new = new_name(key)
            return new if new != key else act_name(key)
        return key

    def __getitem__(self, key) -> torch.Tensor:
        k = self._key(key)
        if not dict.__contains__(self, k):
            raise KeyError(f"{key!r} (= {k!r}) is not in the cache; cached: {sorted(self)[:8]}...")
        return dict.__getitem__(self, k)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, self._key(key))

    def get(self, key, default=None):
        return self[key] if key in self else default

    def stack(self, name: str, n_layers: int) -> torch.Tensor:
        """``cache[name, l]`` for l = 0..n_layers-1 stacked: (L, ...)."""
        return torch.stack([self[name, l] for l in range(n_layers)])


class HookedMixin:
    """TransformerLens's hook API for a module whose :meth:`_hook_host` holds the HookPoints.

    Subclasses define ``_hooked_run(*args, **kwargs)``, the call that ``run_with_hooks`` and
    ``run_with_cache`` wrap (e.g. ``predict``).
    """

    def _hook_host(self) -> nn.Module:
        return self.transformer  # type: ignore[attr-defined]

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by its full name."""
        return dict(self._hook_host()._hook_dict)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        return self.hook_points()

    def _select(self, name: NameOrFilter) -> list[tuple[str, HookPoint]]:
        points = self._hook_host()._hook_dict
        if callable(name):
            return [(n, hp) for n, hp in points.items() if name(n)]
        if not isinstance(name, str):
            raise TypeError(f"a hook is named by a str or a filter callable, got {type(name).__name__}")
        full = new_name(name)
        if full not in points:
            full = act_name(full)
        if full not in points:
            raise KeyError(f"no hook point named {name!r}; see model.hook_points() (e.g. {list(points)[:4]})")
        return [(full, points[full])]

    def add_hook(self, name: NameOrFilter, fn: Callable, dir: str = "fwd") -> list:
        """Attach ``fn`` permanently (until :meth:`reset_hooks`); returns the handles."""
        return [hp.add_hook(fn, dir, registered_as=name if isinstance(name, str) else None)
                for _, hp in self._select(name)]

    def reset_hooks(self) -> None:
        """Remove every hook."""
        for hp in self._hook_host()._hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameOrFilter, Callable]] = (), reset_hooks_end: bool = True):
        """Attach ``(name or filter, fn)`` hooks for the ``with`` block; removed on exit by default."""
        handles = []
        try:
            for name, fn in fwd_hooks:
                handles += self.add_hook(name, fn)
            yield self
        finally:
            if reset_hooks_end:
                for h in handles:
                    h.remove()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[NameOrFilter, Callable]] = (),
                       reset_hooks_end: bool = True, **kwargs):
        """Run ``_hooked_run(*args, **kwargs)`` with ``fwd_hooks`` attached; they are removed after."""
        with self.hooks(fwd_hooks, reset_hooks_end):
            return self._hooked_run(*args, **kwargs)

    def run_with_cache(self, *args, names_filter=None, names=None, **kwargs):
        """``(output, cache)``: run ``_hooked_run`` and keep every activation that ``names_filter`` passes.

        ``names_filter``: None (all), a name, a list of names, or a callable on full names.
        """
        if names is not None:
            _warn("run_with_cache(names=...) is deprecated; use names_filter=... (TransformerLens)")
            old = names
            names_filter = lambda n: old(n) or old(old_name(n))  # noqa: E731
        if names_filter is None:
            sel: NameOrFilter = lambda n: True  # noqa: E731
        elif isinstance(names_filter, str):
            sel = names_filter
        elif callable(names_filter):
            sel = names_filter
        else:
            wanted = {self._select(n)[0][0] for n in names_filter}
            sel = lambda n: n in wanted  # noqa: E731
        cache = ActivationCache()

        def save(act: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = act.detach()

        with self.hooks([(sel, save)]):
            out = self._hooked_run(*args, **kwargs)
        return out, cache
