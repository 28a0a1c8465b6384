"""Acceptance 4 of issue 3: augmentation statistics match the recipes; outputs follow the draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline import Augmentation, ViewConfig, ViewLoader, ViewSpec
from pipeline.params import COL, blur_window, draw_batch
from pipeline.spec import IMAGENET_MEAN, IMAGENET_STD, RECIPES
from groundfloor.errors import UsageError

DRAWS = 4000


def drawn(spec: ViewSpec, sizes=None) -> np.ndarray:
    """Parameter rows of DRAWS samples: [DRAWS, num_views, P]."""
    sizes = sizes or {0: (64, 48), 1: (40, 56), 2: (33, 33)}
    return np.stack([d.params for d in draw_batch(spec, 0, 1, list(range(DRAWS)), [sizes] * DRAWS)])


def assert_rate(values: np.ndarray, p: float, what: str):
    """Rate within 5 standard errors of p (exact when p is 0 or 1); ~30 checks share a seed."""
    rate = float(np.mean(values > 0))
    tolerance = 5 * math.sqrt(p * (1 - p) / len(values)) + 1e-9
    assert abs(rate - p) <= tolerance, f"{what}: rate {rate:.3f}, expected {p}"


def test_simclr_rates_and_factor_ranges():
    params = drawn(ViewSpec.simclr(size=32))
    for v in range(2):
        p = params[:, v]
        assert_rate(p[:, COL["flip"]], 0.5, "flip")
        assert_rate(p[:, COL["jitter"]], 0.8, "jitter")
        assert_rate(p[:, COL["gray"]], 0.2, "grayscale")
        assert_rate(p[:, COL["blur"]], 0.5, "blur")
        assert_rate(p[:, COL["solarize"]], 0.0, "solarize")
        for name, strength in (("brightness", 0.4), ("contrast", 0.4), ("saturation", 0.4)):
            f = p[:, COL[name]]
            assert f.min() >= 1 - strength and f.max() <= 1 + strength
            assert abs(f.mean() - 1) < 0.02
        hue = p[:, COL["hue_deg"]]
        assert hue.min() >= -36 and hue.max() <= 36 and hue.std() > 15
        sigma = p[:, COL["sigma"]]
        assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 0.05
        assert all(p[i, COL["window"]] == blur_window(p[i, COL["sigma"]]) for i in range(100))
    assert not np.array_equal(params[:, 0, COL["flip"]], params[:, 1, COL["flip"]])


def test_byol_blur_and_solarize_are_asymmetric():
    params = drawn(ViewSpec.byol(size=32))
    assert_rate(params[:, 0, COL["blur"]], 1.0, "blur view 1")
    assert_rate(params[:, 1, COL["blur"]], 0.1, "blur view 2")
    assert_rate(params[:, 0, COL["solarize"]], 0.0, "solarize view 1")
    assert_rate(params[:, 1, COL["solarize"]], 0.2, "solarize view 2")


@pytest.mark.parametrize("v, scale", [(0, (0.14, 1.0)), (1, (0.14, 1.0)), (2, (0.05, 0.14)), (5, (0.05, 0.14))])
def test_multicrop_crop_areas_lie_in_the_scale_range(v, scale):
    """Areas stay in the scale range and are distributed like torchvision's RandomResizedCrop."""
    from torchvision.transforms import RandomResizedCrop

    params = drawn(ViewSpec.multicrop(global_size=64, local_size=32, num_local=4), {0: (64, 48)})
    area = params[:, v, COL["area"]]
    lo, hi = scale
    height = params[:, v, COL["y1"]] - params[:, v, COL["y0"]]
    width = params[:, v, COL["x1"]] - params[:, v, COL["x0"]]
    assert (height >= 1).all() and (width >= 1).all()
    # windows are whole pixels: the drawn area is off by at most half a pixel per side
    rounding = 0.5 / height + 0.5 / width + 0.25 / (height * width)
    assert (area >= lo * (1 - rounding) - 1e-9).all() and (area <= hi * (1 + rounding) + 1e-9).all()
    torch.manual_seed(0)
    image = torch.zeros(3, 48, 64)
    reference = []
    for _ in range(DRAWS):
        _, _, h, w = RandomResizedCrop.get_params(image, scale=list(scale), ratio=[3 / 4, 4 / 3])
        reference.append(h * w / (48 * 64))
    quartiles = np.quantile(area, [0.25, 0.5, 0.75])
    expected = np.quantile(reference, [0.25, 0.5, 0.75])
    assert np.abs(quartiles - expected).max() < 0.04 * (hi - lo) + 0.005, (quartiles, expected)


