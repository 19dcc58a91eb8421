r"""Normalization: batch norm, layer norm, group norm and RMS norm, as ``torch.nn.functional``.

Notation
--------
- :math:`\hat x = (x - \mu)\,\sigma^{-1}`, :math:`\sigma^{-1} = 1/\sqrt{v + \epsilon}`: the
  input normalized by the mean :math:`\mu` and biased variance :math:`v` of a set of
  :math:`M` elements (a channel over the batch and positions for batch norm; a sample's
  trailing axes for layer norm; a sample's group of channels for group norm).
- :math:`y = w \odot \hat x + b`: the optional affine map, :math:`g = w \odot \partial L/\partial y`
  the gradient reaching :math:`\hat x`.

The backwards are one closed form each, derived in ``docs/derivations.md``:
:math:`\partial L/\partial x = \sigma^{-1} \left(g - \overline{g} - \hat x\,
\overline{g \hat x}\right)`, the bars being means over the same :math:`M` elements.

Every op works on a 3-d view of its input, ``(N, C, P)`` for batch norm (positions ``P``
flattened) and ``(rows, M)`` for the others, so the statistics are sums over contiguous
axes: a vector dot product (``vecdot``) over the last axis gives :math:`\sum x^2` and
:math:`\sum g \hat x` without a temporary. Temporaries the op made itself are updated in
place (``a *= s``; an immutable array is rebound instead), since on the CPU a fresh array
costs page faults that cost more than the arithmetic. float16 (and other narrow) inputs are
computed in float32 and the results cast back, as torch does.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

from array_api_compat import is_writeable_array

from ..backend import device
from ._validation import (
    backward_op,
    bool_option,
    check_floating,
    check_same_dtype,
    cotangent_namespace,
    forward_op,
    int_option,
    op_inputs,
    real_option,
    shape_error,
    tuple_cotangents,
)
from .losses import _accumulator

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "group_norm",
    "group_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
]

Array = Any


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _working(xp: ModuleType, a: Array | None, dtype: Any) -> Any:
    """``a`` in the dtype the op computes in (float32 for float16 input), no copy if it is;
    None stays None."""
    return None if a is None else xp.astype(a, dtype, copy=False)


def _out(xp: ModuleType, a: Array | None, dtype: Any) -> Any:
    """A result back in the input's dtype."""
    return None if a is None else xp.astype(a, dtype, copy=False)


def _check_params(
    op: str, x: Array, shape: tuple[int, ...], expected: str, **params: Array | None
) -> None:
    """Optional parameter arrays: ``x``'s dtype and the given shape."""
    for name, a in params.items():
        if a is None:
            continue
        check_same_dtype(op, name, a, "x", x)
        if tuple(a.shape) != shape:
            raise shape_error(op, name, f"shape {shape} ({expected})", f"shape {tuple(a.shape)}")


def _row_moments(xp: ModuleType, x2: Array, eps: float) -> tuple[Array, Array, Array]:
    """``(mean, invstd, xc)`` of the rows of ``x2 (R, D)``: ``mean`` and ``invstd`` of shape
    ``(R, 1)``, ``xc = x2 - mean`` a new array (the caller's to turn into the output in place).
    Two passes for the moments (the mean first, then the squares of the centred values), so
    a large mean costs no precision."""
    n = max(x2.shape[-1], 1)  # an empty row: sums of nothing are 0, never 0/0
    mean = xp.sum(x2, axis=-1, keepdims=True) / n
    xc = x2 - mean
    invstd = 1.0 / xp.sqrt(xp.vecdot(xc, xc, axis=-1)[:, None] / n + eps)
    return mean, invstd, xc


def _xhat(xp: ModuleType, x2: Array, mean: Array, invstd: Array) -> Array:
    r""":math:`\hat x = (x - \mu)\,\sigma^{-1}` of the rows, recomputed as a new array (the
    forward keeps ``x``, ``mean`` and ``invstd``, as torch does, not a copy of :math:`\hat x`)."""
    xhat = x2 - mean
    xhat *= invstd
    return xhat


