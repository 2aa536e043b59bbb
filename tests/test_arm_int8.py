"""int8 on arm64: signed activation staging (graph), the sdot/smull lowering (renderer, no
compiler), and quantized models built with aarch64-linux-gnu-gcc and run under qemu-aarch64
against Kiln's host int8 output (bit for bit) and ONNX Runtime (one quantization step).
"""
from __future__ import annotations

import re
import subprocess
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from examples.models import bert_encoder, example_inputs, resnet_style, small_cnn
from kiln.codegen import neon_int8  # noqa: F401 -- registers the lowering
from kiln.codegen.neon import NeonRenderer
from kiln.errors import ShapeError
from kiln.frontend.onnx import from_onnx
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, Var
from kiln.ir.interp import run_graph
from kiln.ir.loop import VECTORIZED, Alloc, Buffer, For, Func, Seq, Store
from kiln.passes.quantize import quantize_integer_ops
from kiln.passes.signed_activations import stage_activations_signed
from tests.conftest import require_module, require_toolchain
from tests.test_quantize import _ort_qdq, _output_scale, _qlinear_matmul_model, _steps, qdq_conv
from tests.util import ort_run

I8, U8, I32 = DType.int8, DType.uint8, DType.int32
ARM_TARGETS = ["arm64", "arm64:+dotprod"]


def need_arm():
    require_toolchain("aarch64-linux-gnu-gcc")
    require_toolchain("qemu-aarch64")


def _ops(graph) -> Counter:
    return Counter(n.op for n in graph.nodes)


# -- graph: activations staged as int8 ----------------------------------------------------------

@pytest.mark.parametrize("act_dtype,offset", [(np.uint8, -128), (np.int8, 0)])
def test_signed_staging_keeps_the_integers(act_dtype, offset):
    """The rewrite changes act_offset and folds 128 * sum(w) into the bias: same integers out."""
    model, _ = qdq_conv(act_dtype=act_dtype, c=8, oc=16, hw=6)
    g = quantize_integer_ops(from_onnx(model))
    s = stage_activations_signed(g)
    (before,), (after,) = [[n for n in x.nodes if n.op == "qconv"] for x in (g, s)]
    assert before.attrs["act_offset"] == (0 if act_dtype is np.uint8 else 128)
    assert after.attrs["act_offset"] == offset
    w = g.constants[before.inputs[1]].astype(np.int64)
    shift = before.attrs["act_offset"] - offset
    np.testing.assert_array_equal(s.constants[after.inputs[2]].astype(np.int64),
                                  g.constants[before.inputs[2]] + shift * w.reshape(w.shape[0], -1).sum(1))
    x = (np.random.default_rng(1).standard_normal((1, 8, 6, 6)) * 2).astype(np.float32)
    np.testing.assert_array_equal(run_graph(s, {"x": x})["y"], run_graph(g, {"x": x})["y"])
    again = stage_activations_signed(s)  # already signed: nothing more to do
    assert [n.attrs for n in again.nodes] == [n.attrs for n in s.nodes]


def test_arm64_compiles_qdq_models_with_int8_activations():
    q = _ort_qdq(small_cnn())
    cm = kiln.compile(q, target="arm64:+dotprod")
    offs = {n.attrs["act_offset"] for n in cm.graph.nodes if n.op in ("qconv", "qmatmul")}
    assert offs == {-128}  # ORT's uint8 activations, staged as x - 128
    host = kiln.compile(q)
    assert {n.attrs["act_offset"] for n in host.graph.nodes if n.op in ("qconv", "qmatmul")} == {0}


def test_act_offset_must_match_the_activation_type():
    from kiln.ir.graph import TensorType
    from kiln.ir.ops import infer_types

    ins = [TensorType((1, 16), DType.int8), TensorType((4, 16), I8)] + [TensorType((4,), I32)] * 3
    attrs = dict(x_zp=0, y_zp=0, lo=-128, hi=127, dtype="int8")
    infer_types("qmatmul", ins, dict(attrs, act_offset=128))  # int8 + 128: uint8, fine
    with pytest.raises(ShapeError, match=r"act_offset -128 does not move int8.*0 or 128 for int8"):
        infer_types("qmatmul", ins, dict(attrs, act_offset=-128))
    with pytest.raises(ShapeError, match="must be -128, 0 or 128"):
        infer_types("qmatmul", ins, dict(attrs, act_offset=64))


