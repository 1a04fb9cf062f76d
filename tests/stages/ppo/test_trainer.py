"""The PPO trainer in one process (a gloo group of one, real DeepSpeed engines) on small random
models: experience masks nothing after EOS, and the ptx term's gradient reaches the actor in the
same optimizer step as the policy loss."""


import torch
from transformers import (
    AutoModelForCausalLM,
)

from common.config import load_config
from stages.ppo.trainer import PPOTrainer, PPOTrainingSpec
from tiny_world import TinyWorld


def make_trainer(ppo_models, run_dir, *overrides):
    config = load_config(None, [
        "ppo.episodes_per_iteration=8", "ppo.minibatches=2", "ppo.ppo_epochs=1", "ppo.max_new_tokens=12",
        "ppo.actor_lr=1e-3", "ppo.warmup_iterations=0", "ppo.ptx_max_length=64", *overrides,
    ])
    world = TinyWorld()
    prompts = [e.prompt for e in world.train_examples(16, "ppo")]
    spec = PPOTrainingSpec(config=config, run_dir=str(run_dir), stage="ppo", actor=str(ppo_models / "actor"), reference=str(ppo_models / "actor"),
                 reward_model=str(ppo_models / "rm"), critic=str(ppo_models / "rm"), tokenizer=str(ppo_models / "actor"),
                 prompts=prompts, validation_prompts=[], pretraining=world.corpus(50), tasks=None)
    return PPOTrainer(spec)


def test_experience_ignores_everything_after_eos(process_group, ppo_models, tmp_path):
    trainer = make_trainer(ppo_models, tmp_path)
    prompts = trainer.iteration_prompts(0)
    batch = trainer.rollout.generate(prompts)
    experience, metrics = trainer.make_experience(batch, prompts)
    mask = batch.response_mask
    for tensor in (experience.advantages, experience.returns, batch.logprobs):
        assert (tensor[~mask] == 0).all()
    assert trainer.reward_bias == -0.5
    assert metrics["response_length"] == mask.sum(-1).float().mean().item()


def test_ptx_gradient_joins_the_policy_gradient_in_one_actor_step(process_group, ppo_models, tmp_path):
    weights, steps = {}, {}
    for coef in (0.0, 1.0):
        trainer = make_trainer(ppo_models, tmp_path / str(coef), f"ppo.ptx_coef={coef}")
        torch.manual_seed(0)
        prompts = trainer.iteration_prompts(0)
        experience, _ = trainer.make_experience(trainer.rollout.generate(prompts), prompts)
        metrics = trainer.learn(experience, iteration=0)
        weights[coef] = torch.cat([p.detach().flatten().clone() for p in trainer.actor.module.parameters()])
        steps[coef] = trainer.actor.global_steps
        assert (metrics["ptx_loss"] > 0) == (coef > 0)
    assert steps[0.0] == steps[1.0] == 2  # one actor step per minibatch, with or without ptx
    assert not torch.allclose(weights[0.0], weights[1.0])  # the ptx gradient changed those same steps


def test_the_saved_policy_is_the_ema_of_the_actor_weights(process_group, ppo_models, tmp_path):
    trainer = make_trainer(ppo_models, tmp_path, "ppo.ema_decay=0.5")
    start = [p.detach().clone() for p in trainer.actor.module.parameters()]
    prompts = trainer.iteration_prompts(0)
    experience, _ = trainer.make_experience(trainer.rollout.generate(prompts), prompts)
    trainer.learn(experience, iteration=0)
    live = [p.detach().clone() for p in trainer.actor.module.parameters()]
    # two steps: ema = 0.25 start + 0.25 after step 1 + 0.5 after step 2, strictly between start and now
    moved = [i for i, (s, p) in enumerate(zip(start, live)) if not torch.equal(s, p)]
    assert moved and all(not torch.equal(trainer.ema[i], live[i]) and not torch.equal(trainer.ema[i], start[i]) for i in moved)
    trainer.save_model(tmp_path / "policy")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", local_files_only=True)
    for average, parameter in zip(trainer.ema, saved.parameters()):
        torch.testing.assert_close(parameter, average)


