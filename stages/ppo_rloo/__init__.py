"""Stage `ppo_rloo`: declared and implemented beside its base stage (see stages/registry.py)."""
