"""Integer activations channels last between VNNI convolutions (kiln/passes/integer_layout.py),
the NHWC max pool, window rows read in place past their end (kiln/passes/vnni_pack.py), the
register tile that keeps its accumulators across a convolution's window rows
(kiln/codegen/x86.py): the graph the pass makes, and the same integers as the NCHW kernels
and ONNX Runtime."""
from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import ShapeError
from kiln.ir import ops
from kiln.ir.dtype import DType
from kiln.ir.graph import TensorType
from tests.test_vnni import _host_caps
from tests.util import ort_run

RNG = np.random.default_rng(11)


def _residual_model(c=3, hw=16):
    """stem 7x7/2 (3 -> 32) -> ReLU -> MaxPool 3x3/2 -> conv 3x3 -> ReLU -> conv 3x3 -> Add(pool)
    -> ReLU -> GlobalAveragePool: a ResNet's first block in miniature, quantized by ORT's QDQ
    quantizer (``kiln.quantize``)."""
    def conv_w(oc, ic, k):
        return nh.from_array((RNG.standard_normal((oc, ic, k, k)) * (1.0 / np.sqrt(ic * k * k))).astype(np.float32),
                             f"w{oc}_{ic}_{k}_{RNG.integers(1 << 30)}")
    w0, w1, w2 = conv_w(32, c, 7), conv_w(32, 32, 3), conv_w(32, 32, 3)
    n = helper.make_node
    nodes = [n("Conv", ["x", w0.name], ["s"], strides=[2, 2], pads=[3] * 4), n("Relu", ["s"], ["sr"]),
             n("MaxPool", ["sr"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
             n("Conv", ["p", w1.name], ["a"], pads=[1] * 4), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", w2.name], ["b"], pads=[1] * 4), n("Add", ["b", "p"], ["r"]), n("Relu", ["r"], ["rr"]),
             n("GlobalAveragePool", ["rr"], ["y"])]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 32, 1, 1])], initializer=[w0, w1, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((4, c, hw, hw)).astype(np.float32)})


