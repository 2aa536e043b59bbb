"""Layout pass: run 2-D convolutions, and the elementwise ops between them, in NCHW{b}c.

Walks the graph once, tracking which values are stored blocked:
- an eligible ``conv`` (2-D, float32, constant weights, groups 1 or depthwise, channel
  counts divisible by the block) becomes ``conv_nchwc`` with weights packed at compile
  time; its input is converted with ``to_nchwc`` unless it is blocked already;
- elementwise/broadcast nodes whose tensor inputs are all blocked (or per-channel or
  scalar constants, repacked here) stay blocked;
- a global average pool pools in the blocked layout (a mean over H and W);
- a concat over channels of blocked parts in one block stays blocked, and so does a slice
  of whole channel blocks;
- anything else that reads a blocked value gets it back through ``from_nchwc``.
So transposes happen only where a blocked region meets a node that is not layout-aware,
typically once after the stem and once before the classifier.
"""
from __future__ import annotations

import numpy as np

from kiln.ir import ops
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.ir.ops import layout as _layout_ops  # noqa: F401  (registers the NCHWc ops)


MIN_BLOCK = 4  # narrower channel blocks than 4 lanes do not vectorize usefully


def channel_block(channels, block: int) -> int | None:
    """The channel block for ``channels``: the vector width, or a narrower power of two
    that divides the count (MobileNet's 24 and 40 channels: 8 lanes of a 16-lane machine),
    or None (the tensor stays NCHW)."""
    if not isinstance(channels, int):
        return None
    b = block
    while b >= MIN_BLOCK:
        if channels % b == 0:
            return b
        b //= 2
    return None


def _eligible_conv(node: Node, types, constants, block: int) -> str | None:
    """"dense" or "depthwise" when ``node`` can run blocked, else None."""
    if node.op != "conv" or node.inputs[1] not in constants:
        return None
    x, w = types[node.inputs[0]], constants[node.inputs[1]]
    if len(x.shape) != 4 or x.dtype is not DType.float32 or w.dtype != np.float32:
        return None
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in constants:
        return None
    c, oc, group = x.shape[1], w.shape[0], int(node.attrs.get("group", 1))
    if not isinstance(c, int) or channel_block(oc, block) is None:
        return None
    if group == 1 and (channel_block(c, block) is not None or c < block):
        return "dense"
    if group == c == oc and w.shape[1] == 1:
        return "depthwise"
    return None


def input_block(channels: int, block: int) -> int:
    """The input's channel block: the vector width (or a narrower one that divides the
    count), or all channels of a narrow input (the RGB stem: (N, 1, H, W, 3), so the
    convolution still vectorizes over output channels)."""
    return channel_block(channels, block) or channels


