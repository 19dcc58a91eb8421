"""Sliding-window geometry shared by convolution and pooling.

Argument normalization (int or tuple per spatial axis), torch's output-size rule, padding
into a fresh buffer, and the strided slice that picks, for one kernel offset, the input
element under that offset in every window at once. Convolution and pooling loop over kernel
offsets only; everything per pixel or per batch item is one array operation on such a slice.
:class:`PoolAxis` is one pooling axis: its windows and the kernel offsets that reach the input.
"""

from __future__ import annotations

import functools
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


def as_tuple(
    op: str, name: str, value: object, nd: int, *, minimum: int, maximum: int | None = None
) -> tuple[int, ...]:
    """``value`` (an int, or a tuple of 1 or ``nd`` ints) as ``nd`` ints, each ``>= minimum``
    (and ``<= maximum`` where given)."""
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
    if maximum is not None and any(v > maximum for v in ints):
        raise shape_error(op, name, f"sizes at most {maximum}", repr(value))
    return ints


@dataclass(frozen=True)
class Window:
    """Where the windows of a convolution or pooling sit along each spatial axis.

    The input is (conceptually) padded by ``pad_lo`` / ``pad_hi`` elements per axis; window
    ``j`` along an axis covers padded positions ``j*stride + i*dilation``, ``i < kernel``.
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


def output_size(n: int, k: int, s: int, d: int, lo: int, hi: int, ceil_mode: bool) -> int:
    r"""Torch's number of windows along an axis (``pooling_output_shape`` in ATen's Pool.h):
    :math:`\lfloor (n + p_{lo} + p_{hi} - d(k-1) - 1)/s \rfloor + 1`, rounded up instead in
    ``ceil_mode``, where a last window that would start past the input and its left padding
    is dropped. Below 1 when the kernel does not fit."""
    m = (n + lo + hi - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (m - 1) * s >= n + lo:
        m -= 1
    return m


def make_window(
    op: str,
    in_size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pad_lo: tuple[int, ...],
    pad_hi: tuple[int, ...],
    *,
    kernel_name: str = "weight",
) -> Window:
    """A convolution's windows: torch's output size per axis (:func:`output_size`, floor
    mode), and the check that every kernel fits in its padded input, as torch's convolution
    requires. (Pooling, whose ceil mode keeps windows that overhang the input, describes
    each axis with :func:`pool_axis` instead.)"""
    out = []
    for n, k, s, d, lo, hi in zip(in_size, kernel, stride, dilation, pad_lo, pad_hi, strict=True):
        if n < 1:
            raise shape_error(op, "x", "spatial sizes >= 1", f"spatial size {tuple(in_size)}")
        if d * (k - 1) + 1 > n + lo + hi:
            raise shape_error(
                op,
                kernel_name,
                f"a kernel extent (dilation*(kernel-1)+1) no larger than the padded input "
                f"{tuple(a + b + c for a, b, c in zip(in_size, pad_lo, pad_hi, strict=True))}",
                f"kernel {tuple(kernel)} with dilation {tuple(dilation)}",
            )
        out.append(output_size(n, k, s, d, lo, hi, ceil_mode=False))
    return Window(
        tuple(in_size),
        tuple(kernel),
        tuple(stride),
        tuple(dilation),
        tuple(pad_lo),
        tuple(pad_hi),
        tuple(out),
    )


@dataclass(frozen=True)
class PoolAxis:
    """One spatial axis of a pooling: its windows, and the kernel offsets that reach the input.

    Window ``w`` (``w < m``) covers the input positions ``w*stride - pad + j*dilation`` for the
    kernel offsets ``j < kernel``; positions outside ``[0, n)`` are padding, or the overhang of
    ceil mode. Only the offsets that reach the input in some window are visited, the *taps*:
    ``base[t]`` is tap ``t``'s position in window 0, so window ``w`` holds
    ``w*stride + base[t]`` (increasing in ``t``: window order). The other offsets see padding
    in every window and add nothing (a max over them is -inf, a sum 0), so a huge kernel or
    padding costs no more than the input it covers.

    The axis is split into ``stride`` *phases*: phase ``r`` holds the positions
    ``(row + q0)*stride + r``, rows ``0 .. rows-1``, with ``q0 = min(base[t] // stride)``. Tap
    ``t`` of window ``w`` is phase ``residue(t)``, row ``w + shift(t)``: for one tap, the
    windows are consecutive rows of one phase (a slice, no stride).
    """

    n: int
    kernel: int
    stride: int
    pad: int
    dilation: int
    m: int
    base: tuple[int, ...]

    @property
    def taps(self) -> int:
        return len(self.base)

    @functools.cached_property
    def q0(self) -> int:
        return min(b // self.stride for b in self.base)

    @functools.cached_property
    def rows(self) -> int:
        """Rows per phase: the ``m`` windows plus the spread of the taps' shifts."""
        return self.m + max(b // self.stride for b in self.base) - self.q0

    def residue(self, t: int) -> int:
        return self.base[t] % self.stride

    def shift(self, t: int) -> int:
        return self.base[t] // self.stride - self.q0

    @functools.cached_property
    def residues(self) -> tuple[int, ...]:
        """The phases some tap reads, in increasing order."""
        return tuple(sorted({self.residue(t) for t in range(self.taps)}))

    def data(self, r: int) -> tuple[int, int]:
        """``(u0, u1)``: phase ``r`` holds the input elements ``x[r::stride][u0:u1]``, at rows
        ``u0 - q0 .. u1 - 1 - q0``; its other rows are padding. ``u0 == u1`` when none."""
        q0, s = self.q0, self.stride
        u0 = max(0, q0)
        u1 = min(-(-(self.n - r) // s), q0 + self.rows)
        return u0, max(u0, u1)

    @property
    def left_windows(self) -> int:
        """How many windows (the first ones) start in the left padding: ``w*stride + base[0] < 0``."""
        return 0 if self.base[0] >= 0 else min(self.m, -(self.base[0] // self.stride))

    def first_tap(self, w: int) -> int:
        """Window ``w``'s first tap on the input (``taps - 1`` if it has none, a dilated window
        wholly in the padding)."""
        inside = [t for t, b in enumerate(self.base) if 0 <= w * self.stride + b < self.n]
        return inside[0] if inside else self.taps - 1


def pool_axis(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> PoolAxis:
    """The :class:`PoolAxis` of torch's windows along an axis of ``n`` elements: kernel ``k``,
    stride ``s``, padding ``p`` on both sides, dilation ``d``; at least one window
    (:func:`output_size`), as the caller checks."""
    m = output_size(n, k, s, d, p, p, ceil_mode)
    assert m >= 1, "the caller refuses a kernel that leaves no window"

    def reach(w: int) -> range:
        # the offsets j with 0 <= w*s - p + j*d < n
        return range(max(0, -((w * s - p) // d)), min(k - 1, (n - 1 + p - w * s) // d) + 1)

    if m >= 3:
        # then s < n (torch's padding <= k // 2 gives (m - 1) s <= n + s - 1), and the
        # reaches of consecutive windows overlap: together they are one range
        taps: Sequence[int] = range(reach(m - 1).start, reach(0).stop)
    else:
        taps = sorted(set(reach(0)) | set(reach(m - 1)))
    if len(taps) == 0:  # every window wholly in the padding (dilated): any offset will do
        taps = [0]
    return PoolAxis(n, k, s, p, d, m, tuple(j * d - p for j in taps))


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
