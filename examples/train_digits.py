"""Train a small MLP, CNN or RNN on scikit-learn's 8×8 digits with backprop_xp.

    python examples/train_digits.py                       # CNN on NumPy
    python examples/train_digits.py --model rnn --backend torch
    python examples/train_digits.py --model mlp --backend cupy   # on a CUDA machine

The data (1797 images bundled with scikit-learn, no download) is split once, stratified, into
1437 training and 360 test images (the split does not depend on ``--seed``). Training prints a
progress bar with the running loss and accuracy; the last line is ``test accuracy: 0.XXXX``.
``--out`` receives ``curves.png`` (loss and accuracy per epoch) and ``model.safetensors``.

Everything after loading the data runs on the chosen backend: the data is moved there once,
batches are gathered there, and only the running loss and accuracy are read back (every few
steps, for the progress bar).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from digits_models import build  # examples/ is on sys.path when this file is run

import backprop_xp
from backprop_xp import nn, optim
from backprop_xp.backend import default_device, device, namespace, to_namespace

# Defaults per model: epochs, learning rate (Adam), batch size.
DEFAULTS = {
    "mlp": {"epochs": 30, "lr": 3e-3, "batch_size": 32},
    "cnn": {"epochs": 20, "lr": 3e-3, "batch_size": 32},
    "rnn": {"epochs": 40, "lr": 5e-3, "batch_size": 32},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(DEFAULTS), default="cnn")
    p.add_argument("--backend", default="numpy", help="numpy, torch, cupy, array_api_strict")
    p.add_argument("--device", default=None, help="e.g. cuda:1 (default: the backend's)")
    p.add_argument("--epochs", type=int, default=None, help="default per model")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument("--limit", type=int, default=None, help="use only N training images (smoke)")
    p.add_argument("--out", type=Path, default=None, help="default runs/digits-<model>")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path("runs") / f"digits-{args.model}"
    return args


def load_data(limit: int | None) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=360, stratify=y, random_state=0)
    if limit is not None:
        X_tr, y_tr = X_tr[:limit], y_tr[:limit]
    return X_tr, y_tr, X_te, y_te


def evaluate(model: nn.Module, xp: Any, X: Any, y: Any, batch_size: int = 512) -> float:
    """Accuracy of ``model`` on ``(X, y)`` (one host read at the end)."""
    model.eval()
    correct = xp.asarray(0, dtype=xp.int64, device=device(X))
    for i in range(0, X.shape[0], batch_size):
        j = min(i + batch_size, X.shape[0])  # the Array API leaves out-of-range stops undefined
        logits, _ = model(X[i:j, ...])
        pred = xp.argmax(logits, axis=1)
        correct = correct + xp.sum(xp.astype(pred == y[i:j], xp.int64))
    model.train()
    return int(correct) / X.shape[0]


def train(args: argparse.Namespace) -> dict[str, Any]:
    xp = namespace(args.backend)
    dev = args.device if args.device is not None else default_device(xp)
    X_tr_h, y_tr_h, X_te_h, y_te_h = load_data(args.limit)
    # The data goes to the backend once; batches are gathered there.
    X_tr, y_tr = to_namespace(X_tr_h, xp, dev), to_namespace(y_tr_h, xp, dev)
    X_te, y_te = to_namespace(X_te_h, xp, dev), to_namespace(y_te_h, xp, dev)

    model = build(args.model, args.seed).to(xp, dev)
    criterion = nn.CrossEntropyLoss()
    opt = optim.Adam(model, lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs)
    order_rng = np.random.default_rng(args.seed)
    n = X_tr.shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)

    from tqdm import tqdm

    history: dict[str, list[float]] = {"loss": [], "train_acc": [], "test_acc": []}
    bar = tqdm(
        total=args.epochs * steps_per_epoch,
        disable=args.no_progress,
        unit="step",
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    # Labels come from scikit-learn: skip the per-call class-index check (a host sync).
    with backprop_xp.index_checks(False):
        for epoch in range(args.epochs):
            perm = to_namespace(order_rng.permutation(n), xp, dev)  # one transfer per epoch
            loss_sum = xp.asarray(0.0, dtype=xp.float32, device=dev)
            correct = xp.asarray(0, dtype=xp.int64, device=dev)
            for step in range(steps_per_epoch):
                idx = perm[step * args.batch_size : min((step + 1) * args.batch_size, n)]
                xb, yb = xp.take(X_tr, idx, axis=0), xp.take(y_tr, idx, axis=0)
                logits, backprop = model(xb)
                loss, dloss = criterion(logits, yb)
                backprop(dloss())
                opt.step()
                opt.zero_grad()
                loss_sum = loss_sum + loss * idx.shape[0]
                correct = correct + xp.sum(xp.astype(xp.argmax(logits, axis=1) == yb, xp.int64))
                bar.update(1)
                if step == steps_per_epoch - 1 or step % 10 == 9:
                    seen = min((step + 1) * args.batch_size, n)
                    bar.set_postfix(
                        epoch=epoch + 1,
                        loss=f"{float(loss_sum) / seen:.4f}",
                        acc=f"{int(correct) / seen:.4f}",
                    )
            sched.step()
            history["loss"].append(float(loss_sum) / n)
            history["train_acc"].append(int(correct) / n)
            history["test_acc"].append(evaluate(model, xp, X_te, y_te))
    bar.close()
    seconds = time.perf_counter() - start
    test_acc = history["test_acc"][-1]

    args.out.mkdir(parents=True, exist_ok=True)
    plot(history, args.out / "curves.png", args.model)
    meta = {
        "model": args.model,
        "epochs": str(args.epochs),
        "seed": str(args.seed),
        "test_accuracy": f"{test_acc:.4f}",
        "history": json.dumps(history),
    }
    backprop_xp.save(args.out / "model.safetensors", model, metadata=meta)
    print(f"model {args.model}, backend {args.backend}: {args.epochs} epochs in {seconds:.1f} s")
    print(f"wrote {args.out / 'curves.png'} and {args.out / 'model.safetensors'}")
    print(f"test accuracy: {test_acc:.4f}")
    return {"test_accuracy": test_acc, "seconds": seconds, "history": history}


def plot(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, history["loss"], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title=f"{title}: loss", yscale="log")
    ax2.plot(epochs, history["train_acc"], marker="o", label="train")
    ax2.plot(epochs, history["test_acc"], marker="s", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
