"""Evaluation of learned representations: kNN, linear probe, embeddings, search, export, plots.

Pure pieces that take modules, tensors and Parquet files; `commands.py` wires them to the CLI.
"""
