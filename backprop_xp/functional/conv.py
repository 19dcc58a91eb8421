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
position), one strided slice of the padded input per kernel offset. Then per group
``y = W @ cols`` (one GEMM) and ``dW = dY @ cols^T`` (one GEMM). For ``dx``, in general
``dcols = W^T @ dY`` (one GEMM) and col2im adds each kernel offset's block of ``dcols``
back into a zero-padded ``dx``. With stride 1, ``dx`` is itself a stride-1 convolution of
``dY`` with the flipped, transposed kernel, so ``dx = W_flip^T @ im2col(dY)`` (one GEMM)
replaces col2im's ``|K|`` read-modify-write passes over ``dx``; the same ``im2col(dY)``
also gives the weight gradient, ``dW_flip = im2col(dY) @ x^T``, so the stride-1 backward
builds one im2col buffer instead of two.

Batches are processed in chunks so that the im2col buffers alive at one time stay under a
byte budget, :func:`set_conv_workspace_bytes` (default 8 MiB on a CPU, 2 GiB on a GPU);
each chunk is still one GEMM per direction.
"""

from __future__ import annotations

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
from ._windows import Window, as_tuple, make_window, pad_spatial

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
    bytes per batch item; the backward builds ``cols`` and then either ``dcols`` (same size,
    both alive) or, with stride 1, ``im2col(dy)`` (``C_out * prod(kernel) * prod(in_spatial)
    * itemsize`` per item, built after ``cols`` is freed). The batch is split into chunks
    whose live buffers fit the budget (at least one item per chunk); each chunk is one GEMM
    per direction. Larger budgets mean fewer, larger GEMMs; smaller ones less peak memory.

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

    n = x.shape[0]
    y = xp.empty((n, c_out, *win.out_size), dtype=x.dtype, device=device(x))
    Wg = _weight_matrix(xp, weight, groups)
    per_item = x.shape[1] * win.n_offsets * _prod(win.out_size)
    for a, b in _chunks(xp, x, per_item):
        cols = _im2col(xp, x[a:b, ...], win, groups)  # (G, C_g |K|, n |L|)
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
    transposed = _transposed_window(win)
    if transposed is None:
        dx, dW = _backward_im2col_x(xp, dy, x, weight, win, groups)
    else:
        dx, dW = _backward_im2col_dy(xp, dy, x, weight, win, groups, *transposed)
    db = xp.sum(dy, axis=(0, *range(2, nd + 2))) if has_bias else None
    return (dx[0, ...] if unbatched else dx), dW, db


def _backward_im2col_x(
    xp: ModuleType, dy: Array, x: Array, weight: Array, win: Window, groups: int
) -> tuple[Array, Array]:
    """Any stride: ``dW^T = cols @ dy^T``, ``dcols = W^T @ dy``, then col2im."""
    nd = len(win.in_size)
    c_in, c_out = x.shape[1], weight.shape[0]
    Wg = _weight_matrix(xp, weight, groups)  # (G, C_out/G, C_g |K|)
    WgT = xp.permute_dims(Wg, (0, 2, 1))
    # dW^T = cols @ dy^T: with cols as the untransposed operand OpenBLAS runs ~30% faster
    # than dy @ cols^T (measured); the small result is transposed once at the end.
    dWgT = xp.zeros((groups, Wg.shape[2], Wg.shape[1]), dtype=x.dtype, device=device(x))
    dx = xp.empty(tuple(x.shape), dtype=x.dtype, device=device(x))
    perm = (1, 0, *range(2, nd + 2))
    per_item = 2 * win.n_offsets * c_in * _prod(win.out_size)  # cols and dcols
    for a, b in _chunks(xp, x, per_item):
        cols = _im2col(xp, x[a:b, ...], win, groups)  # (G, C_g |K|, n |L|)
        dyc = xp.reshape(xp.permute_dims(dy[a:b, ...], perm), (groups, c_out // groups, -1))
        dWgT = dWgT + xp.matmul(cols, xp.permute_dims(dyc, (0, 2, 1)))
        del cols
        dcols = xp.matmul(WgT, dyc)  # (G, C_g |K|, n |L|)
        dxc = _col2im(xp, dcols, win, c_in, b - a)  # (C_in, n, *S)
        del dcols
        dx = xpx.at(dx, (slice(a, b), ...)).set(xp.permute_dims(dxc, perm))
    dW = xp.reshape(xp.permute_dims(dWgT, (0, 2, 1)), tuple(weight.shape))
    return dx, dW


def _backward_im2col_dy(
    xp: ModuleType,
    dy: Array,
    x: Array,
    weight: Array,
    win: Window,
    groups: int,
    crop: tuple[slice, ...],
    twin: Window,
) -> tuple[Array, Array]:
    r"""Stride 1: one im2col, of ``dy``, serves both gradients.

    ``dx`` is a stride-1 convolution of ``dy`` with the flipped, transposed kernel:
    ``dx = W_flip^T @ dycols``. The same ``dycols`` give the weight gradient with the kernel
    flipped, :math:`\partial L/\partial W_{o,c,k-1-\kappa'} = \sum_{n,u}
    \text{dycols}_{(o,\kappa'),(n,u)}\, x_{n,c,u}`, so ``dW_flip = dycols @ x^T`` needs
    only ``x`` in ``(C, N |S|)`` order (an input-sized copy), not im2col(x).
    """
    nd = len(win.in_size)
    c_in, c_out = x.shape[1], weight.shape[0]
    c_g = c_in // groups
    Wt = _flipped_weight_matrix(xp, weight, groups)  # (G, C_g, C_out/G |K|)
    dWf = xp.zeros((groups, Wt.shape[2], c_g), dtype=x.dtype, device=device(x))
    dx = xp.empty(tuple(x.shape), dtype=x.dtype, device=device(x))
    perm = (1, 0, *range(2, nd + 2))
    per_item = win.n_offsets * c_out * _prod(win.in_size)  # dycols
    for a, b in _chunks(xp, x, per_item):
        rows = (slice(a, b), slice(None), *crop)
        dycols = _im2col(xp, dy[rows], twin, groups)
        xt = xp.reshape(xp.permute_dims(x[a:b, ...], perm), (groups, c_g, -1))
        dWf = dWf + xp.matmul(dycols, xp.permute_dims(xt, (0, 2, 1)))
        dxc = xp.reshape(xp.matmul(Wt, dycols), (c_in, b - a, *win.in_size))
        del dycols
        dx = xpx.at(dx, (slice(a, b), ...)).set(xp.permute_dims(dxc, perm))
    # dWf: rows (output channel, flipped offset), columns input channel of the group
    dW = xp.reshape(dWf, (c_out, *win.kernel, c_g))
    dW = xp.flip(dW, axis=tuple(range(1, nd + 1)))
    dW = xp.permute_dims(dW, (0, nd + 1, *range(1, nd + 1)))
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


def _transposed_window(win: Window) -> tuple[tuple[slice, ...], Window] | None:
    r"""For stride 1, the geometry of :math:`dx` as a convolution of :math:`dy`.

    :math:`dx_u = \sum_\kappa W_\kappa^\top dy_{u + p_{lo} - d\kappa}`: with the kernel
    flipped, a stride-1 convolution of ``dy`` padded by :math:`d(k-1) - p` on each side
    (where that is negative, ``dy`` is cropped instead: those outputs saw only padding).
    Returns the crop of ``dy``'s spatial axes and the window, or None for strides > 1.
    """
    if any(s != 1 for s in win.stride):
        return None
    crop, lo2, hi2, size = [], [], [], []
    for k, d, lo, hi, m in zip(
        win.kernel, win.dilation, win.pad_lo, win.pad_hi, win.out_size, strict=True
    ):
        p, q = d * (k - 1) - lo, d * (k - 1) - hi
        start, stop = max(0, -p), m - max(0, -q)
        crop.append(slice(start, stop))
        lo2.append(max(p, 0))
        hi2.append(max(q, 0))
        size.append(stop - start)
    twin = Window(
        tuple(size), win.kernel, win.stride, win.dilation, tuple(lo2), tuple(hi2), win.in_size
    )
    return tuple(crop), twin


def _flipped_weight_matrix(xp: ModuleType, weight: Array, groups: int) -> Array:
    r"""``(G, C_in/G, C_out/G * |K|)``: per group, :math:`W^\top` with the kernel flipped,
    columns ordered as the rows of im2col(dy) (output channel, then kernel offset)."""
    nd = weight.ndim - 2
    c_out, c_g = weight.shape[0], weight.shape[1]
    wf = xp.flip(weight, axis=tuple(range(2, nd + 2)))
    wf = xp.reshape(wf, (groups, c_out // groups, c_g, -1))
    return xp.reshape(xp.permute_dims(wf, (0, 2, 1, 3)), (groups, c_g, -1))


def _prod(t: tuple[int, ...]) -> int:
    p = 1
    for v in t:
        p *= v
    return p


def _im2col(xp: ModuleType, x: Array, win: Window, groups: int) -> Array:
    """``cols`` of shape ``(G, C_g |K|, n |L|)`` from ``x`` of shape ``(n, C, *S)``.

    The input is transposed to ``(C, n, *S)`` while being padded (one input-sized copy), so
    each kernel offset's strided slice is already a ``(C, n, *L)`` block and stacking them on
    axis 1 writes ``cols`` in its final layout: the big buffer is written once, never
    transposed.
    """
    nd = len(win.in_size)
    xt = pad_spatial(xp, x, win, 0.0, perm=(1, 0, *range(2, nd + 2)))  # (C, n, *S_pad)
    blocks = [xt[win.index(k)] for k in win.offsets()]
    cols = xp.stack(blocks, axis=1)  # (C, |K|, n, *L)
    return xp.reshape(cols, (groups, -1, x.shape[0] * _prod(win.out_size)))


def _col2im(xp: ModuleType, dcols: Array, win: Window, c_in: int, n: int) -> Array:
    """Adjoint of :func:`_im2col`: ``dx`` of shape ``(C, n, *S)`` from ``dcols``.

    Each kernel offset's ``(C, n, *L)`` block is added into its strided slice of a zero
    padded buffer; slices of different offsets overlap where windows overlap, which is
    exactly where the gradient contributions must add up.
    """
    blocks = xp.reshape(dcols, (c_in, win.n_offsets, n, *win.out_size))
    buf = xp.zeros((c_in, n, *win.padded_size), dtype=dcols.dtype, device=device(dcols))
    for j, k in enumerate(win.offsets()):
        buf = xpx.at(buf, win.index(k)).add(blocks[:, j, ...])
    if win.has_padding:
        buf = buf[win.interior_index()]
    return buf


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
