"""The loop pass that skips a convolution's window rows lying in its input's zero border
(``kiln/passes/skip_border_taps.py``): Before/Expected loop nests, the cases it must leave
alone, the loop-IR interpreter with and without it, and compiled int8 models whose outputs
are the integers the unguarded kernels give."""
from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, Var
from kiln.ir.loop import PARALLEL, UNROLLED, Alloc, Buffer, For, Func, If, Store, seq, walk_stmts
from kiln.ir.loop_eval import run_func
from kiln.passes.skip_border_taps import skip_border_taps
from tests.test_integer_layout import _residual_model
from tests.test_padded_storage import _resnet_int8
from tests.test_vnni import _host_caps, _inputs

U8, I8, I32, I64, F32, BOOL = DType.uint8, DType.int8, DType.int32, DType.int64, DType.float32, DType.bool
h, kh, k, c, ci = Var("h"), Var("kh"), Var("k"), Var("c"), Var("ci")
H, KH, K, C = 5, 3, 8, 16          # output rows, window rows, reduction steps per row, columns
X_ROWS = H + 2                     # storage rows of x: the 5 image rows and a zero row above and below
BOX = ((1, 1 + H), None)           # x's zero_outside: rows 1..5 hold the image


def _i(v: int):
    return Const(v, I64)


def _conv(row=None, term=None, acc_dtype=I32, kinds=("serial", "serial"), extra=None, x_rows=X_ROWS, stride=1,
          box=BOX):
    """for h: acc = 0; for kh: for k: for c (unrolled): acc[c] += x[stride*h + kh, k] * w[kh, k, c]; y[h, c] = acc[c]"""
    row = row if row is not None else Bin("add", Bin("mul", h, _i(stride), I64), kh, I64)
    x = Cast(Load("x", (row, k), U8), acc_dtype)
    w = Cast(Load("w", (kh, k, c), I8), acc_dtype)
    term = term(x, w) if term is not None else Bin("mul", x, w, acc_dtype)
    update = Store("acc", (c,), Bin("add", Load("acc", (c,), acc_dtype), term, acc_dtype))
    inner = For(k, K, For(c, C, update, UNROLLED), kinds[1])
    if extra is not None:
        inner = seq(inner, extra)
    reduce = For(kh, KH, inner, kinds[0])
    init = For(ci, C, Store("acc", (ci,), Const(0, acc_dtype)), UNROLLED)
    back = For(ci, C, Store("y", (h, ci), Cast(Load("acc", (ci,), acc_dtype), I64)), UNROLLED)
    body = Alloc(Buffer("acc", (C,), acc_dtype, "local"), seq(init, reduce, back))
    params = (Buffer("x", (x_rows, K), U8, zero_outside=box), Buffer("w", (KH, K, C), I8), Buffer("y", (H, C), I64))
    return Func("conv", params, For(h, H, body))


def _guarded(func: Func, cond) -> Func:
    """``func`` with the window-row loop's body under ``if (cond)``."""
    from kiln.ir.loop import map_stmt

    def wrap(s):
        if isinstance(s, For) and s.var == kh:
            return For(s.var, s.extent, If(cond, s.body), s.kind)
        return None
    return func.with_body(map_stmt(func.body, wrap))


def _row(stride=1):
    return Bin("add", Bin("mul", h, _i(stride), I64), kh, I64)


def test_rows_in_the_border_are_skipped():
    before = _conv()
    inside = Bin("and", Bin("ge", _row(), _i(1), BOOL), Bin("lt", _row(), _i(1 + H), BOOL), BOOL)
    assert skip_border_taps(before) == _guarded(before, inside)


def test_comparisons_that_always_hold_are_left_out():
    # stride 2 over 2*5 - 1 + 3 - 1 = 11 storage rows with a border above only: rows
    # 2h + kh reach at most 10, inside the image (1..10); only the top test can fail
    before = _conv(stride=2, x_rows=11, box=((1, 11), None))
    expected = _guarded(before, Bin("ge", _row(2), _i(1), BOOL))
    assert skip_border_taps(before) == expected
    # a border nobody's rows reach: no test at all
    untouched = _conv(row=Bin("add", h, _i(1), I64))
    assert skip_border_taps(untouched) == untouched


