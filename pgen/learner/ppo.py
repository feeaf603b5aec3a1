"""Multi-agent PPO for PettingZoo ParallelEnvs: IPPO and MAPPO with parameter sharing per group.

Read it top to bottom like CleanRL's ppo.py. One `PPOLearner` owns a vec env of E copies
(`make_vec_env`: the backend `env.backend` picks) and, per agent group, an actor, a critic, an
optimiser and a value normaliser. Each iteration:

1. collect `rollout_steps` steps from all E copies: one batched actor and critic forward per group
   per step over all copies and agents (`[E * n_agents, ...]`);
2. GAE(γ, λ) per agent, with time-limit truncation bootstrapped from V(final observation) and
   agents that finished early masked out;
3. `update_epochs` epochs of the clipped PPO objective over minibatches, with an entropy bonus, a
   value loss on normalised returns (running mean/std, as MAPPO's ValueNorm), gradient clipping
   and linear learning-rate annealing.

`algo=ippo`: each agent's critic sees its own observation. `algo=mappo`: the critic sees the env's
global state (or the group's joint observation when the env has no state) plus a one-hot agent id.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pgen.config import AlgoConfig, EnvConfig, PolicyConfig, enum_value
from pgen.envs import AgentGroup, VecStep, make_vec_env
from pgen.policies.nets import Actor, Net, critic_net
from pgen.policies.spec import PolicySpec


class RunningMeanStd(nn.Module):
    """Running mean and variance (parallel algorithm of Chan et al.) for value normalisation."""

    def __init__(self, epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("count", torch.tensor(epsilon))

    def update(self, x: torch.Tensor) -> None:
        batch_mean, batch_var, n = x.mean(), x.var(unbiased=False), x.numel()
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean.copy_(self.mean + delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / torch.sqrt(self.var + 1e-8)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sqrt(self.var + 1e-8) + self.mean


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, ended: torch.Tensor, next_value: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a rollout of length T (time is dim 0).

    `ended[t]` = 1 where the trajectory ended at step t (no bootstrap from `values[t+1]`);
    truncated steps already carry γ·V(final obs) in their reward. Returns (advantages, returns).
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        following = next_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - ended[t]
        delta = rewards[t] + gamma * following * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        advantages[t] = last
    return advantages, advantages + values


@dataclass
class Rollout:
    """One group's rollout, tensors `[T, E * n, ...]` (columns = copy-major agent slots)."""

    obs: torch.Tensor
    critic_in: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    ended: torch.Tensor
    alive: torch.Tensor
    starts: torch.Tensor  # 1 where a trajectory begins at t (recurrent state reset)
    actor_h0: torch.Tensor | None = None
    critic_h0: torch.Tensor | None = None
    next_value: torch.Tensor | None = None


STEP_FIELDS = ("obs", "critic_in", "actions", "logprobs", "values", "rewards", "ended", "alive", "starts")


@dataclass
class GroupLearner:
    """Everything PPO keeps for one agent group."""

    group: AgentGroup
    actor: Actor
    critic: Net
    optimizer: torch.optim.Optimizer
    value_norm: RunningMeanStd
    critic_input: str
    # recurrent state carried across iterations (gru only), [E * n, H]
    actor_h: torch.Tensor | None = None
    critic_h: torch.Tensor | None = None
    starts: torch.Tensor | None = None

    def parameters(self) -> list[nn.Parameter]:
        return [*self.actor.parameters(), *self.critic.parameters()]


@dataclass
class IterationStats:
    iteration: int
    env_steps: int
    steps_per_s: float
    episode_returns: dict[str, list[float]] = field(default_factory=dict)
    losses: dict[str, dict[str, float]] = field(default_factory=dict)


