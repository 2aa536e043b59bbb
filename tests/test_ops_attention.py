"""Attention (opsets 23/24) and RotaryEmbedding against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_ops_shape import X, node_model
from tests.util import BACKENDS, assert_close, check_against_ort, kiln_run

RNG = np.random.default_rng(23)
backends = pytest.mark.parametrize("backend", BACKENDS)
B, HQ, HKV, SQ, SKV, D = 2, 4, 2, 3, 5, 8


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def qkv(hq=HQ, hkv=HKV, sq=SQ, skv=SKV, d=D, dv=D, three_d=False, dtype=np.float32):
    if three_d:
        return [X("q", randn(B, sq, hq * d, dtype=dtype)), X("k", randn(B, skv, hkv * d, dtype=dtype)),
                X("v", randn(B, skv, hkv * dv, dtype=dtype))]
    return [X("q", randn(B, hq, sq, d, dtype=dtype)), X("k", randn(B, hkv, skv, d, dtype=dtype)),
            X("v", randn(B, hkv, skv, dv, dtype=dtype))]


def run(backend, ins, attrs=None, n_out=1, opset=23, rtol=1e-4, atol=1e-5):
    model, feeds = node_model("Attention", ins, attrs or {}, n_out=n_out, opset=opset)
    check_against_ort(model, feeds, backend, rtol=rtol, atol=atol)


@backends
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("three_d", [False, True])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_heads(backend, heads, three_d, causal):
    hq, hkv = heads
    attrs = {"is_causal": causal} | ({"q_num_heads": hq, "kv_num_heads": hkv} if three_d else {})
    run(backend, qkv(hq, hkv, three_d=three_d), attrs)


@backends
@pytest.mark.parametrize("scale,softcap", [(0.1, None), (None, 2.0), (0.3, 1.5)])
def test_attention_scale_softcap(backend, scale, softcap):
    attrs = {}
    if scale is not None:
        attrs["scale"] = scale
    if softcap is not None:
        attrs["softcap"] = softcap
    run(backend, qkv(dv=6), attrs)


@backends
@pytest.mark.parametrize("mask_shape", [(SQ, SKV), (HQ, SQ, SKV), (B, 1, SQ, SKV), (B, HQ, SQ, SKV)])
@pytest.mark.parametrize("kind", ["float", "bool"])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_masks(backend, mask_shape, kind, causal):
    if kind == "bool":
        mask = RNG.random(mask_shape) < 0.7
        mask[..., 0] = True  # every query keeps a key
    else:
        mask = randn(*mask_shape)
    run(backend, qkv() + [X("m", mask)], {"is_causal": causal})


@backends
@pytest.mark.parametrize("kind", ["float", "bool"])
def test_attention_mask_shorter_than_kv(backend, kind):
    """Keys past the mask's last dim are masked out (opset 24; ONNX Runtime rejects the
    shape, so the ONNX reference is the oracle)."""
    from onnx.reference import ReferenceEvaluator

    mask = (RNG.random((SQ, SKV - 2)) < 0.7) | np.eye(SQ, SKV - 2, dtype=bool) if kind == "bool" else randn(SQ, SKV - 2)
    model, feeds = node_model("Attention", qkv() + [X("m", mask)], {"is_causal": 1}, opset=24)
    want = {"y0": ReferenceEvaluator(model).run(None, feeds)[0]}
    assert_close(kiln_run(model, feeds, backend), want, 1e-4, 1e-5)


@backends
def test_attention_fully_masked_row_is_zero(backend):
    mask = np.ones((SQ, SKV), bool)
    mask[1] = False
    run(backend, qkv() + [X("m", mask)])


@backends
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("three_d", [False, True])
def test_attention_past_and_present(backend, causal, three_d):
    ins = qkv(sq=2, skv=2, three_d=three_d) + [X("m", randn(2, 6)), X("pk", randn(B, HKV, 4, D)),
                                                X("pv", randn(B, HKV, 4, D))]
    attrs = {"is_causal": causal} | ({"q_num_heads": HQ, "kv_num_heads": HKV} if three_d else {})
    run(backend, ins, attrs, n_out=3)


@backends
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_output(backend, mode):
    model, feeds = node_model("Attention", qkv() + [X("m", randn(SQ, SKV))], {"qk_matmul_output_mode": mode},
                              n_out=4, opset=23)
    # only Y and the qk output: drop present_key/present_value (no past cache)
    node = model.graph.node[0]
    node.output[1], node.output[2] = "", ""
    del model.graph.output[1:3]
    check_against_ort(model, feeds, backend, rtol=1e-4, atol=1e-5)


@backends
def test_attention_float16(backend):
    run(backend, qkv(dtype=np.float16), {"is_causal": 1}, rtol=3e-3, atol=3e-3)


@backends
def test_attention_nonpad_kv_seqlen(backend):
    ins = qkv(sq=1, skv=6) + [None, None, None, X("n", np.array([6, 3], np.int64))]
    run(backend, ins, {"is_causal": 1}, opset=24)


# -- RotaryEmbedding ---------------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 4])
@pytest.mark.parametrize("positions", [True, False])
@pytest.mark.parametrize("three_d", [False, True])
def test_rotary_embedding(backend, interleaved, rotary_dim, positions, three_d):
    heads, seq, size = 3, 4, 8
    half = (rotary_dim or size) // 2
    x = randn(2, seq, heads * size) if three_d else randn(2, heads, seq, size)
    if positions:
        caches = [X("cos", randn(10, half)), X("sin", randn(10, half)),
                  X("pos", RNG.integers(0, 10, (2, seq)).astype(np.int64))]
    else:
        caches = [X("cos", randn(2, seq, half)), X("sin", randn(2, seq, half))]
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rotary_dim} | ({"num_heads": heads} if three_d else {})
    model, feeds = node_model("RotaryEmbedding", [X("x", x)] + caches, attrs, opset=23)
    check_against_ort(model, feeds, backend)
