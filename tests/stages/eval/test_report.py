"""The report, built from a small finished run directory's manifest and metrics files."""

import json

import matplotlib.image
import pytest

from common.errors import InputError
from common.files import append_jsonl
from common.run_dir import DONE, RunDir
from stages.eval.report import DPI, FIGURE_SIZE, build_report


@pytest.fixture
def finished_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_stage("sft", status=DONE, started_at=0.0, finished_at=120.0, metrics={"heldout_exact_match": 0.19})
    run.update_stage("rm", status=DONE, started_at=120.0, finished_at=170.0,
                     metrics={"rm/heldout_accuracy": 0.70, "rm/true_order_accuracy": 0.88, "other": 1.0})
    run.update_stage("ppo", status=DONE, started_at=170.0, finished_at=255.0, job_id="rlhf-ppo-1",
                     metrics={"ppo/best_validation_score": 2.1})
    for step in (1, 2, 3):
        append_jsonl(run.metrics_path("ppo"), {"step": step, "ppo/score": 0.5 * step, "ppo/kl": 0.1 * step, "ppo/beta": 0.1})
    policies = {
        name: {"true_score": score, "win_rate_vs_sft": win, "win_rate_low": win - 0.1, "win_rate_high": min(1.0, win + 0.1),
               "rm_score": score - 0.5, "kl_to_sft": kl, "lm_loss": 0.65,
               "per_family": {"add": {"true_score": score, "exact_match": 0.1}, "count": {"true_score": 1.0, "exact_match": 0.7}},
               "scores": [score, score / 2, 1.5]}
        for name, score, win, kl in (("sft", 0.247, 0.5, 0.0), ("ppo", 0.675, 0.96, 2.56))
    }
    (run.root / "eval").mkdir()
    (run.root / "eval" / "policies.json").write_text(json.dumps(policies))
    return run


def test_report_has_the_tables_and_plots_of_a_finished_run(finished_run):
    report = build_report(finished_run.root)
    assert report == finished_run.root / "eval" / "report.md"
    text = report.read_text()
    assert "| sft | done | 120.000 |" in text and "| ppo | done | 85.000 | rlhf-ppo-1 |" in text
    assert "| rm/heldout_accuracy | 0.700 |" in text and "other" not in text
    assert "| policy | true_score | win_rate_vs_sft | win_rate_low | win_rate_high | rm_score | kl_to_sft | lm_loss |" in text
    assert "| sft | 0.247 | 0.500 | 0.400 | 0.600 | -0.253 | 0.000 | 0.650 |" in text
    assert "| ppo | 0.675 | 0.960 | 0.860 | 1.000 | 0.175 | 2.560 | 0.650 |" in text
    summary = json.loads((finished_run.root / "eval" / "summary.json").read_text())
    assert summary["evaluation"]["ppo"]["true_score"] == 0.675 and "scores" not in summary["evaluation"]["ppo"]
    assert summary["reward_model"]["rm/true_order_accuracy"] == 0.88
    for name in ("ppo_curves", "policies", "stage_times"):
        png = finished_run.root / "eval" / summary["plots"][name]
        assert f"({png.name})" in text
        height, width = matplotlib.image.imread(png).shape[:2]
        assert (width, height) == (FIGURE_SIZE[0] * DPI, FIGURE_SIZE[1] * DPI)
        assert matplotlib.image.imread(png)[..., :3].std() > 0.01  # something is drawn
    assert "Methods from the same SFT policy" not in text and summary["methods"] == []  # nothing was compared


def test_report_compares_the_methods_trained_from_the_same_sft_policy(finished_run):
    policies = json.loads((finished_run.root / "eval" / "policies.json").read_text())
    policies["ppo_grpo"] = {**policies["ppo"], "true_score": 0.6, "win_rate_vs_sft": 0.8, "win_rate_low": 0.7,
                            "win_rate_high": 0.9, "kl_to_sft": 1.5, "lm_loss": 0.70}
    policies["dpo"] = {**policies["ppo"], "true_score": 0.3, "win_rate_vs_sft": 0.55, "win_rate_low": 0.45,
                       "win_rate_high": 0.65, "kl_to_sft": 0.4, "lm_loss": 0.66}
    (finished_run.root / "eval" / "policies.json").write_text(json.dumps(policies))
    finished_run.update_stage("ppo_grpo", status=DONE, started_at=255.0, finished_at=315.0)
    finished_run.update_stage("dpo", status=DONE, started_at=315.0, finished_at=335.0)
    text = build_report(finished_run.root).read_text()
    summary = json.loads((finished_run.root / "eval" / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["ppo", "ppo_grpo", "dpo"]
    assert "## Methods from the same SFT policy" in text
    assert ("| method | true_score | win_rate_vs_sft | win_rate_low | win_rate_high | rm_score | kl_to_sft | lm_loss_above_sft "
            "| wall_time_s |") in text
    assert "| ppo_grpo | 0.600 | 0.800 | 0.700 | 0.900 | 0.175 | 1.500 | 0.050 | 60.000 |" in text
    assert "| dpo | 0.300 | 0.550 | 0.450 | 0.650 | 0.175 | 0.400 | 0.010 | 20.000 |" in text
    png = finished_run.root / "eval" / summary["plots"]["methods"]
    assert f"({png.name})" in text and matplotlib.image.imread(png)[..., :3].std() > 0.01


def test_report_says_where_over_optimisation_begins(finished_run):
    """PPO's samples scored by both judges: the reward model's score climbs throughout, the true score
    climbs to iteration 6 and falls well past its noise; the report names the iteration."""
    finished_run.metrics_path("ppo").unlink()
    true = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    for step, score in enumerate(true, start=1):
        append_jsonl(finished_run.metrics_path("ppo"), {"step": step, "ppo/score": 0.1 * step, "ppo/true_score": score,
                                                        "ppo/kl": 0.1, "ppo/beta": 0.1})
    text = build_report(finished_run.root).read_text()
    summary = json.loads((finished_run.root / "eval" / "summary.json").read_text())
    # means of 5: 0.4 (iterations 1-5), 0.5, 0.56, 0.58 (4-8, around 6), 0.56, 0.5, 0.4, 0.3 (8-12)
    assert summary["overoptimisation"]["peak_step"] == 6 and summary["overoptimisation"]["began"] is True
    assert "over-optimisation begins at iteration 6, where PPO starts to game the reward model" in text
    assert "peaked at iteration 6 (0.580) and ended at 0.300" in text
    png = finished_run.root / "eval" / summary["plots"]["rm_vs_true_score"]
    assert f"({png.name})" in text

    finished_run.metrics_path("ppo").unlink()  # the true score still climbing with the reward model's
    for step in range(1, 13):
        append_jsonl(finished_run.metrics_path("ppo"), {"step": step, "ppo/score": 0.1 * step, "ppo/true_score": 0.05 * step,
                                                        "ppo/kl": 0.1, "ppo/beta": 0.1})
    text = build_report(finished_run.root).read_text()
    assert "was highest over the last 5 iterations (0.500" in text and "no over-optimisation within these iterations" in text
    assert json.loads((finished_run.root / "eval" / "summary.json").read_text())["overoptimisation"]["began"] is False


def test_report_of_a_partial_run_leaves_out_what_it_lacks(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_stage("sft", status="running")
    text = build_report(run.root).read_text()
    assert "## Stages" in text and "Policies" not in text and "ppo_curves" not in text
    with pytest.raises(InputError, match="is not a run directory|does not exist"):
        build_report(tmp_path / "nothing")
