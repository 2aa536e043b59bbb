"""Per-dispatch tensor views: the bindings that let a WGSL kernel read 16 bytes at once.

Every kernel normally reaches memory through two kinds of bindings, the read-write ``arena``
and the read-only ``weights`` chunks, declared as arrays of ``u32`` words. A vector load needs
the data declared as ``array<vec4<u32>>``, and that cannot be the arena: a scalar store
through a vector-typed binding is a store to one component, which WGSL lets an implementation
carry out as a read-modify-write of all four -- racing with the invocation that owns the
neighbouring word. A second, vector-typed binding of the whole arena is refused by browsers
(Dawn: "Writable storage buffer binding aliasing"), and a read-only binding of it beside the
read-write one is a usage conflict in the same dispatch.

What browsers do allow is several read-write bindings of one buffer whose *ranges do not
overlap* (checked in Chromium 156: two such bindings run; overlapping ones are refused with the
error above). So a dispatch that has vector loads binds each tensor it touches on its own: a
view is the tensor's range of the arena (or of its weight chunk), starting at offset 0 in the
shader. A view the dispatch only reads, and reads with vector loads, is declared
``array<vec4<u32>>``; its scalar reads pick a component. Views the dispatch writes stay
``array<u32>``. The memory plan already starts every tensor on a 256-byte boundary (WebGPU's
``minStorageBufferOffsetAlignment``), and live tensors never overlap, so the ranges qualify.

A dispatch falls back to the shared bindings (its vector loads printed as four scalar loads)
when a view would not work: a tensor in f16 storage or packed four to a word, a weight tensor
across two chunks or off a 256-byte boundary, overlapping ranges, or more views than
WebGPU's default of 8 storage bindings per shader stage.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.expr import loads
from kiln.ir.loop import Func, Store, VectorLoad, stmt_exprs, walk_stmts

VIEW_BINDING = 16          # binding number of a kernel module's first view (0-9 are the shared bindings)
OFFSET_ALIGN_WORDS = 64    # 256 bytes: WebGPU's minStorageBufferOffsetAlignment (the memory plan's too)
MAX_VIEWS = 8              # WebGPU's default maxStorageBuffersPerShaderStage: all a dispatch's views


@dataclass(frozen=True)
class View:
    binding: int
    buffer: str        # "arena" or "weights"
    chunk: int         # the weight chunk (0 for the arena)
    offset: int        # words from the start of the buffer
    words: int
    write: bool        # the dispatch stores into it: declared array<u32>
    vector: bool       # read with vector loads only: declared array<vec4<u32>>

    @property
    def var(self) -> str:
        return f"kiln_view{self.binding}"

    def declaration(self) -> str:
        access = "read_write" if self.buffer == "arena" else "read"
        element = "vec4<u32>" if self.vector else "u32"
        return f"@group(0) @binding({self.binding}) var<storage, {access}> {self.var}: array<{element}>;"

    def table(self) -> dict:
        """The binding as runners create it: buffer, byte range, and whether it is read-only."""
        return {"binding": self.binding, "buffer": self.buffer, "chunk": self.chunk,
                "offset": self.offset, "words": self.words, "readOnly": self.buffer != "arena"}


def aligned_words(n: int) -> int:
    """``n`` words (at least one) rounded up to a whole binding-offset alignment."""
    return -(-max(n, 1) // OFFSET_ALIGN_WORDS) * OFFSET_ALIGN_WORDS


def dispatch_views(func: Func, bases: dict[str, tuple[str, int]], chunk_words: int, packed,
                   first_binding: int) -> tuple[list[View], dict[str, tuple[str, bool]]] | None:
    """The views of a dispatch that has vector loads, numbered from ``first_binding``, and
    for the renderer each parameter's (view variable, vector-typed); None when the dispatch
    has no vector loads or must keep the shared bindings (see the module docstring)."""
    stmts = list(walk_stmts(func.body))
    vector_srcs = {s.src for s in stmts if isinstance(s, VectorLoad)}
    if not vector_srcs:
        return None
    written = {s.buffer for s in stmts if isinstance(s, Store)}
    read = vector_srcs | {ld.buffer for s in stmts for e in stmt_exprs(s) for ld in loads(e)}
    groups: dict[tuple[str, int, int], dict] = {}
    for p in func.params:
        if p.scope != "global" or p.name not in written | read:
            continue
        region, base = bases[p.name]
        if region not in ("arena", "weights") or p.name in packed or not all(isinstance(d, int) for d in p.shape):
            return None
        n = 1
        for d in p.shape:
            n *= d
        words, chunk, offset = aligned_words(n), 0, base
        if region == "weights":
            chunk, offset = base // chunk_words, base % chunk_words
            if offset % OFFSET_ALIGN_WORDS or offset + words > chunk_words:
                return None
        g = groups.setdefault((region, chunk, offset), {"words": 0, "params": [], "write": False, "vector": False})
        g["words"] = max(g["words"], words)
        g["params"].append(p.name)
        g["write"] |= p.name in written
        g["vector"] |= p.name in vector_srcs
    if len(groups) > MAX_VIEWS:
        return None
    spans = sorted((k[0], k[1], k[2], k[2] + g["words"]) for k, g in groups.items())
    if any(a[:2] == b[:2] and b[2] < a[3] for a, b in zip(spans, spans[1:])):
        return None  # overlapping ranges: browsers refuse overlapping writable bindings
    views, mapping = [], {}
    for i, ((region, chunk, offset), g) in enumerate(groups.items()):
        v = View(first_binding + i, region, chunk, offset, g["words"], g["write"], g["vector"] and not g["write"])
        views.append(v)
        mapping.update({name: (v.var, v.vector) for name in g["params"]})
    return views, mapping


__all__ = ["View", "VIEW_BINDING", "aligned_words", "dispatch_views"]
