"""Report folders are never replaced by another owner's report, and long loops say how far they
are where no bar is drawn."""
import json
import logging

import pytest

from pipeline.console import logged_progress
from pipeline.errors import PipelineError
from pipeline.tracking import report_folder, report_owner


def test_a_report_folder_is_replaced_by_its_owner_only(tmp_path, caplog):
    first = report_folder(tmp_path, "cbam-gates-fake", "sweep · sigmoid · late", owner="a" * 32, run_id="r1")
    assert first == tmp_path / "cbam-gates-fake" / "sweep_sigmoid_late"
    assert json.loads((first / "report.json").read_text()) == {"owner": "a" * 32, "written_by_run": "r1"}
    (first / "summary.md").write_text("sweep a")
    # the same owner (a rerun of the same configuration): replaced, emptied
    again = report_folder(tmp_path, "cbam-gates-fake", "sweep · sigmoid · late", owner="a" * 32)
    assert again == first and not (first / "summary.md").exists()
    (first / "summary.md").write_text("sweep a")
    # another owner of the same name: a folder of its own, the first one untouched, the log says where
    caplog.set_level(logging.WARNING, logger="pipeline")
    other = report_folder(tmp_path, "cbam-gates-fake", "sweep · sigmoid · late", owner="b" * 32)
    assert other == tmp_path / "cbam-gates-fake" / "sweep_sigmoid_late_bbbbbbbb"
    assert (first / "summary.md").read_text() == "sweep a" and report_owner(other) == "b" * 32
    assert f"{first} holds the report of {'a' * 32}; this report (of {'b' * 32}) goes to {other}" in caplog.text
    # a folder written before reports recorded their owner is kept too
    old = tmp_path / "cbam-gates-fake" / "old"
    old.mkdir()
    (old / "summary.md").write_text("old")
    assert report_folder(tmp_path, "cbam-gates-fake", "old", owner="c" * 32).name == "old_cccccccc"
    assert (old / "summary.md").read_text() == "old"
    # both names taken by others: refused, naming both
    (tmp_path / "cbam-gates-fake" / "old_dddddddd").mkdir()
    (tmp_path / "cbam-gates-fake" / "old_dddddddd" / "x").write_text("")
    with pytest.raises(PipelineError, match="old and .*old_dddddddd both hold other reports"):
        report_folder(tmp_path, "cbam-gates-fake", "old", owner="d" * 32)


def test_a_long_loop_logs_how_far_it_is_where_no_bar_is_drawn(caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    assert list(logged_progress(iter(range(4)), 4, "deletion and insertion", "batch", every=0.0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("deletion and insertion: batch 1 of 4, 0 s, about 0 s left")
    caplog.clear()
    assert list(logged_progress(range(3), 3, "quick", "batch")) == [0, 1, 2]  # under 30 s: silent
    assert caplog.records == []
