"""Tuned Kiln against TVM MetaSchedule at the same trial budget, on this machine.

    python benchmarks/tvm_metaschedule.py                          # gemm, conv, resnet18; 64 trials each
    python benchmarks/tvm_metaschedule.py --workloads gemm --trials 256
    python benchmarks/tvm_metaschedule.py --write                  # docs/benchmarks/tvm_metaschedule.md
    python benchmarks/tvm_metaschedule.py --quick                  # tiny sizes, 4 trials: a smoke run

Workloads: ``gemm`` (MatMul 1024^3 fp32, the weight a constant), ``conv`` (the ResNet-18 3x3
conv, 1x64x56x56 -> 64, no bias) and ``resnet18`` (examples/models.py ``resnet_style(18)``
at 224). For each, both tools get the same budget of ``--trials`` measured candidates (for
the model: in all, across its tasks) and the same batch size (``--batch-size``: candidates
measured between two cost-model updates):

- MetaSchedule (``tvm.s_tir.meta_schedule``): ONNX -> Relax (``from_onnx``, weights bound as
  constants, batch norms folded into the convs as Kiln folds them), the passes ``compile_relax`` runs before it applies a database (so that the
  database keys match), ``tune_relax`` (XGB cost model, evolutionary search, gradient task
  scheduler) into a JSON database under ``--work-dir``, then ``compile_relax`` with it; by
  default with Relax's CPU weight prepacking (``--no-ms-prepack``: off): the constant weights
  are layout-free, so a schedule may choose their layout, folded at compile time. Its
  LocalBuilder gets ``--workers`` processes and a ``--build-timeout`` (the 30 s default
  killed every build on 2 busy cores); target: ``kiln.bench.tvm_target()`` plus
  ``num-cores`` = 2, which MetaSchedule requires.
- Kiln: ``kiln.tune(model, trials=N, db=fresh dir, batch_size=B)`` with ``--workers`` gcc
  processes, then ``kiln.compile(model, db=...)``.

Both compiled models are checked against ONNX Runtime (max |err| / max |ref| <= 1e-3), then
timed with the suite's harness (kiln.bench: warm-up, interleaved rounds in shuffled order,
median) beside the untuned Kiln, 2 threads each (TVM_NUM_THREADS=2, OMP_NUM_THREADS=2). The
table reports both medians, TVM/Kiln (above 1: tuned Kiln is faster) and each tool's tuning
wall time. Importing TVM's tensor intrinsics (a one-time ~15 s parse of TVMScript, done by
MetaSchedule's first task) happens before its clock starts; so does importing Kiln.

Timing-sensitive: run it on a quiet machine (the load average is recorded before and after).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # before numpy, TVM and Kiln's OpenMP runtime load

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT_MD = ROOT / "docs" / "benchmarks" / "tvm_metaschedule.md"
WORKLOADS = ("gemm", "conv", "resnet18")
RTOL = 1e-3  # both tuned outputs against ONNX Runtime: max |err| / max |ref|


# -- workloads -----------------------------------------------------------------------------

def _model(nodes, inputs, outputs, initializers):
    import onnx
    from onnx import helper, numpy_helper

    def vi(name, shape):
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "tvm_metaschedule", [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                              initializer=[numpy_helper.from_array(a, n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def gemm_model(n: int):
    """y = x @ w, n^3, w a constant (as benchmarks/cost_models/search_curves.py builds it)."""
    from onnx import helper

    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", (n, n))], [("y", (n, n))], [("w", w)])


def conv_model(size: int, channels: int):
    """One ResNet-18 3x3 conv: 1 x C x H x W -> C, stride 1, pad 1, no bias (BN follows it)."""
    from onnx import helper

    w = (np.random.default_rng(0).standard_normal((channels, channels, 3, 3))
         / np.sqrt(9 * channels)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    shape = (1, channels, size, size)
    return _model([node], [("x", shape)], [("y", shape)], [("w", w)])


def make_workloads(names, quick: bool) -> list:
    """kiln.bench Workloads; ``quick``: tiny sizes for a smoke run."""
    from examples import models as M
    from kiln.bench import Workload

    n = 128 if quick else 1024
    size, ch = (14, 16) if quick else (56, 64)
    image, width = (32, 8) if quick else (224, 64)
    table = {
        "gemm": lambda: Workload("gemm", "kernel", "gemm", f"MatMul {n}^3 fp32, constant weight",
                                 lambda: gemm_model(n), flops=2.0 * n ** 3),
        "conv": lambda: Workload("conv", "kernel", "conv", f"3x3 conv 1x{ch}x{size}x{size} -> {ch}, pad 1",
                                 lambda: conv_model(size, ch), flops=2.0 * size * size * ch * ch * 9),
        "resnet18": lambda: Workload("resnet18", "model", "models",
                                     f"resnet_style(18), {image}x{image}" + (f", width {width}" if quick else ""),
                                     lambda: M.resnet_style(18, image=image, width=width)),
    }
    return [table[name]() for name in names]


# -- MetaSchedule --------------------------------------------------------------------------

def ms_target():
    """kiln.bench's TVM target plus ``num-cores`` (MetaSchedule refuses a target without it):
    the threads each tool gets when timed."""
    import tvm

    from kiln.bench import THREADS, tvm_target

    return tvm.target.Target({**dict(tvm_target().export()), "num-cores": THREADS})


def warm_tvm_imports() -> None:
    """MetaSchedule's first TuneContext imports TVM's tensor intrinsics (parsing hundreds of
    TVMScript functions: 15-40 s, longer the more modules are loaded). A fixed import cost,
    not search: done here, before the tuning clock starts and before Kiln's imports."""
    import psutil  # noqa: F401  (MetaSchedule's search needs it; apache-tvm does not declare it)
    import tvm.s_tir.meta_schedule  # noqa: F401
    import tvm.s_tir.tensor_intrin  # noqa: F401
    from tvm.relax.frontend.onnx import from_onnx  # noqa: F401


