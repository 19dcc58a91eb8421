r"""Dropout, with its mask drawn from a seed by the counter-based generator of
:mod:`._random`: the same mask on every backend, built on the input's device."""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from ..backend import device
from ._random import BITS, random_bits
from ._validation import (
    _is_array,
    backward_op,
    bool_option,
    check_floating,
    check_integer,
    cotangent_namespace,
    forward_op,
    int_option,
    op_inputs,
    real_option,
    shape_error,
)

__all__ = ["dropout", "dropout_backward"]

Array = Any


class DropoutCache(NamedTuple):
    keep: Array | None  # bool mask of the kept elements; None for the identity
    scale: float  # 1 / (1 - p), 0 for p = 1
    like: Array  # zero-size array: the output's library, dtype and device
    shape: tuple[int, ...]


def dropout_seed(op: str, seed: Any, x: Array) -> Any:
    """``seed`` as a Python int, or a 0-d integer array of ``x``'s library and device."""
    if _is_array(seed):
        xp, _, seed = op_inputs(op, x=x, seed=seed)
        check_integer(op, "seed", seed, xp)
        if seed.ndim != 0:
            raise shape_error(op, "seed", "an int or a 0-d integer array", f"shape {seed.shape}")
        return seed
    return int_option(op, "seed", seed)


@forward_op
def dropout(
    x: Array, /, p: float = 0.5, training: bool = True, *, seed: int | Array
) -> tuple[Array, DropoutCache]:
    r"""Zero each element with probability ``p`` and scale the others by :math:`1/(1-p)`, as
    ``torch.nn.functional.dropout`` (inverted dropout: the expected output is ``x``).

    .. math::
        y = x \odot m / (1 - p), \qquad m_k = [u_k \ge p],

    with :math:`u_k` uniform on the grid of :math:`2^{-24}`, from the hash of ``(seed, k)``
    (:func:`backprop_xp.functional._random.random_bits`; the comparison is done on the
    integers, so every backend keeps exactly the same elements). An element is dropped with
    probability ``round(p * 2**24) / 2**24``.

    Parameters
    ----------
    x : array, any shape, real floating
    p : float in [0, 1]
        Drop probability. ``p = 1`` zeroes everything (torch's scale 0, so NaN and inf
        inputs give NaN, as ``x * 0``); dropped elements are ``x * 0`` too.
    training : bool
        ``False``: the identity.
    seed : int or 0-d integer array
        Required: the mask is a function of the seed (a Python int, taken modulo
        :math:`2^{64}`, or a 0-d integer array of ``x``'s library and device holding the same
        value, for a compiled step that passes a new seed each call). Use a new seed per
        call, e.g. ``nn.Dropout``'s.

    Returns
    -------
    y : array, shape and dtype of ``x``
        A new array, also for ``training=False`` and ``p = 0``, where it is a copy of ``x``
        (torch returns ``x`` itself there; an op's output here never aliases its input,
        so writing into it cannot change ``x``; ``nn.Dropout`` in eval mode returns ``x``
        itself, as torch's does).
    cache : DropoutCache

    Notes
    -----
    Backward: :math:`\partial L/\partial x = g \odot m / (1 - p)`. The cache keeps the mask
    as a bool array (one byte per element; the seed alone would need no memory but the
    backward would rehash every element, about 25 integer passes, to rebuild it).
    """
    op = "dropout"
    xp, x = op_inputs(op, x=x)
    check_floating(op, "x", x, xp)
    p = real_option(op, "p", p, low=0.0, high=1.0)
    training = bool_option(op, "training", training)
    seed = dropout_seed(op, seed, x)
    like = xp.empty((0,), dtype=x.dtype, device=device(x))
    shape = tuple(x.shape)
    if not training or p == 0.0:
        return xp.asarray(x, copy=True), DropoutCache(None, 1.0, like, shape)
    keep = keep_mask(xp, shape, p, seed, device(x))
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return x * (xp.astype(keep, x.dtype) * scale), DropoutCache(keep, scale, like, shape)


def keep_mask(xp: ModuleType, shape: tuple[int, ...], p: float, seed: Any, dev: Any) -> Array:
    """The bool mask of the elements dropout keeps, each with probability ``1 - p``: the
    generator's bits compared as integers with ``p`` on the grid of :math:`2^{-24}`, so one
    seed gives one mask on every backend (shared with attention's dropout)."""
    return random_bits(xp, shape, seed, dev) >= round(p * 2**BITS)


@backward_op(DropoutCache)
def dropout_backward(dy: Array, cache: DropoutCache, /) -> tuple[Array]:
    keep, scale, like, shape = cache
    xp, dy = cotangent_namespace("dropout_backward", dy, like, shape, like.dtype)
    if keep is None:
        return (xp.asarray(dy, copy=True),)
    # dy * 0 where dropped, as torch's grad * mask * scale (a NaN gradient stays NaN)
    return (dy * (xp.astype(keep, dy.dtype) * scale),)
