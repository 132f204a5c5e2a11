"""The experiment registry: ``@experiment(key, folder, title)`` adds ``fn(ctx) -> dict`` to :data:`EXPERIMENTS`.

Experiments run in registration order.  :func:`benchmarks.experiments.load_experiments` imports
every experiment module of this package (files named ``<letter>_<name>.py``, in file-name order)
and the extra modules listed in :data:`benchmarks.run.EXTRA_EXPERIMENT_MODULES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from benchmarks.experiments.context import Context


@dataclass(frozen=True)
class Experiment:
    key: str                          # short id used by --only ("a", "b", ...)
    folder: str                       # output sub-folder, also the summary key
    title: str
    fn: Callable[["Context"], dict]


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(key: str, folder: str, title: str):
    """Register ``fn(ctx) -> dict`` as an experiment (runs in registration order)."""
    def deco(fn: Callable[["Context"], dict]) -> Callable[["Context"], dict]:
        if key in EXPERIMENTS:
            raise ValueError(f"experiment key {key!r} is already registered ({EXPERIMENTS[key].folder})")
        EXPERIMENTS[key] = Experiment(key, folder, title, fn)
        return fn
    return deco

