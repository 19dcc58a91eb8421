"""Losses: cross-entropy (class indices or probabilities), BCE with logits, mean squared error.

Semantics, defaults and reductions follow ``torch.nn.functional``; the derivations are in
``docs/derivations.md``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx

from ..backend import copysign, device, supports_integer_setitem
from ._validation import (
    backward_op,
    broadcasts_to,
    check_choice,
    check_floating,
    check_same_dtype,
    cotangent_namespace,
    forward_op,
    int_option,
    op_inputs,
    real_option,
    shape_error,
    value_checks,
)
from .activations import stable_sigmoid, stable_softplus

__all__ = [
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "mse_loss",
    "mse_loss_backward",
]

Array = Any
_REDUCTIONS = ("mean", "sum", "none")


def _reduce(xp: ModuleType, loss: Array, reduction: str, denominator: Array | None) -> Array:
    if reduction == "none":
        return loss
    # float16 sums accumulate in float32, as torch's do: 30000 squared errors of ~9 already
    # overflow float16 (max 65504)
    total = xp.sum(loss, dtype=_accumulator(xp, loss.dtype))
    out = total if reduction == "sum" else _divide(xp, total, denominator)
    # asarray: NumPy reduces to a NumPy scalar; the protocol returns 0-d arrays
    return xp.asarray(xp.astype(out, loss.dtype, copy=False))


def _divide(xp: ModuleType, a: Array, b: Array) -> Array:
    """``a / b`` as IEEE 754 and torch give it, also where ``b`` is zero (``±inf``, or NaN
    for ``0/0``), without the warning NumPy gives for a division by zero."""
    zero = b == 0
    q = a / xp.where(zero, xp.ones_like(b), b)
    signed_inf = copysign(xp, xp.full_like(q, math.inf), a) * copysign(xp, xp.ones_like(b), b)
    undefined = xp.isnan(a) | (a == 0)
    return xp.where(zero, xp.where(undefined, xp.full_like(q, math.nan), signed_inf), q)


def _accumulator(xp: ModuleType, dtype: Any) -> Any:
    """The dtype reductions of ``dtype`` run in: float32 for narrower floats, else itself."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _check_pair(op: str, input: Array, target: Array, reduction: str, xp: ModuleType) -> None:
    """Elementwise losses: a floating ``input``, a ``target`` of its shape and dtype."""
    check_floating(op, "input", input, xp)
    check_same_dtype(op, "target", target, "input", input)
    check_choice(op, "reduction", reduction, _REDUCTIONS)
    if tuple(target.shape) != tuple(input.shape):
        raise shape_error(
            op, "target", f"input's shape {tuple(input.shape)}", f"shape {tuple(target.shape)}"
        )


def _count(xp: ModuleType, a: Array, like: Array) -> Array:
    """The number of elements of ``a`` as a 0-d array of ``like``'s accumulation dtype
    (float32 for float16: 65504 is float16's largest value); NaN when empty, so the mean of
    nothing is NaN as in torch."""
    size = math.prod(a.shape)
    n = float(size) if size else math.nan
    return xp.full((), n, dtype=_accumulator(xp, like.dtype), device=device(like))


def _scale(xp: ModuleType, g: Array, reduction: str, denominator: Array | None) -> Array:
    """``∂L/∂loss_n`` of the reduction, broadcastable against the per-sample loss, in
    ``g``'s dtype."""
    if reduction != "mean":
        return g
    return xp.astype(_divide(xp, g, denominator), g.dtype, copy=False)


class CrossEntropyCache(NamedTuple):
    e: Array  # exp(x - max): with s, the softmax p = e / s (keeps one pass out of the forward)
    s: Array  # sum of e over the class axis, keepdims
    z: Array | None  # x - max, only for the gradient of probability targets
    target: Array  # class indices (keepdims on the class axis) or probabilities
    weight: Array | None  # class weights broadcast along the class axis
    valid: Array | None  # target != ignore_index, keepdims (class indices only)
    w_y: Array | None  # weight of each kept sample's target class, 0 if ignored (weighted only)
    denominator: Array | None
    reduction: str
    label_smoothing: float
    probabilities: bool
    unbatched: bool


