r"""Max and average pooling in 1, 2 and 3 spatial dimensions, global average pooling, flatten.

Notation
--------
- :math:`x` : input, shape ``(N, C, *S)`` (or unbatched ``(C, *S)``); :math:`y` : output,
  shape ``(N, C, *L)``; :math:`g = \partial L/\partial y`.
- Window :math:`\ell` covers the input positions :math:`s\ell - p + d\kappa` for the kernel
  offsets :math:`\kappa` (window order: row-major, last axis fastest); positions outside
  the input are padding (and, in ceil mode, the overhang past it).

How the ops compute
-------------------
Box windows are separable: a max (or sum) over a box is a max (or sum) along the last
spatial axis, then along the next-to-last, and so on. Each op pools one axis at a time,
looping over that axis's kernel offsets only, and only over those that reach the input in
some window (the *taps* of :class:`~._windows.PoolAxis`): ``sum(k) - nd`` whole-array steps
rather than ``prod(k) - 1``.

One axis, with the array viewed as ``(outer, n, inner)`` (the axes before it, the axis, the
axes after it): the array is copied once into ``stride`` *phase* buffers (phase ``r`` holds
the positions ``= r`` mod ``stride``, with the padding filled in), each ``(outer, rows,
inner)`` and flat. For one tap, the elements of all windows are consecutive rows of one
phase, so the tap's view is one flat, contiguous slice of a phase buffer, shifted by whole
rows: every step is an elementwise operation on contiguous memory (on NumPy several times
faster than the same operation on a strided slice). The shift runs each outer block's last
rows into the next block; those rows (rows ``m .. rows-1``, and along the axes pooled before,
their extra columns) are *junk*: computed, then cropped from the output, and fed zeros in the
backward. The backward mirrors it: each tap's share of the gradient is added into its
phase at its shift, and the phases are interleaved back into the axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from ._windows import PoolAxis, as_tuple, output_size, pool_axis

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

_INT_MAX = 2**31 - 1


def _prepare(
    op: str,
    nd: int,
    x: Array,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
) -> tuple[ModuleType, Array, bool, tuple[PoolAxis, ...]]:
    xp, x = op_inputs(op, x=x)
    check_floating(op, "x", x, xp)
    if x.ndim not in (nd + 1, nd + 2):
        raise shape_error(
            op, "x", f"a {nd + 2}-d (N, C, *S) or {nd + 1}-d (C, *S) array", tuple(x.shape)
        )
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None, ...]
    if x.shape[1] == 0 or 0 in x.shape[2:]:  # torch's rule: only the batch may be empty
        shape = tuple(x.shape[1:] if unbatched else x.shape)
        raise shape_error(
            op, "x", "non-zero channel and spatial sizes (a batch of 0 is fine)", shape
        )
    # Sizes in torch's C int range (its avg_pool refuses larger ones, its max_pool spins
    # on a kernel of 10**12). Within it the taps keep every buffer and loop the size of
    # the input the windows cover, however large the kernel, stride or padding.
    kernel = as_tuple(op, "kernel_size", kernel_size, nd, minimum=1, maximum=_INT_MAX)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel  # torch's default: non-overlapping windows
    stride = as_tuple(op, "stride", stride, nd, minimum=1, maximum=_INT_MAX)
    pad = as_tuple(op, "padding", padding, nd, minimum=0, maximum=_INT_MAX)
    dil = as_tuple(op, "dilation", dilation, nd, minimum=1, maximum=_INT_MAX)
    ceil_mode = bool_option(op, "ceil_mode", ceil_mode)
    # torch's rule, on the kernel size without dilation: padding <= kernel_size // 2
    if any(p > k // 2 for p, k in zip(pad, kernel, strict=True)):
        raise shape_error(op, "padding", f"at most half the kernel size {kernel}", f"{pad}")
    sizes = tuple(x.shape[2:])
    geometry = tuple(zip(sizes, kernel, stride, pad, dil, strict=True))
    # torch's rule: at least one window. In ceil mode a window may overhang the padded
    # input (by up to stride - 1): torch keeps it, and so do we.
    if any(output_size(n, k, s, d, p, p, ceil_mode) < 1 for n, k, s, p, d in geometry):
        room = " plus stride - 1 (ceil_mode)" if ceil_mode else ""
        raise shape_error(
            op,
            "kernel_size",
            f"a kernel extent (dilation*(kernel-1)+1) no larger than the padded input "
            f"{tuple(n + 2 * p for n, p in zip(sizes, pad, strict=True))}{room}",
            f"kernel {kernel} with dilation {dil}",
        )
    return xp, x, unbatched, tuple(pool_axis(*g, ceil_mode) for g in geometry)


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
    op: str,
    dy: Array,
    x_shape: tuple[int, ...],
    axes: tuple[PoolAxis, ...],
    unbatched: bool,
    like: Array,
) -> tuple[ModuleType, Array]:
    """``dy`` of the (batched) forward output's shape (without N for unbatched input)."""
    shape = (*x_shape[:2], *(ax.m for ax in axes))
    return cotangent_namespace(op, dy, like, shape[1:] if unbatched else shape, like.dtype)


