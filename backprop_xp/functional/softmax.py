"""Softmax, log-softmax, and the 2-class softmax logits that make a sigmoid."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import device
from ._validation import (
    backward_op,
    check_floating,
    cotangent_namespace,
    forward_op,
    normalize_axis,
    op_inputs,
    torch_alias,
)

__all__ = [
    "log_softmax",
    "log_softmax_backward",
    "sigmoid_as_softmax_logits",
    "sigmoid_as_softmax_logits_backward",
    "softmax",
    "softmax_backward",
]

Array = Any


class SoftmaxCache(NamedTuple):
    y: Array  # the backward needs only the output
    axis: int


@forward_op
def softmax(x: Array, /, axis: int = -1, *, dim: int | None = None) -> tuple[Array, SoftmaxCache]:
    r"""Softmax along ``axis``: :math:`y_i = e^{x_i - m} / \sum_j e^{x_j - m}`, :math:`m = \max_j x_j`.

    Subtracting the maximum changes nothing mathematically and keeps :math:`e^{x - m} \le 1`,
    so large logits do not overflow. A row of all ``-inf`` gives NaN, like torch.

    Parameters
    ----------
    x : array, any shape, real floating
    axis : int
        The axis that sums to one; ``dim=`` (torch's name) is accepted too.

    Returns
    -------
    y : array, shape of ``x``
    cache : SoftmaxCache

    Notes
    -----
    Backward: :math:`\partial L/\partial x = y \odot (g - \langle g, y\rangle)`.
    """
    xp, x = op_inputs("softmax", x=x)
    check_floating("softmax", "x", x, xp)
    name = "axis" if dim is None else "dim"
    axis = torch_alias("softmax", "axis", axis, -1, "dim", dim)
    axis = normalize_axis("softmax", axis, x.ndim, name)
    if x.ndim == 0 or x.shape[axis] == 0:
        # one element: exp(x - x) is 1, or NaN for NaN and ±inf as in torch; no elements:
        # an empty result (max over nothing has no value)
        y = xp.exp(x - x)
        return y, SoftmaxCache(y, axis)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    y = e / xp.sum(e, axis=axis, keepdims=True)
    return y, SoftmaxCache(y, axis)


@backward_op(SoftmaxCache)
def softmax_backward(dy: Array, cache: SoftmaxCache, /) -> tuple[Array]:
    y, axis = cache
    xp, dy = cotangent_namespace("softmax_backward", dy, y, y.shape, y.dtype)
    if y.ndim == 0:
        return (y * (dy - dy * y),)
    return (y * (dy - xp.sum(dy * y, axis=axis, keepdims=True)),)


class LogSoftmaxCache(NamedTuple):
    y: Array  # log-probabilities; the backward needs exp(y)
    axis: int


@forward_op
def log_softmax(
    x: Array, /, axis: int = -1, *, dim: int | None = None
) -> tuple[Array, LogSoftmaxCache]:
    r"""Log-softmax along ``axis``: :math:`y_i = x_i - m - \log \sum_j e^{x_j - m}`.

    Computed directly (never as ``log(softmax(x))``), so it stays finite where the softmax
    underflows to zero.

    Notes
    -----
    Backward: :math:`\partial L/\partial x = g - e^{y} \sum_j g_j`.
    """
    xp, x = op_inputs("log_softmax", x=x)
    check_floating("log_softmax", "x", x, xp)
    name = "axis" if dim is None else "dim"
    axis = torch_alias("log_softmax", "axis", axis, -1, "dim", dim)
    axis = normalize_axis("log_softmax", axis, x.ndim, name)
    if x.ndim == 0 or x.shape[axis] == 0:  # 0, or NaN for NaN and ±inf, as in torch
        y = x - x
        return y, LogSoftmaxCache(y, axis)
    z = x - xp.max(x, axis=axis, keepdims=True)
    y = z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
    return y, LogSoftmaxCache(y, axis)


@backward_op(LogSoftmaxCache)
def log_softmax_backward(dy: Array, cache: LogSoftmaxCache, /) -> tuple[Array]:
    y, axis = cache
    xp, dy = cotangent_namespace("log_softmax_backward", dy, y, y.shape, y.dtype)
    if y.ndim == 0:
        return (dy - xp.exp(y) * dy,)
    return (dy - xp.exp(y) * xp.sum(dy, axis=axis, keepdims=True),)


class SigmoidAsSoftmaxCache(NamedTuple):
    shape: tuple[int, ...]  # of z
    like: Array  # zero-size, of z's library, dtype and device (for the backward's check)


@forward_op
def sigmoid_as_softmax_logits(z: Array, /) -> tuple[Array, SigmoidAsSoftmaxCache]:
    r"""The 2-class logits ``[z, 0]`` (on a new last axis) whose softmax is ``[σ(z), 1 − σ(z)]``.

    Since :math:`e^{z} / (e^{z} + e^{0}) = 1 / (1 + e^{-z}) = \sigma(z)`, a sigmoid unit is a
    2-class softmax with one logit pinned to zero. The map from 2-class logits to
    probabilities is many-to-one: adding a constant to both logits changes nothing, so pinning
    one of them loses no generality.

    Parameters
    ----------
    z : array, shape (*)

    Returns
    -------
    logits : array, shape (*, 2)
    """
    xp, z = op_inputs("sigmoid_as_softmax_logits", z=z)
    check_floating("sigmoid_as_softmax_logits", "z", z, xp)
    logits = xp.stack([z, xp.zeros_like(z)], axis=-1)
    return logits, SigmoidAsSoftmaxCache(
        tuple(z.shape), xp.empty((0,), dtype=z.dtype, device=device(z))
    )


@backward_op(SigmoidAsSoftmaxCache)
def sigmoid_as_softmax_logits_backward(
    dlogits: Array, cache: SigmoidAsSoftmaxCache, /
) -> tuple[Array]:
    shape = (*cache.shape, 2)
    op = "sigmoid_as_softmax_logits_backward"
    _, dlogits = cotangent_namespace(op, dlogits, cache.like, shape, cache.like.dtype, "dlogits")
    return (dlogits[..., 0],)
