"""ai.onnx.ml operators (kiln/frontend/onnx_ops/ml.py and trees.py) against ONNX Runtime,
on every backend: Binarizer, ArrayFeatureExtractor, Scaler, Normalizer, LinearRegressor,
and tree ensembles -- scikit-learn forests written out the way skl2onnx writes them (the
TreeEnsembleRegressor layout) and in TreeEnsemble's version-5 layout -- plus a random
forest on a Cortex-M4 under QEMU, and the errors bad ensembles get."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
from examples.sklearn_onnx import ML, classifier_from_sklearn, ml_model, regressor_from_sklearn, tree_ensemble_v5
from kiln.errors import KilnError, ShapeError, UnsupportedOperatorError
from tests.util import BACKENDS, assert_close, check_against_ort, kiln_run, ort_run


def _node(op, **attrs):
    return helper.make_node(op, ["x"], ["y"], domain=ML, **attrs)


# -- the arithmetic operators ---------------------------------------------------------------------

X = np.array([[-1, -2, -0.5], [0, 0, 0], [1, -3, 2], [-1, 0, 0]], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer(norm, backend):
    """ONNX Runtime's MAX divides by the largest value, not magnitude; a zero divisor leaves the row."""
    check_against_ort(ml_model(_node("Normalizer", norm=norm), [("x", np.float32, [4, 3])],
                               [("y", np.float32, [4, 3])]), {"x": X}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalizer_of_integers_and_a_vector(backend):
    check_against_ort(ml_model(_node("Normalizer", norm="L2"), [("x", np.int64, [2, 3])], [("y", np.float32, [2, 3])]),
                      {"x": np.array([[0, -1, 3], [4, 4, 2]], np.int64)}, backend)
    check_against_ort(ml_model(_node("Normalizer", norm="L1"), [("x", np.float32, [3])], [("y", np.float32, [3])]),
                      {"x": np.array([0.5, -1, 3], np.float32)}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
def test_linear_regressor(post, backend):
    node = _node("LinearRegressor", coefficients=[1.0, 2, 3, 4, 5, 6], intercepts=[0.5, 1.0], targets=2,
                 post_transform=post)
    check_against_ort(ml_model(node, [("x", np.float32, [4, 3])], [("y", np.float32, [4, 2])]), {"x": X}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_regressor_without_intercepts_and_scaler_of_int64(backend):
    check_against_ort(ml_model(_node("LinearRegressor", coefficients=[1.0, 2, 3]), [("x", np.float32, [4, 3])],
                               [("y", np.float32, [4, 1])]), {"x": X}, backend)
    check_against_ort(ml_model(_node("Scaler", offset=[1.0, 0, -1], scale=[2.0, 3, 4]), [("x", np.int64, [2, 3])],
                               [("y", np.float32, [2, 3])]), {"x": np.array([[1, 2, 3], [-4, 5, 0]], np.int64)},
                      backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, threshold", [(np.float32, 0.25), (np.int64, -0.5), (np.int32, 1.5)])
def test_binarizer(dtype, threshold, backend):
    """ONNX Runtime implements float32 only: integers against ONNX's own definition, x > t."""
    x = np.array([[0, -1, 3], [1, 2, -2]], dtype)
    model = ml_model(_node("Binarizer", threshold=threshold), [("x", dtype, [2, 3])], [("y", dtype, [2, 3])])
    if dtype == np.float32:
        check_against_ort(model, {"x": x}, backend)
    else:
        assert_close(kiln_run(model, {"x": x}, backend), {"y": (x > threshold).astype(dtype)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_array_feature_extractor(backend):
    node = helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], domain=ML)
    model = ml_model(node, [("x", np.float32, [2, 3, 5]), ("i", np.int64, [2, 2])], [("y", np.float32, [2, 3, 4])])
    feeds = {"x": np.arange(30, dtype=np.float32).reshape(2, 3, 5), "i": np.array([[4, 0], [2, 2]], np.int64)}
    check_against_ort(model, feeds, backend)
    vector = ml_model(node, [("x", np.float32, [5]), ("i", np.int64, [3])], [("y", np.float32, [1, 3])])
    check_against_ort(vector, {"x": np.arange(5, dtype=np.float32), "i": np.array([1, 4, 0], np.int64)}, backend)


# -- tree ensembles ----------------------------------------------------------------------------

def _dataset(loader: str):
    """(float32 features, targets) of one of scikit-learn's bundled data sets."""
    from sklearn import datasets

    x, y = getattr(datasets, loader)(return_X_y=True)
    return x.astype(np.float32), y


def assert_mostly_sklearn(onnx_says, sklearn_says):
    """The ONNX model is the fitted forest: ONNX Runtime agrees with scikit-learn, except where
    a feature falls between a float64 threshold and its float32 rounding (as with skl2onnx)."""
    agree = np.isclose(onnx_says, sklearn_says, rtol=1e-4)
    assert agree.mean() >= 0.95, f"only {agree.sum()} of {agree.size} predictions agree"


@pytest.fixture(scope="module")
def diabetes():
    return _dataset("load_diabetes")


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_forest_matches_sklearn_and_onnxruntime(diabetes, backend):
    from sklearn.ensemble import RandomForestRegressor

    x, y = diabetes
    rf = RandomForestRegressor(n_estimators=12, max_depth=7, random_state=0).fit(x, y)
    model = regressor_from_sklearn(rf.estimators_, x.shape[1], 64, aggregate="AVERAGE")
    feeds = {"x": x[:64]}
    want = ort_run(model, feeds)
    assert_mostly_sklearn(want["y"][:, 0], rf.predict(x[:64]))
    check_against_ort(model, feeds, backend, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_boosting_with_base_value(diabetes, backend):
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = diabetes
    gb = GradientBoostingRegressor(n_estimators=20, max_depth=3, learning_rate=0.2, random_state=0).fit(x, y)
    model = regressor_from_sklearn(gb.estimators_[:, 0], x.shape[1], 40, scale=gb.learning_rate,
                                   base=[float(gb.init_.constant_[0, 0])])
    feeds = {"x": x[100:140]}
    assert_mostly_sklearn(ort_run(model, feeds)["y"][:, 0], gb.predict(x[100:140]))
    check_against_ort(model, feeds, backend, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregate", ["MIN", "MAX", "SUM"])
def test_multi_target_tree_with_every_comparison_and_missing_values(aggregate, backend):
    """Two targets, each comparison once, a leaf with no weight for target 1 (MIN/MAX then
    take 0 where no tree has one), NaN features routed by missing_value_tracks_true."""
    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
    ids = list(range(13))
    branch = {0: (1, 2), 1: (3, 4), 2: (5, 6), 3: (7, 8), 4: (9, 10), 5: (11, 12)}
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain=ML, n_targets=2, aggregate_function=aggregate,
        nodes_treeids=[0] * 13 + [1, 1, 1], nodes_nodeids=ids + [0, 1, 2],
        nodes_featureids=[0, 1, 2, 0, 1, 2] + [0] * 7 + [1, 0, 0],
        nodes_values=[0.0, 0.5, -0.5, 1.0, 0.25, 0.25] + [0.0] * 7 + [0.0, 0.0, 0.0],
        nodes_modes=modes + ["LEAF"] * 7 + ["BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_truenodeids=[branch.get(i, (0, 0))[0] for i in ids] + [1, 0, 0],
        nodes_falsenodeids=[branch.get(i, (0, 0))[1] for i in ids] + [2, 0, 0],
        nodes_missing_value_tracks_true=[1, 0, 1, 0, 1, 0] + [0] * 7 + [1, 0, 0],
        target_treeids=[0] * 7 + [0] * 6 + [1, 1, 1],
        target_nodeids=list(range(6, 13)) + list(range(6, 12)) + [1, 2, 2],
        target_ids=[0] * 7 + [1] * 6 + [0, 0, 1],
        target_weights=[float(v) for v in range(1, 8)] + [-1.0, -2, -3, -4, -5, -6] + [0.5, 2.5, 9.0],
        base_values=[0.25, -0.75])
    model = ml_model(node, [("x", np.float32, [64, 3])], [("y", np.float32, [64, 2])])
    rng = np.random.default_rng(3)
    x = rng.choice(np.array([-1, -0.5, 0, 0.25, 0.5, 1, 2], np.float32), (64, 3))
    x[rng.random((64, 3)) < 0.15] = np.nan
    check_against_ort(model, {"x": x}, backend, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tree_ensemble_v5_random_forest(diabetes, dtype, backend):
    from sklearn.ensemble import RandomForestRegressor

    x, y = diabetes
    rf = RandomForestRegressor(n_estimators=6, max_depth=6, random_state=1).fit(x, y)
    model = tree_ensemble_v5(rf.estimators_, x.shape[1], 48, dtype)
    feeds = {"x": x[:48].astype(dtype)}
    assert_mostly_sklearn(ort_run(model, feeds)["y"][:, 0], rf.predict(x[:48]))
    check_against_ort(model, feeds, backend, rtol=1e-5, atol=1e-3)


def test_random_forest_on_cortex_m4(diabetes):
    """The forest compiled to C99 for a microcontroller and run under QEMU: the same numbers
    as ONNX Runtime, no heap, the tree tables in flash."""
    from sklearn.ensemble import RandomForestRegressor
    from tests.conftest import require_toolchain

    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    x, y = diabetes
    rf = RandomForestRegressor(n_estimators=8, max_depth=5, random_state=2).fit(x, y)
    model = regressor_from_sklearn(rf.estimators_, x.shape[1], 4, aggregate="AVERAGE")
    feeds = {"x": x[:4]}
    runner = kiln.compile(model, target="cortex-m4").build()
    assert_close(runner(feeds), ort_run(model, feeds), rtol=1e-5, atol=1e-3)


# -- bad ensembles ---------------------------------------------------------------------------

def _tiny(**over):
    attrs = dict(nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                 nodes_values=[0.5, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
                 nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0], target_treeids=[0, 0],
                 target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0], n_targets=1)
    attrs.update(over)
    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain=ML, **attrs)
    return ml_model(node, [("x", np.float32, [2, 2])], [("y", np.float32, [2, 1])])


@pytest.mark.parametrize("over, error, message", [
    ({"nodes_truenodeids": [0, 0, 0]}, ShapeError, "cycle"),
    ({"nodes_modes": ["BRANCH_SOMETIMES", "LEAF", "LEAF"]}, ShapeError, "expected BRANCH_LEQ"),
    ({"nodes_featureids": [5, 0, 0]}, ShapeError, "X has 2 features"),
    ({"nodes_falsenodeids": [7, 0, 0]}, ShapeError, "names node 7"),
    ({"target_ids": [0, 3]}, ShapeError, r"expected 0..0 \(n_targets = 1\)"),
    ({"aggregate_function": "MEDIAN"}, ShapeError, "is not one of AVERAGE, SUM, MIN, MAX"),
    ({"post_transform": "PROBIT"}, UnsupportedOperatorError, "PROBIT"),
    ({"base_values": [1.0, 2.0]}, ShapeError, "one per target"),
])
def test_bad_ensembles_are_refused(over, error, message):
    with pytest.raises(error, match=message):
        kiln.compile(_tiny(**over), target="host")


def test_tiny_ensemble_and_bad_scalar_ops():
    x = {"x": np.array([[0.25, 1], [0.75, 1]], np.float32)}
    assert_close(kiln.compile(_tiny(), target="host").run(x), {"y": np.array([[1.0], [2.0]], np.float32)})
    with pytest.raises(ShapeError, match="expected 1 or one per feature"):
        kiln.compile(ml_model(_node("Scaler", offset=[0.0, 1.0], scale=[1.0]), [("x", np.float32, [2, 3])],
                              [("y", np.float32, [2, 3])]), target="host")
    with pytest.raises(ShapeError, match="expected targets x features"):
        kiln.compile(ml_model(_node("LinearRegressor", coefficients=[1.0, 2.0], targets=1),
                              [("x", np.float32, [2, 3])], [("y", np.float32, [2, 1])]), target="host")
    node = helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], domain=ML)
    bad = ml_model(node, [("x", np.float32, [2, 3])], [("y", np.float32, [2, 1])])
    bad.graph.initializer.append(onnx.numpy_helper.from_array(np.array([3], np.int64), "i"))
    with pytest.raises(KilnError, match=r"reach past the last axis of X \(size 3\)"):
        kiln.compile(bad, target="host")


# -- classifiers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iris():
    return _dataset("load_iris")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("post", ["NONE", "SOFTMAX"])
def test_random_forest_classifier_three_classes(iris, post, backend):
    from sklearn.ensemble import RandomForestClassifier

    x, y = iris
    rf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    model = classifier_from_sklearn(rf.estimators_, 4, 60, 3, scale=1 / 10, post=post, labels=[10, 20, 30])
    feeds = {"x": x[::150 // 60][:60]}
    want = ort_run(model, feeds)
    if post == "NONE":
        assert_mostly_sklearn(want["probabilities"], rf.predict_proba(feeds["x"]))
    check_against_ort(model, feeds, backend, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cancer():
    return _dataset("load_breast_cancer")


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_classifiers_in_one_column(cancer, backend):
    """Probabilities (a random forest: [1 - s, s], positive above 0.5) and boosting margins
    (LOGISTIC over s plus the prior, positive above 0) -- ONNX Runtime's binary layout."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    x, y = cancer
    feeds = {"x": x[:80]}
    rf = RandomForestClassifier(n_estimators=8, max_depth=5, random_state=0).fit(x, y)
    model = classifier_from_sklearn(rf.estimators_, x.shape[1], 80, 2, one_column=True, scale=1 / 8)
    assert_mostly_sklearn(ort_run(model, feeds)["probabilities"], rf.predict_proba(feeds["x"]))
    check_against_ort(model, feeds, backend, rtol=1e-5, atol=1e-5)
    gb = GradientBoostingClassifier(n_estimators=15, max_depth=2, learning_rate=0.3, random_state=0).fit(x, y)
    prior = float(gb._raw_predict_init(x[:1])[0, 0])
    model = classifier_from_sklearn(gb.estimators_[:, 0], x.shape[1], 80, 2, one_column=True, scale=gb.learning_rate,
                                    base=[prior], post="LOGISTIC", labels=[7, 9])
    want = ort_run(model, feeds)
    assert_mostly_sklearn(want["probabilities"], gb.predict_proba(feeds["x"]))
    check_against_ort(model, feeds, backend, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_classes_with_both_columns(cancer, backend):
    """Scores as for more classes; the label of the larger (ONNX's reference -- ONNX Runtime
    answers 0/1 here whatever the labels)."""
    from onnx.reference import ReferenceEvaluator
    from sklearn.ensemble import RandomForestClassifier

    x, y = cancer
    rf = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=3).fit(x, y)
    model = classifier_from_sklearn(rf.estimators_, x.shape[1], 50, 2, scale=1 / 5, labels=[4, 8])
    feeds = {"x": x[:50]}
    got = kiln_run(model, feeds, backend)
    label, probs = ReferenceEvaluator(model).run(None, feeds)
    np.testing.assert_allclose(got["probabilities"], ort_run(model, feeds)["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["probabilities"], probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["label"], label)


@pytest.mark.parametrize("change, message", [
    ({"classlabels_int64s": None, "classlabels_strings": ["a", "b"]}, "(?i)string"),
    ({"class_ids": [1, 1]}, r"class ids \[1\]"),
    ({"post_transform": "SOFTMAX"}, "NONE and LOGISTIC are supported"),
])
def test_unsupported_classifiers_say_why(change, message):
    attrs = dict(nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                 nodes_values=[0.5, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
                 nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0], class_treeids=[0, 0],
                 class_nodeids=[1, 2], class_ids=[0, 0], class_weights=[0.2, 0.9], classlabels_int64s=[0, 1])
    attrs.update(change)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["label", "p"], domain=ML, **attrs)
    model = ml_model(node, [("x", np.float32, [2, 1])], [("label", np.int64, [2]), ("p", np.float32, [2, 2])])
    if "classlabels_strings" in change:
        model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.STRING
    with pytest.raises(UnsupportedOperatorError, match=message):
        kiln.compile(model, target="host")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX"])
def test_logistic_regression_pipeline(iris, cancer, post, backend):
    """scikit-learn's most common pipeline, StandardScaler then LogisticRegression, as
    Scaler -> LinearClassifier: three classes, and a binary model with one coefficient row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    for (x, y), n in ((iris, 30), (cancer, 40)):
        scaler = StandardScaler().fit(x)
        lr = LogisticRegression(max_iter=2000).fit(scaler.transform(x), y)
        if post == "SOFTMAX" and lr.coef_.shape[0] == 1:
            continue  # one coefficient row: NONE and LOGISTIC only
        nodes = [helper.make_node("Scaler", ["x"], ["z"], domain=ML, offset=scaler.mean_.tolist(),
                                  scale=(1 / scaler.scale_).tolist()),
                 helper.make_node("LinearClassifier", ["z"], ["label", "probabilities"], domain=ML,
                                  coefficients=lr.coef_.reshape(-1).tolist(), intercepts=lr.intercept_.tolist(),
                                  classlabels_ints=[int(c) for c in lr.classes_], post_transform=post)]
        k = len(lr.classes_)
        graph = helper.make_graph(nodes, "pipeline", [helper.make_tensor_value_info("x", 1, [n, x.shape[1]])],
                                  [helper.make_tensor_value_info("label", 7, [n]),
                                   helper.make_tensor_value_info("probabilities", 1, [n, k])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 1)])
        model.ir_version = 8
        feeds = {"x": x[::len(x) // n][:n]}
        got = check_against_ort(model, feeds, backend, rtol=1e-4, atol=1e-5)
        assert (got["label"] == lr.predict(scaler.transform(feeds["x"]))).mean() >= 0.95


def test_bad_linear_classifiers_are_refused():
    def model(**attrs):
        node = helper.make_node("LinearClassifier", ["x"], ["label", "p"], domain=ML, **attrs)
        return ml_model(node, [("x", np.float32, [2, 3])], [("label", np.int64, [2]), ("p", np.float32, [2, "k"])], 1)

    with pytest.raises(ShapeError, match=r"expected classes x features \(features = 3\)"):
        kiln.compile(model(coefficients=[1.0, 2.0], classlabels_ints=[0, 1, 2]), target="host")
    with pytest.raises(ShapeError, match=r"expected one per class label \(3\)"):
        kiln.compile(model(coefficients=[1.0] * 6, classlabels_ints=[0, 1, 2]), target="host")
    with pytest.raises(UnsupportedOperatorError, match="NONE and LOGISTIC are supported"):
        kiln.compile(model(coefficients=[1.0] * 3, classlabels_ints=[0, 1], post_transform="SOFTMAX"), target="host")


# -- preprocessing (kiln/frontend/onnx_ops/ml_encoders.py) --------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_imputer(backend):
    x = np.array([[1, np.nan, 3], [0, 2, np.nan]], np.float32)
    for attrs in ({"imputed_value_floats": [9.0], "replaced_value_float": float("nan")},
                  {"imputed_value_floats": [7.0, 8, 9], "replaced_value_float": 0.0}):
        model = ml_model(_node("Imputer", **attrs), [("x", np.float32, [2, 3])], [("y", np.float32, [2, 3])], 1)
        check_against_ort(model, {"x": x}, backend)
    ints = ml_model(_node("Imputer", imputed_value_int64s=[7], replaced_value_int64=0), [("x", np.int64, [2, 2])],
                    [("y", np.int64, [2, 2])], 1)
    check_against_ort(ints, {"x": np.array([[0, 1], [2, 0]], np.int64)}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_and_label_encoders(backend):
    c = np.array([[3, 1], [7, 5]], np.int64)
    hot = ml_model(_node("OneHotEncoder", cats_int64s=[1, 3, 5], zeros=1), [("x", np.int64, [2, 2])],
                   [("y", np.float32, [2, 2, 3])], 1)
    check_against_ort(hot, {"x": c}, backend)
    for attrs, out in (({"keys_int64s": [1, 3, 5], "values_int64s": [10, 30, 50], "default_int64": -1}, np.int64),
                       ({"keys_int64s": [1, 3, 5], "values_floats": [0.1, 0.3, 0.5]}, np.float32)):
        model = ml_model(_node("LabelEncoder", **attrs), [("x", np.int64, [2, 2])], [("y", out, [2, 2])], 2)
        check_against_ort(model, {"x": c}, backend)
    floats = ml_model(_node("LabelEncoder", keys_floats=[1.0, 3.0, float("nan")], values_int64s=[10, 30, 99]),
                      [("x", np.float32, [2, 2])], [("y", np.int64, [2, 2])], 2)
    check_against_ort(floats, {"x": np.array([[1, np.nan], [2, 3]], np.float32)}, backend)  # NaN never matches


@pytest.mark.parametrize("backend", BACKENDS)
def test_feature_vectorizer(backend):
    node = helper.make_node("FeatureVectorizer", ["a", "b"], ["y"], domain=ML, inputdimensions=[1, 4])
    model = ml_model(node, [("a", np.float32, [2, 2]), ("b", np.float32, [2, 3])], [("y", np.float32, [2, 5])], 1)
    feeds = {"a": np.array([[1, 2], [3, 4]], np.float32), "b": np.array([[5, 6, 7], [8, 9, 10]], np.float32)}
    check_against_ort(model, feeds, backend)  # a's first column; b and a zero column


def test_unsupported_encoders_say_why():
    hot = ml_model(_node("OneHotEncoder", cats_int64s=[1, 3], zeros=0), [("x", np.int64, [2])],
                   [("y", np.float32, [2, 2])], 1)
    with pytest.raises(UnsupportedOperatorError, match="zeros=0"):
        kiln.compile(hot, target="host")
    bad = ml_model(_node("LabelEncoder", keys_int64s=[1, 2], values_int64s=[3]), [("x", np.int64, [2])],
                   [("y", np.int64, [2])], 2)
    with pytest.raises(KilnError, match="2 keys and 1 values"):
        kiln.compile(bad, target="host")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", ["rbf", "poly", "linear", "sigmoid"])
def test_svm_regressor(diabetes, kernel, backend):
    """scikit-learn's SVR with each kernel as SVMRegressor: ONNX Runtime and scikit-learn agree."""
    from sklearn.svm import SVR

    x, y = diabetes
    svr = SVR(kernel=kernel, gamma=2.0, coef0=0.5, degree=3, C=50).fit(x[:200], y[:200])
    node = helper.make_node(
        "SVMRegressor", ["x"], ["y"], domain=ML, kernel_type=kernel.upper(),
        kernel_params=[float(svr._gamma), float(svr.coef0), float(svr.degree)],
        support_vectors=svr.support_vectors_.reshape(-1).tolist(), coefficients=svr.dual_coef_.reshape(-1).tolist(),
        rho=[float(svr.intercept_[0])], n_supports=len(svr.support_))
    model = ml_model(node, [("x", np.float32, [30, x.shape[1]])], [("y", np.float32, [30, 1])], 1)
    feeds = {"x": x[300:330]}
    np.testing.assert_allclose(ort_run(model, feeds)["y"][:, 0], svr.predict(feeds["x"]), rtol=1e-4, atol=1e-3)
    check_against_ort(model, feeds, backend, rtol=1e-4, atol=2e-3)


def test_bad_svms_are_refused():
    def model(**attrs):
        base = dict(kernel_type="RBF", kernel_params=[0.5, 0.0, 3.0], support_vectors=[1.0, 2.0, 3.0, 4.0],
                    coefficients=[1.0, -1.0], rho=[0.0], n_supports=2)
        node = helper.make_node("SVMRegressor", ["x"], ["y"], domain=ML, **{**base, **attrs})
        return ml_model(node, [("x", np.float32, [3, 2])], [("y", np.float32, [3, 1])], 1)

    kiln.compile(model(), target="host")
    with pytest.raises(ShapeError, match=r"2 support vectors need 4 support_vectors values \(features = 2\)"):
        kiln.compile(model(support_vectors=[1.0, 2.0, 3.0]), target="host")
    with pytest.raises(KilnError, match="kernel_type"):
        kiln.compile(model(kernel_type="CUBIC"), target="host")
    with pytest.raises(UnsupportedOperatorError, match="one_class=1"):
        kiln.compile(model(one_class=1), target="host")


@pytest.fixture(scope="module")
def digits4():
    x, y = _dataset("load_digits")
    keep = y < 4
    return x[keep] / 16, y[keep]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", ["rbf", "poly", "linear"])
def test_svc_one_vs_one(digits4, kernel, backend):
    """Four classes, six one-vs-one decision values, labels by votes: as scikit-learn's SVC."""
    from sklearn.svm import SVC

    from examples.sklearn_onnx import svc_from_sklearn

    x, y = digits4
    svc = SVC(kernel=kernel, gamma=0.05, coef0=0.5, degree=2, decision_function_shape="ovo").fit(x[:400], y[:400])
    model = svc_from_sklearn(svc, x.shape[1], 40)
    feeds = {"x": x[400:440]}
    got = check_against_ort(model, feeds, backend, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["label"], svc.predict(feeds["x"]))
    np.testing.assert_allclose(got["scores"], svc.decision_function(feeds["x"]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_svc(cancer, backend):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from examples.sklearn_onnx import svc_from_sklearn

    x, y = cancer
    x = StandardScaler().fit_transform(x).astype(np.float32)
    svc = SVC(kernel="rbf", gamma=0.05).fit(x[:400], y[:400])
    feeds = {"x": x[400:460]}
    got = check_against_ort(svc_from_sklearn(svc, x.shape[1], 60), feeds, backend, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["label"], svc.predict(feeds["x"]))
    # ONNX Runtime's two-class scores: scikit-learn's decision value, then its negation
    np.testing.assert_allclose(got["scores"][:, 0], svc.decision_function(feeds["x"]), rtol=1e-3, atol=1e-3)


def test_unsupported_svcs_say_why(digits4):
    import warnings

    from sklearn.svm import SVC

    from examples.sklearn_onnx import svc_from_sklearn

    x, y = digits4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        svc = SVC(probability=True, random_state=0).fit(x[:200], y[:200])
        model = svc_from_sklearn(svc, x.shape[1], 4, probabilities=True)
    with pytest.raises(UnsupportedOperatorError, match="SVM probabilities"):
        kiln.compile(model, target="host")
    node = helper.make_node("SVMClassifier", ["x"], ["label", "scores"], domain=ML, classlabels_ints=[0, 1],
                            coefficients=[1.0, 2.0], kernel_type="LINEAR")
    linear = ml_model(node, [("x", np.float32, [2, 2])], [("label", np.int64, [2]), ("scores", np.float32, [2, 2])], 1)
    with pytest.raises(UnsupportedOperatorError, match="linear SVMClassifier"):
        kiln.compile(linear, target="host")
