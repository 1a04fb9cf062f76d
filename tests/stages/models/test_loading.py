import pytest
from transformers import AutoModelForCausalLM

from common.config import TINY_GPT2
from common.errors import InputError
from stages.models.loading import build_model, check_model_dir, load_tokenizer
from tiny_world import PROMPT_FORMAT, TinyWorld


def test_char_tokenizer_round_trips_every_character(tokenizer):
    text = TinyWorld().alphabet() + "Q: Spell dragon backwards.\nA: nogard."
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text) and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_chat_template_matches_the_prompt_format(tokenizer):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Add 1 and 2."}], add_generation_prompt=True, tokenize=False)
    assert rendered == PROMPT_FORMAT.format(instruction="Add 1 and 2.")


def test_saved_tiny_model_and_tokenizer_load_from_disk(tmp_path, tokenizer):
    model = build_model(TINY_GPT2, tokenizer)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.config.eos_token_id == load_tokenizer(tmp_path).eos_token_id


def test_bad_model_and_tokenizer_inputs(tmp_path, tokenizer):
    with pytest.raises(InputError, match=r"model.name_or_path: model directory .*missing does not exist"):
        check_model_dir(tmp_path / "missing", "model.name_or_path")
    with pytest.raises(InputError, match="has no config.json"):
        check_model_dir(tmp_path, "model.name_or_path")
    with pytest.raises(InputError, match="model.init: missing model_type"):
        build_model({"n_layer": 2}, tokenizer)
    tokenizer.save_pretrained(tmp_path / "tok")
    no_pad = load_tokenizer(tmp_path / "tok")
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "nopad")
    with pytest.raises(InputError, match="has no pad token"):
        load_tokenizer(tmp_path / "nopad")


def test_load_policy_knows_each_sft_method_and_the_reward_model_refuses_the_non_causal_ones(tmp_path, tokenizer):
    from stages.models.bitune import BituneModel
    from stages.models.cmlm import CMLMModel, add_mask_token, build_encoder
    from stages.models.loading import load_policy, require_causal_lm, sft_method_of

    base = build_model({**TINY_GPT2, "n_layer": 2, "n_embd": 32, "n_head": 2}, tokenizer)
    base.save_pretrained(tmp_path / "base")
    BituneModel(base).save(tmp_path / "bitune", tmp_path / "base")
    mask_tokenizer = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer, **tokenizer.special_tokens_map)
    add_mask_token(mask_tokenizer)
    encoder = build_encoder({"model_type": "roberta", "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                             "intermediate_size": 64}, mask_tokenizer)
    CMLMModel.from_tokenizer(encoder, mask_tokenizer).save(tmp_path / "cmlm")
    mask_tokenizer.save_pretrained(tmp_path / "cmlm")
    assert [sft_method_of(tmp_path / name) for name in ("base", "bitune", "cmlm")] == ["causal_lm", "bitune", "cmlm"]
    assert isinstance(load_policy(tmp_path / "bitune"), BituneModel) and isinstance(load_policy(tmp_path / "cmlm"), CMLMModel)
    assert isinstance(load_policy(tmp_path / "base"), AutoModelForCausalLM.from_config(base.config).__class__)
    assert require_causal_lm(tmp_path / "base", "rm") == tmp_path / "base"
    assert check_model_dir(tmp_path / "bitune", "eval.policies.bitune") == (tmp_path / "bitune").resolve()
    with pytest.raises(InputError, match=r"rm: .*bitune is a bitune model .*eval.compare_sft_methods"):
        require_causal_lm(tmp_path / "bitune", "rm")

    # the sample stage's per-shard worker draws candidates from either, as from any policy
    from stages.sample.stage import sample_candidates

    prompts = ["Q: Add 1 and 2.\nA: ", "Q: Spell cat backwards.\nA: "]
    tokenizer.save_pretrained(tmp_path / "bitune")
    for name in ("bitune", "cmlm"):
        candidates = sample_candidates((0, prompts), str(tmp_path / name), k=2, temperature=1.0, max_new_tokens=6,
                                       batch_size=4, seed=0, torch_threads=1, one_line=True)
        assert len(candidates) == 2 and all(len(c) == 2 and all(isinstance(t, str) for t in c) for c in candidates)
