"""Process-wide settings the `probe` command makes at start, a record of them for metrics files, and the one way
the toolkit runs a function through torch.compile (`Compiled`).

Neither changes what is computed, only how fast: subnormal floats are flushed to zero (Adam's moments of weights whose
gradient vanishes otherwise decay through the slow subnormal range; set when probe is imported, so every entry point,
the API and a sweep's Ray workers have it) and glibc keeps freed memory for reuse instead of returning every large
block to the system (torch frees and allocates the same large buffers in every UNet pass and every training step; at
glibc's defaults each reuse faults its pages in again: 210,000 page faults and 1.14 s per pass of the whole 256x256
ADM UNet at num_channels 64 against 12,000 and 0.88 s, three processes each alternated).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterator

from probe.errors import ProbeError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: blocks up to 32 MB come from (and return to) the heap
TRIM_THRESHOLD = 1024 * 1024 * 1024  # free memory at the heap's top kept up to 1 GB before it goes back to the system
FLUSH_BITS = 0x8040  # the x86-64 SSE control register's flush-to-zero (bit 15) and denormals-are-zero (bit 6)

_freed_memory_kept = False


class _FloatEnvironment(ctypes.Structure):
    """glibc's fenv_t on x86-64: the x87 environment (28 bytes), then the SSE control register (MXCSR)."""

    _fields_ = [("x87", ctypes.c_ubyte * 28), ("mxcsr", ctypes.c_uint32)]


def _set_flush_bits() -> bool:
    """Set FLUSH_BITS in this thread's SSE control register through glibc's fegetenv / fesetenv, without torch;
    False where that does not apply (not x86-64 Linux with glibc)."""
    if platform.machine() not in ("x86_64", "AMD64") or platform.libc_ver()[0] != "glibc":
        return False
    libm = ctypes.CDLL("libm.so.6")
    environment = _FloatEnvironment()
    if libm.fegetenv(ctypes.byref(environment)) != 0:
        return False
    environment.mxcsr |= FLUSH_BITS
    return libm.fesetenv(ctypes.byref(environment)) == 0


def flush_subnormals() -> None:
    """Treat subnormal floats (below 1.2e-38) as zero on the CPU in this thread and every thread started after it.
    A thread copies the setting when it is created and torch's worker threads are created once, so `import probe`
    calls this before torch can start any: on x86-64 Linux through the control register, without importing torch;
    elsewhere through torch (torch.set_flush_denormal) once torch is imported, which the commands and the API call
    again before their work."""
    if not _set_flush_bits() and "torch" in sys.modules:
        import torch

        torch.set_flush_denormal(True)


def keep_freed_memory() -> bool:
    """Have glibc serve blocks up to 32 MB from its heap and keep up to 1 GB of freed memory for reuse (mallopt);
    returns whether it could (False off glibc, e.g. on macOS, where nothing changes)."""
    global _freed_memory_kept
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    _freed_memory_kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _freed_memory_kept


def tune_process() -> None:
    """Both settings above, as the `probe` command has them: for processes it does not start (a sweep's Ray workers,
    the benchmarks)."""
    flush_subnormals()
    keep_freed_memory()


# What torch threads beyond the free cores cost, as measured (issue 37, 2026-12-05: an AMD EPYC's 2 cores kept at a
# load of 2-4 by other jobs): `probe segment`'s ensemble training took 120.9 s at the default 2 threads against
# 10.2 s with 1. The busy warning of the commands and of the API says it in these words.
BUSY_SLOWDOWN = "segment training ran 12x slower on 2 busy cores"


