"""Bad input gets a clear kiln error, never a crash or a wrong answer."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
from kiln.errors import (InputError, KilnError, ModelLoadError, ShapeError, TargetError,
                         UnsupportedOperatorError)
from tests.util import make_model


def relu_model(shape=(2, 3)):
    return make_model([helper.make_node("Relu", ["x"], ["y"])],
                      [("x", np.float32, list(shape))], [("y", np.float32, list(shape))])


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        kiln.compile(str(tmp_path / "nope.onnx"))


def test_truncated_file(tmp_path):
    path = tmp_path / "m.onnx"
    data = relu_model().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        kiln.compile(str(path))


def test_corrupt_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ModelLoadError):
        kiln.compile(str(path))


def test_unknown_ops_all_listed():
    nodes = [helper.make_node("FancyOp", ["x"], ["a"], name="f1"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("OtherOp", ["b"], ["c"], name="o1"),
             helper.make_node("FancyOp", ["c"], ["y"], name="f2")]
    model = make_model(nodes, [("x", np.float32, [2])], [("y", np.float32, [2])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    for n in model.graph.node:
        if n.op_type != "Relu":
            n.domain = "com.example"
    with pytest.raises(UnsupportedOperatorError) as info:
        kiln.compile(model)
    msg = str(info.value)
    assert "FancyOp" in msg and "OtherOp" in msg and "'f1'" in msg and "'f2'" in msg and "'o1'" in msg
    assert len(info.value.unsupported) == 2


def test_inconsistent_shapes():
    model = make_model([helper.make_node("Add", ["x", "z"], ["y"])],
                       [("x", np.float32, [2, 3]), ("z", np.float32, [4, 5])],
                       [("y", np.float32, [2, 3])])
    with pytest.raises(KilnError, match=r"(?i)shape|broadcast"):
        kiln.compile(model)


def test_wrong_input_name_shape_dtype():
    m = kiln.compile(relu_model())
    with pytest.raises(InputError, match="missing \\['x'\\]"):
        m.run({"q": np.zeros((2, 3), np.float32)})
    with pytest.raises(InputError, match=r"shape \(3, 2\); expected \(2, 3\)"):
        m.run({"x": np.zeros((3, 2), np.float32)})
    with pytest.raises(InputError, match="dtype float64; expected float32"):
        m.run({"x": np.zeros((2, 3), np.float64)})
    with pytest.raises(InputError, match="dict"):
        m.run([np.zeros((2, 3), np.float32)])


def test_non_contiguous_input_is_accepted_and_correct():
    m = kiln.compile(relu_model((3, 2)))
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32).T
    np.testing.assert_array_equal(m.run({"x": x})["y"], np.maximum(x, 0))


def test_external_data_path_traversal(tmp_path):
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", np.float32, [4])],
                       [("y", np.float32, [4])], initializers=[("w", np.ones(4, np.float32))])
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in {"location": "../secret.bin", "offset": "0", "length": "16"}.items():
        e = w.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    sub = tmp_path / "models"
    sub.mkdir()
    path = sub / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="escapes the model directory"):
        kiln.compile(str(path))


def test_external_data_inside_directory_loads(tmp_path):
    w_np = np.arange(4, dtype=np.float32)
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", np.float32, [4])],
                       [("y", np.float32, [4])], initializers=[("w", w_np)])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    assert os.path.exists(tmp_path / "weights.data")
    out = kiln.compile(str(path)).run({"x": np.ones(4, np.float32)})["y"]
    np.testing.assert_array_equal(out, w_np + 1)


def test_symbolic_input_needs_shape():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, ["batch", 3])],
                       [("y", np.float32, ["batch", 3])])
    with pytest.raises(KilnError, match="input_shapes"):
        kiln.compile(model)
    m = kiln.compile(model, input_shapes={"x": (2, 3)})
    assert m.run({"x": -np.ones((2, 3), np.float32)})["y"].sum() == 0


def test_input_shape_for_unknown_name():
    with pytest.raises(ShapeError, match="not model inputs"):
        kiln.compile(relu_model(), input_shapes={"nope": (1,)})


def test_unknown_and_planned_targets():
    with pytest.raises(TargetError, match="unknown target"):
        kiln.compile(relu_model(), target="z80")
    from kiln.targets import planned

    for name in planned()[:1]:  # a registered name whose module does not exist yet
        with pytest.raises(TargetError, match="not implemented"):
            kiln.compile(relu_model(), target=name)


def test_unknown_inspect_stage():
    with pytest.raises(KilnError, match="fold_constants"):
        kiln.inspect(relu_model(), print_ir_after="nonsense")


def test_not_a_model():
    with pytest.raises(ModelLoadError, match="expected a path or onnx.ModelProto"):
        kiln.compile(12345)


def test_integer_division_by_zero_does_not_crash():
    """A zero (or -1 with INT_MIN) divisor read from a tensor must not trap the process."""
    model = make_model([helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Mod", ["a", "b"], ["r"])],
                       [("a", np.int32, [4]), ("b", np.int32, [4])],
                       [("q", np.int32, [4]), ("r", np.int32, [4])])
    a = np.array([7, -7, np.iinfo(np.int32).min, 5], np.int32)
    b = np.array([0, 2, -1, 0], np.int32)
    out = kiln.compile(model).run({"a": a, "b": b})
    assert out["q"][1] == -3 and out["r"][1] == 1  # the valid lanes are still right
    assert out["q"][2] == np.iinfo(np.int32).min  # INT_MIN / -1 wraps, as numpy does
