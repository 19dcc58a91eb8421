"""Global switches. Kept tiny: most behaviour is an argument of the op that uses it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_state = {"check_indices": True}


def set_index_checks(enabled: bool) -> None:
    """Turn the class-index range check of the losses on or off (on by default).

    The check costs one device-to-host synchronization per call; switch it off in tight GPU
    loops once the data pipeline is trusted. Out-of-range indices then give undefined values.
    """
    _state["check_indices"] = bool(enabled)


def index_checks_enabled() -> bool:
    return _state["check_indices"]


@contextmanager
def index_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_index_checks`."""
    previous = _state["check_indices"]
    _state["check_indices"] = bool(enabled)
    try:
        yield
    finally:
        _state["check_indices"] = previous
