"""benchmarks.adam.Adam: bit-identical to torch.optim.Adam, same state format, no torch._dynamo."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import train as T
from benchmarks.adam import Adam

REPO = Path(__file__).resolve().parents[1]


class Shapes(torch.nn.Module):
    """Parameters of several shapes: 2-D weights, 1-D biases, a 0-D scale, a 3-D tensor, and one
    (``unused``) that gets a gradient only on some steps (lazy state initialisation)."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)
        self.scale = torch.nn.Parameter(torch.tensor(0.7))
        self.cube = torch.nn.Parameter(torch.randn(2, 2, 3))
        self.unused = torch.nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:  # x (B, 5) -> (B, 3)
        h = torch.tanh(self.lin1(x))  # (B, 7)
        out = self.scale * self.lin2(h) + torch.einsum("bi,kij->bj", x[:, :2], self.cube).sum(-1, keepdim=True)
        if step % 3 == 2:
            out = out + self.unused.sum()
        return out


def _make(dtype: torch.dtype, seed: int = 0) -> Shapes:
    torch.manual_seed(seed)
    return Shapes().to(dtype)


def _run(model: Shapes, opt, steps: range, dtype: torch.dtype) -> None:
    """Train with an lr that changes every step (set through param_groups, as benchmarks.train does)."""
    for s in steps:
        g = torch.Generator().manual_seed(1000 + s)
        x = torch.randn(16, 5, generator=g, dtype=dtype)  # (B, 5)
        y = torch.randn(16, 3, generator=g, dtype=dtype)  # (B, 3)
        for group in opt.param_groups:
            group["lr"] = 3e-2 * (1 + s % 7) / 7 + 1e-3 * s
        opt.zero_grad(set_to_none=True)
        ((model(x, s) - y) ** 2).mean().backward()
        opt.step()


def _assert_same(m_a, o_a, m_b, o_b) -> None:
    for (name, pa), pb in zip(m_a.named_parameters(), m_b.parameters()):
        assert pa.dtype == pb.dtype and torch.equal(pa, pb), f"parameter {name} differs"
    sa, sb = o_a.state_dict(), o_b.state_dict()
    # as trainer.json stores them: same keys in the same order (betas: a tuple, or a list once loaded from JSON)
    assert json.dumps(sa["param_groups"]) == json.dumps(sb["param_groups"])
    assert list(sa["state"]) == list(sb["state"])
    for i in sa["state"]:
        assert list(sa["state"][i]) == list(sb["state"][i]) == ["step", "exp_avg", "exp_avg_sq"]
        for k in sa["state"][i]:
            ta, tb = sa["state"][i][k], sb["state"][i][k]
            assert ta.dtype == tb.dtype and ta.device == tb.device and torch.equal(ta, tb), f"state {i}.{k} differs"


@pytest.mark.parametrize("foreach", [None, True], ids=["default", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_bit_identical_to_torch_adam(dtype, foreach):
    ours, ref = _make(dtype), _make(dtype)
    o_ours = Adam(ours.parameters(), lr=1e-3, foreach=foreach)
    o_ref = torch.optim.Adam(ref.parameters(), lr=1e-3, foreach=foreach)
    _run(ours, o_ours, range(25), dtype)
    _run(ref, o_ref, range(25), dtype)
    _assert_same(ours, o_ours, ref, o_ref)
    assert float(o_ours.state_dict()["state"][0]["step"]) == 25.0
    assert float(o_ours.state_dict()["state"][2]["step"]) == 8.0  # ``unused`` (own parameters come first): a gradient on steps 2, 5, ..., 23


def test_step_dtype_follows_default_dtype():
    """torch keeps ``step`` in float64 when that is the default dtype; so do we."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, ref = _make(torch.float64), _make(torch.float64)
        o_ours, o_ref = Adam(ours.parameters()), torch.optim.Adam(ref.parameters())
        _run(ours, o_ours, range(20), torch.float64)
        _run(ref, o_ref, range(20), torch.float64)
    finally:
        torch.set_default_dtype(before)
    assert o_ours.state_dict()["state"][0]["step"].dtype == torch.float64
    _assert_same(ours, o_ours, ref, o_ref)


def test_the_comparison_can_fail():
    """A textbook Adam (m·β1 + (1-β1)·g instead of torch's lerp) drifts off torch's bits: the exact
    comparisons above see a different operation order."""

    class Textbook(Adam):
        def step(self):
            with torch.no_grad():
                for group in self.param_groups:
                    b1, b2 = group["betas"]
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        st = self.state[p]
                        if not st:
                            st.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                        st["step"] += 1
                        st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                        st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                        t = st["step"].item()
                        denom = (st["exp_avg_sq"].sqrt() / (1 - b2 ** t) ** 0.5).add_(group["eps"])
                        p.addcdiv_(st["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** t))

    tb, ref = _make(torch.float32), _make(torch.float32)
    o_tb, o_ref = Textbook(tb.parameters()), torch.optim.Adam(ref.parameters())
    _run(tb, o_tb, range(25), torch.float32)
    _run(ref, o_ref, range(25), torch.float32)
    with pytest.raises(AssertionError, match="differs"):
        _assert_same(tb, o_tb, ref, o_ref)


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_state_dict_interop(dtype, direction):
    """Train 10 steps with one class, hand its state_dict to the other, continue 15: still equal to
    the first class continuing on its own."""
    first_cls, second_cls = (torch.optim.Adam, Adam) if direction == "torch_to_ours" else (Adam, torch.optim.Adam)
    m1 = _make(dtype)
    o1 = first_cls(m1.parameters(), lr=1e-3)
    _run(m1, o1, range(10), dtype)
    m2 = copy.deepcopy(m1)
    o2 = second_cls(m2.parameters(), lr=0.5)  # the loaded param_groups replace this lr
    # a deep copy: load_state_dict keeps the given tensors (as torch does), and o1 goes on stepping its own
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    _assert_same(m1, o1, m2, o2)
    _run(m1, o1, range(10, 25), dtype)
    _run(m2, o2, range(10, 25), dtype)
    _assert_same(m1, o1, m2, o2)


def test_round_trip_through_checkpoint_helpers():
    """benchmarks.train's safetensors + JSON split of the state, and back, into a fresh optimizer."""
    m1 = _make(torch.float32)
    o1 = Adam(m1.parameters())
    _run(m1, o1, range(7), torch.float32)
    tensors, meta = T._optimizer_tensors(o1)
    meta = json.loads(json.dumps(meta))  # as trainer.json stores it (betas become a list)
    assert meta == json.loads(json.dumps(T._optimizer_tensors(_torch_twin(m1, o1))[1]))
    m2 = copy.deepcopy(m1)
    o2 = Adam(m2.parameters())
    T._load_optimizer(o2, {k: v.clone() for k, v in tensors.items()}, meta)
    _run(m1, o1, range(7, 20), torch.float32)
    _run(m2, o2, range(7, 20), torch.float32)
    _assert_same(m1, o1, m2, o2)


def _torch_twin(model, opt):
    twin = torch.optim.Adam(copy.deepcopy(model).parameters())
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    return twin


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_decay=0.01), "weight_decay=0.01 is not supported"),
    (dict(amsgrad=True), "amsgrad=True is not supported"),
    (dict(maximize=True), "maximize=True is not supported"),
    (dict(fused=True), "fused=True is not supported"),
    (dict(capturable=True), "capturable=True is not supported"),
    (dict(differentiable=True), "differentiable=True is not supported"),
    (dict(decoupled_weight_decay=True), "decoupled_weight_decay=True is not supported"),
    (dict(lr=torch.tensor(1e-3)), "a tensor lr is not supported"),
    (dict(lr=-1.0), "lr must be a Python float >= 0"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\] must be a Python float in \[0, 1\)"),
    (dict(eps=-1e-8), "eps must be a Python float >= 0"),
])
def test_unsupported_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(_make(torch.float32).parameters(), **kwargs)


