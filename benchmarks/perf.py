"""g. Performance table: reference paths, layer probes and the constructed network, in one run.

    python -m benchmarks.perf [--quick] [--out DIR] [--threads T]

Every time below is measured in the same process, one after the other, with the same number of
torch threads (default 1, so that the single-threaded numpy loop and the batched torch paths
are compared on equal hardware); ratios are quotients of times from this run only.  The JSON
holds the raw seconds next to every ratio, the machine (CPU count, torch threads, load average
at the start: other jobs on the machine inflate every time, not necessarily equally) and the
command.

1. **Reference algorithms** on the paper's heatmap workload (d = 20, n = 40, B = 64 prompts,
   predictions at every prefix; Newton steps 1..23 with α = 1/‖SSᵀ‖_F; GD on the released
   script's grid 1, 50, …, 1300 with η = 0.01), via
   :func:`benchmarks.perf_reference.time_reference_paths`.  Two per-example baselines, both
   reported:

   * ``loop``: a *tight* per-prompt, per-prefix numpy loop that runs the iterations once and
     records every requested step count (our fair slow baseline);
   * ``official_pattern``: our re-implementation of the released code's cost pattern (torch
     ops per prompt and prefix, every step count recomputed from scratch, GD recomputing XᵀX
     at every iteration), timed on a subset and scaled (see ``scaling`` in the JSON);

   against ``batched`` (all B·n prefixes at once) and ``spectral`` (one eigendecomposition per
   prefix, then every step count in closed form).
2. **Layer probes**: collecting every layer's residual stream on ``fit_prompts`` prompts and the
   closed-form ridge least-squares fit of all L + 1 read-outs (:mod:`benchmarks.probes`), next
   to an SGD baseline (one Adam-trained linear read-out per layer, the paper's way, with a
   stated step budget; its achieved fit error is recorded beside its time).  Probe timings do
   not depend on the weights, so an untrained model of the ``cpu`` preset's shape stands in
   when no checkpoint is given (the JSON says which).
3. **Constructed network** (d = 32, n = 128, k = 20, B = 64, float64): one forward pass
   (``predict``: B prompts with one query each) against direct Newton on the same prompts
   (batched torch matmuls), and ``predict_all`` (all B·n prefix prompts, run in chunks of
   ``chunk`` prompts) against the batched reference Newton on all prefixes.  Both report the
   max relative difference of the predictions.

4. **Issue 13 targets** (:mod:`benchmarks.perf_targets`): the paper's heatmap sweep (B = 320)
   against the eigh floor, Newton steps 1–23 (``method="auto"``) at B = 64 and 320 against the
   tight loop, and ``verify_model`` against one forward pass; each an interleaved same-run ratio.
5. **Measured cost exponents**: log-log slopes of each cost along B, n, d and k.
6. **Network forward, predict_all and training step** (issue 13.3-13.4): the current forward and
   ``predict_all`` of a hand-built network against the previous implementation
   (:mod:`construct.reference_forward`), and a ``GargRegressor`` training step against Hugging
   Face ``GPT2Model`` eager at the paper and ``cpu`` shapes (:mod:`benchmarks.perf_network`;
   thread CPU time, interleaved medians), beside its floor: the step's dense GEMMs replayed
   alone on MKL and on oneDNN, the machine's single-thread sgemm rate, and each variant's
   achieved GFLOP/s.

Outputs in ``OUT``: ``perf.json``, ``perf.csv`` (section, item, seconds, ratio), ``perf.md``.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from construct.checkpoint import dumps_strict

from benchmarks.adam import Adam
from benchmarks.data import sample_prompts
from benchmarks import perf_network, perf_targets
from benchmarks.perf_reference import PAPER_GD_STEPS, PAPER_NEWTON_STEPS, time_reference_paths

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "cpu"

FULL = {
    "reference": {"d": 20, "n": 40, "B": 64, "newton_steps": PAPER_NEWTON_STEPS, "gd_steps": PAPER_GD_STEPS,
                  "loop_prompts": 4, "repeats": 3, "official_prompts": 1, "official_gd_steps": 3},
    "probes": {"fit_prompts": 8192, "repeats": 3, "sgd_steps": 1000, "sgd_batch": 256, "sgd_lr": 1e-2},
    "constructed": {"d": 32, "n": 128, "k": 20, "B": 64, "repeats": 3, "chunk": 4, "predict_all_prompts": 4},
}
QUICK = {
    "reference": {"d": 8, "n": 16, "B": 8, "newton_steps": list(range(1, 11)), "gd_steps": [1, 20, 40, 60],
                  "loop_prompts": 2, "repeats": 1, "official_prompts": 1, "official_gd_steps": 2},
    "probes": {"fit_prompts": 256, "repeats": 1, "sgd_steps": 20, "sgd_batch": 64, "sgd_lr": 1e-2},
    "constructed": {"d": 4, "n": 12, "k": 3, "B": 8, "repeats": 1, "chunk": 4},
}


def _best(fn, repeats: int):
    best, out = math.inf, None
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-300))


# ====================================================================== probes
def probe_model(model=None):
    """(model, source): the given model, the shipped cpu checkpoint, or an untrained cpu-shaped one."""
    if model is not None:
        return model, "given model"
    from benchmarks.experiments.common import shown
    from construct.checkpoint import load_model
    from construct.regressor import GargConfig, GargRegressor

    if (CHECKPOINT / "config.json").exists():
        return load_model(CHECKPOINT).eval(), shown(CHECKPOINT)
    from benchmarks.train import PRESETS

    c = PRESETS["cpu"]
    torch.manual_seed(0)
    m = GargRegressor(GargConfig(c.d, c.n_points, c.n_layers, c.n_heads, c.d_model)).eval()
    return m, "untrained GargRegressor of the cpu preset's shape (probe timing does not depend on the weights)"


def _sgd_probes(H: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float, seed: int = 0) -> torch.Tensor:
    """One linear read-out per layer trained by Adam (the paper's way): returns fit nMSE per layer (L+1,)."""
    L1, N, D = H.shape
    g = torch.Generator().manual_seed(seed)
    Hf, yf = H.to(torch.float32), y.to(torch.float32)
    out = torch.empty(L1, dtype=torch.float64)
    var = float(((yf - yf.mean()) ** 2).mean())
    for layer in range(L1):
        w = torch.zeros(D, requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = Adam([w, b], lr=lr)
        Hl = Hf[layer]
        for _ in range(steps):
            idx = torch.randint(0, N, (batch,), generator=g)
            loss = ((Hl[idx] @ w + b - yf[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[layer] = float(((Hl @ w + b - yf) ** 2).mean()) / var
    return out


def time_probes(model=None, fit_prompts: int = 8192, repeats: int = 3, sgd_steps: int = 1000, sgd_batch: int = 256,
                sgd_lr: float = 1e-2, seed: int = 0) -> dict:
    """Time residual-stream collection + closed-form probe fit (all layers) and an SGD baseline."""
    from benchmarks.probes import DEFAULT_RIDGE, fit_probes, residual_streams

    model, source = probe_model(model)
    X, y, _ = sample_prompts(fit_prompts, model.n_points, model.d, seed=seed + 17)
    t_streams, H = _best(lambda: residual_streams(model, X, y), repeats)  # (L+1, B, n, D)
    t_fit, probes = _best(lambda: fit_probes(H, y.to(torch.float64)), repeats)
    L1, B, n, D = H.shape
    with torch.enable_grad():
        t0 = time.perf_counter()
        sgd_nmse = _sgd_probes(H.reshape(L1, B * n, D), y.reshape(-1), sgd_steps, sgd_batch, sgd_lr, seed)
        t_sgd = time.perf_counter() - t0
    return {
        "model": source, "layers_probed": L1, "width": D, "fit_prompts": fit_prompts, "rows": B * n,
        "ridge": DEFAULT_RIDGE,
        "seconds": {"streams": t_streams, "closed_form_fit": t_fit, "closed_form_total": t_streams + t_fit,
                    "sgd_baseline_fit": t_sgd},
        "sgd_baseline": {"optimizer": "Adam", "steps_per_layer": sgd_steps, "batch": sgd_batch, "lr": sgd_lr,
                         "fit_nmse_per_layer": sgd_nmse.tolist()},
        "closed_form_fit_nmse_per_layer": probes.train_nmse.tolist(),
        "ratios": {"sgd_fit/closed_form_fit": t_sgd / t_fit,
                   "sgd_fit/closed_form_total": t_sgd / (t_streams + t_fit)},
    }


# ====================================================================== constructed network
def _direct_newton(X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """x_qᵀ M_k Xᵀ y for B prompts at once (batched torch matmuls): (B,)."""
    S = X.transpose(1, 2) @ X  # (B, d, d)
    M = alpha * S
    eye2 = 2 * torch.eye(X.shape[-1], dtype=X.dtype)
    for _ in range(k):
        M = M @ (eye2 - S @ M)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # (B, d)
    return ((M @ b[..., None])[..., 0] * xq).sum(-1)


def time_constructed(d: int = 32, n: int = 128, k: int = 20, B: int = 64, repeats: int = 3, chunk: int = 8,
                     predict_all_prompts: int | None = None, seed: int = 0) -> dict:
    """Forward / predict_all of the hand-built network vs direct and batched reference Newton (float64).

    ``predict_all`` runs B·n prefix prompts of n + 1 tokens each, O(B·n·(k+2)·n²·D): it is timed
    once on ``predict_all_prompts`` of the B prompts (default all) and scaled linearly to B, as
    its cost is exactly linear in prompts; the reference it is compared with runs on all B.
    """
    from construct import build_newton_transformer, safe_alpha
    from verify.reference import newton_predictions

    Xa, ya, _ = sample_prompts(B, n + 1, d, seed=seed + 29, dtype=torch.float64)
    X, y, xq = Xa[:, :n], ya[:, :n], Xa[:, n]
    alpha = float(safe_alpha(X).min())  # α·λ_max(S)² <= 1 on every prompt and prefix
    # best of 3: the first build in a process pays one-off warm-up (~0.08 s measured), which a
    # process that has built no model before (g run by itself, or in another --jobs process) would count
    t_build, model = _best(lambda: build_newton_transformer(d, k, alpha, dtype=torch.float64), 3)
    t_fwd, P = _best(lambda: model.predict(X, y, xq, check_alpha="ignore"), repeats)
    t_fwd_chk, _ = _best(lambda: model.predict(X, y, xq, check_alpha="raise"), 1)
    t_dir, Pd = _best(lambda: _direct_newton(X, y, xq, k, alpha), repeats)

    Bp = B if predict_all_prompts is None else max(1, min(int(predict_all_prompts), B))

    def pall():
        return torch.cat([model.predict_all(X[i:min(i + chunk, Bp)], y[i:min(i + chunk, Bp)], check_alpha="ignore")
                          for i in range(0, Bp, chunk)])

    t_all_sub, PA = _best(pall, 1)
    t_all = t_all_sub * B / Bp
    t_ref, R = _best(lambda: newton_predictions(X, y, [k], alpha=alpha, method="batched", check_precision="ignore")[0], repeats)
    return {
        "config": {"d": d, "n": n, "k": k, "B": B, "dtype": "float64", "alpha": alpha, "layers": model.n_layers,
                   "width": model.layout.width, "heads": model.transformer.cfg.n_heads, "predict_all_chunk": chunk,
                   "predict_all_prompts_timed": Bp, "repeats": repeats},
        "scaling": {"predict_all": f"timed once on {Bp} of {B} prompts, scaled x{B / Bp:g} (cost linear in prompts)"},
        "seconds": {"build": t_build, "forward": t_fwd, "forward_with_alpha_check": t_fwd_chk,
                    "direct_newton": t_dir, "predict_all": t_all, "reference_newton_all_prefixes_batched": t_ref},
        "accuracy": {"forward_vs_direct_newton": _rel(P, Pd), "predict_all_vs_reference_batched": _rel(PA, R[:Bp])},
        "ratios": {"forward/direct_newton": t_fwd / t_dir,
                   "predict_all/reference_newton_all_prefixes_batched": t_all / t_ref},
        "note": "forward = one pass over B prompts of n examples plus a query token; predict_all = B*n prefix "
                "prompts (key-masked), run in chunks of `chunk` prompts; alpha checks off except where named",
    }


# ====================================================================== the table
def machine(command: str | None = None) -> dict:
    return {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "processor": platform.processor() or platform.machine(), "platform": platform.platform(),
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "command": command}


def run_perf_table(out_dir: str | os.PathLike, quick: bool = False, *, threads: int | None = 1, model=None,
                   progress: bool = True, command: str | None = None, seed: int = 0, hf: bool = True) -> dict:
    """Measure everything (module docstring) in this process and write perf.json / perf.csv / perf.md.

    ``hf=False`` leaves the Hugging Face training-step variants out (no ``transformers`` import).
    """
    from tqdm.auto import tqdm

    sz = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    try:
        mach = machine(command)
        bar = tqdm(total=6, desc="perf table", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix_str("reference paths")
        ref = time_reference_paths(**sz["reference"], threads=None, seed=seed)
        bar.update(1)
        bar.set_postfix_str("probes")
        pr = time_probes(model, seed=seed, **sz["probes"])
        bar.update(1)
        bar.set_postfix_str("constructed network")
        co = time_constructed(seed=seed, **sz["constructed"])
        bar.update(1)
        bar.set_postfix_str("issue 13 targets")
        tg = perf_targets.targets(quick, seed)
        bar.update(1)
        bar.set_postfix_str("cost exponents")
        sc = perf_targets.scaling(quick, seed)
        bar.update(1)
        bar.set_postfix_str("network forward and training step")
        net = perf_network.network(quick, seed, hf=hf)
        bar.update(1)
        bar.close()
    finally:
        torch.set_num_threads(old)
    res = {"experiment": "g. performance table", "quick": quick, "machine": mach, "sizes": sz,
           "reference": ref, "probes": pr, "constructed": co, "targets": tg, "scaling": sc,
           "network": net, "wall_seconds": time.perf_counter() - t0}
    res["ratios"] = headline_ratios(res)
    write_outputs(res, out)
    return res


def headline_ratios(res: dict) -> dict:
    """The ratios of the table, each recomputed from the raw seconds of this run."""
    sec = res["reference"]["seconds"]
    r = {}
    for base in [b for b in ("loop", "official_pattern") if b in sec]:
        for fast in ("batched", "spectral"):
            for alg in ("newton", "gd", "total"):
                r[f"reference {alg}: {base}/{fast}"] = sec[base][alg] / sec[fast][alg]
    r.update({f"probes: {k}": v for k, v in res["probes"]["ratios"].items()})
    r.update({f"constructed: {k}": v for k, v in res["constructed"]["ratios"].items()})
    if "targets" in res:
        t = res["targets"]
        for g in ("gd_grid_1300", "gd_pow2_4096"):
            s = t["heatmap_sweep"][g]["seconds"]
            r[f"target: heatmap sweep ({g}) / eigh floor"] = s["sweep"] / s["eigh_floor"]
        for k, v in t["newton_vs_loop"].items():
            r[f"target: tight loop / Newton 1-23 auto ({k})"] = v["seconds"]["loop"] / v["seconds"]["auto"]
        s = t["verify"]["seconds"]
        r["target: verify_model / forward"] = s["verify_model"] / s["forward"]
    if "network" in res:
        n = res["network"]
        r["target: forward previous / current"] = n["forward"]["ratio"]
        r["target: predict_all previous / current"] = n["predict_all"]["ratio"]
        for shape, t in n["train"].items():
            r.update({f"train step {shape}: {k}": v for k, v in t["ratios"].items()})
    return r


def rows(res: dict) -> list[list]:
    """(section, item, workload, seconds, vs tight loop, vs official pattern, other ratio)."""
    ref, pr, co = res["reference"], res["probes"], res["constructed"]
    c = ref["config"]
    wl = f"d={c['d']} n={c['n']} B={c['B']}, Newton {len(c['newton_steps'])} step counts, GD {len(c['gd_steps'])} (max {max(c['gd_steps'])})"
    sec = ref["seconds"]
    out = []
    for p in ("loop", "official_pattern", "batched", "spectral"):
        if p not in sec:
            continue
        for alg in ("newton", "gd", "total"):
            out.append(["reference", f"{p} ({alg})", wl, sec[p][alg], sec["loop"][alg] / sec[p][alg],
                        sec["official_pattern"][alg] / sec[p][alg] if "official_pattern" in sec else None, None])
    pwl = f"{pr['layers_probed']} layers, {pr['fit_prompts']} prompts ({pr['rows']} rows), D={pr['width']}"
    ps = pr["seconds"]
    out += [
        ["probes", "residual streams (all layers)", pwl, ps["streams"], None, None, None],
        ["probes", "closed-form fit (all layers)", pwl, ps["closed_form_fit"], None, None, None],
        ["probes", "closed-form total", pwl, ps["closed_form_total"], None, None, None],
        ["probes", f"SGD baseline fit ({pr['sgd_baseline']['steps_per_layer']} Adam steps/layer)", pwl, ps["sgd_baseline_fit"],
         None, None, f"{ps['sgd_baseline_fit'] / ps['closed_form_fit']:.1f}x closed-form fit"],
    ]
    cc, cs = co["config"], co["seconds"]
    cwl = f"d={cc['d']} n={cc['n']} k={cc['k']} B={cc['B']} float64 ({cc['layers']} layers, width {cc['width']})"
    out += [
        ["constructed", "build", cwl, cs["build"], None, None, None],
        ["constructed", "forward (B prompts + query)", cwl, cs["forward"], None, None,
         f"{cs['forward'] / cs['direct_newton']:.1f}x direct Newton"],
        ["constructed", "forward with alpha check", cwl, cs["forward_with_alpha_check"], None, None, None],
        ["constructed", "direct Newton (batched matmuls)", cwl, cs["direct_newton"], None, None, None],
        ["constructed", "predict_all (B*n prefixes)", cwl, cs["predict_all"], None, None,
         f"{cs['predict_all'] / cs['reference_newton_all_prefixes_batched']:.1f}x reference batched"],
        ["constructed", "reference Newton, all prefixes (batched)", cwl, cs["reference_newton_all_prefixes_batched"], None, None, None],
    ]
    if "targets" in res:
        t = res["targets"]
        c = t["heatmap_sweep"]["config"]
        for g in ("gd_grid_1300", "gd_pow2_4096"):
            h = t["heatmap_sweep"][g]
            out.append(["targets", f"heatmap sweep, GD {h['gd_steps']}", f"d={c['d']} n={c['n']} B={c['B']}, Newton 1-23",
                        h["seconds"]["sweep"], None, None, f"{h['ratio']:.2f}x eigh floor (goal <= 1.3x)"])
        for k, v in t["newton_vs_loop"].items():
            out.append(["targets", "Newton 1-23, method='auto'", f"d={v['config']['d']} n={v['config']['n']} {k}", v["seconds"]["auto"], v["ratio"], None,
                        "goal >= 5x tight loop"])
        ve = t["verify"]
        vc = ve["config"]
        out.append(["targets", "verify_model", f"d={vc['d']} n={vc['n']} k={vc['k']} B={vc['B']} float64",
                    ve["seconds"]["verify_model"], None, None,
                    f"{ve['ratio']:.2f}x one forward pass, predict with default checks (goal <= 1.3x); "
                    f"{ve['ratio_alpha_ignore']:.2f}x predict(check_alpha='ignore')"])
    if "network" in res:
        out += perf_network.rows(res["network"])
    return out


def _f(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    v = float(v)
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.{digits - 1}e}"


def markdown(res: dict) -> str:
    m = res["machine"]
    head = ("| section | item | workload | seconds | vs tight loop | vs official-code pattern | other |\n"
            "|---|---|---|---|---|---|---|")
    body = "\n".join(f"| {r[0]} | {r[1]} | {r[2]} | {_f(r[3])} | {_f(r[4]) + 'x' if r[4] is not None else '–'} | "
                     f"{_f(r[5]) + 'x' if r[5] is not None else '–'} | {_f(r[6])} |" for r in rows(res))
    sp = res["reference"]["speedup"]
    lines = [
        head, body, "",
        "Speed-ups of the reference paths (total = Newton + GD):", "",
        "| baseline | batched | spectral |", "|---|---|---|",
    ]
    names = {"loop": "tight per-prefix numpy loop", "official_pattern": "official-code pattern (per example, from scratch)"}
    for base in ("loop", "official_pattern"):
        if f"{base}/batched" in sp:
            lines.append(f"| {names[base]} | {sp[base + '/batched']['total']:.1f}x | {sp[base + '/spectral']['total']:.1f}x |")
    acc = {**res["reference"]["accuracy"], **{f"constructed {k}": v for k, v in res["constructed"]["accuracy"].items()}}
    lines += [
        "",
        "Scaling of the per-example baselines: " + "; ".join(f"{k}: {v}" for k, v in res["reference"]["scaling"].items())
        + f"; constructed predict_all: {res['constructed']['scaling']['predict_all']}.",
        "Max relative differences between paths: " + ", ".join(f"{k} {v:.1e}" for k, v in acc.items()) + ".",
        f"SGD probe baseline fit nMSE per layer {[round(v, 4) for v in res['probes']['sgd_baseline']['fit_nmse_per_layer']]} "
        f"vs closed form {[round(v, 4) for v in res['probes']['closed_form_fit_nmse_per_layer']]} (probe model: {res['probes']['model']}).",
        f"Machine: {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']} with {m['torch_threads']} thread(s) for every path, "
        f"load average at start {m['loadavg_at_start']}; command `{m['command']}`."
        + (" QUICK run: small workloads, ratios not meaningful." if res["quick"] else ""),
    ]
    if "targets" in res:
        lines += ["", perf_targets.markdown(res["targets"], res.get("scaling"))]
    if "network" in res:
        lines += ["", perf_network.markdown(res["network"])]
    return "\n".join(lines)


def write_outputs(res: dict, out: Path) -> list[Path]:
    (out / "perf.json").write_text(dumps_strict(res, indent=1) + "\n")
    with open(out / "perf.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["section", "item", "workload", "seconds", "speedup_vs_tight_loop", "speedup_vs_official_pattern", "other"])
        for r in rows(res):
            w.writerow([r[0], r[1], r[2], repr(float(r[3])), "" if r[4] is None else repr(float(r[4])),
                        "" if r[5] is None else repr(float(r[5])), r[6] or ""])
    (out / "perf.md").write_text("# g. Performance table\n\n" + markdown(res) + "\n")
    return [out / "perf.json", out / "perf.csv", out / "perf.md"]


# ====================================================================== benchmarks.run experiment g
def _exp_perf(ctx) -> dict:
    """Experiment g for ``benchmarks.run``: the whole table, measured now (quick sizes with --quick).

    With --quick the Hugging Face training-step rows are left out: their quick ratios mean nothing,
    and importing ``transformers`` was the largest part of quick g (1-2 s). ``python -m benchmarks.perf
    --quick`` and the full run keep them.
    """
    out = ctx.dir("g_perf")
    ctx.step("perf table")
    with torch.enable_grad():  # the runner runs experiments under no_grad; the SGD baseline needs grads
        res = run_perf_table(out, quick=ctx.quick, threads=1, model=ctx.model, progress=False,
                             command="python -m benchmarks.run " + " ".join(sys.argv[1:]), seed=ctx.seed,
                             hf=not ctx.quick)
    for f in ("perf.json", "perf.csv", "perf.md"):
        ctx.record(out / f)
    sec = res["reference"]["seconds"]
    ok = all(math.isfinite(v) and v > 0 for p in sec.values() for v in p.values())
    ctx.check("g_perf_times_finite_positive", ok)
    acc = res["reference"]["accuracy"]
    ctx.check("g_perf_paths_agree", max(acc.values()) < 1e-8 and max(res["constructed"]["accuracy"].values()) < 1e-8,
              max_rel_reference=max(acc.values()), max_rel_constructed=max(res["constructed"]["accuracy"].values()))
    sp = res["reference"]["speedup"]
    summary = {"speedup": sp, "ratios": res["ratios"], "machine": res["machine"],
               "probes_seconds": res["probes"]["seconds"], "constructed_seconds": res["constructed"]["seconds"]}
    return {"summary": summary, "markdown": markdown(res)}


def _register() -> None:
    """Register experiment g with the runner ``benchmarks.run``."""
    from benchmarks.run import EXPERIMENTS, experiment

    if "g" not in EXPERIMENTS:
        experiment("g", "g_perf", 'Performance table: reference paths, probes, constructed network',
                   cost=0.7, alone=True)(_exp_perf)  # timings: nothing else may run meanwhile (full runs)


_register()


# ====================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.perf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small workloads (seconds; ratios not meaningful)")
    ap.add_argument("--out", default="results/perf", help="output folder (default results/perf)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every path (default 1)")
    ap.add_argument("--checkpoint", default=None, help="model for the probe timing (default: shipped cpu checkpoint)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    model = None
    if args.checkpoint:
        from construct.checkpoint import load_model

        model = load_model(args.checkpoint).eval()
    res = run_perf_table(args.out, args.quick, threads=args.threads, model=model, progress=not args.no_progress,
                         command="python -m benchmarks.perf " + " ".join(sys.argv[1:] if argv is None else argv),
                         seed=args.seed)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
