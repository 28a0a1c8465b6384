"""The real `Trainer.train_step` / `step_and_log`: accumulation, precision, compile, the
non-finite guard, and which collectives a step issues (and on which device)."""
from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from tests.trainers.spawn import run_distributed
from testbed.numerics import default_dtype
from tests.trainers.tiny import (TINY_CONFIGS, make_trainer, make_views, record,
                                 view_batch)
from trainers import distributed
from trainers.backbones import Backbone
from trainers.methods import METHODS, Method, MethodConfig, register_method
from trainers.train_loop import step_and_log
from trainers.trainer import NonFiniteLoss


class _ToyBackbone(Backbone):
    """A BatchNorm-free conv net (accumulation is exact only without BN statistics)."""

    family = "convnet"
    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ToyConfig(MethodConfig):
    name: Literal["toy_regression"] = "toy_regression"


class ToyRegression(Method):
    """A per-sample loss without BatchNorm: the case where accumulation is exact.

    (With BatchNorm each micro-batch is normalised by its own statistics and running stats
    move once per micro-batch; contrastive losses see only the micro-batch's negatives; so
    accumulation is then a different, smaller-batch objective, as in every framework.)
    """

    name = "toy_regression"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.backbone = _ToyBackbone()
        self.head = nn.Linear(4, 4)

    def training_step(self, views: list[Tensor], step: int):
        target = self.backbone(views[1]).detach()
        loss = (self.head(self.backbone(views[0])) - target).pow(2).mean()
        return loss, {"loss": loss.detach()}


TOY = {"name": "toy_regression", "backbone": {"name": "convnet", "width": 0.25}}


@pytest.fixture(autouse=True, scope="module")
def _toy_method_registered():
    """The toy method is in the registry only while this module's tests run."""
    register_method(ToyRegression)
    yield
    METHODS.pop("toy_regression", None)


def _run(config: dict, steps: int, **fields) -> list[dict]:
    if config["name"] not in METHODS:  # a spawned rank imports this module afresh
        register_method(ToyRegression)
    with default_dtype(torch.float64):
        trainer = make_trainer(config, 10, **fields)
        return [record(trainer, trainer.train_step(view_batch(v, s))) for s, v in enumerate(make_views(config, steps))]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x["loss"], y["loss"], atol=1e-10, rtol=1e-10)
        assert x["grads"].keys() == y["grads"].keys()
        for key in x["grads"]:
            torch.testing.assert_close(x["grads"][key], y["grads"][key], atol=1e-10, rtol=1e-10)
        for key in x["state"]:
            torch.testing.assert_close(x["state"][key], y["state"][key], atol=1e-10, rtol=1e-10)


def _accumulated_on_ranks() -> list[dict]:
    return _run(TOY, 3, gradient_accumulation_steps=2)


def test_gradient_accumulation_equals_the_full_batch():
    _assert_same(_run(TOY, 3, gradient_accumulation_steps=2), _run(TOY, 3))
    _assert_same(_run(TOY, 3, gradient_accumulation_steps=4), _run(TOY, 3))


@pytest.mark.integration
def test_accumulation_on_two_ranks_equals_one_rank_full_batch():
    """2 gloo ranks x 2 micro-batches (DDP no_sync on the first) == 1 rank, whole batch."""
    single = _run(TOY, 3)
    for runs in run_distributed(_accumulated_on_ranks, world_size=2):
        _assert_same(runs, single)


def test_accumulation_must_divide_the_worker_batch():
    from tests.trainers.tiny import train_config

    with pytest.raises(Exception, match="gradient_accumulation_steps=3"):
        train_config(TOY, gradient_accumulation_steps=3)


def test_fp16_with_grad_scaler_trains_on_cpu():
    trainer = make_trainer(TINY_CONFIGS["simclr"], 10, precision="fp16")
    assert trainer.scaler.is_enabled() and trainer.amp_dtype == torch.float16
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    losses = [trainer.train_step(view_batch(v, s))["loss"] for s, v in enumerate(make_views(TINY_CONFIGS["simclr"], 3))]
    assert all(torch.isfinite(l) for l in losses)
    assert any(not torch.equal(before[k], v) for k, v in trainer.method.state_dict().items() if k.endswith("weight"))


