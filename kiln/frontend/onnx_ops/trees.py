"""Converters for tree ensembles: TreeEnsemble (ai.onnx.ml 5) and TreeEnsembleRegressor
(ai.onnx.ml 1 and 3) -- random forests and gradient-boosted trees as scikit-learn, XGBoost
and LightGBM export them.

Both attribute layouts become one flat :class:`Forest` table: a row per node of every tree
(leaves included), each row with its feature, threshold, comparison, and the rows its true
and false branches lead to; a leaf leads to itself. One ``tree_walk`` op
(``kiln/ir/ops/trees.py``) then finds each sample's leaf in each tree -- ``depth`` steps
of ``row = next[row, compare(X[n, feature[row]], threshold[row]) ? 0 : 1]``, the deepest
root-to-leaf path, so every sample ends on a leaf -- the same compute definition on every
target, microcontrollers included; the leaves' weights are gathered and aggregated:

    leaf = tree_walk(X, tables)                   # [N, T] leaf rows
    Y = aggregate over trees of leaf_weight[leaf] # [N, n_targets]

Aggregation follows ONNX Runtime: SUM and AVERAGE (divided by the number of trees) add
the leaves' weights per target; MIN and MAX take the extreme over the leaves that carry a
weight for the target; ``base_values`` are added afterwards, then the post-transform
(:func:`kiln.frontend.onnx_ops.ml.post_transform`). A target that none of a sample's
leaves carries a weight for is 0 -- base value not added -- as in ONNX Runtime (ONNX's
reference would add the base value).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.ml import (ML, as_float32, as_rows, binary_outputs, class_labels, classifier_outputs,
                                       floats_attr, op, post_transform)
from kiln.ir.dtype import DType

# comparison codes, as TreeEnsemble (version 5) numbers them; LEAF is Kiln's own
LEQ, LT, GTE, GT, EQ, NEQ, MEMBER, LEAF = range(8)
_COMPARE = {LEQ: "le", LT: "lt", GTE: "ge", GT: "gt", EQ: "eq", NEQ: "ne"}
_MODE_NAMES = {"BRANCH_LEQ": LEQ, "BRANCH_LT": LT, "BRANCH_GTE": GTE, "BRANCH_GT": GT, "BRANCH_EQ": EQ,
               "BRANCH_NEQ": NEQ, "LEAF": LEAF}
_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")  # TreeEnsemble's codes 0..3
_POST = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


@dataclass
class Forest:
    """Every node of every tree as one row (see the module docstring)."""

    feature: np.ndarray          # int64 [M]
    threshold: np.ndarray        # float64 [M]
    mode: np.ndarray             # int64 [M]: LEQ .. MEMBER, or LEAF
    true_next: np.ndarray        # int64 [M]: rows; a leaf points at itself
    false_next: np.ndarray       # int64 [M]
    missing_true: np.ndarray     # bool [M]: a NaN feature takes the true branch
    roots: list[int]             # a row per tree
    leaf_weight: np.ndarray      # float64 [M, n_targets]: a leaf's weights, 0 elsewhere
    leaf_has: np.ndarray         # bool [M, n_targets]: whether the leaf carries a weight for the target
    members: list = field(default_factory=list)  # per row, the set a MEMBER node tests (else empty)
    consts: dict = field(default_factory=dict)   # hint -> the graph constant holding that table


def depth(ctx, forest: Forest) -> int:
    """Branch nodes on the longest root-to-leaf path; a cycle is an invalid model."""
    rows = len(forest.mode)
    memo: dict[int, int] = {}
    for root in forest.roots:
        stack, on_path = [(root, False)], set()
        while stack:
            r, done = stack.pop()
            if done:
                on_path.discard(r)
                if forest.mode[r] != LEAF:
                    memo[r] = 1 + max(memo[int(forest.true_next[r])], memo[int(forest.false_next[r])])
                continue
            if r in memo:
                continue
            if not 0 <= r < rows:
                ctx.fail(f"a branch leads to node row {r}; the ensemble has {rows}")
            if forest.mode[r] == LEAF:
                memo[r] = 0
                continue
            if r in on_path:
                ctx.fail("the trees' branches form a cycle; expected each tree to be a tree")
            on_path.add(r)
            stack.append((r, True))
            stack += [(int(forest.true_next[r]), False), (int(forest.false_next[r]), False)]
    return max((memo[r] for r in forest.roots), default=0)


def _table(ctx, forest: Forest, values: np.ndarray, hint: str) -> str:
    """The forest's constant table under ``hint``, added to the graph the first time it is asked for."""
    if hint not in forest.consts:
        forest.consts[hint] = ctx.add_const(np.ascontiguousarray(values), hint)
    return forest.consts[hint]


