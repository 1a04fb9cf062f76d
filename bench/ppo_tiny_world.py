"""What PPO does on the tiny world, and what the ptx term saves: three PPO runs from a finished
pipeline run's SFT policy and reward model (PPO-ptx as configured, the same with ptx off, and the
oracle control rewarded by the world's true score), each a real `python -m stages.ppo` on Ray +
DeepSpeed, then the eval stage on SFT and the three policies: one table of held-out figures (prompts
the reward model never saw).

    python -m bench.ppo_tiny_world --from runs/tiny [--out runs/tiny-ppo-compare] [--set ppo.iterations=30 ...]

Acceptance (issue: PPO-ptx stage): greedy true score at least SFT + 0.25, sampled at least SFT + 0.15,
KL to SFT between 0.3 and 3, greedy exact match no worse than SFT - 0.08, and with ptx the rise of
the held-out pretraining LM loss at most half of the rise without it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench import record

# run directory name -> overrides
VARIANTS = {"ppo-ptx": [], "ppo-no-ptx": ["ppo.ptx_coef=0"], "oracle-reward": ["ppo.reward=oracle"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="a run directory with sft and rm done")
    parser.add_argument("--out", help="where the three PPO runs go (default: <from>-ppo-compare)")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every variant")
    args = parser.parse_args()
    source = Path(args.source).resolve()
    out = Path(args.out or f"{source}-ppo-compare").resolve()
    base = ["--config", str(source / "config.yaml"), "--set", f"ppo.actor={source / 'sft' / 'model'}",
            "--set", f"ppo.reward_model={source / 'rm' / 'model'}"]
    for name, overrides in VARIANTS.items():
        command = [sys.executable, "-m", "stages.ppo", "--run-dir", str(out / name), *base,
                   *sum((["--set", s] for s in [*args.set, *overrides]), [])]
        print(f"[bench] {name}: {' '.join(command[1:4])} ...", flush=True)
        subprocess.run(command, check=True)
    # the eval stage on the four policies, judged as the pipeline judges them
    policies = {"sft": source / "sft" / "model", **{name: out / name / "ppo" / "model" for name in VARIANTS}}
    mapping = "{" + ", ".join(f"{name}: {path}" for name, path in policies.items()) + "}"
    subprocess.run([sys.executable, "-m", "stages.eval", "--run-dir", str(out / "eval"), "--config", str(source / "config.yaml"),
                    "--set", f"eval.policies={mapping}", "--set", f"eval.reward_model={source / 'rm' / 'model'}"], check=True)
    results = json.loads((out / "eval" / "eval" / "policies.json").read_text())
    iterations = {name: json.loads((out / name / "manifest.json").read_text())["stages"]["ppo"]["metrics"]["ppo/iterations"]
                  for name in VARIANTS}

    print(f"\n{'policy':<15}{'greedy true':>12}{'sampled true':>14}{'greedy EM':>11}{'win rate':>10}{'KL to SFT':>11}"
          f"{'LM loss':>9}{'iterations':>12}")
    for name, m in ((n, results[n]) for n in ("sft", *VARIANTS)):
        print(f"{name:<15}{m['true_score']:>12.3f}{m['sampled_true_score']:>14.3f}{m['exact_match']:>11.3f}{m['win_rate_vs_sft']:>10.3f}"
              f"{m['kl_to_sft']:>11.2f}{m['lm_loss']:>9.4f}{iterations.get(name, 0):>12.0f}")
    sft, ptx = results["sft"], results["ppo-ptx"]
    rise_ptx = ptx["lm_loss"] - sft["lm_loss"]
    rise_plain = results["ppo-no-ptx"]["lm_loss"] - sft["lm_loss"]
    print(f"\nheld-out pretraining LM loss rise: {rise_plain:+.4f} without ptx, {rise_ptx:+.4f} with ptx")
    checks = {
        "greedy true score >= SFT + 0.25": ptx["true_score"] >= sft["true_score"] + 0.25,
        "sampled true score >= SFT + 0.15": ptx["sampled_true_score"] >= sft["sampled_true_score"] + 0.15,
        "0.3 <= KL to SFT <= 3": 0.3 <= ptx["kl_to_sft"] <= 3.0,
        "greedy EM >= SFT - 0.08": ptx["exact_match"] >= sft["exact_match"] - 0.08,
        "LM loss rise with ptx <= half the rise without": rise_ptx <= 0.5 * max(rise_plain, 0.0),
    }
    for check, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    record("ppo_tiny_world", "PPO-ptx greedy true score - SFT's", ptx["true_score"] - sft["true_score"], "0 to 1.5", ">= 0.25")
    record("ppo_tiny_world", "PPO-ptx sampled true score - SFT's", ptx["sampled_true_score"] - sft["sampled_true_score"], "0 to 1.5",
           ">= 0.15")
    record("ppo_tiny_world", "PPO-ptx win rate against SFT", ptx["win_rate_vs_sft"], "true score", "> 0.5")
    record("ppo_tiny_world", "PPO-ptx KL to SFT", ptx["kl_to_sft"], "nats", "0.3 to 3")
    record("ppo_tiny_world", "LM loss rise without ptx", rise_plain, "nats/token")
    record("ppo_tiny_world", "LM loss rise with ptx", rise_ptx, "nats/token", "<= half")


if __name__ == "__main__":
    main()
