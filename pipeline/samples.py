"""Read samples out of shard tars and check them before they reach the decoder.

DALI fails a whole batch on one bad image, so every photo is checked here first: it must be
present, match the sha256 its ``{key}.json`` records (catches corruption in storage or in
flight), have a readable image header (PIL reads only the header: cheap, and it gives the
size the crop windows need) and end as its format requires (catches truncation). A bad photo is dropped with a warning and counted; a sample with
no good photo left is skipped and counted. Nothing raises for bad data.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from PIL import Image

from sharding.storage import Storage, join
from sharding.format import SHARDS_DIR, meta_member, view_member
from pipeline.streams import open_shard, stream_resumes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives, from index.parquet: its row, shard, key and expected views."""

    row: int
    shard: str
    key: str
    view_exts: tuple[str, ...]


@dataclass
class LoadedSample:
    """The good photos of one sample (view index -> encoded bytes) and their (width, height)."""

    row: int
    photos: dict[int, bytes]
    sizes: dict[int, tuple[int, int]]


@dataclass
class ReadStats:
    """Counts of what reading skipped and why, plus S3 reconnects; shared by a loader's reads."""

    bad_photos: int = 0
    skipped_samples: int = 0
    s3_resumes: int = 0
    reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"bad_photos": self.bad_photos, "skipped_samples": self.skipped_samples,
                "s3_resumes": self.s3_resumes, "reasons": dict(self.reasons)}


def _recorded_sha256(meta: dict, num_views: int) -> list[str | None]:
    """Per-view sha256 from a sample's JSON (a "sha256" list, or "views": [{"sha256": ...}])."""
    shas = meta.get("sha256")
    if isinstance(shas, list):
        return [s if isinstance(s, str) else None for s in shas][:num_views] + [None] * max(0, num_views - len(shas))
    views = meta.get("views")
    if isinstance(views, list):
        out = [v.get("sha256") if isinstance(v, dict) else None for v in views][:num_views]
        return out + [None] * (num_views - len(out))
    return [None] * num_views


def looks_complete(data: bytes, image_format: str | None) -> bool:
    """Whether an encoded image ends as its format requires (JPEG EOI, PNG IEND).

    DALI aborts the whole batch on a truncated stream, and PIL's header read does not notice
    one; this catches truncation when the JSON records no sha256 to check against.
    """
    if image_format == "JPEG":
        return b"\xff\xd9" in data[-4096:]
    if image_format == "PNG":
        return b"IEND" in data[-64:]
    return True


def check_sample(ref: SampleRef, members: dict[str, bytes], stats: ReadStats) -> LoadedSample | None:
    """The sample's good photos, or None when none is left (warning and counts in `stats`)."""
    meta: dict = {}
    raw_meta = members.get(meta_member(ref.key))
    if raw_meta is not None:
        try:
            meta = json.loads(raw_meta)
            if not isinstance(meta, dict):
                meta = {}
        except (ValueError, UnicodeDecodeError):
            meta = {}
    shas = _recorded_sha256(meta, len(ref.view_exts))
    photos, sizes = {}, {}
    for i, ext in enumerate(ref.view_exts):
        name = view_member(ref.key, i, ext)
        data = members.get(name)
        reason = None
        if not data:
            reason = "missing_view"
        elif shas[i] and hashlib.sha256(data).hexdigest() != shas[i]:
            reason = "sha256_mismatch"
        else:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    (width, height), image_format = im.size, im.format
                if width < 1 or height < 1:
                    reason = "empty_image"
                elif not looks_complete(data, image_format):
                    reason = "truncated"
            except Exception:  # PIL raises many types for garbage; all mean "not an image"
                reason = "undecodable"
        if reason:
            stats.bad_photos += 1
            stats.reasons[reason] += 1
            log.warning("shard %s sample %s: skipping view %s (%s)", ref.shard, ref.key, name, reason)
            continue
        photos[i], sizes[i] = data, (width, height)
    if not photos:
        stats.skipped_samples += 1
        stats.reasons["no_good_view"] += 1
        log.warning("shard %s: skipping sample %s (no good view)", ref.shard, ref.key)
        return None
    return LoadedSample(ref.row, photos, sizes)


def _member_key(name: str) -> str:
    """The sample key of a tar member (keys have no dots)."""
    return name.split(".", 1)[0]


def read_shard_members(storage: Storage, uri: str, keys: set[str], stats: ReadStats
                       ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) for each wanted key of one shard, in tar order, streaming the tar once.

    Stops as soon as every wanted key has been passed, so a rank that needs only the head of a
    shard does not read its tail. A truncated or corrupt tar ends the stream with a warning;
    the keys not reached are then reported missing by the caller.
    """
    remaining = set(keys)
    current, members = None, {}
    stream = open_shard(storage, uri)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key = _member_key(info.name.rsplit("/", 1)[-1])
                if key != current:
                    if current in remaining:
                        remaining.discard(current)
                        yield current, members
                    if not remaining:
                        break
                    current, members = key, {}
                if key in remaining:
                    members[info.name.rsplit("/", 1)[-1]] = tar.extractfile(info).read()
            if current in remaining:
                remaining.discard(current)
                yield current, members
    except (tarfile.TarError, EOFError) as err:
        log.warning("shard %s: unreadable tar after some members (%s)", uri, err)
        stats.reasons["corrupt_tar"] += 1
    finally:
        stats.s3_resumes += stream_resumes(stream)
        stream.close()


def read_samples(storage: Storage, root: str, refs: Iterable[SampleRef], stats: ReadStats
                 ) -> Iterator[tuple[SampleRef, LoadedSample | None]]:
    """Each ref with its checked sample, streaming each run of same-shard refs in one pass.

    Within a run, samples come in tar order (which the index follows); nothing of a run is
    held in memory beyond the sample being yielded.
    """
    run: list[SampleRef] = []

    def flush(run: list[SampleRef]) -> Iterator[tuple[SampleRef, LoadedSample | None]]:
        uri = join(root, SHARDS_DIR, run[0].shard)
        by_key = {r.key: r for r in run}
        for key, members in read_shard_members(storage, uri, set(by_key), stats):
            ref = by_key.pop(key)
            yield ref, check_sample(ref, members, stats)
        for ref in by_key.values():  # never reached: missing from the shard
            yield ref, check_sample(ref, {}, stats)

    for ref in refs:
        if run and ref.shard != run[0].shard:
            yield from flush(run)
            run = []
        run.append(ref)
    if run:
        yield from flush(run)
