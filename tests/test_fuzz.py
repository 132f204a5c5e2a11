"""Fuzz: the hand-built Newton networks over the whole input space, against extended precision.

Every case is classified as

* ``correct``      the network returned a number within the promise (below);
* ``named``        it raised a named error: AlphaDivergenceError (α diverges), PrecisionError
                   (the dtype cannot deliver the promise on this prompt, or NaN/inf), or
                   ValueError/TypeError for bad input (n = 0);
* ``silent``       it returned a number that misses the promise, or returned anything on a bad
                   input (diverging α, n = 0): **must be 0**;
* ``false alarm``  AlphaDivergenceError on a convergent prompt further than 1e-6 from the boundary
                   (α_eff·λ_max² < 2(1 − 1e-6)): **must be 0**.

A PrecisionError on a valid prompt is a *refusal*; refusals are counted separately, together with
those where the network would in fact have met the promise (``over-cautious``), so the price of
the guard is visible.

**Reference.**  Iterative Newton in numpy ``longdouble`` (80-bit on x86, u = 5.4e-20), written
here from the recurrence M_0 = α_eff S, M_j = 2M_{j−1} − M_{j−1} S M_{j−1} on the same
dtype-cast prompt the network sees, S = XᵀX + λI formed in longdouble; it shares no code with
:mod:`verify.reference`.  The divergence ratio α_eff·λ_max(S)² comes from the same longdouble S
(eigenvalues in float64 of the longdouble S: the classification only needs it to 1e-12 relative,
far inside the 1e-6 exclusion band).

**Promise and tolerance (derivation).**  The promise of :mod:`construct.precision`: a returned
prediction satisfies |p̂ − p| ≤ rtol·‖x_q‖·‖w_k‖ (rtol = 1e-10 in float64, 1e-4 in float32,
w_k = M_k Xᵀy).  Where the prompt's conditioning makes that impossible (the first-order bound of
:func:`construct.precision.precision_estimate`, which grows with κ(S), with min(2^k, 1/(αs²)) on
slowly converging directions and near the divergence boundary), the network must refuse instead.
So the tolerance here is the promise itself; the conditioning enters through the refusal, which
is what keeps the test honest: a bound that is too small shows up as ``silent``, one that is too
large as ``over-cautious``.  The reference's own error is ≤ 1e-19·(its condition) ≪ rtol.

Default suite: ``FUZZ_CASES`` cases (≈ 500, < 60 s).  ``-m slow``: ``FUZZ_SLOW_CASES`` (10,000);
the README quotes its counts (command there).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from construct import AlphaDivergenceError, build_gd_transformer, build_newton_transformer
from construct.adaptive import AlphaRangeError
from construct.precision import PROMISED_RTOL, PrecisionError

LD = np.longdouble
FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "500"))
FUZZ_SLOW_CASES = int(os.environ.get("FUZZ_SLOW_CASES", "10000"))
BOUNDARY_BAND = 1e-6
FORMS = ("default", "merged", "hyperpower", "gd")
_RESTRICT: dict = {}  # run_fuzz(forms=, dtypes=) while it runs
FAILED: list = []  # every failing case of the current run_fuzz, with its prompt


# ----------------------------------------------------------------------------- reference
def ld_newton(X, y, xq, k: int, alpha_eff: float, lam: float):
    """(prediction, normwise scale ‖x_q‖‖w_k‖, ratio α·λ_max²) in longdouble.  X (n, d)."""
    X, y, xq = (np.asarray(a, dtype=LD) for a in (X, y, xq))
    d = X.shape[1]
    S = X.T @ X + LD(lam) * np.eye(d, dtype=LD)
    a = LD(alpha_eff)
    M = a * S
    for _ in range(k):
        M = 2 * M - (M @ S) @ M
        if not np.isfinite(M).all():
            break
    w = M @ (X.T @ y)
    pred = xq @ w
    scale = math.sqrt(float(xq @ xq)) * math.sqrt(float(w @ w)) if np.isfinite(w).all() else math.inf
    lmax = float(np.linalg.eigvalsh(S.astype(np.float64))[-1]) if d else 0.0
    # refine λ_max in longdouble by a few Rayleigh-quotient steps from float64's eigenvector
    ev, V = np.linalg.eigh(S.astype(np.float64))
    v = V[:, -1].astype(LD)
    for _ in range(3):
        v = S @ v
        v = v / np.sqrt(v @ v)
    lmax = max(lmax, float(v @ S @ v))
    return float(pred), scale, float(a * LD(lmax) ** 2)


def ld_power(X, y, xq, P: int, alpha_eff: float, lam: float):
    """Like :func:`ld_newton` for any residual power P = 2^k (Newton) or 4·3^j (the hyperpower
    network: one Newton step, j order-3 steps M ← 3M − 3MSM + MSMSM, one Newton step)."""
    if P & (P - 1) == 0:
        return ld_newton(X, y, xq, P.bit_length() - 1, alpha_eff, lam)
    j = round(math.log(P / 4, 3))
    assert 4 * 3**j == P, P
    X, y, xq = (np.asarray(a, dtype=LD) for a in (X, y, xq))
    d = X.shape[1]
    S = X.T @ X + LD(lam) * np.eye(d, dtype=LD)
    M = LD(alpha_eff) * S
    M = 2 * M - M @ S @ M
    for _ in range(j):
        MS = M @ S
        M = 3 * M - 3 * MS @ M + MS @ MS @ M
    M = 2 * M - M @ S @ M
    w = M @ (X.T @ y)
    scale = math.sqrt(float(xq @ xq)) * math.sqrt(float(w @ w)) if np.isfinite(w).all() else math.inf
    lmax = float(np.linalg.eigvalsh(S.astype(np.float64))[-1])
    return float(xq @ w), scale, float(LD(alpha_eff) * LD(lmax) ** 2)


def ld_gd(X, y, xq, steps: int, eta: float):
    """GD from w = 0, w ← w − η(Sw − Xᵀy), in longdouble: (prediction, scale, η·λ_max)."""
    X, y, xq = (np.asarray(a, dtype=LD) for a in (X, y, xq))
    S, b = X.T @ X, X.T @ y
    w = np.zeros(X.shape[1], dtype=LD)
    for _ in range(steps):
        w = w - LD(eta) * (S @ w - b)
        if not np.isfinite(w).all():
            break
    scale = math.sqrt(float(xq @ xq)) * math.sqrt(float(w @ w)) if np.isfinite(w).all() else math.inf
    lmax = float(np.linalg.eigvalsh(S.astype(np.float64))[-1]) if X.shape[0] else 0.0
    return float(xq @ w), scale, float(eta * lmax)


# ----------------------------------------------------------------------------- cases
@st.composite
def fuzz_cases(draw, max_d: int = 32, max_k: int = 30, forms: tuple | None = None, dtypes: tuple | None = None):
    """A network spec, dtype and one prompt from the full input space (module docstring).

    ``forms`` / ``dtypes`` restrict the draw (to hunt one class of failures quickly); None: all, or
    what :func:`run_fuzz` was asked for."""
    forms = forms or _RESTRICT.get("forms", FORMS)
    dtypes = dtypes or _RESTRICT.get("dtypes", (torch.float64, torch.float32))
    d = draw(st.integers(1, max_d))
    n = draw(st.one_of(st.integers(0, 4 * d), st.just(d), st.integers(1, max(1, d - 1))))
    form = draw(st.sampled_from(list(forms)))
    k = draw(st.integers(2 if form in ("merged", "hyperpower") else 0, max_k))
    adaptive = form in ("default", "merged") and draw(st.integers(0, 5)) == 0
    attn = draw(st.sampled_from(["relu", "linear"]))
    normalize = draw(st.booleans())
    looped = draw(st.booleans())
    dtype = draw(st.sampled_from(list(dtypes)))
    log_scale = draw(st.floats(-6, 6))
    log_kappa = draw(st.floats(0, 6))
    rank_def = draw(st.booleans()) and min(n, d) >= 2
    ridge = draw(st.booleans())
    # α: margin of the convergent range; > 1 diverges; a thin band straddles the boundary
    margin = draw(st.one_of(st.floats(1e-4, 0.999), st.floats(0.999, 1.0 + 1e-5), st.floats(1.0, 4.0)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** log_scale
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    Q = Q * np.sign(np.diag(R))
    root = scale * 10.0 ** (-0.5 * log_kappa * (np.linspace(0, 1, d) if d > 1 else np.zeros(1)))
    half = (Q * root) @ Q.T
    if rank_def:
        r = int(rng.integers(1, min(n, d)))
        Z = rng.standard_normal((n, r)) @ rng.standard_normal((r, d)) / math.sqrt(r)
    else:
        Z = rng.standard_normal((n, d))
    X = Z @ half
    xq = rng.standard_normal(d) @ half
    y = X @ (rng.standard_normal(d) / scale) + draw(st.sampled_from([0.0, 0.1])) * rng.standard_normal(n)
    lam = 0.0
    if ridge and n:
        lam = 10.0 ** draw(st.floats(-3, 1)) * float((X * X).sum()) / d
    # cast to the model dtype: the network and the reference see the same numbers
    npdt = np.float64 if dtype == torch.float64 else np.float32
    X, y, xq = X.astype(npdt), y.astype(npdt), xq.astype(npdt)
    S = X.astype(np.float64).T @ X.astype(np.float64) + lam * np.eye(d)
    lmax = float(np.linalg.eigvalsh(S)[-1]) if n or lam else 0.0
    N = n + 1 + (d if lam > 0 else 0)
    a_eff = margin * 2.0 / lmax**2 if lmax > 0 else 1.0
    if not (math.isfinite(a_eff) and a_eff > 0):
        a_eff = 1.0
    if form == "gd":  # η·λ_max(S) = 2·margin; normalize: η_eff = lr/N
        lm0 = float(np.linalg.eigvalsh(X.astype(np.float64).T @ X.astype(np.float64))[-1]) if n else 0.0
        eta = margin * 2.0 / lm0 if lm0 > 0 else 1.0
        spec = dict(program="gd", d=d, steps=k, lr=eta * (n + 1) if normalize else eta, attn=attn, normalize=normalize)
        return spec, dtype, X, y, xq, eta
    alpha = a_eff * N * N if normalize else a_eff
    if adaptive:
        alpha, normalize = "adaptive", False
    spec = dict(d=d, k=k, alpha=alpha, attn=attn, normalize=normalize, lam=lam, form=form, looped=looped)
    return spec, dtype, X, y, xq, a_eff


def classify(spec, dtype, X, y, xq, a_eff) -> str:
    """The class of one case (module docstring); failing ones are recorded in ``FAILED``."""
    c = _classify(spec, dtype, X, y, xq, a_eff)
    if c.startswith("silent") or c == "false alarm":
        FAILED.append(dict(outcome=c, spec=spec, dtype=str(dtype), n=X.shape[0], step=a_eff,
                           X=X.tolist(), y=y.tolist(), x_query=xq.tolist()))
    return c


def _classify(spec, dtype, X, y, xq, a_eff) -> str:
    n = X.shape[0]
    spec = dict(spec)
    gd = spec.pop("program", None) == "gd"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_gd_transformer(**spec, dtype=dtype) if gd else build_newton_transformer(**spec, dtype=dtype)
    except ValueError:
        return "named: build"  # a step size out of the dtype's range is refused at build time
    Xt, yt, qt = (torch.from_numpy(np.ascontiguousarray(a))[None] for a in (X, y, xq))
    if n == 0:
        try:
            model.predict(Xt, yt, qt)
        except ValueError:
            return "named: bad input"
        return "silent: bad input accepted"
    if gd:
        pred_ref, scale, ratio = ld_gd(X, y, xq, spec["steps"], a_eff)
    else:
        if spec["alpha"] == "adaptive":
            try:
                a_eff = float(model.alpha_of(torch.from_numpy(np.ascontiguousarray(X))[None].double()))
            except AlphaRangeError:
                a_eff = math.nan
        pred_ref, scale, ratio = ld_power(X, y, xq, model.residual_power, a_eff, spec["lam"])
    diverges = ratio >= 2.0
    near = abs(ratio - 2.0) <= 2.0 * BOUNDARY_BAND
    rtol = PROMISED_RTOL[dtype]
    try:
        got = float(model.predict(Xt, yt, qt))
    except AlphaRangeError:  # adaptive α: tr(S^p) outside the range its PL function covers
        return "named: alpha range"
    except AlphaDivergenceError:
        if diverges or near:
            return "named: alpha diverges"
        return "false alarm"
    except PrecisionError:
        if diverges and not near:
            return "named: alpha diverges (as precision)"
        raw = float(model.predict(Xt, yt, qt, check_alpha="ignore", check_precision="ignore"))
        ok = math.isfinite(raw) and math.isfinite(scale) and abs(raw - pred_ref) <= rtol * scale
        return "refused: over-cautious" if ok else "refused: needed"
    if diverges and not near:
        return "silent: diverging alpha accepted"
    if near:
        return "correct (boundary band)"
    err = abs(got - pred_ref)
    if math.isfinite(got) and err <= rtol * max(scale, 0.0):
        return "correct"
    return f"silent: err {err / scale if scale else err:.3g} > {rtol:g}"


def run_fuzz(n_cases: int, seed: int = 0, **strategy) -> Counter:
    """Classify ``n_cases`` drawn cases; ``strategy`` goes to :func:`fuzz_cases` (forms=, dtypes=).
    ``counts["_failures"]`` lists every silent-wrong / false-alarm case with what reproduces it."""
    counts: Counter = Counter()
    failures: list = []

    @settings(max_examples=n_cases, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_cases())
    def one(case):
        spec, dtype, X, y, xq, a_eff = case
        c = classify(spec, dtype, X, y, xq, a_eff)
        key = c.split(":")[0] if c.startswith("silent") else c
        counts[(str(dtype).removeprefix("torch."), key)] += 1
        prog = "gd" if spec.get("program") == "gd" else ("adaptive" if spec.get("alpha") == "adaptive" else spec["form"])
        counts[("program", prog)] += 1
        if c.startswith("silent") or c == "false alarm":
            failures.append((c, spec, str(dtype), X.shape))

    _RESTRICT.clear(); _RESTRICT.update(strategy); FAILED.clear()
    try:
        one()
    finally:
        _RESTRICT.clear()
    assert len(FAILED) == len(failures)
    counts["_failures"] = list(FAILED)  # type: ignore[assignment]
    return counts


def _report(counts: Counter) -> str:
    keys = sorted(k for k in counts if k != "_failures")
    return "\n".join(f"{dt:8s} {cls:40s} {counts[(dt, cls)]}" for dt, cls in keys)


def _summary(f: dict) -> str:
    return f"{f['outcome']}: {f['dtype']} n={f['n']} step={f['step']:.6g} {f['spec']}"


def _assert_clean(counts: Counter, dump: Path | None = None) -> None:
    """Every failing case is listed in the message; with ``dump`` also written there as JSON (with
    its prompt), so one run is enough to reproduce all of them."""
    fails = counts["_failures"]
    if fails and dump is not None:
        dump.write_text(json.dumps(fails))
    where = f" (prompts in {dump})" if fails and dump is not None else ""
    lines = "\n".join(_summary(f) for f in fails)
    assert not fails, f"{len(fails)} silent-wrong / false-alarm case(s){where}:\n{lines}\n{_report(counts)}"


def test_fuzz_default(tmp_path):
    counts = run_fuzz(FUZZ_CASES)
    print("\n" + _report(counts))
    _assert_clean(counts, tmp_path / "fuzz_failures.json")
    total = sum(v for k, v in counts.items() if k != "_failures")
    assert total >= 0.9 * FUZZ_CASES
    # the fuzz must reach every class it is meant to test
    seen = {cls for (_, cls) in (k for k in counts if k != "_failures")}
    assert "correct" in seen and "named: alpha diverges" in seen


@pytest.mark.slow
def test_fuzz_slow(tmp_path):
    counts = run_fuzz(FUZZ_SLOW_CASES)
    print("\n" + _report(counts))
    _assert_clean(counts, tmp_path / "fuzz_failures.json")


def test_gd_float32_silent_case_now_refused():
    """A case the 10,000-case fuzz found silent before GD had a precision estimate (issue 12):
    float32, d = 4, n = 1, 4 steps, ReLU, η_eff·s ≈ 2 (r = 1 − η_eff·s ≈ −1, so w_4 cancels to a
    small fraction of the iterates).  It now raises; the raw number really misses 1e-4, and the
    float64 arithmetic meets 1e-10 on the same prompt."""
    X = np.array([[2.076831333397422e-05, -0.31342530250549316, 0.5808823108673096, 0.5895643830299377]])
    y = np.array([-1.8225784301757812])
    xq = np.array([0.5775589942932129, 1.6355592012405396, -0.2933378517627716, -0.3600802719593048])
    lr = 5.106902313518655  # normalize: η_eff = lr/(n+1)
    ref, scale, ratio = ld_gd(X.astype(np.float32), y.astype(np.float32), xq.astype(np.float32), 4, lr / 2)
    assert ratio < 2.0
    for dtype, rtol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        npdt = np.float32 if dtype == torch.float32 else np.float64
        Xt, yt, qt = (torch.from_numpy(a.astype(npdt))[None] for a in (X, y, xq))
        model = build_gd_transformer(d=4, steps=4, lr=lr, attn="relu", normalize=True, dtype=dtype)
        if dtype == torch.float32:
            with pytest.raises(PrecisionError, match="float32 cannot deliver"):
                model.predict(Xt, yt, qt)
            with pytest.raises(PrecisionError):  # prefix 1 of [x, x_q] is the same prompt (N = 2)
                model.predict_all(torch.cat([Xt, qt[:, None]], 1), torch.cat([yt, yt], 1))
            raw = float(model.predict(Xt, yt, qt, check_precision="ignore"))
            assert abs(raw - ref) > rtol * scale  # the refusal was needed
        else:
            ref64, scale64, _ = ld_gd(X, y, xq, 4, lr / 2)
            # the float64 bound (2e-10) refuses too, over-cautiously: the raw number meets 1e-10
            raw = float(model.predict(Xt, yt, qt, check_precision="ignore"))
            assert abs(raw - ref64) <= rtol * scale64


# ----------------------------------------------------------------------------- regressions (issue 12)
_REGRESSIONS = Path(__file__).parent / "data" / "fuzz_regressions.json"


def _regression(name: str):
    """A case the 10,000-case slow fuzz found silent (tests/data/fuzz_regressions.json): model, prompt
    tensors, the longdouble reference (prediction, scale) with the float64 α the promise uses."""
    f = json.loads(_REGRESSIONS.read_text())[name]
    dtype = torch.float32 if "float32" in f["dtype"] else torch.float64
    npdt = np.float32 if dtype == torch.float32 else np.float64
    X, y, xq = (np.asarray(f[k], dtype=npdt) for k in ("X", "y", "x_query"))
    model = build_newton_transformer(**f["spec"], dtype=dtype)
    Xt, yt, qt = (torch.from_numpy(a)[None] for a in (X, y, xq))
    a = float(model.alpha_of(Xt.double())) if f["spec"]["alpha"] == "adaptive" else f["step"]
    ref, scale, ratio = ld_power(X, y, xq, model.residual_power, a, f["spec"]["lam"])
    assert ratio < 2.0
    return model, (Xt, yt, qt), ref, scale, PROMISED_RTOL[dtype]


@pytest.mark.parametrize("name", ["adaptive_f32_alpha_underflow", "adaptive_f32_merged_alpha_underflow"])
def test_adaptive_float32_alpha_at_large_trace(name):
    """float32 adaptive α at τ_3^(1/3) ≳ 2^25 (ridge λ ≈ 1e10): the α MLP's slopes underflowed and the
    network's α was 0 (prediction 100 % off, silent).  With the power-of-two unit scaling
    (construct.blocks.trace_alpha) the register's α matches alpha_of to float32 round-off and the raw
    prediction meets 1e-4."""
    model, (Xt, yt, qt), ref, scale, rtol = _regression(name)
    streams = model.residual_streams(Xt, yt, qt, check_precision="ignore")
    reg = model.spec.n_prefix - 1  # the register token
    a_net = float(streams[-1][0, reg, model.layout["alpha"]].reshape(-1)[0])
    a64 = float(model.alpha_of(Xt.double()))
    assert abs(a_net - a64) <= 1e-5 * a64
    raw = float(model.predict(Xt, yt, qt, check_precision="ignore"))
    assert abs(raw - ref) <= rtol * scale


@pytest.mark.parametrize("name", ["default_f64_token_null", "default_f32_token_null", "hyperpower_f32_ridge"])
def test_fuzz_silent_cases_now_refused(name):
    """Silent cases of the 10,000-case fuzz that the precision estimate missed: default form on a
    rank-deficient prompt with n > rank (per-token round-off on S's null rows and ȳ's off-range part
    doubles every step: float64 d=32 n=5 k=27 err 1.5e-10, float32 d=3 n=10 k=21 err 4e-3) and a
    float32 hyperpower network with ridge (err 1.4e-3; the estimate was a Newton-k stand-in).  They
    raise PrecisionError now, and the raw number really misses the promise."""
    model, (Xt, yt, qt), ref, scale, rtol = _regression(name)
    with pytest.raises(PrecisionError, match="cannot deliver"):
        model.predict(Xt, yt, qt)
    raw = float(model.predict(Xt, yt, qt, check_precision="ignore"))
    assert abs(raw - ref) > rtol * scale  # the refusal is needed


def test_newton_predictions_precision_guard():
    """verify.newton_predictions' recurrence paths had only a NaN/inf check: on rank-deficient prefixes
    the batched recurrence is 1e-2 off at k = 100 (null-null round-off doubled every step).  It raises
    PrecisionError now (warns with "warn", returns the numbers with "ignore"); k = 40 passes, and the
    spectral path (closed form, no recurrence) is accurate and unguarded."""
    from construct.precision import PrecisionWarning
    from verify.reference import newton_predictions

    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((2, 12, 2)) @ rng.standard_normal((2, 8)))  # rank 2, d = 8
    y = torch.tensor(rng.standard_normal((2, 12)))
    with pytest.raises(PrecisionError, match="prefix") as e:
        newton_predictions(X, y, [40, 100], "code", method="batched")
    assert "method='spectral'" in str(e.value) and "float64 model" not in str(e.value)  # it is float64 already
    with pytest.warns(PrecisionWarning):
        bad = newton_predictions(X, y, [100], "code", method="batched", check_precision="warn")
    ok = newton_predictions(X, y, [40], "code", method="batched")
    spec = newton_predictions(X, y, [40, 100], "code", method="spectral")
    assert torch.allclose(ok[0], spec[0], rtol=0, atol=1e-12 * float(spec.abs().max()))
    assert float((bad[0] - spec[1]).abs().max()) > 1e-6 * float(spec.abs().max())  # the refusal was needed
    with pytest.raises(ValueError, match="check_precision"):
        newton_predictions(X, y, [4], "code", method="batched", check_precision="maybe")


def test_precision_bound_that_overflows_refuses_instead_of_erroring_or_passing():
    """Thousands of steps on a rank-deficient prompt: the bound's null-direction gain 2^k overflows.
    It used to raise OverflowError from a Python float power past 2^1023 (k >= 1224), or come back NaN
    from inf·0 (k = 1200 here) — and NaN > rtol is False, so the guard let the prompt through — and
    newton_predictions' recurrence guard dropped every non-finite bound.  Each is now an inf bound: a
    PrecisionError, as the same prompt at k = 1000 (a finite bound far above rtol) already was."""
    from construct.precision import precision_estimate
    from verify import newton_predict
    from verify.reference import newton_predictions

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    X[..., 1:] = 0  # rank 1, null rows exactly 0
    y = torch.randn(2, 6, generator=g, dtype=torch.float64)
    xq = torch.randn(2, 3, generator=g, dtype=torch.float64)
    a = 0.002  # converges: α·λ_max² < 2
    for k in (1200, 1500):
        for form in ("default", "merged", "hyperpower", "matrix"):
            orders = (2,) + (3,) * (k - 2) + (2,) if form == "hyperpower" else None
            est = precision_estimate(X, y, xq, a, k, form=form, orders=orders)
            assert bool((est > 1e-10).all()), (form, k, est)  # not NaN, not 0
        with pytest.raises(PrecisionError, match="prompt"):
            build_newton_transformer(3, k, a).predict(X, y, xq)
        with pytest.raises(PrecisionError, match="prompt"):
            newton_predict(X, y, xq, k, a)
        with pytest.raises(PrecisionError, match="prefix"):
            newton_predictions(X, y, [k], a, method="batched")


def test_matrix_guard_catches_rank_one_rounded_rows():
    """Rank-1 data X = g vᵀ (each row rounded off the line), d = 4, α = "code", k = 100: the batched
    recurrence is 5.5e-3 off the spectral closed form and newton_predict 8e-4, while the matrix-form
    bound was ≤ 7.4e-15, so both were returned silently (the error grows as ≈ 2^k·u²/6 from k ≈ 60).
    The bound's matrix-form null-block term (construct.precision, module doc 4) now refuses it."""
    from verify import newton_predict
    from verify.reference import newton_predictions

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 8, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 8, generator=g, dtype=torch.float64)
    exact = newton_predictions(X, y, [100], "code", method="spectral")[0]  # (B, n)
    rel = lambda got, want: float(((got - want).abs() / want.abs().clamp(min=1e-300)).max())  # noqa: E731
    try:
        got = newton_predictions(X, y, [100], "code", method="batched")[0]
        assert rel(got, exact) <= PROMISED_RTOL[torch.float64]
    except PrecisionError:
        pass
    try:
        got = newton_predict(X[:, :5], y[:, :5], X[:, 5], 100, "code")
        assert rel(got, exact[:, 5]) <= PROMISED_RTOL[torch.float64]
    except PrecisionError:
        pass


