"""viewstream sharding stage: images and natural-view groups -> WebDataset shards (+ .idx, index).

Modules, one job each (read in this order):
  format      the shard format contract shared with `pipeline`
  records     the input record (INPUT_SCHEMA): one row of the plan
  inputs      folder / manifest(s) / S3 Inventory / tars / s3 prefix -> streamed record batches
  manifests   CSV / JSONL / Parquet manifests with named and kept columns
  containers  WebDataset tars and embedded-bytes Parquet row groups: a plan row each, streamed
              by the build as their samples' groups
  tar_reader  a tar stream's regular files: plain members parsed directly, tarfile for the rest
  validate    decode each image for real: keep its bytes, re-encode it, or say why not
  plan        deterministic streamed plan: ranked, spilled partitions -> shards, stable keys
  tar_writer  deterministic streaming tar + DALI wds2idx index
  build       build one shard from its input list, prefetching remote reads (tar, .idx, index
              part, record)
  executors   run builds inline, in local processes (which never import pandas), or as Ray tasks
  dedup/      after the build: photos held by several groups (hash-partitioned scan),
              duplicates.parquet, --dedup-across-groups drop / keep-first / merge, rewritten
              shards ({stem}-dd.tar)
  run         shard_dataset() / plan_dataset() (--dry-run): orchestrate, resume
  manifest_writer  manifest.json (running totals, atomic) and shards.parquet (the commit point)
  summary     what a build or a dry run prints
  dataset     read a built dataset (manifest, index, shard URIs, samples by ranged reads)
  inspect     summary, sha256 verification, contact sheet
  migrate     rewrite a format-version-1 dataset in place as version 2
  synthetic, fashion_mnist   test and demo corpora
Bytes go through `groundfloor.storage`; the commands are the front door's (`viewstream/commands/`).
"""
