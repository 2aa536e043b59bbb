"""The ``kiln`` command line: compile, run, inspect and benchmark models.

    kiln compile MODEL --target T [-o DIR] [--input-shape NAME=1,3,224,224] [--dim-bound batch=1..8]
                 [--db DIR] [--emit c,h,...] [--kernel NAME [--nodes START:STOP] [--tvm-ffi]]
    kiln run MODEL|DIR --target T --inputs in.npz [--outputs out.npz]
    kiln inspect MODEL [--print-ir-after STAGE] [--input-shape NAME=...]
    kiln bench MODEL --target host [--against ort,torch,tvm] [--repeats N] [--input-shape NAME=...]
    kiln tune MODEL --target host --trials N --db DIR [--cost-model xgb|xgb:MODEL.json|random|pkg.mod:Class]

Every error Kiln raises on purpose (``KilnError``) prints as ``kiln: error: <message>`` on
stderr with exit code 2 and no traceback. The compiler itself is imported inside each
command, so ``kiln --help`` stays fast.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from kiln.errors import InputError, KilnError
from kiln.targets import implemented, planned

DEFAULT_TARGET = "host"

# --emit kinds: a name -> the file-name patterns it selects in an exported project
EMIT_KINDS = {
    "c": ("*.c",),
    "h": ("*.h",),
    "cu": ("*.cu", "*.cuh"),
    "ptx": ("*.ptx",),
    "cubin": ("*.cubin",),
    "wgsl": ("*.wgsl",),
    "js": ("*.js", "*.mjs", "*.html"),
    "s": ("*.s", "*.S"),
    "ld": ("*.ld",),
    "weights": ("*.bin",),
    "makefile": ("Makefile", "*.mk"),
    "readme": ("README*",),
    "json": ("*.json",),
    "so": ("*.so",),
}


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("kiln")
    except PackageNotFoundError:
        import kiln

        return getattr(kiln, "__version__", "0+unknown")


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"kiln {_version()}")
        ctx.exit(0)


class InputShape(click.ParamType):
    """``NAME=D1,D2,...`` -> (name, (d1, d2, ...))."""

    name = "NAME=D1,D2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value)
        name, sep, dims = text.partition("=")
        name, dims = name.strip(), dims.strip()
        if not sep or not name or not dims:
            self.fail(f"expected NAME=D1,D2,... (e.g. input=1,3,224,224); got {text!r}", param, ctx)
        shape = []
        for d in (t.strip() for t in dims.split(",")):
            if d.isidentifier():  # a symbolic dim, bounded with --dim-bound
                shape.append(d)
                continue
            try:
                shape.append(int(d))
            except ValueError:
                self.fail(f"dimensions of {name!r} must be integers or dim names separated by commas "
                          f"(e.g. {name}=1,3,224,224 or {name}=batch,3,224,224); got {dims!r}", param, ctx)
        if any(isinstance(d, int) and d < 0 for d in shape):
            self.fail(f"dimensions of {name!r} must be non-negative; got {dims!r}", param, ctx)
        return name, tuple(shape)


class DimBound(click.ParamType):
    """``NAME=LO..HI`` or ``NAME=HI`` -> (name, (lo, hi))."""

    name = "NAME=LO..HI"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value)
        name, sep, rng = text.partition("=")
        lo, dots, hi = rng.partition("..")
        try:
            bound = (int(lo), int(hi)) if dots else (1, int(lo))
        except ValueError:
            bound = None
        if not sep or not name.strip().isidentifier() or bound is None:
            self.fail(f"expected NAME=LO..HI (e.g. batch=1..8) or NAME=HI; got {text!r}", param, ctx)
        return name.strip(), bound


def _shapes(pairs) -> dict[str, tuple[int, ...]] | None:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in pairs:
        if name in shapes and shapes[name] != shape:
            raise click.BadParameter(f"{name!r} is given twice with different shapes "
                                     f"{shapes[name]} and {shape}", param_hint="'--input-shape'")
        shapes[name] = shape
    return shapes or None


def _mcu_target(target: str, sram_budget: str | None, patch: str | None) -> str:
    """--sram-budget and --patch are target options: cortex-m4 -> cortex-m4:sram=256K,patch=4x4."""
    for flag, option, value in (("--sram-budget", "sram", sram_budget), ("--patch", "patch", patch)):
        if value is None:
            continue
        if not target.startswith("cortex-m"):
            raise KilnError(f"{flag} applies to microcontroller targets (cortex-m*); got --target {target}")
        target = f"{target}{',' if ':' in target else ':'}{option}={value}"
    return target


def _parse_emit(value: str | None) -> list[str] | None:
    if not value:
        return None
    kinds = [k.strip().lower() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in EMIT_KINDS]
    if unknown:
        raise click.BadParameter(f"unknown kind(s) {', '.join(unknown)}; valid kinds: "
                                 f"{', '.join(EMIT_KINDS)}", param_hint="'--emit'")
    return kinds


class KilnGroup(click.Group):
    """Turns a KilnError into ``kiln: error: ...`` on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KilnError as e:
            click.echo(f"kiln: error: {e}", err=True)
            ctx.exit(2)


