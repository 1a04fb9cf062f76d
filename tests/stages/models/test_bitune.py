"""Bitune on tiny random GPT-2 and Llama models: gradients reach both adapters and the mixing
coefficients, the bidirectional pass sees later tokens, alpha's end points reproduce the plain
caches, ablations run the passes they name, padded batches equal examples alone, cached decoding
equals the teacher-forced forward, and settings survive save/load."""

import json
import re
from functools import partial

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from stages.core.functional import IGNORE_INDEX
from stages.models.bitune import (
    PREFILL_PLANS,
    BituneModel,
    BituneSettings,
    collate,
    mixing_coefficients,
)
from stages.models.loading import train_char_tokenizer

VOCAB = 40
TINY = {
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64},
    "llama": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64},
}


def tiny_base(model_type: str, vocab_size: int = VOCAB, attn_implementation: str = "sdpa"):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, bos_token_id=1, eos_token_id=1, pad_token_id=0,
                                  **TINY[model_type])
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def tiny_bitune(model_type: str = "gpt2", vocab_size: int = VOCAB, attn_implementation: str = "sdpa",
                **settings) -> BituneModel:
    """Random LoRA B matrices (peft starts them at zero), so the two adapters differ from the start."""
    base = tiny_base(model_type, vocab_size, attn_implementation)
    return BituneModel(base, BituneSettings(**settings), init_lora_weights=False).eval()


@pytest.fixture(scope="module")
def chars():
    return train_char_tokenizer(["abcdefghijklmnopqrstuvwxyz .?"])


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def key(cache, layer: int) -> torch.Tensor:
    return cache.layers[layer].keys


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("variant", "123", "607, 801"), ("ablation", "bidir", "full, naive_bidir"), ("s_init", 0, "> 0"),
     ("r", 0, "> 0"), ("alpha", -1, "> 0"), ("target_modules", [], "list")],
)
def test_settings_validation_names_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=rf"BituneSettings\.{field}: must be .*{allowed}.*got {re.escape(repr(value))}"):
        BituneSettings(**{field: value})


