"""Test and benchmark tooling, kept out of the stages: a TCP proxy that drops connections
(`faulty_proxy`) and generators of large synthetic datasets (`scale`).

Tests and benchmarks import it; no stage does (tests/test_import_rules.py).
"""