def test_lora_actor_uses_itself_without_adapters_as_the_reference_and_saves_merged(process_group, ppo_models, tmp_path):
    trainer = make_trainer(ppo_models, tmp_path, "ppo.lora.r=4", "ppo.lora.target_modules=[c_attn]", "ppo.actor_lr=1e-2")
    assert trainer.reference is None
    prompts = trainer.iteration_prompts(0)
    batch = trainer.rollout.generate(prompts)
    experience, metrics = trainer.make_experience(batch, prompts)
    assert abs(metrics["kl"]) < 1e-4  # fresh adapters (B = 0): the policy is its reference
    trainer.learn(experience, iteration=0)
    _, metrics = trainer.make_experience(trainer.rollout.generate(prompts), prompts)
    assert abs(metrics["kl"]) > 1e-4  # trained adapters move the policy, adapters off do not
    trainer.save_model(tmp_path / "policy")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(ppo_models / "actor", local_files_only=True)
    assert merged.state_dict().keys() == base.state_dict().keys()
    assert not torch.equal(merged.state_dict()["transformer.h.0.attn.c_attn.weight"], base.state_dict()["transformer.h.0.attn.c_attn.weight"])


def test_group_estimators_sample_whole_groups_and_build_no_critic(process_group, ppo_models, tmp_path):
    trainer = make_trainer(ppo_models, tmp_path, "ppo.estimator=grpo", "ppo.group_size=4")
    assert trainer.critic is None
    prompts = trainer.iteration_prompts(0)
    assert len(prompts) == 8 and prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4 and prompts[0] != prompts[4]
    batch = trainer.rollout.generate(prompts)
    experience, metrics = trainer.make_experience(batch, prompts)
    mask = batch.response_mask
    assert experience.values is None and experience.returns is None
    assert (experience.advantages[~mask] == 0).all()
    # one advantage per sequence, at each of its real tokens, centred within each group
    first = experience.advantages[:, 0]
    assert torch.equal(experience.advantages, torch.where(mask, first.unsqueeze(-1), 0.0))
    torch.testing.assert_close(first.view(2, 4).sum(-1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(first.view(2, 4).std(-1), torch.ones(2), atol=1e-3, rtol=0)
    assert metrics["zero_std_groups"] == 0.0  # a random reward model scores no two samples alike
    learned = trainer.learn(experience, iteration=0)
    assert "value_loss" not in learned and trainer.actor.global_steps == 2
    trainer.save_checkpoint(1)
    folder = tmp_path / "ppo" / "checkpoints" / "iteration-1"
    assert (folder / "actor").is_dir() and not (folder / "critic").exists()
    resumed = make_trainer(ppo_models, tmp_path, "ppo.estimator=grpo", "ppo.group_size=4")
    resumed.load_checkpoint()
    assert resumed.iteration == 1
    for a, b in zip(trainer.actor.module.parameters(), resumed.actor.module.parameters()):
        assert torch.equal(a, b)


def test_reinforce_pp_whitens_the_returns_over_the_batch(process_group, ppo_models, tmp_path):
    trainer = make_trainer(ppo_models, tmp_path, "ppo.estimator=reinforce_pp_baseline", "ppo.group_size=2")
    prompts = trainer.iteration_prompts(0)
    batch = trainer.rollout.generate(prompts)
    experience, _ = trainer.make_experience(batch, prompts)
    real = experience.advantages[batch.response_mask]
    assert abs(real.mean().item()) < 1e-5 and abs(real.var(unbiased=False).item() - 1.0) < 1e-3


def test_kl_as_a_loss_term_joins_the_actor_step(process_group, ppo_models, tmp_path):
    weights = {}
    for beta in (0.0, 5.0):
        trainer = make_trainer(ppo_models, tmp_path / str(beta), "ppo.estimator=rloo", "ppo.group_size=2", "ppo.kl_mode=loss",
                               "ppo.kl_estimator=k3", f"ppo.kl_coef={beta}", "ppo.ppo_epochs=2", "ppo.ptx_coef=0")
        torch.manual_seed(0)
        prompts = trainer.iteration_prompts(0)
        experience, metrics = trainer.make_experience(trainer.rollout.generate(prompts), prompts)
        learned = trainer.learn(experience, iteration=0)
        # the actor starts at its reference: the first step's KL is 0, later steps' is not
        assert 0.0 < learned["kl_loss"] < 1.0
        weights[beta] = torch.cat([p.detach().flatten().clone() for p in trainer.actor.module.parameters()])
    assert not torch.allclose(weights[0.0], weights[5.0])