@forward_op
def cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> tuple[Array, CrossEntropyCache]:
    r"""Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    With :math:`\log p = \mathrm{log\_softmax}(x)` over the class axis (axis 1, or 0 for an
    unbatched ``(C,)`` input), class weights :math:`w` and smoothing :math:`\varepsilon`:

    - class indices :math:`y_n`: :math:`\ell_n = -(1-\varepsilon)\, w_{y_n} \log p_{n,y_n}
      - \frac{\varepsilon}{C} \sum_c w_c \log p_{n,c}`, zero where :math:`y_n` is
      ``ignore_index``; ``"mean"`` divides by :math:`\sum_n w_{y_n}` over kept samples;
    - class probabilities :math:`t` (same shape as ``input``, e.g. one-hot):
      :math:`\ell_n = -\sum_c w_c t'_{n,c} \log p_{n,c}` with
      :math:`t' = (1-\varepsilon) t + \varepsilon / C`; ``"mean"`` divides by the number of
      samples.

    Parameters
    ----------
    input : array, shape (N, C), (N, C, d1, ...) or (C,)
        Unnormalized logits.
    target : array
        Integer class indices (any integer dtype) of shape (N, d1, ...) (or () for unbatched
        input), or floating class probabilities of ``input``'s shape.
    weight : array, shape (C,), optional
        Per-class weights (no gradient is returned for them, as in torch).
    ignore_index : int
        Class-index targets equal to it contribute neither loss nor gradient.
    reduction : {"mean", "sum", "none"}
    label_smoothing : float in [0, 1]

    Returns
    -------
    loss : array
        A scalar, or shape (N, d1, ...) for ``reduction="none"``.
    cache : CrossEntropyCache

    Notes
    -----
    Without weights or smoothing the gradient is the course's
    :math:`\partial L/\partial x = \mathrm{softmax}(x) - \mathrm{onehot}(y)` (times the
    reduction's scale), for integer and one-hot targets alike. Class indices are checked to
    lie in ``[0, C)``, as the values their dtype holds (one host synchronization per call);
    switch this off with :func:`backprop_xp.set_index_checks`, after which out-of-range
    indices give undefined values (never an error).
    """
    op = "cross_entropy"
    xp, input, target, weight = op_inputs(
        op, input=input, target=target, weight=weight, optional=("weight",)
    )
    check_floating(op, "input", input, xp)
    check_choice(op, "reduction", reduction, _REDUCTIONS)
    label_smoothing = real_option(op, "label_smoothing", label_smoothing, low=0.0, high=1.0)
    ignore_index = int_option(op, "ignore_index", ignore_index)
    if input.ndim == 0:
        raise shape_error(op, "input", "shape (N, C), (N, C, d1, ...) or (C,)", "shape ()")
    if input.shape[0 if input.ndim == 1 else 1] == 0:  # torch: every target is out of range
        raise shape_error(op, "input", "at least one class (C >= 1)", f"shape {tuple(input.shape)}")
    unbatched = input.ndim == 1
    if unbatched and tuple(target.shape) not in ((), tuple(input.shape)):
        raise shape_error(
            op,
            "target",
            f"a class index of shape () or probabilities of shape {tuple(input.shape)} for "
            f"unbatched input",
            f"shape {tuple(target.shape)}",
        )
    if unbatched:
        input = input[None, ...]
        target = target[None, ...]
    n_classes = input.shape[1]
    probabilities = bool(xp.isdtype(target.dtype, "real floating"))
    if probabilities:
        if tuple(target.shape) != tuple(input.shape):
            raise shape_error(
                op,
                "target",
                f"probabilities of input's shape {tuple(input.shape)}",
                f"shape {tuple(target.shape)}",
            )
        check_same_dtype(op, "target", target, "input", input)
    else:
        if not xp.isdtype(target.dtype, "integral"):
            raise TypeError(
                f"{op}: argument 'target' expected integer class indices or floating class "
                f"probabilities, got dtype {target.dtype}"
            )
        expected = (input.shape[0], *input.shape[2:])
        if tuple(target.shape) != expected:
            raise shape_error(
                op, "target", f"class indices of shape {expected}", f"shape {tuple(target.shape)}"
            )
    if weight is not None:
        check_same_dtype(op, "weight", weight, "input", input)
        if tuple(weight.shape) != (n_classes,):
            raise shape_error(op, "weight", f"shape ({n_classes},)", f"shape {tuple(weight.shape)}")
        # broadcast along the class axis: (1, C, 1, ..., 1)
        weight = xp.reshape(weight, (1, n_classes) + (1,) * (input.ndim - 2))

    z = input - xp.max(input, axis=1, keepdims=True)
    e = xp.exp(z)
    s = xp.sum(e, axis=1, keepdims=True)
    log_s = xp.log(s)
    eps = label_smoothing

    if probabilities:
        t = target if eps == 0 else target * (1 - eps) + eps / n_classes
        wt = t if weight is None else t * weight
        # -sum_c w_c t'_c (z_c - log s) = sum_c w_c t'_c log s - sum_c w_c t'_c z_c
        loss = xp.sum(wt * (log_s - z), axis=1)
        denominator = _count(xp, loss, input)
        out = _reduce(xp, loss, reduction, denominator)
        cache = CrossEntropyCache(
            e, s, z, target, weight, None, None, denominator, reduction, eps, True, unbatched
        )
        return (out[0, ...] if unbatched and reduction == "none" else out), cache

    t_safe, valid = _class_indices(xp, target, n_classes, ignore_index)
    picked = _at_class(xp, z, t_safe)  # z at the target class
    zero = xp.zeros_like(picked)
    nll = log_s - picked  # -log p_y
    w_y = None
    if weight is not None:
        w_y = xp.reshape(
            xp.take(xp.reshape(weight, (-1,)), xp.reshape(t_safe, (-1,))), t_safe.shape
        )
        w_y = xp.where(valid, w_y, zero)  # an ignored sample has no target, nor its weight
        nll = nll * w_y
    nll = xp.where(valid, nll, zero)
    smooth = None if eps == 0 else xp.where(valid, _smooth(xp, z, log_s, weight), zero)
    denominator = None
    acc = _accumulator(xp, input.dtype)
    if reduction == "mean":
        # torch divides by the kept samples' target weights (their count when unweighted), as
        # it is: 0 (all ignored, or weights summing to 0) gives NaN or ±inf. float32 for
        # float16: a count past 65504 would be inf, and the mean 0
        kept = xp.astype(valid, input.dtype) if w_y is None else w_y
        denominator = xp.sum(kept, dtype=acc)
    if reduction == "mean" and smooth is not None:
        # torch's order: (1-ε) (Σ nll / W) + (Σ smooth / W) ε/C, each part divided on its own
        # (with W = 0 their infinities may cancel to NaN)
        parts = [_divide(xp, xp.sum(a, dtype=acc), denominator) for a in (nll, smooth)]
        out = xp.asarray(
            xp.astype((1 - eps) * parts[0] + parts[1] * (eps / n_classes), input.dtype)
        )
    else:
        loss = nll if smooth is None else (1 - eps) * nll + (eps / n_classes) * smooth
        out = _reduce(xp, loss[:, 0, ...], reduction, denominator)
    cache = CrossEntropyCache(
        e, s, None, t_safe, weight, valid, w_y, denominator, reduction, eps, False, unbatched
    )
    return (out[0, ...] if unbatched and reduction == "none" else out), cache