def _run_both(model, monkeypatch):
    x = {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    _host_caps(monkeypatch, True)
    nhwc = kiln.compile(model)
    _host_caps(monkeypatch, False)
    nchw = kiln.compile(model)
    return nhwc, nchw, x


def test_pass_runs_the_block_channels_last_with_no_transpose_back(monkeypatch):
    model = _residual_model()
    _host_caps(monkeypatch, True)
    g = kiln.compile(model).graph
    # Expected: (op, layout attributes, output shape), in order
    expected = [
        ("quantize_linear", {}, (1, 3, 16, 16)),
        ("qconv", {"channels_last": 1, "nchw_input": 1}, (1, 8, 8, 32)),
        ("max_pool", {"channels_last": 1}, (1, 4, 4, 32)),
        ("qconv", {"channels_last": 1}, (1, 4, 4, 32)),
        ("qconv", {"channels_last": 1}, (1, 4, 4, 32)),
        ("qadd", {}, (1, 4, 4, 32)),
        ("qglobal_avg_pool", {"channels_last": 1}, (1, 32, 1, 1)),  # (N, C, 1, 1) in either layout
    ]
    got = [(nd.op, nd.outputs[0].type.shape) for nd in g.nodes]
    assert [(op, shape) for op, _, shape in expected] == got[:len(expected)]
    for (op, attrs, _), nd in zip(expected, g.nodes):
        for key, value in attrs.items():
            assert nd.attrs.get(key) == value, (op, key, nd.attrs)
        if op == "qconv" and "nchw_input" not in attrs:
            assert not nd.attrs.get("nchw_input")
    assert "transpose" not in [nd.op for nd in g.nodes]
    assert not any(nd.attrs.get("pad_rows") for nd in g.nodes)  # the NHWC pool needs no padded copy


def test_channels_last_block_equals_nchw_kernels_and_ort(monkeypatch):
    model = _residual_model()
    nhwc, nchw, x = _run_both(model, monkeypatch)
    assert "KILN_DPBUSD(" in nhwc.source() and "KILN_DPBUSD(" not in nchw.source()
    got, want, ref = nhwc.run(x)["y"], nchw.run(x)["y"], ort_run(model, x)["y"]
    np.testing.assert_array_equal(got, want)
    step = np.abs(np.diff(np.unique(ref))).min(initial=1.0)
    assert np.abs(got - ref).max() <= step * 1.01


def test_plain_c_fallback_of_the_channels_last_block_computes_the_same(monkeypatch):
    model = _residual_model()
    nhwc, _, x = _run_both(model, monkeypatch)
    plain = nhwc.target_impl.runner(nhwc, extra_flags=["-mno-avx512vnni"])(x)
    np.testing.assert_array_equal(plain["y"], nhwc.run(x)["y"])


def test_tile_keeps_its_accumulators_across_the_window_rows(monkeypatch):
    """The kh loop is printed inside the register block: accumulators loaded once per tile
    (its body under the test that skips rows in a zero border, kiln/passes/skip_border_taps.py)."""
    model = _residual_model()
    _host_caps(monkeypatch, True)
    src = kiln.compile(model).source()
    blocks = [b for b in re.findall(r"#if defined\(__AVX512VNNI__\)\n(.*?)#else", src, flags=re.S)
              if "KILN_DPBUSD(" in b]
    assert len(blocks) == 3
    for block in blocks:
        assert block.count("kiln_acc_0_0 = _mm512_loadu_si512") == 1
        rows = re.search(r"for \(int64_t (\w+) = 0; \1 < (\d+); \+\+\1\) \{\n\s*(?:if \(.*\) \{\n\s*)?"
                         r"for \(int64_t \w+ = 0; \w+ < \d+; \w+ \+= 4\)",
                         block)
        assert rows is not None and int(rows.group(2)) in (3, 7)


def _downsample_model(hw=14):
    """conv 3x3 (3 -> 32) -> ReLU -> conv 1x1 stride 2 (32 -> 64): a ResNet downsample's 1x1
    conv, whose channels-last input needs no padding, quantized by ``kiln.quantize``."""
    w0 = nh.from_array((RNG.standard_normal((32, 3, 3, 3)) * 0.2).astype(np.float32), "w0")
    w1 = nh.from_array((RNG.standard_normal((64, 32, 1, 1)) * 0.2).astype(np.float32), "w1")
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", "w1"], ["y"], strides=[2, 2])]
    out = -(-hw // 2)
    g = helper.make_graph(nodes, "down", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 64, out, out])], initializer=[w0, w1])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((4, 3, hw, hw)).astype(np.float32)})


def test_unpadded_1x1_conv_reads_its_channels_last_input_in_place(monkeypatch):
    """No staging copy for the 1x1 conv (the 3x3 conv before it keeps its padded copy); the
    tile still reads whole groups with vpdpbusd, and the integers are the NCHW kernels'."""
    model = _downsample_model()
    x = {"x": RNG.standard_normal((1, 3, 14, 14)).astype(np.float32)}
    _host_caps(monkeypatch, True)
    nhwc = kiln.compile(model)
    src = nhwc.source()
    convs = [nd for nd in nhwc.graph.nodes if nd.op == "qconv"]
    assert [nd.attrs["kernel"] for nd in convs] == [(3, 3), (1, 1)]
    assert len(set(re.findall(r"\b(\w+__xu)\b", src))) == 1  # the 3x3 conv's padded input only
    one_by_one = src.split(f"writes {convs[1].outputs[0].name} (qconv)")[1].split("/* kernel_")[0]
    assert "__xu" not in one_by_one and "KILN_DPBUSD(kiln_acc_0_0" in one_by_one
    _host_caps(monkeypatch, False)
    nchw = kiln.compile(model)
    got, ref = nhwc.run(x)["y"], ort_run(model, x)["y"]
    np.testing.assert_array_equal(got, nchw.run(x)["y"])
    step = np.abs(np.diff(np.unique(ref))).min(initial=1.0)
    assert np.abs(got - ref).max() <= step * 1.01


