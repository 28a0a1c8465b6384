"""trainers.distributed on 2 real gloo processes against 1 process on the concatenated batch.

One spawn runs every check (`_worker`); the tests compare its per-rank results with the same
computation done here, in one process, on the whole batch.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.trainers.spawn import run_distributed
from trainers import distributed
from trainers.backbones import BackboneConfig, build_backbone
from trainers.distributed.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

WORLD = 2
B = 4  # rows per rank

BN_CASES = {
    "bn1d": dict(shape=(2 * B, 6), kwargs=dict()),
    "bn2d": dict(shape=(2 * B, 3, 5, 5), kwargs=dict()),
    "no_affine": dict(shape=(2 * B, 6), kwargs=dict(affine=False)),
    "cumulative": dict(shape=(2 * B, 3, 4, 4), kwargs=dict(momentum=None)),
}


def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = {"x": torch.randn(2 * B, 5, generator=g), "upstream": torch.randn(2 * B * WORLD, 5, generator=g)}
    for name, case in BN_CASES.items():
        data[f"{name}_x"] = torch.randn(*case["shape"], generator=g) * 3 + 1.5
        data[f"{name}_w"] = torch.randn(*case["shape"], generator=g)
    data["big_mean_x"] = torch.randn(2 * B, 4, 8, 8, generator=g, dtype=torch.float64) + 1e4
    data["resnet_x"] = torch.randn(2 * B, 3, 16, 16, generator=g)
    data["resnet_w"] = torch.randn(2 * B, 64, generator=g)
    data["grads"] = torch.randn(WORLD, 7, generator=g)
    return data


def _rows(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the whole batch on one process)."""
    n = t.shape[0] // distributed.world_size()
    return t[distributed.rank() * n : (distributed.rank() + 1) * n]


def _bn_check(name: str, data: dict) -> dict:
    torch.manual_seed(1)
    bn = SyncBatchNorm(BN_CASES[name]["shape"][1], **BN_CASES[name]["kwargs"])
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    out = {}
    for it in range(2):  # two steps: running stats move twice
        x = _rows(data[f"{name}_x"]).clone().requires_grad_(True)
        y = bn(x)
        (y * _rows(data[f"{name}_w"]) * (it + 1)).sum().backward()
        out[f"y{it}"], out[f"dx{it}"] = y.detach(), x.grad
    out["running_mean"], out["running_var"] = bn.running_mean.clone(), bn.running_var.clone()
    out["tracked"] = bn.num_batches_tracked.clone()
    bn.eval()
    x = _rows(data[f"{name}_x"]).clone().requires_grad_(True)
    y = bn(x)
    (y * _rows(data[f"{name}_w"])).sum().backward()
    out["eval_y"], out["eval_dx"] = y.detach(), x.grad
    if bn.affine:  # accumulated over the three backward passes, summed over ranks
        out["dweight"] = distributed.all_reduce_sum(bn.weight.grad)
        out["dbias"] = distributed.all_reduce_sum(bn.bias.grad)
    return out


def _resnet_check(data: dict) -> dict:
    torch.manual_seed(2)
    net = convert_sync_batchnorm(build_backbone(BackboneConfig(name="resnet18", width=0.125, small_images=True)))
    x = _rows(data["resnet_x"]).clone().requires_grad_(True)
    (net(x) * _rows(data["resnet_w"])).sum().backward()
    grads = {n: distributed.all_reduce_sum(p.grad) for n, p in net.named_parameters()}
    stats = {n: b.clone() for n, b in net.named_buffers()}
    return {"dx": x.grad, "grads": grads, "stats": stats}


