"""The test matrix: one ``xp`` fixture over every backend that works on this machine.

``xp`` is the backend's namespace, except that ``xp.asarray`` puts new arrays on the
backend's device (``torch_cuda``) or makes them read-only (``numpy_readonly``: any write to an
input then raises). Tests build inputs with NumPy's generator and ``xp.asarray``, and compare
with NumPy through :func:`backprop_xp.testing.assert_close`.

Every test runs on the backends that execute eagerly and hold values (NumPy, read-only
NumPy, array-api-strict on its default and on a second device, torch, CuPy); the tests
marked ``matrix`` (every op against NumPy, the op contract, laziness, jit) also run on
``jax`` (float64 enabled), ``dask`` (inputs in two chunks along the batch axis), ``ndonnx``
and ``torch_meta`` (shape-only tensors: the index checks are off there, and tests marked
``values`` skip).

Restrict the matrix with ``pytest --backend numpy --backend torch`` or
``BACKPROP_XP_BACKENDS=numpy,torch``. A backend asked for by name that is unknown or does not
work here is a usage error (pytest exits with status 4 naming it and why), not a run of skips.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from backprop_xp import backend as B

ALL_BACKENDS = (
    "numpy",
    "numpy_readonly",
    "array_api_strict",
    "array_api_strict_device",
    "torch",
    "torch_meta",
    "jax",
    "dask",
    "ndonnx",
    "cupy",
    "torch_cuda",
)
# Backends whose arrays hold no values (shape-only torch tensors): tests marked ``values``
# skip there; the rest check what a shape-only run can (shapes, dtypes, devices, errors).
SHAPE_ONLY = ("torch_meta",)
# Backends that run only the tests marked ``matrix`` (every op against NumPy, the contract
# tests, laziness and jit): a JAX eager op compiles per shape and a dask op builds a graph, so
# the whole suite there would take most of an hour; shape-only tensors cannot run tests that
# read values.
MATRIX_ONLY = ("torch_meta", "jax", "dask", "ndonnx")


# Creation functions that take ``device=``: a test's ``xp.zeros(...)`` lands on the backend's
# device (a second array-api-strict device, CUDA), as its ``xp.asarray`` does.
_CREATION = ("zeros", "ones", "empty", "full", "arange", "linspace", "eye")


def _on_device(fn: Any, device: Any) -> Any:
    def create(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("device", device)
        return fn(*args, **kwargs)

    return create


class TestNamespace:
    """A backend's namespace whose ``asarray`` places arrays where the backend wants them."""

    def __init__(
        self, name: str, xp: Any, device: Any, readonly: bool = False, chunked: bool = False
    ):
        self.backend_name = name
        self._xp = xp
        self.device = device
        self._readonly = readonly
        self._chunked = chunked
        self.shape_only = name in SHAPE_ONLY

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._xp, attr)
        if attr in _CREATION and self.device is not None and not self.shape_only:
            return _on_device(value, self.device)
        return value

    def asarray(self, obj: Any, /, **kwargs: Any) -> Any:
        if self.device is not None:
            kwargs.setdefault("device", self.device)
        if self._readonly:
            a = np.array(obj, copy=True, dtype=kwargs.get("dtype"))
            a.flags.writeable = False
            return a
        if isinstance(obj, np.ndarray) and not obj.flags.writeable:
            obj = obj.copy()
        if self.shape_only:  # built on the CPU, then moved: a meta tensor has no values
            dev = kwargs.pop("device")
            return self._xp.asarray(obj, **kwargs).to(dev)
        a = self._xp.asarray(obj, **kwargs)
        if self._chunked and a.ndim and a.shape[0] >= 2:
            a = a.rechunk({0: -(-a.shape[0] // 2)})  # two chunks along the batch axis
        return a

    def __repr__(self) -> str:
        return f"<xp {self.backend_name}>"


def _make(name: str) -> TestNamespace:
    if name == "numpy_readonly":
        return TestNamespace(name, B.namespace("numpy"), None, readonly=True)
    if name == "torch_cuda":
        import torch

        if not torch.cuda.is_available():
            raise B.BackendUnavailableError("torch has no CUDA device")
        return TestNamespace(name, B.namespace("torch"), torch.device("cuda"))
    if name == "array_api_strict_device":
        xp = B.namespace("array_api_strict")
        # a second device: the stand-in for a GPU, where every array must stay
        return TestNamespace(name, xp, xp.Device("device1"))
    if name == "torch_meta":
        import torch

        return TestNamespace(name, B.namespace("torch"), torch.device("meta"))
    xp = B.namespace(name)
    dev = None
    if name == "torch":
        import torch

        dev = torch.device("cpu")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # the float64 half of the matrix
    return TestNamespace(name, xp, dev, chunked=name == "dask")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=[],
        choices=ALL_BACKENDS,
        help="restrict the xp fixture to this backend (repeatable)",
    )


def _requested(config: pytest.Config) -> list[str]:
    return config.getoption("--backend") or [
        b for b in os.environ.get("BACKPROP_XP_BACKENDS", "").split(",") if b
    ]


def _selected(config: pytest.Config) -> list[str]:
    """Backends asked for by name (each checked by :func:`pytest_sessionstart`), else every
    backend that works here: an absent GPU is reported in the header, not as skips."""
    requested = _requested(config)
    if requested:
        return list(dict.fromkeys(requested))
    return [name for name in ALL_BACKENDS if isinstance(_get(name), TestNamespace)]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse a run restricted to a backend that does not work here: every test of the matrix
    would skip, and a run of skips passes (exit 0) without testing anything."""
    requested = _requested(session.config)
    source = "--backend" if session.config.getoption("--backend") else "BACKPROP_XP_BACKENDS"
    unknown = [name for name in requested if name not in ALL_BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"{source}: unknown backend {', '.join(map(repr, unknown))}; expected one of "
            f"{', '.join(ALL_BACKENDS)}"
        )
    missing = {name: got for name in requested if isinstance(got := _get(name), str)}
    if missing:
        reasons = "; ".join(f"{name!r} is unavailable here: {why}" for name, why in missing.items())
        raise pytest.UsageError(
            f"{source}: {reasons} (run without {source} to test every backend that works here)"
        )


_AVAILABLE: dict[str, TestNamespace | str] = {}


def _get(name: str) -> TestNamespace | str:
    if name not in _AVAILABLE:
        try:
            _AVAILABLE[name] = _make(name)
        except (B.BackendUnavailableError, ImportError, ValueError) as e:  # ValueError: unknown
            _AVAILABLE[name] = str(e)
    return _AVAILABLE[name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "xp" in metafunc.fixturenames:
        names = _selected(metafunc.config)
        if metafunc.definition.get_closest_marker("matrix") is None:
            names = [n for n in names if n not in MATRIX_ONLY]
        metafunc.parametrize("xp", names, indirect=True, ids=names)


def pytest_report_header(config: pytest.Config) -> str:
    parts = []
    for name in _requested(config) or ALL_BACKENDS:
        got = _get(name)
        parts.append(f"{name}={'yes' if isinstance(got, TestNamespace) else 'no'}")
    return "backprop_xp backends: " + ", ".join(parts)


@pytest.fixture
def xp(request: pytest.FixtureRequest) -> Any:
    got = _get(request.param)
    if isinstance(got, str):
        pytest.skip(f"backend {request.param} unavailable: {got}")
    if got.shape_only:
        if request.node.get_closest_marker("values"):
            pytest.skip(f"{request.param} holds no values; this test compares values")
        import backprop_xp

        # the losses' index check reads values: off, as on any shape-only run
        with backprop_xp.index_checks(False):
            yield got
        return
    yield got


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest, xp: TestNamespace) -> Any:
    return getattr(xp, request.param)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Fresh random inputs each run; the seed is printed on failure for replay."""
    seed = int(os.environ.get("BACKPROP_XP_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed: BACKPROP_XP_SEED={seed}")
    return np.random.default_rng(seed)