def test_padded_copy_of_a_channels_last_input_is_a_nested_loop(monkeypatch):
    """The 3x3 convs' padded copies: rows in parallel, a loop over pixels inside, each
    pixel's channels one vectorized run -- no division or remainder in any index (each copy
    split into loops over the padding and the inside: ``partition_loops``). The copy is for
    inputs whose storage has no border (kiln/passes/padded_storage.py), here all of them."""
    _host_caps(monkeypatch, True)
    monkeypatch.setattr("kiln.passes.padded_storage.PRODUCERS", ())
    src = kiln.compile(_residual_model()).source()
    copies = re.findall(r"\n *(\w+__xu\[[^\n]*)", src)
    staging = [k for k in src.split("static void kernel_")[1:] if "__xu[" in k]
    assert len(staging) == 3  # the stem's (from NCHW) and the two 3x3 convs'
    for copy in copies:
        assert "/ INT64_C" not in copy and "% INT64_C" not in copy, copy


@pytest.mark.parametrize("kernel, c, k", [
    ((7, 7), 3, 7 * 24),   # the RGB stem: 21-byte rows read as 24, the last 3 bytes meet zero weights
    ((3, 3), 3, 3 * 12),   # 9 -> 12
    ((5, 5), 1, 5 * 8),    # grayscale: 5 -> 8
    ((3, 3), 4, 3 * 12),   # whole groups already
    ((1, 1), 6, 8),        # 1x1 over 6 channels: 8
])
def test_window_rows_are_rounded_up_to_whole_groups(kernel, c, k):
    from kiln.passes.vnni_pack import conv_reduction

    attrs = {"kernel": kernel, "strides": (2, 2), "pads": (1, 1, 1, 1)}
    assert conv_reduction((16, kernel[0], kernel[1] * c), attrs) == k


def test_grouped_and_dilated_convolutions_have_no_single_run():
    from kiln.passes.vnni_pack import conv_reduction

    assert conv_reduction((6, 3, 9), {"kernel": (3, 3), "group": 3}) is None
    assert conv_reduction((6, 3, 12), {"kernel": (3, 3), "dilations": (2, 2)}) is None


@pytest.mark.parametrize("c, k, hw, stride", [(3, 7, 20, 2), (2, 7, 13, 1), (6, 3, 11, 2), (5, 3, 9, 1)])
def test_over_reading_window_rows_compute_the_row_major_result(c, k, hw, stride, monkeypatch):
    """Rows that are not whole 4-byte groups read into the next pixel or the padding column
    after the row, against zero weights: the same integers as the kernels without panels."""
    from tests.test_vnni import _conv_model, _inputs

    model = _conv_model(c, 16, k, hw, stride=stride)
    x = _inputs(model)
    _host_caps(monkeypatch, True)
    panels = kiln.compile(model)
    assert "KILN_DPBUSD(" in panels.source()
    _host_caps(monkeypatch, False)
    np.testing.assert_array_equal(panels.run(x)[model.graph.output[0].name],
                                  kiln.compile(model).run(x)[model.graph.output[0].name])


def test_nhwc_max_pool_equals_the_nchw_pool(monkeypatch):
    """The pool after a channels-last conv runs NHWC; the value is the same as the NCHW pool's."""
    model = _residual_model()
    nhwc, nchw, x = _run_both(model, monkeypatch)
    pool = next(n for n in nhwc.graph.nodes if n.op == "max_pool")
    assert pool.attrs["channels_last"] == 1
    np.testing.assert_array_equal(nhwc.run(x)["y"], nchw.run(x)["y"])