input_shape_option = click.option(
    "--input-shape", "input_shapes", type=InputShape(), multiple=True, metavar="NAME=D1,D2,...",
    help="Static shape for a model input, e.g. input=1,3,224,224 (repeatable). Overrides "
         "the shape the model declares; needed for inputs with symbolic dimensions.")
dim_bound_option = click.option(
    "--dim-bound", "dim_bounds", type=DimBound(), multiple=True, metavar="NAME=LO..HI",
    help="Bounds of a symbolic (dynamic) dim, e.g. batch=1..8 (repeatable). The compiled model "
         "then runs every size in the range; its arena is sized for the upper bound.")
target_option = click.option(
    "--target", default=DEFAULT_TARGET, show_default=True, metavar="T",
    help=f"Target to compile for. Implemented: {', '.join(implemented())}."
         + (f" Planned: {', '.join(planned())}." if planned() else "")
         + " Options after a colon, e.g. arm64:+dotprod,+fp16, host:-winograd (3x3 convolutions "
           "stay direct), webgpu:+f16 (float16 values stored as halves; needs shader-f16) or "
           "webgpu:+subgroups (reductions combine through subgroup operations; needs subgroups).")


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli() -> None:
    """Kiln: compile ONNX models into tuned kernels and self-contained source for CPUs, Arm
    (NEON), NVIDIA GPUs (CUDA), browsers (WebGPU) and microcontrollers (C99); run, tune,
    quantize and benchmark them.

    \b
    Examples:
      kiln compile model.onnx --target host -o build/model
      kiln compile model.onnx --target cortex-m4 --sram-budget 256K -o build/mcu
      kiln tune model.onnx --target host --trials 256 --db tuning/
      kiln run build/model --target host --inputs in.npz --outputs out.npz
      kiln inspect model.onnx --print-ir-after fuse
      kiln bench model.onnx --target host --against ort,tvm
      kiln compile model.onnx --kernel block --nodes 3:7 --tvm-ffi -o out/   (a kernel library)
    """


@cli.command("compile", short_help="Compile a model into a self-contained source project.")
@click.argument("model", metavar="MODEL")
@target_option
@click.option("-o", "--output", "output", metavar="DIR", default=None,
              help="Directory for the generated project [default: build/<model name>].")
@input_shape_option
@dim_bound_option
@click.option("--db", metavar="DIR", default=None,
              help="Tuning database to apply the best records from.")
@click.option("--emit", metavar="KINDS", default=None,
              help="Comma-separated kinds of file to write, e.g. c,h (default: the whole "
                   f"project). Kinds: {', '.join(EMIT_KINDS)}.")
@click.option("--kernel", "kernel_name", metavar="NAME", default=None,
              help="Build a kernel library instead of a project: libNAME.so with a plain C ABI, "
                   "NAME.h and manifest.json (see kiln.kernel).")
@click.option("--nodes", metavar="START:STOP", default=None,
              help="With --kernel: compile only the model's nodes START..STOP-1 (graph order).")
@click.option("--tvm-ffi", "tvm_ffi", is_flag=True, default=False,
              help="With --kernel: also build libNAME_tvm_ffi.so, loadable by tvm_ffi.load_module.")