def _at_class(xp: ModuleType, z: Array, t: Array) -> Array:
    """``z[n, t[n], ...]`` keeping the class axis: ``take_along_axis`` where the namespace has
    it (dask's has not), else a select over the classes (exact: one term per row)."""
    take = getattr(xp, "take_along_axis", None)
    if take is not None:
        return take(z, t, axis=1)
    n_classes = z.shape[1]
    classes = xp.reshape(
        xp.arange(n_classes, dtype=t.dtype, device=device(z)), (1, n_classes) + (1,) * (z.ndim - 2)
    )
    return xp.sum(xp.where(classes == t, z, xp.zeros_like(z)), axis=1, keepdims=True)


def _smooth(xp: ModuleType, z: Array, log_s: Array, weight: Array | None) -> Array:
    """:math:`-\\sum_c w_c \\log p_c`, keepdims."""
    logp = z - log_s
    return -xp.sum(logp if weight is None else logp * weight, axis=1, keepdims=True)


def _class_indices(
    xp: ModuleType, target: Array, n_classes: int, ignore: int
) -> tuple[Array, Array]:
    """``(t, valid)``, keepdims on the class axis: the class indices as int64 (0 where a
    sample is ignored or, with the checks off, out of range: undefined but safe to gather)
    and ``target != ignore_index``, both compared as the integers ``target`` holds.

    torch gathers only with int64, so the targets are cast first. The cast is exact for
    every integer dtype but uint64, whose values from 2**63 come out negative: they are out
    of range, and never equal to ``ignore_index`` (``2**64 - 100`` is not ``-100``).
    """
    t = xp.astype(target, xp.int64, copy=False)
    unsigned = xp.isdtype(target.dtype, "unsigned integer")
    info = xp.iinfo(target.dtype)
    if info.min <= ignore <= info.max:  # else no value of target's dtype equals it
        image = ignore - 2**64 if ignore >= 2**63 else ignore  # uint64's cast, as above
        valid = t != image
    else:
        valid = xp.ones(t.shape, dtype=xp.bool, device=device(t))
    in_range = (t >= 0) & (t < n_classes)
    if value_checks(t):
        bad = valid & ~in_range
        if bool(xp.any(bad)):  # the one host synchronization of this op
            lo, hi = _extremes(xp, t, bad, unsigned)
            raise ValueError(
                f"cross_entropy: argument 'target' expected class indices in [0, {n_classes}) "
                f"or ignore_index={ignore}, got out-of-range values from {lo} to {hi}"
            )
    t = xp.where(valid & in_range, t, xp.zeros_like(t))
    return t[:, None, ...], valid[:, None, ...]