def _rows_dx(
    xp: ModuleType, xhat: Array, invstd: Array, g: Array, mean_g: Array, mean_gx: Array
) -> Array:
    r""":math:`\partial L/\partial x = \sigma^{-1}(g - \overline{g} - \hat x\,\overline{g\hat x})`,
    written over ``xhat``, the op's own array (its last use): no fresh memory."""
    xhat *= -mean_gx
    xhat -= mean_g
    xhat += g
    xhat *= invstd
    return xhat


def _row_means(xp: ModuleType, g: Array, xhat: Array) -> tuple[Array, Array]:
    """Row means of ``g`` and of ``g ⊙ xhat``, ``(R, 1)`` each (a sum and a dot product)."""
    n = max(g.shape[-1], 1)
    return (
        xp.sum(g, axis=-1, keepdims=True) / n,
        xp.vecdot(g, xhat, axis=-1)[:, None] / n,
    )


def _overwrite(xp: ModuleType, buffer: Array, value: Array) -> Array:
    """``value`` copied into ``buffer``, a temporary of the op's own of the same shape and
    dtype, where the library allows the write (one pass, no fresh memory); else a new copy."""
    if is_writeable_array(buffer):
        buffer[...] = value
        return buffer
    return xp.asarray(value, copy=True)


def _channel_sum(xp: ModuleType, a3: Array) -> Array:
    """Sum of ``a3 (N, C, P)`` over the batch and positions: ``(C,)``. Over the positions
    as a dot product with ones: NumPy's ``vecdot`` runs it at ``vecdot``'s speed, about
    twice that of its multi-axis ``sum`` (0.18-0.3 against 0.35 ms for 8 MiB)."""
    if a3.shape[2] == 1:
        return xp.sum(a3[:, :, 0], axis=0)
    ones = xp.ones((a3.shape[2],), dtype=a3.dtype, device=device(a3))
    return xp.sum(xp.vecdot(a3, ones, axis=-1), axis=0)


def _channel_dot(xp: ModuleType, a3: Array, b3: Array) -> Array:
    """:math:`\\sum_{n,p} a_{ncp} b_{ncp}`: ``(C,)``, without an ``(N, C, P)`` temporary."""
    if a3.shape[2] == 1:  # (N, C) input: a dot over a length-1 axis is all overhead
        return xp.sum(a3[:, :, 0] * b3[:, :, 0], axis=0)
    return xp.sum(xp.vecdot(a3, b3, axis=-1), axis=0)


def _normalized_shape(op: str, value: Any) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of ints: an int or a sequence of them, not empty."""
    if isinstance(value, (tuple, list)):
        shape = tuple(int_option(op, "normalized_shape", v, low=0) for v in value)
    else:
        shape = (int_option(op, "normalized_shape", value, low=0),)
    if not shape:
        raise shape_error(op, "normalized_shape", "at least one dimension", "()")
    return shape


def _trailing(op: str, x: Array, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, D)``: ``x``'s trailing dims must be ``shape``; ``D`` is their product."""
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != shape:
        dims = ", ".join(map(str, shape))
        raise shape_error(
            op,
            "x",
            f"shape (*, {dims}) (trailing dims equal to normalized_shape {shape})",
            f"shape {tuple(x.shape)}",
        )
    return math.prod(x.shape[: x.ndim - k]), math.prod(shape)


# ---------------------------------------------------------------------------------------------
# Batch norm


class BatchNormCache(NamedTuple):
    # the input (N, C, P) and the statistics it was normalized with (C,); x̂ = (x - mean) ·
    # invstd is recomputed, as torch does: a cached x̂ would cost a fresh array per forward
    x: Array  # None in evaluation without a weight (dx = dy · scale needs no x)
    mean: Array  # None with x
    invstd: Array
    scale: Array  # (C,): weight · invstd (or invstd), dy's factor in dx
    shape: tuple[int, ...]  # of x
    dtype: Any  # of x: the gradients' dtype
    training: bool  # batch statistics (which depend on x) or constants
    has_weight: bool
    has_bias: bool
    tuple_out: bool  # the forward returned (y, new_running_mean, new_running_var)


