"""Elementwise activations. Each keeps exactly what its derivative needs."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._validation import (
    backward_op,
    check_floating,
    cotangent_namespace,
    forward_op,
    op_inputs,
    real_option,
)

__all__ = [
    "elu",
    "elu_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softplus",
    "softplus_backward",
    "tanh",
    "tanh_backward",
]

Array = Any


def _ns(op: str, x: Array) -> tuple[Any, Array]:
    xp, x = op_inputs(op, x=x)
    check_floating(op, "x", x, xp)
    return xp, x


def stable_sigmoid(xp: Any, x: Array) -> Array:
    r""":math:`e^{\min(x,0)} / (1 + e^{-|x|})`: the logistic function without overflow."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def stable_softplus(xp: Any, x: Array) -> Array:
    r""":math:`\log(1 + e^{x}) = \max(x, 0) + \log(1 + e^{-|x|})` without overflow."""
    return xp.where(x > 0, x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


class SigmoidCache(NamedTuple):
    y: Array


@forward_op
def sigmoid(x: Array, /) -> tuple[Array, SigmoidCache]:
    r"""Logistic sigmoid :math:`y = 1 / (1 + e^{-x})`; backward :math:`g \, y (1 - y)`.

    Evaluated as :math:`e^{\min(x,0)} / (1 + e^{-|x|})`, which never overflows.
    """
    xp, x = _ns("sigmoid", x)
    y = stable_sigmoid(xp, x)
    return y, SigmoidCache(y)


@backward_op(SigmoidCache)
def sigmoid_backward(dy: Array, cache: SigmoidCache, /) -> tuple[Array]:
    y = cache.y
    _, dy = cotangent_namespace("sigmoid_backward", dy, y, y.shape, y.dtype)
    return (dy * y * (1 - y),)


class TanhCache(NamedTuple):
    y: Array


@forward_op
def tanh(x: Array, /) -> tuple[Array, TanhCache]:
    r"""Hyperbolic tangent; backward :math:`g (1 - y^2)`."""
    xp, x = _ns("tanh", x)
    y = xp.tanh(x)
    return y, TanhCache(y)


@backward_op(TanhCache)
def tanh_backward(dy: Array, cache: TanhCache, /) -> tuple[Array]:
    y = cache.y
    _, dy = cotangent_namespace("tanh_backward", dy, y, y.shape, y.dtype)
    return (dy * (1 - y * y),)


class ReluCache(NamedTuple):
    mask: Array  # not (x <= 0): as torch, NaN passes the gradient through
    dtype: Any  # the output's


@forward_op
def relu(x: Array, /) -> tuple[Array, ReluCache]:
    r""":math:`\max(x, 0)`; backward :math:`g [x > 0]` (zero at ``x == 0``, as torch)."""
    xp, x = _ns("relu", x)
    mask = ~(x <= 0)
    # where(), not maximum(): maximum(nan, 0) is 0 on some backends; NaN must propagate.
    return xp.where(x < 0, xp.zeros_like(x), x), ReluCache(mask, x.dtype)


@backward_op(ReluCache)
def relu_backward(dy: Array, cache: ReluCache, /) -> tuple[Array]:
    xp, dy = cotangent_namespace("relu_backward", dy, cache.mask, cache.mask.shape, cache.dtype)
    return (xp.where(cache.mask, dy, xp.zeros_like(dy)),)


class LeakyReluCache(NamedTuple):
    mask: Array
    negative_slope: float
    dtype: Any  # the output's


@forward_op
def leaky_relu(x: Array, /, negative_slope: float = 0.01) -> tuple[Array, LeakyReluCache]:
    r""":math:`x` where :math:`x > 0`, else :math:`\alpha x`; backward :math:`g` or :math:`\alpha g`."""
    xp, x = _ns("leaky_relu", x)
    negative_slope = real_option("leaky_relu", "negative_slope", negative_slope)
    mask = x > 0
    return xp.where(x < 0, negative_slope * x, x), LeakyReluCache(mask, negative_slope, x.dtype)


@backward_op(LeakyReluCache)
def leaky_relu_backward(dy: Array, cache: LeakyReluCache, /) -> tuple[Array]:
    xp, dy = cotangent_namespace(
        "leaky_relu_backward", dy, cache.mask, cache.mask.shape, cache.dtype
    )
    return (xp.where(cache.mask, dy, cache.negative_slope * dy),)


class EluCache(NamedTuple):
    x: Array
    alpha: float


@forward_op
def elu(x: Array, /, alpha: float = 1.0) -> tuple[Array, EluCache]:
    r""":math:`x` where :math:`x > 0`, else :math:`\alpha (e^{x} - 1)`.

    Backward: :math:`g` where :math:`x > 0`, else :math:`g\,\alpha e^{x}` (from ``x``, not as
    :math:`y + \alpha`, which cancels to nothing for very negative ``x``).
    """
    xp, x = _ns("elu", x)
    alpha = real_option("elu", "alpha", alpha)
    neg = xp.minimum(x, xp.zeros_like(x))
    y = xp.where(x > 0, x, alpha * xp.expm1(neg))
    y = xp.where(xp.isnan(x), x, y)
    return y, EluCache(x, alpha)


@backward_op(EluCache)
def elu_backward(dy: Array, cache: EluCache, /) -> tuple[Array]:
    x, alpha = cache
    xp, dy = cotangent_namespace("elu_backward", dy, x, x.shape, x.dtype)
    slope = alpha * xp.exp(xp.minimum(x, xp.zeros_like(x)))
    return (xp.where(x <= 0, dy * slope, dy),)  # NaN takes the identity branch, as torch


class SoftplusCache(NamedTuple):
    x: Array
    beta: float
    threshold: float


@forward_op
def softplus(
    x: Array, /, beta: float = 1.0, threshold: float = 20.0
) -> tuple[Array, SoftplusCache]:
    r""":math:`\frac{1}{\beta}\log(1 + e^{\beta x})`, and :math:`x` where :math:`\beta x > \text{threshold}`.

    As torch, the linear branch above the threshold avoids overflow. Backward:
    :math:`g\,\sigma(\beta x)` (and :math:`g` on the linear branch).
    """
    xp, x = _ns("softplus", x)
    beta = real_option("softplus", "beta", beta)
    threshold = real_option("softplus", "threshold", threshold)
    bx = beta * x
    soft = stable_softplus(xp, bx) / beta
    return xp.where(bx > threshold, x, soft), SoftplusCache(x, beta, threshold)


@backward_op(SoftplusCache)
def softplus_backward(dy: Array, cache: SoftplusCache, /) -> tuple[Array]:
    x, beta, threshold = cache
    xp, dy = cotangent_namespace("softplus_backward", dy, x, x.shape, x.dtype)
    bx = beta * x
    return (xp.where(bx > threshold, dy, dy * stable_sigmoid(xp, bx)),)
