"""Issue 13 parts 3-4 for ``benchmarks.perf``: network forward, ``predict_all`` and training step.

Every ratio is a quotient of two medians from the same run, the sides interleaved (A, B, A, B, …)
with one torch thread.  Times are the calling thread's **CPU time** (``time.thread_time``): with
one torch thread all the work runs on that thread, and CPU time does not count the time the
thread waits while other jobs hold the (shared) cores, which wall time does.

* **Forward** of a hand-built Newton network (d = 32, n = 128, k = 20, B = 64, float64): the
  previous implementation (:func:`construct.reference_forward.reference_forward`: einsum
  projections, ``* scale`` by 1.0, a (B, N, N) mask, ReLU then ``masked_fill``, division by the
  row count) against the current ``Transformer.forward`` (one fused QKV projection reading only
  the slots the weights use, scale and 1/N folded into the queries, hidden keys zeroed, ReLU in
  place).  Target ≥ 1.3×.
* **predict_all** on the same model: the previous path (every prefix at full length behind a
  key mask, :func:`construct.reference_forward.reference_predict_all`) against
  ``NewtonTransformer.predict_all`` (prefixes grouped by length), on ``prompts`` prompts.
  Target ≥ 3×.
* **Training step** (forward, MSE at the x tokens, backward, Adam) of a ``GargRegressor`` at the
  paper shape (12 layers, 8 heads, D = 256, 82 tokens, B = 64, float32) and at the ``cpu`` preset
  shape (6/4/64, 22 tokens, B = 64): Hugging Face ``GPT2Model`` eager attention
  (:func:`construct.export.to_hf`, same weights; skipped when ``transformers`` is missing); HF
  with its ``Conv1D`` projections on :func:`construct.dense.linear` (``hf_gpt2_eager_onednn``: the
  same kernel choice as ours, attention unchanged); our previous forward; ours with explicit
  softmax attention (what a hook on the pattern runs); ours with the last layer at every token
  (``ours_full_last_layer``); and ours (fused QKV + ``scaled_dot_product_attention``, products on
  oneDNN through :func:`construct.dense.linear`, the last layer's queries, attention output and
  MLP only at the x tokens that the loss reads).  Target ≥ 1.3× HF at the paper shape.
  ``torch.compile`` is measured on request (``compile=True``: it takes minutes at the paper
  shape and gave no gain there, see the README).
* **Floors of the training step**, interleaved with the steps: the step's dense products (the
  exact GEMMs of one step, recorded with ``construct.dense`` on ATen: shapes and transposes)
  replayed alone, once on ATen ``mm``/``addmm`` (MKL) and once on oneDNN; and the machine's
  single-thread sgemm rate at a large square size on both kernels.  Every variant's time is also
  given as achieved GFLOP/s of the model's FLOPs (:func:`train_step_flops`: all products, the
  attention as full N×N products, forward and backward), so the table shows how far each is
  from the floor: ``HF time / floor`` is the most any implementation on that kernel can gain
  over HF without removing products.
  Every variant, Hugging Face's included, steps with the same optimizer,
  :class:`benchmarks.adam.Adam` (bit-identical to ``torch.optim.Adam``; it spares the process
  the import of ``torch._dynamo``), so the ratios compare the networks alone.
"""

from __future__ import annotations

import copy
import time

import torch

from benchmarks.adam import Adam
from benchmarks.data import sample_prompts
from benchmarks.perf_targets import interleaved
from construct.dense import linear_backend

FULL = {"forward": {"d": 32, "n": 128, "k": 20, "B": 64, "repeats": 7},
        "predict_all": {"d": 32, "n": 128, "k": 20, "prompts": 2, "repeats": 3},
        "train": {"paper": {"B": 64, "repeats": 3}, "cpu": {"B": 64, "repeats": 21}},
        "sgemm": {"n": 2048, "repeats": 5}}
QUICK = {"forward": {"d": 4, "n": 12, "k": 3, "B": 8, "repeats": 2},
         "predict_all": {"d": 4, "n": 12, "k": 3, "prompts": 2, "repeats": 2},
         "train": {"smoke": {"B": 16, "repeats": 2}},
         "sgemm": {"n": 256, "repeats": 2}}