def _walk(ctx, forest: Forest, x: str, steps: int, dt) -> str:
    """[N, T] int32: the leaf row each sample reaches in each tree (``tree_walk``,
    kiln/ir/ops/trees.py), the node table passed as constants."""
    branches = forest.mode != LEAF
    codes = sorted({int(m) for m in forest.mode[branches]})
    comparisons = tuple("member" if m == MEMBER else _COMPARE[m] for m in codes)

    def ints(values, hint: str) -> str:  # node rows, feature numbers: int32
        return _table(ctx, forest, np.asarray(values).astype(np.int32), hint)

    # a leaf's feature is read too (its step leads back to it): 0, a column X always has
    inputs = [x, ints(np.where(branches, forest.feature, 0), "tree_feature"),
              _table(ctx, forest, forest.threshold.astype(dt), "tree_threshold"),
              ints(np.stack([forest.true_next, forest.false_next], axis=1), "tree_next"),
              ints(forest.roots, "tree_roots")]
    if len(codes) > 1:  # each row's comparison, as its position in ``comparisons`` (leaves: 0)
        position = {m: k for k, m in enumerate(codes)}
        inputs.append(ints([position.get(int(m), 0) for m in forest.mode], "tree_mode"))
    missing = bool(forest.missing_true[branches].any())
    if missing:
        inputs.append(_table(ctx, forest, forest.missing_true & branches, "tree_missing"))
    if MEMBER in codes:  # each row's set, padded with NaN (never equal)
        width = max(len(s) for s in forest.members)
        table = np.full((len(forest.members), width), np.nan, dt)
        for r, s in enumerate(forest.members):
            table[r, :len(s)] = sorted(s)
        inputs.append(_table(ctx, forest, table, "tree_members"))
    return op(ctx, "tree_walk", inputs, {"depth": steps, "comparisons": comparisons, "missing": missing})


def emit_forest(ctx, x: str, forest: Forest, aggregate: str, base_values) -> str:
    """[N, n_targets] scores of ``x`` ([N, F], float) through the ensemble."""
    dt = ctx.type(x).dtype.np
    used = forest.feature[forest.mode != LEAF]
    width = ctx.shape(x)[1]
    if used.size and (used.min() < 0 or (isinstance(width, int) and used.max() >= width)):
        ctx.fail(f"the trees test features {used.min()}..{used.max()}; X has {width} features")
    idx = _walk(ctx, forest, x, depth(ctx, forest), dt)
    weights = op(ctx, "gather", [_table(ctx, forest, forest.leaf_weight.astype(dt), "leaf_weight"), idx], {"axis": 0})
    over_trees = {"axes": (1,), "keepdims": False}
    leaves = forest.mode == LEAF
    has = None
    if aggregate in ("MIN", "MAX") or not forest.leaf_has[leaves].all():
        has = op(ctx, "gather", [_table(ctx, forest, forest.leaf_has, "leaf_has"), idx], {"axis": 0})
    if aggregate in ("SUM", "AVERAGE"):
        y = op(ctx, "reduce_sum", [weights], over_trees)
        if aggregate == "AVERAGE":
            y = op(ctx, "div", [y, ctx.add_const(np.array(len(forest.roots), dt))])
    elif aggregate in ("MIN", "MAX"):
        far = ctx.add_const(np.array(np.inf if aggregate == "MIN" else -np.inf, dt))
        y = op(ctx, f"reduce_{aggregate.lower()}", [op(ctx, "where", [has, weights, far])], over_trees)
    else:
        ctx.fail(f"aggregate_function {aggregate!r} is not one of {', '.join(_AGGREGATES)}")
    if base_values is not None and len(base_values):
        if len(base_values) != forest.leaf_weight.shape[1]:
            ctx.fail(f"base_values has {len(base_values)} values; expected one per target "
                     f"({forest.leaf_weight.shape[1]})")
        y = op(ctx, "add", [y, ctx.add_const(np.asarray(base_values, dt), "base_values")])
    if has is not None:  # a target no reached leaf carries a weight for is 0, base value or not
        any_has = op(ctx, "reduce_max", [op(ctx, "cast", [has], {"to": DType.int32.value})], over_trees)
        none = op(ctx, "eq", [any_has, ctx.add_const(np.array(0, np.int32))])
        y = op(ctx, "where", [none, ctx.add_const(np.array(0, dt)), y])
    return y


