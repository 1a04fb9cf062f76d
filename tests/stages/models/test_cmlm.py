"""Conditional MLM + Mask-Predict (stages.models.cmlm) on tiny random 2-layer encoders."""

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM

from common.errors import InputError
from stages.models import cmlm
from stages.models.cmlm import (
    ENCODER_TYPES,
    CMLMCollator,
    CMLMModel,
    CMLMSettings,
    add_mask_token,
    build_encoder,
    cmlm_loss,
    lowest_confidence,
    mixed_attention_mask,
    pack_pairs,
    position_ids,
    remask_count,
    sample_source_mask,
    sample_target_mask,
)
from stages.models.loading import train_char_tokenizer
from stages.scoring.evaluation import generate

ALPHABET = "abcde"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    tokenizer = train_char_tokenizer([ALPHABET])
    add_mask_token(tokenizer)
    tokenizer.padding_side = "left"  # prompts reach generate left-padded
    return tokenizer


def tiny(tok, model_type="roberta", hidden=32, seed=0, **settings) -> CMLMModel:
    torch.manual_seed(seed)
    init = {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": hidden // 16,
            "intermediate_size": 2 * hidden, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return CMLMModel.from_tokenizer(build_encoder(init, tok), tok, CMLMSettings(**settings)).eval()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def pairs(tok, sources, targets):
    return pack_pairs([ids(tok, s) for s in sources], [ids(tok, t) for t in targets], tok.pad_token_id)


def random_string(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 6)))


# ---- tokenizer and encoder ----------------------------------------------------------------------


def test_mask_token_is_added_once_and_the_encoder_matches_the_tokenizer(tok):
    tokenizer = train_char_tokenizer([ALPHABET])
    assert tokenizer.mask_token is None
    mask_id = add_mask_token(tokenizer)
    assert add_mask_token(tokenizer) == mask_id and tokenizer("a<mask>b")["input_ids"] == [*ids(tokenizer, "a"), mask_id, *ids(tokenizer, "b")]
    torch.manual_seed(0)
    small = build_encoder({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 64}, train_char_tokenizer([ALPHABET]))  # built before <mask> existed
    model = CMLMModel.from_tokenizer(small, tokenizer)
    assert model.encoder.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.mask_token_id == mask_id and mask_id not in model.special_token_ids
    with pytest.raises(InputError, match="sft.cmlm.init.model_type: got 'gpt2'"):
        build_encoder({"model_type": "gpt2"}, tok)
    with pytest.raises(ValueError, match="no mask token"):
        CMLMCollator(train_char_tokenizer([ALPHABET]))


# ---- mixed attention and positions --------------------------------------------------------------


