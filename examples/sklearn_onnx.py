"""Fitted scikit-learn models written as ONNX ai.onnx.ml nodes, the way skl2onnx lays them
out: trees as TreeEnsembleRegressor / TreeEnsembleClassifier (or TreeEnsemble, version 5),
with fixed batch sizes. The tests (tests/test_onnx_ml.py) and benchmarks/ml_bench.py build
their models here; they need scikit-learn only for the fitted estimators they are given.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

ML = "ai.onnx.ml"


def ml_model(node, inputs, outputs, ml_opset=3):
    """A one-node model importing ai.onnx.ml; inputs/outputs: (name, numpy dtype, shape)."""
    def vi(n, dt, shape):
        return helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)

    graph = helper.make_graph([node], "ml", [vi(*i) for i in inputs], [vi(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, ml_opset)])
    model.ir_version = 8
    return model


_NODE_ATTRS = ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
               "nodes_truenodeids", "nodes_falsenodeids")


def _add_nodes(a: dict, t: int, tree, modes: str = "BRANCH_LEQ") -> list[int]:
    """Append tree ``t``'s nodes to the ``nodes_*`` lists of ``a``; its leaves' node ids."""
    leaves = []
    for i in range(tree.node_count):
        leaf = tree.children_left[i] == -1
        a["nodes_treeids"].append(t)
        a["nodes_nodeids"].append(i)
        a["nodes_featureids"].append(0 if leaf else int(tree.feature[i]))
        a["nodes_values"].append(0.0 if leaf else float(np.float32(tree.threshold[i])))
        a["nodes_modes"].append("LEAF" if leaf else modes)
        a["nodes_truenodeids"].append(0 if leaf else int(tree.children_left[i]))
        a["nodes_falsenodeids"].append(0 if leaf else int(tree.children_right[i]))
        if leaf:
            leaves.append(i)
    return leaves


def regressor_from_sklearn(estimators, n_features, batch, scale=1.0, base=None, aggregate="SUM", post="NONE",
                           modes="BRANCH_LEQ"):
    """A TreeEnsembleRegressor node from fitted scikit-learn trees, laid out as skl2onnx does
    (thresholds as float32, children by node id, leaf values times ``scale``)."""
    a = {k: [] for k in (*_NODE_ATTRS, "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    n_targets = 1
    for t, est in enumerate(estimators):
        tree = est.tree_
        n_targets = tree.value.shape[1]
        for i in _add_nodes(a, t, tree, modes):
            for k in range(n_targets):
                a["target_treeids"].append(t)
                a["target_nodeids"].append(i)
                a["target_ids"].append(k)
                a["target_weights"].append(float(tree.value[i, k, 0]) * scale)
    attrs = dict(a, n_targets=n_targets, aggregate_function=aggregate, post_transform=post)
    if base is not None:
        attrs["base_values"] = list(base)
    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain=ML, **attrs)
    return ml_model(node, [("x", np.float32, [batch, n_features])], [("y", np.float32, [batch, n_targets])])


def classifier_from_sklearn(estimators, n_features, batch, n_classes, one_column=False, scale=1.0, base=None,
                            post="NONE", labels=None):
    """A TreeEnsembleClassifier node from fitted trees. ``one_column``: a binary model as one
    score per leaf under class id 0 (the positive class's probability, or a boosting margin)."""
    a = {k: [] for k in (*_NODE_ATTRS, "class_treeids", "class_nodeids", "class_ids", "class_weights")}
    for t, est in enumerate(estimators):
        tree = est.tree_
        for i in _add_nodes(a, t, tree):
            value = tree.value[i, :, :]
            if value.shape[1] > 1:  # a classification tree: class fractions
                per_class = value[0] / value[0].sum()
            else:                   # a regression tree inside a boosted classifier
                per_class = value[:, 0]
            columns = [(0, per_class[-1])] if one_column else list(enumerate(per_class))
            for k, w in columns:
                a["class_treeids"].append(t)
                a["class_nodeids"].append(i)
                a["class_ids"].append(k)
                a["class_weights"].append(float(w) * scale)
    attrs = dict(a, post_transform=post, classlabels_int64s=list(labels or range(n_classes)))
    if base is not None:
        attrs["base_values"] = list(base)
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["label", "probabilities"], domain=ML, **attrs)
    return ml_model(node, [("x", np.float32, [batch, n_features])],
                    [("label", np.int64, [batch]), ("probabilities", np.float32, [batch, n_classes])])


