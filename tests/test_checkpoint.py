"""backprop_xp.save / backprop_xp.load: round trips, hostile files, torch interop."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import to_np

import backprop_xp
from backprop_xp import nn
from backprop_xp.backend import library_name, namespace
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


@pytest.mark.matrix
@pytest.mark.values
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


def _info(dtype: Any = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    shape = list(shape) if isinstance(shape, tuple) else shape
    offsets = list(offsets) if isinstance(offsets, tuple) else offsets
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _one(info: Any, data: bytes = bytes(8)) -> bytes:
    """A file with the one tensor ``w``."""
    return _file({"w": info}, data)


def _raw(text: str, data: bytes = bytes(8)) -> bytes:
    """A file whose header is ``text`` as written (JSON that json.dumps would not write)."""
    return _file(text.encode(), data)


def _deep(k: int) -> str:
    return "[" * k + "]" * k


W = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
GOOD = {"w": _info()}
BIG = "9" * 5000  # past Python's 4300-digit limit on int("...")
# Each hostile file, what the error must say, and an id. A file that is bad only in its data
# (the header is fine) is marked "data": read_metadata, which reads the header only, accepts it.
HOSTILE = [
    # the header length
    (b"", "truncated", "empty"),
    (b"\x01\x02", "truncated", "2 bytes"),
    (bytes(7), "truncated", "7 bytes"),
    (_file(b"{}", raw_len=2**63), "exceeds", "length 2**63"),
    (_file(b"{}", raw_len=2**64 - 1), "exceeds", "length 2**64-1"),
    (_file(b"{}", raw_len=100 * 2**20 + 1), "exceeds", "length limit+1"),
    (_file(b"{}", raw_len=1000), "truncated", "length past the end"),
    (_file(b"{}", raw_len=0), "not valid JSON", "length 0"),
    # not JSON text
    (_file(b" " * 8), "not valid JSON", "blank"),
    (_file(b"\xff\xfe{"), "not UTF-8", "latin-1 bytes"),
    (_file(b'{"w\xc3": 1}'), "not UTF-8", "cut UTF-8 sequence"),
    (_file("{}".encode("utf-16-le")), "not valid JSON", "UTF-16"),
    (_file(b"\xef\xbb\xbf{}"), "not valid JSON", "UTF-8 BOM"),
    (_file(b"{'w': 1}"), "not valid JSON", "single quotes"),
    (_file(b"{} x"), "not valid JSON", "text after the object"),
    (_file(b"{}\x00"), "not valid JSON", "NUL after the object"),
    (_file(b'{"w": {"dtype": "F32"'), "not valid JSON", "unterminated"),
    (_file(b"[" * 100_000), "deeper", "100k ["),
    (_raw(_deep(100_000)), "deeper", "100k [ and ]"),
    (_raw('{"w":' + '{"a":' * 100_000 + "1" + "}" * 100_001), "deeper", "100k objects"),
    (_raw('{"__metadata__":' + _deep(50_000) + "}"), "deeper", "deep metadata"),
    (_raw('{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}'), "NaN is not", "NaN"),
    (_raw('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,Infinity]}}'), "Infinity", "Inf"),
    (_raw('{"w":{"dtype":"F32","shape":[-Infinity],"data_offsets":[0,8]}}'), "-Inf", "-Inf"),
    # integers
    (_raw('{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,8]}}'), "shape", "1e400"),
    (_raw('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,' + BIG + "]}}"), "digits", "5000 digits"),
    (_raw('{"w":{"dtype":"F32","shape":[' + BIG[:1000] + '],"data_offsets":[0,8]}}'), "digits", "1000 digits"),
    (_one(_info(offsets=(0, 10**20))), "digits", "21 digits"),
    (_one(_info(offsets=(0, 2**64 + 8))), "outside", "offset 2**64+8"),
    (_one(_info(shape=(2**61,), offsets=(0, 2**63))), "outside", "offset 2**63"),
    (_one(_info(offsets=(-8, 0))), "outside", "negative offset"),
    (_one(_info(offsets=(8, 0))), "outside", "reversed offsets"),
    (_one(_info(offsets=(0, 8)), bytes(4)), "outside", "data too short"),
    # field types
    (_one(_info(offsets=(0.0, 8.0))), "data_offsets", "float offsets"),
    (_one(_info(offsets=(False, True))), "data_offsets", "bool offsets"),
    (_one(_info(offsets=(0, 8, 8))), "data_offsets", "3 offsets"),
    (_one(_info(offsets="0-8")), "data_offsets", "string offsets"),
    (_one(_info(offsets=None)), "data_offsets", "null offsets"),
    (_one(_info(dtype=["F32"])), "unsupported dtype", "list dtype"),
    (_one(_info(dtype={"F32": 1})), "unsupported dtype", "dict dtype"),
    (_one(_info(dtype=None)), "unsupported dtype", "null dtype"),
    (_one(_info(dtype=42)), "unsupported dtype", "int dtype"),
    (_one(_info(dtype="f32")), "unsupported dtype", "lowercase dtype"),
    (_one(_info(dtype="Q99")), "unsupported dtype", "unknown dtype"),
    (_one(_info(shape=(-2,))), "shape", "negative size"),
    (_one(_info(shape="2")), "shape", "string shape"),
    (_one(_info(shape={"0": 2})), "shape", "dict shape"),
    (_one(_info(shape=(2.0,))), "shape", "float size"),
    (_one(_info(shape=(True, True)), bytes(4)), "shape", "bool sizes"),
    (_one(_info(shape=None)), "shape", "null shape"),
    # shapes versus sizes
    (_one(_info(shape=(1,) * 65, offsets=(0, 4)), bytes(4)), "65 dimensions", "65 dims"),
    (_one(_info(shape=(1,) * 1000, offsets=(0, 4)), bytes(4)), "1000 dimensions", "1000 dims"),
    (_one(_info(shape=(0, 2**62), offsets=(0, 0)), b""), "too large", "empty, 2**62"),
    (_one(_info("F64", (0, 2**40, 2**40), (0, 0)), b""), "too large", "empty, 2**80"),
    (_one(_info(shape=(2**40, 2**40))), "need", "2**80 elements"),
    (_one(_info(shape=(2**32,) * 64)), "need", "2**2048 elements"),
    (_one(_info(offsets=(0, 4)), bytes(4)), "need 8", "too few bytes"),
    # the structure
    (_one({"dtype": "F32", "shape": [2]}), "expected keys", "missing key"),
    (_one({**_info(), "extra": 1}), "expected keys", "extra key"),
    (_one([1]), "expected keys", "list entry"),
    (_one("F32"), "expected keys", "string entry"),
    (_one(None), "expected keys", "null entry"),
    (_file([1, 2]), "not an object", "list header"),
    (_file(None), "not an object", "null header"),
    (_file("x"), "not an object", "string header"),
    (_file(42), "not an object", "number header"),
    (_raw("{" + f'"w":{W},"w":{W}' + "}"), "appears twice", "tensor twice"),
    (_raw('{"w":{"dtype":"I32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}'), "twice", "dtype twice"),
    (_raw('{"__metadata__":{"a":"1","a":"2"},' + f'"w":{W}' + "}"), "twice", "metadata key twice"),
    (_file({**GOOD, "__metadata__": {"a": 1}}, bytes(8)), "__metadata__", "metadata number"),
    (_file({**GOOD, "__metadata__": ["a"]}, bytes(8)), "__metadata__", "metadata list"),
    (_file({**GOOD, "__metadata__": "a"}, bytes(8)), "__metadata__", "metadata string"),
    (_file({**GOOD, "__metadata__": None}, bytes(8)), "__metadata__", "metadata null"),
    (_file({**GOOD, "__metadata__": {"a": {"b": "c"}}}, bytes(8)), "__metadata__", "metadata nested"),
    # the data section
    (_file({**GOOD, "v": _info(shape=(1,), offsets=(4, 8))}, bytes(8)), "overlap", "overlap"),
    (_file({**GOOD, "v": _info()}, bytes(8)), "overlap", "same offsets"),
    (_file({**GOOD, "e": _info(shape=(0,), offsets=(4, 4))}, bytes(8)), "overlap", "empty inside"),
    (_one(_info(offsets=(4, 12)), bytes(12)), "before", "gap"),
    (_file(GOOD, bytes(12)), "after the last", "trailing bytes"),
    (_one(_info("BOOL", (3,), (0, 3)), b"\x00\x01\x02"), "data: BOOL bytes", "bool byte 2"),
    (_one(_info("BOOL", (), (0, 1)), b"\xff"), "data: BOOL bytes", "bool byte 255"),
]  # fmt: skip


def _valid_file() -> bytes:
    header = {
        "__metadata__": {"k": "v"},
        "a": _info("F32", (2, 2), (0, 16)),
        "b": _info("I64", (1,), (16, 24)),
        "c": _info("BOOL", (3,), (24, 27)),
    }
    return _file(header, bytes(24) + b"\x01\x00\x01")


def _cuts() -> list[tuple[bytes, str, str]]:
    """The valid file cut at every boundary: in the length, the header, each tensor."""
    data = _valid_file()
    (n,) = struct.unpack("<Q", data[:8])
    start = 8 + n
    points = [1, 7, 8, 9, 8 + n // 2, start - 1, start, start + 1]
    points += [start + end + d for end in (16, 24, 27) for d in (-1, 0, 1) if end + d < 27]
    cuts = [(data[:k], "truncated|outside", f"cut at {k}") for k in sorted(set(points))]
    cuts.append((data + b"\x00", "after the last", "1 byte appended"))
    longer = struct.pack("<Q", n + 1) + data[8:]
    cuts.append((longer, "not valid JSON", "header length + 1"))
    shorter = struct.pack("<Q", n - 1) + data[8:]
    cuts.append((shorter, "not valid JSON|after the last", "header length - 1"))
    return cuts


HOSTILE += _cuts()


@pytest.mark.parametrize(
    ("content", "problem"), [c[:2] for c in HOSTILE], ids=[c[2] for c in HOSTILE]
)
def test_hostile_files_give_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem.removeprefix("data: ")) as info:
        backprop_xp.load(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert len(str(info.value)) < 1000  # values in the message are shortened
    if problem.startswith("data: "):  # a fine header: only the data is bad
        read_metadata(path)
    else:
        with pytest.raises(CheckpointError, match=problem):
            read_metadata(path)


def test_the_valid_file_behind_the_cuts_loads(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_valid_file())
    state = backprop_xp.load(path)
    assert list(state) == ["a", "b", "c"] and state["c"].tolist() == [True, False, True]
    assert read_metadata(path) == {"k": "v"}


def test_truncation_anywhere_is_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, _model())
    data = path.read_bytes()
    for cut in sorted({0, 4, 8, 20, len(data) // 2, len(data) - 1}):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            backprop_xp.load(path)


# Run load in a child process that cannot hang or eat the machine: 1 GiB of address space, 20
# seconds. Prints the CheckpointError, if any.
_BOUNDED_LOAD = """
import resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
signal.alarm(20)
from backprop_xp.checkpoint import CheckpointError, load
try:
    load(sys.argv[1])
