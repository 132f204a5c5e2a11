"""Numeric verification of a hand-built Newton network, layer by layer and slot by slot.

:func:`verify_model` runs the network once, keeps the residual stream after the read-in and after
every layer, and compares each named slot with what the construction promises, computed
**independently in float64** from the prompt alone (never from the network's activations):

    tokens     P ridge-prefix tokens (x = √λ e_m, P = d when λ > 0), n train tokens, the query
    z          the token's own vector: √λ e_m (prefix), x_i (train), x_q (query)
    S          XᵀX + λI, or S/N under ``spec.normalize`` (N = P + n + 1 tokens attended)
    M_j        M_0 = αS,  M_j = 2M_{j−1} − M_{j−1} S M_{j−1}      (S as in the line above)

    slot   after the read-in        after layer i  (j = model.newton_step_after_layer[i])
    x      x_i | √λe_m | 0 (query)  unchanged
    xq     x_q on the query, else 0 unchanged
    u      0                        M_j z on every token
    c      0                        init layer: S z on train/prefix tokens, 0 on the query;
                                    later layers: S M_j z         (merged form only)
    y      y_i on train, else 0     unchanged
    out    0                        0, except after the last layer: x_qᵀ M_k Xᵀ y at the query
                                    (under normalize: plain Newton on S with α/N²); in the merged
                                    form the read-out's query reads u and c, which every token
                                    carries, so *every* token t gets z_tᵀ M_k Xᵀ y (its own
                                    in-context fit; harmless, only the query is read out)

The final prediction is checked against plain Iterative Newton on S (α_eff = α/N² under
normalize) and, when Newton has provably converged to working precision, against OLS / ridge.

**Error measure.**  For one slot at one layer, ``max_abs`` is the largest absolute deviation over
the batch, the tokens and the slot's coordinates (``at`` names the token where it occurs), and
``max_rel = max_abs / scale`` where ``scale`` is the largest |expected| entry of that slot over
the batch.  A slot whose expected value is identically zero (``u`` after the read-in, ``out``
before the read-out, …) is measured against the largest |expected| entry of the whole residual
stream at that layer instead, so that a stray 1e-17 in an empty slot is not an "infinite
relative error" but a real leak is caught.  (If the whole stream is zero, any nonzero deviation
counts as ``inf``.)  NaN or inf in the network's stream is always a failure.

**Tolerances.**  float64: ``rtol = 1e-10`` by default.  float32: ``rtol = 1e-4`` by default.
Justification for float32: unit round-off is u = 2⁻²⁴ ≈ 6e-8.  Every attention layer forms
inner products over d coordinates and sums over N tokens, so one layer contributes ≈ (d + N)·u
relative error to a slot, and a Newton step propagates earlier errors with gain at most 2 (see
*rounding bound* below).  Measured on the CLI's prompts (Gaussian, d ≤ 20, n ≤ 40 including
n = d, α_eff·λ_max² = 1, k ≤ 10): default form ≤ 3e-6 in every slot, merged form ≤ 1.3e-5
(slot ``c``, d = 20).  1e-4 leaves a margin of ~8× over that and still flags any structural
fault, whose error is O(1) (the printed-paper erratum gives max_rel ≈ 0.3–8).

**Rounding bound** (column ``bound``; used for pass/fail only with ``condition_aware=True``).
Network and reference evaluate the same polynomial in different orders, so on ill-conditioned
input both lose digits and a fixed rtol is the wrong yardstick.  First-order analysis: one
Newton step computed in floating point is the exact step plus an error of norm
≤ c·u·(N + d)·‖M‖(2 + ‖M‖‖S‖)·‖z‖ (an inner product over d coordinates, a sum over N tokens, two
products and a sum of two terms, each backward stable).  An error δ in M propagates through
M ↦ 2M − MSM as δ ↦ δ(I − SM) + (I − MS)δ, which in S's eigenbasis multiplies entry (i, l) by
2 − s_i m_i − s_l m_l; since s·m_j(s) = 1 − (1 − αs²)^(2^j) ∈ [0, 2) whenever 0 < αs² < 2, that
gain is at most 2 per step.  Summing over steps, after Newton step j

    |δ(M_j z)| ≤ C·u·(N + d)·2^(j+1)·G_j·max‖z‖,   G_j = max_{i≤j} ‖M_i‖(2 + ‖M_i‖‖S‖),

and the read-out adds x_qᵀ(·)Σ_l|x_l||y_l| (Σ|x_l||y_l| ≥ ‖Xᵀy‖ accounts for cancellation in
Xᵀy); ``c`` = S M z gets a factor ‖S‖.  u is the model dtype's unit round-off and C = 4 covers
both computations (measured over ~1900 draws of :func:`verify.strategies.newton_cases`: the
observed error never exceeded 0.07× the bound).  For well-conditioned data the bound is ≈ 1e-13 and
rtol decides; it grows like κ(S)·2^k on ill-conditioned or n = d prompts, and like 1/(2 − αλ²)
near the divergence boundary, where Newton's own output cancels.  The bound deliberately
describes the *problem*, not one construction: a construction that cancels avoidably (the
merged form's ``c`` slot, below) still fails it.

**Singular S** (column ``floor``, always applied).  When rank S < d, Newton–Schulz doubles the
round-off on a token's own null-space component at every step (u ← 2u − M S u and S kills it;
Söderström & Stewart 1974), while the exact M_j z has none: slot u on the query (whose x_q leaves
range S when n < d) carries ≈ 2^j·u·‖z_null‖.  That is not a fault of the construction, and the
default form's read-out never reads the query's u (its prediction stays at round-off), so the
check of slot u is held to max(rtol, floor) with floor = the first-order bound above scaled by
the null fraction max_t ‖P_null z_t‖ / max_t ‖z_t‖ (0 for full-rank S).  Measured:
``python -m construct demo --k 40 --n 3`` has 1.16e-10 at layer 25 and 3.8e-6 at layer 40 in the
query's u, prediction 4e-16; it failed its own verifier before the floor existed.

**Merged form, slot c.**  The init layer seeds c = σ S x on train/prefix tokens (σ ≈ √α, a
power of two) and the c-init layer adds S u − σ S x.  The cancelled terms have the size of the
result, so c keeps full precision; an earlier version seeded c = S x and lost ≈ log₁₀ λ_max(S)
digits there, which ``tests/test_properties.py::test_merged_c_slot_keeps_precision_at_large_scale``
guards against.

**Diverging α.**  A network bakes in one α; on a prompt with α_eff·λ_max(S)² ≥ 2 Newton itself
diverges, so "network == Newton" would be a meaningless pass on overflowing numbers.
``check_alpha="fail"`` (default) still runs every comparison but marks the report failed, with
the α divergence as ``first_failure`` (it is the root cause to fix first);
``check_alpha="raise"`` raises :class:`construct.AlphaDivergenceError` before running, like
``model.predict``; ``check_alpha="ignore"`` records the ratio but does not fail on it (use it to
test the network's arithmetic on purpose-built diverging inputs).  Never a silent pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from construct.adaptive import trace_power
from construct.alpha import BOUNDARY_SLACK, AlphaDivergenceError
from construct.blocks.base import c_scale
from construct.model import NewtonTransformer
from construct.validate import check_prompts, check_real

from . import reference as ref

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)

DEFAULT_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
CHECK_ALPHA_MODES = ("fail", "raise", "ignore")
BOUND_C = 4.0  # constant of the first-order rounding bound (module doc, "Rounding bound")

__all__ = [
    "DEFAULT_RTOL", "BOUND_C", "Failure", "PredictionCheck", "AlphaCheck", "SlotError", "Report",
    "verify_model", "expected_streams",
]


# ----------------------------------------------------------------------------- report types
@dataclass(frozen=True)
class SlotError:
    """One slot at one layer: network vs the float64 reference."""

    layer: int          # model layer index; -1 is the read-in (embedding + prefix)
    layer_name: str     # "read-in", "init", "newton", "readout", …
    slot: str           # layout slot name
    expected: str       # what the slot should hold, in words
    max_abs: float      # max |network − expected| over batch, tokens and coordinates
    max_rel: float      # max_abs / scale
    scale: float        # denominator: max |expected| of the slot (or of the stream, see module doc)
    bound: float        # first-order rounding bound on max_rel (module doc); 0 for exact copies
    at: str             # token of the largest deviation: "prompt b, train i" / "prefix m" / "query"
    passed: bool
    floor: float = 0.0  # null-space part of the bound, always applied (module doc, "Singular S")


@dataclass(frozen=True)
class PredictionCheck:
    """The network's final prediction (B,) against a reference algorithm."""

    against: str        # "newton" | "ols"
    max_abs: float
    max_rel: float      # max_abs / max |reference prediction| over the batch
    bound: float        # rounding bound on max_rel (Newton only; nan for OLS)
    checked: bool       # False: informational only (e.g. Newton not converged to OLS)
    passed: bool        # True when unchecked
    note: str = ""