def test_mixed_attention_mask_and_positions_by_hand():
    batch = pack_pairs([[5, 6, 7], [5]], [[8, 9], [8, 9, 10]], pad_token_id=0)  # S = 3, T = 3
    allowed = mixed_attention_mask(batch["attention_mask"], batch["segment_ids"])
    assert allowed.shape == (2, 1, 6, 6) and allowed.dtype == torch.bool
    assert not allowed[:, 0, :3, 3:].any()  # source rows never see the target
    rows = {(0, 0): [1, 1, 1, 0, 0, 0], (0, 3): [1, 1, 1, 1, 1, 0],  # real source row; real target row
            (1, 0): [1, 0, 0, 0, 0, 0], (1, 3): [1, 0, 0, 1, 1, 1],  # short source: pads are hidden
            (1, 1): [1, 1, 0, 0, 0, 0]}  # a pad row sees the real source and itself, never nothing
    for (b, row), expected in rows.items():
        assert allowed[b, 0, row].tolist() == [bool(x) for x in expected], (b, row)

    positions = position_ids(batch["attention_mask"], batch["segment_ids"], offset=1)
    real = batch["attention_mask"].bool()
    reference = (torch.cat([torch.arange(3), torch.arange(3)]) + 1).expand(2, 6)
    assert torch.equal(positions[real], reference[real])
    # A left-padded source (as generate receives it) gets the same positions for its real tokens.
    left = {"attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1]]), "segment_ids": torch.tensor([[0, 0, 0, 0, 1, 1]])}
    assert position_ids(**left, offset=2)[0, 2:].tolist() == [2, 3, 2, 3]


@pytest.mark.parametrize("model_type", ENCODER_TYPES)
def test_source_states_ignore_the_target_under_mixed_attention_only(tok, model_type):
    model = tiny(tok, model_type)
    a = pairs(tok, ["abcab", "ab"], ["cde", "eeeee"])
    b = pairs(tok, ["abcab", "ab"], ["dca", "abcda"])  # same sources, other target contents
    with torch.no_grad():
        _, hidden_a = model.encode(**a)
        _, hidden_b = model.encode(**b)
    assert torch.allclose(hidden_a[:, :5], hidden_b[:, :5], atol=1e-6)
    assert (hidden_a[:, 5:] - hidden_b[:, 5:]).abs().max() > 1e-3

    def full_attention(batch):  # the control: same positions and types, plain 2D padding mask
        with torch.no_grad():
            return model.encoder(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=position_ids(batch["attention_mask"], batch["segment_ids"], model.offset),
                token_type_ids=batch["segment_ids"] if model.uses_token_types else torch.zeros_like(batch["segment_ids"]),
                output_hidden_states=True,
            ).hidden_states[-1]

    assert (full_attention(a)[:, :5] - full_attention(b)[:, :5]).abs().max() > 1e-3


def test_eager_and_sdpa_attention_agree_even_with_an_empty_source(tok):
    sdpa = tiny(tok, "xlm-roberta")
    config = copy.deepcopy(sdpa.encoder.config)  # from_config sets the implementation on the config it gets
    eager_encoder = AutoModelForMaskedLM.from_config(config, attn_implementation="eager")
    eager_encoder.load_state_dict(sdpa.encoder.state_dict())
    eager = CMLMModel(eager_encoder, sdpa.mask_token_id, sdpa.special_token_ids).eval()
    eager.length_head.load_state_dict(sdpa.length_head.state_dict())
    assert (sdpa.encoder.config._attn_implementation, eager.encoder.config._attn_implementation) == ("sdpa", "eager")
    batch = pairs(tok, ["abc", ""], ["de", "eab"])
    with torch.no_grad():
        a, b = sdpa(**batch), eager(**batch)
    assert torch.isfinite(a.logits).all() and torch.isfinite(a.length_logits).all()
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.length_logits, b.length_logits, atol=1e-5)


def test_a_source_token_changes_the_target_logits(tok):
    model = tiny(tok)
    with torch.no_grad():
        logits_a, _ = model.encode(**pairs(tok, ["abcab"], ["<mask><mask><mask>"]))
        logits_b, _ = model.encode(**pairs(tok, ["ebcab"], ["<mask><mask><mask>"]))
    assert (logits_a[:, 5:] - logits_b[:, 5:]).abs().max() > 1e-5  # float noise is ~1e-7


def test_encoders_get_token_types_and_positions_of_their_family(tok):
    batch = pairs(tok, ["abc", "a"], ["de", "eee"])
    for model_type, types, offset in [("bert", batch["segment_ids"], 0),
                                      ("roberta", torch.zeros_like(batch["segment_ids"]), tok.pad_token_id + 1)]:
        model, seen = tiny(tok, model_type), {}
        model.encoder.register_forward_pre_hook(lambda module, args, kwargs, seen=seen: seen.update(kwargs), with_kwargs=True)
        with torch.no_grad():
            model(**batch)
        assert torch.equal(seen["token_type_ids"], types), model_type
        assert seen["token_type_ids"][0].tolist() == ([0, 0, 0, 1, 1, 1] if model_type == "bert" else [0] * 6)
        real = batch["attention_mask"].bool()
        assert seen["position_ids"][0][real[0]].tolist() == [offset, offset + 1, offset + 2, offset, offset + 1]
        assert seen["attention_mask"].shape == (2, 1, 6, 6) and seen["attention_mask"].is_floating_point()


# ---- training-time masking and loss -------------------------------------------------------------


