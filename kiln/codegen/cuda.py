"""CUDA renderer: launches planned by ``passes/gpu_schedule_cuda.py`` -> CUDA C++.

``CudaRenderer`` is the C renderer with CUDA's spellings in its tables (``__half``,
``__restrict__``, device helpers); the launch kinds (``flat``, ``rows``, ``gemm``) add the
thread and block binding, shared-memory staging with barriers, warp-shuffle reductions
and the tensor-core (WMMA) inner product. ``generate_cuda_model`` writes ``model.cu``
(every ``__global__`` kernel plus the host-side ``<prefix>_run`` that launches them in
order on one stream) and ``model.h`` from the jinja2 templates.
"""
from __future__ import annotations

from kiln.codegen.c import CRenderer
from kiln.codegen.templates import render
from kiln.errors import VerificationError
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Expr, Load, Un, Var
from kiln.ir.loop import Buffer, Store
from kiln.passes.gpu_schedule_cuda import Launch, Nest, extent_product, _is_identity

CUDA_PRELUDE = """\
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

__device__ __forceinline__ int64_t kiln_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int64_t kiln_mod(int64_t a, int64_t b) {
  int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ int64_t kiln_div(int64_t a, int64_t b) { return a / b; }
__device__ __forceinline__ int64_t kiln_fmod(int64_t a, int64_t b) { return a % b; }

/* Blocks for a grid-stride loop over n items: at least one, at most 2^20 (the loop covers the rest). */
static inline unsigned kiln_grid(int64_t n, int64_t per) {
  int64_t g = (n + per - 1) / per;
  return (unsigned)(g < 1 ? 1 : (g > 1048576 ? 1048576 : g));
}
"""


