"""Patch-based execution of the first layers (kiln/passes/patch_execution.py, patch_search.py).

- the rewrite itself (no compiler): halos, border-only pads, insert_slice boxes, the
  stage output keeping its name; the numpy interpreter gives the unpatched result;
- the memory planner: every patch lands in place in one stage-output buffer and the
  arena falls below the layer-by-layer lower bound;
- the choice: ``patch=RxC`` forces a grid, ``sram=`` patches only what does not fit and
  refuses with every grid tried; ``kiln inspect``/``compile`` report both arenas;
- real runs: host (float within 1e-5, int8 bit-exact) and emulated Cortex-M4.

The models are MobileNetV1-style (96x96x3, width 0.25) built here with onnx.helper.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import KilnError, VerificationError
from kiln.frontend.onnx import from_onnx
from kiln.ir.interp import run_graph
from kiln.passes.patch_execution import PatchError, Window, parse_grid, patch_graph, stage_chain, stage_ends
from tests.conftest import require_toolchain

BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256))   # (stride, channels at width 1.0): the first four blocks
VWW_BLOCKS = BLOCKS + ((1, 256), (2, 512)) + ((1, 512),) * 5 + ((2, 1024), (1, 1024))


def mobilenet_v1(image=96, alpha=0.25, blocks=BLOCKS, classes=4, seed=0) -> onnx.ModelProto:
    """Stem conv 3x3/2, then depthwise-separable blocks (dw 3x3 + pw 1x1, ReLU), global
    average pool, fully connected: the visual-wake-words MobileNetV1 shape, shortened."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(nh.from_array(np.asarray(arr, np.float32), name))
        return name

    def conv(x, cin, cout, k, s, group, i):
        w = const(f"w{i}", rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k)))
        b = const(f"b{i}", rng.standard_normal(cout) * 0.05)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"c{i}"], kernel_shape=[k, k], strides=[s, s],
                                      pads=[k // 2] * 4, group=group))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        return f"r{i}"

    c = max(8, int(32 * alpha))
    x, i = conv("input", 3, c, 3, 2, 1, 0), 1
    for s, co in blocks:
        co = max(8, int(co * alpha))
        x = conv(x, c, c, 3, s, c, i)
        x = conv(x, c, co, 1, 1, 1, i + 1)
        c, i = co, i + 2
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", const("fw", rng.standard_normal((classes, c)) / np.sqrt(c)),
                                           const("fb", np.zeros(classes))], ["logits"], transB=1))
    g = helper.make_graph(nodes, "mbv1", [helper.make_tensor_value_info("input", TP.FLOAT, [1, 3, image, image])],
                          [helper.make_tensor_value_info("logits", TP.FLOAT, [1, classes])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.fixture(scope="module")
def mbv1_q():
    """The int8 model (kiln.quantize, min-max calibration) and its graph as the Cortex-M
    pipeline hands it to patching: integer I/O, qconv kernels."""
    from kiln.passes.manager import run_pipeline
    from kiln.targets import get_target

    rng = np.random.default_rng(0)
    q = kiln.quantize(mobilenet_v1(), {"input": rng.random((4, 3, 96, 96)).astype(np.float32)}, method="minmax")
    target, handed = get_target("cortex-m4"), []
    target.partition_graph = lambda g: handed.append(g) or g   # (and no channels-last layout after it)
    run_pipeline(from_onnx(q), target)
    return q, handed[0]


def _uint8_input(seed=1):
    return {"input": np.random.default_rng(seed).integers(0, 256, (1, 3, 96, 96)).astype(np.uint8)}


# -- the rewrite, no compiler ---------------------------------------------------------------------------

def test_halo_of_a_window_is_clipped_to_the_image_and_padded_there_only():
    w = Window(k=3, s=2, d=1, pb=1, pe=1)           # a 3x3 stride-2 conv, pads 1, over 96 rows
    assert w.input_range(0, 24, 96) == (0, 48, 1, 0)    # top patch: pad at the top border only
    assert w.input_range(24, 48, 96) == (47, 96, 0, 0)  # bottom patch: one halo row above, none below
    assert Window(3, 1, 1, 1, 1).input_range(10, 20, 48) == (9, 21, 0, 0)
    assert Window(3, 1, 2, 2, 2).input_range(0, 4, 8) == (0, 6, 2, 0)  # dilation 2 widens the halo


def _float_stem():
    """conv 3x3/2 (pads 1) -> relu -> depthwise 3x3 (pads 1) -> relu -> pw 1x1 -> output of a gemm."""
    return mobilenet_v1(image=16, blocks=((1, 64),), classes=3)


def test_patch_graph_rewrites_the_stage_into_slices_border_pads_and_inserts():
    g = from_onnx(_float_stem())
    chain = stage_chain(g)
    assert [n.op for n in chain] == ["conv", "relu", "conv", "relu", "conv", "relu"]
    assert stage_ends(chain) == [2, 4, 6]
    pg, report = patch_graph(g, 4, (2, 2))   # stage: stem + depthwise, output 8x8 -> four 4x4 patches
    ops_ = [n.op for n in pg.nodes]
    assert ops_.count("slice") == 4 and ops_.count("insert_slice") == 4 and ops_.count("conv") == 4 * 2 + 1
    slices = [n for n in pg.nodes if n.op == "slice"]
    # depthwise rows [0,4) read stem rows [0,5); stem rows [0,5) read input rows [0,10) with one pad row on top
    assert [(n.attrs["starts"], n.attrs["ends"]) for n in slices] == [
        ((0, 0, 0, 0), (1, 3, 10, 10)), ((0, 0, 0, 5), (1, 3, 10, 16)),
        ((0, 0, 5, 0), (1, 3, 16, 10)), ((0, 0, 5, 5), (1, 3, 16, 16))]
    convs = [n for n in pg.nodes if n.op == "conv"][:8]
    assert [n.attrs["pads"] for n in convs[:2]] == [(1, 1, 0, 0), (1, 1, 0, 0)]   # patch (0,0): top/left only
    assert [n.attrs["pads"] for n in convs[6:8]] == [(0, 0, 0, 0), (0, 0, 1, 1)]  # patch (1,1): stem none
    assert [tuple(n.outputs[0].shape) for n in convs[6:8]] == [(1, 8, 5, 5), (1, 8, 4, 4)]
    inserts = [n for n in pg.nodes if n.op == "insert_slice"]
    assert [n.attrs["starts"] for n in inserts] == [(0, 0, 0, 0), (0, 0, 0, 4), (0, 0, 4, 0), (0, 0, 4, 4)]
    assert len(inserts[0].inputs) == 1 and all(n.inputs[1] == p.outputs[0].name
                                               for p, n in zip(inserts, inserts[1:]))
    assert inserts[-1].outputs[0] == chain[3].outputs[0]   # the stage output keeps its name and type
    assert report.grid == (2, 2) and report.stage == [n.outputs[0].name for n in chain[:4]]
    # stem: 8x8x8 outputs x 27 taps; depthwise: 8x8x8 x 9; per patch the stem makes 5x5 instead of 4x4
    assert report.macs == 8 * 64 * 27 + 8 * 64 * 9
    assert report.patched_macs == 4 * (8 * 25 * 27 + 8 * 16 * 9)
    assert report.extra_macs == pytest.approx(report.patched_macs / report.macs - 1)


@pytest.mark.parametrize("stage_len, grid", [(2, (2, 2)), (4, (3, 3)), (6, (4, 2)), (6, (8, 8))])
def test_patched_graph_computes_the_same_values_in_the_interpreter(stage_len, grid):
    g = from_onnx(_float_stem())
    x = {"input": np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    want = run_graph(g, x)["logits"]
    pg, _ = patch_graph(g, stage_len, grid)
    np.testing.assert_allclose(run_graph(pg, x)["logits"], want, rtol=1e-5, atol=1e-5)


def test_patch_errors_say_what_was_expected():
    g = from_onnx(_float_stem())
    with pytest.raises(PatchError, match="finer than the stage output 8x8"):
        patch_graph(g, 2, (9, 9))
    with pytest.raises(PatchError, match="patchable chain of 6 ops"):
        patch_graph(g, 7, (2, 2))
    with pytest.raises(PatchError, match="expected ROWSxCOLS"):
        parse_grid("four")
    assert parse_grid("3X2") == (3, 2)
    mlp = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "mlp",
                            [helper.make_tensor_value_info("x", TP.FLOAT, [2, 8])],
                            [helper.make_tensor_value_info("y", TP.FLOAT, [2, 8])])
    with pytest.raises(PatchError, match="no stage to patch"):
        patch_graph(from_onnx(helper.make_model(mlp, opset_imports=[helper.make_opsetid("", 13)])), 1, (2, 2))
    with pytest.raises(KilnError, match="no stage to patch"):
        kiln.compile(helper.make_model(mlp, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
                     target="cortex-m4:patch=2x2")
    with pytest.raises(KilnError, match="cannot read the patch grid"):
        kiln.compile(_float_stem(), target="cortex-m4:patch=2by2")


def test_insert_slice_needs_a_destination_it_may_overwrite():
    from kiln.ir.graph import Node, TensorType, Value
    from kiln.ir.dtype import DType
    from kiln.passes.memory_plan import plan_memory
    from kiln.passes.patch_search import footprints

    g = from_onnx(_float_stem())
    pg, _ = patch_graph(g, 2, (2, 1))
    ins = [n for n in pg.nodes if n.op == "insert_slice"]
    first = ins[0].outputs[0]
    # a second reader of the first assembly: overwriting it in place would change what it reads
    spy = Node("relu", (first.name,), (Value("spy", TensorType(first.shape, DType.float32)),))
    bad = pg.replace(nodes=pg.nodes + (spy,), outputs=pg.outputs + (spy.outputs[0],)).verify()
    with pytest.raises(VerificationError, match="writes in place"):
        plan_memory(bad, footprints(bad))
    with pytest.raises(KilnError, match="does not fit inside"):
        kiln.ir.ops.infer_types("insert_slice", [TensorType((1, 8, 4, 4), DType.float32)],
                                {"starts": (0, 0, 6, 0), "shape": (1, 8, 8, 8)})


def test_planner_puts_every_patch_in_place_below_the_layer_by_layer_lower_bound(mbv1_q):
    from kiln.passes.memory_plan import plan_memory
    from kiln.passes.patch_search import footprints

    _, g = mbv1_q
    base = plan_memory(g, footprints(g), align=16)
    pg, report = patch_graph(g, 4, (2, 2))
    plan = plan_memory(pg, footprints(pg), align=16)
    inserts = [n.outputs[0].name for n in pg.nodes if n.op == "insert_slice"]
    assert len({plan.storage[n] for n in inserts}) == 1       # one buffer, filled patch by patch
    assert plan.storage[inserts[-1]].kind == "arena"
    assert plan.arena_size < base.lower_bound
    print(f"mbv1 int8 96x96: layer by layer arena {base.arena_size} (lower bound {base.lower_bound}); "
          f"2x2 over 4 ops: arena {plan.arena_size}, +{100 * report.extra_macs:.1f}% MACs in the stage")


def test_vww_mobilenet_v1_arena_falls_below_its_layer_by_layer_lower_bound():
    """The full MobileNetV1-0.25 visual-wake-words shape (13 blocks, 96x96x3, int8): the
    numbers in docs/microcontrollers.md (run with -s)."""
    rng = np.random.default_rng(0)
    q = kiln.quantize(mobilenet_v1(blocks=VWW_BLOCKS, classes=2),
                      {"input": rng.random((4, 3, 96, 96)).astype(np.float32)}, method="minmax")
    plain = kiln.compile(q, target="cortex-m4").result.plan
    for option in ("sram=40K", "patch=2x2", "patch=3x3"):
        plan = kiln.compile(q, target=f"cortex-m4:{option}").result.plan
        print(f"VWW MobileNetV1-0.25 int8 cortex-m4:{option}: {plan.summary()}")
        assert plan.arena_size < plain.lower_bound
        assert plan.patching.arena_without == plain.arena_size


# -- choosing under a budget ------------------------------------------------------------------------------

def test_budget_patches_only_what_does_not_fit_and_reports_both_arenas(mbv1_q):
    q, _ = mbv1_q
    plain = kiln.compile(q, target="cortex-m4")
    assert plain.result.plan.patching is None
    assert kiln.compile(q, target="cortex-m4:sram=1M").result.plan.patching is None
    cm = kiln.compile(q, target="cortex-m4:sram=40K")
    plan = cm.result.plan
    rep = plan.patching
    assert rep.grid == (2, 2) and len(rep.stage) == 4           # the coarsest grid, the shortest stage
    assert plan.arena_size <= 40 << 10 < plain.arena_size
    assert plan.arena_size < plain.result.plan.lower_bound     # below the layer-by-layer lower bound
    assert (rep.arena_without, rep.lower_bound_without) == (plain.arena_size, plain.result.plan.lower_bound)
    assert 0 < rep.extra_macs < 0.2
    assert "insert_slice" in {n.op for n in cm.graph.nodes}
    assert f"#define KILN_MBV1_ARENA_SIZE {plan.arena_size}" in cm.files["model.h"]
    text = plan.summary()
    assert "2x2 patches over the first 4 ops" in text and f"arena {plain.arena_size} bytes" in text


def test_forced_grid_and_refusal_list_what_was_tried(mbv1_q):
    from kiln.targets.cortex_m import SramBudgetError

    q, _ = mbv1_q
    cm = kiln.compile(q, target="cortex-m4:patch=4x4")
    assert cm.result.plan.patching.grid == (4, 4)
    assert cm.arena_size < cm.result.plan.patching.lower_bound_without
    with pytest.raises(SramBudgetError, match=r"budget of 12288 bytes, and no patch-based execution fits.*"
                                              r"2x2 patches: \d+ bytes at best .*8x8 patches"):
        kiln.compile(q, target="cortex-m4:sram=12K")
    with pytest.raises(PatchError, match="finer than every stage output"):
        kiln.compile(q, target="cortex-m4:patch=90x90")


def test_cli_patch_flag_and_inspect_report(mbv1_q, tmp_path):
    from click.testing import CliRunner

    from kiln.cli import cli

    q, _ = mbv1_q
    onnx.save(q, tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.onnx"), "--target", "cortex-m4",
                                   "--sram-budget", "40K"])
    assert res.exit_code == 0, res.output
    assert "patch-based execution: 2x2 patches" in res.output and "layer by layer: arena" in res.output
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "m.onnx"), "--target", "cortex-m4", "--patch", "3x3",
                                   "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "insert_slice" in (tmp_path / "out" / "model.c").read_text()
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "m.onnx"), "--target", "host", "--patch", "3x3",
                                   "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--patch applies to microcontroller targets" in res.output
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.onnx"), "--target", "cortex-m4", "--patch", "2x2",
                                   "--print-ir-after", "partition"])
    assert res.exit_code == 0 and "insert_slice(" in res.output


