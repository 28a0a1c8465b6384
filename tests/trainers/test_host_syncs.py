"""No step waits for the device: a 2-rank training step with SyncBatchNorm makes no host sync
outside log steps (the counter sees the calls that sync on a GPU; the CPU and CUDA step are one
code path, so 0 here is the CUDA count too)."""
from __future__ import annotations

import pytest
import torch

from testbed.host_syncs import counting_host_syncs
from tests.trainers.spawn import run_distributed
from tests.trainers.tiny import TINY_CONFIGS, make_trainer, make_views, view_batch
from trainers.distributed import SyncBatchNorm
from trainers.train_loop import step_and_log


def test_the_counter_sees_value_reads_and_data_dependent_shapes():
    x = torch.arange(6.0)
    counter = [0]
    with counting_host_syncs(counter):
        x.item() if x.numel() == 1 else None
        float(x[0])
        _ = x[x > 2]                 # boolean mask: the result's shape depends on values
        torch.nonzero(x)
        _ = x[1:3] * 2               # plain slicing and arithmetic: no sync
    assert counter[0] == 3
    assert torch.Tensor.__getitem__ is not None and float(x[1]) == 1.0  # restored


def _syncs_per_quiet_step(method: str) -> dict:
    trainer = make_trainer(TINY_CONFIGS[method], 10, run={"log_every_steps": 3, "checkpoint_every_steps": 100})
    sync_bn = sum(isinstance(m, SyncBatchNorm) for m in trainer.method.modules())
    counts = []
    for s, views in enumerate(make_views(TINY_CONFIGS[method], 5)):
        counter = [0]
        with counting_host_syncs(counter):
            step_and_log(trainer, view_batch(views, s))
        counts.append(counter[0])
    return {"counts": torch.tensor(counts), "sync_bn": sync_bn}


@pytest.mark.integration
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_two_rank_step_with_syncbn_makes_no_host_sync(method):
    for rank in run_distributed(_syncs_per_quiet_step, method, world_size=2):
        assert rank["sync_bn"] > 0  # the step really normalises across ranks
        counts = rank["counts"].tolist()
        quiet = [c for step, c in enumerate(counts, 1) if step % 3]  # steps 3 is a log step
        assert quiet == [0] * len(quiet), counts


def test_syncbn_statistics_stay_fp32_under_bf16_autocast():
    """One rank falls back to plain batch norm; the distributed function is checked on 2 ranks
    by test_distributed; here: the module returns the input dtype, its running stats fp32."""
    bn = SyncBatchNorm(4)
    x = torch.randn(8, 4, 5, 5).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bn(x)
    assert out.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
