"""Recipe options that the full configs use: SimCLR's jitter strength and SwAV's multi-crop style."""
from __future__ import annotations

import pytest

from pipeline import ViewSpec


def test_simclr_color_jitter_strength_is_simclrs_formula():
    """google-research/simclr data_util.color_jitter: brightness/contrast/saturation 0.8 s, hue 0.2 s."""
    a = ViewSpec.simclr(size=32, color_jitter_strength=1.0).views[0].augment
    assert (a.brightness, a.contrast, a.saturation, a.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    half = ViewSpec.simclr(size=32, color_jitter_strength=0.5).views[0].augment
    assert (half.brightness, half.hue) == pytest.approx((0.4, 0.1))
    default = ViewSpec.simclr(size=32).views[0].augment  # MoCo v2 / SimSiam jitter
    assert (default.brightness, default.contrast, default.saturation, default.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    explicit = ViewSpec.simclr(size=32, color_jitter_strength=1.0, hue=0.05).views[0].augment
    assert explicit.hue == 0.05 and explicit.brightness == pytest.approx(0.8)


def test_swav_multicrop_style_is_multicropdataset_py():
    """facebookresearch/swav src/multicropdataset.py: the same colour distortion and blur p 0.5 on every crop."""
    spec = ViewSpec.multicrop(global_size=32, local_size=16, num_local=3, style="swav")
    for view in spec.views:
        a = view.augment
        assert (a.brightness, a.contrast, a.saturation, a.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
        assert (a.jitter_p, a.grayscale_p, a.blur_p, a.solarize_p, a.flip_p) == pytest.approx((0.8, 0.2, 0.5, 0.0, 0.5))
    assert [v.augment.scale for v in spec.views] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 3
    dino = ViewSpec.multicrop(global_size=32, local_size=16, num_local=3)
    assert [v.augment.blur_p for v in dino.views] == [1.0, 0.1, 0.5, 0.5, 0.5]
    assert [v.augment.solarize_p for v in dino.views] == [0.0, 0.2, 0.0, 0.0, 0.0]
