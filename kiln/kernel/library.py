"""A compiled kernel as a self-contained shared library with a plain C ABI.

``KernelLibrary`` wraps a host ``CompiledModel``: its ``model.c`` (hidden behind
``-fvisibility=hidden``), a C wrapper with typed entry points, the weights embedded as a
constant array, a header, and ``manifest.json`` (shapes, dtypes, layout, target and the
kernels' schedule traces, which are the tuning record). ``build(dir)`` writes all of that
and compiles ``lib<name>.so``; the Python callable, the PyTorch op and the TVM-FFI module
(``kiln.kernel.dlpack``, ``torch_op``, ``tvm_ffi``) all call that library.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from kiln.errors import KilnError, ToolchainError

# DLPack (code, bits) of the element types a kernel library can take; narrow storage types
# (int4, float8, ...) hold one element per byte in Kiln, which DLPack has no code for.
DLPACK_DTYPES = {
    "float32": (2, 32), "float64": (2, 64), "float16": (2, 16), "bfloat16": (4, 16),
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64), "bool": (6, 8),
}
LAYOUT = "row-major (C-contiguous), dense; each pointer aligned to its element size"
WORKSPACE_ALIGNMENT = 64
LIBRARY_FLAGS = ["-fvisibility=hidden"]


def c_identifier(name: str) -> str:
    """A C identifier for a value or kernel name ("input.1" -> "input_1", "0x" -> "t_0x")."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return ident if re.match(r"[A-Za-z_]", ident) else "t_" + ident


def c_string(text: str) -> str:
    """``text`` as a C string literal, split over lines."""
    out, line = [], ""
    for ch in text:
        if ch in '\\"':
            line += "\\" + ch
        elif 32 <= ord(ch) < 127:
            line += ch
        else:
            line += "".join(f"\\{b:03o}" for b in ch.encode())
        if len(line) > 100:
            out.append(f'"{line}"')
            line = ""
    out.append(f'"{line}"')
    return "\n".join(out)


def c_bytes(data: bytes) -> str:
    """``data`` as a string literal of exactly ``len(data)`` bytes (no terminating NUL needed
    in C when the array has that size): compiles much faster than a list of integers."""
    if not data:
        return "{0}"
    rows = ['"' + "".join(f"\\x{b:02x}" for b in data[i:i + 32]) + '"' for i in range(0, len(data), 32)]
    return "\n".join(rows)


