"""`pipeline.colour` on real DALI CPU pipelines: the colour twist that writes float equals the
uint8 twist it replaces up to that twist's rounding (which pins the contrast centre: read as
float, ``fn.color_twist`` centres contrast on 0.5 and misses by tens of grey levels), stays in
[0, 255], and solarize on float is the lookup table's map."""
from __future__ import annotations

import numpy as np

from pipeline.colour import SOLARIZE_THRESHOLD, as_float, solarize, twist_to_float

BATCH = 16


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(BATCH - 2)]
    return images + [np.zeros((24, 20, 3), np.uint8), np.full((24, 20, 3), 255, np.uint8)]


def _factors() -> dict[str, np.ndarray]:
    """Per sample, the recipe's ranges and beyond (brightness up to 1.8: saturating values)."""
    rng = np.random.default_rng(1)
    return {"brightness": rng.uniform(0.2, 1.8, BATCH).astype(np.float32),
            "contrast": rng.uniform(0.2, 1.8, BATCH).astype(np.float32),
            "saturation": rng.uniform(0.0, 1.8, BATCH).astype(np.float32),
            "hue": rng.uniform(-36, 36, BATCH).astype(np.float32)}


def _constant(batch: list):
    return lambda: batch


def _run(graph) -> list[np.ndarray]:
    pipe = graph()
    pipe.build()
    return [out.as_array() for out in pipe.run()]


def test_the_float_twist_is_the_uint8_twist_without_its_rounding():
    from nvidia.dali import fn, pipeline_def

    images, factors = _images(), _factors()

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None)
    def twists():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        f = {k: fn.external_source(source=_constant([np.array(x) for x in v]), batch=True) for k, v in factors.items()}
        return fn.color_twist(x, **f), twist_to_float(x, **f)

    old, new = _run(twists)
    assert old.dtype == np.uint8 and new.dtype == np.float32
    assert new.min() >= 0 and new.max() <= 255
    assert (new == 255).any() and (new == 0).any()  # the clamp was needed
    assert np.abs(new - old.astype(np.float32)).max() <= 0.5 + 1e-3


def test_solarize_on_float_is_the_lookup_table_map():
    from nvidia.dali import fn, pipeline_def, types

    values = np.concatenate([np.arange(256), [127.4, 127.9999, 128.0, 128.3, 254.6]]).astype(np.float32)
    grid = [np.tile(values[:, None, None], (1, 1, 3))]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def both():
        x = fn.external_source(source=lambda: grid, batch=True, layout="HWC")
        return solarize(fn.cast(x, dtype=types.UINT8), False), solarize(x, True)

    table, arithmetic = _run(both)
    expected = np.where(values >= SOLARIZE_THRESHOLD, 255 - values, values)
    np.testing.assert_array_equal(arithmetic[0, :, 0, 0], expected)
    np.testing.assert_array_equal(table[0, :256, 0, 0], expected[:256].astype(np.uint8))


def test_a_skipped_twist_is_the_same_pixels_as_float():
    from nvidia.dali import fn, pipeline_def

    images = _images()

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None)
    def cast():
        return as_float(fn.external_source(source=lambda: images, batch=True, layout="HWC"))

    (out,) = _run(cast)
    assert out.dtype == np.float32 and np.array_equal(out, np.stack(images).astype(np.float32))