def _leaf_tables(ctx, rows: int, n_targets: int, leaves, aggregate: str):
    """(leaf_weight, leaf_has) from (row, target, weight) triples; several weights of one leaf
    for one target combine as the aggregate would."""
    weight, has = np.zeros((rows, n_targets)), np.zeros((rows, n_targets), bool)
    for r, t, w in leaves:
        if not 0 <= t < n_targets:
            ctx.fail(f"a leaf targets {t}; expected 0..{n_targets - 1} (n_targets = {n_targets})")
        if has[r, t] and aggregate in ("MIN", "MAX"):
            w = min(weight[r, t], w) if aggregate == "MIN" else max(weight[r, t], w)
        elif has[r, t]:
            w = weight[r, t] + w
        weight[r, t], has[r, t] = w, True
    return weight, has


def _ints(ctx, name: str, n: int | None = None, default=None) -> np.ndarray:
    v = ctx.attr(name, default)
    if v is None:
        ctx.fail(f"attribute {name} is missing")
    a = np.asarray(v, np.int64).reshape(-1)
    if n is not None and a.size != n:
        ctx.fail(f"attribute {name} has {a.size} values; expected {n} (one per node)")
    return a


@converter("TreeEnsemble", domain=ML)
def _tree_ensemble(ctx, node):
    """Version 5: branch nodes and leaves in separate lists; a branch names a leaf or a node."""
    x = ctx.input(0)
    if not ctx.type(x).dtype.is_float:
        ctx.fail(f"X is {ctx.type(x).dtype}; expected a float type")
    x, _ = as_rows(ctx, x, "TreeEnsemble X")
    modes = _ints(ctx, "nodes_modes")
    n = modes.size
    splits = floats_attr(ctx, "nodes_splits", np.float64)
    feature = _ints(ctx, "nodes_featureids", n)
    tn, fn = _ints(ctx, "nodes_truenodeids", n), _ints(ctx, "nodes_falsenodeids", n)
    tl, fl = _ints(ctx, "nodes_trueleafs", n), _ints(ctx, "nodes_falseleafs", n)
    missing = _ints(ctx, "nodes_missing_value_tracks_true", n, [0] * n).astype(bool)
    leaf_target = _ints(ctx, "leaf_targetids")
    leaf_w = floats_attr(ctx, "leaf_weights", np.float64)
    if splits is None or splits.size != n or leaf_w is None or leaf_w.size != leaf_target.size:
        ctx.fail("nodes_splits needs one value per node and leaf_weights one per leaf_targetids entry")
    if modes.min(initial=0) < 0 or modes.max(initial=0) > MEMBER:
        ctx.fail(f"nodes_modes holds {sorted(set(modes.tolist()))}; expected codes 0..6")
    leaves = leaf_target.size
    rows = n + leaves
    members = [set() for _ in range(rows)]
    if (modes == MEMBER).any():
        values = floats_attr(ctx, "membership_values", np.float64)
        if values is None:
            ctx.fail("set-membership nodes (mode 6) need membership_values")
        groups = np.split(values, np.flatnonzero(np.isnan(values)) + 1)
        member_rows = np.flatnonzero(modes == MEMBER)
        if len(groups) < len(member_rows):
            ctx.fail(f"membership_values holds {len(groups) - 1} NaN-ended sets; expected one per set-membership "
                     f"node ({len(member_rows)})")
        for r, g in zip(member_rows, groups):
            members[r] = set(g[~np.isnan(g)].tolist())
    leaf_row = np.arange(leaves) + n
    forest = Forest(
        feature=np.concatenate([feature, np.zeros(leaves, np.int64)]),
        threshold=np.concatenate([np.nan_to_num(splits), np.zeros(leaves)]),
        mode=np.concatenate([modes, np.full(leaves, LEAF)]),
        true_next=np.concatenate([np.where(tl != 0, tn + n, tn), leaf_row]),
        false_next=np.concatenate([np.where(fl != 0, fn + n, fn), leaf_row]),
        missing_true=np.concatenate([missing, np.zeros(leaves, bool)]),
        roots=[], leaf_weight=None, leaf_has=None, members=members)
    for r in _ints(ctx, "tree_roots"):
        if not 0 <= r < n:
            ctx.fail(f"tree_roots names node {r}; expected 0..{n - 1}")
        single_leaf = tl[r] and fl[r] and tn[r] == fn[r]  # a tree that is one leaf
        forest.roots.append(int(tn[r] + n) if single_leaf else int(r))
    aggregate = _code(ctx, "aggregate_function", _AGGREGATES, 1)
    n_targets = int(ctx.attr("n_targets", 1))
    forest.leaf_weight, forest.leaf_has = _leaf_tables(
        ctx, rows, n_targets, [(n + i, int(t), float(w)) for i, (t, w) in enumerate(zip(leaf_target, leaf_w))],
        aggregate)
    y = emit_forest(ctx, x, forest, aggregate, None)
    y = post_transform(ctx, y, _code(ctx, "post_transform", _POST, 0))
    return ctx.emit("identity", [y], out_names=ctx.outputs())


