"""The eval view of one encoded image outside any dataset (a search query), made by the same
DALI graph and the same draw as a dataset's eval views, so a query and the indexed photos it
is compared with go through exactly one transform (decode, centre window, antialiased resize,
normalise) and not two implementations that drift apart."""
from __future__ import annotations

import io

import numpy as np
import torch

from pipeline.dali_graph import build_view_pipeline, feed_arrays
from pipeline.params import draw_batch
from pipeline.spec import ViewSpec


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) as DALI decodes it: EXIF-rotated (the decoders apply the orientation, and
    the crop window and decode window live in that frame). PIL reads no pixels for this;
    ValueError if not an image. Dataset photos carry no rotation (the sharder applies it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if opened.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED:
                return height, width
            return width, height
    except UnidentifiedImageError as err:
        raise ValueError(str(err)) from None


def eval_view(data: bytes, spec: ViewSpec) -> torch.Tensor:
    """The [1, 3, S, S] normalised eval view of encoded image `data` under eval spec `spec`."""
    sizes = {0: image_size_of(data)}
    draw = draw_batch(spec, seed=0, epoch=0, rows=[0], photo_sizes=[sizes])[0]
    encoded = np.frombuffer(data, dtype=np.uint8)
    feed = feed_arrays(spec, [encoded], [encoded], np.array([True]), draw.params[None])
    fed = [False]

    def source():
        if fed[0]:
            raise StopIteration
        fed[0] = True
        return feed

    pipe = build_view_pipeline(spec, source, device="cpu", batch_size=1, num_threads=1, prefetch=1)
    (output,) = pipe.run()
    return torch.from_numpy(np.array(output.as_array()))  # copied: DALI reuses its buffers