def test_unsupported_loaded_state_raises_and_changes_nothing():
    m = _make(torch.float32)
    o = torch.optim.Adam(m.parameters(), amsgrad=True)
    _run(m, o, range(3), torch.float32)
    ours = Adam(copy.deepcopy(m).parameters())
    with pytest.raises(ValueError, match="parameter group 0: amsgrad=True is not supported"):
        ours.load_state_dict(o.state_dict())
    assert len(ours.state) == 0 and ours.param_groups[0]["amsgrad"] is False
    ours.param_groups[0]["weight_decay"] = 0.1  # edited by hand after construction
    with pytest.raises(ValueError, match=r"param_groups\[0\]: weight_decay=0.1 is not supported"):
        _run(m, ours, range(1), torch.float32)
    with pytest.raises(ValueError, match="has 2 parameter groups, this optimizer 1"):
        ours.load_state_dict({"state": {}, "param_groups": [o.state_dict()["param_groups"][0]] * 2})


def test_torch_checkpoint_resumes_exactly_with_ours(tmp_path, monkeypatch):
    """A training run whose checkpoints torch.optim.Adam wrote resumes under benchmarks.adam.Adam and
    ends bit-identical to the run that torch.optim.Adam finished."""
    cfg = T.get_preset("smoke").replace(train_steps=20, warmup_steps=4, eval_every=10, checkpoint_every=10)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    with monkeypatch.context() as mp:
        mp.setattr(T, "Adam", torch.optim.Adam)
        T.train(cfg, ref, progress=False)
    shutil.copytree(ref, cut)
    (cut / "checkpoints" / "latest.json").write_text(
        json.dumps({"format": T.TRAIN_FORMAT, "step": 10, "dir": "step_00000010"}))
    assert T.Adam is Adam
    s = T.train(cfg, cut, resume=True, progress=False)
    assert s["status"] == "finished" and s["step"] == 20
    a, b = ref / "checkpoints" / "step_00000020", cut / "checkpoints" / "step_00000020"
    for f in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(str(a / f)), load_file(str(b / f))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), (f, k)
    ja, jb = (json.loads((p / "trainer.json").read_text()) for p in (a, b))
    assert ja["optimizer"] == jb["optimizer"]


def test_training_does_not_import_dynamo(tmp_path):
    """A tiny benchmarks.train run, width's step timing, perf's probe baseline fit and perf_network's
    GEMM recorder leave torch._dynamo unimported (torch.optim.Adam imports it on first use, and so
    does a TorchDispatchMode's wrapped __torch_dispatch__: about 1 s of CPU)."""
    code = f"""
import sys, torch
from benchmarks.train import get_preset, train
from benchmarks import perf, perf_network, width
cfg = get_preset("smoke").replace(train_steps=4, warmup_steps=1, eval_every=2, checkpoint_every=2)
train(cfg, {str(tmp_path / "run")!r}, progress=False)
width.step_seconds(cfg, 8, probe_steps=3)
perf._sgd_probes(torch.randn(2, 32, 4), torch.randn(32), steps=3, batch=8, lr=1e-2)
lin = torch.nn.Linear(3, 2)
assert perf_network.record_gemms(lambda: lin(torch.randn(4, 3)).sum().backward())  # a TorchDispatchMode
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "dynamo imported: False"