except CheckpointError as e:
    print("CheckpointError:", e)
"""


def _load_bounded(path: Path) -> subprocess.CompletedProcess[str]:
    root = str(Path(backprop_xp.__file__).parent.parent)  # the package these tests import
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", _BOUNDED_LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _sparse_with_bad_header_length(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(_file(b"{}", raw_len=2**40))
        f.truncate(4 * 2**30)  # sparse: no disk used, but 4 GiB if read


def _sparse_with_bytes_after_the_tensor(path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}
    with open(path, "wb") as f:
        head = _file(header)
        f.write(head)
        f.truncate(len(head) + 2**32 + 1)


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, /dev/zero and rlimits are POSIX")
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_fifo, "not a regular file but a FIFO"),
        (_dev_zero, "not a regular file but a character device"),
        (_sparse_with_bad_header_length, "exceeds"),
        (_sparse_with_bytes_after_the_tensor, "1 bytes after the last tensor"),
    ],
)
def test_files_that_could_hang_or_exhaust_memory_are_refused_unread(tmp_path, make, problem):
    path = tmp_path / "bad.safetensors"
    make(path)
    proc = _load_bounded(path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # not killed, no MemoryError
    assert proc.stdout.startswith("CheckpointError:") and problem in proc.stdout, proc.stdout
    assert str(path) in proc.stdout


def _traced_peak(fn: Any, *args: Any) -> tuple[Any, int]:
    """``fn(*args)`` and the peak memory tracemalloc saw it allocate (NumPy arrays included)."""
    tracemalloc.start()
    try:
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("count", [1, 10])
def test_loading_takes_about_the_file_size_in_memory(tmp_path, count):
    from safetensors.numpy import save_file  # (written independently of our save)

    n = 10 * 2**20 // count  # float32 elements per tensor: 40 MiB in all
    path = tmp_path / "big.safetensors"
    save_file({f"t{i}": np.full(n, i, dtype=np.float32) for i in range(count)}, str(path))
    size = path.stat().st_size
    state, peak = _traced_peak(backprop_xp.load, path)
    assert peak < 1.3 * size, f"peak {peak / size:.2f}x the file size"
    for i in range(count):
        a = state[f"t{i}"]
        assert a.shape == (n,) and a[0] == a[-1] == i
        assert a.flags.writeable and a.flags.owndata and a.dtype.isnative
    # the metadata alone costs the header, not the file
    _, peak = _traced_peak(read_metadata, path)
    assert peak < 2**20


def test_bf16_widens_into_an_array_of_its_own(tmp_path):
    header = {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    path = tmp_path / "b.safetensors"
    path.write_bytes(_file(header, b"\xc0\x3f\x00\xc0"))  # 1.5, -2
    w = backprop_xp.load(path)["w"]
    assert w.tolist() == [1.5, -2.0] and w.flags.owndata and w.flags.writeable


def test_a_file_that_shrinks_while_read_is_truncated(tmp_path):
    from backprop_xp.checkpoint import _read_header, _Source

    path = tmp_path / "m.safetensors"
    path.write_bytes(_file(b"{}      ", raw_len=16))  # the header says 16 bytes, 8 follow
    with open(path, "rb", buffering=0) as f, pytest.raises(CheckpointError, match="while"):
        _read_header(f, 100, _Source(str(path), "load"))  # as if it had 100 bytes when opened


@pytest.mark.parametrize("read", [backprop_xp.load, read_metadata])
def test_a_missing_file_is_a_file_not_found_error_naming_it(tmp_path, read):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=f"{read.__name__}: cannot read") as info:
        read(path)
    assert info.value.filename == str(path) and str(path) in str(info.value)
    with pytest.raises(IsADirectoryError, match=f"{read.__name__}: cannot read") as info:
        read(tmp_path)
    assert info.value.filename == str(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_file_is_a_permission_error(tmp_path):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, _model())
    path.chmod(0)
    with pytest.raises(PermissionError, match="load: cannot read"):
        backprop_xp.load(path)


def test_corrupt_file_errors_name_the_function(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match=r"^load: checkpoint '.*bad.safetensors': trunc"):
        backprop_xp.load(path)
    with pytest.raises(CheckpointError, match=r"^read_metadata: checkpoint") as info:
        read_metadata(path)
    assert info.value.path == str(path) and info.value.function == "read_metadata"


@pytest.mark.parametrize("bad", [True, False, 0, 1, 2, None, 3.5, ["m.safetensors"]])
def test_a_path_that_is_not_a_path_is_refused_before_anything_is_opened(tmp_path, bad):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, _model())
    # should a bool or small int be taken as a file descriptor (and closed): put it back
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    try:
        for call in (
            lambda: backprop_xp.load(bad),
            lambda: read_metadata(bad),
            lambda: backprop_xp.save(bad, _model()),
        ):
            with pytest.raises(TypeError, match=r"(load|read_metadata|save): path must be"):
                call()
    finally:
        for fd, copy in enumerate(saved):
            os.dup2(copy, fd)
            os.close(copy)
    # an int that is an open file descriptor: neither read nor closed
    fd = os.open(path, os.O_RDONLY)
    try:
        for call in (backprop_xp.load, read_metadata):
            with pytest.raises(TypeError, match="got int"):
                call(fd)
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
    # bytes are a path, as os takes them
    assert set(backprop_xp.load(os.fsencode(path))) == set(_model().state_dict())
    backprop_xp.save(os.fsencode(tmp_path / "b.safetensors"), _model())
    assert read_metadata(os.fsencode(tmp_path / "b.safetensors")) == {}


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


# bfloat16 bit patterns: 1.5, -2, inf, -inf, the smallest subnormal, -0, 0, NaNs with
# payloads and sign (a float32 round trip would canonicalize these), the largest finite
BF16_SPECIAL = np.array(
    [0x3FC0, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x0000, 0x7FC1, 0xFFA3, 0x7F7F],
    dtype=np.uint16,
)


def _widened(bits: np.ndarray) -> np.ndarray:
    """The float32 whose upper half is ``bits`` (the exact value of each bfloat16)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_bf16_file_loads_widened_to_float32(tmp_path, rng):
    """A hand-written BF16 file (no torch needed): NumPy gets float32, exactly widened."""
    bits = np.concatenate([BF16_SPECIAL, rng.integers(0, 2**16, 22, dtype=np.uint16)])
    header = {
        "w": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]},
        "s": {"dtype": "BF16", "shape": [], "data_offsets": [64, 66]},
        "e": {"dtype": "BF16", "shape": [0, 2], "data_offsets": [66, 66]},
    }
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(_file(header, bits.astype("<u2").tobytes() + b"\x40\x40"))
    for state in (backprop_xp.load(path), backprop_xp.load(path, backend="numpy")):
        assert state["w"].dtype == np.float32 and state["w"].shape == (4, 8)
        assert state["w"].tobytes() == _widened(bits).tobytes()
        assert isinstance(state["s"], np.ndarray) and state["s"].shape == ()
        assert state["s"] == np.float32(3.0) and state["e"].shape == (0, 2)
    strict = backprop_xp.load(path, backend="array_api_strict")
    assert strict["w"].dtype == namespace("array_api_strict").float32
    # a truncated BF16 tensor is caught like any other
    path.write_bytes(
        _file({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}}, bytes(4))
    )
    with pytest.raises(CheckpointError, match="need 6"):
        backprop_xp.load(path)


