"""Cortex-M55 (Helium): four-lane helpers in kiln_dsp.h -- the requantizing epilogue of a
register tile (``kiln_requant4_*``: VMULH, VRSHL, VMAX/VMIN, a narrowing store), the widening
sum of a pooling kernel (``kiln_lane_add_*``) -- and uint8 activations read as int8 by the
dot products (``stage_activations_helium``: ``act_offset`` -128 applied where each value is
read, ``kiln_dot*_x8s8``: one VEOR per sixteen bytes, no staging copy).

- The renderer calls them on Cortex-M55 only, and only for an epilogue that is exactly
  ``qlinear.requant_high_word`` of its leaves (pure IR tests, no compiler).
- The staging pass moves the offset into the bias of dot products only (Before/Expected).
- The helpers compute the integers of the rounding formula itself, ``floor((acc * mult +
  2^(shift-1)) / 2^shift) + zp`` clamped, on edge and random operands: built with
  arm-none-eabi-gcc for the M55 (Helium) and the M4 (the C fallback) and run under QEMU.
Whole models through them are checked against the host in tests/test_mcu_int8.py and
tests/test_cortex_m.py."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

import kiln
from kiln.codegen.c99 import _requant_leaves
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, Var, simplify
from kiln.ir.interp import run_graph
from kiln.ir.ops.qlinear import requant
from kiln.passes.signed_activations import stage_activations_helium, stage_activations_native
from tests.conftest import require_toolchain
from tests.test_mcu_int8 import _integer_graph, _kws_like

I32, I64 = DType.int32, DType.int64
RNG = np.random.default_rng(5)


def _epilogue(min_shift: int, zp: int = -3, lo: int = -128, hi: int = 127, out=DType.int8):
    c = Var("c", I64)
    acc, bias = Load("acc", (Const(0, I64), c), I32), Const(0, I32)
    attrs = {"y_zp": zp, "lo": lo, "hi": hi, "min_shift": min_shift}
    # simplified as the loop passes leave it (the zero bias gone: accumulate_from_bias)
    return simplify(requant(acc, bias, Load("mult", (c,), I32), Load("shift", (c,), I32), attrs, out)), acc


@pytest.mark.parametrize("zp,lo,hi,out", [(-3, -128, 127, DType.int8), (0, 0, 255, DType.uint8),
                                          (7, 7, 200, DType.uint8)])
def test_the_high_word_epilogue_is_recognized_with_its_constants(zp, lo, hi, out):
    value, acc = _epilogue(33, zp, lo, hi, out)
    (a, b), shift, *consts = _requant_leaves(value)
    assert acc in (a, b) and shift.buffer == "shift" and consts == [zp, lo, hi]


def test_other_epilogues_stay_scalar():
    # shifts below 33 (a multiplier of 1/4 or more) round in int64: no four-lane helper
    assert _requant_leaves(_epilogue(31)[0]) is None
    assert _requant_leaves(_epilogue(0)[0]) is None
    # the same shape around a truncating shift (no rounding term) is not the same integer
    c = Var("c", I64)
    acc, mult, shift = (Load(name, (c,), I32) for name in ("acc", "mult", "shift"))
    high = Cast(Bin("shr", Cast(acc, I64) * Cast(mult, I64), Const(32, I64), I64), I32)
    truncating = Bin("shr", high, shift - Const(32, I32), I32) + Const(-3, I32)
    changed = Cast(Bin("min", Bin("max", truncating, Const(-128, I32), I32), Const(127, I32), I32), DType.int8)
    assert _requant_leaves(changed) is None


def test_helium_calls_the_four_lane_helpers_and_the_m4_does_not():
    for act, kind in (("int8", "s8"), ("uint8", "u8")):
        m55 = kiln.compile(_kws_like(act), target="cortex-m55").files["model.c"]
        m4 = kiln.compile(_kws_like(act), target="cortex-m4").files["model.c"]
        # every conv/matmul epilogue (4 kernels) and the global average pool's channel sums
        assert m55.count(f"kiln_requant4_{kind}(") == 4 and f"kiln_lane_add_{kind}(" in m55
        assert "kiln_requant4" not in m4 and "kiln_lane_add" not in m4
        assert "kiln_requant4" not in kiln.compile(_kws_like(act), target="cortex-m55:nodsp").files["model.c"]


def _pool_kernel(target: str) -> str:
    source = kiln.compile(_kws_like("int8"), target=target).files["model.c"]
    kernel = source[source.index("(qglobal_avg_pool) */"):]
    return kernel[:kernel.index("/* kernel_")]


def test_integer_tile_columns_are_unrolled_only_on_cores_without_a_vector_unit():
    """The global pool's register tile of channel sums: on the M4 (no vector unit) its
    zeroing, summing and write-back loops over the tile's 8 columns are unrolled so gcc
    keeps the sums in registers; on the M55 (Helium) gcc vectorizes the loops themselves,
    with Kiln's lane helpers or without (``nodsp``)."""
    assert _pool_kernel("cortex-m4").count("#pragma GCC unroll 8") == 3
    for target in ("cortex-m55", "cortex-m55:nodsp"):
        assert "#pragma GCC unroll 16" not in _pool_kernel(target)


