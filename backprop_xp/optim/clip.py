"""Gradient clipping by global norm, without host synchronization."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from ..backend import device, get_namespace
from ..functional._validation import bool_option, real_option
from ..nn.module import Module, Parameter

__all__ = ["clip_grad_norm"]

Array = Any


def _vector_norm(x: Array, ord: float, *, xp: ModuleType) -> Array:
    r"""``torch.linalg.vector_norm(x, ord)`` of all of ``x``, as a 0-d array of its dtype.

    ``inf``: :math:`\max |x_i|`; ``-inf``: :math:`\min |x_i|`; ``0``: the number of nonzero
    entries; otherwise :math:`(\sum |x_i|^p)^{1/p}` (for ``p < 0`` that is 0 as soon as one
    entry is 0).
    """
    a = xp.abs(x)
    if ord == math.inf:
        return xp.max(a)
    if ord == -math.inf:
        return xp.min(a)
    if ord == 0:
        return xp.sum(xp.astype(a != 0, x.dtype))
    if ord < 0:
        # |x|^p is 1/0 where x = 0: keep the division out of the graph (NumPy warns), and
        # the sum then is inf, whose p-th root is 0, unless a NaN makes it NaN
        zero = a == 0
        s = xp.sum(xp.where(zero, xp.ones_like(a), a) ** ord)
        return xp.where(xp.any(zero) & ~xp.isnan(s), xp.zeros_like(s), s ** (1.0 / ord))
    return xp.sum(a**ord) ** (1.0 / ord)


def clip_grad_norm(
    params: Module | Parameter | Iterable[Parameter],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
) -> Array:
    r"""Scale all gradients so that their joint norm is at most ``max_norm``, as torch's
    ``clip_grad_norm_``.

    .. math::
        n = \Big\| \big( \|g_1\|_p, \ldots, \|g_k\|_p \big) \Big\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\!\Big(1, \frac{\text{max\_norm}}{n + 10^{-6}}\Big)

    Each norm is torch's ``linalg.vector_norm`` of order ``p = norm_type``: ``inf`` (or the
    string ``"inf"``) the largest :math:`|g|`, ``-inf`` the smallest, ``0`` the count of
    nonzero entries. As in torch, the total is the same norm of the per-gradient norms, so for
    ``p = 0`` it counts the gradients that have a nonzero entry.

    The scale stays an array on the device (gradients are always multiplied, by 1 when
    under the limit), so no value goes to the host; only ``error_if_nonfinite=True``
    reads the norm back.

    Parameters
    ----------
    params : Module, Parameter or iterable of Parameter
        Parameters whose ``.grad`` is None are skipped.
    max_norm : float
    norm_type : float or str
        Anything ``float()`` accepts: ``2.0``, ``math.inf``, ``"inf"``, ``"-inf"``, ``0``.
    error_if_nonfinite : bool
        Raise :class:`RuntimeError` if the total norm is nan or infinite.

    Returns
    -------
    array, 0-d
        The total norm before clipping (``0.0`` when there are no gradients).
    """
    op = "clip_grad_norm"
    if isinstance(norm_type, str):
        try:
            p = float(norm_type)
        except ValueError:
            raise ValueError(
                f"{op}: argument 'norm_type' expected a number or 'inf', got {norm_type!r}"
            ) from None
    else:
        p = real_option(op, "norm_type", norm_type)
    max_norm = real_option(op, "max_norm", max_norm)
    error_if_nonfinite = bool_option(op, "error_if_nonfinite", error_if_nonfinite)
    if isinstance(params, Module):
        params = params.parameters()
    elif isinstance(params, Parameter):
        params = [params]
    params = [q for q in params if q.grad is not None]
    if not params:
        return 0.0  # torch returns tensor(0.); with no array there is no namespace to use
    if p < 0 or math.isinf(p):
        for i, q in enumerate(params):
            if math.prod(q.grad.shape) == 0:
                raise ValueError(
                    f"clip_grad_norm: cannot take the {p} norm of gradient {i}, which is "
                    f"empty (shape {tuple(q.grad.shape)}): the norm has no identity element"
                )
    xp = get_namespace(*(q.grad for q in params), op="clip_grad_norm")
    total = _vector_norm(xp.stack([_vector_norm(q.grad, p, xp=xp) for q in params]), p, xp=xp)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"clip_grad_norm: the total norm of order {p} of the gradients is "
            f"non-finite ({float(total)}), so it cannot be clipped"
        )
    one = xp.ones((), dtype=total.dtype, device=device(total))
    scale = xp.minimum(max_norm / (total + 1e-6), one)
    for q in params:
        q.grad = q.grad * xp.astype(scale, q.grad.dtype)
    return total
