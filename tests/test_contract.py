"""The rules every op keeps, checked over every op of the table (tests/op_table.py): scalar
options never change dtypes and refuse what is not a number of their kind; a backward
refuses a cache it does not own; array arguments are arrays; 0-d results are arrays;
big-endian NumPy input just works."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pytest
from helpers import to_np
from op_table import OPS, call, inputs, ones_cotangent, public_ops, run

from backprop_xp import functional as F
from backprop_xp.testing import assert_close

pytestmark = pytest.mark.matrix

OPTIONS = [(op, name) for op, case in OPS.items() for name in case.options]
REAL_OR_INT = [(op, name) for op, name in OPTIONS if OPS[op].options[name].kind in ("real", "int")]
ARRAYS = [(op, name) for op, case in OPS.items() for name in case.arrays]


def _backward(name: str) -> Any:
    return getattr(F, name + "_backward")


def _flat(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, tuple) else (out,)


def test_every_public_op_is_in_the_table():
    assert public_ops() == set(OPS), "add the new op to tests/op_table.py"


@pytest.mark.parametrize(("op", "option"), REAL_OR_INT)
def test_numpy_scalar_options_never_change_the_dtype(xp, rng, op, option):
    """Under NumPy 2 an ``np.float64`` scalar times a float32 array is float64; an option
    given as a NumPy scalar (or a 0-d array) must give what the Python number gives."""
    opt = OPS[op].options[option]
    args = inputs(xp, op, rng, "float32")
    kind = np.float64 if opt.kind == "real" else np.int64
    want, _ = call(op, args, **{option: opt.value})
    given = [kind(opt.value)]
    if opt.kind == "real" and not getattr(xp, "shape_only", False):  # (a meta one has no value)
        given.append(xp.asarray(opt.value, dtype=xp.float64))  # a 0-d array, as torch takes
    for value in given:
        got, cache_g = call(op, args, **{option: value})
        for g, w in zip(_flat(got), _flat(want), strict=True):
            assert g.dtype == xp.float32, f"{op}({option}={value!r}) gave {g.dtype}"
            if not getattr(xp, "shape_only", False):
                assert_close(g, w, rtol=0, atol=0)
        grads = _backward(op)(ones_cotangent(xp, op, got), cache_g)
        for g in grads:
            if g is not None and xp.isdtype(g.dtype, "real floating"):
                assert g.dtype == xp.float32


BAD = {
    "real": [None, "0.5", 1j, True, [0.5], object()],
    "int": [None, "1", 1.5, True, np.float64(2.0)],
    "bool": [None, "False", 1, 0.0, [True]],
}


@pytest.mark.parametrize(("op", "option"), OPTIONS)
def test_scalar_options_refuse_what_is_not_a_number_of_their_kind(xp, rng, op, option):
    kind = OPS[op].options[option].kind
    args = inputs(xp, op, rng)
    if kind == "choice":
        for bad in (None, 1, "NONE", ["sum"]):
            with pytest.raises(ValueError, match=rf"^{op}: argument '{option}' expected one of"):
                call(op, args, **{option: bad})
        return
    for bad in BAD[kind]:
        if bad in OPS[op].options[option].valid:
            continue
        with pytest.raises(TypeError, match=rf"^{op}: argument '{option}' expected"):
            call(op, args, **{option: bad})


def _foreign_cache(op: str, rng: np.random.Generator) -> Any:
    """The cache of another op whose cache type differs."""
    own = type(run(np, op, rng)[1])
    for other in OPS:
        cache = run(np, other, rng)[1]
        if type(cache) is not own:
            return cache
    raise AssertionError("no other cache type")


@pytest.mark.parametrize("op", list(OPS))
def test_backward_refuses_a_cache_it_does_not_own(rng, op):
    out, cache = run(np, op, rng)
    g = ones_cotangent(np, op, out)
    expected = type(cache).__name__
    for bad in (None, (), {}, _foreign_cache(op, rng), tuple(cache)):
        got = "None" if bad is None else type(bad).__name__
        msg = rf"^{op}_backward: argument 'cache' expected a {expected}, got {got}$"
        with pytest.raises(TypeError, match=msg):
            _backward(op)(g, bad)


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool", "conv"])
def test_a_cache_of_another_dimensionality_is_refused(rng, kind):
    """1-, 2- and 3-d pooling (and convolution) share their cache type."""
    out, cache = run(np, f"{kind}1d", rng)
    with pytest.raises(TypeError, match=rf"^{kind}2d_backward: argument 'cache' expected the"):
        _backward(f"{kind}2d")(np.ones(out.shape), cache)


@pytest.mark.parametrize(("op", "arg"), ARRAYS)
def test_array_arguments_must_be_arrays(xp, rng, op, arg):
    case = OPS[op]
    args = inputs(xp, op, rng)
    i = case.arrays.index(arg)
    bads: list[Any] = [1.5, [1.0, 2.0], "x"]
    if arg not in case.optional:
        bads.append(None)
    for bad in bads:
        given = list(args)
        given[i] = bad
        with pytest.raises(TypeError, match=rf"^{op}: argument '{arg}' expected an array"):
            call(op, given)


ELEMENTWISE = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "softmax"]
ELEMENTWISE += ["gelu", "silu", "mish", "hardtanh", "logsigmoid", "softsign"]


def _is_0d_array(a: Any) -> bool:
    return hasattr(a, "shape") and a.shape == () and not isinstance(a, numbers.Number)


@pytest.mark.parametrize("op", [*ELEMENTWISE, "log_softmax"])
def test_0d_input_gives_0d_arrays(xp, op):
    x = xp.asarray(0.3, dtype=xp.float64)
    y, cache = getattr(F, op)(x)
    assert _is_0d_array(y), type(y)
    (dx,) = _backward(op)(xp.asarray(1.0, dtype=xp.float64), cache)
    assert _is_0d_array(dx), type(dx)


@pytest.mark.parametrize("op", ["mse_loss", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_0d_losses_and_their_gradients_are_arrays(xp, op, reduction):
    x, t = xp.asarray(0.3, dtype=xp.float64), xp.asarray(0.6, dtype=xp.float64)
    loss, cache = getattr(F, op)(x, t, reduction=reduction)
    assert _is_0d_array(loss)
    for g in _backward(op)(1.0, cache):
        assert g is None or _is_0d_array(g), type(g)


@pytest.mark.parametrize("op", list(OPS))
def test_big_endian_input_just_works(rng, op):
    seed = int(rng.integers(2**32))
    native = inputs(np, op, np.random.default_rng(seed))
    swapped = [
        a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder in "=<" else "<"))
        if isinstance(a, np.ndarray) and a.dtype.itemsize > 1
        else a
        for a in native
    ]
    assert any(isinstance(a, np.ndarray) and a.dtype.byteorder not in "=|" for a in swapped)
    want, cache_w = call(op, native)
    got, cache_g = call(op, swapped)
    for g, w in zip(_flat(got), _flat(want), strict=True):
        np.testing.assert_array_equal(to_np(g), to_np(w))
        assert g.dtype == w.dtype
    gw = _backward(op)(ones_cotangent(np, op, want), cache_w)
    gg = _backward(op)(ones_cotangent(np, op, got), cache_g)
    for a, b in zip(gg, gw, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
