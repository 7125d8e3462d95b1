"""A short run of the fuzzer (tests/fuzz.py; longer runs by hand, see benchmarks/RESULTS.md):
random ops, shapes, dtypes, layouts, optional inputs and backends against the reference, a third of
the cases made invalid, every batch in a child process so that a crash fails the test."""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def test_fuzz_cases_match_the_reference_and_never_crash():
    spec = importlib.util.spec_from_file_location("xscan_fuzz", os.path.join(HERE, "fuzz.py"))
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    summary = fuzz.fuzz(cases=60, seed=10_000, batch=60, log=lambda line: None)
    assert summary["cases"] == 60
    assert not summary["crashes"], summary["crashes"][:3]
    assert not summary["wrong"], summary["wrong"][:3]
