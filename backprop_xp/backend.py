"""The one module that knows array libraries by name.

Everything under :mod:`backprop_xp.functional` and :mod:`backprop_xp.nn` works on whatever
namespace its inputs come from (:func:`get_namespace`). This module turns backend *names*
(``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``, ...) into namespaces, moves
arrays between libraries (:func:`to_namespace`), and provides the few operations where a
library's own kernel does what the Array API standard cannot do as fast (a duplicate-safe
scatter-add, :func:`scatter_add_rows`). Random numbers are not among them: they come from
the counter-based generator of :mod:`backprop_xp.functional._random`, in Array API
arithmetic, so a seed gives the same numbers on every backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "bfloat16_from_bits",
    "copysign",
    "default_device",
    "device",
    "get_namespace",
    "library_name",
    "namespace",
    "scatter_add_rows",
    "supports_integer_setitem",
    "to_namespace",
    "to_numpy",
]

Array = Any

# Names users pass to ``namespace``: the import name of the array library, mapped to the
# module that array-api-compat wraps it in (or the library itself where it is compliant).
_NAMESPACES: dict[str, str] = {
    "numpy": "array_api_compat.numpy",
    "cupy": "array_api_compat.cupy",
    "torch": "array_api_compat.torch",
    "dask": "array_api_compat.dask.array",
    "array_api_strict": "array_api_strict",
    "jax": "jax.numpy",
    "ndonnx": "ndonnx",
    "sparse": "sparse",
}
_ALIASES = {"np": "numpy", "cp": "cupy", "pytorch": "torch", "strict": "array_api_strict"}
# What to install when a backend's library is missing (the hint of BackendUnavailableError).
_INSTALL_HINTS: dict[str, str] = {
    "numpy": "pip install numpy",
    "cupy": "install the extra matching your CUDA: pip install 'backprop_xp[cuda12]' or "
    "'backprop_xp[cuda13]'",
    "torch": "pip install torch",
    "dask": "pip install dask",
    "array_api_strict": "pip install array-api-strict (or the test extra: "
    "pip install 'backprop_xp[test]')",
    "jax": "pip install jax",
    "ndonnx": "pip install ndonnx",
    "sparse": "pip install sparse",
}


class BackendUnavailableError(RuntimeError):
    """The requested array library is not installed or has no usable device."""


def _is_array(x: object) -> bool:
    # exact types: NumPy scalars such as np.float64 subclass float but carry a namespace
    return x is not None and type(x) not in (bool, int, float, complex)


# Packages whose arrays belong to another library: a concrete JAX array's type lives in
# jaxlib, a traced one's in jax; both are "jax".
_LIBRARY_OF_PACKAGE = {"jaxlib": "jax"}


def library_name(x: Array) -> str:
    """The top-level package an array comes from: ``"numpy"``, ``"torch"``, ``"cupy"``,
    ``"jax"`` (concrete and traced arrays alike), ..."""
    package = type(x).__module__.partition(".")[0]
    return _LIBRARY_OF_PACKAGE.get(package, package)


def device(x: Array) -> Any:
    """The device of ``x`` (``array_api_compat.device``)."""
    return array_api_compat.device(x)


def get_namespace(
    *arrays: Array | None, op: str | None = None, names: Sequence[str] | None = None
) -> ModuleType:
    """The Array API namespace of ``arrays``.

    ``None`` and Python scalars are ignored. Arrays from different libraries raise
    :class:`TypeError`; arrays on different devices raise :class:`ValueError`. ``op`` and
    ``names`` (one per entry of ``arrays``) only make those messages name the culprits.

    Parameters
    ----------
    *arrays : array, None or scalar
    op : str, optional
        The op asking, for error messages.
    names : sequence of str, optional
        Argument names matching ``arrays``, for error messages.

    Returns
    -------
    module
        The array-api-compat namespace of the arrays.
    """
    labels = list(names) if names is not None else [f"argument {i}" for i in range(len(arrays))]
    found = [(label, a) for label, a in zip(labels, arrays, strict=False) if _is_array(a)]
    prefix = f"{op}: " if op else ""
    if not found:
        raise TypeError(f"{prefix}expected at least one array, got none")
    first_label, first = found[0]
    first_lib = library_name(first)
    for label, a in found[1:]:
        lib = library_name(a)
        if lib != first_lib:
            raise TypeError(
                f"{prefix}arrays from different libraries: '{first_label}' is a {first_lib} "
                f"array but '{label}' is a {lib} array; move them to one library first "
                f"(backprop_xp.backend.to_namespace)"
            )
    try:
        xp = array_api_compat.array_namespace(*(a for _, a in found))
    except TypeError as e:
        raise TypeError(f"{prefix}unsupported array type {type(first).__name__}: {e}") from e
    first_device = array_api_compat.device(first)
    for label, a in found[1:]:
        dev = array_api_compat.device(a)
        if dev != first_device:
            raise ValueError(
                f"{prefix}arrays on different devices: '{first_label}' is on {first_device} "
                f"but '{label}' is on {dev}"
            )
    return xp


def _canonical(name: str) -> str:
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _NAMESPACES:
        raise ValueError(
            f"namespace: unknown backend {name!r}; expected one of {sorted(_NAMESPACES)}"
        )
    return key


def namespace(name: str) -> ModuleType:
    """The Array API namespace for a backend name.

    ``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``, ``"dask"``, ``"jax"``: the
    array-api-compat wrapper where one exists, else the library itself. CuPy additionally
    needs a visible CUDA device.

    Raises
    ------
    BackendUnavailableError
        The library is not installed (the message says what to install for that backend:
        ``pip install torch``, the ``cuda12``/``cuda13`` extra for CuPy, ...), or (CuPy) no
        CUDA device is usable.
    """
    key = _canonical(name)
    if key == "jax":
        import_name = "jax"
    elif key == "dask":
        import_name = "dask.array"
    else:
        import_name = key
    try:
        importlib.import_module(import_name)
    except ImportError as e:
        raise BackendUnavailableError(
            f"namespace: backend {name!r} needs the {import_name!r} package, which is not "
            f"importable here ({e}); {_INSTALL_HINTS.get(key, 'install it')}"
        ) from e
    if key == "cupy":
        import cupy

        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError when no driver is present
            raise BackendUnavailableError(
                f"namespace: backend 'cupy' is installed but has no usable CUDA device ({e})"
            ) from e
        if count == 0:
            raise BackendUnavailableError(
                "namespace: backend 'cupy' is installed but no CUDA device is visible"
            )
    return importlib.import_module(_NAMESPACES[key])


def default_device(xp: ModuleType | str) -> Any:
    """The device new arrays of ``xp`` land on by default (``"cuda"`` for torch when present)."""
    if isinstance(xp, str):
        xp = namespace(xp)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return array_api_compat.device(xp.empty(0))


def available_backends() -> list[str]:
    """Backends usable on this machine, among numpy, array_api_strict, torch, cupy."""
    names = []
    for name in ("numpy", "array_api_strict", "torch", "cupy"):
        try:
            xp = namespace(name)
            xp.asarray([0.0])
        except Exception:
            continue
        names.append(name)
    return names


def to_numpy(x: Array) -> np.ndarray:
    """A NumPy copy (or view) of ``x`` on the host. This is an explicit host round trip."""
    if isinstance(x, np.ndarray):
        return x
    lib = library_name(x)
    if lib == "torch":
        return x.detach().cpu().numpy()
    if lib == "cupy":
        return x.get()
    if lib == "ndonnx":  # no DLPack export; asarray would wrap it in an object array
        return np.asarray(x.unwrap_numpy())
    try:
        return np.from_dlpack(x)
    except Exception:
        pass
    try:
        return np.asarray(x)
    except RuntimeError:  # array-api-strict refuses from its other devices: copy to the default
        home = array_api_compat.array_namespace(x).__array_namespace_info__().default_device()
        return np.asarray(x.to_device(home))


def to_namespace(x: Array, xp: ModuleType | str, device: Any = None) -> Array:
    """Move ``x`` to namespace ``xp`` (a module or backend name), optionally onto ``device``.

    DLPack is tried first (zero copy where both libraries share the device); otherwise the
    data goes through a host copy. ``dtype`` is preserved. A torch tensor that records
    autograd history (a ``torch.nn.Parameter``, say) comes out detached: backprop_xp keeps
    its own gradients.
    """
    if isinstance(xp, str):
        xp = namespace(xp)
    if getattr(x, "requires_grad", False) and library_name(x) == "torch":
        x = x.detach()
    if _is_array(x) and not isinstance(x, (np.generic, list, tuple)):
        src = array_api_compat.array_namespace(x)
        if src is xp or library_name(x) == _library_of_namespace(xp):
            if device is None or array_api_compat.device(x) == device:
                return x  # (ndonnx refuses any device argument, its own device included)
            return array_api_compat.to_device(x, device)
        if device is None:
            try:
                return xp.from_dlpack(x)
            except Exception:  # different devices, or a library without DLPack import
                pass
    host = to_numpy(x) if _is_array(x) else np.asarray(x)
    if host.dtype.byteorder not in ("=", "|"):
        host = host.astype(host.dtype.newbyteorder("="))
    if not host.flags.writeable:  # torch warns on (and may later write to) read-only buffers
        host = host.copy()
    if device is None or _library_of_namespace(xp) == "ndonnx":  # ONNX has no device choice
        return xp.asarray(host)
    return xp.asarray(host, device=device)


def bfloat16_from_bits(bits: np.ndarray, xp: ModuleType, device: Any = None) -> Array | None:
    """The bfloat16 array of namespace ``xp`` whose bit patterns are ``bits`` (a host uint16
    array), bit for bit, NaN payloads included; None where backprop_xp cannot build one (every
    library but torch: NumPy has no bfloat16, and the Array API has no bit cast).
    """
    if _library_of_namespace(xp) != "torch":
        return None
    import torch

    # a private copy: from_numpy shares memory, and the caller keeps ``bits``
    own = np.array(bits, dtype=np.uint16, order="C")
    t = torch.from_numpy(own.view(np.int16)).view(torch.bfloat16)
    return t if device is None else t.to(device)


def _library_of_namespace(xp: ModuleType) -> str:
    name = xp.__name__
    if name.startswith("array_api_compat."):
        name = name[len("array_api_compat.") :]
    return name.partition(".")[0]


def copysign(xp: ModuleType, a: Array, b: Array) -> Array:
    """``xp.copysign(a, b)``: the magnitude of ``a`` with the sign of ``b`` (``-0.0``
    included). ndonnx has neither ``copysign`` nor ``signbit``; there the sign of a zero is
    read from ``1 / b`` (``-inf`` for ``-0.0``; ONNX divides by zero without a warning)."""
    if _library_of_namespace(xp) != "ndonnx":
        return xp.copysign(a, b)
    negative = (b < 0) | ((b == 0) & (1 / b < 0))
    magnitude = xp.abs(a)
    return xp.where(negative, -magnitude, magnitude)


def supports_integer_setitem(xp: ModuleType) -> bool:
    """Whether ``x[(i, j)] = v`` with integer index arrays works (NumPy, CuPy, torch).

    The standard leaves indexed writes with integer arrays out (array-api-strict refuses
    them); ops use this to pick an O(N) scatter over a full-size ``where``.
    """
    return _library_of_namespace(xp) in ("numpy", "cupy", "torch")


def scatter_add_rows(xp: ModuleType, index: Array, values: Array, n_rows: int) -> Array | None:
    """``(n_rows, D)`` zeros plus ``values[i]`` added into row ``index[i]`` for every ``i``,
    repeated indices accumulating, by the library's own scatter-add (NumPy, torch; CuPy for
    float32 and float64); None for other libraries and dtypes, where the caller uses a
    portable algorithm.

    ``array_api_extra.at(x, idx).add(v)`` is no such thing: outside JAX it runs
    ``x[idx] = x[idx] + v``, which keeps one of the values of a repeated index and drops the
    rest.

    ``index``: 1-d int32 or int64 in ``[0, n_rows)`` (not checked here); ``values``:
    ``(len(index), D)``. Work and memory are O(len(index) * D) plus the output.
    """
    lib = _library_of_namespace(xp)
    width = values.shape[1]
    if lib == "numpy":
        return _numpy_scatter_add_rows(index, values, n_rows)
    if lib == "torch":
        import torch

        out = torch.zeros((n_rows, width), dtype=values.dtype, device=values.device)
        return out.index_add_(0, index, values)
    if lib == "cupy" and values.dtype.kind == "f" and values.dtype.itemsize >= 4:
        import cupy
        import cupyx

        with values.device:
            out = cupy.zeros((n_rows, width), dtype=values.dtype)
            cupyx.scatter_add(out, index, values)  # atomic adds: duplicates accumulate
        return out
    return None


def _numpy_scatter_add_rows(index: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    # np.add.at on rows is slow (a 2-d inner loop per index); on a 1-d array it has a fast
    # path. One position of each distinct index is written by plain assignment (the targets
    # are then unique) and only the others go through add.at, on the flattened array.
    n, width = values.shape
    out = np.zeros((n_rows, width), dtype=values.dtype)
    if n == 0 or width == 0:
        return out
    position = np.arange(n)
    owner = np.empty(n_rows, dtype=np.intp)
    owner[index] = position  # for a repeated index one of its positions is left here
    first = owner[index] == position
    out[index[first]] = values[first]
    rest = ~first
    if rest.any():
        flat = (index[rest].astype(np.intp)[:, None] * width + np.arange(width)).reshape(-1)
        np.add.at(out.reshape(-1), flat, values[rest].reshape(-1))
    return out
