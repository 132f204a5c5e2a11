"""Saving and loading models: a folder with ``config.json`` and ``model.safetensors``.

No pickles anywhere.  Every model class in the project (hand-built Newton networks, trained
GPT-2-style regressors, the LSTM baseline) subclasses :class:`SavableModel`, registers a
``kind`` and round-trips through :func:`load_model`::

    model.save("runs/m")            # runs/m/config.json + runs/m/model.safetensors
    model = load_model("runs/m")    # dispatches on config["kind"]

Writes are atomic (temp file, fsync, rename), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

FORMAT = "newton-icl"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

_KINDS: dict[str, type["SavableModel"]] = {}
# kinds whose class lives outside `construct`: imported on demand from this fixed allow-list
# (never from a module path read out of a checkpoint).
_LAZY_KINDS = {
    "garg": "construct.regressor",
    "lstm": "benchmarks.models",
}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or was not written by this project."""


def register_kind(kind: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return deco


# ---------------------------------------------------------------------- atomic file writes

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    # O_EXCL: never reuse a file; mode 0o666 lets the process umask give the usual permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf, numpy or torch scalars too) replaced by None."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic) or (isinstance(obj, torch.Tensor) and obj.dim() == 0):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_strict(obj: Any, **kw) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity tokens): non-finite numbers become ``null``."""
    return json.dumps(finite_json(obj), allow_nan=False, **kw)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (dumps_strict(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} not found")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{what} {str(path)!r} is corrupt (not valid JSON: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {str(path)!r} is corrupt (expected a JSON object)")
    return obj


def read_tensors(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {str(path)!r} not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types on truncated/garbled files
        raise CheckpointError(
            f"{what} file {str(path)!r} is corrupt or not a safetensors file ({type(e).__name__}: {e})"
        ) from None


# ---------------------------------------------------------------------- models
class SavableModel(nn.Module):
    """Mixin for models that save as JSON config + safetensors and load via :func:`load_model`."""

    kind: str = ""

    # Models configured by one frozen dataclass (with to_dict/from_dict) set ``config_cls`` and keep
    # it in ``self.cfg``; the two methods below then need no override.
    config_cls: type | None = None

    def config_dict(self) -> dict:
        if self.config_cls is None:  # pragma: no cover - subclasses either set config_cls or override
            raise NotImplementedError(f"{type(self).__name__} must set config_cls or override config_dict")
        return self.cfg.to_dict()

    @classmethod
    def from_config_dict(cls, cfg: dict) -> "SavableModel":
        if cls.config_cls is None:  # pragma: no cover
            raise NotImplementedError(f"{cls.__name__} must set config_cls or override from_config_dict")
        return cls(cls.config_cls.from_dict(cfg))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors`` (atomically); return ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.state_dict().items()}
        atomic_save_tensors(path / WEIGHTS_FILE, state, metadata={"format": FORMAT, "kind": self.kind})
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "dtype": str(dtype).removeprefix("torch."),
            "config": self.config_dict(),
        }
        knobs = getattr(getattr(self, "transformer", None), "knobs", None)
        if knobs is not None:  # compiled by construct.to_gpt2: rebuilt from the config plus these
            meta["gpt2"] = knobs.to_dict()
        atomic_write_json(path / CONFIG_FILE, meta)
        return path


def _resolve_kind(kind: str) -> type[SavableModel]:
    if kind not in _KINDS and kind in _LAZY_KINDS:
        importlib.import_module(_LAZY_KINDS[kind])
    if kind not in _KINDS:
        known = sorted(set(_KINDS) | set(_LAZY_KINDS))
        raise CheckpointError(f"checkpoint has unknown model kind {kind!r}; known kinds: {known}")
    return _KINDS[kind]


def _shipped_checkpoint(path: Path) -> Path | None:
    """A bare name such as ``"cpu"`` that is no folder here names a checkpoint shipped in ``benchmarks``."""
    if len(path.parts) != 1:
        return None
    try:
        import benchmarks
    except ImportError:  # pragma: no cover - construct installed without the benchmarks package
        return None
    return benchmarks.checkpoint_path(path.name) if path.name in benchmarks.checkpoint_names() else None


def _shipped_hint() -> str:
    try:
        import benchmarks
    except ImportError:  # pragma: no cover
        return ""
    names = benchmarks.checkpoint_names()
    return f" (shipped checkpoints load by name: {names})" if names else ""


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> SavableModel:
    """Load any model saved by this project from its folder (``config.json`` + ``model.safetensors``).

    ``path`` may also be the name of a checkpoint shipped with the package (``"cpu"``, ``"d10"``, ...;
    see ``benchmarks.checkpoint_names()``) when no folder of that name exists here.
    ``dtype`` converts the weights (e.g. ``torch.float64``); by default they keep the saved dtype.
    Raises :class:`CheckpointError` (a ``ValueError``) naming the problem for a missing, corrupt or
    foreign checkpoint.
    """
    path = Path(path)
    if not path.exists():
        shipped = _shipped_checkpoint(path)
        if shipped is None:
            raise CheckpointError(f"no checkpoint at {str(path)!r}: folder not found{_shipped_hint()}")
        path = shipped
    if not path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is a file; a checkpoint is a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    meta = read_json(path / CONFIG_FILE, "checkpoint config")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path / CONFIG_FILE)!r} is not a {FORMAT} checkpoint (format={meta.get('format')!r}); "
            "it was written by another program"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format_version {meta.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    cls = _resolve_kind(str(meta.get("kind")))
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r} is corrupt: 'config' must be an object")
    try:
        model = cls.from_config_dict(meta["config"])
        if "gpt2" in meta:
            from .gpt2 import recompile

            model = recompile(model.to(getattr(torch, str(meta.get("dtype", "float64")))), meta["gpt2"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint config in {str(path)!r} is invalid: {e}") from None
    state = read_tensors(path / WEIGHTS_FILE)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {str(path)!r} do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"weights in {str(path)!r}: tensor {k!r} has shape {tuple(v.shape)}, config implies {tuple(expected[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"weights in {str(path)!r}: tensor {k!r} contains NaN or inf")
    saved_dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model = model.to(dtype=saved_dtype)
    model.load_state_dict(state)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device)
