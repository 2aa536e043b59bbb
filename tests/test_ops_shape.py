"""Data-movement and indexing ops (ONNX -> kiln) against ONNX Runtime.

Each test builds a one-node ONNX model; inputs marked constant become initializers (as
shapes, starts and pads must be), the others are run-time inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from kiln.errors import KilnError
from tests.util import BACKENDS, check_against_ort, make_model

RNG = np.random.default_rng(0)


# -- model building ---------------------------------------------------------------------------

def X(name, arr):
    """A run-time input."""
    return (name, np.asarray(arr), False)


def C(name, arr):
    """A constant input (an initializer)."""
    return (name, np.asarray(arr), True)


def node_model(op_type, inputs, attrs=None, n_out=1, opset=17):
    """A one-node model; ``inputs`` are X/C specs or None for an absent optional input.

    Output types come from ONNX shape inference. Returns (model, feeds).
    """
    names, graph_inputs, inits, feeds = [], [], [], {}
    for spec in inputs:
        if spec is None:
            names.append("")
            continue
        name, arr, const = spec
        names.append(name)
        if const:
            inits.append(onnx.numpy_helper.from_array(arr, name))
        else:
            dt = helper.np_dtype_to_tensor_dtype(arr.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, dt, arr.shape))
            feeds[name] = arr
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op_type, names, outs, **(attrs or {}))
    graph = helper.make_graph([node], "test", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    del model.graph.value_info[:]
    return model, feeds


def check(op_type, inputs, backend, attrs=None, n_out=1, opset=17):
    model, feeds = node_model(op_type, inputs, attrs, n_out, opset)
    return check_against_ort(model, feeds, backend)


def check_folded(op_type, inputs, backend, attrs=None, opset=17):
    """For ops that convert to a constant: add a run-time zero to it, so that the graph output
    is computed by a kernel rather than being the constant itself."""
    model, feeds = node_model(op_type, inputs, attrs, 1, opset)
    out = model.graph.output[0]
    z = onnx.ValueInfoProto()
    z.CopyFrom(out)
    z.name = "z"
    model.graph.input.append(z)
    model.graph.node.append(helper.make_node("Add", ["y0", "z"], ["out"]))
    out.name = "out"
    shape = [d.dim_value for d in z.type.tensor_type.shape.dim]
    feeds["z"] = np.zeros(shape, helper.tensor_dtype_to_np_dtype(z.type.tensor_type.elem_type))
    return check_against_ort(model, feeds, backend)


def randn(*shape, dtype=np.float32):
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-9, 10, shape).astype(dtype)


DTYPES = [np.float32, np.int64]
backends = pytest.mark.parametrize("backend", BACKENDS)

# -- reshape family ---------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", [(6, 4), (0, -1), (-1,), (2, -1, 2), (4, 0, 2), (1, 24, 1)])
def test_reshape(backend, dtype, target):
    check("Reshape", [X("x", randn(2, 3, 4, dtype=dtype)), C("s", np.array(target, np.int64))], backend)


@backends
def test_reshape_allowzero(backend):
    check("Reshape", [X("x", randn(0, 3)), C("s", np.array([3, 0], np.int64))], backend,
          {"allowzero": 1}, opset=14)


@backends
def test_reshape_opset1_attribute(backend):
    model = _raw_model("Reshape", [(2, 3)], [3, 2], {"shape": [3, 2]}, opset=4)
    check_against_ort(model, {"x": randn(2, 3)}, backend)


@backends
@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_flatten(backend, axis):
    check("Flatten", [X("x", randn(2, 3, 4))], backend, {"axis": axis}, opset=13)


@backends
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [None, [0], [2, 0], [-2]])
def test_squeeze(backend, opset, axes):
    x = X("x", randn(1, 3, 1, 2, dtype=np.int64))
    if axes is None:
        check("Squeeze", [x], backend, opset=opset)
    elif opset < 13:
        check("Squeeze", [x], backend, {"axes": axes}, opset=opset)
    else:
        check("Squeeze", [x, C("a", np.array(axes, np.int64))], backend, opset=opset)


@backends
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [-1], [1, 3], [0, 3], [-4, 1]])
def test_unsqueeze(backend, opset, axes):
    x = X("x", randn(3, 2))
    if opset < 13:
        check("Unsqueeze", [x], backend, {"axes": axes}, opset=opset)
    else:
        check("Unsqueeze", [x, C("a", np.array(axes, np.int64))], backend, opset=opset)


# -- transpose, concat, split -----------------------------------------------------------------

@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,perm", [
    ((2, 3, 4), None), ((2, 3, 4), [0, 2, 1]), ((2, 3, 4), [2, 0, 1]),
    ((2, 3, 4, 5), [0, 2, 3, 1]), ((3, 4), [0, 1]),
])
def test_transpose(backend, dtype, shape, perm):
    attrs = {} if perm is None else {"perm": perm}
    check("Transpose", [X("x", randn(*shape, dtype=dtype))], backend, attrs)


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(backend, dtype, axis):
    sizes = [1, 3, 2]
    ins = []
    for k, n in enumerate(sizes):
        shape = [2, 2, 2]
        shape[axis] = n
        spec = C if k == 1 else X  # one constant among run-time inputs
        ins.append(spec(f"x{k}", randn(*shape, dtype=dtype)))
    check("Concat", ins, backend, {"axis": axis})


@backends
def test_concat_with_empty_input(backend):
    check("Concat", [X("a", randn(2, 3)), C("e", np.zeros((2, 0), np.float32)), X("b", randn(2, 1))],
          backend, {"axis": 1})


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset,axis,split,n_out", [
    (11, 1, [1, 3], 2), (11, 0, None, 3), (13, -1, [2, 2, 1], 3), (13, 1, None, 2), (18, 2, None, 2),
])
def test_split(backend, dtype, opset, axis, split, n_out):
    x = X("x", randn(3, 4, 5 if opset == 18 else 5 if split else 4, dtype=dtype))
    if split is None:
        attrs = {"num_outputs": n_out} if opset >= 18 else {}
        check("Split", [x], backend, {"axis": axis, **attrs}, n_out, opset)
    elif opset < 13:
        check("Split", [x], backend, {"axis": axis, "split": split}, n_out, opset)
    else:
        check("Split", [x, C("s", np.array(split, np.int64))], backend, {"axis": axis}, n_out, opset)


# -- slice ---------------------------------------------------------------------------------------

BIG = np.iinfo(np.int64).max


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [3], None, None),
    ([0, 1], [2, -1], [0, 2], None),
    ([-1], [-BIG], [1], [-1]),
    ([3, 4], [0, 0], [1, 2], [-2, -3]),
    ([-100, 1], [BIG, 100], [-1, 0], [2, 1]),
    ([2], [1], [0], [1]),
    ([5], [-10], [2], [-1]),
])
def test_slice(backend, dtype, starts, ends, axes, steps):
    ins = [X("x", randn(3, 4, 5, dtype=dtype)), C("s", np.array(starts, np.int64)),
           C("e", np.array(ends, np.int64))]
    ins += [C("a", np.array(axes, np.int64)) if axes is not None else None]
    ins += [C("p", np.array(steps, np.int64)) if steps is not None else None]
    while ins[-1] is None:
        ins.pop()
    check("Slice", ins, backend, opset=13)


@backends
def test_slice_opset9_attributes(backend):
    check("Slice", [X("x", randn(3, 4))], backend, {"starts": [1, -3], "ends": [100, 3], "axes": [0, 1]},
          opset=9)


# -- gather family --------------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [np.array([2, -1, 0]), np.array([[0, -2], [1, 1]]), np.array(1)])
@pytest.mark.parametrize("runtime_indices", [False, True])
def test_gather(request, backend, dtype, axis, indices, runtime_indices):
    spec = X if runtime_indices else C
    ind = indices.astype(np.int32 if runtime_indices else np.int64)
    check("Gather", [X("x", randn(3, 3, 4, dtype=dtype)), spec("i", ind)], backend, {"axis": axis})


@backends
def test_two_gathers_of_one_tensor_with_index_tables_of_different_shapes(backend):
    """Regression: the C renderer cached a gather's subscript by the data buffer's name, shape
    and index expression; two kernels reading ``in0[.., in1[i, j]]`` with index tables of
    shapes (12, 1) and (10, 2) printed the second with the first's flattening of ``in1``."""
    x = np.arange(12, dtype=np.int64).reshape(1, 12) * 10
    w1 = np.arange(12)[:, None].astype(np.int64)
    w2 = (np.arange(10)[:, None] + 2 * np.arange(2)[None, :]).astype(np.int64)
    nodes = [helper.make_node("Gather", ["x", "w1"], ["g1"], axis=1),
             helper.make_node("Gather", ["x", "w2"], ["g2"], axis=1)]
    model = make_model(nodes, [("x", np.int64, [1, 12])],
                       [("g1", np.int64, [1, 12, 1]), ("g2", np.int64, [1, 10, 2])], [("w1", w1), ("w2", w2)])
    check_against_ort(model, {"x": x}, backend)


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(backend, dtype, axis):
    data = randn(3, 4, dtype=dtype)
    shape = [2, 3]
    ind = RNG.integers(-data.shape[axis], data.shape[axis], shape).astype(np.int64)
    check("GatherElements", [X("x", data), X("i", ind)], backend, {"axis": axis}, opset=13)


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("data_shape,indices,batch_dims", [
    ((2, 3), [[0, 1], [1, -1]], 0),
    ((2, 3, 4), [[1], [0]], 0),
    ((2, 3, 4), [[[0, 1]], [[1, 2]]], 0),
    ((2, 3, 4), [[1], [2]], 1),
    ((2, 3, 4), [[[1, 3], [0, 0]], [[2, -1], [1, 2]]], 1),
])
def test_gather_nd(backend, dtype, data_shape, indices, batch_dims):
    check("GatherND", [X("x", randn(*data_shape, dtype=dtype)), X("i", np.array(indices, np.int64))],
          backend, {"batch_dims": batch_dims}, opset=13)


