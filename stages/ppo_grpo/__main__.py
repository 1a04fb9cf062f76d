from stages.registry import run

run("ppo_grpo")