@pytest.mark.parametrize("case", [
    "zero-point subtracted",   # (x - 3) * w is not 0 where x is
    "float accumulator",       # the pass is for integer sums
    "not an accumulation",     # a plain store in the body
    "parallel window loop",    # only serial loops get a test
    "unrolled window loop",    # a test inside an unrolled loop would split a register tile
    "inner index",             # the row depends on a loop inside the window loop
    "tile steps",              # the row depends on the tile's own step: a test at every step
    "unbordered buffer",       # x has no border
])
def test_where_it_must_not_apply(case):
    if case == "zero-point subtracted":
        f = _conv(term=lambda x, w: Bin("mul", Bin("sub", x, Const(3, I32), I32), w, I32))
    elif case == "float accumulator":
        f = _conv(acc_dtype=F32, term=lambda x, w: Bin("mul", Cast(x, F32), Cast(w, F32), F32))
    elif case == "not an accumulation":
        f = _conv(extra=Store("acc", (_i(0),), Const(1, I32)))
    elif case == "parallel window loop":
        f = _conv(kinds=(PARALLEL, "serial"))
    elif case == "unrolled window loop":
        f = _conv(kinds=(UNROLLED, "serial"))
    elif case == "inner index":
        f = _conv(row=Bin("add", _row(), Bin("floordiv", c, _i(8), I64), I64), x_rows=X_ROWS + 1)
    elif case == "tile steps":
        f = _conv(row=Bin("add", h, Bin("floordiv", k, _i(4), I64), I64))
    else:
        f = _conv(box=None)
    assert skip_border_taps(f) == f


def test_the_interpreter_gives_the_same_integers_with_a_zero_border():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (X_ROWS, K), dtype=np.uint8)
    x[0] = x[-1] = 0
    data = {"x": x, "w": rng.integers(-128, 128, (KH, K, C), dtype=np.int8), "y": np.zeros((H, C), np.int64)}
    before = _conv()
    after = skip_border_taps(before)
    want = run_func(before, {n: a.copy() for n, a in data.items()})["y"]
    np.testing.assert_array_equal(run_func(after, {n: a.copy() for n, a in data.items()})["y"], want)
    # the rows are really skipped: with ones in the border only the guarded nest ignores them
    data["x"][0] = data["x"][-1] = 1
    ones = run_func(before, {n: a.copy() for n, a in data.items()})["y"]
    assert not np.array_equal(ones, want)
    np.testing.assert_array_equal(run_func(after, {n: a.copy() for n, a in data.items()})["y"], want)


def _guards(compiled) -> int:
    return sum(1 for kern in compiled.result.kernels for s in walk_stmts(kern.func.body)
               if isinstance(s, For) and isinstance(s.body, If))


def test_quantized_models_give_the_same_integers(monkeypatch):
    """A ResNet block and a small int8 ResNet-18 (3x3 convolutions of stride 1 and 2 reading
    bordered inputs in place, which needs VNNI panels): window-row loops are guarded, the VNNI
    register tile is printed as often as before, and the outputs are the integers the
    unguarded kernels give (the tile on a VNNI host, its plain-C branch elsewhere)."""
    import kiln.passes.skip_border_taps as module

    _host_caps(monkeypatch, True)
    for model in (_residual_model(), _resnet_int8()):
        x = _inputs(model)
        guarded = kiln.compile(model)
        with monkeypatch.context() as m:
            m.setattr(module, "skip_border_taps", lambda f: f)
            plain = kiln.compile(model)
        assert _guards(guarded) > 0 and _guards(plain) == 0
        assert guarded.source().count("KILN_DPBUSD(kiln_acc_0_0") == plain.source().count("KILN_DPBUSD(kiln_acc_0_0")
        want = plain.run(x)
        for key, value in guarded.run(x).items():
            np.testing.assert_array_equal(value, want[key])


def test_tuning_inputs_keep_the_zero_border():
    """The tuner's random inputs hold 0 where a parameter's storage must (a candidate and the
    untuned kernel may skip different products with it, and must still agree)."""
    from kiln.autotune.measure import random_inputs

    def kernel(box):  # the tuner's harness names a kernel's inputs in0, in1, ...
        return Func("k", (Buffer("in0", (X_ROWS, K), U8, zero_outside=box), Buffer("in1", (KH, K, C), I8),
                          Buffer("out0", (H, C), I64)), Store("out0", (_i(0), _i(0)), _i(0)))

    x, w = random_inputs(kernel(BOX))
    assert (x[0] == 0).all() and (x[-1] == 0).all() and x[1:-1].any()
    assert w.any() and w.shape == (KH, K, C)
    assert random_inputs(kernel(None))[0][0].any()
