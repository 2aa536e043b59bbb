"""WebGPU reductions with few outputs and long rows: one workgroup per output
(kiln/passes/gpu_rows.py), its partials combined through workgroup memory or, with
``webgpu:+subgroups``, through subgroup operations. The rule's shape and barriers without a
device; its results against ONNX Runtime through wgpu (lavapipe without a GPU: it has
subgroups of 8) for both combines; the subgroup bundle in Chromium (its CPU adapter has
subgroups too)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.ir.loop import Barrier, If, SubgroupReduce, stmt_children
from kiln.passes.gpu_rows import THREADS
from tests.conftest import require_webgpu
from tests.test_codegen import check_snapshot
from tests.util import assert_close, make_model, ort_run


@pytest.fixture(scope="module")
def wgpu_device():
    return require_webgpu()


COMBINES = ["webgpu", "webgpu:+subgroups"]


def _dispatches(model, prim=None, target="webgpu"):
    m = kiln.compile(model, target=target)
    ds = [d for k in m.result.source.webgpu.kernels for d in k.dispatches]
    return m, [d for d in ds if prim is None or (d.trace and d.trace[0]["prim"] == prim)]


def _softmax(rows, cols, axis=-1):
    return make_model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)],
                      [("x", np.float32, [rows, cols])], [("y", np.float32, [rows, cols])])


def _reduce(op, shape, axes, dtype=np.float32, keepdims=1):
    out = [1 if i in axes else d for i, d in enumerate(shape)] if keepdims else \
        [d for i, d in enumerate(shape) if i not in axes]
    if op == "ReduceSum":  # opset 13+: axes as an input
        nodes = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)]
        inits = [("axes", np.array(axes, np.int64))]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"], axes=list(axes), keepdims=keepdims)]
        inits = []
    return make_model(nodes, [("x", dtype, shape)], [("y", dtype, out)], inits)


# -- the rule, no device ------------------------------------------------------------------------

def test_softmax_rows_reduce_in_one_workgroup_each():
    _, coop = _dispatches(_softmax(3, 1000), "gpu_reduce_rows")
    assert len(coop) == 2  # the row maximum and the row sum; the normalization stays elementwise
    for d in coop:
        assert (d.workgroups, d.workgroup_size) == (3, THREADS)
        barriers = [s for s in _walk(d.func.body) if isinstance(s, Barrier)]
        assert len(barriers) == int(np.log2(THREADS))  # before each halving step
        assert d.trace == [{"prim": "gpu_reduce_rows", "args": {"outputs": 3, "reduction": 1000, "threads": THREADS,
                                                                "combine": "tree"}}]
        assert not any(isinstance(s, SubgroupReduce) for s in _walk(d.func.body))


def test_subgroup_combine_has_one_barrier():
    m, coop = _dispatches(_softmax(3, 1000), "gpu_reduce_rows", "webgpu:+subgroups")
    assert len(coop) == 2
    for d, op in zip(coop, ["max", "add"]):  # the row maximum, then the row sum
        stmts = list(_walk(d.func.body))
        assert sum(isinstance(s, Barrier) for s in stmts) == 1
        # within each subgroup, then the subgroups' results across the workgroup
        assert [s.op for s in stmts if isinstance(s, SubgroupReduce)] == [op, op]
        assert d.trace[0]["args"]["combine"] == "subgroup"
    assert m.result.source.webgpu.features == ["subgroups"]
    assert '"features": [\n  "subgroups"\n ]' in m.files["model.js"]
    src = m.files["kernel_0.wgsl"]
    assert src.startswith("// Generated") and "\nenable subgroups;\n" in src
    assert "subgroupMax(" in src and "subgroupAdd(" in src


def test_subgroups_only_where_a_row_reduction_is():
    """Kernels without a row reduction neither enable nor need subgroups; a model without any
    asks for no feature, so its bundle runs on adapters without them."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [4, 64])],
                       [("y", np.float32, [4, 64])])
    m = kiln.compile(model, target="webgpu:+subgroups")
    assert m.result.source.webgpu.features == []
    assert "enable subgroups" not in m.files["kernel_0.wgsl"]


def test_snapshot_wgsl_softmax_rows_subgroups():
    m, _ = _dispatches(_softmax(3, 1000), target="webgpu:+subgroups")
    check_snapshot("softmax_rows_subgroups.wgsl", m.files["kernel_0.wgsl"])


