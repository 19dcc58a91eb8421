"""Elementwise activations. Each keeps exactly what its derivative needs.

GELU's normal CDF uses the error function of :mod:`._special` (the namespace's own ``erfc``
where it has one).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._special import erfc
from ._validation import (
    backward_op,
    check_choice,
    check_floating,
    cotangent_namespace,
    forward_op,
    op_inputs,
    real_option,
)

__all__ = [
    "elu",
    "elu_backward",
    "gelu",
    "gelu_backward",
    "hardtanh",
    "hardtanh_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "logsigmoid",
    "logsigmoid_backward",
    "mish",
    "mish_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "silu",
    "silu_backward",
    "softplus",
    "softplus_backward",
    "softsign",
    "softsign_backward",
    "tanh",
    "tanh_backward",
]

Array = Any


def _ns(op: str, x: Array) -> tuple[Any, Array]:
    xp, x = op_inputs(op, x=x)
    check_floating(op, "x", x, xp)
    return xp, x


def stable_sigmoid(xp: Any, x: Array) -> Array:
    r""":math:`e^{\min(x,0)} / (1 + e^{-|x|})`: the logistic function without overflow."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def stable_softplus(xp: Any, x: Array) -> Array:
    r""":math:`\log(1 + e^{x}) = \max(x, 0) + \log(1 + e^{-|x|})` without overflow."""
    return xp.where(x > 0, x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


class SigmoidCache(NamedTuple):
    y: Array


@forward_op
def sigmoid(x: Array, /) -> tuple[Array, SigmoidCache]:
    r"""Logistic sigmoid :math:`y = 1 / (1 + e^{-x})`; backward :math:`g \, y (1 - y)`.

    Evaluated as :math:`e^{\min(x,0)} / (1 + e^{-|x|})`, which never overflows.
    """
    xp, x = _ns("sigmoid", x)
    y = stable_sigmoid(xp, x)
    return y, SigmoidCache(y)


@backward_op(SigmoidCache)
def sigmoid_backward(dy: Array, cache: SigmoidCache, /) -> tuple[Array]:
    y = cache.y
    _, dy = cotangent_namespace("sigmoid_backward", dy, y, y.shape, y.dtype)
    return (dy * y * (1 - y),)


class TanhCache(NamedTuple):
    y: Array


@forward_op
def tanh(x: Array, /) -> tuple[Array, TanhCache]:
    r"""Hyperbolic tangent; backward :math:`g (1 - y^2)`."""
    xp, x = _ns("tanh", x)
    y = xp.tanh(x)
    return y, TanhCache(y)


@backward_op(TanhCache)
def tanh_backward(dy: Array, cache: TanhCache, /) -> tuple[Array]:
    y = cache.y
    _, dy = cotangent_namespace("tanh_backward", dy, y, y.shape, y.dtype)
    return (dy * (1 - y * y),)


class ReluCache(NamedTuple):
    mask: Array  # not (x <= 0): as torch, NaN passes the gradient through
    dtype: Any  # the output's


@forward_op
def relu(x: Array, /) -> tuple[Array, ReluCache]:
    r""":math:`\max(x, 0)`; backward :math:`g [x > 0]` (zero at ``x == 0``, as torch)."""
    xp, x = _ns("relu", x)
    mask = ~(x <= 0)
    # where(), not maximum(): maximum(nan, 0) is 0 on some backends; NaN must propagate.
    return xp.where(x < 0, xp.zeros_like(x), x), ReluCache(mask, x.dtype)


@backward_op(ReluCache)
def relu_backward(dy: Array, cache: ReluCache, /) -> tuple[Array]:
    xp, dy = cotangent_namespace("relu_backward", dy, cache.mask, cache.mask.shape, cache.dtype)
    return (xp.where(cache.mask, dy, xp.zeros_like(dy)),)


class LeakyReluCache(NamedTuple):
    mask: Array
    negative_slope: float
    dtype: Any  # the output's


@forward_op
def leaky_relu(x: Array, /, negative_slope: float = 0.01) -> tuple[Array, LeakyReluCache]:
    r""":math:`x` where :math:`x > 0`, else :math:`\alpha x`; backward :math:`g` or :math:`\alpha g`."""
    xp, x = _ns("leaky_relu", x)
    negative_slope = real_option("leaky_relu", "negative_slope", negative_slope)
    mask = x > 0
    return xp.where(x < 0, negative_slope * x, x), LeakyReluCache(mask, negative_slope, x.dtype)


@backward_op(LeakyReluCache)
def leaky_relu_backward(dy: Array, cache: LeakyReluCache, /) -> tuple[Array]:
    xp, dy = cotangent_namespace(
        "leaky_relu_backward", dy, cache.mask, cache.mask.shape, cache.dtype
    )
    return (xp.where(cache.mask, dy, cache.negative_slope * dy),)


class EluCache(NamedTuple):
    x: Array
    alpha: float


@forward_op
def elu(x: Array, /, alpha: float = 1.0) -> tuple[Array, EluCache]:
    r""":math:`x` where :math:`x > 0`, else :math:`\alpha (e^{x} - 1)`.

    Backward: :math:`g` where :math:`x > 0`, else :math:`g\,\alpha e^{x}` (from ``x``, not as
    :math:`y + \alpha`, which cancels to nothing for very negative ``x``).
    """
    xp, x = _ns("elu", x)
    alpha = real_option("elu", "alpha", alpha)
    neg = xp.minimum(x, xp.zeros_like(x))
    y = xp.where(x > 0, x, alpha * xp.expm1(neg))
    y = xp.where(xp.isnan(x), x, y)
    return y, EluCache(x, alpha)


@backward_op(EluCache)
def elu_backward(dy: Array, cache: EluCache, /) -> tuple[Array]:
    x, alpha = cache
    xp, dy = cotangent_namespace("elu_backward", dy, x, x.shape, x.dtype)
    slope = alpha * xp.exp(xp.minimum(x, xp.zeros_like(x)))
    return (xp.where(x <= 0, dy * slope, dy),)  # NaN takes the identity branch, as torch


class SoftplusCache(NamedTuple):
    x: Array
    beta: float
    threshold: float


@forward_op
def softplus(
    x: Array, /, beta: float = 1.0, threshold: float = 20.0
) -> tuple[Array, SoftplusCache]:
    r""":math:`\frac{1}{\beta}\log(1 + e^{\beta x})`, and :math:`x` where :math:`\beta x > \text{threshold}`.

    As torch, the linear branch above the threshold avoids overflow. Backward:
    :math:`g\,\sigma(\beta x)` (and :math:`g` on the linear branch).
    """
    xp, x = _ns("softplus", x)
    beta = real_option("softplus", "beta", beta)
    threshold = real_option("softplus", "threshold", threshold)
    bx = beta * x
    soft = stable_softplus(xp, bx) / beta
    return xp.where(bx > threshold, x, soft), SoftplusCache(x, beta, threshold)


@backward_op(SoftplusCache)
def softplus_backward(dy: Array, cache: SoftplusCache, /) -> tuple[Array]:
    x, beta, threshold = cache
    xp, dy = cotangent_namespace("softplus_backward", dy, x, x.shape, x.dtype)
    bx = beta * x
    return (xp.where(bx > threshold, dy, dy * stable_sigmoid(xp, bx)),)


_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_BETA = math.sqrt(2 / math.pi)  # sqrt(2/pi), torch's kBeta
_GELU_KAPPA = 0.044715


class GeluCache(NamedTuple):
    x: Array
    cdf: Array  # Φ(x), or its tanh approximation s = (1 + tanh u)/2
    e: Array | None  # approximate="tanh": exp(-2|u|), u = β(x + κx³)


@forward_op
def gelu(x: Array, /, approximate: str = "none") -> tuple[Array, GeluCache]:
    r"""Gaussian error linear unit :math:`x\,\Phi(x)`, as ``torch.nn.functional.gelu``.

    - ``approximate="none"``: :math:`\Phi(x) = \tfrac12 \mathrm{erfc}(-x/\sqrt2)`, the
      standard normal CDF (erfc rather than torch's :math:`\tfrac12(1 + \mathrm{erf})`: the
      same numbers, but no cancellation for negative :math:`x`);
    - ``approximate="tanh"``: :math:`\tfrac12 x (1 + \tanh u)`, :math:`u = \beta (x +
      \kappa x^3)`, :math:`\beta = \sqrt{2/\pi}`, :math:`\kappa = 0.044715`, evaluated as
      :math:`x\,\sigma(2u)` (:math:`1 + \tanh u = 2\sigma(2u)`), which does not cancel for
      negative :math:`x` as :math:`1 + \tanh u` does (torch's float32 kernel loses all
      digits there by :math:`x \approx -5`).

    Parameters
    ----------
    x : array, any shape, real floating
    approximate : {"none", "tanh"}

    Returns
    -------
    y : array, shape and dtype of ``x``
    cache : GeluCache

    Notes
    -----
    Backward: :math:`g\,(\Phi(x) + x\,\varphi(x))` with :math:`\varphi(x) = e^{-x^2/2} /
    \sqrt{2\pi}`; for ``"tanh"``, with :math:`s = \sigma(2u)`,
    :math:`g\,(s + \tfrac12 x (1 - \tanh^2 u)\, u')`, :math:`u' = \beta (1 + 3\kappa
    x^2)`, where :math:`1 - \tanh^2 u = 4 s (1 - s) = 4 e / (1 + e)^2` with :math:`e =
    e^{-2|u|}` (again without cancellation). The forward's :math:`\Phi` (or :math:`s` and
    :math:`e`) is cached with ``x``, so the backward does not evaluate erfc again. As torch
    in float64, :math:`\mathrm{gelu}(+\infty) = +\infty` and :math:`\mathrm{gelu}(-\infty)`
    is NaN (:math:`-\infty \cdot 0`), and the gradient at :math:`\pm\infty` is NaN (torch's
    float32 kernel also gives NaN at :math:`+\infty`).
    """
    xp, x = _ns("gelu", x)
    check_choice("gelu", "approximate", approximate, ("none", "tanh"))
    if approximate == "tanh":
        u = _GELU_BETA * (x + _GELU_KAPPA * (x * x * x))  # the sign of x
        e = xp.exp(-2 * xp.abs(u))
        s = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))  # σ(2u) = (1 + tanh u)/2
        return x * s, GeluCache(x, s, e)
    cdf = 0.5 * erfc(xp, x * -_SQRT1_2)
    return x * cdf, GeluCache(x, cdf, None)