def relax_module(workload):
    """ONNX -> Relax with the weights bound as constants, batch norms folded into the convs
    before them (as Kiln does), the rest decomposed for inference (as Relax's
    static_shape_tuning_pipeline does): ResNet-18's convs then fuse with their epilogues."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    shapes = {k: list(v.shape) for k, v in workload.feeds().items()}
    mod = from_onnx(workload.model(), shape_dict=shapes, keep_params_in_input=False)
    return tvm.transform.Sequential([relax.transform.FoldBatchnormToConv2D(),
                                     relax.transform.DecomposeOpsForInference(),
                                     relax.transform.CanonicalizeBindings()])(mod)


def fused_for_tuning(mod, target, prepack: bool = False):
    """The passes ``compile_relax`` applies before ``MetaScheduleApplyDatabase``: tuning must
    see the same fused PrimFuncs, or the database has no record for what is compiled.
    ``prepack``: mark the constant weights layout-free (as Relax's static_shape_tuning_pipeline
    does with cpu_weight_prepack), so that schedules may choose their weight layout."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    seq = [*pipeline.library_dispatch_passes(target), relax.transform.LegalizeOps(),
           relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
           relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if prepack:
        seq.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(seq)(mod)


@dataclass
class MsOptions:
    workers: int = 1             # LocalBuilder processes
    build_timeout: float = 300.0
    run_timeout: float = 120.0
    batch_size: int = 8          # num_trials_per_iter
    min_repeat_ms: int = 100     # MetaSchedule's EvaluatorConfig default
    seed: int = 0
    verbose: bool = False        # MetaSchedule's INFO log on the console
    prepack: bool = True         # schedules choose the constant weights' layout (see fused_for_tuning)


@dataclass
class MsTuning:
    database: object
    tasks: int                 # extracted tasks
    tuned: int                 # tasks with a tuning record (a small budget leaves some untouched)
    seconds: float