class KernelLibrary:
    """One compiled kernel with a C ABI; see the module docstring."""

    def __init__(self, compiled, name: str, *, db=None, origin: str = ""):
        if compiled.target_impl.name != "host":
            raise KilnError(f"kernel libraries are built for the host target; got {compiled.target}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise KilnError(f"kernel name {name!r} must be a C identifier (letters, digits, _; not first a digit)")
        if compiled.graph.dim_bounds:
            raise KilnError(f"kernel libraries have static shapes; the model has dynamic dims "
                            f"{sorted(compiled.graph.dim_bounds)}: pass input_shapes= with concrete sizes")
        self.compiled = compiled
        self.name = name
        self.db = db
        self.origin = origin
        self.inputs = [self._tensor(v) for v in compiled.graph.inputs]
        self.outputs = [self._tensor(v) for v in compiled.graph.outputs]
        cnames = [t["cname"] for t in self.inputs + self.outputs]
        if len(set(cnames)) != len(cnames):
            for i, t in enumerate(self.inputs + self.outputs):
                t["cname"] = f"{t['cname']}_{i}"
        self._built: dict[str, Path] = {}

    def _tensor(self, v) -> dict:
        from kiln.codegen.c import CRenderer

        dtype = v.dtype.value
        if dtype not in DLPACK_DTYPES:
            raise KilnError(f"value {v.name!r} has element type {dtype}, which a kernel library cannot take "
                            f"(DLPack has no code for Kiln's storage of it); supported: {', '.join(DLPACK_DTYPES)}")
        shape = [int(d) for d in v.shape]
        size = 1
        for d in shape:
            size *= d
        code, bits = DLPACK_DTYPES[dtype]
        return {"name": v.name, "cname": c_identifier(v.name), "shape": shape, "dtype": dtype,
                "ctype": CRenderer().ctype(v.dtype), "itemsize": v.dtype.itemsize, "size": size,
                "dlpack_code": code, "dlpack_bits": bits}

    # -- what the library is --------------------------------------------------------------
    @property
    def workspace_size(self) -> int:
        return self.compiled.arena_size

    @property
    def weights(self) -> bytes:
        return self.compiled.result.plan.weights

    def manifest(self) -> dict:
        from kiln import __version__

        def io(ts):
            return [{k: t[k] for k in ("name", "cname", "shape", "dtype", "ctype")} for t in ts]

        return {
            "format": "kiln-kernel-1", "kiln_version": __version__, "name": self.name, "target": self.compiled.target,
            "origin": self.origin, "layout": LAYOUT,
            "inputs": io(self.inputs), "outputs": io(self.outputs),
            "workspace_size": self.workspace_size, "workspace_alignment": WORKSPACE_ALIGNMENT,
            "weights_size": len(self.weights),
            "symbols": {"call": self.name, "with_workspace": f"{self.name}_with_workspace",
                        "run": f"{self.name}_run", "workspace_size": f"{self.name}_workspace_size",
                        "manifest": f"{self.name}_manifest", "strerror": f"{self.name}_strerror",
                        "tvm_ffi": f"__tvm_ffi_{self.name}"},
            "tuning": {"db": str(self.db) if self.db is not None else None,
                       "kernels": [{"name": k.name, "outputs": list(k.outputs), "trace": list(k.trace)}
                                   for k in self.compiled.result.kernels]},
        }

    def _context(self) -> dict:
        from kiln import __version__

        params = [f"const {t['ctype']}* {t['cname']}" for t in self.inputs] + \
                 [f"{t['ctype']}* {t['cname']}" for t in self.outputs]
        ws = self.workspace_size
        return dict(version=__version__, name=self.name, NAME=self.name.upper(), target=self.compiled.target,
                    prefix=self.compiled.result.source.prefix, inputs=self.inputs, outputs=self.outputs,
                    params=", ".join(params), workspace_size=ws,
                    workspace_rounded=-(-ws // WORKSPACE_ALIGNMENT) * WORKSPACE_ALIGNMENT)

    @property
    def files(self) -> dict[str, str]:
        """The library's sources by file name: model.c/h, <name>.c/h, manifest.json."""
        from kiln.codegen.templates import render

        ctx = self._context()
        manifest_text = json.dumps(self.manifest(), indent=2)
        files = dict(self.compiled.files)
        files[f"{self.name}.h"] = render("kernel.h.j2", **ctx)
        files[f"{self.name}.c"] = render("kernel.c.j2", weights_size=len(self.weights),
                                         weights_storage=max(len(self.weights), 1),
                                         weights_literal=c_bytes(self.weights),
                                         manifest_literal=c_string(json.dumps(self.manifest())), **ctx)
        files["manifest.json"] = manifest_text + "\n"
        return files

    def header(self) -> str:
        return self.files[f"{self.name}.h"]

    # -- building ----------------------------------------------------------------------
    def build(self, directory=None, *, extra_flags=(), tvm_ffi: bool = False) -> Path:
        """Write the sources and compile ``lib<name>.so`` into ``directory`` (a cache directory
        keyed by the sources when None); with ``tvm_ffi`` also ``lib<name>_tvm_ffi.so``.
        Returns the path of ``lib<name>.so``."""
        files = self.files
        out = Path(directory) if directory is not None else _cache_directory(files, extra_flags)
        out.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            write_if_changed(out / fname, text)
        lib = out / f"lib{self.name}.so"
        sources = ["model.c", f"{self.name}.c"]
        compile_library(out, sources, lib, list(extra_flags))
        self._built["c"] = lib
        if tvm_ffi:
            from kiln.kernel.tvm_ffi import build_tvm_ffi

            self._built["tvm_ffi"] = build_tvm_ffi(self, out, extra_flags)
        return lib

    def library_path(self) -> Path:
        return self._built.get("c") or self.build()

    # -- calling ---------------------------------------------------------------------
    def callable(self):
        """The DLPack callable (``kiln.kernel.dlpack.DLPackKernel``) over the built library."""
        from kiln.kernel.dlpack import DLPackKernel

        if getattr(self, "_callable", None) is None:
            self._callable = DLPackKernel(self.library_path(), self.name, self.inputs, self.outputs,
                                          self.workspace_size)
        return self._callable

    def __call__(self, *tensors, out=None):
        return self.callable()(*tensors, out=out)

    def torch_op(self, qualname: str | None = None):
        from kiln.kernel.torch_op import register

        return register(self, qualname)

    def tvm_ffi_module(self):
        from kiln.kernel.tvm_ffi import load

        return load(self)

    def __repr__(self) -> str:
        def sig(ts):
            return ", ".join(f"{t['name']}: {t['dtype']}{t['shape']}" for t in ts)

        return f"<kiln kernel {self.name}({sig(self.inputs)}) -> ({sig(self.outputs)})>"


def write_if_changed(path: Path, text: str) -> None:
    """Write atomically, and not at all when unchanged: processes building one cached library
    at once (pytest-xdist workers) never see a half-written source, and gcc is not rerun."""
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cache_directory(files: dict[str, str], extra_flags) -> Path:
    from kiln.targets.host import cache_dir

    h = hashlib.sha256(" ".join(extra_flags).encode())
    for fname in sorted(files):
        h.update(fname.encode() + b"\0" + files[fname].encode() + b"\0")
    return cache_dir() / f"kernel_{h.hexdigest()[:24]}"


def compile_library(directory: Path, sources: list[str], output: Path, extra_flags: list[str],
                    link: list[str] = ()) -> Path:
    """gcc the sources in ``directory`` into the shared library ``output`` (atomically)."""
    from kiln.codegen.templates import numbered
    from kiln.targets.host import CFLAGS, compiler_path

    flags = CFLAGS + LIBRARY_FLAGS + list(extra_flags)
    stamp = output.with_suffix(output.suffix + ".flags")
    key = " ".join(flags + sources + list(link))
    if output.exists() and stamp.exists() and stamp.read_text() == key and \
            all(output.stat().st_mtime >= (directory / s).stat().st_mtime for s in sources):
        return output
    with tempfile.TemporaryDirectory(prefix="kiln_kernel_") as tmp:
        tmp_lib = Path(tmp) / output.name
        cmd = [compiler_path(), *flags, f"-I{directory}", "-o", str(tmp_lib),
               *[str(directory / s) for s in sources], *link, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            m = re.search(r"([\w.]+\.c):(\d+):", proc.stderr)
            excerpt = ""
            if m and (directory / m.group(1)).exists():
                lines = numbered((directory / m.group(1)).read_text()).splitlines()
                n = int(m.group(2))
                excerpt = f"\n\n--- {m.group(1)} ---\n" + "\n".join(lines[max(0, n - 5): n + 4])
            raise ToolchainError(f"the C compiler rejected the kernel library:\n{proc.stderr.strip()}{excerpt}")
        staged = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        shutil.move(str(tmp_lib), staged)
        staged.replace(output)
    write_if_changed(stamp, key)
    return output
