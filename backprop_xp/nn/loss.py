"""Loss layers: ``loss, backprop = criterion(input, target)``; ``d_input = backprop()``.

``backprop(dloss=None)`` takes the gradient of whatever is computed from the loss (``None``
means 1, the usual ``loss.backward()``) and returns the gradient of ``input`` only; targets
and class weights get none. With ``reduction="none"`` pass ``dloss`` of the loss's shape.

Class weights (``weight``, ``pos_weight``) are buffers, as in torch: in ``state_dict`` under
torch's keys when given, moved and cast by ``.to``.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..backend import get_namespace
from ..functional._validation import int_option, real_option
from .module import Backprop, Module, once

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]

Array = Any


class _Loss(Module):
    _op = ""

    def _options(self) -> dict[str, Any]:
        return {}

    def forward(self, input: Array, target: Array) -> tuple[Array, Backprop]:
        loss, cache = getattr(F, self._op)(input, target, **self._options())
        backward = getattr(F, self._op + "_backward")

        def backprop(dloss: Array | None = None) -> Array:
            # None is loss.backward()'s implicit 1; a number (backprop(1), as docs/nn.md
            # shows) the op's backward takes itself for a 0-d loss
            return backward(get_namespace(loss).ones_like(loss) if dloss is None else dloss, cache)[
                0
            ]

        return loss, once(type(self).__name__, backprop)


class CrossEntropyLoss(_Loss):
    """``F.cross_entropy``: softmax cross-entropy of logits ``(N, C, ...)`` against class
    indices or probabilities (torch's ``nn.CrossEntropyLoss``)."""

    weight: Array | None

    _op = "cross_entropy"

    def __init__(
        self,
        weight: Array | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.register_buffer("weight", weight)  # torch's buffer: in state_dict when given
        self.ignore_index = int_option("CrossEntropyLoss", "ignore_index", ignore_index)
        self.reduction = reduction
        self.label_smoothing = real_option(
            "CrossEntropyLoss", "label_smoothing", label_smoothing, low=0.0, high=1.0
        )

    def _options(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
        }


class BCEWithLogitsLoss(_Loss):
    """``F.binary_cross_entropy_with_logits`` (torch's ``nn.BCEWithLogitsLoss``)."""

    weight: Array | None
    pos_weight: Array | None

    _op = "binary_cross_entropy_with_logits"

    def __init__(
        self,
        weight: Array | None = None,
        reduction: str = "mean",
        pos_weight: Array | None = None,
    ):
        super().__init__()
        self.register_buffer("weight", weight)  # torch's buffers: in state_dict when given
        self.reduction = reduction
        self.register_buffer("pos_weight", pos_weight)

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
