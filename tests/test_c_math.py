"""Kiln's own float32 exp and tanh in generated C: accuracy against numpy over the whole
range (denormal results, overflow, infinities, NaN) and no libm call left in the kernels."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.targets.host import build_shared_library


def _unary_model(op: str, n: int):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op.lower(),
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _inputs(lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-8, -1e-8, 88.72, 88.73, 89.0, -87.3, -100.0, -103.9, -104.5, -1e9, 1e9,
               np.inf, -np.inf, np.nan, 0.625, -0.625, 0.6249, 9.0, -9.0, 44.0, -44.0]
    return np.concatenate([np.float32(special), rng.uniform(lo, hi, 20000).astype(np.float32),
                           np.linspace(-1, 1, 4001, dtype=np.float32)]).astype(np.float32)


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in units in the last place (float32 bit patterns as ordered integers)."""
    def ordered(a):
        i = a.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(got) - ordered(want))


@pytest.mark.parametrize("op,fn,lo,hi,max_ulp", [
    ("Exp", np.exp, -110.0, 90.0, 3),
    ("Tanh", np.tanh, -12.0, 12.0, 4),
])
def test_exp_and_tanh_are_within_a_few_ulp_everywhere(op, fn, lo, hi, max_ulp):
    x = _inputs(lo, hi)
    cm = kiln.compile(_unary_model(op, x.size), target="host")
    assert f"kiln_{op.lower()}f(" in cm.source()
    got = cm.run({"x": x})["y"]
    with np.errstate(over="ignore"):
        want = fn(x.astype(np.float64)).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    ulps = _ulps(got[~nan], want[~nan])
    worst = int(np.argmax(ulps))
    assert ulps.max() <= max_ulp, f"{op}({x[~nan][worst]!r}) = {got[~nan][worst]!r}, expected {want[~nan][worst]!r}"


def test_softmax_kernel_calls_no_libm_exp(tmp_path):
    """A masked attention score of -1e9 sent glibc's vector expf to its scalar fallback on
    every lane; the kernels must compute exp inline instead."""
    nm = shutil.which("nm") or "nm"  # binutils comes with gcc
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "sm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 128])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 128])])
    cm = kiln.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), target="host")
    lib = build_shared_library(cm.result.source.files)
    undefined = subprocess.run([nm, "-D", "--undefined-only", str(lib)], capture_output=True, text=True,
                               check=True).stdout
    assert "expf" not in undefined, undefined
    x = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    x[:, 64:] = -1e9  # masked
    y = cm.run({"x": x})["y"]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-9)
