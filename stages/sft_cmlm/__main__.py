from stages.registry import run

run("sft_cmlm")