# -- real runs ------------------------------------------------------------------------------------------------

def test_float_model_patched_on_host_matches_layer_by_layer():
    g = from_onnx(mobilenet_v1())
    x = {"input": np.random.default_rng(3).standard_normal((1, 3, 96, 96)).astype(np.float32)}
    want = kiln.compile(g, target="host").run(x)["logits"]
    for stage_len, grid in ((4, (2, 2)), (8, (3, 3))):
        pg, _ = patch_graph(g, stage_len, grid)
        got = kiln.compile(pg, target="host").run(x)["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_int8_model_patched_on_host_is_bit_exact(mbv1_q):
    _, g = mbv1_q
    # logits alone could hide a wrong patch behind the pooling: compare the 12x12x64 activation
    # computed from the stage output as well (a graph output itself cannot be patched)
    probe = g.replace(outputs=g.outputs + (stage_chain(g)[7].outputs[0],))
    want = kiln.compile(probe, target="host").run(_uint8_input())
    for grid in ((2, 2), (3, 3), (4, 4)):
        pg, _ = patch_graph(probe, 7, grid)
        got = kiln.compile(pg, target="host").run(_uint8_input())
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k} with {grid}")


@pytest.mark.parametrize("option", ["sram=40K", "patch=4x4"])
def test_int8_patched_on_cortex_m4_matches_host_exactly(mbv1_q, option):
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    _, g = mbv1_q
    cm = kiln.compile(g, target=f"cortex-m4:{option}")
    plain = kiln.compile(g, target="cortex-m4")
    feeds = [_uint8_input(s) for s in (1, 2)]
    host = kiln.compile(g, target="host")
    runner = cm.build()
    outs = runner.run_batch(feeds)
    assert all(np.array_equal(o["logits"], host.run(f)["logits"]) for o, f in zip(outs, feeds))
    patched_instr = runner.instructions[0]
    plain_runner = plain.build()
    plain_runner.run_batch(feeds[:1])
    rep = cm.result.plan.patching
    print(f"mbv1 int8 cortex-m4 {option}: arena {cm.arena_size} vs layer by layer {plain.arena_size} "
          f"(lower bound {plain.result.plan.lower_bound}); {rep.grid[0]}x{rep.grid[1]} over {len(rep.stage)} ops, "
          f"+{100 * rep.extra_macs:.1f}% stage MACs; instructions {patched_instr} vs {plain_runner.instructions[0]}; "
          f"model code {runner.sizes()['model_code']} B vs {plain_runner.sizes()['model_code']} B")
    assert cm.arena_size < plain.result.plan.lower_bound


def test_float_model_patched_on_cortex_m4_matches_host():
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    m = mobilenet_v1(image=32, blocks=((1, 64), (2, 128)))
    x = {"input": np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    cm = kiln.compile(m, target="cortex-m4:patch=2x2")
    assert cm.result.plan.patching is not None
    got = cm.build()(x)["logits"]
    np.testing.assert_allclose(got, kiln.compile(m, target="host").run(x)["logits"], rtol=1e-5, atol=1e-5)


def test_snapshot_patched_int8_model_c():
    """The generated model.c of a patched int8 model: per-patch slice and qconv kernels
    (pads only at the border) and the insert_slice kernels writing their box in place."""
    from tests.test_codegen import check_snapshot
    from tests.test_cortex_m import _tiny_qdq

    cm = kiln.compile(_tiny_qdq(), target="cortex-m4:patch=2x2")
    c = cm.files["model.c"]
    assert c.count("(insert_slice)") == 4 and "float" not in c
    check_snapshot("cortex_m4_tiny_q_patch2x2_model.c", c)