def test_gd_precision_message_names_gd():
    """The PrecisionError of a GD network names GD steps and the learning rate, not Newton / alpha."""
    X = np.array([[2.076831333397422e-05, -0.31342530250549316, 0.5808823108673096, 0.5895643830299377]])
    y = np.array([-1.8225784301757812])
    xq = np.array([0.5775589942932129, 1.6355592012405396, -0.2933378517627716, -0.3600802719593048])
    model = build_gd_transformer(d=4, steps=4, lr=5.106902313518655, attn="relu", normalize=True, dtype=torch.float32)
    Xt, yt, qt = (torch.from_numpy(a.astype(np.float32))[None] for a in (X, y, xq))
    with pytest.raises(PrecisionError) as e:
        model.predict(Xt, yt, qt)
    msg = str(e.value)
    assert "GD steps" in msg and "learning rate" in msg and "Newton" not in msg and "alpha" not in msg


def test_precision_message_suggests_float64_only_to_float32_models():
    """A float64 model's refusal does not tell the user to use a float64 model (it is one)."""
    from construct.precision import check_precision

    est = torch.tensor([1.0])
    for dtype, expect in ((torch.float64, False), (torch.float32, True)):
        with pytest.raises(PrecisionError) as e:
            check_precision(est, dtype, "raise")
        assert ("Use a float64 model" in str(e.value)) is expect, str(e.value)