SHAPES = {  # GargConfig fields of the training shapes
    "paper": {"d": 20, "n_points": 41, "n_layers": 12, "n_heads": 8, "d_model": 256},
    "cpu": {"d": 5, "n_points": 11, "n_layers": 6, "n_heads": 4, "d_model": 64},
    "smoke": {"d": 3, "n_points": 6, "n_layers": 2, "n_heads": 2, "d_model": 16},
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-300))


def _newton_case(d: int, n: int, k: int, B: int, seed: int):
    from construct import build_newton_transformer, safe_alpha

    Xa, ya, _ = sample_prompts(B, n + 1, d, seed=seed + 29, dtype=torch.float64)
    X, y, xq = Xa[:, :n], ya[:, :n], Xa[:, n]
    model = build_newton_transformer(d, k, float(safe_alpha(X).min()), dtype=torch.float64)
    return model, X, y, xq


@torch.no_grad()
def time_forward(d: int = 32, n: int = 128, k: int = 20, B: int = 64, repeats: int = 7, seed: int = 0) -> dict:
    """Previous vs current forward pass of a hand-built network on B prompts (float64)."""
    from construct.reference_forward import reference_forward

    model, X, y, xq = _newton_case(d, n, k, B, seed)
    tokens = model.encode(X, y, xq)
    old, new = reference_forward(model.transformer, tokens), model.transformer(tokens)
    t_old, t_new = interleaved([lambda: reference_forward(model.transformer, tokens),
                                lambda: model.transformer(tokens)], repeats, clock=time.thread_time)
    return {"config": {"d": d, "n": n, "k": k, "B": B, "layers": model.n_layers, "width": model.layout.width,
                       "dtype": "float64", "repeats": repeats},
            "seconds": {"old": t_old, "new": t_new}, "ratio": t_old / t_new,
            "accuracy": {"new_vs_old": _rel(new, old)}}


@torch.no_grad()
def time_predict_all(d: int = 32, n: int = 128, k: int = 20, prompts: int = 2, repeats: int = 3, seed: int = 0) -> dict:
    """Previous (every prefix at full length) vs current (grouped by length) ``predict_all``."""
    from construct.reference_forward import reference_predict_all

    model, X, y, _ = _newton_case(d, n, k, prompts, seed)
    old, new = reference_predict_all(model, X, y), model.predict_all(X, y, check_alpha="ignore")
    t_old, t_new = interleaved([lambda: reference_predict_all(model, X, y),
                                lambda: model.predict_all(X, y, check_alpha="ignore")], repeats, clock=time.thread_time)
    return {"config": {"d": d, "n": n, "k": k, "prompts": prompts, "prefix_prompts": prompts * n,
                       "dtype": "float64", "repeats": repeats},
            "seconds": {"old": t_old, "new": t_new}, "ratio": t_old / t_new,
            "accuracy": {"new_vs_old": _rel(new, old)}}


def _hf(model):
    """The same weights on ``transformers.GPT2Model`` with eager attention, or None without transformers."""
    try:
        from construct.export import to_hf

        hf = to_hf(model)
    except ImportError:
        return None
    bb = hf._backbone
    if hasattr(bb, "set_attn_implementation"):
        bb.set_attn_implementation("eager")
    else:  # pragma: no cover - older transformers
        bb.config._attn_implementation = "eager"
    return hf


def _on_onednn(hf):
    """``hf`` with every ``Conv1D`` projection run through :func:`construct.dense.linear` (oneDNN in
    training), the attention products left as they are; None when there is nothing to switch."""
    import types

    from construct.dense import _OP, linear

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers without Conv1D
        return None
    convs = [m for m in hf.modules() if isinstance(m, Conv1D)]
    if _OP is None or not convs:
        return None
    for c in convs:  # Conv1D computes x W + b with W (in, out)
        c.forward = types.MethodType(lambda self, x: linear(x, self.weight.t(), self.bias), c)
    return hf