def _torch_bf16(bits: np.ndarray) -> Any:
    torch = pytest.importorskip("torch")
    return torch.from_numpy(bits.astype(np.int16)).view(torch.bfloat16)


def _bits(t: Any) -> np.ndarray:
    import torch

    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def test_bf16_file_written_by_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    bits = np.concatenate([BF16_SPECIAL, rng.integers(0, 2**16, 50, dtype=np.uint16)])
    state = {
        "w": _torch_bf16(bits).reshape(6, 10),
        "s": _torch_bf16(BF16_SPECIAL[:1]).reshape(()),
        "f": torch.arange(3, dtype=torch.float32),
    }
    path = tmp_path / "t.safetensors"
    save_file(state, str(path))
    ours = backprop_xp.load(path)
    assert ours["w"].dtype == np.float32 and ours["w"].shape == (6, 10)
    assert ours["w"].tobytes() == state["w"].float().numpy().tobytes()  # torch widens the same
    assert ours["s"].shape == () and ours["s"] == 1.5
    on_torch = backprop_xp.load(path, backend="torch", device="cpu")
    assert on_torch["w"].dtype == torch.bfloat16 and on_torch["s"].dtype == torch.bfloat16
    assert on_torch["f"].dtype == torch.float32
    for k in ("w", "s"):
        assert on_torch[k].shape == state[k].shape
        np.testing.assert_array_equal(_bits(on_torch[k]), _bits(state[k]))  # NaN payloads too


