"""The rules every op keeps, one helper each. Every message names the op, the argument,
what was expected and what came.

- :func:`op_inputs`: an op's array arguments — arrays (not None, lists or Python scalars)
  of one library and device, in native byte order — and their namespace.
- :func:`real_option`, :func:`int_option`, :func:`bool_option`: scalar options, normalized
  to Python numbers (a NumPy ``float64`` scalar would promote float32 arrays to float64
  under NumPy 2; a Python float never does) and validated.
- :func:`forward_op` and :func:`backward_op`: decorators of the public functions. The
  backward checks its cache's type; both return 0-d arrays, never NumPy scalars.
- :func:`cotangent_namespace` / :func:`check_cotangent`: a backward's incoming gradient;
  :func:`tuple_cotangents` for ops with several outputs (a tuple, ``None`` allowed).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Collection, Sequence
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

from array_api_compat import is_lazy_array

from .._config import index_checks_enabled
from ..backend import device, get_namespace

Array = Any
P = ParamSpec("P")
R = TypeVar("R")


def describe(value: object) -> str:
    """``value`` for an error message: its type, and its repr where that is short."""
    if value is None:
        return "None"
    text = repr(value)
    kind = type(value).__name__
    if len(text) > 60 or hasattr(value, "shape"):
        shape = getattr(value, "shape", None)
        return kind if shape is None else f"{kind} of shape {tuple(shape)}"
    return f"{kind} {text}"


# --------------------------------------------------------------------------- array arguments


def _is_array(a: object) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, numbers.Number)


def op_inputs(op: str, /, optional: Collection[str] = (), **arrays: Any) -> tuple[Any, ...]:
    """``(xp, *arrays)``: the namespace of an op's array arguments, and the arguments.

    Every argument not named in ``optional`` must be an array, and an optional one an array
    or None: None, a list or a Python scalar is a TypeError naming the argument. All must
    come from one library and one device (:func:`backprop_xp.backend.get_namespace`).
    NumPy arrays in non-native byte order (``>f4`` on a little-endian machine) come back
    converted to native order, one copy, so that they compute and compare as the dtype they
    hold (their own would fail every ``dtype ==`` check).
    """
    names = list(arrays)
    for name, a in arrays.items():
        if a is None and name in optional:
            continue
        if not _is_array(a):
            raise TypeError(f"{op}: argument '{name}' expected an array, got {describe(a)}")
    xp = get_namespace(*arrays.values(), op=op, names=names)
    out = []
    for a in arrays.values():
        order = getattr(getattr(a, "dtype", None), "byteorder", "=")
        if order not in ("=", "|"):
            a = xp.astype(a, a.dtype.newbyteorder("="))
        out.append(a)
    return (xp, *out)


def value_checks(*arrays: Any) -> bool:
    """Whether an op runs its checks of array *values* (class indices in range, ``lengths``
    in ``[0, T]``): one host synchronization each, so they are skipped where
    :func:`backprop_xp.index_checks` is off and for lazy arrays (array-api-compat's
    ``is_lazy_array``: JAX, where a value under ``jit`` does not exist yet; dask, where
    reading one would compute the graph; ndonnx). Out-of-range values then give undefined
    results, as with the checks off."""
    if not index_checks_enabled():
        return False
    return not any(a is not None and is_lazy_array(a) for a in arrays)


# ----------------------------------------------------------------------------- scalar options


def _real(value: object) -> float | None:
    """``value`` as a Python float when it is a real number, else None."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, numbers.Real):  # int, float, NumPy's integer and floating scalars
        try:
            return float(value)
        except OverflowError:  # an int past float's range
            return math.copysign(math.inf, value)
    if _is_array(value) and tuple(value.shape) == ():  # type: ignore[attr-defined]
        try:
            xp = get_namespace(value)
            ok = xp.isdtype(value.dtype, ("real floating", "integral"))  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            return None
        return float(value) if ok else None  # type: ignore[arg-type]
    return None


