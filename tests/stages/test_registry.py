from common.config import load_config
from stages.registry import GRAPH

fingerprints, inputs_of, enabled_stages = GRAPH.fingerprints, GRAPH.inputs_of, GRAPH.enabled


def downstream(*names: str, config=None) -> list[str]:
    """The stages named and every stage that reads them, directly or not, in graph order, of those the config
    (the default one) enables (from the declarations, so that a new stage needs no edit here)."""
    found = set(names)
    for declared in GRAPH.stages:
        if found & set(declared.inputs):
            found.add(declared.name)
    enabled = {s.name for s in enabled_stages(config or load_config(None))}
    return [name for name in GRAPH.names if name in found and name in enabled]


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


def test_the_base_model_reads_only_the_world_s_corpus_keys():
    base = fingerprints(load_config(None))

    def changed(*overrides):
        new = fingerprints(load_config(None, list(overrides)))
        return [name for name in base if base[name] != new[name]]

    for demonstrator in ("world.demo_accuracy=0.9", "world.lazy_error_share=0.5", "world.demonstrations=100"):
        assert changed(demonstrator)[0] == "sft", demonstrator
    assert changed("world.eval_per_family=10")[0] != "pretrain"
    assert changed("world.corpus_docs=100") == downstream("pretrain", config=load_config(None))
    assert changed("world.seed=1")[0] == "pretrain"


def test_a_pretrained_base_model_skips_pretrain():
    config = load_config(None, ["model.name_or_path=/models/base"])
    assert [s.name for s in enabled_stages(config)] == [s.name for s in enabled_stages(load_config(None)) if s.name != "pretrain"]
    assert inputs_of("sft", config) == []
    assert inputs_of("sft", load_config(None)) == ["pretrain"]


def test_a_rankings_file_skips_sampling_and_labeling_and_an_rm_change_reruns_only_rm():
    config = load_config(None, ["data.rankings.path=labels.jsonl"])
    assert not {"sample", "label"} & {s.name for s in enabled_stages(config)}
    assert inputs_of("rm", config) == ["sft"]
    assert inputs_of("rm", load_config(None)) == ["sft", "label"]
    base = fingerprints(load_config(None))
    rm_changed = fingerprints(load_config(None, ["rm.lr=1e-4"]))
    assert [s for s in base if base[s] != rm_changed[s]] == downstream("rm")
    sample_changed = fingerprints(load_config(None, ["sample.k=6"]))
    assert [s for s in base if base[s] != sample_changed[s]] == downstream("sample")
    labeling_changed = fingerprints(load_config(None, ["labeling.overlap_fraction=0.2"]))
    assert [s for s in base if base[s] != labeling_changed[s]] == downstream("label")
    selection_changed = fingerprints(load_config(None, ["labeling.select=diverse"]))  # other prompts get candidates
    assert [s for s in base if base[s] != selection_changed[s]] == downstream("sample")
    ppo_changed = fingerprints(load_config(None, ["ppo.kl_coef=0.05"]))
    assert [s for s in base if base[s] != ppo_changed[s]] == downstream("ppo", "ppo_no_ptx")
    assert "ppo_no_ptx" not in fingerprints(load_config(None, ["eval.compare_without_ptx=false"]))


def test_ppo_on_models_given_as_paths_needs_no_pipeline_stage():
    config = load_config(None, ["ppo.actor=/models/policy", "ppo.reward_model=/models/rm"])
    assert inputs_of("ppo", config) == []
    assert inputs_of("ppo", load_config(None, ["ppo.actor=/models/policy"])) == ["rm"]


def test_eval_of_models_on_disk_needs_no_pipeline_stage():
    policies = "eval.policies={sft: /models/sft, ppo: /models/ppo}"
    assert inputs_of("eval", load_config(None, [policies, "eval.reward_model=/models/rm"])) == []
    assert inputs_of("eval", load_config(None, [policies])) == ["rm"]


def test_sft_methods_rerun_only_on_the_keys_they_read():
    methods = "eval.compare_sft_methods=[lora,bitune,cmlm]"  # off in the embedded default
    base = fingerprints(load_config(None, [methods]))

    def changed(*overrides):
        new = fingerprints(load_config(None, [methods, *overrides]))
        return [name for name in base if base[name] != new[name]]

    def downstream_of(*names):
        return downstream(*names, config=load_config(None, [methods]))

    assert changed("sft.bitune.lora.alpha=4") == downstream_of("sft_lora", "sft_bitune")
    assert changed("sft.bitune.ablation=shared") == downstream_of("sft_bitune")
    assert changed("sft.cmlm.decode_iters=4") == downstream_of("sft_cmlm")
    assert changed("sft.pretrain_mix=0.2") == downstream_of("sft")
    assert changed("sft.lr=1e-4") == downstream_of("sft", "sft_lora", "sft_bitune", "sft_cmlm")
    # the pipeline's own SFT reads its method's section
    assert "sft" in changed("sft.method=bitune") and "sft" in fingerprints(load_config(None, ["sft.method=bitune"]))
    bitune = fingerprints(load_config(None, ["sft.method=bitune"]))
    assert bitune["sft"] != fingerprints(load_config(None, ["sft.method=bitune", "sft.bitune.s_init=0.1"]))["sft"]


