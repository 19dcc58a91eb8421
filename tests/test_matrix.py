"""Every op of the table (tests/op_table.py), forward and backward, on every backend of the
matrix (the jax, dask, ndonnx and torch_meta ones too) against NumPy: the library, dtype
and device of every output and gradient, and their values where the backend holds any.
On dask nothing may be computed inside an op."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import check_placement, compare_with_numpy
from op_table import OPS, call, run

from backprop_xp import functional as F

pytestmark = pytest.mark.matrix


def _grad_like(rng: np.random.Generator, name: str, out: Any) -> Any:
    """A random cotangent for the NumPy output ``out`` (None for outputs without one)."""
    if isinstance(out, tuple):
        gs = [rng.standard_normal(o.shape) for o in out]
        if not OPS[name].tuple_out:  # batch norm's statistics carry no gradient
            gs = [gs[0]] + [None] * (len(gs) - 1)
        return tuple(gs)
    return rng.standard_normal(out.shape)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", list(OPS))
def test_every_op_matches_numpy(xp, rng, op, dtype):
    built = OPS[op].build(rng)
    slots = [i for i, a in enumerate(built) if isinstance(a, np.ndarray)]

    def forward(*arrays: Any) -> Any:  # the arrays only; a kernel size stays where it was
        args = list(built)
        for i, a in zip(slots, arrays, strict=True):
            args[i] = a
        return call(op, args)

    arrays = [built[i] for i in slots]
    ref, _ = forward(*[a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays])
    compare_with_numpy(
        xp,
        forward,
        getattr(F, op + "_backward"),
        arrays,
        grad_out=_grad_like(rng, op, ref),
        dtype=dtype,
    )


def _arrays_in(value: Any) -> list[Any]:
    """Every array in a cache (its fields, and tuples of them)."""
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays_in(v)]
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.generic):
        return [value]
    return []


@pytest.mark.parametrize("op", list(OPS))
def test_every_cache_array_stays_with_the_inputs(xp, rng, op):
    """The cache holds arrays of the inputs' library on their device only (on a second
    array-api-strict device, a GPU, a meta device): nothing was made on a default device
    or on the host."""
    _, cache = run(xp, op, rng)
    arrays = _arrays_in(tuple(cache))
    assert arrays, f"{op}: a cache without arrays cannot be checked"
    for i, a in enumerate(arrays):
        check_placement(xp, a, f"{op} cache array {i}")
