"""GridSample, AffineGrid, DeformConv, RoiAlign, Col2Im and CenterCropPad against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import UnsupportedOperatorError
from kiln.frontend.onnx import from_onnx
from tests.test_ops_shape import C, X, check, node_model
from tests.util import BACKENDS, check_against_ort

RNG = np.random.default_rng(3)
backends = pytest.mark.parametrize("backend", BACKENDS)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def grid(*shape):
    return RNG.uniform(-1.2, 1.2, shape).astype(np.float32)  # some points outside [-1, 1]


@backends
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d_opset16(backend, mode, padding, align):
    check("GridSample", [X("x", randn(2, 3, 5, 6)), X("g", grid(2, 4, 7, 2))], backend,
          {"mode": mode, "padding_mode": padding, "align_corners": align}, opset=16)


@backends
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_3d(backend, mode, padding, align):
    check("GridSample", [X("x", randn(1, 2, 3, 4, 5)), X("g", grid(1, 2, 3, 4, 3))], backend,
          {"mode": mode, "padding_mode": padding, "align_corners": align}, opset=20)


@backends
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("opset,ctm", [(10, None), (16, "half_pixel"), (16, "output_half_pixel")])
@pytest.mark.parametrize("ratio", [2, 0])
def test_roi_align(backend, mode, opset, ctm, ratio):
    x = randn(2, 3, 8, 9)
    rois = np.array([[0.5, 1.0, 6.0, 7.5], [2.0, 0.0, 8.5, 4.0], [1.0, 1.0, 1.5, 2.0]], np.float32)
    bidx = np.array([0, 1, 1], np.int64)
    attrs = {"mode": mode, "output_height": 3, "output_width": 2, "sampling_ratio": ratio,
             "spatial_scale": 0.9} | ({"coordinate_transformation_mode": ctm} if ctm else {})
    # sampling_ratio 0 sizes each ROI's grid from the ROI: Kiln needs the ROIs constant then
    rois_spec = C("r", rois) if ratio == 0 else X("r", rois)
    model, feeds = node_model("RoiAlign", [X("x", x), rois_spec, X("b", bidx)], attrs, opset=opset)
    check_against_ort(model, feeds, backend, rtol=1e-4, atol=1e-5)


def test_roi_align_adaptive_grid_with_runtime_rois_is_unsupported():
    model, _ = node_model("RoiAlign", [X("x", randn(1, 1, 4, 4)), X("r", np.zeros((1, 4), np.float32)),
                                       X("b", np.zeros(1, np.int64))], opset=16)
    with pytest.raises(UnsupportedOperatorError, match="sampling_ratio"):
        from_onnx(model)


@backends
@pytest.mark.parametrize("pooled,scale", [((2, 2), 1.0), ((3, 2), 0.5), ((4, 4), 0.25)])
def test_max_roi_pool(backend, pooled, scale):
    rois = np.array([[0, 0.4, 1.0, 6.0, 7.5], [1, 2.0, 0.0, 8.5, 4.0], [1, 3.0, 3.0, 3.0, 3.0],
                     [0, 5.0, 2.0, 1.0, 1.0]], np.float32)
    check("MaxRoiPool", [X("x", randn(2, 3, 8, 9)), X("r", rois)], backend,
          {"pooled_shape": list(pooled), "spatial_scale": scale}, opset=7)


COL2IM = [
    ((1, 4, 9), [4, 4], [2, 2], {}),
    ((2, 6, 6), [5, 4], [3, 2], {"strides": [2, 1], "pads": [1, 0, 1, 0]}),
    ((1, 4, 4), [5, 5], [2, 2], {"dilations": [2, 2], "strides": [1, 1]}),
    ((1, 8, 8), [3, 4, 5], [2, 2, 2], {"strides": [1, 2, 3], "pads": [0, 1, 0, 0, 0, 0]}),
]


@backends
@pytest.mark.parametrize("shape,image,block,attrs", COL2IM)
def test_col2im(backend, shape, image, block, attrs):
    nd = len(image)
    pads = attrs.get("pads", [0] * 2 * nd)
    strides, dil = attrs.get("strides", [1] * nd), attrs.get("dilations", [1] * nd)
    blocks = [(image[k] + pads[k] + pads[k + nd] - dil[k] * (block[k] - 1) - 1) // strides[k] + 1 for k in range(nd)]
    shape = (shape[0], shape[1], int(np.prod(blocks)))
    if shape[1] % int(np.prod(block)):
        shape = (shape[0], int(np.prod(block)), shape[2])
    check("Col2Im", [X("x", randn(*shape)), C("i", np.array(image, np.int64)), C("b", np.array(block, np.int64))],
          backend, attrs, opset=18)


@backends
@pytest.mark.parametrize("target,axes", [([3, 4, 5], None), ([6, 9, 2], None), ([2, 9, 7], None),
                                         ([4, 3], [0, 2]), ([7], [-1])])
def test_center_crop_pad(backend, target, axes):
    attrs = {} if axes is None else {"axes": axes}
    check("CenterCropPad", [X("x", randn(5, 6, 4)), C("s", np.array(target, np.int64))], backend, attrs, opset=18)


# -- AffineGrid (opset 20), alone and feeding GridSample: a spatial transformer ---------------------

@backends
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (2, 3, 1, 6), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid(backend, size, align):
    nd = len(size) - 2
    theta = randn(size[0], nd, nd + 1)
    check("AffineGrid", [X("theta", theta), C("size", np.array(size, np.int64))], backend,
          {"align_corners": align}, opset=20)


@backends
def test_spatial_transformer_affine_grid_then_grid_sample(backend):
    from onnx import helper

    from tests.util import make_model

    nodes = [helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=0),
             helper.make_node("GridSample", ["x", "grid"], ["y"], mode="linear", padding_mode="zeros")]
    x, theta = randn(2, 3, 8, 8), np.array([[[0.9, -0.2, 0.1], [0.3, 1.1, -0.2]],
                                            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)  # the second: identity
    model = make_model(nodes, [("x", np.float32, x.shape), ("theta", np.float32, theta.shape)],
                       [("y", np.float32, x.shape)], [("size", np.array([2, 3, 8, 8], np.int64))], opset=20)
    got = check_against_ort(model, {"x": x, "theta": theta}, backend)
    np.testing.assert_allclose(got["y"][1], x[1], rtol=1e-5, atol=1e-5)  # identity theta: the input back


def test_affine_grid_needs_a_constant_size():
    from onnx import helper

    from tests.util import make_model

    model = make_model([helper.make_node("AffineGrid", ["theta", "size"], ["grid"])],
                       [("theta", np.float32, (1, 2, 3)), ("size", np.int64, (4,))],
                       [("grid", np.float32, (1, 4, 5, 2))], opset=20)
    with pytest.raises(UnsupportedOperatorError, match="size"):
        from_onnx(model)


# -- DeformConv (opset 19): sampled im2col columns through grid_sample, then one matmul per group ----

def _deform_model(xs, ws, attrs, mask=False, bias=False):
    from onnx import helper

    from tests.util import make_model

    n, c, h, w = xs
    oc, _, kh, kw = ws
    s, d, p = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), attrs.get("pads", [0, 0, 0, 0])
    oh = (h + p[0] + p[2] - (kh - 1) * d[0] - 1) // s[0] + 1
    ow = (w + p[1] + p[3] - (kw - 1) * d[1] - 1) // s[1] + 1
    og = attrs.get("offset_group", 1)
    names = ["x", "w", "offset", "b" if bias else "", "mask" if mask else ""]
    while not names[-1]:
        names.pop()
    inputs = [("x", np.float32, xs), ("offset", np.float32, (n, og * kh * kw * 2, oh, ow))]
    if mask:
        inputs.append(("mask", np.float32, (n, og * kh * kw, oh, ow)))
    inits = [("w", randn(*ws))] + ([("b", randn(oc))] if bias else [])
    node = helper.make_node("DeformConv", names, ["y"], **attrs)
    return make_model([node], inputs, [("y", np.float32, (n, oc, oh, ow))], inits, opset=19), (oh, ow)


@backends
@pytest.mark.parametrize("attrs, mask, bias", [
    ({"pads": [1, 1, 1, 1]}, False, False),
    ({"group": 2, "offset_group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 0, 1]}, True, True),
    ({"offset_group": 4, "pads": [0, 1, 1, 0]}, True, False),
])
def test_deform_conv(backend, attrs, mask, bias):
    xs, ws = (2, 4, 7, 8), (6, 4 // attrs.get("group", 1), 3, 3)
    model, (oh, ow) = _deform_model(xs, ws, attrs, mask, bias)
    og = attrs.get("offset_group", 1)
    feeds = {"x": randn(*xs), "offset": (1.5 * randn(2, og * 18, oh, ow)).astype(np.float32)}  # some taps fall outside
    if mask:
        feeds["mask"] = RNG.uniform(0, 1, (2, og * 9, oh, ow)).astype(np.float32)
    check_against_ort(model, feeds, backend)


@backends
def test_deform_conv_with_zero_offsets_is_a_convolution(backend):
    from onnx import helper

    from tests.util import kiln_run, make_model

    model, (oh, ow) = _deform_model((1, 3, 6, 6), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, bias=True)
    x = randn(1, 3, 6, 6)
    got = kiln_run(model, {"x": x, "offset": np.zeros((1, 18, oh, ow), np.float32)}, backend)["y"]
    conv = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                      [("x", np.float32, (1, 3, 6, 6))], [("y", np.float32, (1, 4, oh, ow))],
                      [(i.name, __import__("onnx").numpy_helper.to_array(i)) for i in model.graph.initializer])
    from tests.util import ort_run

    np.testing.assert_allclose(got, ort_run(conv, {"x": x})["y"], rtol=1e-4, atol=1e-4)