# -- expand, tile, pad --------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,target", [((3, 1), (2, 3, 4)), ((1,), (3,)), ((2, 3), (1, 1)), ((2, 1), (2, 1, 5))])
def test_expand(backend, dtype, shape, target):
    check("Expand", [X("x", randn(*shape, dtype=dtype)), C("s", np.array(target, np.int64))], backend)


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("repeats", [(1, 1), (2, 1), (3, 2), (1, 0)])
def test_tile(backend, dtype, repeats):
    check("Tile", [X("x", randn(2, 3, dtype=dtype)), C("r", np.array(repeats, np.int64))], backend)


PADS = [[0, 1, 2, 0], [1, 0, 0, 2], [2, 2, 2, 2]]


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", PADS)
def test_pad(backend, dtype, mode, pads):
    ins = [X("x", randn(3, 4, dtype=dtype)), C("p", np.array(pads, np.int64))]
    if mode == "constant":
        ins.append(C("v", np.array(5, dtype)))
    check("Pad", ins, backend, {"mode": mode}, opset=19)


@backends
def test_pad_negative_crops(backend):
    check("Pad", [X("x", randn(3, 4)), C("p", np.array([-1, 2, 0, -2], np.int64))], backend, opset=13)


@backends
def test_pad_opset2_attributes(backend):
    check("Pad", [X("x", randn(2, 3))], backend, {"pads": [1, 0, 0, 2], "value": 1.5}, opset=10)


