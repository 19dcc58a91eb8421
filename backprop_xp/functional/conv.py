r"""Convolution in 1, 2 and 3 spatial dimensions: one N-d implementation (im2col + GEMM).

Notation
--------
- :math:`x` : input, shape ``(N, C_in, *S)``; :math:`W` : weight, shape
  ``(C_out, C_in/G, *K)``; :math:`b` : bias, shape ``(C_out,)``; :math:`y` : output, shape
  ``(N, C_out, *L)``. :math:`G` groups, stride :math:`s`, dilation :math:`d`, padding
  :math:`p` (all per spatial axis).
- :math:`\kappa` runs over the :math:`|K| = \prod K` kernel offsets, :math:`\ell` over the
  :math:`|L|` output positions.

Forward (cross-correlation, as torch):


.. math::
    y_{n,o,\ell} = b_o + \sum_{c,\kappa} W_{o,c,\kappa} \tilde x_{n,\,g(o)C_g+c,\,s\ell+d\kappa}

with :math:`\tilde x` the zero-padded input.

im2col gathers :math:`\tilde x_{n,c,s\ell+d\kappa}` into the matrix ``cols`` of shape
``(C_in |K|, N |L|)`` (rows: channel-major, then kernel offset; columns: batch, then
position): per kernel offset, one strided slice of the input goes to the output positions
whose tap is an input element, and the rest of that offset's block stays zero. The padded
input is never built (a padding of ``10**12`` with a stride of ``10**12`` has a small
output). Then per group ``y = W @ cols`` (one GEMM), ``dW = dY @ cols^T`` (one GEMM) and
``dcols = W^T @ dY`` (one GEMM), and col2im adds each offset's block of ``dcols`` back
into ``dx``, at the input elements it read only.

These are the terms torch's own kernels sum, so NaN, +inf and -inf land where torch's do:
``dW`` has a ``dy * 0`` term for every tap in the padding (NaN where ``dy`` is infinite)
and no term pairing ``x`` with anything but a real output position, and ``dx`` has no
``W * 0`` term. (Computing the stride-1 ``dx`` as a convolution of ``dY`` with the
flipped kernel, and ``dW`` from the same ``im2col(dY)``, saves col2im but zero-pads
``dY``: an infinite ``x`` or ``W`` then puts NaN into entries torch leaves finite.)

Batches are processed in chunks so that the im2col buffers alive at one time stay under a
byte budget, :func:`set_conv_workspace_bytes` (default 8 MiB on a CPU, 2 GiB on a GPU);
each chunk is still one GEMM per direction.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx

from .._config import conv_workspace_bytes, get_workspace_bytes_override
from .._config import set_workspace_bytes_override as _set_workspace
from ..backend import device
from ._validation import (
    backward_op,
    check_floating,
    cotangent_namespace,
    forward_op,
    int_option,
    op_inputs,
    shape_error,
)
from ._windows import Window, as_tuple, make_window

__all__ = [
    "conv1d",
    "conv1d_backward",
    "conv2d",
    "conv2d_backward",
    "conv3d",
    "conv3d_backward",
    "conv_workspace_bytes",
    "get_conv_workspace_bytes",
    "set_conv_workspace_bytes",
]

Array = Any

# Default im2col budgets. On a CPU small chunks stay in cache and keep peak memory low; on a
# GPU every chunk costs kernel launches, so the whole batch should usually be one chunk.
_DEFAULT_WORKSPACE = {"cpu": 8 * 2**20, "accelerator": 2 * 2**30}


def set_conv_workspace_bytes(nbytes: int | None) -> None:
    """Bound the im2col workspace of the convolutions in the current thread or task;
    ``None`` restores the defaults. ``with F.conv_workspace_bytes(n):`` sets it for a block.

    The forward builds ``cols``, ``C_in * prod(kernel) * prod(out_spatial) * itemsize``
    bytes per batch item; the backward builds ``cols`` and then ``dcols``, the same size
    each, and counts both. The batch is split into chunks whose buffers fit the budget (at
    least one item per chunk); each chunk is one GEMM per direction. Larger budgets mean
    fewer, larger GEMMs; smaller ones less peak memory.

    Defaults: 8 MiB for arrays on the CPU (on a 2-core CPU 8-16 MiB chunks were also the
    fastest: the buffers stay in cache between im2col and the GEMM) and 2 GiB on GPUs
    (devices whose name mentions cuda, gpu, rocm or mps), where per-chunk launch overhead
    dominates and memory is plentiful. A value set here applies to every device, in this
    thread (or asyncio task) only: the chunking decides the order of the weight gradient's
    sums, so another thread's gradients never change bits because of it. A new thread
    starts from the defaults.
    """
    _set_workspace(nbytes)


def get_conv_workspace_bytes(device: Any = None) -> int:
    """The im2col workspace budget in bytes for arrays on ``device`` (default: a CPU)."""
    override = get_workspace_bytes_override()
    if override is not None:
        return override
    name = str(device).lower()
    on_accelerator = any(key in name for key in ("cuda", "gpu", "rocm", "mps"))
    return _DEFAULT_WORKSPACE["accelerator" if on_accelerator else "cpu"]


class ConvCache(NamedTuple):
    x: Array  # the input; the backward rebuilds cols chunk by chunk rather than keep them
    weight: Array
    has_bias: bool
    win: Window
    groups: int
    unbatched: bool  # x came as (C_in, *S)


def _conv_nd(
    op: str,
    nd: int,
    x: Array,
    weight: Array,
    bias: Array | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> tuple[Array, ConvCache]:
    xp, x, weight, bias = op_inputs(op, x=x, weight=weight, bias=bias, optional=("bias",))
    for name, a in (("x", x), ("weight", weight), ("bias", bias)):
        if a is not None:
            check_floating(op, name, a, xp)
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and a.dtype != x.dtype:
            raise TypeError(
                f"{op}: argument '{name}' expected dtype {x.dtype} (that of 'x'), got {a.dtype}"
            )
    if x.ndim not in (nd + 1, nd + 2):
        raise shape_error(
            op,
            "x",
            f"a {nd + 2}-d array (N, C_in, *{nd} spatial) or an unbatched {nd + 1}-d one",
            tuple(x.shape),
        )
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None, ...]
    if weight.ndim != nd + 2:
        raise shape_error(
            op,
            "weight",
            f"a {nd + 2}-d array (C_out, C_in/groups, *{nd} kernel)",
            tuple(weight.shape),
        )
    groups = int_option(op, "groups", groups, low=1)
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in % groups or c_out % groups:
        raise shape_error(
            op, "groups", "a divisor of C_in and C_out", f"{groups} with C_in={c_in}, C_out={c_out}"
        )
    if weight.shape[1] * groups != c_in:
        raise shape_error(
            op,
            "weight",
            f"shape[1] = C_in/groups = {c_in // groups}",
            f"shape {tuple(weight.shape)}",
        )
    if c_out < 1 or any(k < 1 for k in weight.shape[2:]):
        raise shape_error(op, "weight", "positive C_out and kernel sizes", tuple(weight.shape))
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise shape_error(op, "bias", f"shape ({c_out},)", tuple(bias.shape))
    kernel = tuple(weight.shape[2:])
    stride = as_tuple(op, "stride", stride, nd, minimum=1)
    dilation = as_tuple(op, "dilation", dilation, nd, minimum=1)
    if isinstance(padding, str):
        if padding == "valid":
            lo = hi = (0,) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise shape_error(op, "padding", "'same' only with stride 1", f"stride {stride}")
            total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            lo = tuple(t // 2 for t in total)  # torch puts the odd element on the right
            hi = tuple(t - t // 2 for t in total)
        else:
            raise shape_error(op, "padding", "an int, a tuple, 'valid' or 'same'", repr(padding))
    else:
        lo = hi = as_tuple(op, "padding", padding, nd, minimum=0)
    win = make_window(op, tuple(x.shape[2:]), kernel, stride, dilation, lo, hi)

    _check_sizes(op, xp, x, win, c_out)
    n = x.shape[0]
    taps = _taps(win)
    y = _new(xp, xp.empty, (n, c_out, *win.out_size), x, op, win, "output")
    Wg = _weight_matrix(xp, weight, groups)
    per_item = x.shape[1] * win.n_offsets * _prod(win.out_size)
    for a, b in _chunks(xp, x, per_item):
        cols = _im2col(xp, x[a:b, ...], win, groups, taps, op)  # (G, C_g |K|, n |L|)
        yc = xp.matmul(Wg, cols)  # (G, C_out/G, n |L|)
        yc = xp.reshape(yc, (c_out, b - a, *win.out_size))
        if bias is not None:
            yc = xpx.at(yc, ...).add(xp.reshape(bias, (c_out, 1, *(1,) * nd)))  # yc is ours
        y = xpx.at(y, (slice(a, b), ...)).set(xp.permute_dims(yc, (1, 0, *range(2, nd + 2))))
    cache = ConvCache(x, weight, bias is not None, win, groups, unbatched)
    return (y[0, ...] if unbatched else y), cache


def _conv_nd_backward(
    dy: Array, cache: ConvCache, op: str, nd: int
) -> tuple[Array, Array, Array | None]:
    x, weight, has_bias, win, groups, unbatched = cache
    if len(win.in_size) != nd:  # the cache type is shared by conv1d/2d/3d
        raise TypeError(
            f"{op}: argument 'cache' expected the cache of a {nd}-d convolution, got that of "
            f"a {len(win.in_size)}-d one"
        )
    n = x.shape[0]
    c_out = weight.shape[0]
    shape = (n, c_out, *win.out_size)
    xp, dy = cotangent_namespace(op, dy, x, shape[1:] if unbatched else shape, x.dtype)
    if unbatched:
        dy = dy[None, ...]
    dx, dW = _input_and_weight_grads(xp, dy, x, weight, win, groups, op)
    db = xp.sum(dy, axis=(0, *range(2, nd + 2))) if has_bias else None
    return (dx[0, ...] if unbatched else dx), dW, db


def _input_and_weight_grads(
    xp: ModuleType, dy: Array, x: Array, weight: Array, win: Window, groups: int, op: str
) -> tuple[Array, Array]:
    r"""``dW^T = cols @ dY^T`` and ``dcols = W^T @ dY``, then col2im: torch's terms.

    Every term of :math:`\partial L/\partial W` pairs a real output position with its
    tap, an input element or a padding zero (``0 * dy``: NaN where ``dy`` is infinite), and
    every term of :math:`\partial L/\partial x` a weight with a real output position, as in
    torch's own kernels; so non-finite values land where torch puts them.
    """
    nd = len(win.in_size)
    c_out = weight.shape[0]
    taps = _taps(win)
    Wg = _weight_matrix(xp, weight, groups)  # (G, C_out/G, C_g |K|)
    WgT = xp.permute_dims(Wg, (0, 2, 1))
    # dW^T = cols @ dy^T: with cols as the untransposed operand OpenBLAS runs ~30% faster
    # than dy @ cols^T (measured); the small result is transposed once at the end.
    dWgT = xp.zeros((groups, Wg.shape[2], Wg.shape[1]), dtype=x.dtype, device=device(x))
    dx = xp.zeros(tuple(x.shape), dtype=x.dtype, device=device(x))
    perm = (1, 0, *range(2, nd + 2))
    # cols, then dcols (one at a time, counted as two: one-item chunks of the benchmark's
    # 32x32x64 input were 6% faster than three-item ones on a 2-core machine, 1 thread)
    per_item = 2 * win.n_offsets * x.shape[1] * _prod(win.out_size)
    for a, b in _chunks(xp, x, per_item):
        cols = _im2col(xp, x[a:b, ...], win, groups, taps, op)  # (G, C_g |K|, n |L|)
        dyc = xp.reshape(xp.permute_dims(dy[a:b, ...], perm), (groups, c_out // groups, -1))
        dWgT = dWgT + xp.matmul(cols, xp.permute_dims(dyc, (0, 2, 1)))
        del cols
        dcols = xp.matmul(WgT, dyc)  # (G, C_g |K|, n |L|)
        dx = _col2im(xp, dcols, win, taps, dx, slice(a, b))
        del dcols
    dW = xp.reshape(xp.permute_dims(dWgT, (0, 2, 1)), tuple(weight.shape))
    return dx, dW


def _weight_matrix(xp: ModuleType, weight: Array, groups: int) -> Array:
    return xp.reshape(weight, (groups, weight.shape[0] // groups, -1))


def _chunks(xp: ModuleType, x: Array, elements_per_item: int) -> Iterator[tuple[int, int]]:
    """Batch ranges whose im2col buffers fit the workspace budget (at least one item)."""
    n = x.shape[0]
    itemsize = xp.finfo(x.dtype).bits // 8
    budget = get_conv_workspace_bytes(device(x))
    step = max(1, budget // max(elements_per_item * itemsize, 1))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _prod(t: tuple[int, ...]) -> int:
    p = 1
    for v in t:
        p *= v
    return p


class _Tap(NamedTuple):
    """One kernel offset's taps that land on the input rather than in the padding."""

    j: int  # the offset's index in window order
    out: tuple[slice, ...]  # the output positions whose tap at this offset is an input element
    inp: tuple[slice, ...]  # those input elements, strided slices of the spatial axes


