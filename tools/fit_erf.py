"""Fit the polynomial coefficients of ``backprop_xp/functional/_special.py`` (erf, erfc).

Run ``python tools/fit_erf.py`` (needs mpmath) to print the coefficient tables and the
worst error of each fit, measured in ulps against mpmath on a dense grid after evaluating
the polynomials in float64 (or float32) with NumPy exactly as ``_special.py`` does.

The two pieces (see ``_special.py`` for why these variables):

- ``|x| < 1``: ``erf(x) = x + x R(x^2)`` with ``R(z) = erf(sqrt z)/sqrt z - 1``, a
  polynomial in ``z - 1/2`` on ``z in [0, 1]``;
- ``|x| >= 1``: ``erfc(a) = exp(-a^2) G(t) / (1 + 2a)`` with ``t = (a - K)/(a + K)`` and
  ``G(t) = (1 + 2a) e^{a^2} erfc(a)``, a polynomial in ``t - t_mid`` on the ``t`` of
  ``a in [1, a_max]`` (G stays near 1.2: its constant term dominates, and Horner's rule
  is stable; a fit of ``e^{a^2} erfc(a)`` itself, from 0.43 down to 0.02, is not).

Each polynomial is the Chebyshev interpolant of the function (degree ``n``, ``n + 1``
Chebyshev points of the interval), computed in 60-digit arithmetic and rewritten in the
monomial basis of the centred variable, then rounded to float64.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

mp.mp.dps = 60

K = 3.0
# name: (degree of R, degree of G, a_max): a_max is where erfc underflows to 0 in the dtype
PLANS = {"float64": (12, 20, 28.0), "float32": (6, 10, 11.0)}


def chebyshev_monomial(f, lo, hi, n):
    """Monomial coefficients (lowest first) in ``s = u - mid`` of the degree-``n``
    Chebyshev interpolant of ``f`` on ``[lo, hi]``, and ``mid``."""
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    nodes = [half * mp.cos(mp.pi * (k + mp.mpf(1) / 2) / (n + 1)) for k in range(n + 1)]
    A = mp.matrix([[s**j for j in range(n + 1)] for s in nodes])
    c = mp.lu_solve(A, mp.matrix([f(mid + s) for s in nodes]))
    return [c[j] for j in range(n + 1)], mid


def R(z):
    if z == 0:
        return 2 / mp.sqrt(mp.pi) - 1
    r = mp.sqrt(z)
    return mp.erf(r) / r - 1


def G(t):
    a = K * (1 + t) / (1 - t)
    return (1 + 2 * a) * mp.exp(a * a) * mp.erfc(a)


def fit(name):
    n_r, n_g, a_max = PLANS[name]
    r, r_mid = chebyshev_monomial(R, 0, 1, n_r)
    t_lo, t_hi = (mp.mpf(1) - K) / (1 + K), (mp.mpf(a_max) - K) / (a_max + K)
    g, g_mid = chebyshev_monomial(G, t_lo, t_hi, n_g)
    return [float(v) for v in r], float(r_mid), [float(v) for v in g], float(g_mid), a_max


def horner(coefs, s):
    out = np.full_like(s, coefs[-1])
    for c in coefs[-2::-1]:
        out = out * s + c
    return out


def evaluate(x, table):
    """erf and erfc as ``_special.py`` computes them, in ``x``'s dtype (NumPy)."""
    r, r_mid, g, g_mid, a_max = table
    a = np.abs(x)
    small = a < 1
    x1 = np.clip(x, -1.0, 1.0)
    rr = x1 * horner(r, x1 * x1 - r_mid)
    a2 = np.clip(a, 1.0, a_max)
    gg = horner(g, (a2 - K) / (a2 + K) - g_mid)
    bits = 21 if x.dtype == np.float64 else 8
    hi = np.round(a2 * 2.0**bits) / 2.0**bits
    tail = np.exp(-(hi * hi)) * np.exp((hi - a2) * (hi + a2)) * gg / (1 + 2 * a2)
    erf = np.where(small, x1 + rr, np.copysign(1 - tail, x))
    big = (1 - np.copysign(np.ones_like(x), x)) + np.copysign(tail, x)
    erfc = np.where(small, (1 - x1) - rr, big)
    return erf, erfc


def worst_ulps(name, table):
    dtype = np.dtype(name)
    top = 27.0 if name == "float64" else 10.0
    x = np.concatenate(
        [
            np.linspace(-top, top, 20001),
            np.geomspace(1e-30, top, 3000),
            -np.geomspace(1e-30, top, 3000),
        ]
    ).astype(dtype)
    erf, erfc = evaluate(x, table)
    tiny = np.finfo(dtype).tiny
    worst = [0.0, 0.0]
    for v, e, ec in zip(x.tolist(), erf.tolist(), erfc.tolist(), strict=True):
        for i, (got, ref) in enumerate(((e, mp.erf(v)), (ec, mp.erfc(v)))):
            ref_f = float(ref)
            if abs(ref_f) < tiny:
                continue
            ulp = float(np.spacing(dtype.type(abs(ref_f))))
            worst[i] = max(worst[i], float(abs(mp.mpf(got) - ref)) / ulp)
    return worst


def main():
    for name in PLANS:
        table = fit(name)
        r, r_mid, g, g_mid, _ = table
        print(
            f"# {name}: R degree {len(r) - 1} about {r_mid}, G degree {len(g) - 1} about {g_mid!r}"
        )
        print(f"_R_{name.upper()} = {tuple(r)!r}")
        print(f"_G_{name.upper()} = {tuple(g)!r}")
        e, ec = worst_ulps(name, table)
        print(f"# worst error on the grid: erf {e:.2f} ulps, erfc {ec:.2f} ulps\n")


if __name__ == "__main__":
    main()