def tree_ensemble_v5(estimators, n_features, batch, dtype=np.float32):
    """The same trees in TreeEnsemble's version-5 layout (branch nodes and leaves apart)."""
    from onnx.helper import make_tensor

    splits, feats, tn, tl, fn, fl, roots, leaf_t, leaf_w = ([] for _ in range(9))
    for est in estimators:
        tree = est.tree_
        branch = {i: len(splits) + k for k, i in enumerate(np.flatnonzero(tree.children_left != -1))}
        leaf = {i: len(leaf_t) + k for k, i in enumerate(np.flatnonzero(tree.children_left == -1))}
        roots.append(branch[0])
        for i in branch:
            splits.append(float(tree.threshold[i]))
            feats.append(int(tree.feature[i]))
            for child, ids, leafs in ((tree.children_left[i], tn, tl), (tree.children_right[i], fn, fl)):
                ids.append(leaf[child] if child in leaf else branch[child])
                leafs.append(int(child in leaf))
        for i in leaf:
            leaf_t.append(0)
            leaf_w.append(float(tree.value[i, 0, 0]) / len(estimators))
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain=ML, n_targets=1, aggregate_function=1, tree_roots=roots,
        nodes_modes=make_tensor("m", onnx.TensorProto.UINT8, (len(splits),), np.zeros(len(splits), np.uint8)),
        nodes_featureids=feats, nodes_splits=make_tensor("s", onnx_type, (len(splits),), np.asarray(splits, dtype)),
        nodes_truenodeids=tn, nodes_trueleafs=tl, nodes_falsenodeids=fn, nodes_falseleafs=fl,
        leaf_targetids=leaf_t, leaf_weights=make_tensor("w", onnx_type, (len(leaf_w),), np.asarray(leaf_w, dtype)))
    return ml_model(node, [("x", dtype, [batch, n_features])], [("y", dtype, [batch, 1])], ml_opset=5)


def svc_from_sklearn(svc, n_features, batch, probabilities=False):
    """An SVMClassifier node from a fitted ``sklearn.svm.SVC`` (one-vs-one), laid out as
    skl2onnx does: for two classes the coefficients and rho negated (libsvm's binary sign)."""
    sign = -1.0 if len(svc.classes_) == 2 else 1.0
    attrs = dict(kernel_type=svc.kernel.upper(), kernel_params=[float(svc._gamma), float(svc.coef0), float(svc.degree)],
                 vectors_per_class=[int(v) for v in svc.n_support_],
                 support_vectors=svc.support_vectors_.reshape(-1).tolist(),
                 coefficients=(sign * svc.dual_coef_).reshape(-1).tolist(), rho=(sign * svc.intercept_).tolist(),
                 classlabels_ints=[int(c) for c in svc.classes_], post_transform="NONE")
    if probabilities:
        attrs.update(prob_a=svc.probA_.tolist(), prob_b=svc.probB_.tolist())
    node = helper.make_node("SVMClassifier", ["x"], ["label", "scores"], domain=ML, **attrs)
    n = len(svc.classes_)
    width = 2 if n == 2 else n * (n - 1) // 2
    return ml_model(node, [("x", np.float32, [batch, n_features])],
                    [("label", np.int64, [batch]), ("scores", np.float32, [batch, width])], 1)


__all__ = ["svc_from_sklearn", "ML", "ml_model", "regressor_from_sklearn", "classifier_from_sklearn", "tree_ensemble_v5"]
