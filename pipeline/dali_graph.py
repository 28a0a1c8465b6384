"""The DALI graph that turns encoded photos plus drawn parameters into normalized views.

One function builds it for both backends: ``device="cpu"`` decodes and augments on the CPU
(``device_id=None``: runs without a GPU); ``device="cuda"`` decodes with nvJPEG (``mixed``) and
every later op then runs on the GPU because its input lives there. The graph holds no
randomness: crop windows, flips, jitter factors, blur sigmas and the photo choice arrive per
sample through one external source (`feed_arrays`). DALI conditionals make skipped ops cost
nothing, and ops whose probability is 0 in the spec are not built at all.

Per photo: decode once. Per view: resize the crop window to the view size (one op: crop +
resize + antialias), colour twist (jitter and grayscale folded together), Gaussian blur (window
from sigma), solarize (a 256-entry lookup table), then flip + normalize + HWC->CHW in one
crop_mirror_normalize.

Known differences from torchvision's recipe: ColorJitter applies its four factors in a random
order with clamping after each; DALI's colour twist applies them as one affine colour map
(contrast around mid-grey, not the image mean). The statistics of the drawn factors are the
recipe's; the pixels differ slightly.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.params import batch_arguments
from pipeline.spec import ViewConfig, ViewSpec

SOLARIZE_THRESHOLD = 128
_SOLARIZE_KEYS = list(range(256))
_SOLARIZE_VALUES = [255 - k if k >= SOLARIZE_THRESHOLD else k for k in _SOLARIZE_KEYS]


def uses_two_photos(spec: ViewSpec) -> bool:
    """Whether the graph decodes a second photo (the natural-view partner)."""
    return spec.num_global >= 2


def view_argument_names(view: ViewConfig) -> list[str]:
    """The per-sample inputs a view's ops need (ops with probability 0 need none)."""
    aug = view.augment
    names = ["roi_start", "roi_end", "mirror"]
    if view.kind == "local":
        names.append("from_b")
    if aug.jitter_p > 0 or aug.grayscale_p > 0:
        names += ["twist", "brightness", "contrast", "saturation", "hue"]
    if aug.blur_p > 0:
        names += ["blur", "sigma", "window"]
    if aug.solarize_p > 0:
        names.append("solarize")
    return names


def input_names(spec: ViewSpec) -> list[str]:
    """Names of the external source's outputs, in order: photos first, then per-view args."""
    names = ["enc_a"] + (["enc_b", "same_photo"] if uses_two_photos(spec) else [])
    for v, view in enumerate(spec.views):
        names += [f"{name}:{v}" for name in view_argument_names(view)]
    return names


def feed_arrays(spec: ViewSpec, enc_a: list[np.ndarray], enc_b: list[np.ndarray],
                same_photo: np.ndarray, params: np.ndarray) -> tuple:
    """The external source's batch, in `input_names` order, from photos and stacked params.

    `same_photo[i]` marks a group of one: its second photo is not decoded again.
    """
    out: dict[str, object] = {"enc_a": enc_a}
    if uses_two_photos(spec):
        out["enc_b"] = enc_b
        out["same_photo"] = np.asarray(same_photo, dtype=bool)
    for v, view in enumerate(spec.views):
        args = batch_arguments(params, v)
        for name in view_argument_names(view):
            out[f"{name}:{v}"] = args[name]
    return tuple(out[name] for name in input_names(spec))


def build_view_pipeline(spec: ViewSpec, source: Callable[[], tuple], *, device: str,
                        batch_size: int, num_threads: int, prefetch: int, device_id: int = 0):
    """A built DALI pipeline whose outputs are the views of `spec` (float CHW, normalized).

    `source` is called once per iteration and returns `feed_arrays(...)` for the next batch,
    or raises StopIteration at the end of the epoch.
    """
    from nvidia.dali import fn, pipeline_def, types

    names = input_names(spec)
    decode_device = "mixed" if device == "cuda" else "cpu"
    mean = [255.0 * m for m in spec.mean]
    std = [255.0 * s for s in spec.std]

    def crop_view(view: ViewConfig, image, arg):
        return fn.resize(image, size=[view.size, view.size], roi_start=arg("roi_start"),
                         roi_end=arg("roi_end"), roi_relative=False, antialias=True)

    @pipeline_def(enable_conditionals=True)
    def graph():
        inputs = fn.external_source(source=source, num_outputs=len(names), batch=True)
        named = dict(zip(names, inputs))
        image_a = fn.decoders.image(named["enc_a"], device=decode_device, output_type=types.RGB)
        image_b = image_a
        if uses_two_photos(spec):
            if named["same_photo"]:
                image_b = image_a
            else:
                image_b = fn.decoders.image(named["enc_b"], device=decode_device,
                                            output_type=types.RGB)
        outputs = []
        for v, view in enumerate(spec.views):
            arg = (lambda v: lambda name: named[f"{name}:{v}"])(v)
            aug = view.augment
            if view.kind == "local":
                if arg("from_b"):
                    x = crop_view(view, image_b, arg)
                else:
                    x = crop_view(view, image_a, arg)
            else:
                x = crop_view(view, image_b if v == 1 else image_a, arg)
            if aug.jitter_p > 0 or aug.grayscale_p > 0:
                if arg("twist"):
                    x = fn.color_twist(x, brightness=arg("brightness"), contrast=arg("contrast"),
                                       saturation=arg("saturation"), hue=arg("hue"))
            if aug.blur_p > 0:
                if arg("blur"):
                    x = fn.gaussian_blur(x, sigma=arg("sigma"), window_size=arg("window"))
            if aug.solarize_p > 0:
                if arg("solarize"):
                    x = fn.lookup_table(x, keys=_SOLARIZE_KEYS, values=_SOLARIZE_VALUES,
                                        dtype=types.UINT8)
            outputs.append(fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                                    mean=mean, std=std, mirror=arg("mirror")))
        return tuple(outputs)

    pipe = graph(batch_size=batch_size, num_threads=num_threads, prefetch_queue_depth=prefetch,
                 device_id=device_id if device == "cuda" else None, exec_async=True,
                 exec_pipelined=True)
    pipe.build()
    return pipe