def real_option(
    op: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real scalar option as a Python float.

    Accepted: Python ints and floats, NumPy integer and floating scalars, and 0-d real
    arrays (as torch takes a 0-d tensor for a scalar; read to the host once, which on a GPU
    is a synchronization). Refused with a TypeError: None, strings, bools, complex numbers,
    anything else. ``low``/``high`` bound it (closed unless ``*_open``); NaN fails any bound,
    and passes where there is none, as in torch.
    """
    v = _real(value)
    if v is None:
        raise TypeError(f"{op}: argument '{name}' expected a real number, got {describe(value)}")
    below = low is not None and not (v > low if low_open else v >= low)
    above = high is not None and not (v < high if high_open else v <= high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is None:
            want = f"a value {'<' if high_open else '<='} {high:g}"
        elif high is None:
            want = f"a value {'>' if low_open else '>='} {low:g}"
        else:
            want = f"a value in {lo}, {hi}"
        raise ValueError(f"{op}: argument '{name}' expected {want}, got {value!r}")
    return v


def int_option(op: str, name: str, value: object, *, low: int | None = None) -> int:
    """An integer option as a Python int (Python or NumPy integers; not bools, floats or
    strings), at least ``low`` where given."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        raise TypeError(f"{op}: argument '{name}' expected an int, got {describe(value)}")
    try:
        v = int(value.__index__())  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        raise TypeError(f"{op}: argument '{name}' expected an int, got {describe(value)}") from None
    if low is not None and v < low:
        want = {0: "a non-negative int", 1: "a positive int"}.get(low, f"an int >= {low}")
        raise ValueError(f"{op}: argument '{name}' expected {want}, got {v}")
    return v


def bool_option(op: str, name: str, value: object) -> bool:
    """A flag: ``True``/``False`` (or NumPy's bool). Anything else is a TypeError: the
    string ``"False"`` is not false, and 0/1 are not flags."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        return bool(value)
    raise TypeError(f"{op}: argument '{name}' expected a bool, got {describe(value)}")


# ------------------------------------------------------------------------ the public functions


def _arrays_not_scalars(value: Any) -> Any:
    """``value`` with NumPy scalars (what NumPy's ufuncs return for 0-d input) replaced by
    0-d arrays, inside tuples too."""
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_arrays_not_scalars(v) for v in value)
    if isinstance(value, numbers.Number) and hasattr(value, "dtype"):
        return get_namespace(value).asarray(value)
    return value


def forward_op(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator of an op's forward ``(out, cache)``: ``out`` holds arrays, never NumPy
    scalars (a 0-d input gives a 0-d array)."""

    @functools.wraps(fn)
    def op(*args: P.args, **kwargs: P.kwargs) -> R:
        result: Any = fn(*args, **kwargs)
        out, cache = result
        return (_arrays_not_scalars(out), cache)  # type: ignore[return-value]

    return op


def backward_op(*cache_types: type) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator of an op's backward ``(grad, cache, /, ...)``.

    The cache must be one of ``cache_types`` (the forward's): another op's cache, None, a
    tuple or a dict is a TypeError naming the op and what came, before anything is read
    from it. The gradients come back as arrays, never NumPy scalars.
    """
    expected = " or ".join(t.__name__ for t in cache_types)

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        name = fn.__name__

        @functools.wraps(fn)
        def backward(*args: P.args, **kwargs: P.kwargs) -> R:
            cache = args[1] if len(args) > 1 else kwargs.get("cache")
            if not isinstance(cache, cache_types):
                got = "None" if cache is None else type(cache).__name__
                raise TypeError(f"{name}: argument 'cache' expected a {expected}, got {got}")
            grads: Any = _arrays_not_scalars(fn(*args, **kwargs))
            return grads

        return backward

    return wrap


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
    if not _is_array(g):
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
    and ``g`` after :func:`check_cotangent`.

    The gradient of a 0-d output (a loss) may be a Python or NumPy real number, as people
    type it: ``F.cross_entropy_backward(1.0, cache)``; it is built on ``ref``'s device in
    the output's dtype.
    """
    if tuple(shape) == () and isinstance(g, numbers.Real) and not isinstance(g, bool):
        xp = get_namespace(ref)
        return xp, xp.full((), float(g), dtype=dtype or ref.dtype, device=device(ref))
    check_is_array(op, name, g)  # before get_namespace, whose message would not say it
    xp = get_namespace(g, ref, op=op, names=(name, "cache"))
    return xp, check_cotangent(op, name, g, shape, dtype)


def tuple_cotangents(
    op: str,
    grad: Any,
    names: tuple[str, ...],
    shapes: tuple[tuple[int, ...], ...],
    ref: Array,
) -> tuple[ModuleType, tuple[Array | None, ...]]:
    """The backward of an op with several outputs takes a tuple of cotangents, one per output
    (``None`` for an output without a gradient): each checked as :func:`check_cotangent`
    against its output's shape and the dtype of the cache array ``ref``. Returns the
    namespace and the cotangents."""
    n = len(names)
    if not isinstance(grad, (tuple, list)) or len(grad) != n:
        raise ValueError(
            f"{op}: argument 'grad' expected a tuple of {n} cotangents ({', '.join(names)}; "
            f"None allowed), got {type(grad).__name__}"
            + (f" of length {len(grad)}" if isinstance(grad, (tuple, list)) else "")
        )
    for name, g in zip(names, grad, strict=True):
        if g is not None:
            check_is_array(op, name, g)
    xp = get_namespace(*grad, ref, op=op, names=(*names, "cache"))
    return xp, tuple(
        None if g is None else check_cotangent(op, name, g, shape, ref.dtype)
        for name, g, shape in zip(names, grad, shapes, strict=True)
    )


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


def check_choice(op: str, name: str, value: object, choices: Sequence[str]) -> None:
    """``value`` is one of the strings ``choices`` (an array or a number never is)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op}: argument '{name}' expected one of {list(choices)}, got {value!r}")


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target``."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1], strict=False))
