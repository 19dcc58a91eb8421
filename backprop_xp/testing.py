"""Checks for ops written in the backprop_xp protocol, for the library's tests and for users.

:func:`gradcheck` compares an op's hand-written backward with central differences in float64;
:func:`assert_close` compares arrays and also their library, dtype, shape and device.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import device, get_namespace, library_name, to_namespace, to_numpy

__all__ = ["GradcheckError", "GradcheckResult", "InputCheck", "assert_close", "gradcheck"]

Array = Any


class GradcheckError(AssertionError):
    """An analytical gradient disagreed with the numerical one."""


@dataclass
class InputCheck:
    """How one input's gradient compared with central differences."""

    name: str
    mode: str  # "full" (every element perturbed) or "directions" (random directions)
    n_checked: int
    max_abs_error: float
    max_rel_error: float
    ok: bool


@dataclass
class GradcheckResult:
    op: str
    inputs: list[InputCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.inputs)

    def __str__(self) -> str:
        lines = [f"gradcheck({self.op}): {'ok' if self.ok else 'FAILED'}"]
        for c in self.inputs:
            status = "ok" if c.ok else "FAILED"
            lines.append(
                f"  {c.name}: {status}, {c.mode} ({c.n_checked} checked), "
                f"max abs error {c.max_abs_error:.3g}, max rel error {c.max_rel_error:.3g}"
            )
        return "\n".join(lines)


def _is_array(x: object) -> bool:
    return x is not None and not isinstance(x, (bool, int, float, complex, str, tuple, list))


def _is_float_array(x: Any) -> bool:
    if not _is_array(x):
        return False
    xp = get_namespace(x)
    return bool(xp.isdtype(x.dtype, "real floating"))


def _find_backward(op: Callable[..., Any]) -> Callable[..., Any]:
    module = sys.modules[op.__module__]
    name = f"{op.__name__}_backward"
    backward = getattr(module, name, None)
    if backward is None:
        raise ValueError(f"gradcheck: no '{name}' next to '{op.__name__}'; pass backward=")
    return backward


