"""The kernel library through TVM-FFI, the stable C ABI that TVM, FlashInfer and others load.

``lib<name>_tvm_ffi.so`` holds the kernel (the same sources as ``lib<name>.so``) plus one
exported symbol ``__tvm_ffi_<name>`` with TVM-FFI's packed-call signature
``int(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result)``, written in
plain C against ``tvm/ffi/c_api.h``. ``tvm_ffi.load_module(path).<name>(*inputs, *outputs)``
then calls it with tensors from numpy, PyTorch or any DLPack producer; errors come back as
Python exceptions raised through ``TVMFFIErrorSetRaisedFromCStr``.
"""
from __future__ import annotations

from pathlib import Path

from kiln.errors import KilnError

PACKAGE = "apache-tvm-ffi==0.1.14.post1"


def _libinfo():
    try:
        import tvm_ffi.libinfo as libinfo
    except ImportError:
        raise KilnError(f"the TVM-FFI export needs the tvm_ffi package: pip install '{PACKAGE}'") from None
    return libinfo


def wrapper_source(library) -> str:
    from kiln.codegen.templates import render

    ctx = library._context()
    specs = library.inputs + library.outputs
    return render("kernel_tvm_ffi.c.j2", specs=specs, max_ndim=max([len(s["shape"]) for s in specs] + [1]), **ctx)


def build_tvm_ffi(library, directory: Path, extra_flags=()) -> Path:
    """Compile ``lib<name>_tvm_ffi.so`` in ``directory`` (where ``library.build`` wrote the sources),
    linked against libtvm_ffi with an rpath, so that it loads from any process."""
    from kiln.kernel.library import compile_library, write_if_changed

    libinfo = _libinfo()
    include = libinfo.find_include_path()
    dlpack = libinfo.find_dlpack_include_path()
    libdir = str(Path(libinfo.find_libtvm_ffi()).parent)
    source = f"{library.name}_tvm_ffi.c"
    text = wrapper_source(library)
    write_if_changed(Path(directory) / source, text)
    out = Path(directory) / f"lib{library.name}_tvm_ffi.so"
    flags = [f"-I{include}", f"-I{dlpack}", *extra_flags]
    return compile_library(Path(directory), ["model.c", f"{library.name}.c", source], out, flags,
                           link=[f"-L{libdir}", "-ltvm_ffi", f"-Wl,-rpath,{libdir}"])


def load(library):
    """``tvm_ffi.load_module`` of the library's TVM-FFI build (built into its cache directory)."""
    _libinfo()
    import tvm_ffi

    directory = library.library_path().parent
    path = library._built.get("tvm_ffi") or build_tvm_ffi(library, directory)
    library._built["tvm_ffi"] = path
    return tvm_ffi.load_module(str(path))
