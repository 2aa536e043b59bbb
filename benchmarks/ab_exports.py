"""Two exported host models timed against each other in one process: an A/B of generated code.

    kiln compile model.onnx --target host -o /tmp/a      # before a change
    kiln compile model.onnx --target host -o /tmp/b      # after it (or a hand-edited model.c)
    python benchmarks/ab_exports.py /tmp/a /tmp/b --runs 200

On a shared machine two timings taken a minute apart differ by more than most code changes
do (10-40 % on the 2-vCPU build hosts). This builds each export with its own Makefile, loads
both libraries into one C process and alternates them run by run (A then B, then B then A,
so neither always runs second), with the same inputs, weights 64-byte aligned as
``model.h`` asks. It reports each side's minimum and median and the median of the per-run
differences B - A, with its quartiles: a change is real when the quartiles agree in sign
over repeated rounds (``--rounds``). It also says whether the two give byte-identical
outputs, which a pure speed change must.

The B-A numbers in docs/benchmarks.md ("interleaved A/B in one C process") come from this
method. Static models only (no dim symbols): both exports must take the same inputs and
produce the same outputs.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from kiln.ir.dtype import DType

HARNESS = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*run_fn)(void* const*, void* const*, const void*, void*, const int64_t*);
typedef size_t (*size_fn)(void);
typedef struct { run_fn run; void* weights; void* arena; void* out[NOUT]; } model;
static const size_t out_bytes[NOUT] = {OUT_BYTES};

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
static int by_value(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}
static void* fail(const char* what, const char* detail) {
  fprintf(stderr, "ab: %s: %s\n", what, detail);
  exit(2);
}
static void* sym(void* lib, const char* prefix, const char* name) {
  char full[256];
  snprintf(full, sizeof full, "%s_%s", prefix, name);
  void* p = dlsym(lib, full);
  return p ? p : fail("missing symbol", full);
}
static void* aligned(size_t n) {
  void* p = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
  return p ? memset(p, 0, (n + 63) / 64 * 64 + 64) : fail("out of memory", "");
}
static model load(const char* lib_path, const char* weights_path, const char* prefix) {
  model m;
  void* lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) fail("dlopen", dlerror());
  m.run = (run_fn)sym(lib, prefix, "run");
  size_t nw = ((size_fn)sym(lib, prefix, "weights_size"))(), na = ((size_fn)sym(lib, prefix, "arena_size"))();
  m.weights = aligned(nw);
  m.arena = aligned(na);
  FILE* f = fopen(weights_path, "rb");
  if (!f) fail("cannot open", weights_path);
  if (nw && fread(m.weights, 1, nw, f) != nw) fail("short weights file", weights_path);
  fclose(f);
  for (int k = 0; k < NOUT; ++k) m.out[k] = aligned(out_bytes[k]);
  return m;
}
int main(int argc, char** argv) {
  if (argc != 7) return fail("usage", "ab RUNS PREFIX A.so A.bin B.so B.bin") != 0;
  int runs = atoi(argv[1]);
  model a = load(argv[3], argv[4], argv[2]), b = load(argv[5], argv[6], argv[2]);
  static const size_t in_bytes[NIN] = {IN_BYTES};
  /* 0: float32; 1, 2, 4, 8: an integer (or bool) of that many bytes; -1: anything else */
  static const int in_kind[NIN] = {IN_KIND};
  void* in[NIN];
  for (int k = 0; k < NIN; ++k) {  /* a fixed pattern: floats in [0, 1); integers 0 and 1, */
    in[k] = aligned(in_bytes[k]);  /* valid as bools, masks and indices; other types zero */
    if (in_kind[k] == 0) for (size_t i = 0; i < in_bytes[k] / 4; ++i) ((float*)in[k])[i] = (float)(i % 251) / 251.0f;
    if (in_kind[k] > 0) for (size_t i = 0; i < in_bytes[k] / in_kind[k]; ++i)
      ((unsigned char*)in[k])[i * in_kind[k]] = (unsigned char)(i % 2);  /* little-endian: the low byte */
  }
  int64_t dims[1] = {0};
  for (int r = 0; r < 3; ++r) { a.run(in, a.out, a.weights, a.arena, dims); b.run(in, b.out, b.weights, b.arena, dims); }
  int same = 1;
  for (int k = 0; k < NOUT; ++k) same &= memcmp(a.out[k], b.out[k], out_bytes[k]) == 0;
  double *ta = malloc(sizeof(double) * runs), *tb = malloc(sizeof(double) * runs), *d = malloc(sizeof(double) * runs);
  for (int r = 0; r < runs; ++r) {
    model* first = (r & 1) ? &b : &a;
    model* second = (r & 1) ? &a : &b;
    double t0 = now_us();
    first->run(in, first->out, first->weights, first->arena, dims);
    double t1 = now_us();
    second->run(in, second->out, second->weights, second->arena, dims);
    double t2 = now_us();
    ta[r] = (r & 1) ? t2 - t1 : t1 - t0;
    tb[r] = (r & 1) ? t1 - t0 : t2 - t1;
    d[r] = tb[r] - ta[r];
  }
  qsort(ta, runs, sizeof(double), by_value);
  qsort(tb, runs, sizeof(double), by_value);
  qsort(d, runs, sizeof(double), by_value);
  printf("a_min %.3f a_median %.3f b_min %.3f b_median %.3f diff_median %.3f diff_p25 %.3f diff_p75 %.3f same %d\n",
         ta[0], ta[runs / 2], tb[0], tb[runs / 2], d[runs / 2], d[runs / 4], d[3 * runs / 4], same);
  return 0;
}
"""


