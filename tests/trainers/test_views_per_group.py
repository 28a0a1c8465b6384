"""`data.views_per_group` G > 2 in the trainers: the multi-positive losses of SimCLR and MoCo v3 take
all G global views (every view of a group a positive of every other); BYOL, SimSiam and DINO take
them in their pair-averaged form (every view against every other view of its sample); other
methods refuse it.

References are float64 loops as in tests/trainers/test_losses_multi_positive.py; the 2-rank test
runs real gloo processes through `Trainer.train_step`, gradients compared BEFORE clipping.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
import torch.nn.functional as F

from pipeline import DataPosition, ViewBatch
from tests.trainers.loss_helpers import TEMPERATURES, rand
from tests.trainers.small_configs import small_config
from tests.trainers.spawn import run_distributed
from tests.trainers.test_losses_multi_positive import (
    MP_CONFIGS, assert_same, moco_v3_reference, nt_xent_reference, value_and_grad)
from tests.trainers.tiny import (GLOBAL_BATCH, GLOBAL_PX, LOCAL_PX, TINY_CONFIGS, assert_ranks_ran_as_one,
                                 local_rows, run_recording_gradients_before_clipping, train_config)
from trainers import distributed
from trainers.config import TrainConfig
from trainers.losses import mean_over_view_pairs, negative_cosine
from trainers.losses_multi_positive import multi_positive_moco_v3_views, multi_positive_nt_xent
from trainers.methods import SampleIds, build_method, group_hashes
from groundfloor.errors import UsageError

G = 3
DATA_G = {"dataset": "unused", "recipe": "simclr", "recipe_options": {"size": GLOBAL_PX}, "views_per_group": G}
# per-sample groups of 8 samples: a group twice, a group three times, singletons
GROUPS = [0, 1, 0, 2, 3, 3, 3, 4]
# the pair-averaged methods, DINO with 2 local crops after its G global views
PAIR_CONFIGS = {name: TINY_CONFIGS[name] for name in ("byol", "simsiam", "dino")}


def moco_v3_views_reference(queries, keys, groups: list[int], t: float) -> torch.Tensor:
    """2/G sum_v ctr(q_v, keys of the other views): per query, -1/|P| sum over same-group keys of
    log softmax over every key of the other views, mean over queries, x 2t."""
    views, n = len(queries), len(groups)
    total = 0
    for v in range(views):
        candidates = [(w, j) for w in range(views) if w != v for j in range(n)]
        ctr = 0
        for i in range(n):
            s = {c: F.cosine_similarity(queries[v][i], keys[c[0]][c[1]], dim=0) / t for c in candidates}
            denominator = sum(torch.exp(x) for x in s.values())
            positives = [c for c in candidates if groups[c[1]] == groups[i]]
            ctr = ctr - sum(torch.log(torch.exp(s[c]) / denominator) for c in positives) / len(positives)
        total = total + ctr / n * 2 * t
    return total * 2 / views


@pytest.mark.parametrize("t", TEMPERATURES)
def test_nt_xent_over_three_views_matches_the_loop_reference(t):
    z = rand(G * len(GROUPS), 5, seed=3)  # [view 1; view 2; view 3], as SimCLR concatenates them
    groups = GROUPS * G
    value, (grad,) = value_and_grad(lambda x: multi_positive_nt_xent(x, torch.tensor(groups), t), z)
    ref_value, (ref_grad,) = value_and_grad(lambda x: nt_xent_reference(x, groups, t), z)
    assert_same(value, ref_value, "loss")
    assert_same(grad, ref_grad, "gradient")


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("views", [2, G, 4])
def test_moco_v3_over_g_views_matches_the_loop_reference(t, views):
    tensors = [rand(len(GROUPS), 4, seed=s) for s in range(2 * views)]
    fn = lambda *x: multi_positive_moco_v3_views(list(x[:views]), list(x[views:]), torch.tensor(GROUPS), t)  # noqa: E731
    value, grads = value_and_grad(fn, *tensors)
    ref = lambda *x: moco_v3_views_reference(x[:views], x[views:], GROUPS, t)  # noqa: E731
    ref_value, ref_grads = value_and_grad(ref, *tensors)
    assert_same(value, ref_value, "loss")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_same(g, r, f"gradient of input {i}")
    if views == 2:  # the pair form is MoCo v3's symmetric loss
        assert_same(value, value_and_grad(lambda *x: moco_v3_reference(*x, GROUPS, t), *tensors)[0], "pair")


def view_pairs_reference(online, targets, term) -> torch.Tensor:
    """The mean over ordered pairs (a, b), a != b, and samples i of term(online[a][i], targets[b][i])."""
    values = [term(online[a][i], targets[b][i]) for a in range(len(online)) for b in range(len(online))
              if a != b for i in range(online[0].shape[0])]
    return sum(values) / len(values)


def cosine_term(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=0)


@pytest.mark.parametrize("views", [2, G, 5])
def test_the_pair_averaged_cosine_matches_the_loop_reference(views):
    online = [rand(len(GROUPS), 6, seed=20 + s) for s in range(views)]
    targets = [rand(len(GROUPS), 6, seed=40 + s).requires_grad_(True) for s in range(views)]
    fn = lambda *x: mean_over_view_pairs(negative_cosine, list(x), targets)  # noqa: E731
    ref = lambda *x: view_pairs_reference(x, targets, cosine_term)  # noqa: E731
    value, grads = value_and_grad(fn, *online)
    ref_value, ref_grads = value_and_grad(ref, *online)
    assert_same(value, ref_value, "loss")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_same(g, r, f"gradient of input {i}")
    mean_over_view_pairs(negative_cosine, [o.clone().requires_grad_(True) for o in online], targets).backward()
    assert all(t.grad is None for t in targets), "the targets must get no gradient"


def test_two_views_give_the_symmetric_pair_losses_to_the_last_bit():
    p1, p2, z1, z2 = (rand(len(GROUPS), 6, seed=s) for s in range(4))
    byol = (2 + 2 * negative_cosine(p1, z2)) + (2 + 2 * negative_cosine(p2, z1))
    assert torch.equal(2 * mean_over_view_pairs(lambda p, z: 2 + 2 * negative_cosine(p, z), [p1, p2], [z1, z2]), byol)
    simsiam = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
    assert torch.equal(mean_over_view_pairs(negative_cosine, [p1, p2], [z1, z2]), simsiam)


@pytest.mark.parametrize("name", PAIR_CONFIGS)
def test_a_pair_averaged_step_uses_every_global_view(name):
    config = PAIR_CONFIGS[name]
    method = build_method({**config, "num_global_views": G}, seed=0)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(len(GROUPS), 3, GLOBAL_PX, GLOBAL_PX, generator=g) for _ in range(G)]
    views += [torch.randn(len(GROUPS), 3, LOCAL_PX, LOCAL_PX, generator=g)
              for _ in range(config.get("num_local_views", 0))]
    with torch.no_grad():
        loss, _ = method.training_step(views, 0)
        changed, _ = method.training_step(views[:2] + [views[2].flip(-1)] + views[3:], 0)
    assert torch.isfinite(loss) and not torch.allclose(loss, changed), "the third view does not reach the loss"
    with pytest.raises(UsageError, match="expects 3 global"):
        method.training_step(views[:2] + views[3:], 0)


@pytest.mark.parametrize("name", MP_CONFIGS)
def test_a_step_uses_every_global_view(name):
    method = build_method({**MP_CONFIGS[name], "num_global_views": G}, seed=0)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(len(GROUPS), 3, GLOBAL_PX, GLOBAL_PX, generator=g) for _ in range(G)]
    samples = SampleIds(0, 0, torch.arange(len(GROUPS)).numpy(), group_hashes([str(x) for x in GROUPS]))
    with torch.no_grad():
        loss, _ = method.training_step(views, 0, samples=samples)
        changed, _ = method.training_step(views[:2] + [views[2].flip(-1)], 0, samples=samples)
    assert torch.isfinite(loss) and not torch.allclose(loss, changed), "the third view does not reach the loss"
    with pytest.raises(UsageError, match="expects 3 global"):
        method.training_step(views[:2], 0, samples=samples)


# ------------------------------------------------------------------------------ config
def test_views_per_group_sets_the_global_views_and_defaults_to_the_pair():
    default = train_config(MP_CONFIGS["simclr"])
    assert default.data.views_per_group == 2 and default.view_spec() == default.data.view_spec()
    assert default.view_spec().num_global == 2 and default.method_config().num_global_views == 2
    config = train_config(MP_CONFIGS["simclr"], data=DATA_G)
    assert [v.kind for v in config.view_spec().views] == ["global"] * G
    assert config.method_config().num_global_views == G
    with pytest.raises(Exception, match="views_per_group"):
        train_config(MP_CONFIGS["simclr"], data={**DATA_G, "views_per_group": 1})


@pytest.mark.parametrize("method", [
    TINY_CONFIGS["barlow_twins"],
    {**MP_CONFIGS["simclr"], "multi_positive": False},
    {**MP_CONFIGS["moco_v3"], "multi_positive": False},
])
def test_a_method_that_uses_a_pair_refuses_more_views_in_one_line(method):
    config = train_config(method, data=DATA_G)
    with pytest.raises(UsageError) as error:
        config.method_config()
    message = str(error.value)
    assert "data.views_per_group=3" in message and "\n" not in message


def test_the_config_file_takes_views_per_group(tmp_path):
    config = small_config("unused", tmp_path, "g", data__views_per_group=G, method__multi_positive=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert TrainConfig.load(str(path)).method_config().num_global_views == G
    config["method"]["multi_positive"] = False
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "viewstream", "train", str(path)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "data.views_per_group=3" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ 2 ranks x B == 1 rank x 2B
STEP_GROUPS = [["a", "b", "a", "c", "b", "d", "a", "e"], ["f", "f", "g", "h", "g", "i", "i", "i"]]


def grouped_batch(views: list[torch.Tensor], step: int) -> ViewBatch:
    local = [local_rows(v) for v in views]
    n = local[0].shape[0]
    start = distributed.rank() * n
    rows = local_rows(torch.arange(GLOBAL_BATCH)) + step * GLOBAL_BATCH
    return ViewBatch(views=local, keys=[f"s{step}row{int(r)}" for r in rows],
                     group_ids=STEP_GROUPS[step][start:start + n], labels=None, label_vocabulary=[],
                     view_sources=torch.zeros(n, len(views), dtype=torch.long), rows=rows, epoch=0, batch=step,
                     position=DataPosition(0, step + 1))


def data_g(config: dict) -> dict:
    """DATA_G, or its multi-crop form for a config with local crops."""
    locals_ = config.get("num_local_views", 0)
    if not locals_:
        return DATA_G
    return {**DATA_G, "recipe": "multicrop",
            "recipe_options": {"global_size": GLOBAL_PX, "local_size": LOCAL_PX, "num_local": locals_}}


def run_g_views(config: dict) -> list[dict]:
    """Two real Trainer steps on G global views (and the config's local crops), with the
    gradients `clip_gradients` receives."""
    def batches():
        g = torch.Generator().manual_seed(0)
        for step in range(len(STEP_GROUPS)):
            views = [torch.randn(GLOBAL_BATCH, 3, GLOBAL_PX, GLOBAL_PX, generator=g) for _ in range(G)]
            views += [torch.randn(GLOBAL_BATCH, 3, LOCAL_PX, LOCAL_PX, generator=g)
                      for _ in range(config.get("num_local_views", 0))]
            yield grouped_batch(views, step)

    return run_recording_gradients_before_clipping(config, batches, data=data_g(config))


G_VIEW_CONFIGS = {**MP_CONFIGS, **PAIR_CONFIGS}


def all_g_view_runs() -> dict:
    torch.manual_seed(123)  # nothing may depend on the global RNG
    return {name: run_g_views(config) for name, config in G_VIEW_CONFIGS.items()}


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_distributed(all_g_view_runs, world_size=2)


def assert_same_up_to_reduction_order(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """float64, 1e-10: conv nets train NHWC on the CPU, whose oneDNN kernels sum a batch of B and
    one of 2B in other orders (measured: 3e-12 on a DINO head bias); summing instead of averaging
    gradients, a missed gather or a wrong rank offset is off by O(1)."""
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m: f"{what}: {m}")


@pytest.mark.integration
@pytest.mark.parametrize("name", G_VIEW_CONFIGS)
def test_two_ranks_train_as_one_on_three_views(two_ranks, name):
    single = run_g_views(G_VIEW_CONFIGS[name])
    assert_ranks_ran_as_one([runs[name] for runs in two_ranks], single, name, assert_same_up_to_reduction_order)
