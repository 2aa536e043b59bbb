"""One driver for declarative graph rewrites: ``(pattern, function)`` tables.

A pattern is a small tree: ``Op("mul", Any("x"), Const("one", is_value(1.0)))`` matches
a ``mul`` node whose second input is the constant 1 and captures its first input as
``x``. The function receives the ``Match`` (captures by name, the matched nodes) and a
``Rewriter`` to emit replacement nodes; it returns the value that replaces the root's
output, or None to decline. The driver applies every table entry to every node until
nothing changes, then drops dead nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from kiln.ir import ops
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.passes.fold_constants import try_fold
from kiln.passes.simplify import eliminate_dead_code


class Pattern:
    pass


@dataclass(frozen=True)
class Any(Pattern):
    """Any value; captured under ``name``."""

    name: str


@dataclass(frozen=True)
class Const(Pattern):
    """A constant input; captured under ``name`` (the array is in ``match.arrays``)."""

    name: str
    where: Callable[[np.ndarray], bool] = lambda a: True


@dataclass(frozen=True)
class Op(Pattern):
    """A node of kind ``op`` whose inputs match ``args``; ``name`` captures the node.

    ``single_use``: the node's output may have no other consumer (it will disappear)."""

    op: str
    args: tuple = ()
    name: str | None = None
    where: Callable[[Node], bool] = lambda n: True
    single_use: bool = True

    def __init__(self, op, *args, name=None, where=None, single_use=True):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "where", where or (lambda n: True))
        object.__setattr__(self, "single_use", single_use)


@dataclass
class Match:
    root: Node
    values: dict[str, str] = field(default_factory=dict)      # Any/Const captures -> value name
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # Const captures -> array
    nodes: dict[str, Node] = field(default_factory=dict)       # named Op captures


def is_value(v: float) -> Callable[[np.ndarray], bool]:
    """A constant every element of which equals ``v``."""
    return lambda a: a.size > 0 and bool(np.all(a == v))


class Rewriter:
    """What a rewrite function may do: read types and constants, emit nodes and constants."""

    def __init__(self, graph: Graph, producers: Mapping[str, Node] | None = None):
        self.types = graph.value_types()
        self.producers = producers if producers is not None else graph.producers()  # the graph's, before this rewrite
        self.constants = dict(graph.constants)
        self.new_nodes: list[Node] = []
        self._n = 0
        self._taken = set(self.types)

    def type(self, name: str) -> TensorType:
        return self.types[name]

    def fresh(self, hint: str) -> str:
        while True:
            self._n += 1
            name = f"{hint}__rw{self._n}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        array = np.asarray(array, order="C")
        self.constants[name] = array
        self.types[name] = TensorType(tuple(array.shape), DType.of(array.dtype))
        return name

    def emit(self, op: str, inputs: Sequence[str], attrs: Mapping | None = None, hint: str | None = None) -> str:
        attrs = dict(attrs or {})
        out_types = ops.infer_types(op, [self.types[i] for i in inputs], attrs)
        name = self.fresh(hint or op)
        node = Node(op, tuple(inputs), (Value(name, out_types[0]),), attrs)
        folded = try_fold(node, self.constants)
        self.types[name] = out_types[0]
        if folded is not None:
            self.constants[name] = folded[0]
        else:
            self.new_nodes.append(node)
        return name


Rule = tuple[Pattern, Callable[[Match, Rewriter], "str | None"]]


def _match(pat: Pattern, value: str, producers, consumers, constants, m: Match) -> bool:
    if isinstance(pat, Any):
        if pat.name in m.values and m.values[pat.name] != value:
            return False
        m.values[pat.name] = value
        return True
    if isinstance(pat, Const):
        if value not in constants or not pat.where(constants[value]):
            return False
        m.values[pat.name] = value
        m.arrays[pat.name] = constants[value]
        return True
    node = producers.get(value)
    if node is None or node.op != pat.op or len(node.outputs) != 1 or not pat.where(node):
        return False
    if pat.single_use and len(consumers.get(value, [])) > 1:
        return False
    real = [i for i in node.inputs if i]
    if pat.args and len(real) != len(pat.args):
        return False
    if pat.name:
        m.nodes[pat.name] = node
    return all(_match(p, v, producers, consumers, constants, m) for p, v in zip(pat.args, real))


def apply_rules(graph: Graph, rules: Sequence[Rule], max_passes: int = 10) -> Graph:
    """Rewrite with ``rules`` until a fixed point; nodes no longer used are dropped.

    One pass visits the nodes in order. After a rewrite it resumes at the same position:
    the replacement nodes sit there, and no earlier node can read a later one, so every
    pattern the rewrite created is still ahead of the scan."""
    for _ in range(max_passes):
        changed, graph = _one_pass(graph, rules)
        if not changed:
            break
    return eliminate_dead_code(graph)


def _one_pass(graph: Graph, rules) -> tuple[bool, Graph]:
    changed, i = False, 0
    index = (graph.producers(), graph.consumers())
    while i < len(graph.nodes):
        new_graph = _rewrite_at(graph, i, rules, *index)
        if new_graph is None:
            i += 1
        else:
            graph, changed = new_graph, True
            index = (graph.producers(), graph.consumers())
    return changed, graph


def _rewrite_at(graph: Graph, i: int, rules, producers, consumers) -> Graph | None:
    node = graph.nodes[i]
    if len(node.outputs) != 1:
        return None
    root = node.outputs[0].name
    for pat, fn in rules:
        if pat.op != node.op:
            continue
        m = Match(node)
        root_pat = Op(pat.op, *pat.args, name=pat.name, where=pat.where, single_use=False)
        if not _match(root_pat, root, producers, consumers, graph.constants, m):
            continue
        rw = Rewriter(graph, producers)
        new = fn(m, rw)
        if new is None or new == root:
            continue
        return _splice(graph, node, root, new, rw, root in {v.name for v in graph.outputs})
    return None


def _splice(graph: Graph, node: Node, old: str, new: str, rw: Rewriter, is_output: bool) -> Graph:
    """Insert the rewriter's nodes before ``node`` and make ``old``'s users read ``new``."""
    inserted = list(rw.new_nodes)
    last = inserted[-1] if inserted else None
    if is_output and last is not None and len(last.outputs) == 1 and last.outputs[0].name == new \
            and last.outputs[0].type == rw.types[old]:
        # The graph output keeps its name: the rewrite's last node computes it under that name.
        inserted[-1] = Node(last.op, last.inputs, (Value(old, rw.types[old]),), last.attrs, last.name)
    elif is_output:
        # ... or, where the result is a value computed elsewhere, a copy (a kernel writes the
        # caller's buffer).
        inserted.append(Node("identity", (new,), (Value(old, rw.types[old]),), {}))
    nodes = []
    for n in graph.nodes:
        if n is node:
            nodes.extend(inserted)
            continue
        if not is_output:
            n = Node(n.op, tuple(new if i == old else i for i in n.inputs), n.outputs, n.attrs, n.name)
        nodes.append(n)
    return graph.replace(nodes=tuple(nodes), constants=rw.constants)
