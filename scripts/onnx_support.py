#!/usr/bin/env python3
"""Run ONNX's node test cases through Kiln and report what imports, per operator.

    python scripts/onnx_support.py                 # summary on stdout
    python scripts/onnx_support.py --write         # also regenerate docs/onnx_support.md
    python scripts/onnx_support.py --ops Relu,Add  # only cases that use these ops
    python scripts/onnx_support.py --jobs 8 --timeout 120

Every case runs in a worker process with a deadline (a crash or a hang is an ERROR, never
the end of the run). Each case is PASS, UNSUPPORTED (UnsupportedOperatorError at compile
time), WRONG (an output differs beyond the case's rtol/atol) or ERROR (anything else).

Excluded, by op type or case name (EXCLUSION_RULES in kiln/testing/onnx_node_cases.py):
control flow (If, Loop, Scan, SequenceMap), sequences (Sequence*, SplitToSequence,
ConcatFromSequence, sequence-typed graph values), optionals (Optional*), strings
(StringConcat, StringNormalizer, StringSplit, RegexFullMatch, STRING-typed graph values),
random ops (Random*, Bernoulli, Multinomial) and training (the ai.onnx.preview.training
domain, Dropout with training_mode=True). Exit status: 1 when any case is WRONG or ERROR.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One OpenMP thread per worker: the workers are the parallelism (set before kiln loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from kiln.testing import onnx_node_cases as nc  # noqa: E402

DOC = ROOT / "docs" / "onnx_support.md"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--ops", default="", help="comma-separated op types: only cases using one of them")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it is an ERROR")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def progress(stats, total: int, result) -> None:
    if result.status in (nc.WRONG, nc.ERROR):
        print(f"  {result.status.upper()}: {result.name}: {result.detail}", file=sys.stderr)
    if stats.done % 200 == 0 or stats.done == total:
        counts = ", ".join(f"{k} {stats.counts[k]}" for k in nc.STATUSES)
        print(f"[{stats.done}/{total}] {counts}", file=sys.stderr)


# -- the report -------------------------------------------------------------------------------

def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f} %" if d else "-"


def totals_section(results, excluded: dict[str, str]) -> list[str]:
    counts = collections.Counter(r.status for r in results)
    run = len(results)
    specialized = sum(1 for r in results if r.status == nc.PASS and r.specialized)
    return [
        "| | cases |", "|---|---:|",
        f"| node test cases | {run + len(excluded)} |",
        f"| excluded (rules below) | {len(excluded)} |",
        f"| run | {run} |",
        f"| **pass** | **{counts[nc.PASS]} ({_pct(counts[nc.PASS], run)})** |",
        f"| unsupported (clean `UnsupportedOperatorError` at compile time) | {counts[nc.UNSUPPORTED]} |",
        f"| wrong answer | {counts[nc.WRONG]} |",
        f"| error (any other exception, crash or timeout) | {counts[nc.ERROR]} |",
        "",
        f"Of the passing cases, {specialized} feed a value that fixes a shape (Reshape's shape, "
        "Reduce axes, Pad pads ...) as a graph input. `kiln.onnx_backend` compiles those at "
        "the first run, specialized to the values given (and again when they change); "
        "`kiln.compile` alone refuses them with an `UnsupportedOperatorError` naming the input.",
        "",
        "An op that ONNX defines as a function (a body of simpler ops) and that has no Kiln "
        "converter of its own is expanded into its body before conversion "
        "(`kiln/frontend/onnx_functions.py`; CausalConvWithState is supported that way); a body "
        "with subgraphs or with an op Kiln cannot convert leaves the op unsupported.",
        "",
        "Classical ML (the ai.onnx.ml domain, beyond what the node tests cover): tree ensembles "
        "-- TreeEnsemble, TreeEnsembleRegressor, TreeEnsembleClassifier, as scikit-learn forests "
        "and gradient boosting export them -- compile to one node table and a `tree_walk` op "
        "(`kiln/frontend/onnx_ops/trees.py`, `kiln/ir/ops/trees.py`), so a random forest runs on every target, a "
        "Cortex-M4 included. Linear models (LinearRegressor; LinearClassifier, e.g. a "
        "StandardScaler + LogisticRegression pipeline) and Binarizer, ArrayFeatureExtractor, "
        "Scaler and Normalizer are in `ml.py`; SVMRegressor and SVMClassifier (SVR and SVC with "
        "each kernel; SVC's labels and one-vs-one decision values, not its probabilities) in "
        "`ml_svm.py`; the numeric preprocessing ops Imputer, OneHotEncoder, LabelEncoder and "
        "FeatureVectorizer in `ml_encoders.py`. `tests/test_onnx_ml.py` checks them against ONNX "
        "Runtime and scikit-learn. String categories and labels, maps (ZipMap, DictVectorizer) "
        "and SVM probabilities are not supported.",
    ]


def exclusions_section(excluded: dict[str, str]) -> list[str]:
    counts = collections.Counter(excluded.values())
    lines = ["| category | rule | cases |", "|---|---|---:|"]
    for category, rule in nc.EXCLUSION_RULES:
        lines.append(f"| {category} | {rule} | {counts[category]} |")
    return lines


def per_op_section(results) -> list[str]:
    by_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        by_op[r.op][r.status] += 1
    lines = ["| op | cases | pass | unsupported | wrong | error |", "|---|---:|---:|---:|---:|---:|"]
    for op in sorted(by_op, key=str.lower):
        c = by_op[op]
        lines.append(f"| {op} | {sum(c.values())} | {c[nc.PASS]} | {c[nc.UNSUPPORTED]} | "
                     f"{c[nc.WRONG]} | {c[nc.ERROR]} |")
    return lines


def _reason_group(detail: str) -> str:
    """Unsupported reasons, grouped: one line for all element types, one per missing op."""
    if "element type" in detail:
        return "an element type Kiln lacks (float8e8m0)"
    return detail


def reasons_section(results) -> list[str]:
    counts = collections.Counter(_reason_group(r.detail) for r in results if r.status == nc.UNSUPPORTED)
    lines = ["| cases | reason |", "|---:|---|"]
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {n} | {reason.replace('|', '/')} |")
    return lines


def failures_section(results, status: str) -> list[str]:
    rows = [r for r in results if r.status == status]
    if not rows:
        return ["None."]
    lines = ["| case | reason |", "|---|---|"]
    for r in rows:
        lines.append(f"| `{r.name}` | {r.detail.replace('|', '/')} |")
    return lines


def render(results, excluded: dict[str, str], onnx_version: str) -> str:
    parts = [
        "# ONNX operator support",
        "",
        "Generated by `python scripts/onnx_support.py --write` from the node test cases that "
        f"ship with onnx {onnx_version} (`onnx.backend.test.case.node`): each case is one small "
        "model with inputs and expected outputs. Kiln compiles it for the `host` target and "
        "compares every output with the case's own rtol/atol (shape and dtype must match "
        "exactly). `tests/test_onnx_conformance.py` runs the same classification and fails on "
        f"any wrong answer or error, or a pass rate below {nc.MIN_PASS_RATE:.0%}.",
        "", "## Totals", "", *totals_section(results, excluded),
        "", "## Excluded cases", "",
        "Kiln compiles static dataflow graphs of tensors for inference; cases that need "
        "something else are not counted:", "", *exclusions_section(excluded),
        "", "## Per operator", "",
        "Each case counts once, under the op it tests (for an `_expanded` case, the function op "
        "whose body it inlines).", "", *per_op_section(results),
        "", "## Why cases are unsupported", "", *reasons_section(results),
        "", "## Unsupported cases", "", *failures_section(results, nc.UNSUPPORTED),
    ]
    for status, title in ((nc.WRONG, "Wrong answers"), (nc.ERROR, "Errors")):
        parts += ["", f"## {title}", "", *failures_section(results, status)]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    import onnx

    args = parse_args(argv)
    ops = {o.strip() for o in args.ops.split(",") if o.strip()} or None
    cases, excluded = nc.split_excluded(nc.load_cases(ops))
    print(f"{len(cases)} cases to run, {len(excluded)} excluded, {args.jobs} workers", file=sys.stderr)
    start = time.perf_counter()
    results = nc.run_cases(cases, jobs=args.jobs, timeout=args.timeout,
                           progress=None if args.quiet else progress)
    counts = collections.Counter(r.status for r in results)
    print(f"{len(results)} cases in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{k} {counts[k]}" for k in nc.STATUSES)
          + f"; pass rate {_pct(counts[nc.PASS], len(results))}")
    if args.write:
        if ops:
            print("--write with --ops would write a partial report; not writing", file=sys.stderr)
        else:
            DOC.write_text(render(results, excluded, onnx.__version__))
            print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if counts[nc.WRONG] or counts[nc.ERROR] else 0


if __name__ == "__main__":
    sys.exit(main())
