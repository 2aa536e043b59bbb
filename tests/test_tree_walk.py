"""``Iterate`` (a value refined step by step) and the ``tree_walk`` op built on it: lowering,
the interpreters, the loop passes that must not treat the walk as a reduction, the
interleaved schedule, and forests with every kind of branch against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import kiln
from examples.sklearn_onnx import ML, ml_model, regressor_from_sklearn
from kiln.errors import ShapeError
from kiln.ir.compute import Stage, Tensor, compute
from kiln.ir.dtype import DType
from kiln.ir.expr import Const, Iterate, Load, Var, free_vars, fresh
from kiln.ir.graph import TensorType
from kiln.ir.interp import run_stages
from kiln.ir.loop import (PARALLEL, UNROLLED, VECTORIZED, Alloc, Buffer, For, Func, Seq, Store, canonicalize,
                          walk_stmts)
from kiln.ir.loop_eval import run_func
from kiln.ir.lower import lower_stage
from kiln.ir.ops import infer_types
from kiln.ir.schedule import Schedule
from kiln.passes.capabilities import Capabilities
from kiln.passes.default_schedule import schedule_kernel
from kiln.passes.hoist_loads import hoist_invariant_loads
from tests.util import BACKENDS, check_against_ort

I32 = DType.int32


def chase(n: int, steps: int) -> Stage:
    """``out[i]`` = ``nxt`` applied ``steps`` times to ``start[i]``: pointer chasing."""
    start, nxt = Tensor("start", (n,), I32), Tensor("nxt", (n,), I32)

    def body(i):
        s = Var(fresh("s"), I32)
        return Iterate(s, start[i], nxt[s], steps)
    return compute("out", (n,), body, I32, inline=False)


def chase_func(n: int, steps: int) -> Func:
    params = (Buffer("start", (n,), I32), Buffer("nxt", (n,), I32), Buffer("out", (n,), I32))
    return canonicalize(Func("chase", params, lower_stage(chase(n, steps))))


def run_chase(func: Func, start, nxt):
    return run_func(func, {"start": start, "nxt": nxt, "out": np.zeros_like(start)})["out"]


def reference_chase(start, nxt, steps):
    out = start.copy()
    for _ in range(steps):
        out = nxt[out]
    return out


# -- the IR ------------------------------------------------------------------------------

def test_iterate_lowers_to_a_state_refined_in_its_own_loop():
    i, s = Var("i0"), Var("i1")
    state = Load("acc0", (), I32)
    expected = For(i, 5, Alloc(Buffer("acc0", (), I32, "local"), Seq((
        Store("acc0", (), Load("start", (i,), I32)),
        For(s, 3, Store("acc0", (), Load("nxt", (state,), I32))),
        Store("out", (i,), state)))))
    assert chase_func(5, 3).body == expected


def test_iterate_binds_its_state_and_evaluates_like_a_loop():
    stage = chase(7, 4)
    assert free_vars(stage.body) == {stage.axes[0].name}  # the state is bound, the axis free
    rng = np.random.default_rng(0)
    start, nxt = rng.integers(0, 7, 7).astype(np.int32), rng.permutation(7).astype(np.int32)
    want = reference_chase(start, nxt, 4)
    np.testing.assert_array_equal(run_stages([stage], {"start": start, "nxt": nxt})["out"], want)
    np.testing.assert_array_equal(run_chase(chase_func(7, 4), start, nxt), want)
    zero = run_stages([chase(7, 0)], {"start": start, "nxt": nxt})["out"]  # no steps: the start
    np.testing.assert_array_equal(zero, start)


def test_a_load_whose_index_reads_the_state_is_not_hoisted():
    """The hoisting pass moves invariant loads out of vectorized loops; ``nxt[acc]`` reads
    the state the loop writes, so it must stay (it used to move: every step then stored
    the first step's value)."""
    f = chase_func(5, 3)
    step = next(s for s in walk_stmts(f.body) if isinstance(s, For) and s.var.name == "i1")
    forced = f.with_body(_replace(f.body, step, For(step.var, step.extent, step.body, VECTORIZED)))
    assert hoist_invariant_loads(forced) == forced


def _replace(s, old, new):
    from kiln.ir.loop import map_stmt

    return map_stmt(s, lambda x: new if x is old else None)


def test_the_walk_chain_is_not_vectorized_as_a_reduction():
    f = chase_func(64, 3)
    sch = schedule_kernel(Schedule(f), [chase(64, 3)], Capabilities(32, 2, 1))  # 2 registers: no interleaving
    assert not [s for s in walk_stmts(sch.func.body) if isinstance(s, For) and s.kind == VECTORIZED]
    start, nxt = np.arange(64, dtype=np.int32)[::-1].copy(), np.roll(np.arange(64, dtype=np.int32), 5)
    np.testing.assert_array_equal(run_chase(sch.func, start, nxt), reference_chase(start, nxt, 3))


@pytest.mark.parametrize("n, lanes", [(64, 8), (12, 6), (7, 7), (11, 1)])
def test_interleaved_walks(n, lanes):
    """The default rule advances ``lanes`` walks together: their states a local array, the
    step loop outside the (unrolled) lanes; a prime extent above the width is not split."""
    f = chase_func(n, 3)
    sch = schedule_kernel(Schedule(f), [chase(n, 3)], Capabilities(64, 32, 2))
    stmts = list(walk_stmts(sch.func.body))
    states = [s.buffer for s in stmts if isinstance(s, Alloc) and s.buffer.scope == "local"]
    assert [b.shape for b in states] == [(lanes,) if lanes > 1 else ()]
    unrolled = [s for s in stmts if isinstance(s, For) and s.kind == UNROLLED]
    assert [s.extent for s in unrolled] == ([lanes] if lanes > 1 else [])
    rng = np.random.default_rng(n)
    start, nxt = rng.integers(0, n, n).astype(np.int32), rng.permutation(n).astype(np.int32)
    np.testing.assert_array_equal(run_chase(sch.func, start, nxt), reference_chase(start, nxt, 3))


def test_forest_walk_kernel_interleaves_samples_and_runs_trees_in_parallel():
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    x, y = load_diabetes(return_X_y=True)
    rf = RandomForestRegressor(n_estimators=32, max_depth=4, random_state=0).fit(x, y)
    src = kiln.compile(regressor_from_sklearn(rf.estimators_, x.shape[1], 256), target="host").source()
    walk = src[src.index("(tree_walk) */"):]
    walk = walk[:walk.index("\n}\n")]
    assert "KILN_PARALLEL_LOOP(i1, 32)" in walk  # trees outside, in parallel
    assert "int32_t acc0[8]" in walk and "#pragma GCC unroll 8" in walk  # 8 samples per step
    assert "omp simd" not in walk and "kiln_min" not in walk  # no vector lanes, no clamps


# -- the op ----------------------------------------------------------------------------------

def _types(m=5, next_shape=(5, 2), next_dtype=I32, extra=()):
    return [TensorType((4, 3), DType.float32), TensorType((m,), I32), TensorType((m,), DType.float32),
            TensorType(next_shape, next_dtype), TensorType((2,), I32), *extra]


@pytest.mark.parametrize("types, attrs, message", [
    (_types(next_shape=(5,)), {}, r"next has shape \[5\]; expected \[5, 2\]"),
    (_types(next_dtype=DType.int64), {}, "next is int64; expected int32"),
    (_types()[:4], {}, r"takes 5 inputs \(x, feature, threshold, next, roots\)"),
    (_types(), {"comparisons": ("le", "lt")}, "takes 6 inputs"),
    (_types(), {"comparisons": ("within",)}, r"\['within'\] are not among"),
    ([TensorType((4, 3), I32)] + _types()[1:], {}, "takes x as float rows"),
])
def test_bad_tree_walks_say_what_was_expected(types, attrs, message):
    with pytest.raises(ShapeError, match=message):
        infer_types("tree_walk", types, {"depth": 2, "comparisons": ("le",), **attrs})


def test_tree_walk_output_is_a_leaf_row_per_sample_and_tree():
    (out,) = infer_types("tree_walk", _types(), {"depth": 2, "comparisons": ("le",)})
    assert out == TensorType((4, 2), I32)


def _set_membership_forest(batch: int):
    """ONNX's set-membership case widened: a LEQ root, two set tests, and a second tree
    testing feature 1 with NaN routed to its true branch."""
    def t(name, dtype, values):
        return helper.make_tensor(name, dtype, (len(values),), values)

    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain=ML, n_targets=4, aggregate_function=1, post_transform=0,
        membership_values=t("membership_values", TensorProto.FLOAT, [1.2, 3.7, 8, 9, np.nan, 12, 7, np.nan]),
        tree_roots=[0, 3],
        nodes_modes=t("nodes_modes", TensorProto.UINT8, np.array([0, 6, 6, 1], np.uint8)),
        nodes_featureids=[0, 0, 0, 1],
        nodes_splits=t("nodes_splits", TensorProto.FLOAT, [11, 232344.0, np.nan, 0.5]),
        nodes_trueleafs=[0, 1, 1, 1], nodes_truenodeids=[1, 0, 1, 4],
        nodes_falseleafs=[1, 0, 1, 1], nodes_falsenodeids=[2, 2, 3, 5],
        nodes_missing_value_tracks_true=[0, 0, 0, 1],
        leaf_targetids=[0, 1, 2, 3, 0, 1],
        leaf_weights=t("leaf_weights", TensorProto.FLOAT, [1, 10, 1000, 100, 0.5, -2]))
    return ml_model(node, [("X", np.float32, [batch, 2])], [("Y", np.float32, [batch, 4])], 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 6, 40])
def test_set_membership_and_mixed_comparisons_match_onnxruntime(batch, backend):
    rng = np.random.default_rng(batch)
    x = rng.choice(np.array([1.2, 3.4, 3.7, -0.12, np.nan, 12, 7, 8, 9, 0.25, 1.0], np.float32), (batch, 2))
    check_against_ort(_set_membership_forest(batch), {"X": x}, backend, atol=1e-6)
