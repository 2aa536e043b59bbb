"""The loop pass that starts an integer reduction's accumulators at the bias its write-back
adds (``kiln/passes/accumulate_from_bias.py``): Before/Expected loop nests, the cases it must
leave alone, the same integers from the loop-IR interpreter, and a compiled quantized
convolution whose generated code no longer adds the bias per output."""
from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, Select, Var
from kiln.ir.loop import UNROLLED, VECTORIZED, Alloc, Buffer, For, Func, Store, seq, walk_stmts
from kiln.ir.loop_eval import run_func
from kiln.passes.accumulate_from_bias import accumulate_from_bias
from tests.test_integer_layout import _residual_model
from tests.test_padded_storage import _resnet_int8
from tests.test_vnni import _host_caps

I8, U8, I32, I64, F32 = DType.int8, DType.uint8, DType.int32, DType.int64, DType.float32
t, r, c, k = Var("t"), Var("r"), Var("c"), Var("k")
ri, ci, rw, cw = Var("ri"), Var("ci"), Var("rw"), Var("cw")
ROWS, COLS, K = 2, 16, 8


def _acc(i, j, dtype=I32):
    return Load("acc", (i, j), dtype)


def _bias(j):
    return Load("bias", (Bin("add", Bin("mul", t, Const(COLS, I64), I64), j, I64),), I32)


def _tile(init_value=None, write_value=None, dtype=I32, after=None, write_extent=COLS, params_extra=()):
    """for t: alloc acc; acc = INIT; for k: acc += x * w; y = requant-ish(acc + bias) [; after]"""
    init_value = init_value if init_value is not None else Const(0, dtype)
    prod = Bin("mul", Cast(Load("x", (Bin("add", Bin("mul", t, Const(ROWS, I64), I64), r, I64), k), U8), dtype),
               Cast(Load("w", (Bin("add", Bin("mul", t, Const(COLS, I64), I64), c, I64), k), I8), dtype), dtype)
    init = For(ri, ROWS, For(ci, COLS, Store("acc", (ri, ci), init_value), UNROLLED), UNROLLED)
    reduce = For(k, K, For(r, ROWS, For(c, COLS, Store("acc", (r, c), Bin("add", _acc(r, c, dtype), prod, dtype)),
                                        UNROLLED), UNROLLED))
    if write_value is None:
        write_value = Bin("add", _acc(rw, cw, dtype), _bias(cw) if dtype is I32 else Cast(_bias(cw), dtype), dtype)
    out_row = Bin("add", Bin("mul", t, Const(ROWS, I64), I64), rw, I64)
    out_col = Bin("add", Bin("mul", t, Const(COLS, I64), I64), cw, I64)
    back = For(rw, ROWS, For(cw, write_extent, Store("y", (out_row, out_col), Cast(write_value, I64)), VECTORIZED))
    body = Alloc(Buffer("acc", (ROWS, COLS), dtype, "local"), seq(init, reduce, back, *([after] if after else [])))
    params = (Buffer("x", (2 * ROWS, K), U8), Buffer("w", (2 * COLS, K), I8), Buffer("bias", (2 * COLS,), I32),
              Buffer("y", (2 * ROWS, 2 * COLS), I64), *params_extra)
    return Func("k", params, For(t, 2, body))


def test_the_bias_moves_into_the_initialization():
    after = accumulate_from_bias(_tile())
    expected = _tile(init_value=_bias(ci), write_value=_acc(rw, cw))
    assert after == expected


def test_int64_accumulators_and_a_bias_on_the_left():
    before = _tile(dtype=I64, write_value=Bin("add", Cast(_bias(cw), I64), _acc(rw, cw, I64), I64))
    expected = _tile(dtype=I64, init_value=Cast(_bias(ci), I64), write_value=_acc(rw, cw, I64))
    assert accumulate_from_bias(before) == expected


