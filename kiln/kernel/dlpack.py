"""The Python callable of a kernel library: DLPack tensors in, DLPack tensors out, no copies.

Any object with ``__dlpack__``/``__dlpack_device__`` (numpy arrays, PyTorch tensors, ...) is
viewed through ``np.from_dlpack`` (zero-copy) and its data pointer handed to the library's
``<name>_run``. Before that, every tensor is checked -- device, dtype, shape, contiguity and
alignment -- and a mismatch raises ``kiln.errors.InputError`` naming the expected and the
received value: the C code never sees a tensor it would read or write out of bounds.

Outputs are allocated here unless ``out=`` passes them (checked the same way and written in
place); they come back as torch tensors when the inputs were torch tensors (``torch.from_dlpack``
of the numpy buffer, zero-copy), else as numpy arrays.
"""
from __future__ import annotations

import ctypes
import sys
import threading
from pathlib import Path

import numpy as np

from kiln.errors import InputError
from kiln.kernel.library import DLPACK_DTYPES

# DLDeviceType codes (dlpack.h) -> names for messages.
DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi",
                10: "rocm", 11: "rocm_host", 12: "ext_dev", 13: "cuda_managed", 14: "oneapi", 15: "webgpu",
                16: "hexagon", 17: "maia"}
KDL_CPU = 1
KNOWN_DTYPES = set(DLPACK_DTYPES)


def device_of(tensor) -> tuple[int, int]:
    """``(device_type, device_id)`` from the DLPack protocol; an object without it is refused."""
    if not hasattr(tensor, "__dlpack_device__"):
        raise InputError(f"expected a DLPack tensor (numpy array, torch tensor, ...); got {type(tensor).__name__}")
    try:
        dev = tensor.__dlpack_device__()
        return int(dev[0]), int(dev[1])
    except (ValueError, TypeError, RuntimeError, IndexError) as e:  # e.g. torch's "meta" device
        raise InputError(f"the tensor's device cannot be exchanged through DLPack ({e}); "
                         "expected a cpu tensor") from None


def device_name(dev: tuple[int, int]) -> str:
    return f"{DEVICE_NAMES.get(dev[0], f'device type {dev[0]}')}:{dev[1]}"


def _dtype_name(tensor) -> str:
    dt = getattr(tensor, "dtype", None)
    return str(dt).removeprefix("torch.") if dt is not None else type(tensor).__name__


class DLPackKernel:
    """Calls ``<name>_run`` of a built kernel library on DLPack tensors (see the module docstring)."""

    def __init__(self, library: Path, name: str, inputs: list[dict], outputs: list[dict], workspace_size: int):
        self.library = Path(library)
        self.name = name
        self.inputs, self.outputs = inputs, outputs
        self.workspace_size = workspace_size
        self._lib = ctypes.CDLL(str(self.library))
        self._run = getattr(self._lib, f"{name}_run")
        self._run.restype = ctypes.c_int
        self._run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self._strerror = getattr(self._lib, f"{name}_strerror")
        self._strerror.restype = ctypes.c_char_p
        self._local = threading.local()  # one workspace per thread: calls may run concurrently

    def _workspace(self) -> np.ndarray:
        ws = getattr(self._local, "workspace", None)
        if ws is None:
            from kiln.targets.host import _aligned_empty

            ws = self._local.workspace = _aligned_empty(max(self.workspace_size, 64))
        return ws

    def view(self, tensor, spec: dict, role: str, writable: bool = False) -> np.ndarray:
        """A zero-copy numpy view of ``tensor`` after checking it against ``spec``."""
        label = f"{self.name}: {role} {spec['name']!r}"
        dev = device_of(tensor)
        if dev[0] != KDL_CPU:
            raise InputError(f"{label} is on device {device_name(dev)}; expected cpu:0 (this kernel library "
                             "was compiled for the host CPU)")
        received = _dtype_name(tensor)
        if received in KNOWN_DTYPES and received != spec["dtype"]:  # before a view numpy may not represent
            raise InputError(f"{label} has dtype {received}; expected {spec['dtype']}")
        try:
            arr = np.from_dlpack(tensor)
        except (RuntimeError, TypeError, ValueError, BufferError) as e:
            raise InputError(f"{label}: cannot view it through DLPack ({e}); expected a {spec['dtype']} "
                             f"tensor of shape {tuple(spec['shape'])}") from None
        if arr.dtype != np.dtype(spec["dtype"]):
            raise InputError(f"{label} has dtype {_dtype_name(tensor)}; expected {spec['dtype']}")
        if tuple(arr.shape) != tuple(spec["shape"]):
            raise InputError(f"{label} has shape {tuple(arr.shape)}; expected {tuple(spec['shape'])}")
        if not arr.flags.c_contiguous:
            raise InputError(f"{label} is not contiguous (strides {tuple(s // arr.itemsize for s in arr.strides)} "
                             f"elements); expected row-major contiguous strides "
                             f"{_contiguous_strides(spec['shape'])} (call .contiguous() or np.ascontiguousarray)")
        if arr.ctypes.data % arr.itemsize:
            raise InputError(f"{label} data address {arr.ctypes.data:#x} is misaligned; expected a multiple "
                             f"of {arr.itemsize} bytes (its element size)")
        if writable and not arr.flags.writeable:
            raise InputError(f"{label} is read-only; expected a writable output tensor")
        return arr

    def __call__(self, *tensors, out=None):
        if len(tensors) != len(self.inputs):
            names = [t["name"] for t in self.inputs]
            raise InputError(f"{self.name} takes {len(self.inputs)} input tensor(s) {names}; got {len(tensors)}")
        arrays = [self.view(t, spec, "input") for t, spec in zip(tensors, self.inputs)]
        as_torch = _is_torch(tensors[0]) if tensors else False
        if out is None:
            results = outs = [np.empty(spec["shape"], dtype=spec["dtype"]) for spec in self.outputs]
        else:
            results = list(out) if isinstance(out, (list, tuple)) else [out]
            if len(results) != len(self.outputs):
                raise InputError(f"{self.name} writes {len(self.outputs)} output(s); out= gave {len(results)}")
            outs = [self.view(t, spec, "output", writable=True) for t, spec in zip(results, self.outputs)]
        in_ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[a.ctypes.data for a in outs])
        ws = self._workspace()
        rc = self._run(ctypes.cast(in_ptrs, ctypes.c_void_p), ctypes.cast(out_ptrs, ctypes.c_void_p),
                       ws.ctypes.data, ws.nbytes)
        if rc != 0:
            raise InputError(f"{self.name} returned error {rc}: {self._strerror(rc).decode()}")
        if out is None and as_torch:
            import torch

            results = [torch.from_dlpack(a) for a in outs]
        return results[0] if len(results) == 1 else tuple(results)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(list(shape)):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def _is_torch(tensor) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(tensor, torch.Tensor)
