"""Converters for the ai.onnx.ml preprocessing operators on numeric data: Imputer,
OneHotEncoder, LabelEncoder and FeatureVectorizer -- what a scikit-learn pipeline puts in
front of its model (SimpleImputer, OneHotEncoder, ColumnTransformer's concatenation).

Categories and key tables are attributes, so each becomes a comparison against a constant
table along a new last axis: a one-hot row is ``x == categories``; a label lookup takes the
first key equal to ``x`` (NaN keys never match, as in ONNX Runtime) or the default. String
categories and keys are refused (Kiln's tensors are numeric), as is OneHotEncoder's
``zeros=0``, which asks for a run-time error on an unknown category.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.ml import ML, as_float32, op
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.frontend.onnx_ops.shape import take_range
from kiln.ir.dtype import DType


def _matches(ctx, x: str, table: np.ndarray) -> str:
    """[..., K] bool: ``x[...] == table[k]``."""
    shape = tuple(ctx.shape(x))
    column = op(ctx, "reshape", [x], {"shape": (*shape, 1)})
    return op(ctx, "eq", [column, ctx.add_const(table.astype(ctx.type(x).dtype.np), "keys")])


@converter("Imputer", domain=ML)
def _imputer(ctx, node):
    x = ctx.input(0)
    dt = ctx.type(x).dtype
    if dt.is_float:
        values = ctx.attr("imputed_value_floats")
        replaced = float(ctx.attr("replaced_value_float", 0.0))
    else:
        values = ctx.attr("imputed_value_int64s")
        replaced = int(ctx.attr("replaced_value_int64", 0))
    if not values:
        ctx.fail(f"imputed_value_{'floats' if dt.is_float else 'int64s'} is missing for a {dt} input")
    values = np.asarray(values, dt.np)
    width = static_shape(ctx, x, "Imputer X")[-1]
    if values.size not in (1, width):
        ctx.fail(f"{values.size} imputed values; expected 1 or one per feature ({width})")
    if dt.is_float and np.isnan(replaced):
        missing = op(ctx, "isnan", [x])
    else:
        missing = op(ctx, "eq", [x, ctx.add_const(np.array(replaced, dt.np), "replaced")])
    return ctx.emit("where", [missing, ctx.add_const(values, "imputed"), x], out_names=ctx.outputs())


@converter("OneHotEncoder", domain=ML)
def _one_hot_encoder(ctx, node):
    cats = ctx.attr("cats_int64s")
    if cats is None:
        if ctx.attr("cats_strings") is not None:
            ctx.unsupported("string categories (cats_strings); Kiln's tensors are numeric")
        ctx.fail("cats_int64s is missing")
    if int(ctx.attr("zeros", 1)) == 0:
        ctx.unsupported("zeros=0 (an unknown category is a run-time error); Kiln compiles zeros=1, where "
                        "an unknown category encodes as all zeros")
    x = ctx.input(0)
    static_shape(ctx, x, "OneHotEncoder X")
    hot = _matches(ctx, x, np.asarray(cats, np.int64))
    return ctx.emit("cast", [hot], {"to": DType.float32.value}, out_names=ctx.outputs())


def _table(ctx, prefix: str):
    """(numpy array or None) of a LabelEncoder key/value table: the int64 or float list
    attributes (versions 2-3) or the tensor form (version 4)."""
    tensor = ctx.attr(f"{prefix}_tensor")
    if tensor is not None:
        return np.asarray(tensor).reshape(-1)
    for suffix, dtype in (("int64s", np.int64), ("floats", np.float32)):
        v = ctx.attr(f"{prefix}_{suffix}")
        if v is not None:
            return np.asarray(v, dtype)
    if ctx.attr(f"{prefix}_strings") is not None:
        ctx.unsupported(f"string {prefix} ({prefix}_strings); Kiln's tensors are numeric")
    return None


@converter("LabelEncoder", domain=ML)
def _label_encoder(ctx, node):
    keys, values = _table(ctx, "keys"), _table(ctx, "values")
    if keys is None or values is None:
        ctx.fail("LabelEncoder needs a keys table and a values table")
    if keys.size != values.size or keys.size == 0:
        ctx.fail(f"{keys.size} keys and {values.size} values; expected the same number, at least one")
    for t, what in ((keys, "keys"), (values, "values")):
        if t.dtype.kind not in "iuf":
            ctx.unsupported(f"{what} of type {t.dtype}; Kiln's tensors are numeric")
    default = ctx.attr("default_tensor")
    if default is not None:
        default = np.asarray(default).reshape(-1)[0]
    elif values.dtype.kind == "f":
        default = ctx.attr("default_float", -0.0)
    else:
        default = ctx.attr("default_int64", -1)
    out_dtype = DType.of(values.dtype)
    x = ctx.input(0)
    static_shape(ctx, x, "LabelEncoder X")
    hits = op(ctx, "cast", [_matches(ctx, x, keys)], {"to": DType.int32.value})
    last = len(ctx.shape(hits)) - 1
    first = op(ctx, "argmax", [hits], {"axis": last, "keepdims": False})  # the first matching key
    found = op(ctx, "reduce_max", [hits], {"axes": (last,), "keepdims": False})
    value = op(ctx, "gather", [ctx.add_const(values, "values"), first], {"axis": 0})
    fallback = ctx.add_const(np.array(default, out_dtype.np), "default")
    none = op(ctx, "eq", [found, ctx.add_const(np.array(0, np.int32))])
    return ctx.emit("where", [none, fallback, value], out_names=ctx.outputs())


@converter("FeatureVectorizer", domain=ML)
def _feature_vectorizer(ctx, node):
    """The inputs' features side by side, as float32: input ``i`` gives ``inputdimensions[i]``
    columns -- its first ones, or zeros past its width."""
    dims = [int(d) for d in ctx.attr("inputdimensions", [])]
    names = [ctx.input(i) for i in range(len(node.input))]
    if len(dims) != len(names):
        ctx.fail(f"inputdimensions has {len(dims)} entries; expected one per input ({len(names)})")
    parts = []
    for name, want in zip(names, dims):
        shape = static_shape(ctx, name, "FeatureVectorizer input")
        rows = shape[0] if len(shape) > 1 else 1
        have = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        flat = op(ctx, "reshape", [as_float32(ctx, name)], {"shape": (rows, have)})
        if have > want:
            flat = take_range(ctx, flat, 1, 0, want)
        elif have < want:
            flat = op(ctx, "concat", [flat, ctx.add_const(np.zeros((rows, want - have), np.float32))], {"axis": 1})
        parts.append(flat)
    return ctx.emit("concat", parts, {"axis": 1}, out_names=ctx.outputs())
