"""Command line for the builder.

    python -m construct demo  [--d 5 --k 8 --n 20 --seed 0]        build, run, verify, report
    python -m construct build --d 5 --k 3 --alpha 0.05 --out DIR   build and save
    python -m construct build --program gd --d 5 --steps 20 --lr 0.01 --out DIR   gradient descent
    python -m construct describe DIR                                layer and slot tables
"""

from __future__ import annotations

import argparse

from .cli import HelpFormatter
import sys

import torch

from .alpha import AlphaDivergenceError
from .builder import build_gd_transformer, build_newton_transformer
from .checkpoint import CheckpointError, load_model


def _add_build_args(p: argparse.ArgumentParser, need_alpha: bool) -> None:
    p.add_argument("--d", type=int, default=None if need_alpha else 5,
                   help="data dimension d (x in R^d)" + (" (required)" if need_alpha else ""))
    p.add_argument("--k", type=int, default=None if need_alpha else 10,
                   help="Newton steps k (k+2 layers; k+1 with --form merged; the fewest order-3 layers "
                        "matching Newton-k with --form hyperpower)" + (" (required for --program newton)" if need_alpha else ""))
    p.add_argument("--alpha", type=float, default=None,
                   help="Newton step size alpha baked into the weights; converges on a prompt iff "
                        "0 < alpha*lambda_max(S)^2 < 2" + ("" if need_alpha else " (default: safe for the demo prompt)"))
    p.add_argument("--attn", choices=["relu", "linear"], default="relu",
                   help="attention activation: relu (signed head pairs, as in the paper) or linear")
    p.add_argument("--normalize", action="store_true",
                   help="divide attention by the number of tokens N; then alpha_eff = alpha/N^2")
    p.add_argument("--lam", type=float, default=0.0, help="ridge lambda >= 0 (Newton on S + lam*I)")
    p.add_argument("--form", choices=["default", "merged", "hyperpower"], default="default",
                   help="default: k+2 layers, width 3d+2; merged: k+1 layers (k>=2), width 4d+2; "
                        "hyperpower: j+3 layers with 4*3^j >= 2^k (k>=2), width 6d+2")
    p.add_argument("--looped", action="store_true", help="share one weight block across the Newton layers")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="weight dtype")


def _build(a, alpha: float):
    return build_newton_transformer(
        a.d, a.k, alpha, attn=a.attn, normalize=a.normalize, lam=a.lam, form=a.form,
        looped=a.looped, dtype=getattr(torch, a.dtype),
    )


def cmd_build(a) -> int:
    if a.d is None:
        raise ValueError("--d (the data dimension) is required")
    if a.program == "gd":
        if a.steps is None or a.lr is None:
            raise ValueError("--program gd needs --steps and --lr")
        model = build_gd_transformer(a.d, a.steps, a.lr, attn=a.attn, normalize=a.normalize,
                                     dtype=getattr(torch, a.dtype))
        path = model.save(a.out)
        print(f"saved {model.n_layers}-layer gradient-descent transformer (d={a.d}, steps={a.steps}, lr={a.lr:g}) to {path}")
        return 0
    if a.k is None or a.alpha is None:
        raise ValueError("--program newton needs --k and --alpha")
    model = _build(a, a.alpha)
    path = model.save(a.out)
    print(f"saved {model.n_layers}-layer Newton transformer (d={a.d}, k={a.k}, form={model.spec.form}, "
          f"residual power {model.residual_power}) to {path}")
    return 0


def cmd_describe(a) -> int:
    model = load_model(a.dir)
    if not hasattr(model, "describe"):
        print(f"{a.dir}: a {model.kind!r} model", model, sep="\n")
        return 0
    print(model.describe())
    return 0


def cmd_demo(a) -> int:
    from .alpha import safe_alpha
    from verify import ols_predict, residual_power_predict, verify_model

    g = torch.Generator().manual_seed(a.seed)
    X = torch.randn(1, a.n, a.d, generator=g, dtype=torch.float64)
    w = torch.randn(1, a.d, generator=g, dtype=torch.float64)
    y = (X @ w[..., None])[..., 0]
    xq = torch.randn(1, a.d, generator=g, dtype=torch.float64)
    N = a.n + 1 + (a.d if a.lam > 0 else 0)
    alpha = a.alpha if a.alpha is not None else float(safe_alpha(X, lam=a.lam)) * (N * N if a.normalize else 1.0)
    model = _build(a, alpha)
    print(model.describe())
    print()
    pred = float(model.predict(X, y, xq))
    a_eff = alpha / (N * N) if a.normalize else alpha
    newton = float(residual_power_predict(X, y, xq, model.residual_power, a_eff, lam=a.lam))
    ols = float(ols_predict(X, y, xq, lam=a.lam))
    print(f"random prompt: n={a.n} examples in d={a.d}, y = x.w (noiseless), seed {a.seed}")
    rows = [("transformer prediction", pred, None), (f"direct Newton, k={a.k}" if model.spec.form != "hyperpower" else
             f"(I-aS^2)^{model.residual_power} ref.", newton, newton),
            ("OLS" + (f" (ridge lam={a.lam:g})" if a.lam else ""), ols, ols), ("true y_q = x_q.w", float(xq @ w[0]), None)]
    for label, v, ref in rows:
        diff = "" if ref is None else f"   rel. diff to transformer {abs(pred - ref) / max(abs(ref), 1e-300):.2e}"
        print(f"  {label:<24}{v: .15e}{diff}")
    print()
    report = verify_model(model, X, y, xq)
    print("verify_model, layer by layer (python -m construct demo --full prints every slot):")
    print(report if a.full else report.layer_summary())
    return 0 if report.passed else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, 
        prog="python -m construct",
        description="Build transformers whose hand-set weights run k steps of Iterative Newton "
                    "(M_0 = alpha*S, M_j = 2M - M S M) for in-context linear regression.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", formatter_class=HelpFormatter, help="build a model, run it on a random prompt, compare with Newton and OLS, verify every layer")
    _add_build_args(p, need_alpha=False)
    p.add_argument("--n", type=int, default=20, help="examples in the random prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    p.add_argument("--full", action="store_true", help="print the verifier's full per-slot table")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("build", formatter_class=HelpFormatter, help="build a model and save it as DIR/config.json + DIR/model.safetensors")
    _add_build_args(p, need_alpha=True)
    p.add_argument("--program", choices=["newton", "gd"], default="newton",
                   help="newton: Iterative Newton (--k, --alpha, --form); gd: gradient descent from w=0 (--steps, --lr)")
    p.add_argument("--steps", type=int, default=None, help="GD steps (--program gd); one layer per step")
    p.add_argument("--lr", type=float, default=None,
                   help="GD step size (--program gd); converges on a prompt iff 0 < lr*lambda_max(S) < 2")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("describe", formatter_class=HelpFormatter, help="print the layer table and the residual slot table of a saved model")
    p.add_argument("dir", help="model folder written by 'build' (or any saved model)")
    p.set_defaults(fn=cmd_describe)
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (ValueError, TypeError, AlphaDivergenceError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
