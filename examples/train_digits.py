"""Train a small MLP, CNN, RNN or ResNet on scikit-learn's 8×8 digits with backprop_xp.

    python examples/train_digits.py                       # CNN on NumPy
    python examples/train_digits.py --model rnn --backend torch
    python examples/train_digits.py --model resnet        # residual CNN with batch norm
    python examples/train_digits.py --model mlp --backend cupy   # on a CUDA machine

The data (1797 images bundled with scikit-learn, no download) is split once, stratified, into
1437 training and 360 test images (the split does not depend on ``--seed``). Training prints a
progress bar with the running loss and accuracy; the last line is ``test accuracy: 0.XXXX``,
measured in eval mode (the ResNet's batch norm on its running statistics, which the
checkpoint holds beside the weights).
``--out`` (default ``runs/digits-<model>-<backend>``) receives ``curves.png`` (loss and
accuracy per epoch) and ``model.safetensors``, whose metadata records every setting of the run
(``model``, ``backend``, ``device``, ``epochs``, ``batch_size``, ``lr``, ``seed``, ``limit``,
each as the string the command line takes, and ``command``, the command line that reproduces
the run) beside ``test_accuracy`` and ``history`` (JSON: loss and accuracies per epoch).

Every option is checked before anything is loaded or trained: a bad value (``--batch-size 0``,
``--lr nan``, ``--limit`` beyond the 1437 training images, a backend that is not installed,
a device the backend does not have, an ``--out`` that cannot be written, ...) exits with
status 2 and one line ``train_digits.py: error: argument --NAME: ...`` on stderr.

Everything after loading the data runs on the chosen backend: the data is moved there once,
batches are gathered there, and only the running loss and accuracy are read back (every few
steps, for the progress bar).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from digits_models import build  # examples/ is on sys.path when this file is run

import backprop_xp
from backprop_xp import nn, optim
from backprop_xp.backend import (
    BackendUnavailableError,
    default_device,
    device,
    library_name,
    namespace,
    to_namespace,
)

# Defaults per model: epochs, learning rate (Adam), batch size.
DEFAULTS = {
    "mlp": {"epochs": 30, "lr": 3e-3, "batch_size": 32},
    "cnn": {"epochs": 20, "lr": 3e-3, "batch_size": 32},
    "rnn": {"epochs": 40, "lr": 5e-3, "batch_size": 32},
    "resnet": {"epochs": 10, "lr": 3e-3, "batch_size": 32},
}


TEST_SIZE = 360  # of the 1797 images
TRAIN_SIZE = 1797 - TEST_SIZE
SETTINGS = ("model", "backend", "device", "epochs", "batch_size", "lr", "seed", "limit")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int) -> Any:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return check


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def device_label(dev: Any) -> str:
    """A device as ``--device`` takes it: ``cpu``, ``cuda:1``, ``CPU_DEVICE``, ..."""
    if isinstance(getattr(dev, "id", None), int):  # CuPy's Device prints as <CUDA Device 0>
        return f"cuda:{dev.id}"
    m = re.fullmatch(r"\w+\.Device\('(.*)'\)", str(dev))  # array_api_strict.Device('...')
    return m.group(1) if m else str(dev)


def _devices(xp: Any) -> list[Any]:
    """The devices of ``xp`` by the Array API's inspection API (empty where it has none)."""
    try:
        with warnings.catch_warnings():  # torch warns about device types it probes
            warnings.simplefilter("ignore")
            return list(xp.__array_namespace_info__().devices())
    except Exception:
        return []


def resolve_device(xp: Any, name: str | None) -> Any:
    """The device of namespace ``xp`` that ``name`` (a ``--device`` value) names, checked by
    making a one-element array there; the backend's default device for None.

    Raises
    ------
    ValueError
        The backend has no such device here.
    """
    if name is None:
        return default_device(xp)
    devices = _devices(xp)
    for candidate in [name, *(d for d in devices if name in (str(d), device_label(d)))]:
        try:
            xp.asarray([0.0], device=candidate)
        except Exception:
            continue
        return candidate
    known = ", ".join(dict.fromkeys(device_label(d) for d in devices)) or "unknown"
    raise ValueError(f"no device {name!r} here (its devices: {known})")