# ------------------------------------------------------------ one axis: phases and taps


def _phases(xp: ModuleType, y3: Array, ax: PoolAxis, fill: float) -> dict[int, Array]:
    """``y3`` (outer, n, inner) split into the phases its taps read, padding rows set to
    ``fill``: flat buffers of ``(outer + 1, rows, inner)``, the last block a tail that the
    shifted views of the last block run into."""
    outer, _, inner = y3.shape
    rows, s, q0 = ax.rows, ax.stride, ax.q0
    out = {}
    for r in ax.residues:
        u0, u1 = ax.data(r)
        buf = xp.empty((outer + 1, rows, inner), dtype=y3.dtype, device=device(y3))
        lo, hi = (u0 - q0, u1 - q0) if u1 > u0 else (0, 0)
        if u1 > u0:
            part = y3[:, r + u0 * s : r + (u1 - 1) * s + 1 : s, :]
            buf = xpx.at(buf, (slice(0, outer), slice(lo, hi), slice(None))).set(part, xp=xp)
        for pad in (slice(0, lo), slice(hi, rows)):
            if pad.stop > pad.start:
                buf = xpx.at(buf, (slice(0, outer), pad, slice(None))).set(fill, xp=xp)
        buf = xpx.at(buf, (outer, Ellipsis)).set(fill, xp=xp)
        out[r] = xp.reshape(buf, (-1,))
    return out


def _tap_views(phases: dict[int, Array], ax: PoolAxis, outer: int, inner: int) -> list[Array]:
    """For each tap, its element of every window: a flat slice of the tap's phase, in the
    ``(outer, rows, inner)`` layout (rows ``m ..`` of each block are junk)."""
    size = outer * ax.rows * inner
    return [
        phases[ax.residue(t)][ax.shift(t) * inner : ax.shift(t) * inner + size]
        for t in range(ax.taps)
    ]


def _collect(
    xp: ModuleType,
    parts: list[Array],
    ax: PoolAxis,
    inner: int,
    owned: bool,
    combine: Callable[[Array, slice, Array], Array],
) -> dict[int, Array]:
    """The adjoint of :func:`_tap_views`: tap ``t``'s ``parts[t]`` (flat, the windows'
    layout) added into its phase at its shift. ``owned``: the parts are ours to update in
    place (else they are copied before being written to)."""
    size = parts[0].shape[0]
    bufs: dict[int, Array] = {}
    for r in ax.residues:
        taps = [t for t in range(ax.taps) if ax.residue(t) == r]
        buf = None
        for t in taps:
            part = parts[t]
            sigma = min(ax.shift(t) * inner, size)  # (size 0: an empty batch)
            if buf is None and sigma == 0 and (owned or len(taps) == 1):
                buf = part
            elif buf is None:
                buf = xp.zeros((size,), dtype=part.dtype, device=device(part))
                buf = xpx.at(buf, slice(sigma, size)).set(part[: size - sigma], xp=xp)
            else:
                # the cut-off end of the part is its last block's junk rows: zeros
                buf = combine(buf, slice(sigma, size), part[: size - sigma])
        bufs[r] = buf
    return bufs


def _interleave(
    xp: ModuleType, bufs: dict[int, Array], ax: PoolAxis, outer: int, inner: int
) -> Array:
    """The phase buffers (flat, ``(outer, rows, inner)``) back into the axis: ``(outer, n,
    inner)``, the padding rows dropped; positions no window covers are 0."""
    n, s, q0, rows = ax.n, ax.stride, ax.q0, ax.rows
    some = next(iter(bufs.values()))
    if s == 1 and q0 == 0 and rows == n:  # one phase, no padding: the buffer is the axis
        return xp.reshape(some, (outer, n, inner))
    covered = sum(u1 - u0 for u0, u1 in (ax.data(r) for r in bufs))
    make = xp.empty if covered == n else xp.zeros
    out = make((outer, n, inner), dtype=some.dtype, device=device(some))
    for r, buf in bufs.items():
        u0, u1 = ax.data(r)
        if u1 > u0:
            part = xp.reshape(buf, (outer, rows, inner))[:, u0 - q0 : u1 - q0, :]
            rows_r = slice(r + u0 * s, r + (u1 - 1) * s + 1, s)
            out = xpx.at(out, (slice(None), rows_r, slice(None))).set(part, xp=xp)
    return out


