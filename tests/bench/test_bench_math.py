"""The arithmetic inside the benchmarks, on hand-computed cases (the benchmarks themselves print figures)."""

import pytest

from bench.prompt_selection import pairwise_accuracy


def test_pairwise_accuracy_skips_true_ties_and_counts_score_ties_half():
    # prompt 1: pairs (0,1) and (0,2) differ in truth and are ordered right; (1,2) is a true tie, skipped.
    # prompt 2: (0,1) is a score tie (half), (0,2) is ordered wrong, (1,2) a true tie. (2 + 0.5) / 4
    assert pairwise_accuracy([[3, 2, 1], [1, 1, 0]], [[2, 1, 1], [0, 1, 1]]) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="no pair"):
        pairwise_accuracy([[1, 2]], [[0.5, 0.5]])


def test_window_rates_split_steps_into_whole_windows():
    from bench.lm_throughput import window_rates

    # windows of 2 steps: (100 + 300) / (1 + 1) = 200; (200 + 200) / (0.5 + 1.5) = 200; the fifth step is a partial window
    assert window_rates([100, 300, 200, 200, 50], [1.0, 1.0, 0.5, 1.5, 0.1], 2) == pytest.approx([200.0, 200.0])
    with pytest.raises(ValueError, match="3 token counts but 2 step times"):
        window_rates([1, 2, 3], [1.0, 1.0], 1)


def test_batch_tokens_counts_the_attention_mask_else_every_id():
    import torch

    from bench.lm_throughput import batch_tokens

    # two sequences of 3 and 1 real tokens, right-padded to 3: 4 tokens, not 6
    assert batch_tokens({"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}) == 4
    assert batch_tokens({"input_ids": torch.zeros(2, 3)}) == 6  # packed windows without a mask: all real


def test_offloaded_follows_the_offload_settings_and_deepspeeds_buffer_names():
    from bench.zero_memory import offloaded

    # ZeRO-Offload: the optimizer step (master weights, moments, the gradient partitions it reads) on the host
    assert offloaded("optimizer", "state", offload_optimizer=True, offload_param=False)
    assert offloaded("grads", "averaged_gradients", offload_optimizer=True, offload_param=False)
    assert not offloaded("params", "param.data", offload_optimizer=True, offload_param=False)
    assert offloaded("params", "ds_tensor", offload_optimizer=True, offload_param=True)  # ZeRO-3 offload_param
    assert not offloaded("optimizer", "state", offload_optimizer=False, offload_param=False)
    # named buffers say where they are, whatever the settings; unnamed other buffers (buckets) stay on the device
    assert offloaded("other", "temp_grad_buffer_for_cpu_offload", offload_optimizer=False, offload_param=False)
    assert not offloaded("other", "temp_grad_buffer_for_gpu_offload", offload_optimizer=True, offload_param=True)
    assert not offloaded("other", "ipg_buffer", offload_optimizer=True, offload_param=True)


def test_ratio_to_one_rank_divides_by_the_same_configs_single_rank():
    from bench.zero_memory import ratio_to_one_rank

    rows = [{"config": "ZeRO-3", "ranks": 1, "total": 1000}, {"config": "ZeRO-3", "ranks": 2, "total": 520},
            {"config": "ZeRO-2", "ranks": 1, "total": 800}, {"config": "ZeRO-2", "ranks": 2, "total": 600}]
    # 520 / 1000 and 600 / 800; each 1-rank row is 1 against itself
    assert ratio_to_one_rank(rows) == pytest.approx({("ZeRO-3", 1): 1.0, ("ZeRO-3", 2): 0.52, ("ZeRO-2", 1): 1.0, ("ZeRO-2", 2): 0.75})


def test_label_scores_order_the_tiers_and_tie_a_tier():
    from bench.rm_correctness import label_scores
    from stages.data.rankings import RankingGroup

    group = RankingGroup("Q: Write plum in capital letters.\nA: ", ("PLUM", "plum", "The answer is PLUM.", "PLAM"),
                         ((2,), (0, 3), (1,)), "p0")
    assert label_scores(group) == [-1.0, -2.0, 0.0, -1.0]


def test_the_log_likelihood_reward_is_the_head_plus_the_scaled_completion_log_likelihood(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bench.rm_correctness import LogLikelihoodRewardModel, encode_group
    from stages.data.rankings import RankingGroup
    from stages.models.forward import completion_logprobs

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=64)).eval()
    group = RankingGroup("Q: Write plum in capital letters.\nA: ", ("PLUM", "The answer is PLUM."), ((0,), (1,)), "p0")
    batch = encode_group(tokenizer, group, 64)
    plain, with_loglik = LogLikelihoodRewardModel(lm, None), LogLikelihoodRewardModel(lm, 0.5)
    with_loglik.score.load_state_dict(plain.score.state_dict())
    with torch.no_grad():
        head, combined = plain(**batch), with_loglik(**batch)
        loglik = completion_logprobs(lm, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert torch.allclose(combined, head + 0.5 * loglik, atol=1e-5)
    assert bool((batch["completion_mask"].sum(1) == torch.tensor([5, 20])).all())  # the response's tokens and its EOS
