"""The benchmark harness: the plug-in interface (``Case``, ``Context``) and the measuring.

A benchmark family lives in ``benchmarks/cases_<family>.py`` and defines::

    from _harness import Case

    def cases(ctx) -> list[Case]:
        x = ctx.rng.standard_normal((64, 128))
        x_ours = ctx.ours(x)                          # our namespace and device, ctx.dtype
        x_torch = ctx.theirs(x, requires_grad=True)   # torch, on the same device
        def ours():
            y, cache = F.relu(x_ours)
            return F.relu_backward(dy_ours, cache)
        def torch_step():
            ctx.zero_grad(x_torch)                    # as a training loop would
            ctx.torch.relu(x_torch).backward(dy_torch)
        return [Case("relu", "activations", "64x128", ours, torch_step)]

``bench.py`` finds every such module, builds one :class:`Context` per run and times each
case's two callables against each other (:func:`time_pair`). Build all inputs outside the
callables: a callable is one forward plus backward and nothing else.

Writing the torch side: set the leaves' ``.grad`` to ``None`` first (:meth:`Context.zero_grad`),
otherwise every call after the first adds an extra accumulation kernel that ours does not pay.
Ours and torch each get fresh inputs of their own (``ours`` and ``theirs`` copy), so nothing
is shared between the sides.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BackgroundLoad",
    "Case",
    "Context",
    "Timing",
    "gemm_peak",
    "machine_info",
    "numpy_blas",
    "numpy_blas_threads",
    "peak_memory",
    "time_pair",
]


@dataclass
class Case:
    """One benchmark: the same forward+backward in backprop_xp (``ours``) and torch autograd.

    Parameters
    ----------
    op : str
        Op name, as ``--ops`` selects it (``"cross_entropy"``, ``"conv2d"``).
    family : str
        Family name, also selectable with ``--ops`` (``"core"``, ``"conv"``, ``"model"``).
    shape : str
        Human-readable problem size for the table (``"4096x1000"``).
    ours, torch : callable
        One forward and backward each; return values are ignored.
    flops : float, optional
        Forward+backward floating-point operations, for GFLOP/s and share of the GEMM peak.
    target_cpu, target_gpu : float, optional
        The largest acceptable ratio ``ms ours / ms torch`` on that kind of device.
    gpu_only : bool
        Skip on CPU runs (shapes too large for a CPU).
    """

    op: str
    family: str
    shape: str
    ours: Callable[[], object]
    torch: Callable[[], object]
    flops: float | None = None
    target_cpu: float | None = None
    target_gpu: float | None = None
    gpu_only: bool = False

    def target(self, gpu: bool) -> float | None:
        return self.target_gpu if gpu else self.target_cpu


@dataclass
class Context:
    """What a ``cases(ctx)`` function gets: the namespaces, devices and a seeded generator.

    Attributes
    ----------
    backend : str
        ``"numpy"``, ``"cupy"`` or ``"torch"``: the library *ours* runs on.
    xp : module
        Our Array API namespace (array-api-compat wrapper).
    device : object
        The device our arrays live on.
    gpu : bool
        Whether this is a GPU run (targets: ``target_gpu``).
    torch : module
        The ``torch`` module (the reference side).
    torch_device : torch.device
        Where the reference tensors live (CUDA on GPU runs, else CPU).
    dtype : str
        Floating dtype of the run (``"float32"``).
    rng : numpy.random.Generator
        Seeded; draw inputs on the host, then move them with :meth:`ours` / :meth:`theirs`.
    quick : bool
        ``--quick``: build tiny shapes (for smoke tests), not the issue's shapes.
    model : str or None
        The ``--model`` name asked for (``"cnn"``), for ``cases_model.py``.
    """

    backend: str
    xp: ModuleType
    device: Any
    gpu: bool
    torch: ModuleType
    torch_device: Any
    dtype: str = "float32"
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    quick: bool = False
    model: str | None = None

    def ours(self, a: Any) -> Any:
        """A copy of ``a`` in our namespace and on our device; floats cast to ``dtype``."""
        a = self._host(a)
        if self.backend == "numpy":
            return a
        if self.backend == "torch":
            return self.torch.from_numpy(a).to(self.device)
        import cupy

        with self.device:
            return cupy.asarray(a)

    def theirs(self, a: Any, requires_grad: bool = False) -> Any:
        """A copy of ``a`` as a torch tensor on torch's device; floats cast to ``dtype``."""
        t = self.torch.from_numpy(self._host(a)).to(self.torch_device)
        return t.requires_grad_(True) if requires_grad else t

    def zero_grad(self, *tensors: Any) -> None:
        """``t.grad = None`` for each tensor, as ``optimizer.zero_grad(set_to_none=True)``."""
        for t in tensors:
            t.grad = None

    def sync(self) -> None:
        """Wait for queued GPU work on both sides (a no-op on CPU)."""
        if not self.gpu:
            return
        if self.backend == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        self.torch.cuda.synchronize()

    def _host(self, a: Any) -> np.ndarray:
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            return np.array(a, dtype=self.dtype, copy=True)
        return np.array(a, copy=True)


