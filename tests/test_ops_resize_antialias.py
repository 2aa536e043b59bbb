"""Resize with antialias=1 (opset 18+) against ONNX Runtime, and ONNX's reference where they differ.

Downsampling stretches the linear/cubic filter by 1 / scale; upsampling is unchanged.
Kiln builds each resized axis as a matmul with a constant weight matrix
(``kiln/frontend/onnx_ops/resize_antialias.py``).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from kiln.errors import ShapeError
from kiln.frontend.onnx_ops.resize_antialias import axis_weights
from tests import util
from tests.test_ops_nn import rand, with_output_shapes


@pytest.fixture(params=util.BACKENDS)
def backend(request):
    return request.param


def _model(x, attrs, scales=None, sizes=None, roi=(), opset=18):
    """One Resize node; roi, scales and sizes are initializers, x the only graph input."""
    inits = [("roi", np.asarray(roi, np.float32)), ("scales", np.asarray(scales or [], np.float32))]
    if sizes is not None:
        inits.append(("sizes", np.asarray(sizes, np.int64)))
    node = helper.make_node("Resize", ["x"] + [n for n, _ in inits], ["y"], **attrs)
    return with_output_shapes(util.make_model([node], [("x", x.dtype, x.shape)], [("y", x.dtype, None)],
                                              inits, opset=opset))


def _vs_ort(backend, x, attrs, **inputs):
    util.check_against_ort(_model(x, dict(attrs, antialias=1), **inputs), {"x": x}, backend, rtol=1e-4, atol=1e-5)


def _vs_onnx_reference(backend, x, attrs, **inputs):
    from onnx.reference import ReferenceEvaluator

    model = _model(x, dict(attrs, antialias=1), **inputs)
    want = {"y": ReferenceEvaluator(model).run(None, {"x": x})[0]}
    util.assert_close(util.kiln_run(model, {"x": x}, backend), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coord", ["half_pixel", "pytorch_half_pixel", "asymmetric", "half_pixel_symmetric"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_downsample_nchw_by_scales(backend, mode, coord, exclude_outside):
    """H and W of an NCHW tensor shrink by different scales (W's filter spans about 6 pixels)."""
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, exclude_outside=exclude_outside)
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.5
    _vs_ort(backend, rand(2, 3, 9, 11), attrs, scales=[1, 1, 0.5, 0.35])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coord", ["half_pixel", "align_corners", "pytorch_half_pixel"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_downsample_2d_by_sizes(backend, mode, coord, exclude_outside):
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, exclude_outside=exclude_outside)
    _vs_ort(backend, rand(7, 13), attrs, sizes=[3, 4])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_downsample_to_one_pixel(backend, mode):
    """pytorch_half_pixel maps a length-1 output to coordinate 0, as the ONNX spec and ONNX
    Runtime do (ONNX's reference uses -0.5 there)."""
    _vs_ort(backend, rand(1, 2, 6, 8), dict(mode=mode, coordinate_transformation_mode="pytorch_half_pixel"),
            sizes=[1, 2, 1, 3])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_one_axis_up_one_down_with_axes(backend, mode):
    """opset 18's axes: H grows (plain filter), W shrinks (stretched filter)."""
    _vs_ort(backend, rand(1, 2, 4, 10), dict(mode=mode, axes=[2, 3]), scales=[1.7, 0.4])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_keep_aspect_ratio(backend, mode):
    _vs_ort(backend, rand(1, 2, 8, 12), dict(mode=mode, axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
            sizes=[5, 5])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_tf_crop_and_resize_extrapolates(backend, mode):
    """The crop box leaves the input: those outputs are extrapolation_value."""
    attrs = dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-7.0)
    _vs_ort(backend, rand(1, 2, 9, 12), attrs, roi=[0, 0, -0.2, 0.1, 1, 1, 1.2, 0.9], sizes=[1, 2, 4, 3])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_align_corners_with_a_fractional_length(backend, mode):
    """in * scale is fractional: like the plain resize, Kiln divides by in * scale - 1 as
    ONNX's reference does; ONNX Runtime divides by the floored output length - 1."""
    _vs_onnx_reference(backend, rand(1, 1, 9, 11), dict(mode=mode, coordinate_transformation_mode="align_corners"),
                       scales=[1, 1, 0.5, 0.35])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_upsampling_ignores_antialias(backend, mode, exclude_outside):
    x = rand(1, 2, 3, 4)
    attrs = dict(mode=mode, exclude_outside=exclude_outside)
    got = util.kiln_run(_model(x, dict(attrs, antialias=1), scales=[1, 1, 2, 1.5]), {"x": x}, backend)
    plain = util.kiln_run(_model(x, dict(attrs, antialias=0), scales=[1, 1, 2, 1.5]), {"x": x}, backend)
    np.testing.assert_array_equal(got["y"], plain["y"])
    _vs_ort(backend, x, attrs, scales=[1, 1, 2, 1.5])


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude_outside", [False, True])
def test_weights_sum_to_one(mode, exclude_outside):
    """Each output is a weighted mean of the inputs (the filter is renormalized)."""
    w, outside = axis_weights(17, 5, 5 / 17, mode, "half_pixel", exclude_outside=exclude_outside)
    assert outside is None
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    assert (np.count_nonzero(w, axis=1) > 4).all(), "the filter should span more than 4 taps at scale 5/17"


def test_nearest_with_antialias_is_refused():
    x = rand(1, 1, 4, 4)
    with pytest.raises(ShapeError, match="antialias=1 applies to the linear and cubic modes; got mode 'nearest'"):
        util.kiln_run(_model(x, dict(mode="nearest", antialias=1), scales=[1, 1, 0.5, 0.5]), {"x": x}, "interp")
