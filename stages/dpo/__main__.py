from stages.registry import run

run("dpo")
