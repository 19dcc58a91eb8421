#!/usr/bin/env python
"""Time backprop_xp's forward+backward against PyTorch autograd on the same device.

Usage::

    python benchmarks/bench.py --backend numpy|cupy|torch [--device cpu|cuda]
        [--ops NAME ...] [--model cnn] [--json PATH] [--repeat N] [--quick]

``--backend`` is the library *ours* runs on; the reference is always torch autograd, on the
CPU for ``numpy``, on CUDA for ``cupy``, and on the same device as ours for ``torch``.
Cases come from every ``benchmarks/cases_*.py`` (see ``_harness.py`` for the interface).

Some machines set ``OPENBLAS_CORETYPE`` (and ``OPENBLAS_L2_SIZE``) in the environment for old
OpenBLAS builds; they slow a current NumPy, so benchmark there with::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py --backend numpy

Exit status:

- 0: every selected case ran. A missed target shows as ``NO`` in its row and in the summary
  line; it does not change the status.
- 1: something raised while running: a case (its row says ``error:``), a
  ``benchmarks/cases_*.py`` file that failed to import or to build its cases (a message on
  stderr; the other families still run), or writing ``--json``.
- 2: nothing was run: a bad command line (argparse's errors, ``--repeat 0``, ``--clock cpu``
  without ``--threads 1``, ``--device`` the backend does not take, an unknown ``--cases``
  family), ``--ops`` names that match no case, no case selected, or a side that cannot run
  here (the backend's library missing, torch missing for the reference, no CUDA device).
  One line on stderr says which.

See docs/benchmarks.md for the methodology and the measured results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 2  # see the module docstring

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Read when CuPy is imported: keep its float32 GEMMs in full precision, like torch's below.
if os.environ.get("CUPY_TF32", "0") != "0":
    print(f"bench: overriding CUPY_TF32={os.environ['CUPY_TF32']} with 0", file=sys.stderr)
os.environ["CUPY_TF32"] = "0"

# ``python benchmarks/bench.py`` puts benchmarks/ on sys.path (for ``from _harness import``);
# the checkout goes next, so the working tree's backprop_xp is the one measured.
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
from _harness import (  # noqa: E402
    BackgroundLoad,
    Case,
    Context,
    gemm_peak,
    machine_info,
    numpy_blas_threads,
    peak_memory,
    time_pair,
)


class NotRun(Exception):
    """Nothing can be run (exit status 2); the message says why."""


def families() -> list[str]:
    """The case families: one per ``benchmarks/cases_<family>.py``."""
    return [path.stem.removeprefix("cases_") for path in sorted(HERE.glob("cases_*.py"))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="backprop_xp forward+backward vs torch autograd",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="exit status: 0 every selected case ran (missed targets included); 1 a case "
        "or a cases file raised; 2 nothing was run (bad option, no case selected, a side "
        "unavailable here)",
    )
    p.add_argument("--backend", choices=("numpy", "cupy", "torch"), default="numpy")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="for --backend torch: where both sides run (default: cuda when available)",
    )
    p.add_argument("--ops", nargs="+", default=[], metavar="NAME", help="op or family names to run")
    p.add_argument(
        "--model", default=None, metavar="NAME", help="run the model-step cases (cnn, ...)"
    )
    p.add_argument(
        "--cases",
        nargs="+",
        default=[],
        metavar="FAMILY",
        help="load only these benchmarks/cases_FAMILY.py files (default: all)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write records")
    p.add_argument("--repeat", type=int, default=None, help="timed samples per side")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per side first")
    p.add_argument(
        "--min-sample-ms",
        type=float,
        default=None,
        help="each sample averages enough calls to last this long",
    )
    p.add_argument("--threads", type=int, default=None, help="BLAS/intra-op threads for both sides")
    p.add_argument(
        "--settle-ms",
        type=float,
        default=None,
        help="pause before each sample so the other side's spinning threads go idle "
        "(default: 150 on multi-threaded CPU runs, else 0)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time, for --threads 1 runs on a shared machine",
    )
    p.add_argument("--gemm-n", type=int, default=None, help="size of the GEMM-peak probe")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes, few repeats: a smoke run, not a measurement",
    )
    args = p.parse_args(argv)
    quick = args.quick
    if args.repeat is None:
        args.repeat = 3 if quick else 11
    if args.warmup is None:
        args.warmup = 1 if quick else 3
    if args.min_sample_ms is None:
        args.min_sample_ms = 1.0 if quick else 50.0
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.device is not None and args.device != {"numpy": "cpu", "cupy": "cuda"}.get(
        args.backend, args.device
    ):
        p.error(
            f"--device {args.device}: --backend {args.backend} runs on "
            f"{'the CPU' if args.backend == 'numpy' else 'CUDA'}; --device is for --backend torch"
        )
    unknown = sorted(set(args.cases) - set(families()))
    if unknown:
        p.error(
            f"--cases {' '.join(unknown)}: no such benchmarks/cases_*.py; known families: "
            f"{', '.join(families())}"
        )
    if args.json is not None and (args.json.is_dir() or _blocked(args.json.parent)):
        p.error(f"--json {args.json}: cannot write a file there")
    return args


def _blocked(folder: Path) -> bool:
    """Whether a path component that exists on the way to ``folder`` is not a folder."""
    for q in (folder, *folder.parents):
        if q.exists():
            return not q.is_dir()
    return False


def make_context(args: argparse.Namespace) -> Context:
    """The run's context; raises :class:`NotRun` where a side cannot run here."""
    try:
        import torch
    except ImportError as e:
        raise NotRun(
            f"the reference side is torch autograd, and torch is not importable here ({e}); "
            "pip install torch"
        ) from e

    from backprop_xp import backend as B

    # Full float32 on both sides: no TF32 in GEMMs or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    rng = np.random.default_rng(args.seed)
    common = dict(torch=torch, rng=rng, quick=args.quick, model=args.model)
    if args.backend == "numpy":
        xp = B.namespace("numpy")
        return Context("numpy", xp, "cpu", False, torch_device=torch.device("cpu"), **common)
    if args.backend == "cupy":
        xp = B.namespace("cupy")  # raises BackendUnavailableError without a GPU
        if not torch.cuda.is_available():
            raise NotRun("--backend cupy needs torch with CUDA for the reference")
        import cupy

        dev = cupy.cuda.Device()
        torch_dev = torch.device("cuda", dev.id)
        return Context("cupy", xp, dev, True, torch_device=torch_dev, **common)
    xp = B.namespace("torch")
    want = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise NotRun("--device cuda but torch sees no CUDA device")
    dev = torch.device(want)
    return Context("torch", xp, dev, dev.type == "cuda", torch_device=dev, **common)


