from stages.registry import run

run("ppo_reinforce_pp")
