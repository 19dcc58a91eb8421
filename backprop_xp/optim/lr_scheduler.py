"""Learning-rate schedules: call ``scheduler.step()`` once per epoch, after ``opt.step()``.

The schedules are torch's *chainable* forms: each ``step()`` computes the new ``lr`` from the
optimizer's current ``lr``, so several schedules on one optimizer compose as in torch, and a
change made to ``opt.lr`` between steps carries on. The first schedule attached to an
optimizer records ``opt.lr`` at that moment as ``opt.initial_lr`` (torch's
``group.setdefault("initial_lr", group["lr"])``); every schedule's ``base_lr`` is that value.
"""

from __future__ import annotations

import math
from typing import Any

from ..functional._validation import int_option, real_option
from .optimizer import Optimizer

__all__ = ["CosineAnnealingLR", "LRScheduler", "StepLR"]


class LRScheduler:
    """Rewrites ``optimizer.lr`` at each ``step()`` from the epoch counter ``last_epoch``.

    Attaching a schedule leaves ``optimizer.lr`` as it is (``last_epoch`` starts at 0).
    """

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        if optimizer.initial_lr is None:
            optimizer.initial_lr = optimizer.lr
        self.base_lr: float = optimizer.initial_lr
        self.last_epoch = 0
        self._last_lr = [optimizer.lr]

    def get_lr(self) -> float:
        """The learning rate for epoch ``last_epoch``, from the optimizer's current ``lr``."""
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """``[lr]`` as this schedule last set it (a list, one entry per parameter group, as
        torch's; backprop_xp optimizers have one group)."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's settings, ``base_lrs``, ``last_epoch``, ``_step_count`` and
        ``_last_lr`` under torch's keys (one group), so torch's scheduler of the same kind
        loads it, and :meth:`load_state_dict` loads torch's."""
        own = {k: v for k, v in vars(self).items() if k not in ("optimizer", "base_lr")}
        return {**own, "base_lrs": [self.base_lr], "_step_count": self.last_epoch + 1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output or a torch scheduler's ``state_dict()`` (the
        same kind of schedule, one group); torch's bookkeeping keys are ignored."""
        op = f"{type(self).__name__}.load_state_dict"
        own = {k for k in vars(self) if k not in ("optimizer", "base_lr")}
        missing = sorted(own - set(state_dict))
        if missing or len(state_dict.get("base_lrs", ())) != 1:
            raise ValueError(
                f"{op}: argument 'state_dict' expected the keys {sorted(own)} and one entry in "
                f"'base_lrs', got keys {sorted(state_dict)}"
            )
        for k in own:
            setattr(self, k, state_dict[k])
        self.base_lr = state_dict["base_lrs"][0]
        self._last_lr = list(self._last_lr)

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()
        self._last_lr = [self.optimizer.lr]


class StepLR(LRScheduler):
    r"""Multiply ``lr`` by ``gamma`` every ``step_size`` epochs (torch's ``StepLR``).

    Alone on an optimizer this gives :math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`.
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = int_option("StepLR", "step_size", step_size, low=1)
        self.gamma = real_option("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` epochs, torch's
    recursive form.

    .. math::
        \eta_{t} = \eta_{min} + (\eta_{t-1} - \eta_{min})
            \frac{1 + \cos(\pi t / T_{max})}{1 + \cos(\pi (t - 1) / T_{max})}

    and, at the epochs where that ratio is 0/0 (:math:`(t - 1 - T_{max}) \bmod 2T_{max} = 0`),
    :math:`\eta_t = \eta_{t-1} + (\eta_0 - \eta_{min})(1 - \cos(\pi / T_{max}))/2`. Alone on an
    optimizer this is the closed form
    :math:`\eta_t = \eta_{min} + (\eta_0 - \eta_{min})(1 + \cos(\pi t / T_{max}))/2`
    (which rises again after ``T_max``).
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        self.T_max = int_option("CosineAnnealingLR", "T_max", T_max, low=1)
        self.eta_min = real_option("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        lr, t, T = self.optimizer.lr, self.last_epoch, self.T_max
        if t == 0:
            return lr
        if (t - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T)) * (
            lr - self.eta_min
        ) + self.eta_min
