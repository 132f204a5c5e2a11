"""Where the float64 references' precision guard starts refusing, and what it costs.

    python -m benchmarks.guard_onset              # the README's numbers (about 1 min)
    python -m benchmarks.guard_onset --quick      # small sizes (seconds; a smoke test)

Prints, for ``verify.newton_predict`` (one prompt) and ``verify.newton_predictions`` with
``method="batched"`` (every prefix), the first step count k ≤ ``--max-k`` that raises
:class:`construct.precision.PrecisionError` on:

* rank-1 data X = g vᵀ (d = 4, n = 8) and rank-2 data (d = 8, n = 12, also order 3): the null
  block of the computed S, doubled (tripled) every step (terms 4–5 of :mod:`construct.precision`);
* full-rank Gaussian data (d = 10, n = 30) with κ(S) ≈ 1e2 … 1e7: the rounded product M·S
  (term 6b), which refuses once Newton has converged;

then the guard's cost on the batched path (B = 64, n = 40, d = 20, steps 1–23, α = "code", one
thread): the median seconds with ``check_precision="raise"`` over those with ``"ignore"``,
interleaved.  "none" means no refusal up to ``--max-k``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from construct.cli import HelpFormatter


def first_refused(fn, max_k: int) -> int | None:
    """The first k in 0..max_k for which ``fn(k)`` raises PrecisionError, else None."""
    from construct.precision import PrecisionError

    for k in range(max_k + 1):
        try:
            fn(k)
        except PrecisionError:
            return k
    return None


def _full_rank(log_kappa: int, d: int = 10, n: int = 30, seed: int = 1):
    """Gaussian data whose covariance has condition number 10**log_kappa: X (n, d), y (n,), x_q (d,)."""
    r = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(r.standard_normal((d, d)))
    half = (Q * 10.0 ** (-0.5 * log_kappa * np.linspace(0, 1, d))) @ Q.T  # Σ^{1/2}
    return (torch.tensor(r.standard_normal((n, d)) @ half), torch.tensor(r.standard_normal(n)),
            torch.tensor(r.standard_normal(d) @ half))


def onsets(max_k: int = 120, log_kappas=(2, 3, 4, 5, 6, 7)) -> list[tuple[str, str, int | None]]:
    """(case, path, first refused k) for the cases of the module docstring."""
    from verify import newton_predict
    from verify.reference import newton_predictions

    rows = []
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 8, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 8, generator=g, dtype=torch.float64)
    rows.append(("rank 1, d=4, n=8", "newton_predictions batched",
                 first_refused(lambda k: newton_predictions(X, y, [k], "code", method="batched"), max_k)))
    rows.append(("rank 1, d=4, n=8 (prefix 5)", "newton_predict",
                 first_refused(lambda k: newton_predict(X[:, :5], y[:, :5], X[:, 5], k, "code"), max_k)))
    rng = np.random.default_rng(0)
    X2 = torch.tensor(rng.standard_normal((2, 12, 2)) @ rng.standard_normal((2, 8)))
    y2 = torch.tensor(rng.standard_normal((2, 12)))
    for order in (2, 3):
        rows.append((f"rank 2, d=8, n=12, order {order}", "newton_predictions batched",
                     first_refused(lambda k: newton_predictions(X2, y2, [k], "code", method="batched", order=order), max_k)))
    for lk in log_kappas:
        Xf, yf, q = _full_rank(lk)
        rows.append((f"full rank, d=10, n=30, kappa(S)~1e{lk}", "newton_predict",
                     first_refused(lambda k: newton_predict(Xf, yf, q, k, "code"), max_k)))
        rows.append((f"full rank, d=10, n=30, kappa(S)~1e{lk}", "newton_predictions batched",
                     first_refused(lambda k: newton_predictions(Xf[None], yf[None], [k], "code", method="batched"), max_k)))
    return rows


def guard_cost(B: int = 64, n: int = 40, d: int = 20, repeats: int = 7, seed: int = 0) -> dict:
    """Median seconds of the batched path (steps 1–23) with and without the guard, interleaved."""
    from construct.precision import PrecisionError
    from verify.reference import newton_predictions

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    steps = list(range(1, 24))
    t: dict[str, list[float]] = {"raise": [], "ignore": []}
    refused = False
    for _ in range(max(1, repeats)):
        for mode in t:
            t0 = time.perf_counter()
            try:
                newton_predictions(X, y, steps, "code", method="batched", check_precision=mode)
            except PrecisionError:
                refused = True
            t[mode].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"seconds": med, "ratio": med["raise"] / med["ignore"], "guard_refused": refused,
            "workload": f"B={B} n={n} d={d}, steps 1-23, alpha='code', method='batched'"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.guard_onset",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-k", type=int, default=120, help="largest step count tried (default: 120)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats of the cost measurement (default: 7)")
    ap.add_argument("--quick", action="store_true", help="max k 8, kappa 1e2 and 1e7 only, a small cost workload")
    args = ap.parse_args(argv)
    if args.max_k < 0 or args.repeats < 1:
        ap.error("--max-k must be >= 0 and --repeats >= 1")
    torch.set_num_threads(1)
    max_k = 8 if args.quick else args.max_k
    for case, path, k in onsets(max_k, (2, 7) if args.quick else (2, 3, 4, 5, 6, 7)):
        print(f"{case:<40} {path:<28} first refused k: {'none' if k is None else k} (of 0..{max_k})")
    c = guard_cost(B=8, n=12, d=4, repeats=1) if args.quick else guard_cost(repeats=args.repeats)
    print(f"guard cost, {c['workload']}: {c['seconds']['raise']:.3g} s with the guard, "
          f"{c['seconds']['ignore']:.3g} s without: {c['ratio']:.2f}x"
          + (" (the guard refused this workload)" if c["guard_refused"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