def test_channels_last_max_pool_rejects_a_non_2d_input():
    t = TensorType((1, 8, 8), DType.uint8)
    with pytest.raises(ShapeError, match=r"channels_last pools 2-D windows of an \(N, H, W, C\) input; "
                                         r"got input \(1, 8, 8\)"):
        ops.infer_types("max_pool", [t], {"kernel_shape": (2, 2), "channels_last": 1})


def test_channels_last_global_average_pool_shape_rule():
    table = TensorType((1,), DType.int32)
    attrs = {"x_zp": 0, "y_zp": 0, "lo": 0, "hi": 255, "dtype": "uint8", "channels_last": 1}
    x = TensorType((2, 7, 5, 32), DType.uint8)
    assert ops.infer_types("qglobal_avg_pool", [x, table, table], attrs)[0].shape == (2, 32, 1, 1)
    with pytest.raises(ShapeError, match=r"\(N, \*spatial, C\)"):
        ops.infer_types("qglobal_avg_pool", [TensorType((2, 32), DType.uint8), table, table], attrs)


def test_channels_last_qconv_shape_rule():
    """(N, H, W, C) in, (N, OH, OW, OC) out; an NCHW input with ``nchw_input``."""
    w = TensorType((16, 3, 3 * 8), DType.int8)
    epi = [TensorType((16,), DType.int32)] * 3
    attrs = {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "dtype": "uint8", "lo": 0, "hi": 255,
             "y_zp": 0, "x_zp": 0, "channels_last": 1}
    x = TensorType((1, 10, 12, 8), DType.uint8)
    assert ops.infer_types("qconv", [x, w, *epi], attrs)[0].shape == (1, 5, 6, 16)
    x_nchw = TensorType((1, 8, 10, 12), DType.uint8)
    assert ops.infer_types("qconv", [x_nchw, w, *epi], {**attrs, "nchw_input": 1})[0].shape == (1, 5, 6, 16)
    with pytest.raises(ShapeError, match="do not match input"):
        ops.infer_types("qconv", [x_nchw, w, *epi], attrs)  # read as NHWC: 12 channels, not 8


# -- the tile's write-back with intrinsics (kiln/codegen/x86_epilogue.py) ---------------------------

def _kernel_stats(model, monkeypatch):
    from kiln.codegen.x86 import X86Renderer

    _host_caps(monkeypatch, True)
    out = []
    for k in kiln.compile(model).result.kernels:
        r = X86Renderer()
        r.render_func(k.func, set())
        out.append(r.stats)
    return out


def test_requantizing_and_residual_epilogues_are_printed_with_intrinsics(monkeypatch):
    """Every tile of the block (stem, conv, conv + residual qadd) writes back 16 lanes at a time."""
    stats = _kernel_stats(_residual_model(), monkeypatch)
    assert sum(s["vnni_tiles"] for s in stats) == 3
    assert sum(s["vnni_epilogues"] for s in stats) == 3


def test_a_float_epilogue_stays_plain_c(monkeypatch):
    """A matmul whose write-back dequantizes to float is outside what the epilogue writer prints."""
    from tests.test_vnni import _matmul_model

    stats = _kernel_stats(_matmul_model(16, 64, 32), monkeypatch)
    assert sum(s["vnni_tiles"] for s in stats) == 1
    assert sum(s["vnni_epilogues"] for s in stats) == 0


