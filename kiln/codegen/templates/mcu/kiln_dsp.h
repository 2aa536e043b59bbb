/* kiln_dsp.h -- 8-bit dot products for Cortex-M, written for Kiln (CMSIS-style names).
 *
 * kiln_dot_<a><b>(a, b, n) = sum_i a[i] * b[i] in int32, for u8/s8 operands.
 * kiln_dot1x4_<a><b>(a, b, ldb, n, acc): acc[c] += sum_i a[i] * b[c * ldb + i] for c < 4: one
 *   activation run against four weight rows (four output channels), so each activation word
 *   is loaded and widened once for four dot products instead of once per dot product.
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
#define __ROR8(x) (((x) >> 8) | ((x) << 24))
static inline uint32_t kiln_read_u32(const void* p) {  /* unaligned load; one LDR on M4/M7 */
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
#else
#define KILN_DOT_IMPL "c"
#endif

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
/* u8 fits in an int16 lane as is (0..255): load widening to u16 and reinterpret. A run of
 * 4 left over (a 4-wide kernel row over one channel) takes four int32 lanes in one step. */
#define KILN_DOT_MVE(name, ta, tb, LA, LB, LA4, LB4, WIDE)                                   \
  static inline int32_t name(const ta* a, const tb* b, int32_t n) {                          \
    int32_t acc = 0, i = 0;                                                                  \
    WIDE(for (; i + 16 <= n; i += 16) acc = vmladavaq_s8(acc, vldrbq_s8(a + i), vldrbq_s8(b + i));) \
    for (; i + 8 <= n; i += 8) acc = vmladavaq_s16(acc, LA(a + i), LB(b + i));               \
    if (i + 4 <= n) { acc = vmladavaq_s32(acc, LA4(a + i), LB4(b + i)); i += 4; }            \
    for (; i < n; ++i) acc += (int32_t)a[i] * (int32_t)b[i];                                 \
    return acc;                                                                              \
  }
#define KILN_LD_U8(p) vreinterpretq_s16_u16(vldrbq_u16(p))
#define KILN_LD_S8(p) vldrbq_s16(p)
#define KILN_LD4_U8(p) vreinterpretq_s32_u32(vldrbq_u32(p))
#define KILN_LD4_S8(p) vldrbq_s32(p)
/* int8 x int8 takes sixteen bytes per VMLADAVA.S8 (no widening); a uint8 operand does not
 * fit an int8 lane and is widened to int16, eight per step. */
#define KILN_S8_WIDE(code) code
#define KILN_S16_ONLY(code)
KILN_DOT_MVE(kiln_dot_u8s8, uint8_t, int8_t, KILN_LD_U8, KILN_LD_S8, KILN_LD4_U8, KILN_LD4_S8, KILN_S16_ONLY)
KILN_DOT_MVE(kiln_dot_s8s8, int8_t, int8_t, KILN_LD_S8, KILN_LD_S8, KILN_LD4_S8, KILN_LD4_S8, KILN_S8_WIDE)
KILN_DOT_MVE(kiln_dot_u8u8, uint8_t, uint8_t, KILN_LD_U8, KILN_LD_U8, KILN_LD4_U8, KILN_LD4_U8, KILN_S16_ONLY)
#define KILN_DOT1X4_MVE(name, ta, tb, LA, LB, LA4, LB4, WIDE)                                \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    int32_t s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3], i = 0;                       \
    WIDE(for (; i + 16 <= n; i += 16) {                                                      \
      int8x16_t va = vldrbq_s8(a + i);                                                        \
      s0 = vmladavaq_s8(s0, va, vldrbq_s8(b + i));                                           \
      s1 = vmladavaq_s8(s1, va, vldrbq_s8(b + ldb + i));                                     \
      s2 = vmladavaq_s8(s2, va, vldrbq_s8(b + 2 * ldb + i));                                 \
      s3 = vmladavaq_s8(s3, va, vldrbq_s8(b + 3 * ldb + i));                                 \
    })                                                                                       \
    for (; i + 8 <= n; i += 8) {                                                             \
      int16x8_t va = LA(a + i);                                                              \
      s0 = vmladavaq_s16(s0, va, LB(b + i));                                                 \
      s1 = vmladavaq_s16(s1, va, LB(b + ldb + i));                                           \
      s2 = vmladavaq_s16(s2, va, LB(b + 2 * ldb + i));                                       \
      s3 = vmladavaq_s16(s3, va, LB(b + 3 * ldb + i));                                       \
    }                                                                                        \
    if (i + 4 <= n) {                                                                        \
      int32x4_t va = LA4(a + i);                                                             \
      s0 = vmladavaq_s32(s0, va, LB4(b + i));                                                \
      s1 = vmladavaq_s32(s1, va, LB4(b + ldb + i));                                          \
      s2 = vmladavaq_s32(s2, va, LB4(b + 2 * ldb + i));                                      \
      s3 = vmladavaq_s32(s3, va, LB4(b + 3 * ldb + i));                                      \
      i += 4;                                                                                \
    }                                                                                        \
    for (; i < n; ++i) {                                                                     \
      int32_t x = a[i];                                                                      \
      s0 += x * b[i]; s1 += x * b[ldb + i]; s2 += x * b[2 * ldb + i]; s3 += x * b[3 * ldb + i]; \
    }                                                                                        \
    acc[0] = s0; acc[1] = s1; acc[2] = s2; acc[3] = s3;                                      \
  }