def test_target_mask_sampler_draws_k_uniformly_from_1_to_L():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 2, 3, 5, 6] * 40 + [4] * 8000)
    target_ok = torch.arange(6)[None, :] < lengths[:, None]
    masked = sample_target_mask(target_ok, g)
    k = masked.sum(1)
    assert ((k >= 1) & (k <= lengths)).all() and not (masked & ~target_ok).any()
    counts = torch.bincount(k[lengths == 4], minlength=5)[1:]
    assert ((counts > 0.9 * 2000) & (counts < 1.1 * 2000)).all(), counts  # expected 2000 each, sd ~ 39
    assert sample_target_mask(torch.zeros(2, 3, dtype=torch.bool), g).sum() == 0  # empty targets: nothing
    maskable = torch.arange(40)[None, :] < torch.tensor([40, 20, 6, 0])[:, None]
    source_masked = sample_source_mask(maskable, 0.15, g)
    assert source_masked.sum(1).tolist() == [6, 3, 0, 0] and not (source_masked & ~maskable).any()


def test_collator_masks_floor_of_15_percent_of_the_source_never_specials(tok):
    prompts = ["abcdeabcde", "ab<eos>cd<unk>eabcdeabcde", "", "abc", "abcde" * 8]
    maskable = [10, 15, 0, 3, 40]
    completions = ["abc", "de", "e", "", "abcdeab"]
    collator = CMLMCollator(tok, generator=torch.Generator().manual_seed(0))
    plain = pack_pairs([tok(p)["input_ids"] for p in prompts], [ids(tok, c) for c in completions], tok.pad_token_id)
    width = max(len(tok(p)["input_ids"]) for p in prompts)
    specials = torch.isin(plain["input_ids"], torch.tensor([tok.eos_token_id, tok.unk_token_id]))
    assert specials.sum() == 2
    for _ in range(30):
        batch = collator([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)])
        masked = batch["input_ids"] == tok.mask_token_id
        assert masked[:, :width].sum(1).tolist() == [int(0.15 * n) for n in maskable]
        assert not (masked & specials).any() and not (masked & ~batch["attention_mask"].bool()).any()
        target_masked = masked[:, width:]
        assert target_masked.sum(1).tolist()[3] == 0 and (target_masked.sum(1) >= 1).sum() == 4
        labels = batch["labels"]
        assert (labels[:, :width] == -100).all()
        assert torch.equal(labels[:, width:][target_masked], plain["input_ids"][:, width:][target_masked])
        assert (labels[:, width:][~target_masked] == -100).all()
        assert batch["length_labels"].tolist() == [len(c) for c in completions]
        assert torch.equal(batch["attention_mask"], plain["attention_mask"])


def test_the_loss_ignores_unmasked_target_positions(tok):
    def collate(completion):  # the same seed gives the same masks for the same lengths
        return CMLMCollator(tok, generator=torch.Generator().manual_seed(3))([{"prompt": "abc", "completion": completion}])

    base = collate("abcdeabc")
    target_masked = base["labels"][0, 3:] != -100
    assert 0 < target_masked.sum() < 8, "the seed should mask some but not all of the target"
    unmasked, masked = int((~target_masked).nonzero()[0]), int(target_masked.nonzero()[0])
    logits = torch.randn(1, 11, len(tok), generator=torch.Generator().manual_seed(0))
    length_logits = torch.randn(1, 512, generator=torch.Generator().manual_seed(1))

    def loss(batch):
        return cmlm_loss(logits, batch["labels"], length_logits, batch["length_labels"], 0.1, 0.1)

    def relabel(position):
        chars = list("abcdeabc")
        chars[position] = "e" if chars[position] != "e" else "a"
        return collate("".join(chars))

    assert loss(relabel(unmasked)) == loss(base)
    assert loss(relabel(masked)) != loss(base)
    positions = 3 + target_masked.nonzero()[:, 0]
    expected = F.cross_entropy(logits[0, positions], base["labels"][0, positions], label_smoothing=0.1)
    expected = expected + 0.1 * F.cross_entropy(length_logits, torch.tensor([8]))
    assert torch.allclose(loss(base), expected)


