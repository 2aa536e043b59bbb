"""C support code for the narrow storage types (bfloat16, float8, float4, int4/int2).

A narrow tensor holds one element per byte (two for bfloat16); generated code decodes an
element when it loads it, computes in ``float`` (``int32_t`` for the small integers), and
encodes when it stores. Conversions follow ``ml_dtypes`` (ONNX's reference casts with it):
round to nearest even, each format's own overflow rule (inf, NaN or the largest finite
value), NaN and negative-zero codes as ml_dtypes writes them. Decoding float8/float4 is a
table lookup, the table computed here by ml_dtypes itself so that it cannot disagree.

Only the helpers a model uses are emitted (``support_code``): the generated files stay
clean under ``-Wall -Wextra -Werror`` and small for microcontrollers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir.dtype import DType


@dataclass(frozen=True)
class MiniFloat:
    """A float8/float4 format: mantissa bits, bias, largest finite value, and special codes."""

    bits: int          # storage bits of one element (8 or 4)
    mbits: int         # mantissa bits
    bias: int          # exponent bias
    overflow: int      # code (without sign) of a value beyond the largest finite one, and of inf
    nan: int           # code of a NaN with a clear sign bit
    nan_negative: int  # code of a NaN with its sign bit set
    unsigned_zero: bool  # no negative zero: -0 and tiny negatives encode as 0

    @property
    def sign(self) -> int:
        return 1 << (self.bits - 1)


MINIFLOATS: dict[DType, MiniFloat] = {
    DType.float8_e4m3fn: MiniFloat(8, 3, 7, overflow=0x7F, nan=0x7F, nan_negative=0xFF, unsigned_zero=False),
    DType.float8_e4m3fnuz: MiniFloat(8, 3, 8, overflow=0x80, nan=0x80, nan_negative=0x80, unsigned_zero=True),
    DType.float8_e5m2: MiniFloat(8, 2, 15, overflow=0x7C, nan=0x7E, nan_negative=0xFE, unsigned_zero=False),
    DType.float8_e5m2fnuz: MiniFloat(8, 2, 16, overflow=0x80, nan=0x80, nan_negative=0x80, unsigned_zero=True),
    # float4 has no NaN: ml_dtypes writes +NaN as -0 and -NaN as +0
    DType.float4_e2m1fn: MiniFloat(4, 1, 1, overflow=0x7, nan=0x8, nan_negative=0x0, unsigned_zero=False),
}

STORAGE_CTYPES = {
    DType.bfloat16: "uint16_t", DType.int4: "uint8_t", DType.uint4: "uint8_t", DType.int2: "uint8_t",
    DType.uint2: "uint8_t", DType.float8_e8m0fnu: "uint8_t", **{dt: "uint8_t" for dt in MINIFLOATS},
}


def value_ctype(dtype: DType) -> str:
    """The C type generated code computes a narrow type's values in."""
    return "float" if dtype.is_narrow_float else "int32_t"


def supported(dtype: DType) -> bool:
    return dtype in (DType.bfloat16, DType.float8_e8m0fnu) or dtype in MINIFLOATS or dtype.is_narrow_int


def decode(dtype: DType, stored: str) -> str:
    return f"kiln_dec_{dtype.value}({stored})"


def encode(dtype: DType, value: str) -> str:
    return f"kiln_enc_{dtype.value}({value})"


def narrow(dtype: DType, value: str) -> str:
    """``value`` (a float or an integer) rounded or wrapped to what ``dtype`` can hold."""
    return f"kiln_narrow_{dtype.value}({value})"


def _hex_float(v: float) -> str:
    if np.isnan(v):
        return "-NAN" if np.signbit(v) else "NAN"
    if np.isinf(v):
        return "-INFINITY" if v < 0 else "INFINITY"
    return float(v).hex() + "f"


def _table(dtype: DType) -> str:
    n = 1 << (MINIFLOATS[dtype].bits if dtype in MINIFLOATS else 8)
    values = np.arange(n, dtype=np.uint8).view(dtype.np).astype(np.float32)
    body = ",\n  ".join(", ".join(_hex_float(float(v)) for v in values[i:i + 8]) for i in range(0, n, 8))
    return f"static const float kiln_lut_{dtype.value}[{n}] = {{\n  {body}\n}};"


_MINIFLOAT_ENCODER = """\
/* Round to nearest even into a small float format with `mbits` mantissa bits and exponent
 * bias `bias`; `maxv` is its largest finite value. */
static inline uint32_t kiln_enc_minifloat(float x, int mbits, int bias, float maxv, uint32_t sign_bit,
                                          uint32_t overflow, uint32_t nan, uint32_t nan_negative,
                                          int unsigned_zero) {
  if (isnan(x)) return signbit(x) ? nan_negative : nan;
  uint32_t sign = signbit(x) ? sign_bit : 0u;
  float a = fabsf(x);
  if (isinf(a)) return sign | overflow;
  int e;
  (void)frexpf(a, &e);
  int emin = 1 - bias, le = e - 1 < emin ? emin : e - 1;
  float r = nearbyintf(ldexpf(a, mbits - le));       /* exact: a scaled by a power of two */
  float v = ldexpf(r, le - mbits);
  if (v > maxv) return sign | overflow;
  if (r == 0.0f) return unsigned_zero ? 0u : sign;
  if (le == emin && r < (float)(1 << mbits)) return sign | (uint32_t)r;   /* subnormal */
  if (r >= (float)(2 << mbits)) { r *= 0.5f; le += 1; }                    /* rounded up a binade */
  return sign | ((uint32_t)(le + bias) << mbits) | ((uint32_t)r - (1u << mbits));
}
static inline int64_t kiln_float_to_int64(double x) {
  /* float -> int conversion as numpy/ml_dtypes do it on x86 for NaN, inf and huge values */
  return (x == x && x > -9.2e18 && x < 9.2e18) ? (int64_t)x : 0;
}"""