@backward_op(GeluCache)
def gelu_backward(dy: Array, cache: GeluCache, /) -> tuple[Array]:
    x, cdf, e = cache
    xp, dy = cotangent_namespace("gelu_backward", dy, x, x.shape, x.dtype)
    if e is not None:
        du = _GELU_BETA * (1 + 3 * _GELU_KAPPA * (x * x))
        return (dy * (cdf + 2 * x * (e / ((1 + e) * (1 + e))) * du),)  # ½x·4e/(1+e)²·u'
    pdf = _INV_SQRT_2PI * xp.exp(-0.5 * (x * x))
    return (dy * (cdf + x * pdf),)


class SiluCache(NamedTuple):
    x: Array
    s: Array  # σ(x)


@forward_op
def silu(x: Array, /) -> tuple[Array, SiluCache]:
    r"""Sigmoid linear unit (swish) :math:`x\,\sigma(x)`.

    Notes
    -----
    Backward: :math:`g\,\sigma(x)\,(1 + x (1 - \sigma(x)))`. At :math:`-\infty` the output
    is NaN (:math:`-\infty \cdot 0`) and at :math:`\pm\infty` the gradient is, as torch's.
    """
    xp, x = _ns("silu", x)
    s = stable_sigmoid(xp, x)
    return x * s, SiluCache(x, s)


