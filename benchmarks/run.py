"""The paper's analyses as one command: constructed vs trained vs Newton vs GD.

    python -m benchmarks.run                       # full run on the shipped cpu checkpoint
    python -m benchmarks.run --preset cpu --out results/ --seed 0
    python -m benchmarks.run --quick --out tmp     # CI: tiny sizes, sanity checks, < ~1 min
    python -m benchmarks.run --only a,e            # a subset of the experiments

Experiments (each writes PNG figures beside the JSON/CSV data that made them, into
``OUT/<folder>/``; ``OUT/summary.json`` and ``OUT/summary.md`` collect the main tables):

    a  a_convergence       error vs layer (trained transformer, probed) and vs steps (Newton, GD)
    b  b_similarity        SimE / SimW heatmaps: layers x Newton steps, layers x GD steps (log axis)
    c  c_best_match        best-matching steps vs layer; linear (Newton) vs exponential (GD) fits
    d  d_ill_conditioned   a-c again on kappa = 100 data (random eigenbasis per prompt)
    e  e_constructed       hand-built k-step network vs trained of the same depth; LSTM vs online GD

Adding an experiment (f width ablation, g performance table, ...): write a function
``fn(ctx: Context) -> dict`` and register it with ``@experiment("f", "f_width", "Width ablation")``
(in this module, or in a module listed in :data:`EXTRA_EXPERIMENT_MODULES`).  Use ``ctx.dir(...)``,
``ctx.write_json / write_csv / save_fig`` (they record the files for the summary; ``ctx.record``
for files written otherwise), ``ctx.prompts``
for seeded data, ``ctx.model`` / ``ctx.lstm`` / ``ctx.suite(kappa)`` for the shared computations,
``ctx.check(name, ok, ...)`` for sanity checks (a failed check makes the command exit 1) and
``ctx.step(msg)`` for the progress bar.  Return ``{"summary": {...}, "markdown": "..."}``; the
summary goes into summary.json under the experiment's key, the markdown into summary.md.

Conventions (stated once here, repeated in the JSON outputs):
* all-prefix predictions: position t predicts y_t from the first t examples (t = 0 gives 0);
* error = squared error / d, averaged over prompts ("nmse"); "last" is position t = n − 1,
  "avg" the mean over t = d … n − 1 (at least d examples, as in benchmarks.train's eval_nmse_avg);
* SimE over positions t = 1 … n − 1 (the paper's 2 … n + 1), averaged over prompts;
* SimW with a context of ``simw_context`` examples (default n − 1) and T = ``simw_queries_per_d``·d
  fresh queries per prompt from the prompt's own distribution;
* Newton uses the released code's α = 1/‖SSᵀ‖_F per prefix, GD η = 1/λ_max(S_t) per prefix
  (no 1/n), both from :mod:`verify.reference` (spectral all-steps path);
* the trained transformer's layer l is read by a closed-form linear probe (:mod:`benchmarks.probes`)
  fitted on separate prompts of the same distribution.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks import metrics as M
from benchmarks.data import sample_prompts, zero_predictor_mse
from benchmarks.probes import LayerProbes, fit_probes, probe_predictions, residual_streams

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"
FIG_DPI = 72  # the committed figures stay small (a few hundred KB for all of them)
EXTRA_EXPERIMENT_MODULES: tuple[str, ...] = ("benchmarks.width", "benchmarks.perf")  # f, g: imported before running


# ====================================================================== sizes
@dataclass(frozen=True)
class Sizes:
    """How much of everything a run uses.  ``FULL`` for the real run, ``QUICK`` for CI."""

    fit_prompts: int          # prompts the layer probes are fitted on
    test_prompts: int         # held-out prompts for errors and SimE
    simw_prompts: int         # prompts for SimW (each gets T fresh queries)
    simw_queries_per_d: int   # T = this * d fresh queries per prompt (T >> d)
    newton_steps: int         # Newton steps 0 .. K (kappa = 1)
    gd_max_steps: int         # GD steps on a log grid 1 .. J (kappa = 1)
    gd_points: int            # about this many GD step counts on the grid
    ill_newton_steps: int     # K for kappa = 100
    ill_gd_max_steps: int     # J for kappa = 100 (GD needs far more steps there)
    constructed_k: int        # hand-built networks k = 0 .. this
    constructed_prompts: int  # the first this many test prompts are used in experiment e
    probe_ridge: float = 1e-6  # relative ridge of the closed-form probes

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "probe_ridge":
                if not (isinstance(v, float) and v > 0):
                    raise ValueError(f"Sizes.probe_ridge must be a float > 0, got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool) or v < (0 if f.name == "constructed_k" else 1):
                raise ValueError(f"Sizes.{f.name} must be a positive int, got {v!r}")


FULL = Sizes(fit_prompts=2048, test_prompts=1024, simw_prompts=128, simw_queries_per_d=10,
             newton_steps=30, gd_max_steps=100_000, gd_points=61, ill_newton_steps=40,
             ill_gd_max_steps=10_000_000, constructed_k=10, constructed_prompts=512)
QUICK = Sizes(fit_prompts=256, test_prompts=64, simw_prompts=16, simw_queries_per_d=3,
              newton_steps=8, gd_max_steps=2000, gd_points=17, ill_newton_steps=8,
              ill_gd_max_steps=100_000, constructed_k=3, constructed_prompts=64)


# ====================================================================== registry
@dataclass(frozen=True)
class Experiment:
    key: str                          # short id used by --only ("a", "b", ...)
    folder: str                       # output sub-folder, also the summary key
    title: str
    fn: Callable[["Context"], dict]


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(key: str, folder: str, title: str):
    """Register ``fn(ctx) -> dict`` as an experiment (runs in registration order)."""
    def deco(fn: Callable[["Context"], dict]) -> Callable[["Context"], dict]:
        if key in EXPERIMENTS:
            raise ValueError(f"experiment key {key!r} is already registered ({EXPERIMENTS[key].folder})")
        EXPERIMENTS[key] = Experiment(key, folder, title, fn)
        return fn
    return deco


# ====================================================================== json helpers
def _plain(obj: Any, path: str, bad: list[str]) -> Any:
    """JSON-ready copy of obj; non-finite floats become None and are reported in ``bad``."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{path}.{k}", bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _shown(path: Path) -> str:
    """A path as shown in outputs: relative to the working directory when inside it (portable summaries)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _seed(base: int, tag: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}/{tag}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.{digits}f}"
    return f"{v:.{digits - 1}e}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def error_ylim(d: int, kappa: float = 1.0) -> tuple[float, float]:
    """y-range for error plots: from 1e-6 of the zero predictor's error (converged) to 3x it."""
    zero = zero_predictor_mse(d, kappa) / d
    return 0.5e-6 * zero, 3 * zero


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ====================================================================== the shared computations
@dataclass
class Suite:
    """Everything experiments a-c (and d) need for one data distribution, computed once."""

    kappa: float
    model_source: str               # which transformer checkpoint was probed
    d: int
    n: int
    X: torch.Tensor                 # (B, n, d) held-out prompts, float64
    y: torch.Tensor                 # (B, n)
    tf_layers: torch.Tensor         # (L+1, B, n) probe predictions per layer
    tf_out: torch.Tensor            # (B, n) the model's own read-out
    probes: LayerProbes
    newton_steps: list[int]
    newton: torch.Tensor            # (K+1, B, n)
    gd_steps: list[int]
    gd: torch.Tensor                # (G, B, n)
    ogd: torch.Tensor               # (B, n) online GD
    ols: torch.Tensor               # (B, n)
    simw_context: int
    Xq: torch.Tensor                # (Bw, T, d) the SimW queries
    W_tf: torch.Tensor              # (L+1, Bw, d) induced weights per probed layer
    W_tf_out: torch.Tensor          # (1, Bw, d) of the model's own read-out
    W_newton: torch.Tensor          # (K+1, Bw, d)
    W_gd: torch.Tensor              # (G, Bw, d)
    W_ols: torch.Tensor             # (1, Bw, d)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.tf_layers.shape[0] - 1

    def subset(self, B: int) -> "Suite":
        """The same suite restricted to the first B test prompts (SimW parts unchanged)."""
        return dataclasses.replace(
            self, X=self.X[:B], y=self.y[:B], tf_layers=self.tf_layers[:, :B], tf_out=self.tf_out[:B],
            newton=self.newton[:, :B], gd=self.gd[:, :B], ogd=self.ogd[:B], ols=self.ols[:B])


