"""PPO-ptx on the Ray Train workers (InstructGPT section 3.5, Eq. 2; App. C.4): one iteration is

  1. rollout    sample ppo.group_size responses per prompt from the actor (one for InstructGPT): HF generate
                on the workers' own actor (stages.scoring.rollout), or vLLM engines that get the actor's
                weights after every update (stages.scoring.vllm_engines); log pi_old from the generation
                pass or the actor's forward
  2. score      reward model (+ its bias) or the tiny world's oracle; reference log-probs; values (GAE only)
  3. advantages ppo.estimator (spec/estimators.md): gae, per-token KL penalty and score at the last real
                token, GAE with the critic, whitening; grpo, dr_grpo, rloo, the KL folded into each
                sequence's score, a baseline over each prompt's samples; reinforce_pp(_baseline), the
                per-token rewards' returns, whitened over every rank's tokens
  4. learn      PPO epochs over minibatches: clipped policy loss (+ beta x KL loss with ppo.kl_mode loss)
                + ptx_coef x LM loss on a pretraining batch in ONE backward and ONE actor step; clipped
                value loss on the critic (GAE only)
  5. control    KL controller update, metrics, validation score, KL budget, checkpoint

The actor and, for GAE, the critic are DeepSpeed engines (the configured ZeRO stage); the reference and the
reward model are frozen DeepSpeed inference engines (on the worker's device in the run's precision;
under ZeRO-3 sharded like the actor). Data parallel: each rank rolls out its share of the iteration's
prompts; DeepSpeed averages the gradients. Every tensor goes to the device of the model it enters.

Everything a resumed run needs is in the checkpoint: engines (weights, optimizer, scheduler), every
rank's RNG, the counters (the prompt and pretraining positions are functions of them), the KL
controller and the best validation score so far.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import shutil
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from common.config import Config, pi_old_source
from common.files import append_jsonl, atomic_write_json
from common.run_dir import RunDir
from stages.core.functional import masked_mean, masked_whiten, token_logprobs
from stages.core.ppo import (
    entropy_from_logits,
    gae,
    group_centred_scores,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    kl_penalized_scores,
    make_kl_controller,
    policy_loss,
    ptx_combined_loss,
    returns_to_go,
    rloo_advantages,
    sequence_advantages,
    sequence_kl,
    shape_rewards,
    truncated_importance_weights,
    value_loss,
)
from stages.models.forward import lm_loss, response_logits
from stages.models.reward_model import BIAS_KEY, sequence_scores, token_scores
from stages.runtime.checkpoints import (
    barrier,
    latest_checkpoint,
    mark_latest,
    merge_lora,
    publish_model,
    truncate_metrics,
)
from stages.runtime.testing import maybe_inject_fault
from stages.scoring.rollout import HFRollout, RolloutBatch
from tiny_world import Task, true_score

BEST_DIR = "best"


@dataclass
class PPOTrainingSpec:
    """Everything a worker needs; pickled to the Ray Train workers."""

    config: Config
    run_dir: str
    stage: str  # "ppo", or "ppo_no_ptx" for the comparison run without the pretraining mix
    actor: str
    reference: str
    reward_model: str
    critic: str | None  # None with a critic-free estimator
    tokenizer: str
    prompts: list[str]  # the training pool
    validation_prompts: list[str]
    pretraining: list[str]  # documents for the ptx term
    tasks: dict[str, Task] | None  # prompt -> tiny-world task, for reward "oracle"
    engines: list[Any] | None = None  # vLLM engines (Ray actor handles) with rollout.engine vllm


@dataclass
class Experience:
    batch: RolloutBatch
    advantages: torch.Tensor  # (B, T)
    ref_logprobs: torch.Tensor  # (B, T), for the KL loss (ppo.kl_mode loss)
    values: torch.Tensor | None = None  # (B, T) V_old (GAE only)
    returns: torch.Tensor | None = None  # (B, T) (GAE only)


@functools.lru_cache(maxsize=4)
def _pool_order(seed: int, epoch: int, size: int) -> list[int]:
    """The order of the prompt pool in pass `epoch`."""
    order = list(range(size))
    random.Random(f"{seed}:ppo-prompts:{epoch}").shuffle(order)
    return order


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of every value (the same keys on every rank), reduced on `device` (NCCL
    reduces CUDA tensors only)."""
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / dist.get_world_size()).tolist()))


