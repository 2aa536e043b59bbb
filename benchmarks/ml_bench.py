"""Classical-ML models (ai.onnx.ml) on the host: Kiln against ONNX Runtime, side by side.

    python benchmarks/ml_bench.py                  # prints the table
    python benchmarks/ml_bench.py --repeats 20

scikit-learn models fitted on its bundled data sets (diabetes, breast cancer, iris) and
written as ONNX by ``examples/sklearn_onnx.py``: a random forest regressor (100 trees,
depth 8) at batch 1 and 256, gradient boosting for binary classification (100 trees,
depth 3, LOGISTIC), a random forest classifier (3 classes), an RBF SVR and a
StandardScaler + LogisticRegression pipeline. Timing is ``kiln.bench``'s harness (outputs
checked against ONNX Runtime, interleaved rounds, medians); both runtimes get 2 threads.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import sklearn_onnx as S  # noqa: E402
from kiln import bench as B  # noqa: E402


def _data(name: str):
    from sklearn import datasets

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return x.astype(np.float32), y


def _workload(name: str, what: str, model) -> B.Workload:
    return B.Workload(name, "model", "ml", what, lambda: model)


def workloads() -> list[B.Workload]:
    from onnx import helper
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    out = []
    x, y = _data("diabetes")
    rf = RandomForestRegressor(n_estimators=100, max_depth=8, random_state=0).fit(x, y)
    for batch in (1, 256):
        model = S.regressor_from_sklearn(rf.estimators_, x.shape[1], batch, aggregate="AVERAGE")
        out.append(_workload(f"rf_regressor_b{batch}", f"random forest, 100 trees of depth 8, batch {batch}", model))
    svr = SVR(kernel="rbf", C=50).fit(x, y)
    node = helper.make_node(
        "SVMRegressor", ["x"], ["y"], domain=S.ML, kernel_type="RBF",
        kernel_params=[float(svr._gamma), 0.0, 3.0], support_vectors=svr.support_vectors_.reshape(-1).tolist(),
        coefficients=svr.dual_coef_.reshape(-1).tolist(), rho=[float(svr.intercept_[0])],
        n_supports=len(svr.support_))
    out.append(_workload("svr_rbf_b256", f"RBF SVR, {len(svr.support_)} support vectors, batch 256",
                         S.ml_model(node, [("x", np.float32, [256, 10])], [("y", np.float32, [256, 1])], 1)))
    x, y = _data("breast_cancer")
    gb = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(x, y)
    prior = float(gb._raw_predict_init(x[:1])[0, 0])
    model = S.classifier_from_sklearn(gb.estimators_[:, 0], x.shape[1], 256, 2, one_column=True,
                                      scale=gb.learning_rate, base=[prior], post="LOGISTIC")
    out.append(_workload("gb_binary_b256", "gradient boosting, 100 trees of depth 3, batch 256", model))
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(max_iter=3000).fit(scaler.transform(x), y)
    nodes = [helper.make_node("Scaler", ["x"], ["z"], domain=S.ML, offset=scaler.mean_.tolist(),
                              scale=(1 / scaler.scale_).tolist()),
             helper.make_node("LinearClassifier", ["z"], ["label", "probabilities"], domain=S.ML,
                              coefficients=lr.coef_.reshape(-1).tolist(), intercepts=lr.intercept_.tolist(),
                              classlabels_ints=[0, 1], post_transform="LOGISTIC")]
    graph = helper.make_graph(nodes, "logreg", [helper.make_tensor_value_info("x", 1, [256, x.shape[1]])],
                              [helper.make_tensor_value_info("label", 7, [256]),
                               helper.make_tensor_value_info("probabilities", 1, [256, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(S.ML, 1)])
    out.append(_workload("logreg_pipeline_b256", "StandardScaler + LogisticRegression, batch 256", model))
    x, y = _data("iris")
    rfc = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=0).fit(x, y)
    model = S.classifier_from_sklearn(rfc.estimators_, x.shape[1], 256, 3, scale=1 / 100)
    out.append(_workload("rf_classifier_b256", "random forest, 3 classes, 100 trees, batch 256", model))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per peer")
    args = p.parse_args(argv)
    opts = B.Options(repeats=args.repeats)
    rows = []
    for w in workloads():
        rows += B.bench_workload(w, B.make_peers(["kiln", "ort"]), opts, log=print)
    print(f"\n{B.machine()}; load {B.load_average()}\n")
    print(B.markdown_table(rows))
    print("\n" + B.ratio_summary(rows, "ort", sorted({r.workload for r in rows})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
