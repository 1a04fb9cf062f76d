"""Stage `ppo_no_ptx`: declared and implemented beside its base stage (see stages/registry.py)."""
