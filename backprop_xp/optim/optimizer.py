"""SGD, Adam and AdamW with torch's update formulas, in Array API operations only.

An optimizer holds :class:`~backprop_xp.nn.Parameter` objects and rebinds their ``.data``
(``p.data = p.data - lr * update``): no in-place writes, no host round trips. The step count
lives on the host as a Python int, so bias corrections cost no synchronization.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..backend import device, get_namespace, to_namespace
from ..functional._validation import bool_option, real_option
from ..nn.module import Module, Parameter

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]

Array = Any


def _check(opt: str, arg: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{opt}: argument '{arg}' expected {expected}, got {value!r}")


class Optimizer:
    """Base class: ``params`` (a Module or Parameters), ``lr``, ``step()``, ``zero_grad()``.

    ``lr`` is a plain attribute that learning-rate schedules rewrite. ``initial_lr`` is None
    until the first schedule is attached, which sets it to ``lr`` at that moment (torch's
    ``param_group["initial_lr"]``). Parameters whose ``.grad`` is None are skipped.

    ``state_dict()`` / ``load_state_dict()`` save and restore the per-parameter state
    (momentum buffers, Adam's moments and step counts) and the hyperparameters in torch's
    layout, so a run resumes exactly, and torch's optimizer state loads here (and back, once
    the arrays are made torch tensors).
    """

    _hyper: tuple[str, ...] = ()  # hyperparameters beside lr, as in torch's param group
    _flags: tuple[str, ...] = ("nesterov", "maximize", "amsgrad")

    def __setattr__(self, name: str, value: Any) -> None:
        # Every hyperparameter is normalized when it is set (by __init__, a schedule, a
        # user's ``opt.lr = ...`` or load_state_dict): a NumPy float64 lr would turn float32
        # parameters float64 at the next step; a Python float never does.
        if name in ("lr", "initial_lr") or name in self._hyper:
            value = self._normalize(name, value)
        object.__setattr__(self, name, value)

    def _normalize(self, name: str, value: Any) -> Any:
        who = type(self).__name__
        if name == "initial_lr" and value is None:
            return None
        if name in self._flags:
            return bool_option(who, name, value)
        if name == "betas":
            return self._pair(who, value)
        return real_option(who, name, value)

    def __init__(self, params: Module | Iterable[Parameter], lr: float):
        if isinstance(params, Module):
            params = params.parameters()
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__}: item {i} of params is a {type(p).__name__}, "
                    f"not a Parameter"
                )
        lr = real_option(type(self).__name__, "lr", lr)
        _check(type(self).__name__, "lr", lr, not lr < 0, ">= 0 (a learning rate)")
        self.lr = lr
        self.initial_lr: float | None = None
        self.state: dict[int, dict[str, Any]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient.

        Every gradient is checked before any parameter changes: one from another library or
        device, or of another shape or dtype than its parameter's data, raises (broadcasting
        or type promotion would otherwise silently reshape or retype the parameter).
        """
        op = f"{type(self).__name__}.step"
        todo = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if not (hasattr(g, "shape") and hasattr(g, "dtype")):
                raise TypeError(
                    f"{op}: parameter {i} has a .grad of type {type(g).__name__}, not an array"
                )
            # looked up each step: the model may have moved (Module.to) since __init__
            xp = get_namespace(
                p.data, g, op=op, names=[f"parameter {i} (data)", f"parameter {i} (grad)"]
            )
            if tuple(g.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"{op}: parameter {i} has a gradient of shape {tuple(g.shape)} but its "
                    f"data has shape {tuple(p.data.shape)}"
                )
            if g.dtype != p.data.dtype:
                raise TypeError(
                    f"{op}: parameter {i} has a gradient of dtype {g.dtype} but its data has "
                    f"dtype {p.data.dtype}; cast the gradient to the parameter's dtype"
                )
            todo.append((p, xp))
        for p, xp in todo:
            self._update(p, self.state.setdefault(id(p), {}), xp)
            if p.data.ndim == 0:  # NumPy turns 0-d arithmetic results into scalars
                p.data = xp.asarray(p.data)

    def _update(self, p: Parameter, state: dict[str, Any], xp: Any) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {i: {name: array or int}}, "param_groups": [{"lr": ..., ...,
        "params": [0, ..., n-1]}]}``, torch's layout, one group; ``i`` is a parameter's
        position in ``params``. The arrays are the optimizer's own (not copies)."""
        state = {
            i: dict(self.state[id(p)]) for i, p in enumerate(self.params) if self.state.get(id(p))
        }
        group: dict[str, Any] = {"lr": self.lr}
        group.update((k, getattr(self, k)) for k in self._hyper)
        if self.initial_lr is not None:
            group["initial_lr"] = self.initial_lr
        group["params"] = list(range(len(self.params)))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, or a torch optimizer's ``state_dict()`` for
        the same parameters in the same order (one param group).

        Arrays of any library are moved to each parameter's library and device and cast to
        its dtype (a torch ``step`` tensor becomes an int); hyperparameters in the group
        replace the optimizer's, as in torch. Everything is checked before anything changes.
        """
        op = f"{type(self).__name__}.load_state_dict"
        groups = state_dict.get("param_groups")
        if not isinstance(groups, (list, tuple)) or len(groups) != 1:
            raise ValueError(
                f"{op}: argument 'state_dict' expected one entry in 'param_groups', got "
                f"{len(groups) if isinstance(groups, (list, tuple)) else type(groups).__name__}"
            )
        (group,) = groups
        ids = list(group.get("params", ()))
        if len(ids) != len(self.params):
            raise ValueError(
                f"{op}: argument 'state_dict' expected state for {len(self.params)} parameters, "
                f"got a group of {len(ids)}"
            )
        hyper = {k: group[k] for k in ("lr", *self._hyper, "initial_lr") if k in group}
        for k in self._fixed:  # what the class itself decides (Adam's L2 or AdamW's decay)
            if k in hyper and bool(hyper.pop(k)) != bool(getattr(self, k)):
                raise ValueError(
                    f"{op}: the state dict has {k}={group[k]!r}, this optimizer "
                    f"{getattr(self, k)!r} (Adam with decoupled weight decay is AdamW here)"
                )
        hyper = {k: self._normalize(k, v) for k, v in hyper.items()}  # before any change
        saved = state_dict.get("state", {})
        new_state: dict[int, dict[str, Any]] = {}
        for i, (pid, p) in enumerate(zip(ids, self.params, strict=True)):
            entry = saved.get(pid, saved.get(str(pid)))  # str: keys that went through JSON
            if entry:
                new_state[id(p)] = self._load_entry(op, i, p, entry)
        self.state = new_state
        for k, v in hyper.items():
            setattr(self, k, v)

    _state_keys: tuple[str, ...] = ()  # the per-parameter state an optimizer keeps
    _fixed: tuple[str, ...] = ()  # group keys a class fixes (checked on load, never set)

    def _load_entry(self, op: str, i: int, p: Parameter, entry: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(entry) - set(self._state_keys))
        if unknown:
            raise ValueError(
                f"{op}: state of parameter {i} expected keys among {list(self._state_keys)}, "
                f"got {unknown}"
            )
        xp, dev = get_namespace(p.data), device(p.data)
        own: dict[str, Any] = {}
        for key, value in entry.items():
            if key == "step":
                try:
                    own[key] = int(float(value))  # a host read, at load time only
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{op}: state 'step' of parameter {i} expected a number, got {value!r}"
                    ) from None
            elif value is None:
                own[key] = None  # torch's SGD without a momentum buffer yet
            else:
                a = to_namespace(value, xp, dev)
                if tuple(a.shape) != p.shape:
                    raise ValueError(
                        f"{op}: state '{key}' of parameter {i} expected shape {p.shape}, "
                        f"got shape {tuple(a.shape)}"
                    )
                own[key] = xp.astype(a, p.dtype, copy=True)
        return own

    @staticmethod
    def _pair(op: str, betas: Any) -> tuple[float, float]:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{op}: argument 'betas' expected two numbers, got {betas!r}")
        return real_option(op, "betas[0]", betas[0]), real_option(op, "betas[1]", betas[1])


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    .. math::
        g &\leftarrow \nabla + \lambda \theta \\
        b &\leftarrow \mu b + (1 - \tau) g \quad (b = g \text{ at the first step}) \\
        g &\leftarrow g + \mu b \ \text{(nesterov)} \quad\text{or}\quad g \leftarrow b \\
        \theta &\leftarrow \theta - \eta g

    with weight decay :math:`\lambda`, momentum :math:`\mu`, dampening :math:`\tau`.
    """

    _hyper = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _state_keys = ("momentum_buffer",)

    def __init__(
        self,
        params: Module | Iterable[Parameter],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ):
        # torch's checks, comparison for comparison (NaN momentum passes, as in torch);
        # dampening is not checked
        name = type(self).__name__
        momentum = real_option(name, "momentum", momentum)
        dampening = real_option(name, "dampening", dampening)
        weight_decay = real_option(name, "weight_decay", weight_decay)
        nesterov = bool_option(name, "nesterov", nesterov)
        _check(name, "momentum", momentum, not momentum < 0, ">= 0")
        _check(name, "weight_decay", weight_decay, not weight_decay < 0, ">= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"{name}: nesterov momentum needs momentum > 0 and zero dampening, got "
                f"momentum={momentum!r}, dampening={dampening!r}"
            )
        super().__init__(params, lr)
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize

    def _update(self, p: Parameter, state: dict[str, Any], xp: Any) -> None:
        g = -p.grad if self.maximize else p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            buf = g if buf is None else self.momentum * buf + (1 - self.dampening) * g
            state["momentum_buffer"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        p.data = p.data - self.lr * g


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

    .. math::
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\eta}{1 - \beta_1^t}
            \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}

    ``amsgrad`` uses the running maximum of :math:`v` in the denominator.
    """

    _decoupled = False
    _hyper = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay")
    _fixed = ("decoupled_weight_decay",)
    _state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    @property
    def decoupled_weight_decay(self) -> bool:
        """False for Adam (L2 added to the gradient), True for AdamW (torch's group key)."""
        return self._decoupled

    def __init__(
        self,
        params: Module | Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
    ):
        name = type(self).__name__
        lr, eps = real_option(name, "lr", lr), real_option(name, "eps", eps)
        betas = self._pair(name, betas)
        weight_decay = real_option(name, "weight_decay", weight_decay)
        # torch's checks, comparison for comparison (NaN fails each)
        _check(name, "lr", lr, 0.0 <= lr, ">= 0 (a learning rate)")
        _check(name, "eps", eps, 0.0 <= eps, ">= 0")
        _check(name, "betas[0]", betas[0], 0.0 <= betas[0] < 1.0, "in [0, 1)")
        _check(name, "betas[1]", betas[1], 0.0 <= betas[1] < 1.0, "in [0, 1)")
        _check(name, "weight_decay", weight_decay, 0.0 <= weight_decay, ">= 0")
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.amsgrad, self.maximize = amsgrad, maximize

    def _update(self, p: Parameter, state: dict[str, Any], xp: Any) -> None:
        g = -p.grad if self.maximize else p.grad
        theta = p.data
        if self.weight_decay:
            if self._decoupled:
                theta = theta * (1 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * theta
        b1, b2 = self.betas
        t = state["step"] = state.get("step", 0) + 1
        m = state.get("exp_avg")
        v = state.get("exp_avg_sq")
        m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
        v = (1 - b2) * (g * g) if v is None else b2 * v + (1 - b2) * (g * g)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        if self.amsgrad:
            vmax = state.get("max_exp_avg_sq")
            v = v if vmax is None else xp.maximum(vmax, v)
            state["max_exp_avg_sq"] = v
        step_size = self.lr / (1 - b1**t)
        denom = xp.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
        p.data = theta - step_size * (m / denom)


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: decoupled weight decay
    :math:`\theta \leftarrow \theta (1 - \eta\lambda)` before the Adam step (default
    :math:`\lambda = 0.01`)."""

    _decoupled = True

    def __init__(
        self,
        params: Module | Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
