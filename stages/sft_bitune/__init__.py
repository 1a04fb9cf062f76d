"""Stage `sft_bitune`: declared and implemented beside its base stage (see stages/registry.py)."""
