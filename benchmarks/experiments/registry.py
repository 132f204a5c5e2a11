"""The experiment registry: ``@experiment(key, folder, title)`` adds ``fn(ctx) -> dict`` to :data:`EXPERIMENTS`.

Experiments run in registration order.  :func:`benchmarks.experiments.load_experiments` imports
every experiment module of this package (files named ``<letter>_<name>.py``, in file-name order)
and the extra modules listed in :data:`benchmarks.run.EXTRA_EXPERIMENT_MODULES`.

With ``benchmarks.run --jobs N`` (N > 1) the experiments run in N processes
(:mod:`benchmarks.experiments.parallel`), and three optional hints say how:

* ``group``: experiments with the same group run in one process, in registration order, so that
  the shared data they ask the context for (``ctx.suite(1.0)``) is computed once;
* ``cost``: relative run time; the groups start heaviest first, which balances the processes.
  The shipped experiments give their ``--quick`` seconds measured on the 2-core CI-size machine
  (o says 2.0 for its 1.3 s: it is the longest experiment of a full run after g, so it starts early);
* ``alone``: the experiment runs after all the others, in the main process, with nothing else
  running (timing measurements, whose numbers other processes would disturb); ``--quick``, whose
  timings are smoke tests only, schedules it like the others.

The results do not depend on any of them: every experiment's data is the same whichever process
runs it (tests/test_benchmarks.py checks ``--jobs 1`` against ``--jobs 2`` byte for byte).
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
    group: str | None = None          # same group: same process, registration order (shared data)
    cost: float = 1.0                 # relative run time (scheduling order only)
    alone: bool = False               # run last, in the main process, nothing else running


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(key: str, folder: str, title: str, *, group: str | None = None, cost: float = 1.0, alone: bool = False):
    """Register ``fn(ctx) -> dict`` as an experiment (runs in registration order; see the module
    docstring for the scheduling hints ``group``, ``cost`` and ``alone``)."""
    if not (isinstance(cost, (int, float)) and cost > 0):
        raise ValueError(f"experiment {key!r}: cost must be a number > 0, got {cost!r}")

    def deco(fn: Callable[["Context"], dict]) -> Callable[["Context"], dict]:
        if key in EXPERIMENTS:
            raise ValueError(f"experiment key {key!r} is already registered ({EXPERIMENTS[key].folder})")
        EXPERIMENTS[key] = Experiment(key, folder, title, fn, group, float(cost), bool(alone))
        return fn
    return deco

