"""softmax, log_softmax, sigmoid_as_softmax_logits."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp.testing import assert_close, gradcheck


def ref_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_forward_matches_reference(xp, dtype, rng, axis):
    x = rng.standard_normal((3, 5, 4))
    y, _ = F.softmax(xp.asarray(x, dtype=dtype), axis=axis)
    assert y.dtype == dtype
    np.testing.assert_allclose(to_np(y), ref_softmax(x, axis), rtol=1e-5, atol=1e-6)
    lp, _ = F.log_softmax(xp.asarray(x, dtype=dtype), axis=axis)
    np.testing.assert_allclose(to_np(lp), np.log(ref_softmax(x, axis)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_gradcheck(xp, rng, op, axis):
    gradcheck(op, [xp.asarray(rng.standard_normal((4, 3)))], {"axis": axis})


@pytest.mark.parametrize(
    ("op", "backward"),
    [(F.softmax, F.softmax_backward), (F.log_softmax, F.log_softmax_backward)],
)
def test_softmax_matches_numpy(xp, dtype, rng, op, backward):
    name = "float64" if "64" in str(dtype) else "float32"
    x = rng.standard_normal((6, 7))
    compare_with_numpy(xp, op, backward, [x], {"axis": 1}, rng.standard_normal((6, 7)), name)


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
def test_softmax_large_logits_are_finite(xp, dtype, op):
    x = xp.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    y, cache = op(x)
    (dx,) = getattr(F, op.__name__ + "_backward")(xp.ones_like(y), cache)
    assert np.isfinite(to_np(y)).all() and np.isfinite(to_np(dx)).all()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's NaN warning
@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
def test_softmax_nan_and_all_neg_inf_rows_give_nan(xp, op):
    x = xp.asarray([[-np.inf, -np.inf], [np.nan, 0.0], [0.0, 1.0]])
    y, _ = op(x)
    y = to_np(y)
    assert np.isnan(y[:2]).all()
    assert np.isfinite(y[2]).all()


def test_softmax_rejects_integer_input(xp):
    with pytest.raises(TypeError, match=r"softmax: argument 'x' expected a real floating"):
        F.softmax(xp.asarray([1, 2, 3]))


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
def test_softmax_rejects_bad_axis(xp, op):
    name = op.__name__
    with pytest.raises(ValueError, match=rf"{name}: argument 'axis' expected an axis in"):
        op(xp.asarray([[1.0, 2.0]]), axis=2)
    for axis in (None, (0, 1), 0.0):
        with pytest.raises(TypeError, match=rf"{name}: argument 'axis' expected an int, got"):
            op(xp.asarray([[1.0, 2.0]]), axis=axis)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's inf - inf
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_zero_d_softmax_matches_torch(xp, op):
    """A 0-d array is one class: softmax 1 (log 0) for finite x, NaN for NaN and ±inf; axis
    -1 and 0 both work, as in torch."""
    torch = pytest.importorskip("torch")
    for value in (2.0, float("nan"), float("inf")):
        for axis in (-1, 0):
            y, cache = getattr(F, op)(xp.asarray(value), axis=axis)
            (dx,) = getattr(F, op + "_backward")(xp.asarray(3.0), cache)
            t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
            ty = getattr(torch, op)(t, axis)
            ty.backward(torch.tensor(3.0, dtype=torch.float64))
            np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
            np.testing.assert_array_equal(to_np(dx), t.grad.numpy())


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
def test_softmax_over_an_empty_axis(xp, op):
    """Torch returns an empty result; max over nothing must not be taken."""
    y, cache = op(xp.asarray(np.zeros((3, 0))))
    assert tuple(y.shape) == (3, 0)
    (dx,) = getattr(F, op.__name__ + "_backward")(y, cache)
    assert tuple(dx.shape) == (3, 0)


def test_softmax_empty_batch(xp):
    y, cache = F.softmax(xp.asarray(np.zeros((0, 3))))
    assert tuple(y.shape) == (0, 3)
    (dx,) = F.softmax_backward(y, cache)
    assert tuple(dx.shape) == (0, 3)


def test_sigmoid_is_first_prob_of_two_class_softmax(xp, dtype, rng):
    z = xp.asarray(rng.standard_normal((5, 3)) * 4, dtype=dtype)
    logits, _ = F.sigmoid_as_softmax_logits(z)
    assert tuple(logits.shape) == (5, 3, 2)
    p, _ = F.softmax(logits)
    s, _ = F.sigmoid(z)
    assert_close(p[..., 0], s, rtol=1e-6 if "32" in str(dtype) else 1e-14, atol=1e-7)
    assert_close(p[..., 1], 1 - s, rtol=1e-5 if "32" in str(dtype) else 1e-13, atol=1e-7)


def test_two_class_softmax_is_many_to_one(xp, rng):
    logits = xp.asarray(rng.standard_normal((6, 2)))
    for c in (-3.0, 0.5, 100.0):
        assert_close(F.softmax(logits + c)[0], F.softmax(logits)[0], rtol=1e-12, atol=1e-14)
    # ...so only the difference of the logits matters: [z, 0] covers every distribution.
    z = logits[:, 0] - logits[:, 1]
    assert_close(
        F.softmax(F.sigmoid_as_softmax_logits(z)[0])[0],
        F.softmax(logits)[0],
        rtol=1e-12,
        atol=1e-14,
    )


def test_sigmoid_as_softmax_logits_gradcheck(xp, rng):
    gradcheck(F.sigmoid_as_softmax_logits, [xp.asarray(rng.standard_normal((3, 2)))])


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax])
def test_torch_keyword_dim(xp, rng, op):
    """``dim=`` as torch code writes it: F.softmax(x, dim=1)."""
    x = xp.asarray(rng.standard_normal((3, 4)))
    assert_close(op(x, dim=0)[0], op(x, axis=0)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match=rf"{op.__name__}: got both 'axis' and torch's name"):
        op(x, axis=0, dim=1)
    with pytest.raises(ValueError, match=rf"{op.__name__}: argument 'dim' expected an axis in"):
        op(x, dim=7)