@dataclass(frozen=True)
class AlphaCheck:
    alpha: float                  # α in the weights (relative to S/N under normalize)
    alpha_eff: tuple[float, ...]  # per prompt: α, or α/N² under normalize (relative to S)
    max_ratio: float              # max over prompts of α_eff · λ_max(S)²; converges iff < 2
    n_diverging: int              # prompts with ratio ≥ 2
    mode: str                     # "fail" | "raise" | "ignore"
    contraction: float            # max over prompts of max_{s>0} |1 − α_eff s²|^(2^k): Newton→OLS gap factor
    adaptive: bool = False        # α computed in the network (alpha = nan; alpha_eff = model.alpha_of(X))

    @property
    def diverges(self) -> bool:
        return self.n_diverging > 0


@dataclass(frozen=True)
class Failure:
    """One failed check (see :attr:`Report.failures`, :attr:`Report.first_failure`)."""

    kind: str                 # "alpha" | "slot" | "prediction"
    layer: int | None         # model layer (slot failures), else None
    layer_name: str | None
    slot: str | None          # slot name, or "newton"/"ols" for prediction failures
    max_rel: float
    max_abs: float
    message: str


@dataclass(frozen=True)
class Report:
    """Result of :func:`verify_model`.  ``str(report)`` is a table; ``to_json()`` round-trips."""

    rows: tuple[SlotError, ...]
    newton: PredictionCheck
    ols: PredictionCheck
    alpha: AlphaCheck
    rtol: float
    condition_aware: bool
    dtype: str
    config: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    def tolerance(self, bound: float, floor: float = 0.0) -> float:
        """The relative tolerance a check with this rounding bound (and null-space floor) is held to."""
        tol = max(self.rtol, floor) if math.isfinite(floor) else self.rtol
        return max(tol, bound) if self.condition_aware and math.isfinite(bound) else tol

    @property
    def failures(self) -> tuple[Failure, ...]:
        """Every failure, root cause first: α divergence, then slots by layer, then predictions."""
        out = []
        a = self.alpha
        if a.diverges and a.mode != "ignore":
            if self.newton.against == "gd":
                msg = (f"lr diverges on {a.n_diverging} prompt(s): lr_eff*lambda_max(S) = {a.max_ratio:.4g} >= 2 "
                       "(GD itself diverges; rebuild with a smaller lr or rescale the data)")
            else:
                msg = (f"alpha diverges on {a.n_diverging} prompt(s): alpha_eff*lambda_max(S)^2 = "
                       f"{a.max_ratio:.4g} >= 2 (Newton itself diverges; rebuild with a smaller alpha or rescale the data)")
            out.append(Failure("alpha", None, None, None, a.max_ratio, math.nan, msg))
        for r in self.rows:
            if not r.passed:
                out.append(Failure(
                    "slot", r.layer, r.layer_name, r.slot, r.max_rel, r.max_abs,
                    f"layer {r.layer} ({r.layer_name}), slot {r.slot!r}: max_rel {_fmt(r.max_rel)} > tolerance "
                    f"{self.tolerance(r.bound, r.floor):.1e} (max_abs {_fmt(r.max_abs)} at {r.at}; expected {r.expected})",
                ))
        for p in (self.newton, self.ols):
            if not p.passed:
                out.append(Failure(
                    "prediction", None, None, p.against, p.max_rel, p.max_abs,
                    f"final prediction vs {p.against}: max_rel {_fmt(p.max_rel)} > tolerance "
                    f"{self.tolerance(p.bound):.1e}",
                ))
        return tuple(out)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def first_failure(self) -> Failure | None:
        f = self.failures
        return f[0] if f else None

    @property
    def max_rel_error(self) -> float:
        """Largest relative error over all slot rows and the Newton prediction (NaN counts as inf)."""
        vals = [r.max_rel for r in self.rows] + [self.newton.max_rel]
        return max((math.inf if math.isnan(v) else v) for v in vals)

    def row(self, layer: int, slot: str) -> SlotError:
        for r in self.rows:
            if r.layer == layer and r.slot == slot:
                return r
        raise KeyError(f"no row for layer {layer}, slot {slot!r}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-safe dict (non-finite floats become the strings "inf", "-inf", "nan")."""
        d = {
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "newton": dataclasses.asdict(self.newton),
            "ols": dataclasses.asdict(self.ols),
            "alpha": dataclasses.asdict(self.alpha),
            "rtol": self.rtol,
            "condition_aware": self.condition_aware,
            "dtype": self.dtype,
            "config": self.config,
            # derived, for readers of the JSON (recomputed, not read, by from_dict)
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "first_failure": None if self.first_failure is None else dataclasses.asdict(self.first_failure),
        }
        return _json_safe(d)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        d = _json_restore(d)
        a = dict(d["alpha"])
        a["alpha_eff"] = tuple(a["alpha_eff"])
        return cls(
            rows=tuple(SlotError(**r) for r in d["rows"]),
            newton=PredictionCheck(**d["newton"]),
            ols=PredictionCheck(**d["ols"]),
            alpha=AlphaCheck(**a),
            rtol=d["rtol"],
            condition_aware=d["condition_aware"],
            dtype=d["dtype"],
            config=d["config"],
        )

    @classmethod
    def from_json(cls, s: str) -> "Report":
        return cls.from_dict(json.loads(s))

    # ------------------------------------------------------------------ table
    def layer_summary(self) -> str:
        """One line per layer: its worst slot (largest relative error) and whether all its slots pass."""
        by_layer: dict[int, list[SlotError]] = {}
        for r in self.rows:
            by_layer.setdefault(r.layer, []).append(r)
        lines = ["layer  name                    worst slot  max_rel   slots ok"]
        for layer, rows in by_layer.items():
            worst = max(rows, key=lambda r: r.max_rel)
            ok = sum(r.passed for r in rows)
            lines.append(f"{(str(layer) if layer >= 0 else '-'):>5}  {worst.layer_name:<22}  {worst.slot:<10}  "
                         f"{_fmt(worst.max_rel):>8}  {ok}/{len(rows)}")
        lines.append(f"prediction vs {self.newton.against}: max_rel {_fmt(self.newton.max_rel)}  {'ok' if self.newton.passed else 'FAIL'}")
        first = self.first_failure
        lines.append(f"RESULT: PASS (max relative error {_fmt(self.max_rel_error)})" if first is None
                     else f"RESULT: FAIL: {first.message}")
        return "\n".join(lines)

    def __str__(self) -> str:
        c = self.config
        tol = f"rtol={self.rtol:.0e}" + (" or the rounding bound, whichever is larger" if self.condition_aware else "")
        head = (
            f"verify_model: {c.get('model', '?')}\n"
            f"prompts B={c.get('B')}, n={c.get('n')}, tokens N={c.get('N')} (prefix P={c.get('P')}), "
            f"dtype={self.dtype}, {tol}"
        )
        first = self.first_failure
        rows = [("layer", "name", "slot", "expected", "max_abs", "max_rel", "bound", "at", "ok")]
        for r in self.rows:
            mark = "ok" if r.passed else "FAIL"
            if first is not None and first.kind == "slot" and (first.layer, first.slot) == (r.layer, r.slot):
                mark += "  <- first failure"
            rows.append((str(r.layer) if r.layer >= 0 else "-", r.layer_name, r.slot, r.expected,
                         _fmt(r.max_abs), _fmt(r.max_rel), _fmt(r.bound) if r.bound else "exact", r.at, mark))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        right = {0, 4, 5, 6}
        lines = [head, ""]
        for i, row in enumerate(rows):
            cells = [cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells + [row[-1]]).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        a, nw, ol = self.alpha, self.newton, self.ols
        lines += [
            "",
            (f"prediction vs the order-3 hyperpower iterate (residual power {c.get('residual_power')}, "
             f"at least Newton-{c.get('k')}, plain on S): " if c.get("form") == "hyperpower"
             else f"prediction vs Newton ({c.get('k')} steps, plain on S): ")
            + f"max_abs {_fmt(nw.max_abs)}  "
            f"max_rel {_fmt(nw.max_rel)}  bound {_fmt(nw.bound)}  {'ok' if nw.passed else 'FAIL'}",
            f"prediction vs {'ridge' if c.get('lam') else 'OLS'}: max_abs {_fmt(ol.max_abs)}  max_rel "
            f"{_fmt(ol.max_rel)}  " + (("ok" if ol.passed else "FAIL") if ol.checked else "(informational)")
            + (f"  [{ol.note}]" if ol.note else ""),
            (f"alpha = adaptive (in-network, {min(a.alpha_eff):.4g} .. {max(a.alpha_eff):.4g})" if a.adaptive
             else f"alpha = {a.alpha:.6g}") + f": max alpha_eff*lambda_max(S)^2 = {a.max_ratio:.4g} "
            + ("(< 2: converges)" if not a.diverges else f"(>= 2 on {a.n_diverging} prompt(s): DIVERGES)")
            + f"; Newton->OLS contraction max|1 - alpha_eff s^2|^(2^k) = {_fmt(a.contraction)}",
        ]
        if first is None:
            lines.append(f"RESULT: PASS (max relative error {_fmt(self.max_rel_error)})")
        else:
            lines.append(f"RESULT: FAIL: {first.message}")
            if len(self.failures) > 1:
                lines.append(f"        ({len(self.failures) - 1} further failure(s) above)")
        return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:.2e}" if math.isfinite(v) else str(v)