@dataclass
class Timing:
    """Per-call times in seconds of the two sides, one sample per repeat."""

    ours: list[float]
    torch: list[float]
    calls_ours: int  # calls averaged into each sample
    calls_torch: int

    @property
    def ms_ours(self) -> float:
        return 1e3 * statistics.median(self.ours)

    @property
    def ms_torch(self) -> float:
        return 1e3 * statistics.median(self.torch)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _sample(
    fn: Callable[[], object],
    sync: Callable[[], None],
    calls: int,
    settle_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    sync()
    if settle_s:
        time.sleep(settle_s)
    t0 = clock()
    for _ in range(calls):
        fn()
    sync()
    return (clock() - t0) / calls


def time_pair(
    ours: Callable[[], object],
    theirs: Callable[[], object],
    *,
    sync: Callable[[], None],
    repeat: int,
    warmup: int,
    min_sample_s: float,
    settle_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time two callables against each other.

    ``warmup`` calls of each first (allocator caches, BLAS thread start, cuDNN/cuBLAS
    heuristics), then ``repeat`` samples of each, interleaved in ABBA order (ours, torch,
    torch, ours, ...) so that neither side always runs first, with the garbage collector
    paused. A sample is the mean of enough back-to-back calls to last ``min_sample_s``, with
    a synchronize before the clock is read on either end. Report the median of the samples.

    ``settle_s``: sleep this long before each sample. On a multi-threaded CPU run the side
    that just ran leaves its worker threads spinning for a while (OpenBLAS for up to about
    0.1 s, libgomp briefly), and they compete with the next sample's threads for the cores:
    without a pause torch measured ~60% slower on a 1024³ linear right after NumPy than
    right before it.

    ``clock``: wall time by default. ``time.process_time`` (this process's CPU time) suits
    single-threaded CPU runs on a shared machine: time spent descheduled while other
    processes run is not counted. It is wrong with more than one thread (it sums threads,
    spinning ones included) and on a GPU (it misses the device's time).
    """
    for _ in range(warmup):
        ours()
        sync()
        theirs()
        sync()
    with _gc_paused():
        one_o = _sample(ours, sync, 1, settle_s, clock)
        one_t = _sample(theirs, sync, 1, settle_s, clock)
        calls_o = max(1, math.ceil(min_sample_s / max(one_o, 1e-9)))
        calls_t = max(1, math.ceil(min_sample_s / max(one_t, 1e-9)))
        t_o: list[float] = []
        t_t: list[float] = []
        for i in range(repeat):
            if i % 2 == 0:
                t_o.append(_sample(ours, sync, calls_o, settle_s, clock))
                t_t.append(_sample(theirs, sync, calls_t, settle_s, clock))
            else:
                t_t.append(_sample(theirs, sync, calls_t, settle_s, clock))
                t_o.append(_sample(ours, sync, calls_o, settle_s, clock))
    return Timing(t_o, t_t, calls_o, calls_t)


# -- peak memory ---------------------------------------------------------------------------


def peak_memory(fn: Callable[[], object], kind: str) -> int | None:
    """Bytes allocated at the high-water mark of one call of ``fn``, above what was live before.

    ``kind`` says which allocator to watch:

    * ``"numpy"``: :mod:`tracemalloc` (NumPy reports its data buffers to it).
    * ``"torch_cpu"``: the memory events of ``torch.profiler`` (``profile_memory=True``): every
      allocation and free of torch's CPU allocator with its time; the peak of their running sum.
    * ``"torch_cuda"``: ``torch.cuda.max_memory_allocated`` after a reset.
    * ``"cupy"``: a CuPy memory hook summing the pool's mallocs and frees.

    Returns ``None`` where the measurement failed. Results the call returns count (they are
    alive at the end); the inputs, allocated before, do not.
    """
    try:
        return _PEAK[kind](fn)
    except Exception as e:  # a measurement that cannot be made is reported as n/a
        print(f"bench: peak memory ({kind}) not measured: {e}", file=sys.stderr)
        return None


def _peak_numpy(fn: Callable[[], object]) -> int:
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
        del out
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return peak - base


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_torch_cpu(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    # Kineto prints start/stop lines, and a warning for each free of a block allocated before
    # it started (the old .grad): those frees are not in the trace, as tracemalloc ignores
    # blocks from before it started, so both sides count only what the call allocates.
    with (
        _stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        out = fn()
        del out
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    if not events:
        raise RuntimeError("the profiler recorded no memory events")
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _peak_torch_cuda(fn: Callable[[], object]) -> int:
    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    del out
    return torch.cuda.max_memory_allocated() - base


def _peak_cupy(fn: Callable[[], object]) -> int:
    import cupy
    from cupy.cuda import memory_hook

    class _Peak(memory_hook.MemoryHook):
        name = "bench_peak"

        def __init__(self) -> None:
            self.blocks: dict[int, int] = {}
            self.live = 0
            self.peak = 0

        def malloc_postprocess(self, **kw: Any) -> None:
            self.blocks[kw["mem_ptr"]] = kw["mem_size"]
            self.live += kw["mem_size"]
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, **kw: Any) -> None:
            # only blocks allocated inside the call, as for the other allocators
            self.live -= self.blocks.pop(kw["mem_ptr"], 0)

    gc.collect()
    cupy.cuda.Device().synchronize()
    hook = _Peak()
    with hook:
        out = fn()
        cupy.cuda.Device().synchronize()
        del out
    return hook.peak


_PEAK: dict[str, Callable[[Callable[[], object]], int]] = {
    "numpy": _peak_numpy,
    "torch_cpu": _peak_torch_cpu,
    "torch_cuda": _peak_torch_cuda,
    "cupy": _peak_cupy,
}


# -- other processes' CPU use -------------------------------------------------------------


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


class BackgroundLoad:
    """Average number of cores that *other* processes kept busy between start and stop.

    On a shared machine this says how much to trust a row: anything well above 0 means the
    timings competed with someone else's work (Linux only; ``None`` elsewhere).
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = _cpu_seconds()

    def cores(self) -> float | None:
        c1 = _cpu_seconds()
        wall = time.perf_counter() - self._t0
        if self._c0 is None or c1 is None or wall <= 0:
            return None
        others = (c1[0] - self._c0[0]) - (c1[1] - self._c0[1])
        return max(0.0, others / wall)


# -- GEMM peak -----------------------------------------------------------------------------


def gemm_peak(
    lib: str, n: int, repeat: int, gpu: bool, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Float32 ``n x n @ n x n`` GFLOP/s in ``lib`` (``numpy``, ``cupy``, ``torch``): median."""
    rng = np.random.default_rng(0)
    a_host = rng.standard_normal((n, n), dtype=np.float32)
    b_host = rng.standard_normal((n, n), dtype=np.float32)
    sync: Callable[[], None] = lambda: None  # noqa: E731
    a: Any
    b: Any
    if lib == "numpy":
        a, b = a_host, b_host
        matmul: Callable[[Any, Any], object] = np.matmul
    elif lib == "cupy":
        import cupy

        a, b = cupy.asarray(a_host), cupy.asarray(b_host)
        matmul = cupy.matmul
        sync = cupy.cuda.Device().synchronize
    else:
        import torch

        dev = torch.device("cuda" if gpu else "cpu")
        a, b = torch.from_numpy(a_host).to(dev), torch.from_numpy(b_host).to(dev)
        matmul = torch.mm
        if gpu:
            sync = torch.cuda.synchronize

    def mm() -> object:
        return matmul(a, b)

    for _ in range(2):
        mm()
    sync()
    with _gc_paused():
        times = [_sample(mm, sync, 1, clock=clock) for _ in range(repeat)]
    return 2 * n**3 / statistics.median(times) / 1e9


# -- machine description -------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.partition(":")[2].split()
                keep = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "fma")
                return [f for f in keep if f in flags]
    return []


def numpy_blas() -> list[dict[str, Any]]:
    """threadpoolctl's view of the BLAS NumPy uses: library, version, kernel, threads.

    Torch loads its own BLAS (MKL) and OpenMP into the process too, so the entries are
    matched with NumPy's build configuration (or, failing that, a path inside NumPy).
    """
    try:
        import threadpoolctl
    except ImportError:
        return []
    blas_name = ""
    with contextlib.suppress(Exception):
        blas_name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"].lower()
    found = []
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") != "blas":
            continue
        path = info.get("filepath", "")
        api = str(info.get("internal_api", "")).lower()
        if (api and api in blas_name) or "numpy" in path:
            entry = {k: v for k, v in info.items() if k != "filepath"}
            entry["library"] = Path(path).name
            found.append(entry)
    return found


def numpy_blas_threads() -> int | None:
    """Threads of NumPy's BLAS pool (``None`` where threadpoolctl cannot tell)."""
    counts = [b["num_threads"] for b in numpy_blas() if b.get("num_threads")]
    return max(counts) if counts else None


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(ctx: Context, repo: Path) -> dict[str, Any]:
    """CPU/GPU, thread counts, library versions, BLAS, relevant env vars, date, load."""
    torch = ctx.torch
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": ctx.backend,
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "numpy_blas": numpy_blas(),
        "torch_threads": torch.get_num_threads(),
        "torch_blas": _torch_blas(torch),
        "commit": _git_commit(repo),
        "env": {
            k: os.environ[k]
            for k in (
                "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE",
                "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "CUPY_TF32",
                "NVIDIA_TF32_OVERRIDE",
            )
            if k in os.environ
        },
    }
    with contextlib.suppress(ImportError):
        import array_api_compat

        info["array_api_compat"] = array_api_compat.__version__
    if ctx.gpu:
        info["gpu"] = torch.cuda.get_device_name(ctx.torch_device)
        info["cuda"] = torch.version.cuda
        info["tf32"] = {
            "torch_matmul": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn": torch.backends.cudnn.allow_tf32,
            "CUPY_TF32": os.environ.get("CUPY_TF32", "unset"),
        }
        if ctx.backend == "cupy":
            import cupy

            info["cupy"] = cupy.__version__
    info["device"] = info.get("gpu") or info["cpu_model"]
    return info


def _torch_blas(torch: ModuleType) -> str | None:
    with contextlib.suppress(Exception):
        found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        if found:
            return found.group(1)
    return None