# ---- Mask-Predict -------------------------------------------------------------------------------


def test_remask_schedule_shrinks_to_zero():
    assert [remask_count(7, t, 10) for t in range(11)] == [7, 6, 5, 4, 4, 3, 2, 2, 1, 0, 0]
    assert remask_count(torch.tensor([7, 12, 1]), 9, 10).tolist() == [0, 1, 0]
    assert remask_count(torch.tensor([7, 12, 1]), 10, 10).tolist() == [0, 0, 0]


def test_lowest_confidence_picks_the_n_lowest_eligible_positions():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.0], [0.2, 0.8, 0.05, 0.6, 0.7]]).log()
    eligible = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)  # a pad; a special token
    chosen = lowest_confidence(scores, eligible, torch.tensor([2, 3]))
    assert chosen.nonzero().tolist() == [[0, 1], [0, 3], [1, 0], [1, 3], [1, 4]]
    chosen = lowest_confidence(scores, eligible, torch.tensor([10, 0]))
    assert torch.equal(chosen[0], eligible[0]) and not chosen[1].any()


def test_an_instrumented_decode_remasks_exactly_the_n_least_confident(tok, copy_model, monkeypatch):
    source = tok(["abcdeab", "bcd", "ecdba"], return_tensors="pt", padding=True)
    width = source["input_ids"].shape[1]
    lengths = torch.tensor([7, 3, 5])
    real = torch.arange(7)[None, :] < lengths[:, None]
    frozen = ids(tok, "a")[0]  # pretend a letter is special, so that some positions hold a special token
    model = CMLMModel(copy_model.encoder, tok.mask_token_id, [*tok.all_special_ids, frozen], copy_model.settings)

    calls, inputs, outputs = [], [], []
    original = cmlm.lowest_confidence

    def recording(scores, eligible, n):
        chosen = original(scores, eligible, n)
        calls.append((scores.clone(), eligible.clone(), n.clone(), chosen.clone()))
        return chosen

    monkeypatch.setattr(cmlm, "lowest_confidence", recording)
    hooks = [
        model.encoder.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(kwargs["input_ids"][:, width:].clone()),
                                                with_kwargs=True),
        model.encoder.register_forward_hook(lambda m, args, out: outputs.append(out.logits[:, width:].clone())),
    ]
    try:
        target, _ = model.mask_predict(source["input_ids"], source["attention_mask"], lengths, iters=10)
    finally:
        for hook in hooks:
            hook.remove()

    assert len(inputs) == 10 and len(calls) == 9  # nothing is re-masked after the last prediction
    assert torch.equal(inputs[0] == tok.mask_token_id, real)
    specials = torch.tensor(tok.all_special_ids)
    saw_frozen, ordered = False, 0
    for t, (scores, eligible, n, chosen) in enumerate(calls, start=1):
        # The target when choosing: the previous input with its masks filled by that pass's argmax.
        log_probs = outputs[t - 1].clone()
        log_probs[..., [tok.pad_token_id, tok.mask_token_id]] = -torch.inf
        best_log_prob, best = log_probs.log_softmax(-1).max(-1)
        was_masked = inputs[t - 1] == tok.mask_token_id
        state = torch.where(was_masked, best, inputs[t - 1])
        assert torch.allclose(scores[was_masked], best_log_prob[was_masked])
        assert torch.equal(eligible, real & (state != frozen) & ~torch.isin(state, specials))
        saw_frozen |= bool((real & (state == frozen)).any())
        assert n.tolist() == remask_count(lengths, t, 10).tolist()
        assert chosen.sum(1).tolist() == torch.minimum(n, eligible.sum(1)).tolist()
        assert not (chosen & ~eligible).any()  # never a pad or a special token
        for row in range(3):
            picked, kept = scores[row][chosen[row]], scores[row][eligible[row] & ~chosen[row]]
            if picked.numel() and kept.numel():
                assert picked.max() <= kept.min()
                ordered += 1
        assert torch.equal(inputs[t] == tok.mask_token_id, chosen)  # the next pass sees exactly those masked
    assert saw_frozen and ordered >= 5, (saw_frozen, ordered)
    assert (target[real] != tok.mask_token_id).all() and (target[~real] == tok.pad_token_id).all()


