"""The nine `light` models shipped inside the onnx package, against ONNX Runtime (fp32)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import kiln
from tests.util import assert_close, ort_run

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512"]


def _inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_ort(name):
    model = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    feeds = _inputs(model)
    want = ort_run(model, feeds)
    got = kiln.compile(model).run(feeds)
    # The light models' constant weights push activations high; compare relative to scale.
    for k in want:
        scale = float(np.abs(want[k]).max()) or 1.0
        assert_close({k: got[k]}, {k: want[k]}, rtol=1e-3, atol=1e-4 * scale)