def _worker(data: dict) -> dict:
    out: dict = {"rank": distributed.rank(), "world": distributed.world_size()}
    # gather_with_grad: every rank's loss uses every row; grads of local rows = sum over ranks
    x = _rows(data["x"]).clone().requires_grad_(True)
    gathered = distributed.gather_with_grad(x * 2)
    weight = data["upstream"][distributed.rank() * 2 * B : (distributed.rank() + 1) * 2 * B]
    (gathered * weight).sum().backward()
    out["gathered"], out["gather_grad"] = gathered.detach(), x.grad
    # all_reduce_with_grad
    x2 = _rows(data["x"]).clone().requires_grad_(True)
    total = distributed.all_reduce_with_grad(x2.sum(dim=0))
    (total * (distributed.rank() + 1)).sum().backward()
    out["reduced"], out["reduce_grad"] = total.detach(), x2.grad
    # average_gradients: one buffer; None on every rank stays None; None on one rank counts as 0
    params = [nn.Parameter(torch.zeros(7)) for _ in range(3)]
    params[0].grad = data["grads"][distributed.rank()].clone()
    if distributed.rank() == 0:
        params[2].grad = torch.ones(7)
    distributed.average_gradients(params)
    out["avg"] = [p.grad for p in params]
    module = nn.BatchNorm1d(3)
    with torch.no_grad():
        module.weight.fill_(distributed.rank() + 2)
        module.running_mean.fill_(distributed.rank() + 5)
    distributed.broadcast_module(module)
    out["broadcast"] = (module.weight.clone(), module.running_mean.clone())
    out["logs"] = distributed.reduce_logs({"loss": float(distributed.rank()), "acc": 1.0})
    for name in BN_CASES:
        out[name] = _bn_check(name, data)
    # numerically careful variance: mean 1e4, std 1 in float32
    bn = SyncBatchNorm(4, momentum=1.0)
    bn(_rows(data["big_mean_x"]).float())
    out["big_mean_var"] = bn.running_var.clone()
    out["float64_y"] = SyncBatchNorm(4)(_rows(data["big_mean_x"])).detach()  # float64 in, float64 statistics
    out["resnet"] = _resnet_check(data)
    return out


@pytest.fixture(scope="module")
def results() -> tuple[list[dict], dict]:
    data = _data()
    return run_distributed(_worker, data, world_size=WORLD), data


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.integration
def test_helpers_fall_back_to_one_process():
    assert (distributed.rank(), distributed.world_size(), distributed.is_distributed()) == (0, 1, False)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x and distributed.all_reduce_with_grad(x) is x
    close(distributed.gather(x), x.detach())
    assert distributed.reduce_logs({"a": 2.0}) == {"a": 2.0}


@pytest.mark.integration
def test_processes_form_a_group(results):
    ranks, _ = results
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]


@pytest.mark.integration
def test_gather_with_grad_sums_all_ranks_gradients(results):
    ranks, data = results
    x = data["x"]
    for r, res in enumerate(ranks):
        close(res["gathered"], x * 2)
        # d/dx_r of sum over ranks r' of <gathered, upstream_r'> = 2 * sum_r' upstream_r'[rows of r]
        upstream = data["upstream"].view(WORLD, 2 * B, 5).sum(dim=0)
        close(res["gather_grad"], 2 * upstream[r * B : (r + 1) * B])


@pytest.mark.integration
def test_all_reduce_with_grad(results):
    ranks, data = results
    for r, res in enumerate(ranks):
        close(res["reduced"], data["x"].sum(dim=0))
        # loss_r = (rank+1) * sum(total): summed over ranks -> 1 + 2 = 3 per element
        close(res["reduce_grad"], torch.full((B, 5), 3.0))


@pytest.mark.integration
def test_average_gradients_in_one_buffer(results):
    ranks, data = results
    for res in ranks:
        close(res["avg"][0], data["grads"].mean(dim=0))
        assert res["avg"][1] is None
        close(res["avg"][2], torch.full((7,), 0.5))
        assert res["logs"] == {"acc": 1.0, "loss": 0.5}


@pytest.mark.integration
def test_broadcast_module_copies_rank0_parameters_and_buffers(results):
    ranks, _ = results
    for res in ranks:
        close(res["broadcast"][0], torch.full((3,), 2.0))
        close(res["broadcast"][1], torch.full((3,), 5.0))


