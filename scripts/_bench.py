"""Timing, memory and table helpers shared by the benchmark scripts in scripts/.

    measure(fn, device)        median time of fn() in seconds (warm-up, adaptive repeats)
    peak_cpu_bytes(fn)         peak bytes allocated by torch's CPU allocator while fn() runs
    peak_cuda_bytes(fn)        the same on the GPU (torch.cuda max_memory_allocated)
    copy_time(nbytes, device)  time of a plain tensor copy moving `nbytes` (read + write)
    machine_info(device)       lines describing the machine, for a report header
    Table                      a table printed as aligned text or written as Markdown

Times are wall-clock: time.perf_counter on the CPU, torch.cuda.Event on the GPU.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Result of `measure`: the median seconds per call and how it was obtained."""

    seconds: float
    calls: int  # timed calls in all (1 when the first call was over the time limit)
    samples: List[float] = field(default_factory=list)  # seconds per call, one per repeat

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    @property
    def single(self) -> bool:
        """True when only one call was timed (it was over `once_above`)."""
        return self.calls == 1


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _clock(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds per call of fn() over n back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def measure(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    *,
    budget: float = 0.5,
    min_repeats: int = 3,
    max_repeats: int = 50,
    min_sample: float = 2e-3,
    once_above: Optional[float] = None,
    warmup: int = 1,
) -> Timing:
    """Median time of one call of fn(), in seconds.

    The first call is a timed warm-up. If it took longer than `once_above`, that single time is
    the answer (for slow baselines). Otherwise fn is called back to back n times per sample, n
    chosen so a sample lasts at least `min_sample` (so the timer's resolution and Python
    overhead do not matter), and the number of samples is chosen so all of them take about
    `budget` seconds, clamped to [min_repeats, max_repeats]. Returns the median sample.
    """
    device = torch.device(device)
    sync(device)
    first = _clock(fn, 1, device)
    if once_above is not None and first > once_above:
        return Timing(first, 1, [first])
    for _ in range(warmup - 1):
        _clock(fn, 1, device)
    est = min(first, _clock(fn, 1, device))  # the first call may include one-off costs
    est = max(est, 1e-7)
    n = max(1, math.ceil(min_sample / est))
    repeats = int(min(max_repeats, max(min_repeats, budget / (n * est))))
    samples = [_clock(fn, n, device) for _ in range(repeats)]
    return Timing(statistics.median(samples), repeats * n + 1, samples)


# --------------------------------------------------------------------------- memory
@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines) for the block."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no stderr
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes allocated through PyTorch's CPU allocator while fn() runs, above what
    was allocated before it started.

    Read from the allocation/free events that torch.profiler records with profile_memory=True:
    every tensor allocation, including temporaries inside ATen kernels and autograd's saved
    tensors, is summed in time order and the maximum of the running sum is returned. Memory
    outside torch's allocator (Python objects, the interpreter) is not counted. fn's result is
    released inside the measurement, so returned tensors count while they are alive.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


def peak_cuda_bytes(fn: Callable[[], object], device: torch.device | str = "cuda") -> int:
    """Peak bytes allocated on the GPU while fn() runs, above what was allocated before."""
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def copy_time(nbytes: int, device: torch.device | str = "cpu", **measure_kw) -> Timing:
    """Time of `dst.copy_(src)` for fp32 tensors of nbytes / 2 bytes each: a copy that reads
    and writes `nbytes` bytes in all, i.e. the memory-bound time of an op moving that much."""
    n = max(1, nbytes // 2 // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device, **measure_kw)


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def bench_device(name: str) -> torch.device:
    """The device a benchmark's --device names (auto, cpu, cuda, cuda:N); one line and exit code
    1 when this machine has no such device, not a traceback."""
    from rlts.runtime import select_device

    try:
        return select_device(name)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise SystemExit(f"--device {name}: {e}") from None


def machine_info(device: torch.device | str = "cpu") -> List[str]:
    """Lines describing the machine and software, for the header of a report."""
    lines = [
        f"CPU: {cpu_model()}, {cpu_cores()} cores available ({os.cpu_count()} logical in all)",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}",
    ]
    try:
        import triton

        lines[-1] += f"; triton {triton.__version__}"
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()
        busy = " (busy: other processes compete for the cores, multi-threaded timings suffer)" if load[0] > 0.5 else ""
        lines.append(f"load average before the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}{busy}")
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return lines


def write_report(header: List[str], table: "Table", out: Optional[str]) -> None:
    """Print the machine lines `header` and `table`; with `out`, also write them to that file
    as Markdown (the header as a list above the table)."""
    print("\n".join(header))
    print(table)
    if out:
        Path(out).write_text("\n".join([*[f"- {h}" for h in header], "", table.markdown()]))


# --------------------------------------------------------------------------- tables
@dataclass
class Table:
    """A titled table of strings: print(table) aligns it, table.markdown() formats it for docs."""

    title: str
    columns: Sequence[str]
    rows: List[List[str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def __str__(self) -> str:
        rows = [list(self.columns)] + self.rows
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        fmt = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
        out = [self.title, fmt(self.columns), "  ".join("-" * w for w in widths)]
        out += [fmt(r) for r in self.rows] + self.notes
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---:" for _ in self.columns) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out += [""] + [n + "  " for n in self.notes]
        return "\n".join(out) + "\n"


def fmt_ms(t: Timing | float) -> str:
    """Milliseconds with 3 significant digits; a trailing * marks a single timed run."""
    ms = t.ms if isinstance(t, Timing) else t * 1e3
    s = f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"
    return s + ("*" if isinstance(t, Timing) and t.single else "")


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
