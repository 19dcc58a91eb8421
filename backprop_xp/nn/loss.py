"""Loss layers: ``loss, backprop = criterion(input, target)``; ``d_input = backprop()``.

``backprop(dloss=None)`` takes the gradient of whatever is computed from the loss (``None``
means 1, the usual ``loss.backward()``) and returns the gradient of ``input`` only; targets
and class weights get none. With ``reduction="none"`` pass ``dloss`` of the loss's shape.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..backend import device, get_namespace, namespace, to_namespace
from .module import Backprop, Module, check_float_dtype, once

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]

Array = Any


class _Loss(Module):
    _op = ""
    _arrays: tuple[str, ...] = ()  # non-parameter arrays (class weights) that .to() moves

    def _options(self) -> dict[str, Any]:
        return {}

    def forward(self, input: Array, target: Array) -> tuple[Array, Backprop]:
        loss, cache = getattr(F, self._op)(input, target, **self._options())
        backward = getattr(F, self._op + "_backward")

        def backprop(dloss: Array | None = None) -> Array:
            xp = get_namespace(loss)
            if dloss is None:
                dloss = xp.ones_like(loss)
            elif isinstance(dloss, (int, float)):  # backprop(1), as docs/nn.md shows
                dloss = xp.asarray(dloss, dtype=loss.dtype, device=device(loss))
            return backward(dloss, cache)[0]

        return loss, once(type(self).__name__, backprop)

    def _moved(self, backend: Any, device: Any, dtype: Any = None) -> None:
        for name in self._arrays:
            a = getattr(self, name)
            if a is None:
                continue
            xp = namespace(backend) if isinstance(backend, str) else backend
            if xp is None:
                xp = get_namespace(a)
            if backend is not None or device is not None:
                a = to_namespace(a, xp, device)
            if dtype is not None:  # class weights follow the model's dtype, as torch's buffers
                a = xp.astype(a, check_float_dtype(f"{type(self).__name__}.to", xp, dtype))
            object.__setattr__(self, name, a)


class CrossEntropyLoss(_Loss):
    """``F.cross_entropy``: softmax cross-entropy of logits ``(N, C, ...)`` against class
    indices or probabilities (torch's ``nn.CrossEntropyLoss``)."""

    _op = "cross_entropy"
    _arrays = ("weight",)

    def __init__(
        self,
        weight: Array | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.weight = weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def _options(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
        }


class BCEWithLogitsLoss(_Loss):
    """``F.binary_cross_entropy_with_logits`` (torch's ``nn.BCEWithLogitsLoss``)."""

    _op = "binary_cross_entropy_with_logits"
    _arrays = ("weight", "pos_weight")

    def __init__(
        self,
        weight: Array | None = None,
        reduction: str = "mean",
        pos_weight: Array | None = None,
    ):
        super().__init__()
        self.weight = weight
        self.reduction = reduction
        self.pos_weight = pos_weight

    def _options(self) -> dict[str, Any]:
        return {"weight": self.weight, "reduction": self.reduction, "pos_weight": self.pos_weight}


class MSELoss(_Loss):
    """``F.mse_loss`` (torch's ``nn.MSELoss``)."""

    _op = "mse_loss"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def _options(self) -> dict[str, Any]:
        return {"reduction": self.reduction}