@pytest.mark.parametrize("op, a, b, dtype, expected", [
    ("add", (0, 255), (-134, -134), DType.int64, (-134, 121)),
    ("mul", (-134, 121), (806042808, 806042808), DType.int64, (-134 * 806042808, 121 * 806042808)),
    ("mul", (-(1 << 31), (1 << 31) - 1), (1 << 31, 1 << 31), DType.int32, (-(1 << 31), (1 << 31) - 1)),  # may wrap
    ("shr", (-1000, 1000), (1, 3), DType.int64, (-500, 500)),
    ("shr", (8, 64), (2, 3), DType.int64, (1, 16)),
    ("max", (-5, 300), (0, 0), DType.int64, (0, 300)),
    ("min", (0, 300), (255, 255), DType.int64, (0, 255)),
    ("shr", (0, 10), (-1, 3), DType.int64, (-(1 << 63), (1 << 63) - 1)),  # a negative count: no bound
])
def test_interval_bounds_of_epilogue_ops(op, a, b, dtype, expected):
    from kiln.codegen.x86_epilogue import _interval

    assert _interval(op, a, b, dtype) == expected


def test_int64_product_of_wide_values_is_not_printed_as_vpmuldq():
    """vpmuldq multiplies the low 32 bits: a factor that may not fit int32 must refuse the loop."""
    from kiln.codegen.x86_epilogue import EpilogueWriter
    from kiln.ir.expr import Bin, Cast, Load, Var

    c = Var("c")
    wide = Bin("add", Cast(Load("a", (c,), DType.int32), DType.int64), Cast(Load("b", (c,), DType.int32), DType.int64),
               DType.int64)  # may exceed int32
    w = EpilogueWriter("c", lambda e: f"&{e.buffer}[c]", str)
    with pytest.raises(EpilogueWriter.Unsupported, match="wider than int32"):
        w.value(Bin("mul", wide, wide, DType.int64))
    ok = Bin("mul", Cast(Load("a", (c,), DType.int32), DType.int64), Cast(Load("b", (c,), DType.uint8), DType.int64),
             DType.int64)
    assert w.value(ok).hi is not None and any("_mm512_mul_epi32" in line for line in w.lines)


def _recentered(x, z=116, lo=0, hi=255, narrow=DType.uint8):
    """``int32(narrow(min(max(x + z, lo), hi))) - z``: a convolution's requantized output as the
    residual qadd fused after it reads it."""
    from kiln.ir.expr import Bin, Cast, Const

    I32 = DType.int32
    clamp = Bin("min", Bin("max", Bin("add", x, Const(z, I32), I32), Const(lo, I32), I32), Const(hi, I32), I32)
    return Bin("sub", Cast(Cast(clamp, narrow), I32), Const(z, I32), I32)


def test_recentered_clamp_is_one_clamp_where_nothing_can_overflow():
    """x bounded (a rounding shift of a high word): max(x, lo - z), min(.., hi - z), no add or
    sub of the zero point; x a raw int32 (x + z may wrap) or a clamp outside the narrow type
    (the cast would change it): printed op by op."""
    from kiln.codegen.x86_epilogue import EpilogueWriter
    from kiln.ir.expr import Bin, Const, Load, Var

    c, I32 = Var("c"), DType.int32
    bounded = Bin("shr", Load("a", (c,), I32), Const(8, I32), I32)
    w = EpilogueWriter("c", lambda e: f"&{e.buffer}[c]", str)
    v = w.value(_recentered(bounded))
    assert v.bounds == (-116, 139)
    ops = [line.split("= ")[1].split("(")[0] for line in w.lines]
    ops = [op for op in ops if op != "_mm512_set1_epi32"]  # constants (hoisted where a row loop exists)
    assert ops == ["_mm512_loadu_si512", "_mm512_srai_epi32", "_mm512_max_epi32", "_mm512_min_epi32"]
    for x, kw in ((Load("a", (c,), I32), {}), (bounded, {"hi": 300})):
        w = EpilogueWriter("c", lambda e: f"&{e.buffer}[c]", str)
        w.value(_recentered(x, **kw))
        assert any("_mm512_sub_epi32" in line for line in w.lines)