@forward_op
def batch_norm(
    x: Array,
    running_mean: Array | None,
    running_var: Array | None,
    weight: Array | None = None,
    bias: Array | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Any, BatchNormCache]:
    r"""Batch normalization over the batch and positions of each channel, as
    ``torch.nn.functional.batch_norm``.

    .. math::
        y_{ncp} = w_c\, \frac{x_{ncp} - \mu_c}{\sqrt{v_c + \epsilon}} + b_c

    In training (``training=True``) :math:`\mu_c, v_c` are the mean and biased variance of
    channel :math:`c` over the :math:`M = N \cdot |S|` elements of the batch; otherwise the
    running statistics.

    Parameters
    ----------
    x : array, shape (N, C), (N, C, L) or (N, C, *S), real floating
    running_mean, running_var : arrays, shape (C,), or None
        Required in evaluation mode. Never modified: in training they are the previous
        estimates, and the forward returns the updated ones as new arrays,
        :math:`(1 - m)\,\text{running} + m\,\text{batch}` with the batch's *unbiased*
        variance :math:`v_c M/(M-1)` (torch's update).
    weight, bias : arrays, shape (C,), optional
    training : bool
    momentum : float
        :math:`m` above (torch's functional takes a number; the cumulative average of
        ``momentum=None`` is the layer's, :class:`backprop_xp.nn.BatchNorm1d`).
    eps : float
        Added to the variance: > 0 in training, >= 0 otherwise, as torch.

    Returns
    -------
    out : array, or (y, new_running_mean, new_running_var)
        ``y`` of ``x``'s shape; the tuple in training when running statistics are given.
    cache : BatchNormCache

    Notes
    -----
    Backward (:func:`batch_norm_backward`), in training, with the sums over a channel's
    :math:`M` elements: :math:`\partial L/\partial x = \frac{w\sigma^{-1}}{M}(M\,\delta -
    \sum\delta - \hat x \sum \delta\hat x)`, :math:`\partial L/\partial w = \sum\delta\hat x`,
    :math:`\partial L/\partial b = \sum\delta`. In evaluation the op is an affine map of
    :math:`x`: :math:`\partial L/\partial x = w\sigma^{-1}\delta`. The running statistics
    get no gradient (as in torch). An empty batch leaves them unchanged, as in torch.
    float16 input is normalized in float32. In evaluation ``y`` is computed as torch's CPU
    kernel does, :math:`x\,\alpha + \beta` with :math:`\alpha = w\sigma^{-1}`,
    :math:`\beta = b - \mu\alpha`.
    """
    op = "batch_norm"
    xp, x, running_mean, running_var, weight, bias = op_inputs(
        op,
        x=x,
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
        optional=("running_mean", "running_var", "weight", "bias"),
    )
    check_floating(op, "x", x, xp)
    training = bool_option(op, "training", training)
    momentum = real_option(op, "momentum", momentum)
    # torch: "eps must be positive during training", "non-negative" otherwise
    eps = real_option(op, "eps", eps, low=0.0, low_open=training)
    if x.ndim < 2:
        raise shape_error(op, "x", "shape (N, C) or (N, C, *spatial)", f"shape {tuple(x.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            f"{op}: arguments 'running_mean' and 'running_var' expected both arrays or both "
            f"None, got {'None' if running_mean is None else 'an array'} and "
            f"{'None' if running_var is None else 'an array'}"
        )
    if not training and running_mean is None:
        raise ValueError(
            f"{op}: argument 'running_mean' expected an array in evaluation mode "
            f"(training=False), got None"
        )
    N, C = int(x.shape[0]), int(x.shape[1])
    P = math.prod(x.shape[2:])
    M = N * P
    _check_params(
        op,
        x,
        (C,),
        "one per channel",
        running_mean=running_mean,
        running_var=running_var,
        weight=weight,
        bias=bias,
    )
    if training and M == 1:
        raise shape_error(
            op, "x", "more than 1 value per channel when training", f"shape {tuple(x.shape)}"
        )
    wd = _accumulator(xp, x.dtype)
    x3 = xp.reshape(_working(xp, x, wd), (N, C, P))
    w, b = _working(xp, weight, wd), _working(xp, bias, wd)

    if not training:
        rm, rv = _working(xp, running_mean, wd), _working(xp, running_var, wd)
        invstd = 1.0 / xp.sqrt(rv + eps)
        alpha = invstd if w is None else w * invstd
        beta = -rm * alpha if b is None else b - rm * alpha
        y3 = x3 * alpha[:, None]
        y3 += beta[:, None]
        y = _out(xp, xp.reshape(y3, x.shape), x.dtype)
        keep = w is not None  # the weight's gradient needs x̂
        cache = BatchNormCache(
            x3 if keep else None, rm if keep else None, invstd, alpha, tuple(x.shape),
            x.dtype, False, w is not None, b is not None, False,
        )  # fmt: skip
        return y, cache

    n = max(M, 1)  # an empty batch: sums of nothing are 0, never 0/0
    mean = _channel_sum(xp, x3) / n
    y3 = x3 - mean[:, None]
    var = _channel_dot(xp, y3, y3) / n
    invstd = 1.0 / xp.sqrt(var + eps)
    scale = invstd if w is None else w * invstd
    y3 *= scale[:, None]  # the centred values become the output in place
    if b is not None:
        y3 += b[:, None]
    y = _out(xp, xp.reshape(y3, x.shape), x.dtype)
    tuple_out = running_mean is not None
    cache = BatchNormCache(
        x3, mean, invstd, scale, tuple(x.shape), x.dtype, True, w is not None, b is not None,
        tuple_out,
    )  # fmt: skip
    if not tuple_out:
        return y, cache
    rm, rv = _working(xp, running_mean, wd), _working(xp, running_var, wd)
    if M == 0:  # torch leaves the statistics as they are
        new_mean, new_var = xp.asarray(running_mean, copy=True), xp.asarray(running_var, copy=True)
    else:
        new_mean = _out(xp, (1 - momentum) * rm + momentum * mean, x.dtype)
        new_var = _out(xp, (1 - momentum) * rv + (momentum * M / (M - 1)) * var, x.dtype)
    return (y, new_mean, new_var), cache


