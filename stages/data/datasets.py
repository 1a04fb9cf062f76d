"""Datasets for the language-model stages: the tiny world's, an instruction mixture (mixture.py), or
local files (files.py). SFT data is plain prompt/completion strings, so pretraining text can be mixed
in as completions with an empty prompt (LM loss on all of it)."""

from __future__ import annotations

from datasets import (
    Dataset,
    concatenate_datasets,
)

from common.config import Config, DataSection, DatasetSource, WorldSection
from common.errors import InputError
from common.files import read_jsonl
from common.run_dir import RunDir
from stages.data.files import sft_dataset_from_file, text_dataset_from_file
from tiny_world import Task, TinyWorld


def make_world(world: WorldSection) -> TinyWorld:
    return TinyWorld(
        seed=world.seed,
        heldout_families=tuple(world.heldout_families),
        heldout_instance_fraction=world.heldout_instance_fraction,
        demo_accuracy=world.demo_accuracy,
        verbose_rate=world.verbose_rate,
        period_rate=world.period_rate,
        lazy_error_share=world.lazy_error_share,
        lazy_wording_rate=world.lazy_wording_rate,
    )


# ---- the stages' datasets -----------------------------------------------------------------------


def pretraining_text(data_source: DatasetSource | None, world: WorldSection) -> Dataset:
    """Plain-text pretraining documents: a text dataset on disk, or the tiny world's corpus."""
    if data_source is not None:
        return text_dataset_from_file(data_source)
    return Dataset.from_dict({"text": make_world(world).corpus(world.corpus_docs)})


def sft_dataset(data: DataSection, world: WorldSection, tokenizer, seed: int = 0) -> Dataset:
    """Demonstrations as prompt/completion strings: from a file (data.sft), an instruction mixture
    (data.mixture), or the tiny world's demonstrator."""
    if data.sft is not None:
        return sft_dataset_from_file(data.sft, tokenizer)
    if data.mixture is not None:
        from stages.data.mixture import build_mixture

        records = build_mixture(data.mixture, make_world(world), token_counter(tokenizer), seed)
        return Dataset.from_dict({"prompt": records["prompt"], "completion": records["completion"]})
    demos = make_world(world).demonstrations(world.demonstrations)
    return Dataset.from_dict({"prompt": [e.prompt for e, _ in demos], "completion": [r for _, r in demos]})


def demonstrations(config: Config, run_dir: RunDir, tokenizer, stage: str) -> Dataset:
    """The run's demonstrations as prompt/completion strings: those people wrote (the demonstrate stage's
    DIR/demonstrate/demonstrations.jsonl, in labeling.mode human with labeling.min_demonstrations > 0; the
    log of `stage` says so), else sft_dataset's."""
    if not config.labeling.people_demonstrate:
        return sft_dataset(config.data, config.world, tokenizer, config.run.seed)
    path = run_dir.stage_dir("demonstrate") / "demonstrations.jsonl"
    written = read_jsonl(path)
    print(f"[{stage}] demonstrations: the {len(written)} people wrote ({path}), not the tiny world's demonstrator", flush=True)
    return Dataset.from_dict({"prompt": [d["prompt"] for d in written], "completion": [d["completion"] for d in written]})


def token_counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def mix_pretraining(demos: Dataset, text: Dataset, ratio: float) -> Dataset:
    """Add round(ratio x len(demos)) pretraining documents as completions with an empty prompt,
    so the completion-only loss becomes the plain LM loss on them."""
    n_mix = round(ratio * len(demos))
    if n_mix == 0:
        return demos
    if len(text) == 0:
        raise InputError("sft.pretrain_mix > 0 but the pretraining text dataset is empty")
    indices = [i % len(text) for i in range(n_mix)]
    mixed = text.select(indices).map(lambda r: {"prompt": "", "completion": r["text"]}, remove_columns=["text"])
    return concatenate_datasets([demos, mixed])


def world_tasks(rankings_path) -> dict[str, Task]:
    """The tiny-world task behind each prompt of a candidates or rankings file, keyed by prompt text."""
    return {r["prompt"]: Task(r["world_task"]["family"], tuple(r["world_task"]["args"]), r["world_task"]["answer"])
            for r in read_jsonl(rankings_path)}
