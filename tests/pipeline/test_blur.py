"""`pipeline.blur`: the two 1-D `fn.filter` passes against `fn.gaussian_blur` (the op it
replaces) on the same images and the same sigma draws, through real DALI CPU pipelines.

Measured tolerance (write_photo_corpus JPEGs resized to 224 px, 64 sigmas drawn by
`params.draw_batch` for SimCLR's blur_sigma (0.1, 2.0), windows 3-13): max |separable -
gaussian_blur| = 1 grey level, on 10.9% (224 px) and 11.1% (40 px) of the values, so a mean of
0.11 levels (the horizontal pass rounds to uint8 before the vertical one; DALI's separable blur
keeps a float intermediate). On float32 input (the graph's after a colour twist) nothing rounds:
the two agree to float32 summation order. The kernels themselves equal DALI's to float32 rounding.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.blur import blur_kernels, gaussian_kernel, separable_blur
from pipeline.params import COL, blur_window, draw_batch
from pipeline.spec import ViewSpec

MAX_LEVELS = 1       # largest difference of one value, in grey levels
SHARE_DIFFERENT = 0.15  # share of values that may differ (by 1); measured 10.9-11.1%


def test_kernel_is_a_normalized_symmetric_gaussian():
    k = gaussian_kernel(1.3, blur_window(1.3))
    assert k.dtype == np.float32 and len(k) == 2 * 4 + 1
    assert abs(float(k.sum()) - 1) < 1e-6 and np.array_equal(k, k[::-1])
    x = np.arange(-4, 5)
    reference = np.exp(-x ** 2 / (2 * 1.3 ** 2))
    np.testing.assert_allclose(k, reference / reference.sum(), rtol=1e-5)


def _photos(count: int, size: int = 224) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    photos = []
    for _ in range(count):
        y, x = np.mgrid[0:size, 0:size]
        base = np.stack([128 + 100 * np.sin(x / rng.uniform(4, 40) + c) * np.cos(y / rng.uniform(4, 40))
                         for c in range(3)], -1)
        image = np.clip(base + rng.normal(0, 16, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)  # real photo statistics
        photos.append(np.asarray(Image.open(buffer).convert("RGB")))
    return photos


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])  # float: after a colour twist (pipeline.colour)
@pytest.mark.parametrize("size", [224, 40])
def test_separable_filter_blur_matches_gaussian_blur_on_the_recipe_draws(size, dtype):
    from nvidia.dali import fn, pipeline_def

    batch = 64
    spec = ViewSpec.simclr(size=size, blur_p=1.0)
    params = np.stack([d.params for d in draw_batch(spec, 0, 0, list(range(batch)),
                                                    [{0: (400, 500)}] * batch)])
    sigma = params[:, 0, COL["sigma"]].astype(np.float32)
    window = params[:, 0, COL["window"]].astype(np.int32)
    rows, cols = blur_kernels(sigma, window)
    images = [photo.astype(dtype) for photo in _photos(batch, size)]

    @pipeline_def(batch_size=batch, num_threads=2, device_id=None)
    def both():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        s = fn.external_source(source=lambda: sigma, batch=True)
        w = fn.external_source(source=lambda: window, batch=True)
        r = fn.external_source(source=lambda: rows, batch=True)
        c = fn.external_source(source=lambda: cols, batch=True)
        return fn.gaussian_blur(x, sigma=s, window_size=w), separable_blur(x, r, c)

    pipe = both()
    pipe.build()
    old, new = (out.as_array().astype(np.float64) for out in pipe.run())
    diff = np.abs(new - old)
    assert window.min() == 3 and window.max() == 13  # the whole range of windows was drawn
    if dtype == np.uint8:
        assert diff.max() <= MAX_LEVELS
        assert (diff > 0).mean() <= SHARE_DIFFERENT
    else:  # no rounding between the passes: float32 summation order alone
        assert diff.max() <= 1e-3
    assert (np.abs(new - images).mean() > 0.5)  # it does blur
