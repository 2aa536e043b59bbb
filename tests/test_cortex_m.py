"""Cortex-M targets: C99 generation (no compiler), the generated project built with
arm-none-eabi-gcc (-Wall -Wextra -Werror -std=c99) and run under qemu-system-arm.

- float fallback: small_cnn on the M4 matches ONNX Runtime;
- int8: the digits CNN (trained on sklearn's digits, quantized by kiln.quantize) on the
  M4, M7 and M55 matches Kiln's host int8 output exactly and keeps its accuracy; its
  object code has no floating-point instruction and uses SMLAD (M4/M7) or Helium (M55);
- the arena against its lower bound, ``--sram-budget``, bad inputs.
Instruction counts (deterministic under ``-icount``) are printed: run with ``-s``.
"""
from __future__ import annotations

import re
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import KilnError, TargetError, VerificationError
from tests.conftest import require_module, require_toolchain
from tests.test_codegen import check_snapshot
from tests.util import make_model, ort_run


def _tiny_qdq() -> onnx.ModelProto:
    """conv3x3(1->4)-relu, global-free flatten, gemm(4*4*4 -> 3), quantized from fixed data."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5
    fw = rng.standard_normal((3, 64)).astype(np.float32) * 0.2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "tiny_q", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 3])],
                          initializer=[nh.from_array(w, "w"), nh.from_array(np.full(4, 0.1, np.float32), "b"),
                                       nh.from_array(fw, "fw"), nh.from_array(np.zeros(3, np.float32), "fb")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    cal = rng.random((16, 1, 4, 4)).astype(np.float32)
    return kiln.quantize(m, {"x": cal}, method="minmax")


# -- generation, no compiler ----------------------------------------------------------------------------

def test_int8_model_has_integer_io_and_no_float():
    cm = kiln.compile(_tiny_qdq(), target="cortex-m4")
    assert [v.dtype.value for v in cm.graph.inputs] == ["uint8"]
    assert [v.dtype.value for v in cm.graph.outputs] == ["uint8"]
    c, h = cm.files["model.c"], cm.files["model.h"]
    assert "float" not in c and "math.h" not in c and "#pragma omp" not in c and "int64_t i" not in c
    assert "kiln_dot_u8s8(" in c
    assert "#define KILN_TINY_Q_ARENA_SIZE" in h and "KILN_TINY_Q_INPUT_X_SCALE" in h
    assert "KILN_TINY_Q_OUTPUT_Y_ZERO_POINT" in h
    assert "int kiln_tiny_q_run(const kiln_tiny_q_inputs* inputs" in h
    assert "__attribute__((aligned(16)))" in cm.files["weights.c"]
    check_snapshot("cortex_m4_tiny_q_model.c", c)


def test_nodsp_option_keeps_plain_loops():
    c = kiln.compile(_tiny_qdq(), target="cortex-m4:nodsp").files["model.c"]
    assert "kiln_dot" not in c and "kiln_dsp.h" not in c


def _qmatmul_model(k: int, n: int, rows: int = 3) -> onnx.ModelProto:
    """x[rows, k] @ w[k, n] + b, quantized: one ``qmatmul`` whose dot products are k long."""
    rng = np.random.default_rng(k * 100 + n)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.3
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "qmm",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [rows, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [rows, n])],
                          initializer=[nh.from_array(w, "w"), nh.from_array(rng.standard_normal(n).astype(np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return kiln.quantize(m, {"x": rng.standard_normal((16, rows, k)).astype(np.float32)}, method="minmax")


def test_dot_products_run_in_tiles_that_share_each_load():
    """Cortex-M dot products come in tiles (``Capabilities.dot_tile``): on the M4/M7 two rows
    by two output channels where the rows pair up (``kiln_dot2x2``: each widened word feeds
    two sums), else one row by four channels (``dot_tile_unpaired``; ``kiln_dot1x4``, the
    activation row read once for four weight rows); on the M55 always one by four (its
    four-lane epilogue). A tile of three columns (n = 6) is three ``kiln_dot`` calls, one of
    two ``kiln_dot1x2`` (Helium: two ``kiln_dot``).
    ``nodsp`` keeps the plain loops and no window copies are staged
    (``Capabilities.window_copies``: the arena does not grow)."""
    c = kiln.compile(_qmatmul_model(40, 8), target="cortex-m4").files["model.c"]   # 3 rows
    assert "kiln_dot1x4_u8s8(" in c and "kiln_dot_u8s8(" not in c and "kiln_dot2x2" not in c
    c = kiln.compile(_qmatmul_model(40, 6), target="cortex-m4").files["model.c"]
    assert c.count("kiln_dot_u8s8(") == 3 and "kiln_dot1x4" not in c  # 6 columns: tiles of 3
    c = kiln.compile(_qmatmul_model(40, 10), target="cortex-m4").files["model.c"]
    assert "kiln_dot1x2_u8s8(" in c and "kiln_dot_u8s8(" not in c      # 10 columns: tiles of 2
    c = kiln.compile(_qmatmul_model(40, 10), target="cortex-m55").files["model.c"]
    assert c.count("kiln_dot_x8s8(") == 2 and "kiln_dot1x2" not in c   # Helium: no gain
    # 7 columns (prime): tiles of one column, by one row on the M55, two on the M4
    assert kiln.compile(_qmatmul_model(40, 7), target="cortex-m55").files["model.c"].count("kiln_dot_x8s8(") == 1
    assert kiln.compile(_qmatmul_model(40, 7, rows=4), target="cortex-m4").files["model.c"].count("kiln_dot_u8s8(") == 2
    for target in ("cortex-m4", "cortex-m7"):
        c = kiln.compile(_qmatmul_model(40, 8, rows=4), target=target).files["model.c"]
        # rows 40 bytes apart, weight rows 40 apart, 40 long
        assert "kiln_dot2x2_u8s8(" in c and ", 40, &in1[" in c and "kiln_dot1x4" not in c
    c = kiln.compile(_qmatmul_model(40, 8, rows=4), target="cortex-m55").files["model.c"]
    assert "kiln_dot1x4_x8s8(" in c and "kiln_dot2x2" not in c
    cm = kiln.compile(_tiny_qdq(), target="cortex-m4")
    assert "__win" not in cm.files["model.c"]
    assert "kiln_dot" not in kiln.compile(_qmatmul_model(40, 8), target="cortex-m4:nodsp").files["model.c"]


def test_arena_is_planned_with_16_byte_alignment():
    from examples.models import small_cnn

    cm = kiln.compile(small_cnn(), target="cortex-m4")
    plan = cm.result.plan
    assert plan.arena_size <= 1.05 * plan.lower_bound
    assert all(s.index % 16 == 0 for s in plan.storage.values() if s.kind == "arena")
    assert f"#define KILN_SMALL_CNN_ARENA_SIZE {plan.arena_size}" in cm.files["model.h"]


def test_sram_budget_refuses_a_model_that_does_not_fit():
    from examples.models import small_cnn
    from kiln.targets.cortex_m import SramBudgetError

    # 64K: the first layers run patch by patch (tests/test_patch_execution.py); 12K: nothing fits
    with pytest.raises(SramBudgetError, match=r"needs an arena of \d+ bytes .* budget of 12288 bytes"):
        kiln.compile(small_cnn(), target="cortex-m4:sram=12K")
    assert kiln.compile(small_cnn(), target="cortex-m7:sram=1M").arena_size <= 1 << 20


def test_bad_target_options_and_float16_are_refused():
    with pytest.raises(TargetError, match="cannot read the size"):
        kiln.compile(_tiny_qdq(), target="cortex-m4:sram=lots")
    with pytest.raises(TargetError, match="does not know the option"):
        kiln.compile(_tiny_qdq(), target="cortex-m4:+mve")
    x16 = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float16, [4])], [("y", np.float16, [4])])
    with pytest.raises(KilnError, match="float16 has no C99 spelling"):
        kiln.compile(x16, target="cortex-m4")
    assert issubclass(VerificationError, KilnError)


def test_cli_compile_writes_the_project_and_checks_the_budget(tmp_path):
    from click.testing import CliRunner

    from examples.models import small_cnn
    from kiln.cli import cli

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "m.onnx"), "--target", "cortex-m4",
                                   "-o", str(tmp_path / "out"), "--sram-budget", "256K"])
    assert res.exit_code == 0, res.output
    for name in ("model.h", "model.c", "weights.c", "Makefile", "README.md", "link.ld", "startup.c", "main.c"):
        assert (tmp_path / "out" / name).exists(), name
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "m.onnx"), "--target", "cortex-m4",
                                   "-o", str(tmp_path / "o2"), "--sram-budget", "12K"])
    assert res.exit_code == 2 and "SRAM budget of 12288 bytes" in res.output
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "m.onnx"), "--target", "host",
                                   "-o", str(tmp_path / "o3"), "--sram-budget", "16K"])
    assert res.exit_code == 2 and "microcontroller targets" in res.output


# -- built and run under QEMU ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def arm():
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")


def _float_ops(directory, helium: bool = False) -> list[str]:
    """Floating-point instructions and soft-float calls in the model's object code. Moves of
    single registers count too, except on Helium, where S registers are lanes of the Q
    registers: gcc moves int32 lanes with ``vldr s24`` there."""
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", str(directory / "model.o")],
                         capture_output=True, text=True, check=True).stdout
    moves = [] if helium else re.findall(r"\tv(?:mov|ldr|str)\s+s\d", dis)
    return re.findall(r"\tv\w*\.f(?:16|32|64)\b", dis) + moves + re.findall(r"<(__aeabi_[fd]\w*)>", dis)


def test_small_cnn_float_on_m4_matches_onnxruntime(arm):
    from examples.models import small_cnn

    m = small_cnn()
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    cm = kiln.compile(m, target="cortex-m4")
    runner = cm.build()
    got = runner({"input": x})["logits"]
    np.testing.assert_allclose(got, ort_run(m, {"input": x})["logits"], rtol=1e-4, atol=1e-4)
    sizes = runner.sizes()
    print(f"small_cnn float cortex-m4: {runner.instructions[0]} instructions, arena {cm.arena_size} "
          f"(lower bound {cm.result.plan.lower_bound}), model code {sizes['model_code']} B")
    assert runner.instructions[0] > 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_keyword_classifier_on_m4_matches_onnxruntime(arm, cell):
    """A stacked GRU/LSTM reads its [seq, 1, features] input as [seq, features]: a view of
    the graph input, which the MCU model once looked up by the view's name (KeyError). Its
    per-step weight slices must be one copy: flash holds them."""
    from examples.models import recurrent_classifier

    m = recurrent_classifier(cell, layers=2, seq=10, features=12, hidden=16)
    x = np.random.default_rng(1).standard_normal((10, 1, 12)).astype(np.float32)
    cm = kiln.compile(m, target="cortex-m4")
    params = sum(int(np.prod(t.dims)) * 4 for t in m.graph.initializer)
    assert cm.result.plan.weights and len(cm.result.plan.weights) < 2 * params
    got = cm.build()({"features": x})["logits"]
    np.testing.assert_allclose(got, ort_run(m, {"features": x})["logits"], rtol=1e-4, atol=1e-5)


def test_tiny_int8_on_m4_has_no_floating_point(arm):
    cm = kiln.compile(_tiny_qdq(), target="cortex-m4")
    runner = cm.build()
    assert _float_ops(runner.directory) == []
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(runner.directory / "model.o")],
                         capture_output=True, text=True, check=True).stdout
    assert "smlad" in dis and "sxtb16" in dis


def test_instruction_counts_are_deterministic(arm):
    cm = kiln.compile(_tiny_qdq(), target="cortex-m4")
    runner = cm.build()
    x = {"x": np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4) * 9}
    runner.run_batch([x, x])
    first = list(runner.last_ticks)
    runner.run_batch([x, x])
    assert first == runner.last_ticks and first[0] > 0
    # the two records of a batch run the same instructions, but SysTick (25 MHz) counts
    # icount's 32 ns per instruction in whole 40 ns ticks: the count depends on the phase
    # at which a record starts, by one tick at most
    assert abs(first[0] - first[1]) <= 1


def test_wrong_inputs_are_refused_before_qemu(arm):
    from kiln.errors import InputError

    cm = kiln.compile(_tiny_qdq(), target="cortex-m4")
    with pytest.raises(InputError, match="dtype"):
        cm.run({"x": np.zeros((1, 1, 4, 4), np.float32)})
    with pytest.raises(InputError, match="missing"):
        cm.run({})


# -- the digits CNN, int8, on all three cores ---------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_q():
    require_module("torch")
    datasets = require_module("sklearn.datasets")
    from tests.test_quantize_digits import _onnx, _train

    d = datasets.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:1400], perm[1400:]
    q = kiln.quantize(_onnx(_train(x[train], y[train])), {"image": x[train][:256]}, method="minmax")
    return q, x[test], y[test]


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_digits_int8_matches_host_exactly_and_keeps_accuracy(arm, digits_q, target):
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    q, x, y = digits_q
    cm = kiln.compile(q, target=target)
    p = cm.target_impl.io_quant["image"]
    xq = np.clip(np.round(x / p.scale) + p.zero_point, 0, 255).astype(np.uint8)
    feeds = [{"image": xq[i:i + 1]} for i in range(len(xq))]
    runner = cm.build()
    outs = runner.run_batch(feeds)
    host = kiln.compile(integer_io(from_onnx(q))[0], target="host")
    mismatched = sum(not np.array_equal(o["logits"], host.run(f)["logits"]) for o, f in zip(outs, feeds))
    accuracy = float(np.mean([int(np.argmax(o["logits"])) == t for o, t in zip(outs, y)]))
    sizes = runner.sizes()
    print(f"digits int8 {target}: accuracy {accuracy:.4f} on {len(y)} images; "
          f"{int(np.median(runner.instructions))} instructions per inference (median); arena {cm.arena_size} "
          f"(lower bound {cm.result.plan.lower_bound}); model code {sizes['model_code']} B, weights {sizes['weights']} B")
    assert mismatched == 0
    assert accuracy > 0.95
    assert _float_ops(runner.directory, helium=target == "cortex-m55") == []
    if target == "cortex-m55":
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", str(runner.directory / "model.o")],
                             capture_output=True, text=True, check=True).stdout
        assert "vmlava" in dis   # Helium multiply-accumulate across lanes


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_ds_cnn_int8_matches_host_exactly(arm, target):
    """Keyword spotting DS-CNN (49x10 input), int8 by kiln.quantize, global average pool
    included (qglobal_avg_pool): no floating-point instruction in the model's object code."""
    from examples.mcu_models import ds_cnn
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    rng = np.random.default_rng(1)
    q = kiln.quantize(ds_cnn(), {"input": rng.standard_normal((32, 1, 49, 10)).astype(np.float32)}, method="minmax")
    cm = kiln.compile(q, target=target)
    assert {"qconv", "qglobal_avg_pool", "qmatmul"} <= {n.op for n in cm.graph.nodes}
    p = cm.target_impl.io_quant["input"]
    xs = rng.standard_normal((2, 1, 1, 49, 10)).astype(np.float32)
    feeds = [{"input": np.clip(np.round(x / p.scale) + p.zero_point, 0, 255).astype(np.uint8)} for x in xs]
    runner = cm.build()
    outs = runner.run_batch(feeds)
    host = kiln.compile(integer_io(from_onnx(q))[0], target="host")
    assert all(np.array_equal(o["logits"], host.run(f)["logits"]) for o, f in zip(outs, feeds))
    sizes = runner.sizes()
    print(f"ds_cnn int8 {target}: {runner.instructions[0]} instructions per inference; arena {cm.arena_size} "
          f"(lower bound {cm.result.plan.lower_bound}); model code {sizes['model_code']} B, weights {sizes['weights']} B")
    assert cm.arena_size <= 1.05 * cm.result.plan.lower_bound
    assert sizes["model_code"] < 8 * 1024
    assert _float_ops(runner.directory, helium=target == "cortex-m55") == []
    assert "math.h" not in cm.files["model.c"]


