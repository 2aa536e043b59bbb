"""`make demo`: compile a small CNN for the host with Kiln and compare it with ONNX Runtime.

Builds the model with examples/models.py (no download), compiles it with ``kiln.compile``,
runs both, and prints the largest differences and the median latencies.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

# One thread for both engines: a model this small gains nothing from threads, and on a
# 2-core machine two spinning thread pools slow each other down. Set before kiln loads.
THREADS = 1
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.append(os.path.dirname(HERE))  # the repository, when kiln is not installed

import kiln  # noqa: E402
from models import example_inputs, small_cnn  # noqa: E402

REPEATS = 200


def median_ms(fn, repeats: int = REPEATS, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    import onnxruntime as ort

    model = small_cnn()
    inputs = example_inputs(model, seed=1)
    print(f"model: small_cnn, {len(model.graph.node)} ONNX nodes, input "
          + ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items()))

    t0 = time.perf_counter()
    compiled = kiln.compile(model, target="host")
    build = getattr(compiled, "build", None)
    if callable(build):  # build the C now, so that compile time includes gcc
        build()
    print(f"kiln.compile(target='host'): {time.perf_counter() - t0:.2f} s "
          f"(generated C: {len(compiled.source().splitlines())} lines)")

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = dict(zip(names, sess.run(names, inputs)))
    got = compiled.run(inputs)

    for name in names:
        g, w = np.asarray(got[name]), want[name]
        if g.shape != w.shape:
            raise SystemExit(f"output {name!r}: kiln shape {g.shape} != onnxruntime shape {w.shape}")
        abs_err = float(np.max(np.abs(g - w)))
        rel_err = abs_err / max(float(np.max(np.abs(w))), 1e-30)
        print(f"output {name}{list(w.shape)}: max abs diff {abs_err:.3g}, "
              f"max rel diff {rel_err:.3g} (relative to max |onnxruntime|)")

    kiln_ms = median_ms(lambda: compiled.run(inputs))
    ort_ms = median_ms(lambda: sess.run(names, inputs))
    print(f"latency (median of {REPEATS} runs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
          f"for kiln, {THREADS} intra-op thread(s) for onnxruntime): "
          f"kiln {kiln_ms:.3f} ms, onnxruntime {ort_ms:.3f} ms")


if __name__ == "__main__":
    main()
