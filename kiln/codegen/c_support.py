"""C support code: the prelude every generated C file starts with (vector width, libm SIMD
declarations, NaN-keeping OpenMP reductions, integer division helpers) and the helpers a
kernel's file carries only when it calls them (``HELPERS``, emitted by
``CRenderer.support_code``): the parallel loop, exp and tanh, min/max, the VNNI and AMX
intrinsics."""
from __future__ import annotations

from kiln.codegen.x86_amx import AMX_SUPPORT

# A kernel with float16 arithmetic: no fused multiply-adds. Where the CPU computes _Float16
# natively (x86 AVX512-FP16: Sapphire Rapids), the per-op casts cost nothing and gcc fused a
# product and a sum into one vfmadd...ph that rounds once, where numpy rounds the product
# first (24 of 148 lanes of mul-add-div-sqrt differed by an ulp).
EACH_OP_ROUNDED = ["#if defined(__GNUC__) && !defined(__clang__)",
                    '__attribute__((optimize("fp-contract=off")))',
                    "#endif"]

# x86 intrinsic declarations, for the tiles printed with them (kiln/codegen/x86*.py)
_X86_INTRINSICS = "#if defined(__x86_64__) || defined(__i386__)\n#include <immintrin.h>\n#endif\n"

# Helpers emitted (by ``support_code``) only when a kernel calls them. max/min return the
# first operand when it is NaN or wins, else the second: NaN propagates from either side.
# exp(x) = 2^n exp(r): n = round(x / ln 2) by adding a shift constant (1.5 * 2^23, whose
# float keeps n in its low bits), r = x - n ln 2 (ln 2 in two parts, Cody-Waite), exp(r) =
# 1 + r + r^2 q(r) with q of degree 4 fitted here for relative error (7e-9 in exact
# arithmetic on |r| <= ln 2 / 2; 0.85 ulp in float with fused multiply-adds, over
# x in [-87, 0], where Cephes' degree-7 polynomial that it replaced had 0.98 and two more
# operations). kiln_expf and kiln_expf_nonpos differ in how they find n and apply 2^n.
def _exp_core(shift: str) -> str:
    """Range reduction and polynomial; ``shift``: the constant added to x / ln 2 (its float
    is ``b``, n = b - shift)."""
    return (
        f"  b.f = x * 1.44269504088896341f + {shift};\n"
        f"  float fn = b.f - {shift};\n"
        "  float r = x - fn * 0.693359375f;\n"
        "  r = r + fn * 2.12194440e-4f;\n"
        "  float p = 1.35704863e-3f;\n"
        "  p = p * r + 8.37188400e-3f;\n"
        "  p = p * r + 4.16733883e-2f;\n"
        "  p = p * r + 1.66664883e-1f;\n"
        "  p = p * r + 4.99999702e-1f;\n"
        "  p = p * r + 1.0f;\n"
        "  p = p * r + 1.0f;\n"
    )


