"""Scalar expressions shared by the tensor IR and the loop IR.

Expressions are immutable dataclasses. Python operators build them (``a + b``);
comparisons use methods (``a.lt(b)``) so that ``==`` stays structural equality.
``simplify`` folds constants and cleans index arithmetic (x*1, x+0, (a*c)//c ...).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from kiln.ir.dtype import DType, INDEX

_counter = itertools.count()


def fresh(prefix: str) -> str:
    """A name unique in this process, for loop and reduction variables."""
    return f"{prefix}{next(_counter)}"


class Expr:
    __slots__ = ()
    dtype: DType

    def _bin(self, op, other, swap=False):
        other = as_expr(other, self.dtype)
        a, b = (other, self) if swap else (self, other)
        return Bin(op, a, b, _result_dtype(op, a.dtype, b.dtype))

    def __add__(self, o): return self._bin("add", o)
    def __radd__(self, o): return self._bin("add", o, True)
    def __sub__(self, o): return self._bin("sub", o)
    def __rsub__(self, o): return self._bin("sub", o, True)
    def __mul__(self, o): return self._bin("mul", o)
    def __rmul__(self, o): return self._bin("mul", o, True)
    def __truediv__(self, o): return self._bin("div", o)
    def __rtruediv__(self, o): return self._bin("div", o, True)
    def __floordiv__(self, o): return self._bin("floordiv", o)
    def __mod__(self, o): return self._bin("mod", o)
    def __neg__(self): return Un("neg", self, self.dtype)
    def lt(self, o): return self._bin("lt", o)
    def le(self, o): return self._bin("le", o)
    def gt(self, o): return self._bin("gt", o)
    def ge(self, o): return self._bin("ge", o)
    def eq(self, o): return self._bin("eq", o)
    def ne(self, o): return self._bin("ne", o)
    def land(self, o): return self._bin("and", o)
    def lor(self, o): return self._bin("or", o)


@dataclass(frozen=True, slots=True)
class Const(Expr):
    value: float | int | bool
    dtype: DType

    def __str__(self):
        return repr(self.value)


@dataclass(frozen=True, slots=True)
class Var(Expr):
    name: str
    dtype: DType = INDEX

    def __str__(self):
        return self.name


@dataclass(frozen=True, slots=True)
class Bin(Expr):
    op: str
    a: Expr
    b: Expr
    dtype: DType

    def __str__(self):
        return f"{self.op}({self.a}, {self.b})"


@dataclass(frozen=True, slots=True)
class Un(Expr):
    op: str
    a: Expr
    dtype: DType

    def __str__(self):
        return f"{self.op}({self.a})"


@dataclass(frozen=True, slots=True)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    @property
    def dtype(self):
        return self.a.dtype

    def __str__(self):
        return f"select({self.cond}, {self.a}, {self.b})"


@dataclass(frozen=True, slots=True)
class Cast(Expr):
    a: Expr
    dtype: DType

    def __str__(self):
        return f"{self.dtype}({self.a})"


@dataclass(frozen=True, slots=True)
class Load(Expr):
    buffer: str
    indices: tuple[Expr, ...]
    dtype: DType

    def __str__(self):
        return f"{self.buffer}[{', '.join(map(str, self.indices))}]"


@dataclass(frozen=True, slots=True)
class Reduce(Expr):
    """``op`` over ``axes`` (each a Var with its extent) of ``body``."""

    op: str  # sum | prod | max | min
    body: Expr
    axes: tuple[tuple[Var, int], ...]

    @property
    def dtype(self):
        return self.body.dtype

    def __str__(self):
        ax = ", ".join(f"{v}<{n}" for v, n in self.axes)
        return f"reduce_{self.op}[{ax}]({self.body})"


@dataclass(frozen=True, slots=True)
class Iterate(Expr):
    """A value refined step by step: ``state = init``, then ``count`` times ``state = step``.
    ``step`` reads the current value through the variable ``state`` (bound here, like a
    reduction's axes); ``init`` cannot.

    The sequential loop no ``Reduce`` can express: walking a decision tree, where each step
    reads the node the last one chose (``kiln/ir/ops/trees.py``; ``count`` is the trees'
    depth, and a leaf leads to itself, so a walk that reached its leaf stays there)."""

    state: Var
    init: Expr
    step: Expr
    count: int

    @property
    def dtype(self):
        return self.init.dtype

    def __str__(self):
        return f"iterate[{self.state}={self.init}; {self.count} times]({self.step})"


COMPARE_OPS = {"lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor"}
UNARY_OPS = {
    "neg", "exp", "log", "sqrt", "abs", "tanh", "erf", "sigmoid", "floor", "ceil", "round",
    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
    "not", "isnan", "isinf", "sign", "reciprocal", "softplus", "expm1",
    # exp of an argument that is <= 0 up to rounding (x - max(x) in softmax, attention and
    # log-sum-exp): a renderer may skip the overflow path and flush results below 2^-126
    # (FLT_MIN) to 0, which no sum that includes exp(0) = 1 can tell from the exact value
    "exp_nonpos",
}


def _result_dtype(op, a: DType, b: DType) -> DType:
    return DType.bool if op in COMPARE_OPS else a


def as_expr(x, dtype: DType = DType.float32) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool):
        return Const(x, DType.bool)
    if isinstance(x, int) and not dtype.is_float:
        return Const(int(x), dtype)
    if isinstance(x, int) and dtype.is_float:
        return Const(float(x), dtype)
    return Const(float(x), dtype)


def idx(x) -> Expr:
    return x if isinstance(x, Expr) else Const(int(x), INDEX)


# -- generic traversal ------------------------------------------------------------

def map_children(e: Expr, f: Callable[[Expr], Expr]) -> Expr:
    """Rebuild ``e`` with ``f`` applied to each direct child expression; ``e`` itself when
    no child changes (shared subexpressions stay shared, which the memoized rewrites use)."""
    if isinstance(e, Bin):
        a, b = f(e.a), f(e.b)
        return e if a is e.a and b is e.b else Bin(e.op, a, b, e.dtype)
    if isinstance(e, (Un, Cast)):
        a = f(e.a)
        return e if a is e.a else (Un(e.op, a, e.dtype) if isinstance(e, Un) else Cast(a, e.dtype))
    if isinstance(e, Select):
        c, a, b = f(e.cond), f(e.a), f(e.b)
        return e if c is e.cond and a is e.a and b is e.b else Select(c, a, b)
    if isinstance(e, Load):
        idx = tuple(f(i) for i in e.indices)
        return e if all(n is o for n, o in zip(idx, e.indices)) else Load(e.buffer, idx, e.dtype)
    if isinstance(e, Reduce):
        body = f(e.body)
        return e if body is e.body else Reduce(e.op, body, e.axes)
    if isinstance(e, Iterate):
        init, step = f(e.init), f(e.step)
        return e if init is e.init and step is e.step else Iterate(e.state, init, step, e.count)
    return e


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Bin):
        return (e.a, e.b)
    if isinstance(e, (Un, Cast)):
        return (e.a,)
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, Reduce):
        return (e.body,)
    if isinstance(e, Iterate):
        return (e.init, e.step)
    return ()


def walk(e: Expr):
    """All sub-expressions of ``e``, parents before children."""
    stack = [e]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(reversed(children(x)))


def memoized(f: Callable[[Expr], Expr], memo: dict | None) -> Callable[[Expr], Expr]:
    """``f`` computed once per expression object: a subexpression shared by many parents
    (the tile values every case of a Winograd transform reads) is rewritten once and the
    results stay shared. ``memo`` (id -> (expr, result); the expr keeps its id alive) may
    span several calls, e.g. all the stores of one statement."""
    if memo is None:
        memo = {}

    def go(x: Expr) -> Expr:
        hit = memo.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        out = f(x)
        memo[id(x)] = (x, out)
        return out

    return go


def substitute(e: Expr, mapping: Mapping[str, Expr], memo: dict | None = None) -> Expr:
    """Replace variables by name."""
    if not mapping:
        return e

    def step(x: Expr) -> Expr:
        if isinstance(x, Var):
            return mapping.get(x.name, x)
        return map_children(x, go)

    go = memoized(step, memo)
    return go(e)


def replace_loads(e: Expr, f: Callable[[Load], Expr | None]) -> Expr:
    """Rewrite every Load (bottom-up); ``f`` returns a replacement or None to keep it."""

    def step(x: Expr) -> Expr:
        x = map_children(x, go)
        if isinstance(x, Load):
            r = f(x)
            return x if r is None else r
        return x

    go = memoized(step, None)
    return go(e)


def free_vars(e: Expr) -> set[str]:
    bound: set[str] = set()
    out: set[str] = set()
    for x in walk(e):
        if isinstance(x, Reduce):
            bound |= {v.name for v, _ in x.axes}
        elif isinstance(x, Iterate):
            bound.add(x.state.name)
        elif isinstance(x, Var):
            out.add(x.name)
    return out - bound


def loads(e: Expr) -> list[Load]:
    return [x for x in walk(e) if isinstance(x, Load)]


# -- simplification -----------------------------------------------------------------

_FOLD = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "min": min,
    "max": max,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "and": lambda a, b: bool(a) and bool(b),
    "or": lambda a, b: bool(a) or bool(b),
}


def _int_const(e: Expr):
    return e.value if isinstance(e, Const) and not e.dtype.is_float and e.dtype is not DType.bool else None


def simplify(e: Expr, memo: dict | None = None) -> Expr:
    """Bottom-up constant folding and index-arithmetic identities.

    Only rewrites that hold exactly for the dtype are applied: float expressions are
    folded only where both operands are constants of an exact operation.
    """

    def step(x: Expr) -> Expr:
        x = map_children(x, go)
        if isinstance(x, Bin):
            return _simplify_bin(x)
        if isinstance(x, Select) and isinstance(x.cond, Const):
            return x.a if x.cond.value else x.b
        if isinstance(x, Cast) and x.a.dtype == x.dtype:
            return x.a
        if isinstance(x, Cast) and isinstance(x.a, Const) and not x.dtype.is_float and not x.a.dtype.is_float:
            return Const(int(x.a.value), x.dtype)
        return x

    go = memoized(step, memo)
    return go(e)


def _simplify_bin(x: Bin) -> Expr:
    a, b, op = x.a, x.b, x.op
    if x.dtype.is_float or a.dtype.is_float:
        if op == "mul" and isinstance(b, Const) and b.value == 1:
            return a
        if op == "mul" and isinstance(a, Const) and a.value == 1:
            return b
        if op in ("add", "sub") and isinstance(b, Const) and b.value == 0:
            return a
        if op == "div" and isinstance(b, Const) and b.value == 1:
            return a
        return x
    ca, cb = _int_const(a), _int_const(b)
    if isinstance(a, Const) and isinstance(b, Const) and op in _FOLD:
        v = _FOLD[op](a.value, b.value)
        return Const(v, x.dtype) if x.dtype is DType.bool else Const(int(v), x.dtype)
    if ca is not None and cb is not None and cb != 0:
        if op == "floordiv":
            return Const(ca // cb, x.dtype)
        if op == "mod":
            return Const(ca % cb, x.dtype)
    if op == "add":
        if ca == 0:
            return b
        if cb == 0:
            return a
        if cb is not None and isinstance(a, Bin) and a.op == "add" and _int_const(a.b) is not None:
            return _simplify_bin(Bin("add", a.a, Const(a.b.value + cb, x.dtype), x.dtype))
        # (y // c) * c + y % c == y for every integer y and c != 0 (floor semantics): what
        # flattening the indices of a fused (split) loop gives back
        if (isinstance(a, Bin) and a.op == "mul" and isinstance(a.a, Bin) and a.a.op == "floordiv"
                and isinstance(b, Bin) and b.op == "mod" and a.a.a == b.a
                and _int_const(a.b) is not None and _int_const(a.b) == _int_const(a.a.b) == _int_const(b.b) != 0):
            return b.a
        # (p + y // c) * c + y % c == p * c + y: the same, one level down (a row-major index
        # whose last two dims are read through one flat axis, as im2col windows are)
        if (isinstance(a, Bin) and a.op == "mul" and isinstance(a.a, Bin) and a.a.op == "add"
                and isinstance(a.a.b, Bin) and a.a.b.op == "floordiv" and isinstance(b, Bin) and b.op == "mod"
                and a.a.b.a == b.a and _int_const(a.b) is not None
                and _int_const(a.b) == _int_const(a.a.b.b) == _int_const(b.b) != 0):
            return _simplify_bin(Bin("add", _simplify_bin(Bin("mul", a.a.a, a.b, x.dtype)), b.a, x.dtype))
    if op == "sub" and cb == 0:
        return a
    if op == "sub" and not x.dtype.is_float:  # floats: inf - inf and NaN - NaN are NaN
        if a == b:  # y - y (a tile's index relative to its own start)
            return Const(0, x.dtype)
        if isinstance(a, Bin) and a.op == "add" and b in (a.a, a.b):  # (y + z) - y
            return a.b if a.a == b else a.a
    if op == "mul":
        if ca == 0 or cb == 0:
            return Const(0, x.dtype)
        if ca == 1:
            return b
        if cb == 1:
            return a
    if op == "floordiv":
        if cb == 1:
            return a
        # (y*c)//c == y and (y*c + z)//c == y + z//c for c > 0, z >= 0 unknown: only the first
        if cb and isinstance(a, Bin) and a.op == "mul" and _int_const(a.b) == cb:
            return a.a
    if op == "mod":
        if cb == 1:
            return Const(0, x.dtype)
        if cb and isinstance(a, Bin) and a.op == "mul" and _int_const(a.b) is not None and a.b.value % cb == 0:
            return Const(0, x.dtype)
    if op in ("min", "max") and a == b:
        return a
    return x


# -- simplification with loop ranges ----------------------------------------------------

def from_linear_terms(terms: dict, dtype) -> Expr:  # (the inverse of linear_terms)
    out: Expr | None = None
    for atom, coef in terms.items():
        if atom == "" or coef == 0:
            continue
        t = atom if coef == 1 else Bin("mul", atom, Const(coef, dtype), dtype)
        out = t if out is None else Bin("add", out, t, dtype)
    const = terms.get("", 0)
    if out is None:
        return Const(const, dtype)
    return out if const == 0 else Bin("add", out, Const(const, dtype), dtype)


def _split_div(e: Bin, ranges: dict[str, int]):
    """(quotient, remainder) terms of ``e.a`` by the constant ``e.b`` when provably exact."""
    if not (isinstance(e.b, Const) and not e.b.dtype.is_float) or int(e.b.value) <= 0:
        return None
    c = int(e.b.value)
    terms = linear_terms(e.a)
    if terms is None:
        return None
    quot, rem, rem_max = {}, {}, 0
    for atom, coef in terms.items():
        if atom == "":
            continue
        if coef % c == 0:
            quot[atom] = coef // c
        elif isinstance(atom, Var) and atom.name in ranges and coef > 0:
            rem[atom] = coef
            rem_max += coef * (ranges[atom.name] - 1)
        else:
            return None
    const = terms.get("", 0)
    if const < 0:
        return None
    quot[""], rem[""] = const // c, const % c
    if rem_max + rem[""] >= c:
        return None
    return quot, rem


def _divide_common_factor(x: Bin) -> Expr:
    """``(g*y + k) // (g*m)`` is ``(y + k // g) // m`` and ``(g*y + k) % (g*m)`` is
    ``g * ((y + k // g) % m) + k % g`` for integers (floor semantics), where ``g`` divides
    every variable term's coefficient and the divisor. Row ``4*o + 1`` of a [12, 128] grid
    run four rows at a time is then ``(o // 32, 4 * (o % 32) + 1)``: the row's neighbours
    differ from it by a constant in the second index. ``x`` itself when no ``g > 1`` fits."""
    c = _int_const(x.b)
    terms = linear_terms(x.a) if c and c > 0 else None
    if not terms or len(terms) < 2:
        return x
    g = c
    for atom, coef in terms.items():
        if atom != "":
            g = math.gcd(g, coef)
    if g <= 1:
        return x
    k = terms.get("", 0)
    y = from_linear_terms({**{a: v // g for a, v in terms.items() if a != ""}, "": k // g}, x.dtype)
    inner = simplify(Bin(x.op, y, Const(c // g, x.dtype), x.dtype))
    if x.op == "floordiv":
        return inner
    return simplify(Bin("add", Bin("mul", inner, Const(g, x.dtype), x.dtype), Const(k % g, x.dtype), x.dtype))


def simplify_in_ranges(e: Expr, ranges: dict[str, int], memos: tuple[dict, dict] | None = None) -> Expr:
    """``simplify`` knowing ``0 <= v < ranges[v]`` for loop variables: ``(12*r + k) // 12`` is
    ``r`` and ``(12*r + k) % 12`` is ``k`` when ``k < 12`` (kiln/passes/simplify_loops.py).
    ``memos``: reuse results for subexpressions met before under the same ``ranges``."""
    memo, simplify_memo = memos or ({}, {})

    def step(x: Expr) -> Expr:
        x = map_children(x, go)
        if isinstance(x, Bin) and x.op in ("floordiv", "mod") and not x.dtype.is_float:
            parts = _split_div(x, ranges)
            if parts is not None:
                return simplify(from_linear_terms(parts[0] if x.op == "floordiv" else parts[1], x.dtype))
            return _divide_common_factor(x)
        return x

    go = memoized(step, memo)
    return simplify(go(e), simplify_memo)


def linear_terms(e: Expr) -> dict | None:
    """An integer expression as {atom: coefficient} plus "" for the constant term.

    Sums and products by constants are expanded; anything else (a variable, a division, a
    load) is an opaque atom. None for float expressions."""
    if isinstance(e, Const) and not e.dtype.is_float:
        return {"": int(e.value)}
    if isinstance(e, Bin) and e.op in ("add", "sub"):
        a, b = linear_terms(e.a), linear_terms(e.b)
        if a is None or b is None:
            return None
        sign = 1 if e.op == "add" else -1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return _merge_div_mod(out)
    if isinstance(e, Bin) and e.op == "mul":
        for x, c in ((e.a, e.b), (e.b, e.a)):
            if isinstance(c, Const) and not c.dtype.is_float:
                t = linear_terms(x)
                return None if t is None else {k: v * int(c.value) for k, v in t.items()}
    if e.dtype.is_float:
        return None
    return {e: 1, "": 0}


def _merge_div_mod(terms: dict) -> dict:
    """``k*c*(x // c) + k*(x % c)`` is ``k*x`` (c > 0): a channels-last tensor read as
    (N, H, W*C) indexes pixel ``q // C``, channel ``q % C`` (``kiln/ir/ops/qlinear.py``)."""
    for atom, coeff in list(terms.items()):
        if not (isinstance(atom, Bin) and atom.op == "floordiv" and isinstance(atom.b, Const)
                and not atom.b.dtype.is_float and int(atom.b.value) > 0 and atom in terms):
            continue
        rem = Bin("mod", atom.a, atom.b, atom.dtype)
        c, k, inner = int(atom.b.value), terms.get(rem), linear_terms(atom.a)
        if not k or coeff != k * c or inner is None:
            continue
        del terms[atom], terms[rem]
        for a, v in inner.items():
            terms[a] = terms.get(a, 0) + k * v
    return terms


def affine_coeffs(e: Expr) -> dict[str, int] | None:
    """``e`` as {var name: coeff, "": const} when it is affine in variables, else None."""
    terms = linear_terms(e)
    if terms is None or any(k != "" and not isinstance(k, Var) for k in terms):
        return None
    out = {("" if k == "" else k.name): v for k, v in terms.items()}
    out.setdefault("", 0)
    return out


def row_major(indices, shape) -> Expr:
    """The flat (row-major) element index of ``indices`` into a tensor of static ``shape``."""
    flat = None
    for i, n in zip(indices, shape):
        flat = i if flat is None else Bin("add", Bin("mul", flat, Const(n, INDEX), INDEX), i, INDEX)
    return flat if flat is not None else Const(0, INDEX)


def eval_const(e: Expr):
    """Python value of a constant expression, or None."""
    e = simplify(e)
    return e.value if isinstance(e, Const) else None


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def join(op: str, terms: Sequence[Expr]) -> Expr:
    """``terms[0] op terms[1] op ...`` for a logical ``op`` ("and", "or"); at least one term."""
    out = terms[0]
    for t in terms[1:]:
        out = Bin(op, out, t, DType.bool)
    return out


__all__ = [
    "Expr", "Const", "Var", "Bin", "Un", "Select", "Cast", "Load", "Reduce", "Iterate", "fresh", "as_expr",
    "idx", "simplify", "substitute", "replace_loads", "free_vars", "loads", "walk", "map_children",
    "affine_coeffs", "linear_terms", "row_major", "eval_const", "ceil_div", "join", "UNARY_OPS", "COMPARE_OPS", "math",
]
