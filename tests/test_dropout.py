"""Dropout and its counter-based generator: one mask per seed on every backend, the mask's
statistics, the gradient, the identities (p = 0, training=False) and p = 1, the layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp import nn
from backprop_xp.backend import library_name
from backprop_xp.functional import _random
from backprop_xp.testing import gradcheck


def _mask(xp, shape, p, seed, dtype=None):
    x = xp.ones(shape, dtype=dtype or xp.float32)
    y, _ = F.dropout(x, p, seed=seed)
    return to_np(y) != 0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_same_mask_on_every_backend(xp, rng, p):
    x = rng.standard_normal((17, 33))
    g = rng.standard_normal((17, 33))
    compare_with_numpy(xp, F.dropout, F.dropout_backward, [x], {"p": p, "seed": 2024}, g)
    compare_with_numpy(xp, F.dropout, F.dropout_backward, [x], {"p": p, "seed": 2024}, g, "float32")


def test_seed_arrays_give_the_python_ints_mask(xp):
    want = _mask(xp, (5, 40), 0.5, 123)
    for dtype in ("int32", "int64", "uint32", "int16", "uint64"):
        seed = xp.asarray(123, dtype=getattr(xp, dtype))
        np.testing.assert_array_equal(_mask(xp, (5, 40), 0.5, seed), want, err_msg=dtype)
    # seeds are taken modulo 2^64, arrays sign-extended: -1 is 2^64 - 1
    minus_one = _mask(xp, (5, 40), 0.5, -1)
    np.testing.assert_array_equal(_mask(xp, (5, 40), 0.5, 2**64 - 1), minus_one)
    np.testing.assert_array_equal(
        _mask(xp, (5, 40), 0.5, xp.asarray(-1, dtype=xp.int32)), minus_one
    )
    np.testing.assert_array_equal(
        _mask(xp, (5, 40), 0.5, xp.asarray(-1, dtype=xp.int64)), minus_one
    )
    high = 2**40 + 7  # the high word matters
    assert not np.array_equal(_mask(xp, (5, 40), 0.5, high), _mask(xp, (5, 40), 0.5, 7))
    np.testing.assert_array_equal(
        _mask(xp, (5, 40), 0.5, xp.asarray(high, dtype=xp.int64)), _mask(xp, (5, 40), 0.5, high)
    )


def _fmix(h):
    """MurmurHash3's fmix32 on a Python int in [0, 2^32)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) % 2**32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) % 2**32
    return h ^ (h >> 16)


def _reference_bits(seed, k, row=2**24):
    """The generator as its docstring states it, in unsigned Python arithmetic."""
    s = seed % 2**64
    k0 = _fmix((s % 2**32) ^ 0x243F6A88)
    k1 = _fmix((s >> 32) ^ k0 ^ 0x13198A2E)
    r, q = divmod(k, row)
    h = _fmix(((_fmix(q ^ k0) + k1) % 2**32) ^ _fmix(r ^ k1))
    return h >> 8


@pytest.mark.parametrize("seed", [0, 1, -7, 2**63 + 12345, 987654321])
def test_the_generator_is_the_documented_hash(xp, seed, monkeypatch):
    """The int32 arithmetic (wrap-around, emulated logical shifts) on every backend gives
    the documented unsigned hash, bit for bit; also on the (rows, 2^24) grid of large draws
    (a small row here)."""
    positions = [0, 1, 2, 99, 100, 101, 254, 255]
    got = to_np(_random.random_bits(xp, (256,), seed, xp.device))
    assert got.dtype == np.int32
    assert [int(got[k]) for k in positions] == [_reference_bits(seed, k) for k in positions]
    monkeypatch.setattr(_random, "_ROW", 100)
    got = to_np(_random.random_bits(xp, (256,), seed, xp.device))
    assert [int(got[k]) for k in positions] == [_reference_bits(seed, k, 100) for k in positions]


