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


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
LEAN_MIN_DECADES = 2.0  # log axes spanning at least this many decades get the lean ticks


def decade_label(v: float, pos=None) -> str:
    """``10⁻⁶`` for an exact power of ten (plain Unicode superscripts, no mathtext), else ``""``."""
    if not (v > 0 and math.isfinite(v)):
        return ""
    e = round(math.log10(v))
    return f"10{str(e).translate(_SUPERSCRIPT)}" if abs(math.log10(v) - e) < 1e-9 else ""


def lean_log_axes(fig) -> int:
    """Cheaper ticks on the wide log axes of ``fig``; returns how many axes it changed.

    A base-10 log axis with matplotlib's default ticks that spans at least
    :data:`LEAN_MIN_DECADES` decades loses its minor ticks (eight per decade, unlabelled there)
    and labels its decades as ``10⁻⁶`` in plain Unicode instead of mathtext.  Measured on the 17
    ``--quick`` figures (issue 13), the minor tick objects were about two thirds of the drawing
    time and mathtext's parser another ~0.3 s.  Narrower axes, other bases and axes whose ticks an
    experiment set itself are left alone, so no axis loses its labels.  Only the picture changes;
    the data beside it does not depend on it.
    """
    from matplotlib import ticker

    changed = 0
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            loc, fmt_ = axis.get_major_locator(), axis.get_major_formatter()
            if (axis.get_scale() != "log" or type(loc) is not ticker.LogLocator or getattr(loc, "_base", 10) != 10
                    or type(fmt_) is not ticker.LogFormatterSciNotation):
                continue
            lo, hi = sorted(axis.get_view_interval())
            if not (lo > 0 and math.isfinite(hi)) or math.log10(hi / lo) < LEAN_MIN_DECADES:
                continue
            axis.set_minor_locator(ticker.NullLocator())
            axis.set_major_formatter(ticker.FuncFormatter(decade_label))
            changed += 1
    return changed

