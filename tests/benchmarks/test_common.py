"""The benchmarks' shared command line: a bad ``--out`` is refused when the arguments are parsed
(one line, exit 2), before any benchmark work, and nothing is written."""

from __future__ import annotations

import pytest

from benchmarks import _common


def _parse(argv):
    return _common.parser("demo", "a benchmark").parse_args(argv)


def test_a_file_in_the_way_of_out_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "good.csv"
    blocker.write_text("x\n")
    with pytest.raises(SystemExit) as exit_:
        _parse(["--out", str(blocker / "results")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"{blocker} is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]


def test_a_folder_that_does_not_exist_yet_is_made_when_results_are_written(tmp_path):
    args = _parse(["--out", str(tmp_path / "a" / "b")])
    assert not (tmp_path / "a").exists()  # nothing made at parse time
    assert _common.out_dir(args, "x") == tmp_path / "a" / "b" / "x"
    assert (tmp_path / "a" / "b" / "x").is_dir()
