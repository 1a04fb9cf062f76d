from stages.registry import run

run("pretrain")
