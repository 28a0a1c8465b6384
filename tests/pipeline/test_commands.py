"""`viewstream views`: the recipe preview command."""
from __future__ import annotations

import json

from PIL import Image

from viewstream.cli import main


def test_views_writes_a_grid_and_reports_counts(uneven_dataset, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["views", uneven_dataset, "--recipe", "multicrop", "--size", "32",
                 "--local-size", "16", "--num-local", "2", "--batch-size", "3", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["samples"] == 3 and report["views"] == 4
    assert report["read"]["skipped_samples"] == 0
    width, height = Image.open(out).size
    assert width == 4 * 34 + 2 and height == 3 * 34 + 2


def test_views_rejects_an_unknown_recipe_in_one_line(uneven_dataset, capsys):
    assert main(["views", uneven_dataset, "--recipe", "mae"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown view recipe 'mae'" in err