@click.option("--sram-budget", "sram_budget", metavar="SIZE", default=None,
              help="Microcontroller targets: the most RAM the arena may use, e.g. 256K; a model that "
                   "needs more runs its first layers patch by patch if that fits, else it is refused.")
@click.option("--patch", "patch", metavar="RxC", default=None,
              help="Microcontroller targets: run the first layers patch by patch on this output grid, "
                   "e.g. 4x4 (MCUNetV2-style; the stage with the smallest arena is taken).")
def compile_cmd(model: str, target: str, output: str | None, input_shapes, dim_bounds, db: str | None,
                emit: str | None, kernel_name: str | None = None, nodes: str | None = None,
                tvm_ffi: bool = False, sram_budget: str | None = None, patch: str | None = None) -> None:
    """Compile MODEL (an .onnx file) and write a self-contained source project.

    With --kernel NAME, write a kernel library for other runtimes instead (C ABI, DLPack,
    PyTorch custom op, TVM-FFI): e.g. kiln compile mlp.onnx --kernel mlp --nodes 0:3 -o out/
    """
    if kernel_name is not None or nodes is not None or tvm_ffi:
        from kiln.kernel.cli import compile_kernel

        return compile_kernel(model, kernel_name, output, _shapes(input_shapes), db, nodes, tvm_ffi, emit)
    kinds = _parse_emit(emit)
    target = _mcu_target(target, sram_budget, patch)
    shapes = _shapes(input_shapes)
    import kiln.api as api

    out_dir = Path(output) if output else Path("build") / (Path(model).stem or "model")
    t0 = time.perf_counter()
    compiled = api.compile(model, target=target, input_shapes=shapes, dim_bounds=dict(dim_bounds) or None,
                           db=db)
    seconds = time.perf_counter() - t0
    written = _export(compiled, out_dir, kinds)
    click.echo(f"compiled {model} for {target} in {seconds:.2f} s -> {out_dir}/")
    plan = getattr(getattr(compiled, "result", None), "plan", None)
    if plan is not None:
        click.echo(f"  memory: {plan.summary()}")
    for path in written:
        click.echo(f"  {path.relative_to(out_dir)}  ({path.stat().st_size} bytes)")


def _export(compiled, out_dir: Path, kinds: list[str] | None) -> list[Path]:
    """Export the project; with ``kinds``, keep only the files those kinds select."""
    if kinds is None:
        compiled.export(out_dir)
        return sorted(p for p in out_dir.rglob("*") if p.is_file())
    patterns = [pat for k in kinds for pat in EMIT_KINDS[k]]
    written = []
    with tempfile.TemporaryDirectory(prefix="kiln-export-") as tmp:
        compiled.export(tmp)
        for src in sorted(Path(tmp).rglob("*")):
            if src.is_file() and any(src.match(pat) for pat in patterns):
                dst = out_dir / src.relative_to(tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                written.append(dst)
    if not written:
        raise KilnError(f"--emit {','.join(kinds)} selected no files; this target writes "
                        "other kinds (run without --emit to see them)")
    return written


@cli.command("run", short_help="Run a model or a compiled directory on inputs from a .npz file.")
@click.argument("model", metavar="MODEL|DIR")
@target_option
@click.option("--inputs", "inputs_path", required=True, metavar="in.npz",
              help="Inputs as a .npz file, one array per model input name.")
@click.option("--outputs", "outputs_path", default=None, metavar="out.npz",
              help="Write the outputs to this .npz file.")
@input_shape_option
def run_cmd(model: str, target: str, inputs_path: str, outputs_path: str | None, input_shapes) -> None:
    """Compile MODEL (or load a compiled DIR) and run it on the inputs in a .npz file."""
    import numpy as np

    inputs = _load_npz(inputs_path)
    shapes = _shapes(input_shapes)
    import kiln.api as api

    if os.path.isdir(model):
        if target != "host":
            raise KilnError(f"loading a compiled directory runs on the host target only; got "
                            f"--target {target}. Pass the .onnx model to run on {target}.")
        compiled = api.load(model)
    else:
        if shapes is None:
            shapes = _shapes_from_inputs(model, inputs)
        compiled = api.compile(model, target=target, input_shapes=shapes)
    build = getattr(compiled, "build", None)
    if callable(build):  # build ahead so that the time below is the run alone
        build()
    t0 = time.perf_counter()
    outputs = compiled.run(inputs)
    ms = (time.perf_counter() - t0) * 1e3
    for name, value in outputs.items():
        value = np.asarray(value)
        click.echo(f"{name}: {value.dtype}[{', '.join(str(d) for d in value.shape)}]")
    click.echo(f"ran in {ms:.3f} ms")
    if outputs_path:
        np.savez(outputs_path, **{k: np.asarray(v) for k, v in outputs.items()})
        click.echo(f"wrote {outputs_path}")


def _load_npz(path: str) -> dict:
    import numpy as np

    if not os.path.isfile(path):
        raise InputError(f"inputs file {path!r} does not exist; expected a .npz file "
                         "(numpy.savez) with one array per model input")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("it holds a single array, not named arrays")
            return {k: data[k] for k in data.files}
    except Exception as e:  # numpy raises ValueError, OSError, zipfile errors
        raise InputError(f"cannot read inputs {path!r} ({e}); expected a .npz file written by "
                         "numpy.savez with one array per model input") from None


def _shapes_from_inputs(model: str, inputs: dict) -> dict | None:
    """Shapes of the given arrays for model inputs whose declared shape is not static."""
    try:
        import onnx

        proto = onnx.load(model, load_external_data=False)
    except Exception:
        return None  # kiln.compile reports the bad file
    inits = {t.name for t in proto.graph.initializer}
    shapes = {}
    for vi in proto.graph.input:
        if vi.name in inits or vi.name not in inputs:
            continue
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims) and len(dims) == inputs[vi.name].ndim:
            shapes[vi.name] = tuple(int(d) for d in inputs[vi.name].shape)
    return shapes or None