def _json_safe(o):
    if isinstance(o, float) and not math.isfinite(o):
        return "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_FLOAT_KEYS = {"max_abs", "max_rel", "scale", "bound", "alpha", "alpha_eff", "max_ratio", "contraction",
               "rtol", "max_rel_error"}


def _json_restore(o, key=None):
    if isinstance(o, dict):
        return {k: _json_restore(v, k) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_restore(v, key) for v in o]
    if isinstance(o, str) and o in _NONFINITE and key in _FLOAT_KEYS:
        return _NONFINITE[o]
    return o


# ----------------------------------------------------------------------------- reference streams
def _describe(spec, layer_names: list[str], steps: list[int]) -> list[dict[str, str]]:
    """What each slot holds after the read-in and after each layer, in words."""
    Sx = "S/N" if spec.normalize else "S"
    pre = ", √λe_m (prefix)" if spec.lam > 0 else ""
    base = {"x": f"x_i{pre}, 0 (query)", "xq": "x_q (query), 0 elsewhere", "y": "y_i, 0 elsewhere"}
    ada = spec.adaptive
    if ada:
        base["one"] = "1 (register), 0 elsewhere"
    out = [dict(base, u="0", c="0", out="0", v="0", tau="0", alpha="0")]
    L = len(layer_names)
    scale = spec.alpha_layers  # adaptive: index of the α-scale layer
    p = spec.alpha_trace
    uq = " (0 on the query)" if ada and spec.form == "default" else ""
    for i, j in enumerate(steps):
        m = dict(base, u=f"M_{j} z" + (f" ({Sx})" if spec.normalize else "") + uq)
        m["c"] = f"σ {Sx} z (train/prefix), 0 (query)" if i == 0 else f"{Sx} M_{j} z"
        if ada:
            m["v"] = "S x (example tokens), 0 elsewhere"
            has = i >= scale - 1
            m["tau"] = f"tr(S^{p}) (register)" if has else "0"
            m["alpha"] = "α = f(tau) (register; = model.alpha_of)" if has else "0"
            if i < scale:
                m["u"] = "0"
                m["c"] = "S x_q (query), 0 elsewhere"
            elif i == scale:
                m["c"] = "0"
        if i < L - 1:
            m["out"] = "0"
        elif spec.form == "merged":
            m["out"] = f"z_tᵀ M_{spec.k} Xᵀy, every token"
        else:
            m["out"] = f"x_qᵀ M_{spec.k} Xᵀy (query), 0 elsewhere"
        out.append(m)
    return out


@dataclass(frozen=True)
class _Reference:
    streams: list[dict[str, torch.Tensor]]  # per stage: slot -> (B, T, size)
    bounds: list[dict[str, torch.Tensor]]   # per stage: slot -> (B,) absolute rounding bound
    pred: torch.Tensor                      # (B,) plain Newton on S with α_eff
    pred_bound: torch.Tensor                # (B,) absolute rounding bound of the prediction
    floors: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per stage: slot -> (B,) null-space floor


def _newton_norms(ev: torch.Tensor, alpha: float, k: int) -> torch.Tensor:
    """‖M_j‖₂ for j = 0..k (k+1, B) from the eigenvalues ev (B, d) of symmetric S.

    M_j is a polynomial in S, so ‖M_j‖₂ = max_i |m_j(λ_i)| with m_j(λ) = e_j/λ, e_0 = αλ²,
    e_{j+1} = e_j(2 − e_j) (= 1 − (1 − αλ²)^(2^j)): O(k·d) per prompt instead of k + 1 SVDs.
    """
    es = [alpha * ev * ev]
    for _ in range(k):
        es.append(es[-1] * (2 - es[-1]))
    nz = ev != 0
    safe_ev = torch.where(nz, ev, torch.ones_like(ev))
    return torch.where(nz, torch.stack(es) / safe_ev, torch.zeros_like(ev)).abs().amax(-1)  # (k+1, B)


def _adaptive_slots(spec, X, x_query, S, xs, R: int, a, v_bd, base, zd, z1):
    """Expected adaptive-α slots (construct.blocks.gram / trace_alpha / scale), shared by both references.

    On the register token (index R): one = 1, tau = tr(S^p), alpha = α; v = S x on ridge/train tokens
    (xs is slot x: 0 on the register and the query); S x_q parked on the query.  Returns
    (one, v, parked, tau, alpha, (v_bound, tau_bound, alpha_bound)).
    """
    one = z1.clone()
    one[:, R, 0] = 1.0
    v = xs @ S.transpose(1, 2)  # (B, T, d)
    parked = zd.clone()
    parked[:, -1] = (S @ x_query[..., None])[..., 0]
    tau_s, alpha_s = z1.clone(), z1.clone()
    tau_s[:, R, 0] = trace_power(X, spec.alpha_trace, spec.lam)
    alpha_s[:, R, 0] = a
    bounds = (v_bd, base * spec.alpha_trace * tau_s[:, R, 0], base * (2 + spec.alpha_trace) * a)
    return one, v, parked, tau_s, alpha_s, bounds


def _null_fraction(Sn: torch.Tensor, Z: torch.Tensor, zmax: torch.Tensor, ev_S: torch.Tensor | None = None) -> torch.Tensor:
    """max_t ‖P_null z_t‖ / max_t ‖z_t‖ per prompt (B,): P_null projects onto the eigenvectors of Sn
    whose eigenvalue is ≤ d·eps·λ_max (numerically zero).

    The eigenvectors (one ``eigh``) are needed only on prompts that have such an eigenvalue.
    ``ev_S``: eigenvalues of S (Sn up to a positive factor) from an earlier ``eigvalsh``; a prompt
    whose smallest one exceeds 1000× the threshold cannot have a numerically zero eigenvalue in
    ``eigh`` either (both are backward stable: their eigenvalues differ by O(d·eps·λ_max)), so
    its null fraction is 0 without an ``eigh``; the others get exactly the ``eigh`` computation.
    """
    B, d = Sn.shape[0], Sn.shape[-1]
    out = torch.zeros(B, dtype=F64)
    if ev_S is None:
        idx = None
    else:
        near = ev_S[:, 0] <= 1000.0 * d * EPS64 * ev_S[:, -1].clamp(min=0)  # (B,)
        if not bool(near.any()):
            return out
        idx = torch.nonzero(near).flatten()
        Sn, Z, zmax = Sn[idx], Z[idx], zmax[idx]
    ev_n, Q_n = torch.linalg.eigh(Sn)  # (B', d), (B', d, d)
    nul = ev_n <= d * EPS64 * ev_n[:, -1:].clamp(min=0)  # (B', d)
    frac = ((Z @ Q_n) * nul[:, None, :]).norm(dim=-1).max(dim=1).values / zmax.clamp(min=1e-300)  # (B',)
    if idx is None:
        return frac
    out[idx] = frac
    return out