@backends
@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_pad_axes_opset18(backend, mode):
    ins = [X("x", randn(2, 3, 4)), C("p", np.array([1, 2, 0, 1], np.int64)), None,
           C("a", np.array([-1, 0], np.int64))]
    check("Pad", ins, backend, {"mode": mode}, opset=18)


# -- depth/space, trilu, cumsum, one_hot --------------------------------------------------------

@backends
@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # ONNX Runtime has no integer kernels
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(backend, dtype, mode):
    check("DepthToSpace", [X("x", randn(1, 8, 2, 3, dtype=dtype))], backend, {"blocksize": 2, "mode": mode},
          opset=13)


@backends
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_space_to_depth(backend, dtype):
    check("SpaceToDepth", [X("x", randn(2, 3, 4, 6, dtype=dtype))], backend, {"blocksize": 2}, opset=13)


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 2])
def test_trilu(backend, dtype, upper, k):
    ins = [X("x", randn(2, 3, 4, dtype=dtype))] + ([C("k", np.array(k, np.int64))] if k is not None else [])
    check("Trilu", ins, backend, {"upper": upper}, opset=14)


@backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum(backend, dtype, axis, exclusive, reverse):
    check("CumSum", [X("x", randn(3, 4, dtype=dtype)), C("a", np.array(axis, np.int32))], backend,
          {"exclusive": exclusive, "reverse": reverse}, opset=14)


@backends
@pytest.mark.parametrize("values", [np.array([0, 1], np.int64), np.array([-1.5, 2.0], np.float32)])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_one_hot(backend, values, axis):
    ind = np.array([[0, 3, -1], [2, 5, -4]], np.int64)  # 5 and -5.. are out of range: all off
    check("OneHot", [X("i", ind), C("d", np.array(4, np.int64)), C("v", values)], backend,
          {"axis": axis}, opset=11)


# -- values known at compile time ---------------------------------------------------------------