def _extremes(xp: ModuleType, t: Array, bad: Array, unsigned: bool) -> tuple[int, int]:
    """The smallest and largest value of the int64 ``t`` where ``bad`` (not empty), as the
    target held them: a negative ``t`` from an unsigned target is ``t + 2**64``."""
    info = xp.iinfo(t.dtype)

    def extreme(f: Any, mask: Array, fill: int) -> int:
        return int(f(xp.where(mask, t, xp.full_like(t, fill))))

    if not unsigned:
        return extreme(xp.min, bad, info.max), extreme(xp.max, bad, info.min)
    wrapped, plain = bad & (t < 0), bad & (t >= 0)
    has_plain, has_wrapped = bool(xp.any(plain)), bool(xp.any(wrapped))
    lo = extreme(xp.min, plain, info.max) if has_plain else extreme(xp.min, wrapped, -1) + 2**64
    hi = extreme(xp.max, wrapped, info.min) + 2**64 if has_wrapped else extreme(xp.max, plain, 0)
    return lo, hi


@backward_op(CrossEntropyCache)
def cross_entropy_backward(
    dloss: Array, cache: CrossEntropyCache, /
) -> tuple[Array, Array | None, None]:
    """Returns ``(d_input, d_target, None)``: ``d_target`` only for probability targets."""
    (e, s, z, target, weight, valid, w_y, denominator, reduction, eps, probabilities, unbatched) = (
        cache
    )
    if reduction != "none" or unbatched:
        loss_shape: tuple[int, ...] = ()
    else:
        loss_shape = (e.shape[0], *e.shape[2:])
    xp, dloss = cotangent_namespace(
        "cross_entropy_backward", dloss, e, loss_shape, e.dtype, "dloss"
    )
    n_classes = e.shape[1]
    g = dloss
    if reduction == "none":
        g = g[None, ...] if unbatched else g
        g = g[:, None, ...]
    scale = _scale(xp, g, reduction, denominator)

    if probabilities:
        p = e / s
        t = target if eps == 0 else target * (1 - eps) + eps / n_classes
        wt = t if weight is None else t * weight
        # ∂ℓ/∂x = p Σ_c w_c t'_c - w t'
        dx = scale * (p * xp.sum(wt, axis=1, keepdims=True) - wt)
        logp = z - xp.log(s)
        dt = -(1 - eps) * scale * (logp if weight is None else logp * weight)
        if unbatched:
            dx, dt = dx[0, ...], dt[0, ...]
        return dx, dt, None

    coef = xp.where(valid, scale, xp.zeros_like(scale))
    classes = xp.arange(n_classes, device=device(e))
    if weight is None and eps == 0:
        # the course's softmax - onehot, times the reduction's scale: one pass for
        # coef * softmax, then coef is subtracted at the N targets only
        dx = e * (coef / s)
        if e.ndim == 2 and supports_integer_setitem(xp):
            rows = xp.arange(e.shape[0], device=device(e))
            # dx is this function's own fresh array: at() writes in place, O(N) work
            dx = xpx.at(dx, (rows, target[:, 0])).subtract(coef[:, 0])
        else:
            is_target = xp.reshape(classes, (1, n_classes) + (1,) * (e.ndim - 2)) == target
            dx = xp.where(is_target, dx - coef, dx)
    else:
        # torch's order, so that infinities (class weights summing to 0 under "mean") meet
        # as they do there: nll_loss's backward puts -w_y (1-ε) g / W at each kept target, the
        # smoothing term -w_c (ε/C) g / W at every class of a kept sample; then log_softmax's
        # backward, dx = gl - p Σ_c gl
        p = e / s
        is_target = xp.reshape(classes, (1, n_classes) + (1,) * (e.ndim - 2)) == target
        nll_coef = -(1 - eps) * coef
        gl = xp.where(is_target, nll_coef if w_y is None else w_y * nll_coef, xp.zeros_like(p))
        if eps:
            smooth_coef = -(eps / n_classes) * coef
            gl = gl + (smooth_coef if weight is None else smooth_coef * weight)
        dx = gl - p * xp.sum(gl, axis=1, keepdims=True)
    if unbatched:
        dx = dx[0, ...]
    return dx, None, None


