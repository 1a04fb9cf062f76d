from stages.registry import run

run("ppo_dr_grpo")
