"""GAE, value normalisation, determinism and trainer state."""

import numpy as np
import pytest
import torch

from pgen.config import compose_config
from pgen.learner.ppo import PPOLearner, RunningMeanStd, compute_gae
from pgen.learner.state import encode_trainer_state, restore_trainer_state


def test_gae_matches_a_hand_computed_case():
    # one column, T=3, trajectory ends (terminal) after step 1, then a new one bootstraps from 2.0
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    ended = torch.tensor([[0.0], [1.0], [0.0]])
    next_value = torch.tensor([2.0])
    gamma, lam = 0.9, 0.8
    d2 = 3.0 + 0.9 * 2.0 - 1.5  # 3.3
    d1 = 2.0 - 1.0  # terminal: 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5  # 1.4
    a2, a1 = d2, d1
    a0 = d0 + gamma * lam * a1  # 1.4 + 0.72 = 2.12
    adv, ret = compute_gae(rewards, values, ended, next_value, gamma, lam)
    assert adv.squeeze().tolist() == pytest.approx([a0, a1, a2])
    assert ret.squeeze().tolist() == pytest.approx([a0 + 0.5, a1 + 1.0, a2 + 1.5])


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd(epsilon=0.0)
    rms.count.fill_(0)
    data = [torch.randn(50) * 3 + 2, torch.randn(70) * 3 + 2]
    rms.count.fill_(1e-12)
    for d in data:
        rms.update(d)
    allx = torch.cat(data).numpy()
    assert rms.mean.item() == pytest.approx(allx.mean(), rel=1e-5)
    assert rms.var.item() == pytest.approx(allx.var(), rel=1e-4)
    x = torch.tensor([1.0, -2.0])
    assert torch.allclose(rms.denormalize(rms.normalize(x)), x, atol=1e-5)


TINY = ["algo.num_envs=4", "algo.rollout_steps=25", "algo.update_epochs=2", "population.max_env_steps=1000"]


def _learner(overrides):
    cfg = compose_config("train", TINY + overrides)
    return PPOLearner(cfg.env, cfg.policy, cfg.algo, cfg.seed, cfg.population.max_env_steps)


@pytest.mark.parametrize("overrides", [[], ["policy=gru", "algo=ippo"]], ids=["mlp-mappo", "gru-ippo"])
def test_same_seed_gives_the_same_first_updates(overrides):
    runs = []
    for _ in range(2):
        learner = _learner(overrides)
        stats = [learner.iterate() for _ in range(2)]
        runs.append((learner.groups["agent"].actor.flat_params(), [s.losses for s in stats], [s.episode_returns for s in stats]))
        learner.close()
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]
    other = _learner(overrides + ["seed=1"])
    other.iterate()
    assert not np.array_equal(other.groups["agent"].actor.flat_params(), runs[0][0])


def test_a_frozen_actor_plays_unchanged_while_its_critic_learns():
    """actor_frozen_until (population.seed_critic_warmup): the first updates train only the critic."""
    learner = _learner([])
    agent = learner.groups["agent"]
    learner.actor_frozen_until = {"agent": 2}
    actor0 = agent.actor.flat_params()
    critic0 = torch.cat([p.detach().flatten() for p in agent.critic.parameters()]).clone()
    for _ in range(2):
        learner.iterate()
    np.testing.assert_array_equal(agent.actor.flat_params(), actor0)
    assert not torch.equal(torch.cat([p.detach().flatten() for p in agent.critic.parameters()]), critic0)
    learner.iterate()  # iteration 2: the actor learns again
    assert not np.array_equal(agent.actor.flat_params(), actor0)
    learner.close()


def test_trainer_state_round_trips_without_pickle():
    learner = _learner(["env=simple_tag"])
    learner.iterate()
    files = encode_trainer_state(learner)
    assert set(files) == {"trainer.safetensors", "trainer.json"}
    fresh = _learner(["env=simple_tag", "seed=7"])
    restore_trainer_state(fresh, files)
    assert fresh.iteration == 1 and fresh.env_steps == learner.env_steps
    for name in learner.groups:
        a, b = learner.groups[name], fresh.groups[name]
        assert np.array_equal(a.actor.flat_params(), b.actor.flat_params())
        for (ka, va), (kb, vb) in zip(a.critic.state_dict().items(), b.critic.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
        sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
        assert all(torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"]) for i in sa["state"])
        assert torch.equal(a.value_norm.mean, b.value_norm.mean)
    # two learners resumed from the same state continue identically
    twin = _learner(["env=simple_tag", "seed=9"])
    restore_trainer_state(twin, files)
    fresh.iterate(), twin.iterate()
    for name in learner.groups:
        assert np.array_equal(fresh.groups[name].actor.flat_params(), twin.groups[name].actor.flat_params())
    for x in (learner, fresh, twin):
        x.close()


def test_trainer_state_rejects_another_architecture():
    learner = _learner([])
    files = encode_trainer_state(learner)
    other = _learner(["policy.hidden=[32,32]"])
    with pytest.raises(ValueError, match="arch"):
        restore_trainer_state(other, files)
    learner.close(), other.close()


def test_box_actions_train_and_stay_finite():
    learner = _learner(["env.kwargs.continuous_actions=true"])
    stats = learner.iterate()
    actor = learner.groups["agent"].actor
    assert not actor.spec.discrete and "log_std" in dict(actor.named_parameters())
    assert np.isfinite(actor.flat_params()).all() and np.isfinite(stats.losses["agent"]["policy_loss"])
    learner.close()


def test_mappo_uses_state_and_ippo_own_observation():
    m = _learner([])
    i = _learner(["algo=ippo"])
    assert m.groups["agent"].critic_input == "state" and i.groups["agent"].critic_input == "obs"
    j = _learner(["algo.critic_input=joint_obs"])
    assert j.groups["agent"].critic.layers[0].in_features == 18 * 3 + 3
    for x in (m, i, j):
        x.close()
