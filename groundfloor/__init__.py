"""The ground floor beneath the stages: what every stage shares and none owns.

- `errors`: UsageError (bad input a user can fix) and the one pydantic-error formatter;
- `config_files`: YAML configs with `--set a.b=c` overrides, validated by pydantic;
- `storage`: every byte read or written, local, s3:// or http(s):// (ARCHITECTURE.md section 0);
- `ray_connect`: the one place Ray is joined or started.
- `parquet_files`: one-file Parquet reads on the caller's thread (no Arrow pool outlives a command).

It imports no stage and no argparse: stages take typed settings, the front door (`viewstream/`)
parses command lines. See ARCHITECTURE.md for the import order.
"""