@cli.command("inspect", short_help="Print the graph IR, kernel count and arena size of a model.")
@click.argument("model", metavar="MODEL")
@click.option("--print-ir-after", "print_ir_after", metavar="STAGE", default=None,
              help="Print the IR after this pipeline stage (an unknown name lists the valid ones).")
@input_shape_option
@dim_bound_option
@click.option("--quant", is_flag=True,
              help="For a QDQ model: per-layer quantization error (scale, SQNR, max error in steps).")
@click.option("--inputs", "inputs_path", default=None, metavar="in.npz",
              help="Inputs for --quant (default: seeded random normal values).")
@target_option
@click.option("--sram-budget", "sram_budget", metavar="SIZE", default=None,
              help="As for compile: microcontroller arena budget (patches the first layers if needed).")
@click.option("--patch", "patch", metavar="RxC", default=None,
              help="As for compile: run the first layers patch by patch on this grid.")
def inspect_cmd(model: str, print_ir_after: str | None, input_shapes, dim_bounds, quant: bool = False,
                inputs_path: str | None = None, target: str = DEFAULT_TARGET, sram_budget: str | None = None,
                patch: str | None = None) -> None:
    """Print the graph IR of MODEL with its kernel count and arena size."""
    if quant:
        from kiln.quantization.report import quant_report

        click.echo(quant_report(model, _load_npz(inputs_path) if inputs_path else None))
        return
    shapes = _shapes(input_shapes)
    import kiln.api as api

    text = api.inspect(model, input_shapes=shapes, dim_bounds=dict(dim_bounds) or None,
                       print_ir_after=print_ir_after, target=_mcu_target(target, sram_budget, patch))
    click.echo(text, nl=not text.endswith("\n"))


BENCH_PEERS = ("ort", "torch", "tvm")


def _parse_against(value: str) -> list[str]:
    peers = [p.strip().lower() for p in value.split(",") if p.strip()]
    unknown = [p for p in peers if p not in BENCH_PEERS]
    if unknown:
        raise click.BadParameter(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(BENCH_PEERS)}",
                                 param_hint="'--against'")
    return list(dict.fromkeys(peers))


