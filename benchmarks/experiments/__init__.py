"""The experiments of ``python -m benchmarks.run``, one module per experiment.

Each module ``<key>_<name>.py`` (``a_convergence.py``, ``b_similarity.py``, …) states in its
docstring the question it answers, the metric and the paper's figure or table it mirrors, and
registers itself with :func:`experiment`.  The runner (:mod:`benchmarks.run`) imports every such
module in file-name order (:func:`load_experiments`), so **adding an experiment is adding a file**::

    # benchmarks/experiments/h_layers.py
    '''h. Accuracy vs layers: ... (question, metric, paper figure).'''
    from benchmarks.experiments import Context, experiment

    @experiment("h", "h_layers", "Accuracy vs layers")
    def exp_layers(ctx: Context) -> dict:
        out = ctx.dir("h_layers")
        s = ctx.suite(1.0)                  # shared data: test prompts, probes, Newton/GD/OLS
        ctx.write_json(out / "layers.json", {...})
        ctx.check("h_something_holds", ok, detail=...)
        return {"summary": {...}, "markdown": "..."}

and adding it to the ``EXPECTED`` file list in ``tests/test_benchmarks.py``.  The context gives
``ctx.dir(...)``, ``ctx.write_json / write_csv / save_fig`` (they record the files for the summary;
``ctx.record`` for files written otherwise), ``ctx.prompts`` for seeded data, ``ctx.model`` /
``ctx.lstm`` / ``ctx.suite(kappa)`` for the shared computations, ``ctx.sizes`` (``FULL`` or
``QUICK``), ``ctx.check(name, ok, ...)`` for sanity checks (a failed check makes the command exit 1)
and ``ctx.step(msg)`` for the progress bar.  Return ``{"summary": {...}, "markdown": "..."}``; the
summary goes into summary.json under the experiment's folder, the markdown into summary.md.
Experiments living outside this package (``benchmarks.width`` → f, ``benchmarks.perf`` → g)
register the same way and are listed in :data:`benchmarks.run.EXTRA_EXPERIMENT_MODULES`.

Conventions (stated once here, repeated in the JSON outputs):

* all-prefix predictions: position t predicts y_t from the first t examples (t = 0 gives 0);
* error = squared error / d, averaged over prompts ("nmse"); "last" is position t = n − 1,
  "avg" the mean over t = d … n − 1 (at least d examples, as in benchmarks.train's eval_nmse_avg);
* SimE over positions t = 1 … n − 1, averaged over prompts (the released code starts at t = 0, the
  no-context position; experiment m reports both);
* SimW with a context of ``simw_context`` examples (default n − 1) and T = ``simw_queries_per_d``·d
  fresh queries per prompt from the prompt's own distribution;
* Newton uses the released code's α = 1/‖SSᵀ‖_F per prefix, GD η = 1/λ_max(S_t) per prefix
  (no 1/n), both from :mod:`verify.reference` (spectral all-steps path);
* the trained transformer's layer l is read by a closed-form linear probe (:mod:`benchmarks.probes`)
  fitted on separate prompts of the same distribution.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from benchmarks.experiments.common import error_ylim, fmt, md_table, plain, pyplot, shown
from benchmarks.experiments.context import FULL, ILL_KAPPA, QUICK, Context, Sizes, Suite, reference_weights
from benchmarks.experiments.registry import EXPERIMENTS, Experiment, experiment

_MODULE_NAME = re.compile(r"^[a-z]_[a-z0-9_]+$")  # a_convergence, b_similarity, ...: experiment modules


def experiment_modules() -> list[str]:
    """The experiment modules of this package (``<letter>_<name>``), in file-name order."""
    return sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if _MODULE_NAME.match(m.name))


def load_experiments(extra: tuple[str, ...] = ()) -> dict[str, Experiment]:
    """Import every experiment module (this package's, then ``extra``) so it registers; the registry."""
    for mod in experiment_modules() + list(extra):
        importlib.import_module(mod)
    return EXPERIMENTS


__all__ = ["EXPERIMENTS", "Experiment", "experiment", "Context", "Suite", "Sizes", "FULL", "QUICK", "ILL_KAPPA",
           "reference_weights", "md_table", "fmt", "error_ylim", "plain", "pyplot", "shown",
           "experiment_modules", "load_experiments"]
