"""The front door's argparse value types: sizes with units, positive integers."""
from __future__ import annotations

import argparse

import pytest

from viewstream.argtypes import parse_size, positive_int


@pytest.mark.parametrize("text,value", [("1000", 1000), ("64MB", 64_000_000), ("64MiB", 64 * 2**20),
                                        ("1.5k", 1500), ("2 GiB", 2 * 2**30)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "12XB", "-5", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)


def test_shard_help_default_matches_the_validator():
    """`viewstream shard --help` states the decompression-bomb limit without importing PIL."""
    from sharding.validate import DEFAULT_MAX_PIXELS
    from viewstream.commands.shard import DEFAULT_MAX_PIXELS as SHOWN

    assert SHOWN == DEFAULT_MAX_PIXELS
