/* kiln_dsp.h -- 8-bit dot products for Cortex-M, written for Kiln (CMSIS-style names).
 *
 * kiln_dot_<a><b>(a, b, n) = sum_i a[i] * b[i] in int32, for u8/s8 operands, and x8: uint8
 *   storage read as int8 (a[i] - 128), which Kiln uses on Helium (its offset_at_read).
 * kiln_dot1x4_<a><b>(a, b, ldb, n, acc): acc[c] += sum_i a[i] * b[c * ldb + i] for c < 4: one
 *   activation run against four weight rows (four output channels), so each activation word
 *   is loaded and widened once for four dot products instead of once per dot product.
 * kiln_dot1x2_<a><b>(a, b, ldb, n, acc): the same for two output channels.
 * kiln_dot2x2_<a><b>(a, lda, b, ldb, n, acc): acc[2 r + c] += sum_i a[r * lda + i] *
 *   b[c * ldb + i] for r, c < 2: two pixels by two output channels (the M4/M7's tile where
 *   pixels pair up), each widened word used twice.
 * kiln_lane_mac4_<a><b>(a, b, acc): acc[c] += a[c] * b[c] for c < 4, lane by lane: four
 *   channels of a depthwise convolution at one tap (channels-last activations, taps-major
 *   weights), one word of each instead of four byte loads (M4/M7: SMLABB/SMLATT on the
 *   widened halves; M55: four int32 lanes).
 *  - Cortex-M4/M7 (__ARM_FEATURE_DSP): four bytes per load, widened to two pairs of
 *    16-bit lanes with __SXTB16/__UXTB16 (the odd bytes through a rotate by 8) and summed
 *    with __SMLAD, two multiply-accumulates per instruction. Lane pairing is the same on
 *    both operands, so the sum is exact.
 *  - Cortex-M55 (__ARM_FEATURE_MVE, -mcpu=cortex-m55): Helium VMLADAVA (multiply, add
 *    across lanes, accumulate): sixteen int8 x int8 lanes per step, or eight bytes widened
 *    to int16 lanes when an operand is uint8; a 4-byte run in four int32 lanes.
 *  - anything else: plain C.
 * kiln_requant4_<o>(acc, mult, shift, zp, lo, hi, out): out[c] = clamp(round(acc[c] * mult[c] /
 *   2^shift[c]) + zp, lo, hi) for c < 4, every shift 33 or more: Kiln's high-word
 *   requantization (kiln/ir/ops/qlinear.py requant_high_word), the same integers. Helium:
 *   VMULH (the product's high word), VRSHL by 32 - shift (a rounding right shift, half up),
 *   VADD, VMAX/VMIN, a narrowing byte store; elsewhere the scalar expression.
 * kiln_lane_add_<a>(a, acc, n): acc[c] += a[c] for c < n, n a multiple of 4 (a pooling sum):
 *   Helium widens four bytes per load into four int32 lanes.
 * Only integer instructions: no floating point on the int8 path. */
#ifndef KILN_DSP_H
#define KILN_DSP_H
#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h>
#define KILN_DOT_IMPL "helium"
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define KILN_DOT_IMPL "dsp"
#define __SXTB16(x) __sxtb16(x)
#define __UXTB16(x) __uxtb16(x)
#define __SMLAD(x, y, acc) __smlad((x), (y), (acc))
/* Widen bytes 1 and 3: SXTB16/UXTB16 with their built-in ROR #8, one instruction. ACLE has
 * no rotating form and gcc emits a separate ROR for the C rotate (five extra instructions
 * in every step of the four-channel dot product). */
static inline uint32_t __SXTB16_ROR8(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}
static inline uint32_t __UXTB16_ROR8(uint32_t x) {
  uint32_t r;
  __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}
