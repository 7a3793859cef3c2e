"""benchmarks/probe_tradeoff.py on the tiny model: the probe it fits at training's rows and Cs is training's own."""

import re

from benchmarks import probe_tradeoff
from tests.test_toward_start import probe_run  # noqa: F401  (a fixture: a tiny run from a probed mean head)
from textlora.training.head_probe import PROBE_CS


def test_the_row_training_would_choose_is_the_probe_training_fitted(probe_run, capsys):  # noqa: F811
    run, log = probe_run
    assert probe_tradeoff.main([str(run), "--rows", "4096", "0", "--cs", "0.01", *map(str, PROBE_CS),
                                "--out", "none"]) == 0
    table = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, rows = table[0], table[2:]
    assert header[2] == "validation" and header[-1] == "test |"  # then each eval set of the run
    assert len(rows) == 2 * (1 + len(PROBE_CS))
    chosen = [row for row in rows if "(training's choice)" in row[1]]
    assert len(chosen) == 2 and "0.01" not in chosen[0][1]  # chosen among training's Cs only, per row count
    trained_probe = float(re.search(r"head fitted .* C=([\d.]+) .*\(validation accuracy (\d\.\d+)\)", log).group(2))
    assert float(chosen[0][2]) == round(trained_probe, 4)


def test_an_exported_folder_is_refused_its_lora_is_merged(tiny_run, tmp_path):
    import pytest

    from textlora.cli import main

    assert main(["export", str(tiny_run), "--out", str(tmp_path / "exported")]) == 0
    with pytest.raises(SystemExit, match="no LoRA weights to set aside"):
        probe_tradeoff.main([str(tmp_path / "exported"), "--out", "none"])
