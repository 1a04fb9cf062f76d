"""Each advantage estimator of `ppo.estimator` on one fixed workload: episodes per second and peak memory.

The workload is bench.ppo_iteration's `trl` one (four GPT-2 models of 5.3M parameters: 4 layers, width 256,
vocabulary 8192; 16 episodes of exactly 32 sampled tokens, 4 epochs x 2 minibatches, ptx off, fp32), drawn as
4 samples of each of 4 prompts for every estimator, GAE too, so that all see the same episodes. Each estimator
runs in a fresh process, so that its peak memory (RSS) is its own. The critic-free estimators build no critic:
no value forward when scoring, no value forward, backward or optimizer step when learning, no critic weights,
gradients or Adam state; the table shows what that saves.

    python -m bench.estimators [--iterations 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench import in_fresh_processes, record
from bench.ppo_iteration import WORKLOADS, start_group, workload_trainer
from common.config import ESTIMATORS

GROUP_SIZE = 4


def run_estimator(estimator: str, iterations: int) -> None:
    workload = WORKLOADS["trl"]
    start_group()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = workload_trainer(workload, Path(tmp), f"ppo.estimator={estimator}", f"ppo.group_size={GROUP_SIZE}")
        config = trainer.config

        def iteration(number: int) -> float:
            started = time.perf_counter()
            prompts = trainer.iteration_prompts(number)
            experience, _ = trainer.make_experience(trainer.generate(trainer.rollout, prompts, number), prompts)
            trainer.learn(experience, number)
            return time.perf_counter() - started

        for number in range(2):  # warm-up; the optimizer states exist from the first step on
            iteration(number)
        seconds = statistics.median(iteration(number) for number in range(2, iterations + 2))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    episodes_per_second = workload.episodes / seconds
    print(f"  {estimator:<24}{episodes_per_second:10.2f} episodes/s  {seconds:7.3f} s/iteration  {peak_mib:7.0f} MiB peak"
          f"  ({'critic' if config.ppo.uses_critic else 'no critic'}, {config.ppo.aggregation})", flush=True)
    record("estimators", f"{estimator}: episodes per second", episodes_per_second, "episodes/s")
    record("estimators", f"{estimator}: peak memory (RSS)", peak_mib, "MiB")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimator", choices=[*ESTIMATORS, "all"], default="all")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.estimator == "all":
        print(f"estimators on the trl workload ({WORKLOADS['trl'].description}), {WORKLOADS['trl'].episodes} episodes "
              f"= {WORKLOADS['trl'].episodes // GROUP_SIZE} prompts x {GROUP_SIZE} samples, median of {args.iterations} iterations, "
              f"{args.threads} threads", flush=True)
        in_fresh_processes("bench.estimators", "--estimator", ESTIMATORS, "--iterations", str(args.iterations),
                           "--threads", str(args.threads))
        return
    torch.set_num_threads(args.threads)
    run_estimator(args.estimator, args.iterations)


if __name__ == "__main__":
    main()
