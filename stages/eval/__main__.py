from stages.registry import run

run("eval")