def _reference(model: NewtonTransformer, X, y, x_query, unit: float, ev_S: torch.Tensor | None = None,
               a_ada: torch.Tensor | None = None, S: torch.Tensor | None = None) -> _Reference:
    """Expected residual streams and rounding bounds, from the prompt and ``model.spec`` only (float64).
    ``ev_S``: the eigenvalues (B, d) of S = XᵀX + λI if the caller has them (reused for the bounds
    when S is not scaled, and to skip the null-space eigh on full-rank prompts); ``a_ada``: an
    adaptive model's ``model.alpha_of(X)``, ``S``: XᵀX + λI (float64), if the caller has them."""
    spec, layout = model.spec, model.layout
    X, y, x_query = (t.to(F64) for t in (X, y, x_query))
    B, n, d = X.shape
    P = spec.n_prefix
    R = spec.n_ridge  # ridge prefix tokens; an adaptive model's register token follows them
    T = N = P + n + 1
    lam = spec.lam
    ada = spec.adaptive
    prefix = math.sqrt(lam) * torch.eye(d, dtype=F64).expand(B, R, d) if R else X.new_zeros(B, 0, d)
    if ada:
        prefix = torch.cat([prefix, X.new_zeros(B, 1, d)], 1)  # the register: z = 0
    Z = torch.cat([prefix, X, x_query[:, None]], 1)  # (B, T, d): each token's own vector z
    xs = torch.cat([prefix, X, X.new_zeros(B, 1, d)], 1)  # (B, T, d): slot x
    xq = torch.zeros(B, T, d, dtype=F64)
    xq[:, -1] = x_query
    ys = torch.zeros(B, T, 1, dtype=F64)
    ys[:, P:P + n, 0] = y
    if S is None:
        S = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=F64)  # (B, d, d)
    Sn = S / N if spec.normalize else S  # what the network's sums compute
    steps = model.newton_step_after_layer
    # α: the fixed weight, or (adaptive) the independent float64 mirror of the in-network α
    a = (model.alpha_of(X) if a_ada is None else a_ada) if ada else spec.alpha
    # every iterate M_0..M_k in k matrix steps (one recurrence, not k + 1 separate ones)
    Ms = ref.newton_matrices(Sn, spec.k, a)  # (k+1, B, d, d): M_j on Sn
    alpha_eff = a if ada else (spec.alpha / N ** 2 if spec.normalize else spec.alpha)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]  # Xᵀy (B, d)
    # plain Newton on S with α_eff (what newton_predict computes); without normalize that is M_k
    M_eff = ref.newton_matrix(S, spec.k, alpha_eff) if spec.normalize else Ms[spec.k]  # (B, d, d)
    pred = torch.einsum("bd,bde,be->b", x_query, M_eff, b)  # (B,)

    # rounding bounds (module doc): per prompt, absolute.  M_j is a polynomial in Sn, so its
    # 2-norm is max_i |m_j(λ_i)| over Sn's eigenvalues: m_j(λ) = e_j/λ with e_0 = αλ²,
    # e_{j+1} = e_j(2 − e_j) (= 1 − (1 − αλ²)^(2^j)); one eigvalsh instead of k + 2 SVDs.
    ev = torch.linalg.eigvalsh(Sn) if ev_S is None or spec.normalize else ev_S  # (B, d)
    norm_S = ev.abs().amax(-1)  # (B,)
    norm_M = _newton_norms(ev, a[:, None] if ada else spec.alpha, spec.k)  # (k+1, B)
    G = (norm_M * (2 + norm_M * norm_S)).cummax(0).values  # (k+1, B)
    zmax = Z.norm(dim=-1).max(dim=1).values  # (B,)
    xy = (X.norm(dim=-1) * y.abs()).sum(1)  # Σ_l |x_l||y_l|  (B,)
    base = BOUND_C * unit * (N + d)
    pow2 = torch.tensor([base * 2.0 ** (j + 1) for j in range(spec.k + 1)], dtype=F64)  # exact: powers of 2
    u_bound = (pow2[:, None] * G * zmax).unbind(0)  # k+1 × (B,)
    read = base * (2.0 ** (spec.k + 1) * G[spec.k] + norm_M[spec.k]) * xy / (N if spec.normalize else 1)
    pred_bound = read * x_query.norm(dim=-1)
    zero = torch.zeros(B, dtype=F64)

    has_c = "c" in layout
    streams, bounds = [], []
    base_slots = {"x": xs, "xq": xq, "y": ys}
    zd, z1 = torch.zeros(B, T, d, dtype=F64), torch.zeros(B, T, 1, dtype=F64)
    first = dict(base_slots, u=zd, out=z1, **({"c": zd} if has_c else {}))
    first_bd = dict(x=zero, xq=zero, y=zero, u=zero, out=zero, **({"c": zero} if has_c else {}))
    if ada:
        # adaptive slots (construct.blocks.gram / trace_alpha / scale): v = S x on example tokens,
        # the register holds one = 1, tau = tr(S^p) and α; the merged form parks S x_q in c
        one, v, parked, tau_s, alpha_s, (v_bd, tau_bd, alpha_bd) = _adaptive_slots(
            spec, X, x_query, S, xs, R, a, base * norm_S * zmax, base, zd, z1)
        base_slots["one"] = one
        first.update(one=one, v=zd, tau=z1, alpha=z1)
        first_bd.update(one=zero, v=zero, tau=zero, alpha=zero)
        scale_layer = spec.alpha_layers
    streams.append(first)
    bounds.append(first_bd)
    # Singular S: Newton–Schulz doubles round-off on a token's own null-space component every step
    # (u ← 2u − M S u and S kills it; Söderström & Stewart 1974), so slot u on a token whose z leaves
    # range(S) (the query when rank S < d) carries ≈ 2^j·u·‖z_null‖ of junk that the exact M_j z lacks.
    # The first-order bound's 2^(j+1) term covers it; it applies, scaled by the null fraction of z,
    # whatever condition_aware says.  Full-rank S: null_frac = 0, nothing changes.
    null_frac = _null_fraction(Sn, Z, zmax, ev_S)  # (B,)
    fl = [{}]
    L = len(steps)
    # (k+1, B, T, d): M_j z for every j in one batched product (einsum: one bmm against all M_jᵀ
    # side by side; ``Z @ Ms.transpose(-1, -2)`` broadcasts into k+1 times as many small products)
    U = torch.einsum("btf,jbef->jbte", Z, Ms)
    SMZ = torch.einsum("btf,jbef->jbte", Z, Sn @ Ms) if has_c else None  # (k+1, B, T, d): S M_j z
    for i, j in enumerate(steps):
        s = dict(base_slots)
        bd = dict(x=zero, xq=zero, y=zero)
        s["u"] = U[j]  # M_j z
        bd["u"] = u_bound[j]
        fl.append({"u": u_bound[j] * null_frac})
        if ada:
            s["v"], bd["v"], bd["one"] = v, v_bd, zero
            has = i >= scale_layer - 1  # the trace+alpha layer (gram+alpha when p = 1) writes τ and α
            s["tau"], s["alpha"] = (tau_s, alpha_s) if has else (z1, z1)
            bd["tau"], bd["alpha"] = (tau_bd, alpha_bd) if has else (zero, zero)
            if i < scale_layer:
                s["u"], bd["u"] = zd, zero
            elif spec.form == "default":
                s["u"] = s["u"].clone()
                s["u"][:, -1] = 0.0  # the default form never computes the query's u
        if has_c:
            if ada and i <= scale_layer:
                c, bd["c"] = (parked, v_bd) if i < scale_layer else (zd, zero)
            elif i == 0:
                sigma = c_scale(spec.alpha)
                c = sigma * (Z @ Sn.transpose(1, 2))  # σ S z on train/prefix tokens, 0 on the query
                c[:, -1] = 0.0
                bd["c"] = base * sigma * norm_S * zmax
            else:
                c = SMZ[j]  # S M_j z
                bd["c"] = u_bound[j] * norm_S
            s["c"] = c
        out = z1  # the read-in's zero tensor: _StreamCheck compares the unchanged slots in one pass
        bd["out"] = zero
        if i == L - 1:
            out = torch.zeros(B, T, 1, dtype=F64)
            if spec.form == "merged":  # the read-out's query reads u, c: every token gets z_tᵀ M_k Xᵀy
                w_k = (M_eff @ b[..., None])[..., 0]  # (B, d)
                out[..., 0] = torch.einsum("btd,bd->bt", Z, w_k)
                bd["out"] = read * zmax
            else:
                bd["out"] = pred_bound
            out[:, -1, 0] = pred
        s["out"] = out
        streams.append(s)
        bounds.append(bd)
    return _Reference(streams, bounds, pred, pred_bound, fl)


