"""The one place a DeepSpeed config is built from the YAML's `deepspeed` section.

Values the HF Trainer knows (batch sizes, accumulation, clipping) are left "auto" so that HF's
DeepSpeed integration fills them from the training arguments and the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from common.config import DeepSpeedSection


def deepspeed_config(section: DeepSpeedSection) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": section.zero_stage}
    if section.zero_stage == 3:
        # gather the full weights when saving, so DIR/<stage>/model is a plain HF checkpoint
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if section.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if section.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": section.precision == "bf16"},
        "fp16": {"enabled": section.precision == "fp16"},
    }



def engine_config(section: DeepSpeedSection, micro_batch_size: int, max_grad_norm: float = 0.0) -> dict[str, Any]:
    """The same config with concrete values, for engines built directly with deepspeed.initialize:
    PPO's actor and critic, and under ZeRO-3 its frozen reference and reward model, which are
    sharded like the actor (they get no optimizer)."""
    config = deepspeed_config(section)
    config.update(
        train_micro_batch_size_per_gpu=micro_batch_size,
        gradient_accumulation_steps=1,
        gradient_clipping=max_grad_norm,
        zero_allow_untested_optimizer=True,  # torch's AdamW, as HF's Trainer passes it
    )
    if section.offload_optimizer:
        config["zero_force_ds_cpu_optimizer"] = False
    return config
