"""Generated C: snapshot of a small fused kernel, export layout, kernel cache."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
from onnx import helper

import kiln
from tests.util import make_model

SNAPSHOTS = Path(__file__).parent / "snapshots"


def gemm_bias_relu():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal((16,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    return make_model(nodes, [("x", np.float32, [12, 8])], [("y", np.float32, [12, 16])],
                      initializers=[("w", w), ("b", b)])


def check_snapshot(name: str, text: str):
    path = SNAPSHOTS / name
    if os.environ.get("KILN_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"generated source changed; if intended, rerun with KILN_UPDATE_SNAPSHOTS=1 ({path})"


def test_snapshot_gemm_bias_relu(monkeypatch):
    # The schedule depends on the CPU's vector width: pin an AVX2-class host for the snapshot.
    from kiln.passes.capabilities import Capabilities
    from kiln.targets import host

    monkeypatch.setattr(host, "capabilities", lambda: Capabilities(32, 16, 2))
    m = kiln.compile(gemm_bias_relu())
    assert m.kernel_count == 1  # bias and relu fused as the matmul's epilogue
    check_snapshot("gemm_bias_relu.c", m.source())


def test_register_tile_zeroing_and_write_back_are_unrolled_like_its_rows():
    # A tile's accumulator array stays in registers only when every loop over its rows is
    # unrolled: the main loop, the zeroing before it and the write-back after it.
    import re

    src = kiln.compile(gemm_bias_relu()).source()
    pragmas = {loop: n for n, loop in re.findall(r"#pragma GCC unroll (\d+)\s+for \(int64_t (\w+) = 0", src)}
    (row,) = [v for v in pragmas if v + "_init" in pragmas and v + "_wb" in pragmas]
    assert pragmas[row] == pragmas[row + "_init"] == pragmas[row + "_wb"]


def test_export_builds_with_make_and_reloads(tmp_path):
    model = gemm_bias_relu()
    m = kiln.compile(model)
    out = m.export(tmp_path / "proj")
    for f in ("model.c", "model.h", "weights.bin", "Makefile", "README.md", "manifest.json"):
        assert (out / f).exists(), f
    subprocess.run(["make", "-s", "-C", str(out)], check=True)
    assert (out / "libkiln_model.so").exists()
    x = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)
    np.testing.assert_array_equal(kiln.load(out).run({"x": x})["y"], m.run({"x": x})["y"])


def test_c_program_links_against_export(tmp_path):
    m = kiln.compile(gemm_bias_relu())
    out = m.export(tmp_path / "proj")
    x = np.arange(96, dtype=np.float32).reshape(12, 8) / 50 - 1
    (out / "x.bin").write_bytes(x.tobytes())
    (out / "main.c").write_text(r'''
#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(void) {
  static _Alignas(64) unsigned char arena[KILN_MODEL_ARENA_SIZE + 64];
  static float x[12 * 8], y[12 * 16];
  static unsigned char w[KILN_MODEL_WEIGHTS_SIZE + 64];
  FILE* f = fopen("weights.bin", "rb"); fread(w, 1, KILN_MODEL_WEIGHTS_SIZE, f); fclose(f);
  f = fopen("x.bin", "rb"); fread(x, 4, 96, f); fclose(f);
  void* ins[] = {x}; void* outs[] = {y};
  if (kiln_model_run(ins, outs, w, arena, NULL) != 0) return 1;
  f = fopen("y.bin", "wb"); fwrite(y, 4, 12 * 16, f); fclose(f);
  return 0;
}
''')
    subprocess.run(["gcc", "-O2", "-fopenmp", "-o", "main", "main.c", "model.c", "-lm"], cwd=out, check=True)
    subprocess.run(["./main"], cwd=out, check=True)
    y = np.frombuffer((out / "y.bin").read_bytes(), np.float32).reshape(12, 16)
    np.testing.assert_allclose(y, m.run({"x": x})["y"], rtol=1e-6)


def test_recompile_unchanged_model_uses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    model = gemm_bias_relu()
    kiln.compile(model).build()
    assert len(list(tmp_path.glob("*.so"))) == 1
    t = time.perf_counter()
    kiln.compile(model).build()
    assert len(list(tmp_path.glob("*.so"))) == 1
    assert time.perf_counter() - t < 5  # a cache hit does not invoke gcc


def test_inspect_reports_kernels_and_memory():
    text = kiln.inspect(gemm_bias_relu())
    assert "kernels: 1" in text and "lower bound" in text
    for stage in ("fold_constants", "fuse", "lower", "schedule", "memory_plan", "codegen"):
        assert kiln.inspect(gemm_bias_relu(), print_ir_after=stage).strip()
    assert "[vectorized]" in kiln.inspect(gemm_bias_relu(), print_ir_after="schedule")


def _reduce_sum_model(n: int, dtype=np.float32):
    return make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], [("x", dtype, [3, n])],
                      [("y", dtype, [3])], [("axes", np.array([1], np.int64))], opset=13)


def test_float_sums_into_a_scalar_add_lanes_in_a_tree():
    """x86: a vectorized float sum into a scalar keeps 16 partial sums and adds them in 4
    halving steps (gcc's own end of ``omp simd reduction(+:)`` adds the 16 lanes one by one)."""
    x = np.random.default_rng(0).standard_normal((3, 96)).astype(np.float32)
    c = kiln.compile(_reduce_sum_model(96), target="host")
    src = c.source()
    assert "_lanes[16]" in src and "reduction(+:" not in src
    assert [h for h in (8, 4, 2, 1) if f"< {h}; ++" in src] == [8, 4, 2, 1]
    np.testing.assert_allclose(c.run({"x": x})["y"], x.sum(axis=1, dtype=np.float64), rtol=1e-6, atol=1e-6)
    x64 = x.astype(np.float64)
    got = kiln.compile(_reduce_sum_model(96, np.float64), target="host").run({"x": x64})["y"]
    np.testing.assert_allclose(got, x64.sum(axis=1), rtol=1e-13)


def test_float_sums_shorter_than_two_rows_of_lanes_keep_the_openmp_reduction():
    for n in (16, 40):  # a single row of lanes, or not a multiple of 16
        src = kiln.compile(_reduce_sum_model(n), target="host").source()
        assert "_lanes[" not in src, n
