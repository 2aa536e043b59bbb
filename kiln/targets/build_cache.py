"""Builds cached by content: every target compiles generated files the same way.

The cache key is a digest of the compiler command and every file; the build runs in a
temporary directory and its artifact moves into the cache atomically, so concurrent builds
of one model (pytest-xdist, tuning workers) are safe and a recompile of an unchanged model
is a file lookup.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def source_digest(command: list[str], files: dict[str, str]) -> str:
    """24 hex digits naming a build of ``files`` by ``command``."""
    h = hashlib.sha256(" ".join(command).encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return h.hexdigest()[:24]


def build_cached(out: Path, files: dict[str, str], compile_in: Callable[[Path], Path],
                 prefix: str = "kiln_build_") -> Path:
    """``out`` when it exists; else ``files`` are written into a fresh directory,
    ``compile_in(directory)`` builds there (raising ToolchainError on failure) and returns its
    artifact, which then becomes ``out``."""
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for name, text in files.items():
            Path(tmp, name).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, name).write_text(text)
        artifact = compile_in(Path(tmp))
        tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
        shutil.move(str(artifact), tmp_out)
        os.replace(tmp_out, out)  # atomic
    return out
