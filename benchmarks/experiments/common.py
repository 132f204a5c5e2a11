"""Helpers shared by the experiments: JSON-ready copies, seeds, number formatting, tables, pyplot.

Public names (``plain``, ``shown``, ``derive_seed``, ``fmt``, ``md_table``, ``error_ylim``,
``pyplot``); :mod:`benchmarks.run` keeps the older private spellings (``_plain``, ``_fmt``, ...).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.data import zero_predictor_mse

FIG_DPI = 72  # the committed figures stay small (a few hundred KB for all of them)


def plain(obj: Any, path: str, bad: list[str]) -> Any:
    """JSON-ready copy of obj; non-finite floats become None and are reported in ``bad``."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, dict):
        return {str(k): plain(v, f"{path}.{k}", bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def shown(path: Path) -> str:
    """A path as shown in outputs: relative to the working directory when inside it (portable summaries)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def derive_seed(base: int, tag: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}/{tag}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.{digits}f}"
    return f"{v:.{digits - 1}e}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def error_ylim(d: int, kappa: float = 1.0) -> tuple[float, float]:
    """y-range for error plots: from 1e-6 of the zero predictor's error (converged) to 3x it."""
    zero = zero_predictor_mse(d, kappa) / d
    return 0.5e-6 * zero, 3 * zero


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

