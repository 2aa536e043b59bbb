"""Integer kernels that read int8 activations: for targets whose dot products are signed.

The ``quantize`` pass stages every ``qconv``/``qmatmul`` activation as uint8 (int8 inputs
move by +128), the operand pair of x86's ``vpdpbusd`` (u8 x s8). Arm has no mixed-sign dot
product before the I8MM extension: ``sdot`` (ARMv8.2 DotProd) and the widening ``smull``
(base ARMv8) multiply int8 by int8. For such a target this pass moves the activations to
int8 instead -- int8 inputs unchanged (``act_offset`` 0), uint8 inputs as ``x - 128``
(``act_offset`` -128) -- and folds the change into the bias, which already carries the
zero-point terms ``-(x_zp + act_offset) * sum_k w`` (see ``kiln/ir/ops/qlinear.py``):

    sum_k (x - 128) * w  +  128 * sum_k w   ==   sum_k x * w

The weight sums are compile-time constants, so the integers the kernel produces are the
same as before, bit for bit; only the operand types of the inner product change.

Cortex-M takes the third choice, ``stage_activations_native``: activations read in the
type they are stored in (``act_offset`` 0 for both), since its dot helpers widen either
signedness and any offset would cost a staging copy of the input in SRAM.

Helium (Cortex-M55) multiplies int8 x int8 sixteen lanes per ``VMLADAVA.S8`` but has no
mixed-sign form: a uint8 operand widens to eight int16 lanes, half the rate. Its dot-product
convolutions and matrix products (``stage_activations_helium``) read uint8 activations as
int8 -- ``act_offset`` -128 applied where each value is read (attribute ``offset_at_read``:
``x ^ 0x80``, one ``VEOR`` per sixteen bytes in registers, no staging copy). A depthwise
convolution keeps them as stored: its four lanes per tap widen either type at the same cost.

A target opts in from :meth:`Target.adapt_quantized` (kiln/targets/base.py), which the
pipeline calls right after ``quantize``.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.dtype import DType
from kiln.passes.rewrite import Any, Const, Match, Op, Rewriter, Rule, apply_rules

# act_offset that stages each activation type as int8
SIGNED_OFFSET = {DType.int8: 0, DType.uint8: -128}
# act_offset that reads each activation type as it is stored (no staging copy for the offset)
NATIVE_OFFSET = {DType.int8: 0, DType.uint8: 0}
INT32 = np.iinfo(np.int32)


def _restage(m: Match, rw: Rewriter, choose) -> str | None:
    node = m.nodes["op"]
    act = rw.type(node.inputs[0]).dtype
    new, extra = choose(node, act)
    old = int(node.attrs.get("act_offset", 0))
    if old == new and all(node.attrs.get(k) == v for k, v in extra.items()):
        return None
    w = m.arrays["w"].astype(np.int64)
    wsum = w.reshape(w.shape[0], -1).sum(axis=1)
    # bias = bias_q - (x_zp + off) * wsum: replace old's share of the offset by new's
    bias = m.arrays["bias"].astype(np.int64) + (old - new) * wsum
    if bias.min(initial=0) < INT32.min or bias.max(initial=0) > INT32.max:
        return None  # the integer kernel as it is stays correct
    attrs = dict(node.attrs, act_offset=new, **extra)
    inputs = [node.inputs[0], node.inputs[1], rw.const(bias.astype(np.int32), "qbias"), *node.inputs[3:]]
    return rw.emit(node.op, inputs, attrs)


def _rules(choose) -> list[Rule]:
    """``choose(node, activation dtype) -> (act_offset, attributes to set)``"""
    return [(Op(op, Any("x"), Const("w"), Const("bias"), Const("mult"), Const("shift"), name="op"),
             lambda m, rw: _restage(m, rw, choose)) for op in ("qconv", "qmatmul")]


def _by_type(offsets):
    return lambda node, act: (offsets[act], {})


def _helium(node, act):
    """uint8 activations of a dot product read as int8, converted in registers (see the
    module docstring); everything else as stored."""
    if act is DType.uint8 and (node.op == "qmatmul" or int(node.attrs.get("group", 1)) == 1):
        return -128, {"offset_at_read": True}
    return 0, {}


RULES = _rules(_by_type(SIGNED_OFFSET))
NATIVE_RULES = _rules(_by_type(NATIVE_OFFSET))
HELIUM_RULES = _rules(_helium)


def _restage_all(graph, rules):
    if not any(n.op in ("qconv", "qmatmul") for n in graph.nodes):
        return graph
    return apply_rules(graph, rules)


def stage_activations_signed(graph):
    """Rewrite every ``qconv``/``qmatmul`` to read int8 activations (see the module docstring)."""
    return _restage_all(graph, RULES)


def stage_activations_native(graph):
    """Rewrite every ``qconv``/``qmatmul`` to read its activations in the type they are
    stored in (``act_offset`` 0): int8 x int8 for int8 activations, uint8 x int8 for uint8
    ones. For targets whose dot products take both (Cortex-M's SXTB16/UXTB16 widening,
    Helium's widening loads), where an offset would cost a staging copy of the input in
    RAM -- the copy a 1x1 convolution over channels-last storage otherwise does without."""
    return _restage_all(graph, NATIVE_RULES)


def stage_activations_helium(graph):
    """Native staging, except that dot products read uint8 activations as int8 in registers
    (``act_offset`` -128 with ``offset_at_read``; see the module docstring)."""
    return _restage_all(graph, HELIUM_RULES)


__all__ = ["stage_activations_signed", "stage_activations_native", "stage_activations_helium", "SIGNED_OFFSET",
           "NATIVE_OFFSET", "RULES", "NATIVE_RULES", "HELIUM_RULES"]