@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_short_window_rows_are_gathered_into_one_run_on_helium(act):
    """The 3x4 stem over one channel has window rows of 4 bytes: on the M55 each output
    pixel's window is copied into a local 3 x 4 tile (``dot_schedule.gather_window``) and
    one dot product of 12 runs over it, instead of three 4-byte ones; the M4 (a 4-byte step
    either way) keeps reading rows in place. Bit-identical to the host build under QEMU."""
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    model = _kws_like(act)
    cm = kiln.compile(model, target="cortex-m55")
    c = cm.files["model.c"]
    tile = re.search(r"int8_t (\w+__xu_tile)\[1\]\[3\]\[4\]", c)
    assert tile and re.search(rf"kiln_dot1x4_\w+\(&{tile.group(1)}\[0\]\[0\]\[0\], &in1\[[^;]*, 12, 12, ", c)
    assert "__xu_tile" not in kiln.compile(model, target="cortex-m4").files["model.c"]
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    info = np.iinfo(np.uint8 if act == "uint8" else np.int8)
    xs = [{"x": RNG.integers(info.min, info.max + 1, (1, 1, 8, 6)).astype(info.dtype)} for _ in range(3)]
    for x, out in zip(xs, cm.build().run_batch(xs)):
        assert np.array_equal(out["y"], host.run(x)["y"])


def _rgb_stem(channels: int, inputs: int = 3):
    """conv 3x3 stride 2 over ``inputs`` channels (window rows of 3 x inputs bytes) -> ReLU."""
    from onnx import TensorProto as TP, helper, numpy_helper as nh

    w = (RNG.standard_normal((channels, inputs, 3, 3)) / 5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["a"], ["y"])]
    g = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TP.FLOAT, [1, inputs, 8, 8])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, channels, 4, 4])],
                          initializer=[nh.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((8, inputs, 8, 8)).astype(np.float32)}, method="minmax")


def test_a_window_is_gathered_only_where_the_steps_saved_outnumber_the_words_copied():
    """Rows of 9 bytes (3x3 over RGB): on Helium a run per row is 3 x (8 + 1) steps, one run
    of 27 is 16 + 8 + 3 x 1, one step saved per tile of four channels against nine words
    copied per pixel: 8 channels (VWW's stem) read rows in place, 64 gather. On the M4
    (word steps) 27 bytes take as many steps as three rows of 9: no gathering, 2x2 tiles.
    Rows of 3 (one input channel, shorter than a step: a dot tile only when gathered): both
    gather. Bit-identical to the host build under QEMU."""
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.dot_schedule import dot_steps
    from kiln.passes.integer_io import integer_io

    assert [dot_steps(n, (16, 8, 4)) for n in (4, 9, 12, 27, 40)] == [1, 2, 2, 5, 3]
    assert [dot_steps(n, (4,)) for n in (3, 9, 27, 40)] == [3, 3, 9, 10]
    assert "__xu_tile" not in kiln.compile(_rgb_stem(8), target="cortex-m55").files["model.c"]
    m4 = kiln.compile(_rgb_stem(64), target="cortex-m4").files["model.c"]
    assert "__xu_tile" not in m4 and "kiln_dot2x2_" in m4
    for target, inputs, channels, tile, run in (("cortex-m55", 3, 64, "[1][3][9]", 27),
                                                ("cortex-m55", 1, 8, "[1][3][3]", 9),
                                                ("cortex-m4", 1, 8, "[1][3][3]", 9)):
        model = _rgb_stem(channels, inputs)
        cm = kiln.compile(model, target=target)
        assert f"__xu_tile{tile}" in cm.files["model.c"] and f", {run}, {run}, &acc0" in cm.files["model.c"]
        host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
        xs = [{"x": RNG.integers(0, 256, (1, inputs, 8, 8)).astype(np.uint8)} for _ in range(2)]
        for x, out in zip(xs, cm.build().run_batch(xs)):
            assert np.array_equal(out["y"], host.run(x)["y"])


