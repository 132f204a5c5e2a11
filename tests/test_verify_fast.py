"""verify_model's fast path (issue 13): one network run, an O(k) reference, the same verdicts."""

from __future__ import annotations

import torch

import verify.numeric as VN
import verify.reference as R
from construct import build_newton_transformer, safe_alpha
from verify import newton_matrices, verify_model

F64 = torch.float64


def _case(d=4, n=9, k=5, B=3, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=F64)
    y = torch.randn(B, n, generator=g, dtype=F64)
    xq = torch.randn(B, d, generator=g, dtype=F64)
    model = build_newton_transformer(d, k, float(safe_alpha(X).min()), dtype=F64, **kw)
    return model, X, y, xq


def test_one_network_run_and_k_matrix_steps(monkeypatch):
    model, X, y, xq = _case(k=6)
    runs, steps = [], []
    model.transformer.register_forward_hook(lambda *a: runs.append(1))
    orig = R._newton_iterates
    monkeypatch.setattr(R, "_newton_iterates", lambda S, a, k, keep: (steps.append(k), orig(S, a, k, keep))[1])
    rep = verify_model(model, X, y, xq)
    assert rep.passed and len(runs) == 1
    assert sum(steps) == 6  # M_0..M_6 in one recurrence (was 0 + 1 + ... + 6 + 6 = 27 steps)


def test_streams_and_prediction_come_from_one_run():
    model, X, y, xq = _case(form="merged", lam=0.3)
    streams, pred = model.residual_streams(X, y, xq, return_prediction=True)
    assert torch.equal(streams, model.residual_streams(X, y, xq))
    assert torch.equal(pred, model.predict(X, y, xq))


def test_newton_norms_from_eigenvalues_equal_svd_norms():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 7, 5, generator=g, dtype=F64)
    S = A.transpose(1, 2) @ A
    alpha = float(safe_alpha(A).min())
    Ms = newton_matrices(S, 8, alpha)  # (9, 4, 5, 5)
    want = torch.linalg.matrix_norm(Ms, ord=2)  # (9, 4)
    got = VN._newton_norms(torch.linalg.eigvalsh(S), alpha, 8)
    assert float(((got - want).abs() / want).max()) <= 1e-12


def test_fast_comparison_locates_a_fault_like_the_slot_scan():
    model, X, y, xq = _case(k=3, seed=2)
    with torch.no_grad():
        model.transformer.blocks[2].attn.W_O[0, 0, model.layout["u"].start] += 1e-3
    rep = verify_model(model, X, y, xq)
    assert not rep.passed and rep.first_failure.layer == 2 and rep.first_failure.slot == "u"
    # the per-slot scan (taken when the stream is not finite) finds the same row
    row = rep.row(2, "u")
    streams = model.residual_streams(X, y, xq)
    ref = VN._reference(model, X, y, xq, 2**-53)
    ma, where = VN._max_abs(streams[3][..., model.layout["u"]], ref.streams[3]["u"])
    assert ma == row.max_abs and row.at == VN._token_name(where, 0, X.shape[1], X.shape[0])


# ----------------------------------------------------------------------------------------------
# The stream-checking fast path (issue 13, verify-perf) against the previous path, kept verbatim:
# streams cached by hooks, the old reference (broadcast M_j z product, eigh for every prompt, a
# fresh zero tensor for every empty `out`), the old whole-stream comparison loop.
# ----------------------------------------------------------------------------------------------
import math

import pytest

from verify.numeric import (BOUND_C, EPS64, AlphaCheck, PredictionCheck, Report, SlotError, _Reference,
                            _adaptive_slots, _contraction, _describe, _describe_hyper, _kappa_nonzero,
                            _max_abs, _reference_hyper, _rel, _token_name, c_scale, ref)


def old_newton_norms(ev, alpha, k):
    e, norms = alpha * ev * ev, []
    nz = ev != 0
    safe_ev = torch.where(nz, ev, torch.ones_like(ev))
    for j in range(k + 1):
        if j:
            e = e * (2 - e)
        norms.append(torch.where(nz, e / safe_ev, torch.zeros_like(ev)).abs().amax(-1))
    return torch.stack(norms)


