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
import queue
import tarfile
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from groundfloor.storage import Storage
from sharding.dataset import read_shard_index
from sharding.format import SHARDS_DIR, meta_member, view_member
from pipeline.imageinfo import image_info
from pipeline.streams import open_shard, stream_resumes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives, from its shard's index part: its item id (`row`, see
    `pipeline.epochs`), shard, key, expected views, and the metadata a batch reports."""

    row: int
    shard: str
    key: str
    view_exts: tuple[str, ...]
    uri: str = ""               # the shard's full uri (root/shards/name)
    group_id: str = ""
    label: int = -1             # index into the loader's label vocabulary, -1 if none
    index: int = 0              # position in the rank's stream order (RankEpoch.stream_rows)
    u: tuple[float, ...] = (0.0, 0.0)  # params.pick_uniforms: which photos the epoch draws
    photo: int = -1             # >= 0: this sample is that one photo of the group (data.natural_views false)


@dataclass
class LoadedSample:
    """The good photos of one sample (view index -> encoded bytes) and their (width, height)."""

    row: int
    photos: dict[int, bytes]
    sizes: dict[int, tuple[int, int]]
    key: str = ""
    group_id: str = ""
    label: int = -1
    candidates: list[int] | None = None  # photos not known bad (the draw picks among them)


@dataclass
class ReadStats:
    """Counts of what reading skipped and why, plus S3 reconnects; shared by a loader's reads."""

    bad_photos: int = 0
    skipped_samples: int = 0
    filled: int = 0  # batch slots filled by repeating a good sample (holes left by skips)
    s3_resumes: int = 0
    reasons: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, reason: str | None = None, *, bad_photo: bool = False, skipped: bool = False,
            resumes: int = 0, filled: int = 0) -> None:
        """Count one event; thread-safe (several shard streams report at once)."""
        with self._lock:
            self.bad_photos += bad_photo
            self.skipped_samples += skipped
            self.filled += filled
            self.s3_resumes += resumes
            if reason:
                self.reasons[reason] += 1

    def as_dict(self) -> dict:
        return {"bad_photos": self.bad_photos, "skipped_samples": self.skipped_samples,
                "filled": self.filled, "s3_resumes": self.s3_resumes, "reasons": dict(self.reasons)}


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


def _photo_problem(data: bytes | None, sha: str | None) -> tuple[str | None, tuple[int, int]]:
    """(reason it is bad or None, (width, height)) of one photo: sha256, header, end marker."""
    if not data:
        return "missing_view", (0, 0)
    if sha and hashlib.sha256(data).hexdigest() != sha:
        return "sha256_mismatch", (0, 0)
    try:
        image_format, width, height = image_info(data)
    except Exception:  # PIL raises many types for garbage; all mean "not an image"
        return "undecodable", (0, 0)
    if width < 1 or height < 1:
        return "empty_image", (0, 0)
    if not looks_complete(data, image_format):
        return "truncated", (0, 0)
    return None, (width, height)


def check_sample(ref: SampleRef, members: dict[str, bytes], stats: ReadStats,
                 verify: bool = True, pick: Callable[[SampleRef, list[int]], tuple[int, ...]] | None = None
                 ) -> LoadedSample | None:
    """The sample's good photos, or None when none is left (warning and counts in `stats`).

    `pick(ref, candidates)` names the photos the epoch draws from the candidates (a pure
    function of (seed, epoch, sample): `params.pick_photos`); only those are checked, and a bad
    one is dropped from the candidates and the pick redone. Without `pick` every photo is
    checked. `verify=False` (``data.verify: none``) skips the sha256 check, not the header
    check (which gives the sizes the crop windows need).
    """
    meta: dict = {}
    raw_meta = members.get(meta_member(ref.key))
    if raw_meta is not None:
        try:
            meta = json.loads(raw_meta)
            if not isinstance(meta, dict):
                meta = {}
        except (ValueError, UnicodeDecodeError):
            meta = {}
    shas = _recorded_sha256(meta, len(ref.view_exts)) if verify else [None] * len(ref.view_exts)
    candidates = [ref.photo] if ref.photo >= 0 else list(range(len(ref.view_exts)))
    photos, sizes = {}, {}
    while candidates:
        wanted = pick(ref, candidates) if pick is not None else tuple(candidates)
        unchecked = [i for i in dict.fromkeys(wanted) if i not in photos]
        if not unchecked:
            break
        for i in unchecked:
            name = view_member(ref.key, i, ref.view_exts[i])
            data = members.get(name)
            reason, size = _photo_problem(data, shas[i])
            if reason:
                stats.add(reason, bad_photo=True)
                log.warning("shard %s sample %s: skipping view %s (%s)", ref.shard, ref.key, name, reason)
                candidates.remove(i)
            else:
                photos[i], sizes[i] = data, size
    if not photos:
        stats.add("no_good_view", skipped=True)
        log.warning("shard %s: skipping sample %s (no good view)", ref.shard, ref.key)
        return None
    return LoadedSample(ref.row, photos, sizes, ref.key, ref.group_id, ref.label, candidates)


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
        stats.add("corrupt_tar")
    finally:
        stats.add(resumes=stream_resumes(stream))
        stream.close()


TAR_BLOCK = 512


