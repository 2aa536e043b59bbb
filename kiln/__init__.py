"""Kiln: compile ONNX models into tuned kernels and self-contained C source."""
__version__ = "0.1.0"

from kiln.api import CompiledModel, compile, inspect, load  # noqa: E402
from kiln.errors import KilnError  # noqa: E402

__all__ = ["compile", "inspect", "load", "CompiledModel", "KilnError", "__version__"]
from kiln.kernel import KernelLibrary, kernel  # noqa: E402  (kiln.kernel: tuned kernels for other runtimes)

__all__ += ["kernel", "KernelLibrary"]