def _describe_hyper(spec, powers: list[int]) -> list[dict[str, str]]:
    """Slot contents in words for the hyperpower form (M⁽ᴾ⁾: I − M⁽ᴾ⁾S = (I − αS²)^P)."""
    Sx = "S/N" if spec.normalize else "S"
    pre = ", √λe_m (prefix)" if spec.lam > 0 else ""
    base = {"x": f"x_i{pre}, 0 (query)", "xq": "x_q (query), 0 elsewhere", "y": "y_i, 0 elsewhere"}
    ada, scale, tp = spec.adaptive, spec.alpha_layers, spec.alpha_trace
    first = dict(base, u="0", c="0", uq="0", cq="0", out="0")
    if ada:
        base["one"] = "1 (register), 0 elsewhere"
        first = dict(first, one=base["one"], v="0", tau="0", alpha="0")
    out = [first]
    for i, p in enumerate(powers):
        m = dict(base, u=f"M⁽{p}⁾ z (train/prefix), 0 (query)", uq=f"M⁽{p}⁾ x_q (query), 0 elsewhere")
        m["c"] = (f"σ {Sx} z (train/prefix), 0 (query)" if i == 0 else f"{Sx} M⁽{p}⁾ z (train/prefix), 0 (query)")
        m["cq"] = "0" if i == 0 else f"{Sx} M⁽{p}⁾ x_q (query), 0 elsewhere"
        if ada:
            m["v"] = "S x (example tokens), 0 elsewhere"
            has = i >= scale - 1
            m["tau"] = f"tr(S^{tp}) (register)" if has else "0"
            m["alpha"] = "α = f(tau) (register; = model.alpha_of)" if has else "0"
            if i < scale:
                m.update(u="0", uq="0", c="0", cq="S x_q (query), 0 elsewhere")
            elif i == scale:
                m.update(c="0", cq="0")
        m["out"] = f"x_qᵀ M⁽{spec.residual_power}⁾ Xᵀy (query), 0 elsewhere" if i == len(powers) - 1 else "0"
        out.append(m)
    return out


def _reference_hyper(model: NewtonTransformer, X, y, x_query, unit: float) -> _Reference:
    """Expected streams of the hyperpower form, from the prompt and ``model.spec`` only (float64).

    M⁽ᴾ⁾ comes from :func:`verify.residual_power_matrix` (a geometric series in I − αS², not the
    network's recurrences).  Bounds as in the module doc with the gain 2^(j+1) replaced by 2·P:
    an order-3 step propagates an error with gain 3(1 − sm)² ≤ 3, a Newton step with gain ≤ 2.
    """
    spec = model.spec
    X, y, x_query = (t.to(F64) for t in (X, y, x_query))
    B, n, d = X.shape
    P = spec.n_prefix
    R = spec.n_ridge  # ridge prefix tokens; an adaptive model's register token follows them
    T = N = P + n + 1
    lam = spec.lam
    ada = spec.adaptive
    prefix = math.sqrt(lam) * torch.eye(d, dtype=F64).expand(B, R, d) if R else X.new_zeros(B, 0, d)
    if ada:
        prefix = torch.cat([prefix, X.new_zeros(B, 1, d)], 1)  # the register: z = 0
    Zt = torch.cat([prefix, X, X.new_zeros(B, 1, d)], 1)  # (B, T, d): z on train/prefix, 0 on the query
    Zq = torch.zeros(B, T, d, dtype=F64)
    Zq[:, -1] = x_query  # (B, T, d): x_q on the query only
    ys = torch.zeros(B, T, 1, dtype=F64)
    ys[:, P:P + n, 0] = y
    S = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=F64)  # (B, d, d)
    Sn = S / N if spec.normalize else S
    powers = model.residual_power_after_layer
    # α: the fixed weight, or (adaptive) the independent float64 mirror of the in-network α (B,)
    a = model.alpha_of(X) if ada else spec.alpha
    Ms = {p: ref.residual_power_matrix(Sn, p, a) for p in set(powers)}  # on Sn, (B, d, d)
    alpha_eff = a if ada else (spec.alpha / N ** 2 if spec.normalize else spec.alpha)
    Ptot = spec.residual_power
    pred = ref.residual_power_predict(X, y, x_query, Ptot, alpha_eff, lam=lam)  # (B,)

    norm_S = torch.linalg.matrix_norm(Sn, ord=2)  # (B,)
    norm_M = {p: torch.linalg.matrix_norm(M, ord=2) for p, M in Ms.items()}
    G = torch.stack([norm_M[p] * (2 + norm_M[p] * norm_S) for p in powers]).cummax(0).values  # (L, B)
    zmax = torch.maximum(Zt.norm(dim=-1).max(dim=1).values, x_query.norm(dim=-1))  # (B,)
    xy = (X.norm(dim=-1) * y.abs()).sum(1)
    base = BOUND_C * unit * (N + d)
    zero = torch.zeros(B, dtype=F64)
    fixed = {"x": Zt, "xq": Zq, "y": ys}
    streams = [dict(fixed, u=torch.zeros(B, T, d, dtype=F64), c=torch.zeros(B, T, d, dtype=F64),
                    uq=torch.zeros(B, T, d, dtype=F64), cq=torch.zeros(B, T, d, dtype=F64),
                    out=torch.zeros(B, T, 1, dtype=F64))]
    bounds = [dict(x=zero, xq=zero, y=zero, u=zero, c=zero, uq=zero, cq=zero, out=zero)]
    zd, z1 = torch.zeros(B, T, d, dtype=F64), torch.zeros(B, T, 1, dtype=F64)
    scale_layer = spec.alpha_layers if ada else 0  # adaptive: the α-scale layer (u = M⁽¹⁾z) replaces init
    if ada:
        # adaptive slots (construct.blocks.gram / trace_alpha / scale, as in _reference): v = S x on
        # example tokens, the register holds one = 1, tau = tr(S^p) and α; S x_q parked in cq
        one, v, parked, tau_s, alpha_s, (v_bd, tau_bd, alpha_bd) = _adaptive_slots(
            spec, X, x_query, S, Zt, R, a, base * norm_S * zmax, base, zd, z1)
        fixed["one"] = one
        streams[0].update(one=one, v=zd, tau=z1, alpha=z1)
        bounds[0].update(one=zero, v=zero, tau=zero, alpha=zero)
    sigma = None if ada else c_scale(spec.alpha)
    L = len(powers)
    pred_bound = zero
    for i, p in enumerate(powers):
        M = Ms[p]
        ub = base * 2.0 * p * G[i] * zmax
        st = dict(fixed, u=Zt @ M.transpose(1, 2), uq=Zq @ M.transpose(1, 2))
        bd = dict(x=zero, xq=zero, y=zero, u=ub, uq=ub)
        if ada:
            st["v"], bd["v"], bd["one"] = v, v_bd, zero
            has = i >= scale_layer - 1  # the trace+alpha layer (gram+alpha when p = 1) writes τ and α
            st["tau"], st["alpha"] = (tau_s, alpha_s) if has else (z1, z1)
            bd["tau"], bd["alpha"] = (tau_bd, alpha_bd) if has else (zero, zero)
        if ada and i <= scale_layer:
            st["c"], bd["c"] = zd, zero
            if i < scale_layer:  # before the scale layer: no M yet, S x_q waits in cq
                st.update(u=zd, uq=zd, cq=parked)
                bd.update(u=zero, uq=zero, cq=v_bd)
            else:
                st["cq"], bd["cq"] = zd, zero
        elif i == 0:
            st["c"] = sigma * (Zt @ Sn.transpose(1, 2))
            st["cq"] = torch.zeros(B, T, d, dtype=F64)
            bd["c"], bd["cq"] = base * sigma * norm_S * zmax, zero
        else:
            st["c"] = Zt @ (Sn @ M).transpose(1, 2)
            st["cq"] = Zq @ (Sn @ M).transpose(1, 2)
            bd["c"] = bd["cq"] = ub * norm_S
        out = torch.zeros(B, T, 1, dtype=F64)
        bd["out"] = zero
        if i == L - 1:
            read = base * (2.0 * Ptot * G[i] + norm_M[p]) * xy / (N if spec.normalize else 1)
            pred_bound = read * x_query.norm(dim=-1)
            out[:, -1, 0] = pred
            bd["out"] = pred_bound
        st["out"] = out
        streams.append(st)
        bounds.append(bd)
    return _Reference(streams, bounds, pred, pred_bound)


