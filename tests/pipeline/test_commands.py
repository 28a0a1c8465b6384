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


def test_views_shows_every_photo_of_a_group_with_views_per_group(uneven_dataset, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["views", uneven_dataset, "--size", "32", "--views-per-group", "4", "--batch-size", "3",
                 "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["views"] == 4 and Image.open(out).size == (4 * 34 + 2, 3 * 34 + 2)
    for sources in report["view_sources"]:  # distinct photos first, then those picks cycled in order
        distinct = len(set(sources))
        assert sources == [sources[j % distinct] for j in range(4)], sources
    assert main(["views", uneven_dataset, "--views-per-group", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--views-per-group 40" in err
