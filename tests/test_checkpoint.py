"""backprop_xp.save / backprop_xp.load: round trips, hostile files, torch interop."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import to_np

import backprop_xp
from backprop_xp import nn
from backprop_xp.backend import library_name
from backprop_xp.checkpoint import CheckpointError, read_metadata


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8, rng=0), nn.Tanh(), nn.Linear(8, 3, rng=1))


def test_round_trip_is_bit_exact(tmp_path, rng):
    state = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": np.array([np.nan, -0.0, np.inf, 1e-310]),
        "f16": rng.standard_normal(5).astype(np.float16),
        "i64": rng.integers(-(2**62), 2**62, size=(2, 2)),
        "u8": np.arange(7, dtype=np.uint8),
        "b": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(2.5, dtype=np.float32),
        "strided": rng.standard_normal((4, 6))[::2, ::3],
    }
    path = tmp_path / "x.safetensors"
    backprop_xp.save(path, state, metadata={"note": "hello", "epoch": "3"})
    loaded = backprop_xp.load(path)
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        assert loaded[k].tobytes() == v.tobytes(), k
        assert loaded[k].flags.writeable
    assert read_metadata(path) == {"note": "hello", "epoch": "3"}
    # the file is standard safetensors
    from safetensors.numpy import load_file

    assert set(load_file(str(path))) == set(state)


def test_model_round_trip_on_every_backend(xp, tmp_path):
    model = _model().to(xp._xp, xp.device)
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, model)
    state = backprop_xp.load(path, backend=xp._xp, device=xp.device)
    for k, v in model.state_dict().items():
        assert library_name(state[k]) == library_name(v)
        np.testing.assert_array_equal(to_np(state[k]), to_np(v))
    fresh = nn.Sequential(nn.Linear(4, 8, rng=5), nn.Tanh(), nn.Linear(8, 3, rng=6))
    fresh.to(xp._xp, xp.device).load_state_dict(state)
    x = xp.asarray(np.ones((2, 4)), dtype=xp.float32)
    np.testing.assert_array_equal(to_np(fresh(x)[0]), to_np(model(x)[0]))
    assert backprop_xp.load(path, backend="numpy")["0.weight"].dtype == np.float32


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="str to str"):
        backprop_xp.save(tmp_path / "a", _model(), metadata={"epoch": 3})
    with pytest.raises(TypeError, match="Module or a mapping"):
        backprop_xp.save(tmp_path / "a", [np.zeros(2)])
    with pytest.raises(TypeError, match="unsupported dtype"):
        backprop_xp.save(tmp_path / "a", {"c": np.zeros(2, dtype=np.complex64)})
    assert not list(tmp_path.iterdir())  # no partial files left behind


def _file(header: object, data: bytes = b"", raw_len: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if raw_len is None else raw_len
    return struct.pack("<Q", n) + h + data


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
HOSTILE = [
    (b"", "truncated"),
    (b"\x01\x02", "truncated"),
    (_file(b"{}", raw_len=2**63), "exceeds"),
    (_file(b"{}", raw_len=1000), "truncated"),
    (_file(b"\xff\xfe{"), "not valid JSON"),
    (_file(b"{'w': 1}"), "not valid JSON"),
    (_file([1, 2]), "not an object"),
    (_file({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "expected keys"),
    (_file({"w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "dtype"),
    (_file({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)), "shape"),
    (_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)), "outside"),
    (_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)), "outside"),
    (_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)), "need 8"),
    (_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}}, bytes(8)), "offsets"),
    (_file({**GOOD, "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)), "overlap"),
    (_file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "before"),
    (_file(GOOD, bytes(12)), "after the last"),
    (_file({**GOOD, "__metadata__": {"a": 1}}, bytes(8)), "__metadata__"),
    (_file({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)), "need"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "problem"), HOSTILE)
def test_hostile_files_give_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as info:
        backprop_xp.load(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_truncation_anywhere_is_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, _model())
    data = path.read_bytes()
    for cut in sorted({0, 4, 8, 20, len(data) // 2, len(data) - 1}):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            backprop_xp.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot be read"):
        backprop_xp.load(tmp_path / "nope.safetensors")


def test_no_pickle_in_the_package():
    root = Path(backprop_xp.__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert "import pickle" not in text and "torch.load" not in text, f


def test_load_state_dict_from_checkpoint_reports_mismatches(tmp_path):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, _model())
    other = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Linear(3, 3))
    with pytest.raises(nn.StateDictError) as info:
        other.load_state_dict(backprop_xp.load(path))
    assert info.value.missing == ["3.weight", "3.bias"]
    assert sorted(m.split(":")[0] for m in info.value.mismatched) == [
        "0.bias",
        "0.weight",
        "2.weight",
    ]


def test_torch_interop(tmp_path, rng):
    torch = pytest.importorskip("torch")
    t_model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)
    )
    t_lstm = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    ours = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    seq = rng.standard_normal((5, 2, 4)).astype(np.float32)
    # torch -> file -> ours
    for t, m in ((t_model, ours), (t_lstm, lstm)):
        backprop_xp.save(
            tmp_path / "t.safetensors", {k: v.numpy() for k, v in t.state_dict().items()}
        )
        m.load_state_dict(backprop_xp.load(tmp_path / "t.safetensors"))
    with torch.no_grad():
        ref = t_model(torch.from_numpy(x)).numpy()
        ref_seq = t_lstm(torch.from_numpy(seq))[0].numpy()
    np.testing.assert_allclose(ours(x)[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lstm(seq)[0][0], ref_seq, rtol=1e-5, atol=1e-6)
    # ours -> file -> torch
    ours2 = nn.Sequential(nn.Conv2d(2, 3, 3, rng=9), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5))
    backprop_xp.save(tmp_path / "o.safetensors", ours2)
    loaded = backprop_xp.load(tmp_path / "o.safetensors", backend="torch")
    t_model.load_state_dict(loaded)
    with torch.no_grad():
        np.testing.assert_allclose(
            t_model(torch.from_numpy(x)).numpy(), ours2(x)[0], rtol=1e-5, atol=1e-6
        )
