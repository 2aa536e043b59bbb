"""Linear-algebra ops: einsum (any equation, one stage) and det (small matrices).

``einsum`` takes a normalized spec from the frontend: one subscript string per operand
and one for the output, each a sequence of letters where ``.`` stands for one broadcast
(ellipsis) dim, right-aligned as in numpy. Every letter that is not in the output is
contracted by a single ``rsum``; a letter repeated inside one operand reads its diagonal.
"""
from __future__ import annotations

import itertools

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import static_shape


# -- einsum -----------------------------------------------------------------------------------

def _letter_sizes(terms, shapes) -> dict[str, int]:
    """Size of each letter; ellipsis dims are named ``.0 .1 ...`` counted from the right and
    broadcast (size 1 stretches), as numpy does."""
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if len(term) != len(shape):
            raise ShapeError(f"einsum operand subscripts {''.join(term)!r} do not match its rank {len(shape)}")
        for letter, n in zip(term, shape):
            old = sizes.get(letter)
            if letter.startswith(".") and old is not None and 1 in (old, n):
                sizes[letter] = max(old, n)
            elif old is not None and old != n:
                raise ShapeError(f"einsum letter {letter!r} has sizes {old} and {n}")
            else:
                sizes[letter] = n
    return sizes


def _terms(attrs, shapes):
    """Operand and output subscripts as lists of letters, ellipsis dims named ``.k``."""
    ell_rank = max((len(s) - len(t) + 3 for t, s in zip(attrs["inputs"], shapes) if "..." in t), default=0)

    def expand(term: str, rank: int | None):
        if "." not in term:
            return list(term)
        head, tail = term.split("...")
        n_ell = (rank - len(head) - len(tail)) if rank is not None else ell_rank
        if n_ell < 0:
            raise ShapeError(f"einsum subscripts {term!r} have more letters than the operand's rank {rank}")
        return list(head) + [f".{n_ell - 1 - k}" for k in range(n_ell)] + list(tail)

    ins = [expand(t, len(s)) for t, s in zip(attrs["inputs"], shapes)]
    return ins, expand(attrs["output"], None)


def _einsum_infer(ins, attrs):
    shapes = [static_shape(t, "einsum operand") for t in ins]
    if len({t.dtype for t in ins}) > 1:
        raise ShapeError(f"einsum operands have dtypes {[str(t.dtype) for t in ins]}; expected one dtype")
    terms, out = _terms(attrs, shapes)
    sizes = _letter_sizes(terms, shapes)
    missing = [c for c in out if c not in sizes]
    if missing:
        raise ShapeError(f"einsum output letters {missing} do not appear in any operand")
    shape = tuple(sizes[c] for c in out) or (1,)  # a scalar result is (1,); the frontend reshapes
    return [TensorType(shape, ins[0].dtype)]


def _einsum_compute(ins, outs, attrs):
    o = outs[0]
    shapes = [t.shape for t in ins]
    terms, out = _terms(attrs, shapes)
    sizes = _letter_sizes(terms, shapes)
    contracted = sorted({c for t in terms for c in t} - set(out))

    def product(env):
        acc = None
        for t, term in zip(ins, terms):
            # a broadcast (size-1) ellipsis dim reads index 0
            ix = tuple(0 if (c.startswith(".") and n == 1 and sizes[c] != 1) else env[c]
                       for c, n in zip(term, t.shape))
            v = t[ix]
            acc = v if acc is None else acc * v
        return acc

    def body(*i):
        env = dict(zip(out, i))
        if not contracted:
            return product(env)

        def term(*r):
            return product({**env, **dict(zip(contracted, r))})
        return rsum(term, tuple(sizes[c] for c in contracted))

    tag = "reduce" if contracted else "injective"
    return [compute(o.name, o.shape, body, o.dtype, tag=tag)]


register("einsum", FusionKind.REDUCTION, _einsum_infer, _einsum_compute)


# -- det: the permutation (Leibniz) expansion, for matrices up to 4 x 4 ------------------------------

DET_MAX_N = 4  # 24 products of 4 terms; larger matrices would need a pivoted LU


def _det_infer(ins, attrs):
    x = static_shape(ins[0], "det input")
    if len(x) < 2 or x[-1] != x[-2] or not ins[0].dtype.is_float:
        raise ShapeError(f"det needs floating-point square matrices (..., n, n); got {ins[0]}")
    if x[-1] > DET_MAX_N:
        raise ShapeError(f"det is implemented for n <= {DET_MAX_N}; got {x[-1]} x {x[-1]} matrices")
    return [TensorType(x[:-2] or (1,), ins[0].dtype)]


def _perm_sign(p) -> int:
    inversions = sum(1 for a, b in itertools.combinations(p, 2) if a > b)
    return -1 if inversions % 2 else 1


def _det_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    n = x.shape[-1]
    batch = x.ndim > 2

    def body(*i):
        lead = tuple(i) if batch else ()
        total = None
        for p in itertools.permutations(range(n)):
            term = None
            for r, c in enumerate(p):
                v = x[lead + (r, c)]
                term = v if term is None else term * v
            if total is None:
                total = term if _perm_sign(p) > 0 else -term
            else:
                total = total + term if _perm_sign(p) > 0 else total - term
        return total

    return [compute(o.name, o.shape, body, o.dtype)]


register("det", FusionKind.INJECTIVE, _det_infer, _det_compute)