def test_snapshot_wgsl_softmax_rows():
    m, _ = _dispatches(_softmax(3, 1000))
    check_snapshot("softmax_rows.wgsl", m.files["kernel_0.wgsl"])


@pytest.mark.parametrize("target", COMBINES)
def test_barriers_stay_in_uniform_control_flow(target):
    """Barriers and subgroup operations only outside guards (WGSL's uniformity rules)."""
    _, coop = _dispatches(_softmax(3, 1000), "gpu_reduce_rows", target)

    def check(s, guarded):
        if isinstance(s, (Barrier, SubgroupReduce)):
            assert not guarded
        for c in stmt_children(s):
            check(c, guarded or isinstance(s, If))
    for d in coop:
        check(d.func.body, False)


@pytest.mark.parametrize("shape, axes, cooperative", [
    ((4096, 16), (1,), False),     # many short rows: one invocation per output is enough
    ((4, 32), (1,), False),        # too short to split
    ((16384, 128), (1,), False),   # enough outputs to fill a GPU
    ((4, 8, 40, 40), (2, 3), True),  # a global pooling: 32 outputs of 1600
    ((2, 5000), (1,), True),
    ((9000, 2048), (1,), True),    # many outputs, but rows long enough to split
])
def test_which_reductions_cooperate(shape, axes, cooperative):
    _, coop = _dispatches(_reduce("ReduceSum", shape, axes), "gpu_reduce_rows")
    assert bool(coop) == cooperative


# -- results on the device ------------------------------------------------------------------------

@pytest.mark.parametrize("op, shape, axes, dtype", [
    ("ReduceSum", (3, 1000), (1,), np.float32),
    ("ReduceSum", (2, 9, 7, 11), (1, 3), np.float32),     # two reduction axes, not adjacent
    ("ReduceMean", (4, 8, 10, 10), (2, 3), np.float32),   # 100: a partial last step
    ("ReduceMax", (5, 333), (1,), np.float32),            # -inf identity, all-negative rows below
    ("ReduceMin", (5, 333), (1,), np.float32),
    ("ReduceProd", (3, 70), (1,), np.float32),
    ("ReduceSum", (6, 129), (1,), np.int32),              # integer: exact whatever the order
    ("ReduceMax", (6, 129), (1,), np.int32),
    ("ReduceSumSquare", (2, 4096), (1,), np.float32),
])
@pytest.mark.parametrize("target", COMBINES)
def test_cooperative_reductions_match_onnxruntime(wgpu_device, op, shape, axes, dtype, target):
    model = _reduce(op, list(shape), list(axes), dtype)
    m, coop = _dispatches(model, "gpu_reduce_rows", target)
    assert coop, "the rule should apply"
    rng = np.random.default_rng(0)
    if dtype == np.int32:
        x = rng.integers(-1000, 1000, shape).astype(dtype)
    elif op == "ReduceProd":
        x = rng.uniform(0.9, 1.1, shape).astype(dtype)
    elif op == "ReduceMax":
        x = -rng.uniform(1, 2, shape).astype(dtype)  # every element below zero
    else:
        x = rng.standard_normal(shape).astype(dtype)
    feeds = {"x": x}
    got, want = m.run(feeds), ort_run(model, feeds)
    if dtype == np.int32:
        np.testing.assert_array_equal(got["y"], want["y"])
    else:
        assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", COMBINES)
def test_softmax_and_layer_norm_over_long_rows_match_onnxruntime(wgpu_device, target):
    rng = np.random.default_rng(1)
    model = _softmax(7, 1000)
    feeds = {"x": (4 * rng.standard_normal((7, 1000))).astype(np.float32)}
    assert_close(kiln.compile(model, target=target).run(feeds), ort_run(model, feeds), rtol=1e-4, atol=1e-6)
    hidden = 768
    ln = make_model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)],
                    [("x", np.float32, [5, hidden])], [("y", np.float32, [5, hidden])],
                    [("g", rng.standard_normal(hidden).astype(np.float32)),
                     ("b", rng.standard_normal(hidden).astype(np.float32))])
    m, coop = _dispatches(ln, "gpu_reduce_rows", target)
    assert coop
    feeds = {"x": (3 + rng.standard_normal((5, hidden))).astype(np.float32)}
    assert_close(m.run(feeds), ort_run(ln, feeds), rtol=1e-4, atol=1e-4)


def _walk(s):
    yield s
    for c in stmt_children(s):
        yield from _walk(c)
