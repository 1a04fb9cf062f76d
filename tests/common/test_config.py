import subprocess
import sys
from pathlib import Path

import pytest

from common.config import DEFAULT_CONFIG, dump_config, load_config
from common.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_embedded_default_and_cluster_example_validate():
    tiny = load_config(None)
    assert tiny.model.name_or_path is None and tiny.ray.num_workers == 2
    examples = sorted((REPO / "configs" / "examples").glob("*.yaml"))
    assert examples, "configs/examples/ holds a realistic cluster config"
    for path in examples:
        config = load_config(path)
        assert config.model.name_or_path and config.deepspeed.zero_stage == 3 and config.ray.use_gpu


def test_resolved_config_round_trips():
    config = load_config(None, ["sft.lr=3e-4", "deepspeed.zero_stage=3"])
    assert config.sft.lr == 3e-4 and config.deepspeed.zero_stage == 3
    assert load_config(write_tmp(dump_config(config))) == config


def write_tmp(text):
    import tempfile

    path = Path(tempfile.mkdtemp()) / "resolved.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("sft:\n  lrr: 0.1\n", [], "c.yaml: sft.lrr: unknown key; expected one of: epochs"),
        ("bogus: 1\n", [], "c.yaml: bogus: unknown key; expected one of: run, model"),
        ("sft:\n  lr: fast\n", [], "c.yaml: sft.lr: Input should be a valid number"),
        ("deepspeed:\n  zero_stage: 4\n", [], "c.yaml: deepspeed.zero_stage: Input should be 0, 1, 2 or 3 (got 4)"),
        ("sft:\n  lr: -1\n", [], "sft.lr: Input should be greater than 0"),
        ("deepspeed:\n  offload_param: true\n", [], "offload_param needs zero_stage 3"),
        ("sft: [1, 2]\n", [], "c.yaml: sft: Input should be a valid dictionary"),
        ("", ["ray.num_workers=0"], "ray.num_workers: Input should be greater than or equal to 1 (got 0)"),
        ("", ["ray.nope=1"], "ray.nope: unknown key"),
        ("", ["sft.lr"], "--set 'sft.lr': expected key.path=value"),
        ("sft:\n  lr: [\n", [], "c.yaml: not valid YAML"),
        ("- 1\n", [], "expected a mapping of sections, got list"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, text, overrides, expected):
    with pytest.raises(InputError) as error:
        load_config(write(tmp_path, text), overrides)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--run-dir", str(run_dir), "--set", "sft.lrr=1"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: config file {DEFAULT_CONFIG}: sft.lrr: unknown key; expected one of: epochs, max_steps, batch_size, "
        "grad_accum, lr, min_lr_ratio, warmup_ratio, weight_decay, adam_beta2, max_grad_norm, max_length, "
        "gradient_checkpointing, checkpoint_every, log_every, method, bitune, cmlm, pretrain_mix"
    ]
    assert not run_dir.exists()


def test_stages_whose_inputs_are_not_done_are_refused_before_anything_starts(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--run-dir", str(run_dir), "--stages", "ppo"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --stages ppo: stage ppo needs sft, which is not done with this config"
    assert not run_dir.exists()


@pytest.mark.parametrize("overrides, message", [
    (["ppo.episodes_per_iteration=30", "ppo.minibatches=4"], r"ppo.episodes_per_iteration \(30\) must be a multiple of ray.num_workers x ppo.minibatches \(2 x 4\)"),
    (["ppo.validation_prompts=1"], r"ppo.validation_prompts \(1\) must be 0 or at least ray.num_workers \(2\)"),
    (["ppo.prompts.path=p.jsonl", "ppo.reward=oracle"], r"ppo.reward: 'oracle' scores the tiny world's tasks"),
    (["ppo.ema_decay=0.99", "deepspeed.zero_stage=3"], r"ppo.ema_decay: .*deepspeed.zero_stage 0-2"),
    (["ppo.lora.r=8", "deepspeed.zero_stage=3"], r"ppo.lora: LoRA on the actor runs under deepspeed.zero_stage 0-2"),
    (["ppo.lora.r=8", "ppo.ema_decay=0.99"], r"ppo.lora: .*drop ppo.reference and ppo.ema_decay"),
    (["rollout.engine=vllm", "rollout.old_logprobs=rollout"], r"rollout.old_logprobs 'rollout' .*use 'trainer'"),
    (["rollout.tis.mode=token_truncate"], r"rollout.tis corrects for a sampler other than the trainer"),
    (["rollout.engine=vllm", "ppo.lora.r=8"], r"ppo.lora with rollout.engine vllm"),
    (["rollout.tensor_parallel_size=2"], r"rollout.tensor_parallel_size > 1 needs GPUs"),
    (["rollout.engine=vllm", "rollout.placement=colocated"], r"rollout.placement colocated shares the training workers' GPUs: it needs ray.use_gpu true"),
    (["rollout.engine=vllm", "rollout.placement=colocated", "ray.use_gpu=true"], r"rollout.placement colocated: set ray.resources_per_worker.GPU below 1"),
    (["rollout.engine=vllm", "rollout.placement=colocated", "ray.use_gpu=true", "ray.resources_per_worker={GPU: 0.8}"],
     r"rollout.placement colocated: one engine per training worker"),
    (["rollout.tis.low=6"], r"rollout.tis: tis.low \(6.0\) must be below tis.high"),
])
def test_rules_across_sections_refuse_the_config_before_anything_starts(overrides, message):
    # once, in the config, where a stage body or a Ray worker found them before
    with pytest.raises(InputError, match=r"config file .*tiny.yaml: " + message):
        load_config(None, overrides)


def test_pi_old_comes_from_the_generation_pass_only_where_that_is_exact():
    from common.config import pi_old_source

    def source(*overrides):
        config = load_config(None, list(overrides))
        return pi_old_source(config.rollout, config.deepspeed.precision)

    assert source() == "rollout"  # HF generate in fp32: its logits are the forward's
    assert source("deepspeed.precision=bf16") == "trainer"  # cached bf16 decoding drifts from a full forward
    assert source("rollout.engine=vllm") == "trainer"  # another engine's numerics
    assert source("rollout.old_logprobs=trainer") == "trainer"
