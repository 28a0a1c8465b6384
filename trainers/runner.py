"""The driver of `viewstream train`: check everything, place workers on Ray, report.

Every check that can fail without workers runs first (config fields, dataset present, storage
usable, the cluster big enough), so a bad run fails in seconds with an error naming the field.
Then a Ray Train `TorchTrainer` runs `train_loop_per_worker` on each worker; rerunning with the
same `run.name` and `run.storage` resumes from the latest checkpoint (Ray Train restores a run
by its storage path and name), and `run.max_failures` restarts failed workers from it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from sharding.dataset import load_manifest
from groundfloor.ray_connect import connect_ray
from groundfloor.storage import Storage, absolute, join, resolve_endpoint
from trainers.config import TrainConfig, dataset_roots
from trainers.fault_drill import FaultDrillHook
from trainers.storage import storage_for
from groundfloor.errors import UsageError


@dataclass
class TrainResult:
    """What a finished run tells its caller."""

    metrics: dict[str, Any]
    checkpoint: Optional[str]
    out_dir: Path

    def summary(self) -> str:
        m = self.metrics
        lines = [
            f"steps            {m.get('step')} of {m.get('total_steps')} (resumed from step {m.get('resumed_from_step', 0)})",
            f"final loss       {m.get('loss', float('nan')):.4f}",
            f"samples/s        {m.get('samples_per_s', 0):.1f}",
            f"waiting for data {100 * m.get('data_wait_fraction', 0):.1f}% of step time",
            f"checkpoint       {self.checkpoint}",
            f"metrics          {self.out_dir / 'metrics.jsonl'} (TensorBoard: {self.out_dir / 'tensorboard'})",
        ]
        return "\n".join(lines)


def check_inputs(config: TrainConfig) -> None:
    """Fail fast on inputs that don't exist: the datasets, and where checkpoints go."""
    storage = Storage(config.data.endpoint_url)
    datasets = [("data.dataset", r) for r in dataset_roots(config.data.dataset)]
    if config.monitor:
        datasets += [("monitor.train_dataset", r) for r in dataset_roots(config.monitor.train_dataset)]
        datasets += [("monitor.test_dataset", r) for r in dataset_roots(config.monitor.test_dataset)]
    for field, root in datasets:
        try:
            load_manifest(root, storage)
        except UsageError as err:
            raise UsageError(f"{field}: {err}") from None
    try:  # a local folder is made; a bucket must exist; http(s) is read-only
        storage.check_writable(config.run.storage)
    except UsageError as err:
        raise UsageError(f"run.storage: {err}") from None


def _shortfall(config: TrainConfig, resources: dict[str, float]) -> Optional[str]:
    """What the cluster lacks right now to place the fewest workers the run may start with
    (all of them; an elastic run's min), or None."""
    s = config.scaling
    n, shown = s.min_workers, s.num_workers if not s.elastic else list(s.num_workers)
    cpus_needed, cpus_have = n * s.cpus_per_worker, resources.get("CPU", 0)
    if cpus_needed > cpus_have:
        return (f"scaling.num_workers={shown} x cpus_per_worker={s.cpus_per_worker} needs "
                f"{cpus_needed:g} CPUs; the Ray cluster has {cpus_have:g}")
    if s.use_gpu and n > resources.get("GPU", 0):
        return (f"scaling.use_gpu with num_workers={shown} needs {n} GPUs; "
                f"the Ray cluster has {resources.get('GPU', 0):g}")
    return None


def worker_bundles(config: TrainConfig) -> list[dict[str, float]]:
    """One resource bundle per Ray Train worker (what its placement group will ask for; an
    elastic run asks for its max, as Ray Train's ElasticScalingPolicy does)."""
    s = config.scaling
    bundle = {"CPU": s.cpus_per_worker, **({"GPU": 1.0} if s.use_gpu else {})}
    return [dict(bundle) for _ in range(s.max_workers)]


def scaling_config(config: TrainConfig):
    """Ray Train's `ScalingConfig` for the run.

    ``[min, max]`` becomes the tuple ``num_workers=(min, max)`` of Ray Train's elastic
    training (ray/train/v2/api/config.py, `ScalingConfig.num_workers: Union[int, Tuple[int,
    int]]`, `elasticity_enabled`; scaling_policy/factory.py then picks `ElasticScalingPolicy`,
    which starts or restarts the worker group with as many workers as the reserved resources
    hold, capped at max and never below min). The config has already checked that every count
    in the range divides batch_size.
    """
    import ray.train

    s = config.scaling
    return ray.train.ScalingConfig(num_workers=tuple(s.num_workers) if s.elastic else s.num_workers,
                                   use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker})


