"""Shared test helpers: run an op on NumPy and on a backend and compare both passes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from backprop_xp import backend as B
from backprop_xp.testing import assert_close

Array = Any


def tol(dtype: Any) -> dict[str, float]:
    """Cross-backend tolerances of the matrix: float64 1e-12 relative, float32 1e-5 (the
    absolute part scaled by the array's largest value where that exceeds 1, see
    ``_check_one``)."""
    if "64" in str(dtype):
        return {"rtol": 1e-12, "atol": 1e-12}
    return {"rtol": 1e-5, "atol": 1e-6}


def to_np(a: Array) -> np.ndarray:
    return np.asarray(B.to_numpy(a))


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _convert(xp: Any, a: Any, dtype: Any) -> Any:
    if isinstance(a, np.ndarray):
        if np.issubdtype(a.dtype, np.floating):
            return xp.asarray(a, dtype=dtype)
        return xp.asarray(a)
    return a


def compare_with_numpy(
    xp: Any,
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    inputs: Sequence[Any],
    options: dict[str, Any] | None = None,
    grad_out: Any = None,
    dtype: str = "float64",
    rtol: float | None = None,
    atol: float | None = None,
) -> tuple[Any, Any]:
    """Run forward+backward on NumPy and on ``xp`` from the same NumPy inputs; compare.

    Floating NumPy inputs are cast to ``dtype``; ``grad_out`` (NumPy arrays, a tuple of them
    or None entries) likewise. Checks the backend result's library, dtype and device, and its
    values against NumPy's to the matrix tolerance. Returns the backend's (out, grads).
    """
    options = options or {}
    np_dtype = np.dtype(dtype)
    xp_dtype = getattr(xp, dtype)
    t = tol(dtype)
    if rtol is not None:
        t["rtol"] = rtol
    if atol is not None:
        t["atol"] = atol

    np_inputs = [a.astype(np_dtype) if _is_float(a) else a for a in inputs]
    ref_out, ref_cache = forward(*np_inputs, **options)
    got_inputs = [_convert(xp, a, xp_dtype) for a in inputs]
    with lazy_guard(xp):
        out, cache = forward(*got_inputs, **options)

    for o, r in zip(_as_tuple(out), _as_tuple(ref_out), strict=True):
        _check_one(xp, o, r, t, "forward")

    if grad_out is None:
        return out, None
    g_np = tuple(None if g is None else g.astype(np_dtype) for g in _as_tuple(grad_out))
    g_xp = tuple(None if g is None else xp.asarray(g, dtype=xp_dtype) for g in g_np)
    multi = isinstance(grad_out, (tuple, list))
    ref_grads = backward(g_np if multi else g_np[0], ref_cache)
    with lazy_guard(xp):
        grads = backward(g_xp if multi else g_xp[0], cache)
    assert len(grads) == len(ref_grads) >= len(inputs)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert (g is None) == (r is None), f"gradient {i}: None on one backend only"
        if g is not None:
            _check_one(xp, g, r, t, f"gradient {i}")
    return out, grads


def _is_float(a: Any) -> bool:
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)


class ComputedInsideAnOp(AssertionError):
    """A dask graph was computed inside an op (it must stay lazy until the caller asks)."""


def _forbidden_scheduler(*args: Any, **kwargs: Any) -> Any:
    raise ComputedInsideAnOp("a dask array was computed inside an op")


@contextmanager
def lazy_guard(xp: Any) -> Iterator[None]:
    """On the dask backend, any compute inside the block raises :class:`ComputedInsideAnOp`
    (elsewhere it does nothing): ops build graphs, callers compute them."""
    if getattr(xp, "backend_name", "") != "dask":
        yield
        return
    import dask

    with dask.config.set(scheduler=_forbidden_scheduler):
        yield


def expected_library(xp: Any) -> str:
    """The library the arrays of the matrix's backend ``xp`` come from."""
    name = xp.backend_name
    for suffix in ("_readonly", "_cuda", "_meta", "_device"):
        name = name.removesuffix(suffix)
    return name


def check_placement(xp: Any, got: Any, what: str = "result") -> None:
    """``got`` is an array of the backend's library, on its device."""
    lib = B.library_name(got)
    assert lib == expected_library(xp), f"{what}: came back as a {lib} array"
    if xp.device is not None:
        dev = B.device(got)
        assert dev == xp.device or str(dev).startswith(str(xp.device)), f"{what}: on {dev}"


def _check_one(xp: Any, got: Any, ref: Any, t: dict[str, float], what: str) -> None:
    check_placement(xp, got, what)
    if getattr(xp, "shape_only", False):  # no values to compare: shape and dtype only
        assert tuple(got.shape) == tuple(ref.shape), f"{what}: shape {tuple(got.shape)}"
        assert str(got.dtype).rpartition(".")[2] == str(ref.dtype), f"{what}: dtype {got.dtype}"
        return
    t = dict(t)
    r = np.abs(np.asarray(B.to_numpy(ref), dtype=np.float64))
    if r.size and np.isfinite(r).any():
        # an element that is a sum with cancellation (a weight gradient: many positions) is
        # only as exact as the sum's largest terms: atol is relative to the array's largest
        # value where that exceeds 1 (float32: 1e-6 of it, about 8 ulps)
        t["atol"] = t["atol"] * max(1.0, float(r[np.isfinite(r)].max()))
    assert_close(got, ref, check_namespace=False, msg=what, **t)