@backward_op(SiluCache)
def silu_backward(dy: Array, cache: SiluCache, /) -> tuple[Array]:
    x, s = cache
    _, dy = cotangent_namespace("silu_backward", dy, x, x.shape, x.dtype)
    return (dy * s * (1 + x * (1 - s)),)


class MishCache(NamedTuple):
    x: Array
    t: Array  # tanh(softplus(x))


@forward_op
def mish(x: Array, /) -> tuple[Array, MishCache]:
    r""":math:`x \tanh(\mathrm{softplus}(x))`, with the overflow-free softplus
    :math:`\max(x, 0) + \log(1 + e^{-|x|})`.

    Notes
    -----
    With :math:`t = \tanh(\mathrm{softplus}(x))` and :math:`\mathrm{softplus}' = \sigma`,
    backward: :math:`g\,(t + x\,\sigma(x)\,(1 - t^2))`; NaN at :math:`\pm\infty`, as torch's.
    """
    xp, x = _ns("mish", x)
    t = xp.tanh(stable_softplus(xp, x))
    return x * t, MishCache(x, t)


@backward_op(MishCache)
def mish_backward(dy: Array, cache: MishCache, /) -> tuple[Array]:
    x, t = cache
    xp, dy = cotangent_namespace("mish_backward", dy, x, x.shape, x.dtype)
    return (dy * (t + x * stable_sigmoid(xp, x) * (1 - t * t)),)