class BCEWithLogitsCache(NamedTuple):
    x: Array
    target: Array
    weight: Array | None
    pos_weight: Array | None
    denominator: Array | None
    reduction: str


@forward_op
def binary_cross_entropy_with_logits(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    pos_weight: Array | None = None,
) -> tuple[Array, BCEWithLogitsCache]:
    r"""Sigmoid + binary cross-entropy in one stable step, as torch's.

    .. math::
        \ell = w \left[ (1 - t)\, x + (1 + (q - 1) t)\, \mathrm{softplus}(-x) \right]

    with :math:`q` the ``pos_weight`` (1 by default), which is :math:`-w[q t \log\sigma(x) +
    (1-t)\log(1-\sigma(x))]` rewritten so no exponential overflows.

    Parameters
    ----------
    input : array, any shape
        Logits.
    target : array, shape of ``input``
        Probabilities in [0, 1]; a gradient is returned for it too.
    weight : array, broadcastable to ``input``, optional
    reduction : {"mean", "sum", "none"}
    pos_weight : array, broadcastable to ``input`` (usually (C,) on the last axis), optional

    Notes
    -----
    :math:`\partial\ell/\partial x = w[(1 + (q-1)t)\,\sigma(x) - q t]`, which is
    :math:`w(\sigma(x) - t)` without ``pos_weight``;
    :math:`\partial\ell/\partial t = w[(q - 1)\,\mathrm{softplus}(-x) - x]`.
    Backward returns ``(d_input, d_target, None, None)``: no gradient for the weights.
    """
    op = "binary_cross_entropy_with_logits"
    xp, input, target, weight, pos_weight = op_inputs(
        op,
        input=input,
        target=target,
        weight=weight,
        pos_weight=pos_weight,
        optional=("weight", "pos_weight"),
    )
    _check_pair(op, input, target, reduction, xp)
    for name, a in (("weight", weight), ("pos_weight", pos_weight)):
        if a is not None:
            check_same_dtype(op, name, a, "input", input)
            if not broadcasts_to(tuple(a.shape), tuple(input.shape)):
                raise shape_error(
                    op,
                    name,
                    f"a shape broadcastable to {tuple(input.shape)}",
                    f"shape {tuple(a.shape)}",
                )
    sp = stable_softplus(xp, -input)
    if pos_weight is None:
        loss = (1 - target) * input + sp
    else:
        loss = (1 - target) * input + (1 + (pos_weight - 1) * target) * sp
    if weight is not None:
        loss = loss * weight
    denominator = _count(xp, loss, input) if reduction == "mean" else None
    out = _reduce(xp, loss, reduction, denominator)
    return out, BCEWithLogitsCache(input, target, weight, pos_weight, denominator, reduction)


