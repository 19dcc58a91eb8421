"""Checkpoints in the safetensors format: a JSON header and raw little-endian tensor bytes.

Loading runs no code (no pickle anywhere) and reads only what a valid file needs: only a
regular file is opened (a FIFO could block, a device never end); the 8-byte header length is
checked against a limit and the file's size, then the header alone is read and checked field
by field, every tensor's offsets against the file's size, before any tensor byte is read; each
tensor's bytes then go straight into an array of its own, so loading takes about the file's
size in memory. Every problem with a file is a :class:`CheckpointError` naming it and the
function; a path the OS cannot open is its ``OSError`` (``FileNotFoundError``, ...), naming
it too. Save → load is bit-exact.

bfloat16 (``BF16``, the upper 16 bits of a float32). NumPy has no bfloat16, so ``load``
widens BF16 tensors exactly to float32 (the bits shifted left by 16, read as float32);
with ``backend="torch"`` they load as ``torch.bfloat16``, bit for bit
(:func:`backprop_xp.backend.bfloat16_from_bits`). ``save`` writes an array of a library's
``bfloat16`` dtype (torch's) as BF16: cast to float32 on its own device (exact), copied to
the host, the upper 16 bits kept; ``load(..., backend="torch")`` then gives it back bit for
bit. A float32 array (a BF16 tensor loaded into NumPy, say) is saved as F32.

``save`` writes the header itself, as safetensors does (tensors sorted by dtype then name,
compact JSON, padded to 8 bytes) but with the metadata keys sorted: the same tensors and
metadata give the same bytes in any process.

Layout (https://github.com/huggingface/safetensors)::

    8 bytes   N, the header length (unsigned little-endian 64-bit)
    N bytes   JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                     ..., "__metadata__": {"str": "str"}}
    rest      the tensors' bytes; offsets are relative to the end of the header
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import reprlib
import secrets
import stat
import struct
from collections.abc import Mapping
from types import ModuleType
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from .backend import bfloat16_from_bits, get_namespace, namespace, to_namespace, to_numpy

__all__ = ["CheckpointError", "load", "read_metadata", "save"]

Array = Any
FilePath: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

# The header is JSON text for names, dtypes and shapes: far below this even for huge models.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 64  # NumPy's limit
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max

# Shortened reprs for messages: a hostile header's values can be megabytes long
_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = _brief.maxlong = 60

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    "BF16": np.dtype("<u2"),  # bytes read as uint16: the bit patterns (see the module doc)
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items() if code != "BF16"}
# safetensors writes the tensors sorted by dtype in this order (its Dtype enum, largest
# alignment first), then by name: the same order here writes the bytes it writes
_ORDER = {
    code: i
    for i, code in enumerate(
        ("U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "I8", "U8", "BOOL")
    )
}

# (flags absent on some systems: Windows has no O_NONBLOCK, POSIX no O_BINARY)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt or not a safetensors file.

    ``path`` is the file, ``problem`` what is wrong with it, ``function`` the function that
    read it (``"load"``, ``"read_metadata"``; None when not given).
    """

    def __init__(self, path: FilePath, problem: str, *, function: str | None = None):
        self.path, self.problem, self.function = os.fspath(path), problem, function
        prefix = f"{function}: " if function else ""
        super().__init__(f"{prefix}checkpoint {self.path!r}: {problem}")


class _Source(NamedTuple):
    """The checkpoint being read, for messages: the caller's path and function."""

    path: str | bytes
    function: str

    def error(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, problem, function=self.function)


def _fspath(path: Any, function: str) -> str | bytes:
    """``os.fspath(path)``; anything else is a TypeError before any file is touched (open()
    would take an int, True included, as a file descriptor, and close it afterwards)."""
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(
            f"{function}: path must be a str, bytes or os.PathLike, got "
            f"{type(path).__name__} {_brief.repr(path)}"
        ) from None


def _state_dict(model_or_state_dict: Any) -> Mapping[str, Array]:
    if hasattr(model_or_state_dict, "state_dict"):
        return model_or_state_dict.state_dict()
    if isinstance(model_or_state_dict, Mapping):
        return model_or_state_dict
    raise TypeError(
        f"save: expected a Module or a mapping of names to arrays, got "
        f"{type(model_or_state_dict).__name__}"
    )


