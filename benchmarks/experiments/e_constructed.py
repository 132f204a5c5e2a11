"""e. Constructed vs trained: the hand-built k-step network, the trained model, and the LSTM.

Questions: (1) is the hand-built network exactly Newton-k (SimE 1 to round-off, best-matching
step k, distinguishable from k ± 1)?  (2) At the trained model's depth, how do constructed
networks (k + 2 and merged forms with one fixed safe α, the adaptive-α forms, and the hyperpower form) compare with the trained transformer in
error and best matches?  (3) Does the LSTM behave like online GD rather than like OLS/Newton?
Metric: SimE against Newton with the networks' own α and with the released code's per-prefix α,
against GD, online GD and OLS; errors at the last position and averaged over t ≥ d.
Mirrors the paper's construction (Theorem: k Newton steps in O(k) layers) checked numerically,
and its LSTM comparison (Table 1: LSTM closest to online GD, transformer closest to Newton/OLS).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from benchmarks import metrics as M
from benchmarks.experiments.a_convergence import _avg_slice
from benchmarks.experiments.common import error_ylim, fmt, md_table, pyplot
from benchmarks.experiments.context import Context, Suite
from benchmarks.experiments.registry import experiment


def _best_row(P, s: Suite, fam: str) -> tuple[int, float]:
    steps, R = (s.newton_steps, s.newton) if fam == "newton" else (s.gd_steps, s.gd)
    _, st, val = M.best_match(M.sim_e(P, R, s.y), steps)
    return int(st[0]), float(val[0])


@experiment("e", "e_constructed", "Constructed k-step network vs trained model; LSTM vs online GD",
            group="suite-kappa1", cost=1.0)
def exp_constructed(ctx: Context) -> dict:
    from construct import build_newton_transformer, safe_alpha
    from verify import newton_predictions, online_gd_predictions

    out = ctx.dir("e_constructed")
    s = ctx.suite(1.0).subset(ctx.sizes.constructed_prompts)
    X, y, d, n, L = s.X, s.y, s.d, s.n, s.n_layers
    Kc = ctx.sizes.constructed_k
    # one fixed α for the whole test set: safe (αλ_max² ≤ 1) for the prompt with the largest
    # λ_max(S) at full length, hence for every prefix (S_t ⪯ S_n)
    alpha = float(safe_alpha(X).min())

    ctx.step("constructed k = 0..K")
    t0 = time.perf_counter()
    ks = list(range(Kc + 1))
    Pc = torch.stack([build_newton_transformer(d, k, alpha).predict_all(X, y, check_precision="warn") for k in ks])  # (K+1, B, n)
    # Newton with the networks' own α; long enough that the trained model's best match is not cut off
    ref_steps = list(range(max(Kc + 3, ctx.sizes.newton_steps + 1)))
    Nref = newton_predictions(X, y, ref_steps, alpha=alpha, method="batched", check_precision="warn")  # (J, B, n)
    t_c = time.perf_counter() - t0
    simc = M.sim_e(Pc, Nref, y)  # (K+1, J)
    idx, best, val = M.best_match(simc, ref_steps)
    diag = torch.stack([simc[k, k] for k in ks])
    gap = torch.stack([simc[k, k] - torch.cat([simc[k, :k], simc[k, k + 1:]]).max() for k in ks])
    relerr = torch.stack([(Pc[k] - Nref[k]).abs().max() / Nref[k].abs().max().clamp(min=1e-300) for k in ks])
    ctx.check("constructed_sime_vs_newton_k_is_1", bool((1 - diag).abs().max() <= 1e-12),
              max_abs_1_minus_sime=float((1 - diag).abs().max()), tol=1e-12)
    ctx.check("constructed_best_newton_step_equals_k", bool(list(best) == ks), best_steps=best, k=ks)
    ctx.write_json(out / "constructed_vs_newton.json", {
        "alpha": alpha, "alpha_rule": "min over test prompts of construct.safe_alpha (alpha*lambda_max^2 <= 1)",
        "k": ks, "newton_steps": ref_steps, "sime": simc, "best_step": best, "sime_at_k": diag,
        "one_minus_sime_at_k": 1 - diag, "margin_to_next_best": gap, "max_rel_pred_error_vs_newton_k": relerr,
        "seconds": t_c,
    })
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    lg = torch.log10((1 - simc[:, :Kc + 3]).abs().clamp(min=1e-17)).numpy()  # the heatmap shows j <= K + 2
    im = ax.imshow(lg, cmap="magma", aspect="auto", origin="lower", vmin=-17, vmax=0)
    ax.plot(idx, ks, "c*", ms=10, label="best match")
    ax.set(xlabel="Newton steps j (same fixed α)", ylabel="constructed network k", title="log₁₀(1 − SimE): constructed k vs Newton j")
    ax.legend(fontsize=7)
    fig.colorbar(im, ax=ax)
    ctx.save_fig(fig, out / "constructed_vs_newton.png")

    # ---- same depth: trained L layers vs constructed with L layers (k = L-2; merged form k = L-1)
    ctx.step("same depth")
    rows, depth = [], {}
    cands: list[tuple[str, torch.Tensor]] = [("trained read-out", s.tf_out), (f"trained probe, layer {L}", s.tf_layers[L])]
    if L >= 2:
        cands.append((f"constructed k={L - 2} ({L} layers)", build_newton_transformer(d, L - 2, alpha).predict_all(X, y, check_precision="warn")))
    if L - 1 >= 2:
        cands.append((f"constructed merged k={L - 1} ({L} layers)",
                      build_newton_transformer(d, L - 1, alpha, form="merged").predict_all(X, y, check_precision="warn")))
    # adaptive α (in-network, per prompt; construct.adaptive): k + 4 layers, merged k + 3
    if L - 4 >= 0:
        cands.append((f"constructed adaptive α k={L - 4} ({L} layers)",
                      build_newton_transformer(d, L - 4, "adaptive").predict_all(X, y, check_precision="warn")))
    if L - 3 >= 2:
        cands.append((f"constructed adaptive α merged k={L - 3} ({L} layers)",
                      build_newton_transformer(d, L - 3, "adaptive", form="merged").predict_all(X, y, check_precision="warn")))
    # hyperpower (fixed α): j = L − 3 order-3 layers, residual power 4·3^j ≥ 2^k for k = ⌊log₂ 4·3^j⌋
    if L - 3 >= 0:
        kh = int(math.floor(math.log2(4 * 3 ** (L - 3))))
        cands.append((f"constructed hyperpower j={L - 3} (≥ Newton-{kh}, {L} layers)",
                      build_newton_transformer(d, kh, alpha, form="hyperpower").predict_all(X, y, check_precision="warn")))
    cands.append(("OLS", s.ols))
    for name, P in cands:
        bn, vn = _best_row(P, s, "newton")
        bg, vg = _best_row(P, s, "gd")
        _, bc, vc = M.best_match(M.sim_e(P, Nref, y), ref_steps)
        r = {"nmse_last": float(M.nmse(P, y, d)[0]), "nmse_avg": float(M.nmse(P, y, d, _avg_slice(n, d))[0]),
             "sime_vs_ols": float(M.sim_e(P, s.ols, y)[0, 0]), "best_newton_code": bn, "sime_newton_code": vn,
             "best_newton_fixed_alpha": int(bc[0]), "sime_newton_fixed_alpha": float(vc[0]),
             "best_gd": bg, "sime_gd": vg}
        depth[name] = r
        rows.append([name, r["nmse_last"], r["nmse_avg"], r["sime_vs_ols"], f"{bn} ({vn:.3f})",
                     f"{r['best_newton_fixed_alpha']} ({r['sime_newton_fixed_alpha']:.3f})", f"{bg} ({vg:.3f})"])
    # error vs depth: trained probes per layer vs constructed networks of that depth
    code_k = [k for k in ks if k < len(s.newton_steps)]
    Pa = torch.stack([build_newton_transformer(d, k, "adaptive").predict_all(X, y, check_precision="warn") for k in ks])  # (K+1, B, n)
    ev_depth = {"layer": list(range(L + 1)), "trained_probe_nmse_last": M.nmse(s.tf_layers, y, d),
                "constructed_depth": [k + 2 for k in ks], "constructed_nmse_last": M.nmse(Pc, y, d),
                "adaptive_depth": [k + 4 for k in ks], "adaptive_nmse_last": M.nmse(Pa, y, d),
                "newton_code_alpha_depth": [k + 2 for k in code_k],
                "newton_code_alpha_nmse_last": M.nmse(s.newton[code_k], y, d)}
    ctx.write_json(out / "constructed_vs_trained.json", {
        "alpha": alpha, "trained_layers": L, "models": depth, "error_vs_depth": ev_depth,
        "note": "constructed networks use one fixed alpha (above), except the adaptive ones (alpha computed in the "
                "network per prefix); 'newton_code' columns compare against Newton "
                "with the per-prefix alpha 1/||SS^T||_F, 'fixed_alpha' columns against Newton with the constructed alpha",
    })
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ax[0].semilogy(ev_depth["layer"], ev_depth["trained_probe_nmse_last"], "o-", label="trained (probe at layer)")
    ax[0].semilogy(ev_depth["constructed_depth"], ev_depth["constructed_nmse_last"], "s-", label="constructed, k+2 layers (fixed α)")
    ax[0].semilogy(ev_depth["adaptive_depth"], ev_depth["adaptive_nmse_last"], "D-", label="constructed, k+4 layers (adaptive α)")
    ax[0].semilogy(ev_depth["newton_code_alpha_depth"], ev_depth["newton_code_alpha_nmse_last"], "^:",
                   label="Newton k = depth−2, per-prompt α (not in fixed weights)")
    ax[0].set(xlabel="depth (layers)", ylabel="error, last position", title="error vs depth")
    for name, P in cands:
        ax[1].semilogy(range(n), M.error_vs_examples(P, y, d)[0], label=name)
    ax[1].set(xlabel="in-context examples t", ylabel="error (squared error / d)", title=f"same depth L={L}",
              ylim=error_ylim(d))
    for a in ax:
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    ctx.save_fig(fig, out / "constructed_vs_trained.png")

    # ---- LSTM vs online GD
    ctx.step("LSTM")
    lstm_md, lstm_sum = "", {}
    if ctx.lstm is not None:
        Pl = ctx.lstm.predict_all(X, y).to(torch.float64)
        bn, vn = _best_row(Pl, s, "newton")
        bg, vg = _best_row(Pl, s, "gd")
        bn_t, vn_t = _best_row(s.tf_out, s, "newton")
        bg_t, vg_t = _best_row(s.tf_out, s, "gd")
        ogd = online_gd_predictions(X, y)
        lstm_sum = {
            "lstm": {"nmse_last": float(M.nmse(Pl, y, d)[0]), "sime_online_gd": float(M.sim_e(Pl, ogd, y)[0, 0]),
                     "sime_ols": float(M.sim_e(Pl, s.ols, y)[0, 0]), "best_newton": bn, "sime_newton": vn,
                     "best_gd": bg, "sime_gd": vg},
            "transformer": {"nmse_last": float(M.nmse(s.tf_out, y, d)[0]), "sime_online_gd": float(M.sim_e(s.tf_out, ogd, y)[0, 0]),
                            "sime_ols": float(M.sim_e(s.tf_out, s.ols, y)[0, 0]), "best_newton": bn_t, "sime_newton": vn_t,
                            "best_gd": bg_t, "sime_gd": vg_t},
            "online_gd": {"nmse_last": float(M.nmse(ogd, y, d)[0])},
            "source": ctx.lstm_source,
        }
        ctx.write_json(out / "lstm.json", lstm_sum)
        fig, ax = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        for name, P in (("LSTM", Pl), ("online GD", ogd), ("trained transformer", s.tf_out), ("OLS", s.ols)):
            ax[0].semilogy(range(n), M.error_vs_examples(P, y, d)[0], label=name)
        ax[0].set(xlabel="in-context examples t", ylabel="error (squared error / d)", title="LSTM vs online GD",
                  ylim=error_ylim(d))
        ax[0].legend(fontsize=7)
        ax[0].grid(alpha=0.3, which="both")
        labels = ["online GD", "OLS", f"best Newton\nLSTM {bn} / TF {bn_t}", f"best GD\nLSTM {bg} / TF {bg_t}"]
        lv = [lstm_sum["lstm"][k] for k in ("sime_online_gd", "sime_ols", "sime_newton", "sime_gd")]
        tv = [lstm_sum["transformer"][k] for k in ("sime_online_gd", "sime_ols", "sime_newton", "sime_gd")]
        xx = np.arange(len(labels))
        ax[1].bar(xx - 0.2, lv, 0.4, label="LSTM")
        ax[1].bar(xx + 0.2, tv, 0.4, label="transformer")
        ax[1].set_xticks(xx, labels, fontsize=8)
        ax[1].set(ylabel="SimE", ylim=(min(0.0, min(lv + tv)), 1.0), title="SimE against algorithms")
        ax[1].legend(fontsize=7, loc="lower left")
        ctx.save_fig(fig, out / "lstm.png")
        lr_ = lstm_sum
        lstm_md = md_table(["model", "error, last", "SimE online GD", "SimE OLS", "best Newton (SimE)", "best GD (SimE)"],
                           [[m, lr_[m]["nmse_last"], lr_[m]["sime_online_gd"], lr_[m]["sime_ols"],
                             f"{lr_[m]['best_newton']} ({lr_[m]['sime_newton']:.3f})", f"{lr_[m]['best_gd']} ({lr_[m]['sime_gd']:.3f})"]
                            for m in ("lstm", "transformer")])
        lstm_md += f"\n\nOnline GD error, last position: {fmt(lstm_sum['online_gd']['nmse_last'])}.\n\n![lstm](e_constructed/lstm.png)"
    else:
        ctx.note("no LSTM checkpoint: the LSTM comparison was skipped")

    ctab = md_table(["k", "1 − SimE vs Newton-k", "best Newton step", "margin to next best", "max rel. pred. error"],
                    [[k, f"{float(1 - diag[k]):.1e}", int(best[k]), float(gap[k]), float(relerr[k])] for k in ks])
    dtab = md_table(["model", "error, last", "error, avg", "SimE vs OLS", "best Newton, code α (SimE)",
                     "best Newton, fixed α (SimE)", "best GD (SimE)"], rows)
    built = {k: v for k, v in depth.items() if k.startswith("constructed")}
    best_name = min(built, key=lambda k: built[k]["nmse_last"]) if built else None
    trained = depth["trained read-out"]["nmse_last"]
    gap_md = ("" if best_name is None else
              f"Best hand-built network at depth {L}: {best_name}, error {fmt(built[best_name]['nmse_last'])} against "
              f"{fmt(trained)} for the trained model ({built[best_name]['nmse_last'] / trained:.3g}× worse).\n\n")
    md = (f"Hand-built networks (fixed α = {alpha:.3g}, safe for every test prompt) against Iterative Newton "
          f"with the same α, on the same {X.shape[0]} prompts:\n\n{ctab}\n\n![constructed vs newton](e_constructed/constructed_vs_newton.png)\n\n"
          f"Same depth as the trained model (L = {L}):\n\n{dtab}\n\n{gap_md}![constructed vs trained](e_constructed/constructed_vs_trained.png)\n\n"
          + (f"LSTM baseline ({ctx.lstm_source}):\n\n{lstm_md}" if lstm_md else "No LSTM checkpoint: skipped."))
    summary = {"alpha": alpha, "constructed_best_newton_step": best, "constructed_one_minus_sime": 1 - diag,
               "same_depth": depth, "best_constructed_at_depth": best_name,
               "best_constructed_over_trained": None if best_name is None else built[best_name]["nmse_last"] / trained,
               "lstm": lstm_sum}
    return {"summary": summary, "markdown": md}

