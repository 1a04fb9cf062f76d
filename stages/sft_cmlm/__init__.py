"""Stage `sft_cmlm`: declared and implemented beside its base stage (see stages/registry.py)."""
