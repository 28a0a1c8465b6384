"""`viewstream shard` on a manifest of http:// URIs served by a real http.server on 127.0.0.1:
good images are sharded; a 404 and a connection reset are quarantined with their reasons."""
from __future__ import annotations

import csv
import shutil

import pytest

from tests.helpers.http_server import RESET_PREFIX, http_folder_server
from tests.sharding.conftest import run_cli

from sharding.dataset import load_manifest, read_index, read_quarantine


@pytest.mark.integration
def test_shard_http_manifest_quarantines_404_and_reset(view_corpus, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    images = sorted(p for p in view_corpus.rglob("*") if p.is_file())[:4]
    for i, image in enumerate(images):
        shutil.copy(image, served / f"img{i}{image.suffix}")
    names = sorted(p.name for p in served.iterdir())
    with http_folder_server(served) as url:
        manifest = tmp_path / "inputs.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["uri"])
            writer.writerows([[f"{url}/{n}"] for n in names])
            writer.writerow([f"{url}/gone.jpg"])
            writer.writerow([f"{url}{RESET_PREFIX}dropped.jpg"])
        out = tmp_path / "ds"
        result = run_cli("shard", str(manifest), str(out), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert load_manifest(str(out))["complete"] is True
    index = read_index(str(out)).to_pylist()
    assert sorted(r["group_id"] for r in index) == sorted(f"{url}/{n}" for n in names)
    quarantine = {row["source"]: row for row in read_quarantine(str(out)).to_pylist()}
    assert set(quarantine) == {f"{url}/gone.jpg", f"{url}{RESET_PREFIX}dropped.jpg"}
    gone = quarantine[f"{url}/gone.jpg"]
    assert gone["reason"] == "unreadable" and "404" in gone["detail"] and "gone.jpg" in gone["detail"]
    dropped = quarantine[f"{url}{RESET_PREFIX}dropped.jpg"]
    assert dropped["reason"] == "unreadable" and "ConnectionError" in dropped["detail"]
