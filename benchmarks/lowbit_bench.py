"""Low-bit acceptance benchmarks (issue #6), side by side in one run.

    python benchmarks/lowbit_bench.py                 # all three, writes nothing
    python benchmarks/lowbit_bench.py --write         # docs/benchmarks/lowbit.md
    python benchmarks/lowbit_bench.py --quick         # tiny sizes: a smoke run (the tests use it)
    python benchmarks/lowbit_bench.py --only gemv_w4_g128 --repeats 20

Each workload times its peers with the suite's harness (``kiln.bench``: outputs checked
against ONNX Runtime on the workload's model, then interleaved rounds in a shuffled order,
median and p10-p90 of the samples), and each target is a ratio of two medians from the same
rounds, so machine load shifts both sides alike:

- ``gemm_int8``: ``x @ W``, 1024^3, W constant. The float model quantized by
  ``kiln.quantize`` (QDQ, int8 weights, uint8 activations) and compiled to Kiln's integer
  kernel, against Kiln's fp32 GEMM of the float model. Target: fp32 / int8 >= 1.5.
- ``gemv_w4_g32`` / ``gemv_w4_g128``: ``x @ W``, 1 x 4096 x 11008 (a LLaMA-7B FFN row),
  weights quantized by ``kiln.quantize_weights(bits=4)``; Kiln's ``matmul_wq`` against Kiln's
  fp32 GEMV, with ONNX Runtime's MatMulNBits on the same model as a peer. Target >= 3.
- ``resnet18_int8``: ``examples.models.resnet_style(18)`` at 224x224 quantized by
  ``kiln.quantize`` (ONNX Runtime's ``quantize_static`` underneath), the same QDQ model in
  Kiln and in ONNX Runtime (2 intra-op threads, all graph optimizations). Target: ORT / Kiln
  >= 1.3.
- ``bert_int8_dynamic``: ``examples.models.bert_encoder`` (2 layers of BERT-base) quantized by
  ONNX Runtime's ``quantize_dynamic`` (int8 weights, activations quantized at run time), in
  Kiln and in ONNX Runtime. Target: ORT / Kiln >= 1.0 (no issue sets one; Kiln should not
  lose on a model quantized the way transformers usually are).

Every peer uses 2 threads (OMP_NUM_THREADS / intra_op_num_threads).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import models as M  # noqa: E402
from kiln import bench as B  # noqa: E402

OUT_MD = ROOT / "docs" / "benchmarks" / "lowbit.md"


# -- models ----------------------------------------------------------------------------------------

def linear(m: int, k: int, n: int):
    """``y = x @ W`` with a constant W (k, n), seeded."""
    b = M._Builder(f"linear_{m}x{k}x{n}", seed=0)
    w = b.normal((k, n), 1.0 / np.sqrt(k), "w")
    b.op("MatMul", [b.input("x", [m, k]), w], out="y")
    b.output("y", [m, n])
    return b.model()


def _calibration(model, samples: int) -> dict[str, np.ndarray]:
    feeds = [B.random_inputs(model, seed=100 + s) for s in range(samples)]
    return {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}


def int8_qdq(model, samples: int = 4):
    import kiln

    return kiln.quantize(model, _calibration(model, samples))


def int8_dynamic(model):
    """ONNX Runtime's ``quantize_dynamic``: int8 weights, activations quantized at run time
    (DynamicQuantizeLinear + MatMulInteger), the usual way to quantize a transformer."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def weight_only(model, group: int):
    import kiln

    return kiln.quantize_weights(model, bits=4, group_size=group)


# -- peers: each times its own model on the workload's inputs --------------------------------------

@dataclass
class KilnModel:
    """Kiln on a given model (the int8 one, or the float one it came from)."""

    name: str
    model: Callable[[], object]

    def version(self) -> str:
        import kiln

        return f"kiln {kiln.__version__} (host, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"

    def prepare(self, workload):
        import kiln

        compiled = kiln.compile(self.model(), target="host")
        compiled.build()
        feeds = workload.feeds()
        return lambda: compiled.run(feeds)


@dataclass
class OrtModel:
    name: str
    model: Callable[[], object]

    def version(self) -> str:
        return B.OrtPeer().version()

    def prepare(self, workload):
        sess = B.ort_session(self.model())
        feeds, names = workload.feeds(), workload.output_names()
        return lambda: sess.run(names, feeds)


@dataclass
class Case:
    workload: B.Workload
    peers: list
    target: tuple[str, str, float]   # (slower peer, faster peer, required ratio)
    what: str


def _cached(fn):
    box = []

    def get():
        if not box:
            box.append(fn())
        return box[0]
    return get


