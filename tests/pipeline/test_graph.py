from pipeline.config import load_config
from pipeline.graph import enabled_stages, fingerprints, inputs_of


def test_fingerprint_changes_with_the_stage_config_and_flows_downstream():
    base = fingerprints(load_config(None))
    sft_changed = fingerprints(load_config(None, ["sft.lr=5e-4"]))
    pre_changed = fingerprints(load_config(None, ["pretrain.lr=5e-4"]))
    assert sft_changed["pretrain"] == base["pretrain"] and sft_changed["sft"] != base["sft"]
    assert pre_changed["pretrain"] != base["pretrain"] and pre_changed["sft"] != base["sft"]
    # how the run is placed does not change what it computes
    placement = ["ray.max_failures=3", "run.torch_threads=2", "deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true"]
    assert fingerprints(load_config(None, placement)) == base
    assert fingerprints(load_config(None, ["deepspeed.precision=bf16"]))["pretrain"] != base["pretrain"]


def test_a_pretrained_base_model_skips_pretrain():
    config = load_config(None, ["model.name_or_path=/models/base"])
    assert [s.name for s in enabled_stages(config)] == ["sft", "sample", "label", "rm", "ppo", "ppo_no_ptx", "eval"]
    assert inputs_of("sft", config) == []
    assert inputs_of("sft", load_config(None)) == ["pretrain"]


def test_a_rankings_file_skips_sampling_and_labeling_and_an_rm_change_reruns_only_rm():
    config = load_config(None, ["data.rankings.path=labels.jsonl"])
    assert not {"sample", "label"} & {s.name for s in enabled_stages(config)}
    assert inputs_of("rm", config) == ["sft"]
    assert inputs_of("rm", load_config(None)) == ["sft", "label"]
    base = fingerprints(load_config(None))
    rm_changed = fingerprints(load_config(None, ["rm.lr=1e-4"]))
    assert [s for s in base if base[s] != rm_changed[s]] == ["rm", "ppo", "ppo_no_ptx", "eval"]
    sample_changed = fingerprints(load_config(None, ["sample.k=6"]))
    assert [s for s in base if base[s] != sample_changed[s]] == ["sample", "label", "rm", "ppo", "ppo_no_ptx", "eval"]
    labeling_changed = fingerprints(load_config(None, ["labeling.overlap_fraction=0.2"]))
    assert [s for s in base if base[s] != labeling_changed[s]] == ["label", "rm", "ppo", "ppo_no_ptx", "eval"]
    selection_changed = fingerprints(load_config(None, ["labeling.select=diverse"]))  # other prompts get candidates
    assert [s for s in base if base[s] != selection_changed[s]] == ["sample", "label", "rm", "ppo", "ppo_no_ptx", "eval"]
    ppo_changed = fingerprints(load_config(None, ["ppo.kl_coef=0.05"]))
    assert [s for s in base if base[s] != ppo_changed[s]] == ["ppo", "ppo_no_ptx", "eval"]
    assert "ppo_no_ptx" not in fingerprints(load_config(None, ["eval.compare_without_ptx=false"]))


def test_ppo_on_models_given_as_paths_needs_no_pipeline_stage():
    config = load_config(None, ["ppo.actor=/models/policy", "ppo.reward_model=/models/rm"])
    assert inputs_of("ppo", config) == []
    assert inputs_of("ppo", load_config(None, ["ppo.actor=/models/policy"])) == ["rm"]


def test_eval_of_models_on_disk_needs_no_pipeline_stage():
    policies = "eval.policies={sft: /models/sft, ppo: /models/ppo}"
    assert inputs_of("eval", load_config(None, [policies, "eval.reward_model=/models/rm"])) == []
    assert inputs_of("eval", load_config(None, [policies])) == ["rm"]