def reference_weights(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], X_ctx: torch.Tensor, y_ctx: torch.Tensor) -> torch.Tensor:
    """Exact weights of algorithms that are linear in the query: (..., B, d).

    ``fn(X, y)`` returns all-prefix predictions (..., B', t + 1); asking it for the basis queries
    e_1 … e_d after the context (via :func:`benchmarks.metrics.augment_queries`) reads off w.
    """
    B, t, d = X_ctx.shape
    E = torch.eye(d, dtype=torch.float64).expand(B, d, d)  # queries e_1..e_d per prompt
    Xa, ya = M.augment_queries(X_ctx, y_ctx, E)  # (B·d, t+1, d)
    P = fn(Xa, ya)[..., -1]  # (..., B·d)
    return P.reshape(*P.shape[:-1], B, d)


class Context:
    """What an experiment gets: output folders, models, seeded data, shared suites, checks."""

    def __init__(self, out: Path, quick: bool, seed: int, preset: str, sizes: Sizes,
                 model, model_source: str, lstm, lstm_source: str, progress=None, notes: list[str] | None = None):
        self.out = Path(out)
        self.quick = quick
        self.seed = seed
        self.preset = preset
        self.sizes = sizes
        self.model = model
        self.model_source = model_source
        self.lstm = lstm
        self.lstm_source = lstm_source
        self.notes: list[str] = list(notes or [])
        self.checks: dict[str, dict] = {}
        self.files: dict[str, list[str]] = {}
        self.nonfinite: list[str] = []
        self._suites: dict[float, Suite] = {}
        self.models_by_kappa: dict[float, Any] = {}   # optional per-distribution transformers
        self.model_sources: dict[float, str] = {}
        self._progress = progress
        self.current = "run"

    # ---------------------------------------------------------------- facts
    @property
    def d(self) -> int:
        return self.model.d

    @property
    def n(self) -> int:
        return self.model.n_points

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    def model_for(self, kappa: float):
        """The transformer probed on data of condition number ``kappa`` (default: ``self.model``)."""
        return self.models_by_kappa.get(kappa, self.model)

    # ---------------------------------------------------------------- io
    def dir(self, name: str) -> Path:
        p = self.out / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def record(self, path: Path) -> None:
        """List a file written by other means (e.g. a figure saved by a helper) under this experiment."""
        self.files.setdefault(self.current, []).append(str(path.relative_to(self.out)))

    _record = record  # older name, kept for callers

    def write_json(self, path: Path, obj: Any) -> Path:
        bad: list[str] = []
        data = _plain(obj, path.name, bad)
        self.nonfinite += [f"{path.relative_to(self.out)}:{b}" for b in bad]
        path.write_text(json.dumps(data, indent=1) + "\n")
        self._record(path)
        return path

    def write_csv(self, path: Path, header: list[str], rows: list[list]) -> Path:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in rows:
                vals = []
                for v in r:
                    if isinstance(v, (torch.Tensor, np.generic)):
                        v = v.item()
                    if isinstance(v, float) and not math.isfinite(v):
                        self.nonfinite.append(f"{path.relative_to(self.out)}:{r}")
                    vals.append(repr(v) if isinstance(v, float) else v)
                w.writerow(vals)
        self._record(path)
        return path

    def save_fig(self, fig, path: Path) -> Path:
        buf = io.BytesIO()
        fig.savefig(buf, dpi=FIG_DPI, format="png")  # constrained layout: one draw, no tight-bbox pass
        _plt().close(fig)
        from PIL import Image  # a matplotlib dependency

        # 256-colour palette PNG: a third of the size of RGBA for these line plots and heatmaps
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, format="PNG", optimize=True)
        self._record(path)
        return path

    def check(self, name: str, ok: bool, **detail) -> bool:
        self.checks[name] = {"ok": bool(ok), "experiment": self.current, **_plain(detail, name, [])}
        return bool(ok)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)

    def step(self, msg: str) -> None:
        if self._progress is not None:
            self._progress.set_postfix_str(f"{self.current}: {msg}", refresh=True)

    # ---------------------------------------------------------------- data
    def prompts(self, tag: str, B: int, n: int | None = None, kappa: float = 1.0):
        """Seeded float64 prompts (X (B, n, d), y (B, n)); the same tag always gives the same data."""
        X, y, _ = sample_prompts(B, self.n if n is None else n, self.d, kappa=kappa,
                                 seed=_seed(self.seed, f"{tag}/k{kappa:g}"), dtype=torch.float64)
        return X, y

    # ---------------------------------------------------------------- the shared suite
    def suite(self, kappa: float = 1.0) -> Suite:
        if kappa not in self._suites:
            self._suites[kappa] = self._make_suite(kappa)
        return self._suites[kappa]

    def _make_suite(self, kappa: float) -> Suite:
        from verify import gd_predictions, newton_predictions, online_gd_predictions, ols_predictions, prefix_spectrum

        sz, d, n = self.sizes, self.d, self.n
        ill = kappa != 1.0
        model = self.model_for(kappa)
        tm: dict[str, float] = {}
        self.step(f"probes (kappa={kappa:g})")
        t0, c0 = time.perf_counter(), time.process_time()
        fit = self.prompts("probe-fit", sz.fit_prompts, kappa=kappa)
        X, y = self.prompts("test", sz.test_prompts, kappa=kappa)
        H_fit = residual_streams(model, *fit)  # (L+1, B_fit, n, D)
        tm["probe_streams_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        probes = fit_probes(H_fit, fit[1], ridge=sz.probe_ridge)
        tm["probe_solve_s"] = time.perf_counter() - t1
        tm["probe_fit_s"] = tm["probe_streams_s"] + tm["probe_solve_s"]
        tm["probe_fit_cpu_s"] = time.process_time() - c0  # CPU time of this process, all threads
        del H_fit
        tf_layers = probes(residual_streams(model, X, y))  # (L+1, B, n)
        tm["probes_fit_and_eval_s"] = time.perf_counter() - t0
        tf_out = model.predict_all(X, y).to(torch.float64)

        self.step(f"Newton/GD/OLS (kappa={kappa:g})")
        t0 = time.perf_counter()
        K = sz.ill_newton_steps if ill else sz.newton_steps
        J = sz.ill_gd_max_steps if ill else sz.gd_max_steps
        newton_steps = list(range(K + 1))
        gd_steps = M.log_step_grid(J, sz.gd_points)
        sp = prefix_spectrum(X, y)
        newton = newton_predictions(X, y, newton_steps, alpha="code", method="spectral", spectrum=sp)
        gd = gd_predictions(X, y, gd_steps, lr="auto", method="spectral", spectrum=sp)
        ogd = online_gd_predictions(X, y)
        ols = ols_predictions(X, y)
        tm["references_s"] = time.perf_counter() - t0

        self.step(f"SimW queries (kappa={kappa:g})")
        t0 = time.perf_counter()
        tw = n - 1
        T = sz.simw_queries_per_d * d
        Xw, yw = self.prompts("simw", sz.simw_prompts, n=tw + T, kappa=kappa)  # same Sigma for context and queries
        Xc, yc, Xq = Xw[:, :tw], yw[:, :tw], Xw[:, tw:]
        Xa, ya = M.augment_queries(Xc, yc, Xq)  # (Bw·T, tw+1, d)
        Hq = residual_streams(model, Xa, ya, positions=slice(-1, None))[:, :, 0]  # (L+1, Bw·T, D)
        Pq = probes(Hq).reshape(-1, sz.simw_prompts, T)  # (L+1, Bw, T)
        if hasattr(model, "readout"):  # the model's own read-out from the last stream: no second forward pass
            Pq_out = model.readout(Hq[-1].to(next(model.parameters()).dtype))
        else:
            Pq_out = torch.cat([model.predict_all(Xa[i:i + 4096], ya[i:i + 4096])[:, -1] for i in range(0, Xa.shape[0], 4096)])
        Pq_out = Pq_out.to(torch.float64).reshape(sz.simw_prompts, T)
        W_tf = M.induced_weights(Xq, Pq)
        W_tf_out = M.induced_weights(Xq, Pq_out)

        def via_queries(W: torch.Tensor) -> torch.Tensor:
            # predictions of a linear algorithm at the fresh queries, then the same least-squares fit
            return M.induced_weights(Xq, torch.einsum("btd,abd->abt", Xq, W))

        W_newton = via_queries(reference_weights(lambda A, b: newton_predictions(A, b, newton_steps, alpha="code", method="spectral"), Xc, yc))
        W_gd = via_queries(reference_weights(lambda A, b: gd_predictions(A, b, gd_steps, lr="auto", method="spectral"), Xc, yc))
        W_ols = via_queries(reference_weights(lambda A, b: ols_predictions(A, b)[None], Xc, yc))
        tm["simw_s"] = time.perf_counter() - t0
        return Suite(kappa=kappa, model_source=self.model_sources.get(kappa, self.model_source), d=d, n=n, X=X, y=y, tf_layers=tf_layers, tf_out=tf_out, probes=probes,
                     newton_steps=newton_steps, newton=newton, gd_steps=gd_steps, gd=gd, ogd=ogd, ols=ols,
                     simw_context=tw, Xq=Xq, W_tf=W_tf, W_tf_out=W_tf_out, W_newton=W_newton, W_gd=W_gd,
                     W_ols=W_ols, timings=tm)


# ====================================================================== a: convergence
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

    plt = _plt()
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


# ====================================================================== b: heatmaps
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
    plt = _plt()
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


# ====================================================================== c: best-match trends
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
    plt = _plt()
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
                       label=f"{key}: linear {f['slope']:.2f}/layer, R²={_fmt(f['r2'])}")
        f = fits[f"{key}_gd_exponential_all"]
        if f["slope"] is not None:
            xx = np.linspace(min(f["layers"]), max(f["layers"]), 20)
            ax[1].semilogy(xx, 10 ** (f["slope"] * xx + f["intercept"]), "--",
                           label=f"{key}: ×{f['factor_per_layer']:.2f}/layer, R²={_fmt(f['r2'])}")
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