@pytest.mark.parametrize("dtype, lo, hi, expect", [
    (DType.uint8, 0, 255, ["_mm512_packs_epi32", "_mm512_packus_epi16"]),       # the packs are the clamp
    (DType.int8, -128, 127, ["_mm512_packs_epi32", "_mm512_packs_epi16"]),
    (DType.uint8, 5, 255, ["_mm512_max_epi32", "_mm512_max_epi32", "_mm512_packs_epi32", "_mm512_packus_epi16"]),
    (DType.uint8, 0, 200, ["_mm512_max_epi32", "_mm512_min_epi32"] * 2            # a clamp inside the range:
     + ["_mm512_packs_epi32", "_mm512_packus_epi16"]),                            # printed, then packed
    (DType.uint8, None, None, None),                                              # a wrapping cast
])
def test_two_column_groups_narrow_together_only_when_clamped(dtype, lo, hi, expect):
    """``store_pair``: two 16-lane groups of a byte output narrowed by saturating packs where
    each value is clamped to the byte range (a clamp inside the range is printed first), and
    nothing printed for a plain (wrapping) cast."""
    from kiln.codegen.x86_epilogue import EpilogueWriter
    from kiln.ir.expr import Bin, Cast, Const, Load, Var

    c, r, I32 = Var("c"), Var("r"), DType.int32

    def value(col):
        x = Bin("shr", Load("a", (r, col), I32), Const(8, I32), I32)
        if lo is not None:
            x = Bin("min", Bin("max", x, Const(lo, I32), I32), Const(hi, I32), I32)
        return Cast(x, dtype)

    w = EpilogueWriter("c", lambda e: f"&{e.buffer}[c]", str, row="r")
    done = w.store_pair(dtype, "&y[c]", value(c), value(Bin("add", c, Const(16, DType.int64), DType.int64)))
    if expect is None:
        assert not done and not w.lines and not w.hoisted
        return
    assert done
    ops = [line.split("= ")[1].split("(")[0] for line in w.lines if line.startswith("const")]
    assert [op for op in ops if op not in ("_mm512_loadu_si512", "_mm512_srai_epi32")] == expect
    assert sum(op == "_mm512_srai_epi32" for op in ops) == 2  # each group computed once
    assert w.lines[-1].startswith("_mm256_storeu_si256((__m256i*)&y[c], ")


def test_residual_write_back_clamps_without_recentering(monkeypatch):
    """The block's convolution + residual qadd write-back: per row and 16 columns, the
    convolution's clamp against hoisted bounds with no zero-point add or sub, then the two
    qadd products; the integers of the plain-C branch (built without VNNI)."""
    from tests.test_requant_forms import _epilogue

    model = _residual_model()
    nhwc, _, x = _run_both(model, monkeypatch)
    (fused,) = [k for k in nhwc.source().split("static void ")[1:] if "in5" in k.split("{")[0]]
    _, per_row = _epilogue(fused)
    assert "_mm512_sub_epi32" not in per_row and "_mm512_min_epi32" in per_row
    assert per_row.count("_mm512_mullo_epi32") == 4  # two groups of 16 columns, narrowed together
    plain = nhwc.target_impl.runner(nhwc, extra_flags=["-mno-avx512vnni"])(x)
    np.testing.assert_array_equal(plain["y"], nhwc.run(x)["y"])


def test_integer_graph_output_comes_back_nchw(monkeypatch):
    """A QLinearConv whose uint8 output is the graph output (batch 2): the NHWC conv's result
    is transposed back under the output's own name."""
    from tests.util import qlinear_conv_model

    c, oc = 8, 16
    model = qlinear_conv_model(RNG.integers(-100, 100, (oc, c, 3, 3)), batch=2, hw=9, y_scale=0.07)
    _host_caps(monkeypatch, True)
    cm = kiln.compile(model)
    assert any(n.op == "qconv" and n.attrs.get("channels_last") for n in cm.graph.nodes)
    assert cm.graph.outputs[0].name == "y" and tuple(cm.graph.outputs[0].type.shape) == (2, oc, 9, 9)
    x = RNG.integers(0, 256, (2, c, 9, 9)).astype(np.uint8)
    got, want = cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"]
    assert got.shape == (2, oc, 9, 9)
    assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1


