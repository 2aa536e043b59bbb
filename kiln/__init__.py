"""Kiln: compile ONNX models into tuned kernels and self-contained C source."""
__version__ = "0.1.0"

from kiln.api import CompiledModel, compile, inspect, load, tune  # noqa: E402
from kiln.errors import KilnError  # noqa: E402
from kiln.quantization import quantize, quantize_weights  # noqa: E402

__all__ = ["compile", "inspect", "load", "quantize", "quantize_weights", "tune", "CompiledModel", "KilnError",
           "__version__"]
