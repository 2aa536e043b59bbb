"""How much of the machine Kiln and ONNX Runtime use: the model suite against the host's peak.

    python benchmarks/roofline.py                      # fp32 suite models + int8 ResNet-18
    python benchmarks/roofline.py --db tuning/suite    # Kiln with tuned records
    python benchmarks/roofline.py --write              # docs/benchmarks/roofline.md
    python benchmarks/roofline.py --quick              # tiny sizes: a smoke run

A speed-up ratio against ONNX Runtime says nothing of how much faster either could get. This
puts both next to the compute roof: each model's work (2 x the multiply-adds of its
convolutions and matrix products, ``kiln.roofline.model_flops``) over the host's measured
peak on the same threads (fp32 FMA chains, or int8 VNNI dot products for the quantized
model: ``kiln.roofline.host_peak``, measured before the first model and after each one;
the best measurement counts, since a busy neighbour only ever slows it down). Kiln and
ONNX Runtime are timed by the suite's harness (``kiln.bench``: interleaved rounds, medians,
outputs checked against ONNX Runtime), 2 threads each.

Columns: the share of the peak each reaches ("effective": Winograd's saved multiplications
count as done, so a Winograd model can pass 100 %), and "ORT / roof": the ratio against
ONNX Runtime that a run at exactly the peak would show. A target ratio above that roof
cannot be met by doing the direct arithmetic faster, only by doing less of it.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import lowbit_bench as L  # noqa: E402
from benchmarks import workloads as W  # noqa: E402
from kiln import bench as B  # noqa: E402
from kiln.roofline import Peak, host_peak, model_flops  # noqa: E402

OUT_MD = ROOT / "docs" / "benchmarks" / "roofline.md"


@dataclasses.dataclass
class Entry:
    """One model: its workload, the two peers timed on it, and whether its arithmetic is int8."""

    workload: B.Workload
    peers: list
    integer: bool


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="models", help="suite workload names or groups (default: models)")
    p.add_argument("--no-int8", action="store_true", help="leave out the int8 ResNet (lowbit_bench's QDQ model)")
    p.add_argument("--db", type=Path, help="tuning database for Kiln (default: untuned)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (samples per peer; median)")
    p.add_argument("--layers", type=int, default=2, help="layers of the BERT and GPT models")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--write", action="store_true", help=f"write {OUT_MD.relative_to(ROOT)}")
    p.add_argument("--out", type=Path, default=OUT_MD, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def entries(args) -> list[Entry]:
    out = []
    for w in W.select(W.suite(args.quick, args.layers), args.models):
        flops = w.flops or model_flops(w.model())
        out.append(Entry(dataclasses.replace(w, flops=flops), [B.KilnPeer("host", db=args.db), B.OrtPeer()], False))
    if not args.no_int8:
        case = next(c for c in L.cases(args.quick) if c.workload.name.endswith("_int8") and c.workload.kind == "model")
        kiln_int8, ort_int8 = (next(p for p in case.peers if p.name == n) for n in ("kiln int8", "ort int8"))
        w = case.workload
        out.append(Entry(dataclasses.replace(w, flops=model_flops(w.model())),
                         [dataclasses.replace(kiln_int8, name="kiln"), dataclasses.replace(ort_int8, name="ort")], True))
    return out


def roofline_rows(entry: Entry, rows: list[B.Row], peak: Peak) -> dict:
    """The table's cells for one model: times, ratio, shares of the peak, the roof's ratio."""
    got = {r.peer: r for r in rows if r.ok}
    kiln, ort = got.get("kiln"), got.get("ort")
    flops = entry.workload.flops
    roof_ms = None
    rate = peak.roof(entry.integer)
    if flops and rate:
        roof_ms = flops / (rate * 1e9) * 1e3

    def share(row):
        return None if row is None or not flops else peak.fraction(flops, row.median_ms * 1e-3, entry.integer)

    return {"model": entry.workload.name, "arith": "int8" if entry.integer else "fp32",
            "gflop": flops / 1e9 if flops else None, "kiln_ms": kiln.median_ms if kiln else None,
            "ort_ms": ort.median_ms if ort else None,
            "ratio": ort.median_ms / kiln.median_ms if kiln and ort else None,
            "kiln_share": share(kiln), "ort_share": share(ort),
            "roof": ort.median_ms / roof_ms if ort and roof_ms else None}


def table(cells: list[dict]) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = ["| model | arithmetic | GFLOP | Kiln ms | ORT ms | ORT / Kiln | Kiln % of peak | ORT % of peak | "
             "ORT / roof |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c['model']} | {c['arith']} | {f(c['gflop'], '.2f')} | {f(c['kiln_ms'], '.3f')} | "
                     f"{f(c['ort_ms'], '.3f')} | {f(c['ratio'], '.2f')} | "
                     f"{f(c['kiln_share'] and 100 * c['kiln_share'], '.0f')} | "
                     f"{f(c['ort_share'] and 100 * c['ort_share'], '.0f')} | {f(c['roof'], '.2f')} |")
    return "\n".join(lines)


def peak_line(peak: Peak) -> str:
    int8 = "no VNNI" if peak.int8_gops is None else f"{peak.int8_gops:.0f} GOP/s int8 (VNNI dot products)"
    return f"measured peak on {peak.threads} threads: {peak.fp32_gflops:.1f} GFLOP/s fp32 (FMA), {int8}"


def write_markdown(path: Path, argv, peak: Peak, cells, rows, loads) -> None:
    lines = B.report_header("Roofline: the model suite against the machine's peak", "benchmarks/roofline.py",
                            "its docstring defines every column", loads, machine_note=peak_line(peak))
    lines += [f"- Command: `python benchmarks/roofline.py {' '.join(argv)}`".rstrip(), "",
              table(cells), "", "## Every timed row", "", B.markdown_table(rows), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = B.log_stderr
    try:
        todo = entries(args)
    except (ValueError, B.KilnError) as e:
        log(f"roofline.py: error: {e}")
        return 2
    loads = [B.starting_load(log)]
    threads = int(os.environ["OMP_NUM_THREADS"])
    peak = host_peak(threads)
    log(peak_line(peak))
    timed = []
    for e in todo:
        timed.append((e, B.bench_workload(e.workload, e.peers, B.Options(repeats=args.repeats), log)))
        peak = peak.best(host_peak(threads))  # measured again between models: the best one counts
    loads.append(B.load_average())
    log(peak_line(peak) + " (best of the measurements between models)")
    cells = [roofline_rows(e, got, peak) for e, got in timed]
    rows = [r for _, got in timed for r in got]
    print(peak_line(peak))
    print(table(cells))
    if args.write:
        write_markdown(args.out, argv, peak, cells, rows, loads)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
