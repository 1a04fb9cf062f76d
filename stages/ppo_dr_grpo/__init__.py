"""Stage `ppo_dr_grpo`: declared and implemented beside its base stage (see stages/registry.py)."""
