r"""Max and average pooling in 1, 2 and 3 spatial dimensions, global average pooling, flatten.

Notation
--------
- :math:`x` : input, shape ``(N, C, *S)`` (or unbatched ``(C, *S)``); :math:`y` : output,
  shape ``(N, C, *L)``; :math:`g = \partial L/\partial y`.
- Window :math:`\ell` covers the padded positions :math:`s\ell + d\kappa` for the kernel
  offsets :math:`\kappa` (row-major order, last axis fastest); :math:`|K|` offsets in all.

Box windows are separable: a max (or sum) over a box is a max (or sum) along the last
spatial axis, then along the next-to-last, and so on. Each op therefore pools one axis at a
time and loops over that axis's kernel offsets only: one strided slice holds the element at
that offset of every window at once, so each step is a handful of whole-array
compare/select/add operations, ``sum(k) - nd`` of them rather than ``prod(k) - 1``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx

from ..backend import device
from ._validation import (
    backward_op,
    bool_option,
    check_floating,
    cotangent_namespace,
    forward_op,
    normalize_axis,
    op_inputs,
    shape_error,
    torch_alias,
)
from ._windows import Window, as_tuple, make_window, pad_spatial

__all__ = [
    "avg_pool1d",
    "avg_pool1d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool3d",
    "avg_pool3d_backward",
    "flatten",
    "flatten_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
    "max_pool1d",
    "max_pool1d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool3d",
    "max_pool3d_backward",
]

Array = Any


def _prepare(
    op: str, nd: int, x: Array, kernel_size: Any, stride: Any, padding: Any, dilation: Any
) -> tuple[
    ModuleType, Array, bool, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]
]:
    xp, x = op_inputs(op, x=x)
    check_floating(op, "x", x, xp)
    if x.ndim not in (nd + 1, nd + 2):
        raise shape_error(
            op, "x", f"a {nd + 2}-d (N, C, *S) or {nd + 1}-d (C, *S) array", tuple(x.shape)
        )
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None, ...]
    kernel = as_tuple(op, "kernel_size", kernel_size, nd, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel  # torch's default: non-overlapping windows
    stride = as_tuple(op, "stride", stride, nd, minimum=1)
    pad = as_tuple(op, "padding", padding, nd, minimum=0)
    dil = as_tuple(op, "dilation", dilation, nd, minimum=1)
    return xp, x, unbatched, kernel, stride, pad, dil


def _check_half_kernel(op: str, pad: tuple[int, ...], kernel: tuple[int, ...]) -> None:
    # torch's rule, on the kernel size without dilation: padding <= kernel_size // 2
    if any(p > k // 2 for p, k in zip(pad, kernel, strict=True)):
        raise shape_error(op, "padding", f"at most half the kernel size {kernel}", f"{pad}")


def _index_dtype(xp: ModuleType, n: int) -> Any:
    if n <= 127:
        return xp.int8
    return xp.int16 if n <= 32767 else xp.int32


def _unbatch(a: Array, unbatched: bool) -> Array:
    return a[0, ...] if unbatched else a


def _batch(xp: ModuleType, dy: Array, unbatched: bool, nd: int, op: str) -> Array:
    if unbatched:
        if dy.ndim != nd + 1:
            raise shape_error(op, "dy", f"a {nd + 1}-d array", tuple(dy.shape))
        return dy[None, ...]
    return dy


def _like(xp: ModuleType, x: Array) -> Array:
    """A zero-size array of ``x``'s library, dtype and device: what the backward checks its
    gradient against (no data kept)."""
    return xp.empty((0,), dtype=x.dtype, device=device(x))


def _check_dy(
    op: str, dy: Array, x_shape: tuple[int, ...], win: Window, unbatched: bool, like: Array
) -> tuple[ModuleType, Array]:
    """``dy`` of the (batched) forward output's shape (without N for unbatched input)."""
    shape = (*x_shape[:2], *win.out_size)
    return cotangent_namespace(op, dy, like, shape[1:] if unbatched else shape, like.dtype)


