"""Cost of the in-network α in Newton steps: how many more steps an adaptive model needs.

An adaptive network (``build_newton_transformer(d, k, "adaptive")``) uses α = f(tr(S^p)), which
is smaller than the per-prompt best, so its Newton iterate converges more slowly.  For each
reference α rule — ``safe`` (α = 1/λ_max², :func:`construct.safe_alpha`) and ``code`` (the
released code's α = 1/‖SSᵀ‖_F, :func:`construct.alpha_from_rule`) — and each k, we find the
smallest k′ with err_adaptive(k′) ≤ err_rule(k) and report k′ − k ("extra steps").

Error measure: err(k) = mean over prompts of (ŷ_k − ŷ_OLS)² / mean of ŷ_OLS², the distance of
Newton-k's query prediction from its limit.  It is computed from the spectrum of S exactly as
the algorithm defines it (no float floor): ŷ_k − ŷ_OLS = −Σ_i (x_qᵀv_i)(v_iᵀXᵀy)(1 − αλ_i²)^(2^k)/λ_i,
so differences of 1e-200 are still resolved; this measures the algorithm, not round-off.  The
adaptive α values are the ones the networks use (:meth:`NewtonTransformer.alpha_of`'s PL
formula).  Data: :func:`benchmarks.data.sample_prompts` (Gaussian, or κ = 100), n = 2d examples,
query from the same distribution, no label noise.

    python -m benchmarks.adaptive_cost                       # d = 5, 10, 20; 2000 prompts each
    python -m benchmarks.adaptive_cost --prompts 200 --out /tmp/cost   # quick

Writes ``cost.json`` and ``cost.md`` to ``--out`` (default benchmarks/results/adaptive_cost).
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from construct.checkpoint import dumps_strict

from benchmarks.data import sample_prompts
from construct.adaptive import ALPHA_C, TRACE_POWERS, pl_alpha, pl_function, trace_power
from construct.alpha import alpha_from_rule

RULES = ("safe", "code")


def log_errors(X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, alpha: torch.Tensor, ks) -> np.ndarray:
    """log10 err(k) for each k (see module doc): X (B, n, d), alpha (B,) -> (len(ks),)."""
    S = X.transpose(1, 2) @ X  # (B, d, d)
    lam, V = torch.linalg.eigh(S)  # (B, d), (B, d, d)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # Xᵀy (B, d)
    keep = lam > lam[:, -1:] * 1e-12  # the null space carries no component of Xᵀy
    a = torch.einsum("bd,bdi->bi", xq, V) * torch.einsum("bd,bdi->bi", b, V)  # (x_qᵀv_i)(v_iᵀXᵀy)
    coef = torch.where(keep, a / lam.clamp(min=1e-300), torch.zeros_like(a))  # (B, d)
    ols = coef.sum(-1)  # (B,)
    base = (1 - alpha[:, None] * lam * lam).abs().clamp(min=1e-300)  # (B, d)
    sign = torch.sign(1 - alpha[:, None] * lam * lam)
    out = []
    for k in ks:
        # (1 − αλ²)^(2^k) in log space: even power for k >= 1, sign matters only at k = 0
        logf = (2.0 ** k) * torch.log(base)
        f = torch.exp(logf.clamp(min=-700.0)) * (sign if k == 0 else 1.0)
        diff = (coef * f).sum(-1)  # (B,)
        out.append(float(torch.log10((diff ** 2).mean().clamp(min=1e-300) / (ols ** 2).mean())))
    return np.array(out)


def extra_steps(ref: np.ndarray, ada: np.ndarray, ks) -> list[int | None]:
    """For each k, (least k′ with ada[k′] ≤ ref[k]) − k; None if no k′ in range reaches it."""
    res = []
    for i, _ in enumerate(ks):
        hit = [j for j in range(len(ks)) if ada[j] <= ref[i] + 1e-9]
        res.append(None if not hit else ks[hit[0]] - ks[i])
    return res


def run(dims=(5, 10, 20), kappas=(1.0, 100.0), prompts: int = 2000, k_eval=(2, 4, 6, 8, 10), seed: int = 0,
        cs=(ALPHA_C,)) -> dict:
    ks = list(range(0, 40))
    rows = []
    for d in dims:
        for kappa in kappas:
            n = 2 * d
            X, y, _ = sample_prompts(prompts, n + 1, d, kappa=kappa, seed=seed + 1000 * d + int(kappa), dtype=torch.float64)
            xq, X, y = X[:, -1], X[:, :-1], y[:, :-1]
            S = X.transpose(1, 2) @ X
            ref = {r: log_errors(X, y, xq, alpha_from_rule(S, r), ks) for r in RULES}
            for p in TRACE_POWERS:
                for c in cs:
                    fn = pl_function(p, c=c)
                    a = pl_alpha(fn, trace_power(X, p))
                    lm = torch.linalg.eigvalsh(S)[:, -1]
                    ada = log_errors(X, y, xq, a, ks)
                    row = {"d": d, "n": n, "kappa": kappa, "p": p, "c": c, "layers_extra": 1 if p == 1 else 2,
                           "alpha_ratio_median": float((a * lm * lm).median()),
                           "alpha_ratio_max": float((a * lm * lm).max())}
                    for r in RULES:
                        ex = extra_steps(ref[r], ada, ks)
                        row[f"extra_vs_{r}"] = {k: ex[ks.index(k)] for k in k_eval}
                        row[f"log10_err_{r}"] = {k: float(ref[r][ks.index(k)]) for k in k_eval}
                    row["log10_err_adaptive"] = {k: float(ada[ks.index(k)]) for k in k_eval}
                    rows.append(row)
    return {"prompts": prompts, "k_eval": list(k_eval), "rows": rows}


def markdown(res: dict) -> str:
    ke = res["k_eval"]
    lines = ["| d | data | α = f(tr Sᵖ) | layers (default form) | median α·λ_max² | extra steps vs safe α, k = "
             + ", ".join(map(str, ke)) + " | extra steps vs code α, k = " + ", ".join(map(str, ke)) + " |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        data = "Gaussian" if r["kappa"] == 1 else f"κ = {r['kappa']:g}"
        f = lambda v: "–" if v is None else str(v)  # noqa: E731
        lines.append(f"| {r['d']} | {data} | p = {r['p']}" + (f", c = {r['c']:g}" if r["c"] != ALPHA_C else "")
                     + f" | k + {2 + r['layers_extra']} | {r['alpha_ratio_median']:.3f} | "
                     + ", ".join(f(r["extra_vs_safe"][k]) for k in ke) + " | "
                     + ", ".join(f(r["extra_vs_code"][k]) for k in ke) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--dims", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--c", type=float, nargs="+", default=[ALPHA_C], help="constants c to compare (default: the built-in one)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adaptive_cost")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(tuple(args.dims), prompts=args.prompts, cs=tuple(args.c))
    res["seconds"] = time.perf_counter() - t0
    res["command"] = "python -m benchmarks.adaptive_cost " + " ".join(argv or [])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.json").write_text(dumps_strict(res, indent=1))
    md = markdown(res)
    (args.out / "cost.md").write_text(md + "\n")
    print(md)
    print(f"({res['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
