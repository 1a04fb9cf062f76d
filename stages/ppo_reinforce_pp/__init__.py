"""Stage `ppo_reinforce_pp`: declared and implemented beside its base stage (see stages/registry.py)."""
