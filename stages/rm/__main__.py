from stages.registry import run

run("rm")
