"""The SFT/pretraining loss our CPU workers take from the full logits is TRL's fused-head loss."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GPT2Config
from trl import SFTConfig, SFTTrainer

from stages.runtime.lm_training import _full_logits_trainer_class
from tiny_world import TinyWorld


@pytest.mark.parametrize("packing", [False, True])
def test_full_logits_loss_and_logged_metrics_equal_trl_s_fused_head(tmp_path, tokenizer, packing):
    demos = TinyWorld().demonstrations(8)
    if packing:  # pretraining: plain text packed into windows, every token a label
        dataset = Dataset.from_dict({"text": [e.prompt + r for e, r in demos]})
    else:  # SFT: the loss on completion tokens only
        dataset = Dataset.from_dict({"prompt": [e.prompt for e, _ in demos], "completion": [r for _, r in demos]})
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the two forwards see the same network
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4, max_length=48,
                     packing=packing, packing_strategy="wrapped", completion_only_loss=not packing, logging_steps=1)
    ours = _full_logits_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    ours.state.logging_steps = 1  # what train() sets: every step is a logging step
    batch = ours._prepare_inputs(ours.data_collator([ours.train_dataset[i] for i in range(4)]))
    assert (batch["labels"] == -100).any() != packing  # prompt tokens are masked out of SFT's loss only
    model.train()
    for num_items_in_batch in (None, torch.tensor(37)):
        theirs = SFTTrainer.compute_loss(ours, model, dict(batch), num_items_in_batch=num_items_in_batch)
        mine = ours.compute_loss(model, dict(batch), num_items_in_batch=num_items_in_batch)
        torch.testing.assert_close(mine, theirs)
        metrics = ours._metrics["train"]
        for name in ("entropy", "mean_token_accuracy"):  # TRL's value, then ours
            assert metrics[name][-1] == pytest.approx(metrics[name][-2], rel=1e-5)
    their_grads = torch.autograd.grad(SFTTrainer.compute_loss(ours, model, dict(batch)), list(model.parameters()))
    my_grads = torch.autograd.grad(ours.compute_loss(model, dict(batch)), list(model.parameters()))
    for mine, theirs in zip(my_grads, their_grads):
        torch.testing.assert_close(mine, theirs)
