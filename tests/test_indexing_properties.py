"""Property test: random graphs of indexing ops that share one input -- Gather with constant
index tables of random shapes, GatherElements, Slice, Transpose -- compiled for the host and
compared with ONNX Runtime. Several kernels reading one tensor through index tensors of
different shapes is how a renderer cache keyed too coarsely once printed one kernel's
subscript in another (tests/test_ops_shape.py has that case); this looks for its relatives."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import helper

import kiln
from tests.util import assert_close, make_model, ort_run


@st.composite
def indexing_graphs(draw):
    rank = draw(st.integers(2, 3))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    nodes, inits, outputs = [], [], []
    # the gathers share an axis and an index rank, so their kernels share a loop structure
    # and differ in the index tables' shapes: where a coarse cache key would collide
    gather_axis, index_rank = draw(st.integers(0, rank - 1)), draw(st.integers(1, 2))
    for k in range(draw(st.integers(2, 4))):
        kind = draw(st.sampled_from(["gather", "gather", "gather", "gather_elements", "slice", "transpose"]))
        out = f"y{k}"
        axis = gather_axis if kind == "gather" else draw(st.integers(0, rank - 1))
        n = shape[axis]
        if kind == "gather":
            ind_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=index_rank, max_size=index_rank)))
            ind = np.asarray(draw(st.lists(st.integers(-n, n - 1), min_size=int(np.prod(ind_shape)),
                                           max_size=int(np.prod(ind_shape))))).reshape(ind_shape).astype(np.int64)
            inits.append((f"i{k}", ind))
            nodes.append(helper.make_node("Gather", ["x", f"i{k}"], [out], axis=axis))
            out_shape = shape[:axis] + ind_shape + shape[axis + 1:]
        elif kind == "gather_elements":
            out_shape = tuple(draw(st.integers(1, d)) for d in shape)
            size = int(np.prod(out_shape))
            ind = np.asarray(draw(st.lists(st.integers(-n, n - 1), min_size=size, max_size=size)))
            inits.append((f"i{k}", ind.reshape(out_shape).astype(np.int64)))
            nodes.append(helper.make_node("GatherElements", ["x", f"i{k}"], [out], axis=axis))
        elif kind == "slice":
            start = draw(st.integers(0, n - 1))
            step = draw(st.sampled_from([1, 2]))
            end = draw(st.integers(start + 1, n))
            inits += [(f"s{k}", np.array([start])), (f"e{k}", np.array([end])), (f"a{k}", np.array([axis])),
                      (f"p{k}", np.array([step]))]
            nodes.append(helper.make_node("Slice", ["x", f"s{k}", f"e{k}", f"a{k}", f"p{k}"], [out]))
            out_shape = shape[:axis] + (len(range(start, end, step)),) + shape[axis + 1:]
        else:
            perm = tuple(draw(st.permutations(range(rank))))
            nodes.append(helper.make_node("Transpose", ["x"], [out], perm=perm))
            out_shape = tuple(shape[p] for p in perm)
        outputs.append((out, np.float32, list(out_shape)))
    model = make_model(nodes, [("x", np.float32, list(shape))], outputs,
                       [(name, a.astype(np.int64)) for name, a in inits], opset=13)
    return model, shape


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(indexing_graphs())
def test_indexing_ops_sharing_an_input_match_onnxruntime(case):
    model, shape = case
    feeds = {"x": np.arange(np.prod(shape), dtype=np.float32).reshape(shape)}  # every element distinct
    assert_close(kiln.compile(model, target="host").run(feeds), ort_run(model, feeds), rtol=0, atol=0)
