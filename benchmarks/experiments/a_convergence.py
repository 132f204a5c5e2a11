"""a. Convergence: how fast does the error fall with depth, against Newton steps and GD steps?

Question: does the trained transformer's error fall layer by layer the way Iterative Newton's
falls step by step (superlinearly), or the way GD's does (linearly in log error per step)?
Metric: normalised squared error (squared error / d, mean over prompts) at the last position and
averaged over t ≥ d, per probed layer (closed-form linear probes), per Newton step and per GD step,
plus the error against the number of in-context examples.
Mirrors the paper's layer-wise convergence figures (error vs layer beside error vs iterations of
Newton and GD, isotropic data).  :func:`convergence` is reused by experiment d (κ = 100).
"""

from __future__ import annotations

import numpy as np

from benchmarks import metrics as M
from benchmarks.data import zero_predictor_mse
from benchmarks.experiments.common import error_ylim, md_table, pyplot
from benchmarks.experiments.context import Context, Suite
from benchmarks.experiments.registry import experiment


def _avg_slice(n: int, d: int) -> slice:
    """Positions t = d … n − 1 (at least d examples in context: OLS is exact there without noise)."""
    return slice(min(d, n - 1), n)


def convergence(ctx: Context, s: Suite, folder: str) -> dict:
    out = ctx.dir(folder)
    d, n, L = s.d, s.n, s.n_layers
    avg = _avg_slice(n, d)
    fams = {
        "transformer_layer": (list(range(L + 1)), s.tf_layers),
        "newton_step": (s.newton_steps, s.newton),
        "gd_step": (s.gd_steps, s.gd),
    }
    singles = {"transformer_output": s.tf_out, "ols": s.ols, "online_gd": s.ogd}
    rows, ex_rows, res = [], [], {}
    for fam, (xs, P) in fams.items():
        last, mean = M.nmse(P, s.y, d), M.nmse(P, s.y, d, avg)
        ev = M.error_vs_examples(P, s.y, d)
        res[fam] = {"x": xs, "nmse_last": last, "nmse_avg": mean}
        for i, x in enumerate(xs):
            rows.append([fam, x, float(last[i]), float(mean[i])])
            ex_rows += [[fam, x, t, float(ev[i, t])] for t in range(n)]
    for name, P in singles.items():
        last, mean = float(M.nmse(P, s.y, d)[0]), float(M.nmse(P, s.y, d, avg)[0])
        res[name] = {"nmse_last": last, "nmse_avg": mean}
        rows.append([name, "", last, mean])
        ev = M.error_vs_examples(P, s.y, d)[0]
        ex_rows += [[name, "", t, float(ev[t])] for t in range(n)]
    ctx.write_csv(out / "convergence.csv", ["family", "layer_or_step", "nmse_last", "nmse_avg"], rows)
    ctx.write_csv(out / "error_vs_examples.csv", ["family", "layer_or_step", "examples", "nmse"], ex_rows)
    zero = zero_predictor_mse(d, s.kappa) / d
    ctx.write_json(out / "convergence.json", {
        "kappa": s.kappa, "d": d, "n": n, "test_prompts": s.X.shape[0], "zero_predictor_nmse": zero,
        "definition": "nmse = squared error / d averaged over prompts; last = position t=n-1; avg = mean over t=d..n-1",
        "newton_alpha": "code: 1/||S S^T||_F per prefix", "gd_lr": "1/lambda_max(S_t) per prefix",
        **res, "timings_s": s.timings,
    })

    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True, layout="constrained")
    lay = np.arange(L + 1)
    ax[0].semilogy(lay, res["transformer_layer"]["nmse_last"], "o-", label="probe, last position")
    ax[0].semilogy(lay, res["transformer_layer"]["nmse_avg"], "s--", label="probe, avg t≥d")
    ax[0].semilogy([L], [res["transformer_output"]["nmse_last"]], "k*", ms=11, label="model read-out")
    ax[0].set(xlabel="transformer layer", ylabel="error (squared error / d)", title="trained transformer")
    ax[1].semilogy(s.newton_steps, res["newton_step"]["nmse_last"], "o-", label="last position")
    ax[1].semilogy(s.newton_steps, res["newton_step"]["nmse_avg"], "s--", label="avg t≥d")
    ax[1].set(xlabel="Newton steps", title="Iterative Newton")
    ax[2].loglog(s.gd_steps, res["gd_step"]["nmse_last"], "o-", ms=3, label="last position")
    ax[2].loglog(s.gd_steps, res["gd_step"]["nmse_avg"], "s--", ms=3, label="avg t≥d")
    ax[2].set(xlabel="GD steps (log)", title="gradient descent")
    floor = 1e-6 * zero  # below this everything has converged; keeps the transformer's range readable
    for a in ax:
        a.axhline(max(res["ols"]["nmse_last"], floor), color="grey", lw=0.8, ls=":", label="OLS, last (clipped)")
        a.axhline(zero, color="k", lw=0.6, ls="-.", label="zero predictor")
        a.set_ylim(floor / 2, 3 * zero)
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    ax[2].legend(fontsize=7)
    fig.suptitle(f"Convergence (d={d}, n={n}, κ={s.kappa:g})")
    ctx.save_fig(fig, out / "convergence.png")

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
    cm = plt.get_cmap("viridis")
    evl = M.error_vs_examples(s.tf_layers, s.y, d)
    for l in range(L + 1):
        ax[0].semilogy(range(n), evl[l], color=cm(l / max(L, 1)), label=f"layer {l}")
    evn = M.error_vs_examples(s.newton, s.y, d)
    show = sorted(set(np.linspace(0, len(s.newton_steps) - 1, min(8, len(s.newton_steps))).astype(int)))
    for j, i in enumerate(show):
        ax[1].semilogy(range(n), evn[i], color=cm(j / max(len(show) - 1, 1)), label=f"Newton {s.newton_steps[i]}")
    for a in ax:
        a.semilogy(range(n), M.error_vs_examples(s.ols, s.y, d)[0], "k:", label="OLS")
        a.axvline(d, color="grey", lw=0.6)
        a.set(xlabel="in-context examples t", ylim=error_ylim(d, s.kappa))
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=6, ncol=2)
    ax[0].set(ylabel="error (squared error / d)", title="trained transformer, per probed layer")
    ax[1].set(title="Iterative Newton, per step")
    ctx.save_fig(fig, out / "error_vs_examples.png")

    tf = res["transformer_layer"]
    table = md_table(["layer"] + [str(l) for l in range(L + 1)] + ["read-out", "OLS"],
                     [["error, last position"] + [float(v) for v in tf["nmse_last"]] + [res["transformer_output"]["nmse_last"], res["ols"]["nmse_last"]],
                      ["error, avg t≥d"] + [float(v) for v in tf["nmse_avg"]] + [res["transformer_output"]["nmse_avg"], res["ols"]["nmse_avg"]]])
    ks = [k for k in (0, 1, 2, 3, 4, 6, 8, 12, 16, 20) if k in s.newton_steps]
    gsel = [g for g in s.gd_steps if g in (1, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000)]
    nt = md_table(["Newton steps"] + [str(k) for k in ks], [["error, last"] + [float(res["newton_step"]["nmse_last"][s.newton_steps.index(k)]) for k in ks]])
    gt = md_table(["GD steps"] + [str(g) for g in gsel], [["error, last"] + [float(res["gd_step"]["nmse_last"][s.gd_steps.index(g)]) for g in gsel]])
    summary = {
        "transformer_nmse_last": tf["nmse_last"], "transformer_nmse_avg": tf["nmse_avg"],
        "readout_nmse_last": res["transformer_output"]["nmse_last"], "ols_nmse_last": res["ols"]["nmse_last"],
        "online_gd_nmse_last": res["online_gd"]["nmse_last"], "timings_s": s.timings,
    }
    md = (f"Error (squared error / d; zero predictor = {zero:.3g}) on {s.X.shape[0]} held-out prompts, "
          f"κ = {s.kappa:g}.\n\n{table}\n\n{nt}\n\n{gt}\n\n"
          f"![convergence]({folder}/convergence.png)\n![error vs examples]({folder}/error_vs_examples.png)")
    return {"summary": summary, "markdown": md}



@experiment("a", "a_convergence", "Convergence: error vs layer and vs steps", group="suite-kappa1", cost=1.0)
def exp_convergence(ctx: Context) -> dict:
    return convergence(ctx, ctx.suite(1.0), "a_convergence")