@pytest.mark.parametrize("case", [
    "float accumulators",       # float sums would round differently
    "bias written in kernel",   # the value at the initialization could be another
    "conditional read",         # under a select: the bias must not be read where the write-back does not
    "part of the tile",         # a write-back over fewer columns: the bias would be read past them
    "read after write-back",    # that reader would see the bias added
    "another element",          # acc[r, 0] + bias[c]: column c's bias on column 0's sum
    "non-zero start",           # the reduction starts elsewhere already
])
def test_where_it_must_not_apply(case):
    zero = Const(0, I64)
    if case == "float accumulators":
        f = _tile(dtype=F32, write_value=Bin("add", _acc(rw, cw, F32), Cast(_bias(cw), F32), F32))
    elif case == "bias written in kernel":
        f = _tile(after=Store("bias", (zero,), Const(1, I32)))
    elif case == "conditional read":
        f = _tile(write_value=Select(Bin("lt", cw, Const(8, I64), DType.bool),
                                     Bin("add", _acc(rw, cw), _bias(cw), I32), Const(0, I32)))
    elif case == "part of the tile":
        f = _tile(write_extent=8)
    elif case == "read after write-back":
        f = _tile(after=Store("y", (zero, zero), Cast(_acc(zero, zero), I64)))
    elif case == "another element":
        f = _tile(write_value=Bin("add", _acc(rw, zero), _bias(cw), I32))
    else:
        f = _tile(init_value=Const(1, I32))
    assert accumulate_from_bias(f) == f


def test_the_interpreter_gives_the_same_integers():
    rng = np.random.default_rng(0)
    data = {"x": rng.integers(0, 256, (2 * ROWS, K), dtype=np.uint8),
            "w": rng.integers(-128, 128, (2 * COLS, K), dtype=np.int8),
            "bias": rng.integers(-(1 << 20), 1 << 20, (2 * COLS,), dtype=np.int32),
            "y": np.zeros((2 * ROWS, 2 * COLS), np.int64)}
    before = _tile()
    after = accumulate_from_bias(before)
    assert after != before
    want = run_func(before, {n: a.copy() for n, a in data.items()})["y"]
    got = run_func(after, {n: a.copy() for n, a in data.items()})["y"]
    np.testing.assert_array_equal(got, want)
    # and it is the plain sum, bias + x . w, in each tile's block of the output
    x, w = data["x"].astype(np.int64), data["w"].astype(np.int64)
    for tile in range(2):
        rows, cols = slice(tile * ROWS, (tile + 1) * ROWS), slice(tile * COLS, (tile + 1) * COLS)
        np.testing.assert_array_equal(got[rows, cols], x[rows] @ w[cols].T + data["bias"][None, cols])


def _bias_starts(compiled) -> int:
    """Accumulator initializations that read a buffer (the bias), over all kernels."""
    count = 0
    for kern in compiled.result.kernels:
        local = {a.buffer.name for a in walk_stmts(kern.func.body) if isinstance(a, Alloc)
                 and a.buffer.dtype is I32 and len(a.buffer.shape) == 2}
        count += sum(1 for st in walk_stmts(kern.func.body)
                     if isinstance(st, Store) and st.buffer in local and isinstance(st.value, Load))
    return count


@pytest.mark.parametrize("vnni", [True, False], ids=["vnni_tile", "plain_dot_tile"])
def test_quantized_models_give_the_same_integers(vnni, monkeypatch):
    """A ResNet block (two convolutions and a residual add) and a small int8 ResNet-18: every
    convolution's accumulators start at the bias, and the outputs are the integers the
    unrewritten kernels give (the VNNI tile, and the plain dot tile on any x86 host)."""
    import kiln.passes.accumulate_from_bias as module

    _host_caps(monkeypatch, vnni)
    for model in (_residual_model(), _resnet_int8()):
        name = model.graph.input[0].name
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        x = {name: np.random.default_rng(3).standard_normal(shape).astype(np.float32)}
        convs = sum(1 for n in kiln.compile(model).graph.nodes if n.op == "qconv")
        with monkeypatch.context() as m:
            folded = kiln.compile(model)
            got = folded.run(x)
            m.setattr(module, "accumulate_from_bias", lambda f: f)
            plain = kiln.compile(model)
            want = plain.run(x)
        assert _bias_starts(folded) >= convs and _bias_starts(plain) == 0
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
