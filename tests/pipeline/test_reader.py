"""The reader's fast paths give exactly what the slow ones give."""
from __future__ import annotations

import glob
import io
import os
import shutil

import pytest
import torch
from PIL import Image

from pipeline import ViewLoader, ViewSpec
from pipeline.imageinfo import image_info

SPEC = ViewSpec.simclr(size=32)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_header_parser_agrees_with_pil(fmt, mode):
    for w, h in [(1, 1), (37, 512), (640, 31)]:
        buffer = io.BytesIO()
        Image.new(mode, (w, h), 120).save(buffer, format=fmt, **({"progressive": True} if fmt == "JPEG" and w > 1 else {}))
        assert image_info(buffer.getvalue()) == (fmt, w, h)
    with pytest.raises(Exception):
        image_info(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 20)  # SOI, no frame header
    with pytest.raises(Exception):
        image_info(b"not an image at all")


def test_reading_without_the_idx_scans_the_tar_and_gives_the_same_batches(uneven_dataset, tmp_path):
    copy = tmp_path / "no_idx"
    shutil.copytree(uneven_dataset, copy)
    for path in glob.glob(os.path.join(copy, "shards", "*.idx")):
        os.remove(path)
    for rank in range(2):
        a = list(ViewLoader(uneven_dataset, SPEC, 4, rank=rank, world_size=2, seed=4).iter_epoch(1))
        b = list(ViewLoader(str(copy), SPEC, 4, rank=rank, world_size=2, seed=4).iter_epoch(1))
        assert [x.keys for x in a] == [y.keys for y in b]
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))


def test_several_streams_give_the_same_batches_as_one(uneven_dataset):
    one = list(ViewLoader(uneven_dataset, SPEC, 4, seed=2, streams=1).iter_epoch(0))
    many = list(ViewLoader(uneven_dataset, SPEC, 4, seed=2, streams=4).iter_epoch(0))
    assert [x.keys for x in one] == [y.keys for y in many]
    for x, y in zip(one, many):
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))
