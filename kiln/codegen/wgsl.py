"""WGSL renderer: loop IR with GPU-bound loops -> WebGPU compute shaders.

A class with a type table and an op table, like the C renderer (and tinygrad's
renderer/wgsl.py). WGSL differs from C where it matters for correctness:

- no 64-bit or 8-bit integers, no f64: every element is stored as one 32-bit word
  (:mod:`kiln.codegen.wgsl_model` converts at the edges), integers compute in ``i32``,
  float16 computes in ``f32``; float64 is refused at compile time. With f16 storage
  (``webgpu:+f16``) float16 values live one half each in ``arena16`` (``array<f16>``),
  converted to f32 on load and rounded to f16 on store;
- the same bindings serve every kernel: ``arena`` (read-write words holding inputs,
  outputs and intermediates at offsets from the WebGPU memory plan), ``weights0..N``
  (read-only words, 128 MiB each) and, for dynamic dims, the ``kiln_dims`` uniform; values
  are read through ``bitcast`` -- so a kernel never needs more bindings than a browser's
  default limits allow, whatever its number of operands. The exception: a dispatch with
  vector loads (``VectorLoad``, from the tiled matmul rule) binds each tensor it touches as
  its own *view* of the arena or a weight binding (``kiln_view16``, ...: ranges that never
  overlap, which browsers allow for read-write bindings of one buffer), and declares the
  views it only reads from as ``array<vec4<u32>>`` -- a vector-typed binding no store ever
  goes through, so no store can touch a neighbour's word (:mod:`kiln.codegen.wgsl_views`);
- no ternary (``select(f, t, c)`` has the condition last), no ``erf``, ``pow`` undefined
  for a negative base, and a compiler may assume no inf/NaN literals: these go through the
  small helper functions in :data:`WGSL_PRELUDE`.
"""
from __future__ import annotations

import math
import struct

from kiln.errors import ShapeError, VerificationError
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Expr, Load, Select, Un, Var, affine_coeffs
from kiln.ir.loop import (GPU_BLOCK, GPU_THREAD, SUBGROUP_LANE, SUBGROUP_SIZE, Alloc, Barrier, Buffer, For, Func, If,
                          Seq, Stmt, Store, SubgroupReduce, VectorLoad, walk_stmts)

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


