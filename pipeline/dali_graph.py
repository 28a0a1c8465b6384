"""The DALI graph that turns encoded photos plus drawn parameters into normalized views.

One function builds it for both backends: ``device="cpu"`` decodes and augments on the CPU
(``device_id=None``: runs without a GPU); ``device="cuda"`` decodes with nvJPEG (``mixed``) and
every later op then runs on the GPU because its input lives there. The graph holds no
randomness: crop windows, flips, jitter factors, blur sigmas and the photo choice arrive per
sample through one external source (`feed_arrays`). DALI conditionals make skipped ops cost
nothing, and ops whose probability is 0 in the spec are not built at all.

Decode only the pixels the views use (ROI decoding): photos are decoded through
``fn.decoders.image_slice`` over integer windows that `pipeline.decode_windows` computes on the
host from the drawn crop windows and header sizes (a view's window padded by the resize filter's
reach, clamped to the image; a photo several views crop is decoded once over the union of their
windows when it is smaller than their sum, else once per view, chosen per sample by a DALI
conditional). CPU and CUDA run the same graph, only the device string differs. Per view: resize the crop window, shifted by the decoded window's
origin, to the view size (one op: crop + resize + antialias), colour twist (jitter and grayscale
folded together; it writes float32, and the ops after it work on float: `pipeline.colour`),
Gaussian blur (window from sigma; two 1-D `fn.filter` passes over host-built kernels,
`pipeline.blur`), solarize (a 256-entry lookup table on uint8, arithmetic on float), then
flip + normalize + HWC->CHW in one crop_mirror_normalize.

DALI operator arguments used here, and where they are defined:
- ``exec_dynamic=True`` (with ``exec_async`` and ``exec_pipelined``): DALI's default execution
  model (the installed ``Pipeline`` docstring: used by default when both are True), stated
  because `pipeline.loader.dali_to_torch` relies on it: its outputs are handed out through
  DLPack without a copy and are never recycled by a later run.
- ``fn.decoders.image_slice``: schema ``decoders__ImageSlice`` in dali/operators/imgcodec/
  decoder_schema.cc (``NumInput(1, 3)``: data plus the positional ``anchor`` and ``shape``
  inputs; integer inputs are absolute pixels). Backends ``cpu`` and ``mixed``
  (dali/operators/imgcodec/mixed_decoder.cc registers ``MixedDecoderSlice`` for ``Mixed``,
  nvJPEG through nvImageCodec; the installed DALI 2.4.0 docstring lists both backends). ``axis_names``, ``normalized_anchor`` and
  ``normalized_shape`` come from schema ``SliceAttr`` (dali/operators/generic/slice/
  slice_attr.cc, applied in slice_attr.h): ``axis_names="WH"`` (the default, stated here) means
  anchor = (x, y) and shape = (width, height); ``normalized_anchor=False`` and
  ``normalized_shape=False`` mean pixels, not fractions of the image. A window outside the
  image fails the batch (dali/operators/imgcodec/roi_image_decoder.h -> ``EnforceInRange`` in
  dali/util/crop_window.h), hence the clamping; the window is in the EXIF-oriented frame
  (dali/operators/imgcodec/util/output_shape.h), which for stored photos is the header's
  (the sharder applies EXIF rotation).
- ``fn.resize`` ``roi_start``/``roi_end``/``roi_relative=False``/``antialias=True``: absolute
  (y, x) pixels of the input it is given (the installed docstring); with linear interpolation
  and antialias a downscale uses a triangular filter of radius in/out
  (dali/kernels/imgproc/resample/params.h), the reach the decode windows pad for.

Known differences from torchvision's recipe: ColorJitter applies its four factors in a random
order with clamping after each; DALI's colour twist applies them as one affine colour map
(contrast around mid-grey, not the image mean). The statistics of the drawn factors are the
recipe's; the pixels differ slightly. In a recipe without a colour twist the blur runs on
uint8 and rounds its horizontal pass (`pipeline.blur`), 1 grey level from ``fn.gaussian_blur``
on ~11% of a blurred view's values; after a twist it runs on float and does not round.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.blur import blur_kernels, separable_blur
from pipeline.colour import as_float, solarize, twist_to_float
from pipeline.decode_windows import plan_decodes
from pipeline.params import COL, batch_arguments
from pipeline.spec import ViewConfig, ViewSpec


def uses_two_photos(spec: ViewSpec) -> bool:
    """Whether the graph decodes a second photo (the natural-view partner)."""
    return spec.num_global >= 2


def view_argument_names(view: ViewConfig, index: int, roi_decode: bool = True) -> list[str]:
    """The per-sample inputs view `index`'s ops need (ops with probability 0 need none).

    With `roi_decode`, `roi_start`/`roi_end` are the crop window relative to the top-left of the
    decoded image the view is resized from, and views after the first may decode a window of
    their own (`own`, `anchor`, `shape`; `pipeline.decode_windows`); without, they are photo
    coordinates.
    """
    aug = view.augment
    names = ["roi_start", "roi_end", "mirror"]
    own_photo = view.kind == "global" and index >= 2  # a photo of its own (pipeline.params: slot g)
    if own_photo:
        names.append("enc")
    if roi_decode and index > 0:
        names += ["anchor", "shape"] if own_photo else ["own", "anchor", "shape"]
    if view.kind == "local":
        names.append("from_b")
    if aug.jitter_p > 0 or aug.grayscale_p > 0:
        names += ["twist", "brightness", "contrast", "saturation", "hue"]
    if aug.blur_p > 0:
        names += ["blur", "blur_row", "blur_col"]
    if aug.solarize_p > 0:
        names.append("solarize")
    return names


def input_names(spec: ViewSpec, roi_decode: bool = True) -> list[str]:
    """Names of the external source's outputs, in order: photos (with their shared decode
    windows under `roi_decode`) first, then per-view args."""
    names = ["enc_a"] + (["anchor_a", "shape_a"] if roi_decode else [])
    if uses_two_photos(spec):
        names += ["enc_b", "same_photo"] + (["anchor_b", "shape_b"] if roi_decode else [])
    for v, view in enumerate(spec.views):
        names += [f"{name}:{v}" for name in view_argument_names(view, v, roi_decode)]
    return names


def _slice_args(anchor_yx: np.ndarray, stop_yx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image_slice's anchor and shape inputs: int32 in "WH" order, (x, y) and (width, height)."""
    return (np.ascontiguousarray(anchor_yx[..., ::-1], dtype=np.int32),
            np.ascontiguousarray((stop_yx - anchor_yx)[..., ::-1], dtype=np.int32))


