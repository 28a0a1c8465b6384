"""viewstream sharding stage: images and natural-view groups -> WebDataset shards (+ .idx, index).

Modules, one job each (read in this order):
  format      the shard format contract shared with `pipeline`
  storage/    the storage layer: URI -> backend (local, s3://, http(s)://), read, ranged read,
              streamed sorted listing, atomic write; the one S3 client and endpoint rule
  ray_connect the one way to join or start (127.0.0.1) a Ray cluster
  inputs      folder / manifest(s) / S3 Inventory / s3 prefix -> streamed record batches
  validate    decode each image for real: keep its bytes, re-encode it, or say why not
  plan        deterministic streamed plan: ranked, spilled partitions -> shards, stable keys
  tar_writer  deterministic streaming tar + DALI wds2idx index
  build       build one shard from its input list, prefetching reads (tar, .idx, index part, record)
  executors   run builds inline, in local processes, or as Ray tasks
  dedup/      after the build: photos held by several groups (hash-partitioned scan),
              duplicates.parquet, --dedup-across-groups drop / keep-first / merge, rewritten
              shards ({stem}-dd.tar)
  run         shard_dataset() / plan_dataset() (--dry-run): orchestrate, resume, summary, shards.parquet
  dataset     read a built dataset (manifest, index, shard URIs, samples by ranged reads)
  inspect     summary, sha256 verification, contact sheet
  commands    `viewstream shard` / `viewstream inspect`
  synthetic, fashion_mnist   test and demo corpora
"""
