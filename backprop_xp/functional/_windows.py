"""Sliding-window geometry shared by convolution and pooling.

Argument normalization (int or tuple per spatial axis), torch's output-size rule, padding
into a fresh buffer, and the strided slice that picks, for one kernel offset, the input
element under that offset in every window at once. Convolution and pooling loop over kernel
offsets only; everything per pixel or per batch item is one array operation on such a slice.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_extra as xpx

from ..backend import device
from ._validation import shape_error

Array = Any


def as_tuple(op: str, name: str, value: object, nd: int, *, minimum: int) -> tuple[int, ...]:
    """``value`` (an int, or a tuple of 1 or ``nd`` ints) as ``nd`` ints, each ``>= minimum``."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    try:
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        ints = tuple(operator.index(v) for v in items)
    except TypeError:
        raise TypeError(
            f"{op}: argument '{name}' expected an int or a tuple of {nd} ints, got {value!r}"
        ) from None
    if len(ints) == 1:
        ints = ints * nd
    if len(ints) != nd:
        raise shape_error(op, name, f"an int or a tuple of {nd} ints", repr(value))
    if any(v < minimum for v in ints):
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise shape_error(op, name, f"{what} sizes", repr(value))
    return ints


@dataclass(frozen=True)
class Window:
    """Where the windows of a convolution or pooling sit along each spatial axis.

    The input is (conceptually) padded by ``pad_lo`` / ``pad_hi`` elements per axis; window
    ``j`` along an axis covers padded positions ``j*stride + i*dilation``, ``i < kernel``.
    ``pad_hi`` includes the extra room ceil-mode pooling needs past the right padding.
    """

    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_lo: tuple[int, ...]
    pad_hi: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(
            n + lo + hi for n, lo, hi in zip(self.in_size, self.pad_lo, self.pad_hi, strict=True)
        )

    @property
    def n_offsets(self) -> int:
        n = 1
        for k in self.kernel:
            n *= k
        return n

    def offsets(self) -> Iterator[tuple[int, ...]]:
        """Kernel offsets in window order (row-major, last axis fastest)."""
        return itertools.product(*(range(k) for k in self.kernel))

    def slices(self, offset: Sequence[int]) -> tuple[slice, ...]:
        """Slices of the padded spatial axes: the element at ``offset`` of every window."""
        return tuple(
            slice(i * d, i * d + (n - 1) * s + 1, s)
            for i, d, n, s in zip(offset, self.dilation, self.out_size, self.stride, strict=True)
        )

    def interior(self) -> tuple[slice, ...]:
        """Slices of the padded spatial axes that hold the unpadded input."""
        return tuple(slice(lo, lo + n) for lo, n in zip(self.pad_lo, self.in_size, strict=True))

    def index(self, offset: Sequence[int]) -> tuple[Any, ...]:
        """``(..., *slices(offset))``: the index of that offset's elements in a padded array."""
        return (Ellipsis, *self.slices(offset))

    def interior_index(self) -> tuple[Any, ...]:
        """``(..., *interior())``: the index of the unpadded input in a padded array."""
        return (Ellipsis, *self.interior())

    @property
    def has_padding(self) -> bool:
        return any(self.pad_lo) or any(self.pad_hi)


def make_window(
    op: str,
    in_size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pad_lo: tuple[int, ...],
    pad_hi: tuple[int, ...],
    *,
    ceil_mode: bool = False,
    kernel_name: str = "weight",
) -> Window:
    """Torch's output size per axis, :math:`\\lfloor (n + p_{lo} + p_{hi} - d(k-1) - 1)/s
    \\rfloor + 1` (ceil in ``ceil_mode``, where a last window starting in the right padding
    is dropped), and the check that every kernel fits in its padded input."""
    out, hi_total = [], []
    for n, k, s, d, lo, hi in zip(in_size, kernel, stride, dilation, pad_lo, pad_hi, strict=True):
        extent = d * (k - 1) + 1
        span = n + lo + hi
        if n < 1:
            raise shape_error(op, "x", "spatial sizes >= 1", f"spatial size {tuple(in_size)}")
        if extent > span:
            raise shape_error(
                op,
                kernel_name,
                f"a kernel extent (dilation*(kernel-1)+1) no larger than the padded input "
                f"{tuple(a + b + c for a, b, c in zip(in_size, pad_lo, pad_hi, strict=True))}",
                f"kernel {tuple(kernel)} with dilation {tuple(dilation)}",
            )
        if ceil_mode:
            m = -(-(span - extent) // s) + 1
            if (m - 1) * s >= n + lo:  # torch: the last window must start inside input or left pad
                m -= 1
        else:
            m = (span - extent) // s + 1
        out.append(m)
        hi_total.append(max(hi, (m - 1) * s + extent - n - lo))
    return Window(
        tuple(in_size),
        tuple(kernel),
        tuple(stride),
        tuple(dilation),
        tuple(pad_lo),
        tuple(hi_total),
        tuple(out),
    )


def pad_spatial(
    xp: ModuleType, x: Array, win: Window, fill: float = 0.0, perm: tuple[int, ...] | None = None
) -> Array:
    """``x`` (axes optionally permuted by ``perm`` first) padded on its trailing spatial axes.

    The permutation and the padding happen in one copy into a new buffer filled with
    ``fill``. Without padding or permutation, ``x`` itself comes back (no copy).
    """
    if perm is not None:
        x = xp.permute_dims(x, perm)
    if not win.has_padding:
        return x
    nd = len(win.in_size)
    lead = tuple(x.shape[: x.ndim - nd])
    buf = xp.empty((*lead, *win.padded_size), dtype=x.dtype, device=device(x))
    buf = xpx.at(buf, win.interior_index()).set(x)
    # Fill only the border slabs: cheaper than filling the whole buffer first.
    for axis, (lo, n, hi) in enumerate(zip(win.pad_lo, win.in_size, win.pad_hi, strict=True)):
        before = (slice(None),) * axis
        after = (slice(None),) * (nd - axis - 1)
        for part in (slice(0, lo), slice(lo + n, lo + n + hi)):
            if part.stop > part.start:
                buf = xpx.at(buf, (..., *before, part, *after)).set(fill)
    return buf