def _bfloat16_bits(a: Any) -> np.ndarray | None:
    """The bit patterns (host uint16) of an array of a library's bfloat16 dtype; None for
    anything else."""
    if isinstance(a, np.ndarray) or getattr(a, "dtype", None) is None:
        return None
    try:
        xp = get_namespace(a)
    except (TypeError, ValueError):
        return None
    bf16 = getattr(xp, "bfloat16", None)
    if bf16 is None or a.dtype != bf16:
        return None
    # bfloat16 -> float32 is exact (the 16 bits become the upper half, NaN payloads too)
    wide = np.asarray(to_numpy(xp.astype(a, xp.float32)))
    return np.asarray((wide.view(np.uint32) >> 16).astype(np.uint16))  # 0-d stays an array


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"save: tensor {name!r}: names must be str, got {type(name).__name__}")
    if not name or name == "__metadata__":
        raise ValueError(
            f"save: tensor {name!r}: names must be non-empty and not '__metadata__' (the "
            f"header's key for the metadata)"
        )
    _check_text(name, f"save: tensor {name!r}: the name")


def _check_text(text: str, what: str) -> None:
    """The header is UTF-8: a str with a lone surrogate has no encoding."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode ({e.reason} at index {e.start})") from e


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"save: metadata must be a mapping of str to str, got {type(metadata).__name__}"
        )
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"save: metadata must map str to str, got {k!r}: {type(v).__name__} "
                f"(encode other values, e.g. with json.dumps)"
            )
        _check_text(k, f"save: metadata key {k!r}")
        _check_text(v, f"save: metadata {k!r}: the value")
    return dict(metadata)


def _host_tensor(name: str, a: Any) -> tuple[str, np.ndarray]:
    """The safetensors code of array ``a`` and its data as a C-contiguous little-endian host
    array (for BF16, the uint16 bit patterns)."""
    where = f"save: tensor {name!r}"
    if isinstance(a, (list, tuple)) or not (hasattr(a, "dtype") and hasattr(a, "shape")):
        raise TypeError(
            f"{where}: expected an array, got {type(a).__name__} (make it one with asarray)"
        )
    try:
        bits = _bfloat16_bits(a)
        host = bits if bits is not None else np.asarray(to_numpy(a))
    except (TypeError, ValueError, NotImplementedError) as e:
        # torch's float8 (NumPy has no such dtype), a meta tensor (no data), a sparse one, ...
        raise TypeError(
            f"{where}: cannot copy this {type(a).__name__} of dtype {a.dtype} to a NumPy "
            f"array ({e}); save a dense copy of a dtype NumPy has (float32, say)"
        ) from e
    code = "BF16" if bits is not None else _CODES.get(host.dtype.newbyteorder("="))
    if code is None:
        codes = sorted(_CODES.values())
        raise TypeError(f"{where} has unsupported dtype {host.dtype} (expected one of {codes})")
    little = _DTYPES[code]
    if host.dtype != little or not host.flags.c_contiguous:
        host = host.astype(little, order="C")  # (not ascontiguousarray: it makes 0-d 1-d)
    return code, host


def save(
    path: FilePath,
    model_or_state_dict: Any,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a model's ``state_dict()`` (or a mapping name → array, any library) to ``path``.

    Arrays are copied to the host once (not at all for C-contiguous NumPy arrays) and their
    bytes written from there. ``metadata`` is a small mapping of strings stored in the header
    (read it back with :func:`read_metadata`). The tensors go in safetensors' order (by
    dtype, then name) and the metadata keys sorted, so the same state dict and metadata give
    the same bytes in any process. bfloat16 arrays (torch's) are written as BF16, bit for bit.

    The file is written to a temporary name in the folder of its target, flushed to disk and
    renamed over it, so an interrupted save (or a crash) never leaves a torn file. Like a
    plain ``open(path, "wb")``: a new file gets the mode the umask gives (0o644 under umask
    0o022), an overwritten one keeps its permission bits (though not its owner: it is a new
    file), and through a symlink the link's target gets the new file (the link stays).

    Raises
    ------
    TypeError
        ``path`` is not a str, bytes or os.PathLike; a value is not an array (a list, say) or
        cannot be copied to a NumPy array (a meta or sparse tensor, float8); a dtype has no
        safetensors code here (complex, ...); a name or the metadata is not str. Every tensor
        is checked before anything is written, and the error names its key.
    ValueError
        A name is empty or ``"__metadata__"``, or a name or metadata string has no UTF-8
        encoding (a lone surrogate).
    FileNotFoundError
        The folder of ``path`` does not exist (the error names ``path``); other ``OSError``
        from writing also name ``path``, not the temporary file.
    """
    path = os.fsdecode(_fspath(path, "save"))
    state = _state_dict(model_or_state_dict)
    for name in state:  # all names before any array is copied
        _check_name(name)
    meta = _check_metadata(metadata)
    hosts = {name: _host_tensor(name, a) for name, a in state.items()}  # before any write
    chunks = _file_chunks(hosts, meta)
    _write_atomically(path, chunks)


