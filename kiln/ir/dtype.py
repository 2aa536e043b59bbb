"""Element types: one table from Kiln's names to numpy and C types.

Besides numpy's own types, Kiln knows the narrow types of recent ONNX opsets through
``ml_dtypes`` (which also gives their numpy arrays): bfloat16, the float8 and float4
formats, and 4- and 2-bit integers. Those are *storage* types: a tensor holds one element
per byte (per two bytes for bfloat16) and arithmetic happens in float32 (int32 for the
small integers), rounded back to the narrow type where a result is stored or cast.
"""
from __future__ import annotations

import enum

import ml_dtypes  # noqa: F401  (registers its types with numpy, so np.dtype("bfloat16") works)
import numpy as np

from kiln.errors import ShapeError


class DType(enum.Enum):
    float32 = "float32"
    float64 = "float64"
    float16 = "float16"
    int8 = "int8"
    int16 = "int16"
    int32 = "int32"
    int64 = "int64"
    uint8 = "uint8"
    uint16 = "uint16"
    uint32 = "uint32"
    uint64 = "uint64"
    bool = "bool"
    # storage-only types (values named as ml_dtypes names them)
    bfloat16 = "bfloat16"
    float8_e4m3fn = "float8_e4m3fn"
    float8_e4m3fnuz = "float8_e4m3fnuz"
    float8_e5m2 = "float8_e5m2"
    float8_e5m2fnuz = "float8_e5m2fnuz"
    float4_e2m1fn = "float4_e2m1fn"
    float8_e8m0fnu = "float8_e8m0fnu"  # a power of two: 8 exponent bits, no sign, no mantissa (MX scales)
    int4 = "int4"
    uint4 = "uint4"
    int2 = "int2"
    uint2 = "uint2"

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64, DType.float16) or self in _NARROW_FLOATS

    @property
    def is_narrow_float(self) -> bool:
        """bfloat16, float8 and float4: stored narrow, computed in float32."""
        return self in _NARROW_FLOATS

    @property
    def is_narrow_int(self) -> bool:
        """4- and 2-bit integers: one element per byte (the low bits), computed in int32."""
        return self in _NARROW_INTS

    @property
    def is_signed(self) -> bool:
        return self.is_float or self in (DType.int8, DType.int16, DType.int32, DType.int64, DType.int4, DType.int2)

    @property
    def bits(self) -> int:
        """Value bits: 4 for int4 (stored in a byte), 16 for bfloat16."""
        return _NARROW_INT_BITS.get(self, self.itemsize * 8)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.bool

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def of(x) -> "DType":
        """Kiln dtype of a numpy dtype, array or a DType; raises ShapeError otherwise."""
        if isinstance(x, DType):
            return x
        if isinstance(x, np.ndarray):
            x = x.dtype
        try:
            return DType(np.dtype(x).name)
        except (TypeError, ValueError):
            raise ShapeError(
                f"unsupported element type {x!r}; Kiln supports {', '.join(d.value for d in DType)}"
            ) from None


_NARROW_FLOATS = frozenset({DType.bfloat16, DType.float8_e4m3fn, DType.float8_e4m3fnuz, DType.float8_e5m2,
                            DType.float8_e5m2fnuz, DType.float4_e2m1fn, DType.float8_e8m0fnu})
_NARROW_INT_BITS = {DType.int4: 4, DType.uint4: 4, DType.int2: 2, DType.uint2: 2}
_NARROW_INTS = frozenset(_NARROW_INT_BITS)

INDEX = DType.int64