def _minifloat_helpers(dtype: DType) -> str:
    f = MINIFLOATS[dtype]
    name = dtype.value
    maxv = _ml_max(dtype)
    mask = (1 << f.bits) - 1
    return "\n".join([
        _table(dtype),
        f"static inline float kiln_dec_{name}(uint8_t v) {{ return kiln_lut_{name}[v & {mask}]; }}",
        f"static inline uint8_t kiln_enc_{name}(float x) {{\n"
        f"  return (uint8_t)kiln_enc_minifloat(x, {f.mbits}, {f.bias}, {_hex_float(maxv)}, {f.sign}u, "
        f"{f.overflow}u, {f.nan}u, {f.nan_negative}u, {int(f.unsigned_zero)});\n}}",
        f"static inline float kiln_narrow_{name}(float x) {{ return kiln_dec_{name}(kiln_enc_{name}(x)); }}",
    ])


def _ml_max(dtype: DType) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype.np).max)


def _e8m0_helpers() -> str:
    """float8_e8m0fnu (a power of two, 2^(e - 127); 0xFF is NaN) as ONNX's Cast writes it with
    its default round_mode "up" and saturate: the float32 exponent field, plus one when any
    mantissa bit is set (never past 0xFE); the sign is ignored, infinities and NaN give 0xFF,
    zero the smallest value 2^-127. ml_dtypes rounds differently, so this is not a MiniFloat.
    One exception keeps encode(decode(code)) == code, which a cast followed by a store relies
    on: 2^-127 itself (a float32 subnormal) encodes as code 0, where ONNX's reference rounds
    it up to 2^-126."""
    name = DType.float8_e8m0fnu.value
    return "\n".join([
        _table(DType.float8_e8m0fnu),
        f"static inline float kiln_dec_{name}(uint8_t v) {{ return kiln_lut_{name}[v]; }}",
        f"static inline uint8_t kiln_enc_{name}(float x) {{",
        "  uint32_t u; memcpy(&u, &x, 4);",
        "  if ((u & 0x7FFFFFFFu) == 0x00400000u) return 0u;  /* 2^-127: code 0 decoded */",
        "  uint32_t e = (u >> 23) & 0xFFu;",
        "  if (e != 0xFFu && (u & 0x7FFFFFu) && e != 0xFEu) e += 1u;",
        "  return (uint8_t)e;",
        "}",
        f"static inline float kiln_narrow_{name}(float x) {{ return kiln_dec_{name}(kiln_enc_{name}(x)); }}",
    ])


_BFLOAT16 = """\
static inline float kiln_dec_bfloat16(uint16_t v) {
  uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t kiln_enc_bfloat16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);                                            /* nearest even */
  return (uint16_t)(u >> 16);
}
static inline float kiln_narrow_bfloat16(float x) { return kiln_dec_bfloat16(kiln_enc_bfloat16(x)); }"""


def _narrow_int_helpers(dtype: DType) -> str:
    bits, name = dtype.bits, dtype.value
    mask = (1 << bits) - 1
    if dtype.is_signed:
        dec = f"return (int32_t)((uint32_t)v << {32 - bits}) >> {32 - bits};"
    else:
        dec = f"return (int32_t)(v & {mask}u);"
    return "\n".join([
        f"static inline int32_t kiln_dec_{name}(uint8_t v) {{ {dec} }}",
        f"static inline uint8_t kiln_enc_{name}(int64_t v) {{ return (uint8_t)((uint64_t)v & {mask}u); }}",
        f"static inline int32_t kiln_narrow_{name}(int64_t v) {{ return kiln_dec_{name}(kiln_enc_{name}(v)); }}",
    ])


def support_code(dtypes) -> str:
    """The C helpers for the narrow types in ``dtypes`` (empty when there are none)."""
    dtypes = sorted({d for d in dtypes if supported(d)}, key=lambda d: d.value)
    if not dtypes:
        return ""
    parts = ["/* Narrow storage types: decode on load, compute wide, encode on store. */"]
    if any(d in MINIFLOATS for d in dtypes) or any(d.is_narrow_int for d in dtypes):
        parts.append(_MINIFLOAT_ENCODER)
    for d in dtypes:
        if d is DType.bfloat16:
            parts.append(_BFLOAT16)
        elif d is DType.float8_e8m0fnu:
            parts.append(_e8m0_helpers())
        elif d in MINIFLOATS:
            parts.append(_minifloat_helpers(d))
        else:
            parts.append(_narrow_int_helpers(d))
    return "\n".join(parts) + "\n"
