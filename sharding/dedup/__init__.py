"""Exact duplicates ACROSS natural-view groups: found after the build, reported, optionally fixed.

A photo's identity is the sha256 of its stored bytes, known only once the build has read the
images, so the pass runs on the built shards. Left alone, a photo held by groups A and B is a
positive within each but, when A and B meet in one batch, a NEGATIVE of itself; the modes of
``--dedup-across-groups`` (report, drop, keep-first, merge) say what to do about it. Every input
stays accounted for: in a shard or in the quarantine with its reason. The design, with its
memory bounds, is ARCHITECTURE.md section 1, "Duplicates across groups".

Modules, in the order the pass runs them:
  scan      split the index parts' views into sha256 buckets; per bucket, the shared sha256s
  report    duplicates.parquet, streamed bucket by bucket
  decide    drop / keep-first, a task per bucket
  merge     connected components of the groups sharing bytes, one group each
  actions   what each affected sample's rewrite does, stored by shard folder
  rewrite   one affected shard as {stem}-dd.tar
  markers   the _dedup/ working files, fingerprints, resume and cleanup
  run       dedup_across_groups(): the pass on the sharder's executor
"""
from sharding.dedup.actions import MODES, Mode
from sharding.dedup.run import DedupResult, dedup_across_groups

__all__ = ["MODES", "DedupResult", "Mode", "dedup_across_groups"]