def test_bf16_save_round_trip_is_bit_exact(tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    from safetensors.torch import save as torch_save

    bits = np.concatenate([BF16_SPECIAL, rng.integers(0, 2**16, 14, dtype=np.uint16)])
    w = _torch_bf16(bits).reshape(4, 6)
    state = {
        "w": w,
        "wt": w.t(),  # not contiguous
        "p": torch.nn.Parameter(w[0].clone()),  # records autograd history
        "s": w[0, 0],
        "f32": torch.linspace(0, 1, 5),
    }
    path = tmp_path / "b.safetensors"
    backprop_xp.save(path, state, metadata={"k": "v"})
    for loaded in (load_file(str(path)), backprop_xp.load(path, backend="torch")):
        assert set(loaded) == set(state)
        for k, v in state.items():
            assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
            if v.dtype == torch.bfloat16:
                np.testing.assert_array_equal(_bits(loaded[k]), _bits(v.detach()), err_msg=k)
            else:
                np.testing.assert_array_equal(loaded[k].numpy(), v.numpy(), err_msg=k)
    assert read_metadata(path) == {"k": "v"}
    # the very bytes safetensors.torch writes for the same tensors
    contiguous = {k: v.detach().contiguous().clone() for k, v in state.items()}  # (no views)
    assert path.read_bytes() == torch_save(contiguous, metadata={"k": "v"})
    # loaded into NumPy (float32) and saved again, a BF16 tensor becomes F32, same values
    backprop_xp.save(tmp_path / "again.safetensors", backprop_xp.load(path))
    again = backprop_xp.load(tmp_path / "again.safetensors", backend="torch")
    assert again["w"].dtype == torch.float32
    assert again["w"].numpy().tobytes() == w.float().numpy().tobytes()


def test_save_names_the_key_of_a_dtype_numpy_lacks(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"save: tensor 'q': cannot copy .*float8"):
        backprop_xp.save(tmp_path / "q", {"q": torch.zeros(2, dtype=torch.float8_e4m3fn)})
    assert not list(tmp_path.iterdir())


def _torch(make: str) -> Any:
    torch = pytest.importorskip("torch")
    return {
        "meta": lambda: torch.zeros(3, device="meta"),
        "meta bf16": lambda: torch.zeros(3, device="meta", dtype=torch.bfloat16),
        "sparse": lambda: torch.eye(3).to_sparse(),
        "complex": lambda: torch.zeros(2, dtype=torch.complex64),
    }[make]()


# A value save cannot write, under the key "bad", and what the error says after the key
BAD_VALUES = [
    pytest.param(lambda: _torch("meta"), TypeError, ": cannot copy this Tensor .*meta", id="meta"),
    pytest.param(
        lambda: _torch("meta bf16"),
        TypeError,
        ": cannot copy this Tensor of dtype torch.bfloat16",
        id="meta bf16",
    ),
    pytest.param(lambda: _torch("sparse"), TypeError, ": cannot copy .*Sparse", id="sparse"),
    pytest.param(
        lambda: _torch("complex"), TypeError, " has unsupported dtype complex64", id="torch complex"
    ),
    pytest.param(
        lambda: np.zeros(2, dtype=np.complex64),
        TypeError,
        " has unsupported dtype complex64",
        id="numpy complex",
    ),
    pytest.param(lambda: np.array(["a"]), TypeError, " has unsupported dtype <U1", id="numpy str"),
    pytest.param(object, TypeError, ": expected an array, got object", id="object"),
    pytest.param(lambda: [1.0, 2.0], TypeError, ": expected an array, got list", id="list"),
    pytest.param(lambda: (1.0, 2.0), TypeError, ": expected an array, got tuple", id="tuple"),
    pytest.param(lambda: 1.5, TypeError, ": expected an array, got float", id="float"),
    pytest.param(lambda: None, TypeError, ": expected an array, got NoneType", id="None"),
    pytest.param(lambda: "w", TypeError, ": expected an array, got str", id="str"),
]


@pytest.mark.parametrize(("make", "error", "problem"), BAD_VALUES)
def test_save_names_the_tensor_it_cannot_write_and_writes_nothing(tmp_path, make, error, problem):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, {"ok": np.ones(2)})
    before = path.read_bytes()
    with pytest.raises(error, match=rf"^save: tensor 'bad'({problem})"):
        backprop_xp.save(path, {"ok": np.zeros(3), "bad": make()})  # a good tensor first
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize(
    ("name", "error", "problem"),
    [
        (1, TypeError, "tensor 1: names must be str, got int"),
        (b"w", TypeError, "tensor b'w': names must be str, got bytes"),
        (("a", "b"), TypeError, r"tensor \('a', 'b'\): names must be str"),
        ("", ValueError, "tensor '': names must be non-empty"),
        ("__metadata__", ValueError, "tensor '__metadata__': names must be non-empty and not"),
        ("w\ud800", ValueError, r"tensor 'w\\ud800': the name is not valid Unicode"),
    ],
)
def test_save_refuses_odd_names_before_copying_anything(tmp_path, name, error, problem):
    path = tmp_path / "m.safetensors"
    with pytest.raises(error, match=f"^save: {problem}"):
        backprop_xp.save(path, {"ok": np.zeros(3), name: np.ones(2)})
    assert not list(tmp_path.iterdir())