def train_step_flops(cfg, B: int) -> int:
    """FLOPs of one training step of a ``GargRegressor`` config: every product, forward + backward.

    Per layer, forward: 2·T·(4D² + 2·D·M) for QKV, output and MLP (T = B·N tokens) and 4·B·H·N²·Dh
    for Q Kᵀ and A V (full N×N, as HF eager computes them).  Read-in 2·T·d·D and read-out 2·T·D.
    The backward costs twice the forward, less the read-in's input gradient (the tokens need none).
    It equals the FLOPs of HF ``GPT2Model``'s recorded mm/addmm/bmm calls (tested).
    """
    N, D, H, L = cfg.max_len, cfg.d_model, cfg.n_heads, cfg.n_layers
    M, T, Dh = cfg.d_mlp or 4 * D, B * cfg.max_len, D // H
    layer = 2 * T * (4 * D * D + 2 * D * M) + 4 * B * H * N * N * Dh
    emb, out = 2 * T * cfg.d * D, 2 * T * D
    return 3 * (L * layer + emb + out) - emb


_GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm")


def _gemm_flops(name: str, shapes: list) -> int:
    a, b = shapes[-2], shapes[-1]  # the two factors (addmm/baddbmm lead with the added term)
    return 2 * int(torch.Size(a).numel()) * int(b[-1])