# -- integer pooling and softmax on the microcontroller ----------------------------------------------------

def _pool_softmax_qdq(act=np.int8) -> onnx.ModelProto:
    """Q -> DQ -> AveragePool 3x3 (padding not counted: a count-indexed multiplier table)
    -> Q -> DQ -> Softmax over channels -> Q -> DQ."""
    zx, zy = (np.array(-3, act), np.array(-128, act)) if act == np.int8 else (np.array(120, act), np.array(0, act))
    inits = [nh.from_array(np.array(0.05, np.float32), "sx"), nh.from_array(zx, "zx"),
             nh.from_array(np.array(0.03, np.float32), "sp"), nh.from_array(zx, "zp"),
             nh.from_array(np.array(1 / 256, np.float32), "sy"), nh.from_array(zy, "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["p", "sp", "zp"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "sp", "zp"], ["pd"]),
             helper.make_node("Softmax", ["pd"], ["s"], axis=1),
             helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "pool_softmax", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 5, 6, 6])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 5, 6, 6])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
@pytest.mark.parametrize("k,n,rows", [(16, 8, 3), (20, 4, 3), (37, 12, 3), (24, 6, 3), (37, 6, 4), (64, 4, 2),
                                      (37, 10, 1), (37, 7, 4)])
def test_dot_product_tiles_match_host_exactly(arm, target, k, n, rows):
    """The 1x4 helper (SMLAD on M4, VMLADAVA on M55), the M4's 2x2 (even rows), 1x2 (10
    columns on one row) and their tails: k not a multiple of the 4 or 8 bytes a step takes,
    n a multiple of 4 or not (6: tiles of three single dot products on one row, of two
    columns on two)."""
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    model = _qmatmul_model(k, n, rows)
    cm = kiln.compile(model, target=target)
    rng = np.random.default_rng(k + n)
    xs = [rng.integers(0, 256, (rows, k)).astype(np.uint8) for _ in range(2)]
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    for x, o in zip(xs, cm.build().run_batch([{"x": x} for x in xs])):
        assert np.array_equal(o["y"], host.run({"x": x})["y"])


