import pytest
from transformers import AutoModelForCausalLM

from pipeline.config import TINY_GPT2
from pipeline.errors import InputError
from stages.modeling import build_model, check_model_dir, load_tokenizer
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
