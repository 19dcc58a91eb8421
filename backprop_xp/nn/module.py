"""Parameters, the layer base class and Sequential.

A layer's forward returns its output and a ``backprop`` closure (Thinc's model)::

    y, backprop = layer(x)
    dx = backprop(dy)        # adds into every parameter's .grad, returns the input gradient

Each call builds its own closure holding its own cache, so a layer called twice before the
backward (shared weights, two inputs) gets both gradients added into ``.grad``. A closure
runs once; running it again raises instead of adding the same gradient twice.

As in torch's autograd, the gradient given to a backprop is cast to its output's dtype (a
float64 ``dy`` for a float32 layer gives float32 gradients), so parameters keep their dtype:
the functional backwards do that cast, and ``once(..., like=y)`` does it for backprops that
call none (Identity, Dropout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, NamedTuple

from .. import functional as F
from ..backend import device as device_of
from ..backend import get_namespace, library_name, namespace, to_namespace

__all__ = ["IncompatibleKeys", "Module", "Parameter", "Sequential", "StateDictError"]

Array = Any
Backprop = Callable[..., Any]


class Parameter:
    """A trainable array and its accumulated gradient.

    Attributes
    ----------
    data : array
        The value. Optimizers rebind it (``p.data = p.data - lr * g``), never write in place,
        so immutable arrays work too.
    grad : array or None
        Sum of the gradients of every backprop run since the last ``zero_grad()``.
    requires_grad : bool
        ``False`` freezes the parameter, as torch's flag: :meth:`accumulate` ignores its
        gradients, so ``grad`` stays None and optimizers (which skip parameters without a
        gradient) leave it alone; it stays in ``parameters()`` and ``state_dict()``
        (``Embedding.from_pretrained(..., freeze=True)`` sets it).
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data: Array, requires_grad: bool = True):
        self.data = data
        self.grad: Any = None  # an array or None
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    def accumulate(self, g: Array | None) -> None:
        """Add ``g`` into ``.grad`` (rebinding, so it works on immutable arrays); nothing for
        a frozen parameter (``requires_grad=False``)."""
        if g is None or not self.requires_grad:
            return
        if library_name(g) != library_name(self.data):
            raise RuntimeError(
                f"Parameter: gradient is a {library_name(g)} array but the parameter is a "
                f"{library_name(self.data)} array; was the model moved (.to) between the "
                f"forward and the backward?"
            )
        if tuple(g.shape) != self.shape:
            raise RuntimeError(
                f"Parameter: gradient of shape {tuple(g.shape)} for a parameter of shape "
                f"{self.shape}"
            )
        if g.dtype != self.dtype:
            raise RuntimeError(
                f"Parameter: gradient of dtype {g.dtype} for a parameter of dtype {self.dtype}"
            )
        self.grad = g if self.grad is None else self.grad + g

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        lib = library_name(self.data)
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, lib={lib}{frozen})"


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as torch's: the keys it did not find and the keys it
    did not use (both empty after a strict load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(ValueError):
    """``load_state_dict`` found missing, unexpected or mismatched keys (all listed at once)."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[str],
    ):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"mismatched: {'; '.join(mismatched)}")
        super().__init__("load_state_dict: " + ". ".join(parts))


def once(name: str, fn: Callable[..., Any], like: Array | None = None) -> Backprop:
    """Wrap a backward closure so that a second run raises instead of double-counting.

    With ``like`` (the forward's output), floating-point gradients passed in, alone or in
    tuples, are cast to its dtype first, as torch's autograd casts the gradient given to
    ``backward``. Only its library and dtype are kept, not the array: the closure must not
    keep a layer's output alive after the next layer has consumed it.
    """
    done = False
    target = None
    if like is not None and hasattr(like, "dtype"):
        target = (library_name(like), like.dtype)
    del like

    def backprop(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        if done:
            raise RuntimeError(
                f"{name}: this backprop was already run; run the forward again for a new one"
            )
        done = True
        if target is not None:
            args = tuple(_cast_to(a, *target) for a in args)
            kwargs = {k: _cast_to(v, *target) for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return backprop


def _cast_to(g: Any, lib: str, dtype: Any) -> Any:
    """``g`` (an array, None, or a tuple or list of them) in ``dtype`` where ``g`` is a
    floating array of library ``lib`` (an output without a dtype, a tuple passed through
    Identity say, gives ``once`` no target)."""
    if isinstance(g, (tuple, list)):
        return type(g)(_cast_to(v, lib, dtype) for v in g)
    if g is None or not hasattr(g, "dtype") or g.dtype == dtype:
        return g
    if library_name(g) != lib:
        return g  # the op reports the mixed libraries
    xp = get_namespace(g)
    if xp.isdtype(g.dtype, "real floating") and xp.isdtype(dtype, "real floating"):
        return xp.astype(g, dtype)
    return g


def check_float_dtype(who: str, xp: ModuleType, dtype: Any, names_only: bool = False) -> Any:
    """``dtype`` (a name such as ``"float64"``, or a dtype of ``xp``) as a real floating dtype
    of ``xp``; anything else is a TypeError. ``names_only`` checks only names, whose meaning
    does not depend on the namespace (before the target namespace is known)."""
    if names_only and not isinstance(dtype, str):
        return None
    dt = getattr(xp, dtype, None) if isinstance(dtype, str) else dtype
    ok = dt is not None
    if ok:
        try:
            ok = bool(xp.isdtype(dt, "real floating"))
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise TypeError(
            f"{who}: argument 'dtype' expected a real floating-point dtype, got {dtype!r}"
        )
    return dt


def _dtype_name(dtype: Any) -> str:
    """``"float32"`` for NumPy's ``float32`` in either byte order, torch's ``torch.float32``,
    array-api-strict's ``array_api_strict.float32``."""
    name = getattr(dtype, "name", None)  # NumPy and CuPy dtypes; not byte-order dependent
    if isinstance(name, str):
        return name
    return str(dtype).rpartition(".")[2].removeprefix("dtype(").strip("')")


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, (int, float, complex))


class Module:
    """Base class of layers: named parameters, buffers and children, train/eval, state
    dicts, ``to``.

    Subclasses assign :class:`Parameter` and :class:`Module` attributes in ``__init__`` (they
    are registered in assignment order, which fixes the ``state_dict`` key order), register
    non-trainable arrays with :meth:`register_buffer`, and implement
    ``forward(...) -> (output, backprop)``.
    """

    training: bool
    _parameters: dict[str, Parameter | None]
    _buffers: dict[str, Array | None]
    _non_persistent: set[str]
    _modules: dict[str, Module]

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() first")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            # assigning to a registered buffer replaces the buffer, as in torch
            self._buffers[name] = self._checked_buffer(name, value)
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (``None`` reserves the name, like torch's ``bias=False``)."""
        if param is None:
            self._parameters[name] = None
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor: Array | None, persistent: bool = True) -> None:
        """Register a non-trainable array (running statistics, a loss's class weights).

        Buffers are saved in ``state_dict`` (unless ``persistent=False``) and loaded by
        ``load_state_dict`` under their names, moved and cast by :meth:`to`, and never seen
        by optimizers (they are not parameters). ``None`` reserves the name: such a buffer
        is left out of ``state_dict``, as in torch. Assigning ``self.name = array`` later
        replaces the buffer.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{type(self).__name__}.register_buffer: invalid name {name!r}")
        if name in self._parameters or name in self._modules:
            raise KeyError(
                f"{type(self).__name__}.register_buffer: {name!r} is already a parameter or a "
                f"submodule"
            )
        self._buffers[name] = self._checked_buffer(name, tensor)
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    def _checked_buffer(self, name: str, tensor: Any) -> Any:
        if tensor is not None and not _is_array(tensor):
            raise TypeError(
                f"{type(self).__name__}: buffer '{name}' expected an array or None, got "
                f"{type(tensor).__name__}"
            )
        return tensor

    # -- forward ---------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Backprop]:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, Backprop]:
        return self.forward(*args, **kwargs)

    # -- traversal ---------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(name, parameter)`` pairs with torch's dotted names (``"0.weight"``).

        A parameter shared by several layers comes once, under its first name, unless
        ``remove_duplicate=False`` (as torch).
        """
        seen: set[int] = set()
        for mod_prefix, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Array]]:
        """``(name, array)`` for every buffer that is not None, with torch's dotted names
        (``"0.running_mean"``); a buffer of a shared layer comes once unless
        ``remove_duplicate=False``."""
        seen: set[int] = set()
        for mod_prefix, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is None or (remove_duplicate and id(m) in seen):
                    continue
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), b
            seen.add(id(m))

    def buffers(self) -> Iterator[Array]:
        for _, b in self.named_buffers():
            yield b

    # -- modes and gradients -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``grad = None``, torch's ``set_to_none=True``)."""
        for p in self.parameters():
            p.grad = None

    # -- state -------------------------------------------------------------------------------
    def _state_slots(self) -> Iterator[tuple[str, Module, str, bool]]:
        """``(key, module, attribute, is_parameter)`` for every state_dict entry, in torch's
        order: per module (pre-order), its parameters, then its persistent buffers."""
        for prefix, m in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    yield dot + name, m, name, True
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    yield dot + name, m, name, False

    def state_dict(self) -> dict[str, Array]:
        """Name → array: the parameters' and persistent buffers' current arrays (not copies),
        under torch's names and in its order.

        A parameter shared by several layers appears under each of its names, as in torch.
        """
        out: dict[str, Array] = {}
        for key, m, name, is_param in self._state_slots():
            out[key] = m._parameters[name].data if is_param else m._buffers[name]  # type: ignore[union-attr]
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, Array], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` (any library: NumPy, torch, ...) into the
        parameters and buffers.

        Every value is first checked (an array of the entry's shape and dtype; NumPy arrays
        in either byte order) and converted to its entry's library and device; only when all
        of them succeed is anything assigned, so a failure leaves the model unchanged. Every
        missing, unexpected, mismatched or unconvertible key (a list, an object without a
        dtype, a torch sparse or meta tensor) is reported in one :class:`StateDictError`.
        ``strict=False`` tolerates missing and unexpected keys (the rest still raise).
        Returns the missing and unexpected keys, as torch's ``(missing_keys,
        unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"load_state_dict: argument 'state_dict' expected a mapping of names to "
                f"arrays, got {type(state_dict).__name__}"
            )
        slots = {key: (m, name, is_param) for key, m, name, is_param in self._state_slots()}
        missing = [k for k in slots if k not in state_dict]
        unexpected = [k for k in state_dict if k not in slots]
        mismatched = []
        converted: dict[str, Array] = {}
        for key, (m, name, is_param) in slots.items():
            if key not in state_dict:
                continue
            v = state_dict[key]
            own = m._parameters[name].data if is_param else m._buffers[name]  # type: ignore[union-attr]
            problem = _load_problem(v, own)
            if problem is None:
                try:
                    converted[key] = _converted(v, own)
                except Exception as e:  # meta, sparse, ... tensors: whatever the library says
                    problem = f"cannot be converted to the model's arrays ({type(e).__name__}: {e})"
            if problem is not None:
                mismatched.append(f"{key}: {problem}")
        if mismatched or (strict and (missing or unexpected)):
            raise StateDictError(missing, unexpected, mismatched)
        for key, new in converted.items():
            m, name, is_param = slots[key]
            if is_param:
                m._parameters[name].data = new  # type: ignore[union-attr]
            else:
                setattr(m, name, new)
        return IncompatibleKeys(missing, unexpected)

    def to(
        self,
        backend: str | ModuleType | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> Module:
        """Move every parameter (and gradient) and buffer to ``backend`` (a name or
        namespace) and ``device``; optionally cast floating parameters and buffers to
        ``dtype`` (a name, e.g. ``"float64"``, or a dtype of the target namespace; integer
        buffers such as a step count keep theirs). Returns ``self``.

        The :class:`Parameter` objects stay the same, so an optimizer built before ``to``
        still holds them; its state (momentum buffers) does not move, so build the optimizer
        after moving the model.
        """
        move = backend is not None or device is not None
        target = None
        if backend is not None:
            target = namespace(backend) if isinstance(backend, str) else backend
        if dtype is not None:  # refused before anything moves
            check_float_dtype(
                f"{type(self).__name__}.to", target or namespace("numpy"), dtype, names_only=True
            )
        who = f"{type(self).__name__}.to"
        for p in self.parameters():
            xp = target or get_namespace(p.data)
            if move:
                p.data = to_namespace(p.data, xp, device)
                if p.grad is not None:
                    p.grad = to_namespace(p.grad, xp, device)
            if dtype is not None:
                dt = check_float_dtype(who, xp, dtype)
                p.data = xp.astype(p.data, dt)
                if p.grad is not None:
                    p.grad = xp.astype(p.grad, dt)
        for m in self.modules():
            for name, b in list(m._buffers.items()):
                if b is None:
                    continue
                xp = target or get_namespace(b)
                if move:
                    b = to_namespace(b, xp, device)
                if dtype is not None and xp.isdtype(b.dtype, "real floating"):
                    b = xp.astype(b, check_float_dtype(who, xp, dtype))
                setattr(m, name, b)
        return self

    # -- display -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"


def _load_problem(v: Any, own: Array) -> str | None:
    """Why ``v`` cannot replace ``own`` in ``load_state_dict`` (None when it can)."""
    if not _is_array(v):
        return f"expected an array, got {type(v).__name__}"
    shape = tuple(v.shape)
    if shape != tuple(own.shape):
        return f"shape {shape} in the state dict, {tuple(own.shape)} in the model"
    if _dtype_name(v.dtype) != _dtype_name(own.dtype):
        return (
            f"dtype {_dtype_name(v.dtype)} in the state dict, {_dtype_name(own.dtype)} in the model"
        )
    return None


def _converted(v: Array, own: Array) -> Array:
    """``v`` as a fresh array of ``own``'s library, device and dtype (never a view into the
    caller's or the file's buffer)."""
    xp = get_namespace(own)
    new = xp.asarray(to_namespace(v, xp, device_of(own)), copy=True)
    if new.dtype != own.dtype:  # the same dtype in another byte order
        new = xp.astype(new, own.dtype)
    return new


class OpLayer(Module):
    """A parameter-free layer over one functional op: ``F.<_op>(x, **_options())`` and
    ``F.<_op>_backward``. Subclasses set ``_op`` and, where the op has options, ``_options``."""

    _op: str = ""

    def _options(self) -> dict[str, Any]:
        return {}

    def forward(self, x: Any) -> tuple[Any, Backprop]:
        y, cache = getattr(F, self._op)(x, **self._options())
        backward = getattr(F, self._op + "_backward")

        def backprop(dy: Any) -> Any:
            return backward(dy, cache)[0]

        return y, once(type(self).__name__, backprop)


class Sequential(Module):
    """Layers run in order; the backprop runs their backprops in reverse.

    Children are named ``"0"``, ``"1"``, ... so parameter names match torch's
    ``nn.Sequential`` (``"0.weight"``).
    """

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int | slice) -> Module:
        """The ``i``-th layer; a slice is a Sequential of those layers under their names
        (torch's: ``model[1:3]`` has children ``"1"`` and ``"2"``)."""
        if isinstance(i, slice):
            part = Sequential()
            for name, layer in list(self._modules.items())[i]:
                setattr(part, name, layer)
            return part
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        backprops = []
        for layer in self._modules.values():
            x, bp = layer(x)
            backprops.append(bp)

        def backprop(dy: Array) -> Array:
            for bp in reversed(backprops):
                dy = bp(dy)
            return dy

        return x, once("Sequential", backprop)