def record_gemms(step) -> list:
    """The GEMM calls (op name, [(shape, stride) or value per argument], kwargs) of one call of ``step``.

    Runs ``step`` once under a dispatch mode with :mod:`construct.dense` on ATen, so every dense
    product appears as an ATen mm / addmm / bmm with its shapes and transposes.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class _Rec(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            # torch wraps a mode's __torch_dispatch__ in torch._disable_dynamo unless this is False;
            # the wrapper imports torch._dynamo on the first op (about 1 s of CPU, the only import of
            # it left in ``benchmarks.run --quick``).  Nothing is compiled under this mode.
            return False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in _GEMM_OPS and func.namespace == "aten":
                calls.append((name, [(tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a
                                     for a in args], dict(kwargs or {})))
            return func(*args, **(kwargs or {}))

    with linear_backend("aten"), _Rec():
        step()
    return calls


def gemm_replay(calls: list, kernel: str = "mkl", seed: int = 0):
    """A function that runs the recorded GEMMs alone, on ATen (``"mkl"``) or oneDNN (``"onednn"``).

    Operands are random tensors with the recorded shapes and strides (one per distinct layout, so
    the replay's memory stays small).  On oneDNN, ``mm(a, b)`` runs as ``a (bᵀ)ᵀ`` and
    ``addmm(c, a, b)`` with a bias row ``c`` as ``a (bᵀ)ᵀ + c``; batched products stay on ATen.
    """
    from construct import dense

    if kernel not in ("mkl", "onednn"):
        raise ValueError(f"kernel must be 'mkl' or 'onednn', got {kernel!r}")
    if kernel == "onednn" and dense._OP is None:
        return None
    g = torch.Generator().manual_seed(seed)
    pool: dict = {}

    def operand(spec):
        if not isinstance(spec, tuple):
            return spec
        if spec not in pool:
            shape, stride = spec
            size = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
            pool[spec] = torch.randn(size, generator=g).as_strided(shape, stride)
        return pool[spec]

    aten = torch.ops.aten
    jobs = []
    for name, specs, kw in calls:
        args = [operand(sp) for sp in specs]
        if kernel == "onednn" and name == "mm":
            jobs.append((dense._mm, (args[0], args[1].t(), None), {}))
        elif kernel == "onednn" and name == "addmm" and args[0].dim() == 1 and not kw:
            jobs.append((dense._mm, (args[1], args[2].t(), args[0]), {}))
        else:
            jobs.append((getattr(aten, name).default, tuple(args), kw))

    def replay():
        for f, args, kw in jobs:
            f(*args, **kw)
    return replay


def sgemm_rates(n: int = 2048, repeats: int = 5, seed: int = 0) -> dict:
    """Single-thread float32 GFLOP/s of one n×n×n product on ATen (MKL) and on oneDNN."""
    from construct import dense

    g = torch.Generator().manual_seed(seed)
    A, Bm = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    fns = {"mkl": lambda: torch.mm(A, Bm)}
    if dense._OP is not None:
        Bt = Bm.t().contiguous()
        fns["onednn"] = lambda: dense._mm(A, Bt, None)
    for f in fns.values():
        f()
    ts = interleaved(list(fns.values()), repeats, clock=time.thread_time)
    return {"n": n, "seconds": dict(zip(fns, ts)), "gflops": {k: 2 * n ** 3 / t / 1e9 for k, t in zip(fns, ts)}}


def time_train_step(shape: str = "paper", B: int = 64, repeats: int = 3, compile: bool = False, seed: int = 0,
                    hf: bool = True) -> dict:
    """One optimiser step (forward, loss, backward, Adam) of each variant at a shape of :data:`SHAPES`.

    ``hf=False`` leaves out the Hugging Face variants (and the import of ``transformers``, 1-2 s).
    """
    from construct.reference_forward import reference_forward
    from construct.regressor import GargConfig, GargRegressor

    cfg = GargConfig(**SHAPES[shape])
    torch.manual_seed(seed)
    base = GargRegressor(cfg).train()
    X, y, _ = sample_prompts(B, cfg.n_points, cfg.d, seed=seed + 31)
    X, y = X.float(), y.float()

    def stepper(model, fwd):
        opt = Adam(model.parameters(), lr=1e-4)  # the same optimizer for every variant, HF's too

        def step():
            loss = ((fwd(model) - y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def explicit(model):  # a hook on the pattern makes softmax attention take the explicit path
        for layer in model.transformer.layers:
            layer.attn.hook_pattern.register_forward_hook(lambda m, i, o: None)
        return model

    variants = {}
    hf = _hf(copy.deepcopy(base)) if hf else None
    acc = {}
    if hf is not None:
        hf.train()
        variants["hf_gpt2_eager"] = stepper(hf, lambda m: m(X, y))
        hf_dnn = _on_onednn(_hf(copy.deepcopy(base)))
        if hf_dnn is not None:  # the same kernel choice as ours, for an apples-to-apples ratio
            variants["hf_gpt2_eager_onednn"] = stepper(hf_dnn.train(), lambda m: m(X, y))
            acc["hf_onednn_train_vs_hf_float32"] = _rel(hf_dnn(X, y).detach(), hf(X, y).detach())
        with torch.no_grad():  # same weights, same outputs: float64 and float32
            h64, o64 = copy.deepcopy(hf).double(), copy.deepcopy(base).double()
            acc["ours_vs_hf_float64"] = _rel(o64(X.double(), y.double()), h64(X.double(), y.double()))
            acc["ours_vs_hf_float32"] = _rel(base(X, y), hf(X, y))
            hf_out = hf(X, y)
        acc["ours_train_vs_hf_float32"] = _rel(base(X, y).detach(), hf_out)  # autograd on: oneDNN products
    with torch.no_grad():
        b64 = copy.deepcopy(base).double()
        acc["ours_vs_old_float64"] = _rel(b64(X.double(), y.double()), reference_forward(
            b64.transformer, b64._tokens(X.double(), y.double(), cfg.n_points))[:, ::2, 0])
    grads = []
    for m, dt in ((copy.deepcopy(base), torch.float32), (copy.deepcopy(base).double(), torch.float64)):
        ((m(X.to(dt), y.to(dt)) - y.to(dt)) ** 2).mean().backward()
        grads.append(torch.cat([q.grad.reshape(-1) for q in m.parameters()]))
    acc["ours_train_grads_float32_vs_float64"] = _rel(grads[0], grads[1])
    variants["old"] = stepper(copy.deepcopy(base),
                              lambda m: reference_forward(m.transformer, m._tokens(X, y, cfg.n_points))[:, ::2, 0])
    variants["explicit_softmax"] = stepper(explicit(copy.deepcopy(base)), lambda m: m(X, y))
    variants["ours_full_last_layer"] = stepper(  # the last layer at all tokens, not only the read ones
        copy.deepcopy(base), lambda m: m.transformer(m._tokens(X, y, cfg.n_points))[:, ::2, 0])
    variants["ours"] = stepper(copy.deepcopy(base), lambda m: m(X, y))
    compile_s = None
    if compile:
        mc = copy.deepcopy(base)
        cm = torch.compile(mc)
        variants["compiled"] = stepper(mc, lambda m: cm(X, y))
        t0 = time.perf_counter()
        variants["compiled"]()  # compiles forward and backward
        compile_s = time.perf_counter() - t0
    calls = record_gemms(stepper(copy.deepcopy(base), lambda m: m(X, y)))
    dense_flops = sum(_gemm_flops(n, [sp[0] for sp in specs if isinstance(sp, tuple)]) for n, specs, _ in calls)
    floors = {"gemm_floor_mkl": gemm_replay(calls, "mkl", seed), "gemm_floor_onednn": gemm_replay(calls, "onednn", seed)}
    variants.update({k: f for k, f in floors.items() if f is not None})
    for f in variants.values():  # warm-up (allocator, SDPA kernels)
        f()
    names = list(variants)
    ts = dict(zip(names, interleaved([variants[k] for k in names], repeats, clock=time.thread_time)))
    flops = train_step_flops(cfg, B)
    out = {"config": {"shape": shape, **SHAPES[shape], "tokens": 2 * cfg.n_points, "B": B, "dtype": "float32",
                      "optimizer": "Adam", "repeats": repeats},
           "seconds": ts, "accuracy": acc, "compile_seconds": compile_s,
           "flops": {"step": flops, "dense_gemms": dense_flops, "gemm_calls": len(calls)},
           "gflops": {k: (dense_flops if k.startswith("gemm_floor") else flops) / t / 1e9 for k, t in ts.items()},
           "ratios": {f"old/{k}": ts["old"] / ts[k] for k in names if k != "old"}}
    if hf is not None:
        out["ratios"].update({f"hf_gpt2_eager/{k}": ts["hf_gpt2_eager"] / ts[k] for k in names if k != "hf_gpt2_eager"})
        if "hf_gpt2_eager_onednn" in ts:
            out["ratios"]["hf_gpt2_eager_onednn/ours"] = ts["hf_gpt2_eager_onednn"] / ts["ours"]
    elif not hf:
        out["skipped"] = "Hugging Face comparison left out (hf=False: benchmarks.run --quick does not import transformers)"
    else:
        out["skipped"] = "transformers is not installed (pip install '.[hf]'): no Hugging Face comparison"
    return out


def network(quick: bool = False, seed: int = 0, hf: bool = True) -> dict:
    sz = QUICK if quick else FULL
    return {"forward": time_forward(seed=seed, **sz["forward"]),
            "predict_all": time_predict_all(seed=seed, **sz["predict_all"]),
            "train": {shape: time_train_step(shape, seed=seed, hf=hf, **kw) for shape, kw in sz["train"].items()},
            "sgemm": sgemm_rates(**sz["sgemm"], seed=seed)}


def rows(net: dict) -> list[list]:
    """Rows (section, item, workload, seconds, –, –, other) for the perf table."""
    f, p = net["forward"], net["predict_all"]
    fc, pc = f["config"], p["config"]
    fwl = f"d={fc['d']} n={fc['n']} k={fc['k']} B={fc['B']} float64, CPU s"
    pwl = f"d={pc['d']} n={pc['n']} k={pc['k']}, {pc['prompts']} prompts ({pc['prefix_prompts']} prefixes), CPU s"
    out = [
        ["network", "forward, previous path", fwl, f["seconds"]["old"], None, None, None],
        ["network", "forward, current", fwl, f["seconds"]["new"], None, None,
         f"{f['ratio']:.2f}x faster than previous (goal >= 1.3x)"],
        ["network", "predict_all, previous (full-length prefixes)", pwl, p["seconds"]["old"], None, None, None],
        ["network", "predict_all, current (grouped by length)", pwl, p["seconds"]["new"], None, None,
         f"{p['ratio']:.2f}x faster than previous (goal >= 3x)"],
    ]
    for shape, t in net["train"].items():
        c = t["config"]
        wl = f"{shape}: {c['n_layers']}L/{c['n_heads']}H/{c['d_model']}, {c['tokens']} tokens, B={c['B']}, CPU s"
        for k, s in t["seconds"].items():
            parts = []
            if k == "ours" and "hf_gpt2_eager_onednn/ours" in t["ratios"]:
                parts.append(f"{t['ratios']['hf_gpt2_eager_onednn/ours']:.2f}x HF eager on oneDNN")
            if k != "hf_gpt2_eager" and "hf_gpt2_eager" in t["seconds"]:
                r = t["ratios"]["hf_gpt2_eager/" + k]
                if k.startswith("gemm_floor"):
                    parts.append(f"HF eager / floor = {r:.2f}x: the most any step on this kernel can gain over HF "
                                 "without removing products")
                else:
                    parts.append(f"{r:.2f}x HF eager" + (" (goal >= 1.3x)" if shape == "paper" and k == "ours" else ""))
            if k == "ours" and "skipped" in t:
                parts.append(t["skipped"])
            if k in t.get("gflops", {}):
                parts.append(f"{t['gflops'][k]:.0f} GFLOP/s")
                if k.startswith("gemm_floor"):
                    parts[-1] += (f" (the step's {t['flops']['gemm_calls']} dense GEMMs alone, "
                                  f"{t['flops']['dense_gemms'] / 1e9:.1f} GFLOP)")
            other = "; ".join(parts) or None
            out.append(["train step", k, wl, s, None, None, other])
    if "sgemm" in net:
        g = net["sgemm"]
        for k, s in g["seconds"].items():
            out.append(["train step", f"sgemm {g['n']}^3, {k}", "one square float32 product, 1 thread, CPU s", s,
                        None, None, f"{g['gflops'][k]:.0f} GFLOP/s (machine rate of this kernel)"])
    return out


def markdown(net: dict) -> str:
    f, p = net["forward"], net["predict_all"]
    lines = [
        "Network (issue 13.3-13.4), thread CPU time, interleaved medians:",
        f"forward {f['ratio']:.2f}x the previous path (max rel. difference {f['accuracy']['new_vs_old']:.1e}); "
        f"predict_all {p['ratio']:.2f}x (max rel. difference {p['accuracy']['new_vs_old']:.1e}).",
    ]
    for shape, t in net["train"].items():
        r = t["ratios"]
        s = f"training step, {shape} shape: ours {r['old/ours']:.2f}x our previous forward"
        if "hf_gpt2_eager/ours" in r:
            s += (f", {r['hf_gpt2_eager/ours']:.2f}x HF GPT2Model eager (explicit softmax "
                  f"{r['hf_gpt2_eager/explicit_softmax']:.2f}x); outputs equal HF to "
                  f"{t['accuracy']['ours_vs_hf_float64']:.1e} (float64), {t['accuracy']['ours_vs_hf_float32']:.1e} (float32)")
        else:
            s += f" ({t['skipped']})"
        if t["compile_seconds"] is not None:
            s += f"; torch.compile {r['old/compiled']:.2f}x previous after {t['compile_seconds']:.0f} s of compiling"
        lines.append(s + ".")
        if "gflops" in t and "hf_gpt2_eager" in t["seconds"]:
            gf, fl = t["gflops"], t["flops"]
            s = (f"  {shape} floors: {fl['step'] / 1e9:.1f} GFLOP per step (model FLOPs); HF eager runs at "
                 f"{gf['hf_gpt2_eager']:.0f} GFLOP/s, ours at {gf['ours']:.0f}. The step's dense GEMMs alone "
                 f"({fl['dense_gemms'] / 1e9:.1f} GFLOP) take {t['seconds']['gemm_floor_mkl']:.3f} s on MKL "
                 f"({gf['gemm_floor_mkl']:.0f} GFLOP/s), so on MKL no step can beat HF eager by more than "
                 f"{r['hf_gpt2_eager/gemm_floor_mkl']:.2f}x without removing products")
            if "gemm_floor_onednn" in t["seconds"]:
                s += (f"; on oneDNN they take {t['seconds']['gemm_floor_onednn']:.3f} s ({gf['gemm_floor_onednn']:.0f} "
                      f"GFLOP/s, bound {r['hf_gpt2_eager/gemm_floor_onednn']:.2f}x HF)")
            if "hf_gpt2_eager_onednn/ours" in r:
                s += (f". HF with its projections on oneDNN (the same kernel choice as ours) takes "
                      f"{t['seconds']['hf_gpt2_eager_onednn']:.3f} s ({gf['hf_gpt2_eager_onednn']:.0f} GFLOP/s): "
                      f"ours is {r['hf_gpt2_eager_onednn/ours']:.2f}x that")
            lines.append(s + ".")
    if "sgemm" in net:
        g = net["sgemm"]
        lines.append(f"Single-thread sgemm {g['n']}^3: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in g["gflops"].items()) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf_network", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small workloads (seconds; ratios not meaningful)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on the training step (minutes)")
    ap.add_argument("--json", default=None, help="write the measurements to this JSON file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.compile:
        sz = QUICK if args.quick else FULL
        for kw in sz["train"].values():
            kw["compile"] = True
    net = network(args.quick, args.seed)
    net["command"] = "python -m benchmarks.perf_network " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(net, f, indent=1)
    print(markdown(net))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