def test_save_refuses_bad_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="save: metadata must be a mapping of str to str, got list"):
        backprop_xp.save(path, _model(), metadata=[("a", "b")])
    with pytest.raises(TypeError, match="str to str, got 'a': bytes"):
        backprop_xp.save(path, _model(), metadata={"a": b"b"})
    with pytest.raises(ValueError, match="save: metadata 'a': the value is not valid Unicode"):
        backprop_xp.save(path, _model(), metadata={"a": "\udc80"})
    assert not list(tmp_path.iterdir())


# Save the same tensors and metadata, built in the order argv[2] says, and print the hash
_SAVE_AND_HASH = """
import hashlib, sys
import numpy as np
import backprop_xp
keys = [f"key{i}" for i in range(20)]
names = ["w", "b", "émbed", "z", "a.b", "A"]
if sys.argv[2] == "reversed":
    keys, names = keys[::-1], names[::-1]
rng = np.random.default_rng(0)
values = {n: rng.standard_normal((3, 2)).astype(np.float32) for n in sorted(names)}
values["b"] = np.arange(4, dtype=np.int64)
backprop_xp.save(sys.argv[1], {n: values[n] for n in names}, metadata={k: k * 2 for k in keys})
with open(sys.argv[1], "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest())
"""


def test_the_same_state_saves_to_the_same_bytes_in_any_process(tmp_path):
    root = str(Path(backprop_xp.__file__).parent.parent)
    hashes = set()
    for seed, order in (("1", "forward"), ("2", "reversed"), ("3", "forward")):
        path = tmp_path / f"m{seed}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": root}
        proc = subprocess.run(
            [sys.executable, "-c", _SAVE_AND_HASH, str(path), order],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        hashes.add(proc.stdout.strip())
    assert len(hashes) == 1
    assert list(read_metadata(tmp_path / "m1.safetensors")) == sorted(f"key{i}" for i in range(20))


def test_save_writes_the_bytes_safetensors_writes(tmp_path, rng):
    from safetensors.numpy import save as st_save

    dtypes = [np.float64, np.int64, np.uint64, np.float32, np.int32, np.uint32, np.float16]
    dtypes += [np.int16, np.uint16, np.int8, np.uint8, np.bool_]
    names = ["w", "b", "a", "Z", "é", 'x\n"\\\x01\x7f\u2028/', "0", "layer.10", "layer.9"]
    state = {}
    for i, dt in enumerate(dtypes * 2):
        name = f"{names[i % len(names)]}{i}"
        state[name] = (rng.standard_normal((i % 3, 2, i % 5)) * 50).astype(dt)
    state["scalar"] = np.array(2.5, dtype=np.float32)
    state["strided"] = rng.standard_normal((4, 6))[::2, ::3]
    contiguous = {k: np.ascontiguousarray(v) if v.ndim else v for k, v in state.items()}
    for metadata in (None, {"k": "v"}, {"é\t": "x\u0000y"}):
        path = tmp_path / "m.safetensors"
        backprop_xp.save(path, state, metadata=metadata)
        assert path.read_bytes() == st_save(contiguous, metadata=metadata), metadata
    backprop_xp.save(path, {})
    assert path.read_bytes() == st_save({})


def test_save_of_nothing_with_empty_metadata_is_a_valid_file(tmp_path):
    # (safetensors 0.8 writes '{},"__metadata__":{}}' for this, which is not JSON)
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, {}, metadata={})
    assert backprop_xp.load(path) == {} and read_metadata(path) == {}
    from safetensors.numpy import load_file

    assert load_file(str(path)) == {}


