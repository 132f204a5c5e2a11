"""A compiled Newton network and a trained model side by side in TransformerLens.

    python -m benchmarks.lens --out benchmarks/results/lens

compiles a d = 5, k = 3 Newton network with :func:`construct.to_gpt2`, opens it and the shipped
``cpu`` checkpoint in TransformerLens (:func:`construct.export.to_transformer_lens`), runs both
on one 10-example prompt with ``run_with_cache`` and plots head 0's ``blocks.{l}.attn.hook_pattern``
for every layer of each: ``patterns.png``, with the plotted numbers in ``patterns.json``.
Needs the ``lens`` extra.  Takes about 20 s on one CPU (most of it importing TransformerLens).
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import json
import math
from pathlib import Path

import torch
from construct.checkpoint import dumps_strict

HERE = Path(__file__).resolve().parent


def patterns(n: int = 10, seed: int = 0) -> dict:
    from construct import build_newton_transformer, gpt2_scale, load_model, safe_alpha, to_gpt2
    from construct.export import tl_predict, tl_residual, to_transformer_lens

    g = torch.Generator().manual_seed(seed)
    d = 5
    X = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    y = (X @ w[..., None])[..., 0]
    xq = torch.randn(1, d, generator=g, dtype=torch.float64)
    alpha = float(safe_alpha(X)[0]) * 0.5
    exact = build_newton_transformer(d, 3, alpha)
    compiled = to_gpt2(exact, 1e-6, scale=gpt2_scale(exact, X, y, xq))
    trained = load_model(HERE / "checkpoints" / "cpu").double()
    out = {"prompt": {"n": n, "d": d, "seed": seed}, "models": {}}
    for name, model in (("compiled Newton (k=3)", compiled), ("trained GPT-2 (cpu)", trained)):
        bridge = to_transformer_lens(model)
        _, cache = bridge.run_with_cache(tl_residual(model, X, y, xq), start_at_layer=0)
        pats = [cache[f"blocks.{l}.attn.hook_pattern"][0, 0] for l in range(bridge.cfg.n_layers)]
        out["models"][name] = {
            "hook": "blocks.{l}.attn.hook_pattern, head 0",
            "prediction_tl": float(tl_predict(bridge, model, X, y, xq)[0]),
            "prediction_ours": float(model.predict(X, y, xq)[0]),
            "patterns": [p.tolist() for p in pats],
        }
    out["exact_newton"] = float(exact.predict(X, y, xq)[0])
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["models"])
    cols = max(len(data["models"][n]["patterns"]) for n in names)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.1 * cols, 2.4 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        pats = data["models"][name]["patterns"]
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([]); ax.set_yticks([])
            if c >= len(pats):
                ax.axis("off")
                continue
            ax.imshow(pats[c], cmap="viridis", interpolation="nearest")
            ax.set_title(f"blocks.{c}", fontsize=8)
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle("attn.hook_pattern (head 0) in TransformerLens: compiled Newton (mirrored tokens) vs trained", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lens", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/lens", help="output folder")
    ap.add_argument("--n", type=int, default=10, help="examples in the prompt")
    ap.add_argument("--seed", type=int, default=0, help="prompt seed")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = patterns(a.n, a.seed)
    (out / "patterns.json").write_text(dumps_strict(data) + "\n")
    plot(data, out / "patterns.png")
    for name, m in data["models"].items():
        print(f"{name}: prediction TL {m['prediction_tl']:.9g}  ours {m['prediction_ours']:.9g}")
    print(f"exact Newton: {data['exact_newton']:.9g}\nwrote {out / 'patterns.png'} and patterns.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
