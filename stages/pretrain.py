"""Stage `pretrain`: the tiny world's base model, trained from scratch on its pretraining corpus.

Reads:  the config (model.init, world, data.pretrain, pretrain).
Writes: DIR/pretrain/model (HF format, with the char-level tokenizer trained here),
        DIR/pretrain/checkpoints, metrics.jsonl, tensorboard/.
Skipped by the pipeline when model.name_or_path names a pretrained base model.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.run_dir import RunDir
from stages.data import make_world, pretraining_text
from stages.entry import StageResult, run_stage
from stages.evaluation import heldout_report
from stages.lm_training import LMJob, train_lm
from stages.modeling import build_model, train_char_tokenizer

STAGE = "pretrain"


def pretrain(config: Config, run_dir: RunDir, resume: bool) -> StageResult:
    # 1. data: plain text, packed into max_length windows by the trainer
    corpus = pretraining_text(config.data.pretrain, config.world)
    init_dir = run_dir.stage_dir(STAGE) / "init"
    if not resume or not init_dir.exists():
        # 2. tokenizer and initial weights, written once so that every worker (and a resumed run)
        #    starts from the same ones
        world = make_world(config.world)
        tokenizer = train_char_tokenizer([world.alphabet(), *corpus["text"]])
        model = build_model(config.model.init, tokenizer)
        model.save_pretrained(str(init_dir))
        tokenizer.save_pretrained(str(init_dir))
    # 3. train on the Ray workers, 4. save DIR/pretrain/model
    job = LMJob(
        stage=STAGE,
        run_dir=str(run_dir.root),
        init_model=str(init_dir),
        tokenizer=str(init_dir),
        dataset=corpus,
        train=config.pretrain,
        deepspeed=config.deepspeed,
        lora=None,
        seed=config.run.seed,
        torch_threads=config.run.torch_threads,
        use_gpu=config.ray.use_gpu,
        packing=True,
    )
    model_dir = train_lm(job, config.ray)
    metrics = heldout_report(model_dir, config.world) if config.data.sft is None else {}
    return StageResult(outputs={"model": str(model_dir.relative_to(run_dir.root))}, metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, pretrain, argv)


if __name__ == "__main__":
    main()
