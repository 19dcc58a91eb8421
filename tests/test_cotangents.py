"""Every backward checks its incoming gradient: the forward output's shape (a wrong one is an
error naming the op and the argument, never a silent broadcast), an array, and the output's
dtype (another dtype is cast, as torch's ``backward`` casts, so gradients keep the inputs'
dtype)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import to_np

from backprop_xp import functional as F
from backprop_xp.testing import assert_close

Array = Any


def _f(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# name -> (cotangent names, build inputs from rng (NumPy, float), forward(xp, *arrays))
CASES: dict[str, tuple[tuple[str, ...], Callable[..., list], Callable[..., Any]]] = {
    "softmax": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.softmax(x)),
    "log_softmax": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.log_softmax(x, axis=0)),
    "sigmoid": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.sigmoid(x)),
    "tanh": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.tanh(x)),
    "relu": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.relu(x)),
    "leaky_relu": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.leaky_relu(x)),
    "elu": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.elu(x)),
    "softplus": (("dy",), lambda r: [_f(r, 3, 4)], lambda x: F.softplus(x)),
    "sigmoid_as_softmax_logits": (
        ("dlogits",),
        lambda r: [_f(r, 3)],
        lambda z: F.sigmoid_as_softmax_logits(z),
    ),
    "linear": (
        ("dy",),
        lambda r: [_f(r, 2, 3, 4), _f(r, 5, 4), _f(r, 5)],
        lambda x, w, b: F.linear(x, w, b),
    ),
    "cross_entropy": (
        ("dloss",),
        lambda r: [_f(r, 3, 4), np.array([0, 3, 1])],
        lambda x, t: F.cross_entropy(x, t),
    ),
    "cross_entropy_none": (
        ("dloss",),
        lambda r: [_f(r, 3, 4), np.array([0, 3, 1])],
        lambda x, t: F.cross_entropy(x, t, reduction="none"),
    ),
    "binary_cross_entropy_with_logits": (
        ("dloss",),
        lambda r: [_f(r, 3, 4), r.uniform(size=(3, 4))],
        lambda x, t: F.binary_cross_entropy_with_logits(x, t),
    ),
    "mse_loss": (
        ("dloss",),
        lambda r: [_f(r, 3, 4), _f(r, 3, 4)],
        lambda x, t: F.mse_loss(x, t, reduction="none"),
    ),
    "conv2d": (
        ("dy",),
        lambda r: [_f(r, 2, 3, 5, 5), _f(r, 4, 3, 3, 3), _f(r, 4)],
        lambda x, w, b: F.conv2d(x, w, b, padding=1),
    ),
    "max_pool2d": (("dy",), lambda r: [_f(r, 2, 3, 4, 4)], lambda x: F.max_pool2d(x, 2)),
    "avg_pool1d": (("dy",), lambda r: [_f(r, 3, 6)], lambda x: F.avg_pool1d(x, 3, 2)),
    "global_avg_pool": (("dy",), lambda r: [_f(r, 2, 3, 4, 4)], lambda x: F.global_avg_pool(x)),
    "flatten": (("dy",), lambda r: [_f(r, 2, 3, 4)], lambda x: F.flatten(x)),
    "rnn": (
        ("d_output", "d_h_n"),
        lambda r: [_f(r, 4, 2, 3), _f(r, 2, 5), _f(r, 5, 3), _f(r, 5, 5)],
        lambda *a: F.rnn(*a),
    ),
    "lstm": (
        ("d_output", "d_h_n", "d_c_n"),
        lambda r: [_f(r, 4, 2, 3), _f(r, 2, 5), _f(r, 2, 5), _f(r, 20, 3), _f(r, 20, 5)],
        lambda *a: F.lstm(*a),
    ),
    "gru": (
        ("d_output", "d_h_n"),
        lambda r: [_f(r, 4, 2, 3), _f(r, 2, 5), _f(r, 15, 3), _f(r, 15, 5)],
        lambda *a: F.gru(*a),
    ),
}


def _run(xp: Any, rng: np.random.Generator, case: str) -> tuple[Any, Any, Callable, tuple]:
    names, build, forward = CASES[case]
    arrays = [
        xp.asarray(a, dtype=xp.float32) if a.dtype.kind == "f" else xp.asarray(a)
        for a in build(rng)
    ]
    out, cache = forward(*arrays)
    op = case.removesuffix("_none")
    backward = getattr(F, op + "_backward")
    outs = out if isinstance(out, tuple) else (out,)
    return outs, cache, backward, names


def _call(backward: Callable, cotangents: list, cache: Any) -> tuple:
    if len(cotangents) > 1:  # recurrent: one tuple of cotangents
        return backward(tuple(cotangents), cache)
    return backward(cotangents[0], cache)


@pytest.mark.parametrize("case", list(CASES))
def test_float64_cotangent_gives_gradients_of_the_inputs_dtype(xp, rng, case):
    outs, cache, backward, _ = _run(xp, rng, case)
    ones = [np.ones(tuple(o.shape)) for o in outs]
    g32 = _call(backward, [xp.asarray(a, dtype=xp.float32) for a in ones], cache)
    g64 = _call(backward, [xp.asarray(a, dtype=xp.float64) for a in ones], cache)
    for a, b in zip(g64, g32, strict=True):
        if a is None:
            continue
        if xp.isdtype(b.dtype, "real floating"):
            assert a.dtype == xp.float32
        assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_cotangent_of_a_wrong_shape_is_an_error(xp, rng, case):
    outs, cache, backward, names = _run(xp, rng, case)
    op = case.removesuffix("_none") + "_backward"
    for k, name in enumerate(names):
        cot = [xp.ones_like(o) for o in outs]
        cot[k] = xp.asarray(np.ones((2, *outs[k].shape)), dtype=xp.float32)  # would broadcast
        with pytest.raises(ValueError, match=rf"{op}: argument '{name}' expected shape"):
            _call(backward, cot, cache)


@pytest.mark.parametrize(
    "case",
    [
        "softmax",
        "linear",
        "cross_entropy_none",
        "conv2d",
        "max_pool2d",
        "flatten",
        "global_avg_pool",
        "sigmoid_as_softmax_logits",
    ],
)
def test_cotangent_must_be_an_array(xp, rng, case):
    outs, cache, backward, names = _run(xp, rng, case)
    with pytest.raises(TypeError, match=rf"argument '{names[0]}' expected an array, got float"):
        backward(1.0, cache)
    listed = np.ones(tuple(outs[0].shape)).tolist()
    with pytest.raises(TypeError, match=rf"'{names[0]}' expected an array, got list"):
        backward(listed, cache)


@pytest.mark.parametrize("case", ["cross_entropy", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("number", [1.0, 1, np.float64(1.0), np.float32(1.0)])
def test_gradient_of_a_0d_loss_may_be_a_number(xp, rng, case, number):
    """``F.cross_entropy_backward(1.0, cache)`` is what people type: a real number for a 0-d
    output gives the same gradients, in the output's library, dtype and device."""
    outs, cache, backward, _ = _run(xp, rng, case)
    assert outs[0].shape == ()
    got = backward(number, cache)
    want = backward(xp.ones_like(outs[0]), cache)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            assert_close(g, w, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"expected an array, got bool"):
        backward(True, cache)


def test_python_default_float_loss_gradient_on_torch():
    """torch's asarray(1.0) is float32: a float64 loss still takes it, as in torch."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(np.random.default_rng(0).standard_normal((3, 4)))
    loss, cache = F.cross_entropy(x, torch.tensor([0, 1, 2]))
    (dx, *_) = F.cross_entropy_backward(torch.asarray(1.0), cache)
    assert dx.dtype == torch.float64
    np.testing.assert_allclose(
        to_np(dx), to_np(F.cross_entropy_backward(torch.ones_like(loss), cache)[0])
    )


@pytest.mark.parametrize("case", list(CASES))
def test_cotangent_from_another_library_is_named(rng, case):
    """A torch gradient for a NumPy forward: one error naming both libraries, never a cast to
    the other library's dtype or a silent mix."""
    torch = pytest.importorskip("torch")
    from backprop_xp import backend as B

    outs, cache, backward, _ = _run(B.namespace("numpy"), rng, case)
    cot = [torch.ones(tuple(o.shape), dtype=torch.float32) for o in outs]
    with pytest.raises(TypeError, match=r"different libraries: '\w+' is a torch array"):
        _call(backward, cot, cache)
