"""Converter for TfIdfVectorizer (opset 9) over integer token ids: n-gram counts, optionally
with skips, weighted as TF, IDF or TF-IDF.

The n-gram pool is an attribute and rows have a static length, so every count is a sum of
comparisons: pool n-gram ``g`` of length ``n`` is counted once per (skip distance ``d``,
start ``s``) with ``x[s + k d] == g[k]`` for every ``k < n``. Per (n, d) that is one gather
of the windows ``x[:, s + k d]`` ([N, P, n], P the starts that fit), one comparison with the
pool's n-grams of that length ([N, P, G, n]), all-of over ``n`` and a sum over ``P``. As in
ONNX's definition, unigrams count at distance 1 only and longer n-grams at every distance
1 .. max_skip_count + 1; pool n-grams outside [min_gram_length, max_gram_length] are never
counted. A constant [grams, outputs] matrix then adds each n-gram's count into its
``ngram_indexes`` slot. String pools are refused (Kiln's tensors are numeric).
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.ml import op
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.ir.dtype import DType


def _pool(ctx) -> list[tuple[int, np.ndarray, int]]:
    """(length, tokens, output index) of every countable pool n-gram, in pool order; a repeated
    n-gram keeps the later output index, as ONNX's reference does."""
    if ctx.attr("pool_strings") is not None:
        ctx.unsupported("a string n-gram pool (pool_strings); Kiln's tensors are numeric")
    pool = np.asarray(ctx.attr("pool_int64s", []), np.int64)
    starts = [int(v) for v in ctx.attr("ngram_counts", [])]
    indexes = [int(v) for v in ctx.attr("ngram_indexes", [])]
    lo, hi = int(ctx.attr("min_gram_length", 1)), int(ctx.attr("max_gram_length", 1))
    if not 1 <= lo <= hi:
        ctx.fail(f"min_gram_length {lo} and max_gram_length {hi}; expected 1 <= min <= max")
    grams: dict[tuple, tuple[int, int]] = {}
    k = 0  # the n-gram's number in pool order: it picks its ngram_indexes entry
    for size, start in enumerate(starts, start=1):
        end = starts[size] if size < len(starts) else pool.size
        if (end - start) % size:
            ctx.fail(f"pool items {start}..{end} of {size}-grams are not a whole number of {size}-grams")
        for g in range((end - start) // size):
            if k >= len(indexes):
                ctx.fail(f"ngram_indexes has {len(indexes)} entries; the pool holds more n-grams")
            if lo <= size <= hi:
                tokens = pool[start + g * size: start + (g + 1) * size]
                grams[(size, *tokens.tolist())] = (size, indexes[k])
            k += 1
    return [(size, np.asarray(key[1:], np.int64), out) for key, (size, out) in grams.items()]


@converter("TfIdfVectorizer", since=9)
def _tfidf(ctx, node):
    x = ctx.input(0)
    shape = static_shape(ctx, x, "TfIdfVectorizer X")
    dt = ctx.type(x).dtype
    if not dt.is_int:
        ctx.fail(f"X is {dt}; expected int32 or int64 token ids (string inputs are not supported)")
    if len(shape) not in (1, 2):
        ctx.fail(f"X has shape {shape}; expected [C] or [N, C]")
    rows = x if len(shape) == 2 else op(ctx, "reshape", [x], {"shape": (1, shape[0])})
    n_rows, width = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    grams = _pool(ctx)
    indexes = [int(v) for v in ctx.attr("ngram_indexes", [])]
    outputs = max(indexes) + 1 if indexes else 0
    if outputs == 0:
        ctx.fail("ngram_indexes is empty; expected one output index per pool n-gram")
    skips = int(ctx.attr("max_skip_count", 0))
    counts, slots = [], []
    for size in sorted({g[0] for g in grams}):
        table = np.stack([g[1] for g in grams if g[0] == size]).astype(dt.np)    # [G, n]
        slots += [g[2] for g in grams if g[0] == size]
        per_distance = []
        for d in range(1, (1 if size == 1 else skips + 1) + 1):
            fits = width - (size - 1) * d
            if fits <= 0:
                continue
            windows = np.arange(fits)[:, None] + d * np.arange(size)[None, :]    # [P, n]
            taken = op(ctx, "gather", [rows, ctx.add_const(windows.astype(np.int64), "windows")], {"axis": 1})
            taken = op(ctx, "reshape", [taken], {"shape": (n_rows, fits, 1, size)})
            same = op(ctx, "cast", [op(ctx, "eq", [taken, ctx.add_const(table, "ngrams")])],
                       {"to": DType.float32.value})                                   # [N, P, G, n]
            hit = op(ctx, "reduce_min", [same], {"axes": (3,), "keepdims": False})  # [N, P, G]
            per_distance.append(op(ctx, "reduce_sum", [hit], {"axes": (1,), "keepdims": False}))
        if not per_distance:  # no window of this length fits a row
            per_distance = [ctx.add_const(np.zeros((n_rows, table.shape[0]), np.float32), "no_counts")]
        total = per_distance[0]
        for c in per_distance[1:]:
            total = op(ctx, "add", [total, c])
        counts.append(total)
    if counts:
        counts = counts[0] if len(counts) == 1 else op(ctx, "concat", counts, {"axis": 1})  # [N, grams]
        place = np.zeros((len(slots), outputs), np.float32)
        for g, slot in enumerate(slots):
            place[g, slot] += 1
        tf = op(ctx, "matmul", [counts, ctx.add_const(place, "ngram_slots")])                # [N, outputs]
    else:
        tf = ctx.add_const(np.zeros((n_rows, outputs), np.float32), "no_counts")
    y = _weigh(ctx, tf, outputs)
    return ctx.emit("reshape", [y], {"shape": (n_rows, outputs) if len(shape) == 2 else (outputs,)},
                    out_names=ctx.outputs())


def _weigh(ctx, tf: str, outputs: int) -> str:
    mode = ctx.attr("mode", "TF")
    weights = ctx.attr("weights")
    w = None
    if weights is not None and len(weights):
        if len(weights) != outputs:
            ctx.fail(f"weights has {len(weights)} values; expected one per output ({outputs})")
        w = ctx.add_const(np.asarray(weights, np.float32), "idf_weights")
    if mode == "TF":
        return tf
    if mode == "IDF":
        present = op(ctx, "cast", [op(ctx, "gt", [tf, ctx.add_const(np.float32(0))])], {"to": DType.float32.value})
        return op(ctx, "mul", [present, w]) if w else present
    if mode == "TFIDF":
        return op(ctx, "mul", [tf, w]) if w else tf
    ctx.fail(f"mode {mode!r} is not one of TF, IDF, TFIDF")