class ABError(Exception):
    """An export this tool cannot compare, with what was expected."""


def _manifest(export: Path) -> dict:
    path = export / "manifest.json"
    if not path.exists():
        raise ABError(f"{export} has no manifest.json; expected a directory from "
                      "`kiln compile MODEL --target host -o DIR`")
    m = json.loads(path.read_text())
    if m.get("target") != "host":
        raise ABError(f"{export} is an export for target {m.get('target')!r}; expected 'host'")
    if m.get("dim_bounds"):
        raise ABError(f"{export} has dim symbols {sorted(m['dim_bounds'])}; expected a static model")
    return m


def _signature(m: dict) -> tuple:
    return tuple((v["name"], tuple(v["shape"]), v["dtype"]) for v in m["inputs"] + m["outputs"])


def _dtype(v: dict) -> DType:
    try:
        return DType(v["dtype"])
    except ValueError:
        raise ABError(f"{v['name']!r} has dtype {v['dtype']}; expected one of Kiln's "
                      f"({', '.join(d.value for d in DType)})") from None


def _nbytes(v: dict) -> int:
    n = _dtype(v).np.itemsize
    for d in v["shape"]:
        n *= int(d)
    return n


def _kind(v: dict) -> int:
    """How the harness fills an input (see ``in_kind`` in HARNESS)."""
    dt = _dtype(v)
    if dt is DType.float32:
        return 0
    return -1 if dt.is_float else dt.np.itemsize


def build_harness(m: dict, work: Path) -> Path:
    src = (HARNESS.replace("NIN", str(max(len(m["inputs"]), 1)))
           .replace("NOUT", str(max(len(m["outputs"]), 1)))
           .replace("IN_BYTES", ", ".join(str(_nbytes(v)) for v in m["inputs"]) or "0")
           .replace("IN_KIND", ", ".join(str(_kind(v)) for v in m["inputs"]) or "0")
           .replace("OUT_BYTES", ", ".join(str(_nbytes(v)) for v in m["outputs"]) or "0"))
    (work / "ab.c").write_text(src)
    exe = work / "ab"
    subprocess.run(["gcc", "-O2", "-std=gnu11", str(work / "ab.c"), "-o", str(exe), "-ldl"], check=True)
    return exe


def build_export(export: Path, prefix: str) -> Path:
    """The export's own ``make`` (its Makefile's flags); the library it names."""
    subprocess.run(["make", "-s", "-C", str(export), f"lib{prefix}.so"], check=True)
    return export / f"lib{prefix}.so"


def compare(a: Path, b: Path, runs: int, rounds: int) -> list[dict]:
    ma, mb = _manifest(a), _manifest(b)
    if _signature(ma) != _signature(mb) or ma["prefix"] != mb["prefix"]:
        raise ABError(f"{a} and {b} take different inputs or outputs (or prefixes); expected two exports of one model")
    prefix = ma["prefix"]
    libs = [build_export(d, prefix) for d in (a, b)]
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_harness(ma, Path(tmp))
        results = []
        for _ in range(rounds):
            out = subprocess.run([str(exe), str(runs), prefix, str(libs[0]), str(a / "weights.bin"),
                                  str(libs[1]), str(b / "weights.bin")], check=True, capture_output=True, text=True)
            pairs = re.findall(r"(\w+) (-?[\d.]+)", out.stdout)
            results.append({k: float(v) for k, v in pairs})
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path, help="export directory A (before)")
    p.add_argument("b", type=Path, help="export directory B (after)")
    p.add_argument("--runs", type=int, default=200, help="interleaved runs per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each a fresh process")
    args = p.parse_args(argv)
    try:
        results = compare(args.a, args.b, args.runs, args.rounds)
    except ABError as e:
        print(f"ab_exports: {e}", file=sys.stderr)
        return 2
    print(f"{'round':>5} {'A min':>9} {'A med':>9} {'B min':>9} {'B med':>9} {'B-A med':>9} {'p25':>8} {'p75':>8}  outputs")
    for k, r in enumerate(results, 1):
        print(f"{k:>5} {r['a_min']:9.1f} {r['a_median']:9.1f} {r['b_min']:9.1f} {r['b_median']:9.1f} "
              f"{r['diff_median']:9.1f} {r['diff_p25']:8.1f} {r['diff_p75']:8.1f}  "
              f"{'same' if r['same'] else 'DIFFER'}")
    print("(microseconds per run; B-A below zero: B is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