def _axis_index(win: Window, axis: int, offset: int) -> tuple[Any, ...]:
    """The elements at kernel ``offset`` along spatial ``axis`` of every window: a strided
    slice of that axis; the spatial axes after it are already pooled (kept whole)."""
    nd = len(win.kernel)
    d, s, m = win.dilation[axis], win.stride[axis], win.out_size[axis]
    part = slice(offset * d, offset * d + (m - 1) * s + 1, s)
    return (Ellipsis, part, *(slice(None),) * (nd - 1 - axis))


def _overlaps_earlier(win: Window, axis: int, j: int) -> bool:
    """Whether offset ``j`` along ``axis`` hits an element that an earlier offset (of some
    window) also hits: offsets ``i < j`` meet where ``(j - i) d`` is a multiple of the stride
    below the window span. Until then a plain write into the zeroed buffer suffices."""
    d, s, m = win.dilation[axis], win.stride[axis], win.out_size[axis]
    return any((j - i) * d % s == 0 and (j - i) * d // s < m for i in range(j))


def _axis_tiled(win: Window, axis: int) -> bool:
    """Whether the windows cover ``axis`` exactly once (then no buffer needs zeroing)."""
    k, s, d = win.kernel[axis], win.stride[axis], win.dilation[axis]
    return (k == 1 or d == 1) and s == k and s * win.out_size[axis] == win.padded_size[axis]


# --------------------------------------------------------------------------- max pooling


class MaxPoolCache(NamedTuple):
    # Per spatial axis, the offset (0..k-1) of the maximum along that axis, from the
    # separable forward (None where the kernel has size 1 along that axis).
    argmax: tuple[Array | None, ...]
    x_shape: tuple[int, ...]
    win: Window
    unbatched: bool
    like: Array  # zero-size, of the output's library, dtype and device (for the backward's check)


def _max_pool_nd(
    op: str,
    nd: int,
    x: Array,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
) -> tuple[Array, MaxPoolCache]:
    xp, x, unbatched, kernel, stride, pad, dil = _prepare(
        op, nd, x, kernel_size, stride, padding, dilation
    )
    ceil_mode = bool_option(op, "ceil_mode", ceil_mode)
    _check_half_kernel(op, pad, kernel)
    win = make_window(
        op,
        tuple(x.shape[2:]),
        kernel,
        stride,
        dil,
        pad,
        pad,
        ceil_mode=ceil_mode,
        kernel_name="kernel_size",
    )
    # The max over a box is a max over the last axis, then the next-to-last, ...: one 1-d
    # pooling per axis, sum(k) - nd elementwise maxima instead of prod(k) - 1. Pooling the
    # last axis first keeps torch's tie rule: the first maximum in row-major window order
    # lies in the first row (outer axis) holding the maximum, at that row's first maximum.
    y = pad_spatial(xp, x, win, -math.inf)
    argmax: list[Array | None] = [None] * nd
    for axis in reversed(range(nd)):
        views = [y[_axis_index(win, axis, j)] for j in range(win.kernel[axis])]
        y = views[0]
        for v in views[1:]:
            y = xp.maximum(y, v)  # propagates NaN (Array API), so a NaN window gives NaN
        if len(views) > 1:
            # The first offset holding the maximum is the number of leading offsets below
            # it. Counted with compare/and/add: where() on a data-dependent mask is several
            # times slower on NumPy (branch mispredictions).
            idt = _index_dtype(xp, len(views))
            below = views[0] < y
            idx = xp.astype(below, idt)
            for v in views[1:-1]:
                below = below & (v < y)
                idx = idx + xp.astype(below, idt)
            argmax[axis] = idx
    if win.n_offsets == 1:
        y = xp.asarray(y, copy=True)  # a 1-element window: never hand back a view of x
    return _unbatch(y, unbatched), MaxPoolCache(
        tuple(argmax), tuple(x.shape), win, unbatched, _like(xp, x)
    )


def _check_nd(op: str, cache: MaxPoolCache | AvgPoolCache, nd: int) -> None:
    """A pooling cache of the op's own dimensionality (the cache type is shared)."""
    got = len(cache.win.in_size)
    if got != nd:
        raise TypeError(
            f"{op}: argument 'cache' expected the cache of a {nd}-d pooling, got that of a "
            f"{got}-d one"
        )


def _max_pool_nd_backward(dy: Array, cache: MaxPoolCache, op: str, nd: int) -> tuple[Array]:
    _check_nd(op, cache, nd)
    argmax, x_shape, win, unbatched, like = cache
    xp, dy = _check_dy(op, dy, x_shape, win, unbatched, like)
    dy = _batch(xp, dy, unbatched, nd, op)
    # Undo the per-axis poolings in reverse order (first axis first): each routes its
    # gradient to the offset that won along its axis.
    g = dy
    for axis in range(nd):
        shape = list(g.shape)
        shape[2 + axis] = win.padded_size[axis]
        make = xp.empty if _axis_tiled(win, axis) else xp.zeros
        buf = make(tuple(shape), dtype=dy.dtype, device=device(dy))
        idx, k = argmax[axis], win.kernel[axis]
        rest = g
        for j in range(k):
            # g * mask, not where(mask, g, 0): the same values for finite g, several times
            # faster on NumPy; a non-finite g turns the rest of its window NaN, not 0. The
            # last offset takes what is left, exactly g or 0.
            if idx is None:
                part = g
            elif j < k - 1:
                part = g * xp.astype(idx == j, g.dtype)
                rest = rest - part
            else:
                part = rest
            at = xpx.at(buf, _axis_index(win, axis, j))
            buf = at.add(part) if _overlaps_earlier(win, axis, j) else at.set(part)
        g = buf
    if win.has_padding:
        g = g[win.interior_index()]
    return (_unbatch(g, unbatched),)


_MAX_DOC = r"""{nd}-d max pooling, torch's ``max_pool{nd}d``.

    .. math:: y_\ell = \max_\kappa \tilde x_{{s\ell + d\kappa}}

    The padding is :math:`-\infty`, so it never wins. The forward pools one axis at a time
    (last axis first) and records, per axis, which kernel offset won; together they name
    the first maximum of each window in window order (row-major, last axis fastest), on
    every backend, which is where ties go. A NaN in a window makes the output NaN (and
    that window's gradient goes to one of its elements). The backward routes with a 0/1
    mask product, so a non-finite upstream gradient also reaches the window's other
    elements as NaN.

    Parameters
    ----------
    x : array, shape (N, C, {spatial}) or (C, {spatial})
    kernel_size : int or tuple of {nd} ints
    stride : int or tuple of {nd} ints, optional
        Default ``kernel_size``.
    padding : int or tuple of {nd} ints
        At most half the kernel size (as torch; with dilation a window can still lie wholly
        in the padding: its output is -inf and it passes no gradient).
    dilation : int or tuple of {nd} ints
    ceil_mode : bool
        Round the output size up (a last, partial window), as torch.

    Returns
    -------
    y : array, shape (N, C, {out})
    cache : MaxPoolCache
        The argmax (small integer offsets) and the geometry.

    Notes
    -----
    Backward (:func:`max_pool{nd}d_backward`) returns ``(dx,)``: each :math:`g_\ell` goes to
    the input element that won window :math:`\ell`; an element that wins several
    overlapping windows receives the sum.
    """


@forward_op
def max_pool1d(
    x: Array,
    kernel_size: int | tuple[int],
    stride: int | tuple[int] | None = None,
    padding: int | tuple[int] = 0,
    dilation: int | tuple[int] = 1,
    ceil_mode: bool = False,
) -> tuple[Array, MaxPoolCache]:
    return _max_pool_nd("max_pool1d", 1, x, kernel_size, stride, padding, dilation, ceil_mode)


@backward_op(MaxPoolCache)
def max_pool1d_backward(dy: Array, cache: MaxPoolCache, /) -> tuple[Array]:
    """Gradient ``(dx,)`` of :func:`max_pool1d`: ``dy`` routed to each window's argmax."""
    return _max_pool_nd_backward(dy, cache, "max_pool1d_backward", 1)


@forward_op
def max_pool2d(
    x: Array,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> tuple[Array, MaxPoolCache]:
    return _max_pool_nd("max_pool2d", 2, x, kernel_size, stride, padding, dilation, ceil_mode)


@backward_op(MaxPoolCache)
def max_pool2d_backward(dy: Array, cache: MaxPoolCache, /) -> tuple[Array]:
    """Gradient ``(dx,)`` of :func:`max_pool2d`: ``dy`` routed to each window's argmax."""
    return _max_pool_nd_backward(dy, cache, "max_pool2d_backward", 2)


@forward_op
def max_pool3d(
    x: Array,
    kernel_size: int | tuple[int, int, int],
    stride: int | tuple[int, int, int] | None = None,
    padding: int | tuple[int, int, int] = 0,
    dilation: int | tuple[int, int, int] = 1,
    ceil_mode: bool = False,
) -> tuple[Array, MaxPoolCache]:
    return _max_pool_nd("max_pool3d", 3, x, kernel_size, stride, padding, dilation, ceil_mode)


@backward_op(MaxPoolCache)
def max_pool3d_backward(dy: Array, cache: MaxPoolCache, /) -> tuple[Array]:
    """Gradient ``(dx,)`` of :func:`max_pool3d`: ``dy`` routed to each window's argmax."""
    return _max_pool_nd_backward(dy, cache, "max_pool3d_backward", 3)


# ----------------------------------------------------------------------- average pooling


class AvgPoolCache(NamedTuple):
    inv_count: Array | float  # 1 / divisor per window (a scalar when all windows agree)
    x_shape: tuple[int, ...]
    win: Window
    unbatched: bool
    like: Array  # zero-size, of the output's library, dtype and device (for the backward's check)


def _inv_counts(
    xp: ModuleType, win: Window, pad: tuple[int, ...], count_include_pad: bool, like: Array
) -> Array | float:
    """1 / (number of elements averaged) per window, torch's rule.

    With ``count_include_pad`` the explicit padding counts but the room ceil mode adds past
    it does not; without, only input elements count. Windows are boxes, so the count is a
    product of per-axis counts.
    """
    per_axis: list[list[int]] = []
    for n, k, s, p, m in zip(win.in_size, win.kernel, win.stride, pad, win.out_size, strict=True):
        counts = []
        for j in range(m):
            start = j * s - p
            end = min(start + k, n + p)
            counts.append(end - start if count_include_pad else min(end, n) - max(start, 0))
        per_axis.append(counts)
    if all(len(set(c)) == 1 for c in per_axis):
        return 1.0 / math.prod(c[0] for c in per_axis)
    nd = len(per_axis)
    inv = None
    for axis, counts in enumerate(per_axis):
        shape = [1] * nd
        shape[axis] = len(counts)
        v = xp.reshape(
            xp.asarray([1.0 / c for c in counts], dtype=like.dtype, device=device(like)),
            tuple(shape),
        )
        inv = v if inv is None else inv * v
    return inv


def _avg_pool_nd(
    op: str,
    nd: int,
    x: Array,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
) -> tuple[Array, AvgPoolCache]:
    xp, x, unbatched, kernel, stride, pad, dil = _prepare(
        op, nd, x, kernel_size, stride, padding, 1
    )
    ceil_mode = bool_option(op, "ceil_mode", ceil_mode)
    count_include_pad = bool_option(op, "count_include_pad", count_include_pad)
    _check_half_kernel(op, pad, kernel)
    win = make_window(
        op,
        tuple(x.shape[2:]),
        kernel,
        stride,
        dil,
        pad,
        pad,
        ceil_mode=ceil_mode,
        kernel_name="kernel_size",
    )
    xpad = pad_spatial(xp, x, win, 0.0)
    # A box sum is a sum over the last axis, then the next-to-last, ...: sum(k) - nd adds
    # instead of prod(k) - 1.
    total = xpad
    for axis in reversed(range(nd)):
        views = [total[_axis_index(win, axis, j)] for j in range(win.kernel[axis])]
        total = views[0]
        for v in views[1:]:
            total = total + v
    inv = _inv_counts(xp, win, pad, count_include_pad, x)
    y = total * inv  # a new array even for a 1-element window
    return _unbatch(y, unbatched), AvgPoolCache(inv, tuple(x.shape), win, unbatched, _like(xp, x))


def _avg_pool_nd_backward(dy: Array, cache: AvgPoolCache, op: str, nd: int) -> tuple[Array]:
    _check_nd(op, cache, nd)
    inv, x_shape, win, unbatched, like = cache
    xp, dy = _check_dy(op, dy, x_shape, win, unbatched, like)
    dy = _batch(xp, dy, unbatched, len(win.in_size), op)
    g = dy * inv
    for axis in range(len(win.in_size)):  # undo the per-axis sums, first axis first
        shape = list(g.shape)
        shape[2 + axis] = win.padded_size[axis]
        make = xp.empty if _axis_tiled(win, axis) else xp.zeros
        buf = make(tuple(shape), dtype=dy.dtype, device=device(dy))
        for j in range(win.kernel[axis]):
            at = xpx.at(buf, _axis_index(win, axis, j))
            buf = at.add(g) if _overlaps_earlier(win, axis, j) else at.set(g)
        g = buf
    if win.has_padding:
        g = g[win.interior_index()]
    return (_unbatch(g, unbatched),)


_AVG_DOC = r"""{nd}-d average pooling, torch's ``avg_pool{nd}d``.

    .. math:: y_\ell = \frac{{1}}{{c_\ell}} \sum_\kappa \tilde x_{{s\ell + \kappa}}

    Parameters
    ----------
    x : array, shape (N, C, {spatial}) or (C, {spatial})
    kernel_size : int or tuple of {nd} ints
    stride : int or tuple of {nd} ints, optional
        Default ``kernel_size``.
    padding : int or tuple of {nd} ints
        Zeros, at most half the kernel size (as torch).
    ceil_mode : bool
        Round the output size up (a last, partial window), as torch.
    count_include_pad : bool
        Whether the divisor :math:`c_\ell` counts the zero padding (torch's default, True)
        or only input elements. The room ceil mode adds past the padding never counts.

    Returns
    -------
    y : array, shape (N, C, {out})
    cache : AvgPoolCache

    Notes
    -----
    Backward (:func:`avg_pool{nd}d_backward`) returns ``(dx,)``: every element of window
    :math:`\ell` receives :math:`g_\ell / c_\ell`; overlapping windows add up.
    """


@forward_op
def avg_pool1d(
    x: Array,
    kernel_size: int | tuple[int],
    stride: int | tuple[int] | None = None,
    padding: int | tuple[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[Array, AvgPoolCache]:
    return _avg_pool_nd(
        "avg_pool1d", 1, x, kernel_size, stride, padding, ceil_mode, count_include_pad
    )


@backward_op(AvgPoolCache)
def avg_pool1d_backward(dy: Array, cache: AvgPoolCache, /) -> tuple[Array]:
    """Gradient ``(dx,)`` of :func:`avg_pool1d`: ``dy / count`` spread over each window."""
    return _avg_pool_nd_backward(dy, cache, "avg_pool1d_backward", 1)


@forward_op
def avg_pool2d(
    x: Array,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[Array, AvgPoolCache]:
    return _avg_pool_nd(
        "avg_pool2d", 2, x, kernel_size, stride, padding, ceil_mode, count_include_pad
    )


@backward_op(AvgPoolCache)
def avg_pool2d_backward(dy: Array, cache: AvgPoolCache, /) -> tuple[Array]:
    """Gradient ``(dx,)`` of :func:`avg_pool2d`: ``dy / count`` spread over each window."""
    return _avg_pool_nd_backward(dy, cache, "avg_pool2d_backward", 2)


@forward_op
def avg_pool3d(
    x: Array,
    kernel_size: int | tuple[int, int, int],
    stride: int | tuple[int, int, int] | None = None,
    padding: int | tuple[int, int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> tuple[Array, AvgPoolCache]:
    return _avg_pool_nd(
        "avg_pool3d", 3, x, kernel_size, stride, padding, ceil_mode, count_include_pad
    )


@backward_op(AvgPoolCache)
def avg_pool3d_backward(dy: Array, cache: AvgPoolCache, /) -> tuple[Array]:
    """Gradient ``(dx,)`` of :func:`avg_pool3d`: ``dy / count`` spread over each window."""
    return _avg_pool_nd_backward(dy, cache, "avg_pool3d_backward", 3)


for _nd, _sp, _out in (
    (1, "W", "W_out"),
    (2, "H, W", "H_out, W_out"),
    (3, "D, H, W", "D_out, H_out, W_out"),
):
    globals()[f"max_pool{_nd}d"].__doc__ = _MAX_DOC.format(nd=_nd, spatial=_sp, out=_out)
    globals()[f"avg_pool{_nd}d"].__doc__ = _AVG_DOC.format(nd=_nd, spatial=_sp, out=_out)


# ------------------------------------------------------------- global pooling and flatten


class GlobalAvgPoolCache(NamedTuple):
    x_shape: tuple[int, ...]
    like: Array  # zero-size, of the output's library, dtype and device (for the backward's check)


@forward_op
def global_avg_pool(x: Array, /) -> tuple[Array, GlobalAvgPoolCache]:
    r"""Mean over all spatial positions: :math:`y_{n,c} = \frac{1}{|S|}\sum_{p} x_{n,c,p}`.

    The usual CNN head before a linear layer (torch's ``adaptive_avg_pool{1,2,3}d(x, 1)``
    followed by a flatten).

    Parameters
    ----------
    x : array, shape (N, C, *S), at least one spatial axis

    Returns
    -------
    y : array, shape (N, C)
    cache : GlobalAvgPoolCache

    Notes
    -----
    Backward returns ``(dx,)`` with :math:`\partial L/\partial x_{n,c,p} = g_{n,c} / |S|`.
    """
    xp, x = op_inputs("global_avg_pool", x=x)
    check_floating("global_avg_pool", "x", x, xp)
    if x.ndim < 3:
        raise shape_error(
            "global_avg_pool", "x", "an array (N, C, *S) with >= 3 axes", tuple(x.shape)
        )
    return xp.mean(x, axis=tuple(range(2, x.ndim))), GlobalAvgPoolCache(
        tuple(x.shape), _like(xp, x)
    )


@backward_op(GlobalAvgPoolCache)
def global_avg_pool_backward(dy: Array, cache: GlobalAvgPoolCache, /) -> tuple[Array]:
    shape = cache.x_shape
    op = "global_avg_pool_backward"
    xp, dy = cotangent_namespace(op, dy, cache.like, shape[:2], cache.like.dtype)
    nd = len(shape) - 2
    share = xp.reshape(dy / math.prod(shape[2:]), (*shape[:2], *(1,) * nd))
    # one write of the input-sized result (zeros + share would write it twice)
    return (xp.asarray(xp.broadcast_to(share, shape), copy=True),)


class FlattenCache(NamedTuple):
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    like: Array  # zero-size, of the output's library, dtype and device (for the backward's check)


@forward_op
def flatten(
    x: Array,
    /,
    start_axis: int = 1,
    end_axis: int = -1,
    *,
    start_dim: int | None = None,
    end_dim: int | None = None,
) -> tuple[Array, FlattenCache]:
    """Merge axes ``start_axis..end_axis`` (inclusive) into one, as ``torch.flatten``
    (whose names ``start_dim=`` and ``end_dim=`` are accepted too).

    The default keeps the batch axis: ``(N, C, H, W) -> (N, C*H*W)``. Backward reshapes
    the gradient back, ``(dx,)``.
    """
    xp, x = op_inputs("flatten", x=x)
    start_axis = torch_alias("flatten", "start_axis", start_axis, 1, "start_dim", start_dim)
    end_axis = torch_alias("flatten", "end_axis", end_axis, -1, "end_dim", end_dim)
    ndim = max(x.ndim, 1)
    start, end = (
        normalize_axis("flatten", a, ndim, name)
        for name, a in (
            ("start_axis" if start_dim is None else "start_dim", start_axis),
            ("end_axis" if end_dim is None else "end_dim", end_axis),
        )
    )
    if start > end:
        raise shape_error(
            "flatten", "end_axis", f"an axis at or after start_axis={start_axis}", end_axis
        )
    shape = tuple(x.shape)
    if x.ndim == 0:
        return xp.reshape(x, (1,)), FlattenCache(shape, (1,), _like(xp, x))
    merged = math.prod(shape[start : end + 1])
    y_shape = (*shape[:start], merged, *shape[end + 1 :])
    return xp.reshape(x, y_shape), FlattenCache(shape, y_shape, _like(xp, x))


@backward_op(FlattenCache)
def flatten_backward(dy: Array, cache: FlattenCache, /) -> tuple[Array]:
    like = cache.like
    xp, dy = cotangent_namespace("flatten_backward", dy, like, cache.y_shape, like.dtype)
    return (xp.reshape(dy, cache.x_shape),)