def pack_dense(w: np.ndarray, b: int, bi: int | None = None) -> np.ndarray:
    """(OC, C, KH, KW) -> (OC/b, C/bi, KH, KW, bi, b)."""
    oc, c, kh, kw = w.shape
    bi = bi or b
    return np.ascontiguousarray(w.reshape(oc // b, b, c // bi, bi, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def pack_depthwise(w: np.ndarray, b: int) -> np.ndarray:
    """(C, 1, KH, KW) -> (C/b, KH, KW, b)."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c // b, b, kh, kw).transpose(0, 2, 3, 1))


def pack_channel_vector(v: np.ndarray, b: int) -> np.ndarray:
    """A per-channel vector (C,) -> (C/b, 1, 1, b), the blocked broadcast shape."""
    return np.ascontiguousarray(v.reshape(-1, 1, 1, b))


class _Builder:
    def __init__(self, graph: Graph, block: int):
        self.graph, self.block = graph, block
        self.types = graph.value_types()
        self.constants = dict(graph.constants)
        self.nodes: list[Node] = []
        self.blocked: dict[str, str] = {}   # NCHW value -> its blocked copy
        self.plain: dict[str, str] = {}     # blocked value -> its NCHW copy
        self.original: dict[str, TensorType] = {}  # blocked value -> the NCHW type it stands for
        self.block_of: dict[str, int] = {}  # blocked value -> its channel block
        self.stands_for: dict[str, str] = {}  # blocked result of a graph node -> the node's output
        self._n = 0

    def fresh(self, hint):
        self._n += 1
        return f"{hint}__nchwc{self._n}"

    def add(self, op, inputs, attrs, out: str | None = None) -> str:
        t = ops.infer_types(op, [self.types[i] for i in inputs], attrs)[0]
        name = out or self.fresh(op)
        self.types[name] = t
        self.nodes.append(Node(op, tuple(inputs), (Value(name, t),), attrs))
        return name

    def const(self, arr, hint):
        name = self.fresh(hint)
        self.constants[name] = arr
        self.types[name] = TensorType(tuple(arr.shape), DType.of(arr.dtype))
        return name

    def mark(self, blocked: str, original: TensorType, block: int) -> None:
        self.original[blocked], self.block_of[blocked] = original, block

    def add_blocked(self, op, inputs, attrs, stands_for: Value, block: int) -> str:
        """A node computing ``stands_for`` in NCHW{block}c: later readers of it find this one."""
        name = self.add(op, inputs, attrs, out=self.fresh(stands_for.name))
        self.mark(name, stands_for.type, block)
        self.blocked[stands_for.name] = name
        self.stands_for[name] = stands_for.name
        return name

    def to_blocked(self, name: str, block: int) -> str:
        """``name`` in NCHW{block}c (converting it once, however many convs read it)."""
        if name in self.original and self.block_of[name] == block:
            return name
        name = self.to_plain(name)
        key = f"{name}@{block}"
        if key not in self.blocked:
            blocked = self.add("to_nchwc", [name], {"block": block})
            self.blocked[key] = blocked
            self.mark(blocked, self.types[name], block)
        return self.blocked[key]

    def to_plain(self, name: str, out: str | None = None) -> str:
        if name not in self.original:
            return name
        attrs = {"block": self.block_of[name]}
        if out is not None:
            return self.add("from_nchwc", [name], attrs, out=out)
        if name not in self.plain:
            self.plain[name] = self.add("from_nchwc", [name], attrs)
        return self.plain[name]


def _blocked_operand(bld: _Builder, name: str, like: TensorType, block: int):
    """``name`` as an operand of a blocked elementwise op shaped like ``like`` and stored in
    channel blocks of ``block``, or None."""
    if name in bld.original:
        return name if bld.original[name] == like and bld.block_of[name] == block else None
    arr = bld.constants.get(name)
    if arr is None:
        # A plain tensor of the same shape (a residual branch that skipped the convs): block
        # it too -- one to_nchwc, shared with any conv that reads it, instead of
        # unblocking the other operand and blocking the result again.
        return bld.to_blocked(name, block) if bld.types[name] == like else None
    if arr.size == 1:
        return name
    a = arr.reshape((1,) * (4 - arr.ndim) + arr.shape) if arr.ndim <= 4 else None
    if a is None or any(n != 1 for k, n in enumerate(a.shape) if k != 1) or a.shape[1] != like.shape[1]:
        return None
    return bld.const(pack_channel_vector(a.reshape(-1), block)[None], "chan")


def _stored_block(bld: _Builder, name: str, channels: int) -> int | None:
    """The block ``name`` is stored in when it divides ``channels``: reading it as it is
    saves a conversion."""
    name = bld.blocked.get(name, name)
    k = bld.block_of.get(name)
    return k if k is not None and channels % k == 0 else None


def _convert_conv(bld: _Builder, node: Node, kind: str) -> None:
    w = bld.constants[node.inputs[1]]
    oc, c = w.shape[0], w.shape[1]
    if kind == "dense":
        b = channel_block(oc, bld.block)
        bi = _stored_block(bld, node.inputs[0], c) or input_block(c, bld.block)
    else:  # depthwise: one block on both sides
        b = bi = _stored_block(bld, node.inputs[0], oc) or channel_block(oc, bld.block)
    packed = pack_dense(w, b, bi) if kind == "dense" else pack_depthwise(w, b)
    x = bld.blocked.get(node.inputs[0], node.inputs[0])
    inputs = [bld.to_blocked(x, bi), bld.const(packed, "w_nchwc")]
    if len(node.inputs) > 2 and node.inputs[2]:
        inputs.append(bld.const(pack_channel_vector(bld.constants[node.inputs[2]], b), "b_nchwc"))
    attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations") if k in node.attrs}
    attrs.update(block=b, depthwise=kind == "depthwise")
    out = node.outputs[0]
    bld.add_blocked("conv_nchwc", inputs, attrs, out, b)


def _convert_max_pool(bld: _Builder, node: Node) -> bool:
    """A 2-D max pool of a blocked value (a ResNet stem) stays blocked."""
    x = bld.blocked.get(node.inputs[0], node.inputs[0])
    if (x not in bld.original or len(node.outputs) != 1
            or len(node.attrs.get("kernel_shape", ())) != 2 or node.attrs.get("storage_order", 0)):
        return False
    attrs = {k: node.attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "ceil_mode")
             if k in node.attrs}
    out = node.outputs[0]
    bld.add_blocked("max_pool_nchwc", [x], attrs, out, bld.block_of[x])
    return True


def _convert_avg_pool(bld: _Builder, node: Node) -> bool:
    """A 2-D float average pool of a blocked value (Inception's pool branches: 3x3, stride 1)
    stays blocked: unblocked, its 256 x 28 x 28 input was converted there and back around a
    pool that read one channel plane at a time (Inception v2: 1.2 ms of its 18)."""
    x = bld.blocked.get(node.inputs[0], node.inputs[0])
    if (x not in bld.original or len(node.outputs) != 1 or len(node.attrs.get("kernel_shape", ())) != 2
            or not node.outputs[0].type.dtype.is_float):
        return False
    attrs = {k: node.attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "ceil_mode",
                                        "count_include_pad") if k in node.attrs}
    bld.add_blocked("avg_pool_nchwc", [x], attrs, node.outputs[0], bld.block_of[x])
    return True


def _convert_global_avg_pool(bld: _Builder, node: Node) -> bool:
    """A float global average pool of a blocked value pools in the blocked layout: a mean over
    H and W of [N, C/b, H, W, b] leaves [N, C/b, 1, 1, b], so the conversion back to NCHW moves
    C values instead of C x H x W (MobileNetV2's 7x7x1280: 36 us of conversion on one core)."""
    x = bld.blocked.get(node.inputs[0], node.inputs[0])
    out = node.outputs[0]
    if x not in bld.original or len(node.outputs) != 1 or not out.type.dtype.is_float:
        return False
    bld.add_blocked("reduce_mean", [x], {"axes": (2, 3), "keepdims": True}, out, bld.block_of[x])
    return True


def _convert_concat(bld: _Builder, node: Node) -> bool:
    """A 4-D concat over channels of blocked values (Inception's branches, DenseNet's
    growing stack, SqueezeNet's fire modules) stays blocked when every part's channel count
    is a whole number of one common block: [N, C1/b, H, W, b] ++ [N, C2/b, H, W, b] along
    axis 1 is the blocked [N, (C1 + C2)/b, H, W, b]. Unblocking each part and blocking the
    result again cost SqueezeNet 0.36 of its 4.5 ms. A plain part is blocked (one
    conversion of it instead of one of the whole result)."""
    out = node.outputs[0]
    if len(out.type.shape) != 4 or len(node.outputs) != 1:
        return False
    if int(node.attrs.get("axis", 0)) % 4 != 1:
        return False
    parts = [bld.blocked.get(i, i) for i in node.inputs]
    stored = {bld.block_of[p] for p in parts if p in bld.original}
    if len(stored) != 1:
        return False  # nothing blocked, or parts in different blocks
    (b,) = stored
    types = [bld.original[p] if p in bld.original else bld.types[p] for p in parts]
    if any(len(t.shape) != 4 or not isinstance(t.shape[1], int) or t.shape[1] % b for t in types):
        return False
    inputs = [p if p in bld.original else bld.to_blocked(p, b) for p in parts]
    bld.add_blocked("concat", inputs, {"axis": 1}, out, b)
    return True


def _convert_channel_slice(bld: _Builder, node: Node) -> bool:
    """A slice of whole channel blocks of a blocked value (a grouped convolution's input,
    split per group by kiln/passes/grouped_conv.py) stays blocked: channels s..e of
    [N, C/b, H, W, b] are its blocks s/b..e/b."""
    x = bld.blocked.get(node.inputs[0], node.inputs[0])
    out = node.outputs[0]
    if x not in bld.original or len(out.type.shape) != 4 or len(node.outputs) != 1:
        return False
    b, shape = bld.block_of[x], bld.original[x].shape
    starts, ends, steps = (tuple(node.attrs[k]) for k in ("starts", "ends", "steps"))
    whole = all(s == 0 and e == n and t == 1 for k, (s, e, t, n) in enumerate(zip(starts, ends, steps, shape))
                if k != 1)
    if not whole or steps[1] != 1 or starts[1] % b or out.type.shape[1] % b:
        return False
    n, _, h, w = shape
    attrs = {"starts": (0, starts[1] // b, 0, 0, 0), "ends": (n, starts[1] // b + out.type.shape[1] // b, h, w, b),
             "steps": (1, 1, 1, 1, 1)}
    bld.add_blocked("slice", [x], attrs, out, b)
    return True


# ops with a blocked form of their own: each converter returns False where it does not apply
_LAYOUT_AWARE = {"max_pool": _convert_max_pool, "avg_pool": _convert_avg_pool,
                 "global_avg_pool": _convert_global_avg_pool, "concat": _convert_concat,
                 "slice": _convert_channel_slice}


def to_nchwc(graph: Graph, block: int) -> Graph:
    bld = _blocked(graph, block)
    used = {i for n in bld.nodes for i in n.inputs}
    return graph.replace(nodes=tuple(bld.nodes), constants={k: v for k, v in bld.constants.items() if k in used})


def isolated_convs(graph: Graph, block: int) -> set[str]:
    """Outputs of the convs that NCHWc would convert into and straight back out of: the
    conv's input is converted for it alone (a graph input, or a plain op's result), and its
    blocked result -- through elementwise ops with constant other operands (bias, ReLU6) --
    reaches only conversions back to NCHW. A lone layer between NCHW tensors (a kernel
    plugged into another runtime, a benchmark of one layer) spends more on those two
    conversions than the blocked layout saves: ``passes/isolated_convs.py`` runs them plain."""
    bld = _blocked(graph, block)
    producer = {o.name: n for n in bld.nodes for o in n.outputs}
    readers: dict[str, list[Node]] = {}
    for n in bld.nodes:
        for i in set(n.inputs):
            readers.setdefault(i, []).append(n)

    def only_unblocked_after(name: str) -> bool:
        for r in readers.get(name, []):
            if r.op == "from_nchwc":
                continue
            out = r.outputs[0].name
            elementwise = ops.get(r.op).fusion in (ops.FusionKind.ELEMENTWISE, ops.FusionKind.BROADCAST)
            others_constant = all(i == name or i in bld.constants for i in r.inputs if i)
            if not (elementwise and out in bld.original and others_constant and only_unblocked_after(out)):
                return False
        return True

    found = set()
    for n in bld.nodes:
        src = producer.get(n.inputs[0])
        if (n.op == "conv_nchwc" and src is not None and src.op == "to_nchwc"
                and len(readers[src.outputs[0].name]) == 1 and only_unblocked_after(n.outputs[0].name)):
            found.add(bld.stands_for[n.outputs[0].name])
    return found


def _blocked(graph: Graph, block: int) -> _Builder:
    """The layout pass's walk: the builder holds the rewritten nodes and constants."""
    bld = _Builder(graph, block)
    outputs = {v.name for v in graph.outputs}
    for node in graph.nodes:
        kind = _eligible_conv(node, bld.types, bld.constants, block)
        if kind:
            _convert_conv(bld, node, kind)
            continue
        convert = _LAYOUT_AWARE.get(node.op)
        if convert and node.outputs[0].name not in outputs and convert(bld, node):
            continue  # (a graph output keeps the plain op: it is NCHW by name)
        out = node.outputs[0]
        reads_blocked = any(bld.blocked.get(i, i) in bld.original for i in node.inputs if i)
        if (reads_blocked and len(node.outputs) == 1 and out.name not in outputs
                and ops.get(node.op).fusion in (ops.FusionKind.ELEMENTWISE, ops.FusionKind.BROADCAST)
                and out.type.shape == next(bld.original[bld.blocked.get(i, i)] for i in node.inputs
                                           if bld.blocked.get(i, i) in bld.original).shape):
            stored = next(bld.block_of[bld.blocked.get(i, i)] for i in node.inputs
                          if bld.blocked.get(i, i) in bld.original)
            operands = [_blocked_operand(bld, bld.blocked.get(i, i), out.type, stored) for i in node.inputs]
            if all(o is not None for o in operands):
                bld.add_blocked(node.op, operands, node.attrs, out, stored)
                continue
        inputs = tuple(bld.to_plain(bld.blocked[i]) if i in bld.blocked else i for i in node.inputs)
        bld.nodes.append(Node(node.op, inputs, node.outputs, node.attrs, node.name))
    for v in graph.outputs:  # a blocked graph output is converted back under its own name
        if v.name in bld.blocked and not any(o.name == v.name for n in bld.nodes for o in n.outputs):
            bld.to_plain(bld.blocked[v.name], out=v.name)
    return bld
