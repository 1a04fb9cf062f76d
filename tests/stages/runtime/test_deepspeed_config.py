"""The DeepSpeed config the engines are built from: the stage that runs at one rank, and the optimizer."""

import pytest
import torch

from common.config import DeepSpeedSection
from stages.runtime.deepspeed_config import deepspeed_config, effective_zero_stage, engine_config, fused_adamw


@pytest.mark.parametrize(
    ("section", "world_size", "stage"),
    [
        (DeepSpeedSection(zero_stage=2), 1, 0),  # one rank: nothing to partition
        (DeepSpeedSection(zero_stage=1), 1, 0),
        (DeepSpeedSection(zero_stage=2), 2, 2),
        (DeepSpeedSection(zero_stage=2, offload_optimizer=True), 1, 2),  # offloading pays at one rank too
        (DeepSpeedSection(zero_stage=3), 1, 3),
        (DeepSpeedSection(zero_stage=0), 2, 0),
    ],
)
def test_zero_1_and_2_run_at_stage_0_on_one_rank_unless_offloaded(section, world_size, stage):
    assert effective_zero_stage(section, world_size) == stage
    assert deepspeed_config(section, world_size)["zero_optimization"]["stage"] == stage
    assert engine_config(section, world_size, micro_batch_size=4)["zero_optimization"]["stage"] == stage


def test_the_optimizer_is_torchs_fused_adamw_and_steps_like_the_loop_one():
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = fused_adamw(params, lr=0.1) if fused else torch.optim.AdamW(params, lr=0.1, foreach=False)
        assert optimizer.defaults["fused"] is (True if fused else None)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        results.append(params)
    for fused_param, loop_param in zip(*results):
        torch.testing.assert_close(fused_param, loop_param)
