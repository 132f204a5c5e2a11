"""Adam without ``torch.optim.Optimizer``: bit-identical to ``torch.optim.Adam``, no ``torch._dynamo``.

Why.  In torch 2.13 every ``torch.optim.Optimizer`` method is wrapped by ``torch._disable_dynamo``
(and ``Adam.step`` by ``_use_grad_for_differentiable``, which calls ``torch._dynamo.graph_break``),
so the first ``zero_grad`` / ``step`` / ``state_dict`` of a process imports ``torch._dynamo``:
about 1 s of CPU, more than the whole tiny training run of ``python -m benchmarks.run --quick``
(experiments f and g).  Nothing else in this project needs dynamo.  :class:`Adam` is the same
algorithm without that machinery.

What "the same" means.  ``torch.optim.Adam`` with its default settings picks one of two code
paths per parameter group (``torch.optim.optimizer._default_to_fused_or_foreach``, reused here):

* **single-tensor** (``_single_tensor_adam``) when any parameter lives on the CPU, i.e. always in
  this project's CPU runs.  Per parameter, in this order::

      step += 1                                   # CPU scalar tensor, float32 (float64 when that is
                                                  # torch's default dtype)
      exp_avg.lerp_(grad, 1 - beta1)
      exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
      s = step.item()                             # Python floats from here ...
      bias_correction1 = 1 - beta1 ** s
      bias_correction2 = 1 - beta2 ** s
      step_size = lr / bias_correction1
      bias_correction2_sqrt = bias_correction2 ** 0.5
      denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)   # ... and tensors again
      param.addcdiv_(exp_avg, denom, value=-step_size)

* **multi-tensor** (``_multi_tensor_adam``, the ``torch._foreach_*`` kernels) when every
  parameter is on an accelerator (CUDA, ...) -- the same arithmetic, one kernel per operation for
  all tensors of a (device, dtype) group, ``step_size`` as ``(lr / bias_correction1) * -1``.

Both are replicated operation by operation with the same kernels and the same Python-float
scalars, so parameters, ``exp_avg``, ``exp_avg_sq`` and ``step`` come out bit-identical to
``torch.optim.Adam`` (tests/test_adam.py checks float32 and float64, both paths, on the CPU;
``foreach=True`` forces the multi-tensor path as it does in torch).

State format.  :meth:`Adam.state_dict` / :meth:`Adam.load_state_dict` read and write exactly
torch's layout: ``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [{"lr",
"betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable",
"differentiable", "fused", "decoupled_weight_decay", "params": [index, ...]}]}`` in that key
order, so a state written by ``torch.optim.Adam`` loads here and one written here loads into
``torch.optim.Adam``, and training checkpoints (``benchmarks.train``) resume exactly across the
two.  As in torch, loaded tensors are cast to the parameter's dtype/device with ``Tensor.to``
(which returns the very tensor when nothing changes) and ``state_dict()`` returns the live state
tensors, not copies.

Not implemented (a :class:`ValueError` names the option rather than computing something else):
``weight_decay`` != 0, ``decoupled_weight_decay``, ``amsgrad``, ``maximize``, ``capturable``,
``differentiable``, ``fused``, tensor ``lr``/``betas``, complex and sparse parameters/gradients,
named parameters, optimizer hooks and LR schedulers (``torch.optim.lr_scheduler`` needs a
``torch.optim.Optimizer``).  Set the learning rate per step through ``param_groups[i]["lr"]``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from copy import deepcopy
from itertools import chain
from typing import Any

import torch

# torch's own choice of code path and of the dtype of ``step``: pure functions of
# torch.optim.optimizer that import nothing further (the module itself is imported by ``import torch``)
from torch.optim.optimizer import _default_to_fused_or_foreach, _get_scalar_dtype

__all__ = ["Adam"]

# torch.optim.Adam's defaults, in torch's order (the order of the keys in state_dict()["param_groups"])
_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": False,
}
# options that must keep torch's default here: name -> what is accepted
_FIXED = {"weight_decay": (0,), "amsgrad": (False,), "maximize": (False,), "capturable": (False,),
          "differentiable": (False,), "fused": (None, False), "decoupled_weight_decay": (False,)}


def _check_group(group: dict, where: str) -> None:
    """Raise ValueError unless ``group`` asks for something :class:`Adam` computes as torch does."""
    for name in ("lr", "betas", "eps"):
        if name not in group:
            raise ValueError(f"{where}: parameter group has no {name!r}")
    for name, ok in _FIXED.items():
        v = group.get(name, _DEFAULTS[name])
        if isinstance(v, torch.Tensor) or v not in ok:  # (0.0 and 0 are both "no weight decay", as in torch)
            raise ValueError(f"{where}: {name}={v!r} is not supported by benchmarks.adam.Adam (only {ok[0]!r}); "
                             "use torch.optim.Adam for it")
    lr, betas, eps = group["lr"], group["betas"], group["eps"]
    if isinstance(lr, torch.Tensor) or not isinstance(lr, (int, float)) or not lr >= 0.0:
        raise ValueError(f"{where}: lr must be a Python float >= 0 (a tensor lr is not supported), got {lr!r}")
    if isinstance(eps, torch.Tensor) or not isinstance(eps, (int, float)) or not eps >= 0.0:
        raise ValueError(f"{where}: eps must be a Python float >= 0, got {eps!r}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}: betas must be a pair of floats, got {betas!r}")
    for i, b in enumerate(betas):
        if isinstance(b, torch.Tensor) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"{where}: betas[{i}] must be a Python float in [0, 1) (tensor betas are not "
                             f"supported), got {b!r}")
    if group.get("foreach", None) not in (None, True, False):
        raise ValueError(f"{where}: foreach must be None, True or False, got {group['foreach']!r}")


class Adam:
    """Adam, bit-identical to ``torch.optim.Adam`` with the same arguments (see the module docstring).

    ``params``: an iterable of tensors, or of dicts (parameter groups) with ``"params"`` and any
    per-group options.  The keyword arguments are torch's; those not implemented must keep their
    default value (ValueError otherwise).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False):
        self.defaults = {"lr": lr, "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas, "eps": eps,
                         "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach,
                         "capturable": capturable, "differentiable": differentiable, "fused": fused,
                         "decoupled_weight_decay": decoupled_weight_decay}
        _check_group(self.defaults, "Adam()")
        if isinstance(params, torch.Tensor):
            raise TypeError("params must be an iterable of tensors or of dicts, got a single tensor; "
                            "wrap it in a list")
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("Adam got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in g.items() if k != "params"]
        return "\n".join(lines) + "\n)"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Append a parameter group (torch's rules: options default to the constructor's)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("parameters must be an ordered collection (a list), not a set")
        param_group["params"] = list(params)
        for p in param_group["params"]:
            if isinstance(p, tuple):
                raise ValueError("named parameters ((name, tensor) pairs) are not supported by "
                                 "benchmarks.adam.Adam; pass the tensors")
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"Adam can only optimize tensors, got {type(p).__name__}")
            if not (p.is_leaf or p.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            if torch.is_complex(p):
                raise ValueError("complex parameters are not supported by benchmarks.adam.Adam")
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        _check_group(param_group, "add_param_group")
        ids = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in param_group["params"]}) != len(param_group["params"]) or \
                ids & {id(p) for p in param_group["params"]}:
            raise ValueError("some parameters appear more than once (in this group or in two groups)")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (``set_to_none``) or zero every parameter's gradient, as torch does."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        if p.grad.grad_fn is not None:
                            p.grad.detach_()
                        else:
                            p.grad.requires_grad_(False)
                        p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step on every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            _check_group(group, f"param_groups[{gi}]")  # options may have been edited since
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("Adam does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:  # torch's lazy initialisation: step on the CPU (not capturable/fused)
                    state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            foreach = group["foreach"]
            if foreach is None:  # torch.optim.adam.adam(): default to foreach when every tensor allows it
                _, foreach = _default_to_fused_or_foreach(params, False, use_fused=False)
            beta1, beta2 = group["betas"]
            (_multi_tensor if foreach else _single_tensor)(
                params, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                eps=group["eps"])
        return loss

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [...]}`` in ``torch.optim.Optimizer``'s format."""
        mapping: dict[int, int] = {}
        start = 0

        def pack(group: dict[str, Any]) -> dict[str, Any]:
            nonlocal start
            packed = {k: v for k, v in group.items() if k != "params"}
            mapping.update({id(p): i for i, p in enumerate(group["params"], start) if id(p) not in mapping})
            packed["params"] = [mapping[id(p)] for p in group["params"]]
            start += len(packed["params"])
            return packed

        groups = [pack(g) for g in self.param_groups]
        state = {(mapping[id(k)] if isinstance(k, torch.Tensor) else k): v for k, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state written by :meth:`state_dict` or by ``torch.optim.Adam.state_dict()``.

        Validates everything before changing anything: the group and parameter counts, and that
        every loaded group asks only for what this class implements (ValueError otherwise).
        """
        groups = self.param_groups
        saved = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved):
            raise ValueError(f"loaded state dict has {len(saved)} parameter groups, this optimizer {len(groups)}")
        for i, (g, s) in enumerate(zip(groups, saved)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(f"loaded state dict's parameter group {i} has {len(s['params'])} parameters, "
                                 f"this optimizer's {len(g['params'])}")
        for i, s in enumerate(saved):
            for name in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused",
                         "decoupled_weight_decay"):  # torch.optim.Adam.__setstate__'s defaults for old states
                s.setdefault(name, _DEFAULTS[name])
            _check_group(s, f"load_state_dict: parameter group {i}")
        id_map = dict(zip(chain.from_iterable(s["params"] for s in saved),
                          chain.from_iterable(g["params"] for g in groups)))

        def cast(param: torch.Tensor, value, key=None):
            if isinstance(value, torch.Tensor):
                if key == "step":  # torch keeps ``step`` as saved (a CPU scalar): issue 74424
                    return value
                return value.to(dtype=param.dtype, device=param.device) if param.is_floating_point() \
                    else value.to(device=param.device)
            if isinstance(value, dict):
                return {k: cast(param, v, key=k) for k, v in value.items()}
            if isinstance(value, Iterable) and not isinstance(value, str):
                return type(value)(cast(param, v) for v in value)
            return value

        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = cast(param, v)
                if "step" in state[param] and not torch.is_tensor(state[param]["step"]):
                    state[param]["step"] = torch.tensor(float(state[param]["step"]), dtype=_get_scalar_dtype())
            else:
                state[k] = v
        for g, s in zip(groups, saved):
            s["params"] = g["params"]
        self.state, self.param_groups = state, saved


def _single_tensor(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr: float, beta1: float, beta2: float,
                   eps: float) -> None:
    """``torch.optim.adam._single_tensor_adam`` at the defaults (no weight decay, amsgrad, maximize, ...)."""
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step_t += 1
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr: float, beta1: float, beta2: float,
                  eps: float) -> None:
    """``torch.optim.adam._multi_tensor_adam`` at the defaults, per (device, dtype) group of parameters."""
    if not params:
        return
    by_key: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_key.setdefault((p.device, p.dtype), []).append(i)
    for idx in by_key.values():
        d_params = [params[i] for i in idx]
        d_grads = [grads[i] for i in idx]
        d_exp_avgs = [exp_avgs[i] for i in idx]
        d_exp_avg_sqs = [exp_avg_sqs[i] for i in idx]
        d_steps = [steps[i] for i in idx]
        if d_steps[0].is_cpu:
            torch._foreach_add_(d_steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        else:
            torch._foreach_add_(d_steps, 1)
        torch._foreach_lerp_(d_exp_avgs, d_grads, 1 - beta1)
        torch._foreach_mul_(d_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(d_exp_avg_sqs, d_grads, d_grads, 1 - beta2)
        bias_correction1 = [1 - beta1 ** s.item() for s in d_steps]
        bias_correction2 = [1 - beta2 ** s.item() for s in d_steps]
        step_size = [(lr / bc) * -1 for bc in bias_correction1]
        bias_correction2_sqrt = [bc ** 0.5 for bc in bias_correction2]
        exp_avg_sq_sqrt = torch._foreach_sqrt(d_exp_avg_sqs)
        torch._foreach_div_(exp_avg_sq_sqrt, bias_correction2_sqrt)
        torch._foreach_add_(exp_avg_sq_sqrt, eps)
        torch._foreach_addcdiv_(d_params, d_exp_avgs, exp_avg_sq_sqrt, step_size)
