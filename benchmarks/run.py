"""The paper's analyses as one command: constructed vs trained vs Newton vs GD.

    python -m benchmarks.run                       # full run on the shipped cpu checkpoint
    python -m benchmarks.run --preset cpu --out results/ --seed 0
    python -m benchmarks.run --quick --out tmp     # CI: tiny sizes, sanity checks, < ~1 min
    python -m benchmarks.run --only a,e            # a subset of the experiments

Experiments (each writes PNG figures beside the JSON/CSV data that made them, into
``OUT/<folder>/``; ``OUT/summary.json`` and ``OUT/summary.md`` collect the main tables).  Each
lives in its own module of :mod:`benchmarks.experiments`, whose docstring states its question,
metric and the paper's figure or table:

    a  a_convergence       error vs layer (trained transformer, probed) and vs steps (Newton, GD)
    b  b_similarity        SimE / SimW heatmaps: layers x Newton steps, layers x GD steps (log axis)
    c  c_best_match        best-matching steps vs layer; linear (Newton) vs exponential (GD) fits
    d  d_ill_conditioned   a-c again on kappa = 100 data (random eigenbasis per prompt)
    e  e_constructed       hand-built k-step network vs trained of the same depth; LSTM vs online GD
    m  m_models            every shipped and constructed model, both SimE / GD-budget conventions,
                           Table-1 analogue, Newton-equivalent steps per layer, bootstrap intervals
    o  o_lookalikes        Newton vs CG, PCG, Chebyshev, heavy ball, GD++, GD: which step count is
                           invariant over kappa and n (positive controls included)
    f  (benchmarks.width)  width ablation;  g  (benchmarks.perf)  performance table

Adding an experiment: add a module ``benchmarks/experiments/<key>_<name>.py`` that registers
``fn(ctx: Context) -> dict`` with ``@experiment(key, folder, title)``; the runner imports every
such module (see :mod:`benchmarks.experiments` for the recipe, the context's API and the
conventions shared by all experiments).  Modules outside the package go in
:data:`EXTRA_EXPERIMENT_MODULES`.

This module is the runner: the command line, loading the checkpoints, running the registered
experiments and writing ``summary.json`` / ``summary.md``.  It re-exports the registry
(:data:`EXPERIMENTS`, :func:`experiment`), :class:`Context`, :class:`Suite`, :class:`Sizes` and the
experiments' helpers under their old names, so ``from benchmarks.run import ...`` keeps working.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from construct.checkpoint import dumps_strict

from benchmarks.experiments import load_experiments
from benchmarks.experiments.common import (FIG_DPI, error_ylim, md_table, plain as _plain, pyplot as _plt,  # noqa: F401
                                           shown as _shown, derive_seed as _seed, fmt as _fmt)
from benchmarks.experiments.context import (CHECKPOINT_ROOT, FULL, ILL_KAPPA, QUICK, Context, Sizes, Suite,  # noqa: F401
                                            reference_weights)
from benchmarks.experiments.parallel import plan, run_experiments, usable_jobs
from benchmarks.experiments.registry import EXPERIMENTS, Experiment, experiment  # noqa: F401

EXTRA_EXPERIMENT_MODULES: tuple[str, ...] = ("benchmarks.width", "benchmarks.perf")  # f, g: imported before running

load_experiments()  # a-e register now (the registry's order is the run order)
from benchmarks.experiments.a_convergence import _avg_slice, convergence, exp_convergence  # noqa: E402,F401
from benchmarks.experiments.b_similarity import exp_heatmaps, heatmaps, similarity_tables  # noqa: E402,F401
from benchmarks.experiments.c_best_match import FIT_RANGES, best_match_trends, exp_best_match, trend_fits  # noqa: E402,F401
from benchmarks.experiments.d_ill_conditioned import _trained_kappa, exp_ill  # noqa: E402,F401
from benchmarks.experiments.e_constructed import _best_row, exp_constructed  # noqa: E402,F401


# ====================================================================== models
def _fallback_model(seed: int):
    """An untrained GargRegressor of the smoke preset's size (for --quick without a checkpoint)."""
    from benchmarks.train import PRESETS
    from construct.regressor import GargConfig, GargRegressor

    c = PRESETS["smoke"]
    torch.manual_seed(seed)
    return GargRegressor(GargConfig(d=c.d, n_points=c.n_points, n_layers=c.n_layers, n_heads=c.n_heads,
                                    d_model=c.d_model)).eval()