@backends
@pytest.mark.parametrize("opset,attrs", [(13, {}), (15, {"start": 1}), (15, {"start": -2, "end": -1}),
                                         (15, {"end": 10})])
def test_shape(backend, opset, attrs):
    check_folded("Shape", [X("x", randn(2, 3, 4))], backend, attrs, opset=opset)


@backends
def test_size(backend):
    check_folded("Size", [X("x", randn(2, 3, 4))], backend)


@backends
@pytest.mark.parametrize("attrs", [
    {"value": onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))},
    {"value_float": 2.5}, {"value_floats": [1.0, 2.0]},
    {"value_int": 7}, {"value_ints": [3, -1]},
])
def test_constant(backend, attrs):
    check_folded("Constant", [], backend, attrs, opset=13)


@backends
@pytest.mark.parametrize("value", [None, np.array([3], np.int64), np.array([1.25], np.float32)])
def test_constant_of_shape(backend, value):
    attrs = {} if value is None else {"value": onnx.numpy_helper.from_array(value)}
    check_folded("ConstantOfShape", [C("s", np.array([2, 3], np.int64))], backend, attrs, opset=13)


@backends
@pytest.mark.parametrize("start,limit,delta,dtype", [
    (0, 5, 1, np.int64), (10, 2, -3, np.int64), (0.5, 2.0, 0.25, np.float32), (1, 1, 1, np.int32),
])
def test_range(backend, start, limit, delta, dtype):
    ins = [C(n, np.array(v, dtype)) for n, v in (("s", start), ("l", limit), ("d", delta))]
    check_folded("Range", ins, backend, opset=13)


@backends
@pytest.mark.parametrize("k,dtype", [(0, None), (1, onnx.TensorProto.INT64), (-2, onnx.TensorProto.FLOAT)])
def test_eye_like(backend, k, dtype):
    attrs = {"k": k, **({"dtype": dtype} if dtype is not None else {})}
    check_folded("EyeLike", [X("x", randn(3, 4))], backend, attrs, opset=13)


@backends
def test_constant_as_graph_output(backend):
    check("Shape", [X("x", randn(2, 3, 4))], backend)


# -- shape subgraphs fold away ------------------------------------------------------------------

