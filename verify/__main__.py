"""``python -m verify DIR``: check a saved hand-built Newton network layer by layer.

Modes: numeric (default: seeded Gaussian prompts, every slot after every layer), ``--certify``
(the polynomial certificate, :func:`verify.certify`: every d and n at once), ``--exact`` (the
stored weights in exact rational arithmetic on a seeded rational prompt, :func:`verify.exact_check`)
and ``--symbolic`` (the network on polynomials for one n, :func:`verify.symbolic_check`).  The
three proof modes may be combined; then all of them run and all must pass.

Exit status: 0 when every check passes, 1 when one fails (the report names the first failing
layer and slot, or the diverging α), 2 on bad input (missing or corrupt checkpoint, a model
that is not a hand-built Newton network, bad options); errors go to stderr without a traceback.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import dataclasses
import math
import sys
import time

import torch
from construct.checkpoint import dumps_strict

DESCRIPTION = """\
Verify a saved hand-built Newton transformer (a folder written by model.save(DIR)).

Draws seeded Gaussian prompts (x ~ N(0, I), w* ~ N(0, I), y = X w*, x_q ~ N(0, I)), runs the
network, and compares every slot of the residual stream after every layer with what the
construction promises (u = M_j z, c = S M_j z, ...), computed independently in float64, then
the prediction with plain Iterative Newton (k steps) and, once Newton has converged, with OLS.

The network bakes in one step size alpha, which converges only when alpha*lambda_max(S)^2 < 2.
By default (--scale auto) the prompts are rescaled by one common factor so that the largest
alpha*lambda_max(S)^2 over the batch is 1 (alpha-safe data).  With an explicit --scale the data
is used as drawn; if alpha diverges on a prompt the run fails and says so.
"""

EPILOG = """\
proof modes (instead of the numeric check; combine them to run several):
  --certify   the polynomial certificate read off the weights: proves the model for every d and n
  --exact     exact rational arithmetic on one seeded rational prompt (--n examples, default 6)
  --symbolic  every x, y, x_q entry a symbol: proves one n (--n, default 2); small d*n only

exit status: 0 all checks pass; 1 a check failed (or alpha diverges); 2 bad input.
examples: python -m verify runs/newton_d5_k4 --prompts 16 --n 20 --dtype float32
          python -m verify runs/newton_d5_k4 --certify --exact
