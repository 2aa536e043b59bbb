"""Weight-only quantization (int4 / int8 weights in groups, float activations).

- ``quantize_weights(model, bits=4, group_size=32)``: every MatMul (and Gemm without
  transA) with a constant 2-D weight becomes ONNX Runtime's ``com.microsoft.MatMulNBits``
  (round to nearest, per-group scale and zero point): a standard contrib op ONNX Runtime
  runs, and Kiln imports as ``matmul_wq``.
- ``ort_to_kiln_layout``: ORT's packing (low nibble = even element) -> the layout the
  ``matmul_wq`` kernel reads (``kiln/ir/ops/weight_only.py``), done at compile time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kiln.errors import QuantizationError
from kiln.ir.ops.weight_only import GROUP_SIZES


def quantize_groups(w_kn: np.ndarray, bits: int, group: int, symmetric: bool = False):
    """(q (N, K) uint8 in [0, 2^bits), scales (N, K/G) float32, zero points (N, K/G) uint8)."""
    k, n = w_kn.shape
    g = w_kn.T.reshape(n, k // group, group).astype(np.float64)
    top = (1 << bits) - 1
    if symmetric:
        mid = 1 << (bits - 1)
        amax = np.abs(g).max(axis=-1)
        scale = np.where(amax > 0, amax / (mid - 1 if bits == 8 else mid), 1.0)
        zp = np.full(scale.shape, mid)
    else:
        lo, hi = np.minimum(g.min(axis=-1), 0), np.maximum(g.max(axis=-1), 0)
        scale = np.where(hi > lo, (hi - lo) / top, 1.0)
        zp = np.clip(np.round(-lo / scale), 0, top)
    scale = scale.astype(np.float32)
    q = np.clip(np.round(g / scale.astype(np.float64)[..., None]) + zp[..., None], 0, top)
    return q.reshape(n, k).astype(np.uint8), scale, zp.astype(np.uint8)


def ort_pack(q: np.ndarray, bits: int, group: int) -> np.ndarray:
    """MatMulNBits' B: (N, K/G, G*bits/8), 4-bit values two per byte, low nibble first."""
    n, k = q.shape
    if bits == 8:
        return q.reshape(n, k // group, group)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8).reshape(n, k // group, group // 2)


def ort_unpack(b: np.ndarray, bits: int, n: int, k: int) -> np.ndarray:
    flat = b.reshape(n, -1)
    if bits == 8:
        return flat[:, :k].copy()
    q = np.empty((n, flat.shape[1] * 2), np.uint8)
    q[:, 0::2], q[:, 1::2] = flat & 15, flat >> 4
    return q[:, :k]


def kiln_pack(q: np.ndarray, bits: int, group: int) -> np.ndarray:
    """The ``matmul_wq`` layout. 8-bit: ``q - 128`` as int8 (zero points move by 128 too);
    4-bit: the two halves of each group in the low and high nibbles of one byte."""
    n, k = q.shape
    if bits == 8:
        return (q.astype(np.int16) - 128).astype(np.int8)
    g = q.reshape(n, k // group, group)
    half = group // 2
    return (g[..., :half] | (g[..., half:] << 4)).astype(np.uint8).reshape(n, k // 2)


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' packed zero points: (N, ceil(blocks * bits / 8)), low nibble first."""
    if bits == 8:
        return zp
    n, blocks = zp.shape
    padded = np.zeros((n, blocks + blocks % 2), np.uint8)
    padded[:, :blocks] = zp
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def unpack_zero_points(zp: np.ndarray, bits: int, n: int, blocks: int) -> np.ndarray:
    flat = zp.reshape(n, -1)
    if bits == 8 or flat.shape[1] == blocks and bits != 4:
        return flat[:, :blocks]
    out = np.empty((n, flat.shape[1] * 2), np.uint8)
    out[:, 0::2], out[:, 1::2] = flat & 15, flat >> 4
    return out[:, :blocks]


def quantize_weights(model, bits: int = 4, group_size: int = 32, symmetric: bool = False,
                     skip=()) -> onnx.ModelProto:
    """MatMul/Gemm with constant weights -> MatMulNBits (see the module docstring)."""
    if bits not in (4, 8):
        raise QuantizationError(f"unsupported weight-only scheme: {bits}-bit weights; Kiln implements 4 and 8")
    if group_size not in GROUP_SIZES:
        raise QuantizationError(f"unsupported group size {group_size}; expected one of {GROUP_SIZES}")
    model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    nodes, used = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        ok = (node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transA", 0)
                                           and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0))
        if not ok or w is None or node.name in skip or node.op_type in skip:
            nodes.append(node)
            continue
        wv = numpy_helper.to_array(w).astype(np.float32)
        if node.op_type == "Gemm" and attrs.get("transB", 0):
            wv = wv.T
        if wv.ndim != 2 or wv.shape[0] % group_size:
            nodes.append(node)
            continue
        k, n = wv.shape
        q, scale, zp = quantize_groups(wv, bits, group_size, symmetric)
        tag = f"{node.name or node.output[0]}_q{bits}"
        new_inits = [numpy_helper.from_array(ort_pack(q, bits, group_size), f"{tag}_B"),
                     numpy_helper.from_array(scale.reshape(-1), f"{tag}_scales"),
                     numpy_helper.from_array(pack_zero_points(zp, bits), f"{tag}_zp")]
        model.graph.initializer.extend(new_inits)
        ins = [node.input[0], f"{tag}_B", f"{tag}_scales", f"{tag}_zp"]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            ins += ["", node.input[2]]  # g_idx unused, bias
        nodes.append(helper.make_node("MatMulNBits", ins, list(node.output), name=tag, domain="com.microsoft",
                                      K=k, N=n, bits=bits, block_size=group_size))
        used += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    read = {i for nd in nodes for i in nd.input}
    keep = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    if used and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