# -- renderer: the reduction pattern -------------------------------------------------------------

def _dot_kernel(a_dt, b_dt, k, stride=1):
    """out[i] = sum_r int32(a[i, r*stride]) * int32(b[r]): the loop the integer kernels reduce with."""
    i, r = Var("i"), Var("r")
    a, b = Buffer("a", (4, k * stride), a_dt), Buffer("b", (k,), b_dt)
    out, acc = Buffer("out", (4,), I32), Buffer("acc", (), I32, "local")
    prod = Bin("mul", Cast(Load("a", (i, r * stride if stride != 1 else r), a_dt), I32), Cast(Load("b", (r,), b_dt), I32), I32)
    red = For(r, k, Store("acc", (), Bin("add", Load("acc", (), I32), prod, I32)), VECTORIZED)
    body = Alloc(acc, Seq((Store("acc", (), Const(0, I32)), red,
                           Store("out", (i,), Load("acc", (), I32)))))
    return Func("k", (a, b, out), For(i, 4, body))


def _render(func, dotprod):
    r = NeonRenderer(dotprod=dotprod)
    return r.render_func(func, {"a", "b"}), r.stats


@pytest.mark.parametrize("a_dt,b_dt,dotprod,words", [
    (I8, I8, True, ["vdotq_s32(kiln_idot, vld1q_s8(&a[", "vaddvq_s32(kiln_idot)"]),
    (U8, U8, True, ["vdotq_u32(kiln_idot, vld1q_u8(&a[", "(int32_t)vaddvq_u32(kiln_idot)"]),
    (I8, I8, False, ["vpadalq_s16(kiln_idot, vmull_s8(vld1_s8(&a[", "vld1_s8(&a[((i * INT64_C(43)) + r)] + 8)"]),
    (U8, U8, False, ["vpadalq_u16(kiln_idot, vmull_u8("]),
    (U8, I8, True, ["vmovl_u8(vld1_u8(&a[", "vmlal_high_s16(vmlal_s16(kiln_idot"]),  # no usdot without i8mm
])
def test_int8_reduction_lowers_to_dot_products(a_dt, b_dt, dotprod, words):
    src, stats = _render(_dot_kernel(a_dt, b_dt, 43), dotprod)
    for w in words:
        assert w in src, src
    assert stats.get("int8_dot_loops") == 1
    # 43 = 2 * 16 + 8 + 3: whole steps, one 8-lane step, then the scalar tail
    assert "for (; r + 16 <= 43; r += 16)" in src and "if (r + 8 <= 43)" in src
    assert re.search(r"for \(; r < 43; \+\+r\) \{\n\s+acc = \(acc \+", src)


def test_int8_reduction_short_strided_or_float_stays_scalar():
    for func in (_dot_kernel(I8, I8, 6), _dot_kernel(I8, I8, 32, stride=2)):
        src, stats = _render(func, True)
        assert "kiln_idot" not in src and "int8_dot_loops" not in stats
    src, _ = _render(_dot_kernel(I8, I8, 32), True)
    assert "for (; r + 16 <= 32; r += 16)" in src and "r + 8 <=" not in src and "++r" not in src


# -- qemu: quantized models, bit for bit against the host ----------------------------------------

QDQ_MODELS = {
    "small_cnn": lambda: small_cnn(),
    "resnet_style": lambda: resnet_style(depth=10, image=32, width=16, classes=10),
    "bert_encoder": lambda: bert_encoder(layers=1, hidden=64, seq=16, ffn=128),
}


