"""Graph IR: a DAG of operator nodes over typed values.

Values are named; a node names its inputs and declares its outputs with their types.
Constants (weights) live beside the nodes as numpy arrays. Everything is immutable:
passes build new graphs with ``Graph.replace``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping, Union

import numpy as np

from kiln.errors import VerificationError
from kiln.ir.dtype import DType

Dim = Union[int, object]  # an int, or a sympy expression over dimension symbols (kiln.ir.symbolic)


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: DType

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                raise VerificationError(f"size of a symbolic shape {self.shape} is unknown")
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def max_nbytes(self, bounds: Mapping[str, tuple[int, int]]) -> int:
        """Bytes at the upper bounds of the symbolic dims (what the arena must hold)."""
        from kiln.ir.symbolic import upper_bound

        n = self.dtype.itemsize
        for d in self.shape:
            n *= d if isinstance(d, int) else upper_bound(d, bounds)
        return n

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True, slots=True)
class Value:
    name: str
    type: TensorType

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype


@dataclass(frozen=True, slots=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, object] = field(default_factory=dict)
    name: str = ""

    def attr(self, key, default=None):
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class Graph:
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    nodes: tuple[Node, ...]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = "model"
    # symbol name -> (lowest, highest) value, for every symbolic dim of the inputs
    dim_bounds: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "constants", MappingProxyType(dict(self.constants)))
        object.__setattr__(self, "dim_bounds", MappingProxyType(dict(self.dim_bounds)))

    def replace(self, **changes) -> "Graph":
        return dataclasses.replace(self, **changes)

    # -- lookups -------------------------------------------------------------
    def value_types(self) -> dict[str, TensorType]:
        types = {v.name: v.type for v in self.inputs}
        for name, arr in self.constants.items():
            types[name] = TensorType(tuple(arr.shape), DType.of(arr.dtype))
        for node in self.nodes:
            for out in node.outputs:
                types[out.name] = out.type
        return types

    def producers(self) -> dict[str, Node]:
        return {out.name: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    # -- checks --------------------------------------------------------------
    def verify(self) -> "Graph":
        """Check that every value is defined once before use and outputs exist."""
        defined = {v.name for v in self.inputs} | set(self.constants)
        if len(defined) != len(self.inputs) + len(self.constants):
            raise VerificationError("a graph input shares its name with a constant")
        for node in self.nodes:
            for name in node.inputs:
                if name and name not in defined:
                    raise VerificationError(
                        f"node {node.name or node.op!r} reads {name!r} before it is defined"
                    )
            for out in node.outputs:
                if out.name in defined:
                    raise VerificationError(f"value {out.name!r} is defined more than once")
                defined.add(out.name)
        for out in self.outputs:
            if out.name not in defined:
                raise VerificationError(f"graph output {out.name!r} is never computed")
        return self

    # -- text form -------------------------------------------------------------
    def __str__(self) -> str:
        return format_graph(self)


def _fmt_attr(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array{list(v.shape)}" if v.size > 8 else repr(v.tolist())
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def format_graph(g: Graph, annotate: Mapping[str, str] | None = None) -> str:
    """A readable text form: one line per node, types on every value."""
    types = g.value_types()
    lines = [f"graph {g.name}("]
    lines += [f"    %{v.name}: {v.type}," for v in g.inputs]
    lines.append(") {")
    const_bytes = sum(a.nbytes for a in g.constants.values())
    lines.append(f"  // {len(g.constants)} constants, {const_bytes} bytes")
    for node in g.nodes:
        outs = ", ".join(f"%{o.name}: {o.type}" for o in node.outputs)
        args = ", ".join(
            ("$" if n in g.constants else "%") + n + (f"<{types[n]}>" if n in g.constants else "")
            if n else "_"
            for n in node.inputs
        )
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(node.attrs.items()))
        note = f"  // {annotate[node.outputs[0].name]}" if annotate and node.outputs[0].name in annotate else ""
        lines.append(f"  {outs} = {node.op}({args}{'; ' + attrs if attrs else ''}){note}")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in g.outputs))
    lines.append("}")
    return "\n".join(lines)


def unique_names(existing: Iterable[str]):
    """A generator of fresh value names that do not collide with ``existing``."""
    taken = set(existing)
    i = 0
    while True:
        name = f"t{i}"
        i += 1
        if name not in taken:
            taken.add(name)
            yield name
