"""The arm64 target: NEON renderer (no compiler), and models built with aarch64-linux-gnu-gcc
and run under qemu-aarch64 against ONNX Runtime.

qemu runs: the project's models at test sizes and all nine ONNX `light` models (each
1-20 s under qemu, VGG-19 about 95 s: 20 GFLOP emulated).
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
from examples import models
from kiln.codegen.neon import NeonRenderer
from kiln.errors import TargetError, ToolchainError
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Load, Select, Var
from kiln.ir.loop import VECTORIZED, Buffer, For, Func, Store
from kiln.targets import get_target
from kiln.targets.arm import Arm64Target, march
from tests.conftest import require_toolchain
from tests.test_light_models import LIGHT_DIR, _inputs
from tests.test_models import CASES
from tests.util import assert_close, make_model, ort_run

F32 = DType.float32


def need_arm():
    require_toolchain("aarch64-linux-gnu-gcc")
    require_toolchain("qemu-aarch64")


# -- target ------------------------------------------------------------------------------------

def test_target_names_and_options():
    t = get_target("arm64:+dotprod,+fp16")
    assert isinstance(t, Arm64Target) and str(t) == "arm64:+dotprod,+fp16"
    assert t.fp16 and t.dotprod
    assert march(()) == "-march=armv8-a"
    assert march(("+fp16",)) == "-march=armv8.2-a+fp16"
    assert march(("+dotprod", "+fp16")) == "-march=armv8.2-a+fp16+dotprod"
    caps = t.capabilities()
    assert (caps.vector_bytes, caps.vector_registers) == (16, 32)
    assert caps.tile(4) == (8, 8)  # 16 accumulators of the 32 NEON registers


def test_unknown_option_is_refused():
    with pytest.raises(TargetError, match=r"does not know the option\(s\) \+sve.*\+dotprod, \+fp16"):
        get_target("arm64:+sve")


def test_missing_cross_compiler_says_which_package(monkeypatch):
    from kiln.targets import arm

    monkeypatch.setattr(arm, "CC", "kiln-no-such-aarch64-linux-gnu-gcc")
    with pytest.raises(ToolchainError, match="not on PATH"):
        arm.tool_path(arm.CC)
    with pytest.raises(ToolchainError, match="apt-get install -y gcc-aarch64-linux-gnu"):
        arm.tool_path("/nonexistent/aarch64-linux-gnu-gcc")


# -- renderer (pure) ---------------------------------------------------------------------------

def _render(body_fn, extent, fp16=False, dtype=F32):
    """One kernel: ``out[i, v] = body(v)`` with a vectorized ``v`` loop of ``extent``."""
    i, v = Var("i"), Var("v")
    a, b, out = Buffer("a", (4, extent), dtype), Buffer("b", (extent,), dtype), Buffer("out", (4, extent), dtype)
    store = Store("out", (i, v), body_fn(i, v, dtype))
    f = Func("k", (a, b, out), For(i, 4, For(v, extent, store, VECTORIZED)))
    r = NeonRenderer(fp16=fp16)
    return r.render_func(f, {"a", "b"}), r.stats


def fma_body(i, v, dt):
    return Bin("add", Load("a", (i, v), dt), Bin("mul", Load("b", (v,), dt), Const(2.0, dt), dt), dt)


def test_vector_loop_uses_fma_and_whole_vectors():
    src, stats = _render(fma_body, 16)
    assert "vfmaq_f32(vld1q_f32(&a[" in src and "vdupq_n_f32(2.0f)" in src
    assert "v += 4" in src and "++v" not in src  # 16 lanes: no tail
    assert stats == {"vector_loops": 1, "scalar_loops": 0}


def test_tail_is_scalar_and_never_reads_past_the_extent():
    src, _ = _render(fma_body, 10)
    assert "for (; v + 4 <= 10; v += 4)" in src  # whole vectors only: lanes 0..7
    assert re.search(r"for \(; v < 10; \+\+v\) \{\n\s+out\[", src)  # lanes 8, 9 one by one


def test_relu_select_becomes_bitwise_select():
    def relu(i, v, dt):
        x = Load("a", (i, v), dt)
        return Select(Bin("gt", Const(0.0, dt), x, DType.bool), Const(0.0, dt), x)

    src, _ = _render(relu, 8)
    assert "vbslq_f32(vcgtq_f32(vdupq_n_f32(0.0f), vld1q_f32(" in src


def test_load_guarded_by_a_per_lane_condition_stays_scalar():
    """Padding whose bound depends on the lane: a vector load could read out of bounds."""
    def padded(i, v, dt):
        inside = Bin("lt", v, Const(5, DType.int64), DType.bool)
        return Select(inside, Load("b", (v,), dt), Const(0.0, dt))

    src, stats = _render(padded, 8)
    assert "vld1q" not in src and stats["scalar_loops"] == 1


def test_uniform_condition_keeps_the_branch_lazy():
    def padded(i, v, dt):
        inside = Bin("lt", i, Const(2, DType.int64), DType.bool)
        return Select(inside, Load("a", (i, v), dt), Const(0.0, dt))

    src, _ = _render(padded, 8)
    assert "(((i < INT64_C(2))) ? vld1q_f32(&a[" in src


def test_gather_and_math_calls_stay_scalar():
    from kiln.ir.expr import Un

    src, stats = _render(lambda i, v, dt: Load("b", (Bin("mul", v, Const(2, DType.int64), DType.int64),), dt), 8)
    assert stats["scalar_loops"] == 1 and "vld1q" not in src
    src, stats = _render(lambda i, v, dt: Un("exp", Load("a", (i, v), dt), dt), 8)
    assert stats["scalar_loops"] == 1 and "expf(" in src


def test_fp16_vectors_only_with_the_option():
    src, stats = _render(fma_body, 16, fp16=False, dtype=DType.float16)
    assert "float16" not in src and stats["scalar_loops"] == 1
    src, stats = _render(fma_body, 16, fp16=True, dtype=DType.float16)
    assert "vld1q_f16((const float16_t*)&a[" in src and "v += 8" in src
    # each fp16 op rounds, as the reference does: multiply, then add (no fused vfmaq_f16)
    assert "vfmaq_f16" not in src and "vaddq_f16(vld1q_f16((const float16_t*)&a[" in src and "vmulq_f16(" in src


def test_scalar_reduction_uses_a_vector_accumulator():
    acc, v, x = Buffer("acc", (), F32, "local"), Var("v"), Buffer("x", (37,), F32)
    from kiln.ir.loop import Alloc, seq

    body = seq(Store("acc", (), Const(0.0, F32)),
               For(v, 37, Store("acc", (), Bin("add", Load("acc", (), F32), Load("x", (v,), F32), F32)), VECTORIZED),
               Store("y", (Const(0, DType.int64),), Load("acc", (), F32)))
    f = Func("k", (x, Buffer("y", (1,), F32)), Alloc(acc, body))
    src = NeonRenderer().render_func(f, {"x"})
    assert "kiln_vacc = vaddq_f32(kiln_vacc, vld1q_f32(&x[v]))" in src
    assert "acc[0] = acc[0] + vaddvq_f32(kiln_vacc);" in src or "acc = acc + vaddvq_f32(kiln_vacc);" in src


def test_registered_lowering_runs_before_the_vectorizer(monkeypatch):
    """The hook an int8 ``vdotq_s32`` kernel will use: a whole-loop lowering, tried first."""
    seen = []

    def lowering(renderer, loop, depth):
        seen.append(loop.var.name)
        renderer.emit("/* custom lowering */", depth)
        return True

    monkeypatch.setattr(NeonRenderer, "lowerings", [])
    NeonRenderer.register_lowering(lowering)
    src, _ = _render(fma_body, 16)
    assert seen == ["v"] and "/* custom lowering */" in src and "vfmaq" not in src


# -- models under qemu-aarch64 -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_model_matches_ort_under_qemu(name, tmp_cache):
    need_arm()
    model = CASES[name]()
    feeds = models.example_inputs(model, seed=1)
    compiled = kiln.compile(model, target="arm64")
    assert "vfmaq_f32" in compiled.source() or "vaddq_f32" in compiled.source()
    assert_close(compiled.run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)


LIGHT_UNDER_QEMU = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                    "squeezenet", "vgg19", "zfnet512"]


@pytest.mark.parametrize("name", LIGHT_UNDER_QEMU)
def test_light_model_matches_ort_under_qemu(name, tmp_cache):
    need_arm()
    model = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    feeds = _inputs(model)
    want = ort_run(model, feeds)
    got = kiln.compile(model, target="arm64").run(feeds)
    for k in want:
        scale = float(np.abs(want[k]).max()) or 1.0
        assert_close({k: got[k]}, {k: want[k]}, rtol=1e-3, atol=1e-4 * scale)


def fp16_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 20)).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["p", "q"], ["a"]),
             helper.make_node("Max", ["a", "q"], ["b"]), helper.make_node("Mul", ["b", "p"], ["z"])]
    h = np.float16
    model = make_model(nodes, [("x", h, [6, 16]), ("p", h, [6, 21]), ("q", h, [6, 21])],
                       [("y", h, [6, 20]), ("z", h, [6, 21])], [("w", w)])
    feeds = {n: rng.standard_normal(s).astype(h) for n, s in (("x", (6, 16)), ("p", (6, 21)), ("q", (6, 21)))}
    return model, feeds


@pytest.mark.parametrize("target", ["arm64", "arm64:+fp16", "arm64:+dotprod,+fp16"])
def test_fp16_model_under_qemu(target, tmp_cache):
    need_arm()
    model, feeds = fp16_model()
    compiled = kiln.compile(model, target=target)
    src = compiled.source()
    assert "vcvt_f32_f16(vld1_f16(" in src  # fp16 weights widened into an fp32 FMA
    assert ("vmaxnmq_f16" in src or "vbslq_f16" in src) == ("+fp16" in target)
    got, want = compiled.run(feeds), ort_run(model, feeds)
    for k in want:  # one fp16 rounding step of the largest value
        assert got[k].dtype == np.float16
        np.testing.assert_allclose(got[k].astype(np.float32), want[k].astype(np.float32), rtol=1e-3,
                                   atol=float(np.abs(want[k]).max()) * 2.0 ** -10)


def test_fp16_arithmetic_rounds_each_op_as_the_reference(tmp_cache):
    """With +fp16 elementwise ops run in float16x8_t (and native half scalars in the tail),
    bit for bit equal to numpy's op-by-op fp16 and to the host build: no fused multiply-add
    (the renderer keeps vmulq/vaddq apart, -ffp-contract=off keeps gcc from fusing them)."""
    need_arm()
    h, shape = np.float16, [4, 37]
    nodes = [helper.make_node("Mul", ["p", "q"], ["m"]), helper.make_node("Add", ["m", "r"], ["a"]),
             helper.make_node("Div", ["a", "q"], ["d"]), helper.make_node("Sqrt", ["p"], ["s"]),
             helper.make_node("Sub", ["d", "s"], ["z"])]
    model = make_model(nodes, [(n, h, shape) for n in "pqr"], [("z", h, shape)], [])
    rng = np.random.default_rng(5)
    feeds = {n: (np.abs(rng.standard_normal(shape)) * 3 + 0.1).astype(h) for n in "pqr"}
    p, q, r = feeds["p"], feeds["q"], feeds["r"]
    want = (p * q + r) / q - np.sqrt(p)  # numpy rounds every op to float16
    compiled = kiln.compile(model, target="arm64:+fp16")
    assert "vmulq_f16" in compiled.source() and "vfmaq_f16" not in compiled.source()
    np.testing.assert_array_equal(compiled.run(feeds)["z"], want)
    np.testing.assert_array_equal(kiln.compile(model).run(feeds)["z"], want)


def test_dynamic_shapes_under_qemu(tmp_cache):
    """One arm64 build runs every batch and sequence length in its bounds (dims through a file)."""
    need_arm()
    from tests.test_dynamic_shapes import BOUNDS, _feeds, attention_block

    model = attention_block()
    compiled = kiln.compile(model, target="arm64", dim_bounds=BOUNDS)
    for batch, seq in ((1, 5), (3, 17)):
        feeds = _feeds(batch, seq, seed=batch + seq)
        assert_close(compiled.run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def test_model_error_code_is_reported(tmp_cache):
    """The driver's non-zero exit (here: a dim out of the bounds the model checks) is an error."""
    need_arm()
    from kiln.targets.arm import FileRunner
    from tests.test_dynamic_shapes import BOUNDS, _feeds, attention_block

    compiled = kiln.compile(attention_block(), target="arm64", dim_bounds=BOUNDS)
    runner = compiled.build()
    wide = dict(BOUNDS, batch=(1, 64))  # the Python-side check would refuse batch 9 first
    bad = FileRunner(runner.binary, compiled.graph.inputs, compiled.graph.outputs, runner.weights, wide,
                     launcher=runner.launcher)
    with pytest.raises(ToolchainError, match="exited with status 11"):
        bad(_feeds(9, 4, seed=0))


