"""The names of a run directory: periodic names that sort in order, roles read from names,
temporary names a cleanup finds."""

from __future__ import annotations

import os
from fnmatch import fnmatch

from framework.runs import layout


def test_periodic_names_are_zero_padded_so_that_they_sort_by_number():
    assert (layout.epoch_file(7), layout.step_file(1200)) == ("epoch_0007.pt", "step_00001200.pt")
    epochs = [layout.epoch_file(n) for n in (2, 10, 100)]
    steps = [layout.step_file(n) for n in (9, 90, 99_999_999)]
    assert sorted(epochs) == epochs and sorted(steps) == steps


def test_a_names_role():
    assert [layout.role_of(n) for n in ("last.pt", "best.pt", "epoch_2.pt", layout.step_file(5), "mine.pt")] == [
        "last",
        "best",
        "periodic",
        "periodic",
        "other",
    ]


def test_a_sharded_checkpoints_directory_has_the_same_names_without_the_suffix():
    names = [layout.alias("last", ""), layout.alias("best", ""), layout.epoch_file(7, ""), layout.step_file(40, "")]
    assert names == ["last", "best", "epoch_0007", "step_00000040"]
    assert [layout.role_of(n) for n in names] == ["last", "best", "periodic", "periodic"]
    assert layout.role_of("checkpoints") == "other" and layout.role_of("last.ptx") == "other"


def test_the_ranks_of_a_sharded_save_agree_on_its_temporary_name_by_its_owner():
    assert layout.temporary("last", owner=1234) == f".last{layout.TEMPORARY_MARK}1234"
    assert fnmatch(layout.temporary("step_00000040", "-deleted", owner=1), layout.TEMPORARIES)


def test_every_temporary_name_is_hidden_and_found_by_the_cleanup_glob_and_no_real_name_is():
    for name in (layout.LAST, layout.INDEX, layout.RECORD):
        for temporary in (layout.temporary(name), layout.temporary(name, "-replaced")):
            assert temporary.startswith(".") and str(os.getpid()) in temporary
            assert fnmatch(temporary, layout.TEMPORARIES) and layout.is_temporary_of(temporary, name)
    assert not any(fnmatch(n, layout.TEMPORARIES) for n in (*layout.RUN_FILES, layout.LAST, layout.step_file(1)))


def test_a_run_directory_and_its_checkpoints_folder_name_the_same_folder(tmp_path):
    run = layout.RunLayout(tmp_path)
    assert run.last == tmp_path / "checkpoints" / "last.pt" and run.record == tmp_path / "metrics.json"
    assert layout.checkpoints_in(tmp_path) == tmp_path  # no checkpoints/ yet: the folder itself
    run.checkpoints.mkdir()
    assert layout.checkpoints_in(tmp_path) == layout.checkpoints_in(run.checkpoints) == run.checkpoints
