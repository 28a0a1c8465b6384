"""Suite-wide settings. Stage fixtures live in tests/<stage>/conftest.py."""
import os

# No telemetry, no Ray probing outside addresses, quiet progress bars in logs.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
