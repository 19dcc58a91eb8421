"""Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedules.

Formulas are torch's; all the math is Array API operations on the parameters' own arrays::

    opt = optim.Adam(model, lr=1e-3)
    for x, y in batches:
        logits, backprop = model(x)
        loss, dloss = criterion(logits, y)
        backprop(dloss())
        optim.clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad()
"""

from .clip import clip_grad_norm
from .lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRScheduler",
    "Optimizer",
    "StepLR",
    "clip_grad_norm",
]
