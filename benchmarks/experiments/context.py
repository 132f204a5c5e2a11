"""What every experiment gets: :class:`Sizes` (``FULL`` / ``QUICK``), the shared :class:`Suite` per
data distribution (computed once, reused by a–e), and the :class:`Context` (output folders, models,
seeded data, files, checks, progress).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from construct.checkpoint import dumps_strict

from benchmarks import metrics as M
from benchmarks.data import sample_prompts
from benchmarks.experiments.common import FIG_DPI, derive_seed, lean_log_axes, plain, pyplot, shown
from benchmarks.probes import LayerProbes, fit_probes, residual_streams

ILL_KAPPA = 100.0  # the ill-conditioned distribution of experiment d
CHECKPOINT_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"  # the shipped checkpoints


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



def _write_palette_png(rgb: np.ndarray, path: Path, optimize: bool = True) -> None:
    """(H, W, 3) uint8 pixels as a 256-colour palette PNG: a third of the size of RGBA for these
    line plots and heatmaps.  ``optimize=False`` (``--quick``) skips PIL's slowest zlib search:
    four times faster, files ~10% larger."""
    from PIL import Image  # a matplotlib dependency

    Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, format="PNG", optimize=optimize)


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
        self._suites: dict[tuple[str, float], Suite] = {}  # (model name, "" = main; kappa)
        self.suites_asked: list[tuple[str, float]] = []  # every ctx.suite call's key, in order (benchmarks.experiments.parallel)
        self._shared: dict[str, Any] = {}
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
        data = plain(obj, path.name, bad)
        self.nonfinite += [f"{path.relative_to(self.out)}:{b}" for b in bad]
        path.write_text(dumps_strict(data, indent=1) + "\n")
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
        """Write ``fig`` as a 256-colour palette PNG at :data:`FIG_DPI` and record it.

        Issue 13 (measured on the ``--quick`` figures), three savings that change pixels, not data:

        * wide log axes get lean ticks (:func:`~benchmarks.experiments.common.lean_log_axes`: no
          minor ticks, Unicode decade labels): about 40% of the drawing CPU time;
        * one layout pass and one draw straight into the Agg buffer: ``fig.savefig`` would run the
          constrained layout twice (a layout-only draw, then the real draw) and encode an RGBA PNG
          that is decoded again for the palette; the pixels are the same, so the bytes equal
          :meth:`save_fig_reference`'s (test_benchmarks checks it);
        * the palette from PIL's fast octree instead of median cut: half the encoding time and
          ~20% smaller files (mean colour error 1.5/255); ``--quick`` also skips PIL's ``optimize``.
        """
        lean_log_axes(fig)
        fig.set_dpi(FIG_DPI)
        fig.canvas.draw()  # layout + render at FIG_DPI
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
        pyplot().close(fig)
        _write_palette_png(rgb, path, optimize=not self.quick)
        self._record(path)
        return path

    def save_fig_reference(self, fig, path: Path) -> Path:
        """``fig.savefig`` to an RGBA PNG, then the same palette: kept to check that :meth:`save_fig`
        writes the same bytes."""
        from PIL import Image

        buf = io.BytesIO()
        lean_log_axes(fig)
        fig.savefig(buf, dpi=FIG_DPI, format="png")
        pyplot().close(fig)
        _write_palette_png(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), path, optimize=not self.quick)
        self._record(path)
        return path

    def check(self, name: str, ok: bool, **detail) -> bool:
        self.checks[name] = {"ok": bool(ok), "experiment": self.current, **plain(detail, name, [])}
        return bool(ok)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)

    def step(self, msg: str) -> None:
        if self._progress is not None:
            self._progress.set_postfix_str(f"{self.current}: {msg}", refresh=True)

    # ---------------------------------------------------------------- data
    def prompts(self, tag: str, B: int, n: int | None = None, kappa: float = 1.0, d: int | None = None):
        """Seeded float64 prompts (X (B, n, d), y (B, n)); the same tag always gives the same data.

        ``n`` and ``d`` default to the main model's; pass them for other models (and put the model's
        name in the tag, so that different models get independent draws).
        """
        X, y, _ = sample_prompts(B, self.n if n is None else n, self.d if d is None else d, kappa=kappa,
                                 seed=derive_seed(self.seed, f"{tag}/k{kappa:g}"), dtype=torch.float64)
        return X, y

    # ---------------------------------------------------------------- shared data
    def shared(self, key: str, factory: Callable[[], Any]) -> Any:
        """``factory()`` computed once per run and shared by every experiment that asks for ``key``."""
        if key not in self._shared:
            self._shared[key] = factory()
        return self._shared[key]

    def shipped(self, name: str):
        """A shipped checkpoint ``benchmarks/checkpoints/NAME``: (model, source), or (None, why not)."""
        def load():
            from construct import load_model

            p = CHECKPOINT_ROOT / name
            if not (p / "config.json").exists():
                return None, f"no checkpoint at {shown(p)}"
            return load_model(p).eval(), shown(p)
        return self.shared(f"checkpoint/{name}", load)

    def add_shipped(self, name: str, model, source: str) -> bool:
        """Let :meth:`shipped` hand out ``model``, already loaded by the runner, instead of loading
        ``benchmarks/checkpoints/NAME`` a second time.  Only when ``source`` is that very folder (as
        :func:`shown` writes it) and nothing was cached for the name yet; returns whether it was taken."""
        key = f"checkpoint/{name}"
        if model is None or source != shown(CHECKPOINT_ROOT / name) or key in self._shared:
            return False
        self._shared[key] = (model, source)
        return True

    # ---------------------------------------------------------------- the shared suite
    def suite(self, kappa: float = 1.0, model_name: str | None = None) -> Suite:
        """Probes, references and SimW data for one model on one distribution, computed once.

        ``model_name=None``: the main transformer (``model_for(kappa)``); otherwise the shipped
        checkpoint of that name (its own d and n).  A name that resolves to the main model for this
        κ shares the main suite.
        """
        key: tuple[str, float] = ("", kappa)
        model = source = None
        if model_name is not None:
            model, source = self.shipped(model_name)
            if model is None:
                raise FileNotFoundError(f"suite for {model_name!r}: {source}")
            if source != self.model_sources.get(kappa, self.model_source):
                key = (model_name, kappa)
        self.suites_asked.append(key)
        if key not in self._suites:
            self._suites[key] = self._make_suite(kappa, None if key[0] == "" else model, key[0], source)
        return self._suites[key]

    def _make_suite(self, kappa: float, model=None, name: str = "", source: str | None = None) -> Suite:
        from verify import gd_predictions, newton_predictions, online_gd_predictions, ols_predictions, prefix_spectrum

        sz = self.sizes
        ill = kappa != 1.0
        if model is None:
            model, d, n, pre = self.model_for(kappa), self.d, self.n, ""
            source = self.model_sources.get(kappa, self.model_source)
        else:
            d, n, pre = model.d, model.n_points, f"{name}/"

        def prompts(tag: str, B: int, n_: int | None = None):
            return self.prompts(pre + tag, B, n=n if n_ is None else n_, kappa=kappa, d=d)
        tm: dict[str, float] = {}
        self.step(f"probes (kappa={kappa:g})")
        t0, c0 = time.perf_counter(), time.process_time()
        fit = prompts("probe-fit", sz.fit_prompts)
        X, y = prompts("test", sz.test_prompts)
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
        Xw, yw = prompts("simw", sz.simw_prompts, tw + T)  # same Sigma for context and queries
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
        return Suite(kappa=kappa, model_source=source, d=d, n=n, X=X, y=y, tf_layers=tf_layers, tf_out=tf_out, probes=probes,
                     newton_steps=newton_steps, newton=newton, gd_steps=gd_steps, gd=gd, ogd=ogd, ols=ols,
                     simw_context=tw, Xq=Xq, W_tf=W_tf, W_tf_out=W_tf_out, W_newton=W_newton, W_gd=W_gd,
                     W_ols=W_ols, timings=tm)

