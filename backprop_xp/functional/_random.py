r"""Counter-based random numbers in Array API integer arithmetic: for a seed, the same bits on
NumPy, torch, CuPy, array-api-strict (and JAX, int32 only), built on the arrays' device.

Element :math:`k` (row-major position) of a draw of :math:`n` elements is a hash of the seed
and :math:`k` alone: no state, nothing drawn on the host, and the first :math:`m` elements of
a larger draw are a draw of :math:`m`. The hash is built from the finalizer of MurmurHash3
(``fmix32``: xor-shifts and two multiplications, a bijection of 32-bit words whose output
bits each depend on every input bit), in int32 with wrap-around multiplication and logical
right shifts emulated by a mask (torch has no shifts or comparisons for uint32):

- the seed, a Python int taken modulo :math:`2^{64}` or a 0-d integer array, is split into
  32-bit words :math:`(s_0, s_1)` and keyed: :math:`k_0 = f(s_0 \oplus c_0)`,
  :math:`k_1 = f(s_1 \oplus k_0 \oplus c_1)` (one-to-one: distinct seeds, distinct keys);
- :math:`k = 2^{24} r + q` with :math:`q < 2^{24}`:
  :math:`h = f((f(q \oplus k_0) + k_1) \oplus f(r \oplus k_1))`, whose top 24 bits are the
  result (row :math:`r` is 0 below :math:`2^{24}` elements).

This is a statistical generator for dropout masks and the like, not a cryptographic one.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

Array = Any

# MurmurHash3's fmix32 multipliers 0x85EBCA6B and 0xC2B2AE35 as int32 values
_M1 = 0x85EBCA6B - 2**32
_M2 = 0xC2B2AE35 - 2**32
# key constants: the first hexadecimal digits of pi (nothing up the sleeve)
_C0 = 0x243F6A88
_C1 = 0x13198A2E
_ROW = 2**24  # counters per row of the (rows, 2^24) grid of large draws
BITS = 24  # random bits per element: exactly representable in float32


def _shr(h: Array, k: int) -> Array:
    """Logical right shift of int32 ``h`` by ``k`` (``>>`` is arithmetic on signed ints)."""
    return (h >> k) & ((1 << (32 - k)) - 1)


def _fmix(h: Array) -> Array:
    h = h ^ _shr(h, 16)
    h = h * _M1
    h = h ^ _shr(h, 13)
    h = h * _M2
    return h ^ _shr(h, 16)


def _int32(v: int) -> int:
    """The 32-bit word ``v`` (0 <= v < 2^32) as a signed int32 value."""
    return v - 2**32 if v >= 2**31 else v


def seed_words(xp: ModuleType, seed: int | Array, device: Any) -> tuple[Array, Array]:
    """The seed's low and high 32-bit words, int32 arrays of shape ``(1,)`` on ``device``.

    A Python int is taken modulo :math:`2^{64}` (so ``-1`` and ``2**64 - 1`` are one seed); a
    0-d integer array holding the same value gives the same words, computed on its device
    (a jitted step can pass a new seed array per call).
    """
    if isinstance(seed, int):
        s = seed % 2**64
        lo, hi = (
            xp.full((1,), _int32(w), dtype=xp.int32, device=device)
            for w in (s & 0xFFFFFFFF, s >> 32)
        )
        return lo, hi
    s = xp.reshape(seed, (1,))
    info = xp.iinfo(s.dtype)
    if info.bits <= 32:
        lo = xp.astype(s, xp.int32)  # uint32 wraps to the same bits
        return lo, (lo >> 31) if info.min < 0 else xp.zeros_like(lo)
    # 64 bits: through int64, whose shifts and masks every library has (torch's uint64 has
    # no shifts); the casts keep the low bits
    s = xp.astype(s, xp.int64)
    return xp.astype(s & 0xFFFFFFFF, xp.int32), xp.astype(s >> 32, xp.int32)


def random_bits(xp: ModuleType, shape: tuple[int, ...], seed: int | Array, device: Any) -> Array:
    """int32 array of ``shape`` with :data:`BITS` random bits per element, in
    ``[0, 2**24)``; element ``k`` (row-major) depends on ``(seed, k)`` only."""
    n = math.prod(shape)
    s0, s1 = seed_words(xp, seed, device)
    k0 = _fmix(s0 ^ _C0)
    k1 = _fmix(s1 ^ k0 ^ _C1)
    q = xp.arange(min(n, _ROW), dtype=xp.int32, device=device)
    inner = _fmix(q ^ k0) + k1
    rows = -(-n // _ROW)
    if rows <= 1:
        h = _fmix(inner ^ _fmix(k1))  # row 0: f(0 ^ k1)
    else:
        r = xp.arange(rows, dtype=xp.int32, device=device)[:, None]
        h = xp.reshape(_fmix(inner[None, :] ^ _fmix(r ^ k1)), (-1,))[:n]
    return xp.reshape(_shr(h, 32 - BITS), shape)


def uniform(
    xp: ModuleType, shape: tuple[int, ...], seed: int | Array, device: Any, dtype: Any = None
) -> Array:
    """Uniform numbers in ``[0, 1)`` on the grid of :math:`2^{-24}`, float32 unless
    ``dtype`` says otherwise; the same numbers on every backend for the same seed."""
    u = xp.astype(random_bits(xp, shape, seed, device), xp.float32) * 2.0**-BITS
    return u if dtype is None else xp.astype(u, dtype)