def read_indexed_members(storage: Storage, uri: str, wanted: list[tuple[str, list]],
                         stats: ReadStats) -> Iterator[tuple[str, dict[str, bytes] | None]]:
    """(key, members) for each wanted sample, via the shard's .idx offsets: one sequential
    stream from the first wanted member, skipping what is not wanted, no tar header parsing.

    `wanted` is (key, [Member]) in tar order. Each member's tar header is compared with the
    name the .idx gives it (a cheap check that the .idx belongs to this tar); on a mismatch it
    yields (key, None) for that key and stops, and the caller reads the rest by scanning the
    tar. A stream that ends early (truncated shard) ends the iteration with a warning; the keys
    not reached are then reported missing by the caller.
    """
    if not wanted:
        return
    first = wanted[0][1][0].offset - TAR_BLOCK
    stream = open_shard(storage, uri, start=first)
    pos = first
    try:
        for key, members in wanted:
            out: dict[str, bytes] = {}
            for m in members:
                header_at = m.offset - TAR_BLOCK
                if header_at < pos:
                    yield key, None
                    return
                _skip(stream, header_at - pos)
                header = stream.read(TAR_BLOCK)
                name = f"{key}.{m.ext}"
                if len(header) < TAR_BLOCK:
                    raise EOFError(f"shard ends before member {name}")
                if header[:100].split(b"\0", 1)[0].rsplit(b"/", 1)[-1] != name.encode():
                    yield key, None
                    return
                data = stream.read(m.size)
                if len(data) < m.size:
                    raise EOFError(f"shard ends inside member {name}")
                out[name] = data
                pos = m.offset + m.size
            yield key, out
    except (EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        log.warning("shard %s: unreadable after some members (%s)", uri, err)
        stats.add("corrupt_tar")
    finally:
        stats.add(resumes=stream_resumes(stream))
        stream.close()


def _skip(stream: BinaryIO, count: int) -> None:
    if count <= 0:
        return
    if stream.seekable():
        stream.seek(count, io.SEEK_CUR)
        return
    while count > 0:
        chunk = stream.read(min(count, 1 << 20))
        if not chunk:
            raise EOFError("shard ends in a gap between wanted samples")
        count -= len(chunk)


def _run_members(storage: Storage, refs: list[SampleRef], stats: ReadStats
                 ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) of a run's samples in tar order: by the .idx where it fits the tar,
    else by scanning the tar (`read_shard_members`)."""
    uri = refs[0].uri
    try:
        index = read_idx(storage, uri)
    except FileNotFoundError:
        index = None
    keys = list(dict.fromkeys(r.key for r in refs))
    if index is None or any(not index.get(k) for k in keys):
        yield from read_shard_members(storage, uri, set(keys), stats)
        return
    wanted = sorted(((k, index[k]) for k in keys), key=lambda kv: kv[1][0].offset)
    done: set[str] = set()
    for key, members in read_indexed_members(storage, uri, wanted, stats):
        if members is None:  # the .idx does not describe this tar: scan for the rest
            log.warning("shard %s: .idx does not match the tar; scanning it", uri)
            yield from read_shard_members(storage, uri, set(keys) - done, stats)
            return
        done.add(key)
        yield key, members


def read_idx(storage: Storage, uri: str) -> dict[str, list]:
    """The shard's .idx (DALI wds2idx) as key -> [Member], read next to the tar at `uri`."""
    root, _, name = uri.rpartition(f"/{SHARDS_DIR}/")
    return read_shard_index(root, name, storage)


class _Run:
    """One shard run being read by a worker thread into a small bounded queue."""

    def __init__(self, describe: Callable[[], list[SampleRef]], depth: int):
        self.describe = describe
        self.queue: queue.Queue = queue.Queue(maxsize=depth)


def _read_run(storage: Storage, run: _Run, stats: ReadStats, verify: bool, pick,
              stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                run.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        refs = run.describe()
        if refs:
            by_key: dict[str, list[SampleRef]] = {}
            for r in refs:  # several refs per key when each photo is its own sample
                by_key.setdefault(r.key, []).append(r)
            for key, members in _run_members(storage, refs, stats):
                for ref in by_key.pop(key):
                    if not put((ref, check_sample(ref, members, stats, verify, pick))):
                        return
            for ref in refs:  # never reached: missing from the shard (tar order kept)
                if ref.key in by_key and not put((ref, check_sample(ref, {}, stats, verify, pick))):
                    return
        put(_RUN_END)
    except BaseException as err:  # handed to the consumer, which raises it
        put(err)


_RUN_END = object()


def read_samples(storage: Storage, runs: Iterable[Callable[[], list[SampleRef]]],
                 stats: ReadStats, *, streams: int = 1, verify: bool = True, pick=None,
                 run_buffer: int = 64) -> Iterator[tuple[SampleRef, LoadedSample | None]]:
    """Each ref of each run with its checked sample, in order, `streams` runs read at once.

    A run is a callable that lists the refs of one stretch of one shard (it reads that shard's
    index part, so index parts are read in the worker threads, ahead, too). Each run is
    streamed in one pass in tar order by its own thread; up to `streams` runs are in flight,
    each buffering at most `run_buffer` checked samples, so S3 first-byte latency and
    per-connection bandwidth overlap while memory stays bounded. Socket reads and sha256
    (hashlib) release the GIL, so threads overlap waiting; on local disk one stream is
    fastest (measured: more only contend for the GIL).
    """
    stop = threading.Event()
    pool = ThreadPoolExecutor(max(1, streams), thread_name_prefix="viewstream-shard")
    inflight: deque[_Run] = deque()
    runs = iter(runs)

    def submit() -> None:
        describe = next(runs, None)
        if describe is not None:
            run = _Run(describe, run_buffer)
            pool.submit(_read_run, storage, run, stats, verify, pick, stop)
            inflight.append(run)

    try:
        for _ in range(max(1, streams)):
            submit()
        while inflight:
            run = inflight[0]
            while True:
                item = run.queue.get()
                if item is _RUN_END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            inflight.popleft()
            submit()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