def _add(buf: Array, where: slice, part: Array) -> Array:
    return xpx.at(buf, where).add(part)


def _forward_axes(
    xp: ModuleType,
    x: Array,
    axes: tuple[PoolAxis, ...],
    step: Callable[[ModuleType, Array, PoolAxis], tuple[Array, Array | None]],
) -> tuple[Array, list[Array | None]]:
    """``step`` along each axis, the last first: the result in the junk layout ``(N, C,
    *rows)``, and what each step keeps for the backward."""
    nd = len(axes)
    sizes = list(x.shape[2:])
    lead = x.shape[0] * x.shape[1]
    y, kept = x, [None] * nd
    for a in reversed(range(nd)):
        y3 = xp.reshape(y, (lead * math.prod(sizes[:a]), sizes[a], math.prod(sizes[a + 1 :])))
        y, kept[a] = step(xp, y3, axes[a])
        sizes[a] = axes[a].rows
    return xp.reshape(y, (*x.shape[:2], *sizes)), kept


def _crop(a: Array, axes: tuple[PoolAxis, ...]) -> Array:
    """The output's windows of an array in the junk layout (a view)."""
    windows = (Ellipsis, *[slice(0, ax.m) for ax in axes])
    return a[windows]


def _embed(xp: ModuleType, g: Array, axes: tuple[PoolAxis, ...], copy: bool = False) -> Array:
    """``g`` (N, C, *m) placed in the junk layout ``(N, C, *rows)``, zeros in the junk; flat.
    ``copy``: always a new array (else ``g`` itself where there is no junk)."""
    rows = tuple(ax.rows for ax in axes)
    if rows != tuple(ax.m for ax in axes):
        buf = xp.zeros((*g.shape[:2], *rows), dtype=g.dtype, device=device(g))
        g = xpx.at(buf, (Ellipsis, *[slice(0, ax.m) for ax in axes])).set(g, xp=xp)
    elif copy:
        g = xp.asarray(g, copy=True)
    return xp.reshape(g, (-1,))


def _backward_axes(
    xp: ModuleType,
    g: Array,
    axes: tuple[PoolAxis, ...],
    x_shape: tuple[int, ...],
    step: Callable[[int, Array, int, int], Array],
) -> Array:
    """``step(a, g, outer, inner)`` undoes axis ``a``, the first axis first: from the junk
    layout of ``(outer, rows, inner)`` (flat) to ``(outer, n, inner)``."""
    nd = len(axes)
    sizes = [ax.rows for ax in axes]
    lead = x_shape[0] * x_shape[1]
    for a in range(nd):
        outer, inner = lead * math.prod(x_shape[2 : 2 + a]), math.prod(sizes[a + 1 :])
        g = xp.reshape(step(a, g, outer, inner), (-1,))
        sizes[a] = axes[a].n
    return xp.reshape(g, x_shape)


def _check_nd(op: str, cache: MaxPoolCache | AvgPoolCache, nd: int) -> None:
    """A pooling cache of the op's own dimensionality (the cache type is shared)."""
    got = len(cache.axes)
    if got != nd:
        raise TypeError(
            f"{op}: argument 'cache' expected the cache of a {nd}-d pooling, got that of a "
            f"{got}-d one"
        )


# --------------------------------------------------------------------------- max pooling


class MaxPoolCache(NamedTuple):
    # Per spatial axis, which tap won along that axis (a small int; a bool, the second, for
    # two taps; None for one), in the junk layout of that axis's output.
    argmax: tuple[Array | None, ...]
    x_shape: tuple[int, ...]
    axes: tuple[PoolAxis, ...]
    unbatched: bool
    like: Array  # zero-size, of the output's library, dtype and device (for the backward's check)


