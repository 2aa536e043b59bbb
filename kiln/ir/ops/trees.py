"""``tree_walk``: the leaf each sample reaches in each tree of a decision-tree ensemble.

The ensemble is one flat node table (``kiln/frontend/onnx_ops/trees.py`` builds it from
ONNX's TreeEnsemble attributes): per node row its feature, threshold, and in ``next`` the
rows its true and false branches lead to; a leaf leads to itself on both. Per (sample,
tree) the walk is an ``Iterate`` -- a state refined in a loop of its own -- from the tree's
root row:

    row = roots[t]
    depth times:
        v = X[n, feature[row]]
        row = next[row, compare(v, threshold[row]) ? 0 : 1]

One node per step, its fields read once, no branch: the compare picks a column of
``next``. ``depth`` steps bring every sample to its leaf, where further steps stay.

Inputs, in order:

    x [N, F] float, feature [M] int32, threshold [M] (x's dtype), next [M, 2] int32,
    roots [T] int32,
    then mode [M] int32 when ``comparisons`` holds more than one (each row's index into it),
    missing [M] bool when ``missing`` (a NaN feature takes the true branch),
    members [M, S] (x's dtype, NaN-padded) when ``comparisons`` holds ``"member"``.

Attributes: ``depth`` (branch nodes on the longest root-to-leaf path) and ``comparisons``
(the tests the branches use, of ``le lt ge gt eq ne member``). Output [N, T] int32: the
leaf rows.

The tables are read without clamping, unlike a gather's run-time indices: the walk is
latency-bound, and clamping the row and the feature made it 1.8-3x slower on the host. The
rows, roots and features they hold are checked when the frontend builds them (every branch
leads to a row of the table, every feature is a column of X): they are constants, never
run-time data.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Expr, Iterate, Select, Un, Var, fresh, join
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.shape import static_shape

COMPARISONS = ("le", "lt", "ge", "gt", "eq", "ne", "member")
ROW = DType.int32


def _inputs(ins, attrs) -> dict:
    """The inputs by name, the optional ones present as the attributes say."""
    comparisons = tuple(attrs["comparisons"])
    names = ["x", "feature", "threshold", "next", "roots"]
    if len(comparisons) > 1:
        names.append("mode")
    if attrs.get("missing"):
        names.append("missing")
    if "member" in comparisons:
        names.append("members")
    if len(ins) != len(names):
        raise ShapeError(f"tree_walk takes {len(names)} inputs ({', '.join(names)}) for comparisons "
                         f"{comparisons}; got {len(ins)}")
    return dict(zip(names, ins))


def _infer(ins, attrs):
    unknown = sorted(set(attrs["comparisons"]) - set(COMPARISONS))
    if unknown:
        raise ShapeError(f"tree_walk comparisons {unknown} are not among {', '.join(COMPARISONS)}")
    t = _inputs(ins, attrs)
    x = static_shape(t["x"], "tree_walk x")
    if len(x) != 2 or not t["x"].dtype.is_float:
        raise ShapeError(f"tree_walk takes x as float rows [N, F]; got {t['x'].dtype}{list(x)}")
    rows = static_shape(t["feature"], "tree_walk feature")
    for name in ("feature", "threshold", "mode", "missing"):
        if name in t and tuple(t[name].shape) != rows:
            raise ShapeError(f"tree_walk {name} has shape {list(t[name].shape)}; expected {list(rows)} "
                             "(one value per node row)")
    if tuple(t["next"].shape) != rows + (2,):
        raise ShapeError(f"tree_walk next has shape {list(t['next'].shape)}; expected {list(rows + (2,))} "
                         "(the true and false branch of each node row)")
    for name in ("feature", "next", "roots", "mode"):
        if name in t and t[name].dtype is not ROW:
            raise ShapeError(f"tree_walk {name} is {t[name].dtype}; expected int32")
    roots = static_shape(t["roots"], "tree_walk roots")
    if len(roots) != 1:
        raise ShapeError(f"tree_walk roots has shape {list(roots)}; expected one row per tree [T]")
    return [TensorType((x[0], roots[0]), ROW)]


def _compute(ins, outs, attrs):
    t = _inputs(ins, attrs)
    x, out = t["x"], outs[0]
    comparisons = tuple(attrs["comparisons"])

    def body(n, tree):
        row = Var(fresh("row"), ROW)
        value = x[n, t["feature"][row]]

        def test(k: int, name: str) -> Expr:
            if name == "member":
                members = t["members"]
                hit = rsum(lambda j: Select(members[row, j].eq(value), Const(1, ROW), Const(0, ROW)),
                           members.shape[1])
                met = hit.gt(Const(0, ROW))
            else:
                met = Bin(name, value, t["threshold"][row], DType.bool)
            if len(comparisons) > 1:  # the row's own comparison
                met = t["mode"][row].eq(Const(k, ROW)).land(met)
            return met

        tests = [test(k, name) for k, name in enumerate(comparisons)]
        if "missing" in t:
            tests.append(Un("isnan", value, DType.bool).land(t["missing"][row]))
        go = join("or", tests) if tests else Const(False, DType.bool)
        branch = Select(go, Const(0, ROW), Const(1, ROW))
        return Iterate(row, t["roots"][tree], t["next"][row, branch], int(attrs["depth"]))

    return [compute(out.name, out.shape, body, ROW, tag="tree_walk", inline=False)]


register("tree_walk", FusionKind.OPAQUE, _infer, _compute)
