"""Stage `sft_lora`: declared and implemented beside its base stage (see stages/registry.py)."""
