"""Stage `ppo_reinforce_pp_baseline`: declared and implemented beside its base stage (see stages/registry.py)."""