def test_helium_staging_reads_uint8_dot_products_as_int8_and_depthwise_as_stored():
    before = _integer_graph(_kws_like("uint8"))
    after = stage_activations_helium(before)
    old = [n for n in before.nodes if n.op in ("qconv", "qmatmul")]
    new = [n for n in after.nodes if n.op in ("qconv", "qmatmul")]
    assert [n.attrs.get("act_offset", 0) for n in old] == [0] * 4
    # conv 3x4, depthwise 3x3, conv 1x1, fully connected
    assert [(n.attrs.get("act_offset", 0), n.attrs.get("offset_at_read", False)) for n in new] == \
        [(-128, True), (0, False), (-128, True), (-128, True)]
    for o, cur in zip(old, new):
        w = before.constants[o.inputs[1]].astype(np.int64)
        moved = 128 * w.reshape(w.shape[0], -1).sum(axis=1) if cur.attrs.get("offset_at_read") else 0
        # sum x * w = sum (x - 128) * w + 128 * sum w
        assert np.array_equal(after.constants[cur.inputs[2]], before.constants[o.inputs[2]] + moved)
    x = {"x": RNG.integers(0, 256, (1, 1, 8, 6)).astype(np.uint8)}
    assert np.array_equal(run_graph(after, x)["y"], run_graph(before, x)["y"])
    # int8 activations already are int8: the same as native staging
    i8 = _integer_graph(_kws_like("int8"))
    assert [n.attrs for n in stage_activations_helium(i8).nodes] == [n.attrs for n in stage_activations_native(i8).nodes]


def _two_dense_convs():
    """conv 3x3 (4 -> 8, pad 1) -> ReLU -> conv 3x3 (8 -> 16, pad 1) -> ReLU, uint8: the
    second reads its padded input in place (kiln/passes/padded_storage.py)."""
    from onnx import TensorProto as TP, helper, numpy_helper as nh

    w0 = (RNG.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32)
    w1 = (RNG.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4), helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1"], ["b"], pads=[1] * 4), helper.make_node("Relu", ["b"], ["y"])]
    g = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [1, 16, 6, 6])],
                          initializer=[nh.from_array(w0, "w0"), nh.from_array(w1, "w1")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((8, 4, 6, 6)).astype(np.float32)}, method="minmax",
                         activations="uint8")


def test_uint8_dot_products_flip_in_registers_without_a_staging_copy():
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    from kiln.frontend.onnx import from_onnx
    from kiln.passes.integer_io import integer_io

    kws = kiln.compile(_kws_like("uint8"), target="cortex-m55")
    c = kws.files["model.c"]
    assert "kiln_dot1x4_x8s8(" in c and "kiln_dot1x4_u8s8(" not in c and "kiln_lane_mac4_u8s8(" in c
    assert kws.result.plan.arena_size == kiln.compile(_kws_like("int8"), target="cortex-m55").result.plan.arena_size
    model = _two_dense_convs()
    cm = kiln.compile(model, target="cortex-m55")
    temps = [name for k in cm.result.kernels for name, _ in k.temps]
    assert all(t.startswith("kernel_0.") for t in temps)   # only the NCHW image is staged
    # the first convolution stages its NCHW input and flips it in that copy; the second reads
    # its bordered input in place and flips it in registers
    assert cm.files["model.c"].count("kiln_dot1x4_s8s8(") == 1 and cm.files["model.c"].count("kiln_dot1x4_x8s8(") == 1
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    xs = [{"x": RNG.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)} for _ in range(3)]
    for x, out in zip(xs, cm.build().run_batch(xs)):
        assert np.array_equal(out["y"], host.run(x)["y"])


# -- the helpers themselves, under QEMU ----------------------------------------------------------------

