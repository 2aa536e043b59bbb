"""Element types: one table from Kiln's names to numpy and C types."""
from __future__ import annotations

import enum

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
    bool = "bool"

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64, DType.float16)

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


INDEX = DType.int64
