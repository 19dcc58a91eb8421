"""Layers that own named parameters and their gradients, built on :mod:`backprop_xp.functional`.

A layer's forward returns its output and a closure that runs the backward (Thinc's model)::

    from backprop_xp import nn

    model = nn.Sequential(nn.Linear(64, 32, rng=0), nn.ReLU(), nn.Linear(32, 10, rng=1))
    criterion = nn.CrossEntropyLoss()
    logits, backprop = model(x)
    loss, dloss = criterion(logits, y)
    backprop(dloss())        # adds into every parameter's .grad, returns dL/dx

Parameter names and layouts are torch's (``"0.weight"``, ``weight_hh_l0_reverse``), so
``state_dict`` / ``load_state_dict`` exchange weights with torch models.
"""

from .attention import *  # noqa: F403
from .attention import __all__ as _attention_all
from .conv import *  # noqa: F403
from .conv import __all__ as _conv_all
from .init import manual_seed
from .layers import *  # noqa: F403
from .layers import __all__ as _layers_all
from .loss import *  # noqa: F403
from .loss import __all__ as _loss_all
from .module import IncompatibleKeys, Module, Parameter, Sequential, StateDictError
from .normalization import *  # noqa: F403
from .normalization import __all__ as _normalization_all
from .recurrent import *  # noqa: F403
from .recurrent import __all__ as _recurrent_all

__all__ = [
    "IncompatibleKeys",
    "Module",
    "Parameter",
    "Sequential",
    "StateDictError",
    "manual_seed",
    *_attention_all,
    *_conv_all,
    *_layers_all,
    *_loss_all,
    *_normalization_all,
    *_recurrent_all,
]
