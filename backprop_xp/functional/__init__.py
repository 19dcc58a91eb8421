"""Neural-network ops with hand-written backward passes, on any Array API namespace.

Every op follows one protocol::

    out, cache = F.op(*inputs, **options)
    grads = F.op_backward(grad_out, cache)   # one entry per array input, None where none

Names, argument names, layouts and defaults follow ``torch.nn.functional`` (``axis`` where
torch says ``dim``).
"""

from .activations import *  # noqa: F403
from .activations import __all__ as _activations_all
from .attention import *  # noqa: F403
from .attention import __all__ as _attention_all
from .conv import *  # noqa: F403
from .conv import __all__ as _conv_all
from .dropout import *  # noqa: F403
from .dropout import __all__ as _dropout_all
from .embedding import *  # noqa: F403
from .embedding import __all__ as _embedding_all
from .linear import *  # noqa: F403
from .linear import __all__ as _linear_all
from .losses import *  # noqa: F403
from .losses import __all__ as _losses_all
from .normalization import *  # noqa: F403
from .normalization import __all__ as _normalization_all
from .pooling import *  # noqa: F403
from .pooling import __all__ as _pooling_all
from .recurrent import *  # noqa: F403
from .recurrent import __all__ as _recurrent_all
from .softmax import *  # noqa: F403
from .softmax import __all__ as _softmax_all

__all__ = [
    *_activations_all,
    *_attention_all,
    *_conv_all,
    *_dropout_all,
    *_embedding_all,
    *_linear_all,
    *_losses_all,
    *_normalization_all,
    *_pooling_all,
    *_recurrent_all,
    *_softmax_all,
]