def set_threads(ctx: Context, args: argparse.Namespace) -> tuple[int, Any]:
    """Give torch's intra-op pool as many threads as NumPy's BLAS (or both ``--threads``)."""
    limiter = None
    n = args.threads
    if n is not None:
        try:
            import threadpoolctl

            limiter = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        except ImportError:
            print("bench: threadpoolctl missing; --threads sets torch only", file=sys.stderr)
    else:
        n = numpy_blas_threads()
        if n is None:
            n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            print(
                f"bench: cannot read NumPy's BLAS threads (threadpoolctl); torch gets {n}",
                file=sys.stderr,
            )
    ctx.torch.set_num_threads(n)
    return n, limiter


def discover(ctx: Context, only: list[str]) -> tuple[list[Case], list[str]]:
    """The cases of every family (or of ``only``), and the families that raised."""
    cases: list[Case] = []
    broken: list[str] = []
    for family in families():
        if only and family not in only:
            continue
        try:
            module = importlib.import_module(f"cases_{family}")
            cases.extend(module.cases(ctx))
        except Exception as e:  # one broken family must not stop the others
            print(f"bench: skipped cases_{family}.py: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc(limit=-2, file=sys.stderr)
            broken.append(family)
    return cases, broken


def select(cases: list[Case], ctx: Context, args: argparse.Namespace) -> list[Case]:
    if not ctx.gpu:
        cases = [c for c in cases if not c.gpu_only]
    if not args.ops and not args.model:
        return cases
    wanted = {name.lower() for arg in args.ops for name in arg.split(",") if name}
    keep = [c for c in cases if c.op.lower() in wanted or c.family.lower() in wanted]
    if args.model:
        models = [c for c in cases if c.family.lower() == "model"]
        named = [c for c in models if args.model.lower() in c.op.lower()]
        keep += [c for c in (named or models) if c not in keep]
    known = {c.op.lower() for c in cases} | {c.family.lower() for c in cases}
    unknown = sorted(wanted - known)
    if unknown:
        raise NotRun(
            f"--ops {' '.join(unknown)} matched no case; known ops and families: "
            f"{', '.join(sorted(known))}"
        )
    return keep


COLUMNS = (
    ("op", 22, "<"),
    ("shape", 22, "<"),
    ("ms ours", 9, ">"),
    ("ms torch", 9, ">"),
    ("ratio", 6, ">"),
    ("target", 7, ">"),
    ("met?", 4, ">"),
    ("GFLOP/s", 8, ">"),
    ("%peak", 6, ">"),
    ("MiB ours", 9, ">"),
    ("MiB torch", 9, ">"),
    ("bg", 4, ">"),
)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def row_cells(r: dict[str, Any]) -> list[str]:
    if r.get("error"):
        return [r["op"], r["shape"], "error: " + r["error"][:60]]
    target = r["target"]
    return [
        r["op"],
        r["shape"],
        _fmt(r["ms_ours"], ".3f"),
        _fmt(r["ms_torch"], ".3f"),
        _fmt(r["ratio"], ".3f"),
        "-" if target is None else f"<={target:g}",
        "-" if r["met"] is None else ("yes" if r["met"] else "NO"),
        _fmt(r["gflops"], ".1f"),
        "-" if r["peak_share"] is None else f"{100 * r['peak_share']:.0f}%",
        "n/a" if r["mem_ours"] is None else f"{r['mem_ours'] / 2**20:.1f}",
        "n/a" if r["mem_torch"] is None else f"{r['mem_torch'] / 2**20:.1f}",
        _fmt(r.get("background_cores"), ".1f"),
    ]


def format_row(cells: list[str]) -> str:
    out = []
    for cell, (_, width, align) in zip(cells, COLUMNS, strict=False):
        out.append(format(cell, f"{align}{width}"))
    out.extend(cells[len(COLUMNS) :])
    return " ".join(out).rstrip()


def markdown_table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" if a == "<" else "--:" for _, _, a in COLUMNS) + "|",
    ]
    for r in records:
        cells = row_cells(r)
        cells += [""] * (len(COLUMNS) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(ctx: Context, info: dict[str, Any], args: argparse.Namespace, threads: int) -> str:
    side = f"{ctx.backend} ({'cuda' if ctx.gpu else 'cpu'})"
    ref = f"torch {info['torch']} autograd ({ctx.torch_device})"
    lines = [f"backprop_xp benchmarks: ours = {side} vs {ref}"]
    if ctx.gpu:
        lines.append(f"device: {info['gpu']} (CUDA {info['cuda']}); host CPU {info['cpu_model']}")
    else:
        flags = " ".join(info["cpu_flags"])
        lines.append(f"device: {info['cpu_model']} [{flags}], {info['cpu_count']} CPUs")
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} kernel {b.get('architecture')} "
        f"({b.get('threading_layer')}, {b.get('num_threads')} threads)"
        for b in info["numpy_blas"]
    )
    lines.append(f"numpy {info['numpy']} BLAS: {blas or 'unknown (threadpoolctl missing)'}")
    lines.append(
        f"threads: {threads} (torch intra-op {info['torch_threads']}, torch BLAS "
        f"{info['torch_blas']}); NumPy's elementwise ops are single-threaded"
    )
    tf32 = "TF32 off (torch matmul/cuDNN, CUPY_TF32=0)" if ctx.gpu else "no TF32 on CPU"
    lines.append(
        f"{ctx.dtype}; {tf32}; warm-up {args.warmup}; median of {args.repeat} samples "
        f"in ABBA order, each >= {args.min_sample_ms:g} ms of calls"
        + (f" after a {args.settle_ms:g} ms pause" if args.settle_ms else "")
        + ("; clock: process CPU time" if args.clock == "cpu" else "")
        + ("; GPU synchronized before each clock read" if ctx.gpu else "")
    )
    lines.append(f"date {info['date']}; load average {info['load_avg']}; commit {info['commit']}")
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if name in info["env"]:
            lines.append(
                f"warning: {name}={info['env'][name]} is set; it can slow a current NumPy. "
                "For timing run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python "
                "benchmarks/bench.py ..."
            )
    if args.quick:
        lines.append("--quick: tiny shapes and few repeats; these numbers mean nothing")
    return "\n".join(lines)