def test_length_head_has_512_classes_and_fixed_mode_bypasses_it(tok):
    model = tiny(tok)
    batch = CMLMCollator(tok, generator=torch.Generator().manual_seed(0))([{"prompt": "abc", "completion": "cba"}])
    assert model.length_head.out_features == 512 and model(**batch).length_logits.shape == (1, 512)

    fixed = tiny(tok, length_mode="fixed", fixed_length=4).train()
    out = fixed(**batch)
    assert out.length_logits is None
    out.loss.backward()
    assert fixed.length_head.weight.grad is None and fixed.encoder.get_input_embeddings().weight.grad is not None

    def refuse(*args):
        raise AssertionError("the length head must not run in fixed mode")

    fixed.eval().length_head.forward = refuse
    prompts = tok(["abc", "abcde"], return_tensors="pt", padding=True)
    assert fixed.generate(**prompts).shape == (2, 5 + 4)
    assert fixed.generate(**prompts, max_new_tokens=2).shape == (2, 5 + 2)
    fixed.settings.fixed_length = None
    assert fixed.generate(**prompts, max_new_tokens=3).shape == (2, 5 + 3)
    with pytest.raises(ValueError, match="fixed_length or max_new_tokens"):
        fixed.generate(**prompts)
    assert model.generate(**prompts, max_new_tokens=2).shape[1] <= 5 + 2  # caps the predicted length


@pytest.mark.parametrize(("field", "value"), [("src_mask_ratio", 1.5), ("label_smoothing", -0.1), ("length_loss_weight", -1.0),
                                              ("length_mode", "attention"), ("fixed_length", 0), ("decode_iters", 0),
                                              ("length_beam", 0), ("max_length", 1)])
def test_settings_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"CMLMSettings\.{field}: got .*expected"):
        CMLMSettings(**{field: value})
    with pytest.raises(ValueError, match="meanpool, fixed"):
        CMLMSettings(length_mode="attention")


