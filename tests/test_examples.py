"""Smoke runs of every example (small --epochs/--limit), part of the default test run, and the
digits models against their torch twins."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import to_np

import backprop_xp
from backprop_xp import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return lambda name: importlib.import_module(name)


def test_train_digits_cli(tmp_path):
    """The command line as the README runs it (CNN, NumPy), shortened."""
    out = tmp_path / "cnn"
    args = ["--epochs", "1", "--limit", "300", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", last), last
    assert "step" in proc.stderr  # the tqdm progress bar
    assert (out / "curves.png").stat().st_size > 1000
    meta = backprop_xp.checkpoint.read_metadata(out / "model.safetensors")
    assert meta["model"] == "cnn"
    state = backprop_xp.load(out / "model.safetensors")
    assert "net.0.weight" in state and state["net.0.weight"].shape == (16, 1, 3, 3)


@pytest.mark.parametrize(
    ("model", "backend"),
    [("mlp", "numpy"), ("rnn", "numpy"), ("mlp", "torch"), ("cnn", "array_api_strict")],
)
def test_train_digits_models(example, tmp_path, capsys, model, backend):
    if backend != "numpy":
        pytest.importorskip(backend)
    train_digits = example("train_digits")
    result = train_digits.train(
        train_digits.parse_args(
            ["--model", model, "--backend", backend, "--epochs", "2", "--limit", "300",
             "--no-progress", "--out", str(tmp_path)]
        )
    )  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")
    losses = result["history"]["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]  # learning, even from 300 images
    assert (tmp_path / "model.safetensors").exists()


def test_digits_models_match_torch_architectures(example):
    torch = pytest.importorskip("torch")
    import numpy as np

    models = example("digits_models")
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    for name in ("mlp", "cnn", "rnn", "resnet"):
        ours, theirs = models.build(name, 0), models.build_torch(name)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        with torch.no_grad():
            ref = theirs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours(x)[0], ref, rtol=1e-4, atol=1e-5, err_msg=name)


def test_sigmoid_vs_softmax(example, capsys):
    example("sigmoid_vs_softmax").main([])
    assert "equal to float64 rounding" in capsys.readouterr().out


def test_vanishing_gradients(example, tmp_path, capsys):
    mod = example("vanishing_gradients")
    mod.main(["--steps", "30", "--out", str(tmp_path)])
    assert (tmp_path / "gradient_norms.png").stat().st_size > 1000
    norms = mod.gradient_norms(T=30)
    rnn, lstm = norms["RNN (tanh)"], norms["LSTM, forget bias 1"]
    assert rnn[-1] / rnn[0] < lstm[-1] / lstm[0]  # the RNN's gradient fades faster


def test_custom_op(example, capsys):
    example("custom_op").main([])
    out = capsys.readouterr().out
    assert "gradcheck(swish): ok" in out and "buggy backward is caught" in out


@pytest.mark.parametrize(
    ("model", "target"), [("cnn", 0.97), ("mlp", 0.96), ("rnn", 0.93), ("resnet", 0.98)]
)
def test_train_digits_defaults_reach_the_target_accuracy(example, tmp_path, model, target):
    """The README's bar: each model, default settings, NumPy, on the fixed test split."""
    train_digits = example("train_digits")
    args = train_digits.parse_args(["--model", model, "--no-progress", "--out", str(tmp_path)])
    result = train_digits.train(args)
    assert result["test_accuracy"] >= target, result["test_accuracy"]