def feed_arrays(spec: ViewSpec, enc_a: list[np.ndarray], enc_b: list[np.ndarray],
                same_photo: np.ndarray, params: np.ndarray, roi_decode: bool = True,
                enc_more: list[list[np.ndarray]] = ()) -> tuple:
    """The external source's batch, in `input_names` order, from photos and stacked params.

    `same_photo[i]` marks a group of one: its second photo is not decoded again. `enc_more[j]`
    is the photo of global view j + 2 per sample (specs with more than two global views). The decode
    windows follow from the drawn crop windows and photo sizes in `params` alone, so the batch
    stays a pure function of (seed, epoch, sample). `roi_decode` must match the graph's.
    """
    out: dict[str, object] = {"enc_a": enc_a}
    if uses_two_photos(spec):
        out["enc_b"] = enc_b
        out["same_photo"] = np.asarray(same_photo, dtype=bool)
    if len(enc_more) != max(0, spec.num_global - 2):
        raise ValueError(f"{spec.num_global} global views need {max(0, spec.num_global - 2)} photo lists "
                         f"in enc_more, got {len(enc_more)}")
    views = [batch_arguments(params, v) for v in range(len(spec.views))]
    for j, photos in enumerate(enc_more):
        views[j + 2]["enc"] = photos
    if roi_decode:
        col = lambda name: params[:, :, COL[name]]  # noqa: E731
        plan = plan_decodes(np.stack([col("y0"), col("x0")], -1), np.stack([col("y1"), col("x1")], -1),
                            np.array([v.size for v in spec.views]),
                            np.stack([col("height"), col("width")], -1), col("slot"))
        for p, photo in enumerate("ab"):
            out[f"anchor_{photo}"], out[f"shape_{photo}"] = _slice_args(plan.photo_anchor[:, p],
                                                                        plan.photo_stop[:, p])
        anchors, shapes = _slice_args(plan.view_anchor, plan.view_stop)
        for v, args in enumerate(views):  # DALI takes no strided arrays: contiguous copies
            origin = np.ascontiguousarray(plan.origin[:, v], dtype=np.float32)
            args.update(roi_start=args["roi_start"] - origin, roi_end=args["roi_end"] - origin,
                        own=np.ascontiguousarray(plan.own[:, v]),
                        anchor=np.ascontiguousarray(anchors[:, v]),
                        shape=np.ascontiguousarray(shapes[:, v]))
    for v, (view, args) in enumerate(zip(spec.views, views)):
        if view.augment.blur_p > 0:
            args["blur_row"], args["blur_col"] = blur_kernels(args["sigma"], args["window"])
        for name in view_argument_names(view, v, roi_decode):
            out[f"{name}:{v}"] = args[name]
    return tuple(out[name] for name in input_names(spec, roi_decode))


