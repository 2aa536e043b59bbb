"""Integer dot-product weights in VNNI panels: (O/16, K/4, 16, 4).

The integer kernels (``qconv``, ``qmatmul`` and their int32 forms) read weights packed
(O, K): each output's reduction contiguous. gcc vectorizes that as one dot product per
output -- a vector accumulator per output, closed by a horizontal sum -- which leaves
AVX-512 VNNI at a quarter of its speed.

``vpdpbusd`` multiplies 4 unsigned activation bytes by 4 signed weight bytes and adds them
into one int32 lane, 16 lanes at once. With the weights of 16 outputs interleaved in groups
of 4 reduction steps,

    panel[o // 16, k // 4, o % 16, k % 4] = w[o, k]

one 64-byte load is 16 outputs x 4 steps, and 4 activation bytes broadcast to all lanes
feed it: a register tile of R rows x 32 outputs needs R + 2 loads per R x 2
``vpdpbusd`` and no horizontal sum at all (the GotoBLAS/oneDNN micro-kernel shape). The
host renderer prints that tile with intrinsics (``kiln/codegen/x86.py``); the compute
definition reads the same panel (``kiln/ir/ops/qlinear.py``, ``vnni`` attribute), so every
other path (the loop interpreter, a machine without VNNI) computes the same integers.

K is the reduction the kernel loops over: KH window rows of KW*C bytes read in place,
rounded up to whole 4-byte groups (zero weights in the padding; see ``conv_reduction``); K
of a matmul. Left as they are: grouped or dilated convolutions, a matmul's K not a multiple
of 4, output counts not a multiple of 16, non-constant weights.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph
from kiln.ir.ops.nn import window_attrs
from kiln.passes.rewrite import Match, Op, Rewriter, Rule, apply_rules

LANES = 16   # int32 lanes of a 512-bit register: outputs per panel
GROUP = 4    # reduction steps one vpdpbusd lane sums


def pack_vnni_panels(w: np.ndarray) -> np.ndarray:
    """(O, K) int8 -> (O/16, K/4, 16, 4)."""
    o, k = w.shape
    return np.ascontiguousarray(w.reshape(o // LANES, LANES, k // GROUP, GROUP).transpose(0, 2, 1, 3))


def conv_reduction(w_shape, attrs) -> int | None:
    """The reduction length a ``qconv`` with packed weights (OC, KH, KW*C) loops over, or
    None when its reduction is not one contiguous run (grouped, dilated).

    The kernel reads each window row in place from the padded channels-last staging, no
    im2col copy (whose KH-fold traffic costs more than it saves): KH * KW*C when the rows
    are whole 4-byte groups; otherwise (the 7x7 RGB stem's 21-byte rows) each row rounded up
    to whole groups, 24 bytes, whose last bytes belong to the next pixel (or to a padding
    column after the row, see ``vnni_window_row``) and meet zero weights. Measured against
    staging the stem's 3 channels as 4 (28-byte rows): 8 % faster, a sixth fewer
    multiply-adds."""
    from kiln.ir.ops.qlinear import window_row

    _, kh, run = w_shape
    _, _, _, dil = window_attrs(attrs, 2, "qconv")
    if int(attrs.get("group", 1)) != 1 or dil[1] != 1:
        return None
    return kh * window_row(run, {"vnni": LANES})


def _conv_rows(w: np.ndarray, k: int) -> np.ndarray:
    """(OC, KH, R) -> (OC, K): each window row padded with zero weights to K / KH bytes."""
    oc, kh, run = w.shape
    out = np.zeros((oc, kh, k // kh), np.int8)
    out[:, :, :run] = w
    return out.reshape(oc, k)


def _panel(m: Match, rw: Rewriter):
    node = m.root
    w = rw.constants.get(node.inputs[1])
    if node.attrs.get("vnni") or w is None:
        return None
    attrs = dict(node.attrs)
    if node.op in ("qconv", "qconv_i32"):
        if w.ndim != 3:
            return None
        k = conv_reduction(w.shape, attrs)
        flat = None if k is None else _conv_rows(w, k)
    else:
        flat = w if w.ndim == 2 else None
    if flat is None or flat.shape[0] % LANES or flat.shape[1] % GROUP:
        return None
    ins = list(node.inputs)
    ins[1] = rw.const(pack_vnni_panels(flat), "qpanels")
    logical = rw.constants[node.inputs[1]].shape
    attrs.update(vnni=LANES, vnni_weights=tuple(logical))
    attrs.pop("im2col", None)  # window rows are read in place (see conv_reduction)
    return rw.emit(node.op, ins, attrs)


RULES: list[Rule] = [(Op(op, single_use=False), _panel) for op in ("qconv", "qconv_i32", "qmatmul", "qmatmul_i32")]


def pack_vnni(graph: Graph) -> Graph:
    """Move eligible integer kernels' weights into VNNI panels (see the module docstring)."""
    if not any(n.op in ("qconv", "qconv_i32", "qmatmul", "qmatmul_i32") for n in graph.nodes):
        return graph
    return apply_rules(graph, RULES)