class PPOLearner:
    """IPPO / MAPPO over all groups of one env; `iterate()` runs one collect + update."""

    def __init__(self, env_cfg: EnvConfig, policy_cfg: PolicyConfig, algo: AlgoConfig, seed: int,
                 max_env_steps: int | None = None):
        torch.manual_seed(seed)  # network initialisation
        self.rng = torch.Generator().manual_seed(seed)  # action sampling and minibatch order
        self.algo, self.seed = algo, seed
        self.vec = make_vec_env(env_cfg, algo.num_envs, seed, self._uses_state(algo), algo.env_workers)
        self.env_id = env_cfg.id
        self.batch_env_steps = algo.num_envs * algo.rollout_steps
        self.total_iterations = None if max_env_steps is None else max(1, math.ceil(max_env_steps / self.batch_env_steps))
        self.iteration = 0
        self.env_steps = 0
        self.actor_frozen_until: dict[str, int] = {}  # group -> first iteration its actor learns again
        self.obs, self.alive, self.state = self.vec.reset()
        self.groups: dict[str, GroupLearner] = {}
        for g in self.vec.groups:
            spec = PolicySpec.for_group(g, enum_value(policy_cfg.kind), policy_cfg.hidden,
                                        enum_value(policy_cfg.activation))
            actor = Actor(spec, init_scale=algo.init_scale)
            source = self._critic_source(g)
            critic = critic_net(spec.kind, self._critic_dim(g, source), spec.hidden, spec.activation)
            params = [*actor.parameters(), *critic.parameters()]
            # foreach: one fused update over all tensors of the group (faster than a loop over them on CPU)
            self.groups[g.name] = GroupLearner(g, actor, critic, torch.optim.Adam(params, lr=algo.lr, eps=1e-5,
                                                                                  foreach=True),
                                               RunningMeanStd(), source)
        self._reset_recurrent_state()
        self._eye = {g.name: np.eye(g.size, dtype=np.float32) for g in self.vec.groups}

    def _reset_recurrent_state(self) -> None:
        for gl in self.groups.values():
            rows = self.algo.num_envs * gl.group.size
            if gl.actor.recurrent:
                gl.actor_h = gl.actor.initial_state(rows)
                gl.critic_h = gl.critic.initial_state(rows)
            gl.starts = torch.ones(rows)

    def reseed_envs(self, seed: int) -> None:
        """Restart every env copy from seeds drawn from `seed` (a resumed run continues from here)."""
        self.vec.reseed(seed)
        self.obs, self.alive, self.state = self.vec.reset()
        self._reset_recurrent_state()

    # --- critic input ---------------------------------------------------------------------------

    @staticmethod
    def _uses_state(algo: AlgoConfig) -> bool:
        choice = enum_value(algo.critic_input)
        return choice == "state" or (choice == "auto" and enum_value(algo.name) == "mappo")

    def _critic_source(self, g: AgentGroup) -> str:
        choice, name = enum_value(self.algo.critic_input), enum_value(self.algo.name)
        if choice == "auto":
            choice = "obs" if name == "ippo" else ("state" if self.vec.state_dim else "joint_obs")
        if choice == "state" and not self.vec.state_dim:
            raise ValueError(f"algo.critic_input=state but {self.env_id} has no global state(); use joint_obs")
        return choice

    def _critic_dim(self, g: AgentGroup, source: str) -> int:
        if source == "obs":
            return g.obs_dim
        base = self.vec.state_dim if source == "state" else g.obs_dim * g.size
        return base + g.size  # + one-hot agent id

    def _critic_input(self, gl: GroupLearner, obs: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """[E, n, C] critic input from group obs [E, n, D] and global state [E, S]."""
        if gl.critic_input == "obs":
            return obs
        E, n = obs.shape[:2]
        shared = state if gl.critic_input == "state" else obs.reshape(E, -1)
        return np.concatenate(
            [np.broadcast_to(shared[:, None, :], (E, n, shared.shape[1])), np.broadcast_to(self._eye[gl.group.name], (E, n, n))],
            axis=-1,
        )

    # --- collection -----------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self) -> tuple[dict[str, Rollout], list[dict[str, float]]]:
        """Run `rollout_steps` steps in every copy; one batched forward per group per step."""
        T, E = self.algo.rollout_steps, self.algo.num_envs
        buffers: dict[str, dict[str, list]] = {name: {k: [] for k in STEP_FIELDS} for name in self.groups}
        h0 = {name: (gl.actor_h, gl.critic_h) for name, gl in self.groups.items()}
        episodes: list[dict[str, float]] = []
        for _ in range(T):
            actions = {}
            for name, gl in self.groups.items():
                b = buffers[name]
                n = gl.group.size
                obs = torch.from_numpy(self.obs[name]).reshape(E * n, -1)
                cin = torch.from_numpy(np.ascontiguousarray(self._critic_input(gl, self.obs[name], self.state))).reshape(E * n, -1)
                out, gl.actor_h = gl.actor(obs, gl.actor_h)
                dist = gl.actor.distribution(out)
                action = gl.actor.sample(dist, self.rng)
                value, gl.critic_h = gl.critic(cin, gl.critic_h)
                b["obs"].append(obs)
                b["critic_in"].append(cin)
                b["actions"].append(action)
                b["logprobs"].append(gl.actor.log_prob(dist, action))
                b["values"].append(gl.value_norm.denormalize(value.squeeze(-1)))
                b["alive"].append(torch.from_numpy(self.alive[name]).reshape(-1))
                b["starts"].append(gl.starts)
                actions[name] = action.reshape(E, n, *action.shape[1:]).numpy()
            step = self.vec.step(actions)
            episodes.extend(step.episodes)
            for name, gl in self.groups.items():
                self._record_step(gl, buffers[name], step)
            self.obs = {name: s.obs for name, s in step.groups.items()}
            self.alive = {name: s.alive for name, s in step.groups.items()}
            self.state = step.state
        self.env_steps += T * E
        rollouts = {}
        for name, gl in self.groups.items():
            b = buffers[name]
            n = gl.group.size
            cin = torch.from_numpy(np.ascontiguousarray(self._critic_input(gl, self.obs[name], self.state))).reshape(E * n, -1)
            h = None if gl.critic_h is None else gl.critic_h
            next_value = gl.value_norm.denormalize(gl.critic(cin, h)[0].squeeze(-1))
            stacked = {k: torch.stack(v) for k, v in b.items()}
            rollouts[name] = Rollout(**stacked, actor_h0=h0[name][0], critic_h0=h0[name][1], next_value=next_value)
        return rollouts, episodes

    def _record_step(self, gl: GroupLearner, b: dict[str, list], step: VecStep) -> None:
        s = step.groups[gl.group.name]
        reward = torch.from_numpy(s.reward).reshape(-1)
        ended = torch.from_numpy(s.ended).reshape(-1)
        truncated = torch.from_numpy(s.truncated).reshape(-1)
        if self.algo.bootstrap_truncation and truncated.any():
            # time-limit ends are not terminal: add γ·V(final obs), from the state after this step
            cin = self._critic_input(gl, s.final_obs, step.final_state)
            cin = torch.from_numpy(np.ascontiguousarray(cin)).reshape(reward.shape[0], -1)
            final_v = gl.value_norm.denormalize(gl.critic(cin, gl.critic_h)[0].squeeze(-1))
            reward = reward + self.algo.gamma * final_v * truncated
        b["rewards"].append(reward)
        b["ended"].append(ended)
        if gl.actor_h is not None:
            keep = (1.0 - ended).unsqueeze(-1)
            gl.actor_h = gl.actor_h * keep
            gl.critic_h = gl.critic_h * keep
        gl.starts = ended.clone()

    # --- update ---------------------------------------------------------------------------------

    def update(self, rollouts: dict[str, Rollout]) -> dict[str, dict[str, float]]:
        if self.algo.anneal_lr and self.total_iterations:
            frac = max(0.0, 1.0 - self.iteration / self.total_iterations)
            for gl in self.groups.values():
                gl.optimizer.param_groups[0]["lr"] = frac * self.algo.lr
        return {name: self._update_group(self.groups[name], r) for name, r in rollouts.items()}

    def _update_group(self, gl: GroupLearner, r: Rollout) -> dict[str, float]:
        algo = self.algo
        advantages, returns = compute_gae(r.rewards, r.values, r.ended, r.next_value, algo.gamma, algo.gae_lambda)
        mask = r.alive
        if algo.value_norm:
            gl.value_norm.update(returns[mask > 0])
        T, B = r.rewards.shape
        recurrent = gl.actor.recurrent
        # MLP: minibatches of single samples; GRU: minibatches of whole columns (sequences)
        units = B if recurrent else T * B
        mb_size = max(1, units // algo.num_minibatches)
        # per minibatch, as tensors: reading each value with .item() costs more than the value itself
        stats: dict[str, list[torch.Tensor]] = {"policy_loss": [], "value_loss": [], "entropy": [], "approx_kl": [],
                                                "clipfrac": []}
        params = gl.parameters()
        actor_learns = self.iteration >= self.actor_frozen_until.get(gl.group.name, 0)
        for _ in range(algo.update_epochs):
            perm = torch.randperm(units, generator=self.rng)
            for start in range(0, units, mb_size):
                idx = perm[start : start + mb_size]
                if recurrent:
                    sl = (slice(None), idx)
                    out = gl.actor.forward_sequence(r.obs[sl], r.actor_h0[idx], r.starts[sl]).flatten(0, 1)
                    value = gl.critic.forward_sequence(r.critic_in[sl], r.critic_h0[idx], r.starts[sl]).flatten(0, 1)
                    pick = lambda x: x[sl].flatten(0, 1)  # noqa: E731
                else:
                    flat = lambda x: x.flatten(0, 1)  # noqa: E731
                    out = gl.actor(flat(r.obs)[idx])[0]
                    value = gl.critic(flat(r.critic_in)[idx])[0]
                    pick = lambda x: x.flatten(0, 1)[idx]  # noqa: E731
                m = pick(mask)
                denom = m.sum().clamp_min(1.0)
                dist = gl.actor.distribution(out)
                newlogp = gl.actor.log_prob(dist, pick(r.actions))
                logratio = newlogp - pick(r.logprobs)
                ratio = logratio.exp()
                adv = pick(advantages)
                adv_mean = (adv * m).sum() / denom
                adv_std = (((adv - adv_mean) ** 2 * m).sum() / denom).sqrt()
                adv = (adv - adv_mean) / (adv_std + 1e-8)  # advantage normalisation per minibatch
                pg_loss = (torch.max(-adv * ratio, -adv * ratio.clamp(1 - algo.clip_coef, 1 + algo.clip_coef)) * m).sum() / denom
                target = pick(returns)
                old_value = pick(r.values)
                value = value.squeeze(-1)
                if algo.value_norm:
                    target = gl.value_norm.normalize(target)
                    old_value = gl.value_norm.normalize(old_value)
                v_err = (value - target) ** 2
                if algo.clip_vloss:
                    clipped = old_value + (value - old_value).clamp(-algo.clip_coef, algo.clip_coef)
                    v_err = torch.max(v_err, (clipped - target) ** 2)
                v_loss = 0.5 * (v_err * m).sum() / denom
                entropy = (gl.actor.entropy(dist) * m).sum() / denom
                loss = algo.vf_coef * v_loss
                if actor_learns:
                    loss = loss + pg_loss - algo.ent_coef * entropy
                gl.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, algo.max_grad_norm)  # gradient clipping
                gl.optimizer.step()
                with torch.no_grad():
                    stats["policy_loss"].append(pg_loss.detach())
                    stats["value_loss"].append(v_loss.detach())
                    stats["entropy"].append(entropy.detach())
                    stats["approx_kl"].append((((ratio - 1) - logratio) * m).sum() / denom)
                    stats["clipfrac"].append((((ratio - 1).abs() > algo.clip_coef).float() * m).sum() / denom)
        out = {k: torch.stack(v).double().mean().item() for k, v in stats.items()}
        out["lr"] = gl.optimizer.param_groups[0]["lr"]
        return out

    def iterate(self) -> IterationStats:
        """One PPO iteration: collect num_envs × rollout_steps env steps, then update."""
        t0 = time.perf_counter()
        rollouts, episodes = self.collect()
        losses = self.update(rollouts)
        self.iteration += 1
        returns = {name: [ep[name] for ep in episodes] for name in self.groups}
        return IterationStats(self.iteration, self.env_steps, self.batch_env_steps / (time.perf_counter() - t0), returns, losses)

    def close(self) -> None:
        self.vec.close()