def test_bf16_tensors_sit_where_safetensors_torch_puts_them(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save as torch_save

    state = {
        "a": torch.ones(2, dtype=torch.float16),
        "b": torch.ones(2, dtype=torch.int16),
        "z": torch.ones(2, dtype=torch.bfloat16),
        "y": torch.ones(2, dtype=torch.float32),
    }
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, state)
    assert path.read_bytes() == torch_save(state)


def test_save_writes_each_array_without_copying_the_file_in_memory(tmp_path):
    state = {"w": np.ones(10 * 2**20, dtype=np.float32), "b": np.ones(3)}  # 40 MiB
    path = tmp_path / "m.safetensors"
    _, peak = _traced_peak(backprop_xp.save, path, state)
    assert peak < 0.1 * state["w"].nbytes, f"peak {peak / state['w'].nbytes:.2f}x"
    assert backprop_xp.load(path)["w"].tobytes() == state["w"].tobytes()


def test_save_into_a_missing_folder_names_the_path(tmp_path):
    path = tmp_path / "no" / "such" / "m.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        backprop_xp.save(path, _model())
    assert info.value.filename == str(path)
    assert str(path) in str(info.value) and ".tmp-" not in str(info.value)
    assert not (tmp_path / "no").exists()


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes and symlinks")