@backward_op(BatchNormCache)
def batch_norm_backward(
    grad: Any, cache: BatchNormCache, /
) -> tuple[Array, None, None, Array | None, Array | None]:
    r"""Gradients of :func:`batch_norm`: ``(dx, None, None, dweight, dbias)``.

    ``grad`` is ``dy`` where the forward returned ``y``, and ``(dy, None, None)`` where it
    returned ``(y, new_running_mean, new_running_var)``: the updated statistics have no
    gradient (torch updates them in place, outside autograd), so an array in their place is
    a ValueError rather than a contribution silently dropped. ``dy`` may be None there
    (zero gradients). ``dweight``/``dbias`` are None where the forward had no weight/bias.
    """
    op = "batch_norm_backward"
    x3, mean, invstd, scale, shape, dtype, training, has_weight, has_bias, tuple_out = cache
    C = int(shape[1])
    if tuple_out:
        xp, (dy, d_mean, d_var) = tuple_cotangents(
            op, grad, ("dy", "d_running_mean", "d_running_var"), (shape, (C,), (C,)), invstd
        )
        for name, g in (("d_running_mean", d_mean), ("d_running_var", d_var)):
            if g is not None:
                raise ValueError(
                    f"{op}: argument '{name}' expected None (the updated running statistics "
                    f"have no gradient, as in torch), got an array"
                )
        if dy is None:
            dy = xp.zeros(shape, dtype=dtype, device=device(invstd))
        elif dy.dtype != dtype:
            dy = xp.astype(dy, dtype)
    else:
        xp, dy = cotangent_namespace(op, grad, invstd, shape, dtype)
    wd = invstd.dtype
    N = int(shape[0])
    P = math.prod(shape[2:])
    dy3 = xp.reshape(_working(xp, dy, wd), (N, C, P))
    dbias = _channel_sum(xp, dy3) if has_bias else None

    if not training:  # y = x · scale + const
        dweight = None
        if has_weight:
            dweight = _channel_dot(xp, dy3, x3 - mean[:, None]) * invstd
        dx3 = dy3 * scale[:, None]
    else:
        M = max(N * P, 1)
        sum_dy = _channel_sum(xp, dy3) if dbias is None else dbias
        dx3 = x3 - mean[:, None]  # x̂ / invstd, and then the result in place
        sum_dy_xhat = _channel_dot(xp, dy3, dx3) * invstd
        dweight = sum_dy_xhat if has_weight else None
        # (w σ⁻¹ / M)(M dy − Σdy − x̂ Σdy x̂) with x̂ = (x − μ) σ⁻¹
        dx3 *= (-(invstd * sum_dy_xhat) / M)[:, None]
        dx3 -= (sum_dy / M)[:, None]
        dx3 += dy3
        dx3 *= scale[:, None]
    dx = _out(xp, xp.reshape(dx3, shape), dtype)
    return dx, None, None, _out(xp, dweight, dtype), _out(xp, dbias, dtype)