def test_coefficients_start_at_one_half_and_variants_differ_on_negative_weights():
    for variant in ("607", "801"):
        model = tiny_bitune(variant=variant)
        alpha_k, alpha_v = model.alphas()
        assert alpha_k.tolist() == alpha_v.tolist() == [0.5, 0.5]
    w = torch.tensor([-0.03, 0.03])
    assert mixing_coefficients(w, 0.01, "607").tolist() == pytest.approx([0.75, 0.75])
    assert mixing_coefficients(w, 0.01, "801").tolist() == pytest.approx([0.0, 0.75])


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_one_backward_reaches_both_adapters_and_the_coefficients(model_type):
    model = tiny_bitune(model_type).train()
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16]])
    prompt_mask = mask.clone()
    prompt_mask[:, 4:] = 0
    labels = ids.masked_fill(prompt_mask.bool() | ~mask.bool(), IGNORE_INDEX)
    model(ids, mask, prompt_mask, labels).loss.backward()
    assert (model.w_k.grad != 0).all() and (model.w_v.grad != 0).all()
    for adapter in ("default", "prefill"):
        # every layer-0 projection feeds layer 1's keys and values, and through them the loss
        layer0 = [p for n, p in model.named_parameters() if f"lora_B.{adapter}." in n and ".0." in n]
        assert layer0 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer0)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_bidirectional_keys_see_later_tokens_and_causal_keys_do_not(model_type):
    model = tiny_bitune(model_type)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = ids.clone()
    changed[0, 4] = 20
    mask, positions = torch.ones_like(ids), torch.arange(6)[None]
    with torch.no_grad():
        for bidirectional in (True, False):
            before, after = (model.prefill_pass("prefill", x, mask, positions, bidirectional=bidirectional) for x in (ids, changed))
            token0_changed = not torch.equal(key(before, 1)[..., 0, :], key(after, 1)[..., 0, :])
            assert token0_changed == bidirectional
            assert not torch.equal(key(before, 1)[..., 4, :], key(after, 1)[..., 4, :])


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_alpha_zero_is_the_plain_causal_model_and_alpha_one_the_bidirectional_cache(model_type):
    model = tiny_bitune(model_type)
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]])
    prompt_mask = mask.clone()
    prompt_mask[:, 5:] = 0
    labels = ids.masked_fill(prompt_mask.bool() | ~mask.bool(), IGNORE_INDEX)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model.w_k.zero_()
        model.w_v.zero_()
        ours = model(ids, mask, prompt_mask, labels)
        model.peft.set_adapter("default")
        plain = model.peft(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
        torch.testing.assert_close(ours.logits, plain.logits[:, 4:], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.loss, plain.loss, atol=1e-5, rtol=0)

        model.w_k.fill_(1e30)
        model.w_v.fill_(-1e30)
        body, body_mask, body_positions = ids[:, :4], mask[:, :4], positions[:, :4]
        mixed = model.prefill(body, body_mask, body_positions)
        bidirectional = model.prefill_pass("prefill", body, body_mask, body_positions, bidirectional=True)
        for layer in range(2):
            assert torch.equal(mixed.layers[layer].keys, bidirectional.layers[layer].keys)
            assert torch.equal(mixed.layers[layer].values, bidirectional.layers[layer].values)


def manual_cache(model: BituneModel, adapter: str, bidirectional: bool, ids: torch.Tensor):
    """A pass straight through peft: all-zero 4D mask for bidirectional, HF's own causal mask otherwise."""
    model.peft.set_adapter(adapter)
    length = ids.shape[1]
    mask = torch.zeros(1, 1, length, length) if bidirectional else None
    return model.peft(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values


@pytest.mark.parametrize(
    ("ablation", "first", "second"),
    [("full", ("prefill", True), ("default", False)), ("naive_bidir", ("default", True), None),
     ("no_mixing", ("prefill", True), None), ("only_causal", ("prefill", False), ("default", False)),
     ("shared", ("default", True), ("default", False))],
)
def test_ablations_run_the_passes_they_name(ablation, first, second):
    model = tiny_bitune(ablation=ablation)
    assert [tuple(p) for p in PREFILL_PLANS[ablation]] == [first] + ([second] if second else [])
    assert sorted(model.peft.peft_config) == sorted({first[0]} | ({second[0]} if second else set()) | {"default"})
    assert model.w_k.requires_grad == (second is not None)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        got = model.prefill(ids, torch.ones_like(ids), torch.arange(5)[None])
        first_cache = manual_cache(model, *first, ids)
        second_cache = manual_cache(model, *second, ids) if second else None
        if second_cache is not None:  # two passes that differ, so a mix differs from either
            assert not torch.allclose(key(first_cache, 1), key(second_cache, 1))
        for layer in range(2):
            for part in ("keys", "values"):
                want = getattr(first_cache.layers[layer], part)
                if second_cache is not None:  # alpha starts at 0.5
                    want = 0.5 * want + 0.5 * getattr(second_cache.layers[layer], part)
                torch.testing.assert_close(getattr(got.layers[layer], part), want, atol=1e-6, rtol=0)


# eager too: its softmax turns a fully masked row (a left-padding query) into NaNs unless masks stay finite
@pytest.mark.parametrize(("model_type", "attn_implementation"), [("gpt2", "sdpa"), ("llama", "sdpa"), ("llama", "eager")])
def test_padded_batch_equals_each_example_alone(model_type, attn_implementation, chars):
    model = tiny_bitune(model_type, vocab_size=len(chars), attn_implementation=attn_implementation)
    with torch.no_grad():
        model.w_k.copy_(torch.tensor([0.03, -0.002]))
        model.w_v.copy_(torch.tensor([0.001, 0.05]))
        examples = [{"prompt": "what is up?", "completion": "sky"}, {"prompt": "a", "completion": "bcd ef"},
                    {"prompt": "hi you", "completion": "x"}]
        batch = collate(examples, chars)
        together = model(**batch)
        losses, counts = [], []
        for row, example in enumerate(examples):
            alone_batch = collate([example], chars)
            alone = model(**alone_batch)
            answer = alone.logits.shape[1]
            torch.testing.assert_close(together.logits[row, :answer], alone.logits[0], atol=1e-5, rtol=0)
            losses.append(alone.loss)
            counts.append((alone_batch["labels"] != IGNORE_INDEX).sum())
    expected = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    torch.testing.assert_close(together.loss, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_cached_decoding_equals_the_teacher_forced_forward(model_type):
    model = tiny_bitune(model_type)
    with torch.no_grad():
        model.w_k.copy_(torch.tensor([0.02, 0.004]))
        model.w_v.copy_(torch.tensor([-0.01, 0.03]))
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    out = model.generate(ids, mask, max_new_tokens=5, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:]
    step_logits = torch.stack(out.logits, dim=1)
    assert new.shape == (2, 5) and torch.equal(new, step_logits.argmax(-1))
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    prompt_mask = torch.cat([mask, torch.zeros_like(new)], dim=1)
    with torch.no_grad():
        forced = model(out.sequences, full_mask, prompt_mask).logits
    torch.testing.assert_close(step_logits, forced[:, :-1], atol=1e-5, rtol=0)


def test_generate_at_alpha_zero_matches_hf_generate_with_eos_and_padding():
    model = tiny_bitune("llama")
    with torch.no_grad():
        model.w_k.zero_()
        model.w_v.zero_()
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    model.peft.set_adapter("default")
    hf = partial(model.peft.generate, input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    free = hf(eos_token_id=None)
    eos = int(free[0, ids.shape[1] + 1])  # row 0 ends at its second new token
    expected = hf(eos_token_id=eos)
    assert (expected[0, ids.shape[1] + 2:] == 0).all()
    ours = model.generate(ids, mask, max_new_tokens=6, do_sample=False, temperature=None, top_k=None,
                          pad_token_id=0, eos_token_id=eos)
    assert torch.equal(ours, expected)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = tiny_bitune()
    ids, mask = left_padded([[5, 6, 7], [8, 9]])
    samples = []
    for _ in range(2):
        torch.manual_seed(3)
        samples.append(model.generate(ids, mask, max_new_tokens=8, do_sample=True, temperature=2.0, top_k=0))
    greedy = model.generate(ids, mask, max_new_tokens=8)
    assert torch.equal(samples[0], samples[1]) and not torch.equal(samples[0], greedy)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=1), greedy)


def test_collate_aligns_prompt_ends_and_truncates_prompts_from_the_left(chars):
    examples = [{"prompt": "ab", "completion": "xyz"}, {"prompt": "abcd", "completion": "x"}]
    batch = collate(examples, chars)
    eos, pad = chars.eos_token_id, chars.pad_token_id
    text = chars.decode
    assert text(batch["input_ids"][0]) == "<pad><pad>abxyz<eos>"
    assert text(batch["input_ids"][1]) == "abcdx<eos><pad><pad>"
    assert batch["prompt_mask"].tolist() == [[0, 0, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 4 + [chars.convert_tokens_to_ids("x"), eos] + [IGNORE_INDEX] * 2
    assert (batch["labels"][0, 4:] != IGNORE_INDEX).all() and batch["input_ids"][1, -1] == pad
    short = collate(examples, chars, max_length=4)
    assert [text(r).replace("<pad>", "") for r in short["input_ids"]] == ["bxyz", "cdx<eos>"]
    assert text(collate([{"prompt": "ab", "completion": "wxyz"}], chars, max_length=3)["input_ids"][0]) == "bwx"
    with pytest.raises(ValueError, match="has no tokens"):
        collate([{"prompt": "", "completion": "x"}], chars)


def test_save_and_load_round_trip_generates_the_same(tmp_path):
    tiny_base("gpt2").save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", local_files_only=True)
    model = BituneModel(base, BituneSettings(variant="801", r=4, alpha=2), init_lora_weights=False).eval()
    with torch.no_grad():
        model.w_k.copy_(torch.tensor([0.02, 0.004]))
        model.w_v.copy_(torch.tensor([-0.01, 0.03]))
    ids, mask = left_padded([[5, 6, 7, 8], [9, 10]])
    model.save(tmp_path / "bitune")
    meta = json.loads((tmp_path / "bitune" / "bitune.json").read_text())
    assert meta["settings"]["variant"] == "801" and meta["base_model"] == str(tmp_path / "base")
    loaded = BituneModel.from_pretrained(tmp_path / "bitune")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.settings == model.settings and torch.equal(loaded.w_v, model.w_v)
    assert torch.equal(loaded.generate(ids, mask, max_new_tokens=6), model.generate(ids, mask, max_new_tokens=6))


def test_trains_with_hf_trainer(tmp_path, chars):
    model = tiny_bitune(vocab_size=len(chars)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [{"prompt": "what is up?", "completion": "sky"}, {"prompt": "hi", "completion": "there you"}] * 2
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
                             remove_unused_columns=False, save_strategy="no", report_to=[], use_cpu=True,
                             logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=partial(collate, tokenizer=chars))
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = dict(model.named_parameters())
    for name in ("w_k", "w_v", next(n for n in before if "lora_B.prefill" in n), next(n for n in before if "lora_B.default" in n)):
        assert not torch.equal(before[name], after[name]), name


def test_gradient_checkpointing_is_refused():
    model = tiny_bitune().train()
    model.peft.get_base_model().gradient_checkpointing_enable()
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model(ids, torch.ones_like(ids), torch.tensor([[1, 1, 0, 0]]))
