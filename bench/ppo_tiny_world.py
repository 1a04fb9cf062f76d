"""What PPO does on the tiny world, and what the ptx term saves: three PPO runs from a finished
pipeline run's SFT policy and reward model (PPO-ptx as configured, the same with ptx off, and the
oracle control rewarded by the world's true score), each a real `python -m stages.ppo` on Ray +
DeepSpeed, then one table of held-out figures (prompts the reward model never saw).

    python bench/ppo_tiny_world.py --from runs/tiny [--out runs/tiny-ppo-compare] [--set ppo.iterations=30 ...]

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
    results = {}
    for name, overrides in VARIANTS.items():
        run_dir = out / name
        command = [sys.executable, "-m", "stages.ppo", "--run-dir", str(run_dir), *base,
                   *sum((["--set", s] for s in [*args.set, *overrides]), [])]
        print(f"[bench] {name}: {' '.join(command[1:4])} ...", flush=True)
        subprocess.run(command, check=True)
        results[name] = json.loads((run_dir / "manifest.json").read_text())["stages"]["ppo"]["metrics"]

    sft = results["ppo-ptx"]
    rows = [("SFT", {k[len("reference/"):]: v for k, v in sft.items() if k.startswith("reference/")})] + list(results.items())
    print(f"\n{'policy':<15}{'greedy true':>12}{'sampled true':>14}{'greedy EM':>11}{'KL to SFT':>11}{'LM loss':>9}{'iterations':>12}")
    for name, m in rows:
        lm = m.get("pretrain_heldout_lm_loss", sft["reference/pretrain_heldout_lm_loss"])
        print(f"{name:<15}{m['heldout_true_score']:>12.3f}{m['heldout_sampled_true_score']:>14.3f}{m['heldout_exact_match']:>11.3f}"
              f"{m.get('heldout_kl_to_reference', 0.0):>11.2f}{lm:>9.4f}{m.get('ppo/iterations', 0):>12.0f}")
    sft_lm = sft["reference/pretrain_heldout_lm_loss"]
    rise_ptx = sft["pretrain_heldout_lm_loss"] - sft_lm
    rise_plain = results["ppo-no-ptx"]["pretrain_heldout_lm_loss"] - sft_lm
    print(f"\nheld-out pretraining LM loss rise: {rise_plain:+.4f} without ptx, {rise_ptx:+.4f} with ptx")
    checks = {
        "greedy true score >= SFT + 0.25": sft["heldout_true_score"] >= sft["reference/heldout_true_score"] + 0.25,
        "sampled true score >= SFT + 0.15": sft["heldout_sampled_true_score"] >= sft["reference/heldout_sampled_true_score"] + 0.15,
        "0.3 <= KL to SFT <= 3": 0.3 <= sft["heldout_kl_to_reference"] <= 3.0,
        "greedy EM >= SFT - 0.08": sft["heldout_exact_match"] >= sft["reference/heldout_exact_match"] - 0.08,
        "LM loss rise with ptx <= half the rise without": rise_ptx <= 0.5 * max(rise_plain, 0.0),
    }
    for check, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")


if __name__ == "__main__":
    main()
