"""Pack matmul B operands into column panels (``kiln/ir/ops/packed.py`` says why).

A ``matmul`` whose B has a static N that spans more than one panel of the register tile's
column count (two vectors: 32 floats with AVX-512, 16 with AVX2, 8 with NEON; three where
the target offers them and they divide N, ``Capabilities.panel_widths``) becomes
``matmul_packed``:
- constant B (weights): packed here, at compile time, into a new constant; when N is not a
  multiple of the panel, with zero columns up to one, and a ``slice`` takes the N real
  outputs;
- computed B (N a multiple of the panel): a ``pack_panels`` node packs it at run time, only when the matmul is large
  enough for the copy (K x N) to pay for itself against the M x K x N multiply-adds, and
  B's rows are long enough to thrash L1 when read with their row stride.
Results are bit-identical: the multiply-adds are the same, in the same order.
"""
from __future__ import annotations

import numpy as np

from kiln.ir import ops
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.ir.ops import packed as _packed_ops  # noqa: F401  (registers the packed ops)

# A computed B is packed only when each panel is reused by at least this many rows of A ...
RUNTIME_PACK_MIN_ROWS = 64
# ... and a row of B is at least this long: shorter rows sit in few cache lines anyway.
RUNTIME_PACK_MIN_ROW_BYTES = 2048

PACKABLE_DTYPES = (DType.float32,)


def pack_panels(b: np.ndarray, panel: int) -> np.ndarray:
    """(..., K, N) -> (..., N/panel, K, panel), as the ``pack_panels`` op computes it."""
    *batch, k, n = b.shape
    split = b.reshape(*batch, k, n // panel, panel)
    return np.ascontiguousarray(np.moveaxis(split, -2, -3))


def pad_columns(b: np.ndarray, panel: int) -> np.ndarray:
    """B (..., K, N) with zero columns appended up to a multiple of ``panel``."""
    extra = -b.shape[-1] % panel
    return np.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, extra)]) if extra else b


def _packable(node: Node, types, constants, panel: int) -> str | None:
    """"constant", "padded" (constant, N not a multiple of the panel) or "runtime" when
    ``node`` should use packed B, else None."""
    if node.op != "matmul":
        return None
    a, b = types[node.inputs[0]], types[node.inputs[1]]
    n = b.shape[-1]
    if b.dtype not in PACKABLE_DTYPES or not isinstance(n, int) or n <= panel:
        return None
    if node.inputs[1] in constants:
        return "constant" if n % panel == 0 else "padded"
    if n % panel:
        return None
    m, k = a.shape[-2], b.shape[-2]
    if (isinstance(m, int) and m >= RUNTIME_PACK_MIN_ROWS and isinstance(k, int)
            and n * b.dtype.itemsize >= RUNTIME_PACK_MIN_ROW_BYTES):
        return "runtime"
    return None


def panel_for(n, panels: tuple[int, ...]) -> int:
    """The first (widest) of ``panels`` that divides a static ``n``, else the last: a
    padded B wastes fewest columns on the narrowest panel."""
    return next((p for p in panels if isinstance(n, int) and n % p == 0 and n > p), panels[-1])


def pack_matmuls(graph: Graph, panels: int | tuple[int, ...]) -> Graph:
    """Matmuls with packed B, each in the first of ``panels`` (widest first) that divides
    its N (``Capabilities.panel_widths``); a single int: one width for all."""
    panels = (panels,) if isinstance(panels, int) else tuple(panels)
    types = graph.value_types()
    constants = dict(graph.constants)
    nodes: list[Node] = []
    packed_of: dict[str, str] = {}  # B -> its packed value (several matmuls may share one B)
    for node in graph.nodes:
        panel = panel_for(types[node.inputs[1]].shape[-1], panels) if node.op == "matmul" else panels[-1]
        kind = _packable(node, types, constants, panel)
        if kind is None:
            nodes.append(node)
            continue
        b = node.inputs[1]
        if b not in packed_of:
            name = f"{b}__panels{panel}"
            if kind == "runtime":
                t = ops.infer_types("pack_panels", [types[b]], {"panel": panel})[0]
                nodes.append(Node("pack_panels", (b,), (Value(name, t),), {"panel": panel}))
            else:
                constants[name] = pack_panels(pad_columns(constants[b], panel), panel)
                types[name] = TensorType(constants[name].shape, types[b].dtype)
            packed_of[b] = name
        inputs, attrs = (node.inputs[0], packed_of[b]), {"panel": panel}
        if kind != "padded":
            nodes.append(Node("matmul_packed", inputs, node.outputs, attrs, node.name))
            continue
        # zero columns up to whole panels, then the real ones sliced out (the bias and
        # activation that follow fuse with the slice): a classifier's 1000 outputs are
        # 32 panels of 32 instead of 40 register tiles of 25 strided columns
        out = node.outputs[0]
        t = ops.infer_types("matmul_packed", [types[i] for i in inputs], attrs)[0]
        wide = Value(f"{out.name}__panels", t)
        nodes.append(Node("matmul_packed", inputs, (wide,), attrs, node.name))
        rank = len(t.shape)
        nodes.append(Node("slice", (wide.name,), node.outputs,
                          {"starts": (0,) * rank, "ends": tuple(out.type.shape), "steps": (1,) * rank}))
    used = {i for n in nodes for i in n.inputs}
    return graph.replace(nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})