def expected_streams(model: NewtonTransformer, X, y, x_query) -> list[dict[str, torch.Tensor]]:
    """The reference residual stream, slot by slot, after the read-in and after each layer.

    Computed in float64 from the prompt and ``model.spec`` only (never from the network).
    Returns L + 1 dicts mapping slot name -> (B, P + n + 1, slot size).
    """
    if not isinstance(model, NewtonTransformer):
        raise TypeError(f"model must be a construct.NewtonTransformer, got {type(model).__name__}")
    X, y, x_query = check_prompts(X, y, x_query, d=model.d, dtype=F64)
    if model.spec.form == "hyperpower":
        return _reference_hyper(model, X, y, x_query, EPS64 / 2).streams
    return _reference(model, X, y, x_query, EPS64 / 2).streams


# ----------------------------------------------------------------------------- verify
def _max_abs(got: torch.Tensor, want: torch.Tensor, finite: bool = False) -> tuple[float, tuple[int, int] | None]:
    """max |got − want| and the (prompt, token) where it occurs; NaN/inf in ``got`` wins.
    ``finite=True``: the caller has already checked that ``got`` is all finite."""
    if got.numel() == 0:
        return 0.0, None
    bad = None if finite else ~torch.isfinite(got)
    if bad is not None and bad.any():
        b, t = (int(i) for i in torch.nonzero(bad)[0][:2])
        return (math.nan if torch.isnan(got).any() else math.inf), (b, t)
    diff = (got - want).abs().amax(-1)  # (B, T)
    flat = int(diff.argmax())
    m = float(diff.reshape(-1)[flat])
    return m, (None if m == 0 else divmod(flat, diff.shape[1]))


class _StreamCheck:
    """Compares each residual stream with the reference while the forward loop produces it.

    A sink for :meth:`construct.transformer.Transformer.run_streams`: ``append(h)`` receives the
    stream after the read-in, then after each layer, and records per slot ``(max_abs, where)``
    exactly as :func:`_max_abs` defines them (largest |network − expected| over prompts, tokens and
    the slot's coordinates; ``where`` = the first (prompt, token) holding it in row-major order,
    None when it is 0; NaN/inf in the stream reported as NaN/inf at the first such entry).  The
    stream is read while still in cache and not kept.

    Slots whose expected tensor is the read-in's own (x, xq, y and the empty ones: the same
    object in ``wants``) and that the previous stream held exactly are compared with the previous
    stream, still in cache, adjacent ones in a single ``torch.equal`` (exact equality is
    transitive); any other slot is compared with its expected tensor, and only a slot that
    differs gets |network − expected| and its location.  :meth:`scale` gives max |expected| of a
    slot, computed for the differing slots while their expected tensor is in cache.
    """

    def __init__(self, wants: list[dict[str, torch.Tensor]], slices: dict[str, slice]):
        self.wants, self.rows = wants, []
        self.order = sorted(slices.items(), key=lambda kv: kv[1].start)  # [(slot, columns)] left to right
        self._prev: torch.Tensor | None = None  # the previous stream
        self._prev_exact: set[str] = set()  # its slots equal to the read-in's expected tensor, exactly
        self._scale: dict[int, tuple[torch.Tensor, float]] = {}  # id -> (tensor kept alive, max |entry|)
        self._runs: dict[tuple[bool, ...], list] = {}
        self._buf: dict[tuple, torch.Tensor] = {}  # scratch |difference| per slot shape, reused by every layer

    def _plan(self, same: tuple[bool, ...]) -> list[tuple[slice | None, list]]:
        """Column runs of adjacent slots expected as at the read-in (``slice``), and lone slots (None)."""
        if same not in self._runs:
            plan, run = [], []
            for (slot, sl), s in zip(self.order, same):
                if s and run and run[-1][1].stop == sl.start:
                    run.append((slot, sl))
                    continue
                if run:
                    plan.append((slice(run[0][1].start, run[-1][1].stop), run))
                run = [(slot, sl)] if s else []
                if not s:
                    plan.append((None, [(slot, sl)]))
            if run:
                plan.append((slice(run[0][1].start, run[-1][1].stop), run))
            self._runs[same] = plan
        return self._runs[same]

    def append(self, h: torch.Tensor) -> None:
        li = len(self.rows)
        if li >= len(self.wants):
            raise RuntimeError(f"model returned more than the {len(self.wants)} residual streams expected")
        want, base = self.wants[li], self.wants[0]
        got = h.to("cpu", F64)  # (B, T, D)
        T = got.shape[1]
        res = {}
        prev, exact = self._prev, set()
        for cols, group in self._plan(tuple(want[slot] is base[slot] for slot, _ in self.order)):
            if (cols is not None and prev is not None and all(slot in self._prev_exact for slot, _ in group)
                    and torch.equal(got[..., cols], prev[..., cols])):  # = previous = expected, exactly
                res.update((slot, (0.0, None)) for slot, _ in group)
                exact.update(slot for slot, _ in group)
                continue
            for slot, sl in group:
                g, w = got[..., sl], want[slot]
                if g.numel() == 0 or torch.equal(g, w):  # no difference anywhere: nothing to locate
                    res[slot] = (0.0, None)
                    if w is base[slot]:
                        exact.add(slot)
                    continue
                buf = self._buf.get(g.shape)
                if buf is None:
                    buf = self._buf[g.shape] = torch.empty(g.shape, dtype=F64)
                m = torch.sub(g, w, out=buf).abs_().amax(-1).view(-1)  # (B·T,)
                self.scale(w)  # while w is in cache
                i = int(m.argmax())  # first largest (b, t)
                ma = float(m[i])
                res[slot] = (ma, None if ma == 0 else divmod(i, T)) if math.isfinite(ma) else _max_abs(g, w)
        self.rows.append(res)
        self._prev, self._prev_exact = got, exact

    def scale(self, w: torch.Tensor) -> float:
        """max |w| (0 if empty), once per tensor: unchanged slots share one tensor across layers."""
        if id(w) not in self._scale:
            v = 0.0
            if w.numel():
                lo, hi = torch.aminmax(w)  # one pass, no |w| temporary: max |w| = max(|min w|, |max w|)
                v = max(abs(float(lo)), abs(float(hi)))
            self._scale[id(w)] = (w, v)
        return self._scale[id(w)][1]


def _rel(max_abs: float, scale: float) -> float:
    if math.isnan(max_abs):
        return math.nan
    if scale > 0:
        return max_abs / scale
    return 0.0 if max_abs == 0 else math.inf


def _token_name(where, P: int, n: int, B: int) -> str:
    if where is None:
        return "-"
    b, t = where
    kind = f"prefix {t}" if t < P else (f"train {t - P}" if t < P + n else "query")
    return f"prompt {b} {kind}" if B > 1 else kind


