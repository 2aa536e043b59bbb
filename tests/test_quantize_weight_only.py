"""Weight-only int4/int8 matmuls: ``quantize_weights`` writes ONNX Runtime's MatMulNBits,
Kiln compiles it to ``matmul_wq`` (weights repacked at compile time, per-group scale
outside the inner loop) and matches ORT."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import QuantizationError
from kiln.quantization.weight_only import quantize_weights
from tests.util import ort_run

RNG = np.random.default_rng(1)


def _linear(m, k, n, gemm=False):
    w = RNG.standard_normal((n, k) if gemm else (k, n)).astype(np.float32)
    inits = [nh.from_array(w, "w")]
    if gemm:
        inits.append(nh.from_array(RNG.standard_normal(n).astype(np.float32), "b"))
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    g = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TP.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [m, n])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("bits,group,symmetric,gemm", [
    (4, 32, False, False), (4, 64, True, False), (4, 128, False, True), (8, 32, True, False), (8, 128, False, True),
])
def test_weight_only_matches_ort(bits, group, symmetric, gemm):
    model = _linear(2, 256, 48, gemm)
    q = quantize_weights(model, bits=bits, group_size=group, symmetric=symmetric)
    assert [n.op_type for n in q.graph.node] == ["MatMulNBits"]
    x = RNG.standard_normal((2, 256)).astype(np.float32)
    cm = kiln.compile(q)
    assert "matmul_wq" in {n.op for n in cm.graph.nodes}
    got, want = cm.run({"x": x})["y"], ort_run(q, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,bits", [(1, 4), (4, 8), (6, 4), (16, 8)])
def test_gemv_and_matmul_forms_match_ort(m, bits):
    """Up to LANE_PARTIAL_MAX_ROWS rows the kernel keeps per-lane partial sums; above, one
    sum per group: both forms against ONNX Runtime."""
    from kiln.ir.ops.weight_only import LANE_PARTIAL_MAX_ROWS

    q = quantize_weights(_linear(m, 512, 40), bits=bits, group_size=64)
    x = RNG.standard_normal((m, 512)).astype(np.float32)
    cm = kiln.compile(q)
    assert ("__lanes" in cm.source()) == (m <= LANE_PARTIAL_MAX_ROWS)
    np.testing.assert_allclose(cm.run({"x": x})["y"], ort_run(q, {"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_int4_weights_take_an_eighth_and_scale_is_hoisted():
    """N = 64 is a multiple of the column block: the weights are repacked (N/T, K/2, T) and the
    kernel is ``matmul_wq_cols``; a group's scale and offset are indexed by the group loop,
    never by the loop inside a group (gcc keeps them in registers across the group)."""
    import re

    from kiln.ir.ops.weight_only_cols import COLUMN_BLOCK

    model = _linear(1, 2048, 64)
    cm = kiln.compile(quantize_weights(model, bits=4, group_size=32))
    node = next(n for n in cm.graph.nodes if n.op == "matmul_wq_cols")
    packed = cm.graph.constants[node.inputs[1]]
    assert packed.dtype == np.uint8 and packed.shape == (64 // COLUMN_BLOCK, 1024, COLUMN_BLOCK)
    assert packed.nbytes * 8 == 2048 * 64 * 4                      # an eighth of the fp32 bytes
    src = cm.source()
    kernel = src[src.index("static void kernel_0"):]
    within_group = re.search(r"for \(int64_t (\w+) = 0; \1 < 16; ", kernel).group(1)  # 32 / 2 bytes
    group = re.search(r"for \(int64_t (\w+) = 0; \1 < 64; ", kernel).group(1)          # 2048 / 32 groups
    params = re.findall(r"in[23]\[([^\]]*)\]", kernel)
    assert params and all(group in ix and not re.search(rf"\b{within_group}\b", ix) for ix in params)


@pytest.mark.parametrize("m,n,bits,group,gemm", [
    (1, 64, 4, 32, False), (1, 96, 8, 64, False), (5, 64, 4, 128, True), (3, 32, 8, 32, True)])
def test_column_blocked_kernel_matches_ort(m, n, bits, group, gemm):
    q = quantize_weights(_linear(m, 256, n, gemm), bits=bits, group_size=group)
    x = RNG.standard_normal((m, 256)).astype(np.float32)
    cm = kiln.compile(q)
    assert "matmul_wq_cols" in {nd.op for nd in cm.graph.nodes}
    np.testing.assert_allclose(cm.run({"x": x})["y"], ort_run(q, {"x": x})["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kw,words", [(dict(bits=3), ["3-bit", "4 and 8"]), (dict(group_size=48), ["group size 48"])])
def test_weight_only_rejects_unsupported_schemes(kw, words):
    with pytest.raises(QuantizationError) as e:
        quantize_weights(_linear(1, 64, 8), **kw)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("m,n,bits,group", [(1, 64, 4, 32), (4, 96, 4, 128), (3, 32, 8, 64)])
def test_dequantizing_tile_is_printed_and_matches_the_plain_loop(m, n, bits, group, monkeypatch):
    """The weight-only tile with AVX-512 intrinsics (``kiln/codegen/x86_dequant.py``): printed
    for int4 and int8 weights, not for a float GEMM's tile; built without AVX-512 the same
    source runs the plain ``#else`` loop, and both give ONNX Runtime's result."""
    import re

    from kiln.codegen.x86 import X86Renderer
    from kiln.targets import host

    q = quantize_weights(_linear(m, 256, n), bits=bits, group_size=group)
    cm = kiln.compile(q)
    r = X86Renderer()
    for k in cm.result.kernels:
        r.render_func(k.func, set())
    assert r.stats["dequant_tiles"] == 1
    assert "_mm512_cvtepi32_ps(" in cm.source() and "#if defined(__AVX512F__)" in cm.source()
    x = {"x": RNG.standard_normal((m, 256)).astype(np.float32)}
    want = ort_run(q, x)["y"]
    tiled = cm.run(x)["y"]
    monkeypatch.setattr(host, "CFLAGS", [f if f != "-march=native" else "-march=x86-64-v3" for f in host.CFLAGS])
    plain = kiln.compile(q).run(x)["y"]
    np.testing.assert_allclose(tiled, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tiled, plain, rtol=1e-5, atol=1e-5)

    f = kiln.compile(_linear(4, 256, 64))
    r = X86Renderer()
    for k in f.result.kernels:
        r.render_func(k.func, set())
    assert r.stats["dequant_tiles"] == 0 and not re.search(r"kiln_facc_", f.source())