# ---------------------------------------------------------------------------------------------
# Layer norm


class LayerNormCache(NamedTuple):
    x: Array  # (R, D) in the working dtype: x̂ is recomputed from x, mean and invstd
    mean: Array  # (R, 1)
    invstd: Array  # (R, 1)
    weight: Array | None  # (D,) in the working dtype
    has_bias: bool
    shape: tuple[int, ...]  # of x
    normalized_shape: tuple[int, ...]
    dtype: Any  # of x


@forward_op
def layer_norm(
    x: Array,
    normalized_shape: int | tuple[int, ...],
    weight: Array | None = None,
    bias: Array | None = None,
    eps: float = 1e-5,
) -> tuple[Array, LayerNormCache]:
    r"""Layer normalization over the trailing ``normalized_shape`` axes of each sample, as
    ``torch.nn.functional.layer_norm``.

    .. math::
        y = w \odot \frac{x - \mu}{\sqrt{v + \epsilon}} + b

    with :math:`\mu, v` the mean and biased variance of the :math:`D =
    \prod \text{normalized\_shape}` trailing elements.

    Parameters
    ----------
    x : array, shape (*, *normalized_shape), real floating
    normalized_shape : int or tuple of ints
        The trailing dims of ``x`` (torch's functional takes a tuple; its ``nn.LayerNorm`` an
        int too).
    weight, bias : arrays, shape normalized_shape, optional
    eps : float

    Returns
    -------
    y : array, shape of ``x``
    cache : LayerNormCache

    Notes
    -----
    Backward (:func:`layer_norm_backward` → ``(dx, dweight, dbias)``), with :math:`g = w
    \odot \delta` and means over the :math:`D` elements: :math:`\partial L/\partial x =
    \sigma^{-1}(g - \overline{g} - \hat x\,\overline{g\hat x})`; :math:`\partial L/\partial
    w = \sum_{\text{samples}} \delta \odot \hat x`, :math:`\partial L/\partial b =
    \sum_{\text{samples}} \delta`.
    """
    op = "layer_norm"
    xp, x, weight, bias = op_inputs(op, x=x, weight=weight, bias=bias, optional=("weight", "bias"))
    check_floating(op, "x", x, xp)
    shape = _normalized_shape(op, normalized_shape)
    eps = real_option(op, "eps", eps)
    R, D = _trailing(op, x, shape)
    _check_params(op, x, shape, "normalized_shape", weight=weight, bias=bias)
    wd = _accumulator(xp, x.dtype)
    x2 = xp.reshape(_working(xp, x, wd), (R, D))
    w = None if weight is None else xp.reshape(_working(xp, weight, wd), (D,))
    b = None if bias is None else xp.reshape(_working(xp, bias, wd), (D,))
    mean, invstd, y2 = _row_moments(xp, x2, eps)
    y2 *= invstd  # the centred values become the output in place
    if w is not None:
        y2 *= w
    if b is not None:
        y2 += b
    y = _out(xp, xp.reshape(y2, x.shape), x.dtype)
    cache = LayerNormCache(x2, mean, invstd, w, b is not None, tuple(x.shape), shape, x.dtype)
    return y, cache