def cases(quick: bool) -> list[Case]:
    g = (64, 64, 64) if quick else (1024, 1024, 1024)
    v = (1, 256, 512) if quick else (1, 4096, 11008)
    image, depth = (32, 10) if quick else (224, 18)
    out = []

    f_gemm = _cached(lambda: linear(*g))
    q_gemm = _cached(lambda: int8_qdq(f_gemm()))
    name = f"gemm_int8_{g[0]}"
    out.append(Case(B.Workload(name, "kernel", "lowbit", f"x @ W, {g[0]}x{g[1]}x{g[2]}, int8 QDQ vs fp32", q_gemm,
                               flops=2.0 * g[0] * g[1] * g[2]),
                    [KilnModel("kiln int8", q_gemm), KilnModel("kiln fp32", f_gemm), OrtModel("ort int8", q_gemm)],
                    ("kiln fp32", "kiln int8", 1.5), "host int8 GEMM vs Kiln's fp32 GEMM"))

    f_gemv = _cached(lambda: linear(*v))
    for group in (32, 128):
        q = _cached(lambda group=group: weight_only(f_gemv(), group))
        out.append(Case(B.Workload(f"gemv_w4_g{group}", "kernel", "lowbit",
                                   f"x @ W, {v[0]}x{v[1]}x{v[2]}, int4 weights in groups of {group} vs fp32", q,
                                   flops=2.0 * v[0] * v[1] * v[2]),
                        [KilnModel("kiln w4", q), KilnModel("kiln fp32", f_gemv), OrtModel("ort w4", q)],
                        ("kiln fp32", "kiln w4", 3.0), f"W4 GEMV (group {group}) vs Kiln's fp32 GEMV"))

    f_resnet = _cached(lambda: M.resnet_style(depth=depth, image=image))
    q_resnet = _cached(lambda: int8_qdq(f_resnet(), samples=2 if quick else 4))
    out.append(Case(B.Workload(f"resnet{depth}_int8", "model", "lowbit",
                               f"resnet_style({depth}) at {image}x{image}, int8 QDQ (kiln.quantize)", q_resnet),
                    [KilnModel("kiln int8", q_resnet), OrtModel("ort int8", q_resnet), KilnModel("kiln fp32", f_resnet)],
                    ("ort int8", "kiln int8", 1.3), "int8 ResNet vs ONNX Runtime on the same QDQ model"))

    shape = dict(layers=1, hidden=128, heads=4, seq=32, ffn=512) if quick else dict(layers=2, hidden=768, heads=12,
                                                                                     seq=128, ffn=3072)
    f_bert = _cached(lambda: M.bert_encoder(**shape))
    q_bert = _cached(lambda: int8_dynamic(f_bert()))
    out.append(Case(B.Workload("bert_int8_dynamic", "model", "lowbit",
                               f"BERT encoder ({shape['layers']} layers, hidden {shape['hidden']}, seq {shape['seq']}), "
                               "int8 by ONNX Runtime's quantize_dynamic", q_bert, inputs=M.example_inputs),
                    [KilnModel("kiln int8", q_bert), OrtModel("ort int8", q_bert), KilnModel("kiln fp32", f_bert)],
                    ("ort int8", "kiln int8", 1.0), "dynamic int8 BERT vs ONNX Runtime on the same model"))
    return out


# -- running and reporting -------------------------------------------------------------------------

def target_ratio(rows: list[B.Row], target: tuple[str, str, float]) -> float | None:
    got = {r.peer: r for r in rows if r.ok}
    slow, fast, _ = target
    if slow in got and fast in got:
        return got[slow].median_ms / got[fast].median_ms
    return None


def _table(results) -> str:
    lines = ["| workload | peer | median ms | p10-p90 ms | runs | max rel err vs ORT | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for case, rows in results:
        for r in rows:
            spread = f"{B.fmt_ms(r.p10_ms)}-{B.fmt_ms(r.p90_ms)}" if r.ok else ""
            err = f"{r.max_rel_err:.1e}" if r.max_rel_err is not None else ""
            lines.append(f"| {case.workload.name} | {r.peer} | {B.fmt_ms(r.median_ms)} | {spread} | {r.runs} | {err} | "
                         f"{B.md_cell(r.error or r.note)} |")
    return "\n".join(lines)


def _targets(results) -> list[str]:
    lines = ["| acceptance | ratio | target | |", "|---|---:|---:|---|"]
    for case, rows in results:
        ratio = target_ratio(rows, case.target)
        slow, fast, need = case.target
        verdict = "—" if ratio is None else ("met" if ratio >= need else "**not met**")
        lines.append(f"| {case.what} ({slow} / {fast}) | {B.fmt_ratio(ratio)} | >= {need} | {verdict} |")
    return lines


def write_markdown(path: Path, argv, results, loads) -> None:
    text = "\n".join([
        "# Low-bit benchmarks (issue #6)", "",
        "Generated by `benchmarks/lowbit_bench.py` (its docstring says what each workload is). "
        "Ratios come from medians of interleaved rounds in one run; the machine is shared, so "
        "read the load average below before the absolute times.", "",
        f"- Command: `python benchmarks/lowbit_bench.py {' '.join(argv)}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {B.machine()}",
        "- Load average (1 min) before / after: " + " / ".join("?" if v is None else f"{v:.2f}" for v in loads),
        f"- Threads: 2 for every peer; {B.OrtPeer().version()}", "",
        "## Targets", "", *_targets(results), "",
        "## All rows", "", _table(results), "",
        "`max rel err vs ORT` compares each peer with ONNX Runtime on the workload's (quantized) "
        "model; for the fp32 peers it is the quantization error itself.", ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (samples per peer)")
    p.add_argument("--budget-s", type=float, default=30.0, help="timing time per peer and workload")
    p.add_argument("--write", action="store_true", help=f"write {OUT_MD.relative_to(ROOT)}")
    p.add_argument("--out", type=Path, default=OUT_MD, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    opts = B.Options(repeats=args.repeats, budget_s=args.budget_s)
    chosen = [c for c in cases(args.quick) if not args.only or c.workload.name in args.only.split(",")]
    if not chosen:
        print(f"no workload named {args.only!r}", file=sys.stderr)
        return 2
    before = B.load_average()
    if B.load_warning():
        print(B.load_warning(), file=sys.stderr)
    results = []
    for case in chosen:
        rows = B.bench_workload(case.workload, case.peers, opts, lambda s: print(s, file=sys.stderr, flush=True))
        results.append((case, rows))
    print(_table(results))
    print()
    print("\n".join(_targets(results)))
    if args.write:
        write_markdown(args.out, argv, results, (before, B.load_average()))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