N = 256  # lanes per case: 64 calls of each helper
RUNS, LDB = (63, 16, 12, 4, 3, 0), 64   # dot-product lengths: every step of kiln_dot*_x8s8
HARNESS = """\
#include <stdint.h>
#include "kiln_semihost.h"
#include "kiln_dsp.h"
#define DOTS 27
{arrays}
static int8_t out_s8[{n}];
static uint8_t out_u8[{n}];
static int32_t sums[{n}];
static int32_t dots[DOTS * {runs}];
static int32_t lanes[{n}];

int main(void) {{
  int32_t fout = kiln_sh_open("helpers.bin", 5);
  for (int32_t i = 0; i < {n}; i += 4) {{
    kiln_requant4_s8(&acc[i], &mult[i], &shift[i], zp_s8[i / 4], lo_s8[i / 4], hi_s8[i / 4], &out_s8[i]);
    kiln_requant4_u8(&acc[i], &mult[i], &shift[i], zp_u8[i / 4], lo_u8[i / 4], hi_u8[i / 4], &out_u8[i]);
  }}
  for (int32_t i = 0; i < {n}; ++i) sums[i] = acc[i] >> 8;
  kiln_lane_add_s8(x_s8, sums, {n});
  kiln_lane_add_u8(x_u8, sums, {n});
  for (int32_t r = 0; r < {runs}; ++r) {{  /* 16-, 8-, 4- and 1-byte steps; on the M4 SXTB16 ROR #8 */
    int32_t* d = &dots[DOTS * r];
    d[0] = kiln_dot_x8s8(x_u8, w_s8, run[r]);
    d[1] = kiln_dot_s8s8(x_s8, w_s8, run[r]);
    d[2] = kiln_dot_u8s8(x_u8, w_s8, run[r]);
    for (int32_t i = 3; i < DOTS; ++i) d[i] = r;
    kiln_dot1x4_x8s8(x_u8, w_s8, ldb, run[r], &d[3]);
    kiln_dot1x4_s8s8(x_s8, w_s8, ldb, run[r], &d[7]);
    kiln_dot1x4_u8s8(x_u8, w_s8, ldb, run[r], &d[11]);
    kiln_dot2x2_s8s8(x_s8, ldb, w_s8, ldb, run[r], &d[15]);  /* two rows ldb apart, two columns */
    kiln_dot2x2_u8s8(x_u8, ldb, w_s8, ldb, run[r], &d[19]);
    kiln_dot1x2_s8s8(x_s8, w_s8, ldb, run[r], &d[23]);       /* two columns */
    kiln_dot1x2_u8s8(x_u8, w_s8, ldb, run[r], &d[25]);
  }}
  for (int32_t i = 0; i < {n}; i += 4) {{  /* depthwise taps, lane by lane */
    kiln_lane_mac4_s8s8(&x_s8[i], &w_s8[i], &lanes[i]);
    kiln_lane_mac4_u8s8(&x_u8[i], &w_s8[i], &lanes[i]);
  }}
  kiln_sh_write(fout, out_s8, sizeof out_s8);
  kiln_sh_write(fout, out_u8, sizeof out_u8);
  kiln_sh_write(fout, sums, sizeof sums);
  kiln_sh_write(fout, dots, sizeof dots);
  kiln_sh_write(fout, lanes, sizeof lanes);
  kiln_sh_close(fout);
  return 0;
}}
"""