@backward_op(LayerNormCache)
def layer_norm_backward(
    dy: Array, cache: LayerNormCache, /
) -> tuple[Array, Array | None, Array | None]:
    x2, mean, invstd, w, has_bias, shape, normalized_shape, dtype = cache
    xp, dy = cotangent_namespace("layer_norm_backward", dy, x2, shape, dtype)
    dy2 = xp.reshape(_working(xp, dy, x2.dtype), x2.shape)
    dbias = xp.reshape(xp.sum(dy2, axis=0), normalized_shape) if has_bias else None
    xhat = _xhat(xp, x2, mean, invstd)
    if w is None:
        dx = _rows_dx(xp, xhat, invstd, dy2, *_row_means(xp, dy2, xhat))
        dweight = None
    else:
        # g = dy ⊙ w: its row sums are GEMVs, Σ g = dy @ w and Σ g x̂ = (dy ⊙ x̂) @ w, and
        # dy ⊙ x̂ is the weight's gradient before its column sum
        n = max(x2.shape[-1], 1)
        p = dy2 * xhat
        dweight = xp.reshape(xp.sum(p, axis=0), normalized_shape)
        mean_gx = xp.matmul(p, w)[:, None] / n
        mean_g = xp.matmul(dy2, w)[:, None] / n
        g = _overwrite(xp, p, dy2)  # p's memory is free again: g is formed there
        g *= w
        dx = _rows_dx(xp, xhat, invstd, g, mean_g, mean_gx)
    return (
        _out(xp, xp.reshape(dx, shape), dtype),
        _out(xp, dweight, dtype),
        _out(xp, dbias, dtype),
    )


# ---------------------------------------------------------------------------------------------
# Group norm


class GroupNormCache(NamedTuple):
    x: Array  # (N·G, D) in the working dtype, D = C/G · P; x̂ is recomputed
    mean: Array  # (N·G, 1)
    invstd: Array  # (N·G, 1)
    weight: Array | None  # (C,) in the working dtype
    has_bias: bool
    shape: tuple[int, ...]  # of x
    dtype: Any  # of x
    groups: int