HELPERS = {
    # Parallel loops. Each OpenMP thread first runs its static share of the iterations, the
    # same share on every run and in every kernel (a tensor a thread wrote is still in its
    # cache when the next kernel reads it), claimed in 16 batches; a thread whose share is
    # done then takes the batches left in the others' shares. On a 2-vCPU machine whose
    # second core a neighbour slows, a kernel then ends when the work is done instead of when
    # the slow thread has done half of it (docs/benchmarks.md: int8 ResNet-18 and
    # MobileNetV2 faster than with OpenMP's static schedule in six of eight interleaved
    # rounds each, by 2 % at the median and by up to 38 % when the host was busy; OpenMP's
    # dynamic schedule was 8-10 % slower on a quiet host). Without OpenMP, a plain loop.
    "parallel_loop": (
        "#ifdef _OPENMP\n"
        "#include <omp.h>\n"
        "typedef struct { int64_t next, end, batch; } __attribute__((aligned(64))) kiln_share;\n"
        "static inline void kiln_split(kiln_share* s, int nt, int64_t n) {\n"
        "  for (int t = 0; t < nt; ++t) {\n"
        "    s[t].next = n * t / nt; s[t].end = n * (t + 1) / nt;\n"
        "    s[t].batch = (s[t].end - s[t].next + 15) / 16; if (s[t].batch < 1) s[t].batch = 1;\n"
        "  }\n"
        "}\n"
        "/* the next batch [lo, hi) for thread t: from its own share, else from another's */\n"
        "static inline int kiln_claim(kiln_share* s, int nt, int t, int64_t* lo, int64_t* hi) {\n"
        "  for (int k = 0; k < nt; ++k) {\n"
        "    kiln_share* q = &s[(t + k) % nt];\n"
        "    if (__atomic_load_n(&q->next, __ATOMIC_RELAXED) >= q->end) continue;\n"
        "    int64_t v = __atomic_fetch_add(&q->next, q->batch, __ATOMIC_RELAXED);\n"
        "    if (v < q->end) { *lo = v; *hi = v + q->batch < q->end ? v + q->batch : q->end; return 1; }\n"
        "  }\n"
        "  return 0;\n"
        "}\n"
        "#define KILN_PARALLEL_LOOP(v, n) \\\n"
        "  { const int kiln_nt_ = omp_get_max_threads(); kiln_share kiln_s_[kiln_nt_]; kiln_split(kiln_s_, kiln_nt_, (n)); \\\n"
        "    _Pragma(\"omp parallel\") { int64_t kiln_lo_, kiln_hi_; \\\n"
        "      while (kiln_claim(kiln_s_, kiln_nt_, omp_get_thread_num(), &kiln_lo_, &kiln_hi_)) \\\n"
        "        for (int64_t v = kiln_lo_; v < kiln_hi_; ++v)\n"
        "#define KILN_PARALLEL_LOOP_END }}\n"
        "#else\n"
        "#define KILN_PARALLEL_LOOP(v, n) for (int64_t v = 0; v < (n); ++v)\n"
        "#define KILN_PARALLEL_LOOP_END\n"
        "#endif\n"),
    # exp(x) (_exp_core), 2^n applied in two halves so results down to the smallest denormal
    # come out right; out-of-range inputs are selected at the end. A NaN needs no select of its
    # own: r and so p are NaN, and so is their product with any scale (7 % faster without
    # it, a 196K-element exp on one Zen 4 core: 76 -> 71 us). Only selects and
    # arithmetic: gcc vectorizes it wherever it is called (a clamp feeding a float-to-int
    # conversion instead kept gcc 12 from vectorizing the loop at all).
    "expf": "static inline float kiln_expf(float x) {\n"
            "  const float hi = 88.72283935546875f, lo = -103.972084045410156f;\n"
            "  union { float f; int32_t i; uint32_t u; } b, s1, s2;\n"
            + _exp_core("12582912.0f") +
            "  int32_t n = b.i - 0x4B400000;\n"
            "  int32_t n1 = n / 2;\n"
            "  s1.u = (uint32_t)(n1 + 127) << 23;\n"
            "  s2.u = (uint32_t)(n - n1 + 127) << 23;\n"
            "  float y = p * s1.f * s2.f;\n"
            "  y = x > hi ? INFINITY : y;\n"
            "  return x < lo ? 0.0f : y;\n"
            "}\n",
    # exp of x <= 0 (x - max(x)): kiln_expf's range reduction and polynomial with one
    # scale. The shift constant is 1.5 * 2^23 + 127, so the low bits of its float are n + 127
    # (1..127 for x <= 0) and shifting them into the exponent field is the scale 2^n: one
    # operation instead of three. x is clamped at -88, where n = -127 makes the scale's bits
    # 0: results below 2^-126 flush to 0, -inf gives 0 and a NaN stays NaN (NaN times any
    # scale). Softmax [12, 128, 128], interleaved A/B: 43.0 -> 38.7 us median.
    "expf_nonpos": "static inline float kiln_expf_nonpos(float x) {\n"
                   "  union { float f; int32_t i; uint32_t u; } b, s;\n"
                   "  x = x < -88.0f ? -88.0f : x;\n"
                   + _exp_core("12583039.0f") +
                   "  s.u = b.u << 23;\n"
                   "  return p * s.f;\n"
                   "}\n",
    # tanh: Cephes' odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above it.
    "tanhf": "static inline float kiln_tanhf(float x) {\n"
             "  float a = x < 0.0f ? -x : x;\n"
             "  float z = x * x;\n"
             "  float p = -5.70498872745e-3f;\n"
             "  p = p * z + 2.06390887954e-2f;\n"
             "  p = p * z - 5.37397155531e-2f;\n"
             "  p = p * z + 1.33314422036e-1f;\n"
             "  p = p * z - 3.33332819422e-1f;\n"
             "  float small = p * z * x + x;\n"
             "  float big = 1.0f - 2.0f / (kiln_expf(a + a) + 1.0f);\n"
             "  big = x < 0.0f ? -big : big;\n"
             "  return a < 0.625f ? small : big;\n"
             "}\n",
    # The VNNI register tile (kiln/codegen/x86.py): 4 bytes as one int32 from any address
    # (memcpy is the aliasing-safe spelling, one load after optimization), and vpdpbusd as
    # one instruction that updates its accumulator in place. Through the intrinsic gcc 12
    # copied every accumulator to a fresh register and back at each step and spilled two:
    # 84 extra moves per 16 vpdpbusd in a ResNet 3x3 conv, none with the asm.
    "amx": AMX_SUPPORT,
    "intrinsics": _X86_INTRINSICS,
    "vnni": _X86_INTRINSICS +
            "static inline int32_t kiln_load_u32(const void* p) { int32_t v; __builtin_memcpy(&v, p, 4); return v; }\n"
            "#define KILN_DPBUSD(acc, u8x4, s8x4) "
            "__asm__(\"vpdpbusd %2, %1, %0\" : \"+v\"(acc) : \"v\"(u8x4), \"v\"(s8x4))\n",
    "minmax_f": "static inline float kiln_maxf(float a, float b) { return (a > b || a != a) ? a : b; }\n"
                "static inline float kiln_minf(float a, float b) { return (a < b || a != a) ? a : b; }\n",
    "minmax_d": "static inline double kiln_max_d(double a, double b) { return (a > b || a != a) ? a : b; }\n"
                "static inline double kiln_min_d(double a, double b) { return (a < b || a != a) ? a : b; }\n",
}