# -- requantization in int32 where it fits (qlinear.requant, x86_epilogue's rounding shift) -------------

@pytest.mark.parametrize("form", ["high_word", "narrow"])
def test_requantizing_epilogue_rounds_with_one_shift_and_clamps_in_int32(form, monkeypatch):
    """Multipliers below 1 (every shift >= 31): the shifted value is clamped as one int32
    vector, and the rounding shift is (v + 2^(s-1)) >> s with 2^(s-1) once per 16 columns:
    in int32 on the product's high word (ORT's multipliers here are all below 1/4: shift
    >= 33), in int64 when that form is turned off. Both give the same integers."""
    from kiln.ir.ops import qlinear

    model = _residual_model()
    _host_caps(monkeypatch, True)
    if form == "narrow":
        monkeypatch.setattr(qlinear, "HIGH_WORD_SHIFT", 99)
    cm = kiln.compile(model)
    assert all(nd.attrs["min_shift"] >= 33 for nd in cm.graph.nodes if nd.op == "qconv")
    src = cm.source()
    blocks = re.findall(r"#if defined\(__AVX512VNNI__\)\n(\s*for \(int64_t \w+_wb.*?)#else", src, flags=re.S)
    assert len(blocks) == 3
    width = "epi32" if form == "high_word" else "epi64"
    for block in blocks:
        hoisted, per_row = block.split("for (int64_t", 2)[1], block.split("for (int64_t", 2)[2]
        assert f"_mm512_sllv_{width}" in hoisted and f"_mm512_sllv_{width}" not in per_row
        assert f"_mm512_srav_{width}" in per_row and "_mm512_max_epi64" not in per_row
        # clamped in int32: a max, or the saturating packs of int32 lanes that narrow to bytes
        assert "_mm512_max_epi32" in per_row or "_mm512_packs_epi32" in per_row
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    monkeypatch.setattr(qlinear, "HIGH_WORD_SHIFT", 99)
    monkeypatch.setattr(qlinear, "NARROW_SHIFT", 99)
    np.testing.assert_array_equal(cm.run(x)["y"], kiln.compile(model).run(x)["y"])


