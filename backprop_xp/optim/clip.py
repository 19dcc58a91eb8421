"""Gradient clipping by global norm, without host synchronization."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..backend import device, get_namespace
from ..nn.module import Module, Parameter

__all__ = ["clip_grad_norm"]

Array = Any


def clip_grad_norm(
    params: Module | Iterable[Parameter],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Array:
    r"""Scale all gradients so that their joint norm is at most ``max_norm``, as torch's
    ``clip_grad_norm_``.

    .. math::
        n = \Big\| \big( \|g_1\|_p, \ldots, \|g_k\|_p \big) \Big\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\!\Big(1, \frac{\text{max\_norm}}{n + 10^{-6}}\Big)

    The scale stays an array on the device (gradients are always multiplied, by 1 when
    under the limit), so no value goes to the host; only ``error_if_nonfinite=True``
    reads the norm back.

    Returns
    -------
    array, 0-d
        The total norm before clipping (``0`` when there are no gradients).
    """
    if isinstance(params, Module):
        params = params.parameters()
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0  # torch returns tensor(0.); with no array there is no namespace to use
    xp = get_namespace(params[0].grad)
    dt = params[0].grad.dtype
    if math.isinf(norm_type):
        norms = [xp.max(xp.abs(p.grad)) for p in params]
        total = xp.max(xp.stack(norms))
    else:
        norms = [xp.sum(xp.abs(p.grad) ** norm_type) for p in params]
        total = xp.sum(xp.stack(norms)) ** (1.0 / norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"clip_grad_norm: the total norm of order {norm_type} of the gradients is "
            f"non-finite ({float(total)}), so it cannot be clipped"
        )
    one = xp.asarray(1.0, dtype=dt, device=device(total))
    scale = xp.minimum(max_norm / (total + 1e-6), one)
    for p in params:
        p.grad = p.grad * xp.astype(scale, p.grad.dtype)
    return total
