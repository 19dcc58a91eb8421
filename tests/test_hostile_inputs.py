"""Property test over every op of the table: any mix of valid and hostile array arguments
and options either works (and then so does the backward) or fails with the op's own
TypeError or ValueError naming it — never an AttributeError, IndexError, MemoryError, a
NumPy UFuncTypeError or a torch RuntimeError from inside the library (a MemoryError only
with the op's message, for a huge size that is addressable but refused)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_table import OPS, call, inputs, ones_cotangent

from backprop_xp import functional as F

# Derandomized, so that CI sees the same cases every run; BACKPROP_XP_HOSTILE_EXAMPLES=500
# explores further.
SETTINGS = settings(
    max_examples=int(os.environ.get("BACKPROP_XP_HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize="BACKPROP_XP_HOSTILE_EXAMPLES" not in os.environ,
    database=None,
)

HOSTILE_VALUES = [
    None,
    1.5,
    -1,
    0,
    True,
    "x",
    1j,
    float("nan"),
    float("inf"),
    10**12,
    -(10**12),
    2**64,
    (1, 2, 3, 4),
    (),
    [2],
    np.float64(2.0),
    np.int64(3),
    np.bool_(True),
    object(),
]


def _hostile_arrays(valid: np.ndarray) -> list[Any]:
    shape = valid.shape
    return [
        valid.astype(np.int64),
        valid.astype(np.bool_),
        valid.astype(np.complex128),
        valid.astype(np.float16),
        valid.astype(np.uint8),
        valid.reshape(-1),
        valid[None, ...],
        np.zeros((0, *shape[1:])),
        np.zeros((*shape[:-1], 0)),
        np.zeros(()),
        np.full(shape, np.nan),
        np.full(shape, -np.inf),
        valid.astype(valid.dtype.newbyteorder(">")),
        np.asarray(valid, dtype=object),
        valid.tolist(),
    ]


def _ok_error(op: str, e: BaseException) -> bool:
    """The op's own error: a TypeError or ValueError, or a MemoryError for a size that is
    addressable but was refused (the op's message names the argument and the bytes)."""
    return type(e) in (TypeError, ValueError, MemoryError) and str(e).startswith(f"{op}:")


@pytest.mark.parametrize("op", list(OPS))
def test_hostile_inputs_give_the_ops_own_errors(op):
    case = OPS[op]

    @SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        args = inputs(np, op, rng)
        n_arrays = sum(isinstance(a, np.ndarray) for a in args)
        array_slots = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
        assert len(array_slots) == n_arrays
        for i in data.draw(st.sets(st.sampled_from(range(len(args))), max_size=2)):
            a = args[i]
            pool = (
                _hostile_arrays(a) + HOSTILE_VALUES if isinstance(a, np.ndarray) else HOSTILE_VALUES
            )
            args[i] = data.draw(st.sampled_from(pool))
        options: dict[str, Any] = {}
        for name in data.draw(st.sets(st.sampled_from(sorted(case.options) or ["-"]), max_size=2)):
            if name in case.options:
                options[name] = data.draw(
                    st.sampled_from([case.options[name].value, *HOSTILE_VALUES])
                )
        try:
            out, cache = call(op, args, **options)
        except Exception as e:
            assert _ok_error(op, e), (
                f"{op}{tuple(map(type, args))} {options}: {type(e).__name__}: {e}"
            )
            return
        try:
            g = ones_cotangent(np, op, out)
        except Exception:  # an output that is not an array means the forward was wrong
            raise
        getattr(F, op + "_backward")(g, cache)

    with np.errstate(all="ignore"):
        check()