def _contraction(S: torch.Tensor, alpha_eff: torch.Tensor, k: float, ev: torch.Tensor | None = None) -> torch.Tensor:
    """Per prompt max over nonzero eigenvalues s of |1 − α_eff s²|^(2^k) (in log space); k = log₂ P.
    ``ev``: S's eigenvalues (B, d) ascending, if the caller has them."""
    ev = torch.linalg.eigvalsh(S) if ev is None else ev  # (B, d) ascending
    smax = ev[:, -1:].clamp(min=0)
    nz = ev > (S.shape[-1] * EPS64 * 100) * smax  # numerically zero eigenvalues are never reached
    base = (1 - alpha_eff[:, None] * ev * ev).abs()
    logb = torch.where(nz & (base > 0), base.clamp(min=1e-300).log(), torch.full_like(base, -math.inf))
    lr = (2.0 ** k) * logb.max(dim=1).values
    return lr.clamp(max=700).exp()


def _kappa_nonzero(S: torch.Tensor, ev: torch.Tensor | None = None) -> torch.Tensor:
    ev = torch.linalg.eigvalsh(S) if ev is None else ev
    smax = ev[:, -1].clamp(min=0)
    nz = ev > (S.shape[-1] * EPS64 * 100) * smax[:, None]
    smin = torch.where(nz, ev, torch.full_like(ev, math.inf)).min(dim=1).values
    return torch.where(smax > 0, smax / smin, torch.ones_like(smax))