static inline uint32_t kiln_read_u32(const void* p) {  /* unaligned load; one LDR on M4/M7 */
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
#else
#define KILN_DOT_IMPL "c"
#endif

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
/* Operand kinds K: U8, S8, and X8 (uint8 storage read as int8, x - 128: Kiln's
 * offset_at_read). Per kind: KILN_LD16_K sixteen int8 lanes (S8 as is, X8 flipped by one
 * VEOR with 0x80), KILN_LD_K eight int16 lanes (u8 fits one as is, 0..255: load widening to
 * u16 and reinterpret), KILN_LD4_K four int32 lanes (a run of 4 left over, e.g. a 4-wide
 * kernel row over one channel), KILN_X1_K one element, and KILN_WIDE_K(code): the
 * sixteen-lane step, for kinds that fit an int8 lane (VMLADAVA.S8, no widening; the other
 * operand is then S8). */
#define KILN_LD16_S8(p) vldrbq_s8(p)
#define KILN_LD16_X8(p) vreinterpretq_s8_u8(veorq_u8(vldrbq_u8(p), vdupq_n_u8(0x80)))
#define KILN_LD_U8(p) vreinterpretq_s16_u16(vldrbq_u16(p))
#define KILN_LD_S8(p) vldrbq_s16(p)
#define KILN_LD_X8(p) vsubq_s16(KILN_LD_U8(p), vdupq_n_s16(128))
#define KILN_LD4_U8(p) vreinterpretq_s32_u32(vldrbq_u32(p))
#define KILN_LD4_S8(p) vldrbq_s32(p)
#define KILN_LD4_X8(p) vsubq_s32(KILN_LD4_U8(p), vdupq_n_s32(128))
#define KILN_X1_U8(v) ((int32_t)(v))
#define KILN_X1_S8(v) ((int32_t)(v))
#define KILN_X1_X8(v) ((int32_t)(v) - 128)
#define KILN_WIDE_U8(...)
#define KILN_WIDE_S8(...) __VA_ARGS__
#define KILN_WIDE_X8(...) __VA_ARGS__
#define KILN_DOT_MVE(name, ta, tb, KA, KB)                                                    \
  static inline int32_t name(const ta* a, const tb* b, int32_t n) {                          \
    int32_t acc = 0, i = 0;                                                                  \
    KILN_WIDE_##KA(for (; i + 16 <= n; i += 16)                                              \
                     acc = vmladavaq_s8(acc, KILN_LD16_##KA(a + i), KILN_LD16_##KB(b + i));)  \
    for (; i + 8 <= n; i += 8) acc = vmladavaq_s16(acc, KILN_LD_##KA(a + i), KILN_LD_##KB(b + i)); \
    if (i + 4 <= n) { acc = vmladavaq_s32(acc, KILN_LD4_##KA(a + i), KILN_LD4_##KB(b + i)); i += 4; } \
    for (; i < n; ++i) acc += KILN_X1_##KA(a[i]) * KILN_X1_##KB(b[i]);                       \
    return acc;                                                                              \
  }
KILN_DOT_MVE(kiln_dot_u8s8, uint8_t, int8_t, U8, S8)
KILN_DOT_MVE(kiln_dot_s8s8, int8_t, int8_t, S8, S8)
KILN_DOT_MVE(kiln_dot_x8s8, uint8_t, int8_t, X8, S8)
KILN_DOT_MVE(kiln_dot_u8u8, uint8_t, uint8_t, U8, U8)
/* Sixteen bytes of one activation run against four weight rows. Over long runs each row
 * has a pointer of its own, advanced by the load (VLDRB's offsets reach +-127 bytes: rows
 * 128 bytes apart took an add per row and step; gcc merges the four pointers into one
 * unless told they differ); short runs (K = 16, 32) keep one pointer and fewer registers. */
#define KILN_ROW_POINTERS 48
#define KILN_STEP1X4_MVE(KA, pa, p0, p1, p2, p3)                                              \
  do {                                                                                       \
    int8x16_t va = KILN_LD16_##KA(pa);                                                       \
    s0 = vmladavaq_s8(s0, va, vldrbq_s8(p0));                                                \
    s1 = vmladavaq_s8(s1, va, vldrbq_s8(p1));                                                \
    s2 = vmladavaq_s8(s2, va, vldrbq_s8(p2));                                                \
    s3 = vmladavaq_s8(s3, va, vldrbq_s8(p3));                                                \
  } while (0)
#define KILN_DOT1X4_MVE(name, ta, tb, KA)                                                     \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    int32_t s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3], i = 0;                       \
    KILN_WIDE_##KA(if (n >= KILN_ROW_POINTERS) {                                             \
      const int8_t *b0 = b, *b1 = b + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;                   \
      for (; i + 16 <= n; i += 16, b0 += 16, b1 += 16, b2 += 16, b3 += 16) {                 \
        __asm__("" : "+r"(b0), "+r"(b1), "+r"(b2), "+r"(b3));  /* four pointers, not one */  \
        KILN_STEP1X4_MVE(KA, a + i, b0, b1, b2, b3);                                         \
      }                                                                                      \
    } else {                                                                                 \
      for (; i + 16 <= n; i += 16)                                                           \
        KILN_STEP1X4_MVE(KA, a + i, b + i, b + ldb + i, b + 2 * ldb + i, b + 3 * ldb + i);   \
    })                                                                                       \
    for (; i + 8 <= n; i += 8) {                                                             \
      int16x8_t va = KILN_LD_##KA(a + i);                                                    \
      s0 = vmladavaq_s16(s0, va, KILN_LD_S8(b + i));                                         \
      s1 = vmladavaq_s16(s1, va, KILN_LD_S8(b + ldb + i));                                   \
      s2 = vmladavaq_s16(s2, va, KILN_LD_S8(b + 2 * ldb + i));                               \
      s3 = vmladavaq_s16(s3, va, KILN_LD_S8(b + 3 * ldb + i));                               \
    }                                                                                        \
    if (i + 4 <= n) {                                                                        \
      int32x4_t va = KILN_LD4_##KA(a + i);                                                   \
      s0 = vmladavaq_s32(s0, va, KILN_LD4_S8(b + i));                                        \
      s1 = vmladavaq_s32(s1, va, KILN_LD4_S8(b + ldb + i));                                  \
      s2 = vmladavaq_s32(s2, va, KILN_LD4_S8(b + 2 * ldb + i));                              \
      s3 = vmladavaq_s32(s3, va, KILN_LD4_S8(b + 3 * ldb + i));                              \
      i += 4;                                                                                \
    }                                                                                        \
    for (; i < n; ++i) {                                                                     \
      int32_t x = KILN_X1_##KA(a[i]);                                                        \
      s0 += x * b[i]; s1 += x * b[ldb + i]; s2 += x * b[2 * ldb + i]; s3 += x * b[3 * ldb + i]; \
    }                                                                                        \
    acc[0] = s0; acc[1] = s1; acc[2] = s2; acc[3] = s3;                                      \
  }
KILN_DOT1X4_MVE(kiln_dot1x4_u8s8, uint8_t, int8_t, U8)
KILN_DOT1X4_MVE(kiln_dot1x4_s8s8, int8_t, int8_t, S8)
KILN_DOT1X4_MVE(kiln_dot1x4_x8s8, uint8_t, int8_t, X8)
/* The accumulators of a register tile (a local int32 array) read and written as one vector
 * lvalue, not through vld1q/vst1q: gcc 12 keeps such an array in a Q register across the taps,
 * where the intrinsics' memory round trip per tap kept it on the stack. */
typedef int32x4_t kiln_acc4 __attribute__((may_alias, aligned(4)));
#define KILN_LANE_MAC4_MVE(name, ta, tb, KA, KB)                                              \
  static inline void name(const ta* a, const tb* b, int32_t* acc) {                          \
    *(kiln_acc4*)acc = vaddq_s32(*(kiln_acc4*)acc, vmulq_s32(KILN_LD4_##KA(a), KILN_LD4_##KB(b))); \
  }
KILN_LANE_MAC4_MVE(kiln_lane_mac4_u8s8, uint8_t, int8_t, U8, S8)
KILN_LANE_MAC4_MVE(kiln_lane_mac4_s8s8, int8_t, int8_t, S8, S8)
/* |high word| <= 2^30 and the rounding term <= 2^29 (shift <= 62): VRSHL cannot overflow. */
#define KILN_REQUANT4_MVE(name, to)                                                           \
  static inline void name(const int32_t* acc, const int32_t* mult, const int32_t* shift,     \
                          int32_t zp, int32_t lo, int32_t hi, to* out) {                     \
    int32x4_t h = vmulhq_s32(*(const kiln_acc4*)acc, vld1q_s32(mult));                        \
    int32x4_t v = vrshlq_s32(h, vsubq_s32(vdupq_n_s32(32), vld1q_s32(shift)));               \
    v = vminq_s32(vmaxq_s32(vaddq_n_s32(v, zp), vdupq_n_s32(lo)), vdupq_n_s32(hi));          \
    vstrbq_s32((int8_t*)out, v);                                                             \
  }
KILN_REQUANT4_MVE(kiln_requant4_s8, int8_t)
KILN_REQUANT4_MVE(kiln_requant4_u8, uint8_t)
#define KILN_LANE_ADD_MVE(name, ta, KA)                                                       \
  static inline void name(const ta* a, int32_t* acc, int32_t n) {                            \
    for (int32_t i = 0; i < n; i += 4)                                                       \
      *(kiln_acc4*)(acc + i) = vaddq_s32(*(kiln_acc4*)(acc + i), KILN_LD4_##KA(a + i)); \
  }
KILN_LANE_ADD_MVE(kiln_lane_add_s8, int8_t, S8)
KILN_LANE_ADD_MVE(kiln_lane_add_u8, uint8_t, U8)
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define KILN_DOT_DSP(name, ta, tb, XA, XB)                                                    \
  static inline int32_t name(const ta* a, const tb* b, int32_t n) {                          \
    int32_t acc = 0, i = 0;                                                                  \
    for (; i + 4 <= n; i += 4) {                                                             \
      uint32_t va = kiln_read_u32(a + i), vb = kiln_read_u32(b + i);                          \
      acc = __SMLAD(XA(va), XB(vb), acc);                 /* bytes 0 and 2 */                \
      acc = __SMLAD(XA##_ROR8(va), XB##_ROR8(vb), acc); /* bytes 1 and 3 */                  \
    }                                                                                        \
    for (; i < n; ++i) acc += (int32_t)a[i] * (int32_t)b[i];                                 \
    return acc;                                                                              \
  }
KILN_DOT_DSP(kiln_dot_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_DOT_DSP(kiln_dot_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
KILN_DOT_DSP(kiln_dot_u8u8, uint8_t, uint8_t, __UXTB16, __UXTB16)
/* One weight word against the widened activation pairs: two SMLADs into one sum. */
#define KILN_MAC4_DSP(sum, w, XB, ae, ao)                                                     \
  do { uint32_t w_ = (w); sum = __SMLAD(ae, XB(w_), sum); sum = __SMLAD(ao, XB##_ROR8(w_), sum); } while (0)
#define KILN_DOT1X4_DSP(name, ta, tb, XA, XB)                                                 \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    int32_t s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3];                              \
    const ta* end = a + (n & ~3);                                                            \
    for (; a != end; a += 4, b += 4) {                                                       \
      uint32_t va = kiln_read_u32(a);                                                        \
      uint32_t ae = XA(va), ao = XA##_ROR8(va);          /* bytes 0, 2 and 1, 3 */           \
      KILN_MAC4_DSP(s0, kiln_read_u32(b), XB, ae, ao);                                       \
      KILN_MAC4_DSP(s1, kiln_read_u32(b + ldb), XB, ae, ao);                                 \
      KILN_MAC4_DSP(s2, kiln_read_u32(b + 2 * ldb), XB, ae, ao);                             \
      KILN_MAC4_DSP(s3, kiln_read_u32(b + 3 * ldb), XB, ae, ao);                             \
    }                                                                                        \
    for (int32_t i = 0; i < (n & 3); ++i) {                                                  \
      int32_t x = a[i];                                                                      \
      s0 += x * b[i]; s1 += x * b[ldb + i]; s2 += x * b[2 * ldb + i]; s3 += x * b[3 * ldb + i]; \
    }                                                                                        \
    acc[0] = s0; acc[1] = s1; acc[2] = s2; acc[3] = s3;                                      \
  }
KILN_DOT1X4_DSP(kiln_dot1x4_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_DOT1X4_DSP(kiln_dot1x4_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
/* Two output channels (a classifier's two or ten): the activation word widened once. */
#define KILN_DOT1X2_DSP(name, ta, tb, XA, XB)                                                 \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    int32_t s0 = acc[0], s1 = acc[1], i = 0;                                                 \
    const tb* b1 = b + ldb;                                                                  \
    for (; i + 4 <= n; i += 4) {                                                             \
      uint32_t va = kiln_read_u32(a + i);                                                    \
      uint32_t ae = XA(va), ao = XA##_ROR8(va);                                              \
      KILN_MAC4_DSP(s0, kiln_read_u32(b + i), XB, ae, ao);                                   \
      KILN_MAC4_DSP(s1, kiln_read_u32(b1 + i), XB, ae, ao);                                  \
    }                                                                                        \
    for (; i < n; ++i) { int32_t x = a[i]; s0 += x * b[i]; s1 += x * b1[i]; }                \
    acc[0] = s0; acc[1] = s1;                                                                \
  }
KILN_DOT1X2_DSP(kiln_dot1x2_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_DOT1X2_DSP(kiln_dot1x2_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
/* Two activation runs (lda apart) against two weight rows (ldb apart): each widened word
 * serves two sums. Per four bytes: 4 loads, 8 widenings, 8 SMLADs for 16 MACs, where the
 * 1x4 tile takes 5 loads, 10 widenings, 8 SMLADs; 13 registers, no spill (2x4 needs 17). */
#define KILN_DOT2X2_DSP(name, ta, tb, XA, XB)                                                 \
  static inline void name(const ta* a, int32_t lda, const tb* b, int32_t ldb, int32_t n,     \
                          int32_t* acc) {                                                    \
    int32_t s00 = acc[0], s01 = acc[1], s10 = acc[2], s11 = acc[3], i = 0;                   \
    const ta* a1 = a + lda;                                                                  \
    const tb* b1 = b + ldb;                                                                  \
    for (; i + 4 <= n; i += 4) {                                                             \
      uint32_t v0 = kiln_read_u32(a + i), v1 = kiln_read_u32(a1 + i);                        \
      uint32_t ae0 = XA(v0), ao0 = XA##_ROR8(v0), ae1 = XA(v1), ao1 = XA##_ROR8(v1);         \
      uint32_t w = kiln_read_u32(b + i), we = XB(w), wo = XB##_ROR8(w);                      \
      s00 = __SMLAD(ao0, wo, __SMLAD(ae0, we, s00));                                         \
      s10 = __SMLAD(ao1, wo, __SMLAD(ae1, we, s10));                                         \
      w = kiln_read_u32(b1 + i), we = XB(w), wo = XB##_ROR8(w);                              \
      s01 = __SMLAD(ao0, wo, __SMLAD(ae0, we, s01));                                         \
      s11 = __SMLAD(ao1, wo, __SMLAD(ae1, we, s11));                                         \
    }                                                                                        \
    for (; i < n; ++i) {                                                                     \
      int32_t x0 = a[i], x1 = a1[i];                                                         \
      s00 += x0 * b[i]; s01 += x0 * b1[i]; s10 += x1 * b[i]; s11 += x1 * b1[i];              \
    }                                                                                        \
    acc[0] = s00; acc[1] = s01; acc[2] = s10; acc[3] = s11;                                  \
  }
KILN_DOT2X2_DSP(kiln_dot2x2_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_DOT2X2_DSP(kiln_dot2x2_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
/* Bytes 0 and 2 widened into the bottom and top halves of one word, 1 and 3 of another:
 * SMLABB multiplies the bottom halves, SMLATT the top ones. */
#define KILN_LANE_MAC4_DSP(name, ta, tb, XA, XB)                                              \
  static inline void name(const ta* a, const tb* b, int32_t* acc) {                          \
    uint32_t va = kiln_read_u32(a), vb = kiln_read_u32(b);                                   \
    int32_t ae = (int32_t)XA(va), ao = (int32_t)XA##_ROR8(va);                               \
    int32_t be = (int32_t)XB(vb), bo = (int32_t)XB##_ROR8(vb);                               \
    acc[0] = __smlabb(ae, be, acc[0]); acc[2] = __smlatt(ae, be, acc[2]);                    \
    acc[1] = __smlabb(ao, bo, acc[1]); acc[3] = __smlatt(ao, bo, acc[3]);                    \
  }
KILN_LANE_MAC4_DSP(kiln_lane_mac4_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_LANE_MAC4_DSP(kiln_lane_mac4_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
#else
#define KILN_DOT_C(name, ta, tb)                                                              \
  static inline int32_t name(const ta* a, const tb* b, int32_t n) {                          \
    int32_t acc = 0;                                                                         \
    for (int32_t i = 0; i < n; ++i) acc += (int32_t)a[i] * (int32_t)b[i];                    \
    return acc;                                                                              \
  }
KILN_DOT_C(kiln_dot_u8s8, uint8_t, int8_t)
KILN_DOT_C(kiln_dot_s8s8, int8_t, int8_t)
KILN_DOT_C(kiln_dot_u8u8, uint8_t, uint8_t)
#define KILN_DOT1X4_C(name, ta, tb)                                                           \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    for (int32_t c = 0; c < 4; ++c)                                                          \
      for (int32_t i = 0; i < n; ++i) acc[c] += (int32_t)a[i] * (int32_t)b[c * ldb + i];    \
  }
KILN_DOT1X4_C(kiln_dot1x4_u8s8, uint8_t, int8_t)
KILN_DOT1X4_C(kiln_dot1x4_s8s8, int8_t, int8_t)
#define KILN_LANE_MAC4_C(name, ta, tb)                                                        \
  static inline void name(const ta* a, const tb* b, int32_t* acc) {                          \
    for (int32_t c = 0; c < 4; ++c) acc[c] += (int32_t)a[c] * (int32_t)b[c];                 \
  }
KILN_LANE_MAC4_C(kiln_lane_mac4_u8s8, uint8_t, int8_t)
KILN_LANE_MAC4_C(kiln_lane_mac4_s8s8, int8_t, int8_t)
#endif

#if !(defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP) || (defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1))
/* The 2x2 tile is the M4/M7's (Helium keeps 1x4: its four-channel epilogue); elsewhere in C */
#define KILN_DOT2X2_C(name, ta, tb)                                                           \
  static inline void name(const ta* a, int32_t lda, const tb* b, int32_t ldb, int32_t n,     \
                          int32_t* acc) {                                                    \
    for (int32_t r = 0; r < 2; ++r)                                                          \
      for (int32_t c = 0; c < 2; ++c)                                                        \
        for (int32_t i = 0; i < n; ++i) acc[2 * r + c] += (int32_t)a[r * lda + i] * (int32_t)b[c * ldb + i]; \
  }
KILN_DOT2X2_C(kiln_dot2x2_u8s8, uint8_t, int8_t)
KILN_DOT2X2_C(kiln_dot2x2_s8s8, int8_t, int8_t)
/* (Helium: two kiln_dot runs cost what one shared activation load saves) */
#define KILN_DOT1X2_C(name, dot, ta, tb)                                                      \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    acc[0] += dot(a, b, n);                                                                  \
    acc[1] += dot(a, b + ldb, n);                                                            \
  }
KILN_DOT1X2_C(kiln_dot1x2_u8s8, kiln_dot_u8s8, uint8_t, int8_t)
KILN_DOT1X2_C(kiln_dot1x2_s8s8, kiln_dot_s8s8, int8_t, int8_t)
#endif

#if !(defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1))
/* x8 operands (uint8 read as int8) are Helium's; elsewhere, for code built without it */
static inline int32_t kiln_dot_x8s8(const uint8_t* a, const int8_t* b, int32_t n) {
  int32_t acc = 0;
  for (int32_t i = 0; i < n; ++i) acc += ((int32_t)a[i] - 128) * (int32_t)b[i];
  return acc;
}
static inline void kiln_dot1x4_x8s8(const uint8_t* a, const int8_t* b, int32_t ldb, int32_t n, int32_t* acc) {
  for (int32_t c = 0; c < 4; ++c) acc[c] += kiln_dot_x8s8(a, b + c * ldb, n);
}
#define KILN_REQUANT4_C(name, to)                                                             \
  static inline void name(const int32_t* acc, const int32_t* mult, const int32_t* shift,     \
                          int32_t zp, int32_t lo, int32_t hi, to* out) {                     \
    for (int32_t c = 0; c < 4; ++c) {                                                        \
      int32_t h = (int32_t)(((int64_t)acc[c] * (int64_t)mult[c]) >> 32), s = shift[c] - 32;  \
      int32_t v = (((h >> (s - 1)) + 1) >> 1) + zp;                                          \
      out[c] = (to)(v < lo ? lo : v > hi ? hi : v);                                          \
    }                                                                                        \
  }
KILN_REQUANT4_C(kiln_requant4_s8, int8_t)
KILN_REQUANT4_C(kiln_requant4_u8, uint8_t)
#define KILN_LANE_ADD_C(name, ta)                                                             \
  static inline void name(const ta* a, int32_t* acc, int32_t n) {                            \
    for (int32_t i = 0; i < n; ++i) acc[i] += (int32_t)a[i];                                 \
  }
KILN_LANE_ADD_C(kiln_lane_add_s8, int8_t)
KILN_LANE_ADD_C(kiln_lane_add_u8, uint8_t)
#endif

#endif /* KILN_DSP_H */
