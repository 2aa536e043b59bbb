"""Symbolic dimensions: named sizes (``batch``, ``seq``) with declared bounds.

A dim in a graph type is an ``int`` or a sympy expression over dimension symbols
(``batch``, ``batch*seq``, ``floor(seq/2)``). sympy owns the algebra (products,
equality of sizes after a reshape); ``to_index_expr`` turns a dim into a kiln index
expression for the tensor and loop IRs, where a symbol becomes a ``Var`` that the
generated code receives at run time.
"""
from __future__ import annotations

from typing import Mapping

import sympy

from kiln.errors import ShapeError
from kiln.ir.dtype import INDEX
from kiln.ir.expr import Bin, Const, Expr, Var


def symbol(name: str) -> sympy.Symbol:
    # positive: a dimension is at least 1, which lets sympy simplify floor/ceil and products.
    return sympy.Symbol(name, integer=True, positive=True)


def as_dim(d):
    """Normalize a dim: ints stay ints, names become symbols, sympy integers become ints."""
    if isinstance(d, bool):
        raise ShapeError(f"a dimension cannot be a bool ({d!r})")
    if isinstance(d, int):
        return d
    if isinstance(d, str):
        return symbol(d)
    if isinstance(d, sympy.Basic):
        d = sympy.simplify(d)
        return int(d) if d.is_Integer else d
    try:
        return int(d)
    except (TypeError, ValueError):
        raise ShapeError(f"{d!r} is not a dimension (expected an int or a symbol name)") from None


def is_static(d) -> bool:
    return isinstance(d, int)


def symbols_of(shape) -> set[str]:
    out: set[str] = set()
    for d in shape:
        if isinstance(d, sympy.Basic):
            out |= {s.name for s in d.free_symbols}
    return out


def dims_equal(a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def product(dims):
    p = 1
    for d in dims:
        p = p * d
    return p if isinstance(p, int) else as_dim(p)


def exact_quotient(a, b):
    """``a / b`` when it is a whole dim (for every value of the symbols), else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b and a % b == 0 else None
    q = sympy.cancel(sympy.sympify(a) / sympy.sympify(b))
    num, den = sympy.fraction(q)
    return as_dim(q) if den == 1 and q != 0 else None


def evaluate(d, values: Mapping[str, int]) -> int:
    """The integer value of a dim for concrete symbol values."""
    if isinstance(d, int):
        return d
    r = d.subs({symbol(k): v for k, v in values.items()})
    if not r.is_Integer:
        raise ShapeError(f"dimension {d} does not evaluate to an integer with {dict(values)}")
    return int(r)


def upper_bound(d, bounds: Mapping[str, tuple[int, int]]) -> int:
    """The largest value of ``d`` over the declared bounds (dims grow with their symbols)."""
    return evaluate(d, {k: hi for k, (lo, hi) in bounds.items()})


def to_index_expr(d) -> Expr:
    """A dim as a kiln index expression (symbols become run-time ``Var``s)."""
    if isinstance(d, int):
        return Const(d, INDEX)
    return _convert(sympy.sympify(d))


def _convert(e) -> Expr:
    if e.is_Integer:
        return Const(int(e), INDEX)
    if e.is_Symbol:
        return Var(e.name, INDEX)
    if isinstance(e, sympy.Add):
        out = None
        for a in e.args:
            x = _convert(a)
            out = x if out is None else Bin("add", out, x, INDEX)
        return out
    if isinstance(e, sympy.Mul):
        num, den = sympy.fraction(e)
        if den != 1:
            return Bin("floordiv", _convert(num), _convert(den), INDEX)
        out = None
        for a in e.args:
            x = _convert(a)
            out = x if out is None else Bin("mul", out, x, INDEX)
        return out
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp > 0:
        base = _convert(e.base)
        out = base
        for _ in range(int(e.exp) - 1):
            out = Bin("mul", out, base, INDEX)
        return out
    if isinstance(e, sympy.floor):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return Bin("floordiv", _convert(num), _convert(den), INDEX)
    if isinstance(e, sympy.ceiling):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return Bin("floordiv", Bin("add", _convert(num), Bin("sub", _convert(den), Const(1, INDEX), INDEX),
                                   INDEX), _convert(den), INDEX)
    if isinstance(e, (sympy.Max, sympy.Min)):
        op = "max" if isinstance(e, sympy.Max) else "min"
        out = None
        for a in e.args:
            x = _convert(a)
            out = x if out is None else Bin(op, out, x, INDEX)
        return out
    raise ShapeError(f"dimension expression {e} cannot be computed in generated code")


def dim_str(d) -> str:
    return str(d)


def to_sympy(e: Expr):
    """The inverse of ``to_index_expr`` for index arithmetic (+, -, *, floordiv)."""
    if isinstance(e, Const):
        return sympy.Integer(int(e.value))
    if isinstance(e, Var):
        return symbol(e.name)
    if isinstance(e, Bin) and e.op in ("add", "sub", "mul", "floordiv", "max", "min"):
        a, b = to_sympy(e.a), to_sympy(e.b)
        return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
                "floordiv": lambda: sympy.floor(a / b), "max": lambda: sympy.Max(a, b),
                "min": lambda: sympy.Min(a, b)}[e.op]()
    raise ShapeError(f"index expression {e} is not a dimension expression")


def shape_dims(shape) -> tuple:
    """Graph dims (int or sympy) from stage/tensor extents (int or kiln Expr)."""
    return tuple(d if isinstance(d, int) else as_dim(to_sympy(d)) for d in shape)


def shape_exprs(shape) -> tuple:
    """Tensor-IR extents (int or kiln Expr) from graph dims."""
    return tuple(d if isinstance(d, int) else to_index_expr(d) for d in shape)


def parse_dim(text, names) -> object:
    """A dim from its printed form (an int, or an expression over the given symbol names)."""
    if isinstance(text, int):
        return text
    return as_dim(sympy.sympify(text, locals={n: symbol(n) for n in names}))
