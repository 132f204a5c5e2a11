"""f. Width ablation: how wide must a trained GPT-style regressor be to reach OLS?

    python -m benchmarks.width                      # the full ablation (CPU minutes per width)
    python -m benchmarks.width --quick --out tmp    # seconds: tiny models, a few dozen steps
    python -m benchmarks.width --minutes-per-width 3.5 --threads 2 --out benchmarks/results/width

The paper's claim (Fu et al. 2024, and DESIGN.md "Width must be O(d)"): a transformer needs a
residual width that grows with d to behave like OLS.  Our construction reaches OLS *exactly*
(to float64 round-off) at width 3d + 2 with enough layers (k + 2 layers, k Newton steps), so
3d + 2 is an upper bound on the width that suffices for an *exact* network.  This experiment
asks what training finds at each width.

Protocol (d = 5, 11 points, the ``cpu`` preset's model otherwise):

* train a :class:`~construct.regressor.GargRegressor` at each residual width D in
  :data:`WIDTHS` (6 layers; 4 heads, or the largest divisor of D not above 4; MLP 4D) with
  :func:`benchmarks.train.train`, all with the **same number of optimiser steps** and the same
  seed, batch and schedule shape (the ``cpu`` preset's Adam 1e-3, warm-up 1/18 of the steps,
  cosine decay to 5 %, grad-clip 1).  The step budget is fixed up front: ``--steps``, or
  calibrated from ``--minutes-per-width`` M (a few timed steps per width; the budget makes the
  whole ablation take about M × #widths minutes: narrow models finish sooner, wide ones later);
* evaluate on fresh prompts (seeded apart from the training batches and the trainer's own
  eval set): nMSE = squared error / d, averaged over prompts, at the last position
  (t = n − 1 examples in context) and averaged over positions t ≥ d ("avg");
* OLS (min-norm least squares, :func:`verify.reference.ols_predictions`) and the zero
  predictor (nMSE = 1) on the same prompts as reference lines;
* the constructed network at width 3d + 2 (:func:`construct.build_newton_transformer`, one
  fixed safe α, the smallest k whose Newton iterate matches OLS to ``EXACT_TOL`` on these
  prompts), evaluated by running the network itself.

**Tolerance.**  On noiseless data OLS is exact once t ≥ d (nMSE ≈ 1e-30), so a *relative*
tolerance to OLS is meaningless; we use an absolute one on the zero predictor's scale (which is
1): a width "reaches OLS within τ" when its nMSE at the last position exceeds OLS's by at most
τ.  The headline is τ = 0.05 (the model leaves at most 5 % of the label variance unexplained
where OLS leaves none; the ``cpu`` preset's 64-wide model reaches 0.016 after its full 18k
steps), and τ = 0.1 and 0.01 are reported beside it.

**What the result is.**  Equal and short training per width: every number is an *upper bound
on the error* that width can reach (a lower bound on what it can do); the minimal width found
is an upper bound on the true minimal width only in the sense "this much training sufficed" --
a narrower model might get there with more steps.  The committed results record the budget.

Outputs in ``OUT`` (default ``benchmarks/results/width``): ``width.json`` (everything, with the
protocol and machine), ``width.csv`` (one row per model), ``width.png`` (nMSE vs width, log y,
vertical line at 3d + 2, OLS and zero-predictor lines) and ``width_{D}_log.csv`` (each
width's training curve).  ``--add-checkpoint PATH`` (no training) evaluates a longer-trained
model on the same eval prompts and adds it as a separate, clearly labelled point
(``longer_trained``; it never enters the equal-budget minimal width).  ``python -m benchmarks.run`` (experiment f) reads the committed
``width.json`` and re-plots it; with ``--quick`` it also re-trains tiny models end to end.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import csv
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from construct.checkpoint import dumps_strict

from benchmarks.adam import Adam
from benchmarks.data import sample_prompts, zero_predictor_mse
from benchmarks.train import PRESETS, TrainConfig, build_model, evaluate, train, training_batch
from construct.checkpoint import load_model
from verify.reference import ols_predictions

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "width"
WIDTHS = (8, 12, 16, 24, 32, 64)
QUICK_WIDTHS = (8, 16)
TOLERANCES = (0.1, 0.05, 0.01)  # absolute excess nMSE over OLS at the last position
HEADLINE_TOL = 0.05
PREFERRED_HEADS = 4  # the cpu preset's head count
EVAL_SEED = 0x5EED_F1D7  # fresh evaluation prompts, apart from training batches and the trainer's eval set
EXACT_TOL = 1e-8  # |nMSE(constructed) - nMSE(OLS)| counted as "reaches OLS exactly" (float64 round-off)
K_SEARCH_MAX = 80  # largest Newton k tried for the constructed point
FILES = ("width.json", "width.csv", "width.png")


# ====================================================================== pieces
def heads_for(width: int, preferred: int = PREFERRED_HEADS) -> int:
    """The largest head count <= ``preferred`` that divides ``width`` (d_model % heads == 0)."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width (d_model) must be an int >= 1, got {width!r}")
    return max(h for h in range(1, min(preferred, width) + 1) if width % h == 0)


