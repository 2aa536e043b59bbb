"""Per-store features of a scheduled kernel, in the layout of Ansor's feature extractor.

Each ``Store`` of the scheduled loop IR gets one row of ``len(FEATURE_NAMES)`` floats; a
candidate is the matrix of its stores' rows (cost models pack-sum over it). The groups,
in order, follow Ansor (``src/auto_scheduler/feature.cc``):

1. computation: float/int op counts of the store's expressions times its trip count
   (multiply-add, add/sub, mul, div/mod, compare, math functions, other), bool and select ops;
2. loop structure: for vectorized, unrolled and parallel loops: count, product of extents,
   innermost extent and a one-hot position (none, innermost, middle, outer);
   (Ansor's GPU thread-binding group is not present: no GPU target tunes yet);
3. per buffer, for the ``BUFFERS`` buffers touched most: access type (read, write, both),
   bytes, unique bytes, cache lines, unique lines, reuse type (a loop that does not index the
   buffer, several reads in one statement, none), reuse distance in iterations and bytes,
   reuse count, the bytes/lines per reuse, and the innermost stride;
4. arithmetic-intensity curve: flops per unique byte at ``CURVE`` points from the innermost
   loop outward;
5. allocation: size and extents of a local buffer the store writes;
6. outer scope: trip count, loop depth, longest unrolled extent.

Every value is ``log2(1 + x)``. Index expressions are flattened row-major and analysed as
affine functions of the loop variables; an index that is not affine (a fused loop's
``//`` and ``%``) is resolved through the loops' ranges, or counts as touching the whole
buffer. ``FEATURE_VERSION`` changes whenever a name or its meaning changes: datasets and
saved models record it, and a model refuses features of another version.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.ir.expr import Bin, Cast, Const, Load, Select, Un, Var, affine_coeffs, simplify, walk
from kiln.ir.loop import PARALLEL, UNROLLED, VECTORIZED, Alloc, For, Func, If, Seq, Store

FEATURE_VERSION = "kiln-ansor-v1"
BUFFERS = 5
CURVE = 10
CACHE_LINE = 64

_COMPUTE = ["float_mad", "float_addsub", "float_mul", "float_divmod", "float_cmp", "float_math_func",
            "float_other_func", "int_mad", "int_addsub", "int_mul", "int_divmod", "int_cmp",
            "int_other", "bool_op", "select_op"]
_ANNOTATIONS = [f"{kind}_{what}" for kind in ("vec", "unroll", "parallel")
                for what in ("num", "prod", "len", "pos_none", "pos_inner", "pos_middle", "pos_outer")]
_BUFFER = ["acc_type_read", "acc_type_write", "acc_type_readwrite", "bytes", "unique_bytes", "lines",
           "unique_lines", "reuse_type_loop", "reuse_type_serial", "reuse_type_none", "reuse_dis_iter",
           "reuse_dis_bytes", "reuse_ct", "bytes_d_reuse_ct", "unique_bytes_d_reuse_ct", "lines_d_reuse_ct",
           "unique_lines_d_reuse_ct", "stride"]
_ALLOC = ["alloc_size", "alloc_prod", "alloc_outer_prod", "alloc_inner_prod"]
_OUTER = ["outer_prod", "num_loops", "auto_unroll_max_step"]

FEATURE_NAMES: list[str] = (
    _COMPUTE + _ANNOTATIONS
    + [f"B{b}.{n}" for b in range(BUFFERS) for n in _BUFFER]
    + [f"arith_intensity_curve_{i}" for i in range(CURVE)]
    + _ALLOC + _OUTER)
N_FEATURES = len(FEATURE_NAMES)
_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}

_MATH = {"exp", "log", "sqrt", "tanh", "erf", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
         "asinh", "acosh", "atanh", "pow", "sigmoid", "rsqrt", "log1p", "expm1",
         "exp_nonpos"}
_CMP = {"lt", "le", "gt", "ge", "eq", "ne", "max", "min"}
_DIVMOD = {"div", "floordiv", "mod", "fmod"}


def _log(x: float) -> float:
    return math.log2(1.0 + max(float(x), 0.0))


# -- collecting stores with their context ----------------------------------------------------

def _stores(func: Func):
    """Yield (store, loops outside it outermost first, local buffers by name, loops outside each alloc)."""
    def go(s, loops, locals_):
        if isinstance(s, For):
            yield from go(s.body, loops + [s], locals_)
        elif isinstance(s, Seq):
            for x in s.stmts:
                yield from go(x, loops, locals_)
        elif isinstance(s, Alloc):
            yield from go(s.body, loops, {**locals_, s.buffer.name: (s.buffer, len(loops))})
        elif isinstance(s, If):
            yield from go(s.then, loops, locals_)
        elif isinstance(s, Store):
            yield s, loops, locals_

    yield from go(func.body, [], {})


def _extent(loop: For) -> int:
    return loop.extent if isinstance(loop.extent, int) else 64


def _flat(indices, shape):
    """Row-major flattened index expression of a multi-dimensional access."""
    flat = None
    stride = 1
    for ix, n in zip(reversed(indices), reversed(shape)):
        term = ix * stride if stride != 1 else ix
        flat = term if flat is None else flat + term
        stride *= n if isinstance(n, int) else 64
    return simplify(flat) if flat is not None else Const(0, Var("x").dtype)


def _coeffs(e, loops) -> dict[str, int] | None:
    """Affine coefficients of the loop variables in ``e``; None when not affine."""
    c = affine_coeffs(e)
    if c is None:
        return None
    return {k: v for k, v in c.items() if k}


def _uses(e) -> set[str]:
    return {x.name for x in walk(e) if isinstance(x, Var)}


# -- the groups ------------------------------------------------------------------------------

def _compute_counts(store: Store) -> dict[str, int]:
    counts = dict.fromkeys(_COMPUTE, 0)
    exprs = [store.value, *store.indices]
    for root in exprs:
        for e in walk(root):
            if isinstance(e, Select):
                counts["select_op"] += 1
            elif isinstance(e, Bin):
                operand = e.a.dtype
                prefix = "float" if operand.is_float else "int" if operand.is_int else None
                if prefix is None:
                    counts["bool_op"] += 1
                elif e.op in ("add", "sub"):
                    counts[f"{prefix}_addsub"] += 1
                    if isinstance(e.a, Bin) and e.a.op == "mul" or isinstance(e.b, Bin) and e.b.op == "mul":
                        counts[f"{prefix}_mad"] += 1
                elif e.op == "mul":
                    counts[f"{prefix}_mul"] += 1
                elif e.op in _DIVMOD:
                    counts[f"{prefix}_divmod"] += 1
                elif e.op in _CMP:
                    counts[f"{prefix}_cmp"] += 1
                elif prefix == "float" and e.op in _MATH:
                    counts["float_math_func"] += 1
                else:
                    counts["float_other_func" if prefix == "float" else "int_other"] += 1
            elif isinstance(e, Un):
                if e.dtype.is_float:
                    counts["float_math_func" if e.op in _MATH else "float_other_func"] += 1
                elif e.dtype.is_int:
                    counts["int_other"] += 1
                else:
                    counts["bool_op"] += 1
            elif isinstance(e, Cast):
                counts["float_other_func" if e.dtype.is_float else "int_other"] += 1
    return counts


def _annotation(loops: list[For], kind: str, row: np.ndarray, prefix: str) -> None:
    marked = [(i, lp) for i, lp in enumerate(loops) if lp.kind == kind]
    row[_INDEX[f"{prefix}_num"]] = _log(len(marked))
    if not marked:
        row[_INDEX[f"{prefix}_pos_none"]] = 1.0
        return
    row[_INDEX[f"{prefix}_prod"]] = _log(math.prod(_extent(lp) for _, lp in marked))
    i, inner = marked[-1]
    row[_INDEX[f"{prefix}_len"]] = _log(_extent(inner))
    depth = len(loops)
    pos = "inner" if i == depth - 1 else "outer" if i == 0 else "middle"
    row[_INDEX[f"{prefix}_pos_{pos}"]] = 1.0


def _buffer_features(store: Store, loops: list[For], shapes: dict, trips: int):
    """Per-buffer dicts of raw values, one per buffer the store touches."""
    accesses: dict[str, list] = {}
    accesses.setdefault(store.buffer, []).append(("w", store.indices))
    for e in walk(store.value):
        if isinstance(e, Load):
            accesses.setdefault(e.buffer, []).append(("r", e.indices))
    names = [lp.var.name for lp in loops]
    extents = {lp.var.name: _extent(lp) for lp in loops}
    out = []
    for buf, acc in accesses.items():
        shape, itemsize = shapes.get(buf, ((), 4))
        numel = math.prod(d if isinstance(d, int) else 64 for d in shape) or 1
        kinds = {k for k, _ in acc}
        used: set[str] = set()
        unique = 0
        stride = 0
        for _, ix in acc:
            flat = _flat(ix, shape)
            c = _coeffs(flat, loops)
            if c is None:  # not affine: the loops it mentions range over the whole buffer
                vars_ = _uses(flat) & set(names)
                used |= vars_
                u = min(numel, math.prod(extents[v] for v in vars_))
            else:
                vars_ = {v for v, k in c.items() if k and v in extents}
                used |= vars_
                u = min(numel, 1 + sum(abs(c[v]) * (extents[v] - 1) for v in vars_))
                inner = next((n for n in reversed(names) if c.get(n)), None)
                if inner is not None and not stride:
                    stride = abs(c[inner])
            unique = max(unique, u)
        n_acc = len(acc)
        bytes_ = trips * n_acc * itemsize
        elems_per_line = max(CACHE_LINE // itemsize, 1)
        innermost = extents[names[-1]] if names else 1
        lines = trips * n_acc * min(1.0, stride / elems_per_line) if stride else trips * n_acc / max(innermost, 1)
        unique_bytes = unique * itemsize
        unique_lines = max(unique_bytes / CACHE_LINE, 1.0)
        # reuse: the innermost loop whose variable does not index this buffer
        reuse_loop = next((i for i in reversed(range(len(names))) if names[i] not in used), None)
        if reuse_loop is not None:
            rtype = "loop"
            reuse_ct = extents[names[reuse_loop]]
            dis_iter = math.prod(extents[n] for n in names[reuse_loop + 1:])
        elif n_acc > 1:
            rtype, reuse_ct, dis_iter = "serial", n_acc, 1
        else:
            rtype, reuse_ct, dis_iter = "none", 0, 0
        out.append({
            "acc_type": "readwrite" if len(kinds) == 2 else "write" if "w" in kinds else "read",
            "bytes": bytes_, "unique_bytes": unique_bytes, "lines": lines, "unique_lines": unique_lines,
            "reuse_type": rtype, "reuse_dis_iter": dis_iter, "reuse_dis_bytes": dis_iter * n_acc * itemsize,
            "reuse_ct": reuse_ct, "stride": stride, "unique": unique, "itemsize": itemsize, "used": used,
        })
    return out


def store_features(store: Store, loops: list[For], shapes: dict, locals_: dict) -> np.ndarray:
    row = np.zeros(N_FEATURES, dtype=np.float32)
    trips = math.prod(_extent(lp) for lp in loops)
    counts = _compute_counts(store)
    for name, n in counts.items():
        row[_INDEX[name]] = _log(n * trips)
    for kind, prefix in ((VECTORIZED, "vec"), (UNROLLED, "unroll"), (PARALLEL, "parallel")):
        _annotation(loops, kind, row, prefix)
    bufs = sorted(_buffer_features(store, loops, shapes, trips), key=lambda b: -b["bytes"])
    for b, f in enumerate(bufs[:BUFFERS]):
        p = f"B{b}."
        row[_INDEX[p + "acc_type_" + f["acc_type"]]] = 1.0
        row[_INDEX[p + "reuse_type_" + f["reuse_type"]]] = 1.0
        for key in ("bytes", "unique_bytes", "lines", "unique_lines", "reuse_dis_iter", "reuse_dis_bytes",
                    "reuse_ct", "stride"):
            row[_INDEX[p + key]] = _log(f[key])
        ct = max(f["reuse_ct"], 1)
        for key in ("bytes", "unique_bytes", "lines", "unique_lines"):
            row[_INDEX[f"{p}{key}_d_reuse_ct"]] = _log(f[key] / ct)
    # arithmetic intensity: flops over unique bytes within the innermost l loops, l = 1..depth
    flops_per_iter = sum(counts[k] for k in _COMPUTE if k.startswith("float"))
    curve = []
    for level in range(len(loops), -1, -1):
        inner = loops[level:]
        it = math.prod(_extent(lp) for lp in inner)
        ub = 0.0
        for f in bufs:
            span = math.prod(_extent(lp) for lp in inner if lp.var.name in f["used"])
            ub += min(span, f["unique"]) * f["itemsize"]
        curve.append(flops_per_iter * it / max(ub, 1.0))
    samples = np.interp(np.linspace(0, len(curve) - 1, CURVE), np.arange(len(curve)), curve)
    for i, v in enumerate(samples):
        row[_INDEX[f"arith_intensity_curve_{i}"]] = _log(v)
    if store.buffer in locals_:
        buf, depth = locals_[store.buffer]
        numel = math.prod(d if isinstance(d, int) else 64 for d in buf.shape) or 1
        outer = math.prod(_extent(lp) for lp in loops[:depth])
        row[_INDEX["alloc_size"]] = _log(numel * buf.dtype.itemsize)
        row[_INDEX["alloc_prod"]] = _log(numel)
        row[_INDEX["alloc_outer_prod"]] = _log(outer)
        row[_INDEX["alloc_inner_prod"]] = _log(trips / max(outer, 1))
    row[_INDEX["outer_prod"]] = _log(trips)
    row[_INDEX["num_loops"]] = _log(len(loops))
    unrolled = [_extent(lp) for lp in loops if lp.kind == UNROLLED]
    row[_INDEX["auto_unroll_max_step"]] = _log(math.prod(unrolled) if unrolled else 0)
    return row


def extract(func: Func) -> np.ndarray:
    """The feature matrix of a scheduled kernel: one row per store, ``N_FEATURES`` columns."""
    shapes = {b.name: (b.shape, b.dtype.itemsize) for b in func.params}
    rows = []
    for store, loops, locals_ in _stores(func):
        shp = dict(shapes)
        shp.update({n: (b.shape, b.dtype.itemsize) for n, (b, _) in locals_.items()})
        rows.append(store_features(store, loops, shp, locals_))
    if not rows:
        return np.zeros((1, N_FEATURES), dtype=np.float32)
    return np.stack(rows)


__all__ = ["extract", "store_features", "FEATURE_NAMES", "FEATURE_VERSION", "N_FEATURES"]