def _operands():
    acc = RNG.integers(-2 ** 31, 2 ** 31, N, dtype=np.int64)
    acc[:8] = [-2 ** 31, 2 ** 31 - 1, 0, -1, 1, -2 ** 30, 2 ** 30, 12345]
    mult = RNG.integers(2 ** 30, 2 ** 31, N, dtype=np.int64)
    mult[:4] = [2 ** 30, 2 ** 31 - 1, 2 ** 30, 2 ** 31 - 1]
    shift = RNG.integers(33, 63, N, dtype=np.int64)
    shift[:16] = [33, 34, 62, 61] * 4
    # small shifts make exact ties (x.5) common: half of all products at shift 33
    shift[16:80] = 33
    groups = N // 4
    zp_s8, zp_u8 = RNG.integers(-128, 128, groups), RNG.integers(0, 256, groups)
    lo_s8 = np.minimum(RNG.integers(-128, 128, groups), zp_s8)
    lo_u8 = np.minimum(RNG.integers(0, 256, groups), zp_u8)
    lo_s8[:groups // 2], lo_u8[:groups // 2] = -128, 0          # half of them the type's range
    hi_s8 = np.maximum(RNG.integers(-128, 128, groups), lo_s8)
    hi_u8 = np.maximum(RNG.integers(0, 256, groups), lo_u8)
    hi_s8[:groups // 2], hi_u8[:groups // 2] = 127, 255
    x_s8, x_u8 = RNG.integers(-128, 128, N), RNG.integers(0, 256, N)
    x_u8[:4], x_s8[:4] = [0, 255, 128, 127], [-128, 127, -128, -1]
    w_s8 = RNG.integers(-128, 128, 4 * LDB)
    w_s8[:4] = [-128, -128, 127, 127]
    return dict(acc=acc, mult=mult, shift=shift, zp_s8=zp_s8, lo_s8=lo_s8, hi_s8=hi_s8, zp_u8=zp_u8,
                lo_u8=lo_u8, hi_u8=hi_u8, x_s8=x_s8, x_u8=x_u8, w_s8=w_s8, run=np.array(RUNS))


def _reference(ops):
    """The rounding formula in Python integers (no high-word identity assumed)."""
    s8, u8 = [], []
    for i in range(N):
        v = int(ops["acc"][i]) * int(ops["mult"][i])
        s = int(ops["shift"][i])
        r = (v + (1 << (s - 1))) >> s
        g = i // 4
        s8.append(min(max(r + int(ops["zp_s8"][g]), int(ops["lo_s8"][g])), int(ops["hi_s8"][g])))
        u8.append(min(max(r + int(ops["zp_u8"][g]), int(ops["lo_u8"][g])), int(ops["hi_u8"][g])))
    sums = (ops["acc"] >> 8) + ops["x_s8"] + ops["x_u8"]
    w = ops["w_s8"].astype(np.int64)
    xs = [ops["x_u8"].astype(np.int64) - 128, ops["x_s8"].astype(np.int64), ops["x_u8"].astype(np.int64)]
    def row(v, i, n):
        return v[i * LDB:i * LDB + n]

    dots = [[x[:n] @ w[:n] for x in xs] + [r + x[:n] @ row(w, c, n) for x in xs for c in range(4)]
            + [r + row(x, i, n) @ row(w, c, n) for x in xs[1:] for i in range(2) for c in range(2)]
            + [r + x[:n] @ row(w, c, n) for x in xs[1:] for c in range(2)]
            for r, n in enumerate(RUNS)]
    lanes = ops["x_s8"] * w[:N] + ops["x_u8"] * w[:N]
    return (np.array(s8, np.int8), np.array(u8, np.uint8), sums.astype(np.int32), np.array(dots, np.int32).ravel(),
            lanes.astype(np.int32))


def _c_array(name, values, ctype):
    return f"static const {ctype} {name}[{len(values)}] = {{{', '.join(str(int(v)) for v in values)}}};"


@pytest.mark.parametrize("target", ["cortex-m55", "cortex-m4"])
def test_helpers_compute_the_reference_integers(target, tmp_path):
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    from kiln.targets.cortex_m import BOARDS

    board = BOARDS[target]
    project = kiln.compile(_kws_like("int8"), target=target).build().directory  # startup, link script
    ops = _operands()
    types = {"x_s8": "int8_t", "x_u8": "uint8_t", "w_s8": "int8_t"}
    arrays = "\n".join(_c_array(k, v, types.get(k, "int32_t")) for k, v in ops.items())
    arrays += f"\nstatic const int32_t ldb = {LDB};"
    (tmp_path / "helpers.c").write_text(HARNESS.format(arrays=arrays, n=N, runs=len(RUNS)))
    cc = ["arm-none-eabi-gcc", *board.cpu_flags, "-O2", "-std=c11", f"-I{project}", "-nostartfiles",
          "--specs=nano.specs", "-T", str(project / "link.ld")]
    subprocess.run([*cc, "-o", str(tmp_path / "helpers.elf"), str(tmp_path / "helpers.c"),
                    str(project / "startup.c"), "-lc", "-lgcc"], check=True, capture_output=True, text=True)
    proc = subprocess.run(["qemu-system-arm", "-M", board.machine, "-nographic", "-monitor", "none", "-serial",
                           "null", "-semihosting-config", "enable=on,target=native", "-kernel",
                           str(tmp_path / "helpers.elf")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = (tmp_path / "helpers.bin").read_bytes()
    s8, u8, sums, dots, lanes = _reference(ops)
    assert np.array_equal(np.frombuffer(raw[:N], np.int8), s8)
    assert np.array_equal(np.frombuffer(raw[N:2 * N], np.uint8), u8)
    assert np.array_equal(np.frombuffer(raw[2 * N:6 * N], np.int32), sums)
    assert np.array_equal(np.frombuffer(raw[6 * N:6 * N + 4 * dots.size], np.int32), dots)
    assert np.array_equal(np.frombuffer(raw[6 * N + 4 * dots.size:], np.int32), lanes)


def test_helium_model_source_snapshot(monkeypatch):
    """The M55 kernels of the KWS-like int8 model: four-lane epilogues after the dot tiles
    and the depthwise taps, the pooling sum in lanes."""
    from tests import test_mcu_int8
    from tests.test_codegen import check_snapshot

    import itertools

    from kiln.ir import expr

    monkeypatch.setattr(test_mcu_int8, "RNG", np.random.default_rng(0))  # the same weights every run
    monkeypatch.setattr(expr, "_counter", itertools.count())              # and the same loop names
    check_snapshot("cortex_m55_kws_like_model.c", kiln.compile(_kws_like("int8"), target="cortex-m55").files["model.c"])