@pytest.mark.parametrize("act", [np.int8, np.uint8], ids=["s8", "u8"])
def test_integer_pool_and_softmax_on_m4_match_host_and_ort(arm, act):
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    model = _pool_softmax_qdq(act)
    cm = kiln.compile(model, target="cortex-m4")
    assert {"qavg_pool", "qsoftmax"} <= {n.op for n in cm.graph.nodes}
    rng = np.random.default_rng(3)
    info = np.iinfo(act)
    xs = [rng.integers(info.min, info.max + 1, (1, 5, 6, 6)).astype(act) for _ in range(3)]
    runner = cm.build()
    outs = runner.run_batch([{"x": x} for x in xs])
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    p = cm.target_impl.io_quant["x"]
    for x, o in zip(xs, outs):
        assert np.array_equal(o["y"], host.run({"x": x})["y"])
        want = ort_run(model, {"x": ((x.astype(np.float32) - p.zero_point) * p.scale)})["y"]
        got = (o["y"].astype(np.float32) - cm.target_impl.io_quant["y"].zero_point) / 256
        # each op is within one step of ORT (tests/test_quantize_pool_softmax.py); a pool
        # output one step (0.03) off moves a softmax output by up to 0.03/4 = 2/256
        assert np.max(np.abs(got - want)) <= 2 / 256 + 1e-6
    assert _float_ops(runner.directory) == []