def measure_peaks(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Float32 GEMM GFLOP/s of each side's library: the yardstick for ``%peak``."""
    if args.gemm_n:
        n = args.gemm_n
    elif ctx.gpu:
        n = 2048 if args.quick else 8192
    else:
        n = 256 if args.quick else 2048
    repeat = 3 if args.quick else 7
    libs = [ctx.backend] if ctx.backend == "torch" else [ctx.backend, "torch"]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    return {
        "n": n,
        "repeat": repeat,
        "gflops": {lib: gemm_peak(lib, n, repeat, ctx.gpu, clock) for lib in libs},
    }


def run_case(
    case: Case, ctx: Context, args: argparse.Namespace, peaks: dict[str, Any]
) -> dict[str, Any]:
    target = case.target(ctx.gpu)
    load = BackgroundLoad()
    rec: dict[str, Any] = {
        "op": case.op,
        "family": case.family,
        "shape": case.shape,
        "target": target,
        "flops": case.flops,
    }
    try:
        t = time_pair(
            case.ours,
            case.torch,
            sync=ctx.sync,
            repeat=args.repeat,
            warmup=args.warmup,
            min_sample_s=args.min_sample_ms / 1e3,
            settle_s=args.settle_ms / 1e3,
            clock=time.process_time if args.clock == "cpu" else time.perf_counter,
        )
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        rec["error"] = f"{type(e).__name__}: {e}"
        return rec
    ratio = t.ms_ours / t.ms_torch
    rec |= {
        "ms_ours": t.ms_ours,
        "ms_torch": t.ms_torch,
        "ratio": ratio,
        "met": None if target is None else ratio <= target,
        "ms_ours_min": 1e3 * min(t.ours),
        "ms_torch_min": 1e3 * min(t.torch),
        "samples_ms_ours": [1e3 * s for s in t.ours],
        "samples_ms_torch": [1e3 * s for s in t.torch],
        "calls_per_sample": [t.calls_ours, t.calls_torch],
        "gflops": None,
        "gflops_torch": None,
        "peak_share": None,
        "peak_share_torch": None,
        "mem_ours": None,
        "mem_torch": None,
    }
    if case.flops:
        rec["gflops"] = case.flops / (t.ms_ours / 1e3) / 1e9
        rec["gflops_torch"] = case.flops / (t.ms_torch / 1e3) / 1e9
        rec["peak_share"] = rec["gflops"] / peaks["gflops"][ctx.backend]
        rec["peak_share_torch"] = rec["gflops_torch"] / peaks["gflops"]["torch"]
    rec["background_cores"] = load.cores()
    if not args.no_memory:
        torch_kind = "torch_cuda" if ctx.gpu else "torch_cpu"
        ours_kind = {"numpy": "numpy", "cupy": "cupy"}.get(ctx.backend, torch_kind)
        rec["mem_ours"] = peak_memory(case.ours, ours_kind)
        rec["mem_torch"] = peak_memory(case.torch, torch_kind)
    return rec


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; the exit status is documented in the module docstring."""
    args = parse_args(argv)  # exits with status 2 on a bad command line
    try:
        return run(args)
    except NotRun as e:
        print(f"bench: {e}", file=sys.stderr)
        return EXIT_NOT_RUN


def run(args: argparse.Namespace) -> int:
    from backprop_xp.backend import BackendUnavailableError

    try:
        ctx = make_context(args)
    except BackendUnavailableError as e:
        raise NotRun(str(e)) from e
    threads, _limiter = set_threads(ctx, args)
    if args.clock == "cpu" and (threads != 1 or ctx.gpu):
        raise NotRun("--clock cpu needs a CPU run with --threads 1")
    if args.settle_ms is None:
        args.settle_ms = 150.0 if threads > 1 and not ctx.gpu and not args.quick else 0.0
    info = machine_info(ctx, REPO)
    print(header(ctx, info, args, threads), flush=True)

    found, broken = discover(ctx, args.cases)
    try:
        cases = select(found, ctx, args)
    except NotRun as e:
        if not broken:
            raise
        print(f"bench: {e}", file=sys.stderr)
        cases = []
    if not cases:
        if broken:  # nothing ran because something raised: a failure, not a usage error
            print(f"bench: no cases to run; cases_{broken[0]}.py failed to load", file=sys.stderr)
            return EXIT_FAILED
        raise NotRun("no cases to run")
    peaks = measure_peaks(ctx, args)
    print(
        f"float32 GEMM peak ({peaks['n']}^3, median of {peaks['repeat']}): "
        + ", ".join(f"{lib} {g:.1f} GFLOP/s" for lib, g in peaks["gflops"].items()),
        flush=True,
    )
    print()
    print(format_row([name for name, _, _ in COLUMNS]), flush=True)
    records = []
    for case in cases:
        rec = run_case(case, ctx, args, peaks)
        print(format_row(row_cells(rec)), flush=True)
        rec |= {
            "backend": ctx.backend,
            "device": info["device"],
            "cpu_model": info["cpu_model"],
            "threads": threads,
            "numpy_version": info["numpy"],
            "torch_version": info["torch"],
            "date": info["date"],
        }
        records.append(rec)
    if args.markdown:
        print()
        print(markdown_table(records))
    errors = [r for r in records if r.get("error")]
    met = [r for r in records if r.get("met") is not None]
    print(
        f"\n{len(records)} cases, {sum(bool(r['met']) for r in met)}/{len(met)} targets met"
        + (f", {len(errors)} errors" if errors else "")
        + (f", {len(broken)} cases files failed to load" if broken else "")
        + "\nbg: cores that other processes kept busy during the row (0 = a quiet machine)"
    )
    if args.json:
        doc = {
            "schema": 1,
            "machine": info | {"threads": threads},
            "gemm_peak": peaks,
            "settings": {
                k: getattr(args, k)
                for k in (
                    "repeat",
                    "warmup",
                    "min_sample_ms",
                    "settle_ms",
                    "clock",
                    "quick",
                    "seed",
                    "ops",
                    "model",
                )
            },
            "records": records,
        }
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        except OSError as e:
            print(f"bench: cannot write --json {args.json}: {e}", file=sys.stderr)
            return EXIT_FAILED
        print(f"wrote {args.json}")
    return EXIT_FAILED if errors or broken else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
