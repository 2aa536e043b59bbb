"""Kiln's own float32 exp and tanh in generated C: accuracy against numpy over the whole
range (denormal results, overflow, infinities, NaN) and no libm call left in the kernels;
the exp of a max-shifted argument (softmax) against numpy and ONNX Runtime."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnxruntime as ort
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
    ("Exp", np.exp, -110.0, 90.0, 1),
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


def _nonpos_exp_library():
    """kiln_expf_nonpos alone, applied to an array through a vectorized loop as in a kernel."""
    import ctypes

    from kiln.codegen.c_support import HELPERS
    src = ("#include <stdint.h>\n#include <math.h>\n" + HELPERS["expf_nonpos"]
           + "void apply(const float* restrict x, float* restrict y, int64_t n) {\n"
           + "  #pragma omp simd\n  for (int64_t i = 0; i < n; ++i) y[i] = kiln_expf_nonpos(x[i]);\n}\n")
    lib = ctypes.CDLL(str(build_shared_library({"model.c": src})))
    lib.apply.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def apply(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        lib.apply(x.ctypes.data, y.ctypes.data, x.size)
        return y
    return apply


def test_nonpositive_exp_is_within_one_ulp_and_flushes_only_below_flt_min():
    """Softmax's exp(x - max): x <= 0 always, so no overflow path; results that would be
    denormal (x < about -87.3) may be 0, never anything larger than FLT_MIN."""
    apply = _nonpos_exp_library()
    rng = np.random.default_rng(1)
    x = np.concatenate([np.float32([0.0, -0.0, -1e-8, -0.5, -1.0, -87.3, -87.4, -88.0, -88.5, -100.0,
                                    -1e9, -3.4e38, -np.inf, np.nan]),
                        rng.uniform(-120.0, 0.0, 50000).astype(np.float32),
                        np.linspace(-1, 0, 4001, dtype=np.float32)]).astype(np.float32)
    got = apply(x)
    want = np.exp(x.astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert got[0] == 1.0 and got[1] == 1.0
    assert np.all(got[x == -np.inf] == 0.0)
    normal = want >= np.finfo(np.float32).tiny
    ulps = _ulps(got[normal], want[normal])
    assert ulps.max() <= 1, f"exp({x[normal][np.argmax(ulps)]!r}) is {ulps.max()} ulp off"
    tiny = ~normal & ~np.isnan(want)
    assert tiny.sum() > 1000
    flt_min = np.finfo(np.float32).tiny
    assert np.all((got[tiny] >= 0) & (got[tiny] <= flt_min)), "a flushed result must stay below FLT_MIN"


def test_nonpositive_exp_matches_kiln_expf_bit_for_bit_on_normal_results():
    """The same reduction and polynomial as kiln_expf: softmax outputs do not move when a
    kernel switches between them (only results below FLT_MIN may differ)."""
    apply = _nonpos_exp_library()
    x = np.linspace(-87.0, 0.0, 30001, dtype=np.float32)
    cm = kiln.compile(_unary_model("Exp", x.size), target="host")
    np.testing.assert_array_equal(apply(x), cm.run({"x": x})["y"])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "ReduceLogSumExp"])
def test_max_shifted_exps_use_the_nonpositive_exp(op):
    attrs = {"axis": -1} if op != "ReduceLogSumExp" else {"keepdims": 1}
    ins = ["x"] if op != "ReduceLogSumExp" else ["x", "axes"]
    out_shape = [8, 64] if op != "ReduceLogSumExp" else [8, 1]
    inits = [] if op != "ReduceLogSumExp" else [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    g = helper.make_graph([helper.make_node(op, ins, ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    cm = kiln.compile(model, target="host")
    src = cm.source()
    assert "kiln_expf_nonpos(" in src and "kiln_expf(" not in src
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32) * 30
    x[0, :] = -np.inf
    x[0, 5] = 1.0     # one allowed position in a masked row
    x[1, 3] = np.nan  # a NaN row stays NaN
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # log-softmax near 0 is log(sum) with sum near 1: one ulp of a float32 sum there (1.2e-7,
    # which any summation order may cost) is its absolute error
    np.testing.assert_allclose(cm.run({"x": x})["y"], want, rtol=1e-5, atol=2.5e-7)