def _input_names(op: Callable[..., Any], n: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(op).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"input {i}" for i in range(n)]


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def gradcheck(
    op: Callable[..., Any],
    inputs: Sequence[Any],
    options: dict[str, Any] | None = None,
    *,
    backward: Callable[..., Any] | None = None,
    grad_outputs: Any = None,
    wrt: Sequence[int] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    full_jacobian_max: int = 128,
    n_directions: int = 6,
    seed: int = 0,
    raise_exception: bool = True,
) -> GradcheckResult:
    r"""Compare ``op_backward`` with central differences, in float64, on any namespace.

    With random output cotangents :math:`g_k`, the scalar :math:`L = \sum_k \langle g_k,
    \mathrm{out}_k\rangle` has gradient ``op_backward(g, cache)`` with respect to each input.
    Each floating input is checked element by element (its full row of the Jacobian) when it
    has at most ``full_jacobian_max`` elements, else along ``n_directions`` random unit
    directions :math:`v`, where :math:`\langle \nabla L, v\rangle \approx
    (L(x + \epsilon v) - L(x - \epsilon v)) / 2\epsilon`.

    Parameters
    ----------
    op : callable
        The forward, ``out, cache = op(*inputs, **options)``.
    inputs : sequence
        Positional inputs: arrays (floating ones are cast to float64), ``None`` or objects.
    options : dict, optional
        Keyword arguments of ``op``.
    backward : callable, optional
        Defaults to ``<op>_backward`` in ``op``'s module.
    grad_outputs : array or tuple, optional
        Output cotangents; ``None`` entries in a tuple mean "no gradient for that output".
        Default: standard normal, one per output.
    wrt : sequence of int, optional
        Indices of the inputs to check; default every floating array.
    eps, atol, rtol : float
        Step and tolerance: ``|numerical - analytical| <= atol + rtol * |numerical|``.
    full_jacobian_max, n_directions, seed : int
        See above.
    raise_exception : bool
        Raise :class:`GradcheckError` naming the failing inputs (default), or only return.

    Returns
    -------
    GradcheckResult
        The worst error per input.

    Examples
    --------
    >>> import numpy as np
    >>> from backprop_xp import functional as F
    >>> from backprop_xp.testing import gradcheck
    >>> gradcheck(F.softmax, [np.random.default_rng(0).standard_normal((3, 4))]).ok
    True
    """
    options = dict(options or {})
    backward = backward or _find_backward(op)
    op_name = getattr(op, "__name__", repr(op))
    names = _input_names(op, len(inputs))
    xp = get_namespace(*[x for x in inputs if _is_array(x)], op="gradcheck")
    inputs = [xp.astype(x, xp.float64) if _is_float_array(x) else x for x in inputs]
    rng = np.random.default_rng(seed)

    before = [np.array(to_numpy(x), copy=True) if _is_array(x) else None for x in inputs]
    out, cache = op(*inputs, **options)
    outs = _as_tuple(out)
    if grad_outputs is None:
        gs: tuple[Any, ...] = tuple(
            None if o is None else to_namespace(rng.standard_normal(tuple(o.shape)), xp, device(o))
            for o in outs
        )
    else:
        gs = _as_tuple(grad_outputs)
        if len(gs) != len(outs):
            raise ValueError(f"gradcheck: {len(outs)} outputs but {len(gs)} grad_outputs")
    grads = backward(gs if isinstance(out, (tuple, list)) else gs[0], cache)
    # One entry per array parameter of the forward: at least one per positional input given
    # here (array parameters passed in ``options`` come after them).
    if not isinstance(grads, tuple) or len(grads) < len(inputs):
        raise GradcheckError(
            f"gradcheck({op_name}): backward must return a tuple with one entry per array "
            f"input (at least {len(inputs)}), got {type(grads).__name__} of length "
            f"{len(grads) if isinstance(grads, tuple) else 'n/a'}"
        )

    # Chainer's FunctionTestCase checks: a second backward on the same cache gives the same
    # gradients (nothing cached was overwritten), and neither pass touched the inputs.
    again = backward(gs if isinstance(out, (tuple, list)) else gs[0], cache)
    for i, (g1, g2) in enumerate(zip(grads, again, strict=True)):
        if (g1 is None) != (g2 is None) or (
            g1 is not None and not np.array_equal(to_numpy(g1), to_numpy(g2), equal_nan=True)
        ):
            raise GradcheckError(
                f"gradcheck({op_name}): a second backward on the same cache gave a different "
                f"gradient for '{names[i] if i < len(names) else i}': the first one changed "
                f"something the cache holds"
            )
    for i, (x, x0) in enumerate(zip(inputs, before, strict=True)):
        if x0 is not None and not np.array_equal(to_numpy(x), x0, equal_nan=True):
            raise GradcheckError(f"gradcheck({op_name}): the op modified its input '{names[i]}'")

    def loss(args: list[Any]) -> float:
        o = _as_tuple(op(*args, **options)[0])
        total = 0.0
        for ok, gk in zip(o, gs, strict=True):
            if gk is not None and ok is not None:
                total += float(xp.sum(ok * gk))
        return total

    check = (
        list(wrt) if wrt is not None else [i for i, x in enumerate(inputs) if _is_float_array(x)]
    )
    result = GradcheckResult(op_name)
    for i, x in enumerate(inputs):
        if i not in check:
            if _is_array(x) and not _is_float_array(x) and grads[i] is not None:
                raise GradcheckError(
                    f"gradcheck({op_name}): non-floating input '{names[i]}' must get a None "
                    f"gradient, got an array"
                )
            continue
        if grads[i] is None:
            raise GradcheckError(f"gradcheck({op_name}): backward returned None for '{names[i]}'")
        ga = to_numpy(grads[i]).astype(np.float64)
        if ga.shape != tuple(x.shape):
            raise GradcheckError(
                f"gradcheck({op_name}): gradient of '{names[i]}' has shape {ga.shape}, "
                f"expected {tuple(x.shape)}"
            )
        x_host = np.array(to_numpy(x), dtype=np.float64)
        dev = device(x)
        n = x_host.size
        if n <= full_jacobian_max:
            mode, directions = "full", [np.eye(1, n, j).reshape(x_host.shape) for j in range(n)]
        else:
            mode, directions = "directions", []
            for _ in range(n_directions):
                v = rng.standard_normal(x_host.shape)
                directions.append(v / np.linalg.norm(v))
        worst_abs, worst_rel, ok = 0.0, 0.0, True
        for v in directions:
            args = list(inputs)
            args[i] = to_namespace(x_host + eps * v, xp, dev)
            lp = loss(args)
            args[i] = to_namespace(x_host - eps * v, xp, dev)
            lm = loss(args)
            numerical = (lp - lm) / (2 * eps)
            analytical = float(np.sum(ga * v))
            err = abs(numerical - analytical)
            rel = err / max(abs(numerical), 1e-300)
            worst_abs = err if np.isnan(err) else max(worst_abs, err)  # NaN sticks
            worst_rel = rel if np.isnan(rel) else max(worst_rel, rel)
            if not err <= atol + rtol * abs(numerical):  # "not <=" also catches NaN
                ok = False
        result.inputs.append(InputCheck(names[i], mode, len(directions), worst_abs, worst_rel, ok))
    if raise_exception and not result.ok:
        raise GradcheckError(str(result))
    return result


_DEFAULT_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}


def _dtype_name(x: Array) -> str:
    return str(x.dtype).rpartition(".")[2].removeprefix("dtype(").strip("')")


def assert_close(
    actual: Array,
    desired: Array,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    check_namespace: bool = True,
    check_dtype: bool = True,
    check_device: bool = True,
    equal_nan: bool = True,
    msg: str = "",
) -> None:
    """Assert that two arrays are close, and of the same library, dtype, shape and device.

    Tolerances default by dtype to torch.testing's (float32: ``rtol=1.3e-6, atol=1e-5``;
    float64: ``rtol=1e-7, atol=1e-7``); integers and booleans must match exactly. Pass
    ``check_namespace=False`` to compare a backend's result with NumPy's (the device check
    then only applies within one library).
    """
    prefix = f"{msg}: " if msg else ""
    lib_a, lib_d = library_name(actual), library_name(desired)
    if check_namespace and lib_a != lib_d:
        raise AssertionError(f"{prefix}namespace differs: actual is {lib_a}, desired is {lib_d}")
    if tuple(actual.shape) != tuple(desired.shape):
        raise AssertionError(
            f"{prefix}shape differs: actual {tuple(actual.shape)}, desired {tuple(desired.shape)}"
        )
    name_a, name_d = _dtype_name(actual), _dtype_name(desired)
    if check_dtype and name_a != name_d:
        raise AssertionError(f"{prefix}dtype differs: actual {name_a}, desired {name_d}")
    if check_device and lib_a == lib_d and device(actual) != device(desired):
        raise AssertionError(
            f"{prefix}device differs: actual {device(actual)}, desired {device(desired)}"
        )
    a, d = to_numpy(actual), to_numpy(desired)
    default_rtol, default_atol = _DEFAULT_TOLERANCES.get(name_a, (0.0, 0.0))
    np.testing.assert_allclose(
        a,
        d,
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
        equal_nan=equal_nan,
        err_msg=msg,
    )
