"""backprop_xp.testing: gradcheck must catch wrong backwards; assert_close must check metadata."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from backprop_xp import functional as F
from backprop_xp.testing import GradcheckError, assert_close, gradcheck


class _Cache(NamedTuple):
    x: object


def square(x, w):
    return x * x * w, _Cache((x, w))


def square_backward(dy, cache):
    x, w = cache.x
    return 2 * x * w * dy, x * x * dy


def wrong_square(x, w):
    return x * x * w, _Cache((x, w))


def wrong_square_backward(dy, cache):
    x, w = cache.x
    return 2 * x * w * dy, x * dy  # wrong gradient for w


def test_gradcheck_passes_a_correct_backward(xp, rng):
    r = gradcheck(square, [xp.asarray(rng.standard_normal(5)), xp.asarray(rng.standard_normal(5))])
    assert r.ok and [c.name for c in r.inputs] == ["x", "w"]


def test_gradcheck_names_the_failing_input(xp, rng):
    with pytest.raises(GradcheckError, match=r"w: FAILED") as info:
        gradcheck(
            wrong_square, [xp.asarray(rng.standard_normal(5)), xp.asarray(rng.standard_normal(5))]
        )
    assert "x: ok" in str(info.value)


def test_gradcheck_random_directions_catch_errors_in_large_inputs(rng):
    x, w = rng.standard_normal(500), rng.standard_normal(500)
    r = gradcheck(wrong_square, [x, w], raise_exception=False, full_jacobian_max=10)
    assert not r.ok and r.inputs[0].ok and r.inputs[0].mode == "directions"


def test_gradcheck_catches_mutated_inputs_and_caches(rng):
    class Box(NamedTuple):
        state: np.ndarray

    def scale(x):
        return 2 * x, Box(np.ones(1))

    def scale_backward(dy, cache):
        cache.state[0] += 1.0  # a backward that changes its cache: the second call differs
        return (cache.state[0] * dy,)

    with pytest.raises(GradcheckError, match=r"second backward on the same cache"):
        gradcheck(scale, [rng.standard_normal(3)], backward=scale_backward)

    def clobber(x):
        x[0] = 0.0
        return x, None

    def clobber_backward(dy, cache):
        return (dy,)

    with pytest.raises(GradcheckError, match=r"modified its input 'x'"):
        gradcheck(clobber, [rng.standard_normal(3)], backward=clobber_backward)


def test_gradcheck_rejects_wrong_arity(rng):
    def bad(x):
        return x, None

    def bad_backward(dy, cache):
        return dy  # not a tuple

    with pytest.raises(GradcheckError, match=r"must return a tuple"):
        gradcheck(bad, [rng.standard_normal(3)], backward=bad_backward)


def test_gradcheck_handles_tuple_outputs_and_none_cotangents(rng):
    def two(x):
        return (2 * x, x * x), x

    def two_backward(grads, x):
        g1, g2 = grads
        dx = 0 * x
        if g1 is not None:
            dx = dx + 2 * g1
        if g2 is not None:
            dx = dx + 2 * x * g2
        return (dx,)

    x = rng.standard_normal(4)
    gradcheck(two, [x], backward=two_backward)
    gradcheck(two, [x], backward=two_backward, grad_outputs=(None, rng.standard_normal(4)))


def test_assert_close_checks_namespace_dtype_shape(xp):
    a = xp.asarray(np.ones(3))
    assert_close(a, xp.asarray(np.ones(3)))
    with pytest.raises(AssertionError, match="dtype differs"):
        assert_close(a, xp.asarray(np.ones(3), dtype=xp.float32))
    with pytest.raises(AssertionError, match="shape differs"):
        assert_close(a, xp.asarray(np.ones(4)))
    with pytest.raises(AssertionError):
        assert_close(a, xp.asarray(np.ones(3) * 1.001))
    if xp.backend_name not in ("numpy", "numpy_readonly"):
        with pytest.raises(AssertionError, match="namespace differs"):
            assert_close(a, np.ones(3))
        assert_close(a, np.ones(3), check_namespace=False)


def test_ops_do_not_mutate_inputs(rng):
    """Belt and braces beside the numpy_readonly backend: inputs are unchanged, bit for bit."""
    x, t = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    x0, t0 = x.copy(), t.copy()
    _, cache = F.cross_entropy(x, t)
    F.cross_entropy_backward(np.asarray(1.0), cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)
