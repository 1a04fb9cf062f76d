"""`rlhf run` refuses what the config points at before it starts Ray or any stage."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rlhf(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO)


def test_an_empty_rankings_file_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    result = rlhf("run", "--run-dir", str(tmp_path / "run"), "--set", f"data.rankings.path={tmp_path / 'empty.jsonl'}")
    assert result.returncode == 2
    assert f"data.rankings.path: {tmp_path / 'empty.jsonl'} is empty; expected records" in result.stderr
    assert "stage 1/" not in result.stdout and not (tmp_path / "run").exists()  # no stage ran, nothing written


def test_a_missing_model_directory_is_refused_naming_its_key(tmp_path):
    result = rlhf("run", "--run-dir", str(tmp_path / "run"), "--set", f"ppo.reward_model={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    assert f"ppo.reward_model: model directory {tmp_path / 'nowhere'} does not exist" in result.stderr


def test_a_tokenizer_directory_needs_no_model_config(tmp_path):
    # model.tokenizer names a tokenizer, not a model: its files, not config.json, are what it needs
    (tmp_path / "tok").mkdir()
    result = rlhf("run", "--run-dir", str(tmp_path / "run"), "--set", f"model.tokenizer={tmp_path / 'tok'}")
    assert result.returncode == 2
    assert f"model.tokenizer: {tmp_path / 'tok'} has no tokenizer.json or tokenizer_config.json" in result.stderr
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    from common.config import load_config
    from stages.registry import GRAPH

    GRAPH["sft"].check_inputs(load_config(None, [f"model.tokenizer={tmp_path / 'tok'}"]))  # no error


def test_a_stage_started_by_hand_refuses_a_job_server_address(tmp_path):
    # a job server takes stages as jobs; a stage process joins a cluster, and must not quietly start its own
    result = subprocess.run([sys.executable, "-m", "stages.pretrain", "--run-dir", str(tmp_path / "run"), "--set",
                             "world.corpus_docs=50", "--set", "ray.address=http://127.0.0.1:9"],
                            capture_output=True, text=True, cwd=REPO, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert result.returncode == 2
    assert "ray.address: http://127.0.0.1:9 is a Ray job server" in result.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()  # refused before the stage touched the run