def width_config(base: TrainConfig, width: int, steps: int, seed: int = 0) -> TrainConfig:
    """``base`` at residual width ``width`` for ``steps`` steps; the schedule shape is kept.

    Warm-up is the base's fraction of its steps (cpu preset: 1000/18000), at least 1 step.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    warm = max(1, round(steps * base.warmup_steps / base.train_steps)) if base.warmup_steps else 0
    return base.replace(
        preset=f"width{width}", d_model=width, n_heads=heads_for(width), d_mlp=0, train_steps=steps,
        warmup_steps=min(warm, steps), seed=seed, eval_every=max(1, min(base.eval_every, steps)),
        checkpoint_every=steps, keep_checkpoints=1,
    )


def nmse_stats(per_pos: torch.Tensor, d: int) -> dict:
    """{"nmse_last", "nmse_avg"} from the per-position nMSE (n,): last position, mean over t >= d."""
    return {"nmse_last": float(per_pos[-1]),
            "nmse_avg": float(per_pos[d:].mean()) if per_pos.shape[0] > d else float("nan")}


def per_position(P: torch.Tensor, y: torch.Tensor, d: int) -> torch.Tensor:
    return ((P.double() - y.double()) ** 2).mean(0) / d  # (n,)


def eval_prompts(d: int, n: int, B: int, seed: int = EVAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    X, y, _ = sample_prompts(B, n, d, seed=seed, dtype=torch.float64)
    return X, y


def step_seconds(base: TrainConfig, width: int, probe_steps: int = 12) -> float:
    """Median wall time of one training step at ``width`` (a few steps on throw-away weights)."""
    cfg = width_config(base, width, max(probe_steps, 2))
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = Adam(model.parameters(), lr=1e-4)
    times = []
    with torch.enable_grad():
        for s in range(probe_steps):
            X, y, _, _ = training_batch(cfg, s)
            t0 = time.perf_counter()
            loss = ((model(X, y) - y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def calibrate_steps(base: TrainConfig, widths, minutes_per_width: float) -> tuple[int, dict]:
    """The equal step budget that makes the whole ablation take about ``minutes_per_width`` × #widths.

    Times a few steps at every width, adds 5 % for evaluation, and rounds down to a multiple of 50.
    """
    t = {w: step_seconds(base, w) for w in widths}
    total = sum(t.values()) * 1.05
    return max(10, int(minutes_per_width * 60.0 * len(widths) / total) // 50 * 50), t


def constructed_point(X: torch.Tensor, y: torch.Tensor, ols_pp: torch.Tensor, k_max: int = K_SEARCH_MAX) -> dict:
    """The hand-built network at width 3d + 2: smallest k whose predictions match OLS, then run it.

    One fixed α for all prompts (min over prompts of ``construct.safe_alpha``: α·λ_max(S)² <= 1
    for every prefix).  k is found with the batched reference Newton (cheap), then the network
    with that k is built and evaluated itself.
    """
    from construct import build_newton_transformer, safe_alpha
    from verify.reference import newton_predictions

    B, n, d = X.shape
    alpha = float(safe_alpha(X).min())
    ols = nmse_stats(ols_pp, d)
    ks = list(range(k_max + 1))
    N = newton_predictions(X, y, ks, alpha=alpha, method="batched", check_precision="warn")  # (K+1, B, n)
    k_found = k_last = None
    for k in ks:
        st = nmse_stats(per_position(N[k], y, d), d)
        ok_last = abs(st["nmse_last"] - ols["nmse_last"]) <= EXACT_TOL
        if ok_last and k_last is None:
            k_last = k
        if ok_last and abs(st["nmse_avg"] - ols["nmse_avg"]) <= EXACT_TOL:
            k_found = k
            break
    k = k_max if k_found is None else k_found
    t0 = time.perf_counter()
    model = build_newton_transformer(d, k, alpha)
    P = model.predict_all(X, y, check_precision="warn")  # (B, n), the network itself (warns on prefixes the guard doubts)
    secs = time.perf_counter() - t0
    st = nmse_stats(per_position(P, y, d), d)
    return {
        "width": model.layout.width, "width_formula": "3d+2", "k": k, "layers": model.n_layers, "alpha": alpha,
        "alpha_rule": "min over eval prompts of construct.safe_alpha (alpha*lambda_max(S)^2 <= 1 on every prefix)",
        "reaches_ols": k_found is not None, "exact_tol": EXACT_TOL, **st,
        "k_needed_last_position": k_last,
        "k_note": "k is the smallest Newton step count whose predictions match OLS within exact_tol both at the last "
                  "position and averaged over t >= d; the avg includes prefixes with t = d examples, whose S can be "
                  "nearly singular, and one fixed alpha for all prompts must be small enough for the largest S, so "
                  "those prefixes need many steps (k_needed_last_position: the last position alone)",
        "max_abs_diff_vs_newton_k": float((P - N[k]).abs().max()),
        "seconds": secs,
    }


def _machine() -> dict:
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}


def minimal_widths(rows: list[dict], ols_last: float, tolerances=TOLERANCES) -> dict:
    """For each τ: the smallest trained width with nMSE_last − nMSE_last(OLS) <= τ (None if none)."""
    out = {}
    for tol in tolerances:
        ok = sorted(r["width"] for r in rows if r["nmse_last"] - ols_last <= tol)
        out[f"{tol:g}"] = ok[0] if ok else None
    return out


# ====================================================================== the ablation
def run_width_ablation(out_dir: str | os.PathLike, quick: bool = False, *, widths=None, steps: int | None = None,
                       minutes_per_width: float | None = None, threads: int | None = None, seed: int = 0,
                       eval_count: int | None = None, runs_dir: str | os.PathLike | None = None,
                       progress: bool = True, command: str | None = None) -> dict:
    """Train one model per width for the same number of steps, evaluate, write the files.

    ``quick``: widths (8, 16), 2 layers, 30 steps, 128 eval prompts (seconds; code path only).
    Full: :data:`WIDTHS`, the cpu preset, ``steps`` or a budget calibrated from
    ``minutes_per_width`` (default 3.5, an average over the widths).  Returns the dict written to
    ``width.json``.  Training runs go to ``runs_dir`` (kept) or a temporary folder (deleted).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    mach = _machine()  # with the threads this run uses
    base = PRESETS["cpu"]
    if quick:
        base = base.replace(n_layers=2, eval_prompts=64)
    widths = tuple(int(w) for w in (widths or (QUICK_WIDTHS if quick else WIDTHS)))
    for w in widths:
        heads_for(w)
    d, n = base.d, base.n_points
    t_start = time.perf_counter()
    budget_note = ""
    if steps is None:
        if quick:
            steps = 30
            budget_note = "quick: fixed 30 steps"
        else:
            minutes_per_width = 3.5 if minutes_per_width is None else float(minutes_per_width)
            steps, t_step = calibrate_steps(base, widths, minutes_per_width)
            budget_note = (f"calibrated: {minutes_per_width:g} min per width on average; measured ms/step "
                           + ", ".join(f"D={w}: {v * 1000:.0f}" for w, v in t_step.items()) + f" -> {steps} steps")
    else:
        budget_note = f"fixed by --steps {steps}"
    steps = int(steps)
    cap = None if minutes_per_width is None else 4.0 * float(minutes_per_width)  # safety cap only
    X, y = eval_prompts(d, n, eval_count or (128 if quick else 4096))
    ols_pp = per_position(ols_predictions(X, y), y, d)
    ols = nmse_stats(ols_pp, d)
    zero = nmse_stats(per_position(torch.zeros_like(y), y, d), d)  # on these prompts (expected: 1)
    tmp = None
    root = Path(runs_dir) if runs_dir else Path(tmp := tempfile.mkdtemp(prefix="width-runs-"))
    rows, logs = [], {}
    try:
        bar = tqdm(widths, desc="width ablation", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for w in bar:
            bar.set_postfix_str(f"D={w}: training {steps} steps")
            cfg = width_config(base, w, steps, seed)
            run = root / f"width_{w}"
            if run.exists():
                shutil.rmtree(run)
            with torch.enable_grad():
                res = train(cfg, run, max_minutes=cap, progress=progress, print_summary=False)
            model = load_model(run).eval()
            with torch.no_grad():
                pp = evaluate(model, X.to(torch.float32), y.to(torch.float32), d)
            st = nmse_stats(pp, d)
            row = {"model": "trained", "width": w, "heads": cfg.n_heads, "layers": cfg.n_layers, "d_mlp": 4 * w,
                   "params": sum(p.numel() for p in model.parameters()), "steps": int(res["step"]),
                   "train_seconds": float(res["wall_seconds"]), "status": res["status"], **st,
                   "excess_last_vs_ols": st["nmse_last"] - ols["nmse_last"],
                   "trainer_eval_nmse_last": float(res["eval_nmse_last"])}
            rows.append(row)
            with open(run / "log.csv", newline="") as f:
                logs[w] = list(csv.DictReader(f))
            bar.set_postfix_str(f"D={w}: nmse_last={st['nmse_last']:.4f}")
        bar.close()
        cons = constructed_point(X, y, ols_pp, k_max=K_SEARCH_MAX)
    finally:
        torch.set_num_threads(old_threads)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    equal = all(r["steps"] == steps for r in rows)
    mins = minimal_widths(rows, ols["nmse_last"])
    result = {
        "experiment": "f. width ablation", "quick": quick,
        "command": command or "benchmarks.width.run_width_ablation(...)",
        "d": d, "n_points": n, "construction_width": 3 * d + 2,
        "protocol": {
            "base_preset": "cpu" + (" (quick: 2 layers)" if quick else ""),
            "train_config_width_example": width_config(base, widths[-1], steps, seed).to_dict(),
            "steps_per_width": steps, "budget": budget_note, "equal_steps": equal,
            "wall_cap_minutes_per_width": cap, "seed": seed,
            "eval_prompts": int(X.shape[0]), "eval_seed": EVAL_SEED,
            "nmse": "squared error / d, mean over prompts; last = position t=n-1; avg = mean over positions t>=d",
            "tolerance": "width reaches OLS within tau if nmse_last - nmse_last(OLS) <= tau (absolute; zero predictor = 1)",
            "headline_tolerance": HEADLINE_TOL,
            "caveat": "equal, short training per width: each error is an upper bound on what that width can reach",
        },
        "ols": ols, "zero_predictor": {**zero, "expected": zero_predictor_mse(d) / d},
        "trained": rows, "constructed": cons,
        "minimal_width": mins, "minimal_width_headline": mins[f"{HEADLINE_TOL:g}"],
        "machine": mach, "wall_seconds": time.perf_counter() - t_start,
    }
    write_outputs(result, out, logs)
    return result


def add_reference_checkpoint(out_dir: str | os.PathLike, checkpoint: str | os.PathLike, label: str | None = None) -> dict:
    """Evaluate a longer-trained checkpoint on the ablation's own eval prompts and add it to the results.

    For context only: such a model had a different (larger) budget, so it is kept apart from the
    equal-budget rows (``longer_trained``) and never enters ``minimal_width``.  Rewrites
    width.json / width.csv / width.png in ``out_dir`` (training logs untouched).
    """
    res = load_results(out_dir)
    ck = Path(checkpoint)
    model = load_model(ck).eval()
    d, n = res["d"], res["n_points"]
    if getattr(model, "d", None) != d or getattr(model, "n_points", None) != n:
        raise ValueError(f"{ck} is a model for d={getattr(model, 'd', '?')}, n={getattr(model, 'n_points', '?')}; "
                         f"the ablation uses d={d}, n={n}")
    steps = None
    latest = ck / "checkpoints" / "latest.json"
    if latest.exists():
        ptr = json.loads(latest.read_text())
        steps = int(json.loads((ck / "checkpoints" / ptr["dir"] / "trainer.json").read_text())["step"])
    X, y = eval_prompts(d, n, res["protocol"]["eval_prompts"], res["protocol"]["eval_seed"])
    with torch.no_grad():
        st = nmse_stats(evaluate(model, X.to(torch.float32), y.to(torch.float32), d), d)
    cfg = model.cfg
    row = {"model": "longer-trained", "label": label or str(ck), "width": cfg.d_model, "heads": cfg.n_heads,
           "layers": cfg.n_layers, "params": sum(p.numel() for p in model.parameters()), "steps": steps, **st,
           "excess_last_vs_ols": st["nmse_last"] - res["ols"]["nmse_last"]}
    res["longer_trained"] = [r for r in res.get("longer_trained", []) if r["label"] != row["label"]] + [row]
    write_outputs(res, Path(out_dir))
    return res


# ====================================================================== files
def write_outputs(result: dict, out: Path, logs: dict | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "width.json").write_text(dumps_strict(_plain(result), indent=1) + "\n")
    header = ["model", "width", "heads", "layers", "params", "steps", "nmse_last", "nmse_avg", "excess_last_vs_ols",
              "train_seconds", "status"]
    with open(out / "width.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in result["trained"] + result.get("longer_trained", []):
            w.writerow([r.get(k, "") for k in header])
        c = result["constructed"]
        w.writerow(["constructed", c["width"], 2, c["layers"], "", "", c["nmse_last"], c["nmse_avg"],
                    c["nmse_last"] - result["ols"]["nmse_last"], "", f"k={c['k']}"])
        for name in ("ols", "zero_predictor"):
            w.writerow([name, "", "", "", "", "", result[name]["nmse_last"], result[name]["nmse_avg"], "", "", ""])
    files = [out / "width.json", out / "width.csv", plot(result, out / "width.png")]
    for wd, rows in (logs or {}).items():
        p = out / f"width_{wd}_log.csv"
        with open(p, "w", newline="") as f:
            if rows:
                dw = csv.DictWriter(f, fieldnames=list(rows[0]))
                dw.writeheader()
                dw.writerows(rows)
        files.append(p)
    return files


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.generic,)):
        return obj.item()
    return obj


