"""The subnormal flush holds on every path users run (issue 33): the installed `probe` script and `python -m probe`,
whatever the command (--help included), and the Python API. Each runs in a process of its own, which then measures
whether every torch thread flushes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES
from probe.utils.runtime import subnormals_flushed

PROBE = Path(sys.executable).with_name("probe")  # the console script pip installed

# Runs the installed script as its shebang would (runpy, as __main__), `python -m probe` (the package's __main__) or
# API code; then says whether it had imported torch, and whether each of 2 torch threads flushes subnormals: the
# threads torch starts copy the setting of the thread that starts them.
RUNNER = """
import json, runpy, sys

how, args = sys.argv[1], sys.argv[2:]
try:
    if how == "script":
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
    elif how == "module":
        sys.argv = ["probe", *args]
        runpy.run_module("probe", run_name="__main__", alter_sys=True)
    else:
        exec(args[0])
except SystemExit as stop:
    if stop.code not in (0, None):
        raise
loaded = "torch" in sys.modules
import torch

torch.set_num_threads(2)
from probe.utils.runtime import subnormals_flushed

print("RUNTIME " + json.dumps({"torch_loaded": loaded, "flushed": subnormals_flushed()}))
"""


def run(how: str, *args, cwd: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", RUNNER, how, *map(str, args)], capture_output=True, text=True,
                            timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("RUNTIME ")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0].removeprefix("RUNTIME "))


@pytest.mark.parametrize("how,args", [("script", [PROBE, "segment", "--help"]), ("module", ["segment", "--help"]),
                                      ("script", [PROBE, "--version"])])
def test_every_entry_point_flushes_before_torch_starts_a_thread(how, args, tmp_path):
    """--help imports no torch, yet the process flushes: torch's threads, started later, copy the setting."""
    assert run(how, *args, cwd=tmp_path) == {"torch_loaded": False, "flushed": True}


def test_a_command_that_computes_flushes_in_every_torch_thread(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes((FIXTURES / "adm_tiny32.png").read_bytes())
    runtime = run("script", PROBE, "features", "--images", image, "--checkpoint", FIXTURES / "adm_tiny32.pt",
                  "--model-flags", FIXTURES / "adm_tiny32.json", "--blocks", "2", "--steps", "50", "--threads", "2",
                  "--quiet", "--out", tmp_path / "features", cwd=tmp_path)
    assert runtime == {"torch_loaded": True, "flushed": True} and (tmp_path / "features" / "a.npz").is_file()


def test_the_api_flushes(tmp_path):
    code = """
import numpy as np
import probe

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
labels = rng.integers(0, 3, (2, 8, 8))
probe.Segmenter(probe.load_backbone("pixels", image_size=8), members=1, threads=2).fit(images, labels)
"""
    assert run("code", code, cwd=tmp_path) == {"torch_loaded": True, "flushed": True}


def test_the_measure_sees_a_thread_that_does_not_flush():
    """subnormals_flushed measures the threads that compute, not a setting: in a thread that stops flushing (its own
    control register cleared), with torch on one thread, it says False."""
    import ctypes
    import threading

    import torch

    from probe.utils.runtime import FLUSH_BITS

    class Environment(ctypes.Structure):  # glibc's fenv_t on x86-64
        _fields_ = [("x87", ctypes.c_ubyte * 28), ("mxcsr", ctypes.c_uint32)]

    def unflushed() -> None:
        libm, environment = ctypes.CDLL("libm.so.6"), Environment()
        libm.fegetenv(ctypes.byref(environment))
        environment.mxcsr &= ~FLUSH_BITS
        libm.fesetenv(ctypes.byref(environment))
        result.append(subnormals_flushed())

    assert subnormals_flushed()  # this process imported probe first
    result, previous = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        thread = threading.Thread(target=unflushed)
        thread.start()
        thread.join(timeout=60)
    finally:
        torch.set_num_threads(previous)
    assert result == [False] and subnormals_flushed()