class WGSLRenderer:
    # element type while computing; storage is always one u32 word per element
    type_map = {
        DType.float32: "f32", DType.float16: "f32",
        DType.int8: "i32", DType.int16: "i32", DType.int32: "i32", DType.int64: "i32", DType.uint8: "i32",
        DType.bool: "bool",
    }
    infix = {
        "add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
        "ge": ">=", "eq": "==", "ne": "!=", "and": "&&", "or": "||", "bitand": "&", "bitor": "|",
        "fmod": "%",
    }
    # float unary ops that WGSL has as builtins under the same meaning
    float_fn = {
        "exp": "exp", "log": "log", "sqrt": "sqrt", "abs": "abs", "floor": "floor", "ceil": "ceil",
        "round": "round",  # half to even, as C's nearbyint under the default rounding mode
        "sin": "sin", "cos": "cos", "tan": "tan", "asin": "kiln_asin", "acos": "kiln_acos", "atan": "atan",
        "sinh": "sinh", "cosh": "cosh", "asinh": "asinh", "acosh": "acosh", "atanh": "atanh",
        "erf": "kiln_erf", "tanh": "kiln_tanh", "isnan": "kiln_isnan", "isinf": "kiln_isinf",
        "expm1": "kiln_expm1", "exp_nonpos": "exp",
    }
    workgroup_size_builtin = "lid"
    subgroup_fn = {"add": "subgroupAdd", "mul": "subgroupMul", "max": "subgroupMax", "min": "subgroupMin"}

    def __init__(self, bases: dict[str, tuple[str, int]], chunk_words: int = 1 << 25, symbols=(), packed=()):
        """``bases``: parameter buffer name -> (``"arena"`` or ``"weights"``, word offset).

        Weights are split into bindings ``weights0``, ``weights1``, ... of ``chunk_words``
        words each (a binding is limited to 128 MiB by default). ``packed``: 8-bit and float16
        weight parameters stored four or two elements to a word (``wgsl_model.to_packed_words``)."""
        self.bases = bases
        self.packed = set(packed)
        self.chunk_words = chunk_words
        self.symbols = list(symbols)  # dynamic dims: read from the kiln_dims uniform as dim0, dim1, ...
        self.lines: list[str] = []
        self.buffers: dict[str, Buffer] = {}
        self.views: dict[str, tuple[str, bool]] = {}  # per entry: parameter -> (view variable, vec4-typed)

    # -- types and literals --------------------------------------------------------------
    def wtype(self, dtype: DType) -> str:
        if dtype not in self.type_map:
            why = "WGSL has no 64-bit floats" if dtype is DType.float64 else f"WGSL has no {dtype} arithmetic"
            raise ShapeError(f"a kernel computes in {dtype}; {why} (the webgpu target stores float32, float16, "
                             "integer and bool tensors; float16 computes in f32)")
        return self.type_map[dtype]

    def literal(self, c: Const) -> str:
        v, dt = c.value, c.dtype
        if dt is DType.bool:
            return "true" if v else "false"
        if dt.is_float:
            v = float(v)
            if math.isnan(v) or math.isinf(v):
                # WGSL has no inf/NaN literals, and Tint rejects them from constant folding
                # (even bitcast<f32>(0x7f800000u)): a function call is not a const-expression
                return f"kiln_f32_bits({struct.unpack('<I', struct.pack('<f', v))[0]:#010x}u)"
            f = struct.unpack("<f", struct.pack("<f", v))[0] if abs(v) < 3.4028234663852886e38 else v
            if abs(f) > 3.4028234663852886e38:
                return "kiln_f32_bits(0x7f800000u)" if f > 0 else "kiln_f32_bits(0xff800000u)"
            s = repr(f)
            s = s if ("e" in s or "." in s or "inf" in s) else s + ".0"
            return f"f32({s})" if s.startswith("-") else s + "f"
        v = max(I32_MIN, min(I32_MAX, int(v)))  # int64 limits (reduction identities) saturate to i32
        if v == I32_MIN:
            return "i32(-2147483647 - 1)"
        return f"i32({v})" if v < 0 else f"{v}i"

    # -- storage access ------------------------------------------------------------------------
    def flat_index(self, name: str, indices) -> str:
        buf = self.buffers[name]
        flat = None
        for i, n in zip(indices, buf.shape):
            s = self.expr(i)
            flat = s if flat is None else f"({flat}) * {self.dim(n)} + {s}"
        return flat or "0"

    def word(self, name: str, indices, flat: str | None = None) -> str:
        """The ``arena[...]``/``weights[...]`` word holding element ``indices`` of a parameter
        (or the word at index ``flat``)."""
        region, base = self.bases[name]
        buf = self.buffers[name]
        flat = flat if flat is not None else self.flat_index(name, indices)
        if name in self.views:  # the tensor's own binding: indices from 0
            view, vec4 = self.views[name]
            return f"{view}[({flat}) >> 2u][({flat}) & 3]" if vec4 else f"{view}[{flat}]"
        if region == "weights":
            n = 1
            for d in buf.shape:
                n *= d
            if name in self.packed:
                n = -(-n // (4 // buf.dtype.itemsize))
            first, last = base // self.chunk_words, (base + max(n, 1) - 1) // self.chunk_words
            if first != last:  # a tensor across two bindings: pick the binding per element
                return f"kiln_weight({base} + {flat})"
            region, base = f"weights{first}", base - first * self.chunk_words
        return f"{region}[{base} + {flat}]" if base else f"{region}[{flat}]"

    def half(self, name: str, indices) -> str:
        """The ``arena16[...]`` element of a float16 parameter in f16 storage."""
        base = self.bases[name][1]
        flat = self.flat_index(name, indices)
        return f"arena16[{base} + {flat}]" if base else f"arena16[{flat}]"

    def scoped(self, name: str) -> str:
        """A workgroup buffer is module-scope in WGSL: prefixed with its entry point's name."""
        return f"{self.entry}_{name}" if self.buffers[name].scope == "shared" else name

    def dim(self, n) -> str:
        """An extent or stride: a literal, or an expression of the dynamic dims."""
        return str(n) if isinstance(n, int) else self.expr(n)

    def load(self, e: Load) -> str:
        buf = self.buffers[e.buffer]
        if buf.scope in ("local", "shared"):
            return self.scoped(e.buffer) + "".join(f"[{self.expr(i)}]" for i in e.indices)
        if self.bases[e.buffer][0] == "arena16":  # f16 storage; kernels compute in f32
            return f"f32({self.half(e.buffer, e.indices)})"
        if e.buffer in self.packed:
            flat = self.flat_index(e.buffer, e.indices)
            if buf.dtype is DType.float16:  # two halves per word; unpack2x16float is core WGSL
                w = self.word(e.buffer, e.indices, flat=f"(({flat}) >> 1u)")
                return f"unpack2x16float({w})[({flat}) & 1]"
            # four 8-bit elements per word: extract one, sign- or zero-extended
            w = self.word(e.buffer, e.indices, flat=f"(({flat}) >> 2u)")
            bits = f"u32((({flat}) & 3) * 8)"
            if buf.dtype is DType.int8:
                return f"extractBits(bitcast<i32>({w}), {bits}, 8u)"
            return f"i32(extractBits({w}, {bits}, 8u))"
        w = self.word(e.buffer, e.indices)
        t = self.wtype(buf.dtype)
        if t == "bool":
            return f"({w} != 0u)"
        return f"bitcast<{t}>({w})"

    def store(self, s: Store) -> str:
        buf = self.buffers[s.buffer]
        v = self.expr(s.value)
        if buf.scope in ("local", "shared"):
            return f"{self.scoped(s.buffer)}{''.join(f'[{self.expr(i)}]' for i in s.indices)} = {v};"
        if self.bases[s.buffer][0] == "arena16":
            return f"{self.half(s.buffer, s.indices)} = f16({v});"
        if self.bases[s.buffer][0] != "arena" or self.views.get(s.buffer, ("", False))[1]:
            raise VerificationError(f"kernel stores into read-only buffer {s.buffer!r}")
        if self.wtype(buf.dtype) == "bool":
            return f"{self.word(s.buffer, s.indices)} = select(0u, 1u, {v});"
        return f"{self.word(s.buffer, s.indices)} = bitcast<u32>({v});"

    # -- expressions -------------------------------------------------------------------------
    def expr(self, e: Expr) -> str:
        if isinstance(e, Const):
            return self.literal(e)
        if isinstance(e, Var):
            return f"dim{self.symbols.index(e.name)}" if e.name in self.symbols else e.name
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, Select):
            return f"select({self.expr(e.b)}, {self.expr(e.a)}, {self.expr(e.cond)})"
        if isinstance(e, Cast):
            return self.cast(self.expr(e.a), e.a.dtype, e.dtype)
        if isinstance(e, Bin):
            return self.binary(e)
        if isinstance(e, Un):
            return self.unary(e)
        raise VerificationError(f"the WGSL renderer cannot print {type(e).__name__}")

    def cast(self, a: str, src: DType, dst: DType) -> str:
        s, d = self.wtype(src), self.wtype(dst)
        if d == "bool":
            zero = "0.0" if s == "f32" else "0"
            return a if s == "bool" else f"({a} != {zero})"
        if s == "bool":
            return f"select({'0.0' if d == 'f32' else '0'}, {'1.0' if d == 'f32' else '1'}, {a})"
        if dst in (DType.uint8, DType.int8, DType.int16):
            # wrap to the narrow type as C does (values are kept sign- or zero-extended in i32)
            v = a if s == "i32" else f"i32({a})"
            if dst is DType.uint8:
                return f"({v} & 255)"
            shift = 24 if dst is DType.int8 else 16
            return f"(({v} << {shift}u) >> {shift}u)"
        return a if s == d else f"{d}({a})"

    def binary(self, e: Bin) -> str:
        a, b = self.expr(e.a), self.expr(e.b)
        dt = e.a.dtype
        fl = dt.is_float
        if e.op == "pow":
            if fl and isinstance(e.b, Const) and e.b.value in (1.0, 2.0, 3.0):
                return "(" + " * ".join([a] * int(e.b.value)) + ")"
            return f"kiln_pow({a}, {b})" if fl else f"i32(kiln_pow(f32({a}), f32({b})))"
        if e.op in ("min", "max"):
            # WGSL's min/max may drop a NaN operand (lavapipe's does); ONNX keeps it
            return f"kiln_{e.op}f({a}, {b})" if fl else f"{e.op}({a}, {b})"
        if e.op == "xor":
            return f"({a} != {b})"
        if e.op in ("shl", "shr"):
            return f"({a} {'<<' if e.op == 'shl' else '>>'} u32({b}))"
        if not fl and e.op in ("div", "fmod"):
            # integer division by zero is defined in WGSL, but not as the host's 0
            return f"select({a} {'/' if e.op == 'div' else '%'} {b}, 0, {b} == 0)"
        if not fl and e.op in ("floordiv", "mod"):
            if _nonneg(e.a) and _nonneg(e.b):
                return f"({a} {'/' if e.op == 'floordiv' else '%'} {b})"
            return f"kiln_{e.op}({a}, {b})"
        if fl and e.op == "floordiv":
            return f"floor({a} / {b})"
        if fl and e.op == "mod":  # Python-style float mod: the sign of the divisor
            return f"kiln_fmod_floor({a}, {b})"
        if fl and e.op == "div" and isinstance(e.b, Const) and float(e.b.value) == 0.0:
            # IEEE's x / 0 spelled out: a compiler may assume no infinities, and lavapipe's
            # folds a division by the literal into a finite value
            return f"kiln_div_zero({'-' if math.copysign(1.0, float(e.b.value)) < 0 else ''}{a})"
        if fl and e.op == "ne":  # true for NaN operands: a compiler may fold != to an ordered compare
            return f"kiln_ne({a}, {b})"
        if fl and e.op == "fmod":  # C's fmod: WGSL's % is a - b * trunc(a / b), NaN for an infinite b
            return f"kiln_fmod({a}, {b})"
        if e.op not in self.infix:
            raise VerificationError(f"the WGSL renderer has no rule for binary op {e.op!r}")
        return f"({a} {self.infix[e.op]} {b})"

    def unary(self, e: Un) -> str:
        a, dt = self.expr(e.a), e.a.dtype
        t = self.wtype(dt)
        one = "1.0" if t == "f32" else "1"
        if e.op == "neg":
            return f"(-{a})"
        if e.op == "not":
            return f"(!{a})"
        if e.op == "sigmoid":
            return f"({one} / ({one} + exp(-{a})))"
        if e.op == "softplus":
            return f"kiln_softplus({a})"
        if e.op == "reciprocal":
            return f"({one} / {a})"
        if e.op == "sign":
            z = "0.0" if t == "f32" else "0"
            return f"select(select({z}, -{one}, {a} < {z}), {one}, {a} > {z})"
        if e.op == "abs" and t == "i32":
            return f"abs({a})"
        if e.op == "bitcast":  # 32-bit types only: WGSL words hold f32 or i32
            if dt.itemsize != 4 or e.dtype.itemsize != 4:
                raise ShapeError(f"WGSL reinterprets only 32-bit values; cannot bitcast {dt} to {e.dtype}")
            return f"bitcast<{self.wtype(e.dtype)}>({a})"
        if e.op in ("isnan", "isinf") and t != "f32":
            return "false"
        if e.op in ("floor", "ceil", "round") and t == "i32":
            return a
        if e.op not in self.float_fn:
            raise VerificationError(f"the WGSL renderer has no rule for unary op {e.op!r}")
        call = f"{self.float_fn[e.op]}({a if t == 'f32' else f'f32({a})'})"
        return call if t == "f32" or e.op in ("isnan", "isinf") else f"i32({call})"

    # -- statements -----------------------------------------------------------------------------
    def emit(self, line: str, depth: int):
        self.lines.append("  " * depth + line)

    def stmt(self, s: Stmt, depth: int):
        if isinstance(s, For) and s.kind == GPU_BLOCK:
            self.emit(f"let {s.var.name} = i32(wg.x + wg.y * nwg.x);", depth)
            self.emit(f"if ({s.var.name} >= {self.dim(s.extent)}) {{ return; }}", depth)
            self.stmt(s.body, depth)
        elif isinstance(s, For) and s.kind == GPU_THREAD:
            self.emit(f"let {s.var.name} = i32(lid.x);", depth)
            self.stmt(s.body, depth)
        elif isinstance(s, For):
            v = s.var.name
            self.emit(f"for (var {v} = 0; {v} < {self.dim(s.extent)}; {v}++) {{", depth)
            self.stmt(s.body, depth + 1)
            self.emit("}", depth)
        elif isinstance(s, Seq):
            for x in s.stmts:
                self.stmt(x, depth)
        elif isinstance(s, Store):
            self.emit(self.store(s), depth)
        elif isinstance(s, Alloc):
            b = s.buffer
            self.buffers[b.name] = b
            t = self.wtype(b.dtype)
            for n in reversed(b.shape):
                t = f"array<{t}, {n}>"
            if b.scope == "shared":
                self.shared.append(f"var<workgroup> {self.scoped(b.name)}: {t};")
            else:
                self.emit(f"var {b.name}: {t};", depth)
            self.stmt(s.body, depth)
        elif isinstance(s, Barrier):
            self.emit("workgroupBarrier();", depth)
        elif isinstance(s, SubgroupReduce):
            if s.op not in self.subgroup_fn:
                raise VerificationError(f"WGSL has no subgroup operation for {s.op!r}")
            self.emit(f"{s.dst} = {self.subgroup_fn[s.op]}({self.expr(s.value)});", depth)
        elif isinstance(s, VectorLoad):
            self.vector_load(s, depth)
        elif isinstance(s, If):
            self.emit(f"if ({self.expr(s.cond)}) {{", depth)
            self.stmt(s.then, depth + 1)
            self.emit("}", depth)
        else:
            raise VerificationError(f"the WGSL renderer cannot print {type(s).__name__}")

    def vector_load(self, s: VectorLoad, depth: int):
        """Four neighbouring words: one ``vec4<u32>`` load from a vector view, else four scalar loads."""
        flat = self.expr(s.flat)
        dst = [f"{self.scoped(s.dst)}{''.join(f'[{self.expr(i)}]' for i in ix)}" for ix in s.dst_indices]
        view, vec4 = self.views.get(s.src, ("", False))
        if not vec4:
            for lane, d in enumerate(dst):
                self.emit(f"{d} = bitcast<f32>({self.word(s.src, None, flat=f'({flat}) + {lane}')});", depth)
            return
        self.emit("{", depth)
        self.emit(f"let kiln_q = {view}[({flat}) >> 2u];", depth + 1)
        for d, lane in zip(dst, "xyzw"):
            self.emit(f"{d} = bitcast<f32>(kiln_q.{lane});", depth + 1)
        self.emit("}", depth)

    def render_entry(self, f: Func, workgroup_size: int, views: dict[str, tuple[str, bool]] | None = None) -> str:
        """One ``@compute`` entry point; the bound loops become built-in ids. ``views``: the
        entry reads and writes these parameters through their own bindings (:mod:`kiln.codegen.wgsl_views`)."""
        self.lines, self.shared, self.entry = [], [], f.name
        self.views = dict(views or {})
        self.buffers = {b.name: b for b in f.params}
        self.emit(f"@compute @workgroup_size({workgroup_size})", 0)
        subgroup = uses_subgroups(f)
        extra = (f", @builtin(subgroup_invocation_id) {SUBGROUP_LANE}_u: u32, "
                 f"@builtin(subgroup_size) {SUBGROUP_SIZE}_u: u32") if subgroup else ""
        self.emit(f"fn {f.name}(@builtin(workgroup_id) wg: vec3<u32>, "
                  f"@builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>{extra}) {{", 0)
        if subgroup:
            self.emit(f"let {SUBGROUP_LANE} = i32({SUBGROUP_LANE}_u);", 1)
            self.emit(f"let {SUBGROUP_SIZE} = i32({SUBGROUP_SIZE}_u);", 1)
        for i, name in enumerate(self.symbols):
            self.emit(f"let dim{i} = kiln_dims.d[{i // 4}][{i % 4}];  // {name}", 1)
        self.stmt(f.body, 1)
        self.emit("}", 0)
        return "\n".join(self.shared + self.lines)


