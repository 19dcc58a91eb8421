"""backprop_xp: neural-network ops with readable, hand-written backward passes that run on
NumPy, CuPy, PyTorch and array-api-strict alike."""

from . import backend, functional, testing
from ._config import index_checks, set_index_checks
from .checkpoint import load, save

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backend",
    "functional",
    "index_checks",
    "load",
    "save",
    "set_index_checks",
    "testing",
]
