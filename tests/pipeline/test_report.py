"""The report, built from a small finished run directory's manifest and metrics files."""

import json

import matplotlib.image
import pytest

from pipeline.errors import InputError
from pipeline.files import append_jsonl
from pipeline.report import DPI, FIGURE_SIZE, build_report
from pipeline.run_dir import DONE, RunDir


@pytest.fixture
def finished_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_stage("sft", status=DONE, started_at=0.0, finished_at=120.0, metrics={"heldout_exact_match": 0.19})
    run.update_stage("rm", status=DONE, started_at=120.0, finished_at=170.0,
                     metrics={"rm/heldout_accuracy": 0.70, "rm/true_order_accuracy": 0.88, "other": 1.0})
    ppo = {"heldout_true_score": 0.675, "reference/heldout_true_score": 0.247, "heldout_sampled_true_score": 0.547,
           "reference/heldout_sampled_true_score": 0.284, "heldout_exact_match": 0.19, "reference/heldout_exact_match": 0.19,
           "heldout_kl_to_reference": 2.56, "pretrain_heldout_lm_loss": 0.648, "reference/pretrain_heldout_lm_loss": 0.650,
           "exact_match/count": 0.7, "reference/exact_match/count": 0.7, "exact_match/add": 0.1, "reference/exact_match/add": 0.0}
    run.update_stage("ppo", status=DONE, started_at=170.0, finished_at=255.0, job_id="rlhf-ppo-1", metrics=ppo)
    for step in (1, 2, 3):
        append_jsonl(run.metrics_path("ppo"), {"step": step, "ppo/score": 0.5 * step, "ppo/kl": 0.1 * step, "ppo/beta": 0.1})
    return run


def test_report_has_the_tables_and_plots_of_a_finished_run(finished_run):
    report = build_report(finished_run.root)
    assert report == finished_run.root / "eval" / "report.md"
    text = report.read_text()
    assert "| sft | done | 120.000 |" in text and "| ppo | done | 85.000 | rlhf-ppo-1 |" in text
    assert "| rm/heldout_accuracy | 0.700 |" in text and "other" not in text
    assert "| SFT | 0.247 | 0.284 | 0.190 | 0.000 | 0.650 |" in text and "| PPO | 0.675 | 0.547 | 0.190 | 2.560 | 0.648 |" in text
    summary = json.loads((finished_run.root / "eval" / "summary.json").read_text())
    assert summary["policies"][1]["heldout_true_score"] == 0.675 and summary["reward_model"]["rm/true_order_accuracy"] == 0.88
    for name in ("ppo_curves", "exact_match_by_task", "stage_times"):
        png = finished_run.root / "eval" / summary["plots"][name]
        assert f"({png.name})" in text
        height, width = matplotlib.image.imread(png).shape[:2]
        assert (width, height) == (FIGURE_SIZE[0] * DPI, FIGURE_SIZE[1] * DPI)
        assert matplotlib.image.imread(png)[..., :3].std() > 0.01  # something is drawn


def test_report_of_a_partial_run_leaves_out_what_it_lacks(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_stage("sft", status="running")
    text = build_report(run.root).read_text()
    assert "## Stages" in text and "Policies" not in text and "ppo_curves" not in text
    with pytest.raises(InputError, match="is not a run directory|does not exist"):
        build_report(tmp_path / "nothing")
