"""The test matrix: one ``xp`` fixture over every backend that works on this machine.

``xp`` is the backend's namespace, except that ``xp.asarray`` puts new arrays on the
backend's device (``torch_cuda``) or makes them read-only (``numpy_readonly``: any write to an
input then raises). Tests build inputs with NumPy's generator and ``xp.asarray``, and compare
with NumPy through :func:`backprop_xp.testing.assert_close`.

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

ALL_BACKENDS = ("numpy", "numpy_readonly", "array_api_strict", "torch", "cupy", "torch_cuda")


class TestNamespace:
    """A backend's namespace whose ``asarray`` places arrays where the backend wants them."""

    def __init__(self, name: str, xp: Any, device: Any, readonly: bool = False):
        self.backend_name = name
        self._xp = xp
        self.device = device
        self._readonly = readonly

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._xp, attr)

    def asarray(self, obj: Any, /, **kwargs: Any) -> Any:
        if self.device is not None:
            kwargs.setdefault("device", self.device)
        if self._readonly:
            a = np.array(obj, copy=True, dtype=kwargs.get("dtype"))
            a.flags.writeable = False
            return a
        if isinstance(obj, np.ndarray) and not obj.flags.writeable:
            obj = obj.copy()
        return self._xp.asarray(obj, **kwargs)

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
    xp = B.namespace(name)
    dev = None
    if name == "torch":
        import torch

        dev = torch.device("cpu")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return TestNamespace(name, xp, dev)


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
        metafunc.parametrize("xp", names, indirect=True, ids=names)


def pytest_report_header(config: pytest.Config) -> str:
    parts = []
    for name in _requested(config) or ALL_BACKENDS:
        got = _get(name)
        parts.append(f"{name}={'yes' if isinstance(got, TestNamespace) else 'no'}")
    return "backprop_xp backends: " + ", ".join(parts)


@pytest.fixture
def xp(request: pytest.FixtureRequest) -> TestNamespace:
    got = _get(request.param)
    if isinstance(got, str):
        pytest.skip(f"backend {request.param} unavailable: {got}")
    return got


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