def old_reference(model, X, y, x_query, unit, ev_S=None):
    spec, layout = model.spec, model.layout
    X, y, x_query = (t.to(F64) for t in (X, y, x_query))
    B, n, d = X.shape
    P = spec.n_prefix
    R = spec.n_ridge
    T = N = P + n + 1
    lam = spec.lam
    ada = spec.adaptive
    prefix = math.sqrt(lam) * torch.eye(d, dtype=F64).expand(B, R, d) if R else X.new_zeros(B, 0, d)
    if ada:
        prefix = torch.cat([prefix, X.new_zeros(B, 1, d)], 1)
    Z = torch.cat([prefix, X, x_query[:, None]], 1)
    xs = torch.cat([prefix, X, X.new_zeros(B, 1, d)], 1)
    xq = torch.zeros(B, T, d, dtype=F64)
    xq[:, -1] = x_query
    ys = torch.zeros(B, T, 1, dtype=F64)
    ys[:, P:P + n, 0] = y
    S = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=F64)
    Sn = S / N if spec.normalize else S
    steps = model.newton_step_after_layer
    a = model.alpha_of(X) if ada else spec.alpha
    Ms = ref.newton_matrices(Sn, spec.k, a)
    alpha_eff = a if ada else (spec.alpha / N ** 2 if spec.normalize else spec.alpha)
    b = (X.transpose(1, 2) @ y[..., None])[..., 0]
    M_eff = ref.newton_matrix(S, spec.k, alpha_eff) if spec.normalize else Ms[spec.k]
    pred = torch.einsum("bd,bde,be->b", x_query, M_eff, b)
    ev = torch.linalg.eigvalsh(Sn) if ev_S is None or spec.normalize else ev_S
    norm_S = ev.abs().amax(-1)
    norm_M = old_newton_norms(ev, a[:, None] if ada else spec.alpha, spec.k)
    G = (norm_M * (2 + norm_M * norm_S)).cummax(0).values
    zmax = Z.norm(dim=-1).max(dim=1).values
    xy = (X.norm(dim=-1) * y.abs()).sum(1)
    base = BOUND_C * unit * (N + d)
    u_bound = [base * 2.0 ** (j + 1) * G[j] * zmax for j in range(spec.k + 1)]
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
        one, v, parked, tau_s, alpha_s, (v_bd, tau_bd, alpha_bd) = _adaptive_slots(
            spec, X, x_query, S, xs, R, a, base * norm_S * zmax, base, zd, z1)
        base_slots["one"] = one
        first.update(one=one, v=zd, tau=z1, alpha=z1)
        first_bd.update(one=zero, v=zero, tau=zero, alpha=zero)
        scale_layer = spec.alpha_layers
    streams.append(first)
    bounds.append(first_bd)
    ev_n, Q_n = torch.linalg.eigh(Sn)
    nul = ev_n <= d * EPS64 * ev_n[:, -1:].clamp(min=0)
    null_frac = ((Z @ Q_n) * nul[:, None, :]).norm(dim=-1).max(dim=1).values / zmax.clamp(min=1e-300)
    fl = [{}]
    L = len(steps)
    U = Z @ Ms.transpose(-1, -2)
    SMZ = Z @ (Sn @ Ms).transpose(-1, -2) if has_c else None
    for i, j in enumerate(steps):
        s = dict(base_slots)
        bd = dict(x=zero, xq=zero, y=zero)
        s["u"] = U[j]
        bd["u"] = u_bound[j]
        fl.append({"u": u_bound[j] * null_frac})
        if ada:
            s["v"], bd["v"], bd["one"] = v, v_bd, zero
            has = i >= scale_layer - 1
            s["tau"], s["alpha"] = (tau_s, alpha_s) if has else (z1, z1)
            bd["tau"], bd["alpha"] = (tau_bd, alpha_bd) if has else (zero, zero)
            if i < scale_layer:
                s["u"], bd["u"] = zd, zero
            elif spec.form == "default":
                s["u"] = s["u"].clone()
                s["u"][:, -1] = 0.0
        if has_c:
            if ada and i <= scale_layer:
                c, bd["c"] = (parked, v_bd) if i < scale_layer else (zd, zero)
            elif i == 0:
                sigma = c_scale(spec.alpha)
                c = sigma * (Z @ Sn.transpose(1, 2))
                c[:, -1] = 0.0
                bd["c"] = base * sigma * norm_S * zmax
            else:
                c = SMZ[j]
                bd["c"] = u_bound[j] * norm_S
            s["c"] = c
        out = torch.zeros(B, T, 1, dtype=F64)
        bd["out"] = zero
        if i == L - 1:
            if spec.form == "merged":
                w_k = (M_eff @ b[..., None])[..., 0]
                out[..., 0] = torch.einsum("btd,bd->bt", Z, w_k)
                bd["out"] = read * zmax
            else:
                bd["out"] = pred_bound
            out[:, -1, 0] = pred
        s["out"] = out
        streams.append(s)
        bounds.append(bd)
    return _Reference(streams, bounds, pred, pred_bound, fl)