# clamp of an int32 to the 8-bit range as one SSAT/USAT on Arm M-profile (ACLE __ssat/__usat):
# gcc finds USAT in min(max(x, 0), 255) but not SSAT in min(max(x + zp, -128), 127), which it
# spells as two compares and two conditional moves (a requantizing int8 epilogue: 7 more
# instructions per output on the Cortex-M4)
HELPERS["sat8"] = (
    "#if defined(__ARM_FEATURE_SAT) && __ARM_FEATURE_SAT\n#include <arm_acle.h>\n"
    "#define kiln_ssat8(x) __ssat((x), 8)\n#define kiln_usat8(x) ((int32_t)__usat((x), 8))\n#else\n"
    "static inline int32_t kiln_ssat8(int32_t x) { return x < -128 ? -128 : (x > 127 ? 127 : x); }\n"
    "static inline int32_t kiln_usat8(int32_t x) { return x < 0 ? 0 : (x > 255 ? 255 : x); }\n#endif\n")

for _ct in ("int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t"):
    HELPERS[f"minmax_{_ct}"] = (
        f"static inline {_ct} kiln_max_{_ct}({_ct} a, {_ct} b) {{ return a > b ? a : b; }}\n"
        f"static inline {_ct} kiln_min_{_ct}({_ct} a, {_ct} b) {{ return a < b ? a : b; }}\n")


C_PRELUDE = """\
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
/* Vectorize with the full 512-bit registers. gcc's tuning for Intel server cores
 * (-march=native on Sapphire Rapids, Ice Lake server) prefers 256-bit vectors, but Kiln sizes
 * its register tiles for 32 zmm registers: in ymm halves an 8 x 32 GEMM tile needs all 32
 * registers for its accumulators and spills (GEMM 1024^3 on one Sapphire Rapids core: 110
 * GFLOP/s with ymm, 172 with zmm, of a 228 peak). gcc's Zen 4 tuning already prefers 512. */
#pragma GCC target("prefer-vector-width=512")
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GLIBC__) && defined(__x86_64__) && defined(__OPTIMIZE__)
/* Let gcc vectorize loops that call float math: glibc's libmvec has SIMD versions of these
 * (AVX2 and AVX-512, within 4 ulp), linked through -lm. glibc's own headers declare them
 * only under -ffast-math, which Kiln does not use (it would change NaN and rounding rules). */
#define KILN_SIMD __attribute__((simd("notinbranch")))
KILN_SIMD float expf(float); KILN_SIMD float logf(float); KILN_SIMD float tanhf(float);
KILN_SIMD float erff(float); KILN_SIMD float sinf(float); KILN_SIMD float cosf(float);
KILN_SIMD float tanf(float); KILN_SIMD float asinf(float); KILN_SIMD float acosf(float);
KILN_SIMD float atanf(float); KILN_SIMD float sinhf(float); KILN_SIMD float coshf(float);
KILN_SIMD float asinhf(float); KILN_SIMD float acoshf(float); KILN_SIMD float atanhf(float);
KILN_SIMD float log1pf(float); KILN_SIMD float expm1f(float); KILN_SIMD float powf(float, float);
#endif

/* max/min reductions that keep NaN (the helpers are defined with the kernels that use them) */
#ifdef _OPENMP
#pragma omp declare reduction(kiln_rmaxf : float : omp_out = (omp_out > omp_in || omp_out != omp_out) ? omp_out : omp_in) initializer(omp_priv = -INFINITY)
#pragma omp declare reduction(kiln_rminf : float : omp_out = (omp_out < omp_in || omp_out != omp_out) ? omp_out : omp_in) initializer(omp_priv = INFINITY)
#pragma omp declare reduction(kiln_rmax_d : double : omp_out = (omp_out > omp_in || omp_out != omp_out) ? omp_out : omp_in) initializer(omp_priv = -INFINITY)
#pragma omp declare reduction(kiln_rmin_d : double : omp_out = (omp_out < omp_in || omp_out != omp_out) ? omp_out : omp_in) initializer(omp_priv = INFINITY)
#endif

static inline int64_t kiln_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline int64_t kiln_mod(int64_t a, int64_t b) {
  int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline int64_t kiln_div(int64_t a, int64_t b) { return a / b; }
static inline int64_t kiln_fmod(int64_t a, int64_t b) { return a % b; }
"""