class HardtanhCache(NamedTuple):
    mask: Array  # min_val < x < max_val
    dtype: Any  # the output's


@forward_op
def hardtanh(
    x: Array, /, min_val: float = -1.0, max_val: float = 1.0
) -> tuple[Array, HardtanhCache]:
    r""":math:`\min(\max(x, a), b)` with :math:`a` = ``min_val``, :math:`b` = ``max_val``
    (:math:`a \le b`, as torch's check); NaN stays NaN.

    Notes
    -----
    Backward: :math:`g\,[a < x < b]`: zero at exactly ``min_val`` and ``max_val`` and at NaN,
    as torch's ``hardtanh_backward``.
    """
    op = "hardtanh"
    xp, x = _ns(op, x)
    min_val = real_option(op, "min_val", min_val)
    max_val = real_option(op, "max_val", max_val)
    if min_val > max_val:
        raise ValueError(
            f"{op}: argument 'max_val' expected a value >= min_val={min_val:g}, got {max_val!r}"
        )
    mask = (x > min_val) & (x < max_val)
    return xp.clip(x, min_val, max_val), HardtanhCache(mask, x.dtype)


@backward_op(HardtanhCache)
def hardtanh_backward(dy: Array, cache: HardtanhCache, /) -> tuple[Array]:
    xp, dy = cotangent_namespace("hardtanh_backward", dy, cache.mask, cache.mask.shape, cache.dtype)
    return (xp.where(cache.mask, dy, xp.zeros_like(dy)),)


class LogsigmoidCache(NamedTuple):
    y: Array


@forward_op
def logsigmoid(x: Array, /) -> tuple[Array, LogsigmoidCache]:
    r""":math:`\log\sigma(x) = -\mathrm{softplus}(-x) = \min(x, 0) - \log(1 + e^{-|x|})`,
    which neither overflows nor loses the tiny :math:`-e^{-x}` of large :math:`x`.

    Notes
    -----
    Backward: :math:`g\,\sigma(-x) = g\,(1 - e^{y}) = -g\,\mathrm{expm1}(y)`, from the cached
    output (exact in relative terms at both ends: :math:`e^{-x}` for large :math:`x`,
    :math:`1` for very negative :math:`x`).
    """
    xp, x = _ns("logsigmoid", x)
    y = xp.where(x < 0, x, xp.zeros_like(x)) - xp.log1p(xp.exp(-xp.abs(x)))
    return y, LogsigmoidCache(y)


@backward_op(LogsigmoidCache)
def logsigmoid_backward(dy: Array, cache: LogsigmoidCache, /) -> tuple[Array]:
    y = cache.y
    xp, dy = cotangent_namespace("logsigmoid_backward", dy, y, y.shape, y.dtype)
    return (-dy * xp.expm1(y),)


class SoftsignCache(NamedTuple):
    x: Array


@forward_op
def softsign(x: Array, /) -> tuple[Array, SoftsignCache]:
    r""":math:`x / (1 + |x|)`; NaN at :math:`\pm\infty` (:math:`\infty/\infty`), as torch's.

    Notes
    -----
    Backward: :math:`g / (1 + |x|)^2`, computed as it stands (torch's autograd evaluates the
    unsimplified quotient rule, whose cancellation costs it digits for large :math:`|x|`);
    NaN at :math:`\pm\infty`, as torch's.
    """
    xp, x = _ns("softsign", x)
    return x / (1 + xp.abs(x)), SoftsignCache(x)


@backward_op(SoftsignCache)
def softsign_backward(dy: Array, cache: SoftsignCache, /) -> tuple[Array]:
    x = cache.x
    xp, dy = cotangent_namespace("softsign_backward", dy, x, x.shape, x.dtype)
    s = 1 + xp.abs(x)
    dx = dy / (s * s)
    return (xp.where(xp.isinf(x), xp.full_like(dx, math.nan), dx),)