def hooked_streams(model, X, y, x_query):
    """The previous way to get the streams: run_with_cache hooks on hook_embed / hook_resid_post."""
    tr = model.transformer
    want = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(tr.cfg.n_layers)]
    with torch.no_grad():
        out, cache = tr.run_with_cache(model.encode(X, y, x_query), names_filter=want)
    return [cache[n] for n in want], out[:, -1, 0]


def old_verify_model(model, X, y, x_query, *, rtol=None, check_ols=True, check_alpha="fail", condition_aware=False):
    """verify_model before verify-perf, verbatim apart from argument checks and the hooked streams."""
    from verify.numeric import BOUNDARY_SLACK, DEFAULT_RTOL
    from construct.validate import check_prompts

    dtype = model.dtype
    rtol = DEFAULT_RTOL[dtype] if rtol is None else rtol
    X, y, x_query = check_prompts(X, y, x_query, d=model.d, dtype=dtype, device=model.device)
    spec = model.spec
    B, n, d = X.shape
    P = spec.n_prefix
    N = P + n + 1
    unit = float(torch.finfo(dtype).eps) / 2
    X64, y64, q64 = (t.detach().to("cpu", F64) for t in (X, y, x_query))
    S = X64.transpose(1, 2) @ X64 + spec.lam * torch.eye(d, dtype=F64)
    ev = torch.linalg.eigvalsh(S)
    lm = ev[:, -1].clamp(min=0.0)
    if spec.adaptive:
        a_ada = model.alpha_of(X64)
        ratio = a_ada * lm * lm
    else:
        ratio = (spec.alpha / torch.as_tensor(float(N) if spec.normalize else 1.0, dtype=F64) ** 2) * lm * lm
    n_div = int((ratio >= 2.0 * (1.0 - BOUNDARY_SLACK)).sum())
    alpha_eff = a_ada if spec.adaptive else torch.full((B,), spec.alpha / (N ** 2 if spec.normalize else 1.0), dtype=F64)
    contraction = _contraction(S, alpha_eff, math.log2(model.residual_power), ev)
    streams, pred = hooked_streams(model, X, y, x_query)
    streams, pred = [h.to("cpu", F64) for h in streams], pred.to("cpu", F64)
    if spec.form == "hyperpower":
        refr = _reference_hyper(model, X64, y64, q64, unit)
        desc = _describe_hyper(spec, model.residual_power_after_layer)
    else:
        refr = old_reference(model, X64, y64, q64, unit, ev)
        desc = _describe(spec, model.layer_names, model.newton_step_after_layer)
    names = ["read-in"] + model.layer_names

    def tol(bound):
        return max(rtol, bound) if condition_aware else rtol

    rows = []
    layout = model.layout
    finite = math.isfinite(sum(float(h.sum()) for h in streams))
    slices = {slot: layout[slot] for slot in layout.names}
    T_all = streams[0].shape[1]
    wmax_of = {}
    for li, (got, want, bnd, words) in enumerate(zip(streams, refr.streams, refr.bounds, desc)):
        if finite:
            diff = got.clone()
            wmax = [0.0] * got.shape[-1]
            for slot, sl in slices.items():
                w = want[slot]
                diff[..., sl] -= w
                if id(w) not in wmax_of:
                    wmax_of[id(w)] = (w, w.abs().reshape(-1, sl.stop - sl.start).amax(0).tolist())
                wmax[sl] = wmax_of[id(w)][1]
            dmax, didx = diff.abs_().reshape(-1, got.shape[-1]).max(0)
            dmax, didx = dmax.tolist(), didx.tolist()
            stream_scale = max(wmax)
        else:
            stream_scale = max(float(w.abs().max()) for w in want.values())
        for slot, sl in slices.items():
            if finite:
                scale = max(wmax[sl]) or stream_scale
                c = max(range(sl.start, sl.stop), key=dmax.__getitem__)
                ma = dmax[c]
                where = None if ma == 0 else divmod(didx[c], T_all)
            else:
                w = want[slot]
                scale = float(w.abs().max()) or stream_scale
                ma, where = _max_abs(got[..., sl], w)
            mr = _rel(ma, scale)
            bound = _rel(float(bnd[slot].max()), scale)
            fl = refr.floors[li].get(slot) if li < len(refr.floors) else None
            floor = 0.0 if fl is None else _rel(float(fl.max()), scale)
            ok = mr <= max(tol(bound), floor if math.isfinite(floor) else 0.0)
            rows.append(SlotError(li - 1, names[li], slot, words[slot], ma, mr, scale, bound,
                                  _token_name(where, P, n, B), bool(ok), floor))
    na, _ = _max_abs(pred[:, None, None], refr.pred[:, None, None])
    nscale = float(refr.pred.abs().max())
    nr = _rel(na, nscale)
    nb = _rel(float(refr.pred_bound.max()), nscale)
    newton = PredictionCheck("newton", na, nr, nb, True, bool(nr <= tol(nb)),
                             "" if spec.form != "hyperpower" else f"residual power P = {spec.residual_power}")
    ols_ref = ref.ols_predict(X64, y64, q64, lam=spec.lam, driver="gelsy")
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
    return Report(tuple(rows), newton, ols, alpha, rtol, condition_aware, str(dtype).removeprefix("torch."), {})


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    """Equal to tol relative (both NaN counts as equal)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= tol * max(abs(a), abs(b))


def assert_same_report(new: Report, old: Report, exact_where: bool):
    """Verdicts and words equal; errors to 1e-12 (relative errors: absolute 1e-12, their values
    sit at round-off, where the two references' last bits differ); scales, bounds, floors to 1e-12
    relative; token locations equal where the deviation is a real fault (``exact_where``)."""
    assert new.passed == old.passed and len(new.rows) == len(old.rows)
    for a, b in zip(new.rows, old.rows):
        key = (a.layer, a.slot)
        assert (a.layer, a.layer_name, a.slot, a.expected, a.passed) == (b.layer, b.layer_name, b.slot, b.expected, b.passed), key
        assert close(a.scale, b.scale) and close(a.bound, b.bound) and close(a.floor, b.floor), key
        if math.isnan(b.max_rel) or math.isinf(b.max_rel):
            assert (math.isnan(a.max_rel) and math.isnan(b.max_rel)) or a.max_rel == b.max_rel, key
        else:
            assert abs(a.max_rel - b.max_rel) <= 1e-12, (key, a.max_rel, b.max_rel)
        if exact_where and b.max_rel > 1e-6:
            assert a.at == b.at and close(a.max_abs, b.max_abs), (key, a.at, b.at)
        if b.max_abs == 0:
            assert a.max_abs == 0 and a.at == "-", key  # an exact copy stays exact
    for p, q in ((new.newton, old.newton), (new.ols, old.ols)):
        assert (p.against, p.checked, p.passed, p.note) == (q.against, q.checked, q.passed, q.note)
        assert close(p.max_rel, q.max_rel, 0.0) or abs(p.max_rel - q.max_rel) <= 1e-12
        assert close(p.bound, q.bound)
    assert new.alpha == old.alpha


FAST_CASES = [
    dict(),
    dict(form="merged", lam=0.3),
    dict(normalize=True, attn="linear"),
    dict(alpha="adaptive"),
    dict(alpha="adaptive", form="merged", lam=0.1),
    dict(form="hyperpower", k=3),
    dict(n=3),  # n < d: rank-deficient S, the null-space floor is nonzero (eigh on those prompts)
    dict(dtype=torch.float32),
]


@pytest.mark.parametrize("kw", FAST_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_report_equals_previous_path(kw):
    kw = dict(kw)
    n, k, alpha = kw.pop("n", 9), kw.pop("k", 4), kw.pop("alpha", None)
    g = torch.Generator().manual_seed(5)
    X = torch.randn(4, n, 4, generator=g, dtype=F64)
    y = torch.randn(4, n, generator=g, dtype=F64)
    xq = torch.randn(4, 4, generator=g, dtype=F64)
    a = alpha if alpha is not None else float(safe_alpha(X).min()) * (1 / (n + 1) ** -2 if kw.get("normalize") else 1)
    model = build_newton_transformer(4, k, a, **kw)
    new, old = verify_model(model, X, y, xq), old_verify_model(model, X, y, xq)
    assert new.passed or kw.get("dtype") is torch.float32 or n < 4  # a sane case, not vacuous agreement
    assert_same_report(new, old, exact_where=False)
    if model.spec.form != "hyperpower":  # the reference streams themselves, to 1e-12 of each slot's scale
        X64, y64, q64 = X.to(model.dtype).to(F64), y.to(model.dtype).to(F64), xq.to(model.dtype).to(F64)
        S = X64.transpose(1, 2) @ X64 + model.spec.lam * torch.eye(4, dtype=F64)
        ev = torch.linalg.eigvalsh(S)
        rn, ro = VN._reference(model, X64, y64, q64, 2**-53, ev), old_reference(model, X64, y64, q64, 2**-53, ev)
        for sn, so in zip(rn.streams, ro.streams):
            for slot in so:
                d = float((sn[slot] - so[slot]).abs().max())
                assert d <= 1e-12 * max(float(so[slot].abs().max()), 1e-300) or d == 0, slot
        for fn, fo in zip(rn.floors, ro.floors):
            assert fn.keys() == fo.keys() and all(torch.equal(fn[s], fo[s]) for s in fo)
        assert all(torch.equal(bn[s], bo[s]) for bn, bo in zip(rn.bounds, ro.bounds) for s in bo)


@pytest.mark.parametrize("where", ["u", "x", "out", "y"])
def test_injected_fault_found_at_the_same_layer_slot_and_token(where):
    model, X, y, xq = _case(k=4, seed=3, form="merged", lam=0.2)
    lay, bad = model.layout, 2  # a fault in layer 2's MLP output, written into one slot
    with torch.no_grad():
        model.transformer.blocks[bad].mlp.W_out[0, lay[where].start] += 0.5
    new, old = verify_model(model, X, y, xq), old_verify_model(model, X, y, xq)
    assert not new.passed and new.first_failure.layer == bad and new.first_failure.slot == where
    assert_same_report(new, old, exact_where=True)


def test_nonfinite_stream_reported_like_the_slot_scan():
    model, X, y, xq = _case(k=3, seed=4)
    lay = model.layout

    def poison(act, hook):
        act = act.clone()
        act[1, 2, lay["u"].start + 1] = float("nan")
        act[0, 5, lay["x"].start] = float("inf")
        return act

    model.transformer.add_hook("blocks.1.hook_resid_post", poison)
    try:
        new, old = verify_model(model, X, y, xq), old_verify_model(model, X, y, xq)
    finally:
        model.transformer.reset_hooks()
    assert math.isnan(new.row(1, "u").max_abs) and new.row(1, "u").at == "prompt 1 train 2"
    assert math.isinf(new.row(1, "x").max_abs) and new.row(1, "x").at == "prompt 0 train 5"
    assert_same_report(new, old, exact_where=True)


def test_stream_check_equals_max_abs_on_every_slot():
    """_StreamCheck's (max_abs, where) is _max_abs's, exactly, also on ties and exact zeros."""
    model, X, y, xq = _case(k=3, seed=6, form="merged", lam=0.4)
    streams, _ = hooked_streams(model, X, y, xq)
    streams = [h.clone() for h in streams]
    streams[2][..., model.layout["u"]] = streams[2][..., model.layout["u"]].round(decimals=3)  # ties
    refr = VN._reference(model, X, y, xq, 2**-53)
    slices = {s: model.layout[s] for s in model.layout.names}
    chk = VN._StreamCheck(refr.streams, slices)
    for h in streams:
        chk.append(h)
    for li, (h, want) in enumerate(zip(streams, refr.streams)):
        for slot, sl in slices.items():
            assert chk.rows[li][slot] == VN._max_abs(h[..., sl], want[slot]), (li, slot)
            assert chk.scale(want[slot]) == float(want[slot].abs().max())


def test_direct_streams_equal_hooked_streams_with_hooks_and_subclasses():
    """Transformer.residual_streams (collected by the forward loop) == run_with_cache's, bit for bit,
    with a user hook that edits a stream attached, and through a subclass's own forward (GPT-2 export)."""
    from construct import gpt2_scale, to_gpt2

    model, X, y, xq = _case(k=3, seed=7)
    model.transformer.add_hook("blocks.0.hook_resid_post", lambda act, hook: act * 1.5)
    try:
        old, out_old = hooked_streams(model, X, y, xq)
        new, pred = model.residual_streams(X, y, xq, return_prediction=True, stack=False,
                                           check_alpha="ignore", check_precision="ignore")
    finally:
        model.transformer.reset_hooks()
    assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old)) and torch.equal(pred, out_old)
    g2 = to_gpt2(model, 1e-6, scale=gpt2_scale(model, X, y, xq))
    tok = model.encode(X, y, xq)
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(g2.transformer.cfg.n_layers)]
    out2, old2 = g2.transformer.run_with_cache(tok, names_filter=names)
    new2, new_out2 = g2.transformer.residual_streams(tok, return_output=True)
    assert new2.shape[0] == len(names) and torch.equal(new_out2, out2)
    assert all(torch.equal(new2[i], old2[name]) for i, name in enumerate(names))
    assert new2.shape[-2] == 2 * tok.shape[1]  # the subclass's forward ran: mirrored tokens


