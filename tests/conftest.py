"""Suite-wide settings. Stage fixtures live in tests/<stage>/conftest.py."""
import os

# No telemetry, no Ray probing outside addresses, quiet progress bars in logs.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ray Train's controller polls its workers every 2 s: a run's end and a worker's failure are seen
# up to 2 s late, once per training attempt (~30 in the suite). 0.5 s polls cost nothing on tiny
# runs; Ray's processes inherit this from the test process (ray.init, LocalRayCluster, job drivers).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# The integration phase runs on two pytest-xdist workers, a file at a time each (scripts/test.sh:
# --dist loadfile hands out files in collection order). Its longest files go first, so that they
# do not start last and leave one worker running them alone at the end.
LONGEST_FIRST = ("tests/deploy/test_train_on_cluster.py", "tests/viewstream/test_demo.py",
                 "tests/trainers/test_train_elastic_ray.py", "tests/trainers/test_train_ray.py")


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within and among the other files is unchanged