def tune_metaschedule(workload, trials: int, work_dir: Path, opts: MsOptions) -> MsTuning:
    """MetaSchedule-tune ``workload`` with ``trials`` in all."""
    import tvm.s_tir.meta_schedule as ms

    target = ms_target()
    fused = fused_for_tuning(relax_module(workload), target, opts.prepack)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    # MetaSchedule's console handler takes this logger's level, which its previous run left at DEBUG
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.INFO if opts.verbose else logging.WARNING)
    t0 = time.perf_counter()
    db = ms.relax_integration.tune_relax(
        fused, {}, target, str(work_dir), max_trials_global=trials,
        num_trials_per_iter=min(opts.batch_size, trials),
        builder=ms.builder.LocalBuilder(max_workers=opts.workers, timeout_sec=opts.build_timeout),
        runner=ms.runner.LocalRunner(timeout_sec=opts.run_timeout, evaluator_config=ms.runner.EvaluatorConfig(
            number=3, repeat=1, min_repeat_ms=opts.min_repeat_ms)),
        seed=opts.seed)
    seconds = time.perf_counter() - t0
    tuned = sum(db.query_tuning_record(t.dispatched[0], target, t.task_name) is not None for t in tasks)
    return MsTuning(db, len(tasks), tuned, seconds)


def apply_database(database, workload, prepack: bool):
    """The fused module with the database's schedules applied (``MetaScheduleApplyDatabase``,
    as ``compile_relax`` does), and how many PrimFuncs took one."""
    import tvm
    from tvm import relax

    target = ms_target()
    fused = fused_for_tuning(relax_module(workload), target, prepack)
    with target, database, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase()(fused)
    count = sum(1 for f in applied.functions.values()
                if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False))
    return applied, count


def compile_with_database(database, workload, prepack: bool):
    """A Relax VM executable. Without ``prepack``: ``compile_relax``. With it, the tail of
    Relax's static_shape_tuning_pipeline: the weight-layout rewrites the schedules chose are
    split out of the kernels and folded into the constants at compile time, then relax.build
    (whose default CPU pipeline repeats the fusion: a no-op on the fused module, as when
    static_shape_tuning_pipeline's output goes to tvm.compile)."""
    import tvm
    import tvm.s_tir.meta_schedule as ms
    from tvm import relax

    target = ms_target()
    if not prepack:
        return ms.relax_integration.compile_relax(database, relax_module(workload), target, None)
    applied, _ = apply_database(database, workload, prepack)
    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                        relax.transform.FoldConstant()])(applied)
        return relax.build(mod, target=target)