def test_windows_stay_inside_their_photo():
    sizes = {0: (64, 48), 1: (40, 56), 2: (33, 33)}
    params = drawn(ViewSpec.multicrop(global_size=32, local_size=16, num_local=2), sizes)
    for v in range(4):
        photo = params[:, v, COL["photo"]].astype(int)
        w = np.array([sizes[p][0] for p in photo])
        h = np.array([sizes[p][1] for p in photo])
        assert (params[:, v, COL["y0"]] >= 0).all() and (params[:, v, COL["x0"]] >= 0).all()
        assert (params[:, v, COL["y1"]] <= h).all() and (params[:, v, COL["x1"]] <= w).all()
    assert (params[:, 0, COL["photo"]] != params[:, 1, COL["photo"]]).all()
    local_from_second = params[:, 2:, COL["photo"]] == params[:, 1:2, COL["photo"]]
    assert 0.4 < local_from_second.mean() < 0.6


def test_eval_recipe_has_no_randomness():
    params = drawn(ViewSpec.eval(size=32))
    assert (params[:, 0, COL["flip"]] == 0).all() and (params[:, 0, COL["jitter"]] == 0).all()
    assert len({tuple(r) for r in params[:, 0, 2:6]}) == 1  # same window for every draw
    assert (params[:, 0, COL["photo"]] == 0).all()


def test_recipe_registry_and_errors():
    assert set(RECIPES) == {"simclr", "byol", "multicrop", "eval"}
    spec = ViewSpec.from_recipe("multicrop", global_size=48, local_size=24, num_local=3)
    assert [v.size for v in spec.views] == [48, 48, 24, 24, 24] and spec.num_local == 3
    with pytest.raises(UsageError, match="unknown view recipe 'dino2'"):
        ViewSpec.from_recipe("dino2")
    with pytest.raises(ValueError, match="scale"):
        Augmentation(scale=(0.5, 0.1))


def plain(**overrides) -> Augmentation:
    return Augmentation(**(dict(center_crop=True, crop_fraction=1.0, flip_p=0, jitter_p=0,
                                grayscale_p=0, blur_p=0) | overrides))


def one_batch(dataset: str, aug: Augmentation, size: int = 32) -> torch.Tensor:
    spec = ViewSpec(views=[ViewConfig(size=size, augment=aug)], mean=(0, 0, 0), std=(1, 1, 1))
    return next(ViewLoader(dataset, spec, 8, seed=0).iter_epoch(0)).views[0]


def test_outputs_follow_the_drawn_operations(uneven_dataset):
    base = one_batch(uneven_dataset, plain())
    assert torch.equal(one_batch(uneven_dataset, plain(flip_p=1.0)), base.flip(-1))
    gray = one_batch(uneven_dataset, plain(grayscale_p=1.0))
    assert (gray[:, 0] - gray[:, 1]).abs().max() <= 1.5 / 255 and (gray[:, 1] - gray[:, 2]).abs().max() <= 1.5 / 255
    luma = 0.299 * base[:, 0] + 0.587 * base[:, 1] + 0.114 * base[:, 2]
    assert (gray[:, 0] - luma).abs().max() < 3 / 255
    solar = one_batch(uneven_dataset, plain(solarize_p=1.0))
    pixels = torch.round(base * 255)
    expected = torch.where(pixels >= 128, 255 - pixels, pixels) / 255
    assert torch.allclose(solar, expected, atol=1e-6)
    blurred = one_batch(uneven_dataset, plain(blur_p=1.0, blur_sigma=(1.5, 2.0)))
    def roughness(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean()
    assert roughness(blurred) < 0.8 * roughness(base)
    assert abs(blurred.mean() - base.mean()) < 0.02


def test_output_shapes_dtype_and_normalization(uneven_dataset):
    spec = ViewSpec.multicrop(global_size=32, local_size=16, num_local=3)
    batch = next(ViewLoader(uneven_dataset, spec, 5).iter_epoch(0))
    assert [tuple(v.shape) for v in batch.views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for view in batch.views:
        assert view.dtype == torch.float32 and view.device.type == "cpu"
        pixels = view * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert pixels.std() > 0.05
    assert batch.labels.dtype == torch.int64 and batch.label_vocabulary == sorted(batch.label_vocabulary)
    assert all(0 <= l < len(batch.label_vocabulary) for l in batch.labels.tolist())
