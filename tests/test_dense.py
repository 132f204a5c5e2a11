"""construct.dense.linear: oneDNN products in training, against float64 and against the ATen path."""

import copy

import pytest
import torch
import torch.nn.functional as F

from construct import dense
from construct.dense import linear, linear_backend, set_linear_backend, uses_onednn
from construct.reference_forward import reference_forward
from construct.regressor import GargConfig, GargRegressor

needs_onednn = pytest.mark.skipif(dense._OP is None, reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def _small_products_on_onednn(monkeypatch):
    """The tests' products are small; route them to oneDNN anyway (the size rule is tested below)."""
    monkeypatch.setattr(dense, "MIN_MACS", 0)


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _case(shape, I, O, stored_in_out, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, I, generator=g)
    W = torch.randn(I, O, generator=g).t() if stored_in_out else torch.randn(O, I, generator=g)  # (O, I)
    b = torch.randn(O, generator=g) if bias else None
    return x, W, b


@needs_onednn
@pytest.mark.parametrize("shape,I,O,stored_in_out,bias", [
    ((37,), 24, 40, False, True), ((3, 11), 24, 40, True, True), ((5, 7), 64, 1, True, True),
    ((4, 9), 32, 96, False, False), ((2, 6), 300, 17, True, True),
])
def test_onednn_linear_and_gradients_equal_float64(shape, I, O, stored_in_out, bias):
    x, W, b = _case(shape, I, O, stored_in_out, bias, seed=I + O)
    gy = torch.randn(*shape, O, generator=torch.Generator().manual_seed(7))
    res = {}
    for dt in (torch.float32, torch.float64):
        xs, Ws = x.to(dt).clone().requires_grad_(), W.to(dt).clone().requires_grad_()
        bs = b.to(dt).clone().requires_grad_() if bias else None
        y = linear(xs, Ws, bs)
        if dt == torch.float32:
            assert uses_onednn(xs, Ws) and type(y.grad_fn).__name__ == "_OneDnnLinearBackward"
        else:
            assert type(y.grad_fn).__name__ != "_OneDnnLinearBackward"
        y.backward(gy.to(dt))
        res[dt] = [y.detach(), xs.grad, Ws.grad] + ([bs.grad] if bias else [])
    # round-off is measured against the sum of |terms| of each entry (a sum that cancels to ~0 has
    # a large relative error in any summation order)
    ax, aW, ag = x.double().abs(), W.double().abs(), gy.double().abs()
    scales = [ax @ aW.t() + (b.double().abs() if bias else 0), ag @ aW,
              ag.reshape(-1, O).t() @ ax.reshape(-1, I)] + ([ag.reshape(-1, O).sum(0)] if bias else [])
    for got, ref, sc in zip(res[torch.float32], res[torch.float64], scales):
        assert got.shape == ref.shape
        assert float(((got.double() - ref) / sc).abs().max()) < 1e-6


@needs_onednn
def test_double_backward_through_onednn():
    x, W, b = _case((6, 5), 16, 12, True, True, seed=3)
    out = {}
    for dt in (torch.float32, torch.float64):
        xs, Ws, bs = (t.to(dt).clone().requires_grad_() for t in (x, W, b))
        gx, = torch.autograd.grad(torch.tanh(linear(xs, Ws, bs)).pow(2).sum(), xs, create_graph=True)
        gW, = torch.autograd.grad(gx.pow(2).sum(), Ws)
        out[dt] = (gx, gW)
    for got, ref in zip(out[torch.float32], out[torch.float64]):
        assert _rel(got, ref) < 1e-5


@needs_onednn
def test_small_products_stay_on_aten(monkeypatch):
    monkeypatch.setattr(dense, "MIN_MACS", 1 << 20)
    W = torch.randn(64, 64, requires_grad=True)
    assert not uses_onednn(torch.randn(255, 64), W)  # 255·64·64 multiply-adds < 2^20
    assert uses_onednn(torch.randn(256, 64), W)
    assert type(linear(torch.randn(8, 32, 64), W).grad_fn).__name__ == "_OneDnnLinearBackward"


def test_inference_float64_and_aten_backend_are_f_linear_bit_for_bit():
    x, W, b = _case((4, 5), 24, 40, True, True, seed=1)
    with torch.no_grad():  # inference keeps ATen, so inference results do not change
        assert torch.equal(linear(x, W, b), F.linear(x, W, b))
    Wg = W.clone().requires_grad_()
    with linear_backend("aten"):
        assert not uses_onednn(x, Wg)
        assert torch.equal(linear(x, Wg, b), F.linear(x, W, b))
    assert dense.get_linear_backend() == "auto"
    x64, W64 = x.double(), W.double().requires_grad_()
    assert not uses_onednn(x64, W64)
    assert torch.equal(linear(x64, W64, b.double()), F.linear(x64, W64, b.double()))
    with pytest.raises(ValueError, match="linear backend must be one of"):
        set_linear_backend("mkl")


def _garg(seed=0):
    torch.manual_seed(seed)
    return GargRegressor(GargConfig(d=4, n_points=8, n_layers=3, n_heads=2, d_model=32)).train()


@needs_onednn
def test_training_forward_and_gradients_equal_float64_reference():
    """The oneDNN training path (float32) against the previous forward in float64."""
    m = _garg()
    g = torch.Generator().manual_seed(4)
    X, y = torch.randn(16, 8, 4, generator=g), torch.randn(16, 8, generator=g)
    m64 = copy.deepcopy(m).double()
    out, grads = [], []
    for model, fwd in ((m, lambda mm: mm(X, y)),
                       (m64, lambda mm: reference_forward(mm.transformer, mm._tokens(X, y, 8))[:, ::2, 0])):
        pred = fwd(model)
        (pred - y.to(pred.dtype)).pow(2).mean().backward()
        out.append(pred)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert _rel(out[0], out[1]) < 1e-6
    assert _rel(grads[0], grads[1]) < 1e-5
    assert grads[0].abs().max() > 0


@needs_onednn
def test_training_trajectory_equals_aten_and_float64_to_round_off():
    """Ten Adam steps: oneDNN (default) and ATen float32 runs stay within float32 round-off of float64."""
    g = torch.Generator().manual_seed(9)
    X, y = torch.randn(16, 8, 4, generator=g), torch.randn(16, 8, generator=g)

    def run(dtype, backend):
        m = _garg().to(dtype)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        losses = []
        with linear_backend(backend):
            for _ in range(10):
                loss = ((m(X.to(dtype), y.to(dtype)) - y.to(dtype)) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss))
        return torch.tensor(losses, dtype=torch.float64), torch.cat([p.detach().double().reshape(-1) for p in m.parameters()])

    ref_l, ref_p = run(torch.float64, "auto")
    dnn_l, dnn_p = run(torch.float32, "auto")
    mkl_l, mkl_p = run(torch.float32, "aten")
    assert ref_l[-1] < 0.9 * ref_l[0]  # it trains
    assert not torch.equal(dnn_p, mkl_p)  # the two float32 kernels really differ ...
    assert _rel(dnn_l, ref_l) < 1e-6 and _rel(mkl_l, ref_l) < 1e-6  # ... by round-off only
    p0 = torch.cat([p.detach().double().reshape(-1) for p in _garg().parameters()])
    assert _rel(dnn_p - p0, ref_p - p0) < 1e-3 and _rel(mkl_p - p0, ref_p - p0) < 1e-3  # the updates