@pytest.mark.parametrize("backend", ["numpy", "torch", "array_api_strict"])
def test_train_digits_resnet_checkpoint_holds_the_batch_norm_statistics(
    example, tmp_path, capsys, backend
):
    """A one-epoch ResNet run: the checkpoint holds the running statistics its eval-mode test
    accuracy used, and loads into the torch twin with the same eval-mode logits."""
    if backend != "numpy":
        pytest.importorskip(backend)
    torch = pytest.importorskip("torch")
    train_digits, models = example("train_digits"), example("digits_models")
    args = train_digits.parse_args(
        ["--model", "resnet", "--backend", backend, "--epochs", "1", "--limit", "64",
         "--no-progress", "--out", str(tmp_path)]
    )  # fmt: skip
    result = train_digits.train(args)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")
    path = tmp_path / "model.safetensors"
    state = backprop_xp.load(path)
    assert sorted(state) == sorted(models.build_torch("resnet").state_dict())
    assert int(state["blocks.1.downsample.1.num_batches_tracked"]) == 2  # 64 images, 32 a batch
    assert not np.array_equal(state["stem.1.running_mean"], np.zeros(16, np.float32))

    _, _, X_te, y_te = train_digits.load_data(None)
    xp = backprop_xp.backend.namespace(backend)
    again = models.build("resnet", 1).to(xp)  # other initial weights: all of it is loaded
    again.load_state_dict(backprop_xp.load(path, backend=backend))
    acc = train_digits.evaluate(again, xp, xp.asarray(X_te), xp.asarray(y_te))
    assert acc == result["test_accuracy"]

    ours = models.build("resnet", 1)
    ours.load_state_dict(state)
    ours.eval()
    theirs = models.build_torch("resnet")
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    theirs.eval()
    with torch.no_grad():
        ref = theirs(torch.from_numpy(X_te)).numpy()
    np.testing.assert_allclose(ours(X_te)[0], ref, rtol=1e-4, atol=1e-4)


def test_evaluate_runs_in_eval_mode_and_restores_the_mode(example):
    train_digits, models = example("train_digits"), example("digits_models")
    rng = np.random.default_rng(0)
    xp = backprop_xp.backend.namespace("numpy")
    model = models.build("resnet", 0)
    model.load_state_dict(
        {k: v + rng.random(v.shape, dtype=np.float32) if "running" in k else v
         for k, v in model.state_dict().items()}
    )  # fmt: skip
    x = rng.random((20, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.eval()
    want = np.mean(np.argmax(model(x)[0], axis=1) == y)
    for mode in (True, False):
        model.train(mode)
        assert train_digits.evaluate(model, xp, x, y, batch_size=8) == want
        assert model.training is mode and all(m.training is mode for m in model.modules())
        for k, v in model.state_dict().items():  # running statistics untouched
            np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_resnet_matches_its_torch_twin_in_train_and_eval(example, xp, rng):
    """Same state dict (perturbed batch-norm parameters and statistics), same input: the
    logits, the input gradient, every parameter gradient of a cross-entropy loss and the
    updated running statistics in training; the logits in evaluation. float64, ours on every
    backend."""
    torch = pytest.importorskip("torch")
    models = example("digits_models")
    ours = models.build("resnet", 0).to(xp._xp, xp.device, dtype="float64")
    theirs = models.build_torch("resnet").double()
    host = {k: np.asarray(to_np(v)) for k, v in ours.state_dict().items()}
    for k, v in host.items():
        if k.endswith(("running_var", "running_mean")) or (".1." in k and "weight" in k):
            host[k] = v + 0.5 * rng.random(v.shape)  # BN scale and statistics, not 0 or 1
        elif k.endswith("bias"):
            host[k] = v + 0.1 * rng.standard_normal(v.shape)
    ours.load_state_dict(host)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in host.items()})
    tol = {"rtol": 1e-9, "atol": 1e-11}
    for training in (True, True, False):
        ours.train(training)
        theirs.train(training)
        x = rng.random((6, 8, 8))
        y = rng.integers(0, 10, 6)
        logits, backprop = ours(xp.asarray(x))
        loss, dloss = nn.CrossEntropyLoss()(logits, xp.asarray(y))
        dx = backprop(dloss())
        xt = torch.tensor(x, requires_grad=True)
        lt = theirs(xt)
        loss_t = torch.nn.functional.cross_entropy(lt, torch.from_numpy(y))
        loss_t.backward()
        np.testing.assert_allclose(to_np(logits), lt.detach().numpy(), **tol)
        np.testing.assert_allclose(to_np(loss), loss_t.item(), **tol)
        np.testing.assert_allclose(to_np(dx), xt.grad.numpy(), **tol)
        grads = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(to_np(p.grad), grads[name].grad.numpy(), **tol, err_msg=name)
        state = theirs.state_dict()
        for k, v in ours.state_dict().items():  # the running statistics after the forward
            np.testing.assert_allclose(to_np(v), state[k].numpy(), **tol, err_msg=k)
        ours.zero_grad()
        theirs.zero_grad()
