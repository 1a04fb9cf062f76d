"""The cost of resumable checkpoints: the SFT stage of the embedded default run twice from the same
pretrained base, with checkpoints at the configured interval and with none, each a real
`python -m stages.sft` on Ray + DeepSpeed. Prints the training time of each (HF's train_runtime,
without Ray's start-up) and the overhead (goal: under 5% of stage time).

    python -m bench.checkpoint_overhead --base runs/tiny/pretrain/model [--set sft.max_steps=200 ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import record
from common.config import load_config


def train_runtime(run_dir: Path, overrides: list[str]) -> tuple[float, int]:
    command = [sys.executable, "-m", "stages.sft", "--run-dir", str(run_dir), *sum((["--set", s] for s in overrides), [])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    runtime = float(re.findall(r"'train_runtime': '([0-9.]+)'", output)[-1])
    checkpoints = len(list((run_dir / "sft" / "checkpoints").glob("checkpoint-*")))
    return runtime, checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a pretrained model directory (e.g. runs/tiny/pretrain/model)")
    parser.add_argument("--set", action="append", default=[], help="config overrides for both runs")
    args = parser.parse_args()
    every = load_config(None, args.set).sft.checkpoint_every
    common = [f"model.name_or_path={Path(args.base).resolve()}", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        with_checkpoints = train_runtime(Path(tmp) / "with", common)
        without = train_runtime(Path(tmp) / "without", [*common, "sft.checkpoint_every=1000000"])
    (runtime, kept), (baseline, _) = with_checkpoints, without
    print(json.dumps({"checkpoint_every": every, "checkpoints_kept": kept, "train_runtime_s": runtime,
                      "train_runtime_without_s": baseline, "overhead": runtime / baseline - 1}, indent=1))
    print(f"checkpoints every {every} steps: {runtime:.1f} s vs {baseline:.1f} s without, overhead {100 * (runtime / baseline - 1):+.1f}%")
    record("checkpoint_overhead", f"SFT with checkpoints every {every} steps", 100 * (runtime / baseline - 1), "% of train time", "< 5")


if __name__ == "__main__":
    main()
