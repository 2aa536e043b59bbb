"""The workload suite: Kiln against ONNX Runtime, PyTorch, TVM and numpy, in one run.

    python benchmarks/suite.py                                   # every workload and peer
    python benchmarks/suite.py --quick --peers kiln,ort,torch    # tiny sizes: a smoke run
    python benchmarks/suite.py --workloads gemm,conv,resnet18 --repeats 10
    python benchmarks/suite.py --write --repeats 5               # docs/benchmarks/suite.{md,png}

Workloads are in benchmarks/workloads.py (groups: gemm, conv, dwconv, layernorm, softmax,
attention, models; or single names). Peers: kiln, ort (ONNX Runtime), torch (eager), tvm
(Apache TVM, Relax default pipeline, untuned), numpy (GEMM only). Every peer uses 2 threads.
For each workload the peers are built, warmed up and checked against ONNX Runtime's outputs,
then timed in rounds where each peer runs once, in a shuffled order; the table shows the
median, the p10-p90 spread and the ratio to Kiln (above 1: Kiln is faster).

Each workload runs in a child process, so that one peer crashing (a segfault in a native
library) costs only its own row: the workload is then re-timed one peer per process.
``--no-isolate`` runs everything in this process.
"""
from __future__ import annotations

import os

# Before numpy (OpenBLAS reads these when it loads) and any OpenMP runtime: every peer gets 2
# threads, and OpenBLAS's workers sleep after a call instead of spinning for ~0.1 s on the
# cores the next peer is about to use (minimum timeout: 2^4 cycles).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import workloads as W  # noqa: E402
from kiln import bench as B  # noqa: E402

OUT_MD = ROOT / "docs" / "benchmarks" / "suite.md"
OUT_PNG = ROOT / "docs" / "benchmarks" / "suite.png"
DEFAULT_PEERS = "kiln,ort,torch,tvm,numpy"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--workloads", default="all",
                   help=f"comma-separated groups ({', '.join(W.GROUPS)}, kernels) or workload names")
    p.add_argument("--peers", default=DEFAULT_PEERS, help=f"comma-separated subset of {', '.join(B.PEERS)}")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (samples per peer; median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each peer first")
    p.add_argument("--quick", action="store_true", help="tiny sizes of every workload: a smoke run")
    p.add_argument("--layers", type=int, default=2, help="layers of the BERT and GPT models (BERT-base: 12)")
    p.add_argument("--min-sample-ms", type=float, default=20.0,
                   help="a sample repeats a fast call until it lasts this long")
    p.add_argument("--budget-s", type=float, default=30.0,
                   help="timing time per peer and workload; a slower peer gets fewer samples")
    p.add_argument("--pause-ms", type=float, default=50.0,
                   help="idle time before each sample, so the previous peer's spinning threads sleep")
    p.add_argument("--no-isolate", action="store_true", help="run every workload in this process")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="limit for one workload's process")
    p.add_argument("--write", action="store_true",
                   help="write docs/benchmarks/suite.md (the report) and suite.png (the chart)")
    p.add_argument("--child", help=argparse.SUPPRESS)      # run one workload, rows as JSON
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def options(args) -> B.Options:
    return B.Options(repeats=args.repeats, warmup=args.warmup, min_sample_s=args.min_sample_ms / 1e3,
                     budget_s=args.budget_s, pause_s=args.pause_ms / 1e3)


log = B.log_stderr


# -- one workload per process --------------------------------------------------------------

def run_child(args) -> int:
    workload = next(w for w in W.suite(args.quick, args.layers) if w.name == args.child)
    rows = B.bench_workload(workload, B.make_peers(args.peers.split(",")), options(args), log)
    Path(args.child_out).write_text(json.dumps([_row_json(r) for r in rows]))
    return 0


def _row_json(row: B.Row) -> dict:
    d = dataclasses.asdict(row)
    d.pop("samples")
    return d


def _child_argv(args, name: str, peers: list[str], out: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-out", out,
            "--peers", ",".join(peers), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
            "--layers", str(args.layers), "--min-sample-ms", str(args.min_sample_ms),
            "--budget-s", str(args.budget_s), "--pause-ms", str(args.pause_ms)]
    return argv + (["--quick"] if args.quick else [])


