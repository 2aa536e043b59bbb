"""The host runtime pins its OpenMP worker threads, and only those, never to the CPU the
caller runs on (model.c's kiln_bind_workers): each run happens in a fresh process, so
libgomp starts with the environment the test gives it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Compiles a small model, runs it once, and prints every thread's allowed CPUs.
SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import kiln
from tests.test_autotune import mlp
m = kiln.compile(mlp(n=64, k=64, m=64), target="host")
m.run({"x": np.ones((64, 64), np.float32)})
main = os.getpid()
threads = {}
for tid in os.listdir(f"/proc/{main}/task"):
    status = open(f"/proc/{main}/task/{tid}/status").read()
    line = next(l for l in status.splitlines() if l.startswith("Cpus_allowed_list:"))
    threads[int(tid)] = line.split(":", 1)[1].strip()
print(json.dumps({"main": threads.pop(main), "others": sorted(threads.values()), "cpus": sorted(os.sched_getaffinity(0))}))
"""


def _threads(**env) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES", "KILN_BIND_THREADS")}
    full.update(OMP_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], env=full, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="binding needs two allowed CPUs")


@needs_two_cpus
def test_workers_are_pinned_and_the_callers_thread_is_not():
    t = _threads()
    allowed = _cpu_list(t["cpus"])
    assert t["main"] == allowed  # the Python thread that called run keeps every CPU
    pinned = [c for c in t["others"] if c != allowed]
    assert len(pinned) == 1 and int(pinned[0]) in t["cpus"]  # one worker for OMP_NUM_THREADS=2


# Runs the model from a thread held on one CPU, then on another, and prints where that
# thread's OpenMP workers (the threads its first run created) are allowed to run each time.
CALLER_SCRIPT = r"""
import json, os, sys, threading
sys.path.insert(0, sys.argv[1])
import numpy as np
import kiln
from tests.test_autotune import mlp
m = kiln.compile(mlp(n=64, k=64, m=64), target="host")
x = {"x": np.ones((64, 64), np.float32)}
main = os.getpid()
def tids():
    return set(int(t) for t in os.listdir(f"/proc/{main}/task"))
def allowed(tid):
    status = open(f"/proc/{main}/task/{tid}/status").read()
    return next(l for l in status.splitlines() if l.startswith("Cpus_allowed_list:")).split(":", 1)[1].strip()
report = []
def caller():
    before = tids()
    for cpu in (first, second, first):
        os.sched_setaffinity(0, {cpu})  # this thread only
        m.run(x)
        workers = sorted(tids() - before - {threading.get_native_id()})
        report.append({"caller": cpu, "workers": [allowed(t) for t in workers]})
first, second = sorted(os.sched_getaffinity(0))[:2]
t = threading.Thread(target=caller)
t.start(); t.join()
print(json.dumps(report))
"""


@needs_two_cpus
def test_workers_leave_the_callers_cpu_and_follow_it_when_it_moves():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES", "KILN_BIND_THREADS")}
    env.update(OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", CALLER_SCRIPT, str(ROOT)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == 3
    for step in report:
        assert len(step["workers"]) == 1, step  # OMP_NUM_THREADS=2: the caller and one worker
        assert step["workers"][0] != str(step["caller"]), step  # never the caller's CPU
        assert "," not in step["workers"][0] and "-" not in step["workers"][0], step  # one CPU


@needs_two_cpus
def test_binding_can_be_turned_off_and_yields_to_omp_proc_bind():
    t = _threads(KILN_BIND_THREADS="0")
    assert all(c == _cpu_list(t["cpus"]) for c in t["others"] + [t["main"]])
    t = _threads(OMP_PROC_BIND="false")  # the user's explicit choice: no binding, not Kiln's
    assert all(c == _cpu_list(t["cpus"]) for c in t["others"] + [t["main"]])


def _cpu_list(cpus: list[int]) -> str:
    """The kernel's Cpus_allowed_list form of a CPU set: ranges like 0-3,6."""
    parts, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            parts.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)