def _qlinear_matmul(y_scale: float):
    """uint8 (4 x 64) @ int8 (64 x 16) with x scale 0.5 and weight scale 0.25: the real
    multiplier is 0.125 / y_scale, below or above 1."""
    inits = [nh.from_array(np.array(0.5, np.float32), "xs"), nh.from_array(np.array(128, np.uint8), "xz"),
             nh.from_array(RNG.integers(-127, 128, (64, 16)).astype(np.int8), "w"),
             nh.from_array(np.array(0.25, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz"),
             nh.from_array(np.array(y_scale, np.float32), "ys"), nh.from_array(np.array(3, np.uint8), "yz")]
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    g = helper.make_graph([node], "qmm", [helper.make_tensor_value_info("x", TP.UINT8, [4, 64])],
                          [helper.make_tensor_value_info("y", TP.UINT8, [4, 16])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("y_scale, narrow", [(2.0, True), (0.05, False)])
def test_int32_clamp_gives_the_int64_clamps_integers(y_scale, narrow, monkeypatch):
    """The same integers with the int32 clamp as with the int64 one (NARROW_SHIFT and
    HIGH_WORD_SHIFT out of reach), at inputs that drive the accumulators to their extremes; a multiplier above 1
    (shift below 31) keeps the int64 clamp."""
    from kiln.ir.ops import qlinear

    model = _qlinear_matmul(y_scale)
    x = np.concatenate([np.zeros((1, 64)), np.full((1, 64), 255), np.full((1, 64), 128),  # extremes, zero
                        RNG.integers(0, 256, (1, 64))]).astype(np.uint8)
    _host_caps(monkeypatch, True)
    cm = kiln.compile(model)
    (node,) = [nd for nd in cm.graph.nodes if nd.op == "qmatmul"]
    assert (node.attrs["min_shift"] >= qlinear.NARROW_SHIFT) == narrow
    got = cm.run({"x": x})["y"]
    monkeypatch.setattr(qlinear, "NARROW_SHIFT", 99)
    monkeypatch.setattr(qlinear, "HIGH_WORD_SHIFT", 99)
    np.testing.assert_array_equal(got, kiln.compile(model).run({"x": x})["y"])
    want = ort_run(model, {"x": x})["y"]
    assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1
    assert (got == 0).any() and (got == 255).any() and ((got > 0) & (got < 255)).any()  # both clamps hit


@pytest.mark.parametrize("ma, mb, shift, wide", [
    (1_500_000, 900_000, 21, False),        # what the quantize pass makes: int32 throughout
    (3 << 28, 5 << 27, 30, True),           # 30-bit multipliers: the products need int64
])
def test_qadd_computes_in_int32_exactly_when_its_bound_allows(ma, mb, shift, wide):
    """The same integers as the formula in Python integers, in whichever width it picked."""
    from kiln.ir.graph import Graph, Node, Value
    from kiln.ir.interp import run_graph
    from kiln.ir.ops.qlinear import _qadd_compute
    from kiln.ir.compute import Tensor

    attrs = dict(a_zp=3, b_zp=250, y_zp=-5, ma=ma, mb=mb, shift=shift, lo=-128, hi=127, dtype="int8")
    t = TensorType((256,), DType.uint8)
    stage = _qadd_compute([Tensor("a", t.shape, t.dtype), Tensor("b", t.shape, t.dtype)],
                          [Tensor("y", t.shape, DType.int8)], attrs)[0]
    from kiln.ir.expr import Bin, walk

    widths = {x.dtype for x in walk(stage.body) if isinstance(x, Bin) and x.op == "mul"}
    assert widths == ({DType.int64} if wide else {DType.int32})
    a = np.arange(256, dtype=np.uint8)
    b = a[::-1].copy()
    g = Graph((Value("a", t), Value("b", t)), (Value("y", TensorType((256,), DType.int8)),),
              (Node("qadd", ("a", "b"), (Value("y", TensorType((256,), DType.int8)),), attrs),)).verify()
    got = run_graph(g, {"a": a, "b": b})["y"]
    want = [max(-128, min(127, (((int(x) - 3) * ma + (int(y) - 250) * mb + (1 << (shift - 1))) >> shift) - 5))
            for x, y in zip(a, b)]
    np.testing.assert_array_equal(got, np.array(want, np.int8))


def test_input_is_quantized_while_the_stem_stages_it(monkeypatch):
    """Before: QuantizeLinear (a kernel writing the uint8 image) then the stem's padded copy.
    Expected: one kernel fewer -- the stem's staging reads the float image and quantizes it
    (``_prologues`` in ``kiln/passes/fuse.py``), with the same outputs."""
    from kiln.passes.fuse import fuse

    _host_caps(monkeypatch, True)
    model = _residual_model()
    m = kiln.compile(model)
    groups = [[n.op for n in g.nodes] for g in fuse(m.graph)]
    assert groups[0][:2] == ["quantize_linear", "qconv"], groups
    assert not any(g == ["quantize_linear"] for g in groups)
    stem = m.source().split("static void kernel_0(")[1].split("\n}\n")[0]
    assert stem.startswith("const float* restrict in0") and "nearbyintf" in stem
    x = {"x": np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32)}
    got, ref = m.run(x)["y"], ort_run(model, x)["y"]
    step = np.abs(np.diff(np.unique(ref))).min(initial=1.0)
    assert np.abs(got - ref).max() <= step * 1.01
