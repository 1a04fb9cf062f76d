from stages.registry import run

run("demonstrate")
