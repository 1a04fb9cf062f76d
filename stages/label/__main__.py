from stages.registry import run

run("label")
