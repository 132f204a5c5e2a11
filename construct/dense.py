"""The transformer's dense products: :func:`linear` is ``F.linear``, trained on the faster CPU kernel.

Every projection of :class:`construct.transformer.Transformer` (read-in, fused QKV, attention
output, MLP in/out, read-out) goes through :func:`linear`.  When autograd records the product
(training) and the tensors are float32 on the CPU, it runs on oneDNN's matrix product
(``torch.ops.mkldnn._linear_pointwise``, forward and backward) instead of ATen's BLAS (MKL).
Both compute ``y = x Wᵀ + b`` in float32 arithmetic; only the summation order differs, so the
results agree to float32 round-off (tested against float64: relative 1e-6 and below).

Why: on this project's AMD EPYC (Zen 5, AVX-512), MKL reports a generic code path
(``MKL_VERBOSE=1``: "Intel(R) Architecture processors") and oneDNN its ``avx512_core`` kernels
(``ONEDNN_VERBOSE=1``).  At one thread and the training shapes, MKL's sgemm runs at about
105 GFLOP/s and oneDNN's at about 230 GFLOP/s (``python -m benchmarks.perf_network`` reports both).  On Intel CPUs both libraries use AVX-512;
we have not measured the difference there.

Backward: ``dx = dy W`` and ``dW = dyᵀ x`` run on the same kernel; under ``create_graph`` they
are :func:`linear` calls themselves, so higher-order gradients work.  ``db`` is a sum over rows.

Inference (no autograd graph), float64 (the hand-built networks), other devices, products under
:data:`MIN_MACS` multiply-adds, ``torch.compile`` tracing and torch builds without oneDNN use
``F.linear``.  So every inference
result (verification reports, fuzz counts, figures) is bit for bit what it was before; only
training differs from runs made before this module, at float32 round-off.
:func:`set_linear_backend` (``"auto"``, the default, or ``"aten"`` to force ``F.linear``) and the
context manager :func:`linear_backend` switch it, e.g. to repeat such an older run bit for bit.

Shapes: x (..., I), W (O, I), b (O,) -> (..., O).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "aten")
# oneDNN costs ~10-15 µs more per call than MKL; it wins from about 1M multiply-adds per product
# (measured at one thread: 256×64×64 breaks even, 512×128×128 is 2× faster, 192×16×48 2.5× slower)
MIN_MACS = 1 << 20

_state = {"backend": "auto"}


def _onednn_op():
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if torch.backends.mkldnn.is_available() and ops is not None:
            return ops._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        pass
    return None  # pragma: no cover


_OP = _onednn_op()


def set_linear_backend(name: str) -> str:
    """Choose the kernel of :func:`linear`: ``"auto"`` (oneDNN for CPU float32) or ``"aten"``.

    Returns the previous setting.
    """
    if name not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {name!r}")
    old, _state["backend"] = _state["backend"], name
    return old


def get_linear_backend() -> str:
    return _state["backend"]


@contextlib.contextmanager
def linear_backend(name: str):
    """``with linear_backend("aten"): ...`` runs the block on ``F.linear``."""
    old = set_linear_backend(name)
    try:
        yield
    finally:
        set_linear_backend(old)


def uses_onednn(x: torch.Tensor, W: torch.Tensor) -> bool:
    """Whether :func:`linear` would run ``x Wᵀ`` on oneDNN when autograd records it."""
    return (_OP is not None and _state["backend"] == "auto" and x.dtype == torch.float32
            and W.dtype == torch.float32 and x.device.type == "cpu" and W.device.type == "cpu"
            and x.numel() * W.shape[0] >= max(MIN_MACS, 1) and not torch.compiler.is_compiling())


def _packed(t: torch.Tensor) -> torch.Tensor:
    """t itself if it is contiguous or the transpose of a contiguous matrix, else a contiguous copy.

    oneDNN runs other layouts on a slow path: a (256, 2624) operand with row stride 512 (every
    other token) took 3.5 s instead of 20 ms.
    """
    if t.is_contiguous() or (t.dim() == 2 and t.stride() == (1, t.shape[0])):
        return t
    return t.contiguous()


def _mm(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return _OP(_packed(x), _packed(W), b, "none", [], "")


def _lin(a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``a Wᵀ`` inside the backward: recorded (double backward) under create_graph, else plain oneDNN."""
    return linear(a, W) if torch.is_grad_enabled() else _mm(a, W, None)


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        ctx.has_bias = b is not None
        return _mm(x, W, b)  # (..., O)

    @staticmethod
    def backward(ctx, gy):
        x, W = ctx.saved_tensors
        gx = gW = gb = None
        if ctx.needs_input_grad[0]:
            gx = _lin(gy, W.t())  # (..., I)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            g2 = gy.reshape(-1, gy.shape[-1])  # (R, O)
            if ctx.needs_input_grad[1]:
                gW = _lin(g2.t(), x.reshape(-1, x.shape[-1]).t())  # (O, I)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = g2.sum(0)  # (O,)
        return gx, gW, gb


def linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, b)``: x (..., I), W (O, I), b (O,) or None -> (..., O); see the module docstring."""
    if (torch.is_grad_enabled() and (x.requires_grad or W.requires_grad or (b is not None and b.requires_grad))
            and uses_onednn(x, W) and (b is None or b.dtype == torch.float32)):
        return _OneDnnLinear.apply(x, W, b)
    return F.linear(x, W, b)