@pytest.mark.integration
@pytest.mark.parametrize("name", list(BN_CASES))
def test_sync_batchnorm_equals_batchnorm_on_concatenated_batch(results, name):
    ranks, data = results
    torch.manual_seed(1)
    shape, kwargs = BN_CASES[name]["shape"], BN_CASES[name]["kwargs"]
    bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1], **kwargs)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    ref = {}
    for it in range(2):
        x = data[f"{name}_x"].clone().requires_grad_(True)
        y = bn(x)
        (y * data[f"{name}_w"] * (it + 1)).sum().backward()
        ref[f"y{it}"], ref[f"dx{it}"] = y.detach(), x.grad
    bn.eval()
    x = data[f"{name}_x"].clone().requires_grad_(True)
    y = bn(x)
    (y * data[f"{name}_w"]).sum().backward()
    for r, res in enumerate(ranks[:: 1]):
        res = res[name]
        rows = slice(r * B, (r + 1) * B)
        for key in ("y0", "dx0", "y1", "dx1"):
            close(res[key], ref[key][rows])
        close(res["eval_y"], y.detach()[rows])
        close(res["eval_dx"], x.grad[rows])
        close(res["running_mean"], bn.running_mean)
        close(res["running_var"], bn.running_var)
        assert int(res["tracked"]) == int(bn.num_batches_tracked) == 2
        if bn.affine:
            close(res["dweight"], bn.weight.grad)
            close(res["dbias"], bn.bias.grad)


@pytest.mark.integration
def test_sync_batchnorm_variance_is_numerically_careful(results):
    ranks, data = results
    x = data["big_mean_x"]  # float64 reference; ranks computed in float32
    expected = x.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True).float()
    for res in ranks:
        close(res["big_mean_var"], expected, tol=2e-2)
    naive = (x.float() ** 2).mean(dim=(0, 2, 3)) - x.float().mean(dim=(0, 2, 3)) ** 2
    assert (naive - expected).abs().max() > 0.1  # the cancellation we avoid is real


@pytest.mark.integration
def test_sync_batchnorm_keeps_float64(results):
    """At least fp32, not exactly fp32: float64 inputs keep float64 statistics (mean 1e4, std 1:
    float32 statistics would be off by ~1e-3 after normalisation)."""
    ranks, data = results
    expected = nn.BatchNorm2d(4, dtype=torch.float64)(data["big_mean_x"]).detach()
    for r, res in enumerate(ranks):
        assert res["float64_y"].dtype == torch.float64
        torch.testing.assert_close(res["float64_y"], expected[r * B : (r + 1) * B], atol=1e-9, rtol=0)


@pytest.mark.integration
def test_converted_resnet_equals_single_process(results):
    ranks, data = results
    torch.manual_seed(2)
    plain = build_backbone(BackboneConfig(name="resnet18", width=0.125, small_images=True))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    torch.manual_seed(2)
    net = convert_sync_batchnorm(build_backbone(BackboneConfig(name="resnet18", width=0.125, small_images=True)))
    assert n_bn > 0 and sum(isinstance(m, SyncBatchNorm) for m in net.modules()) == n_bn
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values()))
    x = data["resnet_x"].clone().requires_grad_(True)
    (net(x) * data["resnet_w"]).sum().backward()
    for r, res in enumerate(ranks):
        close(res["resnet"]["dx"], x.grad[r * B : (r + 1) * B], tol=1e-4)
        for n, p in net.named_parameters():
            close(res["resnet"]["grads"][n], p.grad, tol=1e-4)
        for n, b in net.named_buffers():
            close(res["resnet"]["stats"][n], b)


def test_the_ddp_buffer_keyword_fits_every_torch_the_package_allows():
    """pyproject allows torch from its floor; DDP's keyword changed name (broadcast_buffers ->
    forward_sync_buffers), so the wrapper picks whichever the installed DDP takes."""
    import inspect
    import re
    from pathlib import Path

    from torch.nn.parallel import DistributedDataParallel

    from trainers.distributed.data_parallel import no_buffer_sync

    chosen = no_buffer_sync(DistributedDataParallel)
    assert set(chosen) <= set(inspect.signature(DistributedDataParallel.__init__).parameters)
    assert chosen == {next(iter(chosen)): False}

    class OldDDP:  # torch before the rename
        def __init__(self, module, device_ids=None, broadcast_buffers=True, find_unused_parameters=False):
            pass

    assert no_buffer_sync(OldDDP) == {"broadcast_buffers": False}
    floor = re.search(r'"torch>=([\d.]+)', Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text())
    assert floor, "pyproject.toml names a torch floor"
