"""The dense (fully connected) layer."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._validation import (
    backward_op,
    check_floating,
    check_ndim,
    check_same_dtype,
    cotangent_namespace,
    forward_op,
    op_inputs,
    shape_error,
)

__all__ = ["linear", "linear_backward"]

Array = Any


class LinearCache(NamedTuple):
    x: Array  # the weight gradient needs the input
    weight: Array  # the input gradient needs the weight
    has_bias: bool


@forward_op
def linear(x: Array, weight: Array, bias: Array | None = None) -> tuple[Array, LinearCache]:
    r"""Affine map :math:`y = x W^\top + b`, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : array, shape (..., in_features)
    weight : array, shape (out_features, in_features)
    bias : array, shape (out_features,), optional

    Returns
    -------
    y : array, shape (..., out_features)
    cache : LinearCache

    Notes
    -----
    With :math:`\delta = \partial L/\partial y` and the leading axes flattened into rows:
    :math:`\partial L/\partial x = \delta W`, :math:`\partial L/\partial W = \delta^\top x`
    (one GEMM over the whole batch), :math:`\partial L/\partial b = \sum_{\text{rows}} \delta`.
    """
    xp, x, weight, bias = op_inputs("linear", x=x, weight=weight, bias=bias, optional=("bias",))
    check_floating("linear", "x", x, xp)
    check_floating("linear", "weight", weight, xp)
    check_ndim("linear", "weight", weight, 2, "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise shape_error(
            "linear", "x", f"shape (..., {weight.shape[1]}) to match weight", tuple(x.shape)
        )
    check_same_dtype("linear", "weight", weight, "x", x)
    if bias is not None:
        check_same_dtype("linear", "bias", bias, "x", x)
        if tuple(bias.shape) != (weight.shape[0],):
            raise shape_error("linear", "bias", f"shape ({weight.shape[0]},)", tuple(bias.shape))
    y = xp.matmul(x, weight.T)
    if bias is not None:
        y = y + bias
    return y, LinearCache(x, weight, bias is not None)


@backward_op(LinearCache)
def linear_backward(dy: Array, cache: LinearCache, /) -> tuple[Array, Array, Array | None]:
    x, weight, has_bias = cache
    out_features, in_features = weight.shape
    shape = (*x.shape[:-1], out_features)
    xp, dy = cotangent_namespace("linear_backward", dy, x, shape, x.dtype)
    dx = xp.matmul(dy, weight)
    rows = math.prod(x.shape[:-1])  # not -1: reshape cannot infer it from an empty array
    dy2 = xp.reshape(dy, (rows, out_features))
    dweight = xp.matmul(dy2.T, xp.reshape(x, (rows, in_features)))
    dbias = xp.sum(dy2, axis=0) if has_bias else None
    return dx, dweight, dbias
