"""Model family: one training step of the digits CNN and of the digits ResNet
(examples/digits_models.py) against the same model in torch.

A step is forward, cross-entropy, backward, Adam update, gradients cleared, on the same batch
(64 images of 8×8), the same initial weights, the same dtype and device; both models in
training mode (the ResNet's batch norm on batch statistics, its running statistics updated
every step on both sides). Targets (``ms ours / ms torch``): 1.5 on CPU, 2.5 on GPU.

    python benchmarks/bench.py --backend numpy --model cnn
    python benchmarks/bench.py --backend numpy --model resnet
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _harness import Case, Context

FAMILY = "model"
_EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")


def cases(ctx: Context) -> list[Case]:
    if _EXAMPLES not in sys.path:
        sys.path.insert(0, _EXAMPLES)
    try:
        from digits_models import build, build_torch
    except ImportError as e:  # pragma: no cover
        print(f"cases_model: examples/digits_models.py unavailable ({e}); skipped", file=sys.stderr)
        return []
    batch = 8 if ctx.quick else 64
    return [
        _train_step(ctx, build, build_torch, "cnn", "digits CNN", batch),
        _train_step(ctx, build, build_torch, "resnet", "digits ResNet (BN)", batch),
    ]


def _train_step(
    ctx: Context, build: Any, build_torch: Any, name: str, label: str, batch: int
) -> Case:
    import backprop_xp
    from backprop_xp import nn, optim

    torch = ctx.torch
    model = build(name, 0)
    host_state = {k: v.copy() for k, v in model.state_dict().items()}
    model.to(ctx.xp, ctx.device, dtype=ctx.dtype)
    t_model = build_torch(name).to(device=ctx.torch_device, dtype=getattr(torch, ctx.dtype))
    t_model.load_state_dict({k: torch.from_numpy(v) for k, v in host_state.items()})

    x = ctx.rng.random((batch, 8, 8))
    y = ctx.rng.integers(0, 10, size=batch, dtype="int64")
    x_o, y_o = ctx.ours(x), ctx.ours(y)
    x_t, y_t = ctx.theirs(x), ctx.theirs(y)

    criterion = nn.CrossEntropyLoss()
    opt = optim.Adam(model, lr=1e-3)
    t_opt = torch.optim.Adam(t_model.parameters(), lr=1e-3)
    t_criterion = torch.nn.CrossEntropyLoss()

    def ours() -> Any:
        # a training loop with trusted labels switches the index check (a host sync) off
        with backprop_xp.index_checks(False):
            logits, backprop = model(x_o)
            loss, dloss = criterion(logits, y_o)
            backprop(dloss())
        opt.step()
        opt.zero_grad()
        return loss

    def theirs() -> Any:
        loss = t_criterion(t_model(x_t), y_t)
        loss.backward()
        t_opt.step()
        t_opt.zero_grad(set_to_none=True)
        return loss

    return Case(
        f"{name}_train_step",
        FAMILY,
        f"{label}, batch {batch}, Adam",
        ours,
        theirs,
        target_cpu=1.5,
        target_gpu=2.5,
    )
