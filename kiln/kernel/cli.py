"""``kiln compile MODEL --kernel NAME [--nodes START:STOP] [--tvm-ffi]``: a kernel library on disk."""
from __future__ import annotations

import time
from pathlib import Path

import click

from kiln.errors import KilnError


def parse_nodes(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        return int(start), int(stop)
    except ValueError:
        raise click.BadParameter(f"expected START:STOP node indices (e.g. 0:3); got {text!r}",
                                 param_hint="'--nodes'") from None


def compile_kernel(model: str, name: str | None, output: str | None, shapes, db, nodes: str | None,
                   tvm_ffi: bool, emit: str | None) -> None:
    from kiln.kernel import kernel

    if name is None:
        raise click.UsageError("--nodes and --tvm-ffi build a kernel library: add --kernel NAME")
    if emit is not None:
        raise KilnError("--emit selects files of a project; a --kernel library writes its fixed set "
                        "(libNAME.so, NAME.h, manifest.json and the sources)")
    t0 = time.perf_counter()
    lib = kernel(model, name=name, nodes=parse_nodes(nodes), input_shapes=shapes, db=db)
    out = Path(output) if output else Path("build") / name
    so = lib.build(out, tvm_ffi=tvm_ffi)
    click.echo(f"compiled {lib!r} in {time.perf_counter() - t0:.2f} s -> {out}/")
    for path in sorted(p for p in out.iterdir() if p.is_file() and not p.name.endswith(".flags")):
        click.echo(f"  {path.name}  ({path.stat().st_size} bytes)")
    click.echo(f"link with: -L{out} -l{name} -Wl,-rpath,{so.parent.resolve()}")
