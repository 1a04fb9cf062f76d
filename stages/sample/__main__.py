from stages.registry import run

run("sample")