class PPOTrainer:
    def __init__(self, spec: PPOTrainingSpec):
        import deepspeed
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
        )

        from stages.models.loading import disable_dropout, load_tokenizer, model_kwargs
        from stages.runtime.deepspeed_config import engine_config, fused_adamw

        self.spec, self.config, self.ppo, self.rollout_config = spec, spec.config, spec.config.ppo, spec.config.rollout
        self.run_dir = RunDir(spec.run_dir)
        self.rank, self.world = rank_and_world_size()
        ppo = self.ppo
        # ray.num_workers x ppo.minibatches divides the iteration's episodes (checked with the config)
        self.episodes_per_rank = ppo.episodes_per_iteration // self.world
        self.minibatch_size = self.episodes_per_rank // ppo.minibatches
        self.ptx_per_step = round(ppo.ptx_ratio * self.minibatch_size) if ppo.ptx_coef > 0 else 0
        self.steps_per_iteration = ppo.ppo_epochs * ppo.minibatches
        self.zero3 = self.config.deepspeed.zero_stage == 3
        self.tokenizer = load_tokenizer(spec.tokenizer)

        # setup: the seed of every RNG before any model is built, then the four models
        torch.manual_seed(self.config.run.seed * 1000 + self.rank)
        random.seed(self.config.run.seed * 1000 + self.rank)
        np.random.seed(self.config.run.seed * 1000 + self.rank)
        ds = self.config.deepspeed
        train_config = engine_config(ds, self.world, self.minibatch_size, ppo.max_grad_norm)
        # frozen models: under ZeRO-3 sharded like the actor; else a stage-0 engine (no optimizer), which
        # places them on the worker's device and casts them to the run's precision
        frozen_section = ds if self.zero3 else ds.model_copy(update={"zero_stage": 0, "offload_optimizer": False})
        frozen_config = engine_config(frozen_section, self.world, self.minibatch_size)

        def engine(model, lr):
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = fused_adamw(trainable, lr=lr, betas=(0.9, ppo.adam_beta2), eps=1e-8, weight_decay=0.0)
            warmup = ppo.warmup_iterations * self.steps_per_iteration
            # InstructGPT: constant LR after a linear warmup that starts at 0.1 x peak
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step >= warmup else 0.1 + 0.9 * step / warmup)
            built, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=train_config,
                                             dist_init_required=False)
            if self.world == 1 and built.zero_optimization_stage() == 0:
                built.enable_backward_allreduce = False  # one rank: nothing to average, yet DeepSpeed flattens every gradient
            return built

        def frozen(model):
            model.requires_grad_(False).eval()
            model, *_ = deepspeed.initialize(model=model, config=frozen_config, dist_init_required=False)
            model.eval()  # the engine's eval() returns nothing
            return model

        load = model_kwargs(self.config.model, ds.precision)
        score_kwargs = {**load, "num_labels": 1, "pad_token_id": self.tokenizer.pad_token_id}
        actor = AutoModelForCausalLM.from_pretrained(spec.actor, **load)
        # a critic-free estimator builds, trains and checkpoints no critic
        critic = AutoModelForSequenceClassification.from_pretrained(spec.critic, **score_kwargs) if ppo.uses_critic else None
        # pi_old comes from an eval-mode pass (the generation pass or actor_logprobs): with dropout in the
        # training forward the first step's ratio would not be 1 and the clip would act on dropout noise
        for model in (actor, critic):
            if model is not None:
                disable_dropout(model)
        if ppo.lora is not None:
            from peft import get_peft_model

            from stages.models.loading import peft_config

            actor = get_peft_model(actor, peft_config(ppo.lora))
        self.actor = engine(actor, ppo.actor_lr)
        self.critic = engine(critic, ppo.critic_lr) if critic is not None else None
        # with LoRA the reference is the actor with its adapters off: no second copy of the model
        self.reference = None if ppo.lora else frozen(AutoModelForCausalLM.from_pretrained(spec.reference, **load))
        self.reward_model = None
        self.reward_bias = 0.0
        if ppo.reward == "model":
            reward_model = AutoModelForSequenceClassification.from_pretrained(spec.reward_model, **score_kwargs)
            self.reward_bias = float(getattr(reward_model.config, BIAS_KEY, 0.0))
            self.reward_model = frozen(reward_model)
        self.device = self.actor.device  # DeepSpeed's: the worker's GPU (LOCAL_RANK), or the CPU
        self.engines = spec.engines
        self.rollout = self.make_rollout(greedy=False)
        self.engine_restarts, self.sync_seconds, self.sync_mib = 0, 0.0, 0.0
        self.kl_controller = make_kl_controller(ppo.kl_controller, ppo.kl_coef, ppo.kl_target, ppo.kl_horizon)
        # InstructGPT's EMA of the policy weights (fp32 copies: with ZeRO 0-2 every rank has the full weights)
        self.ema = [p.detach().float().clone() for p in self.actor.module.parameters()] if ppo.ema_decay else None
        self.iteration = 0
        self.best_score = -math.inf
        self.over_budget = False

    # ---- data: positions are functions of the counters, so a resumed run reads what the
    # ---- uninterrupted one would have read ---------------------------------------------------

    def iteration_prompts(self, iteration: int) -> list[str]:
        """This rank's share of iteration `iteration`'s prompts: the pool in a seeded order per pass, each prompt
        ppo.group_size times in a row (a rank holds whole groups, prompt-major)."""
        pool, size = self.spec.prompts, self.ppo.prompts_per_iteration
        prompts = []
        for position in range(iteration * size + self.rank, (iteration + 1) * size, self.world):
            epoch, index = divmod(position, len(pool))
            prompts.extend([pool[_pool_order(self.config.run.seed, epoch, len(pool))[index]]] * self.ppo.group_size)
        return prompts

    def pretraining_batch(self, step: int) -> dict[str, torch.Tensor]:
        docs = self.spec.pretraining
        start = (step * self.world + self.rank) * self.ptx_per_step
        texts = [docs[i % len(docs)] for i in range(start, start + self.ptx_per_step)]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                                 max_length=self.ppo.ptx_max_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # ---- 1. rollout: HF generate on the actor, or vLLM engines holding the actor's latest weights ----

    def make_rollout(self, greedy: bool):
        ppo = self.ppo
        if self.engines is not None:
            from stages.scoring.vllm_engines import VLLMRollout

            engine = self.engines[self.rank % len(self.engines)]
            return VLLMRollout(engine, self.tokenizer, ppo.max_new_tokens, ppo.temperature, stop_at_eos=not ppo.fixed_length,
                               greedy=greedy, timeout_s=self.rollout_config.request_timeout_s)
        per_layer = self.zero3 and self.rollout_config.zero3_generation == "per_layer"
        return HFRollout(self.actor.module, self.tokenizer, ppo.max_new_tokens, ppo.temperature, stop_at_eos=not ppo.fixed_length,
                         synced_gpus=per_layer and self.world > 1, greedy=greedy, device=self.device)

    @contextlib.contextmanager
    def generation_weights(self):
        """HF generation under ZeRO-3 with rollout.zero3_generation gather: the actor's parameters gathered
        once for the whole rollout (DeepSpeed's hooks lifted meanwhile) instead of layer by layer at
        every token; the model must fit on one device. Elsewhere nothing to do."""
        if self.engines is None and self.zero3 and self.rollout_config.zero3_generation == "gather":
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            with unwrap_model_for_generation(self.actor):
                yield
        else:
            yield

    def request_seeds(self, iteration: int, count: int) -> list[int]:
        """One seed per prompt of this rank's share, a function of (run seed, iteration, prompt position): a
        retried or resumed iteration asks the engines for the same samples."""
        return [hash((self.config.run.seed, iteration, self.rank + i * self.world)) % 2**31 for i in range(count)]

    def generate(self, rollout, prompts: list[str], iteration: int) -> RolloutBatch:
        """A rollout on this rank's device. With vLLM engines: engines brought to the actor's weights first;
        an engine that died is restarted by Ray, brought up to date, and the rank's share asked again with
        the same seeds (rollout.max_engine_restarts times); a reply from stale weights is an error."""
        if self.engines is None:
            with self.generation_weights():
                return rollout.generate(prompts)
        import ray

        batch, seeds = None, self.request_seeds(iteration, len(prompts))
        for _ in range(self.rollout_config.max_engine_restarts + 1):
            self.update_engines()
            if batch is None and prompts:
                try:
                    batch = rollout.generate(prompts, seeds)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    batch = None
            failed = self.ranks_failing(batch is None and bool(prompts))
            if not failed:
                break
            self.engine_restarts += 1
        else:
            raise RuntimeError(f"a vLLM engine failed {self.rollout_config.max_engine_restarts + 1} times in iteration "
                               f"{iteration + 1}; raise rollout.max_engine_restarts or look at the engine's log")
        if batch is not None and batch.weight_version != self.iteration:
            raise RuntimeError(f"the vLLM engine sampled with weights of version {batch.weight_version}, the actor is at "
                               f"{self.iteration}: its weights were not synced")
        return batch.to(self.device) if batch is not None else None

    def release_engines(self) -> None:
        """Colocated engines sleep while the trainer learns on their GPUs (each rank its own engine)."""
        if self.engines is not None and self.rollout_config.placement == "colocated":
            import ray

            ray.get(self.rollout.engine.sleep.remote(), timeout=self.rollout_config.request_timeout_s)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def ranks_failing(self, failing: bool) -> int:
        flag = torch.tensor([int(failing)], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        return int(flag.item())

    def engine_versions(self) -> list[int]:
        """Every engine's weight version, waiting (bounded) for one that Ray is restarting."""
        import ray

        deadline = time.monotonic() + self.rollout_config.request_timeout_s
        while True:
            try:
                return ray.get([engine.ready.remote() for engine in self.engines], timeout=self.rollout_config.request_timeout_s)
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def update_engines(self) -> None:
        """Push the actor's weights (version = iterations done) to the engines when any is behind: after an
        update, after a resume, after an engine's restart. Collective: under ZeRO-3 every rank gathers."""
        from stages.scoring.vllm_engines import SLEEPING, engine_dtype, push_weights

        stale = torch.tensor([0], device=self.device)
        asleep = False
        if self.rank == 0:
            versions = self.engine_versions()
            stale[0] = int(any(version != self.iteration for version in versions))
            asleep = any(version == SLEEPING for version in versions)
        if dist.is_initialized():
            dist.broadcast(stale, 0)
        if not stale.item():
            return
        started = time.perf_counter()
        weights = self.actor_weights()
        if self.rank == 0:
            dtype = getattr(torch, engine_dtype(self.rollout_config, self.config.deepspeed.precision))
            self.sync_mib = push_weights(self.engines, weights, self.iteration, dtype, self.rollout_config.sync_bucket_mb,
                                         self.rollout_config.sync_timeout_s, asleep=asleep)
        else:
            for _ in weights:  # the other ranks' share of each gather
                pass
        barrier()
        self.sync_seconds += time.perf_counter() - started

    def actor_weights(self):
        """(HF name, full tensor) of every actor parameter in order, a tied one under each of its names (an
        engine may hold the output embedding apart: sent only as the input embedding, it keeps its old
        weights). Under ZeRO-3 each is gathered alone and released after its turn, so no rank ever holds
        the whole model."""
        for name, parameter in self.actor.module.named_parameters(remove_duplicate=False):
            if self.zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([parameter]):
                    yield name, parameter.data
            else:
                yield name, parameter.data

    @torch.no_grad()
    def actor_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """log pi_old from one no-grad eval-mode forward of the actor (rollout.old_logprobs trainer)."""
        T = batch.response_mask.shape[1]
        was_training = self.actor.training
        self.actor.eval()
        logits = response_logits(self.actor, batch.sequences, batch.attention_mask, T, self.ppo.temperature)
        self.actor.train(was_training)
        return token_logprobs(logits, batch.sequences[:, batch.prompt_length :])

    # ---- 2. scoring and 3. shaping -------------------------------------------------------------

    def true_scores(self, batch: RolloutBatch, prompts: list[str]) -> torch.Tensor:
        """The tiny world's true score of each decoded answer line (the oracle reward, and the honest
        curve beside the reward model's: where they part, PPO games the reward model)."""
        responses = torch.where(batch.response_mask, batch.sequences[:, batch.prompt_length :], self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return torch.tensor([true_score(self.spec.tasks[p], t.split("\n", 1)[0].strip()) for p, t in zip(prompts, texts)],
                            device=batch.sequences.device)  # beside the reward model's scores, on the rollout's device

    @torch.no_grad()
    def scores(self, batch: RolloutBatch, prompts: list[str]) -> torch.Tensor:
        if self.reward_model is None:
            scores = self.true_scores(batch, prompts)
        else:
            scores = sequence_scores(self.reward_model, batch.sequences, batch.attention_mask).float() + self.reward_bias
        if self.ppo.missing_eos_penalty is not None:
            scores = scores - self.ppo.missing_eos_penalty * (~batch.ended).float()
        return scores

    @torch.no_grad()
    def make_experience(self, batch: RolloutBatch, prompts: list[str]) -> tuple[Experience, dict[str, float]]:
        T, mask = batch.response_mask.shape[1], batch.response_mask
        responses = batch.sequences[:, batch.prompt_length :]
        sampler_logprobs = batch.logprobs
        if pi_old_source(self.rollout_config, self.config.deepspeed.precision) == "trainer":
            batch = replace(batch, logprobs=torch.where(mask, self.actor_logprobs(batch), 0.0), rollout_logprobs=sampler_logprobs)
        if self.reference is None:
            with self.actor.module.disable_adapter():
                ref_logits = response_logits(self.actor, batch.sequences, batch.attention_mask, T, self.ppo.temperature)
        else:
            ref_logits = response_logits(self.reference, batch.sequences, batch.attention_mask, T, self.ppo.temperature)
        ref_logprobs = token_logprobs(ref_logits, responses)
        scores = self.scores(batch, prompts)
        metrics = {}
        if self.ppo.group_size > 1:  # TRL's frac_reward_zero_std: groups that teach a group baseline nothing
            groups = scores.view(-1, self.ppo.group_size)
            metrics["zero_std_groups"] = (groups.amax(-1) == groups.amin(-1)).float().mean().item()
        if self.ppo.score_clip is not None:  # before any shaping or baseline
            scores = scores.clamp(-self.ppo.score_clip, self.ppo.score_clip)
        kl = kl_estimate(batch.logprobs, ref_logprobs, self.ppo.kl_estimator)
        experience = self.advantages(batch, scores, kl, ref_logprobs)
        metrics.update({
            "score": scores.mean().item(),
            "kl": sequence_kl(torch.where(mask, batch.logprobs - ref_logprobs, 0.0), mask).mean().item(),
            "response_length": mask.sum(-1).float().mean().item(),
            "ended": batch.ended.float().mean().item(),
            # the stale-weights alarm: pi_old against the sampler's own log-probs (0 when they are one)
            "logp_diff": masked_mean((batch.logprobs - sampler_logprobs).abs(), mask).item(),
        })
        if self.spec.tasks is not None:
            metrics["true_score"] = self.true_scores(batch, prompts).mean().item()
        return experience, metrics

    @torch.no_grad()
    def advantages(self, batch: RolloutBatch, scores: torch.Tensor, kl: torch.Tensor, ref_logprobs: torch.Tensor) -> Experience:
        """3. The estimator's advantages from the (clipped) scores and the per-token KL to the reference, which is
        in the reward unless ppo.kl_mode is loss (spec/estimators.md section 2)."""
        ppo, mask, n = self.ppo, batch.response_mask, self.ppo.group_size
        beta = self.kl_controller.value if ppo.kl_mode == "reward" else 0.0
        if ppo.estimator == "gae":
            self.critic.eval()
            values = token_scores(self.critic, batch.sequences, batch.attention_mask)[:, -mask.shape[1] - 1 : -1].float()
            self.critic.train()
            advantages, returns = gae(shape_rewards(scores, kl, mask, beta), values, mask, ppo.gamma, ppo.gae_lambda)
            return Experience(batch, masked_whiten(advantages, mask), ref_logprobs, values, returns)
        if ppo.estimator in ("reinforce_pp", "reinforce_pp_baseline"):
            baselined = group_centred_scores(scores, n) if ppo.estimator == "reinforce_pp_baseline" else scores
            returns = returns_to_go(shape_rewards(baselined, kl, mask, beta), mask, ppo.gamma)
            return Experience(batch, masked_whiten(returns, mask, moments=self.global_moments(returns, mask)), ref_logprobs)
        # grpo, dr_grpo, rloo: the KL folded into each sequence's score before the group baseline
        penalised = kl_penalized_scores(scores, kl, mask, beta)
        if ppo.estimator == "rloo":
            advantages = rloo_advantages(penalised, n)
        else:
            advantages = grpo_advantages(penalised, n, scale_by_std=ppo.estimator == "grpo")
        return Experience(batch, sequence_advantages(advantages, mask), ref_logprobs)

    def global_moments(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, population variance) of x over the real tokens of every rank's batch."""
        real = torch.where(mask, x, 0.0).double()
        sums = torch.stack([real.sum(), real.pow(2).sum(), mask.sum().double()])
        if dist.is_initialized():
            dist.all_reduce(sums)
        mean = sums[0] / sums[2].clamp(min=1)
        return mean.to(x.dtype), (sums[1] / sums[2].clamp(min=1) - mean**2).clamp(min=0).to(x.dtype)

    # ---- 4. learning ---------------------------------------------------------------------------

    def learn(self, experience: Experience, iteration: int) -> dict[str, float]:
        batch, T = experience.batch, experience.batch.response_mask.shape[1]
        responses = batch.sequences[:, batch.prompt_length :]
        ppo = self.ppo
        generator = torch.Generator().manual_seed(self.config.run.seed * 100003 + iteration * 101 + self.rank)
        minibatches = [index for _ in range(ppo.ppo_epochs)
                       for index in torch.randperm(self.episodes_per_rank, generator=generator).to(self.device).split(self.minibatch_size)]
        normalisers = self.token_normalisers(batch.response_mask, minibatches)
        totals: dict[str, float] = {}
        step = iteration * self.steps_per_iteration
        for index, normaliser in zip(minibatches, normalisers):
            mini = batch.select(index)
            aggregation = dict(loss_agg=ppo.aggregation, max_length=ppo.max_new_tokens, normaliser=normaliser)
            logits = response_logits(self.actor, mini.sequences, mini.attention_mask, T, ppo.temperature)
            logprobs = token_logprobs(logits, responses[index])
            weights, mask, is_clipfrac = self.importance_weights(mini)
            pg_loss, pg_metrics = policy_loss(logprobs, mini.logprobs, experience.advantages[index], mask, ppo.clip_ratio,
                                              token_weights=weights, clip_eps_high=ppo.clip_ratio_high, dual_clip=ppo.dual_clip,
                                              **aggregation)
            step_metrics = {}
            actor_loss = pg_loss
            if ppo.kl_mode == "loss":
                kl_term = kl_loss(logprobs, experience.ref_logprobs[index], mini.response_mask, ppo.kl_estimator, **aggregation)
                actor_loss = pg_loss + self.kl_controller.value * kl_term
                step_metrics["kl_loss"] = kl_term.item()
            ptx_loss = torch.zeros((), device=self.device)
            if self.ptx_per_step:
                ptx_loss = lm_loss(self.actor, **self.pretraining_batch(step))
            # one backward of the sum: the policy and the scaled pretraining gradients share the step
            self.actor.backward(ptx_combined_loss(actor_loss, ptx_loss, ppo.ptx_coef))
            self.actor.step()
            self.update_ema()

            if self.critic is not None:
                values = token_scores(self.critic, mini.sequences, mini.attention_mask)[:, -T - 1 : -1].float()
                vf_loss, vf_clipfrac = value_loss(values, experience.values[index], experience.returns[index], mini.response_mask,
                                                  ppo.value_clip)
                self.critic.backward(vf_loss)
                self.critic.step()
                step_metrics.update({"value_loss": vf_loss.item(), "value_clipfrac": vf_clipfrac.item()})

            step_metrics.update({
                "policy_loss": pg_loss.item(),
                "ptx_loss": ptx_loss.item(),
                "clipfrac": pg_metrics["clipfrac"].item(),
                "approx_kl": pg_metrics["approx_kl"].item(),
                "entropy": masked_mean(entropy_from_logits(logits.detach()), mini.response_mask).item(),
                "is_clipfrac": is_clipfrac.item(),
            })
            for name, value in step_metrics.items():
                totals[name] = totals.get(name, 0.0) + value / self.steps_per_iteration
            step += 1
        return totals

    def token_normalisers(self, response_mask: torch.Tensor, minibatches: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Each step's token-mean normaliser on this rank: the step's real tokens over every rank divided by the
        ranks, so that DeepSpeed's average of the ranks' gradients is that of the global token mean (spec/estimators.md
        1.3); one all-reduce per iteration. None (this rank's own token mean) on one rank or in the sequence modes."""
        if self.world == 1 or self.ppo.aggregation != "token_mean":
            return [None] * len(minibatches)
        counts = torch.stack([response_mask[index].sum() for index in minibatches]).double()
        dist.all_reduce(counts)
        return list((counts / self.world).clamp(min=1).float())

    def importance_weights(self, mini: RolloutBatch) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """rollout.tis: each token's weight pi_old / pi_rollout (truncated or masked), the mask it leaves, and the
        fraction of tokens capped or dropped."""
        tis = self.rollout_config.tis
        if tis.mode == "none" or mini.rollout_logprobs is None:
            return None, mini.response_mask, torch.zeros((), device=self.device)
        return truncated_importance_weights(mini.logprobs, mini.rollout_logprobs, mini.response_mask, tis.mode, tis.low, tis.high)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is not None:
            for average, parameter in zip(self.ema, self.actor.module.parameters()):
                average.lerp_(parameter.detach().float(), 1.0 - self.ppo.ema_decay)

    # ---- 5. validation, checkpoints, the loop --------------------------------------------------

    @torch.no_grad()
    def validation_score(self) -> float:
        """Mean reward-model (or oracle) score of greedy responses to the validation prompts."""
        prompts = self.spec.validation_prompts[self.rank :: self.world]
        greedy_batch = self.generate(self.make_rollout(greedy=True), prompts, self.iteration) if prompts else None
        self.release_engines()
        total = self.scores(greedy_batch, prompts).sum().item() if prompts else 0.0
        sums = torch.tensor([total, len(prompts)], dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(sums)
        return (sums[0] / sums[1].clamp(min=1)).item()

    def save_model(self, directory) -> None:
        """Publish the actor (its EMA when configured; with LoRA, merged into the base) in HF format."""
        state = None
        if self.ppo.lora is None:  # every rank takes part: ZeRO-3 gathers the shards
            if self.ema is not None:
                names = [name for name, _ in self.actor.module.named_parameters()]
                state = {name: average.to(p.dtype) for name, average, p in zip(names, self.ema, self.actor.module.parameters())}
            elif self.zero3:
                state = self.actor._zero3_consolidated_16bit_state_dict()
            else:
                state = self.actor.module.state_dict()

        def write(tmp) -> None:
            if self.ppo.lora is None:
                self.actor.module.save_pretrained(str(tmp), state_dict=state)
            else:  # ZeRO 0-2 (checked with the config): rank 0 holds the whole adapter
                from transformers import AutoModelForCausalLM

                adapter = tmp.with_name(tmp.name + ".adapter")
                self.actor.module.save_pretrained(str(adapter))
                merge_lora(AutoModelForCausalLM, self.spec.actor, adapter).save_pretrained(str(tmp))
                shutil.rmtree(adapter)
            self.tokenizer.save_pretrained(str(tmp))

        publish_model(directory, self.rank, write)

    def save_checkpoint(self, iteration: int) -> None:
        checkpoints = self.run_dir.checkpoints_dir(self.spec.stage)
        folder = checkpoints / f"iteration-{iteration}"
        self.actor.save_checkpoint(str(folder), tag="actor", save_latest=False)
        if self.critic is not None:
            self.critic.save_checkpoint(str(folder), tag="critic", save_latest=False)
        state = {
            "iteration": iteration,
            "kl_controller": self.kl_controller.state_dict(),
            "best_score": self.best_score,
            "over_budget": self.over_budget,
            "ema": self.ema,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        }
        torch.save(state, folder / f"trainer-rank{self.rank}.pt")
        barrier()
        if self.rank == 0:
            mark_latest(checkpoints, folder.name)
            for old in checkpoints.glob("iteration-*"):
                if old.name != folder.name and int(old.name.split("-")[1]) < iteration - self.ppo.checkpoint_every:
                    shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> None:
        folder = latest_checkpoint(self.run_dir.checkpoints_dir(self.spec.stage))
        if folder is None:
            return
        self.actor.load_checkpoint(str(folder), tag="actor")
        if self.critic is not None:
            self.critic.load_checkpoint(str(folder), tag="critic")
        state = torch.load(folder / f"trainer-rank{self.rank}.pt", weights_only=False)
        self.iteration = state["iteration"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.best_score, self.over_budget, self.ema = state["best_score"], state["over_budget"], state["ema"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        if self.rank == 0:
            truncate_metrics(self.run_dir.metrics_path(self.spec.stage), self.iteration)

    def log(self, record: dict[str, float], writer) -> None:
        if self.rank != 0:
            return
        append_jsonl(self.run_dir.metrics_path(self.spec.stage), record)
        for name, value in record.items():
            if name != "step":
                writer.add_scalar(name, value, record["step"])

    def train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        ppo = self.ppo
        self.load_checkpoint()
        writer = SummaryWriter(str(self.run_dir.tensorboard_dir(self.spec.stage))) if self.rank == 0 else None
        progress = tqdm(total=ppo.iterations, initial=self.iteration, desc="ppo", disable=self.rank != 0)
        while self.iteration < ppo.iterations and not self.over_budget:
            iteration = self.iteration
            prompts = self.iteration_prompts(iteration)
            started = time.perf_counter()
            self.sync_seconds = 0.0
            batch = self.generate(self.rollout, prompts, iteration)  # 1. rollout
            self.release_engines()
            generated = time.perf_counter()
            experience, rollout_metrics = self.make_experience(batch, prompts)  # 2-3. score, shape
            scored = time.perf_counter()
            learn_metrics = self.learn(experience, iteration)  # 4. learn
            trained = time.perf_counter()

            # 5. control: KL coefficient, metrics, validation, budget, checkpoint
            metrics = _all_mean({**rollout_metrics, **learn_metrics}, self.device)
            self.kl_controller.update(metrics["kl"], ppo.episodes_per_iteration)
            self.iteration = iteration + 1
            record = {"step": self.iteration, **{f"ppo/{k}": v for k, v in metrics.items()}}
            record.update({
                "ppo/beta": self.kl_controller.value,
                "time/generate": generated - started,
                "time/score": scored - generated,
                "time/train": trained - scored,
                "ppo/episodes_per_second": ppo.episodes_per_iteration / (trained - started),
            })
            if ppo.max_kl is not None and metrics["kl"] > ppo.max_kl:
                self.over_budget = True
            if self.iteration % ppo.eval_every == 0 or self.iteration == ppo.iterations or self.over_budget:
                validation = self.validation_score()
                record["ppo/validation_score"] = validation
                if not self.over_budget and validation > self.best_score:
                    self.best_score = validation
                    self.save_model(self.run_dir.stage_dir(self.spec.stage) / BEST_DIR)
            if self.engines is not None:  # after validation, whose rollout may have brought the engines up to date
                record.update({"rollout/engine_restarts": self.engine_restarts, "rollout/weight_sync_mib": self.sync_mib,
                               "time/weight_sync": self.sync_seconds})
            self.log(record, writer)
            progress.update(1)
            progress.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.2f}")
            if self.iteration % ppo.checkpoint_every == 0 or self.iteration == ppo.iterations:
                self.save_checkpoint(self.iteration)
                maybe_inject_fault(self.run_dir.stage_dir(self.spec.stage), self.iteration, self.rank)
        progress.close()
        if writer is not None:
            writer.close()
        self.save_model(self.run_dir.stage_dir(self.spec.stage) / "final")
        if self.rank == 0:
            summary = {"iterations": self.iteration, "stopped_by_kl_budget": float(self.over_budget)}
            if self.best_score > -math.inf:
                summary["best_validation_score"] = self.best_score
            atomic_write_json(self.run_dir.stage_dir(self.spec.stage) / "training.json", summary)



def train_on_worker(spec: PPOTrainingSpec, rank: int) -> None:
    PPOTrainer(spec).train()
