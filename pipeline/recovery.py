"""Last line of defence: when DALI aborts a batch, find the photos it choked on and drop them.

`samples.check_sample` catches missing, corrupted and truncated photos cheaply. A photo whose
compressed data is damaged inside (say, a broken PNG IDAT whose sha256 was recorded after the
damage) passes those checks, and DALI then aborts the whole batch and invalidates the
pipeline. The loader then rebuilds the pipeline and feeds the batches that were in flight
again after `recheck_batch` fully decodes their photos with PIL and drops the samples that fail.
"""
from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from pipeline.dali_graph import input_names
from pipeline.params import fill_sources
from pipeline.producer import PreparedBatch
from pipeline.samples import ReadStats
from pipeline.spec import ViewSpec

log = logging.getLogger(__name__)


def decodes(data: np.ndarray) -> bool:
    """Whether PIL decodes the whole image (slow: only used after DALI failed)."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            image.load()
        return True
    except Exception:  # any decoder error means "DALI will choke on it too"
        return False


def recheck_batch(item: PreparedBatch, spec: ViewSpec, stats: ReadStats, seed: int, epoch: int,
                  fill_holes: bool = True) -> tuple[PreparedBatch, int]:
    """`item` with the samples whose photos do not decode replaced by repeats of good ones of
    the same batch (`params.fill_sources`; left out when not `fill_holes`), and how many were
    dropped."""
    if item.feed is None:
        return item, 0
    names = input_names(spec)
    photo_inputs = [names.index(n) for n in ("enc_a", "enc_b") if n in names]
    keep = []
    for i in range(len(item.rows)):
        ok = all(decodes(item.feed[p][i]) for p in photo_inputs)
        keep.append(ok)
        if not ok:
            stats.add("decode_failed", bad_photo=True, skipped=True)
            log.warning("sample %s: a photo does not decode (DALI aborted its batch); skipping it",
                        item.keys[i])
    dropped = keep.count(False)
    if not dropped:
        return item, 0
    if not any(keep):
        return PreparedBatch(item.batch, [], item.view_sources[:0], None), dropped
    if fill_holes:  # the batch keeps its size (producer.py)
        index = fill_sources(seed, epoch, item.rows, keep)
        stats.add(filled=dropped)
    else:
        index = [i for i, k in enumerate(keep) if k]
    rows = [item.rows[i] for i in index]
    meta = tuple([column[i] for i in index] for column in (item.keys, item.group_ids, item.labels))
    feed = tuple([part[i] for i in index] if isinstance(part, list) else part[index]
                 for part in item.feed)
    return PreparedBatch(item.batch, rows, item.view_sources[index], feed, *meta), dropped