def build_view_pipeline(spec: ViewSpec, source: Callable[[], tuple], *, device: str,
                        batch_size: int, num_threads: int, prefetch: int, device_id: int = 0,
                        roi_decode: bool = True, decode_only: bool = False):
    """A built DALI pipeline whose outputs are the views of `spec` (float CHW, normalized).

    `source` is called once per iteration and returns `feed_arrays(...)` for the next batch,
    or raises StopIteration at the end of the epoch. `roi_decode=False` decodes every photo
    whole and resizes the windows in photo coordinates (the reference the ROI path is tested
    against: the same views up to resize rounding); its feed is `feed_arrays(...,
    roi_decode=False)`. `decode_only` keeps the decoders alone: each output is the decoded image
    a view would be cropped from, uint8 HWC (benchmarks: the decode limit).
    """
    from nvidia.dali import fn, pipeline_def, types

    names = input_names(spec, roi_decode)
    two_photos, augment = uses_two_photos(spec), not decode_only
    decode_device = "mixed" if device == "cuda" else "cpu"
    mean = [255.0 * m for m in spec.mean]
    std = [255.0 * s for s in spec.std]

    def decode(encoded, anchor, shape):
        if not roi_decode:
            return fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
        return fn.decoders.image_slice(encoded, anchor, shape, device=decode_device,
                                       output_type=types.RGB, axis_names="WH",
                                       normalized_anchor=False, normalized_shape=False)

    def crop_view(view: ViewConfig, image, arg):
        if decode_only:
            return image
        return fn.resize(image, size=[view.size, view.size], roi_start=arg("roi_start"),
                         roi_end=arg("roi_end"), roi_relative=False, antialias=True)

    @pipeline_def(enable_conditionals=True)
    def graph():
        inputs = fn.external_source(source=source, num_outputs=len(names), batch=True)
        named = dict(zip(names, inputs))
        enc_a = named["enc_a"]
        photo_a = decode(enc_a, named.get("anchor_a"), named.get("shape_a"))
        photo_b = photo_a
        if two_photos:
            if named["same_photo"]:
                photo_b = photo_a
            else:
                photo_b = decode(named["enc_b"], named.get("anchor_b"), named.get("shape_b"))
        outputs = []
        for v, view in enumerate(spec.views):
            arg = (lambda v: lambda name: named[f"{name}:{v}"])(v)
            aug = view.augment
            # A view after the first crops its photo's shared decode or, when `own`, decodes its
            # own window. A local view of a two-photo spec picks photo a or b per sample; any
            # other view has one photo: b for the second global view (b is a for a group of
            # one), else a. `own` implies photo a for those (the decode plan's lowest view of
            # photo b is the second global view, which never decodes apart).
            picks = view.kind == "local" and two_photos
            shared = photo_b if view.kind == "global" else photo_a
            if v == 0:
                x = crop_view(view, photo_a, arg)
            elif view.kind == "global" and v >= 2:  # its own photo, always decoded apart
                x = crop_view(view, decode(arg("enc"), arg("anchor") if roi_decode else None,
                                           arg("shape") if roi_decode else None), arg)
            elif not picks and roi_decode:
                if arg("own"):
                    x = crop_view(view, decode(enc_a, arg("anchor"), arg("shape")), arg)
                else:
                    x = crop_view(view, shared, arg)
            elif not picks:
                x = crop_view(view, shared, arg)
            elif not roi_decode:
                if arg("from_b"):
                    x = crop_view(view, photo_b, arg)
                else:
                    x = crop_view(view, photo_a, arg)
            elif arg("own"):
                if arg("from_b"):
                    x = crop_view(view, decode(named["enc_b"], arg("anchor"), arg("shape")), arg)
                else:
                    x = crop_view(view, decode(enc_a, arg("anchor"), arg("shape")), arg)
            elif arg("from_b"):
                x = crop_view(view, photo_b, arg)
            else:
                x = crop_view(view, photo_a, arg)
            twists = augment and (aug.jitter_p > 0 or aug.grayscale_p > 0)
            if twists:  # float from here on (pipeline.colour)
                if arg("twist"):
                    x = twist_to_float(x, arg("brightness"), arg("contrast"), arg("saturation"), arg("hue"))
                else:
                    x = as_float(x)
            if augment and aug.blur_p > 0:
                if arg("blur"):
                    x = separable_blur(x, arg("blur_row"), arg("blur_col"))
            if augment and aug.solarize_p > 0:
                if arg("solarize"):
                    x = solarize(x, twists)
            if augment:
                x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                             mean=mean, std=std, mirror=arg("mirror"))
            outputs.append(x)
        return tuple(outputs)

    pipe = graph(batch_size=batch_size, num_threads=num_threads, prefetch_queue_depth=prefetch,
                 device_id=device_id if device == "cuda" else None, exec_async=True,
                 exec_pipelined=True, exec_dynamic=True)
    pipe.build()
    return pipe
