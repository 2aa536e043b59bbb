"""C renderer: loop IR -> C99 (with OpenMP pragmas for parallel and SIMD loops).

The renderer is a class with a type table and an op table, in the manner of
tinygrad's cstyle renderer; targets that speak a C dialect (NEON C, CUDA) subclass it
and override entries.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.codegen import narrow_types
from kiln.codegen.c_support import EACH_OP_ROUNDED, HELPERS
from kiln.errors import VerificationError
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Const, Expr, Load, Select, Un, Var, affine_coeffs, as_expr, simplify, walk
from kiln.ir.loop import PARALLEL, UNROLLED, VECTORIZED, Alloc, Buffer, For, Func, If, Seq, Stmt, Store, stmt_exprs


class CRenderer:
    type_map = {
        DType.float32: "float", DType.float64: "double", DType.float16: "_Float16",
        DType.int8: "int8_t", DType.int16: "int16_t", DType.int32: "int32_t", DType.int64: "int64_t",
        DType.uint8: "uint8_t", DType.uint16: "uint16_t", DType.uint32: "uint32_t", DType.uint64: "uint64_t",
        DType.bool: "uint8_t", **narrow_types.STORAGE_CTYPES,
    }
    infix = {
        "add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
        "ge": ">=", "eq": "==", "ne": "!=", "and": "&&", "or": "||", "bitand": "&", "bitor": "|",
        "shl": "<<", "shr": ">>",
    }
    # float math: name without the type suffix; "f" is appended for float32
    float_fn = {
        "exp": "exp", "exp_nonpos": "exp", "expm1": "expm1", "log": "log", "sqrt": "sqrt", "abs": "fabs",
        "tanh": "tanh", "erf": "erf",
        "floor": "floor", "ceil": "ceil", "round": "nearbyint", "sin": "sin", "cos": "cos",
        "tan": "tan", "asin": "asin", "acos": "acos", "atan": "atan", "sinh": "sinh", "cosh": "cosh",
        "asinh": "asinh", "acosh": "acosh", "atanh": "atanh", "pow": "pow", "min": "fmin",
        "max": "fmax", "fmod": "fmod",
    }
    # float32 functions computed by Kiln's own branch-free helpers (HELPERS), which gcc
    # vectorizes inline on every target. glibc's vector expf leaves the vector path for
    # any lane beyond +-87 (a masked attention score of -1e9 or -inf) and was 30x slower there.
    own_fn = {"exp": "expf", "exp_nonpos": "expf_nonpos", "tanh": "tanhf"}
    parallel_pragma = "#pragma omp parallel for"
    # a parallel loop as KILN_PARALLEL_LOOP (each thread's static share first, then the
    # others' leftovers: HELPERS["parallel_loop"]); False: the plain ``parallel_pragma``
    steal_parallel_loops = True
    simd_pragma = "#pragma omp simd"

    def __init__(self):
        self.lines: list[str] = []
        self.narrow_used: set[DType] = set()  # narrow types whose helpers support_code() emits
        self.helpers_used: set[str] = set()   # other helpers (HELPERS) support_code() emits

    # -- types and literals --------------------------------------------------------------
    def ctype(self, dtype: DType) -> str:
        """The type a buffer element is stored in."""
        if dtype.is_narrow_float or dtype.is_narrow_int:
            if not narrow_types.supported(dtype):
                raise VerificationError(f"the C renderer has no support for element type {dtype}")
            self.narrow_used.add(dtype)
        return self.type_map[dtype]

    def vtype(self, dtype: DType) -> str:
        """The type a value is computed in: float for bfloat16/float8/float4, int32 for int4/int2."""
        if dtype.is_narrow_float or dtype.is_narrow_int:
            self.ctype(dtype)
            return narrow_types.value_ctype(dtype)
        return self.ctype(dtype)

    def support_code(self) -> str:
        """Helpers the rendered kernels call (narrow-type conversions), to precede them."""
        code = "".join(HELPERS[h] for h in sorted(self.helpers_used))
        return code + narrow_types.support_code(self.narrow_used)

    def literal(self, c: Const) -> str:
        v, dt = c.value, c.dtype
        if dt is DType.bool:
            return "1" if v else "0"
        if dt.is_narrow_float:
            return self.literal(Const(float(np.asarray(v, dtype=dt.np).astype(np.float32)), DType.float32))
        if dt.is_float:
            v = float(v)
            if math.isnan(v):
                return "NAN"
            if math.isinf(v):
                return "INFINITY" if v > 0 else "(-INFINITY)"
            s = repr(v)
            s = s if ("e" in s or "." in s) else s + ".0"
            return f"{s}f" if dt is DType.float32 else (f"(_Float16){s}f" if dt is DType.float16 else s)
        if dt is DType.int64:
            # INT64_C(-9223372036854775808) is a negated unsigned literal: use the macro
            return "INT64_MIN" if int(v) == -(1 << 63) else f"INT64_C({int(v)})"
        return str(int(v))

    def fn(self, name: str, dtype: DType) -> str:
        single = dtype in (DType.float32, DType.float16) or dtype.is_narrow_float
        if single and name in self.own_fn:
            helper = self.own_fn[name]
            self.helpers_used.add(helper)
            if helper == "tanhf":
                self.helpers_used.add("expf")  # kiln_tanhf calls kiln_expf
            return "kiln_" + helper
        base = self.float_fn[name]
        return base + "f" if single else base

    # -- expressions -------------------------------------------------------------------------
    def expr(self, e: Expr) -> str:
        if isinstance(e, Const):
            return self.literal(e)
        if isinstance(e, Var):
            return e.name
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, Select):
            return f"({self.expr(e.cond)} ? {self.expr(e.a)} : {self.expr(e.b)})"
        if isinstance(e, Cast):
            return self.cast(e)
        if isinstance(e, (Bin, Un)) and (e.dtype.is_narrow_float or e.dtype.is_narrow_int):
            # computed in float (int32); every result rounds (wraps) to the narrow type, as
            # numpy with ml_dtypes (ONNX's reference) does op by op
            self.vtype(e.dtype)
            return narrow_types.narrow(e.dtype, self.binary(e) if isinstance(e, Bin) else self.unary(e))
        if isinstance(e, (Bin, Un)) and e.dtype is DType.float16:
            # C evaluates _Float16 arithmetic and math functions in float; the cast rounds
            # every op's result to float16, as numpy (ONNX's reference) does
            self.half_ops = True
            return f"((_Float16){self.binary(e) if isinstance(e, Bin) else self.unary(e)})"
        if isinstance(e, Bin):
            return self.binary(e)
        if isinstance(e, Un):
            return self.unary(e)
        raise VerificationError(f"the C renderer cannot print {type(e).__name__}")

    def cast(self, e: Cast) -> str:
        src, dst, a = e.a.dtype, e.dtype, self.expr(e.a)
        if dst.is_narrow_float:
            self.vtype(dst)
            return narrow_types.narrow(dst, f"(float)({a})")
        if dst.is_narrow_int:
            self.vtype(dst)
            wide = f"kiln_float_to_int64({a})" if src.is_float else f"(int64_t)({a})"
            return narrow_types.narrow(dst, wide)
        return f"(({self.vtype(dst)})({a}))"

    def binary(self, e: Bin) -> str:
        a, b = self.expr(e.a), self.expr(e.b)
        dt = e.a.dtype
        if e.op == "pow" and dt.is_float and isinstance(e.b, Const) and e.b.value in (1.0, 2.0, 3.0):
            # x**2 and x**3 as products: exact to rounding, and no powf call in a hot loop
            return "(" + " * ".join([a] * int(e.b.value)) + ")"
        if e.op in ("min", "max") and dt.is_float:
            # NaN-propagating, as numpy and ONNX (C's fmaxf drops NaN, and does not vectorize)
            double = dt is DType.float64
            self.helpers_used.add("minmax_d" if double else "minmax_f")
            return f"kiln_{e.op}{'_d' if double else 'f'}({a}, {b})"
        if e.op in ("pow", "fmod") and dt.is_float:
            return f"{self.fn(e.op, dt)}({a}, {b})"
        if e.op in ("min", "max"):
            # a function, not ``a > b ? a : b``: a clamp nests these, and the spelled-out form
            # repeats its operands (a requantizing epilogue's expression 8 times), which also
            # kept gcc 12 from if-converting and vectorizing the loop ("control flow in loop")
            ctype = self.vtype(dt)
            self.helpers_used.add(f"minmax_{ctype}")
            return f"kiln_{e.op}_{ctype}({a}, {b})"
        if e.op in ("div", "floordiv", "mod", "fmod") and dt in _UNSIGNED:
            # unsigned: C's own / and % are floor division and modulo; only 0 needs a guard
            c_op = "/" if e.op in ("div", "floordiv") else "%"
            return f"(({b}) == 0 ? 0 : ({a}) {c_op} ({b}))" if _reads_memory(e.b) else f"({a} {c_op} {b})"
        if e.op in ("div", "floordiv", "mod", "fmod") and not dt.is_float and _reads_memory(e.b):
            # A divisor read from a tensor can be 0 (or -1 with INT_MIN): the CPU traps, and
            # the whole process dies. Such lanes give 0 (and -a for -1) instead of a crash.
            helper = {"div": "kiln_div", "fmod": "kiln_fmod"}.get(e.op, f"kiln_{e.op}")
            by_minus_one = f"-({a})" if e.op in ("div", "floordiv") else "0"  # wraps under -fwrapv
            return f"(({b}) == 0 ? 0 : (({b}) == -1 ? {by_minus_one} : {helper}({a}, {b})))"
        if e.op in ("floordiv", "mod"):
            if _nonneg(e.a) and _nonneg(e.b):
                return f"({a} {'/' if e.op == 'floordiv' else '%'} {b})"
            return f"kiln_{e.op}({a}, {b})"
        if e.op == "fmod":
            return f"({a} % {b})"
        if e.op == "pow":
            return f"(({self.vtype(dt)})pow((double)({a}), (double)({b})))"
        if e.op == "xor":
            return f"(!({a}) != !({b}))"
        return f"({a} {self.infix[e.op]} {b})"

    def unary(self, e: Un) -> str:
        a, dt = self.expr(e.a), e.a.dtype
        if e.op == "neg":
            return f"(-{a})"
        if e.op == "not":
            return f"(!{a})"
        if e.op == "isnan":
            return f"(isnan({a}) != 0)"
        if e.op == "isinf":
            return f"(isinf({a}) != 0)"
        if e.op == "sigmoid":
            one = self.literal(Const(1.0, dt))
            return f"({one} / ({one} + {self.fn('exp', dt)}(-{a})))"
        if e.op == "softplus":
            return f"{self.fn('log', dt)}({self.literal(Const(1.0, dt))} + {self.fn('exp', dt)}({a}))"
        if e.op == "reciprocal":
            return f"({self.literal(Const(1.0, dt))} / {a})"
        if e.op == "sign":
            z = self.literal(Const(0, dt))
            return f"(({a}) > {z} ? {self.literal(Const(1, dt))} : (({a}) < {z} ? {self.literal(Const(-1, dt))} : {z}))"
        if e.op == "abs" and not dt.is_float:
            return f"(({a}) < 0 ? -({a}) : ({a}))"
        if e.op == "bitcast":  # a C99 compound literal: the bits of one type read as another
            return f"((union {{ {self.ctype(dt)} s; {self.ctype(e.dtype)} d; }}){{ .s = ({a}) }}).d"
        return f"{self.fn(e.op, dt)}({a})"

    def _encoded(self, buffer: str) -> bool:
        """Narrow tensors are stored encoded; local scalars and tiles hold wide values."""
        b = self.buffers[buffer]
        return (b.dtype.is_narrow_float or b.dtype.is_narrow_int) and b.scope != "local"

    def load(self, e: Load) -> str:
        ref = f"{e.buffer}{self.subscript(e.buffer, e.indices)}"
        return narrow_types.decode(self.buffers[e.buffer].dtype, ref) if self._encoded(e.buffer) else ref

    # -- buffers ------------------------------------------------------------------------------
    def subscript(self, name: str, indices) -> str:
        buf = self.buffers[name]
        if buf.scope == "local":
            return "".join(f"[{self.expr(i)}]" for i in indices)
        if not indices:
            return "[0]"
        # a Winograd transform reads each tile value in many of its cases: subscripts are
        # cached per (buffer, shape, indices) -- one renderer prints many functions, so the key
        # holds the shape -- but not when an index reads memory (a gather's index table): its
        # rendering depends on that other buffer's shape, which the key does not hold
        key = (name, buf.shape, indices)
        subscripts = self.__dict__.setdefault("_subscripts", {})
        cached = subscripts.get(key)
        if cached is None:
            flat = None
            for i, n in zip(indices, buf.shape):
                flat = i if flat is None else Bin("add", Bin("mul", flat, as_expr(n, INDEX), INDEX), i, INDEX)
            cached = f"[{self.expr(simplify(flat))}]"
            if not any(_reads_memory(i) for i in indices):
                subscripts[key] = cached
        return cached

    def dim(self, n) -> str:
        """An extent or stride: a literal, or an expression of the run-time dim symbols."""
        return str(n) if isinstance(n, int) else self.expr(n)

    # -- statements -----------------------------------------------------------------------------
    def emit(self, line: str, depth: int):
        self.lines.append("  " * depth + line)

    def stmt(self, s: Stmt, depth: int, in_parallel: bool = False):
        if isinstance(s, For) and s.kind == PARALLEL and not in_parallel and self.steal_parallel_loops:
            self.helpers_used.add("parallel_loop")
            self.emit(f"KILN_PARALLEL_LOOP({s.var.name}, {self.dim(s.extent)}) {{", depth)
            self.stmt(s.body, depth + 1, True)
            self.emit("} KILN_PARALLEL_LOOP_END", depth)
            return
        if isinstance(s, For):
            if s.kind == PARALLEL and not in_parallel:
                self.emit(self.parallel_pragma, depth)
            elif s.kind == VECTORIZED:
                pragma = self.vector_pragma(s)
                if pragma and (self._extreme_with_nan_flag(s, pragma, depth)
                               or self._float_sum_in_lanes(s, pragma, depth)):
                    return
                if pragma:
                    self.emit(pragma, depth)
            elif s.kind == UNROLLED and isinstance(s.extent, int):
                self.emit(f"#pragma GCC unroll {s.extent}", depth)
            v = s.var.name
            self.emit(f"for (int64_t {v} = 0; {v} < {self.dim(s.extent)}; ++{v}) {{", depth)
            self.stmt(s.body, depth + 1, in_parallel or s.kind == PARALLEL)
            self.emit("}", depth)
        elif isinstance(s, Seq):
            for x in s.stmts:
                self.stmt(x, depth, in_parallel)
        elif isinstance(s, Store):
            value, dt = self.expr(s.value), self.buffers[s.buffer].dtype
            if self._encoded(s.buffer):
                value = narrow_types.encode(dt, value)
            self.emit(f"{s.buffer}{self.subscript(s.buffer, s.indices)} = {value};", depth)
        elif isinstance(s, Alloc):
            b = s.buffer
            self.buffers[b.name] = b
            dims = "".join(f"[{n}]" for n in b.shape)
            # Aligned: gcc vectorizes tile accesses with aligned moves, and the default stack
            # alignment of an OpenMP outlined function can be less than a vector.
            align = " __attribute__((aligned(64)))" if b.shape else ""
            ctype = self.vtype(b.dtype) if b.scope == "local" else self.ctype(b.dtype)
            self.emit(f"{ctype} {b.name}{dims}{align};", depth)
            self.stmt(s.body, depth, in_parallel)
        elif isinstance(s, If):
            self.emit(f"if ({self.expr(s.cond)}) {{", depth)
            self.stmt(s.then, depth + 1, in_parallel)
            self.emit("}", depth)
        else:
            raise VerificationError(f"the C renderer cannot print {type(s).__name__}")

    _REDUCTION_OPS = {"add": "+", "mul": "*", "max": "max", "min": "min"}

    def vector_pragma(self, loop: For) -> str | None:
        """The pragma of a vectorized loop; None for an integer sum into a scalar: gcc
        vectorizes those at -O3 by itself (integer + reassociates) and only then matches
        dot-product instructions (x86 ``vpdpbusd``/``vpmaddwd``, Arm ``sdot``/``udot``) --
        under ``omp simd`` it widens and multiplies lane by lane (measured with gcc 12)."""
        clause = self.reduction_clause(loop)
        if clause.startswith(" reduction(+:") and self.buffers[_accumulation(loop).buffer].dtype.is_int:
            return None
        return self.simd_pragma + clause

    def _extreme_with_nan_flag(self, loop: For, pragma: str, depth: int) -> bool:
        """A float max/min reduction printed as a plain max/min plus a NaN flag.

        ``kiln_maxf`` keeps a NaN (as ONNX does), and as an OpenMP custom reduction it is one
        dependent compare-compare-blend chain per vector; the loop's own NaN test and a plain
        ``reduction(max:)`` are independent, cheaper steps (a standalone 12x128x128 softmax
        on one core: 94.5 -> 81.5 us). The result is the same: NaN if the accumulator or any
        element is NaN, else the maximum (minimum). False when ``loop`` is no such reduction."""
        if (not pragma.startswith("#pragma omp simd") or " reduction(kiln_r" not in pragma
                or not isinstance(loop.body, Store)):
            return False
        acc, value = loop.body.buffer, loop.body.value
        if any(isinstance(e, Load) and e.buffer == acc for e in walk(value.b)):
            return False
        ctype = self.ctype(self.buffers[acc].dtype)
        op = value.op  # "max" or "min" (reduction_clause checked the form acc = op(acc, e))
        cmp = ">" if op == "max" else "<"
        flag, v, i = f"{acc}_nan", f"{acc}_v", loop.var.name
        self.emit(f"int {flag} = {acc} != {acc};", depth)
        lanes = 2 * self.sum_lanes
        if lanes and isinstance(loop.extent, int) and loop.extent % lanes == 0 and loop.extent >= LONG_EXTREME:
            # a long reduction: `lanes` independent partial results (two vectors), not one
            # dependent vector max/min chain (latency-bound: DynamicQuantizeLinear's min over
            # 128 x 3072 floats on one core 26.0 -> 14.5 us)
            part, nans, lane = f"{acc}_lanes", f"{flag}_lanes", f"{i}_lane"
            self.emit(f"{ctype} {part}[{lanes}] __attribute__((aligned(64)));", depth)
            self.emit(f"int {nans}[{lanes}] __attribute__((aligned(64)));", depth)
            self.emit(self.simd_pragma, depth)
            self.emit(f"for (int64_t {lane} = 0; {lane} < {lanes}; ++{lane}) {{ {part}[{lane}] = {acc}; "
                      f"{nans}[{lane}] = 0; }}", depth)
            self._lane_rows(loop, lanes, depth)
            self.emit(f"const {ctype} {v} = {self.expr(value.b)};", depth + 2)
            self.emit(f"{part}[{lane}] = {part}[{lane}] {cmp} {v} ? {part}[{lane}] : {v};", depth + 2)
            self.emit(f"{nans}[{lane}] |= {v} != {v};", depth + 2)
            self.emit("}", depth + 1)
            self.emit("}", depth)
            self.emit(f"{self.simd_pragma} reduction({op}:{acc}) reduction(|:{flag})", depth)
            self.emit(f"for (int64_t {lane} = 0; {lane} < {lanes}; ++{lane}) {{ {acc} = {acc} {cmp} {part}[{lane}] ? "
                      f"{acc} : {part}[{lane}]; {flag} |= {nans}[{lane}]; }}", depth)
        else:
            self.emit(f"{self.simd_pragma} reduction({op}:{acc}) reduction(|:{flag})", depth)
            self.emit(f"for (int64_t {i} = 0; {i} < {self.dim(loop.extent)}; ++{i}) {{", depth)
            self.emit(f"const {ctype} {v} = {self.expr(value.b)};", depth + 1)
            self.emit(f"{acc} = {acc} {cmp} {v} ? {acc} : {v};", depth + 1)
            self.emit(f"{flag} |= {v} != {v};", depth + 1)
            self.emit("}", depth)
        self.emit(f"if ({flag}) {acc} = NAN;", depth)
        return True

    # Lanes of partial sums for a vectorized float sum into a scalar (0: OpenMP's reduction);
    # twice as many partial results for a long max/min (``LONG_EXTREME``)
    sum_lanes = 0

    def _lane_rows(self, loop: For, lanes: int, depth: int) -> None:
        """Opens ``loop`` as rows of ``lanes`` (the inner loop vectorized) with its variable
        defined at ``depth + 2``; the caller prints the body and closes both loops."""
        v = loop.var.name
        self.emit(f"for (int64_t {v}_row = 0; {v}_row < {loop.extent // lanes}; ++{v}_row) {{", depth)
        self.emit(self.simd_pragma, depth + 1)
        self.emit(f"for (int64_t {v}_lane = 0; {v}_lane < {lanes}; ++{v}_lane) {{", depth + 1)
        self.emit(f"const int64_t {v} = {v}_row * {lanes} + {v}_lane;", depth + 2)

    def _float_sum_in_lanes(self, loop: For, pragma: str, depth: int) -> bool:
        """A vectorized float sum into a scalar printed as ``sum_lanes`` partial sums in a
        local array, added up in a tree after the loop.

        gcc 12 ends ``omp simd reduction(+:acc)`` over floats by adding the lanes one after
        another (16 dependent scalar adds per sum with AVX-512); the tree takes 4 vector
        steps (softmax [12, 128, 128] in an interleaved A/B: 46.4 -> 43.1 us). The order of the
        additions differs from OpenMP's, as OpenMP's own may. False when ``loop`` is no
        such sum or its extent is not a multiple of two rows of lanes."""
        lanes = self.sum_lanes
        acc_store = _accumulation(loop)
        if (not lanes or " reduction(+:" not in pragma or acc_store is None or not isinstance(loop.extent, int)
                or loop.extent % lanes or loop.extent < 2 * lanes
                or self.buffers[acc_store.buffer].dtype not in (DType.float32, DType.float64)):
            return False
        acc, v = acc_store.buffer, loop.var.name
        part, lane, step = f"{acc}_lanes", f"{v}_lane", f"{acc}_k"
        ctype = self.ctype(self.buffers[acc].dtype)
        self.emit(f"{ctype} {part}[{lanes}] __attribute__((aligned(64)));", depth)
        self.emit(self.simd_pragma, depth)
        self.emit(f"for (int64_t {step} = 0; {step} < {lanes}; ++{step}) {part}[{step}] = 0;", depth)
        self._lane_rows(loop, lanes, depth)
        for st in (loop.body.stmts if isinstance(loop.body, Seq) else (loop.body,)):
            if st is acc_store:
                self.emit(f"{part}[{lane}] = {part}[{lane}] + {self.expr(st.value.b)};", depth + 2)
            else:
                self.stmt(st, depth + 2)
        self.emit("}", depth + 1)
        self.emit("}", depth)
        half = lanes // 2
        while half:
            self.emit(self.simd_pragma, depth)
            self.emit(f"for (int64_t {step} = 0; {step} < {half}; ++{step}) {part}[{step}] += {part}[{step} + {half}];",
                      depth)
            half //= 2
        self.emit(f"{acc} = {acc} + {part}[0];", depth)
        return True

    def reduction_clause(self, loop: For) -> str:
        """`` reduction(+:acc)`` when a vectorized loop accumulates into a scalar: OpenMP then
        may reassociate the sum (one partial sum per lane), which C alone forbids."""
        body = _accumulation(loop)
        if body is None:
            return ""
        buf = self.buffers.get(body.buffer)
        if buf is not None and (buf.dtype.is_narrow_float or buf.dtype.is_narrow_int):
            return ""  # every step rounds to the narrow type: the order of the sum matters
        op = self._REDUCTION_OPS.get(body.value.op)
        first = body.value.a
        if (buf is None or buf.scope != "local" or buf.shape or op is None
                or not (isinstance(first, Load) and first.buffer == body.buffer and not first.indices)):
            return ""
        if op in ("max", "min") and buf.dtype in (DType.float32, DType.float64):
            op = f"kiln_r{op}{'_d' if buf.dtype is DType.float64 else 'f'}"  # NaN-propagating (C_PRELUDE)
        return f" reduction({op}:{body.buffer})"

    function_attributes = ""  # printed before each kernel's ``void``

    def render_func(self, f: Func, inputs: set[str], static: bool = True, symbols=()) -> str:
        """``static void name(const float* restrict a, float* restrict out, ..., int64_t batch)``."""
        self.lines = []
        self.buffers: dict[str, Buffer] = {b.name: b for b in f.params}
        params = ", ".join(
            [f"{'const ' if b.name in inputs else ''}{self.ctype(b.dtype)}* restrict {b.name}" for b in f.params]
            + [f"int64_t {sym}" for sym in symbols])
        self.half_ops = False
        self.prologue: list[str] = []  # lines a printer wants at the top of the function body
        self.emit(f"{'static ' if static else ''}{self.function_attributes}void {f.name}({params}) {{", 0)
        self.stmt(f.body, 1)
        self.emit("}", 0)
        self.lines[1:1] = self.prologue
        if self.half_ops:
            self.lines[:0] = EACH_OP_ROUNDED
        return "\n".join(self.lines)


# A float max/min into a scalar over at least this many elements keeps partial results in
# lanes (``_extreme_with_nan_flag``); a shorter one (a softmax row) ends sooner with one vector.
LONG_EXTREME = 1024

_UNSIGNED = frozenset({DType.uint8, DType.uint16, DType.uint32, DType.uint64})


def _reads_memory(e: Expr) -> bool:
    """True when ``e`` depends on tensor data (index arithmetic never does)."""
    from kiln.ir.expr import walk

    return any(isinstance(x, Load) for x in walk(e))


def _nonneg(e: Expr) -> bool:
    """True when an integer index expression can be shown to be >= 0 (loop vars are)."""
    c = affine_coeffs(e)
    if c is not None:
        return all(v >= 0 for v in c.values())
    if isinstance(e, Bin) and e.op in ("floordiv", "mod", "mul", "add", "min", "max"):
        return _nonneg(e.a) and _nonneg(e.b)
    return False


def _accumulation(loop: For) -> Store | None:
    """The store into a scalar that a loop body accumulates into: the body itself, or the one
    unindexed store among indexed stores that do not read that scalar (a value kept for a
    later loop, ``kiln/passes/reuse_values.py``)."""
    body = loop.body
    stmts = body.stmts if isinstance(body, Seq) else (body,)
    if not all(isinstance(x, Store) for x in stmts):
        return None
    scalars = [x for x in stmts if not x.indices]
    if len(scalars) != 1 or not isinstance(scalars[0].value, Bin):
        return None
    acc = scalars[0].buffer
    for x in stmts:
        if x is not scalars[0] and any(isinstance(e, Load) and e.buffer == acc
                                       for part in stmt_exprs(x) for e in walk(part)):
            return None
    return scalars[0]