def load_ill_model(preset: str, path: str | None, model):
    """An optional transformer trained on κ = 100 data for experiment d: (model, source) or (None, "")."""
    from construct import load_model
    from construct.regressor import GargRegressor

    p = Path(path) if path else CHECKPOINT_ROOT / f"{preset}-kappa100"
    if not (p / "config.json").exists():
        if path:
            raise SystemExit(f"--ill-checkpoint {path}: no checkpoint there (config.json missing)")
        return None, ""
    m = load_model(p).eval()
    if not isinstance(m, GargRegressor) or m.d != model.d or m.n_points != model.n_points:
        raise SystemExit(f"{p}: need a GargRegressor with d={model.d}, n_points={model.n_points} like the main model")
    return m, _shown(p)


def load_models(preset: str, checkpoint: str | None, lstm_checkpoint: str | None, quick: bool, seed: int):
    """(model, source, lstm, lstm_source, notes).  Full runs need the transformer checkpoint."""
    from construct import load_model
    from construct.regressor import GargRegressor

    notes: list[str] = []
    tf_path = Path(checkpoint) if checkpoint else CHECKPOINT_ROOT / preset
    ls_path = Path(lstm_checkpoint) if lstm_checkpoint else CHECKPOINT_ROOT / f"lstm-{preset}"
    model = lstm = None
    src = lsrc = ""
    if (tf_path / "config.json").exists():
        model = load_model(tf_path).eval()
        if not isinstance(model, GargRegressor):
            raise SystemExit(f"{tf_path} holds a {type(model).__name__}, not a trained GargRegressor")
        src = _shown(tf_path)
    if (ls_path / "config.json").exists():
        lstm = load_model(ls_path).eval()
        lsrc = _shown(ls_path)
    if model is None:
        if not quick:
            raise SystemExit(
                f"no transformer checkpoint at {tf_path}. Train one (python -m benchmarks.train --preset {preset} "
                f"--out {tf_path}), pass --checkpoint PATH, or use --quick for a smoke run."
            )
        model = _fallback_model(seed)
        src = "UNTRAINED smoke-size GargRegressor (no checkpoint found; numbers are sanity checks only)"
        notes.append(f"--quick: no checkpoint at {tf_path}; used an untrained smoke-size transformer")
    if lstm is not None and lstm.d != model.d:
        notes.append(f"LSTM checkpoint {ls_path} has d={lstm.d} but the transformer has d={model.d}; LSTM skipped")
        lstm, lsrc = None, ""
    if lstm is None and quick:  # CI still exercises the LSTM code path
        from benchmarks.models import LSTMConfig, LSTMRegressor
        torch.manual_seed(seed)
        lstm = LSTMRegressor(LSTMConfig(d=model.d, n_points=model.n_points, hidden=16, n_layers=1)).eval()
        lsrc = "UNTRAINED LSTM (no checkpoint found; sanity check only)"
        notes.append(f"--quick: no LSTM checkpoint at {ls_path}; used an untrained LSTM")
    if lstm is None and not lsrc:
        notes.append(f"no LSTM checkpoint at {ls_path}; LSTM comparison skipped")
    return model, src, lstm, lsrc, notes



