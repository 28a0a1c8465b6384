"""Gaussian blur as two 1-D `fn.filter` passes over kernels drawn on the host.

Why not ``fn.gaussian_blur``: on the CPU it costs 1.1-3.3 ms per 224 px RGB view (window 3-13;
DALI 2.4 on this box), the largest op of the two-view graph, while ``fn.filter`` (OpenCV's
``cv::filter2D`` on the CPU: dali/operators/image/convolution/filter.cc, ``BorderSimple``)
does a 1 x w pass in 0.2-0.35 ms. The kernels are the ones ``fn.gaussian_blur`` builds
(`gaussian_kernel` mirrors ``FillGaussian`` in dali/operators/image/convolution/
gaussian_blur_params.h: exp(-x^2 / (2 sigma^2)) over x in [-r, r], r = (window - 1) / 2,
normalized to sum 1), with the same border (``"reflect_101"``, the ``border`` default of both
ops). The one difference, on uint8 input: the horizontal pass rounds to uint8 before the
vertical one (DALI's separable blur keeps a float intermediate), so a blurred pixel may differ
by 1 grey level (tests/pipeline/test_blur.py measures how often); the view graph feeds float
after a colour twist (`pipeline.colour`), which nothing rounds.

``fn.filter`` arguments used (schema ``experimental__Filter`` in filter.cc, also registered as
``fn.filter``): positional ``data`` (uint8 or float32 HWC, CPU or GPU) and ``filter`` (a float32 2-D
array per sample; ``InputDevice(1, 3, InputDevice::MatchBackendOrCPU)`` lets a CPU filter
feed the GPU operator, so the external source's kernels serve both backends); ``dtype`` unset
keeps the input type (integral outputs are clamped and rounded); ``anchor`` -1 (default)
centres an odd kernel; ``mode="same"`` (default) keeps the size.
"""
from __future__ import annotations

import numpy as np


def gaussian_kernel(sigma: float, window: int) -> np.ndarray:
    """The normalized float32 Gaussian of odd length `window` that ``fn.gaussian_blur`` uses."""
    r = (int(window) - 1) // 2
    x = np.arange(-r, 0, dtype=np.float32)
    half = np.exp(-(x * x * np.float32(0.5 / (sigma * sigma)))).astype(np.float32)
    scale = np.float32(1.0) / (np.float32(2.0) * half.sum(dtype=np.float32) + np.float32(1.0))
    return np.concatenate([half * scale, [scale], half[::-1] * scale]).astype(np.float32)


def blur_kernels(sigma: np.ndarray, window: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sample, the horizontal (1 x w) and vertical (w x 1) kernels for `fn.filter`."""
    kernels = [gaussian_kernel(float(s), int(w)) for s, w in zip(sigma, window)]
    return [k[None, :] for k in kernels], [np.ascontiguousarray(k[:, None]) for k in kernels]


def separable_blur(x, row, col):
    """`x` (uint8 or float32 HWC DataNode) blurred by the per-sample kernels `row` then `col`."""
    from nvidia.dali import fn

    return fn.filter(fn.filter(x, row), col)
