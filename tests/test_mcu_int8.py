"""Cortex-M with TFLite-style int8 activations and the kernels that make them fast: integer
kernels read activations in the type they are stored in (kiln/passes/signed_activations.py
``stage_activations_native``), the requantizing clamp is one SSAT/USAT, short window rows take
the 1x4 dot tile (``Capabilities.min_dot_length``), Helium multiplies int8 x int8 sixteen
lanes at a time, and a depthwise convolution computes several pixels per tap.
Every model run is compared with Kiln's host int8 build, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.frontend.onnx import from_onnx
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph
from kiln.ir.interp import run_graph
from kiln.passes.integer_io import integer_io
from kiln.passes.signed_activations import stage_activations_native
from tests.conftest import require_toolchain

RNG = np.random.default_rng(11)


def _kws_like(activations: str):
    """conv 3x4 over one channel (1 -> 16, window rows of 4 bytes) -> ReLU -> depthwise 3x3
    -> ReLU -> conv 1x1 (16 -> 16) -> ReLU -> GlobalAveragePool -> Flatten -> Gemm (16 -> 4),
    quantized by min-max with ``activations`` (int8 or uint8)."""
    def w(*shape):
        return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    n = helper.make_node
    inits = [nh.from_array(w(16, 1, 3, 4), "w0"), nh.from_array(w(16, 1, 3, 3), "w1"),
             nh.from_array(w(16, 16, 1, 1), "w2"), nh.from_array(w(4, 16), "fw"),
             nh.from_array(np.zeros(4, np.float32), "fb")]
    nodes = [n("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 2]), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", "w1"], ["b"], pads=[1] * 4, group=16), n("Relu", ["b"], ["br"]),
             n("Conv", ["br", "w2"], ["c"]), n("Relu", ["c"], ["cr"]), n("GlobalAveragePool", ["cr"], ["g"]),
             n("Flatten", ["g"], ["f"]), n("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "kws_like", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1, 8, 6])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 4])], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    calibration = {"x": RNG.standard_normal((16, 1, 8, 6)).astype(np.float32)}
    return kiln.quantize(model, calibration, method="minmax", activations=activations)


def _integer_graph(model) -> Graph:
    """The integer graph as ``quantize`` leaves it (act_offset 128 for int8 activations)."""
    from kiln.passes.manager import run_pipeline
    from kiln.targets import get_target

    target, handed = get_target("host"), []
    target.adapt_quantized = lambda g: handed.append(g) or g
    run_pipeline(from_onnx(model), target)
    return handed[0]


def test_native_staging_reads_int8_activations_as_they_are_and_moves_the_offset_into_the_bias():
    before = _integer_graph(_kws_like("int8"))
    convs = [n for n in before.nodes if n.op in ("qconv", "qmatmul")]
    assert [n.attrs.get("act_offset", 0) for n in convs] == [128] * 4      # staged as uint8 for x86
    after = stage_activations_native(before)
    new = [n for n in after.nodes if n.op in ("qconv", "qmatmul")]
    assert [n.attrs.get("act_offset", 0) for n in new] == [0] * 4
    for old, cur in zip(convs, new):
        w = before.constants[old.inputs[1]].astype(np.int64)
        wsum = w.reshape(w.shape[0], -1).sum(axis=1)
        # sum (x + 128) * w = sum x * w + 128 * sum w: the 128 * sum w moves into the bias
        assert np.array_equal(after.constants[cur.inputs[2]], before.constants[old.inputs[2]] + 128 * wsum)
    x = {"x": RNG.integers(-128, 128, (1, 1, 8, 6)).astype(np.int8)}
    assert np.array_equal(run_graph(after, x)["y"], run_graph(before, x)["y"])
    # uint8 activations are already read as stored: nothing to rewrite
    u8 = _integer_graph(_kws_like("uint8"))
    assert [n.attrs for n in stage_activations_native(u8).nodes] == [n.attrs for n in u8.nodes]


@pytest.mark.parametrize("activations,clamp", [("int8", "kiln_ssat8("), ("uint8", "kiln_usat8(")])
def test_int8_and_uint8_models_take_the_same_arena_and_one_saturating_clamp(activations, clamp):
    cm = kiln.compile(_kws_like(activations), target="cortex-m4")
    temps = [name for k in cm.result.kernels for name, _ in k.temps]
    assert len(temps) == 1 and temps[0].startswith("kernel_0.")   # only the NCHW image is staged
    assert cm.result.plan.arena_size == kiln.compile(_kws_like("uint8"), target="cortex-m4").result.plan.arena_size
    c = cm.files["model.c"]
    assert clamp in c and "kiln_min_int32_t(kiln_max_int32_t(" not in c
    dot = "s8s8" if activations == "int8" else "u8s8"
    # the 3x4 conv over one channel: four output channels per window row of four bytes
    assert f"kiln_dot1x4_{dot}(" in c and f"kiln_lane_mac4_{dot}(" in c


def _depthwise_kernel(model, target: str) -> str:
    c = kiln.compile(model, target=target).files["model.c"]
    return next(part for part in c.split("/* kernel_")[1:] if "kiln_lane_mac4" in part)


def _tap_loops_unrolled(kernel: str) -> bool:
    """Whether the depthwise kernel's tap loops (over the 3x3 window) carry an unroll pragma."""
    return "#pragma GCC unroll 3\n          for (int32_t i4" in kernel