def _first_taps(xp: ModuleType, ax: PoolAxis, dtype: Any, dev: Any) -> Array:
    """Each window that starts in the left padding: its first tap on the input."""
    w0 = ax.left_windows
    if w0 <= 2:  # then the taps may have a gap (m <= 2): count them
        first, second = ax.first_tap(0), ax.first_tap(w0 - 1)
        return first + (second - first) * xp.arange(w0, dtype=dtype, device=dev)
    # three or more windows: the taps are contiguous offsets, base[t] = base[0] + t d
    w = xp.arange(w0, dtype=xp.int64, device=dev)
    t = (-(w * ax.stride) - ax.base[0] + ax.dilation - 1) // ax.dilation
    return xp.astype(xp.minimum(t, ax.taps - 1), dtype)


def _max_axis(xp: ModuleType, y3: Array, ax: PoolAxis) -> tuple[Array, Array | None]:
    """Max along the axis of ``y3`` (outer, n, inner) by torch's CPU rule, and the winning
    tap: over the window's input elements in order (the padding is -inf but never a
    candidate), the first maximum, or the last NaN if there is one."""
    outer, _, inner = y3.shape
    views = _tap_views(_phases(xp, y3, ax, -math.inf), ax, outer, inner)
    k = len(views)
    if k == 1:
        return views[0], None
    # The maximum from the last tap back: the running value is the max of taps t.., NaN
    # when a NaN is among them (Array API maximum propagates NaN).
    # Winner: the number of leading taps below the max (the first maximum: a NaN max has
    # none below it), plus, in a NaN window, the number of taps before its last NaN
    # (those with a NaN after them). Counted with compare/and/or/add: where() on a
    # data-dependent mask is several times slower on NumPy (branch mispredictions). The
    # NaN flags of up to 8 taps are kept (booleans); past that they are counted as they
    # come (an operation more per tap, but one array instead of one per tap).
    # (With two taps the winner is kept as a bool: the second won.)
    idt = _index_dtype(xp, k)
    keep = k <= 8
    y, nan_after, nans = views[-1], [None] * (k - 1), None
    for t in reversed(range(k - 1)):
        nan_t = xp.isnan(y)
        if keep:
            nan_after[t] = nan_t
        else:
            nans = xp.astype(nan_t, idt) if nans is None else nans + xp.astype(nan_t, idt)
        y = xp.maximum(views[t], y)
    below = views[0] < y
    idx = below | nan_after[0] if keep else below
    if k > 2:
        idx = xp.astype(idx, idt)
    for t in range(1, k - 1):
        below = below & (views[t] < y)
        idx = idx + xp.astype(below | nan_after[t] if keep else below, idt)
    if nans is not None:
        idx = idx + nans
    w0 = ax.left_windows
    if w0:
        # a window that starts in the padding and whose input elements are all -inf: the
        # first maximum above is its first tap, padding; torch's is the first input element
        idx3 = xp.reshape(idx, (outer, ax.rows, inner))
        first = xp.reshape(_first_taps(xp, ax, idt, device(idx)), (1, w0, 1))
        left = (slice(None), slice(0, w0), slice(None))
        clamped = idx3[left] | (first > 0) if k == 2 else xp.maximum(idx3[left], first)
        idx = xp.reshape(xpx.at(idx3, left).set(clamped, xp=xp), (-1,))
    return y, idx


def _max_pool_nd(
    op: str,
    nd: int,
    x: Array,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
) -> tuple[Array, MaxPoolCache]:
    xp, x, unbatched, axes = _prepare(op, nd, x, kernel_size, stride, padding, dilation, ceil_mode)
    y, argmax = _forward_axes(xp, x, axes, _max_axis)
    if any(ax.rows != ax.m for ax in axes):
        y = xp.asarray(_crop(y, axes), copy=True)
    return _unbatch(y, unbatched), MaxPoolCache(
        tuple(argmax), tuple(x.shape), axes, unbatched, _like(xp, x)
    )


def _or(buf: Array, where: slice, part: Array) -> Array:
    return xpx.at(buf, where).set(buf[where] | part)


def _split_nonfinite(xp: ModuleType, g: Array) -> tuple[Array, Array]:
    """``g`` (ours to update) with its non-finite entries set to 0, and their classes
    (int8, 0 where finite): bit 1 for +inf, bit 2 for -inf, both for NaN (what +inf plus
    -inf gives)."""
    up = xp.astype(~(g < math.inf), xp.int8)  # +inf or NaN
    down = xp.astype(~(g > -math.inf), xp.int8)  # -inf or NaN
    classes = up + down + down
    return xpx.at(g, classes != 0).set(0.0, xp=xp), classes


