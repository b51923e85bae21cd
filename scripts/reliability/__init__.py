"""Reliability and fault checks: bad-input corpus, fuzzing, soak, worker kill, queue overflow, frontend restart.

Each module is a script with a config dataclass and a `main`; tests run their short versions, the
long versions write their results to benchmarks/results/reliability/ (summarised in docs/RELIABILITY.md).
"""
