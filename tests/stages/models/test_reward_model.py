"""The reward model's scoring, the K-way collator and trainer loss, and the held-out diagnostics."""

import math

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    TrainingArguments,
)

from common.config import LoraSection
from stages.core.ranking import ranking_loss
from stages.data.rankings import RankingGroup
from stages.models.loading import peft_config
from stages.models.reward_model import (
    reward_text,
    score_texts,
    sequence_scores,
    token_scores,
)
from stages.rm.evaluation import calibration_pairs, label_metrics, world_metrics
from stages.rm.training import RankingCollator, RankingTrainer
from stages.runtime.hf_trainer import on_all_ranks
from tiny_world import FAMILIES


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return AutoModelForSequenceClassification.from_config(config).eval()


TEXTS = ["Q: Add 1 and 2.\nA: 3.<eos>", "Q: Sort 4 1 3.\nA: The answer is 134<eos>", "Q: x\nA: y<eos>"]


def single_scores(model, tokenizer):
    return torch.stack([sequence_scores(model, **tokenizer([t], return_tensors="pt")) for t in TEXTS]).squeeze(1)


@torch.no_grad()
def test_score_is_read_at_the_last_real_token_under_right_and_left_padding(model, tokenizer):
    alone = single_scores(model, tokenizer)
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
        torch.testing.assert_close(sequence_scores(model, **batch), alone, atol=1e-5, rtol=1e-5)
    tokenizer.padding_side = "right"
    # the head at the EOS position, not the model's pooled logits of some other token
    ids = tokenizer([TEXTS[0]], return_tensors="pt")
    assert token_scores(model, **ids).shape == ids["input_ids"].shape
    torch.testing.assert_close(torch.tensor(score_texts(model, tokenizer, TEXTS, max_length=64)), alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_scores_are_right_when_pad_and_eos_are_one_token(model, tokenizer):
    alone = single_scores(model, tokenizer)
    pad = tokenizer.pad_token
    tokenizer.pad_token = tokenizer.eos_token
    try:
        batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
        torch.testing.assert_close(sequence_scores(model, **batch), alone, atol=1e-5, rtol=1e-5)
    finally:
        tokenizer.pad_token = pad


def test_reward_text_appends_one_eos():
    assert reward_text("Q: a\nA: ", "b", "<eos>") == "Q: a\nA: b<eos>"
    assert reward_text("Q: a\nA: ", "b<eos>", "<eos>") == "Q: a\nA: b<eos>"


def test_a_k4_prompt_is_one_batch_element_of_four_sequences_and_the_loss_is_eq1(model, tokenizer, tmp_path):
    groups = [
        {"texts": [TEXTS[0], TEXTS[1], TEXTS[2], "Q: z\nA: w<eos>"], "tiers": [[2], [0, 1], [3]]},
        {"texts": [TEXTS[1], TEXTS[2]], "tiers": [[1], [0]]},
    ]
    batch = RankingCollator(tokenizer, max_length=64)(groups)
    assert batch["input_ids"].shape[0] == 6  # K forward passes per prompt, not 2 * C(K, 2)
    assert batch["group_sizes"] == [4, 2] and batch["tiers"] == [[[2], [0, 1], [3]], [[1], [0]]]
    trainer = RankingTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]), margin=0.0)
    loss = trainer.compute_loss(model, batch)
    scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    expected = ranking_loss([scores[:4], scores[4:]], [[[2], [0, 1], [3]], [[1], [0]]]).loss
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the loss reaches the head and the body
    assert model.score.weight.grad is not None and model.transformer.h[0].attn.c_attn.weight.grad is not None
    model.zero_grad()


def test_scoring_reaches_the_head_through_a_lora_wrapper(model, tokenizer):
    from peft import get_peft_model

    wrapped = get_peft_model(model, peft_config(LoraSection(target_modules=["c_attn"]), task_type="SEQ_CLS"))
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert sequence_scores(wrapped, **batch).shape == (3,)
    wrapped.unload()


def test_scoring_on_all_ranks_keeps_the_order_in_one_process(model, tokenizer):
    texts = TEXTS * 3
    scored = on_all_ranks(texts, lambda share: score_texts(model, tokenizer, share, 64, batch_size=2))
    assert scored == pytest.approx(score_texts(model, tokenizer, texts, 64), abs=1e-5)


def test_label_metrics_count_ties_as_half_and_split_by_k():
    groups = [RankingGroup("p1", ("a", "b", "c", "d"), ((0,), (1, 2), (3,)), "g1", "ann-1"), RankingGroup("p2", ("a", "b"), ((1,), (0,)), "g2", "ann-2")]
    scores = [[3.0, 2.0, 2.0, 2.0], [0.0, -1.0]]
    metrics = label_metrics(groups, scores)
    # g1 pairs: (0,1) (0,2) (0,3) (1,3) (2,3) -> 1, 1, 1, 0.5, 0.5 ; g2: (1,0) -> 0
    assert metrics["rm/heldout_accuracy/k4"] == pytest.approx(4 / 5)
    assert metrics["rm/heldout_accuracy/k2"] == 0.0
    assert metrics["rm/heldout_accuracy"] == pytest.approx(4 / 6)
    assert metrics["rm/heldout_pairs"] == 6
    assert metrics["rm/heldout_accuracy/annotator/ann-1"] == pytest.approx(4 / 5)
    assert metrics["rm/heldout_accuracy/annotator/ann-2"] == 0.0
    predicted, observed = calibration_pairs(groups, scores)
    # g1 pairs (0,1) (0,2) (0,3) (1,3) (2,3), all labelled first-better; g2 (0,1) labelled second-better
    assert observed == [1, 1, 1, 1, 1, 0]
    assert predicted[0] == pytest.approx(1 / (1 + math.exp(-1.0))) and predicted[3] == 0.5 and predicted[5] == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert metrics["rm/heldout_chosen_reward"] == pytest.approx((3 + 3 + 3 + 2 + 2 - 1) / 6)
    assert metrics["rm/heldout_rejected_reward"] == pytest.approx((2 + 2 + 2 + 2 + 2 + 0) / 6)


def test_world_metrics_split_correctness_and_style_pairs():
    task = FAMILIES["add"].task(("2", "3"))
    prompt = "Q: Add 2 and 3.\nA: "
    responses = ("5.", "The answer is 5", "4.")  # true scores 1.5, ~1.06, 0.5
    group = RankingGroup(prompt, responses, ((1,), (0,), (2,)), "g")  # the label puts the verbose one first
    metrics = world_metrics([group], [[1.0, 0.5, 2.0]], {prompt: task})
    assert metrics["rm/heldout_ceiling_accuracy"] == pytest.approx(2 / 3)  # (1,0) wrong, (1,2), (0,2) right
    assert metrics["rm/true_order_accuracy/style_pairs"] == 1.0  # "5." over "The answer is 5"
    assert metrics["rm/true_order_accuracy/correctness_pairs"] == 0.0  # "4." scored highest
    assert metrics["rm/true_order_accuracy/add"] == pytest.approx(1 / 3)