@forward_op
def group_norm(
    x: Array,
    num_groups: int,
    weight: Array | None = None,
    bias: Array | None = None,
    eps: float = 1e-5,
) -> tuple[Array, GroupNormCache]:
    r"""Group normalization: each sample's channels split into ``num_groups`` groups,
    each group normalized over its channels and positions, as
    ``torch.nn.functional.group_norm``.

    .. math::
        y_{ncp} = w_c\, \frac{x_{ncp} - \mu_{n,G(c)}}{\sqrt{v_{n,G(c)} + \epsilon}} + b_c

    ``num_groups = 1`` is layer norm over ``(C, *S)`` with a per-channel affine map;
    ``num_groups = C`` is instance norm.

    Parameters
    ----------
    x : array, shape (N, C, *S), real floating
    num_groups : int
        A divisor of ``C``.
    weight, bias : arrays, shape (C,), optional
    eps : float

    Returns
    -------
    y : array, shape of ``x``
    cache : GroupNormCache

    Notes
    -----
    Backward (:func:`group_norm_backward` → ``(dx, dweight, dbias)``): layer norm's over the
    rows ``(N·G, C/G·|S|)``, with :math:`g = w_c \delta`; :math:`\partial L/\partial w_c =
    \sum_{n,p} \delta \hat x`, :math:`\partial L/\partial b_c = \sum_{n,p} \delta`.
    """
    op = "group_norm"
    xp, x, weight, bias = op_inputs(op, x=x, weight=weight, bias=bias, optional=("weight", "bias"))
    check_floating(op, "x", x, xp)
    G = int_option(op, "num_groups", num_groups, low=1)
    eps = real_option(op, "eps", eps)
    if x.ndim < 2:
        raise shape_error(op, "x", "shape (N, C, *spatial)", f"shape {tuple(x.shape)}")
    N, C = int(x.shape[0]), int(x.shape[1])
    if C % G:
        raise ValueError(
            f"{op}: argument 'num_groups' expected a divisor of the {C} channels of x "
            f"(shape {tuple(x.shape)}), got {G}"
        )
    _check_params(op, x, (C,), "one per channel", weight=weight, bias=bias)
    P = math.prod(x.shape[2:])
    wd = _accumulator(xp, x.dtype)
    x2 = _to_groups(xp, _working(xp, x, wd), N, G, P)
    w, b = _working(xp, weight, wd), _working(xp, bias, wd)
    mean, invstd, y2 = _row_moments(xp, x2, eps)
    y2 *= invstd  # the centred values become the output in place
    y3 = _from_groups(xp, y2, N, G, C, P)
    if w is not None:
        y3 *= w[:, None]
    if b is not None:
        y3 += b[:, None]
    y = _out(xp, xp.reshape(y3, x.shape), x.dtype)
    return y, GroupNormCache(x2, mean, invstd, w, b is not None, tuple(x.shape), x.dtype, G)