def test_predict_ignore_skips_the_alpha_eigvalsh_but_adaptive_still_checks_its_range(monkeypatch):
    from construct import AlphaRangeError

    model, X, y, xq = _case()
    calls = []
    orig = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    model.predict(X, y, xq, check_alpha="ignore", check_precision="ignore")
    assert calls == []
    model.predict(X, y, xq, check_precision="ignore")
    assert calls  # the default check computes λ_max(S)
    ada = build_newton_transformer(4, 3, "adaptive", alpha_range=(-4, 4))
    with pytest.raises(AlphaRangeError):
        ada.predict(X * 1e6, y, xq, check_alpha="ignore", check_precision="ignore")


def test_gd_verify_runs_the_network_once():
    from construct import build_gd_transformer

    g = torch.Generator().manual_seed(8)
    X = torch.randn(3, 7, 4, generator=g, dtype=F64)
    y = torch.randn(3, 7, generator=g, dtype=F64)
    xq = torch.randn(3, 4, generator=g, dtype=F64)
    model = build_gd_transformer(4, 5, 0.02)
    runs = []
    model.transformer.register_forward_hook(lambda *a: runs.append(1))
    rep = verify_model(model, X, y, xq)
    assert rep.passed and len(runs) == 1 and len(rep.rows) == 6 * len(model.layout.names)
    assert rep.newton.against == "gd" and rep.newton.max_rel <= 1e-13
