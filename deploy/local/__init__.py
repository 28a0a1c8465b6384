"""A PID-tracked local multi-node Ray cluster on 127.0.0.1 (tests, benchmarks, deploy/local_cluster.sh)."""