def _code(ctx, name: str, names: tuple, default: int) -> str:
    v = int(ctx.attr(name, default))
    if not 0 <= v < len(names):
        ctx.fail(f"{name} is {v}; expected 0..{len(names) - 1} ({', '.join(names)})")
    return names[v]


@converter("TreeEnsembleRegressor", domain=ML)
def _tree_ensemble_regressor(ctx, node):
    """Versions 1 and 3: every node (leaves too) a row named by (tree id, node id)."""
    x, _ = as_rows(ctx, as_float32(ctx, ctx.input(0)), "TreeEnsembleRegressor X")
    forest, row_of = _forest_by_ids(ctx)
    aggregate = ctx.attr("aggregate_function", "SUM")
    n_targets = int(ctx.attr("n_targets", 1))
    leaves = [(row_of(t, nid), int(k), float(w)) for t, nid, k, w in zip(
        _ints(ctx, "target_treeids"), _ints(ctx, "target_nodeids"), _ints(ctx, "target_ids"),
        floats_attr(ctx, "target_weights", np.float64, []))]
    forest.leaf_weight, forest.leaf_has = _leaf_tables(ctx, len(forest.mode), n_targets, leaves, aggregate)
    y = emit_forest(ctx, x, forest, aggregate, floats_attr(ctx, "base_values", np.float64))
    y = post_transform(ctx, y, ctx.attr("post_transform", "NONE"))
    return ctx.emit("identity", [y], out_names=ctx.outputs())


def _forest_by_ids(ctx):
    """The versions-1/3 layout -- parallel ``nodes_*`` lists keyed by (tree id, node id) --
    as a Forest without leaf tables, and the row of a (tree id, node id) pair."""
    names = ctx.attr("nodes_modes")
    if not names:
        ctx.fail("attribute nodes_modes is missing")
    n = len(names)
    unknown = sorted(set(names) - set(_MODE_NAMES))
    if unknown:
        ctx.fail(f"nodes_modes holds {unknown}; expected {', '.join(_MODE_NAMES)}")
    trees, ids = _ints(ctx, "nodes_treeids", n), _ints(ctx, "nodes_nodeids", n)
    row = {(int(t), int(i)): r for r, (t, i) in enumerate(zip(trees, ids))}
    if len(row) != n:
        ctx.fail("two nodes share a (tree id, node id) pair")
    mode = np.array([_MODE_NAMES[m] for m in names], np.int64)
    values = floats_attr(ctx, "nodes_values", np.float64, [0.0] * n)
    if values.size != n:
        ctx.fail(f"nodes_values has {values.size} values; expected {n} (one per node)")

    def next_rows(attr: str) -> np.ndarray:
        out = np.arange(n)  # a leaf leads to itself
        for r, (t, nid) in enumerate(zip(trees, _ints(ctx, attr, n))):
            if mode[r] != LEAF:
                if (int(t), int(nid)) not in row:
                    ctx.fail(f"{attr} of node ({t}, {ids[r]}) names node {nid}, which tree {t} lacks")
                out[r] = row[int(t), int(nid)]
        return out

    true_next, false_next = next_rows("nodes_truenodeids"), next_rows("nodes_falsenodeids")
    # each tree's first node is its root (ONNX's reference and skl2onnx: node id 0 first)
    roots = [int(np.flatnonzero(trees == t)[0]) for t in dict.fromkeys(trees.tolist())]
    forest = Forest(feature=_ints(ctx, "nodes_featureids", n), threshold=values, mode=mode,
                    true_next=true_next, false_next=false_next,
                    missing_true=_ints(ctx, "nodes_missing_value_tracks_true", n, [0] * n).astype(bool),
                    roots=roots, leaf_weight=None, leaf_has=None)

    def row_of(tree, node_id) -> int:
        if (int(tree), int(node_id)) not in row:
            ctx.fail(f"a target names node {node_id} of tree {tree}, which does not exist")
        return row[int(tree), int(node_id)]
    return forest, row_of