def uses_subgroups(f: Func) -> bool:
    """Whether an entry point uses subgroup operations (and so their built-ins)."""
    return any(isinstance(s, SubgroupReduce) for s in walk_stmts(f.body))


def _nonneg(e: Expr) -> bool:
    c = affine_coeffs(e)
    if c is not None:
        return all(v >= 0 for v in c.values())
    if isinstance(e, Bin) and e.op in ("floordiv", "mod", "mul", "add", "min", "max"):
        return _nonneg(e.a) and _nonneg(e.b)
    return False


DIMS_BINDING = 8  # the uniform of dynamic dim values, after the arena and <= 7 weight chunks
HALF_BINDING = 9  # arena16: float16 values in f16 storage (webgpu:+f16)


def bindings(weight_chunks: int, chunk_words: int = 1 << 25, symbols=(), half: bool = False,
             subgroups: bool = False) -> str:
    """The bindings every kernel declares (the same layout for all kernels of a model).
    ``half``: the ``arena16`` binding of f16 storage, and ``enable f16;`` (which must come
    before any declaration); ``subgroups``: ``enable subgroups;`` for kernels that use them."""
    lines = ["enable f16;"] if half else []
    lines += ["enable subgroups;"] if subgroups else []
    lines += ["@group(0) @binding(0) var<storage, read_write> arena: array<u32>;"]
    if half:
        lines.append(f"@group(0) @binding({HALF_BINDING}) var<storage, read_write> arena16: array<f16>;")
    if symbols:
        lines += [f"struct KilnDims {{ d: array<vec4<i32>, {-(-len(symbols) // 4)}> }}",
                  f"@group(0) @binding({DIMS_BINDING}) var<uniform> kiln_dims: KilnDims;"]
    lines += [f"@group(0) @binding({c + 1}) var<storage, read> weights{c}: array<u32>;"
              for c in range(max(weight_chunks, 1))]
    if weight_chunks > 1:
        lines.append("fn kiln_weight(i: i32) -> u32 {")
        for c in range(weight_chunks - 1):
            lines.append(f"  if (i < {(c + 1) * chunk_words}) {{ return weights{c}[i - {c * chunk_words}]; }}")
        last = weight_chunks - 1
        lines.append(f"  return weights{last}[i - {last * chunk_words}];")
        lines.append("}")
    return "\n".join(lines) + "\n"


