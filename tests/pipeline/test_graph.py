from pipeline.config import load_config
from pipeline.graph import enabled_stages, fingerprints, inputs_of


def test_fingerprint_changes_with_the_stage_config_and_flows_downstream():
    base = fingerprints(load_config(None))
    sft_changed = fingerprints(load_config(None, ["sft.lr=5e-4"]))
    pre_changed = fingerprints(load_config(None, ["pretrain.lr=5e-4"]))
    assert sft_changed["pretrain"] == base["pretrain"] and sft_changed["sft"] != base["sft"]
    assert pre_changed["pretrain"] != base["pretrain"] and pre_changed["sft"] != base["sft"]
    # how the run is placed does not change what it computes
    assert fingerprints(load_config(None, ["ray.max_failures=3", "run.torch_threads=2"])) == base


def test_a_pretrained_base_model_skips_pretrain():
    config = load_config(None, ["model.name_or_path=/models/base"])
    assert [s.name for s in enabled_stages(config)] == ["sft"]
    assert inputs_of("sft", config) == []
    assert inputs_of("sft", load_config(None)) == ["pretrain"]
