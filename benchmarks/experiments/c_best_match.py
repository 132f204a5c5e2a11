"""c. Best-matching steps vs layer: is the trend linear (Newton) or exponential (GD)?

Question: as depth grows by one layer, does the best-matching Newton step grow by a constant
(linear trend: the model converges at Newton's rate) while the best-matching GD step grows by a
constant factor (exponential trend)?
Metric: least-squares fits of best-matching step vs layer, linear (steps = a·layer + b) and
exponential (log₁₀ steps = a·layer + b), with R² in the fitted space, over all layers 1…L and the
middle layers 2…L−1; layers saturated at the end of the step grid are left out.
Mirrors the paper's best-matching-steps figure ("each middle layer ≈ 3 Newton iterations", GD
needing exponentially more steps).  :func:`trend_fits` and :func:`best_match_trends` are reused by d.
"""

from __future__ import annotations

import numpy as np

from benchmarks import metrics as M
from benchmarks.experiments.b_similarity import similarity_tables
from benchmarks.experiments.common import fmt, md_table, pyplot
from benchmarks.experiments.context import Context, Suite
from benchmarks.experiments.registry import experiment


FIT_RANGES = ("all", "middle")


def trend_fits(sims: dict, L: int) -> dict:
    """Linear and exponential fits of best steps vs layer.

    Ranges: ``all`` = layers 1..L, ``middle`` = layers 2..L-1 (the paper's "middle layers"; only
    when L >= 4); in both, layers whose best match sits at the end of the step grid (saturated)
    are left out.  Keys ``{sime|simw}_{newton|gd}_{linear|exponential}_{all|middle}``.
    """
    fits = {}
    for key, t in sims.items():
        for rng in FIT_RANGES:
            cand = range(1, L + 1) if rng == "all" else (range(2, L) if L >= 4 else range(0))
            lay = [l for l in cand if not t["saturated"][l]]
            steps = [int(t["best_step"][l]) for l in lay]
            for kind in ("linear", "exponential"):
                ok_l = [l for l, st in zip(lay, steps) if kind == "linear" or st > 0]
                ok_s = [st for st in steps if kind == "linear" or st > 0]
                fits[f"{key}_{kind}_{rng}"] = M.fit_trend(ok_l, ok_s, kind)
    return fits


def best_match_trends(ctx: Context, s: Suite, folder: str) -> dict:
    out = ctx.dir(folder)
    L = s.n_layers
    sims = similarity_tables(s)
    fits = trend_fits(sims, L)
    rows = []
    for l in range(L + 1):
        rows.append([l] + [int(sims[k]["best_step"][l]) for k in ("sime_newton", "simw_newton", "sime_gd", "simw_gd")])
    ctx.write_csv(out / "best_match.csv", ["layer", "newton_sime", "newton_simw", "gd_sime", "gd_simw"], rows)
    ctx.write_json(out / "fits.json", {
        "kappa": s.kappa,
        "method": "least squares over layers 1..L ('all') or 2..L-1 ('middle'), leaving out layers whose best match "
                  "is at the end of the step grid; linear: steps = slope*layer + intercept; "
                  "exponential: log10(steps) = slope*layer + intercept; R^2 in the fitted space",
        "best_steps": {k: v["best_step"] for k, v in sims.items()}, "fits": fits,
    })
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    lay = np.arange(1, L + 1)  # layer 0 is the embedding: its probe has no context information
    for key, mk in (("sime", "o"), ("simw", "s")):
        bn = np.asarray(sims[f"{key}_newton"]["best_step"], float)[1:]
        bg = np.asarray(sims[f"{key}_gd"]["best_step"], float)[1:]
        ax[0].plot(lay, bn, mk, label=f"{key.upper().replace('SIM', 'Sim')} best match")
        ax[1].semilogy(lay, bg, mk, label=f"{key.upper().replace('SIM', 'Sim')} best match")
        f = fits[f"{key}_newton_linear_all"]
        if f["slope"] is not None:
            xx = np.array([min(f["layers"]), max(f["layers"])])
            ax[0].plot(xx, f["slope"] * xx + f["intercept"], "--",
                       label=f"{key}: linear {f['slope']:.2f}/layer, R²={fmt(f['r2'])}")
        f = fits[f"{key}_gd_exponential_all"]
        if f["slope"] is not None:
            xx = np.linspace(min(f["layers"]), max(f["layers"]), 20)
            ax[1].semilogy(xx, 10 ** (f["slope"] * xx + f["intercept"]), "--",
                           label=f"{key}: ×{f['factor_per_layer']:.2f}/layer, R²={fmt(f['r2'])}")
    ax[0].set(xlabel="transformer layer", ylabel="best-matching Newton steps", title="Newton: linear trend?")
    ax[1].set(xlabel="transformer layer", ylabel="best-matching GD steps (log)", title="GD: exponential trend?")
    for a in ax:
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    fig.suptitle(f"Best-matching steps vs layer (κ={s.kappa:g})")
    ctx.save_fig(fig, out / "best_match.png")

    trows = []
    for key in ("sime_newton", "simw_newton", "sime_gd", "simw_gd"):
        for rng in FIT_RANGES:
            for kind in ("linear", "exponential"):
                f = fits[f"{key}_{kind}_{rng}"]
                trows.append([key.replace("_", " vs "), kind, f["slope"], f.get("factor_per_layer"), f["intercept"], f["r2"],
                              ",".join(map(str, f["layers"])) or "–"])
    table = md_table(["match", "trend", "slope", "factor/layer", "intercept", "R²", "layers fitted"], trows)
    md = (f"Trend fits of best-matching steps vs layer, κ = {s.kappa:g} (linear on steps; exponential = "
          f"linear on log₁₀ steps; R² in the fitted space).\n\n{table}\n\n![best match]({folder}/best_match.png)")
    return {"summary": {"fits": fits}, "markdown": md}



@experiment("c", "c_best_match", "Best-matching steps vs layer: linear (Newton) vs exponential (GD)",
            group="suite-kappa1", cost=0.15)
def exp_best_match(ctx: Context) -> dict:
    return best_match_trends(ctx, ctx.suite(1.0), "c_best_match")