def test_the_generator_is_pinned():
    """Masks are part of the library's behaviour (a seeded run reproduces across versions and
    backends): the first bits of seed 0, so that a change to the generator is a decision."""
    assert to_np(_random.random_bits(np, (6,), 0, None)).tolist() == [
        11973692,
        8849086,
        10251223,
        15321047,
        11293335,
        650198,
    ]


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8])
def test_fraction_kept_is_binomial(p):
    n = 200_000
    for seed in (0, 1, 2**33 + 5):
        kept = _mask(np, (n,), p, seed).mean()
        bound = 5 * math.sqrt(p * (1 - p) / n)  # five standard deviations
        assert abs(kept - (1 - p)) < bound, (seed, kept)


def test_masks_of_different_seeds_and_positions_look_independent():
    n = 100_000
    a, b = (_mask(np, (n,), 0.5, s).astype(np.float64) for s in (10, 11))
    bound = 5 / math.sqrt(n)
    assert abs(np.corrcoef(a, b)[0, 1]) < bound  # consecutive seeds
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < bound  # neighbours
    u = to_np(_random.uniform(np, (n,), 3, None))
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = ((hist - n / 20) ** 2 / (n / 20)).sum()
    assert chi2 < 50  # 19 degrees of freedom: p ~ 1e-4


def test_a_draw_is_the_prefix_of_a_larger_draw(monkeypatch):
    """Element k depends on (seed, k) only; large draws use a (rows, 2^24) grid of counters,
    checked here with a small row."""
    big = to_np(_random.random_bits(np, (1000,), 9, None))
    np.testing.assert_array_equal(
        to_np(_random.random_bits(np, (10, 10), 9, None)).ravel(), big[:100]
    )
    monkeypatch.setattr(_random, "_ROW", 64)
    grid = to_np(_random.random_bits(np, (300,), 9, None))
    np.testing.assert_array_equal(to_np(_random.random_bits(np, (64,), 9, None)), grid[:64])
    np.testing.assert_array_equal(to_np(_random.random_bits(np, (150,), 9, None)), grid[:150])
    assert len(set(grid.tolist())) > 290  # rows differ from each other


def test_kept_elements_are_scaled_and_the_gradient_uses_the_mask(xp, dtype, rng):
    x = xp.asarray(rng.standard_normal((40, 25)), dtype=dtype)
    g = xp.asarray(rng.standard_normal((40, 25)), dtype=dtype)
    y, cache = F.dropout(x, 0.25, seed=5)
    (dx,) = F.dropout_backward(g, cache)
    assert y.dtype == dtype and dx.dtype == dtype and library_name(y) == library_name(x)
    kept = to_np(y) != 0
    scale = np.asarray(1 / 0.75, dtype=to_np(x).dtype)
    np.testing.assert_array_equal(to_np(y), np.where(kept, to_np(x) * scale, 0))
    np.testing.assert_array_equal(to_np(dx), np.where(kept, to_np(g) * scale, 0))


def test_dropout_gradcheck(xp, rng):
    x = xp.asarray(rng.standard_normal((4, 6)), dtype=xp.float64)
    gradcheck(F.dropout, [x], {"p": 0.4, "seed": 77})


@pytest.mark.parametrize("how", [{"p": 0.0}, {"p": 0.7, "training": False}])
def test_identity_returns_a_copy(xp, rng, how):
    x = xp.asarray(rng.standard_normal((3, 4)))
    y, cache = F.dropout(x, seed=1, **how)
    assert y is not x
    np.testing.assert_array_equal(to_np(y), to_np(x))
    if xp.backend_name == "numpy":
        assert not np.shares_memory(y, x)
    g = xp.asarray(rng.standard_normal((3, 4)))
    (dx,) = F.dropout_backward(g, cache)
    assert dx is not g
    np.testing.assert_array_equal(to_np(dx), to_np(g))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_p_one_and_non_finite_inputs_follow_torch():
    """torch multiplies by the mask: a dropped NaN or inf is NaN (x * 0), as is anything
    at p = 1 (scale 0); a NaN gradient stays NaN where dropped too."""
    x = np.array([np.nan, np.inf, -2.0, 3.0] * 50)
    y, cache = F.dropout(x, 1.0, seed=3)
    np.testing.assert_array_equal(y, x * 0)
    (dx,) = F.dropout_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx, 0)
    y, cache = F.dropout(x, 0.5, seed=3)
    kept = _mask(np, x.shape, 0.5, 3)
    np.testing.assert_array_equal(y, np.where(kept, x * 2, x * 0))
    (dx,) = F.dropout_backward(np.full_like(x, np.nan), cache)
    assert np.isnan(dx).all()