def _out_problem(out: Path) -> str | None:
    """Why ``out`` cannot receive the run's files, or None; checked without writing."""
    for name in ("curves.png", "model.safetensors"):
        if (out / name).is_dir():
            return f"{out / name} is a folder, where the run writes a file"
    if out.exists():
        if not out.is_dir():
            return f"{out} exists and is not a folder"
        if not os.access(out, os.W_OK | os.X_OK):
            return f"the folder {out} is not writable"
        return None
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {out}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {out}: the folder {parent} is not writable"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; a bad value exits with status 2 (one line on
    stderr) before anything is loaded. ``backend`` comes back as the library's name and
    ``device`` as the label of the device the run uses."""
    p = _Parser(prog="train_digits.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(DEFAULTS), default="cnn")
    p.add_argument("--backend", default="numpy", help="numpy, torch, cupy, array_api_strict")
    p.add_argument("--device", default=None, help="e.g. cuda:1 (default: the backend's)")
    p.add_argument("--epochs", type=_int_at_least(1), default=None, help="default per model")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None, help="default 32")
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate")
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, help="initial weights and batch order"
    )
    p.add_argument(
        "--limit",
        type=_int_at_least(1),
        default=None,
        help=f"use only the first N of the {TRAIN_SIZE} training images (smoke runs)",
    )
    p.add_argument("--out", type=Path, default=None, help="default runs/digits-<model>-<backend>")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.limit is not None and args.limit > TRAIN_SIZE:
        p.error(
            f"argument --limit: expected at most the {TRAIN_SIZE} training images, got {args.limit}"
        )
    try:
        xp = namespace(args.backend)
    except (ValueError, BackendUnavailableError) as e:
        p.error(f"argument --backend: {str(e).removeprefix('namespace: ')}")
    args.backend = library_name(xp.asarray(0))  # "np" -> "numpy", "pytorch" -> "torch"
    try:
        args.device = device_label(resolve_device(xp, args.device))
    except ValueError as e:
        p.error(f"argument --device: backend {args.backend!r} has {e}")
    if args.out is None:
        args.out = Path("runs") / f"digits-{args.model}-{args.backend}"
    problem = _out_problem(args.out)
    if problem:
        p.error(f"argument --out: {problem}")
    return args


def settings(args: argparse.Namespace) -> dict[str, str]:
    """Every setting of a run as the string its option takes, plus ``command``, the command
    line that reproduces it (the checkpoint's metadata)."""
    limit = TRAIN_SIZE if args.limit is None else args.limit  # the same images
    values = {k: getattr(args, k) for k in SETTINGS} | {"limit": limit}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in meta.items()]
    meta["command"] = shlex.join(["python", "examples/train_digits.py", *argv])
    return meta


def load_data(limit: int | None) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=TEST_SIZE, stratify=y, random_state=0)
    assert X_tr.shape[0] == TRAIN_SIZE
    if limit is not None:
        X_tr, y_tr = X_tr[:limit], y_tr[:limit]
    return X_tr, y_tr, X_te, y_te


def evaluate(model: nn.Module, xp: Any, X: Any, y: Any, batch_size: int = 512) -> float:
    """Accuracy of ``model`` on ``(X, y)`` in eval mode (dropout off, batch norm on its
    running statistics, which these forwards leave alone), one host read at the end; the
    model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct = xp.asarray(0, dtype=xp.int64, device=device(X))
    for i in range(0, X.shape[0], batch_size):
        j = min(i + batch_size, X.shape[0])  # the Array API leaves out-of-range stops undefined
        logits, _ = model(X[i:j, ...])
        pred = xp.argmax(logits, axis=1)
        correct = correct + xp.sum(xp.astype(pred == y[i:j], xp.int64))
    model.train(was_training)
    return int(correct) / X.shape[0]


def train(args: argparse.Namespace) -> dict[str, Any]:
    xp = namespace(args.backend)
    dev = resolve_device(xp, args.device)
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
    meta = settings(args) | {
        "test_accuracy": f"{test_acc:.4f}",
        "history": json.dumps(history),
    }
    backprop_xp.save(args.out / "model.safetensors", model, metadata=meta)
    print(
        f"model {args.model}, backend {args.backend} ({args.device}): {args.epochs} epochs "
        f"in {seconds:.1f} s"
    )
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