KILN_DOT1X4_MVE(kiln_dot1x4_u8s8, uint8_t, int8_t, KILN_LD_U8, KILN_LD_S8, KILN_LD4_U8, KILN_LD4_S8, KILN_S16_ONLY)
KILN_DOT1X4_MVE(kiln_dot1x4_s8s8, int8_t, int8_t, KILN_LD_S8, KILN_LD_S8, KILN_LD4_S8, KILN_LD4_S8, KILN_S8_WIDE)
#define KILN_LANE_MAC4_MVE(name, ta, tb, LA, LB)                                              \
  static inline void name(const ta* a, const tb* b, int32_t* acc) {                          \
    vst1q_s32(acc, vaddq_s32(vld1q_s32(acc), vmulq_s32(LA(a), LB(b))));                      \
  }
KILN_LANE_MAC4_MVE(kiln_lane_mac4_u8s8, uint8_t, int8_t, KILN_LD4_U8, KILN_LD4_S8)
KILN_LANE_MAC4_MVE(kiln_lane_mac4_s8s8, int8_t, int8_t, KILN_LD4_S8, KILN_LD4_S8)
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define KILN_DOT_DSP(name, ta, tb, XA, XB)                                                    \
  static inline int32_t name(const ta* a, const tb* b, int32_t n) {                          \
    int32_t acc = 0, i = 0;                                                                  \
    for (; i + 4 <= n; i += 4) {                                                             \
      uint32_t va = kiln_read_u32(a + i), vb = kiln_read_u32(b + i);                          \
      acc = __SMLAD(XA(va), XB(vb), acc);                 /* bytes 0 and 2 */                \
      acc = __SMLAD(XA(__ROR8(va)), XB(__ROR8(vb)), acc); /* bytes 1 and 3 */                \
    }                                                                                        \
    for (; i < n; ++i) acc += (int32_t)a[i] * (int32_t)b[i];                                 \
    return acc;                                                                              \
  }
KILN_DOT_DSP(kiln_dot_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_DOT_DSP(kiln_dot_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
KILN_DOT_DSP(kiln_dot_u8u8, uint8_t, uint8_t, __UXTB16, __UXTB16)
/* One weight word against the widened activation pairs: two SMLADs into one sum. */
#define KILN_MAC4_DSP(sum, w, XB, ae, ao)                                                     \
  do { uint32_t w_ = (w); sum = __SMLAD(ae, XB(w_), sum); sum = __SMLAD(ao, XB(__ROR8(w_)), sum); } while (0)
#define KILN_DOT1X4_DSP(name, ta, tb, XA, XB)                                                 \
  static inline void name(const ta* a, const tb* b, int32_t ldb, int32_t n, int32_t* acc) {  \
    int32_t s0 = acc[0], s1 = acc[1], s2 = acc[2], s3 = acc[3], i = 0;                       \
    const tb *b1 = b + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;                                  \
    for (; i + 4 <= n; i += 4) {                                                             \
      uint32_t va = kiln_read_u32(a + i);                                                    \
      uint32_t ae = XA(va), ao = XA(__ROR8(va));          /* bytes 0, 2 and 1, 3 */          \
      KILN_MAC4_DSP(s0, kiln_read_u32(b + i), XB, ae, ao);                                   \
      KILN_MAC4_DSP(s1, kiln_read_u32(b1 + i), XB, ae, ao);                                  \
      KILN_MAC4_DSP(s2, kiln_read_u32(b2 + i), XB, ae, ao);                                  \
      KILN_MAC4_DSP(s3, kiln_read_u32(b3 + i), XB, ae, ao);                                  \
    }                                                                                        \
    for (; i < n; ++i) {                                                                     \
      int32_t x = a[i];                                                                      \
      s0 += x * b[i]; s1 += x * b1[i]; s2 += x * b2[i]; s3 += x * b3[i];                     \
    }                                                                                        \
    acc[0] = s0; acc[1] = s1; acc[2] = s2; acc[3] = s3;                                      \
  }
KILN_DOT1X4_DSP(kiln_dot1x4_u8s8, uint8_t, int8_t, __UXTB16, __SXTB16)
KILN_DOT1X4_DSP(kiln_dot1x4_s8s8, int8_t, int8_t, __SXTB16, __SXTB16)
/* Bytes 0 and 2 widened into the bottom and top halves of one word, 1 and 3 of another:
 * SMLABB multiplies the bottom halves, SMLATT the top ones. */
#define KILN_LANE_MAC4_DSP(name, ta, tb, XA, XB)                                              \
  static inline void name(const ta* a, const tb* b, int32_t* acc) {                          \
    uint32_t va = kiln_read_u32(a), vb = kiln_read_u32(b);                                   \
    int32_t ae = (int32_t)XA(va), ao = (int32_t)XA(__ROR8(va));                              \
    int32_t be = (int32_t)XB(vb), bo = (int32_t)XB(__ROR8(vb));                              \
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

#endif /* KILN_DSP_H */