def verify_model(
    model,
    X,
    y,
    x_query,
    *,
    rtol: float | None = None,
    check_ols: bool = True,
    check_alpha: str = "fail",
    condition_aware: bool = False,
) -> Report:
    """Check every layer's residual stream, slot by slot, and the prediction against Newton and OLS.

    ``model``: a :class:`construct.NewtonTransformer`.  ``X`` (B, n, d), ``y`` (B, n),
    ``x_query`` (B, d) (tensors or arrays; cast to the model's dtype, and the reference uses the
    same cast values in float64, so input rounding is not counted as network error).
    ``rtol``: per-slot relative tolerance; default 1e-10 (float64 model) or 1e-4 (float32), see
    the module docstring.  ``condition_aware``: a check passes when its error is within
    max(rtol, its first-order rounding bound) instead of rtol (for ill-conditioned input).
    ``check_ols``: compare the prediction with OLS / ridge when Newton has converged to within
    rtol/100 and κ(S)·d·eps ≤ rtol/10 (so OLS itself is accurate enough); otherwise (or when
    False) the OLS error is reported as information only.
    ``check_alpha``: "fail" (default), "raise" or "ignore"; see the module docstring.
    """
    from construct.model import GDTransformer

    if isinstance(model, GDTransformer):
        return _verify_gd(model, X, y, x_query, rtol=rtol, check_ols=check_ols, check_alpha=check_alpha,
                          condition_aware=condition_aware)
    if not isinstance(model, NewtonTransformer):
        raise TypeError(
            f"model must be a construct.NewtonTransformer or GDTransformer (a hand-built network), got "
            f"{type(model).__name__}; trained models have no slot invariants to verify"
        )
    if check_alpha not in CHECK_ALPHA_MODES:
        raise ValueError(f"check_alpha must be one of {CHECK_ALPHA_MODES}, got {check_alpha!r}")
    for name, v in (("check_ols", check_ols), ("condition_aware", condition_aware)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    dtype = model.dtype
    if dtype not in DEFAULT_RTOL:
        raise ValueError(f"model dtype {dtype} is not supported; use float64 or float32")
    rtol = DEFAULT_RTOL[dtype] if rtol is None else check_real("rtol", rtol, positive=True)
    X, y, x_query = check_prompts(X, y, x_query, d=model.d, dtype=dtype, device=model.device)
    spec = model.spec
    B, n, d = X.shape
    P = spec.n_prefix
    N = P + n + 1
    unit = float(torch.finfo(dtype).eps) / 2

    # the reference sees exactly the numbers the network sees, in float64, on the CPU
    X64, y64, q64 = (t.detach().to("cpu", F64) for t in (X, y, x_query))
    S = X64.transpose(1, 2) @ X64 + spec.lam * torch.eye(d, dtype=F64)
    ev = torch.linalg.eigvalsh(S)  # (B, d): one eigvalsh for the α ratio, the contraction and κ
    lm = ev[:, -1].clamp(min=0.0)
    if spec.adaptive:  # α per prompt, from the independent mirror (raises AlphaRangeError out of range)
        a_ada = model.alpha_of(X64)
        ratio = a_ada * lm * lm
    else:
        ratio = (spec.alpha / torch.as_tensor(float(N) if spec.normalize else 1.0, dtype=F64) ** 2) * lm * lm  # = alpha_ratio

    n_div = int((ratio >= 2.0 * (1.0 - BOUNDARY_SLACK)).sum())  # same threshold as model.predict
    if n_div and check_alpha == "raise":
        raise AlphaDivergenceError(
            f"fixed alpha={spec.alpha:g} diverges on {n_div} of {B} prompt(s): alpha_eff*lambda_max(S)^2 = "
            f"{float(ratio.max()):.4g} >= 2, so Newton itself diverges and there is nothing meaningful to "
            "verify. Use smaller-scale data, rebuild with construct.safe_alpha(X), or pass check_alpha='ignore'."
        )
    alpha_eff = a_ada if spec.adaptive else torch.full((B,), spec.alpha / (N ** 2 if spec.normalize else 1.0), dtype=F64)
    contraction = _contraction(S, alpha_eff, math.log2(model.residual_power), ev)  # |1 − α_eff s²|^P

    if spec.form == "hyperpower":
        refr = _reference_hyper(model, X64, y64, q64, unit)
        desc = _describe_hyper(spec, model.residual_power_after_layer)
    else:
        refr = _reference(model, X64, y64, q64, unit, ev, a_ada if spec.adaptive else None, S)
        desc = _describe(spec, model.layer_names, model.newton_step_after_layer)
    layout = model.layout
    slices = {slot: layout[slot] for slot in layout.names}
    check = _StreamCheck(refr.streams, slices)
    with torch.no_grad():
        # one network run: each residual stream is compared as the loop produces it, and the
        # prediction is the same run's read-out.  The prompt is validated above and α / precision
        # are judged here, so the transformer runs directly (no second validation, no guards)
        out = model.transformer.run_streams(model.encode(X, y, x_query), None, check)
    pred = out[:, -1, 0].to("cpu", F64)  # (B,)
    if len(check.rows) != len(refr.streams):
        raise RuntimeError(f"model returned {len(check.rows)} residual streams, expected {len(refr.streams)}")
    names = ["read-in"] + model.layer_names

    def tol(bound: float) -> float:
        return max(rtol, bound) if condition_aware else rtol

    rows = []
    max_of: dict[int, tuple[torch.Tensor, float]] = {}  # id -> (tensor kept alive, max)

    def bmax(t: torch.Tensor) -> float:  # bounds are shared across layers and slots too
        if id(t) not in max_of:
            max_of[id(t)] = (t, float(t.max()))
        return max_of[id(t)][1]

    for li, (want, bnd, words) in enumerate(zip(refr.streams, refr.bounds, desc)):
        stream_scale = max(check.scale(w) for w in want.values())
        for slot in slices:
            ma, where = check.rows[li][slot]
            scale = check.scale(want[slot]) or stream_scale
            mr = _rel(ma, scale)
            bound = _rel(bmax(bnd[slot]), scale)
            fl = refr.floors[li].get(slot) if li < len(refr.floors) else None
            floor = 0.0 if fl is None else _rel(bmax(fl), scale)
            ok = mr <= max(tol(bound), floor if math.isfinite(floor) else 0.0)
            rows.append(SlotError(li - 1, names[li], slot, words[slot], ma, mr, scale, bound,
                                  _token_name(where, P, n, B), bool(ok), floor))

    # final prediction: plain Newton on S (α_eff), and OLS / ridge
    na, _ = _max_abs(pred[:, None, None], refr.pred[:, None, None])
    nscale = float(refr.pred.abs().max())
    nr = _rel(na, nscale)
    nb = _rel(float(refr.pred_bound.max()), nscale)
    newton = PredictionCheck("newton", na, nr, nb, True, bool(nr <= tol(nb)),
                             "" if spec.form != "hyperpower" else f"residual power P = {spec.residual_power}")

    ols_ref = ref.ols_predict(X64, y64, q64, lam=spec.lam, driver="gelsy")  # checked only when κ(S) is small
    oa, _ = _max_abs(pred[:, None, None], ols_ref[:, None, None])
    orr = _rel(oa, float(ols_ref.abs().max()))
    rho = float(contraction.max())
    kappa = float(_kappa_nonzero(S, ev).max())
    if not check_ols:
        checked, note = False, "check_ols=False"
    elif n_div:
        checked, note = False, "alpha diverges"
    elif rho > rtol / 100:
        checked, note = False, f"Newton not converged to OLS: contraction {rho:.2g} > rtol/100"
    elif kappa * d * EPS64 > rtol / 10:
        checked, note = False, f"kappa(S) = {kappa:.2g}: OLS itself not accurate to rtol/10"
    else:
        checked, note = True, ""
    ols = PredictionCheck("ols", oa, orr, math.nan, checked, (not checked) or bool(orr <= rtol), note)

    alpha = AlphaCheck(math.nan if spec.adaptive else spec.alpha, tuple(float(a) for a in alpha_eff),
                       float(ratio.max()), n_div, check_alpha, rho, spec.adaptive)
    s = spec
    a_desc = f"adaptive(tr S^{s.alpha_trace})" if s.adaptive else f"{s.alpha:g}"
    model_desc = (
        f"NewtonTransformer d={s.d} k={s.k} alpha={a_desc} attn={s.attn} normalize={s.normalize} "
        f"lam={s.lam:g} form={s.form} looped={s.looped}" + (" PRINTED-PAPER" if s.printed_paper else "")
        + f"; {model.n_layers} layers, width D={layout.width}, residual power P={model.residual_power}"
    )
    config = dict(spec.to_dict(), model=model_desc, B=B, n=n, P=P, N=N, n_layers=model.n_layers,
                  width=layout.width, layer_names=list(model.layer_names), residual_power=model.residual_power)
    return Report(tuple(rows), newton, ols, alpha, rtol, condition_aware, str(dtype).removeprefix("torch."), config)


# ----------------------------------------------------------------------------- gradient descent
def _verify_gd(model, X, y, x_query, *, rtol, check_ols, check_alpha, condition_aware) -> Report:
    """:func:`verify_model` for a :class:`construct.GDTransformer`.

    Slots after read-in and after layer s − 1 (s GD steps, w_0 = 0, η_eff = lr, or lr/N under
    normalize): x, xq unchanged; r = y_i − x_iᵀ w_s on train tokens, 0 on the query; out =
    x_qᵀ w_s on the query, 0 on train tokens.  The reference runs w ← w − η_eff(S w − Xᵀy) in
    float64 from the prompt alone.  GD's steps are contractions when η_eff·λ_max(S) < 2, so no
    rounding bound is used (``bound`` = 0: rtol decides).  The prediction is compared with
    :func:`verify.gd_predictions` (checked) and with OLS (information only: GD with a fixed
    step rarely reaches OLS to rtol).
    """
    if check_alpha not in CHECK_ALPHA_MODES:
        raise ValueError(f"check_alpha must be one of {CHECK_ALPHA_MODES}, got {check_alpha!r}")
    for name, v in (("check_ols", check_ols), ("condition_aware", condition_aware)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    dtype = model.dtype
    if dtype not in DEFAULT_RTOL:
        raise ValueError(f"model dtype {dtype} is not supported; use float64 or float32")
    rtol = DEFAULT_RTOL[dtype] if rtol is None else check_real("rtol", rtol, positive=True)
    X, y, x_query = check_prompts(X, y, x_query, d=model.d, dtype=dtype, device=model.device)
    spec, layout = model.spec, model.layout
    B, n, d = X.shape
    N = n + 1
    X64, y64, q64 = (t.detach().to("cpu", F64) for t in (X, y, x_query))
    from construct.alpha import gram, lambda_max

    eta = spec.lr / (N if spec.normalize else 1)
    lm = lambda_max(gram(X64))  # (B,)
    ratio = eta * lm
    n_div = int((ratio >= 2.0 * (1.0 - BOUNDARY_SLACK)).sum())
    if n_div and check_alpha == "raise":
        raise AlphaDivergenceError(
            f"fixed lr={spec.lr:g} diverges on {n_div} of {B} prompt(s): lr_eff*lambda_max(S) = "
            f"{float(ratio.max()):.4g} >= 2, so GD itself diverges. Rebuild with a smaller lr, or pass check_alpha='ignore'."
        )
    with torch.no_grad():  # one network run: the streams and the prediction (its read-out) of the same pass
        streams, pred = model.transformer.residual_streams(model.encode(X, y, x_query), return_output=True, stack=False)
        streams, pred = [h.to("cpu", F64) for h in streams], pred[:, -1, 0].to("cpu", F64)

    S = X64.transpose(1, 2) @ X64
    bvec = (X64.transpose(1, 2) @ y64[..., None])[..., 0]  # (B, d)
    w = torch.zeros(B, d, dtype=F64)
    zero_tok = torch.zeros(B, 1, dtype=F64)
    xs = torch.cat([X64, X64.new_zeros(B, 1, d)], 1)
    xq = torch.zeros(B, N, d, dtype=F64)
    xq[:, -1] = q64
    names = ["read-in"] + model.layer_names
    rows = []
    for li in range(spec.steps + 1):
        if li:
            w = w - eta * ((S @ w[..., None])[..., 0] - bvec)
        r = torch.cat([y64 - (X64 @ w[..., None])[..., 0], zero_tok], 1)[..., None]  # (B, N, 1)
        out = torch.zeros(B, N, 1, dtype=F64)
        out[:, -1, 0] = (q64 * w).sum(-1)
        want = {"x": xs, "xq": xq, "r": r, "out": out}
        words = {"x": "x_i, 0 (query)", "xq": "x_q (query), 0 elsewhere",
                 "r": f"y_i − x_iᵀ w_{li} (train), 0 (query)", "out": f"x_qᵀ w_{li} (query), 0 elsewhere"}
        got = streams[li]
        stream_scale = max(float(v.abs().max()) for v in want.values())
        for slot in layout.names:
            wv = want[slot]
            scale = float(wv.abs().max()) or stream_scale
            ma, where = _max_abs(got[..., layout[slot]], wv)
            mr = _rel(ma, scale)
            rows.append(SlotError(li - 1, names[li], slot, words[slot], ma, mr, scale, 0.0,
                                  _token_name(where, 0, n, B), bool(mr <= rtol)))

    Xa = torch.cat([X64, q64[:, None]], 1)
    ya = torch.cat([y64, zero_tok], 1)
    gd_ref = ref.gd_predictions(Xa, ya, [spec.steps], torch.full((B,), eta, dtype=F64), on_diverge="ignore")[0, :, -1]
    ga, _ = _max_abs(pred[:, None, None], gd_ref[:, None, None])
    gr = _rel(ga, float(gd_ref.abs().max()))
    gd_check = PredictionCheck("gd", ga, gr, 0.0, True, bool(gr <= rtol), "verify.gd_predictions, same lr_eff")
    ols_ref = ref.ols_predict(X64, y64, q64)
    oa, _ = _max_abs(pred[:, None, None], ols_ref[:, None, None])
    ols = PredictionCheck("ols", oa, _rel(oa, float(ols_ref.abs().max())), math.nan, False, True,
                          "information only: GD with a fixed step is not OLS" if check_ols else "check_ols=False")
    ev = torch.linalg.eigvalsh(S)
    nz = ev > (d * EPS64 * 100) * ev[:, -1:].clamp(min=0)
    base = (1 - eta * ev).abs()
    logb = torch.where(nz & (base > 0), base.clamp(min=1e-300).log(), torch.full_like(base, -math.inf))
    rho = float((spec.steps * logb.max(dim=1).values).clamp(max=700).exp().max())
    alpha = AlphaCheck(spec.lr, tuple([eta] * B), float(ratio.max()), n_div, check_alpha, rho)
    model_desc = (f"GDTransformer d={spec.d} steps={spec.steps} lr={spec.lr:g} attn={spec.attn} "
                  f"normalize={spec.normalize}; {model.n_layers} layers, width D={layout.width}")
    config = dict(spec.to_dict(), model=model_desc, B=B, n=n, P=0, N=N, n_layers=model.n_layers,
                  width=layout.width, layer_names=list(model.layer_names))
    return Report(tuple(rows), gd_check, ols, alpha, rtol, condition_aware, str(dtype).removeprefix("torch."), config)