@posix_only
@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=oct
)
def test_a_new_checkpoint_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    path = tmp_path / "m.safetensors"
    old = os.umask(umask)
    try:
        backprop_xp.save(path, _model())
        with open(tmp_path / "plain", "wb"):  # what open() gives
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o755], ids=oct)
def test_overwriting_keeps_the_mode(tmp_path, mode):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, {"w": np.zeros(2)})
    path.chmod(mode)
    backprop_xp.save(path, {"w": np.ones(3)})
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert backprop_xp.load(path)["w"].tolist() == [1, 1, 1]


@posix_only
def test_saving_through_a_symlink_updates_its_target(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "real.safetensors"
    backprop_xp.save(real, {"w": np.zeros(2)})
    real.chmod(0o640)
    link = tmp_path / "latest.safetensors"
    link.symlink_to("runs/real.safetensors")  # relative, as links often are
    chain = tmp_path / "chain.safetensors"
    chain.symlink_to(link)
    backprop_xp.save(link, {"w": np.ones(3)})
    assert link.is_symlink() and os.readlink(link) == "runs/real.safetensors"
    assert backprop_xp.load(real)["w"].tolist() == [1, 1, 1]
    assert backprop_xp.load(link)["w"].tolist() == [1, 1, 1]  # load follows links too
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    backprop_xp.save(chain, {"w": np.full(2, 7.0)})  # a link to a link
    assert chain.is_symlink() and link.is_symlink()
    assert backprop_xp.load(real)["w"].tolist() == [7, 7]
    # a dangling link gets its target created
    dangling = tmp_path / "next.safetensors"
    dangling.symlink_to("runs/new.safetensors")
    backprop_xp.save(dangling, {"w": np.zeros(1)})
    assert dangling.is_symlink() and (tmp_path / "runs" / "new.safetensors").is_file()
    # no temporary file left in either folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chain.safetensors",
        "latest.safetensors",
        "next.safetensors",
        "runs",
    ]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "new.safetensors",
        "real.safetensors",
    ]


@posix_only
def test_a_symlink_loop_is_an_os_error_naming_the_path(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(OSError, match="save: ") as info:
        backprop_xp.save(a, _model())
    assert info.value.filename == str(a)
    assert a.is_symlink() and b.is_symlink()


@pytest.mark.parametrize(
    "failure", [OSError(5, "Input/output error"), KeyboardInterrupt()], ids=["EIO", "interrupt"]
)
def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "m.safetensors"
    backprop_xp.save(path, {"w": np.zeros(2)})
    before = path.read_bytes()

    def fail(fd: int) -> None:  # the disk fails as the data is flushed
        raise failure

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(type(failure)) as info:
        backprop_xp.save(path, {"w": np.ones(1000)})
    if isinstance(failure, OSError):
        assert info.value.filename == str(path)
        assert f"save: cannot write {str(path)!r} (Input/output error)" in str(info.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]
