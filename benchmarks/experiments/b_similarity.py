"""b. Similarity heatmaps: which Newton step, and which GD step, does each layer resemble?

Question: for each probed layer of the trained transformer, how similar are its predictions to
those of Iterative Newton after j steps, and of GD after j steps?
Metric: SimE (cosine of the residual vectors over positions, mean over prompts) and SimW (cosine of
least-squares weights induced at fresh queries), as layers × steps matrices, with the best-matching
step (argmax) of each layer; also SimE/SimW against OLS.
Mirrors the paper's similarity heatmaps (layers × Newton iterations, layers × GD steps on a log
axis).  :func:`similarity_tables` and :func:`heatmaps` are reused by experiments c and d.
"""

from __future__ import annotations

import numpy as np

from benchmarks import metrics as M
from benchmarks.experiments.common import md_table, pyplot
from benchmarks.experiments.context import Context, Suite
from benchmarks.experiments.registry import experiment


def similarity_tables(s: Suite) -> dict:
    """SimE and SimW matrices of the probed layers against Newton and GD, with best matches."""
    res = {}
    for fam, steps, P, W in (("newton", s.newton_steps, s.newton, s.W_newton), ("gd", s.gd_steps, s.gd, s.W_gd)):
        for metric, mat in (("sime", M.sim_e(s.tf_layers, P, s.y)), ("simw", M.sim_w(s.W_tf, W))):
            idx, step, val = M.best_match(mat, steps)
            res[f"{metric}_{fam}"] = {"matrix": mat, "steps": steps, "best_index": idx, "best_step": step,
                                      "best_value": val, "saturated": idx == len(steps) - 1}
    return res


def heatmaps(ctx: Context, s: Suite, folder: str) -> dict:
    out = ctx.dir(folder)
    L = s.n_layers
    sims = similarity_tables(s)
    extra = {
        "sime_readout_vs_ols": float(M.sim_e(s.tf_out, s.ols, s.y)[0, 0]),
        "simw_readout_vs_ols": float(M.sim_w(s.W_tf_out, s.W_ols)[0, 0]),
        "sime_layers_vs_ols": M.sim_e(s.tf_layers, s.ols, s.y)[:, 0],
        "simw_layers_vs_ols": M.sim_w(s.W_tf, s.W_ols)[:, 0],
    }
    ctx.write_json(out / "similarity.json", {
        "kappa": s.kappa, "layers": list(range(L + 1)),
        "sime_definition": "cosine of residual vectors (prediction - y) over positions t=1..n-1, mean over prompts",
        "simw_definition": (f"cosine of least-squares weights fitted to predictions at T={s.Xq.shape[1]} fresh queries "
                            f"after a context of t={s.simw_context} examples, mean over {s.Xq.shape[0]} prompts"),
        **sims, **extra,
    })
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), layout="constrained")
    lay = np.arange(L + 1)
    for r, metric in enumerate(("sime", "simw")):
        for c, fam in enumerate(("newton", "gd")):
            ax, t = axes[r, c], sims[f"{metric}_{fam}"]
            mat = np.asarray(t["matrix"])
            st = np.asarray(t["steps"], dtype=float)
            if fam == "gd":
                lg = np.log10(st)
                mids = (lg[1:] + lg[:-1]) / 2
                xe = 10 ** np.concatenate([[lg[0] - (mids[0] - lg[0] if len(mids) else 0.5)], mids,
                                           [lg[-1] + (lg[-1] - mids[-1] if len(mids) else 0.5)]])
                ax.set_xscale("log")
            else:
                xe = np.concatenate([st - 0.5, [st[-1] + 0.5]])
            ye = np.arange(L + 2) - 0.5
            im = ax.pcolormesh(xe, ye, mat, cmap="viridis", vmin=max(float(mat.min()), -1.0), vmax=1.0, shading="flat")
            ax.plot(t["best_step"], lay, "r*", ms=10, mec="w", label="best match")
            ax.set(xlabel="GD steps (log)" if fam == "gd" else "Newton steps", ylabel="transformer layer",
                   title=f"{'SimE' if metric == 'sime' else 'SimW'}: layers × {'GD' if fam == 'gd' else 'Newton'}")
            ax.set_yticks(lay)
            fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Similarity of the trained transformer's layers to Newton and GD (κ={s.kappa:g})")
    ctx.save_fig(fig, out / "heatmaps.png")

    rows = []
    for l in range(L + 1):
        row = [str(l)]
        for key in ("sime_newton", "simw_newton", "sime_gd", "simw_gd"):
            t = sims[key]
            row.append(f"{int(t['best_step'][l])}{'+' if t['saturated'][l] else ''} ({t['best_value'][l]:.3f})")
        row.append(f"{float(extra['sime_layers_vs_ols'][l]):.3f}")
        rows.append(row)
    table = md_table(["layer", "Newton (SimE)", "Newton (SimW)", "GD (SimE)", "GD (SimW)", "SimE vs OLS"], rows)
    summary = {k: {"best_step": v["best_step"], "best_value": v["best_value"]} for k, v in sims.items()}
    summary.update(sime_readout_vs_ols=extra["sime_readout_vs_ols"], simw_readout_vs_ols=extra["simw_readout_vs_ols"])
    md = (f"Best-matching steps per layer (similarity in brackets; `+` = at the end of the step grid, i.e. "
          f"saturated), κ = {s.kappa:g}. SimW context t = {s.simw_context}, T = {s.Xq.shape[1]} queries.\n\n"
          f"{table}\n\n![heatmaps]({folder}/heatmaps.png)")
    return {"summary": summary, "markdown": md}



@experiment("b", "b_similarity", "SimE / SimW heatmaps: layers × Newton and GD steps", group="suite-kappa1", cost=0.3)
def exp_heatmaps(ctx: Context) -> dict:
    return heatmaps(ctx, ctx.suite(1.0), "b_similarity")