@backward_op(BCEWithLogitsCache)
def binary_cross_entropy_with_logits_backward(
    dloss: Array, cache: BCEWithLogitsCache, /
) -> tuple[Array, Array, None, None]:
    x, t, weight, pos_weight, denominator, reduction = cache
    xp, dloss = cotangent_namespace(
        "binary_cross_entropy_with_logits_backward",
        dloss,
        x,
        tuple(x.shape) if reduction == "none" else (),
        x.dtype,
        "dloss",
    )
    scale = _scale(xp, dloss, reduction, denominator)
    sig = stable_sigmoid(xp, x)
    if pos_weight is None:
        dx = sig - t
        dt = -x
    else:
        # torch's formulas term for term, so that infinities meet as there: at t = -inf,
        # q = 0.5 the algebraically equal 1 + (q - 1) t is inf where q t + 1 - t is NaN, and
        # at x = -inf, q = 1, (q - 1) softplus(-x) - x is NaN where torch's dt is inf
        qt = pos_weight * t
        dx = (qt + 1 - t) * sig - qt
        dt = pos_weight * stable_softplus(xp, -x) - stable_softplus(xp, x)
    if weight is not None:
        scale = scale * weight
    return scale * dx, scale * dt, None, None


class MSELossCache(NamedTuple):
    diff: Array
    denominator: Array | None
    reduction: str


@forward_op
def mse_loss(input: Array, target: Array, reduction: str = "mean") -> tuple[Array, MSELossCache]:
    r"""Mean squared error :math:`\ell = (x - t)^2`, reduced.

    Backward: :math:`\partial\ell/\partial x = 2 (x - t)` (times the reduction's scale) and
    the negative of it for ``target``.
    """
    op = "mse_loss"
    xp, input, target = op_inputs(op, input=input, target=target)
    _check_pair(op, input, target, reduction, xp)
    diff = input - target
    denominator = _count(xp, diff, input) if reduction == "mean" else None
    return _reduce(xp, diff * diff, reduction, denominator), MSELossCache(
        diff, denominator, reduction
    )


@backward_op(MSELossCache)
def mse_loss_backward(dloss: Array, cache: MSELossCache, /) -> tuple[Array, Array]:
    diff, denominator, reduction = cache
    loss_shape = tuple(diff.shape) if reduction == "none" else ()
    xp, dloss = cotangent_namespace(
        "mse_loss_backward", dloss, diff, loss_shape, diff.dtype, "dloss"
    )
    dx = 2 * _scale(xp, dloss, reduction, denominator) * diff
    return dx, -dx