class CudaRenderer(CRenderer):
    """C's expression and statement printer with CUDA's types and qualifiers."""
    steal_parallel_loops = False  # a GPU kernel has no OpenMP loops

    type_map = {**CRenderer.type_map, DType.float16: "__half"}
    # kernels are plain device code: no OpenMP; loops the CPU schedule would vectorize are
    # spread over threads by the launch plan instead
    parallel_pragma = ""
    simd_pragma = ""
    own_fn = {}  # the device libm (libdevice) is vectorized already: call expf/tanhf directly

    def vtype(self, dtype: DType) -> str:
        # half values are computed in float, rounded to half after every op (as numpy,
        # ONNX's reference, does); only global memory holds __half
        return "float" if dtype is DType.float16 else super().vtype(dtype)

    def literal(self, c: Const) -> str:
        if c.dtype is DType.float16:
            return self.literal(Const(float(c.value), DType.float32))
        return super().literal(c)

    def expr(self, e: Expr) -> str:
        if isinstance(e, (Bin, Un)) and e.dtype is DType.float16:
            inner = self.binary(e) if isinstance(e, Bin) else self.unary(e)
            return f"__half2float(__float2half({inner}))"
        return super().expr(e)

    def load(self, e: Load) -> str:
        ref = super().load(e)
        b = self.buffers[e.buffer]
        return f"__half2float({ref})" if b.dtype is DType.float16 and b.scope != "local" else ref

    def cast(self, e) -> str:
        if e.dtype is DType.float16:
            return f"__half2float(__float2half((float)({self.expr(e.a)})))"
        return super().cast(e)

    def fn(self, name: str, dtype: DType) -> str:
        return super().fn(name, DType.float32 if dtype is DType.float16 else dtype)

    # CUDA's own bit reinterpretations (C++ has no compound literals)
    BITCASTS = {(DType.float32, DType.int32): "__float_as_int", (DType.int32, DType.float32): "__int_as_float",
                (DType.float32, DType.uint32): "__float_as_uint", (DType.uint32, DType.float32): "__uint_as_float",
                (DType.float64, DType.int64): "__double_as_longlong",
                (DType.int64, DType.float64): "__longlong_as_double"}

    def unary(self, e) -> str:
        if e.op == "bitcast":
            pair = (e.a.dtype, e.dtype)
            if pair in self.BITCASTS:
                return f"{self.BITCASTS[pair]}({self.expr(e.a)})"
            if pair == (DType.float64, DType.uint64):
                return f"(uint64_t)__double_as_longlong({self.expr(e.a)})"
            if pair == (DType.uint64, DType.float64):
                return f"__longlong_as_double((long long){self.expr(e.a)})"
            raise VerificationError(f"the CUDA renderer has no bit reinterpretation from {pair[0]} to {pair[1]}")
        return super().unary(e)

    def stmt(self, s, depth: int, in_parallel: bool = False):
        b = self.buffers.get(s.buffer) if isinstance(s, Store) else None
        if b is not None and b.dtype is DType.float16 and b.scope != "local":
            self.emit(f"{s.buffer}{self.subscript(s.buffer, s.indices)} = __float2half({self.expr(s.value)});", depth)
            return
        super().stmt(s, depth, in_parallel)

    def support_code(self) -> str:
        code = super().support_code()
        return (code.replace("static inline", "__device__ __forceinline__")
                .replace("static const", "static __device__ const"))

    # -- helpers for launch bodies ---------------------------------------------------------
    def value(self, e: Expr) -> str:
        return self.expr(e)

    def decompose(self, loops, flat: str, depth: int):
        """Declare each loop variable from a row-major flat index."""
        stride = None
        for var, extent in reversed(loops):
            quotient = flat if stride is None else f"({flat}) / ({stride})"
            if _is_one(extent):
                self.emit(f"const int64_t {var.name} = 0;", depth)
            elif stride is None and len(loops) == 1:
                self.emit(f"const int64_t {var.name} = {flat};", depth)
            else:
                self.emit(f"const int64_t {var.name} = ({quotient}) % ({self.dim(extent)});", depth)
            stride = self.dim(extent) if stride is None else f"{stride} * ({self.dim(extent)})"

    def count(self, loops) -> str:
        return self.dim(extent_product(loops)) if loops else "1"

    def declare_acc(self, r, depth: int, value: str):
        self.buffers[r.acc] = Buffer(r.acc, (), r.dtype, "local")
        self.emit(f"{self.vtype(r.dtype)} {r.acc} = {value};", depth)

    def accumulate(self, r, depth: int):
        self.stmt(Store(r.acc, (), Bin(r.op, Load(r.acc, (), r.dtype), r.value, r.dtype)), depth)

    # -- the launch kinds ----------------------------------------------------------------
    def render_launch(self, launch: Launch, params, inputs: set[str], symbols) -> str:
        self.lines = []
        self.buffers = {b.name: b for b in params}
        sig = ", ".join([f"{'const ' if b.name in inputs else ''}{self.ctype(b.dtype)}* __restrict__ {b.name}"
                         for b in params] + [f"int64_t {s}" for s in symbols])
        self.emit(f"__global__ void __launch_bounds__({launch.block}) {launch.name}({sig}) {{", 0)
        getattr(self, f"_{launch.kind}")(launch)
        self.emit("}", 0)
        return "\n".join(self.lines)

    def _flat(self, launch: Launch):
        nest = launch.nests[0]
        self.emit(f"const int64_t n_ = {self.count(nest.spatial)};", 1)
        self.emit("for (int64_t t_ = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t_ < n_; "
                  "t_ += (int64_t)gridDim.x * blockDim.x) {", 1)
        self.decompose(nest.spatial, "t_", 2)
        self.stmt(nest.body, 2)
        self.emit("}", 1)

    def _rows(self, launch: Launch):
        p = launch.prefix
        first = launch.nests[0]
        self.emit(f"const int64_t rows_ = {self.count(first.spatial[:p])};", 1)
        self.emit("for (int64_t row_ = blockIdx.x; row_ < rows_; row_ += gridDim.x) {", 1)
        for k, nest in enumerate(launch.nests):
            self.emit("{", 2)
            self.decompose(nest.spatial[:p], "row_", 3)
            rest = nest.spatial[p:]
            r = nest.reduction
            if r is not None and all(_is_one(e) for _, e in rest) and _is_identity(r):
                self._block_reduce(nest, rest, k, 3)
            else:
                self.emit(f"for (int64_t t_ = threadIdx.x; t_ < {self.count(rest)}; t_ += blockDim.x) {{", 3)
                self.decompose(rest, "t_", 4)
                self.stmt(nest.body, 4)
                self.emit("}", 3)
            self.emit("}", 2)
            self.emit("__syncthreads();  /* the row's results are visible to the next nest */", 2)
        self.emit("}", 1)

    def _block_reduce(self, nest: Nest, rest, k: int, d: int):
        """Threads stride over the reduction; warps combine by shuffles, then across warps
        through shared memory; every thread ends with the total."""
        r = nest.reduction
        t = self.vtype(r.dtype)
        for var, _ in rest:   # every remaining spatial loop has extent 1
            self.emit(f"const int64_t {var.name} = 0;", d)
        self.declare_acc(r, d, self.expr(r.init))
        self.emit(f"for (int64_t r_ = threadIdx.x; r_ < {self.count(r.loops)}; r_ += blockDim.x) {{", d)
        self.decompose(r.loops, "r_", d + 1)
        self.accumulate(r, d + 1)
        self.emit("}", d)
        other = Var("other_", r.dtype)
        combine = self.expr(Bin(r.op, Load(r.acc, (), r.dtype), other, r.dtype))
        self.emit(f"__shared__ {t} red{k}_[32];", d)
        self.emit("for (int o_ = 16; o_ > 0; o_ >>= 1) {", d)
        self.emit(f"const {t} other_ = __shfl_xor_sync(0xffffffffu, {r.acc}, o_);", d + 1)
        self.emit(f"{r.acc} = {combine};", d + 1)
        self.emit("}", d)
        self.emit(f"if ((threadIdx.x & 31) == 0) red{k}_[threadIdx.x >> 5] = {r.acc};", d)
        self.emit("__syncthreads();", d)
        self.emit(f"{r.acc} = red{k}_[0];", d)
        self.emit("for (unsigned w_ = 1; w_ < (blockDim.x >> 5); ++w_) {", d)
        self.emit(f"const {t} other_ = red{k}_[w_];", d + 1)
        self.emit(f"{r.acc} = {combine};", d + 1)
        self.emit("}", d)
        self.emit("if (threadIdx.x == 0) {", d)
        self.stmt(r.epilogue, d + 1)
        self.emit("}", d)

    def _gemm_common(self, launch: Launch, d: int):
        nest, g = launch.nests[0], launch.gemm
        rv, m_ext = nest.spatial[g.row]
        cv, n_ext = nest.spatial[g.col]
        batch = [x for i, x in enumerate(nest.spatial) if i not in (g.row, g.col)]
        r = nest.reduction
        self.emit(f"const int64_t M_ = {self.dim(m_ext)}, N_ = {self.dim(n_ext)}, "
                  f"K_ = {self.count(r.loops)};", d)
        self.emit(f"for (int64_t z_ = blockIdx.z; z_ < {self.count(batch)}; z_ += gridDim.z) {{", d)
        self.decompose(batch, "z_", d + 1)
        self.emit(f"const int64_t m0_ = (int64_t)blockIdx.y * {g.tile.bm}, n0_ = (int64_t)blockIdx.x * {g.tile.bn};", d + 1)
        return nest, g, rv, cv, r

    def _stage_tile(self, dst: str, factor: Expr, outer_var: Var, outer_base: str, outer_n: int,
                    k_first: bool, g, r, d: int, convert: str):
        """Copy one operand tile into shared memory, zero outside the matrix."""
        t = g.tile
        total = t.bk * outer_n
        self.emit(f"for (int e_ = threadIdx.x; e_ < {total}; e_ += {t.threads}) {{", d)
        if k_first:   # B: k rows, contiguous columns
            self.emit(f"const int kk_ = e_ / {outer_n}, oo_ = e_ % {outer_n};", d + 1)
        else:         # A: contiguous k within each row
            self.emit(f"const int oo_ = e_ / {t.bk}, kk_ = e_ % {t.bk};", d + 1)
        self.emit(f"const int64_t {outer_var.name} = {outer_base} + oo_;", d + 1)
        self.emit("const int64_t kf_ = k0_ + kk_;", d + 1)
        self.emit("float v_ = 0.0f;", d + 1)
        bound = "M_" if not k_first else "N_"
        self.emit(f"if ({outer_var.name} < {bound} && kf_ < K_) {{", d + 1)
        self.decompose(r.loops, "kf_", d + 2)
        self.emit(f"v_ = (float)({self.value(factor)});", d + 2)
        self.emit("}", d + 1)
        self.emit(f"{dst} = {convert.format('v_')};", d + 1)
        self.emit("}", d)

    def _epilogue(self, r, rv, cv, acc_value: str, d: int):
        self.emit(f"if ({rv.name} < M_ && {cv.name} < N_) {{", d)
        self.declare_acc(r, d + 1, f"({self.vtype(r.dtype)})({acc_value})")
        self.stmt(r.epilogue, d + 1)
        self.emit("}", d)

    def _gemm(self, launch: Launch):
        if launch.gemm.tile.tensorize:
            return self._gemm_wmma(launch)
        t = launch.gemm.tile
        tm, tn = t.bm // 4, t.bn // 4   # threads along rows and columns; 4 x 4 outputs each
        self.emit(f"__shared__ float As_[{t.bk}][{t.bm}];", 1)
        self.emit(f"__shared__ float Bs_[{t.bk}][{t.bn}];", 1)
        nest, g, rv, cv, r = self._gemm_common(launch, 1)
        d = 2
        self.emit(f"const int tx_ = threadIdx.x % {tn}, ty_ = threadIdx.x / {tn};", d)
        self.emit("float c_[4][4] = {{0.0f}};", d)
        self.emit(f"for (int64_t k0_ = 0; k0_ < K_; k0_ += {t.bk}) {{", d)
        self._stage_tile("As_[kk_][oo_]", g.a, rv, "m0_", t.bm, False, g, r, d + 1, "{}")
        self._stage_tile("Bs_[kk_][oo_]", g.b, cv, "n0_", t.bn, True, g, r, d + 1, "{}")
        self.emit("__syncthreads();", d + 1)
        self.emit("#pragma unroll", d + 1)
        self.emit(f"for (int kk_ = 0; kk_ < {t.bk}; ++kk_) {{", d + 1)
        self.emit("float a_[4], b_[4];", d + 2)
        self.emit("#pragma unroll", d + 2)
        self.emit(f"for (int i_ = 0; i_ < 4; ++i_) {{ a_[i_] = As_[kk_][ty_ + {tm} * i_]; "
                  f"b_[i_] = Bs_[kk_][tx_ + {tn} * i_]; }}", d + 2)
        self.emit("#pragma unroll", d + 2)
        self.emit("for (int i_ = 0; i_ < 4; ++i_)", d + 2)
        self.emit("#pragma unroll", d + 3)
        self.emit("for (int j_ = 0; j_ < 4; ++j_) c_[i_][j_] = fmaf(a_[i_], b_[j_], c_[i_][j_]);", d + 3)
        self.emit("}", d + 1)
        self.emit("__syncthreads();  /* the tiles are reloaded next step */", d + 1)
        self.emit("}", d)
        self.emit("for (int i_ = 0; i_ < 4; ++i_) {", d)
        self.emit("for (int j_ = 0; j_ < 4; ++j_) {", d + 1)
        self.emit(f"const int64_t {rv.name} = m0_ + ty_ + {tm} * i_;", d + 2)
        self.emit(f"const int64_t {cv.name} = n0_ + tx_ + {tn} * j_;", d + 2)
        self._epilogue(r, rv, cv, "c_[i_][j_]", d + 2)
        self.emit("}", d + 1)
        self.emit("}", d)
        self.emit("}", 1)

    def _gemm_wmma(self, launch: Launch):
        """Tensorized: 4 warps, each a 32 x 32 quarter of the 64 x 64 tile as 2 x 2 WMMA
        16x16x16 fragments, fp32 accumulators; the epilogue reads them back through shared memory."""
        t = launch.gemm.tile
        elem = "__half" if _factor_dtype(launch.gemm.a) is DType.float16 else "__nv_bfloat16"
        conv = "__float2half({})" if elem == "__half" else "__float2bfloat16({})"
        pa, pb, pc = t.bk + 8, t.bn + 8, t.bn + 4   # padded rows: fewer bank conflicts, 32-byte aligned
        self.emit(f"__shared__ __align__(32) {elem} As_[{t.bm}][{pa}];", 1)
        self.emit(f"__shared__ __align__(32) {elem} Bs_[{t.bk}][{pb}];", 1)
        self.emit(f"__shared__ __align__(32) float Cs_[{t.bm}][{pc}];", 1)
        self.emit("namespace wmma = nvcuda::wmma;", 1)
        nest, g, rv, cv, r = self._gemm_common(launch, 1)
        d = 2
        self.emit("const int warp_ = threadIdx.x >> 5, wm_ = warp_ >> 1, wn_ = warp_ & 1;", d)
        self.emit("wmma::fragment<wmma::accumulator, 16, 16, 16, float> c_[2][2];", d)
        self.emit("for (int i_ = 0; i_ < 2; ++i_) for (int j_ = 0; j_ < 2; ++j_) wmma::fill_fragment(c_[i_][j_], 0.0f);", d)
        self.emit(f"for (int64_t k0_ = 0; k0_ < K_; k0_ += {t.bk}) {{", d)
        self._stage_tile("As_[oo_][kk_]", g.a, rv, "m0_", t.bm, False, g, r, d + 1, conv)
        self._stage_tile("Bs_[kk_][oo_]", g.b, cv, "n0_", t.bn, True, g, r, d + 1, conv)
        self.emit("__syncthreads();", d + 1)
        self.emit(f"for (int kk_ = 0; kk_ < {t.bk}; kk_ += 16) {{", d + 1)
        self.emit(f"wmma::fragment<wmma::matrix_a, 16, 16, 16, {elem}, wmma::row_major> a_[2];", d + 2)
        self.emit(f"wmma::fragment<wmma::matrix_b, 16, 16, 16, {elem}, wmma::row_major> b_[2];", d + 2)
        self.emit("for (int i_ = 0; i_ < 2; ++i_) {", d + 2)
        self.emit(f"wmma::load_matrix_sync(a_[i_], &As_[wm_ * 32 + i_ * 16][kk_], {pa});", d + 3)
        self.emit(f"wmma::load_matrix_sync(b_[i_], &Bs_[kk_][wn_ * 32 + i_ * 16], {pb});", d + 3)
        self.emit("}", d + 2)
        self.emit("for (int i_ = 0; i_ < 2; ++i_) for (int j_ = 0; j_ < 2; ++j_) "
                  "wmma::mma_sync(c_[i_][j_], a_[i_], b_[j_], c_[i_][j_]);", d + 2)
        self.emit("}", d + 1)
        self.emit("__syncthreads();", d + 1)
        self.emit("}", d)
        self.emit("for (int i_ = 0; i_ < 2; ++i_) for (int j_ = 0; j_ < 2; ++j_)", d)
        self.emit(f"wmma::store_matrix_sync(&Cs_[wm_ * 32 + i_ * 16][wn_ * 32 + j_ * 16], c_[i_][j_], {pc}, "
                  "wmma::mem_row_major);", d + 1)
        self.emit("__syncthreads();", d)
        self.emit(f"for (int e_ = threadIdx.x; e_ < {t.bm * t.bn}; e_ += {t.threads}) {{", d)
        self.emit(f"const int64_t {rv.name} = m0_ + e_ / {t.bn};", d + 1)
        self.emit(f"const int64_t {cv.name} = n0_ + e_ % {t.bn};", d + 1)
        self._epilogue(r, rv, cv, f"Cs_[e_ / {t.bn}][e_ % {t.bn}]", d + 1)
        self.emit("}", d)
        self.emit("__syncthreads();  /* Cs_ is rewritten by the next batch entry */", d)
        self.emit("}", 1)

    # -- host side ----------------------------------------------------------------------------
    def grid(self, launch: Launch) -> str:
        nest = launch.nests[0]
        if launch.kind == "flat":
            return f"dim3(kiln_grid({self.count(nest.spatial)}, {launch.block}))"
        if launch.kind == "rows":
            return f"dim3(kiln_grid({self.count(nest.spatial[:launch.prefix])}, 1))"
        g = launch.gemm
        batch = [x for i, x in enumerate(nest.spatial) if i not in (g.row, g.col)]
        m, n = self.dim(nest.spatial[g.row][1]), self.dim(nest.spatial[g.col][1])
        z = self.count(batch)
        return (f"dim3(kiln_grid({n}, {g.tile.bn}), kiln_grid({m}, {g.tile.bm}), "
                f"(unsigned)(({z}) < 65535 ? ({z}) : 65535))")