# ---- a trained copy model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_model(tok):
    """A 2-layer RoBERTa-style CMLM trained with plain AdamW to copy 3-6 letter strings, with the
    length predicted by the meanpool head."""
    model = tiny(tok, hidden=64).train()
    rng = random.Random(0)
    collator = CMLMCollator(tok, model.settings, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    for _ in range(300):
        strings = [random_string(rng) for _ in range(64)]
        loss = model(**collator([{"prompt": s, "completion": s} for s in strings])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
    return model.eval()


@pytest.fixture(scope="module")
def heldout():
    rng = random.Random(1)
    return [random_string(rng) for _ in range(100)]


def exact_match(responses, references):
    return sum(r == s for r, s in zip(responses, references)) / len(references)


def test_copy_task_reaches_90_percent_exact_match(tok, copy_model, heldout):
    # Through the pipeline's own generate: left-padded prompts, output[:, prompt_len:], skip_special_tokens.
    assert exact_match(generate(copy_model, tok, heldout, max_new_tokens=16), heldout) >= 0.9
    source = tok(heldout, return_tensors="pt", padding=True)  # padding side left, as generate left it
    lengths = torch.tensor([len(s) for s in heldout])  # fixed lengths, bypassing the head
    target, _ = copy_model.mask_predict(source["input_ids"], source["attention_mask"], lengths, iters=10)
    assert exact_match(tok.batch_decode(target, skip_special_tokens=True), heldout) >= 0.9


def test_length_beam_keeps_the_candidate_with_the_best_mean_log_prob(tok, copy_model, heldout):
    source = tok(heldout[:20], return_tensors="pt", padding=True)
    candidates = copy_model.predict_lengths(source["input_ids"], source["attention_mask"], beam=3, cap=16)
    assert candidates.shape == (20, 3) and (candidates >= 1).all()
    decoded = [copy_model.mask_predict(source["input_ids"], source["attention_mask"], candidates[:, j]) for j in range(3)]
    best = torch.stack([score for _, score in decoded], 1).argmax(1)
    expected = [tok.decode(decoded[j][0][i], skip_special_tokens=True) for i, j in enumerate(best.tolist())]
    copy_model.settings.length_beam = 3
    try:
        output = copy_model.generate(**source, max_new_tokens=16)
    finally:
        copy_model.settings.length_beam = 1
    assert tok.batch_decode(output[:, source["input_ids"].shape[1] :], skip_special_tokens=True) == expected


def test_generate_output_looks_like_hf_generate(tok, copy_model):
    tok.padding_side = "left"
    prompts = tok(["abc", "abcdea"], return_tensors="pt", padding=True)
    output = copy_model.generate(**prompts, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
    assert output.dtype == torch.long and torch.equal(output[:, :6], prompts["input_ids"])
    assert output.shape == (2, 6 + 6)
    assert output[0, 6:].tolist() == [*ids(tok, "abc"), tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    assert tok.batch_decode(output[:, 6:], skip_special_tokens=True) == ["abc", "abcdea"]


def test_save_and_from_pretrained_round_trip(tmp_path, tok, copy_model, heldout):
    copy_model.save(tmp_path)
    loaded = CMLMModel.from_pretrained(tmp_path).eval()
    assert loaded.settings == copy_model.settings and loaded.special_token_ids == copy_model.special_token_ids
    batch = CMLMCollator(tok, generator=torch.Generator().manual_seed(0))([{"prompt": s, "completion": s} for s in heldout[:8]])
    with torch.no_grad():
        before, after = copy_model(**batch), loaded(**batch)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.length_logits, after.length_logits)
    assert torch.equal(before.loss, after.loss)
    prompts = tok(heldout[:8], return_tensors="pt", padding=True)
    assert torch.equal(copy_model.generate(**prompts), loaded.generate(**prompts))


def test_trains_and_saves_with_the_hf_trainer(tmp_path, tok):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    class CMLMTrainer(Trainer):
        def _save(self, output_dir=None, state_dict=None):  # tied embeddings defeat Trainer's plain safetensors dump
            self.model.save(output_dir or self.args.output_dir, state_dict)

    model = tiny(tok)
    before = model.length_head.weight.detach().clone()
    data = Dataset.from_dict({"prompt": ["abc", "de", "aab", "e"] * 2, "completion": ["cba", "ed", "baa", "e"] * 2})
    args = TrainingArguments(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
                             use_cpu=True, remove_unused_columns=False, save_strategy="no", disable_tqdm=True)
    trainer = CMLMTrainer(model=model, args=args, train_dataset=data, data_collator=CMLMCollator(tok))
    assert trainer.train().training_loss > 0
    assert not torch.equal(model.length_head.weight, before)
    trainer.save_model(str(tmp_path / "saved"))
    loaded = CMLMModel.from_pretrained(tmp_path / "saved").eval()
    prompts = tok(["abc", "de"], return_tensors="pt", padding=True)
    assert torch.equal(model.eval().generate(**prompts), loaded.generate(**prompts))


def test_a_seeded_collator_masks_a_batch_the_same_whenever_it_comes(tok):
    # what a resumed run needs: the masks depend on the seed and the batch, not on what was collated before
    first = [{"prompt": "copy abcdef", "completion": "abcdef"}, {"prompt": "copy ghijkl", "completion": "ghijkl"}]
    second = [{"prompt": "copy mnopqr", "completion": "mnopqr"}, {"prompt": "copy stuvwx", "completion": "stuvwx"}]
    straight = CMLMCollator(tok, seed=3)
    masks = [straight(batch)["labels"] for batch in (first, second)]
    resumed = CMLMCollator(tok, seed=3)
    assert torch.equal(resumed(second)["labels"], masks[1]) and torch.equal(resumed(first)["labels"], masks[0])
    assert not all(torch.equal(CMLMCollator(tok, seed=s)(first)["labels"], masks[0]) for s in range(4, 8))
    with pytest.raises(ValueError, match="a generator or a seed"):
        CMLMCollator(tok, generator=torch.Generator(), seed=3)