def _to_groups(xp: ModuleType, a: Array, N: int, G: int, P: int) -> Array:
    """``(N, C, *S)`` as ``(N·G, C/G·P)``, one row per (sample, group). In two reshapes, a
    split then merges: dask reshapes chunked arrays only so (one reshape would split C and
    merge it with its neighbours at once)."""
    C = int(a.shape[1])
    a = xp.reshape(a, (N, G, C // G, P))
    return xp.reshape(a, (N * G, C // G * P))


def _from_groups(xp: ModuleType, a: Array, N: int, G: int, C: int, P: int) -> Array:
    """The inverse of :func:`_to_groups`, as ``(N, C, P)``."""
    return xp.reshape(xp.reshape(a, (N, G, C // G, P)), (N, C, P))


@backward_op(GroupNormCache)
def group_norm_backward(
    dy: Array, cache: GroupNormCache, /
) -> tuple[Array, Array | None, Array | None]:
    x2, mean, invstd, w, has_bias, shape, dtype, G = cache
    xp, dy = cotangent_namespace("group_norm_backward", dy, x2, shape, dtype)
    N, C = int(shape[0]), int(shape[1])
    P = math.prod(shape[2:])
    dy3 = xp.reshape(_working(xp, dy, x2.dtype), (N, C, P))
    dbias = _channel_sum(xp, dy3) if has_bias else None
    xhat = _xhat(xp, x2, mean, invstd)
    dweight = None
    g = _to_groups(xp, dy3, N, G, P)
    if w is not None:
        dweight = _channel_dot(xp, dy3, _from_groups(xp, xhat, N, G, C, P))
        g = _to_groups(xp, dy3 * w[:, None], N, G, P)
    dx = _rows_dx(xp, xhat, invstd, g, *_row_means(xp, g, xhat))
    return (
        _out(xp, xp.reshape(_from_groups(xp, dx, N, G, C, P), shape), dtype),
        _out(xp, dweight, dtype),
        _out(xp, dbias, dtype),
    )


# ---------------------------------------------------------------------------------------------
# RMS norm


class RMSNormCache(NamedTuple):
    x: Array  # (R, D) in the working dtype
    rstd: Array  # (R, 1): 1 / sqrt(mean(x²) + eps)
    weight: Array | None  # (D,) in the working dtype
    shape: tuple[int, ...]  # of x
    normalized_shape: tuple[int, ...]
    dtype: Any  # of x


@forward_op
def rms_norm(
    x: Array,
    normalized_shape: int | tuple[int, ...],
    weight: Array | None = None,
    eps: float | None = None,
) -> tuple[Array, RMSNormCache]:
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` axes, as
    ``torch.nn.functional.rms_norm``.

    .. math::
        y = w \odot \frac{x}{\sqrt{\overline{x^2} + \epsilon}}

    (no centring, no bias), :math:`\overline{x^2}` the mean of the squares of the :math:`D`
    trailing elements.

    Parameters
    ----------
    x : array, shape (*, *normalized_shape), real floating
    normalized_shape : int or tuple of ints
    weight : array, shape normalized_shape, optional
    eps : float or None
        None (default) is the machine epsilon of ``x``'s dtype, ``finfo(x.dtype).eps``, as
        torch.

    Returns
    -------
    y : array, shape of ``x``
    cache : RMSNormCache

    Notes
    -----
    Backward (:func:`rms_norm_backward` → ``(dx, dweight)``), with :math:`r = 1/\sqrt{
    \overline{x^2} + \epsilon}`, :math:`\hat x = r x`, :math:`g = w \odot \delta`:
    :math:`\partial L/\partial x = r\,(g - \hat x\, \overline{g \hat x})`;
    :math:`\partial L/\partial w = \sum_{\text{samples}} \delta \odot \hat x`.
    """
    op = "rms_norm"
    xp, x, weight = op_inputs(op, x=x, weight=weight, optional=("weight",))
    check_floating(op, "x", x, xp)
    shape = _normalized_shape(op, normalized_shape)
    eps = float(xp.finfo(x.dtype).eps) if eps is None else real_option(op, "eps", eps)
    R, D = _trailing(op, x, shape)
    _check_params(op, x, shape, "normalized_shape", weight=weight)
    wd = _accumulator(xp, x.dtype)
    x2 = xp.reshape(_working(xp, x, wd), (R, D))
    w = None if weight is None else xp.reshape(_working(xp, weight, wd), (D,))
    rstd = 1.0 / xp.sqrt(xp.vecdot(x2, x2, axis=-1)[:, None] / max(D, 1) + eps)
    y2 = x2 * rstd
    if w is not None:
        y2 *= w
    y = _out(xp, xp.reshape(y2, x.shape), x.dtype)
    return y, RMSNormCache(x2, rstd, w, tuple(x.shape), shape, x.dtype)


@backward_op(RMSNormCache)
def rms_norm_backward(dy: Array, cache: RMSNormCache, /) -> tuple[Array, Array | None]:
    x2, rstd, w, shape, normalized_shape, dtype = cache
    xp, dy = cotangent_namespace("rms_norm_backward", dy, x2, shape, dtype)
    dy2 = xp.reshape(_working(xp, dy, x2.dtype), x2.shape)
    dweight = None
    p = None
    if w is not None:
        p = dy2 * x2
        p *= rstd
        dweight = xp.reshape(xp.sum(p, axis=0), normalized_shape)
        g = dy2 * w
        g *= rstd
    else:
        g = dy2 * rstd
    # r (g - x̂ mean(g x̂)) = r g - x · r³ mean(g x), with g · r already in `g`
    n = max(x2.shape[-1], 1)
    coef = -(rstd * rstd) * xp.vecdot(g, x2, axis=-1)[:, None] / n
    if p is None:
        t = x2 * coef
    else:
        t = _overwrite(xp, p, x2)  # p's memory is free again: no third fresh array
        t *= coef
    g += t
    return _out(xp, xp.reshape(g, shape), dtype), _out(xp, dweight, dtype)