def _taps(win: Window) -> list[_Tap]:
    r"""Per kernel offset :math:`\kappa`, the box of output positions :math:`\ell` with
    :math:`0 \le s\ell + d\kappa - p_{lo} < S` on every axis, and the input slices they read.

    The padded input is never built: padding of ``10**12`` with stride or dilation of
    ``10**12`` has a small output, which only a few taps of a few offsets reach. Offsets
    whose taps all fall in the padding are left out.
    """
    per_axis = []
    for size, k, s, d, lo, m in zip(
        win.in_size, win.kernel, win.stride, win.dilation, win.pad_lo, win.out_size, strict=True
    ):
        ranges: list[tuple[slice, slice] | None] = []
        for i in range(k):
            first = max(0, -((d * i - lo) // s))  # ceil((lo - d i) / s)
            last = min(m - 1, (size - 1 + lo - d * i) // s)
            if first > last:
                ranges.append(None)
                continue
            start = s * first + d * i - lo
            ranges.append((slice(first, last + 1), slice(start, start + s * (last - first) + 1, s)))
        per_axis.append(ranges)
    taps = []
    for j, combo in enumerate(itertools.product(*per_axis)):
        if all(r is not None for r in combo):
            taps.append(_Tap(j, tuple(r[0] for r in combo if r), tuple(r[1] for r in combo if r)))
    return taps


def _covers(taps: list[_Tap], win: Window) -> bool:
    """Whether the taps fill every ``(offset, output position)``: no padding is read."""
    return len(taps) == win.n_offsets and all(
        o.start == 0 and o.stop == m for t in taps for o, m in zip(t.out, win.out_size, strict=True)
    )


def _im2col(xp: ModuleType, x: Array, win: Window, groups: int, taps: list[_Tap], op: str) -> Array:
    """``cols`` of shape ``(G, C_g |K|, n |L|)`` from ``x`` of shape ``(n, C, *S)``.

    ``cols`` is allocated as ``(C, |K|, n, *L)``, zero where a tap falls in the padding, and
    each kernel offset's taps are copied in with ``x`` transposed to ``(C, n, *S)`` on the
    fly: one strided copy per offset, the big buffer written in its final layout.
    """
    n, c = x.shape[0], x.shape[1]
    nd = len(win.in_size)
    shape = (c, win.n_offsets, n, *win.out_size)
    make = xp.empty if _covers(taps, win) else xp.zeros
    cols = _new(xp, make, shape, x, op, win, "im2col buffer")
    perm = (1, 0, *range(2, nd + 2))
    for tap in taps:
        src = (slice(None), slice(None), *tap.inp)
        block = xp.permute_dims(x[src], perm)
        cols = xpx.at(cols, (slice(None), tap.j, slice(None), *tap.out)).set(block)
    return xp.reshape(cols, (groups, -1, n * _prod(win.out_size)))


def _col2im(
    xp: ModuleType, dcols: Array, win: Window, taps: list[_Tap], dx: Array, rows: slice
) -> Array:
    """Adjoint of :func:`_im2col`: adds ``dcols`` (for batch items ``rows``) into ``dx``.

    Each kernel offset's block of taps that read input elements is added into the strided
    slice of ``dx`` it came from; the entries for taps in the padding are dropped. Slices of
    different offsets overlap where windows overlap, exactly where the contributions add up.
    """
    n, c = rows.stop - rows.start, dx.shape[1]
    nd = len(win.in_size)
    blocks = xp.reshape(dcols, (c, win.n_offsets, n, *win.out_size))
    perm = (1, 0, *range(2, nd + 2))
    for tap in taps:
        src = (slice(None), tap.j, slice(None), *tap.out)
        block = xp.permute_dims(blocks[src], perm)
        dx = xpx.at(dx, (rows, slice(None), *tap.inp)).add(block)
    return dx


# The most bytes one array can hold: sizes are int64 in NumPy, torch and CuPy.
_MAX_BYTES = 2**63 - 1


def _blame(win: Window, x_shape: tuple[int, ...]) -> tuple[str, str]:
    """The argument that made the output this big, and its value: the padding where there is
    some (without it no output axis is longer than the input's), else the input."""
    if not win.has_padding:
        return "x", f"shape {x_shape}"
    if win.pad_lo == win.pad_hi:
        return "padding", str(win.pad_lo)
    return "padding", f"{win.pad_lo} low, {win.pad_hi} high"


def _check_sizes(op: str, xp: ModuleType, x: Array, win: Window, c_out: int) -> None:
    """The output and one batch item's im2col buffer must be arrays that can exist at all
    (at most ``2**63 - 1`` bytes); whether they fit this machine is up to the allocator."""
    itemsize = xp.finfo(x.dtype).bits // 8
    for what, shape in (
        ("output", (x.shape[0], c_out, *win.out_size)),
        ("im2col buffer of one batch item", (x.shape[1], win.n_offsets, 1, *win.out_size)),
    ):
        nbytes = _prod(tuple(shape)) * itemsize
        if nbytes > _MAX_BYTES:
            name, value = _blame(win, tuple(x.shape))
            kind = "a padding" if name == "padding" else "an input"
            raise ValueError(
                f"{op}: argument '{name}' expected {kind} for which the {what} fits in an "
                f"array (at most 2**63 - 1 bytes), got {value}: the {what} would have shape "
                f"{tuple(shape)}, {nbytes} bytes"
            )


def _new(
    xp: ModuleType, make: Any, shape: tuple[int, ...], like: Array, op: str, win: Window, what: str
) -> Array:
    """``make(shape)`` (``xp.empty`` or ``xp.zeros``) in ``like``'s dtype and device; a failed
    allocation is a MemoryError naming the argument that made the buffer this big."""
    try:
        return make(shape, dtype=like.dtype, device=device(like))
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError
        nbytes = _prod(shape) * (xp.finfo(like.dtype).bits // 8)
        name, value = _blame(win, tuple(like.shape))
        raise MemoryError(
            f"{op}: argument '{name}' {value} makes the {what} of shape {shape} need "
            f"{nbytes} bytes, which could not be allocated"
        ) from e


_CONV_DOC = r"""{nd}-d convolution (cross-correlation), torch's ``conv{nd}d``.

    .. math::
        y_{{n,o,\ell}} = b_o + \sum_{{c,\kappa}} W_{{o,c,\kappa}}\,
        \tilde x_{{n,\,g(o) C_g + c,\; s\ell + d\kappa}}

    Parameters
    ----------
    x : array, shape (N, C_in, {spatial}), or (C_in, {spatial}) unbatched
    weight : array, shape (C_out, C_in/groups, {kernel})
    bias : array, shape (C_out,), optional
    stride, dilation : int or tuple of {nd} ints, positive
    padding : int, tuple of {nd} ints, "valid" or "same"
        Zeros added on both sides. "same" (stride 1 only) pads ``dilation*(kernel-1)`` in
        total per axis, the odd element on the right, as torch.
    groups : int
        Input and output channels split into ``groups`` independent convolutions.

    Returns
    -------
    y : array, shape (N, C_out, {out})
    cache : ConvCache
        Input, weight and geometry; the backward rebuilds im2col chunks from them.

    Notes
    -----
    Backward (:func:`conv{nd}d_backward`) returns ``(dx, dweight, dbias)`` (``dbias`` None
    without bias): :math:`\partial L/\partial W = \sum_{{n,\ell}} g_{{n,o,\ell}}\,
    \tilde x_{{n,c,s\ell+d\kappa}}` (tied weights: one term per output position),
    :math:`\partial L/\partial b_o = \sum_{{n,\ell}} g_{{n,o,\ell}}`, and
    :math:`\partial L/\partial x` adds :math:`W_{{o,c,\kappa}} g_{{n,o,\ell}}` at every input
    position :math:`s\ell + d\kappa - p` that fed output :math:`\ell`.
    """


@forward_op
def conv1d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] | str = 0,
    dilation: int | tuple[int] = 1,
    groups: int = 1,
) -> tuple[Array, ConvCache]:
    return _conv_nd("conv1d", 1, x, weight, bias, stride, padding, dilation, groups)


@backward_op(ConvCache)
def conv1d_backward(dy: Array, cache: ConvCache, /) -> tuple[Array, Array, Array | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv1d`; ``dbias`` is None without bias."""
    return _conv_nd_backward(dy, cache, "conv1d_backward", 1)


@forward_op
def conv2d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> tuple[Array, ConvCache]:
    return _conv_nd("conv2d", 2, x, weight, bias, stride, padding, dilation, groups)


@backward_op(ConvCache)
def conv2d_backward(dy: Array, cache: ConvCache, /) -> tuple[Array, Array, Array | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d`; ``dbias`` is None without bias."""
    return _conv_nd_backward(dy, cache, "conv2d_backward", 2)


@forward_op
def conv3d(
    x: Array,
    weight: Array,
    bias: Array | None = None,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] | str = 0,
    dilation: int | tuple[int, int, int] = 1,
    groups: int = 1,
) -> tuple[Array, ConvCache]:
    return _conv_nd("conv3d", 3, x, weight, bias, stride, padding, dilation, groups)


@backward_op(ConvCache)
def conv3d_backward(dy: Array, cache: ConvCache, /) -> tuple[Array, Array, Array | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv3d`; ``dbias`` is None without bias."""
    return _conv_nd_backward(dy, cache, "conv3d_backward", 3)


conv1d.__doc__ = _CONV_DOC.format(nd=1, spatial="W", kernel="kW", out="W_out")
conv2d.__doc__ = _CONV_DOC.format(nd=2, spatial="H, W", kernel="kH, kW", out="H_out, W_out")
conv3d.__doc__ = _CONV_DOC.format(
    nd=3, spatial="D, H, W", kernel="kD, kH, kW", out="D_out, H_out, W_out"
)