@experiment("a", "a_convergence", "Convergence: error vs layer and vs steps")
def exp_convergence(ctx: Context) -> dict:
    return convergence(ctx, ctx.suite(1.0), "a_convergence")


@experiment("b", "b_similarity", "SimE / SimW heatmaps: layers × Newton and GD steps")
def exp_heatmaps(ctx: Context) -> dict:
    return heatmaps(ctx, ctx.suite(1.0), "b_similarity")


@experiment("c", "c_best_match", "Best-matching steps vs layer: linear (Newton) vs exponential (GD)")
def exp_best_match(ctx: Context) -> dict:
    return best_match_trends(ctx, ctx.suite(1.0), "c_best_match")


ILL_KAPPA = 100.0


def _trained_kappa(source: str) -> float | None:
    """κ of the training data, read from the checkpoint folder's train_config.json when there is one."""
    p = Path(source) / "train_config.json"
    try:
        return float(json.loads(p.read_text()).get("kappa", 1.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


@experiment("d", "d_ill_conditioned", "Ill-conditioned data (κ = 100): a–c again")
def exp_ill(ctx: Context) -> dict:
    s = ctx.suite(ILL_KAPPA)
    parts = [convergence(ctx, s, "d_ill_conditioned"), heatmaps(ctx, s, "d_ill_conditioned"),
             best_match_trends(ctx, s, "d_ill_conditioned")]
    trained_on = _trained_kappa(s.model_source)
    note = (f"Prompts have x ~ N(0, Σ) with a random eigenbasis per prompt, d/2 eigenvalues {ILL_KAPPA:g} and d/2 "
            f"equal to 1. Transformer: {s.model_source} (trained on κ = {_fmt(trained_on) if trained_on else 'unknown'}); "
            "the probes are refitted on κ = 100 prompts.")
    if trained_on is not None and trained_on != ILL_KAPPA:
        note += (f" **This model never saw κ = {ILL_KAPPA:g} data in training**, so this is an out-of-distribution test "
                 f"of the κ = {trained_on:g} model, not the paper's setting (a model trained on ill-conditioned data); "
                 f"put a κ = {ILL_KAPPA:g} checkpoint at benchmarks/checkpoints/PRESET-kappa100 or pass --ill-checkpoint.")
        ctx.note(f"experiment d probes a model trained on κ = {trained_on:g}: out of distribution at κ = {ILL_KAPPA:g}")
    return {"summary": {"convergence": parts[0]["summary"], "similarity": parts[1]["summary"], "fits": parts[2]["summary"]["fits"]},
            "markdown": note + "\n\n" + "\n\n".join(p["markdown"] for p in parts)}


# ====================================================================== e: constructed vs trained, LSTM
def _best_row(P, s: Suite, fam: str) -> tuple[int, float]:
    steps, R = (s.newton_steps, s.newton) if fam == "newton" else (s.gd_steps, s.gd)
    _, st, val = M.best_match(M.sim_e(P, R, s.y), steps)
    return int(st[0]), float(val[0])


@experiment("e", "e_constructed", "Constructed k-step network vs trained model; LSTM vs online GD")
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
    Nref = newton_predictions(X, y, ref_steps, alpha=alpha, method="batched")  # (J, B, n)
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
    plt = _plt()
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
    ev_depth = {"layer": list(range(L + 1)), "trained_probe_nmse_last": M.nmse(s.tf_layers, y, d),
                "constructed_depth": [k + 2 for k in ks], "constructed_nmse_last": M.nmse(Pc, y, d),
                "newton_code_alpha_depth": [k + 2 for k in code_k],
                "newton_code_alpha_nmse_last": M.nmse(s.newton[code_k], y, d)}
    ctx.write_json(out / "constructed_vs_trained.json", {
        "alpha": alpha, "trained_layers": L, "models": depth, "error_vs_depth": ev_depth,
        "note": "constructed networks use one fixed alpha (above); 'newton_code' columns compare against Newton "
                "with the per-prefix alpha 1/||SS^T||_F, 'fixed_alpha' columns against Newton with the constructed alpha",
    })
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ax[0].semilogy(ev_depth["layer"], ev_depth["trained_probe_nmse_last"], "o-", label="trained (probe at layer)")
    ax[0].semilogy(ev_depth["constructed_depth"], ev_depth["constructed_nmse_last"], "s-", label="constructed, k+2 layers (fixed α)")
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
        lstm_md += f"\n\nOnline GD error, last position: {_fmt(lstm_sum['online_gd']['nmse_last'])}.\n\n![lstm](e_constructed/lstm.png)"
    else:
        ctx.note("no LSTM checkpoint: the LSTM comparison was skipped")

    ctab = md_table(["k", "1 − SimE vs Newton-k", "best Newton step", "margin to next best", "max rel. pred. error"],
                    [[k, f"{float(1 - diag[k]):.1e}", int(best[k]), float(gap[k]), float(relerr[k])] for k in ks])
    dtab = md_table(["model", "error, last", "error, avg", "SimE vs OLS", "best Newton, code α (SimE)",
                     "best Newton, fixed α (SimE)", "best GD (SimE)"], rows)
    md = (f"Hand-built networks (fixed α = {alpha:.3g}, safe for every test prompt) against Iterative Newton "
          f"with the same α, on the same {X.shape[0]} prompts:\n\n{ctab}\n\n![constructed vs newton](e_constructed/constructed_vs_newton.png)\n\n"
          f"Same depth as the trained model (L = {L}):\n\n{dtab}\n\n![constructed vs trained](e_constructed/constructed_vs_trained.png)\n\n"
          + (f"LSTM baseline ({ctx.lstm_source}):\n\n{lstm_md}" if lstm_md else "No LSTM checkpoint: skipped."))
    summary = {"alpha": alpha, "constructed_best_newton_step": best, "constructed_one_minus_sime": 1 - diag,
               "same_depth": depth, "lstm": lstm_sum}
    return {"summary": summary, "markdown": md}


# ====================================================================== models
def _fallback_model(seed: int):
    """An untrained GargRegressor of the smoke preset's size (for --quick without a checkpoint)."""
    from benchmarks.train import PRESETS
    from construct.regressor import GargConfig, GargRegressor

    c = PRESETS["smoke"]
    torch.manual_seed(seed)
    return GargRegressor(GargConfig(d=c.d, n_points=c.n_points, n_layers=c.n_layers, n_heads=c.n_heads,
                                    d_model=c.d_model)).eval()


def load_ill_model(preset: str, path: str | None, model):
    """An optional transformer trained on κ = 100 data for experiment d: (model, source) or (None, "")."""
    from construct import load_model
    from construct.regressor import GargRegressor

    p = Path(path) if path else CHECKPOINT_ROOT / f"{preset}-kappa100"
    if not (p / "config.json").exists():
        if path:
            raise SystemExit(f"--ill-checkpoint {path}: no checkpoint there (config.json missing)")
        return None, ""
    m = load_model(p).eval()
    if not isinstance(m, GargRegressor) or m.d != model.d or m.n_points != model.n_points:
        raise SystemExit(f"{p}: need a GargRegressor with d={model.d}, n_points={model.n_points} like the main model")
    return m, _shown(p)


def load_models(preset: str, checkpoint: str | None, lstm_checkpoint: str | None, quick: bool, seed: int):
    """(model, source, lstm, lstm_source, notes).  Full runs need the transformer checkpoint."""
    from construct import load_model
    from construct.regressor import GargRegressor

    notes: list[str] = []
    tf_path = Path(checkpoint) if checkpoint else CHECKPOINT_ROOT / preset
    ls_path = Path(lstm_checkpoint) if lstm_checkpoint else CHECKPOINT_ROOT / f"lstm-{preset}"
    model = lstm = None
    src = lsrc = ""
    if (tf_path / "config.json").exists():
        model = load_model(tf_path).eval()
        if not isinstance(model, GargRegressor):
            raise SystemExit(f"{tf_path} holds a {type(model).__name__}, not a trained GargRegressor")
        src = _shown(tf_path)
    if (ls_path / "config.json").exists():
        lstm = load_model(ls_path).eval()
        lsrc = _shown(ls_path)
    if model is None:
        if not quick:
            raise SystemExit(
                f"no transformer checkpoint at {tf_path}. Train one (python -m benchmarks.train --preset {preset} "
                f"--out {tf_path}), pass --checkpoint PATH, or use --quick for a smoke run."
            )
        model = _fallback_model(seed)
        src = "UNTRAINED smoke-size GargRegressor (no checkpoint found; numbers are sanity checks only)"
        notes.append(f"--quick: no checkpoint at {tf_path}; used an untrained smoke-size transformer")
    if lstm is not None and lstm.d != model.d:
        notes.append(f"LSTM checkpoint {ls_path} has d={lstm.d} but the transformer has d={model.d}; LSTM skipped")
        lstm, lsrc = None, ""
    if lstm is None and quick:  # CI still exercises the LSTM code path
        from benchmarks.models import LSTMConfig, LSTMRegressor
        torch.manual_seed(seed)
        lstm = LSTMRegressor(LSTMConfig(d=model.d, n_points=model.n_points, hidden=16, n_layers=1)).eval()
        lsrc = "UNTRAINED LSTM (no checkpoint found; sanity check only)"
        notes.append(f"--quick: no LSTM checkpoint at {ls_path}; used an untrained LSTM")
    if lstm is None and not lsrc:
        notes.append(f"no LSTM checkpoint at {ls_path}; LSTM comparison skipped")
    return model, src, lstm, lsrc, notes


# ====================================================================== driver
def _summary_md(ctx: Context, meta: dict, results: dict) -> str:
    lines = [f"# Benchmark summary ({'quick' if ctx.quick else 'full'} run)", "",
             f"- transformer: {ctx.model_source} (d={ctx.d}, n={ctx.n}, {ctx.n_layers} layers)",
             f"- LSTM: {ctx.lstm_source or 'none'}",
             f"- seed {ctx.seed}; wall time {meta['wall_s']:.1f} s; torch {torch.__version__}, {meta['threads']} threads",
             f"- sizes: {dataclasses.asdict(ctx.sizes)}"]
    lines += [f"- note: {n}" for n in ctx.notes]
    lines += ["", "## Checks", "", md_table(["check", "ok", "detail"],
              [[k, "yes" if v["ok"] else "**NO**", ", ".join(f"{a}={_fmt(b) if isinstance(b, float) else b}"
                for a, b in v.items() if a not in ("ok", "experiment"))] for k, v in ctx.checks.items()])]
    for key, r in results.items():
        e = EXPERIMENTS[key]
        lines += ["", f"## {e.key}. {e.title}", "", r.get("markdown", "")]
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> int:
    for mod in EXTRA_EXPERIMENT_MODULES:
        importlib.import_module(mod)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", help="which shipped checkpoints: benchmarks/checkpoints/{PRESET} and lstm-{PRESET}")
    ap.add_argument("--out", default="results", help="output folder (default: results/)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and sanity checks (CI)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help=f"comma-separated experiment keys (default all: {','.join(EXPERIMENTS)})")
    ap.add_argument("--checkpoint", default=None, help="transformer checkpoint folder (overrides --preset)")
    ap.add_argument("--lstm-checkpoint", default=None, help="LSTM checkpoint folder (overrides --preset)")
    ap.add_argument("--ill-checkpoint", default=None,
                    help="transformer trained on kappa=100 data for experiment d (default: checkpoints/PRESET-kappa100 if present)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the models are small, and on a shared CPU OpenMP with 2 "
                         "threads measured up to 30x slower than 1 thread; 0 keeps torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    keys = list(EXPERIMENTS) if args.only is None else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in EXPERIMENTS]
    if unknown:
        ap.error(f"unknown experiment(s) {unknown}; known: {list(EXPERIMENTS)}")
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, keys)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, keys: list[str]) -> int:
    t_start = time.perf_counter()
    from tqdm.auto import tqdm

    model, src, lstm, lsrc, notes = load_models(args.preset, args.checkpoint, args.lstm_checkpoint, args.quick, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    bar = tqdm(keys, desc="benchmarks", disable=args.no_progress, file=sys.stderr)
    ctx = Context(out, args.quick, args.seed, args.preset, sizes, model, src, lstm, lsrc, progress=bar, notes=notes)
    ill, ill_src = load_ill_model(args.preset, args.ill_checkpoint, model)
    if ill is not None:
        ctx.models_by_kappa[ILL_KAPPA], ctx.model_sources[ILL_KAPPA] = ill, ill_src
    results, timings = {}, {}
    with torch.no_grad():
        for key in bar:
            e = EXPERIMENTS[key]
            ctx.current = e.folder
            bar.set_description(f"{e.key}. {e.folder}")
            t0 = time.perf_counter()
            results[key] = e.fn(ctx) or {}
            timings[e.folder] = time.perf_counter() - t0
    bar.close()
    ctx.current = "run"
    for kappa, s in ctx._suites.items():
        # CPU seconds summed over threads bound the wall time on an idle machine and, unlike wall
        # time, do not grow when other jobs share the cores
        ctx.check(f"probes_all_layers_under_10s_kappa{kappa:g}", s.timings["probe_fit_cpu_s"] < 10.0,
                  cpu_seconds=s.timings["probe_fit_cpu_s"], wall_seconds=s.timings["probe_fit_s"],
                  solve_seconds=s.timings["probe_solve_s"], layers=s.n_layers + 1, fit_prompts=sizes.fit_prompts)
    ctx.check("expected_files_exist", all((out / f).exists() for fs in ctx.files.values() for f in fs),
              n_files=sum(len(v) for v in ctx.files.values()))
    meta = {
        "quick": args.quick, "preset": args.preset, "seed": args.seed, "model": src, "lstm": lsrc or None,
        "ill_conditioned_model": ctx.model_sources.get(ILL_KAPPA, src),
        "d": ctx.d, "n": ctx.n, "layers": ctx.n_layers, "sizes": dataclasses.asdict(sizes), "notes": ctx.notes,
        "experiment_seconds": timings, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "wall_s": time.perf_counter() - t_start,
        "conventions": {
            "predictions": "all-prefix: position t predicts y_t from the first t examples",
            "error": "squared error / d, mean over prompts; last = t=n-1, avg = mean over t=d..n-1",
            "sime": "cosine of residuals over positions t=1..n-1 (paper: 2..n+1), mean over prompts",
            "simw": "cosine of least-squares w fitted on T=simw_queries_per_d*d fresh queries after n-1 context examples",
            "newton_alpha": "1/||S S^T||_F per prefix (released code); constructed networks: one fixed safe alpha",
            "gd_lr": "1/lambda_max(S_t) per prefix, no 1/n",
        },
    }
    summary = {"meta": meta, "checks": ctx.checks,
               "experiments": {EXPERIMENTS[k].folder: r.get("summary", {}) for k, r in results.items()},
               "files": ctx.files}
    bad: list[str] = []
    plain = _plain(summary, "summary", bad)
    ctx.nonfinite += bad
    ctx.check("all_numbers_finite", not ctx.nonfinite, nonfinite=ctx.nonfinite[:20])
    plain["checks"] = _plain(ctx.checks, "checks", [])
    meta["wall_s"] = plain["meta"]["wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(plain, indent=1) + "\n")
    (out / "summary.md").write_text(_summary_md(ctx, meta, results))
    failed = [k for k, v in ctx.checks.items() if not v["ok"]]
    print(f"benchmarks: {len(results)} experiment(s) in {meta['wall_s']:.1f} s -> {out}/summary.md"
          + (f"; FAILED checks: {failed}" if failed else "; all checks passed"))
    return 1 if failed else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    # Run from the imported module, not from this __main__ copy, so that experiments registering
    # themselves with `benchmarks.run` (f, g) land in the registry that `run` reads.
    from benchmarks.run import main as _main

    _main()