def test_openmp_build_links_static_libgomp(tmp_cache, monkeypatch):
    """KILN_ARM_OPENMP=1: parallel loops become OpenMP threads, libgomp linked statically."""
    need_arm()
    monkeypatch.setenv("KILN_ARM_OPENMP", "1")
    model = models.resnet_style(18, image=32)
    compiled = kiln.compile(model, target="arm64")
    assert "KILN_PARALLEL_FOR\n" in compiled.source()
    binary = compiled.build().binary
    assert b"GOMP_parallel" in binary.read_bytes()
    feeds = models.example_inputs(model, seed=5)
    assert_close(compiled.run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def test_snapshot_neon_gemm_bias_relu():
    """arm64's capabilities are fixed (not read from this machine): the source is stable."""
    from tests.test_codegen import check_snapshot, gemm_bias_relu

    m = kiln.compile(gemm_bias_relu(), target="arm64")
    assert m.kernel_count == 1
    check_snapshot("neon_gemm_bias_relu.c", m.source())


def test_rejected_source_is_a_toolchain_error_with_the_lines(tmp_cache):
    require_toolchain("aarch64-linux-gnu-gcc")
    from kiln.targets.arm import build_static_binary

    files = {"model.c": "int ok(void) { return 0; }\nint broken(void) { return undeclared; }\n"}
    with pytest.raises(ToolchainError, match=r"(?s)rejected the generated code.*2 \| int broken"):
        build_static_binary(files, ["model.c"], [])
