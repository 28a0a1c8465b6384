"""Methods on one process: registry, bad configuration (acceptance 6), bitwise resume (5)."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

from tests.trainers.tiny import TINY_CONFIGS, make_trainer, make_views, record, view_batch
from trainers.methods import METHODS, Method, MethodConfig, build_method, parse_method_config, stochastic_layers
from groundfloor.errors import UsageError


def test_registry_has_every_method():
    assert set(METHODS) == {"simclr", "moco_v2", "moco_v3", "swav", "dino", "byol", "simsiam", "barlow_twins", "vicreg", "moby",
                            "cpc_v2", "ibot", "sit"}
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and cls.name == name and cls.config_class().name == name


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_built_method_has_the_runner_interface(name):
    config = TINY_CONFIGS[name]
    method = build_method(config, seed=0)
    assert method.num_global_views == 2 and method.num_local_views == config.get("num_local_views", 0)
    images = torch.randn(2, 3, 16, 16)
    method.eval()
    assert method.eval_backbone(images).shape == (2, method.feature_dim)
    groups = method.parameter_groups(0.05)
    decayed = [p for g in groups if not g["norm_or_bias"] for p in g["params"]]
    plain = [p for g in groups if g["norm_or_bias"] for p in g["params"]]
    for g in groups:  # weight decay and LARS adaptation are separate flags, both off for biases/norms
        assert g["weight_decay"] == (0.0 if g["norm_or_bias"] else 0.05) and g["lars_adaptation"] is not g["norm_or_bias"]
    assert all(p.ndim > 1 for p in decayed) and any(p.ndim == 1 for p in plain)
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert {id(p) for p in decayed + plain} == trainable and len(decayed) + len(plain) == len(trainable)
    fixed = {id(p) for g in groups if g["fixed_lr"] for p in g["params"]}
    assert fixed == ({id(p) for p in method.predictor.parameters()} if name == "simsiam" else set())
    assert not any(type(m).__name__.startswith("BatchNorm") for m in method.modules())  # all SyncBatchNorm


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a = build_method(TINY_CONFIGS["byol"], seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_method(TINY_CONFIGS["byol"], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------ bad configuration
@pytest.mark.parametrize(
    "config,match",
    [
        ({"name": "simclrr"}, r"unknown method 'simclrr'; expected one of: barlow_twins, byol, cpc_v2, dino"),
        ({"name": "simclr", "backbone": {"name": "resnet101"}}, r"backbone.name='resnet101' is unknown.*resnet18"),
        ({"name": "simclr", "temperature": 0}, r"temperature: Input should be greater than 0 \(got 0\)"),
        ({"name": "dino", "teacher_temperature": -0.04}, r"teacher_temperature: .*\(got -0.04\)"),
        ({"name": "moco_v2", "queue_size": 1000, "global_batch_size": 256}, r"queue_size=1000 is not divisible by global_batch_size=256"),
        ({"name": "simclr", "num_local_views": 6}, r"num_local_views=6: method 'simclr' has no multi-crop"),
        ({"name": "byol", "num_local_views": 2}, r"num_local_views=2"),
        ({"name": "simclr", "temprature": 0.1}, r"unknown field 'temprature'"),
        ({"temperature": 0.1}, r"needs a 'name'"),
    ],
)
def test_bad_configuration_raises_one_clear_line(config, match):
    with pytest.raises(UsageError, match=match) as error:
        build_method(config)
    assert "\n" not in str(error.value)


def test_swav_without_queue_and_small_batch_warns_to_enable_the_queue():
    with pytest.warns(UserWarning, match=r"global_batch_size=256 < num_prototypes=3000.*enable the queue"):
        parse_method_config({"name": "swav", "global_batch_size": 256})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_method_config({"name": "swav", "global_batch_size": 256, "queue_size": 3840})


def test_wrong_views_are_rejected_with_counts():
    method = build_method(TINY_CONFIGS["dino"], seed=0)
    with pytest.raises(UsageError, match="2 global \\+ 2 local views, got 2"):
        method.training_step([torch.randn(2, 3, 16, 16)] * 2, 0)
    with pytest.raises(UsageError, match="view 1 has shape"):
        method.training_step([torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)] + [torch.randn(2, 3, 8, 8)] * 2, 0)


def test_moco_queue_must_divide_the_actual_global_batch():
    config = dict(TINY_CONFIGS["moco_v2"], global_batch_size=None, queue_size=20)
    method = build_method(config, seed=0)
    with pytest.raises(UsageError, match="queue_size=20 is not divisible by the global batch 8"):
        method.training_step([torch.randn(8, 3, 16, 16)] * 2, 0)


def test_method_config_is_validated_data():
    config = parse_method_config({"name": "dino", "backbone": {"name": "vit_tiny"}})
    assert isinstance(config, MethodConfig) and config.out_dim == 65536 and config.backbone.name == "vit_tiny"
    assert parse_method_config(config) == config


# ------------------------------------------------------------------------ resume (acceptance 5)
def _roundtrip(obj) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", [n for n in TINY_CONFIGS if n != "moco_v3_vit"])
def test_state_dict_resume_is_bitwise_identical(name, tmp_path):
    """Through the real Trainer: save at step 3, restore into a differently seeded one, replay."""
    config, total, stop = TINY_CONFIGS[name], 5, 3
    views = make_views(config, total, seed=7)

    trainer = make_trainer(config, total)
    for step in range(stop):
        trainer.train_step(view_batch(views[step], step))
    trainer.save(str(tmp_path))
    rng = torch.get_rng_state()
    uninterrupted = [record(trainer, trainer.train_step(view_batch(views[s], s))) for s in range(stop, total)]

    # different init: everything must come from the checkpoint. A method with its own per-sample
    # draws (iBOT's masks, SiT's corruptions) keeps the run's seed, which names those draws as it
    # names the views (data, from the config); its whole state (weights, mask token, centres, EMA
    # teacher) is overwritten with noise instead.
    own_draws = METHODS[config["name"]].needs_sample_ids
    resumed = make_trainer(config, total, seed=0 if own_draws else 1)
    if own_draws:
        with torch.no_grad():
            for value in resumed.method.state_dict().values():
                if value.is_floating_point():
                    value.copy_(torch.randn_like(value))
    if config["name"] == "ibot":
        assert not torch.equal(resumed.method.center, trainer.method.center)
    resumed.restore(str(tmp_path))
    assert resumed.step == stop
    torch.set_rng_state(rng)
    replay = [record(resumed, resumed.train_step(view_batch(views[s], s))) for s in range(stop, total)]

    for a, b in zip(uninterrupted, replay):
        assert torch.equal(a["loss"], b["loss"])
        assert a["state"].keys() == b["state"].keys()
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), key
    if config["name"] == "ibot":
        assert {"center", "patch_center", "mask_token"} <= set(uninterrupted[0]["state"])


# ------------------------------------------------------------------------ teachers and clipping
VIT_DROP = {"name": "vit_tiny", "image_size": 16, "drop_path_rate": 0.2}
TEACHERS = {
    "dino": ("teacher_backbone", "teacher_head"),
    "ibot": ("teacher_backbone", "teacher_head"),
    "byol": ("target_backbone", "target_projector"),
    "moco_v2": ("key_backbone", "key_projector"),
    "moco_v3": ("momentum_backbone", "momentum_projector"),
    "moby": ("momentum_backbone", "momentum_projector"),
    "sit": ("teacher_backbone", "teacher_head"),
}


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_no_teacher_or_target_network_has_drop_path_or_dropout(name):
    """DINO main_dino.py 162-166: student with drop_path_rate, teacher built without (same for all EMA copies)."""
    config = dict(TINY_CONFIGS[name], backbone=VIT_DROP)
    config.pop("num_local_views", None)
    if name == "dino":
        config["num_local_views"] = 0
    method = build_method(config, seed=0)
    method.train()
    assert stochastic_layers(method.backbone)  # the student really has drop-path
    x = torch.randn(32, 3, 16, 16)  # 32 samples: two drop-path draws agree on all by chance ~1e-5 (4: ~0.2)
    for attr in TEACHERS[name]:
        teacher = getattr(method, attr)
        assert stochastic_layers(teacher) == [], attr
        assert all(not m.training or m.p == 0 for m in teacher.modules() if isinstance(m, torch.nn.Dropout))
    teacher = getattr(method, TEACHERS[name][0])
    with torch.no_grad():  # in train mode, the teacher is deterministic; the student is not
        assert torch.equal(teacher(x), teacher(x))
        assert not torch.equal(method.backbone(x), method.backbone(x))


def test_dino_clips_each_parameter_as_dino_utils_clip_gradients():
    method = build_method(TINY_CONFIGS["dino"], seed=0)
    torch.manual_seed(0)
    params = [p for p in method.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = torch.randn_like(p) * (10.0 if i % 2 else 0.01)
    expected = []
    for p in params:  # facebookresearch/dino utils.py 132-141
        g = p.grad.detach().clone()
        clip_coef = 3.0 / (g.norm(2) + 1e-6)
        expected.append(g * clip_coef if clip_coef < 1 else g)
    method.clip_gradients(3.0)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)
    assert max(float(p.grad.norm()) for p in params) <= 3.0 + 1e-4
    assert min(float(p.grad.norm()) for p in params) < 1.0  # small ones untouched, not rescaled to 3


def test_other_methods_clip_the_global_norm():
    method = build_method(TINY_CONFIGS["byol"], seed=0)
    params = [p for p in method.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    method.clip_gradients(1.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert float(total) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("name", [n for n in TINY_CONFIGS if n != "moco_v3_vit"])
def test_every_frozen_copy_is_declared_in_momentum_pairs(name):
    """EMA updates are declared (base.momentum_pairs), so no frozen network is left out of the update."""
    method = build_method(TINY_CONFIGS[name], seed=0)
    targets = {id(p) for _, target in method.momentum_pairs() for p in target.parameters()}
    frozen = {id(p) for child in method.children() if list(child.parameters())
              and not any(p.requires_grad for p in child.parameters()) for p in child.parameters()}
    assert frozen == targets
    for online, target in method.momentum_pairs():
        assert [p.shape for p in online.parameters()] == [p.shape for p in target.parameters()]