def test_policies_given_as_paths_replace_the_sft_input():
    config = load_config(None, ["sample.policies={a: /models/a}", "rm.model=/models/rm"])
    assert inputs_of("sample", config) == [] and inputs_of("rm", config) == ["label"]


# how a stage is placed, not what it computes: read by every stage, in no fingerprint (see common/graph.py)
PLACEMENT = ("run.torch_threads", "ray", "deepspeed", "model.attn_implementation", "rollout.num_engines",
             "rollout.tensor_parallel_size", "rollout.gpu_memory_utilization", "rollout.enable_prefix_caching",
             "rollout.max_model_len", "rollout.cpu_kv_cache_gib", "rollout.max_engine_restarts", "rollout.request_timeout_s",
             "rollout.sync_timeout_s", "rollout.sync_bucket_mb")


def config_reads(package: str) -> set[str]:
    """Dotted config keys the modules of stages/<package>/ read: attribute chains on `config` (or
    `spec.config`, `self.config`), as far as they go, e.g. config.labeling.mode -> labeling.mode. The
    declaration (__init__.py) is left out: when a stage is enabled is no part of what it computes."""
    import ast
    from pathlib import Path

    reads = set()
    for path in (Path(__file__).resolve().parents[2] / "stages" / package).glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            chain.reverse()
            if isinstance(inner, ast.Name) and inner.id == "config":
                keys = chain
            elif isinstance(inner, ast.Name) and inner.id in ("spec", "self") and chain[:1] == ["config"]:
                keys = chain[1:]
            else:
                continue
            if keys and keys[-1] not in ("model_copy", "model_dump"):
                reads.add(".".join(keys))
    # an outer chain (config.labeling.mode) also walks its inner ones (config.labeling): keep the longest
    return {r for r in reads if not any(o.startswith(r + ".") for o in reads)}


def covered(read: str, keys: tuple[str, ...]) -> bool:
    return any(read == k or read.startswith(k + ".") or k.startswith(read + ".") for k in keys)


def test_each_stage_declares_every_config_key_its_code_reads():
    # the fingerprint hashes the declared keys: a key read but not declared would be a change that
    # reruns nothing (the stale-rankings bug of the hand-kept list)
    from common.graph import COMMON_KEYS

    for declared in GRAPH.stages:
        package = declared.entry.split(":")[0].split(".")[1]
        reads = config_reads(package)
        assert reads, package  # the scan sees the stage's code
        undeclared = sorted(read for read in reads if not covered(read, declared.config_keys + COMMON_KEYS + PLACEMENT))
        assert not undeclared, f"stage {declared.name} reads {undeclared} but does not declare them"


def test_downstream_follows_the_declared_inputs():
    # the one stage list typed here, to check the helper the other tests lean on
    assert downstream("rm") == ["rm", "ppo", "ppo_no_ptx", "eval"]
    compared = load_config(None, ["eval.compare_methods=[grpo,dpo]"])
    assert downstream("rm", config=compared) == ["rm", "ppo", "ppo_no_ptx", "ppo_grpo", "eval"]
    assert downstream("label", config=compared) == ["label", "rm", "ppo", "ppo_no_ptx", "ppo_grpo", "dpo", "eval"]


def test_compared_methods_are_stages_from_the_same_sft_policy():
    base = load_config(None)
    compared = load_config(None, ["eval.compare_methods=[grpo,rloo,dpo]"])
    assert {"ppo_grpo", "ppo_rloo", "dpo"} <= {s.name for s in enabled_stages(compared)}
    assert not {"ppo_grpo", "dpo"} & {s.name for s in enabled_stages(base)}
    assert inputs_of("ppo_grpo", compared) == ["sft", "rm"] and inputs_of("dpo", compared) == ["sft", "label"]
    assert {"ppo_grpo", "ppo_rloo", "dpo"} <= set(inputs_of("eval", compared))
    view = GRAPH["ppo_rloo"].config_view(compared)
    assert view.ppo.estimator == "rloo" and view.ppo.group_size == 4 and not view.ppo.uses_critic
    prints = fingerprints(compared)
    # a change of the pipeline's PPO estimator or of DPO reruns what reads it and nothing else
    rloo_group = fingerprints(load_config(None, ["eval.compare_methods=[grpo,rloo,dpo]", "eval.compare_group_size=8"]))
    assert [s for s in prints if prints[s] != rloo_group[s]] == ["ppo_grpo", "ppo_rloo", "eval"]
    beta = fingerprints(load_config(None, ["eval.compare_methods=[grpo,rloo,dpo]", "dpo.beta=0.5"]))
    assert [s for s in prints if prints[s] != beta[s]] == ["dpo", "eval"]
    estimator = fingerprints(load_config(None, ["eval.compare_methods=[grpo,rloo,dpo]", "ppo.estimator=rloo", "ppo.group_size=2"]))
    assert [s for s in prints if prints[s] != estimator[s]] == ["ppo", "ppo_no_ptx", "eval"]
