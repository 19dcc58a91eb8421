r"""The error function and its complement, written against the Array API namespace only.

The standard has no ``erf``. Where the namespace has one of its own (torch's ``erf`` and
``erfc``, reached through array-api-compat) it is used; otherwise :func:`erf` and
:func:`erfc` evaluate the approximation below with elementwise Array API operations, in the
input's dtype (float16 and bfloat16 in float32, then rounded back).

The approximation is this library's own, fitted by ``tools/fit_erf.py`` (mpmath, 60
digits); it follows the usual plan of piecewise approximations with an exponential tail (as
Cody's rational Chebyshev approximations and fdlibm's ``s_erf.c`` do), in two pieces:

- :math:`|x| < 1`: :math:`\mathrm{erf}(x) = x + x R(x^2)`, with :math:`R` a polynomial
  (degree 12 for float64, 6 for float32) of the Chebyshev interpolant of
  :math:`\mathrm{erf}(\sqrt z)/\sqrt z - 1` on :math:`z \in [0, 1]`; there
  :math:`\mathrm{erfc}(x) = (1 - x) - x R(x^2)`, where :math:`1 - x` is exact for
  :math:`x \ge 1/2`.
- :math:`a = |x| \ge 1`: :math:`\mathrm{erfc}(a) = e^{-a^2}\, G(t) / (1 + 2a)` with
  :math:`t = (a - 3)/(a + 3)`, the variable of Schonfelder's Chebyshev expansions of
  :math:`e^{a^2}\mathrm{erfc}(a)`, which maps :math:`[1, \infty)` into :math:`[-1/2, 1)`;
  :math:`G(t) = (1 + 2a)\, e^{a^2} \mathrm{erfc}(a)` is smooth and varies between 1.13 and
  1.29, and one polynomial (degree 20 for float64, 10 for float32) covers
  :math:`a \in [1, 28]` (float32: :math:`[1, 11]`), beyond which erfc is 0 in the dtype.
  The factor :math:`e^{-a^2}` is :math:`e^{-h^2} e^{-(a-h)(a+h)}`, with :math:`h` the value
  of :math:`a` rounded to 21 fractional bits (float32: 8), so that :math:`h^2` is exact: the
  rounding error of :math:`a^2` itself would cost up to :math:`a^2 \varepsilon`, hundreds
  of ulps near the underflow.

Measured against mpmath (``tools/fit_erf.py``) where the result is a normal number: erf
within 1.0 ulp and erfc within 3.8 ulps in float64, 1.0 and 4.8 ulps in float32;
``tests/test_activations.py`` checks 2 and 6 ulps against ``math.erf``/``math.erfc`` (whose
own rounding counts too) on dense grids.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..backend import copysign

Array = Any

_K = 3.0
# tools/fit_erf.py: R in (z - 1/2), G in (t - _G_MID_*); lowest degree first
_R_MID = 0.5
_R_FLOAT64 = (
    -0.03453126133013269,
    -0.2810721780454342,
    0.07940998675593483,
    -0.018283884489152906,
    0.003480274496665589,
    -0.0005611894221159957,
    7.82964952550334e-05,
    -9.614808686837411e-06,
    1.053644949301286e-06,
    -1.0420369437776738e-07,
    9.387642467190585e-09,
    -7.798543168142326e-10,
    5.957176147748911e-11,
)
_G_MID_FLOAT64 = 0.1532258064516129
_G_FLOAT64 = (
    1.2315168442604394,
    -0.14260501572836545,
    -0.0025033668397335886,
    0.07092600242173401,
    -0.07492936375627696,
    0.048026421750263976,
    -0.02005889084247374,
    0.0041626816876407,
    0.000775612025903251,
    -0.0007833237906005435,
    9.317068502979284e-05,
    9.906943924451077e-05,
    -3.0955620139742825e-05,
    -1.325217030704512e-05,
    6.625085976354859e-06,
    2.196618277431931e-06,
    -1.3216970389592358e-06,
    -4.3803396840104374e-07,
    2.458602787260295e-07,
    7.032295091610371e-08,
    -3.279078693609197e-08,
)
_R_FLOAT32 = (
    -0.03453126133013269,
    -0.28107219455508536,
    0.07940998856363046,
    -0.018283356358982795,
    0.0034802166664932126,
    -0.0005654101768360223,
    7.875875062685488e-05,
)
_G_MID_FLOAT32 = 0.03571428571428571
_G_FLOAT32 = (
    1.2481094968625872,
    -0.1385435055073734,
    -0.034554010261278266,
    0.11345567124781188,
    -0.10752634710589064,
    0.0632899288775243,
    -0.02307383154808267,
    0.003007117556632548,
    0.0016337615712363055,
    -0.0007171477248285718,
    -5.8876626299975155e-05,
)
# (R, G's centre, G, a_max, fractional bits of h): a_max is past erfc's underflow to 0;
# h (a_max's integer bits plus these) squares exactly in the dtype's significand
_TABLES = {
    64: (_R_FLOAT64, _G_MID_FLOAT64, _G_FLOAT64, 28.0, 21),
    32: (_R_FLOAT32, _G_MID_FLOAT32, _G_FLOAT32, 11.0, 8),
}


def _horner(coefs: tuple[float, ...], s: Array) -> Array:
    out = coefs[-1] * s + coefs[-2]
    for c in coefs[-3::-1]:
        out = out * s + c
    return out


def _erf_or_erfc(xp: ModuleType, x: Array, complement: bool) -> Array:
    """erf(x), or erfc(x) with ``complement``, from elementwise Array API operations (the
    approximation in this module's docstring), in ``x``'s floating dtype."""
    dtype = x.dtype
    narrow = xp.finfo(dtype).bits < 32
    if narrow:
        x = xp.astype(x, xp.float32)
    R, g_mid, G, a_max, bits = _TABLES[64 if x.dtype == xp.float64 else 32]
    a = xp.abs(x)
    small = a < 1
    # each piece sees only arguments of its own interval (clipped, so neither evaluates a
    # polynomial far outside it nor overflows; clip keeps NaN): one where() picks the piece
    # at the end (where() is the slowest of these operations in NumPy)
    x1 = xp.clip(x, -1.0, 1.0)
    r = x1 * _horner(R, x1 * x1 - _R_MID)
    a = xp.clip(a, 1.0, a_max)
    g = _horner(G, (a - _K) / (a + _K) - g_mid)
    h = xp.round(a * 2.0**bits) / 2.0**bits
    tail = xp.exp(-(h * h)) * xp.exp((h - a) * (h + a)) * g / (1 + 2 * a)  # erfc(|x|), |x| >= 1
    if complement:
        # 2 - tail for x < 0, tail for x > 0, without a second where(): NumPy's where() is
        # branchy, several times slower than arithmetic when the mask is random
        big = (1 - copysign(xp, xp.ones_like(x), x)) + copysign(xp, tail, x)
        out = xp.where(small, (1 - x1) - r, big)
    else:
        out = xp.where(small, x1 + r, copysign(xp, 1 - tail, x))
    return xp.astype(out, dtype) if narrow else out


def erf_erfc(xp: ModuleType, x: Array) -> tuple[Array, Array]:
    """``(erf(x), erfc(x))`` from elementwise Array API operations (the approximation in
    this module's docstring), in ``x``'s floating dtype; NaN gives NaN, ``±inf`` gives
    ``±1`` and ``0``/``2``."""
    return _erf_or_erfc(xp, x, False), _erf_or_erfc(xp, x, True)


def erf(xp: ModuleType, x: Array) -> Array:
    r""":math:`\mathrm{erf}(x) = \frac{2}{\sqrt\pi}\int_0^x e^{-t^2} dt`: the namespace's own
    ``erf`` where it has one, else this module's approximation."""
    own = getattr(xp, "erf", None)
    return own(x) if own is not None else _erf_or_erfc(xp, x, False)


def erfc(xp: ModuleType, x: Array) -> Array:
    r""":math:`\mathrm{erfc}(x) = 1 - \mathrm{erf}(x)`, accurate where it is tiny: the
    namespace's own ``erfc`` where it has one, else this module's approximation."""
    own = getattr(xp, "erfc", None)
    return own(x) if own is not None else _erf_or_erfc(xp, x, True)
