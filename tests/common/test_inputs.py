"""The cheap checks of what a config points at, run before anything expensive starts."""

import pytest

from common.errors import InputError
from common.inputs import require_causal_lm_for_vllm


def saved(tmp_path, *files):
    for name in files:
        (tmp_path / name).write_text("{}")
    return tmp_path


def test_vllm_serves_only_a_causal_lm_saved_with_its_tokenizer(tmp_path):
    require_causal_lm_for_vllm(saved(tmp_path / "", "config.json", "tokenizer_config.json"), "sample.policies.sft")
    require_causal_lm_for_vllm(None, "unset")  # nothing given, nothing to check
    with pytest.raises(InputError, match=r"sample.policies.sft: .* holds bitune.json, which vLLM cannot serve; use rollout.engine hf"):
        require_causal_lm_for_vllm(saved(tmp_path, "bitune.json"), "sample.policies.sft")


def test_vllm_needs_the_tokenizer_beside_the_model(tmp_path):
    with pytest.raises(InputError, match=r"ppo.actor: .* has no tokenizer.json or tokenizer_config.json"):
        require_causal_lm_for_vllm(saved(tmp_path, "config.json"), "ppo.actor")