def test_depthwise_tiles_pixels_per_tap_and_unrolls_the_taps_of_one_pixel_on_helium(monkeypatch):
    """Each tap's weights serve several output pixels: the 6-pixel rows take 3 on the M55
    (one int32x4 accumulator each, DEPTHWISE_PIXELS_VECTOR 5) and 2 on the M4 (four scalar
    accumulators each). The taps of a one-pixel tile are straight-line code on Helium only."""
    from kiln.passes import default_schedule

    model = _kws_like("int8")
    assert "int32_t acc0[3][4]" in _depthwise_kernel(model, "cortex-m55")
    assert "int32_t acc0[2][4]" in _depthwise_kernel(model, "cortex-m4")
    monkeypatch.setattr(default_schedule, "DEPTHWISE_PIXELS_VECTOR", 1)
    monkeypatch.setattr(default_schedule, "DEPTHWISE_PIXELS", 1)
    assert _tap_loops_unrolled(_depthwise_kernel(model, "cortex-m55"))
    assert not _tap_loops_unrolled(_depthwise_kernel(model, "cortex-m4"))


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55", "cortex-m4:nodsp"])
@pytest.mark.parametrize("activations", ["int8", "uint8"])
def test_int8_and_uint8_models_match_the_host_exactly(target, activations):
    """SSAT/USAT and their C fallbacks, the 4-byte Helium step of kiln_dot1x4, sixteen-lane
    VMLADAVA.S8 (the 1x1 conv's 16 channels), the unrolled Helium taps."""
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    model = _kws_like(activations)
    cm = kiln.compile(model, target=target)
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    dtype = DType.int8.np if activations == "int8" else DType.uint8.np
    info = np.iinfo(dtype)
    xs = [{"x": RNG.integers(info.min, info.max + 1, (1, 1, 8, 6)).astype(dtype)} for _ in range(3)]
    for x, out in zip(xs, cm.build().run_batch(xs)):
        assert np.array_equal(out["y"], host.run(x)["y"])


def _conv(cin: int, cout: int, hw, kernel, stride: int, pads, group: int, activations: str):
    """Conv (+ReLU) of the given shape, quantized by min-max."""
    w = (RNG.standard_normal((cout, cin // group, *kernel)) / np.sqrt(cin * np.prod(kernel) / group)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=pads, strides=[stride] * 2, group=group),
             helper.make_node("Relu", ["a"], ["y"])]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TP.FLOAT, [1, cin, *hw])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], initializer=[nh.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    calibration = {"x": RNG.standard_normal((8, cin, *hw)).astype(np.float32)}
    return kiln.quantize(model, calibration, method="minmax", activations=activations)


# (in, out channels, H x W, kernel, stride, pads, group): gathered windows of odd lengths
# (rows of 3, 5, 9, 15 bytes), 2x2 tiles over strided and padded rows, 1x2 and 1x3 channel
# tails, odd widths (1x4 tiles), a grouped conv (no dot tile) and a depthwise one
CONV_SHAPES = [
    (1, 6, (7, 6), (3, 3), 1, [1] * 4, 1),
    (1, 8, (6, 5), (5, 5), 1, [2] * 4, 1),
    (3, 10, (7, 6), (3, 3), 2, [1] * 4, 1),
    (5, 7, (6, 5), (3, 3), 1, [1] * 4, 1),
    (3, 64, (6, 6), (3, 3), 2, [1] * 4, 1),
    (16, 2, (6, 6), (1, 1), 1, [0] * 4, 1),
    (6, 10, (7, 6), (3, 4), 1, [1, 1, 1, 2], 1),
    (8, 16, (6, 6), (3, 3), 1, [1] * 4, 2),
    (16, 16, (7, 6), (3, 3), 2, [1] * 4, 16),
    (5, 7, (6, 6), (3, 3), 1, [1] * 4, 1),   # 7 channels, pixel pairs on the M4: 2 x 1 tiles
    (5, 7, (6, 6), (3, 3), 1, [1] * 4, 1),   # (uint8, then int8: kiln_dot1x2 over two pixels)
]


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
@pytest.mark.parametrize("index", range(len(CONV_SHAPES)),
                         ids=[f"{s[0]}to{s[1]}k{s[3][0]}{s[3][1]}s{s[4]}g{s[6]}w{s[2][1]}" for s in CONV_SHAPES])
def test_convolutions_of_many_shapes_match_the_host_exactly(target, index):
    """Whatever tile, window gathering or tail each shape takes, the same integers as the
    host build (int8 and uint8 activations alternate by shape)."""
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    shape, activations = CONV_SHAPES[index], "uint8" if index % 2 else "int8"
    model = _conv(*shape, activations=activations)
    cm = kiln.compile(model, target=target)
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    dtype = DType.int8.np if activations == "int8" else DType.uint8.np
    info = np.iinfo(dtype)
    xs = [{"x": RNG.integers(info.min, info.max + 1, (1, shape[0], *shape[2])).astype(dtype)} for _ in range(2)]
    for x, out in zip(xs, cm.build().run_batch(xs)):
        assert np.array_equal(out["y"], host.run(x)["y"])


def test_a_grouped_convolution_takes_the_dot_tiles():
    """Output channel 4o + c of a two-group conv reads the input channels of group
    (4o + c) // 8: within a tile of four (or two) channels that is o // 2 (o // 4), so the
    activations are one run for the whole tile (c99 ``_without_tile_offsets``) and the
    helpers apply: 2x2 on the M4, 1x4 on the M55 (exactness: the shape sweep above)."""
    model = _conv(*CONV_SHAPES[7], activations="int8")
    assert "kiln_dot2x2_s8s8(" in kiln.compile(model, target="cortex-m4").files["model.c"]
    assert "kiln_dot1x4_s8s8(" in kiln.compile(model, target="cortex-m55").files["model.c"]
