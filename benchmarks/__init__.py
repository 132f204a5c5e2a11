"""Benchmarks: trained GPT-2-style regressors, the LSTM baseline, and the paper's analyses.

The trained checkpoints ship inside the package (``benchmarks/checkpoints/NAME``), so they load
by name from an installed wheel as well as from a checkout::

    import benchmarks
    benchmarks.checkpoint_names()          # ['cpu', 'cpu-kappa100', 'd10', 'lstm-cpu']
    model = benchmarks.checkpoint("cpu")    # a GargRegressor; same as construct.load_model("cpu")
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _root() -> Path:
    return Path(str(resources.files(__name__) / "checkpoints"))


def checkpoint_names() -> list[str]:
    """Names of the shipped checkpoints (folders holding config.json and model.safetensors)."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file() and (p / "model.safetensors").is_file())


def checkpoint_path(name: str) -> Path:
    """The folder of shipped checkpoint ``name``; CheckpointError (a ValueError) listing the names otherwise."""
    from construct.checkpoint import CheckpointError

    names = checkpoint_names()
    if not isinstance(name, str) or name not in names:
        raise CheckpointError(f"no shipped checkpoint named {name!r}; shipped: {names}")
    return _root() / name


def checkpoint(name: str, dtype=None, device="cpu"):
    """Load shipped checkpoint ``name`` (see :func:`checkpoint_names`) with :func:`construct.load_model`."""
    from construct.checkpoint import load_model

    return load_model(checkpoint_path(name), dtype=dtype, device=device)
