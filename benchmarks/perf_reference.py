"""Timing of the reference algorithms (verify.reference) on the paper's heatmap workload.

The workload (Fu et al. 2024, heatmaps of best-matching steps): d = 20, n = 40 examples, B = 64
prompts, predictions at every prefix for Newton steps 1..23 and GD steps on the paper's grid
[1, 50, 100, ..., 1300] (27 step counts, η = 0.01, as in the released evaluation script; pass
``--dense`` for every step 1..1300).  All paths produce the same (steps, B, n) predictions:

* ``loop``: per prompt, per prefix, numpy, running the iterations once and recording every
  requested step (``method="loop"``).  This is the fair slow baseline.  It is timed on
  ``loop_prompts`` prompts and scaled linearly to B (its cost is exactly linear in prompts).
* ``official pattern``: the cost structure of the paper's released code: torch ops per prompt and
  prefix, each step count recomputed from scratch, and for GD the Gram matrix XᵀX recomputed at
  every iteration.  Timed on ``official_prompts`` prompts (Newton: every step count; GD: the first
  ``official_gd_steps`` grid step counts) and scaled linearly to B prompts and to the total number
  of iterations Σ steps.  Our own re-implementation of that pattern, checked against the batched
  predictions.
* ``batched``: ``method="batched"`` (Newton: the recurrence on all B·n prefixes at once; GD:
  baby-step giant-step powers of I − ηS).
* ``spectral``: one eigendecomposition per prefix (``prefix_spectrum``) shared by Newton and GD,
  then ``method="spectral"`` for both.

Every path runs with the same number of torch threads (default 1, so that the single-threaded
numpy loop and the batched paths are compared on equal hardware).  Run::

    python -m benchmarks.perf_reference [--quick] [--dense] [--out DIR] [--threads T]

``--quick`` is a seconds-long smoke run on a small workload (ratios not meaningful).
:func:`time_reference_paths` returns everything as a dict for other benchmark runners.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import csv
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from construct.checkpoint import dumps_strict

from construct.alpha import alpha_from_rule
from verify.reference import gd_predictions, newton_predictions, prefix_spectrum

PAPER_NEWTON_STEPS = list(range(1, 24))
PAPER_GD_STEPS = [1] + list(range(50, 1301, 50))  # the released evaluation script's grid


def _data(B: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), w* ~ N(0, I), y = Xw* (float64)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    return X, (X @ w.unsqueeze(-1)).squeeze(-1)


def _best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


# ----------------------------------------------------------------------------------------------
# The released code's cost pattern (our own re-implementation; torch per example, from scratch
# for every step count)
# ----------------------------------------------------------------------------------------------


def _official_pattern_newton(X: torch.Tensor, y: torch.Tensor, steps: list[int], alpha: str) -> torch.Tensor:
    B, n, d = X.shape
    out = torch.zeros(len(steps), B, n, dtype=X.dtype)
    eye = torch.eye(d, dtype=X.dtype)
    for si, k in enumerate(steps):  # a fresh model per step count
        for t in range(1, n):
            for b in range(B):
                Xt, yt = X[b, :t], y[b, :t]
                S = Xt.T @ Xt
                bt = Xt.T @ yt
                M = float(alpha_from_rule(S, alpha)) * S
                for _ in range(k):
                    M = M @ (2 * eye - S @ M)
                out[si, b, t] = X[b, t] @ (M @ bt)
    return out


def _official_pattern_gd(X: torch.Tensor, y: torch.Tensor, steps: list[int], lr: float) -> torch.Tensor:
    B, n, d = X.shape
    out = torch.zeros(len(steps), B, n, dtype=X.dtype)
    for si, s in enumerate(steps):  # a fresh model per step count
        for t in range(1, n):
            for b in range(B):
                Xt, yt = X[b, :t], y[b, :t]
                w = torch.zeros(d, 1, dtype=X.dtype)
                for _ in range(s):
                    grad = (Xt.T @ Xt) @ w - (Xt.T @ yt)[:, None]  # XᵀX recomputed every step
                    w = w - lr * grad
                out[si, b, t] = X[b, t] @ w[:, 0]
    return out


# ----------------------------------------------------------------------------------------------


def time_reference_paths(
    d: int = 20,
    n: int = 40,
    B: int = 64,
    newton_steps=PAPER_NEWTON_STEPS,
    gd_steps=PAPER_GD_STEPS,
    loop_prompts: int = 4,
    repeats: int = 3,
    *,
    lr: float = 0.01,
    alpha: str = "code",
    official_prompts: int = 1,
    official_gd_steps: int = 3,
    threads: int | None = 1,
    seed: int = 0,
) -> dict:
    """Time loop / official pattern / batched / spectral on one workload and return a dict.

    Times are seconds for the full workload of B prompts (loops scaled as documented in the
    module docstring; ``scaling`` in the result says by how much).  ``speedup`` holds
    loop/batched and loop/spectral (and the same against the official pattern) for Newton, GD
    and the total.  ``official_prompts = 0`` skips the official-pattern timing.
    """
    newton_steps, gd_steps = [int(s) for s in newton_steps], [int(s) for s in gd_steps]
    loop_prompts = max(1, min(int(loop_prompts), B))
    official_prompts = max(0, min(int(official_prompts), B))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        X, y = _data(B, n, d, seed)
        Xl, yl = X[:loop_prompts], y[:loop_prompts]
        scale_loop = B / loop_prompts
        t_nl, Nl = _best_of(lambda: newton_predictions(Xl, yl, newton_steps, alpha, method="loop", check_precision="ignore"), 1)
        t_gl, Gl = _best_of(lambda: gd_predictions(Xl, yl, gd_steps, lr, method="loop"), 1)
        t_nb, Nb = _best_of(lambda: newton_predictions(X, y, newton_steps, alpha, method="batched", check_precision="ignore"), repeats)
        t_gb, Gb = _best_of(lambda: gd_predictions(X, y, gd_steps, lr, method="batched"), repeats)

        def spectral():
            sp = prefix_spectrum(X, y)
            t0 = time.perf_counter()
            N = newton_predictions(X, y, newton_steps, alpha, method="spectral", spectrum=sp)
            t1 = time.perf_counter()
            G = gd_predictions(X, y, gd_steps, lr, method="spectral", spectrum=sp)
            t2 = time.perf_counter()
            return N, G, t1 - t0, t2 - t1

        t_sp, t_ns_only, t_gs_only = math.inf, math.inf, math.inf
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            Ns, Gs, tn, tg = spectral()
            t_sp = min(t_sp, time.perf_counter() - t0)
            t_ns_only, t_gs_only = min(t_ns_only, tn), min(t_gs_only, tg)
        t_eigh, _ = _best_of(lambda: prefix_spectrum(X, y), repeats)

        res: dict = {
            "config": {
                "d": d, "n": n, "B": B, "newton_steps": newton_steps, "gd_steps": gd_steps,
                "lr": lr, "alpha": alpha, "loop_prompts": loop_prompts, "repeats": repeats,
                "official_prompts": official_prompts, "official_gd_steps": official_gd_steps,
                "torch_threads": torch.get_num_threads(), "seed": seed,
                "torch": torch.__version__, "numpy": np.__version__, "machine": platform.machine(),
                "processor": platform.processor(), "cpu_count": os.cpu_count(),
            },
            "seconds": {
                "loop": {"newton": t_nl * scale_loop, "gd": t_gl * scale_loop},
                "batched": {"newton": t_nb, "gd": t_gb},
                # Newton/GD split of the spectral path: the shared eigendecomposition is
                # charged half to each (total = best complete run)
                "spectral": {"newton": t_eigh / 2 + t_ns_only, "gd": t_eigh / 2 + t_gs_only},
            },
            "spectral_parts": {"eigendecomposition": t_eigh, "newton_from_spectrum": t_ns_only, "gd_from_spectrum": t_gs_only},
            "scaling": {"loop": f"timed on {loop_prompts} of {B} prompts, scaled x{scale_loop:g}"},
            "accuracy": {
                "newton_batched_vs_loop": _rel(Nb[:, :loop_prompts], Nl),
                "gd_batched_vs_loop": _rel(Gb[:, :loop_prompts], Gl),
                "newton_spectral_vs_batched": _rel(Ns, Nb),
                "gd_spectral_vs_batched": _rel(Gs, Gb),
            },
        }
        for p in ("loop", "batched"):
            res["seconds"][p]["total"] = res["seconds"][p]["newton"] + res["seconds"][p]["gd"]
        res["seconds"]["spectral"]["total"] = t_sp

        if official_prompts:
            Xo, yo = X[:official_prompts], y[:official_prompts]
            gd_sub = gd_steps[: max(1, official_gd_steps)]
            t_no, No = _best_of(lambda: _official_pattern_newton(Xo, yo, newton_steps, alpha), 1)
            t_go, Go = _best_of(lambda: _official_pattern_gd(Xo, yo, gd_sub, lr), 1)
            # cost ∝ prompts × Σ steps (+ a small per-step-count constant, so GD's scale-up is
            # a slight over-estimate of that constant's share; Newton is timed in full)
            gd_factor = sum(gd_steps) / max(1, sum(gd_sub))
            scale_o = B / official_prompts
            res["seconds"]["official_pattern"] = {
                "newton": t_no * scale_o, "gd": t_go * scale_o * gd_factor,
            }
            res["seconds"]["official_pattern"]["total"] = sum(res["seconds"]["official_pattern"].values())
            res["scaling"]["official_pattern"] = (
                f"timed on {official_prompts} of {B} prompts (x{scale_o:g}); Newton: all {len(newton_steps)} step counts; "
                f"GD: step counts {gd_sub} (sum {sum(gd_sub)}) scaled to sum(steps) = {sum(gd_steps)} (x{gd_factor:.4g})"
            )
            res["accuracy"]["newton_official_pattern_vs_batched"] = _rel(No, Nb[:, :official_prompts])
            res["accuracy"]["gd_official_pattern_vs_batched"] = _rel(Go, Gb[: len(gd_sub), :official_prompts])

        sec = res["seconds"]
        res["speedup"] = {}
        for base in [b for b in ("loop", "official_pattern") if b in sec]:
            for fast in ("batched", "spectral"):
                res["speedup"][f"{base}/{fast}"] = {k: sec[base][k] / sec[fast][k] for k in ("newton", "gd", "total")}
        sp = res["speedup"]
        res["requirements"] = {
            "batched >= 100x loop (total)": sp["loop/batched"]["total"] >= 100,
            "spectral >= 1000x loop (total)": sp["loop/spectral"]["total"] >= 1000,
        }
        if "official_pattern/batched" in sp:
            res["requirements"]["batched >= 100x official pattern (total)"] = sp["official_pattern/batched"]["total"] >= 100
            res["requirements"]["spectral >= 1000x official pattern (total)"] = sp["official_pattern/spectral"]["total"] >= 1000
        return res
    finally:
        torch.set_num_threads(old_threads)


def _steps_label(steps: list[int]) -> str:
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}..{steps[-1]} ({len(steps)})"
    head = ", ".join(map(str, steps[:3]))
    return f"[{head}, ..., {steps[-1]}] ({len(steps)})"


def format_table(res: dict) -> str:
    c, sec = res["config"], res["seconds"]
    lines = [
        f"Reference paths, all prefixes: d={c['d']} n={c['n']} B={c['B']}; Newton steps {_steps_label(c['newton_steps'])}, "
        f"alpha={c['alpha']}; GD steps {_steps_label(c['gd_steps'])}, lr={c['lr']}; torch threads={c['torch_threads']}",
        "",
        f"{'path':<18}{'Newton [s]':>12}{'GD [s]':>12}{'total [s]':>12}{'vs loop':>10}{'vs official':>13}",
    ]
    for p in ("loop", "official_pattern", "batched", "spectral"):
        if p not in sec:
            continue
        s = sec[p]
        r_loop = sec["loop"]["total"] / s["total"]
        r_off = f"{sec['official_pattern']['total'] / s['total']:12.1f}x" if "official_pattern" in sec else f"{'-':>13}"
        lines.append(f"{p:<18}{s['newton']:12.4g}{s['gd']:12.4g}{s['total']:12.4g}{r_loop:9.1f}x{r_off}")
    lines.append("")
    for base_fast, r in res["speedup"].items():
        lines.append(f"speedup {base_fast:<28} Newton {r['newton']:9.1f}x   GD {r['gd']:9.1f}x   total {r['total']:9.1f}x")
    parts = res["spectral_parts"]
    lines.append(
        f"spectral parts: eigendecomposition {parts['eigendecomposition']:.4g} s, Newton from it "
        f"{parts['newton_from_spectrum']:.4g} s, GD from it {parts['gd_from_spectrum']:.4g} s"
    )
    lines.append("")
    for k, v in res["scaling"].items():
        lines.append(f"scaling ({k}): {v}")
    lines.append("accuracy (max rel. diff): " + ", ".join(f"{k} {v:.1e}" for k, v in res["accuracy"].items()))
    lines.append("requirements: " + "; ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in res["requirements"].items()))
    return "\n".join(lines)


def _write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf_reference.json").write_text(dumps_strict(res, indent=2))
    with open(out / "perf_reference.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "algorithm", "seconds", "speedup_vs_loop", "speedup_vs_official_pattern"])
        sec = res["seconds"]
        for p, row in sec.items():
            for alg, t in row.items():
                off = sec["official_pattern"][alg] / t if "official_pattern" in sec else ""
                w.writerow([p, alg, f"{t:.6g}", f"{sec['loop'][alg] / t:.6g}", off if off == "" else f"{off:.6g}"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.perf_reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke workload (a few seconds; ratios not meaningful)")
    ap.add_argument("--dense", action="store_true", help="GD at every step 1..1300 instead of the paper's 27-point grid")
    ap.add_argument("--out", type=Path, default=None, help="directory for perf_reference.json / .csv")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every path (default 1)")
    ap.add_argument("--loop-prompts", type=int, default=4)
    ap.add_argument("--official-prompts", type=int, default=1, help="0 skips the official-pattern timing")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        res = time_reference_paths(
            d=8, n=16, B=8, newton_steps=range(1, 11), gd_steps=[1, 20, 40, 60] if not args.dense else range(1, 61),
            loop_prompts=2, repeats=1, official_prompts=min(args.official_prompts, 1), official_gd_steps=2,
            threads=args.threads,
        )
    else:
        res = time_reference_paths(
            gd_steps=range(1, 1301) if args.dense else PAPER_GD_STEPS, loop_prompts=args.loop_prompts,
            repeats=args.repeats, official_prompts=args.official_prompts, threads=args.threads,
        )
    print(format_table(res))
    if args.out is not None:
        _write(res, args.out)
        print(f"\nwrote {args.out / 'perf_reference.json'} and {args.out / 'perf_reference.csv'}")
    return res


if __name__ == "__main__":
    main()
