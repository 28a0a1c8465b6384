"""Training as the front door runs it: the trainers' Ray Train runner with the evaluation
stage's epoch hooks (the online kNN monitor), which trainers must not import."""
from __future__ import annotations


def run_monitored_training(config, address=None, verbose: bool = True, progress=None):
    """`trainers.runner.run_training` with the epoch hooks the config asks for (the kNN monitor)."""
    from evaluation.monitor import monitor_hooks
    from trainers.runner import run_training

    return run_training(config, address=address, epoch_hooks=monitor_hooks(config),
                        verbose=verbose, progress=progress)