# -- MobileNetV1-0.25 visual wake words ------------------------------------------------------------------

@pytest.fixture(scope="module")
def vww_q():
    from examples.mcu_models import mobilenet_v1_vww

    rng = np.random.default_rng(1)
    return kiln.quantize(mobilenet_v1_vww(), {"input": rng.random((8, 3, 96, 96)).astype(np.float32)},
                         method="minmax")


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_vww_mobilenet_int8_matches_host_exactly(arm, vww_q, target):
    """MobileNetV1-0.25, 96x96x3, two classes, int8 end to end (28 qconv, integer global
    average pool and softmax). One inference per core: about 49M instructions, a fraction
    of a second under QEMU."""
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    cm = kiln.compile(vww_q, target=target)
    ops = [n.op for n in cm.graph.nodes]
    assert ops.count("qconv") == 28 and {"qglobal_avg_pool", "qsoftmax"} <= set(ops)
    p = cm.target_impl.io_quant["input"]
    x = np.random.default_rng(2).random((1, 3, 96, 96)).astype(np.float32)
    feeds = {"input": np.clip(np.round(x / p.scale) + p.zero_point, 0, 255).astype(np.uint8)}
    runner = cm.build()
    got = runner(feeds)["probs"]
    host = kiln.compile(integer_io(from_onnx(vww_q))[0], target="host")
    assert np.array_equal(got, host.run(feeds)["probs"])
    assert int(got.astype(np.int32).sum()) in range(254, 258)   # probabilities in steps of 1/256
    sizes = runner.sizes()
    print(f"vww int8 {target}: {runner.instructions[0]} instructions per inference; arena {cm.arena_size} "
          f"(lower bound {cm.result.plan.lower_bound}); model code {sizes['model_code']} B, weights {sizes['weights']} B")
    assert cm.arena_size <= 1.05 * cm.result.plan.lower_bound
    assert _float_ops(runner.directory, helium=target == "cortex-m55") == []


def test_mcu_bench_measures_ds_cnn_on_m4(arm, capsys):
    """benchmarks/mcu_bench.py end to end on one model and core (the full table is
    docs/benchmarks/mcu.md): exact against the host, and the issue's size/arena goals."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mcu_bench.py"
    spec = importlib.util.spec_from_file_location("mcu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--only", "ds_cnn", "--targets", "cortex-m4"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| DS-CNN")).split("|")
    assert "DS-CNN" in row[1] and row[2].strip() == "cortex-m4" and "host int8 exact" in row[13]
    assert int(row[4].replace(",", "")) == 2_656_768                       # MACs
    assert float(row[8]) <= 1.05 and int(row[9].strip(" B").replace(",", "")) < 8 * 1024
    with pytest.raises(SystemExit):
        bench.main(["--only", "resnet"])
