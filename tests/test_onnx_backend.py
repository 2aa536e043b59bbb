"""kiln.onnx_backend: the onnx.backend API, and ONNX's standard test runner driving it."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import helper

import kiln.onnx_backend as backend
from kiln.errors import InputError, TargetError, UnsupportedOperatorError
from tests import util

# ONNX's own runner (unittest classes that pytest collects), restricted to a few node tests so
# the standard path (prepare -> run -> assert_similar_outputs) stays exercised.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ONNX's case generators overflow on purpose
    _runner = onnx.backend.test.BackendTest(backend, __name__)
for _name in ("test_relu", "test_add_bcast", "test_softmax_axis_0", "test_reshape_reduced_dims",
              "test_gemm_default_no_bias", "test_cast_FLOAT_to_DOUBLE"):
    _runner.include(rf"^{_name}_cpu$")
# The runner marks every test outside the include patterns as skipped; keep only the included
# ones so the report does not list four thousand skips.
for _cls_name, _cls in _runner.test_cases.items():
    for _test in [n for n in vars(_cls) if n.startswith("test_")]:
        if getattr(getattr(_cls, _test), "__unittest_skip__", False):
            delattr(_cls, _test)
    if any(n.startswith("test_") for n in vars(_cls)):
        globals()[_cls_name] = _cls


def _add_model():
    node = helper.make_node("Add", ["a", "b"], ["y"])
    return util.make_model([node], [("a", np.float32, (2, 3)), ("b", np.float32, (3,))],
                           [("y", np.float32, (2, 3))])


def test_run_takes_a_list_or_a_dict_and_returns_outputs_in_order():
    a, b = np.random.rand(2, 3).astype(np.float32), np.random.rand(3).astype(np.float32)
    rep = backend.prepare(_add_model(), "CPU")
    by_list, by_dict = rep.run([a, b]), rep.run({"a": a, "b": b})
    np.testing.assert_allclose(by_list[0], a + b, rtol=1e-6)
    np.testing.assert_allclose(by_dict.y, a + b, rtol=1e-6)  # a namedtuple, by output name
    np.testing.assert_allclose(backend.run_model(_add_model(), [a, b])[0], a + b, rtol=1e-6)


def test_run_node():
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    out = backend.run_node(helper.make_node("Relu", ["x"], ["y"]), [x], opset_version=17)
    np.testing.assert_array_equal(out[0], np.maximum(x, 0))


def test_only_the_cpu_device():
    assert backend.supports_device("CPU")
    assert not backend.supports_device("CUDA")
    with pytest.raises(TargetError, match="CUDA"):
        backend.prepare(_add_model(), "CUDA")


def test_wrong_number_of_inputs():
    rep = backend.prepare(_add_model())
    with pytest.raises(InputError, match="takes 2"):
        rep.run([np.zeros((2, 3), np.float32)])


def test_shape_inputs_specialize_at_first_run_and_again_when_they_change():
    """A Reshape target given as a graph input: compiled per distinct value."""
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = util.make_model([node], [("x", np.float32, (2, 6)), ("shape", np.int64, (2,))],
                            [("y", np.float32, ["d0", "d1"])])
    rep = backend.prepare(model)
    assert rep.specialized_on == ("shape",)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    for target in ((3, 4), (6, 2), (3, 4)):
        y = rep.run([x, np.array(target, np.int64)])[0]
        np.testing.assert_array_equal(y, x.reshape(target))


def test_a_specialized_input_must_have_its_declared_dtype():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = util.make_model([node], [("x", np.float32, (2, 6)), ("shape", np.int64, (2,))],
                            [("y", np.float32, ["d0", "d1"])])
    with pytest.raises(InputError, match="'shape' has dtype int32"):
        backend.prepare(model).run([np.zeros((2, 6), np.float32), np.array([3, 4], np.int32)])


def test_kiln_compile_refuses_a_run_time_shape_cleanly():
    import kiln

    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = util.make_model([node], [("x", np.float32, (2, 6)), ("shape", np.int64, (2,))],
                            [("y", np.float32, ["d0", "d1"])])
    with pytest.raises(UnsupportedOperatorError, match="shape.*run-time value"):
        kiln.compile(model)


@pytest.mark.parametrize("elem_type", [onnx.TensorProto.COMPLEX128, onnx.TensorProto.COMPLEX64])
def test_element_types_kiln_lacks_are_unsupported(elem_type):
    node = helper.make_node("Cast", ["x"], ["y"], to=elem_type)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", elem_type, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    name = onnx.TensorProto.DataType.Name(elem_type)
    with pytest.raises(UnsupportedOperatorError, match=f"element type {name}"):
        backend.prepare(model)
