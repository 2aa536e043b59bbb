"""Kiln: compile ONNX models into tuned kernels and self-contained C source."""
__version__ = "0.1.0"

from kiln.api import CompiledModel, compile, inspect, load, tune  # noqa: E402
from kiln.errors import KilnError  # noqa: E402
from kiln.kernel import KernelLibrary, kernel  # noqa: E402  (tuned kernels for other runtimes)
from kiln.quantization import quantize, quantize_weights  # noqa: E402

__all__ = ["compile", "inspect", "kernel", "load", "quantize", "quantize_weights", "tune", "CompiledModel",
           "KernelLibrary", "KilnError", "__version__"]