@cli.command("bench", short_help="Time a compiled model against ONNX Runtime, PyTorch or TVM.")
@click.argument("model", metavar="MODEL")
@target_option
@click.option("--against", default="ort", show_default=True, metavar="PEERS",
              help=f"Comma-separated peers to time beside Kiln: {', '.join(BENCH_PEERS)}. torch has no "
                   "definition for an ONNX file and is reported as skipped; a missing package "
                   "(e.g. apache-tvm) is reported as not installed.")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed rounds; each runs every peer once, in a shuffled order (median reported).")
@input_shape_option
def bench_cmd(model: str, target: str, against: str, repeats: int, input_shapes) -> None:
    """Compile MODEL (an .onnx file) and time it against other engines on random inputs.

    Every engine uses 2 threads. Prints a markdown table: median and p10-p90 time, GFLOP/s
    (2 per multiply-add of the convolutions and matrix products), the largest relative error
    against ONNX Runtime, and each peer's time relative to Kiln (above 1: Kiln is faster);
    then Kiln's share of this machine's peak, measured on the same threads.
    """
    peers = _parse_against(against)
    shapes = _shapes(input_shapes)
    if target != DEFAULT_TARGET:
        raise KilnError(f"kiln bench times models on the host target only; got --target {target}")
    from kiln import bench

    workload = bench.onnx_workload(model, shapes)
    workload.feeds()  # a symbolic input dim without --input-shape: one clear error, now
    warning = bench.load_warning()
    if warning:
        click.echo(warning, err=True)
    rows = bench.bench_workload(workload, bench.make_peers(["kiln", *peers], target),
                                bench.Options(repeats=repeats), log=lambda s: click.echo(s, err=True))
    click.echo(bench.markdown_table(rows))
    for peer in peers:
        click.echo(bench.ratio_summary(rows, peer, [workload.name]))
    roofline = bench.roofline_summary(rows, workload)
    if roofline:
        click.echo(roofline)
    if not any(r.peer == "kiln" and r.ok for r in rows):
        sys.exit(1)  # the table says why Kiln did not run; scripts should notice


@cli.command("tune", short_help="Tune a model's kernels on this machine into a tuning database.")
@click.argument("model", metavar="MODEL")
@target_option
@click.option("--trials", type=click.IntRange(min=0), default=64, show_default=True,
              help="Measurements for the whole model, counting those already in the database "
                   "(rerunning resumes).")
@click.option("--db", metavar="DIR", required=True, help="Tuning database directory (created if missing).")
@click.option("--cost-model", "cost_model", default="xgb", show_default=True, metavar="MODEL",
              help="xgb, xgb:MODEL.json (XGB starting from a model trained on other tasks), random, "
                   "or a class pkg.mod:Class implementing kiln.autotune.cost_model.CostModel.")
@click.option("--search", type=click.Choice(["evolutionary", "random"]), default="evolutionary",
              show_default=True, help="evolutionary: guided by the cost model; random: pure random search.")
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Candidates measured per round.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--curve", metavar="PNG", default=None,
              help="Where to draw the tuning curve [default: DIR/tuning_curve.png].")
@click.option("--quiet", is_flag=True, help="No live progress table.")
@input_shape_option
def tune_cmd(model: str, target: str, trials: int, db: str, cost_model: str, search: str, batch_size: int,
             seed: int, curve: str | None, quiet: bool, input_shapes) -> None:
    """Tune MODEL's kernels: measure candidate schedules, keep the best in DIR.

    Then `kiln compile MODEL --db DIR` builds the model with the best records.
    """
    from kiln.autotune.progress import LiveTable
    from kiln.autotune.tuner import tune

    live = None if quiet else LiveTable()
    try:
        result = tune(model, target=target, trials=trials, db=db, cost_model=cost_model, search=search,
                      batch_size=batch_size, seed=seed, progress=live, input_shapes=_shapes(input_shapes),
                      curve=curve or str(Path(db) / "tuning_curve.png"))
    finally:
        if live is not None:
            live.close()
    click.echo(result.summary())


from kiln.quantization.cli import register as _register_quantize  # noqa: E402

_register_quantize(cli)  # kiln quantize


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``kiln``)."""
    cli.main(args=argv, prog_name="kiln")


if __name__ == "__main__":
    main(sys.argv[1:])
