"""`viewstream inspect`: summarize a dataset, verify every shard's sha256, draw a contact sheet.

Works from shards.parquet (one row per shard) and reads one index part at a time, so its
memory does not grow with the dataset. The contact sheet reads only the chosen samples, by
ranged reads at the offsets in the .idx files, so it is cheap on S3 too.
"""
from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, field

from PIL import Image

from sharding.dataset import (
    load_manifest,
    read_index_part,
    read_quarantine,
    read_sample,
    read_shard_index,
    read_shards,
    shard_uri,
)
from groundfloor.storage import Storage

THUMB = 96
MAX_COLUMNS = 6
HASH_CHUNK = 4 * 2**20


@dataclass
class InspectReport:
    """What `inspect_dataset` found; `ok` is False when a check failed."""

    root: str
    manifest: dict
    num_index_rows: int
    quarantined_by_reason: dict[str, int]
    num_shards: int = 0
    verified: int = 0
    problems: list[str] = field(default_factory=list)
    grid: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        m = self.manifest
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.quarantined_by_reason.items())) or "none"
        lines = [
            f"dataset      {self.root}",
            f"complete     {m.get('complete', False)}",
            f"inputs       {m.get('num_inputs')}",
            f"samples      {m.get('num_samples')} ({m.get('num_views')} views; index rows {self.num_index_rows})",
            f"quarantined  {m.get('num_quarantined')} ({reasons})",
            f"shards       {self.num_shards}, {m.get('total_bytes')} bytes, {self.verified} sha256 verified",
        ]
        dups = m.get("duplicates_across_groups")
        if dups:
            lines.append(f"duplicates   {dups.get('num_sha256')} photos held by several groups "
                         f"({dups.get('num_occurrences')} copies; --dedup-across-groups {dups.get('mode')})")
        if self.grid:
            lines.append(f"grid         {self.grid}")
        lines += [f"PROBLEM      {p}" for p in self.problems]
        lines.append("ok" if self.ok else f"FAILED ({len(self.problems)} problems)")
        return "\n".join(lines)


def inspect_dataset(
    root: str,
    verify: bool = True,
    grid: str | None = None,
    grid_groups: int = 8,
    seed: int = 0,
    endpoint_url: str | None = None,
) -> InspectReport:
    """Check the dataset at `root` against its manifest; optionally write a contact sheet."""
    storage = Storage(endpoint_url)
    manifest = load_manifest(root, storage)
    shards = read_shards(root, storage).to_pylist()
    quarantine = read_quarantine(root, storage)
    reasons: dict[str, int] = {}
    for reason in quarantine.column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    report = InspectReport(root, manifest, 0, reasons, num_shards=len(shards))
    if not manifest.get("complete"):
        report.problems.append("manifest is not complete (the build was interrupted; rerun it)")
    if len(shards) != manifest.get("num_shards"):
        report.problems.append(f"shards.parquet has {len(shards)} rows, manifest says {manifest.get('num_shards')} shards")
    for shard in shards:  # one index part at a time
        rows = read_index_part(root, shard["name"], storage).num_rows
        report.num_index_rows += rows
        if rows != shard["num_samples"]:
            report.problems.append(f"{shard['name']}: index part has {rows} rows, shards.parquet says {shard['num_samples']}")
    if report.num_index_rows != manifest.get("num_samples"):
        report.problems.append(f"index has {report.num_index_rows} rows, manifest says {manifest.get('num_samples')} samples")
    if verify:
        for shard in shards:
            digest = sha256_of(shard_uri(root, shard["name"]), storage)
            if digest != shard["sha256"]:
                report.problems.append(f"{shard['name']}: sha256 {digest} != shards.parquet {shard['sha256']}")
            else:
                report.verified += 1
    if grid:
        write_contact_sheet(root, shards, grid, grid_groups, seed, storage)
        report.grid = grid
    return report


def sha256_of(uri: str, storage: Storage) -> str | None:
    """Streaming sha256 of a file or object (None if it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with storage.open_read(uri) as stream:
            for chunk in iter(lambda: stream.read(HASH_CHUNK), b""):
                digest.update(chunk)
    except Exception:
        return None
    return digest.hexdigest()


def write_contact_sheet(root: str, shards: list[dict], out: str, groups: int, seed: int, storage: Storage) -> None:
    """A PNG with one row per randomly chosen group, its views left to right. The samples are
    drawn by position over the shard counts, so only the index parts of chosen shards are read."""
    total = sum(s["num_samples"] for s in shards)
    picks = sorted(random.Random(seed).sample(range(total), min(groups, total)))
    chosen, start, p = [], 0, 0
    for shard in shards:
        end = start + shard["num_samples"]
        mine = []
        while p < len(picks) and picks[p] < end:
            mine.append(picks[p] - start)
            p += 1
        if mine:
            part = read_index_part(root, shard["name"], storage).select(["shard", "key", "num_views"]).to_pylist()
            chosen += [part[i] for i in mine]
        start = end
    sheet = Image.new("RGB", (MAX_COLUMNS * THUMB, max(1, len(chosen)) * THUMB), (32, 32, 32))
    shard_indexes: dict[str, dict] = {}
    for row_number, row in enumerate(chosen):
        shard = row["shard"]
        if shard not in shard_indexes:
            shard_indexes[shard] = read_shard_index(root, shard, storage)
        members = read_sample(root, shard, row["key"], storage, shard_indexes[shard])
        for view in range(min(row["num_views"], MAX_COLUMNS)):
            data = next(v for ext, v in members.items() if ext.startswith(f"{view}."))
            with Image.open(io.BytesIO(data)) as image:
                thumb = image.convert("RGB")
                thumb.thumbnail((THUMB, THUMB))
                sheet.paste(thumb, (view * THUMB + (THUMB - thumb.width) // 2,
                                    row_number * THUMB + (THUMB - thumb.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    storage.write_bytes(out, buffer.getvalue())