def plot(result: dict, path: Path) -> Path:
    """nMSE vs width (log y): trained models, the constructed point, OLS and zero-predictor lines.

    OLS (and the constructed network) are ~1e-30 here (noiseless data, t >= d), far below any
    trained model; values under the display floor are drawn on it as ▼ and labelled with their value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["trained"], key=lambda r: r["width"])
    W = [r["width"] for r in rows]
    tol = result["protocol"]["headline_tolerance"]
    lo_data = min([r[k] for r in rows + result.get("longer_trained", []) for k in ("nmse_last", "nmse_avg")
                   if r[k] is not None] + [tol])
    floor = 10 ** math.floor(math.log10(lo_data) - 1.5)  # display floor, well under every trained model
    ticks = sorted(set(W))  # 3d + 2 is the labelled vertical line
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    c, ols = result["constructed"], result["ols"]
    for a, key, title in ((ax[0], "nmse_last", "last position (t = n−1)"), (ax[1], "nmse_avg", "averaged over t ≥ d")):
        a.semilogy(W, [r[key] for r in rows], "o-", label=f"trained, {result['protocol']['steps_per_width']} steps each")
        for r in result.get("longer_trained", []):
            a.semilogy([r["width"]], [r[key]], "D", color="tab:purple", ms=7,
                       label=f"longer-trained D={r['width']}, {r['steps']} steps (not equal budget)")
        cv = c.get(key)
        if cv is not None:
            a.semilogy([c["width"]], [max(cv, floor)], "r*" if cv >= floor else "rv", ms=13,
                       label=f"constructed, k={c['k']} ({c['layers']} layers)")
            if cv < floor:
                a.annotate(f"{cv:.0e}", (c["width"], floor), textcoords="offset points", xytext=(6, 8), color="r", fontsize=8)
        ov = ols[key]
        a.axhline(max(ov, floor), color="g", ls="--", label="OLS" + (f" ({ov:.0e}, at the floor)" if ov < floor else ""))
        a.axhline(result["zero_predictor"][key], color="k", ls=":", label="zero predictor")
        if key == "nmse_last":
            a.axhline(ov + tol, color="g", ls="-.", lw=0.8, label=f"OLS + τ = {tol:g}")
        a.axvline(result["construction_width"], color="r", ls="--", lw=1, label=f"3d + 2 = {result['construction_width']}")
        a.set_xscale("log", base=2)
        a.set_xticks(ticks, [str(v) for v in ticks])
        a.set_ylim(floor / 2, 3.0)
        a.set(xlabel="residual width D", ylabel="nMSE (squared error / d)", title=title)
        a.grid(alpha=0.3, which="both")
    ax[0].legend(fontsize=7)
    fig.suptitle(f"width ablation, d={result['d']}, n={result['n_points']}" + (" (QUICK: code path only)" if result["quick"] else ""))
    from benchmarks.experiments.common import lean_log_axes

    lean_log_axes(fig)  # the runner's cheaper ticks on the wide log y axes (issue 13)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def load_results(path: str | os.PathLike = RESULTS_DIR) -> dict:
    p = Path(path)
    p = p if p.suffix == ".json" else p / "width.json"
    if not p.exists():
        raise FileNotFoundError(f"no width-ablation results at {p}; run `python -m benchmarks.width --out {p.parent}`")
    return json.loads(p.read_text())


def markdown(result: dict) -> str:
    ols, zero, c = result["ols"], result["zero_predictor"], result["constructed"]
    pr = result["protocol"]
    fmt = lambda v: "–" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| model | width D | heads | layers | steps | nMSE last | nMSE avg (t ≥ d) | excess over OLS (last) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["trained"], key=lambda r: r["width"]):
        lines.append(f"| trained | {r['width']} | {r['heads']} | {r['layers']} | {r['steps']} | {fmt(r['nmse_last'])} | "
                     f"{fmt(r['nmse_avg'])} | {fmt(r['excess_last_vs_ols'])} |")
    for r in result.get("longer_trained", []):
        lines.append(f"| longer-trained ({r['label']}; not equal budget) | {r['width']} | {r['heads']} | {r['layers']} | {r['steps']} | "
                     f"{fmt(r['nmse_last'])} | {fmt(r['nmse_avg'])} | {fmt(r['excess_last_vs_ols'])} |")
    lines.append(f"| constructed (k={c['k']}) | {c['width']} | 2 | {c['layers']} | – | {fmt(c['nmse_last'])} | {fmt(c['nmse_avg'])} | "
                 f"{fmt(c['nmse_last'] - ols['nmse_last'])} |")
    lines.append(f"| OLS | – | – | – | – | {fmt(ols['nmse_last'])} | {fmt(ols['nmse_avg'])} | 0 |")
    lines.append(f"| zero predictor | – | – | – | – | {fmt(zero['nmse_last'])} | {fmt(zero['nmse_avg'])} | – |")
    mins = ", ".join(f"τ={t}: {('D = ' + str(v)) if v is not None else 'none of the widths'}" for t, v in result["minimal_width"].items())
    return (
        "\n".join(lines)
        + f"\n\nMinimal trained width within τ of OLS (nMSE at the last position): {mins}. "
        f"Construction: width 3d+2 = {result['construction_width']} matches OLS's nMSE to {fmt(abs(c['nmse_last'] - ols['nmse_last']))} "
        f"(last position) and {fmt(abs(c['nmse_avg'] - ols['nmse_avg']))} (avg over t ≥ d) with k = {c['k']} Newton steps "
        f"({c['layers']} layers, one fixed α = {c['alpha']:.3g}"
        + (f"; the last position alone needs k = {c['k_needed_last_position']}" if c.get("k_needed_last_position") is not None else "")
        + ").\n\n"
        f"Budget: {pr['steps_per_width']} steps per width ({pr['budget']}); equal steps: {pr['equal_steps']}. "
        f"{pr['caveat']}. Eval: {pr['eval_prompts']} fresh prompts; {pr['nmse']}."
    )


# ====================================================================== benchmarks.run experiment f
def _exp_width(ctx) -> dict:
    """Experiment f for ``benchmarks.run``: re-plot the committed full ablation; --quick also re-trains tiny models."""
    from benchmarks.experiments.common import shown

    out = ctx.dir("f_width")
    summary, md = {}, ""
    try:
        res = load_results(RESULTS_DIR)
    except FileNotFoundError as e:
        ctx.note(str(e))
        ctx.check("f_width_committed_results_present", False, path=shown(RESULTS_DIR))
        res = None
    if res is not None:
        ctx.step("width: committed results")
        ctx.write_json(out / "width.json", res)
        ctx.write_csv(out / "width.csv", ["model", "width", "steps", "nmse_last", "nmse_avg"],
                      [[r["model"], r["width"], r["steps"], r["nmse_last"], r["nmse_avg"]] for r in res["trained"]]
                      + [["constructed", res["constructed"]["width"], "", res["constructed"]["nmse_last"],
                          res["constructed"]["nmse_avg"]]])
        plot(res, out / "width.png")
        ctx.record(out / "width.png")
        ctx.check("f_width_committed_results_present", True, path=shown(RESULTS_DIR))
        ctx.check("f_constructed_width_reaches_ols", bool(res["constructed"]["reaches_ols"]),
                  width=res["constructed"]["width"], k=res["constructed"]["k"])
        summary = {k: res[k] for k in ("minimal_width", "minimal_width_headline", "construction_width", "ols", "constructed")}
        summary["trained"] = [{k: r[k] for k in ("width", "steps", "nmse_last", "nmse_avg")} for r in res["trained"]]
        summary["steps_per_width"] = res["protocol"]["steps_per_width"]
        md = (f"Committed full ablation (`benchmarks/results/width/`, command `{res['command']}`):\n\n"
              + markdown(res) + "\n\n![width](f_width/width.png)")
    if ctx.quick:
        ctx.step("width: quick re-train")
        q = run_width_ablation(out / "quick", quick=True, threads=1, progress=False, seed=ctx.seed,
                               command="benchmarks.run --quick (experiment f)")
        for f in FILES:
            ctx.record(out / "quick" / f)
        vals = [r[k] for r in q["trained"] for k in ("nmse_last", "nmse_avg")]
        ctx.check("f_quick_width_finite", all(v is not None and math.isfinite(v) and v > 0 for v in vals),
                  widths=[r["width"] for r in q["trained"]])
        summary["quick"] = {"trained": [{k: r[k] for k in ("width", "steps", "nmse_last")} for r in q["trained"]],
                            "constructed_nmse_last": q["constructed"]["nmse_last"]}
        md += "\n\nQuick re-train (tiny models, code path only):\n\n" + markdown(q)
    return {"summary": summary, "markdown": md}


def _register() -> None:
    """Register experiment f with the runner ``benchmarks.run``."""
    from benchmarks.run import EXPERIMENTS, experiment

    if "f" not in EXPERIMENTS:
        experiment("f", "f_width", "Width ablation: trained width vs the construction's 3d+2", cost=1.3)(_exp_width)


_register()


# ====================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.width", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, 30 steps (seconds; code path only)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/width; required with --quick)")
    ap.add_argument("--minutes-per-width", type=float, default=None,
                    help="calibrate the equal step budget so that training takes about this long per width on average (default 3.5)")
    ap.add_argument("--steps", type=int, default=None, help="equal step budget per width (overrides --minutes-per-width)")
    ap.add_argument("--widths", default=None, help=f"comma-separated widths (default {','.join(map(str, WIDTHS))})")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-prompts", type=int, default=None)
    ap.add_argument("--runs-dir", default=None, help="keep the training runs here (default: a temporary folder)")
    ap.add_argument("--add-checkpoint", default=None, metavar="PATH",
                    help="no training: evaluate this longer-trained checkpoint on the eval prompts of the results in "
                         "--out and add it (for context, kept apart from the equal-budget rows)")
    ap.add_argument("--label", default=None, help="label of --add-checkpoint's model")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.add_checkpoint:
        try:
            res = add_reference_checkpoint(args.out or RESULTS_DIR, args.add_checkpoint, args.label)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(markdown(res))
        return 0
    if args.quick and args.out is None:
        ap.error("--quick needs --out (the committed results folder is for the full run)")
    if args.minutes_per_width is not None and not args.minutes_per_width > 0:
        ap.error("--minutes-per-width must be > 0")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be >= 1")
    try:
        widths = None if args.widths is None else [int(w) for w in args.widths.split(",") if w.strip()]
        res = run_width_ablation(args.out or RESULTS_DIR, args.quick, widths=widths, steps=args.steps,
                                 minutes_per_width=args.minutes_per_width, threads=args.threads, seed=args.seed,
                                 eval_count=args.eval_prompts, runs_dir=args.runs_dir, progress=not args.no_progress,
                                 command="python -m benchmarks.width " + " ".join(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
