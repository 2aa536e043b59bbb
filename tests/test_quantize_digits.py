"""Acceptance: a small CNN trained here on scikit-learn's digits (real data), quantized to
int8 by ``kiln.quantize`` and compiled to integer kernels.

- int8 accuracy within 1 point of the float model on the held-out images;
- Kiln's int8 outputs match ONNX Runtime on the same QDQ model within one quantization step;
- the same through the command line (``kiln quantize``).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from tests.conftest import require_module
from tests.util import ort_run

torch = require_module("torch")
datasets = require_module("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    d = datasets.load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def _train(x, y) -> dict[str, np.ndarray]:
    """conv3x3(1->8)-relu, conv3x3(8->16)-relu, maxpool 2, fc(256->10): ~3 s on one core."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(15):
        for i in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i]), yt[i]).backward()
            opt.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _onnx(p) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["image", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    inits = [nh.from_array(p[k], n) for k, n in (("0.weight", "w0"), ("0.bias", "b0"), ("2.weight", "w1"),
                                                  ("2.bias", "b1"), ("6.weight", "fw"), ("6.bias", "fb"))]
    g = helper.make_graph(nodes, "digits_cnn", [helper.make_tensor_value_info("image", TP.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TP.FLOAT, [1, 10])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.fixture(scope="module")
def models(digits):
    xtr, ytr, _, _ = digits
    model = _onnx(_train(xtr, ytr))
    q = kiln.quantize(model, {"image": xtr[:256]}, method="minmax")
    return model, q


def _accuracy(run, x, y) -> float:
    pred = [int(np.argmax(run({"image": x[i:i + 1]})["logits"])) for i in range(len(x))]
    return float(np.mean(np.array(pred) == y))


def test_int8_accuracy_within_one_point_of_float(digits, models):
    _, _, xte, yte = digits
    model, q = models
    f = kiln.compile(model)
    i8 = kiln.compile(q)
    ops = {n.op for n in i8.graph.nodes}
    assert {"qconv", "qmatmul"} <= ops and "conv" not in ops and "matmul" not in ops
    acc_f, acc_q = _accuracy(f.run, xte, yte), _accuracy(i8.run, xte, yte)
    print(f"digits: float {acc_f:.4f}, int8 {acc_q:.4f} on {len(yte)} held-out images")
    assert acc_f > 0.9
    assert acc_q >= acc_f - 0.01


def test_int8_matches_ort_within_one_step(digits, models):
    _, _, xte, _ = digits
    _, q = models
    inits = {i.name: nh.to_array(i) for i in q.graph.initializer}
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "logits")
    step = float(inits[dq.input[1]])
    cm = kiln.compile(q)
    worst, exact = 0.0, 0
    for i in range(len(xte)):
        feed = {"image": xte[i:i + 1]}
        got, want = cm.run(feed)["logits"], ort_run(q, feed)["logits"]
        worst = max(worst, float(np.max(np.abs(got - want))) / step)
        exact += int(np.array_equal(got, want))
    print(f"digits: worst {worst:.3f} steps, {exact}/{len(xte)} images bit-exact")
    assert worst <= 1 + 1e-3


def test_cli_quantize_writes_a_qdq_model(tmp_path, digits, models):
    from click.testing import CliRunner

    from kiln.cli import cli

    xtr = digits[0]
    model, _ = models
    onnx.save(model, tmp_path / "f.onnx")
    np.savez(tmp_path / "cal.npz", image=xtr[:64])
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "f.onnx"), "--calibration", str(tmp_path / "cal.npz"),
                                   "-o", str(tmp_path / "q.onnx"), "--method", "percentile", "--skip", "Gemm"])
    assert res.exit_code == 0, res.output
    q = onnx.load(tmp_path / "q.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    ops = {n.op for n in kiln.compile(q).graph.nodes}
    assert "qconv" in ops and "qmatmul" not in ops  # the Gemm was skipped: it stays float