def test_0d_input():
    y, cache = F.dropout(np.asarray(2.0), 0.5, seed=0)
    (dx,) = F.dropout_backward(np.asarray(1.0), cache)
    assert y.shape == () and dx.shape == () and isinstance(y, np.ndarray)
    assert float(y) in (0.0, 4.0) and float(dx) == float(y) / 2


def test_bad_arguments_are_named(xp):
    x = xp.ones((2, 3))
    with pytest.raises(ValueError, match=r"^dropout: argument 'p' expected a value in \[0, 1\]"):
        F.dropout(x, 1.5, seed=0)
    with pytest.raises(TypeError, match=r"^dropout: argument 'seed' expected an int"):
        F.dropout(x, 0.5, seed=None)
    with pytest.raises(TypeError, match=r"^dropout: argument 'seed' expected an int"):
        F.dropout(x, 0.5, seed=1.5)
    with pytest.raises(ValueError, match=r"^dropout: argument 'seed' expected an int or a 0-d"):
        F.dropout(x, 0.5, seed=xp.asarray([1, 2]))
    with pytest.raises(TypeError, match=r"^dropout: argument 'seed' expected an integer array"):
        F.dropout(x, 0.5, seed=xp.asarray(1.0))
    with pytest.raises(TypeError, match=r"^dropout: argument 'x' expected a real floating"):
        F.dropout(xp.asarray([1, 2]), 0.5, seed=0)
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'seed'"):
        F.dropout(x, 0.5)  # type: ignore[call-arg]


def test_seed_array_of_another_library_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^dropout: arrays from different libraries"):
        F.dropout(np.ones(3), 0.5, seed=torch.tensor(1))


# -- the layer ------------------------------------------------------------------------------


def test_dropout_layer_seeds_each_call(xp):
    x = xp.ones((30, 30), dtype=xp.float32)
    layer = nn.Dropout(0.5, rng=4)
    first, second = (to_np(layer(x)[0]) for _ in range(2))
    assert not np.array_equal(first, second)
    again = nn.Dropout(0.5, rng=4)
    np.testing.assert_array_equal(to_np(again(x)[0]), first)
    np.testing.assert_array_equal(to_np(again(x)[0]), second)
    # rng=None: seeds from the nn.init generator, which nn.manual_seed resets
    nn.manual_seed(8)
    a = to_np(nn.Dropout(0.5)(x)[0])
    nn.manual_seed(8)
    np.testing.assert_array_equal(to_np(nn.Dropout(0.5)(x)[0]), a)


def test_dropout_layer_masks_are_the_same_on_every_backend(xp):
    want = nn.Dropout(0.3, rng=0)(np.ones((8, 9), dtype=np.float32))[0]
    got = nn.Dropout(0.3, rng=0)(xp.asarray(np.ones((8, 9)), dtype=xp.float32))[0]
    np.testing.assert_array_equal(to_np(got), want)


def test_dropout_layer_eval_returns_its_input():
    x = np.ones((3, 3), dtype=np.float32)
    layer = nn.Dropout(0.5, rng=0).eval()
    y, backprop = layer(x)
    assert y is x
    g = np.full((3, 3), 2.0)
    assert backprop(g).dtype == np.float32