class TunedTvmPeer:
    """kiln.bench peer: the Relax module compiled with a MetaSchedule database."""

    name = "tvm-ms"

    def __init__(self, database, prepack: bool):
        self.database, self.prepack = database, prepack

    def version(self) -> str:
        from kiln.bench import dist_version

        return (f"apache-tvm {dist_version('apache-tvm')} with apache-tvm-ffi {dist_version('apache-tvm-ffi')} "
                f"(MetaSchedule, {'weight prepack' if self.prepack else 'compile_relax'}, "
                f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']})")

    def prepare(self, workload):
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(compile_with_database(self.database, workload, self.prepack), tvm.cpu())
        feeds = workload.feeds()
        order = [vi.name for vi in workload.model().graph.input if vi.name in feeds]  # from_onnx's order
        args = [tvm.runtime.tensor(feeds[name]) for name in order]
        main = vm["main"]
        return lambda: main(*args)


# -- Kiln ----------------------------------------------------------------------------------

def tune_kiln(workload, trials: int, db: Path, workers: int, batch_size: int, seed: int = 0):
    """kiln.tune into a fresh database; (tasks, tasks given trials, seconds)."""
    import kiln
    from kiln.autotune.measure import MeasureOptions

    t0 = time.perf_counter()
    # verify_top=0: equal measurement budgets (the final re-timing would add some to Kiln's)
    result = kiln.tune(workload.model(), "host", trials=trials, db=str(db), batch_size=batch_size, seed=seed,
                       measure=MeasureOptions(builders=workers), verify_top=0)
    seconds = time.perf_counter() - t0
    return len(result.tasks), sum(1 for t in result.tasks if t["trials"]), seconds


# -- one workload --------------------------------------------------------------------------

@dataclass
class Result:
    workload: str
    description: str
    trials: int
    tvm_ms: float | None = None
    kiln_ms: float | None = None
    untuned_ms: float | None = None
    ratio: float | None = None          # TVM / Kiln: above 1, tuned Kiln is faster
    tvm_err: float | None = None        # max rel err against ONNX Runtime
    kiln_err: float | None = None
    tvm_matched: bool = False
    kiln_matched: bool = False
    tvm_tune_s: float | None = None
    kiln_tune_s: float | None = None
    tvm_tasks: int | None = None        # tasks extracted
    tvm_tuned: int | None = None        # tasks the budget reached
    kiln_tasks: int | None = None
    kiln_tuned: int | None = None
    notes: str = ""


def run_workload(workload, args, work_dir: Path, log) -> Result:
    from kiln import bench as B

    res = Result(workload.name, workload.description, args.trials)
    notes = []
    ms_db = None
    try:
        ms = tune_metaschedule(workload, args.trials, work_dir / f"{workload.name}-metaschedule",
                               MsOptions(args.workers, args.build_timeout, args.run_timeout, args.batch_size,
                                         args.min_repeat_ms, args.seed, args.verbose, args.ms_prepack))
        ms_db, res.tvm_tasks, res.tvm_tuned, res.tvm_tune_s = ms.database, ms.tasks, ms.tuned, ms.seconds
        log(f"[{workload.name}] MetaSchedule: {args.trials} trials over {ms.tuned} of {ms.tasks} tasks, "
            f"{ms.seconds:.0f} s")
        _, applied = apply_database(ms_db, workload, args.ms_prepack)
        if applied != ms.tuned:  # then TVM would be timed (partly) untuned without anyone noticing
            notes.append(f"the TVM build applies {applied} MetaSchedule records for {ms.tuned} tuned tasks")
    except Exception as e:  # noqa: BLE001  (a failed tuner is a note in the table, not the end of the run)
        notes.append(f"MetaSchedule tuning failed: {B.describe(e)}")
        log(f"[{workload.name}] {notes[-1]}")
    kiln_db = work_dir / f"{workload.name}-kiln"
    try:
        res.kiln_tasks, res.kiln_tuned, res.kiln_tune_s = tune_kiln(workload, args.trials, kiln_db, args.workers,
                                                                    args.batch_size, args.seed)
        log(f"[{workload.name}] Kiln: {args.trials} trials over {res.kiln_tuned} of {res.kiln_tasks} tasks, "
            f"{res.kiln_tune_s:.0f} s")
    except Exception as e:  # noqa: BLE001
        notes.append(f"Kiln tuning failed: {B.describe(e)}")
        log(f"[{workload.name}] {notes[-1]}")
        kiln_db = None
    peers = ([TunedTvmPeer(ms_db, args.ms_prepack)] if ms_db is not None else []) + \
            ([B.KilnPeer("host", db=kiln_db)] if kiln_db is not None else []) + \
            [B.KilnPeer("host", name="kiln-untuned")]
    opts = B.Options(repeats=args.repeats, warmup=2, min_sample_s=args.min_sample_ms / 1e3)
    add_timings(res, B.bench_workload(workload, peers, opts, log=log), notes)
    res.notes = "; ".join(notes)
    return res


def add_timings(res: Result, rows, notes: list) -> None:
    """The harness's rows (kiln.bench.Row) into ``res``: medians, errors against ONNX Runtime,
    and TVM/Kiln only when both answers matched; what went wrong goes to ``notes``."""
    by_peer = {r.peer: r for r in rows}
    for peer, prefix in (("tvm-ms", "tvm"), ("kiln", "kiln"), ("kiln-untuned", "untuned")):
        row = by_peer.get(peer)
        if row is None:
            continue
        if row.error:
            notes.append(f"{peer}: {row.error}")
            continue
        setattr(res, f"{prefix}_ms", row.median_ms)
        matched = row.max_rel_err is not None and row.max_rel_err <= RTOL
        if prefix != "untuned":
            setattr(res, f"{prefix}_err", row.max_rel_err)
            setattr(res, f"{prefix}_matched", matched)
        if not matched:
            notes.append(f"{peer} does not match ONNX Runtime (max rel err {row.max_rel_err}, "
                         f"{row.note or 'no reference'})")
    if res.tvm_matched and res.kiln_matched:  # no ratio of a wrong answer's time
        res.ratio = res.tvm_ms / res.kiln_ms


# -- report --------------------------------------------------------------------------------

def _ms(v):
    return "—" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _min(seconds):
    return "—" if seconds is None else f"{seconds / 60:.1f}"


def _tasks(tuned, total):
    return "—" if total is None else f"{tuned} of {total}"


def _err(v):
    return "—" if v is None else f"{v:.1e}"


def markdown_table(results) -> str:
    from kiln.bench import fmt_ratio, md_cell

    lines = ["| workload | TVM tuned ms | Kiln tuned ms | TVM/Kiln | Kiln untuned ms | tuning min TVM | "
             "tuning min Kiln | tasks tuned TVM / Kiln | max rel err TVM / Kiln | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.workload} | {_ms(r.tvm_ms)} | {_ms(r.kiln_ms)} | {fmt_ratio(r.ratio)} | "
                     f"{_ms(r.untuned_ms)} | {_min(r.tvm_tune_s)} | {_min(r.kiln_tune_s)} | "
                     f"{_tasks(r.tvm_tuned, r.tvm_tasks)} / {_tasks(r.kiln_tuned, r.kiln_tasks)} | "
                     f"{_err(r.tvm_err)} / {_err(r.kiln_err)} | "
                     f"{md_cell(r.notes, 300)} |")
    return "\n".join(lines)


def versions(args) -> list[str]:
    from kiln.bench import dist_version

    import kiln

    return [f"apache-tvm {dist_version('apache-tvm')}, apache-tvm-ffi {dist_version('apache-tvm-ffi')}, "
            f"kiln {kiln.__version__}, onnxruntime {dist_version('onnxruntime')} (reference), "
            f"Python {sys.version.split()[0]}",
            f"threads when timed: TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}, "
            f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"]


def write_markdown(path: Path, args, argv, results, loads) -> None:
    from kiln.bench import machine

    load = " / ".join("—" if v is None else f"{v:.2f}" for v in loads)
    text = "\n".join([
        "# Tuned Kiln against TVM MetaSchedule, same trial budget",
        "",
        f"Generated by `python benchmarks/tvm_metaschedule.py {' '.join(argv)}`"
        f" on {datetime.date.today().isoformat()}.",
        "",
        f"- machine: {machine()}",
        f"- load average (1 min) before / after: {load}",
        *[f"- {v}" for v in versions(args)],
        f"- budget: {args.trials} measured trials per workload for each tool (for the model, in all across its "
        f"tasks); {args.batch_size} candidates per batch; {args.workers} build worker(s) each; MetaSchedule "
        f"LocalBuilder timeout {args.build_timeout:.0f} s, EvaluatorConfig min_repeat_ms {args.min_repeat_ms}, "
        f"weight prepack {'on' if args.ms_prepack else 'off (compile_relax)'}",
        f"- timing: kiln.bench, {args.repeats} interleaved rounds, median; outputs checked against ONNX Runtime "
        f"(max rel err <= {RTOL:g})",
        "- TVM/Kiln above 1: tuned Kiln is faster. Tuning minutes: wall time of `tune_relax` and `kiln.tune`.",
        "- tasks tuned: the tasks the budget reached. The others run each tool's untuned code: Kiln's default "
        "schedule rules; for TVM, unscheduled TIR (Relax's CPU pipeline applies no DLight rules).",
        "",
        markdown_table(results),
        "",
        "Workloads: " + "; ".join(f"{r.workload}: {r.description}" for r in results) + ".",
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- command line --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    p.add_argument("--trials", type=int, help="measured candidates per workload for each tool (default 64; "
                                              "--quick: 4)")
    p.add_argument("--batch-size", type=int, default=8, help="candidates per batch for both tools "
                                                            "(MetaSchedule: num_trials_per_iter)")
    p.add_argument("--workers", type=int, default=1, help="parallel builds for both tools (keep 1-2 on 2 cores)")
    p.add_argument("--build-timeout", type=float, default=300.0, help="MetaSchedule LocalBuilder timeout, s")
    p.add_argument("--run-timeout", type=float, default=120.0, help="MetaSchedule LocalRunner timeout, s")
    p.add_argument("--min-repeat-ms", type=int, help="MetaSchedule EvaluatorConfig (default 100, --quick 10)")
    p.add_argument("--repeats", type=int, help="timed rounds (default 10, --quick 3)")
    p.add_argument("--min-sample-ms", type=float, default=20.0, help="a sample repeats a fast call this long")
    p.add_argument("--ms-prepack", action=argparse.BooleanOptionalAction, default=True,
                   help="MetaSchedule may choose the constant weights' layout, folded at compile time "
                        "(Relax's cpu_weight_prepack; default on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 4 trials, 3 rounds: a smoke run")
    p.add_argument("--work-dir", help="keep MetaSchedule's and Kiln's databases here (default: a temp dir)")
    p.add_argument("--write", action="store_true", help=f"write the report to {OUT_MD.relative_to(ROOT)}")
    p.add_argument("--out", help="with --write: this path instead")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--verbose", action="store_true", help="MetaSchedule's INFO log on the console too")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        p.error(f"--workloads: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(WORKLOADS)}")
    args.names = names
    args.trials = args.trials if args.trials is not None else 4 if args.quick else 64
    args.repeats = args.repeats if args.repeats is not None else 3 if args.quick else 10
    args.min_repeat_ms = args.min_repeat_ms if args.min_repeat_ms is not None else 10 if args.quick else 100
    for name in ("trials", "batch_size", "workers", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def old_databases(work_dir: Path, names) -> list[str]:
    """Databases a previous run left in ``work_dir``: both tuners would resume from them."""
    dirs = [work_dir / f"{name}-{tool}" for name in names for tool in ("metaschedule", "kiln")]
    return [d.name for d in dirs if d.is_dir() and any(d.iterdir())]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.work_dir and (used := old_databases(Path(args.work_dir), args.names)):
        print(f"error: {args.work_dir} already holds tuning databases ({', '.join(used)}); both tools must start "
              "from empty ones for an equal budget: give a fresh --work-dir", file=sys.stderr)
        return 2
    try:
        warm_tvm_imports()
    except ImportError as e:
        print(f"error: TVM MetaSchedule is not importable ({e}); pip install 'kiln[tvm]' "
              "(apache-tvm==0.27.0.post1, apache-tvm-ffi==0.1.14.post1) and psutil", file=sys.stderr)
        return 2
    from kiln import bench as B

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    load_before = B.load_average()
    if (warning := B.load_warning()):
        log(warning)
    results = []
    with tempfile.TemporaryDirectory(prefix="kiln-tvm-ms-") as tmp:
        work_dir = Path(args.work_dir or tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        for workload in make_workloads(args.names, args.quick):
            results.append(run_workload(workload, args, work_dir, log))
    loads = (load_before, B.load_average())
    print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"loads": loads, "results": [asdict(r) for r in results]}, indent=1))
    if args.write:
        path = Path(args.out) if args.out else OUT_MD
        write_markdown(path, args, argv, results, loads)
        log(f"wrote {path}")
    ok = all(r.tvm_matched and r.kiln_matched for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