@pytest.mark.parametrize("target", ARM_TARGETS)
@pytest.mark.parametrize("name", sorted(QDQ_MODELS))
def test_qdq_models_under_qemu_match_host_and_ort(name, target, tmp_cache):
    need_arm()
    model = QDQ_MODELS[name]()
    q = _ort_qdq(model)
    feeds = example_inputs(model, seed=100)
    arm = kiln.compile(q, target=target)
    assert _ops(arm.graph)["qconv"] + _ops(arm.graph)["qmatmul"] >= 3
    src = arm.source()
    assert ("vdotq_s32" in src) == ("+dotprod" in target) and ("vmull_s8" in src) != ("+dotprod" in target)
    got, host, want = arm.run(feeds), kiln.compile(q).run(feeds), ort_run(q, feeds)
    for k in want:
        assert _steps(got[k], want[k], _output_scale(q)) <= 1, k
        if name == "bert_encoder":
            # float layer norm and softmax after the integer kernels: NEON and AVX2 round
            # differently there (the integer kernels themselves are exact)
            np.testing.assert_allclose(got[k], host[k], rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got[k], host[k])


def test_qlinear_matmul_int8_activations_need_no_staging(tmp_cache):
    """QLinearMatMul with int8 A: act_offset 0 on arm64, sdot reads A directly."""
    need_arm()
    model = _qlinear_matmul_model()
    a = np.random.default_rng(4).integers(-128, 128, (2, 5, 32)).astype(np.int8)
    cm = kiln.compile(model, target="arm64:+dotprod")
    assert "__au" not in cm.source() and "vdotq_s32" in cm.source()
    np.testing.assert_array_equal(cm.run({"a": a})["y"], kiln.compile(model).run({"a": a})["y"])


@pytest.mark.parametrize("c", [5, 19])
def test_odd_reductions_and_mixed_sign_form_under_qemu(c, tmp_cache, monkeypatch):
    """kw*C = 15 and 57: 8-lane steps and scalar tails; and the uint8 x int8 (widening) form,
    which arm64 only meets when the signed staging is switched off."""
    need_arm()
    from kiln.targets.arm import Arm64Target

    model, _ = qdq_conv(c=c, oc=12, hw=7)
    x = (np.random.default_rng(c).standard_normal((1, c, 7, 7)) * 1.5).astype(np.float32)
    want = kiln.compile(model).run({"x": x})["y"]
    for target in ARM_TARGETS:
        np.testing.assert_array_equal(kiln.compile(model, target=target).run({"x": x})["y"], want)
    monkeypatch.setattr(Arm64Target, "adapt_quantized", lambda self, g: g)
    mixed = kiln.compile(model, target="arm64:+dotprod")
    assert "vmlal_s16" in mixed.source()
    np.testing.assert_array_equal(mixed.run({"x": x})["y"], want)


# -- the digits CNN: trained weights, real data ---------------------------------------------------

def test_digits_cnn_int8_under_qemu(tmp_cache):
    need_arm()
    require_module("torch")
    datasets = require_module("sklearn.datasets")
    from tests.test_quantize_digits import _onnx, _train

    d = datasets.load_digits()
    x, y = (d.images.astype(np.float32) / 16.0)[:, None], d.target
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:1400], perm[1400:]
    q = kiln.quantize(_onnx(_train(x[train], y[train])), {"image": x[train][:256]}, method="minmax")
    for vi in (*q.graph.input, *q.graph.output):  # the held-out set as one batch: one qemu run
        vi.type.tensor_type.shape.dim[0].dim_value = len(test)
    del q.graph.value_info[:]
    feeds = {"image": x[test]}
    host, want = kiln.compile(q).run(feeds)["logits"], ort_run(q, feeds)["logits"]
    step = _output_scale(q)
    for target in ARM_TARGETS:
        got = kiln.compile(q, target=target).run(feeds)["logits"]
        np.testing.assert_array_equal(got, host)
        assert np.max(np.abs(got - want)) / step <= 1 + 1e-3
    assert np.mean(np.argmax(host, 1) == y[test]) > 0.9


# -- the instructions in the hot loops -------------------------------------------------------------