def _restore_nonfinite(xp: ModuleType, buf: Array, classes: Array) -> Array:
    """Where an element received a non-finite gradient, its IEEE sum: +inf, -inf, or NaN
    (from a NaN, or from +inf and -inf together)."""
    for code, value in ((1, math.inf), (2, -math.inf), (3, math.nan)):
        buf = xpx.at(buf, classes == code).set(value, xp=xp)
    return buf


def _max_pool_nd_backward(dy: Array, cache: MaxPoolCache, op: str, nd: int) -> tuple[Array]:
    _check_nd(op, cache, nd)
    argmax, x_shape, axes, unbatched, like = cache
    xp, dy = _check_dy(op, dy, x_shape, axes, unbatched, like)
    dy = _batch(xp, dy, unbatched, nd, op)
    # torch scatters each g to its argmax alone. Routing by mask products (below) would
    # turn an inf or NaN g into NaN over its whole window (0 * inf), so the finite part
    # of g is routed by value and the non-finite entries by class, a small integer routed
    # the same way, then written into the gradient on the last axis.
    g, classes = _split_nonfinite(xp, _embed(xp, dy, axes, copy=True))

    def route(a: int, g: Array, outer: int, inner: int) -> Array:
        # Undo the axis-a max: each window's gradient to the tap that won along axis a,
        # then into that tap's phase at its shift, then the phases back into the axis.
        nonlocal classes
        ax, idx, c = axes[a], argmax[a], classes
        if idx is None:
            parts, cparts, owned = [g], [c], False
        else:
            # g * mask, not where(mask, g, 0): the same values for finite g, several times
            # faster on NumPy. With two taps (idx: whether the second won) the first takes
            # what is left, exactly g or 0.
            parts, cparts = [], []
            for t in range(ax.taps) if ax.taps > 2 else ():
                hit = idx == t
                parts.append(g * xp.astype(hit, g.dtype))
                cparts.append(c * xp.astype(hit, c.dtype))
            if ax.taps == 2:
                second, csecond = g * xp.astype(idx, g.dtype), c * xp.astype(idx, c.dtype)
                parts, cparts = [g - second, second], [c - csecond, csecond]
            owned = True
        bufs = _collect(xp, parts, ax, inner, owned, _add)
        cbufs = _collect(xp, cparts, ax, inner, owned, _or)
        if a == nd - 1:  # the last axis: the phases hold input elements
            bufs = {r: _restore_nonfinite(xp, bufs[r], cbufs[r]) for r in bufs}
        else:
            classes = xp.reshape(_interleave(xp, cbufs, ax, outer, inner), (-1,))
        return _interleave(xp, bufs, ax, outer, inner)

    g = _backward_axes(xp, g, axes, x_shape, route)
    return (_unbatch(g, unbatched),)


