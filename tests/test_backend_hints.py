"""The hint of BackendUnavailableError names what to install for the backend asked for."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from backprop_xp import backend as B

HINTS = {
    "cupy": ["pip install 'backprop_xp[cuda12]'", "'backprop_xp[cuda13]'"],
    "torch": ["pip install torch"],
    "array_api_strict": ["pip install array-api-strict", "test"],
    "jax": ["pip install jax"],
    "dask": ["pip install dask"],
    "ndonnx": ["pip install ndonnx"],
    "sparse": ["pip install sparse"],
}


def _missing(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """Make ``import_module`` fail for ``missing`` and its submodules, as if not installed."""
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> ModuleType:
        if name == missing or name.startswith(missing + "."):
            raise ImportError(f"No module named {missing!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)


@pytest.mark.parametrize("name", sorted(HINTS))
def test_unavailable_backend_names_its_own_package(monkeypatch, name):
    _missing(monkeypatch, name)
    with pytest.raises(B.BackendUnavailableError) as info:
        B.namespace(name)
    message = str(info.value)
    assert message.startswith(f"namespace: backend {name!r} needs the '{name}"), message
    for part in HINTS[name]:
        assert part in message, message
    if name != "cupy":  # CuPy's extras only where CuPy was asked for
        assert "cuda12" not in message and "cuda13" not in message, message


def test_alias_gets_the_hint_of_its_backend(monkeypatch):
    _missing(monkeypatch, "torch")
    with pytest.raises(B.BackendUnavailableError, match=r"backend 'pytorch' .*pip install torch"):
        B.namespace("pytorch")


def test_every_backend_name_has_a_hint():
    assert set(B._NAMESPACES) - {"numpy"} <= set(HINTS)
    assert set(B._INSTALL_HINTS) >= set(B._NAMESPACES)
