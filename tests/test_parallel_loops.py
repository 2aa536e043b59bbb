"""Parallel loops in the host's C (``KILN_PARALLEL_LOOP``, ``kiln/codegen/c.py``): every
iteration runs exactly once for any count and team size, a thread whose share is done takes
the batches a slow thread has not started, and without OpenMP it is a plain loop."""
from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest

from kiln.codegen.c import CRenderer
from kiln.codegen.c_support import HELPERS
from kiln.ir.dtype import DType
from kiln.ir.expr import Const, Var
from kiln.ir.loop import PARALLEL, Buffer, For, Store
from tests.conftest import require_toolchain

PROGRAM = """#define _DEFAULT_SOURCE
#include <stdint.h>
#include <time.h>
{helper}
/* out[i] = (thread that ran iteration i) + 1; thread 0 sleeps ``slow_us`` per iteration */
void run(int threads, int64_t n, int32_t* out, int slow_us) {{
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  KILN_PARALLEL_LOOP(i, n) {{
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    if (t == 0 && slow_us) {{ struct timespec d = {{0, slow_us * 1000L}}; nanosleep(&d, 0); }}
    out[i] += t + 1;
  }} KILN_PARALLEL_LOOP_END
}}
"""


@pytest.fixture(scope="module")
def gcc():
    require_toolchain("gcc")


def _library(tmp_path, openmp: bool) -> ctypes.CDLL:
    src = tmp_path / "loop.c"
    src.write_text(PROGRAM.format(helper=HELPERS["parallel_loop"]))
    lib = tmp_path / ("loop_omp.so" if openmp else "loop.so")
    flags = ["-O2", "-std=gnu11", "-Wall", "-Werror", "-fPIC", "-shared"] + (["-fopenmp"] if openmp else [])
    subprocess.run(["gcc", *flags, "-o", str(lib), str(src)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def _run(lib, threads: int, n: int, slow_us: int = 0) -> np.ndarray:
    out = np.zeros(max(n, 1), np.int32)
    lib.run(ctypes.c_int(threads), ctypes.c_int64(n), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(slow_us))
    return out[:n]


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000])
def test_every_iteration_runs_exactly_once(gcc, tmp_path, threads, n):
    out = _run(_library(tmp_path, openmp=True), threads, n)
    assert np.all((out >= 1) & (out <= threads)), out  # written once, by one of the team (a second write adds)


def test_a_thread_done_with_its_share_takes_a_slow_threads_batches(gcc, tmp_path):
    # thread 0 sleeps 2 ms per iteration of its 64; thread 1's 64 take no time, so it goes on
    # with the batches of thread 0's share that thread 0 has not claimed yet
    out = _run(_library(tmp_path, openmp=True), 2, 128, slow_us=2000)
    assert np.all(out[64:] == 2)            # its own share, all of it
    assert np.count_nonzero(out[:64] == 2) >= 32  # and most of the other's
    assert np.all((out >= 1) & (out <= 2))


def test_without_openmp_it_is_a_plain_loop(gcc, tmp_path):
    out = _run(_library(tmp_path, openmp=False), 4, 100)
    assert np.all(out == 1)


def test_a_parallel_loop_renders_as_the_macro_with_its_helper():
    i = Var("i")
    r = CRenderer()
    r.buffers = {"y": Buffer("y", (8,), DType.float32)}
    r.stmt(For(i, 8, Store("y", (i,), Const(1.0, DType.float32)), kind=PARALLEL), 1)
    assert r.lines[0] == "  KILN_PARALLEL_LOOP(i, 8) {" and r.lines[-1] == "  } KILN_PARALLEL_LOOP_END"
    assert "KILN_PARALLEL_LOOP(v, n)" in r.support_code()