_MAX_DOC = r"""{nd}-d max pooling, torch's ``max_pool{nd}d``.

    .. math:: y_\ell = \max_\kappa \tilde x_{{s\ell + d\kappa}}

    Which element wins follows torch's CPU kernel, on every backend: over the window's
    input elements in window order (row-major, last axis fastest; the padding never
    competes), the first maximum, so ties go to the first. A NaN makes the output NaN and
    the window's gradient goes to its last NaN. A window whose input elements are all
    -inf (a mask) outputs -inf and routes its gradient to its first input element. The
    backward sends each upstream gradient to its window's winner alone, as torch's scatter
    does: an inf or NaN there changes that element only (an element that receives +inf and
    -inf gets NaN, their sum).

    Parameters
    ----------
    x : array, shape (N, C, {spatial}) or (C, {spatial})
        N may be 0; the other sizes not (as in torch).
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
        The argmax (small integer offsets, one array per axis) and the geometry.

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
    axes: tuple[PoolAxis, ...]
    unbatched: bool
    like: Array  # zero-size, of the output's library, dtype and device (for the backward's check)


def _inv_counts(
    xp: ModuleType, axes: tuple[PoolAxis, ...], count_include_pad: bool, like: Array
) -> Array | float:
    """1 / (number of elements averaged) per window, torch's rule.

    Window ``w`` spans ``[w*stride - pad, w*stride - pad + kernel)`` clipped at ``n + pad``:
    with ``count_include_pad`` the explicit padding counts but the room ceil mode adds past
    it does not; without, only input elements count. Windows are boxes, so the count is a
    product of per-axis counts: a scalar when no window is clipped (decided from the
    geometry), else per-axis arrays built on the device (no loop over windows).
    """

    def count0(ax: PoolAxis) -> int:  # the first window's
        end = min(ax.kernel - ax.pad, ax.n + ax.pad)
        return end + ax.pad if count_include_pad else min(end, ax.n)

    def same(ax: PoolAxis) -> bool:  # every window's count is the first one's
        last_end = (ax.m - 1) * ax.stride - ax.pad + ax.kernel
        if count_include_pad:
            return ax.m == 1 or last_end <= ax.n + ax.pad
        return ax.m == 1 or (ax.pad == 0 and last_end <= ax.n)

    if all(same(ax) for ax in axes):
        return 1.0 / math.prod(count0(ax) for ax in axes)
    nd, dev = len(axes), device(like)
    inv = None
    for a, ax in enumerate(axes):
        start = xp.arange(ax.m, dtype=xp.int64, device=dev) * ax.stride - ax.pad
        end = xp.minimum(start + ax.kernel, ax.n + ax.pad)
        count = end - start if count_include_pad else xp.minimum(end, ax.n) - xp.maximum(start, 0)
        shape = [1] * nd
        shape[a] = ax.m
        v = xp.reshape(1.0 / xp.astype(count, like.dtype), tuple(shape))
        inv = v if inv is None else inv * v
    return inv


def _sum_axis(xp: ModuleType, y3: Array, ax: PoolAxis) -> tuple[Array, None]:
    outer, _, inner = y3.shape
    views = _tap_views(_phases(xp, y3, ax, 0.0), ax, outer, inner)
    total = views[0]
    for v in views[1:]:
        total = total + v
    return total, None


def _avg_pool_nd(
    op: str,
    nd: int,
    x: Array,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: Any,
    count_include_pad: Any,
) -> tuple[Array, AvgPoolCache]:
    xp, x, unbatched, axes = _prepare(op, nd, x, kernel_size, stride, padding, 1, ceil_mode)
    count_include_pad = bool_option(op, "count_include_pad", count_include_pad)
    total, _ = _forward_axes(xp, x, axes, _sum_axis)
    inv = _inv_counts(xp, axes, count_include_pad, x)
    y = _crop(total, axes) * inv  # a new array even for a 1-element window
    return _unbatch(y, unbatched), AvgPoolCache(inv, tuple(x.shape), axes, unbatched, _like(xp, x))


def _avg_pool_nd_backward(dy: Array, cache: AvgPoolCache, op: str, nd: int) -> tuple[Array]:
    _check_nd(op, cache, nd)
    inv, x_shape, axes, unbatched, like = cache
    xp, dy = _check_dy(op, dy, x_shape, axes, unbatched, like)
    dy = _batch(xp, dy, unbatched, nd, op)

    def spread(a: int, g: Array, outer: int, inner: int) -> Array:
        # every tap of a window gets the window's whole (already divided) gradient
        ax = axes[a]
        bufs = _collect(xp, [g] * ax.taps, ax, inner, False, _add)
        return _interleave(xp, bufs, ax, outer, inner)

    g = _backward_axes(xp, _embed(xp, dy * inv, axes), axes, x_shape, spread)
    return (_unbatch(g, unbatched),)


_AVG_DOC = r"""{nd}-d average pooling, torch's ``avg_pool{nd}d``.

    .. math:: y_\ell = \frac{{1}}{{c_\ell}} \sum_\kappa \tilde x_{{s\ell + \kappa}}

    Parameters
    ----------
    x : array, shape (N, C, {spatial}) or (C, {spatial})
        N may be 0; the other sizes not (as in torch).
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
        Any size may be 0, as in torch: with no spatial positions the mean is NaN.

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
    cache = GlobalAvgPoolCache(tuple(x.shape), _like(xp, x))
    if math.prod(x.shape[2:]) == 0:  # the mean of nothing: NaN, as torch (without a warning)
        return xp.full(tuple(x.shape[:2]), math.nan, dtype=x.dtype, device=device(x)), cache
    return xp.mean(x, axis=tuple(range(2, x.ndim))), cache


@backward_op(GlobalAvgPoolCache)
def global_avg_pool_backward(dy: Array, cache: GlobalAvgPoolCache, /) -> tuple[Array]:
    shape = cache.x_shape
    op = "global_avg_pool_backward"
    xp, dy = cotangent_namespace(op, dy, cache.like, shape[:2], cache.like.dtype)
    nd, size = len(shape) - 2, math.prod(shape[2:])
    if size == 0:  # no positions to share g among (and no division by zero)
        return (xp.zeros(shape, dtype=dy.dtype, device=device(dy)),)
    share = xp.reshape(dy / size, (*shape[:2], *(1,) * nd))
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