# ====================================================================== driver
def default_jobs() -> int:
    """``--jobs`` default: 2 where this process may use two or more cores, else 1.

    Two, not more: each process holds its own copy of the shared data it computes, and on the
    2-core CI machine two processes already use every core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


def _summary_md(ctx: Context, meta: dict, results: dict) -> str:
    lines = [f"# Benchmark summary ({'quick' if ctx.quick else 'full'} run)", "",
             f"- transformer: {ctx.model_source} (d={ctx.d}, n={ctx.n}, {ctx.n_layers} layers)",
             f"- LSTM: {ctx.lstm_source or 'none'}",
             f"- seed {ctx.seed}; wall time {meta['wall_s']:.1f} s; torch {torch.__version__}, {meta['threads']} threads",
             f"- sizes: {dataclasses.asdict(ctx.sizes)}"]
    lines += [f"- note: {n}" for n in ctx.notes]
    lines += ["", "## Checks", "", md_table(["check", "ok", "detail"],
              [[k, "yes" if v["ok"] else "**NO**", ", ".join(f"{a}={_fmt(b) if isinstance(b, float) else b}"
                for a, b in v.items() if a not in ("ok", "experiment"))] for k, v in ctx.checks.items()])]
    for key, r in results.items():
        e = EXPERIMENTS[key]
        lines += ["", f"## {e.key}. {e.title}", "", r.get("markdown", "")]
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> int:
    load_experiments(EXTRA_EXPERIMENT_MODULES)
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", help="which shipped checkpoints: benchmarks/checkpoints/{PRESET} and lstm-{PRESET}")
    ap.add_argument("--out", default="results", help="output folder (default: results/)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and sanity checks (CI)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help=f"comma-separated experiment keys (default all: {','.join(EXPERIMENTS)})")
    ap.add_argument("--checkpoint", default=None, help="transformer checkpoint folder (overrides --preset)")
    ap.add_argument("--lstm-checkpoint", default=None, help="LSTM checkpoint folder (overrides --preset)")
    ap.add_argument("--ill-checkpoint", default=None,
                    help="transformer trained on kappa=100 data for experiment d (default: checkpoints/PRESET-kappa100 if present)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the models are small, and on a shared CPU OpenMP with 2 "
                         "threads measured up to 30x slower than 1 thread; 0 keeps torch's default)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="processes running the experiments side by side (default: 2 where the machine has 2 or more "
                         "cores, else 1); the data are the same for every value; in a full run the timing experiment g "
                         "runs alone at the end; 1 process when torch runs more than one thread (--threads), since its "
                         "OpenMP is not fork-safe (see benchmarks.experiments.parallel)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    keys = list(EXPERIMENTS) if args.only is None else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in EXPERIMENTS]
    if unknown:
        ap.error(f"unknown experiment(s) {unknown}; known: {list(EXPERIMENTS)}")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    if args.jobs is not None and args.jobs < 1:
        ap.error("--jobs must be >= 1")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, keys)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, keys: list[str]) -> int:
    t_start = time.perf_counter()
    from tqdm.auto import tqdm

    model, src, lstm, lsrc, notes = load_models(args.preset, args.checkpoint, args.lstm_checkpoint, args.quick, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    alone = not args.quick  # --quick: g's tiny workloads only smoke-test its code paths, so it need not run alone
    jobs, why_not = usable_jobs(args.jobs if args.jobs is not None else default_jobs(),  # processes really used
                                len(plan(keys, alone)[0]))
    bar = tqdm(total=len(keys), desc="benchmarks", disable=args.no_progress, file=sys.stderr)
    ctx = Context(out, args.quick, args.seed, args.preset, sizes, model, src, lstm, lsrc, progress=bar, notes=notes)
    if why_not:
        ctx.note(why_not)
    ill, ill_src = load_ill_model(args.preset, args.ill_checkpoint, model)
    if ill is not None:
        ctx.models_by_kappa[ILL_KAPPA], ctx.model_sources[ILL_KAPPA] = ill, ill_src
    for name, m, s in ((args.preset, model, src), (f"lstm-{args.preset}", lstm, lsrc), (f"{args.preset}-kappa100", ill, ill_src)):
        ctx.add_shipped(name, m, s)  # experiments asking for these shipped checkpoints get the loaded ones
    with torch.no_grad():
        outcomes, suites = run_experiments(ctx, keys, jobs, alone=alone, on_start=lambda e: bar.set_description(f"{e.key}. {e.folder}"),
                                           on_done=lambda o: bar.update(1))
    bar.close()
    results = {k: o.result for k, o in outcomes.items()}
    timings = {EXPERIMENTS[k].folder: o.seconds for k, o in outcomes.items()}
    ctx.current = "run"
    for s in suites:
        name, kappa = s.key
        # CPU seconds summed over threads bound the wall time on an idle machine and, unlike wall
        # time, do not grow when other jobs share the cores
        ctx.check(f"probes_all_layers_under_10s_{name + '_' if name else ''}kappa{kappa:g}", s.timings["probe_fit_cpu_s"] < 10.0,
                  cpu_seconds=s.timings["probe_fit_cpu_s"], wall_seconds=s.timings["probe_fit_s"],
                  solve_seconds=s.timings["probe_solve_s"], layers=s.n_layers + 1, fit_prompts=sizes.fit_prompts)
    ctx.check("expected_files_exist", all((out / f).exists() for fs in ctx.files.values() for f in fs),
              n_files=sum(len(v) for v in ctx.files.values()))
    meta = {
        "quick": args.quick, "preset": args.preset, "seed": args.seed, "model": src, "lstm": lsrc or None,
        "ill_conditioned_model": ctx.model_sources.get(ILL_KAPPA, src),
        "d": ctx.d, "n": ctx.n, "layers": ctx.n_layers, "sizes": dataclasses.asdict(sizes), "notes": ctx.notes,
        "experiment_seconds": timings, "jobs": jobs, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "wall_s": time.perf_counter() - t_start,
        "conventions": {
            "predictions": "all-prefix: position t predicts y_t from the first t examples",
            "error": "squared error / d, mean over prompts; last = t=n-1, avg = mean over t=d..n-1",
            "sime": "cosine of residuals over positions t=1..n-1 (released code: t=0..n-1; experiment m reports both), mean over prompts",
            "simw": "cosine of least-squares w fitted on T=simw_queries_per_d*d fresh queries after n-1 context examples",
            "newton_alpha": "1/||S S^T||_F per prefix (released code); constructed networks: one fixed safe alpha",
            "gd_lr": "1/lambda_max(S_t) per prefix, no 1/n",
        },
    }
    summary = {"meta": meta, "checks": ctx.checks,
               "experiments": {EXPERIMENTS[k].folder: r.get("summary", {}) for k, r in results.items()},
               "files": ctx.files}
    bad: list[str] = []
    plain = _plain(summary, "summary", bad)
    ctx.nonfinite += bad
    ctx.check("all_numbers_finite", not ctx.nonfinite, nonfinite=ctx.nonfinite[:20])
    plain["checks"] = _plain(ctx.checks, "checks", [])
    meta["wall_s"] = plain["meta"]["wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(dumps_strict(plain, indent=1) + "\n")
    (out / "summary.md").write_text(_summary_md(ctx, meta, results))
    failed = [k for k, v in ctx.checks.items() if not v["ok"]]
    print(f"benchmarks: {len(results)} experiment(s) in {meta['wall_s']:.1f} s -> {out}/summary.md"
          + (f"; FAILED checks: {failed}" if failed else "; all checks passed"))
    return 1 if failed else 0


def main() -> None:
    code = run()
    # Everything is written and closed.  Interpreter shutdown would now walk every object torch and
    # matplotlib created, about 0.4-0.6 s here (measured: `python -c "import torch"` exits 0.35 s
    # sooner with gc.freeze()); frozen objects are skipped by those final collections.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    # Run from the imported module, not from this __main__ copy, so that experiments registering
    # themselves with `benchmarks.run` (f, g) land in the registry that `run` reads.
    from benchmarks.run import main as _main

    _main()