def _spawn(args, name: str, peers: list[str]) -> tuple[list[B.Row] | None, str]:
    """Rows from a child process, or None and why it died."""
    with tempfile.TemporaryDirectory(prefix="kiln-suite-") as tmp:
        out = os.path.join(tmp, "rows.json")
        try:
            proc = subprocess.run(_child_argv(args, name, peers, out), timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {args.timeout_s:.0f} s"
        if proc.returncode == 0 and os.path.exists(out):
            return [B.Row(**d) for d in json.loads(Path(out).read_text())], ""
    code = proc.returncode
    why = f"crashed ({signal.Signals(-code).name})" if code < 0 else f"exited with status {code}"
    return None, why


def run_isolated(args, workload: B.Workload, peers: list[str]) -> list[B.Row]:
    rows, why = _spawn(args, workload.name, peers)
    if rows is not None:
        return rows
    log(f"[{workload.name}] the process {why}; timing each peer in its own process")
    rows = []
    for peer in peers:
        alone, why = _spawn(args, workload.name, [peer])
        if alone is None:
            rows.append(B.Row(workload.name, peer, error=f"the peer's process {why}"))
            continue
        for r in alone:
            r.note = B.join_notes(r.note, "timed alone: the interleaved run crashed")
        rows += alone
    B.set_ratios(rows)  # Kiln's time now comes from another process
    return rows


# -- summary, markdown and chart -----------------------------------------------------------

def summary(rows: list[B.Row], workloads: list[B.Workload]) -> list[str]:
    models = [w.name for w in workloads if w.kind == "model"]
    kernels = [w.name for w in workloads if w.kind == "kernel"]
    peers = sorted({r.peer for r in rows} - {"kiln", "numpy"}, key=B.PEERS.index)
    lines = []
    for group, names in (("model", models), ("kernel", kernels)):
        if names:
            lines += [f"{group}s: {B.ratio_summary(rows, p, names)}" for p in peers]
    lines.append(_gemm_line(rows))
    return lines


def _gemm_line(rows: list[B.Row]) -> str:
    """Kiln vs numpy on GEMM 1024 cubed (in --quick runs: the largest square GEMM)."""
    square = sorted({r.workload for r in rows if r.workload.startswith("gemm_") and "x" not in r.workload},
                    key=lambda n: int(n.split("_")[1]))
    if not square:
        return "GEMM vs numpy: no square GEMM in this run"
    name = "gemm_1024" if "gemm_1024" in square else square[-1]
    got = {r.peer: r for r in rows if r.workload == name and r.ok}
    if "kiln" not in got or "numpy" not in got:
        return f"{name}: Kiln vs numpy not measured (both must run)"
    k, n = got["kiln"], got["numpy"]
    return (f"{name}: Kiln {k.gflops:.1f} GFLOP/s, numpy (OpenBLAS) {n.gflops:.1f} GFLOP/s "
            f"(Kiln at {k.gflops / n.gflops:.0%} of numpy)")


def chart(rows: list[B.Row], path: Path) -> None:
    """Bars of peer time / Kiln time per workload on a log axis, drawn from 1: up means Kiln is
    faster, down slower. A missing bar: no ratio (the peer or Kiln failed or was skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.workload for r in rows))
    ratio = {(r.workload, r.peer): r.ratio for r in rows if r.ratio}
    peers = [p for p in B.PEERS if p != "kiln" and any(k[1] == p for k in ratio)]
    colors = {"ort": "tab:blue", "torch": "tab:orange", "tvm": "tab:green", "numpy": "tab:red"}
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * len(names)), 6))
    width = 0.8 / max(1, len(peers))
    for i, p in enumerate(peers):
        xs = [j + (i - (len(peers) - 1) / 2) * width for j, n in enumerate(names) if (n, p) in ratio]
        ax.bar(xs, [ratio[n, p] - 1.0 for n in names if (n, p) in ratio], width, bottom=1.0, label=p,
               color=colors.get(p))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("peer time / Kiln time  (above 1: Kiln is faster)")
    ax.set_title("Kiln vs peers, host CPU, 2 threads (median)")
    if peers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions(peers: list[str]) -> list[str]:
    return [B.make_peers([p])[0].version() for p in peers]


def _notes(args) -> list[str]:
    if "tvm" not in args.peers.split(","):
        return []
    return ["- TVM is untuned here: Relax's default pipeline, no MetaSchedule search. DESIGN.md notes "
            "that untuned TVM runs far slower than ONNX Runtime and that the meaningful TVM peer is "
            "a tuned one."]


def write_markdown(path: Path, args, argv, rows, workloads, loads: tuple) -> None:
    """The report: when, where, which versions, the command, the table and the summary."""
    cmd = "python benchmarks/suite.py " + " ".join(argv)
    described = "\n".join(f"- `{w.name}`: {w.description}" for w in workloads)
    text = "\n".join([
        "# Workload suite: Kiln vs ONNX Runtime, PyTorch, TVM", "",
        "Generated by `benchmarks/suite.py` (its docstring says how it times). These machines are "
        "shared: read the ratios, and the load average below.", "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {B.machine()}",
        "- Load average (1 min) at the start and end: " + " and ".join(
            "unknown" if v is None else f"{v:.2f}" for v in loads)
        + " (above 1 on 2 cores, other processes were competing and the times are noisy)",
        "- Peers: " + "; ".join(versions(args.peers.split(","))),
        f"- Command: `{cmd.strip()}`",
        f"- Timing: {args.warmup} warm-up calls, then {args.repeats} rounds, each peer once per round in "
        f"a shuffled order with {args.pause_ms:g} ms idle before each sample; a sample repeats a fast "
        f"call for at least {args.min_sample_ms:g} ms. Median and p10–p90 of the samples. "
        f"`max rel err` is max |peer − ORT| / max |ORT|; `peer/kiln` above 1 means Kiln is faster.",
        "", "## Workloads", "", described, "", "## Results", "", B.markdown_table(rows), "",
        "## Summary", "", *[f"- {line}" for line in summary(rows, workloads)], *_notes(args), "",
        f"![peer time relative to Kiln]({OUT_PNG.name})", ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- main ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    try:
        workloads = W.select(W.suite(args.quick, args.layers), args.workloads)
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        B.make_peers(peers)
    except (ValueError, B.KilnError) as e:
        log(f"suite.py: error: {e}")
        return 2
    args.peers = ",".join(peers)
    load = B.starting_load(log)
    rows: list[B.Row] = []
    for w in workloads:
        log(f"[{w.name}] {w.description}")
        rows += (B.bench_workload(w, B.make_peers(peers), options(args), log) if args.no_isolate
                 else run_isolated(args, w, peers))
    print(B.markdown_table(rows))
    print("\n" + "\n".join(summary(rows, workloads)))
    if args.write:
        write_markdown(OUT_MD, args, argv, rows, workloads, (load, B.load_average()))
        chart(rows, OUT_PNG)
        log(f"wrote {OUT_MD} and {OUT_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