def _write_atomically(path: str, chunks: list[bytes | memoryview]) -> None:
    """Write ``chunks`` to a new file in the folder of ``path``'s target, then rename it over
    the target: readers see the old file or the new one, never a part."""
    # through symlinks, as open(path, "wb") would write: the target gets the new file and a
    # link stays a link (a dangling one gets its target created)
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        try:  # an overwritten file keeps its permissions (never setuid/setgid: new contents)
            mode: int | None = stat.S_IMODE(os.stat(target).st_mode) & 0o777
        except FileNotFoundError:
            mode = None
        tmp, fd = _create_temporary(folder)
    except OSError as e:  # name the user's path, not the temporary file's
        why = e.strerror if os.path.isdir(folder) else "the folder does not exist"
        raise type(e)(e.errno, f"save: cannot create a file in {folder!r} ({why})", path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file (power loss)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise type(e)(e.errno, f"save: cannot write {path!r} ({e.strerror})", path) from e
        raise


def _create_temporary(folder: str) -> tuple[str, int]:
    """A new empty file in ``folder`` (its path and descriptor), created as open() creates
    one: mode 0o666 less the umask (mkstemp's 0o600 would make every checkpoint private)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.safetensors")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", folder)


def _file_chunks(
    hosts: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None
) -> list[bytes | memoryview]:
    """The bytes of the safetensors file of ``hosts`` (name → code, host array) and
    ``metadata``, in order: the header's, then each array's own memory (no copy). The same
    tensors and metadata give the same bytes in any process: the bytes safetensors writes,
    but for the order of two or more metadata keys, which it leaves to chance."""
    order = sorted(hosts, key=lambda name: (_ORDER[hosts[name][0]], name))
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(sorted(metadata.items()))
    begin = 0
    for name in order:
        code, host = hosts[name]
        end = begin + host.nbytes
        header[name] = {"dtype": code, "shape": list(host.shape), "data_offsets": [begin, end]}
        begin = end
    # as safetensors writes it: compact, UTF-8, spaces up to a multiple of 8 bytes
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    chunks: list[bytes | memoryview] = [struct.pack("<Q", len(text)), text]
    chunks += [hosts[name][1].reshape(-1).view(np.uint8).data for name in order]
    return chunks


def _open_regular(src: _Source) -> tuple[io.FileIO, int]:
    """The checkpoint open for reading, and its size. Only a regular file is opened: a FIFO
    would block the open or the reads, a device (``/dev/zero``) would never end. What the OS
    refuses (a missing file, say) is its ``OSError``, naming the path."""
    fd = None
    try:
        st = os.stat(src.path)
        if stat.S_ISREG(st.st_mode):  # (a device is not even opened: opening some acts on them)
            # O_NONBLOCK: should the path become a FIFO after the stat, the open does not wait
            # for a writer (reads from a regular file ignore the flag)
            fd = os.open(src.path, os.O_RDONLY | _O_NONBLOCK | _O_NOCTTY | _O_BINARY)
            st = os.fstat(fd)  # what was opened, not what the path named a moment before
        elif stat.S_ISDIR(st.st_mode):  # as open() says it
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    except OSError as e:
        if fd is not None:
            os.close(fd)
        raise type(e)(
            e.errno, f"{src.function}: cannot read the checkpoint ({e.strerror})", src.path
        ) from e
    if not stat.S_ISREG(st.st_mode):
        if fd is not None:
            os.close(fd)
        raise src.error(
            f"not a regular file but {_file_kind(st.st_mode)}; only regular files are read "
            f"(a FIFO or a device could block or never end)"
        )
    assert fd is not None  # (a regular file was opened)
    return os.fdopen(fd, "rb", buffering=0), st.st_size


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"


def _fill(f: io.FileIO, buffer: memoryview, src: _Source, what: str) -> None:
    """Read exactly ``len(buffer)`` bytes of ``f`` into ``buffer``."""
    done = 0
    while done < len(buffer):
        got = f.readinto(buffer[done:])  # (a read may return fewer bytes than asked)
        if not got:  # the file was shorter than its size said: it shrank while we read
            raise src.error(f"truncated while reading {what}")
        done += got


class _Tensor(NamedTuple):
    name: str
    dtype: str  # the safetensors code
    shape: tuple[int, ...]
    begin: int  # offsets in the data section
    end: int


class _Header(NamedTuple):
    tensors: list[_Tensor]  # in the header's order
    metadata: dict[str, str]
    data_start: int  # the offset of the data section in the file


def _read_header(f: io.FileIO, size: int, src: _Source) -> _Header:
    """The validated header of the open checkpoint ``f`` of ``size`` bytes; reads only the
    header, and checks every tensor's offsets against ``size``."""
    if size < 8:
        raise src.error(f"truncated: {size} bytes, shorter than the 8-byte header length")
    length = bytearray(8)
    _fill(f, memoryview(length), src, "the header length")
    (n,) = struct.unpack("<Q", length)
    if n > MAX_HEADER_BYTES:
        raise src.error(
            f"header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit (corrupt?)"
        )
    if n > size - 8:
        raise src.error(f"truncated: header says {n} bytes but only {size - 8} follow")
    text = bytearray(n)
    _fill(f, memoryview(text), src, "the header")
    tensors, metadata = _parse_header(text, size - 8 - n, src)
    return _Header(tensors, metadata, 8 + n)


class _NotAHeader(ValueError):
    """Raised from inside the JSON parser (by the hooks below): what it refused."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):  # json keeps the last silently; other readers may keep the first
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotAHeader(f"key {_brief.repr(key)} appears twice in one object")
            seen.add(key)
    return obj


def _integer(literal: str) -> int:
    # int() of a long literal costs quadratic time (or a ValueError past Python's limit on
    # digits); sizes and offsets are below 2**64, 20 digits
    digits = len(literal.lstrip("-"))
    if digits > 20:
        raise _NotAHeader(f"an integer of {digits} digits (sizes and offsets have 20 at most)")
    return int(literal)


def _constant(literal: str) -> Any:
    raise _NotAHeader(f"{literal} is not JSON")


def _parse_header(
    text: bytearray, data_size: int, src: _Source
) -> tuple[list[_Tensor], dict[str, str]]:
    """The tensors and metadata of the header ``text``, checked against a data section of
    ``data_size`` bytes: every problem is a CheckpointError."""
    try:
        header = json.loads(
            text.decode("utf-8"),
            object_pairs_hook=_object,
            parse_int=_integer,
            parse_constant=_constant,
        )
    except UnicodeDecodeError as e:
        raise src.error(f"header is not UTF-8 text ({e})") from e
    except _NotAHeader as e:
        raise src.error(f"header refused: {e}") from None
    except RecursionError:  # the parser recurses once per nested array or object
        raise src.error(
            "header nests arrays or objects far deeper than a safetensors header"
        ) from None
    except json.JSONDecodeError as e:
        raise src.error(f"header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(header), "a value")
        raise src.error(f"header is {kind} ({_brief.repr(header)}), not an object")
    tensors = []
    metadata: dict[str, str] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise src.error(
                    f"'__metadata__' must map strings to strings, got {_brief.repr(info)}"
                )
            metadata = info
        else:
            tensors.append(_check_tensor(name, info, data_size, src))
    position = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        where = f"tensor {_brief.repr(t.name)}"
        if t.begin < position:
            raise src.error(f"{where}: its bytes overlap another tensor's")
        if t.begin > position:
            raise src.error(f"{where}: unexplained bytes before its data")
        position = t.end
    if position != data_size:
        raise src.error(f"{data_size - position} bytes after the last tensor (corrupt or appended)")
    return tensors, metadata


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_tensor(name: str, info: Any, data_size: int, src: _Source) -> _Tensor:
    where = f"tensor {_brief.repr(name)}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise src.error(
            f"{where}: expected keys dtype, shape, data_offsets, got {_brief.repr(info)}"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise src.error(
            f"{where}: unsupported dtype {_brief.repr(dtype)} (expected one of {sorted(_DTYPES)})"
        )
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise src.error(f"{where}: shape must be a list of sizes >= 0, got {_brief.repr(shape)}")
    if len(shape) > MAX_DIMS:
        raise src.error(
            f"{where}: {len(shape)} dimensions, more than the {MAX_DIMS} an array can have"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
        raise src.error(
            f"{where}: data_offsets must be [begin, end] integers, got {_brief.repr(offsets)}"
        )
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise src.error(
            f"{where}: data_offsets [{begin}, {end}] outside the {data_size}-byte data section "
            f"(truncated or corrupt)"
        )
    itemsize = _DTYPES[dtype].itemsize
    expected = math.prod(shape) * itemsize
    if end - begin != expected:
        raise src.error(
            f"{where}: {end - begin} bytes for dtype {dtype} and shape {_brief.repr(shape)}, "
            f"which need {_brief.repr(expected)}"
        )
    # An empty tensor's other sizes are not bounded by its bytes, but NumPy still refuses a
    # shape whose nonzero sizes multiply past its index range (BF16 loads as 4-byte float32)
    nonempty_bytes = math.prod(s for s in shape if s) * (4 if dtype == "BF16" else itemsize)
    if nonempty_bytes > _MAX_ARRAY_BYTES:
        raise src.error(
            f"{where}: shape {_brief.repr(shape)} is too large for an array, even an empty one"
        )
    return _Tensor(name, dtype, tuple(shape), begin, end)


def _read_tensor(f: io.FileIO, header: _Header, t: _Tensor, src: _Source) -> np.ndarray:
    """Tensor ``t``'s bytes, read straight into a new array of its file dtype (owned,
    writable, native byte order): no intermediate copy of the file."""
    dt = _DTYPES[t.dtype]
    host = np.empty(t.shape, dtype=dt)
    f.seek(header.data_start + t.begin)
    _fill(f, host.reshape(-1).view(np.uint8).data, src, f"tensor {_brief.repr(t.name)}")
    if not dt.isnative:  # a big-endian host: swap in place
        host = host.byteswap(inplace=True).view(dt.newbyteorder("="))
    # a bool is the byte 0 or 1: others are undefined behaviour to torch (and odd in NumPy)
    if t.dtype == "BOOL" and host.size and host.view(np.uint8).max() > 1:
        raise src.error(
            f"tensor {_brief.repr(t.name)}: BOOL bytes must be 0 or 1, found "
            f"{host.view(np.uint8).max()}"
        )
    return host


def read_metadata(path: FilePath) -> dict[str, str]:
    """The ``metadata`` a checkpoint was saved with (empty if none). Reads only the header,
    and raises what :func:`load` raises for it."""
    src = _Source(_fspath(path, "read_metadata"), "read_metadata")
    f, size = _open_regular(src)
    with f:
        return dict(_read_header(f, size, src).metadata)


def load(
    path: FilePath,
    backend: str | ModuleType | None = None,
    device: Any = None,
) -> dict[str, Array]:
    """Read a safetensors checkpoint: name → array, in the file's order.

    NumPy arrays by default; with ``backend`` (a name or namespace) and ``device`` the arrays
    are moved there. Pass the result to ``model.load_state_dict``. BF16 tensors load as
    float32 (exactly widened), except with ``backend="torch"``: ``torch.bfloat16``, bit for
    bit.

    Raises
    ------
    TypeError
        ``path`` is not a str, bytes or os.PathLike (an int, say: never taken as a file
        descriptor).
    OSError
        The OS's error for a path it cannot open (``FileNotFoundError``, ``PermissionError``,
        ``IsADirectoryError``, ...), naming the path and ``load``.
    CheckpointError
        The file is not a regular file (a FIFO, a device), is truncated, or its header is
        corrupt or hostile: absurd header length, not UTF-8 JSON, nested too deep, integers
        too long, a key twice, unknown dtype, more than 64 dimensions, offsets out of range,
        overlapping or leaving gaps, sizes that do not match the shape; or a BOOL tensor
        holds bytes other than 0 and 1. Nothing of a tensor is read before the whole header
        has passed.
    """
    src = _Source(_fspath(path, "load"), "load")
    xp = None
    if backend is not None or device is not None:
        xp = namespace(backend) if isinstance(backend, str) else backend
        if xp is None:
            xp = namespace("numpy")
    f, size = _open_regular(src)
    with f:
        header = _read_header(f, size, src)
        loaded: dict[str, Array] = {}
        for t in sorted(header.tensors, key=lambda t: t.begin):  # the file front to back
            loaded[t.name] = _to_backend(_read_tensor(f, header, t, src), t.dtype, xp, device)
    return {t.name: loaded[t.name] for t in header.tensors}


def _to_backend(host: np.ndarray, code: str, xp: ModuleType | None, device: Any) -> Array:
    """A host array as read from the file, in namespace ``xp`` (None: NumPy) on ``device``."""
    if code == "BF16":
        native = bfloat16_from_bits(host, xp, device) if xp is not None else None
        if native is not None:
            return native
        wide = np.empty(host.shape, dtype=np.float32)
        # the bits shifted into the upper half, written straight into the float32 array
        np.left_shift(host, 16, out=wide.view(np.uint32), dtype=np.uint32)
        host = wide
    return host if xp is None else to_namespace(host, xp, device)
