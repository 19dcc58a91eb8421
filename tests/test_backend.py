"""backprop_xp.backend: namespaces, moving arrays, errors that name the culprits."""

from __future__ import annotations

import numpy as np
import pytest

from backprop_xp import backend as B


def test_available_backends_include_numpy_and_strict():
    names = B.available_backends()
    assert "numpy" in names and "array_api_strict" in names


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch"])
def test_namespace_by_name(name):
    if name == "torch":
        pytest.importorskip("torch")
    xp = B.namespace(name)
    a = xp.asarray([1.0, 2.0])
    assert B.library_name(a) == name
    assert B.get_namespace(a) is B.get_namespace(xp.asarray([0.0]))


def test_namespace_unknown_and_missing():
    with pytest.raises(ValueError, match=r"namespace: unknown backend 'mxnet'; expected one of"):
        B.namespace("mxnet")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(B.BackendUnavailableError, match=r"backend 'cupy' needs the 'cupy'"):
            B.namespace("cupy")


def test_get_namespace_ignores_none_and_scalars():
    xp = B.get_namespace(None, 3.0, np.zeros(2), 1)
    assert "numpy" in xp.__name__


def test_get_namespace_names_mixed_libraries():
    torch = pytest.importorskip("torch")
    with pytest.raises(
        TypeError,
        match=r"myop: arrays from different libraries: 'a' is a numpy "
        r"array but 'b' is a torch array",
    ):
        B.get_namespace(np.zeros(2), torch.zeros(2), op="myop", names=("a", "b"))


def test_get_namespace_names_devices():
    strict = pytest.importorskip("array_api_strict")
    a = strict.asarray([1.0])
    b = strict.asarray([1.0], device=strict.Device("device1"))
    with pytest.raises(
        ValueError,
        match=r"op: arrays on different devices: 'x' is on .* but "
        r"'y' is on .*device1",
    ):
        B.get_namespace(a, b, op="op", names=("x", "y"))


@pytest.mark.parametrize("src", ["numpy", "array_api_strict", "torch"])
@pytest.mark.parametrize("dst", ["numpy", "array_api_strict", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_to_namespace_round_trip(src, dst, dtype):
    if "torch" in (src, dst):
        pytest.importorskip("torch")
    host = np.arange(6, dtype=dtype).reshape(2, 3)
    a = B.to_namespace(host, src)
    b = B.to_namespace(a, dst)
    assert B.library_name(b) == dst
    back = B.to_numpy(b)
    assert back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)


def test_to_namespace_read_only_input_is_copied_for_torch():
    torch = pytest.importorskip("torch")
    a = np.arange(3.0)
    a.flags.writeable = False
    t = B.to_namespace(a, "torch")
    assert isinstance(t, torch.Tensor)


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["distinct", "repeated", "all the same", "empty"])
def test_scatter_add_rows_accumulates_repeated_indices(name, kind):
    """``x[idx] += v`` keeps one value per repeated index; the scatter-add adds them all."""
    if name == "torch":
        pytest.importorskip("torch")
    xp = B.namespace(name)
    rng = np.random.default_rng(0)
    n = {"distinct": 6, "repeated": 40, "all the same": 40, "empty": 0}[kind]
    index = {
        "distinct": rng.permutation(9)[:6],
        "repeated": rng.integers(0, 9, n),
        "all the same": np.full(n, 4),
        "empty": np.zeros(0, dtype=np.int64),
    }[kind]
    values = rng.standard_normal((n, 3)).astype(np.float32)
    expected = np.zeros((9, 3), dtype=np.float64)
    for i, v in zip(index, values, strict=True):
        expected[i] += v
    got = B.scatter_add_rows(xp, xp.asarray(index), xp.asarray(values), 9)
    assert got is not None and B.library_name(got) == name and got.dtype == xp.float32
    np.testing.assert_allclose(B.to_numpy(got), expected, rtol=1e-6, atol=1e-6)


def test_scatter_add_rows_is_none_without_a_native_scatter_add():
    xp = B.namespace("array_api_strict")
    assert B.scatter_add_rows(xp, xp.asarray([0, 0]), xp.ones((2, 3)), 4) is None