WGSL_PRELUDE = """\
fn kiln_f32_bits(b: u32) -> f32 { return bitcast<f32>(b); }

fn kiln_floordiv(a: i32, b: i32) -> i32 {
  if (b == 0) { return 0; }
  let q = a / b;
  return select(q, q - 1, q * b != a && ((a < 0) != (b < 0)));
}
fn kiln_mod(a: i32, b: i32) -> i32 {
  if (b == 0) { return 0; }
  let r = a % b;
  return select(r, r + b, r != 0 && ((r < 0) != (b < 0)));
}
fn kiln_div_zero(x: f32) -> f32 {
  let inf = select(kiln_f32_bits(0xff800000u), kiln_f32_bits(0x7f800000u), x > 0.0);
  return select(inf, kiln_f32_bits(0x7fc00000u), x == 0.0 || kiln_isnan(x));
}
fn kiln_fmod(a: f32, b: f32) -> f32 { return select(a % b, a, kiln_isinf(b) && !kiln_isinf(a) && !kiln_isnan(a)); }
// Python's float %: C's fmod moved to the divisor's sign (an infinite divisor with a finite a
// of the other sign gives the divisor, as numpy)
fn kiln_fmod_floor(a: f32, b: f32) -> f32 {
  let r = kiln_fmod(a, b);
  return select(r, r + b, r != 0.0 && ((r < 0.0) != (b < 0.0)));
}
// pow(x, y) is exp2(y * log2(x)) in WGSL: undefined for x < 0. Integer exponents keep the sign.
fn kiln_pow(x: f32, y: f32) -> f32 {
  let m = pow(abs(x), y);
  if (x >= 0.0) { return m; }
  if (fract(y) != 0.0) { return kiln_f32_bits(0x7fc00000u); }
  return select(m, -m, fract(y * 0.5) != 0.0);
}
// tanh through exp overflows to NaN on some drivers for |x| > ~44; tanh(15) is 1 in f32
fn kiln_tanh(x: f32) -> f32 { return tanh(clamp(x, -15.0, 15.0)); }
fn kiln_softplus(x: f32) -> f32 { return select(log(1.0 + exp(x)), x, x > 20.0); }
// asin/acos through atan2: the drivers' own (lavapipe's) are off by up to 4e-4 relative
fn kiln_asin(x: f32) -> f32 { return atan2(x, sqrt((1.0 - x) * (1.0 + x))); }
fn kiln_acos(x: f32) -> f32 { return atan2(sqrt((1.0 - x) * (1.0 + x)), x); }
// WGSL has no expm1: exp(x) - 1 cancels near 0, where a short series is exact to f32
fn kiln_expm1(x: f32) -> f32 {
  return select(exp(x) - 1.0, x + x * x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0))), abs(x) < 1e-2);
}
// IEEE's a != b is true when either is NaN; lavapipe compiles WGSL's != as an ordered
// compare (false for NaN), so the NaN case is tested on the bits
fn kiln_ne(a: f32, b: f32) -> bool { return !(a == b) || kiln_isnan(a) || kiln_isnan(b); }
fn kiln_isnan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
// max/min keeping a NaN operand, as ONNX (numpy) does; WGSL leaves it to the implementation
fn kiln_maxf(a: f32, b: f32) -> f32 { return select(select(max(a, b), b, kiln_isnan(b)), a, kiln_isnan(a)); }
fn kiln_minf(a: f32, b: f32) -> f32 { return select(select(min(a, b), b, kiln_isnan(b)), a, kiln_isnan(a)); }
fn kiln_isinf(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u; }
// WGSL has no erf: 1 - erfc(x), with erfc from a Chebyshev fit (Numerical Recipes' erfcc,
// fractional error below 1.2e-7 everywhere).
fn kiln_erf(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}
"""
