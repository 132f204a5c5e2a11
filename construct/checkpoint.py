"""Saving and loading models: a folder with ``config.json`` and ``model.safetensors``.

No pickles anywhere.  Every model class in the project (hand-built Newton networks, trained
GPT-2-style regressors, the LSTM baseline) subclasses :class:`SavableModel`, registers a
``kind`` and round-trips through :func:`load_model`::

    model.save("runs/m")            # runs/m/config.json + runs/m/model.safetensors
    model = load_model("runs/m")    # dispatches on config["kind"]

Writes are atomic (temp file, fsync, rename), so a crash never leaves a half-written file.

Integrity: ``config.json`` stores ``sha256.weights`` (of ``model.safetensors``) and
``sha256.config`` (of its own content without that field); :func:`load_model` checks both, so a
flipped bit or a weights file from another model is refused.  A checkpoint written before the
hashes existed loads with a :class:`CheckpointWarning`.  Before anything is allocated, the config
is built on PyTorch's ``meta`` device, its parameter count is capped (``MAX_PARAMS``) and every
tensor's shape and dtype in the safetensors header is checked against it, so a hostile config
(k = 10⁹, d = 10⁶, deeply nested JSON) is refused in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import uuid
import warnings
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


MAX_CONFIG_BYTES = 1 << 20     # config.json larger than 1 MB is not ours
MAX_JSON_DEPTH = 32            # our configs nest 3 deep
MAX_PARAMS = 1 << 31           # parameters a checkpoint may ask for (16 GB in float64)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or was not written by this project."""


class CheckpointWarning(UserWarning):
    """A checkpoint loads but cannot be fully verified (written before integrity hashes existed)."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config_digest(meta: dict) -> str:
    """SHA-256 of config.json's content without its ``sha256`` field (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return _sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _json_depth_ok(text: str, limit: int) -> bool:
    """Nesting depth of JSON text ≤ limit (strings skipped), without recursion."""
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


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
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{what} {str(path)!r} is {size} bytes, more than the {MAX_CONFIG_BYTES} allowed; not ours")
    try:
        text = path.read_text()
        if not _json_depth_ok(text, MAX_JSON_DEPTH):
            raise CheckpointError(f"{what} {str(path)!r} nests deeper than {MAX_JSON_DEPTH} levels; not ours")
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{what} {str(path)!r} is corrupt (not valid JSON: {type(e).__name__}: {e})") from None
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
        from safetensors.torch import save

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        data = save(state, metadata={"format": FORMAT, "kind": self.kind})
        atomic_write_bytes(path / WEIGHTS_FILE, data)
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
        meta["sha256"] = {"weights": _sha256_bytes(data), "config": _config_digest(meta)}
        atomic_write_json(path / CONFIG_FILE, meta)
        return path


def _resolve_kind(kind: str) -> type[SavableModel]:
    if kind not in _KINDS and kind in _LAZY_KINDS:
        importlib.import_module(_LAZY_KINDS[kind])
    if kind not in _KINDS:
        known = sorted(set(_KINDS) | set(_LAZY_KINDS))
        raise CheckpointError(f"checkpoint has unknown model kind {kind!r}; known kinds: {known}")
    return _KINDS[kind]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (checkpoints and training run folders)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def _header_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, dtype name) from the safetensors header, without reading the data."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, MAX_CONFIG_BYTES * 16):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            out[k] = (tuple(int(x) for x in v["shape"]), str(v["dtype"]))
        return out
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as e:
        raise CheckpointError(f"weights file {str(path)!r} is corrupt or not a safetensors file ({e})") from None


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

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
    from .validate import MODEL_DTYPES, check_device, check_dtype

    if dtype is not None:
        dtype = check_dtype(dtype, MODEL_DTYPES)
    device = check_device(device)
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
    hashes = meta.get("sha256")
    if hashes is None:
        warnings.warn(
            f"checkpoint {str(path)!r} has no sha256 hashes (written before integrity checks existed); it "
            "loads unverified. Re-save it with model.save(path) to add them.", CheckpointWarning, stacklevel=2)
    elif not (isinstance(hashes, dict) and isinstance(hashes.get("weights"), str) and isinstance(hashes.get("config"), str)):
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r} is corrupt: 'sha256' must hold 'weights' and 'config' digests")
    elif _config_digest(meta) != hashes["config"]:
        raise CheckpointError(
            f"{str(path / CONFIG_FILE)!r} is corrupt: its content does not match its sha256 (edited or damaged)")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for a hostile config
            model = cls.from_config_dict(meta["config"])
    except (TypeError, ValueError, KeyError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"checkpoint config in {str(path)!r} is invalid: {e}") from None
    except RuntimeError:
        # a builder that computes with its weights (e.g. alpha="adaptive") cannot run on the meta
        # device; its config has passed the dataclass size caps by now, so build it for real
        try:
            model = cls.from_config_dict(meta["config"])
        except (TypeError, ValueError, KeyError, OverflowError, RecursionError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint config in {str(path)!r} is invalid: {e}") from None
    n_params = sum(v.numel() for v in model.state_dict().values())
    if n_params > MAX_PARAMS:
        raise CheckpointError(
            f"checkpoint config in {str(path)!r} implies {n_params:.3g} parameters, more than the {MAX_PARAMS:.3g} allowed")
    if "gpt2" in meta:  # compiled by construct.to_gpt2: rebuilt from the real source weights (size now checked)
        try:
            from .gpt2 import recompile

            src = cls.from_config_dict(meta["config"]).to(check_dtype(str(meta.get("dtype", "float64")), MODEL_DTYPES))
            model = recompile(src, meta["gpt2"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint config in {str(path)!r} is invalid: {e}") from None
    expected = model.state_dict()
    wpath = path / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"weights file {str(wpath)!r} not found")
    header = _header_shapes(wpath)
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {str(path)!r} do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, (shape, dt) in header.items():
        if shape != tuple(expected[k].shape):
            raise CheckpointError(
                f"weights in {str(path)!r}: tensor {k!r} has shape {shape}, config implies {tuple(expected[k].shape)}"
            )
        if dt not in ("F32", "F64"):
            raise CheckpointError(f"weights in {str(path)!r}: tensor {k!r} has dtype {dt}; only F32/F64 are ours")
    if hashes is not None and sha256_file(wpath) != hashes["weights"]:
        raise CheckpointError(
            f"weights file {str(wpath)!r} is corrupt: its sha256 does not match config.json "
            "(damaged, or the weights of another model)")
    state = read_tensors(wpath)
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"weights in {str(path)!r}: tensor {k!r} contains NaN or inf")
    saved_dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model = model.to(dtype=saved_dtype)
    if any(p.is_meta for p in model.parameters()):
        # allocate only now, at the checked size (torch.empty, not Module.to_empty: its empty_like on
        # meta tensors goes through torch._refs, whose first use imports sympy, ~0.5 s)
        model = model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu") if t.is_meta else t)
    model.load_state_dict(state)
    if hasattr(model, "_materialize_block_specs"):  # hand-built: its block descriptions were built on meta too
        model._materialize_block_specs()
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device)
