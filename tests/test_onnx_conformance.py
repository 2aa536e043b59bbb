"""ONNX's own node test cases: every case passes or is refused cleanly at compile time.

One test per case (ids are the case names, so pytest-xdist spreads them): compiled for the
host and run, a case must match its expected outputs (PASS) or raise
UnsupportedOperatorError while compiling (UNSUPPORTED); a wrong answer or any other
exception fails. ``test_pass_rate`` then holds the share of passing cases at or above
``MIN_PASS_RATE``. docs/onnx_support.md is the same classification as a report
(``python scripts/onnx_support.py --write``).
"""
from __future__ import annotations

import contextlib
import signal

import pytest

from kiln.testing import onnx_node_cases as nc

CASE_TIMEOUT_S = 120

_ALL = nc.load_cases()
_RUN, _EXCLUDED = nc.split_excluded(_ALL)
_PARAMS = [pytest.param(c, id=c.name,
                        marks=[pytest.mark.skip(reason=f"excluded: {_EXCLUDED[c.name]}")] if c.name in _EXCLUDED else [])
           for c in _ALL]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail a case that hangs in Python (or in a subprocess such as gcc) instead of hanging CI."""
    def expire(signum, frame):
        raise TimeoutError(f"the case took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case", _PARAMS)
def test_node_case(case):
    with deadline(CASE_TIMEOUT_S):
        result = nc.classify(case)
    assert result.status in (nc.PASS, nc.UNSUPPORTED), f"{result.status.upper()}: {result.detail}"


def test_pass_rate():
    """Every case that compiles must pass (test_node_case), so the pass rate is the share of
    cases that compile; compiling alone needs no C compiler and takes a few seconds."""
    with deadline(600):
        results = [nc.classify(c, execute=False) for c in _RUN]
    errors = [f"{r.name}: {r.detail}" for r in results if r.status == nc.ERROR]
    assert not errors, "\n".join(errors[:20])
    compiled = sum(r.status == nc.COMPILED for r in results)
    rate = compiled / len(results)
    assert rate >= nc.MIN_PASS_RATE, (f"{compiled} of {len(results)} node cases compile ({rate:.1%}); "
                                      f"expected at least {nc.MIN_PASS_RATE:.0%}")


def test_exclusions_are_documented_categories():
    categories = {c for c, _ in nc.EXCLUSION_RULES}
    assert set(_EXCLUDED.values()) <= categories
    assert len(_EXCLUDED) < 0.1 * len(_ALL), "exclusions must stay a small, principled minority"
