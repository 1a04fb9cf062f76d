from stages.registry import run

run("ppo_no_ptx")
