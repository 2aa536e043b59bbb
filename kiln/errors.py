"""Every error Kiln raises on bad input derives from KilnError.

Each message says what was wrong and what was expected, so that a user can fix the
input without reading Kiln's source.
"""
from __future__ import annotations


class KilnError(Exception):
    """Base class for all errors Kiln raises on purpose."""


class ModelLoadError(KilnError):
    """The model file could not be read or is not a valid ONNX model."""


class UnsupportedOperatorError(KilnError):
    """One or more operators in the model have no converter.

    ``unsupported`` lists every ``(op_type, opset, [node names])`` found, so one run
    tells the user everything that is missing.
    """

    def __init__(self, unsupported: list[tuple[str, int, list[str]]], reason: str = ""):
        self.unsupported = unsupported
        self.reason = reason
        lines = [
            f"  {op} (opset {opset}): nodes {', '.join(repr(n) for n in names[:5])}"
            + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            + (f": {reason}" if reason else "")
            for op, opset, names in unsupported
        ]
        super().__init__(
            f"{len(unsupported)} unsupported operator type(s) in the model:\n" + "\n".join(lines)
        )


class ShapeError(KilnError):
    """Shapes or dtypes in the graph are inconsistent."""


class VerificationError(KilnError):
    """An IR invariant does not hold (a bug in a pass, or a malformed graph)."""


class InputError(KilnError):
    """The inputs given at run time do not match what the model expects."""


class ScheduleError(KilnError):
    """A schedule primitive was applied where it is not valid."""


class ToolchainError(KilnError):
    """An external compiler or tool failed or is missing."""


class TargetError(KilnError):
    """The target string is unknown or malformed."""


class QuantizationError(KilnError):
    """A quantization request Kiln cannot honor: an unsupported scheme, or calibration data
    whose names, shapes or dtypes do not match the model's inputs."""


class TuningError(KilnError):
    """Autotuning could not proceed: a bad tuning database, cost model or search setting."""


class TuningWarning(UserWarning):
    """Something in a tuning run was skipped (a corrupt database line, a failed task) but the run goes on."""