def _factor_dtype(e: Expr) -> DType:
    from kiln.passes.gpu_schedule_cuda import _strip_cast

    return _strip_cast(e).dtype


def _is_one(extent) -> bool:
    return isinstance(extent, int) and extent == 1


def _pointer(storage, ctype: str, const: bool) -> str:
    from kiln.codegen.model import _pointer as c_pointer

    return c_pointer(storage, ctype, const)


def generate_cuda_model(graph, kernels, plan, target: str, prefix: str, tiles=None):
    """``model.cu`` and ``model.h`` for the CUDA target; ``tiles``: kernel name -> {nest: GemmTile}."""
    from kiln import __version__
    from kiln.codegen.model import _describe, model_symbols
    from kiln.passes.gpu_schedule_cuda import plan_kernel
    from kiln.targets.base import ModelSource

    renderer = CudaRenderer()
    symbols = model_symbols(graph)
    rendered, calls = [], []
    for k in kernels:
        func = k.unscheduled if k.unscheduled is not None else k.func
        inputs = {b.name for b in func.params[: len(k.inputs)]}
        launches = plan_kernel(k.name, func, k.stages, (tiles or {}).get(k.name))
        args = [_pointer(plan.storage[name], renderer.ctype(b.dtype), b.name in inputs)
                for b, name in zip(func.params, k.params)] + list(k.symbols)
        for launch in launches:
            source = renderer.render_launch(launch, func.params, inputs, k.symbols)
            rendered.append({"source": source, "comment": f"{_describe(k, graph)} [{launch.kind}]"})
            calls.append({"name": launch.name, "grid": renderer.grid(launch), "block": launch.block,
                          "args": ", ".join(args)})
    if any(c["name"] == "" for c in calls):
        raise VerificationError("a CUDA launch without a name")

    def io(values):
        return [{"name": v.name, "ctype": renderer.ctype(v.dtype), "shape": [str(d) for d in v.shape]}
                for v in values]

    bounds = [{"name": n, "lo": graph.dim_bounds[n][0], "hi": graph.dim_bounds[n][1]} for n in symbols]
    common = dict(version=__version__, target=target, model_name=graph.name, prefix=prefix, symbols=bounds,
                  arena_size=plan.arena_size, weights_size=len(plan.weights),
                  inputs=io(graph.inputs), outputs=io(graph.outputs))
    model_cu = render("cuda/model.cu.j2", prelude=CUDA_PRELUDE + renderer.support_code(), kernels=rendered,
                      calls=calls, **common)
    model_h = render("cuda/model.h.j2", guard=prefix.upper() + "_H", **common)
    return ModelSource({"model.cu": model_cu, "model.h": model_h}, "model.cu", prefix)


__all__ = ["CUDA_PRELUDE", "CudaRenderer", "generate_cuda_model"]