@converter("TreeEnsembleClassifier", domain=ML)
def _tree_ensemble_classifier(ctx, node):
    """Versions 1 and 3: per-class scores summed over the trees, the label of the best class.

    Two classes come in two layouts. Weights for both class ids: scores as for more classes.
    Weights for class id 0 only (scikit-learn's binary trees through skl2onnx): one score ``s``
    for the positive class, expanded as ONNX Runtime does -- all weights non-negative
    (probabilities): ``[1 - s, s]``, positive when ``s > 0.5``; mixed signs (boosting
    margins): ``[-s, s]``, positive when ``s > 0``; LOGISTIC applies to ``s`` in both. The
    label is the class of the largest raw score (ONNX's reference; ONNX Runtime 1.32 answers
    0/1 instead of the labels for two classes with both ids)."""
    labels = class_labels(ctx, "classlabels_int64s")
    x, _ = as_rows(ctx, as_float32(ctx, ctx.input(0)), "TreeEnsembleClassifier X")
    forest, row_of = _forest_by_ids(ctx)
    class_ids = _ints(ctx, "class_ids")
    weights = floats_attr(ctx, "class_weights", np.float64, [])
    if weights.size != class_ids.size:
        ctx.fail(f"class_weights has {weights.size} values; expected one per class_ids entry ({class_ids.size})")
    n = labels.size
    binary = n == 2 and set(class_ids.tolist()) == {0}
    if n == 2 and not binary and set(class_ids.tolist()) != {0, 1}:
        ctx.unsupported(f"two classes with weights for class ids {sorted(set(class_ids.tolist()))} "
                        "(class id 0 alone, or both, are supported)")
    leaves = [(row_of(t, nid), int(k), float(w)) for t, nid, k, w in zip(
        _ints(ctx, "class_treeids"), _ints(ctx, "class_nodeids"), class_ids, weights)]
    forest.leaf_weight, forest.leaf_has = _leaf_tables(ctx, len(forest.mode), 1 if binary else n, leaves, "SUM")
    forest.leaf_has[:] = True  # a class without weight scores 0 (its base value), not "no score"
    base = floats_attr(ctx, "base_values", np.float64)
    post = ctx.attr("post_transform", "NONE")
    if not binary:
        if n == 2 and base is not None and base.size:
            ctx.unsupported("base_values with weights for both of two classes (ONNX Runtime's scores then "
                            "differ from ONNX's definition)")
        scores = emit_forest(ctx, x, forest, "SUM", base)
        best = op(ctx, "argmax", [scores], {"axis": 1, "keepdims": False})
        probs = post_transform(ctx, scores, post)
    else:
        if base is not None and base.size > 1:
            ctx.unsupported("two base_values for a binary ensemble with one class column")
        s = emit_forest(ctx, x, forest, "SUM", base)                                   # [N, 1]
        positive = bool((weights >= 0).all())  # probabilities, else boosting margins
        best, probs = binary_outputs(ctx, s, 0.5 if positive else 0.0, post,
                                     "complement" if positive else "negation")
    return classifier_outputs(ctx, labels, best, probs)
