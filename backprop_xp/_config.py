"""Settings that are not an argument of one op call: the class-index range check and the
convolutions' im2col workspace budget.

Each is a :class:`contextvars.ContextVar`, so it is local to the thread (or asyncio task)
that sets it: ``with index_checks(False):`` in one thread never switches the check off in
another, and a workspace budget set in one thread never changes the chunking (and so the
rounding) of another thread's convolutions. A new thread starts from the process default:
index checks on, the per-device default workspace budget.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "conv_workspace_bytes",
    "get_workspace_bytes_override",
    "index_checks",
    "index_checks_enabled",
    "set_index_checks",
    "set_workspace_bytes_override",
]

_CHECK_INDICES: ContextVar[bool] = ContextVar("backprop_xp_index_checks", default=True)
_WORKSPACE_BYTES: ContextVar[int | None] = ContextVar("backprop_xp_workspace", default=None)


def _flag(who: str, enabled: object) -> bool:
    if isinstance(enabled, bool) or type(enabled).__name__ in ("bool_", "bool"):
        return bool(enabled)
    raise TypeError(f"{who}: argument 'enabled' expected a bool, got {enabled!r}")


def set_index_checks(enabled: bool) -> None:
    """Turn the class-index range check of the losses (and the ``lengths`` check of the
    recurrent ops, and the index check of ``embedding``) on or off in the current thread or
    task; on by default.

    The check costs one device-to-host synchronization per call; switch it off in tight GPU
    loops once the data pipeline is trusted. Out-of-range indices then give undefined values.
    Other threads keep their own setting (a new thread starts with the check on); prefer the
    ``with index_checks(False):`` form, which restores the previous setting on exit.
    """
    _CHECK_INDICES.set(_flag("set_index_checks", enabled))


def index_checks_enabled() -> bool:
    """Whether the index checks run in the current thread or task."""
    return _CHECK_INDICES.get()


@contextmanager
def index_checks(enabled: bool) -> Iterator[None]:
    """``with index_checks(False):`` — :func:`set_index_checks` for the block only, in this
    thread or task only."""
    token = _CHECK_INDICES.set(_flag("index_checks", enabled))
    try:
        yield
    finally:
        _CHECK_INDICES.reset(token)


def _nbytes(who: str, nbytes: object) -> int | None:
    if nbytes is None:
        return None
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
        raise TypeError(f"{who}: argument 'nbytes' expected a positive int or None, got {nbytes!r}")
    if nbytes < 1:
        raise ValueError(
            f"{who}: argument 'nbytes' expected a positive int or None, got {nbytes!r}"
        )
    return int(nbytes)


def set_workspace_bytes_override(nbytes: int | None) -> None:
    """The conv workspace budget of the current thread or task (None: the device defaults)."""
    _WORKSPACE_BYTES.set(_nbytes("set_conv_workspace_bytes", nbytes))


def get_workspace_bytes_override() -> int | None:
    return _WORKSPACE_BYTES.get()


@contextmanager
def conv_workspace_bytes(nbytes: int | None) -> Iterator[None]:
    """``with conv_workspace_bytes(n):`` — the convolutions' im2col budget for the block only,
    in this thread or task only (``None``: the per-device defaults)."""
    token = _WORKSPACE_BYTES.set(_nbytes("conv_workspace_bytes", nbytes))
    try:
        yield
    finally:
        _WORKSPACE_BYTES.reset(token)