def check_cluster(config: TrainConfig, poll_s: float = 2.0, can_grow: bool = True) -> None:
    """The cluster must be able to place every worker at once (else Ray would wait forever).

    An autoscaling cluster (deploy/aws/cluster.yaml: GPU workers min 0; KubeRay replicas 0)
    has none of the workers' resources at submit time. So when the request does not fit yet,
    the autoscaler is asked for the workers' bundles (`ray.autoscaler.sdk.request_resources`,
    the same demand the placement group would create) and the check waits up to
    `scaling.wait_for_resources_s`, printing what it waits for; only then does it fail, with
    a message naming the fields. `wait_for_resources_s: 0`, or `can_grow=False` (the local Ray
    this process started), fails at once.
    """
    import ray

    missing = _shortfall(config, ray.cluster_resources())
    if missing is None:
        return
    wait_s = config.scaling.wait_for_resources_s if can_grow else 0.0
    if wait_s <= 0:
        raise UsageError(missing)
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=worker_bundles(config))
    print(f"waiting up to {wait_s:g} s for the cluster to scale up: {missing}", flush=True)
    deadline = time.monotonic() + wait_s
    while missing is not None and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        missing = _shortfall(config, ray.cluster_resources())
    if missing is not None:
        raise UsageError(
            f"{missing} after waiting {wait_s:g} s (scaling.wait_for_resources_s) for the autoscaler; "
            "check the cluster's max_workers / node types, or lower scaling.num_workers")
    print("the cluster has scaled up; starting the workers", flush=True)


def torch_config(config: TrainConfig):
    """Ray Train's process-group settings: the backend per device type and the timeout.

    ``cpu:gloo,cuda:nccl`` on GPUs (trainers/distributed/process_group.py says why); the timeout covers one
    collective plus the online monitor's budget, so ranks waiting for rank 0's probe survive.
    """
    from ray.train.torch import TorchConfig

    from trainers.distributed.process_group import process_group_backend

    return TorchConfig(backend=process_group_backend(config.scaling.use_gpu),
                       timeout_s=config.collective_timeout_s())


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """Local paths made absolute here: workers run in other directories (and maybe nodes)."""
    def absolute_spec(spec):  # a root, or a list of roots / {root, ...} entries
        if isinstance(spec, list):
            return [absolute(d) if isinstance(d, str) else d.model_copy(update={"root": absolute(d.root)})
                    for d in spec]
        return absolute(spec)

    config = config.model_copy(deep=True)
    config.data.endpoint_url = resolve_endpoint(config=config.data.endpoint_url)  # workers lack the env
    config.data.dataset = absolute_spec(config.data.dataset)
    if config.monitor:
        config.monitor.train_dataset = absolute_spec(config.monitor.train_dataset)
        config.monitor.test_dataset = absolute_spec(config.monitor.test_dataset)
    config.run.storage = absolute(config.run.storage)
    config.run.out_dir = os.path.abspath(config.run.output_dir())
    return config


def step_hooks(config: TrainConfig) -> list[Any]:
    """What every worker's Trainer runs before each step: the recovery drills of `run.fault`."""
    drills = FaultDrillHook.from_config(config)
    return [drills] if drills is not None else []


RAY_LOG_FILE = "ray.log"


def run_training(config: TrainConfig, address: Optional[str] = None,
                 epoch_hooks: Sequence[Any] = (), *, verbose: bool = True,
                 progress: Optional[TextIO] = None) -> TrainResult:
    """Train `config` on Ray Train (resuming the run if it has checkpoints) and return the result.

    `epoch_hooks` are `trainers.train_loop.EpochHook` objects (e.g. the online kNN probe that
    the front door adds from `evaluation`); they are pickled to every worker. Unless `verbose`,
    Ray's own log lines go to ``<out_dir>/ray.log`` instead of the terminal. With `progress`
    (a stream, e.g. sys.stdout), the driver draws the live progress line there.
    """
    config.method_config()
    config = with_absolute_paths(config)
    check_inputs(config)
    log_file = None if verbose else Path(config.run.out_dir) / RAY_LOG_FILE
    started_ray = connect_ray(address or config.run.address, num_cpus=None, log_file=log_file)
    try:
        check_cluster(config, can_grow=not started_ray)  # a local Ray we started cannot grow
        return _fit(config, epoch_hooks, progress)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _fit(config: TrainConfig, epoch_hooks: Sequence[Any] = (), progress: Optional[TextIO] = None) -> TrainResult:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainers.train_loop import train_loop_per_worker

    from trainers.progress import ProgressLine, board_name, create_board

    storage_path, filesystem = storage_for(config.run.storage, config.data.endpoint_url)
    name = board_name()
    board = create_board(name)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "epoch_hooks": list(epoch_hooks),
                           "step_hooks": step_hooks(config), "progress_board": name},
        torch_config=torch_config(config),
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.keep_checkpoints),
        ),
    )
    try:
        if progress is not None:
            with ProgressLine(board, progress):
                result = trainer.fit()
        else:
            result = trainer.fit()
    finally:
        ray.kill(board)
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and filesystem is not None:  # a path inside the remote root: give the URI back
        checkpoint = join(config.run.storage, checkpoint[len(storage_path):])
    return TrainResult(dict(result.metrics or {}), checkpoint, config.run.output_dir())