def busy_warning(threads: int, load: float | None = None, cores: int | None = None,
                 fix: str = "--threads {free}") -> str | None:
    """One line when other work already keeps the cores busy (the 1-minute load average plus `threads` exceeds the
    cores), suggesting fewer threads when there are more than the free cores (`fix`, with {free} the cores left:
    "--threads {free}" for the commands, "threads={free}" for the API): torch threads beyond the free cores contend
    with the other work (BUSY_SLOWDOWN); None otherwise."""
    load = os.getloadavg()[0] if load is None else load
    cores = cores or os.cpu_count() or 1
    if load < 0.75 or load + threads <= cores + 0.5:
        return None
    free = max(1, cores - round(load))
    if threads <= free:  # no fewer threads to suggest
        return (f"the machine is busy (load average {load:.1f} on {cores} cores): this run's {threads} torch "
                f"thread{'s share' if threads > 1 else ' shares'} the cores with the other work, so the run is "
                "slower; run one job at a time for full speed")
    return (f"the machine is busy (load average {load:.1f} on {cores} cores) and this run starts {threads} torch "
            f"threads: they will contend with the other work (measured: {BUSY_SLOWDOWN}); pass "
            f"{fix.format(free=free)}, or run one job at a time")


@contextlib.contextmanager
def torch_threads(threads: int | None, fix: str = "threads={free}") -> Iterator[None]:
    """The API's `threads=`: run the block with `threads` torch threads (None: torch's current number, all cores by
    default), restored after, subnormals flushed (flush_subnormals); before it, a RuntimeWarning of busy_warning's
    line when other work already keeps the cores busy."""
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ProbeError(f"threads={threads!r}: give a whole number of 1 or more (or None for all cores)")
    previous = torch.get_num_threads()
    flush_subnormals()  # as at import: this thread and the torch threads started from here on
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        warning = busy_warning(torch.get_num_threads(), fix=fix)
        if warning:
            warnings.warn(warning, RuntimeWarning, stacklevel=4)  # the caller of the API function
        yield
    finally:
        torch.set_num_threads(previous)


def subnormals_flushed() -> bool:
    """Whether every torch thread flushes subnormals, measured: a product of subnormals long enough for torch to split
    it over all its threads comes out all zero only when each of them flushes. The subnormals are made from their bits
    (a float conversion in a flushing thread would give zeros)."""
    import torch

    tiny = torch.full((torch.get_num_threads() * 2 ** 17,), 2 ** 20, dtype=torch.int32).view(torch.float32)  # 1.5e-39
    return bool((tiny * 1.5 == 0).all())


def runtime_info(device: str) -> dict:
    """What the arithmetic ran on, for metrics files: device, torch threads, whether every torch thread of this
    process flushes subnormals (subnormals_flushed) and whether it keeps freed memory, torch's version."""
    import torch

    return {"device": str(device), "threads": torch.get_num_threads(), "subnormals_flushed": subnormals_flushed(),
            "freed_memory_kept": _freed_memory_kept, "torch": torch.__version__}


class Compiled:
    """`function` run through torch.compile (fullgraph=True) for the shapes of its first call, or run as it is when
    `compile` is False. One graph, dynamic=False: calls with tensors of other shapes (an epoch's last, shorter
    gather; the smaller batches of the checked epochs) run as they are, since compiling another graph would cost more
    (2-15 s) than those few calls gain. If compiling fails (no C++ compiler, no triton on a GPU) it says so once on
    stderr, naming `what` runs without it, and runs `function` as it is from then on: the same arithmetic."""

    def __init__(self, function: Callable, compile: bool, what: str) -> None:
        import torch

        self.eager, self.what = function, what
        self.function = torch.compile(function, dynamic=False, fullgraph=True) if compile else function
        self.shapes: list[tuple[int, ...]] | None = None

    @property
    def compiled(self) -> bool:
        """Whether calls of the first call's shapes run compiled (False after a failed compile too)."""
        return self.function is not self.eager

    def __call__(self, *args):
        if self.compiled:
            import torch

            shapes = [tuple(arg.shape) for arg in args if isinstance(arg, torch.Tensor)]
            self.shapes = self.shapes or shapes
            if shapes == self.shapes:
                try:
                    return self.function(*args)
                except Exception as error:  # inductor raises many types when no compiler works
                    print(f"probe: torch.compile failed ({type(error).__name__}); {self.what} without it",
                          file=sys.stderr)
                    self.function = self.eager
        return self.eager(*args)