def _shape_chain_model(scalar_index: bool):
    """y = Reshape(x, Concat(Gather(Shape(x), [0]), [-1])): flattens all but dim 0.

    With ``scalar_index`` the gather takes index 0 as a scalar and an Unsqueeze follows,
    as PyTorch exports ``x.view(x.size(0), -1)``.
    """
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["d0u" if not scalar_index else "d0"], axis=0)]
    if scalar_index:
        nodes.append(helper.make_node("Unsqueeze", ["d0", "ax0"], ["d0u"]))
    nodes += [
        helper.make_node("Concat", ["d0u", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [("zero", np.array(0 if scalar_index else [0], np.int64)),
             ("ax0", np.array([0], np.int64)), ("minus1", np.array([-1], np.int64))]
    return make_model(nodes, [("x", np.float32, [2, 3, 4])], [("y", np.float32, [2, 12])], inits, opset=13)


CHAIN_VARIANTS = pytest.mark.parametrize("scalar_index", [False, True])


@CHAIN_VARIANTS
def test_shape_chain_folds_to_one_reshape(scalar_index):
    from kiln.frontend.onnx import from_onnx

    g = from_onnx(_shape_chain_model(scalar_index))
    assert [n.op for n in g.nodes] == ["reshape"], str(g)
    assert g.nodes[0].attrs["shape"] == (2, 12)
    assert not g.constants, "the folded shape constants should not stay in the graph"


@backends
@CHAIN_VARIANTS
def test_shape_chain_runs(backend, scalar_index):
    check_against_ort(_shape_chain_model(scalar_index), {"x": randn(2, 3, 4)}, backend)


# -- bad inputs ---------------------------------------------------------------------------------

def _convert(op_type, inputs, attrs=None, n_out=1, opset=17):
    from kiln.frontend.onnx import from_onnx

    return from_onnx(node_model(op_type, inputs, attrs, n_out, opset)[0])


def _raw_model(op_type, inputs, out_shape, attrs=None, opset=17):
    """Float input ``x`` of shape inputs[0], constants c0, c1 ... from inputs[1:], and a declared
    output shape (for nodes that ONNX shape inference would reject or cannot type)."""
    inits = [(f"c{k}", a) for k, a in enumerate(inputs[1:])]
    node = helper.make_node(op_type, ["x"] + [n for n, _ in inits], ["y"], **(attrs or {}))
    return make_model([node], [("x", np.float32, inputs[0])], [("y", np.float32, out_shape)], inits, opset)


@pytest.mark.parametrize("target", [[4, 2], [4, -1], [-1, -1], [5, 0, 0]])
def test_reshape_incompatible_size_raises(target):
    """Caught by ONNX shape inference or by kiln: either way a KilnError."""
    from kiln.frontend.onnx import from_onnx

    with pytest.raises(KilnError):
        from_onnx(_raw_model("Reshape", [(2, 3), np.array(target, np.int64)], [4, 2]))


@pytest.mark.parametrize("target,match", [
    ([4, -1], r"cannot reshape \(2, 3\) \(6 elements\) to \(4, -1\)"),
    ([-1, -1], r"\(-1, -1\) has more than one -1"),
    ([5, 0, 0], r"\(5, 0, 0\) copies dim 2.*\(2, 3\)"),
    ([2, -3], r"\(2, -3\) has dim -3"),
])
def test_resolve_reshape_names_shapes(target, match):
    from kiln.frontend.onnx_ops.shape import resolve_reshape

    with pytest.raises(KilnError, match=match):
        resolve_reshape((2, 3), target, allowzero=False)


def test_reshape_incompatible_message():
    from kiln.frontend.onnx import from_onnx

    with pytest.raises(KilnError, match=r"cannot reshape \(2, 3\) \(6 elements\) to \(4, 2\)"):
        from_onnx(_raw_model("Reshape", [(2, 3), np.array([4, 2], np.int64)], [4, 2]))


def test_reshape_needs_constant_shape():
    x, s = X("x", randn(2, 3)), X("s", np.array([3, 2], np.int64))
    with pytest.raises(KilnError, match="shape.*constant"):
        _convert("Reshape", [x, s])


def test_transpose_perm_wrong_length():
    from kiln.frontend.onnx import from_onnx

    with pytest.raises(KilnError, match="perm"):
        from_onnx(_raw_model("Transpose", [(2, 3)], [3, 2], {"perm": [1, 0, 2]}))


@pytest.mark.parametrize("op,ins,attrs,match", [
    ("transpose", [(2, 3)], {"perm": (1, 0, 2)}, r"perm \(1, 0, 2\).*\(2, 3\)"),
    ("transpose", [(2, 3)], {"perm": (1, 1)}, "not a permutation"),
    ("concat", [(2, 3), (3, 3)], {"axis": 1}, "does not match"),
    ("split", [(4, 3)], {"axis": 0, "sizes": (1, 2)}, r"do not add up to dim 4"),
    ("slice", [(4,)], {"starts": (0, 0), "ends": (1, 1), "steps": (1, 1)}, "rank 1"),
    ("pad", [(2, 3)], {"pads": (1, 1), "mode": "constant"}, "needs 4 pads"),
    ("pad", [(2, 3)], {"pads": (0, 0, 0, 0), "mode": "mirror"}, "mode"),
    ("tile", [(2, 3)], {"repeats": (2,)}, "repeats"),
    ("expand", [(2, 3)], {"shape": (4, 3)}, "do not broadcast"),
    ("depth_to_space", [(1, 3, 2, 2)], {"blocksize": 2}, "blocksize"),
    ("gather_nd", [(2, 3), (2, 3)], {"batch_dims": 0}, "cannot index"),
])
def test_op_shape_rules_reject_bad_attributes(op, ins, attrs, match):
    from kiln.ir import ops
    from kiln.ir.dtype import DType
    from kiln.ir.graph import TensorType

    types = [TensorType(s, DType.float32 if k == 0 or op != "gather_nd" else DType.int64) for k, s in enumerate(ins)]
    with pytest.raises(KilnError, match=match):
        ops.infer_types(op, types, attrs)


def test_squeeze_non_unit_axis():
    from kiln.frontend.onnx import from_onnx

    with pytest.raises(KilnError):
        from_onnx(_raw_model("Squeeze", [(2, 3), np.array([0], np.int64)], [3], opset=13))


def test_split_uneven_without_sizes():
    from kiln.frontend.onnx import from_onnx

    node = helper.make_node("Split", ["x"], ["a", "b"], axis=0)
    model = make_model([node], [("x", np.float32, [5])], [(n, np.float32, [2]) for n in "ab"], opset=13)
    with pytest.raises(KilnError, match="split"):  # ONNX shape inference or kiln
        from_onnx(model)