def _qmatmul_model(k=256, n=32):
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (k, n)).astype(np.int8)
    inits = [nh.from_array(np.array(0.05, np.float32), "as"), nh.from_array(np.array(3, np.uint8), "az"),
             nh.from_array(w, "w"), nh.from_array(np.array(0.01, np.float32), "bs"),
             nh.from_array(np.array(0, np.int8), "bz"), nh.from_array(np.array(0.2, np.float32), "ys"),
             nh.from_array(np.array(7, np.uint8), "yz")]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "w", "bs", "bz", "ys", "yz"], ["y"])
    g = helper.make_graph([node], "qmm", [helper.make_tensor_value_info("a", TP.UINT8, [8, k])],
                          [helper.make_tensor_value_info("y", TP.UINT8, [8, n])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _disassembly(compiled, tmp_path, march) -> str:
    from kiln.targets.arm import CFLAGS

    cc = require_toolchain("aarch64-linux-gnu-gcc")
    objdump = require_toolchain("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu")
    for name, text in compiled.files.items():
        (tmp_path / name).write_text(text)
    obj = tmp_path / "model.o"
    subprocess.run([cc, *CFLAGS, march, "-c", "-o", str(obj), str(tmp_path / "model.c")], check=True)
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                          check=True).stdout


HOT = {"qconv": lambda: qdq_conv(c=32, oc=16, hw=8)[0], "qmatmul": _qmatmul_model}


@pytest.mark.parametrize("kind", sorted(HOT))
def test_hot_loops_use_sdot_and_smull(kind, tmp_path):
    """The model is one integer op between a quantize and a dequantize kernel (gcc inlines
    them all into kiln_model_run): every 8-bit multiply in the object is the op's."""
    model = HOT[kind]()
    counts = {}
    for target, march in (("arm64:+dotprod", "-march=armv8.2-a+dotprod"), ("arm64", "-march=armv8-a")):
        cm = kiln.compile(model, target=target)
        asm = _disassembly(cm, tmp_path, march)
        counts[target] = {i: len(re.findall(rf"\b{i}\s+v\d+\.", asm))
                          for i in ("sdot", "udot", "smull", "smull2", "sadalp")}
    print(kind, counts)
    dot, wide = counts["arm64:+dotprod"], counts["arm64"]
    assert dot["sdot"] >= 2 and dot["smull"] + dot["smull2"] == 0
    assert wide["sdot"] == 0 and wide["sadalp"] >= 2 and wide["smull"] + wide["smull2"] >= 2


# -- the same int8 NEON source on the host, under ASan and UBSan ---------------------------------

@pytest.mark.parametrize("target", ARM_TARGETS)
def test_int8_neon_source_passes_sanitizers_on_the_host(target, tmp_path):
    """The fallback header's sdot/smull lanes, checked against the host int8 kernels."""
    from tests.test_arm_build import sanitized_runs

    model = small_cnn()
    q = _ort_qdq(model)
    feeds = example_inputs(model, seed=7)
    compiled = kiln.compile(q, target=target)
    assert "kiln_idot" in compiled.source()
    want = kiln.compile(q).run(feeds)
    for sanitizer, run in sanitized_runs(compiled, tmp_path):
        for k, v in run(feeds).items():
            np.testing.assert_array_equal(v, want[k], err_msg=sanitizer)


# -- the static cost knows the lowering ------------------------------------------------------------

def test_static_cost_ranks_sdot_over_smull_over_scalar():
    from dataclasses import replace

    from kiln.ir.loop import SERIAL, map_stmt
    from kiln.targets.arm_cost import ArmStaticCostModel, estimate

    cm = kiln.compile(_qmatmul_model(k=512), target="arm64")
    func = max((k.func for k in cm.result.kernels), key=lambda f: estimate(f).cycles)
    serial = func.with_body(map_stmt(func.body, lambda s: replace(s, kind=SERIAL, body=map_stmt(s.body, lambda x: None))
                                     if isinstance(s, For) and s.kind == VECTORIZED else None))
    dot, wide, scalar = estimate(func, dotprod=True), estimate(func), estimate(serial, dotprod=True)
    assert dot.compute_cycles < wide.compute_cycles < scalar.compute_cycles
    assert dot.instructions["fma"] * 3 < wide.instructions["fma"]  # 1 sdot against smull + sadalp, x2
    scores = ArmStaticCostModel(dotprod=True).predict(None, [serial, func])
    assert scores[1] > scores[0]