"""


class _UsageError(Exception):
    pass


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {s!r}")
    return v


def _scale(s: str) -> float | None:
    return None if s == "auto" else _positive_float(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("model_dir", metavar="DIR", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--prompts", type=_positive_int, default=8, metavar="B",
                   help="number of random prompts (default 8)")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="examples per prompt (default 20; 6 with --exact, 2 with --symbolic)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the prompts (default 0)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="run the network in this dtype (default float64); the reference is always float64")
    p.add_argument("--rtol", type=_positive_float, default=None,
                   help="relative tolerance per slot (default 1e-10 for float64, 1e-4 for float32)")
    p.add_argument("--condition-aware", action="store_true",
                   help="also accept errors within the first-order rounding bound (ill-conditioned data)")
    p.add_argument("--scale", type=_scale, default=None, metavar="auto|S",
                   help="multiply X and x_q by S; 'auto' (default) picks S so that max alpha*lambda_max(S)^2 = 1")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--certify", action="store_true", help="prove the model for every d and n (polynomial certificate)")
    p.add_argument("--exact", action="store_true", help="run the stored weights in exact rational arithmetic")
    p.add_argument("--symbolic", action="store_true", help="run the network on polynomials (one n, every prompt)")
    p.add_argument("--full", action="store_true", help="with --certify: list every slot, not only those a layer writes")
    return p


def _proof_modes(args, model) -> int:
    """--certify / --exact / --symbolic: run each requested proof, print it, exit 0 only if all pass."""
    import json

    from .certificate import certify
    from .rational import exact_check, random_rational_prompt
    from .symbolic import symbolic_check

    results = []
    if args.certify:
        c = certify(model)
        text = str(c) if not args.full else str(c).replace(c.table(), c.table(full=True))
        results.append(("certify", c.passed, c.message, text))
    if args.exact:
        n = args.n or 6
        X, y, xq = random_rational_prompt(model.d, n, seed=args.seed)
        r = exact_check(model, X, y, xq)
        results.append(("exact", r.passed, f"{r.message} (d={model.d}, n={n}, seed {args.seed}; {r.time:.2f} s, "
                        f"prediction {r.bits} bits)", None))
    if args.symbolic:
        n = args.n or 2
        r = symbolic_check(model, n)
        msg = r.error or (f"prediction − Newton is {'the zero polynomial' if r.passed else 'NOT zero'} for every prompt "
                          f"with d={model.d}, n={n} (degree {r.degree}, {r.terms} terms, {r.time:.2f} s)")
        results.append(("symbolic", r.passed, msg, None))
    if args.json:
        print(dumps_strict({"checkpoint": str(args.model_dir),
                          "results": [{"mode": m, "passed": ok, "message": msg} for m, ok, msg, _ in results]}, indent=2))
    else:
        for mode, ok, msg, text in results:
            print(f"[{mode}] " + (text if text else f"{'PASS' if ok else 'FAIL'}: {msg}"))
    return 0 if all(ok for _, ok, _, _ in results) else 1


def draw_prompts(model, B: int, n: int, seed: int, scale: float | None):
    """Seeded Gaussian prompts for ``model`` in float64, and the scale applied to X and x_q."""
    from construct.alpha import lambda_max

    d, spec = model.d, model.spec
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    xq = torch.randn(B, d, generator=g, dtype=torch.float64)
    if scale is None and spec.adaptive:
        scale = 1.0  # an adaptive α converges at every scale in its range
    elif scale is None:
        N = spec.n_prefix + n + 1
        a = spec.alpha / (N * N if spec.normalize else 1.0)  # α_eff, relative to S
        lam = spec.lam
        if a * lam * lam >= 2:
            raise _UsageError(
                f"the model's alpha diverges on every prompt: its ridge term alone gives "
                f"alpha_eff*lam^2 = {a * lam * lam:.4g} >= 2 (alpha_eff={a:g}, lam={lam:g})"
            )
        target = 1.0 if a * lam * lam < 1 else (a * lam * lam + 2) / 2  # α_eff·λ_max(S)² wanted
        mu = float(lambda_max(X.transpose(1, 2) @ X).max())  # λ_max(XᵀX) at scale 1
        s2 = (math.sqrt(target / a) - lam) / mu
        scale = math.sqrt(s2)
        if not (math.isfinite(scale) and scale > 0):
            raise _UsageError(f"cannot find an alpha-safe data scale for alpha={spec.alpha:g} (got {scale!r})")
    X, xq = X * scale, xq * scale
    y = torch.einsum("bnd,bd->bn", X, w)
    return X, y, xq, scale


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 with a usage message on bad options
    from construct import CheckpointError, NewtonTransformer, load_model
    from construct.adaptive import AlphaRangeError
    from .numeric import verify_model

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    t0 = time.perf_counter()

    def progress(msg: str) -> None:  # on stderr, so stdout stays the report (and --json stays JSON)
        print(f"verify [{time.perf_counter() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    try:
        progress(f"loading {args.model_dir}")
        try:
            model = load_model(args.model_dir, dtype=dtype)
        except CheckpointError as e:
            raise _UsageError(str(e)) from None
        from construct.model import HandBuiltModel

        proof = args.certify or args.exact or args.symbolic
        if not isinstance(model, NewtonTransformer) and not (proof and isinstance(model, HandBuiltModel)):
            raise _UsageError(
                f"{args.model_dir!r} holds a {type(model).__name__} (kind {getattr(model, 'kind', '?')!r}), "
                "not a hand-built Newton network; only those have slot invariants to verify"
                + ("" if proof else " (a hand-built GD network can be proven with --certify)")
            )
        if proof:
            modes = [m for m in ("certify", "exact", "symbolic") if getattr(args, m)]
            progress(f"{type(model).__name__} with {model.n_layers} layers; proving: {', '.join(modes)}")
            try:
                return _proof_modes(args, model)
            except (TypeError, ValueError) as e:
                raise _UsageError(str(e)) from None
        args.n = args.n or 20
        X, y, xq, scale = draw_prompts(model, args.prompts, args.n, args.seed, args.scale)
        progress(f"{type(model).__name__} with {model.n_layers} layers; checking every slot of every layer "
                 f"on {args.prompts} prompt(s) of n={args.n}")
        try:
            report = verify_model(model, X, y, xq, rtol=args.rtol, condition_aware=args.condition_aware,
                                  check_alpha="fail")
        except AlphaRangeError as e:
            raise _UsageError(str(e)) from None
        progress("done")
    except _UsageError as e:
        print(f"python -m verify: error: {e}", file=sys.stderr)
        return 2
    data = {"prompts": args.prompts, "n": args.n, "seed": args.seed, "scale": scale,
            "scale_rule": ("given" if args.scale is not None else "adaptive alpha: scale 1"
                           if model.spec.adaptive else "auto (max alpha_eff*lambda_max^2 = 1)"),
            "checkpoint": str(args.model_dir)}
    report = dataclasses.replace(report, config={**report.config, "data": data})
    if args.json:
        print(report.to_json())
    else:
        print(f"checkpoint {args.model_dir}: {args.prompts} Gaussian prompt(s), seed {args.seed}, "
              f"data scale {scale:.4g} ({data['scale_rule']})")
        print(report)
    if report.alpha.diverges and not args.json:
        print(f"python -m verify: alpha={model.spec.alpha:g} diverges on {report.alpha.n_diverging} prompt(s) "
              f"at --scale {scale:g}; use a smaller --scale or --scale auto", file=sys.stderr)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
