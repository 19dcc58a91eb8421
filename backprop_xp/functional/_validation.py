"""Argument checks shared by the ops. Every message names the op, the argument, what was
expected and what came."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ..backend import get_namespace

Array = Any


def shape_error(op: str, name: str, expected: str, got: object) -> ValueError:
    return ValueError(f"{op}: argument '{name}' expected {expected}, got {got}")


def check_floating(op: str, name: str, x: Array, xp: ModuleType) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{op}: argument '{name}' expected a real floating-point array, got dtype {x.dtype}"
        )


def check_integer(op: str, name: str, x: Array, xp: ModuleType) -> None:
    if not xp.isdtype(x.dtype, "integral"):
        raise TypeError(f"{op}: argument '{name}' expected an integer array, got dtype {x.dtype}")


def check_same_dtype(op: str, name: str, x: Array, like_name: str, like: Array) -> None:
    """Mixed float dtypes would silently promote (float32 + float64 -> float64): refuse."""
    if x.dtype != like.dtype:
        raise TypeError(
            f"{op}: argument '{name}' expected dtype {like.dtype} (that of '{like_name}'), "
            f"got {x.dtype}"
        )


def check_is_array(op: str, name: str, g: Any) -> None:
    if not (hasattr(g, "shape") and hasattr(g, "dtype")):
        raise TypeError(f"{op}: argument '{name}' expected an array, got {type(g).__name__}")


def check_cotangent(op: str, name: str, g: Any, shape: tuple[int, ...], dtype: Any = None) -> Array:
    """A backward's incoming gradient: an array of the forward output's shape, returned in
    the output's dtype.

    A wrong shape is refused (NumPy would broadcast it silently). A gradient of another dtype
    is cast to the output's, as torch's ``backward`` casts the gradient it is given: a
    float64 ``dy`` (or a Python-default ``ones``) for a float32 forward gives float32
    gradients, not float64 ones.
    """
    check_is_array(op, name, g)
    if tuple(g.shape) != tuple(shape):
        raise shape_error(
            op, name, f"shape {tuple(shape)} (the forward output's)", f"shape {tuple(g.shape)}"
        )
    if dtype is not None and g.dtype != dtype:
        g = get_namespace(g).astype(g, dtype)
    return g


def cotangent_namespace(
    op: str, g: Any, ref: Array, shape: tuple[int, ...], dtype: Any, name: str = "dy"
) -> tuple[ModuleType, Array]:
    """The namespace of a backward's incoming gradient ``g`` and its cache array ``ref``,
    and ``g`` after :func:`check_cotangent`."""
    check_is_array(op, name, g)  # before get_namespace, whose message would not say it
    xp = get_namespace(g, ref, op=op, names=(name, "cache"))
    return xp, check_cotangent(op, name, g, shape, dtype)


def check_ndim(op: str, name: str, x: Array, ndim: int | Sequence[int], layout: str = "") -> None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
        dims = " or ".join(f"{d}-d" for d in allowed)
        what = f"a {dims} array" + (f" {layout}" if layout else "")
        raise shape_error(op, name, what, f"shape {tuple(x.shape)}")


def check_shape(op: str, name: str, x: Array, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise shape_error(op, name, f"shape {tuple(shape)}", f"shape {tuple(x.shape)}")


def normalize_axis(op: str, axis: int, ndim: int, name: str = "axis") -> int:
    """``axis`` in ``[0, ndim)``; a 0-d array takes ``0`` or ``-1``, as in torch. ``name`` is
    the argument's name as the caller wrote it (``"dim"`` for torch's spelling)."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{op}: argument '{name}' expected an int, got {axis!r}")
    n = max(ndim, 1)
    if not -n <= axis < n:
        raise shape_error(op, name, f"an axis in [{-n}, {n})", axis)
    return int(axis) % n


def torch_alias(op: str, name: str, value: Any, default: Any, alias: str, given: Any) -> Any:
    """``given`` when the caller used torch's keyword ``alias`` (``dim=`` for ``axis=``), else
    ``value``; both at once is a TypeError."""
    if given is None:
        return value
    if value != default:
        raise TypeError(f"{op}: got both '{name}' and torch's name for it, '{alias}'")
    return given


def check_choice(op: str, name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{op}: argument '{name}' expected one of {list(choices)}, got {value!r}")


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target``."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))
