"""Eval/embed/monitor take a device; the online monitor keeps to its budget."""
from __future__ import annotations

import pytest
import torch

from evaluation.monitor import OnlineKnn
from viewstream.cliflags import resolve_device
from trainers.backbones import BackboneConfig, build_backbone
from trainers.config import MonitorConfig
from viewstream.cli import main
from groundfloor.errors import UsageError


def test_device_flag_resolves_and_refuses_a_missing_gpu():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--device cuda: torch sees no CUDA GPU"):
            resolve_device("cuda")


def test_embed_takes_device(fmnist_shards, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    assert "--device" in capsys.readouterr().out


@pytest.mark.integration
def test_monitor_stops_at_its_budget(fmnist_shards):
    config = MonitorConfig(train_dataset=fmnist_shards["train"], test_dataset=fmnist_shards["test"],
                           image_size=28, batch_size=32, budget_s=1e-6)
    probe = OnlineKnn(config, device="cpu")
    backbone = build_backbone(BackboneConfig(name="convnet", width=0.25, small_images=True))
    top1 = probe(backbone)
    assert probe.truncated and 0.0 <= top1 <= 1.0
    full = OnlineKnn(config.model_copy(update={"budget_s": 600.0}), device="cpu")
    full(backbone)
    assert not full.truncated
