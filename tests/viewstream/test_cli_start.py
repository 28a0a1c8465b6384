"""`viewstream --help` (and building the parser for any command) imports no heavy stage library:
each command imports its stage inside its function."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "nvidia", "pyarrow", "PIL", "faiss", "numpy", "boto3", "botocore", "timm", "pydantic")


def test_building_the_parser_imports_no_stage_library():
    code = ("import json, sys; from viewstream.cli import build_parser; build_parser(); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = set(json.loads(done.stdout))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_lists_every_command():
    from viewstream.commands import COMMANDS

    done = subprocess.run([sys.executable, "-m", "viewstream", "--help"], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    for name in COMMANDS:
        assert f"    {name} " in done.stdout or f"    {name}\n" in done.stdout, name