def test_bf16_and_channels_last_train_on_cpu():
    trainer = make_trainer(TINY_CONFIGS["simclr"], 10, precision="bf16", channels_last="on")
    conv = next(m for m in trainer.method.backbone.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for s, v in enumerate(make_views(TINY_CONFIGS["simclr"], 2)):
        assert torch.isfinite(trainer.train_step(view_batch(v, s))["loss"])


@pytest.mark.parametrize("name, expected", [("simclr", True), ("moco_v3_vit", False)])
def test_channels_last_auto_is_the_same_on_cpu_as_on_cuda(name, expected):
    """auto: conv nets train NHWC on the CPU too (the layout GPUs train in; faster on oneDNN)."""
    trainer = make_trainer(TINY_CONFIGS[name], 10)
    assert trainer.channels_last is expected
    conv = next(m for m in trainer.method.backbone.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expected
    off = make_trainer(TINY_CONFIGS[name], 10, channels_last="off")
    assert not off.channels_last


def test_channels_last_by_default_follows_the_backbone_family_not_its_modules():
    """auto: NHWC for the conv families; decided by `family`, not by the modules' class names."""
    from trainers.backbones import BackboneConfig, build_backbone
    from trainers.trainer import wants_channels_last

    assert wants_channels_last(build_backbone("convnet")) and wants_channels_last(build_backbone("resnet18"))
    vit = build_backbone(BackboneConfig(name="vit_tiny", image_size=16))
    swin = build_backbone(BackboneConfig(name="swin_nano", image_size=16))  # has convolutions, is no conv net
    assert not wants_channels_last(vit) and not wants_channels_last(swin)
    vit.family = "convnet"  # a VisionTransformer that says it is a conv net is taken at its word
    assert wants_channels_last(vit)


@pytest.mark.integration
def test_compile_trains_a_tiny_model_on_cpu():
    trainer = make_trainer(TOY, 10, compile=True)
    assert "_orig_mod" not in "".join(trainer.method.state_dict())  # checkpoint keys unchanged
    losses = [float(trainer.train_step(view_batch(v, s))["loss"]) for s, v in enumerate(make_views(TOY, 3))]
    reference = make_trainer(TOY, 10)
    expected = [float(reference.train_step(view_batch(v, s))["loss"]) for s, v in enumerate(make_views(TOY, 3))]
    assert losses == pytest.approx(expected, rel=1e-4)


def _nan_views(config: dict, steps: int, bad: int) -> list[list[Tensor]]:
    views = make_views(config, steps)
    views[bad][0][0, 0, 0, 0] = float("nan")
    return views


def test_nonfinite_loss_stops_at_the_next_log_step():
    trainer = make_trainer(TINY_CONFIGS["simclr"], 10, run={"log_every_steps": 3, "checkpoint_every_steps": 3})
    views = _nan_views(TINY_CONFIGS["simclr"], 3, bad=1)
    assert step_and_log(trainer, view_batch(views[0], 0)) is None
    assert step_and_log(trainer, view_batch(views[1], 1)) is None  # no host sync: noticed later
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        step_and_log(trainer, view_batch(views[2], 2))


def test_nonfinite_loss_skip_leaves_the_weights_and_says_so(caplog):
    trainer = make_trainer(TINY_CONFIGS["simclr"], 10, nonfinite_loss="skip")
    views = _nan_views(TINY_CONFIGS["simclr"], 2, bad=0)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items() if "running" not in k and "tracked" not in k}
    with caplog.at_level("WARNING"):
        logs = trainer.train_step(view_batch(views[0], 0))
    assert logs["skipped_steps"] == 1.0 and "update skipped" in caplog.text
    for k, v in before.items():
        assert torch.equal(trainer.method.state_dict()[k], v), k
    logs = trainer.train_step(view_batch(views[1], 1))
    assert torch.isfinite(logs["loss"]) and logs["skipped_steps"] == 1.0


# ------------------------------------------------------------------ the loop's collectives
def _collectives_of_the_loop() -> dict:
    """step_and_log (the loop's own per-step code) with every Python-level collective recorded."""
    calls: list[tuple[str, str]] = []
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather", "broadcast", "all_gather_into_tensor")}

    def recorder(name):
        def wrapped(tensor_or_list, *args, **kwargs):
            tensors = [tensor_or_list] if isinstance(tensor_or_list, Tensor) else list(tensor_or_list)
            if args and isinstance(args[0], Tensor):
                tensors.append(args[0])
            calls.append((name, {t.device.type for t in tensors}))
            return originals[name](tensor_or_list, *args, **kwargs)
        return wrapped

    trainer = make_trainer(TINY_CONFIGS["simclr"], 10, run={"log_every_steps": 2, "checkpoint_every_steps": 100})
    per_step, records = [], []
    for name in originals:
        setattr(dist, name, recorder(name))
    try:
        for s, v in enumerate(make_views(TINY_CONFIGS["simclr"], 4)):
            calls.clear()
            records.append(step_and_log(trainer, view_batch(v, s)))
            per_step.append(list(calls))
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return {"per_step": per_step, "device": trainer.device, "records": records,
            "ddp": type(trainer.step_module).__name__}


@pytest.mark.integration
def test_the_loops_collectives_run_on_the_training_device_and_only_log_steps_add_any():
    ranks = run_distributed(_collectives_of_the_loop, world_size=2)
    for res in ranks:
        assert res["ddp"] == "_DDP"
        devices = set().union(*(d for step in res["per_step"] for _, d in step))
        assert devices == {res["device"]}, devices
        quiet, log_step = res["per_step"][0], res["per_step"][1]  # steps 1 (no log) and 2 (log)
        # + ONE all-gather of the ranks' counters + ONE all-reduce of all logs; nothing else is added
        assert quiet and len(log_step) == len(quiet) + 2 and log_step[-2:] == [("all_gather", {"cpu"}), ("all_reduce", {"cpu"})]
        assert res["per_step"][2] == quiet
        assert res["records"][0] is None and res["records"][1]["step"] == 2
    digests = [res["records"][1]["batch_digest"] for res in ranks]
    assert digests[0] == digests[1] and len(digests[0]) == 14  # one digest of the global batch
    assert [res["records"][1]["rank_steps"] for res in ranks] == [[2, 2]] * 2


def test_backend_string_routes_cpu_tensors_to_gloo_and_cuda_to_nccl():
    assert distributed.process_group_backend(use_gpu=True) == "cpu:gloo,cuda:nccl"
    assert distributed.process_group_backend(use_gpu=False) == "gloo"


def test_ddp_searches_unused_parameters_only_while_a_method_freezes_some():
    swav = make_trainer(TINY_CONFIGS["swav"], 10)  # freeze_prototypes_steps=1
    assert swav.unused_parameters_until == 1 and swav._find_unused
    for s, v in enumerate(make_views(TINY_CONFIGS["swav"], 2)):
        swav.train_step(view_batch(v, s))
    assert not swav._find_unused
    simclr = make_trainer(TINY_CONFIGS["simclr"], 10)
    assert simclr.unused_parameters_until == 0 and not simclr._find_unused
    assert distributed.unused_parameter_steps(nn.Linear(2, 2)) == 0


def test_cuda_defaults_are_tf32_and_cudnn_autotuning_for_conv_nets():
    from trainers.trainer import apply_cuda_flags, cuda_flags

    def flags(method: dict, **fields) -> dict:
        trainer = make_trainer(method, 3, **fields)
        return cuda_flags(trainer.config, trainer.method.backbone)

    assert flags(TINY_CONFIGS["simclr"]) == {"matmul_precision": "high", "cudnn_allow_tf32": True, "cudnn_benchmark": True}
    assert flags(TINY_CONFIGS["moco_v3_vit"])["cudnn_benchmark"] is False  # a ViT: nothing to tune
    assert flags(TINY_CONFIGS["simclr"], tf32=False, cudnn_benchmark="off") == {
        "matmul_precision": "highest", "cudnn_allow_tf32": False, "cudnn_benchmark": False}
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        apply_cuda_flags({"matmul_precision": "high", "cudnn_allow_tf32": False, "cudnn_benchmark": True})
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cudnn.benchmark is True
    finally:
        apply_cuda_flags({"matmul_precision": before[0], "cudnn_allow_tf32": before[1], "cudnn_benchmark": before[2]})


def _compiled_frames(call) -> int:
    from torch._dynamo.utils import counters

    counters.clear()
    call()
    return int(counters["frames"]["ok"])


@pytest.mark.integration  # inductor compiles a ViT and a conv net on the CPU: about a minute
@pytest.mark.parametrize("method", ["ibot", "simclr"])
def test_compile_covers_every_student_entry_point(method):
    """`compile: true` compiles what the step calls: the token path of a ViT method (iBOT's
    masked student goes through forward_tokens, which nn.Module.compile does not wrap) and the
    plain forward of a conv net."""
    import torch._dynamo

    torch._dynamo.reset()
    trainer = make_trainer(TINY_CONFIGS[method], 10, compile=True)
    backbone = trainer.method.backbone
    x = torch.randn(2, 3, 16, 16)
    assert _compiled_frames(lambda: backbone(x)) >= 1
    if method == "ibot":
        assert _compiled_frames(lambda: backbone.forward_tokens(x)) >= 1
        eager = make_trainer(TINY_CONFIGS[method], 10).method.backbone
        assert _compiled_frames(lambda: eager.forward_tokens(x)) == 0
    assert "_orig_mod" not in "".join(trainer.method.state_dict())
    logs = trainer.train_step(view_batch(make_views(TINY_CONFIGS[method], 1)[0], 0))
    assert torch.isfinite(logs["loss"])
