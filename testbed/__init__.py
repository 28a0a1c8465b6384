"""Test and benchmark tooling, kept out of the stages: a TCP proxy that drops connections
(`faulty_proxy`), generators of large synthetic datasets (`scale`), host-sync counters
(`host_syncs`), float64 model building (`numerics`) and the end of a spawned gloo rank
(`rank_exit`).

Tests and benchmarks import it; no stage does (tests/test_import_rules.py).
"""
