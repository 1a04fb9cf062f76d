"""The `latest` marker: written last, so a checkpoint half-written when a crash came is never resumed from."""

from common.files import append_jsonl, read_jsonl
from stages.runtime.checkpoints import (
    latest_checkpoint,
    mark_latest,
    publish_dir,
    truncate_metrics,
)


def test_a_half_written_checkpoint_newer_than_the_marker_is_never_taken(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-10").mkdir()
    mark_latest(tmp_path, "checkpoint-10")
    (tmp_path / "checkpoint-20").mkdir()  # the crash came while this one was being written
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    mark_latest(tmp_path, "checkpoint-20")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"


def test_a_marker_naming_a_missing_folder_means_no_checkpoint(tmp_path):
    mark_latest(tmp_path, "checkpoint-30")
    assert latest_checkpoint(tmp_path) is None


def test_resumed_metrics_drop_the_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (10, 20, 30):
        append_jsonl(path, {"step": step})
    truncate_metrics(path, 20)
    assert [r["step"] for r in read_jsonl(path)] == [10, 20]


def test_publish_replaces_the_final_directory_in_one_rename(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old").write_text("old")
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "new").write_text("new")
    publish_dir(tmp_path / "model.tmp", tmp_path / "model")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new"] and not (tmp_path / "model.tmp").exists()
