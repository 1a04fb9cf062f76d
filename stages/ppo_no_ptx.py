"""Stage `ppo_no_ptx`: the PPO stage again with the pretraining mix off (ppo.ptx_coef = 0), everything
else as configured, so that the eval stage can show what the ptx term saves (InstructGPT's "PPO"
against "PPO-ptx"). Enabled by eval.compare_without_ptx. Writes DIR/ppo_no_ptx/ as `ppo` writes DIR/ppo/.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.run_dir import RunDir
from stages.entry import StageResult, run_stage
from stages.ppo import ppo

STAGE = "ppo_no_ptx"


def ppo_no_ptx(config: Config, run_dir: RunDir, resume: bool) -> StageResult:
    without = config.model_copy(update={"ppo": config.ppo.model_copy(update={"ptx_coef": 0.0})})
    return ppo(without, run_dir, resume, stage=STAGE)


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, ppo_no_ptx, argv)


if __name__ == "__main__":
    main()
