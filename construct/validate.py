"""Input checks shared by the builder, the models, the references and the verifier.

Every public entry point validates before computing, so bad input gets a ``ValueError`` or
``TypeError`` that says what was wrong and what to do, never a silent wrong number or a stack
trace from deep inside torch.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Integral, Real

import numpy as np
import torch


def config_from_dict(cls, d: dict):
    """Build a frozen config dataclass from a JSON dict, refusing fields it does not know.

    A checkpoint written by another version or program then fails with the unknown field's name
    instead of a bare ``TypeError`` from the constructor.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonneg and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


MODEL_DTYPES = (torch.float32, torch.float64)  # float16/bfloat16 cannot hold the construction's α·S² terms


def check_dtype(dtype, allowed: tuple[torch.dtype, ...] = MODEL_DTYPES, what: str = "dtype") -> torch.dtype:
    """A torch dtype from a dtype or its name ("float32", "torch.float64"); ValueError otherwise.

    The one dtype rule of the project: hand-built and trained models run in float32 or float64
    (builder, :func:`construct.load_model`, ``model.to``/``.half()`` all apply it).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        names = ", ".join(str(a).removeprefix("torch.") for a in allowed)
        raise ValueError(f"{what} must be one of {names} (a torch.dtype or its name), got {dtype!r}")
    return dtype


def check_device(device, what: str = "device") -> torch.device:
    """A usable torch.device from a device or a string; ValueError naming the problem otherwise
    (a malformed string, or a CUDA device on a build or machine without CUDA)."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"{what} {device!r} is not a device string; use 'cpu', 'cuda' or 'cuda:N'") from None
    else:
        raise TypeError(f"{what} must be a torch.device or a string such as 'cpu', got {type(device).__name__}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what} {str(dev)!r} asks for CUDA, but this torch build or machine has no CUDA device "
                f"(torch {torch.__version__}); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type not in ("cpu", "mps", "meta"):
        raise ValueError(f"{what} {str(dev)!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def as_tensor(name: str, a, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Convert a tensor / ndarray / nested list to a floating tensor, checking for NaN and inf."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    elif isinstance(a, (list, tuple)):
        a = torch.as_tensor(np.asarray(a, dtype=np.float64))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    if a.is_complex() or a.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {a.dtype}")
    if dtype is not None:
        a = a.to(dtype)
    elif not a.is_floating_point():
        a = a.to(torch.get_default_dtype())
    if device is not None:
        a = a.to(device)
    if a.numel() and not torch.isfinite(a).all():
        bad = int((~torch.isfinite(a)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); clean the data before calling")
    return a


def check_prompts(
    X,
    y,
    x_query=None,
    *,
    d: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    min_n: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a batch of prompts: X (B, n, d), y (B, n), optional x_query (B, d).

    ``d`` fixes the data dimension (a model's); ``min_n`` the fewest examples allowed.
    """
    X = as_tensor("X", X, dtype, device)
    dtype = X.dtype
    y = as_tensor("y", y, dtype, device)
    if X.dim() != 3:
        hint = " (for a single prompt, add a batch axis: X[None])" if X.dim() == 2 else ""
        raise ValueError(f"X must have shape (B, n, d), got {tuple(X.shape)}{hint}")
    B, n, dd = X.shape
    if B == 0:
        raise ValueError("X holds no prompts (B = 0)")
    if dd == 0:
        raise ValueError("X has data dimension d = 0; each x must have at least one coordinate")
    if d is not None and dd != d:
        raise ValueError(f"X has data dimension d={dd} but the model was built for d={d}")
    if n < min_n:
        raise ValueError(
            f"prompts have n={n} examples but at least {min_n} are needed "
            "(n = 0 leaves nothing to regress on)"
        )
    if tuple(y.shape) != (B, n):
        raise ValueError(f"y must have shape (B, n) = ({B}, {n}) to match X, got {tuple(y.shape)}")
    if x_query is not None:
        x_query = as_tensor("x_query", x_query, dtype, device)
        if tuple(x_query.shape) != (B, dd):
            raise ValueError(f"x_query must have shape (B, d) = ({B}, {dd}), got {tuple(x_query.shape)}")
    return X, y, x_query
